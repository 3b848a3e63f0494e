"""The README's first command, ``videogen demo``, as a newcomer runs it (a process, no stdin): it
starts everything, shows the job's progress, two verified webhooks, the presigned URL and the web
console's address, downloads the output without credentials and exits 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gateway_server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_videogen_demo(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOGEN_")}
    env.update(VIDEOGEN_DATA_DIR=str(tmp_path), VIDEOGEN_GATEWAY_PORT=str(free_port()))
    done = subprocess.run([sys.executable, "-m", "runtime.cli", "demo"], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=400)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert re.search(r"console: http://127\.0\.0\.1:\d+/#key=vg_", out), out
    assert "job.succeeded" in out and "100.0%" in out, out
    assert re.search(r"job\.accepted\s+webhook-id \S+\s+signature verified", out), out
    assert re.search(r"job\.succeeded\s+webhook-id \S+\s+signature verified", out), out
    assert re.search(r"^http://127\.0\.0\.1:\d+/videogen/jobs/demo-\S+/output\.mp4\?X-Amz-Algorithm=AWS4-HMAC-SHA256",
                     out, re.M), out
    assert "sha256 matches, 9 frames decoded" in out and "demo OK" in out, out
