"""Regenerate the Python modules of proto/*.proto: ``python -m sluice.proto.generate [--check]``.

Promises:

* Runs ``grpc_tools.protoc`` in-process with ``-I <repo root>`` so generated imports read
  ``from sluice.proto import model_config_pb2``, writing ``*_pb2.py``, ``*_pb2.pyi`` and, for files
  that declare a service, ``*_pb2_grpc.py``.
* Rewrites every ``*_pb2.py`` to register its descriptors in :data:`sluice.proto._pool.POOL` instead
  of protobuf's default pool (see ``proto/_pool.py`` for why).
* The output depends only on the .proto files and the installed grpcio-tools, so ``--check``
  regenerates into a temporary directory and exits 1, listing every file that differs from (or
  is missing in) proto/, or 0 when the committed files are current. It never writes to proto/.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from importlib import resources
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent
PACKAGE = PROTO_DIR.name

_DEFAULT_POOL = "_descriptor_pool.Default()"
_POOL_IMPORT = "from sluice.proto._pool import POOL as _SLUICE_POOL\n"
_POOL_MARKER = "from google.protobuf import descriptor_pool as _descriptor_pool\n"


def proto_sources() -> list[Path]:
    """The .proto files to compile, sorted, as paths relative to the repository root."""
    return sorted(p.relative_to(REPO_ROOT) for p in PROTO_DIR.glob("*.proto"))


def use_private_pool(source: str, filename: str) -> str:
    """Return generated ``*_pb2.py`` text rewritten to register into ``sluice.proto._pool.POOL``.

    Raises RuntimeError when the generated code does not have the expected shape (a protoc
    upgrade changed it), rather than silently leaving the default pool in place.
    """
    if source.count(_DEFAULT_POOL) != 1 or _POOL_MARKER not in source:
        raise RuntimeError(f"{filename}: unexpected protoc output, cannot redirect the pool")
    source = source.replace(_POOL_MARKER, _POOL_MARKER + _POOL_IMPORT, 1)
    return source.replace(_DEFAULT_POOL, "_SLUICE_POOL", 1)


def _has_service(grpc_module: str) -> bool:
    # The grpc plugin emits a module for every file; one without a service holds no classes.
    return "\nclass " in grpc_module


def generate(out_dir: Path) -> list[Path]:
    """Generate all modules into ``out_dir/proto/``; return the written paths, sorted.

    Raises RuntimeError when protoc reports an error (its messages go to stderr).
    """
    from grpc_tools import protoc  # type: ignore[import-untyped]  # only needed to regenerate

    include = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p) for p in proto_sources()),
    ]
    # protoc resolves the relative source paths against the working directory.
    with contextlib.chdir(REPO_ROOT):
        status = protoc.main(args)
    if status != 0:
        raise RuntimeError(f"protoc failed with exit status {status}")

    written = []
    for path in sorted((out_dir / PACKAGE).iterdir()):
        text = path.read_text(encoding="utf-8")
        if path.name.endswith("_pb2_grpc.py") and not _has_service(text):
            path.unlink()
            continue
        if path.name.endswith("_pb2.py"):
            path.write_text(use_private_pool(text, path.name), encoding="utf-8")
        written.append(path)
    return written


def stale_files() -> list[str]:
    """Names of generated files in proto/ that differ from a fresh generation (or are missing)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for path in fresh:
            committed = PROTO_DIR / path.name
            if not committed.is_file() or committed.read_bytes() != path.read_bytes():
                stale.append(path.name)
        return stale


def regenerate() -> list[str]:
    """Regenerate into proto/ in place; return the names of the files written."""
    with tempfile.TemporaryDirectory() as tmp:
        names = []
        for path in generate(Path(tmp)):
            (PROTO_DIR / path.name).write_bytes(path.read_bytes())
            names.append(path.name)
        return names


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    summary = (__doc__ or "").splitlines()[0]
    parser = argparse.ArgumentParser(prog="python -m sluice.proto.generate", description=summary)
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the committed generated files are out of date",
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for name in stale:
            print(f"out of date: proto/{name}", file=sys.stderr)
        if stale:
            print("run `python -m sluice.proto.generate` to regenerate", file=sys.stderr)
            return 1
        print("proto: generated files are up to date")
        return 0
    for name in regenerate():
        print(f"wrote proto/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
