"""The GPU benchmarks' code path, run on the CPU with the tiny transformer (``--smoke``), so the
scripts a GPU session will run do not rot between GPU sessions. Figures here mean nothing."""

from __future__ import annotations

import json
from pathlib import Path

from bench import runner_gpu


def test_runner_gpu_smoke_runs_every_cache_and_counts_skips(tmp_path: Path) -> None:
    out = tmp_path / "caches.json"
    assert runner_gpu.main(["--smoke", "--steps", "12", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {r["cache"]: r for r in data["results"]}
    assert set(rows) == {"none", *runner_gpu.KINDS}
    assert rows["none"]["skip_fraction"] == 0 and rows["none"]["speedup"] == 1.0
    for kind in runner_gpu.KINDS:  # every cache really skipped block work (counted, not assumed)
        assert rows[kind]["skip_fraction"] > 0, rows[kind]
        assert rows[kind]["psnr_db"] is None or rows[kind]["psnr_db"] > 10
    assert data["device"] == "cpu" and data["steps"] == 12
