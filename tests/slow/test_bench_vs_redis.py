"""``bench/vs_redis.py --quick`` end to end, so the side-by-side cannot rot: both systems start
(real redis-server + uvicorn + worker; real nats-server + weed mini + functions + runner), serve
every workload, and the MP4 bytes each side handed back decode (PyAV) to the right frame count.

Skipped when the peer's ``redis-server`` (Debian: ``apt-get install -y redis-server``) or the
``redis`` client package is not installed; see bench/README.md.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("redis-server") is None,
                       reason="redis-server not installed (apt-get update && apt-get install -y redis-server)"),
    pytest.mark.skipif(importlib.util.find_spec("redis") is None,
                       reason="the redis client package is not installed (pip install 'redis>=5')"),
]

FRAMES = {"single": 9, "burst": 17, "big": 49}
SIZE = {"single": 64, "burst": 64, "big": 128}


def _decoded_frames(path: Path) -> tuple[int, int, int]:
    with av.open(str(path)) as c:
        frames = [f for f in c.decode(video=0)]
    return len(frames), frames[0].width, frames[0].height


def test_vs_redis_quick_both_sides_hand_back_valid_mp4s(tmp_path: Path) -> None:
    out, summary = tmp_path / "mp4", tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.vs_redis", "--quick", "--singles", "2", "--warmup", "1", "--burst", "3",
         "--big", "1", "--out", str(out), "--json", str(summary)],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    counts = {"single": 2, "burst": 3, "big": 1}
    for side in ("peer", "ours"):
        for name, n in counts.items():
            files = sorted(out.glob(f"{side}-{name}-*.mp4"))
            assert len(files) == n, (side, name, files)
            for f in files:
                assert f.read_bytes()[4:8] == b"ftyp", f
                assert _decoded_frames(f) == (FRAMES[name], SIZE[name], SIZE[name]), f
    rows = json.loads(summary.read_text())["rows"]
    assert [r["name"].split()[0] for r in rows] == ["single", "single", "burst", "1"]
    for r in rows:
        assert r["peer"] > 0 and r["ours"] > 0 and r["ratio"] == pytest.approx(r["ours"] / r["peer"])
    assert "ours: p50 / p99 time from the previous mark" in proc.stdout
    assert "job.segment_completed" in proc.stdout
