"""``sluice profile MODEL --data FILE`` and ``sluice drift MODEL``.

``profile`` works offline, on the model repository (no server): it loads the model as the server
would, runs the reference rows through the version to get its predictions, and writes
``<repository>/<model>/<version>/reference_profile.json`` (:mod:`sluice.server.monitoring.profile`).
A running server reads it when it (re)loads the model (``sluice repo load MODEL``).

``drift`` asks a running server (``DriftReport``) and prints, per served version, the most
drifted features (PSI, KS, missing and out-of-range rates) and a text histogram, reference beside
live, for each feature whose PSI is over 0.2; ``--json`` prints the reports as the RPC gives
them.

Exit status: 0, 1 when the server or the model refuses, 2 for a usage error (a bad data file, a
model name that is not one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sluice.server.cli_connect import connection  # transport security (issue 14)


def add_drift_commands(sub: Any, add_url: Callable[[argparse.ArgumentParser], None],
                       repository: Path) -> None:
    """Register ``sluice profile`` and ``sluice drift`` on the top-level subparsers ``sub``."""
    profile = sub.add_parser(
        "profile", help="write a model version's reference profile (for drift)",
        description="Profile reference rows (e.g. the training data) of MODEL: per input "
        "feature quantile bins, min/max and the CDF for KS, and the distribution of the "
        "version's own predictions on them. Writes <model>/<version>/reference_profile.json in "
        "the model repository; a server picks it up when it loads the model.",
    )
    profile.add_argument("model")
    profile.add_argument("--data", type=Path, required=True, metavar="FILE",
                         help=".npz (an array per input, or X) or .parquet (a column per input "
                         "or per feature, e.g. input[13])")
    profile.add_argument("--version", type=int, default=None,
                         help="model version (default: the newest in the repository)")
    profile.add_argument("--model-repository", type=Path, default=repository, metavar="DIR",
                         help="model repository (default: the bundled examples)")
    profile.add_argument("--bins", type=int, default=10,
                         help="quantile bins per feature (ties merge bins; default 10)")
    profile.add_argument("--prediction", default=None, metavar="OUTPUT",
                         help="output to profile as the prediction (default: the first class "
                         "output, else the first single-value output, else argmax of the first)")

    drift = sub.add_parser(
        "drift", help="print a model's input and prediction drift on a running server",
        description="Per served version of MODEL with a reference profile: PSI, KS, missing and "
        "out-of-range rates of the most drifted features, the prediction's drift, and a text "
        "histogram (reference vs live) per feature with PSI over 0.2.",
    )
    drift.add_argument("model")
    add_url(drift)
    drift.add_argument("--json", action="store_true", help="print JSON instead of text")
    drift.add_argument("--top", type=int, default=20,
                       help="features listed per version, most drifted first (default 20)")


def run_drift(args: argparse.Namespace) -> int:
    from sluice.clients import AdminClient, SluiceClientError
    from sluice.clients.drift import drift_text

    try:
        with AdminClient(args.url, **connection(args)) as admin:
            reports = admin.drift_report(args.model)
    except SluiceClientError as exc:
        print(f"sluice drift: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(reports, indent=2) if args.json else drift_text(reports, top=args.top))
    return 0


def run_profile(args: argparse.Namespace) -> int:
    from sluice.server.errors import SluiceError
    from sluice.server.monitoring.profile_data import DataError

    try:
        path, profile = asyncio.run(_profile(args))
    except (DataError, ValueError) as exc:
        print(f"sluice profile: {exc}", file=sys.stderr)
        return 2
    except SluiceError as exc:
        print(f"sluice profile: {exc.message}", file=sys.stderr)
        return 1
    prediction = profile.prediction
    print(f"wrote {path.parent.parent.name}/{path.parent.name}/{path.name}: {profile.rows} rows, "
          f"{len(profile.features)} features"
          + (f", prediction '{prediction.output}' ({prediction.kind})" if prediction else ""))
    return 0


async def _profile(args: argparse.Namespace) -> tuple[Path, Any]:
    from sluice.server.app import Server
    from sluice.server.config.model import check_model_name
    from sluice.server.config.settings import ServerConfig
    from sluice.server.errors import ModelNotFound
    from sluice.server.monitoring.profile import (
        FILENAME,
        MAX_BINS,
        build_profile,
        choose_prediction,
        profiled_inputs,
        write_profile,
    )
    from sluice.server.monitoring.profile_data import read_reference

    check_model_name(args.model)
    if not 2 <= args.bins <= MAX_BINS:
        raise ValueError(f"--bins must be from 2 to {MAX_BINS}, got {args.bins}")
    server = Server(ServerConfig(model_repository=args.model_repository, metrics_port=None))
    server.repository.check_version = None  # the profile being replaced may not match
    await server.repository.load(args.model)
    try:
        served = server.repository.get(args.model, "" if args.version is None
                                       else str(args.version))
        config = served.config
        specs = profiled_inputs(config)
        if not specs:
            raise ModelNotFound(f"model '{args.model}' has no numeric input of fixed shape to "
                                "profile")
        inputs = read_reference(args.data, specs)
        chosen = choose_prediction(config, args.prediction)
        predictions = None
        if chosen is not None:
            predictions = await asyncio.to_thread(_predict, served, inputs, chosen)
        profile = build_profile(config, inputs, predictions, chosen, bins=args.bins)
        path = args.model_repository / args.model / str(served.version) / FILENAME
        write_profile(path, profile, model=args.model, version=served.version,
                      source=args.data.name, bins=args.bins)
        return path, profile
    finally:
        await server.repository.close(5.0)


def _predict(served: Any, inputs: dict[str, np.ndarray], chosen: tuple[str, str]) -> np.ndarray:
    """The version's prediction for every reference row, run batch by batch on instance 0."""
    from sluice.server.monitoring.profile import prediction_values
    from sluice.server.types import DATATYPE_DTYPES

    config = served.config
    output, kind = chosen
    n = len(next(iter(inputs.values())))
    step = config.max_batch_size if config.max_batch_size > 0 else 1
    out = []
    for lo in range(0, n, step):
        batch = {}
        for spec in config.inputs:
            if spec.name in inputs:
                rows = inputs[spec.name][lo:lo + step].astype(DATATYPE_DTYPES[spec.datatype])
                batch[spec.name] = rows if config.max_batch_size > 0 else rows[0]
        result = served.backend.run(0, served.backend.prepare(batch))[output]
        out.append(prediction_values(kind, np.asarray(result).reshape(len(rows), -1)))
    return np.concatenate(out)
