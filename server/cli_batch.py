"""``sluice batch MODEL --input FILE --output FILE``: predict a whole file, resumably.

In this process through the server's own backends (``--model-repository``, default the bundled
one), or through a running server over ModelStreamInfer when one is named: ``--url`` before or
after the verb, or ``$SLUICE_URL`` (as every client verb reads it) unless ``--model-repository``
is given. Exit status: 0 when every
chunk is done (rejected rows are in the reject file, not failures of the job); 1 when the model
or the input fails midway (finished chunks are kept: run the same command again to resume); 2 for
a usage error found before any chunk (a missing column, a wrong type, a manifest of another job);
130 when interrupted (finished chunks are kept).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

PROG = "sluice batch"


def _mapping(text: str) -> tuple[str, str]:
    name, sep, column = text.partition("=")
    if not sep or not name or not column:
        raise argparse.ArgumentTypeError(f"expected INPUT=COLUMN, got {text!r}")
    return name, column


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_batch_command(sub: argparse._SubParsersAction, add_url: Callable[..., None],
                      bundled: Path) -> None:
    batch = sub.add_parser(
        "batch", help="predict every row of a Parquet, CSV or .npy file (resumable)",
        description="Predict every row of --input with MODEL and write the outputs beside a "
        "key column to --output (Parquet, CSV or .npy). In this process (no server) unless "
        "--url names a running server. Finished chunks are recorded in OUTPUT.manifest.json: "
        "after a crash or Ctrl-C the same command resumes. Rows that cannot be used go to the "
        "reject file with their reason. A server named by $SLUICE_URL is used unless "
        "--model-repository is given.")
    batch.add_argument("model")
    batch.add_argument("--input", required=True, type=Path, help="Parquet, CSV or .npy file")
    batch.add_argument("--output", required=True, type=Path,
                       help="output file (.parquet, .csv or .npy)")
    batch.add_argument("--model-repository", type=Path, default=None,
                       help="repository to load MODEL from, in this process (default: bundled; "
                       "given, $SLUICE_URL is not used)")
    batch.add_argument("--model-version", default="", help="version (default: latest)")
    batch.add_argument("--key", help="input column written beside the outputs (default: the "
                       "row number, as column 'row')")
    batch.add_argument("--map", type=_mapping, action="append", default=[],
                       metavar="INPUT=COLUMN", help="feed INPUT from COLUMN (repeatable); by "
                       "default an input reads the column of its name, or INPUT_0..INPUT_{n-1}")
    batch.add_argument("--chunk-rows", type=_positive, default=65536,
                       help="rows per chunk, the unit of resumption (default 65536)")
    batch.add_argument("--batch-rows", type=_positive, default=None,
                       help="rows per model call (default: the model's max_batch_size)")
    batch.add_argument("--window", type=_positive, default=8,
                       help="with --url: requests in flight on the stream (default 8)")
    batch.add_argument("--rejects", type=Path, default=None,
                       help="reject file, CSV (default: OUTPUT's name + .rejects.csv)")
    batch.add_argument("--reject-nan", action="store_true",
                       help="reject rows with NaN in a float input (default: pass them on)")
    batch.add_argument("--restart", action="store_true",
                       help="forget finished chunks of an earlier run and start over")
    batch.add_argument("--json", action="store_true", help="print the summary as JSON")
    batch.add_argument("--quiet", action="store_true", help="no progress line")
    add_url(batch)
    batch.set_defaults(bundled_repository=bundled)


def batch_target(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """The server a job is sent to, or None to run it in this process: ``--url`` (before or
    after the verb), else ``$SLUICE_URL`` unless ``--model-repository`` is given. ValueError
    when both --url and --model-repository are given."""
    if args.url_given:
        if args.model_repository is not None:
            raise ValueError("give --url (a running server) or --model-repository (in this "
                             "process), not both")
        return str(args.url)
    if args.model_repository is None and environ.get("SLUICE_URL"):
        return environ["SLUICE_URL"]
    return None


def run_batch(args: argparse.Namespace) -> int:
    from sluice.server.batch.columns import MappingError
    from sluice.server.batch.job import JobSpec, run_job
    from sluice.server.batch.parts import OUTPUT_SUFFIXES, ManifestMismatch
    from sluice.server.batch.progress import Progress
    from sluice.server.batch.sources import SourceError
    from sluice.server.errors import SluiceError

    def fail(message: str, status: int) -> int:
        print(f"{PROG}: {message}", file=sys.stderr)
        return status

    if args.output.suffix.lower() not in OUTPUT_SUFFIXES:
        return fail(f"--output must end in one of {', '.join(OUTPUT_SUFFIXES)}", 2)
    try:
        url = batch_target(args, os.environ)
    except ValueError as exc:
        return fail(str(exc), 2)
    spec = JobSpec(
        input=args.input, output=args.output,
        rejects=args.rejects or args.output.with_name(args.output.name + ".rejects.csv"),
        key=args.key, mapping=dict(args.map), chunk_rows=args.chunk_rows,
        reject_nan=args.reject_nan, restart=args.restart)
    progress = None if args.quiet else Progress()
    try:
        summary = asyncio.run(_run(args, url, spec, run_job, progress))
    except (MappingError, ManifestMismatch) as exc:
        return fail(str(exc), 2)
    except SourceError as exc:
        return fail(str(exc), 2)
    except SluiceError as exc:
        return fail(exc.message, 1)
    except KeyboardInterrupt:
        return fail(f"interrupted; finished chunks are kept in {args.output.name}.manifest.json "
                    "(run the same command to resume)", 130)
    except Exception as exc:  # a client error (server unreachable) and the like
        return fail(f"{type(exc).__name__}: {exc}", 1)
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        rejected = ", ".join(f"{k} {v:,}" for k, v in sorted(summary.rejected.items()))
        print(f"rows {summary.rows:,}: predicted {summary.predicted:,}, rejected "
              f"{sum(summary.rejected.values()):,}" + (f" ({rejected})" if rejected else ""))
        print(f"chunks: {summary.chunks_done} done ({summary.chunks_skipped} from an earlier "
              f"run); {summary.rows_per_s:,.0f} rows/s over {summary.seconds:.1f}s")
        if not summary.error:
            print(f"output: {args.output}" + (f"; rejects: {spec.rejects}"
                                              if summary.rejected else ""))
    if summary.error:
        return fail(f"{summary.error}; finished chunks are kept (run the same command to resume)",
                    1)
    return 0


async def _run(args: argparse.Namespace, url: str | None, spec, run_job, progress):
    if url is None:
        from sluice.server.app import make_backend
        from sluice.server.batch.local import LocalPredictor

        version = int(args.model_version) if args.model_version else None
        local = await asyncio.to_thread(
            LocalPredictor, args.model_repository or args.bundled_repository, args.model,
            make_backend, version=version, batch_rows=args.batch_rows)
        try:
            return await run_job(spec, local, progress)
        finally:
            local.close()
    from sluice.clients import AsyncClient
    from sluice.server.batch.remote import RemotePredictor
    from sluice.server.cli_connect import connection

    async with AsyncClient(url, **connection(args)) as client:
        remote = RemotePredictor(client, args.model, version=args.model_version,
                                 batch_rows=args.batch_rows, window=args.window)
        await remote.connect()
        return await run_job(spec, remote, progress)
