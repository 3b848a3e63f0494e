"""Runner observability: Prometheus metrics, ``/healthz`` + ``/readyz`` + ``/metrics``, a readiness file.

``RunnerMetrics`` owns the metric objects (in its own ``CollectorRegistry`` unless one is given).
``HealthServer`` serves them on ``settings.health_port`` from a daemon thread (stdlib
``ThreadingHTTPServer``: nothing to do on the compute thread):

- ``/metrics``: Prometheus text format.
- ``/healthz``: 200 while the process is alive and the runner loop's heartbeat is fresh
  (``RunnerMetrics.heartbeat()`` from the loop and from each denoising step); 503 once it is older
  than ``heartbeat_timeout_s``. Before the first heartbeat (model loading) it is 200: use a
  startup probe on ``/readyz`` for slow loads.
- ``/readyz``: 200 when every readiness check passes (e.g. model loaded, warm-up done, bus
  connected), else 503; the body lists each check.

``ReadinessFile`` mirrors readiness into ``<data_dir>/runner-<rank>.ready`` for exec probes
(``test -f``), so ranks other than 0 (which serve no HTTP) can be probed too.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from runtime.logging import get_logger

log = get_logger(component="runner-metrics")

NAMESPACE = "videogen_runner"
OUTCOMES = ("succeeded", "failed", "cancelled", "oom", "retried", "skipped")
STEP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
SEGMENT_BUCKETS_S = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 2400.0, 3600.0)
WAIT_BUCKETS_S = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0)

Check = Callable[[], bool]


def seconds_since(published: datetime | float, now: float | None = None) -> float:
    """Seconds from ``published`` (aware/naive-UTC datetime, or epoch seconds) to ``now``; never negative."""
    if isinstance(published, datetime):
        ts = published.replace(tzinfo=published.tzinfo or UTC).timestamp()
    else:
        ts = float(published)
    return max(0.0, (time.time() if now is None else now) - ts)


class RunnerMetrics:
    """Step/segment/queue-wait histograms, duty cycle, GPU memory, outcomes, loop heartbeat."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.step_seconds = Histogram(f"{NAMESPACE}_step_seconds", "Wall time of one denoising step (all CFG branches)",
                                      buckets=STEP_BUCKETS_S, registry=r)
        self.segment_seconds = Histogram(f"{NAMESPACE}_segment_seconds", "Wall time of one segment, by outcome",
                                         ["outcome"], buckets=SEGMENT_BUCKETS_S, registry=r)
        self.queue_wait_seconds = Histogram(f"{NAMESPACE}_queue_wait_seconds",
                                            "From the segment message's JetStream timestamp to the start of its render",
                                            buckets=WAIT_BUCKETS_S, registry=r)
        self.segments = Counter(f"{NAMESPACE}_segments", "Segments finished, by outcome", ["outcome"], registry=r)
        self.duty_cycle = Gauge(f"{NAMESPACE}_duty_cycle", "Fraction of wall time spent rendering since start",
                                registry=r)
        self.gpu_memory_allocated = Gauge(f"{NAMESPACE}_gpu_memory_allocated_bytes",
                                          "torch.cuda.memory_allocated (0 without CUDA)", registry=r)
        self.gpu_memory_max_allocated = Gauge(f"{NAMESPACE}_gpu_memory_max_allocated_bytes",
                                              "torch.cuda.max_memory_allocated (0 without CUDA)", registry=r)
        self.gpu_memory_reserved = Gauge(f"{NAMESPACE}_gpu_memory_reserved_bytes",
                                         "torch.cuda.memory_reserved (0 without CUDA)", registry=r)
        self.heartbeat_timestamp = Gauge(f"{NAMESPACE}_heartbeat_timestamp_seconds",
                                         "Unix time of the runner loop's last heartbeat", registry=r)
        for outcome in OUTCOMES:  # export zeros so rate() works from the first scrape
            self.segments.labels(outcome=outcome)
        self._last_heartbeat: float | None = None  # time.monotonic()

    # -- observations --------------------------------------------------------------------------
    def observe_step(self, seconds: float) -> None:
        self.step_seconds.observe(max(0.0, seconds))
        self.heartbeat()

    def observe_segment(self, seconds: float, outcome: str) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; one of {OUTCOMES}")
        self.segment_seconds.labels(outcome=outcome).observe(max(0.0, seconds))
        self.segments.labels(outcome=outcome).inc()

    def observe_queue_wait(self, seconds: float) -> None:
        self.queue_wait_seconds.observe(max(0.0, seconds))

    def observe_queue_wait_since(self, published: datetime | float) -> float:
        """Queue wait from a JetStream ``msg.metadata.timestamp``; returns the seconds observed."""
        waited = seconds_since(published)
        self.observe_queue_wait(waited)
        return waited

    def set_duty_cycle(self, fraction: float) -> None:
        self.duty_cycle.set(min(1.0, max(0.0, fraction)))

    def update_gpu_memory(self, device: Any = None) -> dict[str, int]:
        """Read CUDA allocator statistics (all 0 without CUDA) into the gauges; returns them."""
        values = {"allocated": 0, "max_allocated": 0, "reserved": 0}
        try:
            import torch

            if torch.cuda.is_available():
                values = {"allocated": int(torch.cuda.memory_allocated(device)),
                          "max_allocated": int(torch.cuda.max_memory_allocated(device)),
                          "reserved": int(torch.cuda.memory_reserved(device))}
        except Exception as e:  # noqa: BLE001 - metrics must never break the runner
            log.warning("gpu_memory_unreadable", error=str(e))
        self.gpu_memory_allocated.set(values["allocated"])
        self.gpu_memory_max_allocated.set(values["max_allocated"])
        self.gpu_memory_reserved.set(values["reserved"])
        return values

    def heartbeat(self) -> None:
        """The runner loop is alive (call every loop iteration and every step)."""
        self._last_heartbeat = time.monotonic()
        self.heartbeat_timestamp.set(time.time())

    def heartbeat_age_s(self) -> float | None:
        return None if self._last_heartbeat is None else time.monotonic() - self._last_heartbeat

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


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

    def __init__(self, port: int, metrics: RunnerMetrics, checks: Mapping[str, Check] | None = None, *,
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
        server_version = "videogen-runner"

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
