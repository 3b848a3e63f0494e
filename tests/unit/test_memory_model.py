"""The planner's memory model counts what really sits on the GPU (issue 17)."""

from __future__ import annotations

import pytest

from functions.planner.memory import (
    DEVICE_MARGIN_BYTES,
    GIB,
    MemoryModel,
    device_budget,
    estimate_window,
    max_window_frames,
    step_cache_bytes,
)
from functions.planner.plan import DEFAULT_BUDGET_BYTES, plan_segments
from functions.planner.segments import RunnerTarget
from gpu_runner.budget import WindowBudget
from runtime.settings import load_settings
from schemas.errors import Permanent
from schemas.registry import MODELS

A14B, T2V14, I2V14, T2V13 = (MODELS[m] for m in ("wan2.2-t2v-a14b", "wan2.1-t2v-14b", "wan2.1-i2v-14b-480p",
                                                  "wan2.1-t2v-1.3b"))


def test_real_parameter_counts_and_both_experts() -> None:
    assert (T2V13.transformer.params_b, T2V14.transformer.params_b, I2V14.transformer.params_b) == (1.42, 14.29, 16.39)
    assert MODELS["wan2.2-animate-14b"].transformer.params_b == pytest.approx(17.3)
    assert MODELS["wan2.2-ti2v-5b"].vae_params_b == 0.705
    one, two = estimate_window(T2V14, 1280, 720, 81), estimate_window(A14B, 1280, 720, 81)
    assert two.weights_bytes - one.weights_bytes == pytest.approx(14.29e9 * 2, rel=1e-6)  # the second expert


def test_a14b_at_720p_needs_what_it_really_needs() -> None:
    # the figure (~79 GiB) is with the text encoder resident; offloading it after encoding saves ~10.6 GiB
    resident = estimate_window(A14B, 1280, 720, 81, model=MemoryModel(offload_text_encoder=False)).total_bytes / GIB
    offloaded = estimate_window(A14B, 1280, 720, 81).total_bytes / GIB
    assert resident == pytest.approx(79, rel=0.03)
    assert offloaded == pytest.approx(resident - 5.68e9 * 2 / GIB, rel=0.01)
    assert 65 < offloaded < 76  # fits a 76 GiB budget, not 41 GiB as once planned
    assert max_window_frames(A14B, 1280, 720, 41 * GIB) == 0


def test_text_encoder_visits_for_the_encode_and_clip_is_counted() -> None:
    e = estimate_window(T2V13, 832, 480, 81)
    assert e.encode_bytes == int(5.68e9 * 2)  # UMT5-XXL in bf16 visits for the encode ...
    assert e.total_bytes >= e.reserve_bytes + e.weights_bytes + e.encode_bytes  # ... on top of the resident DiT
    i2v, t2v = estimate_window(I2V14, 832, 480, 81), estimate_window(T2V14, 832, 480, 81)
    assert i2v.encode_bytes == int(5.68e9 * 2)
    # CLIP ViT-H in fp32 is resident, with the I2V transformer's extra 2.1 B parameters
    assert i2v.weights_bytes - t2v.weights_bytes == pytest.approx(0.632e9 * 4 + (16.39 - 14.29) * 1e9 * 2, rel=1e-6)


def test_fsdp_sharding_divides_the_weights() -> None:
    one = estimate_window(A14B, 1280, 720, 81)
    four = estimate_window(A14B, 1280, 720, 81, model=MemoryModel(shard_ranks=4))
    dit = 2 * 14.29e9 * 2
    expected = one.weights_bytes - dit * 3 / 4 + 14.29e9 * 2 / 40 + 5.68e9 * 2 / 4
    assert four.weights_bytes == pytest.approx(expected, rel=1e-6) and four.encode_bytes == 0
    assert four.total_bytes < one.total_bytes - 30 * GIB


