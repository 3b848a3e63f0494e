"""Liveness/readiness/metrics over HTTP for any videogen process (runner ranks, CPU functions).

``/metrics`` (Prometheus text), ``/healthz`` (the work loop's heartbeat is fresh), ``/readyz``
(every readiness check passes); plus a readiness file for exec probes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST

from runtime.logging import get_logger

log = get_logger(component="health")

Check = Callable[[], bool]


class Probe(Protocol):
    """What the server asks of the process: its metrics and how long since its loop last ticked."""

    def exposition(self) -> bytes: ...

    def heartbeat_age_s(self) -> float | None: ...


def evaluate(checks: Mapping[str, Check]) -> tuple[bool, dict[str, bool]]:
    """Run each check (a raising check counts as failed)."""
    results: dict[str, bool] = {}
    for name, check in checks.items():
        try:
            results[name] = bool(check())
        except Exception as e:  # noqa: BLE001 - a probe must answer, not crash
            log.warning("readiness_check_failed", check=name, error=str(e))
            results[name] = False
    return all(results.values()), results


class ReadinessFile:
    """``<data_dir>/runner-<rank>.ready`` exists exactly while the runner is ready (for exec probes)."""

    def __init__(self, data_dir: Path | str, rank: int = 0) -> None:
        self.path = Path(data_dir) / f"runner-{rank}.ready"

    def set(self, ready: bool) -> None:
        if ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"ready_at": datetime.now(UTC).isoformat()}))
            tmp.replace(self.path)
        else:
            self.path.unlink(missing_ok=True)

    def sync(self, checks: Mapping[str, Check]) -> bool:
        ready, _ = evaluate(checks)
        self.set(ready)
        return ready


class HealthServer:
    """``/metrics``, ``/healthz``, ``/readyz`` on ``host:port`` from a daemon thread (``port=0``: any free port)."""

    def __init__(self, port: int, metrics: Probe, checks: Mapping[str, Check] | None = None, *,
                 host: str = "0.0.0.0", heartbeat_timeout_s: float = 600.0) -> None:
        self.host = host
        self.requested_port = port
        self.metrics = metrics
        self.checks: dict[str, Check] = dict(checks or {})
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            return self.requested_port
        return int(self._server.server_address[1])

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        age = self.metrics.heartbeat_age_s()
        alive = age is None or age <= self.heartbeat_timeout_s
        return alive, {"heartbeat_age_s": None if age is None else round(age, 3),
                       "heartbeat_timeout_s": self.heartbeat_timeout_s}

    def readiness(self) -> tuple[bool, dict[str, bool]]:
        return evaluate(self.checks)

    def start(self) -> HealthServer:
        if self._server is not None:
            return self
        server = ThreadingHTTPServer((self.host, self.requested_port), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="health-server", daemon=True)
        self._thread.start()
        log.info("health_server_started", host=self.host, port=self.port)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None
        log.info("health_server_stopped")

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler_for(health: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "videogen"

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, health.metrics.exposition(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok, detail = health.liveness()
                self._json(200 if ok else 503, {"status": "ok" if ok else "stale", **detail})
            elif path == "/readyz":
                ok, results = health.readiness()
                self._json(200 if ok else 503, {"status": "ready" if ok else "not_ready", "checks": results})
            else:
                self._json(404, {"error": "not found", "paths": ["/metrics", "/healthz", "/readyz"]})

        def _json(self, code: int, body: dict[str, Any]) -> None:
            self._send(code, json.dumps(body).encode(), "application/json")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass  # probes every few seconds: not worth a log line

    return Handler
