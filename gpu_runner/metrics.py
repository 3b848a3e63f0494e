"""Runner observability: Prometheus metrics, ``/healthz`` + ``/readyz`` + ``/metrics``, a readiness file.

``RunnerMetrics`` owns the metric objects (in its own ``CollectorRegistry`` unless one is given).
``HealthServer`` (``runtime/health.py``, shared with the CPU functions) serves them on
``settings.health_port`` from a daemon thread (stdlib ``ThreadingHTTPServer``: nothing to do on
the compute thread):

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

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from runtime.health import HealthServer, ReadinessFile, evaluate
from runtime.logging import get_logger

# Health endpoints and readiness files are shared with the CPU functions (runtime/health.py);
# re-exported here for the runner.
__all__ = ["HealthServer", "ReadinessFile", "RunnerMetrics", "evaluate", "seconds_since"]

log = get_logger(component="runner-metrics")

NAMESPACE = "videogen_runner"
OUTCOMES = ("succeeded", "failed", "cancelled", "oom", "refused", "retried", "skipped")
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