def test_step_cache_state_counts_against_the_budget() -> None:
    none = max_window_frames(T2V14, 1280, 720, 60 * GIB)
    pab = max_window_frames(T2V14, 1280, 720, 60 * GIB, cache="pab")
    assert pab < none
    assert step_cache_bytes("taylorseer", T2V14, 1280, 720, 81, taylor_lite=False) / GIB == pytest.approx(346, rel=0.02)
    assert step_cache_bytes("taylorseer", T2V14, 1280, 720, 81) < GIB  # lite, the default


def test_cfg_parallel_splits_tokens_over_half_the_ranks() -> None:
    four_cfg = estimate_window(T2V14, 1280, 720, 81, ranks=4, cfg_parallel=True)
    two_sp = estimate_window(T2V14, 1280, 720, 81, ranks=2)
    assert four_cfg.activation_bytes == two_sp.activation_bytes
    with pytest.raises(ValueError, match="even"):
        estimate_window(T2V14, 1280, 720, 81, ranks=3, cfg_parallel=True)


def test_budget_is_device_memory_minus_a_margin() -> None:
    assert DEFAULT_BUDGET_BYTES == 79 * GIB - DEVICE_MARGIN_BYTES < 80 * GIB  # an H100 has ~79.2 GiB, not 80
    assert device_budget(50 * GIB) == 47 * GIB and device_budget(GIB) == 0


def test_planner_gets_the_runner_ranks_cfg_and_cache() -> None:
    target = RunnerTarget.from_settings(load_settings(runner_ranks=4, runner_cfg_parallel=True, runner_cache="pab"))
    assert target == RunnerTarget(ranks=4, cfg_parallel=True, cache="pab")
    assert RunnerTarget(ranks=4, cfg_parallel=True, shard="fsdp").memory_model().shard_ranks == 2  # a CFG half
    alone = plan_segments(161, T2V14, 1280, 720, budget_bytes=40 * GIB)
    group = plan_segments(161, T2V14, 1280, 720, budget_bytes=40 * GIB, **RunnerTarget(4, True).plan_kwargs())
    assert group.max_window_frames > alone.max_window_frames  # tokens split over the 2 ranks of a CFG half
    cached = plan_segments(161, T2V14, 1280, 720, budget_bytes=40 * GIB, **target.plan_kwargs())
    assert cached.max_window_frames < group.max_window_frames  # PAB's state takes its share


def test_runner_refuses_a_cache_that_cannot_fit_at_start() -> None:
    budget = WindowBudget(spec=T2V14, budget_bytes=60 * GIB, cache="pab")
    with pytest.raises(Permanent, match="step cache 'pab' keeps"):
        budget.check_cache()
    WindowBudget(spec=T2V14, budget_bytes=60 * GIB, cache="taylorseer").check_cache()  # lite fits
    assert WindowBudget(spec=T2V14, budget_bytes=40 * GIB).cap(1280, 720) < 81


def test_cost_model_reads_measured_constants_when_present(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import json

    from functions.planner import cost

    assert cost.load_cost_model(tmp_path / "absent.json").source == "declared"
    f = tmp_path / "measured.json"
    spec = MODELS["wan2.1-t2v-14b"]
    flops = cost.measured_flops_per_s(spec, 832, 480, 81, 4.0)
    f.write_text(json.dumps({"flops_per_s": flops, "device_name": "NVIDIA H200"}))
    monkeypatch.setenv(cost.MEASURED_ENV, str(f))
    measured = cost.load_cost_model()
    assert measured.source == "measured on NVIDIA H200 (measured.json)"
    # the model then predicts the measured s/step back (one step, without the per-segment overhead)
    one_step = cost.window_cost(spec, 832, 480, 81, 1, model=measured) - measured.overhead_s
    assert one_step == pytest.approx(4.0)
    f.write_text(json.dumps({"flops_per_s": -1}))
    with pytest.raises(ValueError, match="flops_per_s"):
        cost.load_cost_model()
