"""Start the peer: a real ``redis-server``, uvicorn serving ``bench.redis_peer.app`` and one worker."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from runtime.embedded import free_port
from tests.stack import REPO, stop, wait_for_log

HOST = "127.0.0.1"


def redis_server_binary() -> str | None:
    """``redis-server`` on PATH (Debian: ``apt-get install -y redis-server``), or None."""
    return shutil.which("redis-server")


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited ({proc.returncode}):\n{log.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout_s}s:\n{log.read_text(errors='replace')[-4000:]}")


@contextlib.contextmanager
def running_peer(data: Path, *, threads: int = 1, ready_timeout_s: float = 240.0) -> Iterator[str]:
    """Redis + API + worker under ``data``; yields the API's base URL; stops all on exit."""
    binary = redis_server_binary()
    if binary is None:
        raise FileNotFoundError("redis-server not found: apt-get update && apt-get install -y redis-server")
    data.mkdir(parents=True, exist_ok=True)
    (data / "redis").mkdir(exist_ok=True)
    redis_port, api_port = free_port(HOST), free_port(HOST)
    redis_url = f"redis://{HOST}:{redis_port}/0"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIDEOGEN_", "PEER_"))}
    env.update({"PEER_REDIS_URL": redis_url, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
                "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=log.open("ab"), stderr=subprocess.STDOUT,
                             start_new_session=True)
        procs.append(p)
        return p

    try:
        redis_log = data / "redis.log"
        rp = spawn([binary, "--port", str(redis_port), "--bind", HOST, "--dir", str(data / "redis"),
                    "--save", "", "--appendonly", "no", "--daemonize", "no"], redis_log)
        wait_for_log(redis_log, "Ready to accept connections", 30, rp)
        wp = spawn([sys.executable, "-m", "bench.redis_peer.worker"], data / "worker.log")
        api_log = data / "api.log"
        ap = spawn([sys.executable, "-m", "uvicorn", "bench.redis_peer.app:app", "--host", HOST,
                    "--port", str(api_port), "--workers", "1", "--log-level", "warning", "--no-access-log"],
                   api_log)
        base = f"http://{HOST}:{api_port}"
        _wait_http(f"{base}/healthz", 60, ap, api_log)
        wait_for_log(data / "worker.log", "peer_worker_ready", ready_timeout_s, wp)
        yield base
    finally:
        for p in reversed(procs):
            stop(p)
