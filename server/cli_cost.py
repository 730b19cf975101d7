"""``sluice stats``' cost section: CPU seconds and, with a price, currency per prediction.

Printed under the latency table when the server sent cost figures (``sluice serve`` keeps them
per model version; ``--price-per-core-hour`` turns CPU seconds into a price)."""

from __future__ import annotations

import argparse
from typing import Any


def non_negative_price(text: str) -> float:
    """``--price-per-core-hour``: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def print_cost(table: dict[str, Any], width: int, ver: int) -> None:
    """The cost rows of ``table`` (``{model: {version: {"cost": {...}}}}``), columns aligned with
    the latency table's model and version columns; nothing when no version has cost figures."""
    rows = [(model, version, stages["cost"]) for model, versions in sorted(table.items())
            for version, stages in sorted(versions.items()) if stages.get("cost")]
    if not rows:
        return
    price = next((c["price_per_core_hour"] for _, _, c in rows
                  if c.get("price_per_core_hour") is not None), None)
    print()
    print(f"{'model':<{width}}{'ver':>{ver}}{'rows':>10}{'cpu s':>10}{'cpu ms/row':>12}"
          f"{'cost/1k':>12}   (since load; price per core-hour: "
          f"{'not set' if price is None else f'{price:g}'})")
    for model, version, cost in rows:
        per_row = cost.get("cpu_seconds_per_row")
        per_1k = cost.get("cost_per_1k_predictions")
        print(f"{model:<{width}}{version:>{ver}}{cost['rows']:>10}{cost['cpu_seconds']:>10.3f}"
              f"{'-' if per_row is None else f'{per_row * 1000:.4f}':>12}"
              f"{'-' if per_1k is None else f'{per_1k:.6f}':>12}")
