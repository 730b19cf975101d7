"""An Alertmanager webhook receiver that starts retraining (``sluice retrain-webhook``; off
unless that command runs, and never inside a serving process).

Alertmanager POSTs its webhook payload (version "4": ``{"version": "4", "status": ...,
"alerts": [{"status": "firing", "labels": {"alertname": ..., "model": ...}, ...}], ...}``). Each
firing alert that carries a ``model`` label (and, when a list is given, whose ``alertname`` is
on it) asks for a retrain of that model; resolved alerts ask for nothing. The reply is 200 with
JSON naming the models ``started``, those ``running`` already (at most one retrain per model at
a time: a second request while one runs starts nothing) and those ``ignored`` with why; a
payload that is not a valid webhook body gets 400 with the field that is wrong (Alertmanager
does not retry a 4xx). Retraining runs on a thread of its own per model, never on the thread
that answers. ``GET /status`` gives the counters and what runs.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("sluice.retrain.webhook")

#: Largest body accepted (Alertmanager groups alerts; a real payload is a few KiB).
MAX_BODY_BYTES = 1 << 20


class PayloadError(ValueError):
    """Not an Alertmanager webhook payload; the message names the field."""


def models_asked(payload: Any, *, alertnames: Iterable[str] = (),
                 model_label: str = "model") -> tuple[list[str], list[dict[str, str]]]:
    """(models to retrain, in order of first mention; ignored alerts with the reason) from a
    decoded webhook body. Raises PayloadError naming the first field that is wrong."""
    if not isinstance(payload, dict):
        raise PayloadError("the body must be a JSON object (Alertmanager's webhook payload)")
    if payload.get("version") != "4":
        raise PayloadError(f"field 'version' must be \"4\" (Alertmanager's webhook payload "
                           f"version), got {payload.get('version')!r}")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("field 'alerts' must be a list")
    wanted = set(alertnames)
    models: list[str] = []
    ignored: list[dict[str, str]] = []
    for i, alert in enumerate(alerts):
        if not isinstance(alert, dict):
            raise PayloadError(f"alerts[{i}] must be an object")
        status, labels = alert.get("status"), alert.get("labels")
        if status not in ("firing", "resolved"):
            raise PayloadError(f"alerts[{i}].status must be \"firing\" or \"resolved\", got "
                               f"{status!r}")
        if not isinstance(labels, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise PayloadError(f"alerts[{i}].labels must be an object of strings")
        name = labels.get("alertname", "")
        if status != "firing":
            ignored.append({"alert": name, "reason": "resolved"})
        elif wanted and name not in wanted:
            ignored.append({"alert": name, "reason": "alertname not on --alert"})
        elif not labels.get(model_label):
            ignored.append({"alert": name, "reason": f"no '{model_label}' label"})
        elif labels[model_label] not in models:
            models.append(labels[model_label])
    return models, ignored


class RetrainWebhook:
    """The receiver: an HTTP server on its own thread plus one retrain thread per busy model.

    ``run(model)`` does one retrain (blocking) and returns what to log; ``known(model)`` says
    whether the model can be retrained at all (it has a retrain.yaml)."""

    def __init__(self, run: Callable[[str], object], known: Callable[[str], bool], *,
                 host: str = "127.0.0.1", port: int = 0, alertnames: Iterable[str] = (),
                 model_label: str = "model") -> None:
        self._run = run
        self._known = known
        self._alertnames = tuple(alertnames)
        self._model_label = model_label
        self._lock = threading.Lock()
        #: model -> the thread retraining it (one at most).
        self._running: dict[str, threading.Thread] = {}
        self.counts: Counter[str] = Counter()
        self._http = ThreadingHTTPServer((host, port), self._handler())
        self._http.daemon_threads = True
        self._serving: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    def start(self) -> None:
        self._serving = threading.Thread(target=self._http.serve_forever,
                                         name="sluice-retrain-webhook", daemon=True)
        self._serving.start()

    def close(self, timeout_s: float | None = None) -> None:
        """Stop answering, then wait for the retrains that run (``timeout_s`` each)."""
        self._http.shutdown()
        self._http.server_close()
        with self._lock:
            threads = list(self._running.values())
        for thread in threads:
            thread.join(timeout_s)

    def handle(self, payload: Any) -> dict[str, Any]:
        """Act on one decoded payload; the reply body. Raises PayloadError."""
        models, ignored = models_asked(payload, alertnames=self._alertnames,
                                       model_label=self._model_label)
        started, running = [], []
        for model in models:
            if not self._known(model):
                ignored.append({"model": model, "reason": "no retrain.yaml for this model"})
                continue
            with self._lock:
                if model in self._running:
                    running.append(model)
                    continue
                thread = threading.Thread(target=self._retrain, args=(model,),
                                          name=f"sluice-retrain:{model}", daemon=True)
                self._running[model] = thread
            thread.start()
            started.append(model)
        self.counts.update(started=len(started), running=len(running), ignored=len(ignored))
        return {"started": started, "running": running, "ignored": ignored}

    def status(self) -> dict[str, Any]:
        with self._lock:
            running = sorted(self._running)
        return {"running": running, "counts": dict(self.counts)}

    def _retrain(self, model: str) -> None:
        try:
            outcome = self._run(model)
            log.info("webhook retrain of %s ended: %s", model, outcome)
        except Exception:
            self.counts["errors"] += 1
            log.exception("webhook retrain of %s failed", model)
        finally:
            with self._lock:
                self._running.pop(model, None)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s " + format, self.address_string(), *args)

            def _reply(self, status: HTTPStatus, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/status":
                    self._reply(HTTPStatus.OK, hook.status())
                else:
                    self._reply(HTTPStatus.NOT_FOUND, {"error": "GET /status, or POST alerts"})

            def do_POST(self) -> None:
                hook.counts["requests"] += 1
                try:
                    length = int(self.headers.get("Content-Length", ""))
                except ValueError:
                    return self._bad(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
                if not 0 < length <= MAX_BODY_BYTES:
                    return self._bad(HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length > 0
                                     else HTTPStatus.BAD_REQUEST,
                                     f"the body must be 1 to {MAX_BODY_BYTES} bytes")
                try:
                    payload = json.loads(self.rfile.read(length))
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    return self._bad(HTTPStatus.BAD_REQUEST, f"the body is not JSON ({exc})")
                try:
                    self._reply(HTTPStatus.OK, hook.handle(payload))
                except PayloadError as exc:
                    self._bad(HTTPStatus.BAD_REQUEST, str(exc))

            def _bad(self, status: HTTPStatus, message: str) -> None:
                hook.counts["rejected"] += 1
                self._reply(status, {"error": message})

        return Handler
