"""What ``build_models.py`` does after writing the bundled models: load each with onnxruntime,
run it at batch 1 and at its max_batch_size on random inputs, print its size, digest and
signature, and time the CNN. Nothing here writes a file.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from build_models import SEED, _session  # the sibling script (build_models imports us lazily)

MAX_BATCH = {"digits": 256, "cnn": 128, "identity": 512, "add_sub": 64}
_NP_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def _random_feed(sess: ort.InferenceSession, batch: int, rng: np.random.Generator) -> dict:
    feed = {}
    for inp in sess.get_inputs():
        shape = [batch, *inp.shape[1:]]
        feed[inp.name] = rng.standard_normal(shape).astype(_NP_TYPES[inp.type])
    return feed


def check_models(repo: Path, paths: dict[str, Path]) -> None:
    rng = np.random.default_rng(SEED + 1)
    for name, path in paths.items():
        sess = _session(path)
        max_batch = MAX_BATCH[name.split("/")[0]]  # "digits/2": version 2 of digits
        for batch in (1, max_batch):
            outputs = sess.run(None, _random_feed(sess, batch, rng))
            for meta, out in zip(sess.get_outputs(), outputs, strict=True):
                if out.shape[0] != batch:
                    raise SystemExit(f"{name}: {meta.name} has batch {out.shape[0]} != {batch}")
        size = path.stat().st_size
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        ins = ", ".join(f"{i.name} {i.type} {i.shape}" for i in sess.get_inputs())
        outs = ", ".join(f"{o.name} {o.type} {o.shape}" for o in sess.get_outputs())
        print(
            f"{name}: {path.relative_to(repo)} {size} bytes sha256={digest} "
            f"ok at batch 1 and {max_batch} | in: {ins} | out: {outs}"
        )


def time_cnn(path: Path, batch: int = 32, iters: int = 20) -> float:
    sess = _session(path)
    x = np.random.default_rng(SEED + 2).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    for _ in range(3):
        sess.run(None, {"image": x})
    best = float("inf")
    for _ in range(iters):
        t0 = time.perf_counter()
        sess.run(None, {"image": x})
        best = min(best, time.perf_counter() - t0)
    return best * 1e3 / batch
