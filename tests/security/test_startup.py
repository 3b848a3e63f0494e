"""A process with VIDEOGEN_EMBEDDED=false and a development secret stops at start-up (real processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOGEN_")}
    base.update({"VIDEOGEN_EMBEDDED": "false", "VIDEOGEN_DATA_DIR": str(tmp_path),
                 # nothing listens here: a process that got past the check would hang or fail differently
                 "VIDEOGEN_NATS_URL": "nats://127.0.0.1:9", "PYTHONPATH": str(REPO), **env})
    return subprocess.run([sys.executable, *args], env=base, capture_output=True, text=True, timeout=120, check=False,
                          cwd=str(REPO))


@pytest.mark.parametrize("args", [["-m", "runtime.cli", "functions", "preprocess"],
                                  ["-m", "gpu_runner", "--model", "tiny-wan"],
                                  ["-m", "runtime.cli", "status", "some-job"]])
def test_dev_webhook_secret_stops_start_up(tmp_path: Path, args: list[str]) -> None:
    r = _run(args, tmp_path, VIDEOGEN_S3_ACCESS_KEY="AKIAREAL", VIDEOGEN_S3_SECRET_KEY="real-secret-key-1")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [line for line in r.stderr.splitlines() if "refusing to start" in line]
    assert len(lines) == 1 and "VIDEOGEN_WEBHOOK_SECRET" in lines[0]
    assert "Traceback" not in r.stderr


def test_dev_s3_key_named(tmp_path: Path) -> None:
    r = _run(["-m", "runtime.cli", "functions", "preprocess"], tmp_path,
             VIDEOGEN_WEBHOOK_SECRET="whsec_" + "B" * 40, VIDEOGEN_S3_ACCESS_KEY="AKIAREAL")
    assert r.returncode == 2
    assert "VIDEOGEN_S3_SECRET_KEY is the public development default" in r.stderr

