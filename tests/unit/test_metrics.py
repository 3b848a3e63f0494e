"""Runner metrics and probes: real HTTP requests to a HealthServer on 127.0.0.1 (free port)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpu_runner.metrics import HealthServer, ReadinessFile, RunnerMetrics, evaluate, seconds_since


def get(port: int, path: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_are_exposed_in_prometheus_format() -> None:
    m = RunnerMetrics()
    m.observe_step(0.5)
    m.observe_step(1.5)
    m.observe_segment(12.0, "succeeded")
    m.observe_segment(3.0, "oom")
    m.observe_queue_wait(4.0)
    waited = m.observe_queue_wait_since(datetime.now(UTC) - timedelta(seconds=30))
    assert 29.0 <= waited < 60.0
    m.set_duty_cycle(0.75)
    assert m.update_gpu_memory() == {"allocated": 0, "max_allocated": 0, "reserved": 0}  # no CUDA here
    with pytest.raises(ValueError):
        m.observe_segment(1.0, "exploded")

    with HealthServer(0, m, host="127.0.0.1") as server:
        code, body, ctype = get(server.port, "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    s = samples(body.decode())
    assert s[("videogen_runner_step_seconds_count", ())] == 2
    assert s[("videogen_runner_step_seconds_sum", ())] == pytest.approx(2.0)
    assert s[("videogen_runner_segments_total", (("outcome", "succeeded"),))] == 1
    assert s[("videogen_runner_segments_total", (("outcome", "oom"),))] == 1
    assert s[("videogen_runner_segments_total", (("outcome", "failed"),))] == 0
    assert s[("videogen_runner_segment_seconds_sum", (("outcome", "succeeded"),))] == pytest.approx(12.0)
    assert s[("videogen_runner_queue_wait_seconds_count", ())] == 2
    assert s[("videogen_runner_duty_cycle", ())] == 0.75
    assert s[("videogen_runner_gpu_memory_allocated_bytes", ())] == 0
    assert s[("videogen_runner_heartbeat_timestamp_seconds", ())] == pytest.approx(time.time(), abs=60)


def test_healthz_follows_the_loop_heartbeat() -> None:
    m = RunnerMetrics()
    with HealthServer(0, m, host="127.0.0.1", heartbeat_timeout_s=0.2) as server:
        code, body, _ = get(server.port, "/healthz")
        assert code == 200 and json.loads(body)["heartbeat_age_s"] is None  # still loading: alive
        m.heartbeat()
        assert get(server.port, "/healthz")[0] == 200
        time.sleep(0.3)
        code, body, _ = get(server.port, "/healthz")
        assert code == 503 and json.loads(body)["status"] == "stale"
        m.heartbeat()
        assert get(server.port, "/healthz")[0] == 200
        assert get(server.port, "/nope")[0] == 404


def test_readyz_requires_every_check() -> None:
    state = {"model_loaded": True, "warmed_up": False}

    def broken() -> bool:
        raise RuntimeError("bus client gone")

    checks = {"model_loaded": lambda: state["model_loaded"], "warmed_up": lambda: state["warmed_up"],
              "bus_connected": lambda: True}
    with HealthServer(0, RunnerMetrics(), checks, host="127.0.0.1") as server:
        code, body, _ = get(server.port, "/readyz")
        assert code == 503
        assert json.loads(body) == {"status": "not_ready",
                                    "checks": {"model_loaded": True, "warmed_up": False, "bus_connected": True}}
        state["warmed_up"] = True
        code, body, _ = get(server.port, "/readyz")
        assert code == 200 and json.loads(body)["status"] == "ready"
        server.checks["bus_connected"] = broken
        assert get(server.port, "/readyz")[0] == 503
        port = server.port
    with pytest.raises(OSError):  # stopped: nothing listens any more
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_readiness_file(tmp_path: Path) -> None:
    ready = {"ok": False}
    f = ReadinessFile(tmp_path / "data", rank=3)
    assert f.path == tmp_path / "data" / "runner-3.ready"
    assert f.sync({"ok": lambda: ready["ok"]}) is False and not f.path.exists()
    ready["ok"] = True
    assert f.sync({"ok": lambda: ready["ok"]}) is True and f.path.is_file()
    assert "ready_at" in json.loads(f.path.read_text())
    f.set(False)
    assert not f.path.exists()
    assert evaluate({}) == (True, {})


def test_seconds_since_accepts_datetimes_and_epoch() -> None:
    now = time.time()
    assert seconds_since(now - 5, now=now) == pytest.approx(5)
    assert seconds_since(datetime.fromtimestamp(now - 7, UTC), now=now) == pytest.approx(7)
    naive_utc = datetime.fromtimestamp(now - 2, UTC).replace(tzinfo=None)
    assert seconds_since(naive_utc, now=now) == pytest.approx(2)
    assert seconds_since(now + 10, now=now) == 0.0  # clock skew never gives a negative wait
