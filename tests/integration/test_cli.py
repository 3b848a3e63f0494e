"""`videogen status` without job ids lists the most recent jobs; `videogen up` starts, says where
everything is, serves client commands and stops on Ctrl-C — against real servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from runtime.bus import Bus
from runtime.embedded import free_port
from runtime.settings import Settings
from schemas.messages import JobState, JobStatus
from tests.stack import REPO, child_env

pytestmark = [pytest.mark.integration]


def job_rows(stdout: str, prefix: str) -> list[str]:
    return [line.split()[0] for line in stdout.splitlines() if line.strip().startswith(prefix)]


async def test_status_without_ids_lists_the_most_recent_jobs_newest_first(stack: Settings, bus: Bus) -> None:
    kv = await bus.kv()
    base = datetime(2100, 1, 1, tzinfo=UTC)  # newer than anything another test wrote
    # stored in an order unrelated to recency: the listing must sort by updated_at
    for i in (3, 0, 4, 1, 2):
        st = JobStatus(job_id=f"recent-{i}", state=JobState.SUCCEEDED if i % 2 else JobState.QUEUED,
                       progress=100.0 if i % 2 else 0.0, created_at=base, updated_at=base + timedelta(minutes=i))
        await kv.put(st.job_id, st.model_dump_json().encode())
    await kv.put("not-a-status", b"{broken")  # skipped, not a crash

    env = {k: v for k, v in child_env(stack).items() if k != "VIDEOGEN_LOG_FORMAT"}
    shown = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "runtime.cli", "status", "--limit", "3"],
                                    env=env, cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert job_rows(shown.stdout, "recent-") == ["recent-4", "recent-3", "recent-2"], shown.stdout
    assert "succeeded" in shown.stdout and "queued" in shown.stdout

    default = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "runtime.cli", "status"], env=env,
                                      cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert default.returncode == 0, default.stderr
    assert job_rows(default.stdout, "recent-") == [f"recent-{i}" for i in (4, 3, 2, 1, 0)]


def test_up_prints_addresses_and_webhook_verification_and_serves_clients(tmp_path: Path) -> None:
    nats_port, s3_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOGEN_")}
    env.update({"VIDEOGEN_DATA_DIR": str(tmp_path), "VIDEOGEN_NATS_URL": f"nats://127.0.0.1:{nats_port}",
                "VIDEOGEN_S3_ENDPOINT": f"http://127.0.0.1:{s3_port}", "PYTHONUNBUFFERED": "1",
                "VIDEOGEN_S3_ACCESS_KEY": "AKIDUPTEST", "VIDEOGEN_S3_SECRET_KEY": "up-test-s3-secret",
                "VIDEOGEN_GATEWAY_PORT": str(free_port())})
    up = subprocess.Popen([sys.executable, "-m", "runtime.cli", "up"], env=env, cwd=str(REPO),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 180
        assert up.stdout is not None
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if line.startswith("Ctrl-C to stop"):
                break
        text = "\n".join(lines)
        assert lines and lines[-1].startswith("Ctrl-C to stop"), (text, up.poll())
        assert f"nats://127.0.0.1:{nats_port}" in text and f"http://127.0.0.1:{s3_port}" in text, text
        secret_file = tmp_path.resolve() / "webhook-secret"
        assert f"signed with the secret in {secret_file} (the built-in development secret" in text, text
        assert "verify(body, headers)" in text, text
        assert secret_file.read_text().strip().startswith("whsec_")
        stack_env = (tmp_path / "stack.env").read_text()
        assert "VIDEOGEN_S3_SECRET_KEY=up-test-s3-secret" in stack_env
        assert "AKIDUPTEST" not in text and "up-test-s3-secret" not in text  # no credentials printed

        # the gateway `up` started, and the development key it printed, answer the HTTP API
        exports = dict(line.strip().removeprefix("export ").split("=", 1) for line in lines
                       if line.strip().startswith("export "))
        gw, key = exports["VIDEOGEN_GATEWAY_URL"], exports["VIDEOGEN_API_KEY"]
        assert key.startswith("vg_") and f"{gw}/#key={key}" in text, text
        listed = urllib.request.urlopen(urllib.request.Request(  # noqa: S310 - the local gateway
            f"{gw}/v1/videos", headers={"Authorization": f"Bearer {key}"}), timeout=30)
        assert listed.status == 200 and json.loads(listed.read())["object"] == "list"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"{gw}/v1/videos", timeout=30)  # noqa: S310
        assert denied.value.code == 401

        # a newcomer's next terminal: only VIDEOGEN_DATA_DIR, everything else from stack.env
        client_env = {k: v for k, v in env.items() if k not in ("VIDEOGEN_NATS_URL", "VIDEOGEN_S3_ENDPOINT")}
        st = subprocess.run([sys.executable, "-m", "runtime.cli", "status"], env=client_env, cwd=str(REPO),
                            capture_output=True, text=True, timeout=60)
        assert st.returncode == 0 and "no jobs" in st.stderr, (st.stdout, st.stderr)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(timeout=10)
    assert up.returncode == 0, up.stderr.read() if up.stderr else ""
