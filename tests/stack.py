"""Test helpers: a real nats-server + weed mini per session, workers as real processes."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from runtime.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOGEN_")}
    env.update({
        "VIDEOGEN_DATA_DIR": str(settings.data_dir),
        "VIDEOGEN_NATS_URL": settings.nats_url,
        "VIDEOGEN_NATS_REPLICAS": str(settings.nats_replicas),
        "VIDEOGEN_S3_ENDPOINT": str(settings.s3_endpoint),
        "VIDEOGEN_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
        "VIDEOGEN_INPUT_ALLOW_HOSTS": '["127.0.0.1"]',
        "VIDEOGEN_LOG_FORMAT": "json",
        "VIDEOGEN_HEARTBEAT_S": "2",
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    })
    env.update(extra)
    return env


def start_runner(settings: Settings, log: Path, *, nproc: int = 1, model: str = "tiny-wan",
                 env_extra: dict[str, str] | None = None, max_segments: int | None = None) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    cmd = [sys.executable, "-m", "runtime.cli", "runner", "--model", model, "--nproc-per-node", str(nproc)]
    if max_segments is not None:
        cmd += ["--max-segments", str(max_segments)]
    return subprocess.Popen(cmd, env=child_env(settings, **(env_extra or {})),
                            stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO), start_new_session=True)


def start_functions(settings: Settings, log: Path, stages: list[str] | None = None,
                    env_extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "runtime.cli", "functions", *(stages or [])],
                            env=child_env(settings, **(env_extra or {})), stdout=out, stderr=subprocess.STDOUT,
                            cwd=str(REPO), start_new_session=True)


async def poll_until(cond: Callable[[], object | Awaitable[object]], *, timeout_s: float,
                     interval_s: float = 0.2) -> object:
    """Re-check ``cond`` (a plain or an async callable) every ``interval_s`` until it returns something truthy,
    and return that; ``TimeoutError`` after ``timeout_s``. For conditions outside this process (a log file, a
    KV entry, another process's state), where there is no event to wait on."""
    async with asyncio.timeout(timeout_s):
        while True:
            result = cond()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(interval_s)


def wait_for_log(log: Path, needle: str, timeout_s: float = 120.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and needle in log.read_text(errors="replace"):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before '{needle}':\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    tail = log.read_text()[-4000:] if log.exists() else ""
    raise TimeoutError(f"'{needle}' not in {log} after {timeout_s}s:\n{tail}")


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return int(proc.returncode)


# A benchmark's single tenant submits more than a tenant's default quotas admit (120 a minute):
# lifted, since admission is not what a benchmark measures
BENCH_QUOTAS = {"VIDEOGEN_MAX_QUEUED_JOBS_PER_TENANT": "100000", "VIDEOGEN_MAX_RUNNING_JOBS_PER_TENANT": "100000",
                "VIDEOGEN_SUBMIT_RATE_PER_MINUTE": "100000"}


@contextlib.contextmanager
def running_pipeline(data: Path, *, model: str = "tiny-wan", runner_env: dict[str, str] | None = None,
                     functions_env: dict[str, str] | None = None,
                     ready_timeout_s: float = 240.0) -> Iterator[Settings]:
    """Real nats-server + weed mini under ``data``, the CPU functions and one runner for ``model``;
    everything is stopped on exit. Yields the settings pointing at the servers."""
    from runtime.settings import load_settings
    from runtime.stack import provision, start_servers

    settings, nats, s3 = start_servers(load_settings(data_dir=data), fixed_ports=False)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        asyncio.run(provision(settings, [model]))
        procs.append(start_functions(settings, data / "functions.log", env_extra=functions_env))
        procs.append(start_runner(settings, data / "runner.log", model=model, env_extra=runner_env))
        wait_for_log(data / "functions.log", '"consumer_started"', 120, procs[0])
        wait_for_log(data / "runner.log", "runner_io_ready", ready_timeout_s, procs[1])
        yield settings
    finally:
        for proc in reversed(procs):
            stop(proc)
        s3.stop()
        nats.stop()
