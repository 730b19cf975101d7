"""Write the reference profiles of the bundled digits versions
(``digits/<version>/reference_profile.json``) from their training rows, through ``sluice profile``
itself (called by build_models.py, or alone).

    python model_repository/build_profiles.py [--repo DIR]

The training rows are the 80% of scikit-learn's digits data that build_digits.py trains on (the
same stratified split and seed; ``digits/test_split.npz`` is the other 20%). They are written to
a temporary .npz and profiled with the defaults (10 quantile bins, the ``label`` output as the
class prediction), so the files are what ``sluice profile digits --data train.npz`` gives.
Needs scikit-learn (the ``models`` extra) for the data.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_DIR = Path(__file__).resolve().parent
SEED = 20240607  # build_models.SEED (not imported: that module needs onnx)


def training_rows() -> np.ndarray:
    """The digits training split, as build_digits.py makes it (float32 [1437, 64])."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, _, _, _ = train_test_split(
        x.astype(np.float32), y.astype(np.int64), test_size=0.2, stratify=y,
        random_state=SEED % (2**32),
    )
    return x_train


def build_profiles(repo: Path, versions: tuple[int, ...] = (1, 2)) -> None:
    from sluice.server.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "digits_train.npz"
        np.savez(data, input=training_rows())
        for version in versions:
            status = main(["profile", "digits", "--version", str(version), "--data", str(data),
                           "--model-repository", str(repo)])
            if status:
                raise SystemExit(f"digits {version}: sluice profile failed ({status})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO_DIR, help="model repository")
    build_profiles(parser.parse_args().repo.resolve())
    sys.exit(0)
