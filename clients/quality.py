"""Ground truth and live quality through the Admin service (mixed into
:class:`~sluice.clients.admin.AdminClient`)::

    with AdminClient("127.0.0.1:8001") as admin:
        admin.feedback("digits", [("req-1", None, 7), ("req-2", 0, 3)])   # (id, row, label)
        admin.quality("digits")["windows"][0]["metrics"]["accuracy"]

A label is ``(request id, row or None for every row of the request, class id or value)``.
Replies are plain dicts keyed by the proto field names (``FeedbackResponse``,
``QualityResponse``); metrics are named (``"accuracy"``, ``"f1_macro"``, ``"mae"``, ...).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sluice.proto import admin_pb2 as pb

#: Labels per Feedback call (a file of any size goes in calls of this many).
CHUNK = 50_000
_SUMMED = ("received", "joined", "replaced_rows", "unknown", "invalid", "logged")


class QualityCalls:
    """The Feedback and Quality calls; needs the host's ``_call(method, request)``."""

    def _call(self, method: str, request: Any) -> Any:  # pragma: no cover - the host's
        raise NotImplementedError

    def feedback(
        self, model: str, labels: Iterable[tuple[str, int | None, float]]
    ) -> dict[str, Any]:
        """Send ``labels`` (in calls of :data:`CHUNK`); the replies summed, with ``errors`` as
        dicts (``index`` into ``labels``, ``id``, ``message``)."""
        from sluice.clients.admin import message_dict

        total: dict[str, Any] = {key: 0 for key in _SUMMED}
        total.update(errors=[], log_error="", note="")
        chunk: list[pb.Label] = []
        offset = 0

        def send() -> None:
            nonlocal offset
            reply = message_dict(self._call(
                "Feedback", pb.FeedbackRequest(model=model, labels=chunk)))
            for key in _SUMMED:
                total[key] += reply[key]
            for error in reply["errors"]:
                total["errors"].append({**error, "index": error["index"] + offset})
            total["log_error"] = total["log_error"] or reply["log_error"]
            total["note"] = total["note"] or reply["note"]
            offset += len(chunk)
            chunk.clear()

        for rid, row, value in labels:
            label = pb.Label(id=rid, value=float(value))
            if row is not None:
                label.row = int(row)
            chunk.append(label)
            if len(chunk) >= CHUNK:
                send()
        if chunk or not offset:
            send()
        return total

    def quality(self, model: str) -> dict[str, Any]:
        """Live quality of ``model``: ``windows`` (one per version and arm, with ``metrics``),
        ``counts`` (feedback since start) and ``notes`` (versions without live quality)."""
        from sluice.clients.admin import message_dict

        return message_dict(self._call("Quality", pb.QualityRequest(model=model)))


def _num(value: float | None, form: str = ".4f") -> str:
    return "-" if value is None else format(value, form)


def quality_text(report: dict[str, Any]) -> str:
    """A quality report (as :meth:`QualityCalls.quality` returns it) as readable lines."""
    lines = [f"model {report['model']}"]
    for version, why in sorted(report["notes"].items()):
        lines.append(f"  version {version}: no live quality: {why}")
    if not report["windows"]:
        lines.append("  no answers scored yet")
    for w in report["windows"]:
        m = w["metrics"]
        bound = f"last {w['window_rows']} rows" + (
            f" / {w['window_s']:g} s" if w["window_s"] is not None else "")
        lines.append(f"  version {w['version']} arm {w['arm'] or '-'} ({w['kind']}; {bound}): "
                     f"{w['predicted_rows']} predicted rows, {w['labelled_rows']} labelled "
                     f"({100 * m.get('labelled_share', 0.0):.1f}%)")
        if w["kind"] == "classifier":
            lines.append(
                f"    accuracy {_num(m.get('accuracy'))}   estimated without labels "
                f"{_num(m.get('estimated_accuracy'))} (on the labelled rows "
                f"{_num(m.get('estimated_accuracy_labelled'))}, error "
                f"{_num(m.get('estimate_error'), '+.4f')})")
            lines.append(f"    macro precision {_num(m.get('precision_macro'))}  recall "
                         f"{_num(m.get('recall_macro'))}  f1 {_num(m.get('f1_macro'))}")
            if w["classes"]:
                lines.append(f"    {'class':>7}{'precision':>11}{'recall':>9}{'f1':>9}"
                             f"{'support':>9}")
                lines += [f"    {c['label']:>7}{c['precision']:>11.4f}{c['recall']:>9.4f}"
                          f"{c['f1']:>9.4f}{c['support']:>9}" for c in w["classes"]]
            hist = w["confidence_histogram"]
            if sum(hist):
                top = max(hist)
                lines.append("    confidence (top-class probability):")
                lines += [f"    {i / 10:.1f}-{(i + 1) / 10:.1f} {'#' * round(30 * n / top):<30} {n}"
                          for i, n in enumerate(hist) if n]
        else:
            lines.append(f"    mae {_num(m.get('mae'), '.6g')}   rmse {_num(m.get('rmse'), '.6g')}")
    c = report["counts"]
    lines.append(f"  feedback: {c.get('joined', 0)} joined, {c.get('unknown', 0)} unknown ids, "
                 f"{c.get('invalid', 0)} refused, {c.get('logged', 0)} logged"
                 + (f", {c['log_failed']} not logged" if c.get("log_failed") else ""))
    return "\n".join(lines)
