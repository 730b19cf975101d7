"""``sluice feedback MODEL --file labels.csv|labels.parquet`` and ``sluice quality MODEL [--json]``
(parsing, reading the label file, printing; :mod:`sluice.server.cli` registers them).

A label file has a column ``id`` (the response's request id), a column ``label`` (class id) or
``value`` (regressors), and optionally ``row`` (the row within the request; empty or absent:
the label applies to every row of the request). Rows that cannot be read (no id, a label that
is not a number, a row that is not a whole number >= 0) are reported by line and not sent; the
rest go. Exit status: 0 all labels taken, 1 some refused (each reported) or the call failed,
2 the file cannot be read at all.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from sluice.server.cli_connect import connection  # transport security (issue 14)

#: One label as sent: (request id, row or None, class id or value).
Label = tuple[str, int | None, float]


class LabelFileError(Exception):
    """The file as a whole cannot be read (the message says why, without a traceback)."""


def add_quality_commands(sub: Any, add_url: Callable[[argparse.ArgumentParser], None]) -> None:
    feedback = sub.add_parser(
        "feedback", help="send ground truth for answered requests, by request id",
        description="Join labels with a model's predictions by request id (live quality) and "
        "append them to the feedback log. The file has columns id and label (or value for "
        "regressors), and optionally row. Exit status: 0 all taken, 1 some refused, 2 the file "
        "cannot be read.")
    feedback.add_argument("model")
    add_url(feedback)
    feedback.add_argument("--file", required=True, type=Path, metavar="LABELS",
                          help="labels.csv or labels.parquet")
    feedback.add_argument("--json", action="store_true", help="print JSON instead of text")
    quality = sub.add_parser(
        "quality", help="live quality per version and arm",
        description="Accuracy, precision, recall, F1 and confusion (classifiers), MAE and RMSE "
        "(regressors), labelled share, and the accuracy estimated from confidence, per "
        "version and arm over the live window.")
    quality.add_argument("model")
    add_url(quality)
    quality.add_argument("--json", action="store_true", help="print JSON instead of text")


def run_quality(args: argparse.Namespace) -> int:
    from sluice.clients import AdminClient, SluiceClientError
    from sluice.clients.admin import quality_text

    where = f"sluice {args.command}"
    try:
        if args.command == "quality":
            with AdminClient(args.url, **connection(args)) as admin:
                report = admin.quality(args.model)
            print(json.dumps(report, indent=2) if args.json else quality_text(report))
            return 0
        labels, places, refused = read_labels(args.file)
        with AdminClient(args.url, **connection(args)) as admin:
            result = admin.feedback(args.model, labels)
    except LabelFileError as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return 2
    except SluiceClientError as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return 1
    refused += [(places[e["index"]], f"id {e['id']!r}: {e['message']}") for e in result["errors"]]
    refused.sort()
    if args.json:
        print(json.dumps({**result, "refused": [{"where": w, "message": m} for w, m in refused]},
                         indent=2))
    else:
        print(f"model {args.model}: {result['received']} labels sent, {result['joined']} joined "
              f"({result['replaced_rows']} rows relabelled), {result['unknown']} unknown ids, "
              f"{len(refused)} refused; {result['logged']} logged")
        for text in (result["note"], result["log_error"]):
            if text:
                print(f"  note: {text}")
        for place, message in refused:
            print(f"  {place}: {message}")
    return 1 if refused else 0


def read_labels(path: Path) -> tuple[list[Label], list[str], list[tuple[str, str]]]:
    """(labels, where each came from, (where, why) of each row not read). Raises
    LabelFileError when the file cannot be read at all (missing, malformed, no id column)."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise LabelFileError(f"{path.name}: expected a .csv or .parquet file")
    try:
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as stream:
                reader = csv.DictReader(stream)
                columns = list(reader.fieldnames or [])
                records = [(f"line {reader.line_num}", row) for row in _rows(reader, columns)]
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            columns = table.column_names
            records = [(f"record {i + 1}", row) for i, row in enumerate(table.to_pylist())]
    except FileNotFoundError:
        raise LabelFileError(f"{path.name}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        # pyarrow's errors subclass these; say what, not where in our code
        raise LabelFileError(f"{path.name}: not a readable {suffix[1:]} file "
                             f"({type(exc).__name__})") from None
    return _parse(records, columns, path.name)


def _rows(reader: csv.DictReader, columns: list[str]) -> Iterable[dict[str, Any]]:
    if "id" not in columns:  # before reading on: a wrong file says so once
        yield from ()
        return
    yield from reader


def _parse(records: list[tuple[str, Mapping[str, Any]]], columns: list[str],
           name: str) -> tuple[list[Label], list[str], list[tuple[str, str]]]:
    truth = [c for c in ("label", "value") if c in columns]
    if "id" not in columns or len(truth) != 1:
        raise LabelFileError(
            f"{name}: needs columns id and label (or value), and optionally row; "
            f"found {', '.join(map(str, columns)) or 'none'}")
    column = truth[0]
    labels: list[Label] = []
    places: list[str] = []
    refused: list[tuple[str, str]] = []
    for place, record in records:
        rid, raw, row_raw = record.get("id"), record.get(column), record.get("row")
        if rid is None or str(rid).strip() == "":
            refused.append((place, "id is empty"))
            continue
        rid = str(rid).strip()
        try:
            value = _number(raw)
        except ValueError:
            refused.append((place, f"id {rid!r}: {column} {raw!r} is not a number"))
            continue
        try:
            row = None if row_raw is None or str(row_raw).strip() == "" else _row(row_raw)
        except ValueError:
            refused.append((place, f"id {rid!r}: row {row_raw!r} is not a whole number >= 0"))
            continue
        labels.append((rid, row, value))
        places.append(place)
    return labels, places, refused


def _number(raw: Any) -> float:
    if isinstance(raw, bool) or raw is None:
        raise ValueError
    value = float(str(raw).strip()) if isinstance(raw, str) else float(raw)
    if not math.isfinite(value):
        raise ValueError
    return value


def _row(raw: Any) -> int:
    value = _number(raw)
    if not value.is_integer() or value < 0:
        raise ValueError
    return int(value)
