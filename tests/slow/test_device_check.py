"""The device check's dry run (CPU, tiny shapes): the script and every section stay runnable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from functions.planner.cost import load_cost_model

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_device_check_dry_run(tmp_path: Path) -> None:
    out, cost_file = tmp_path / "out", tmp_path / "measured_cost.json"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", "bench/device_check.sh", "--dry-run", "--cost-file", str(cost_file)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    report = json.loads((out / "device_check.json").read_text())
    assert report["failed"] == []
    sections = report["sections"]
    assert {"gpu_tests", "13b_480p", "14b_480p_cfg", "caches", "compile", "fp8", "vae", "cost_file"} <= set(sections)
    assert sections["13b_480p"]["s_per_step_cfg"] > 0 and sections["14b_480p_cfg"]["s_per_step_cfg"] > 0
    assert [r["cache"] for r in sections["caches"]["results"]] == ["none", "first_block", "mag", "taylorseer", "pab"]
    assert "need CUDA" in sections["fp8"]["refused_on_cpu"]
    assert sections["vae"]["psnr_db"] is None or sections["vae"]["psnr_db"] > 10
    # the planner's cost model reads what the check wrote
    model = load_cost_model(cost_file)
    assert model.source.startswith("measured on cpu") and model.flops_per_s == pytest.approx(
        json.loads(cost_file.read_text())["flops_per_s"])
    assert "device check summary" in (out / "device_check.txt").read_text()
    assert (out / "log.txt").is_file()
