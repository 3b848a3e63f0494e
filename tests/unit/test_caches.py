"""Step caches on tiny-wan (real diffusers hooks, real WanPipeline loop with CFG, 10 steps).

For every supported cache: block compute is really skipped (counted below the hooks), the output
keeps its shape, and once the cache is removed the next run is bit-identical to a fresh run.
Misconfigurations (TaylorSeer's default identifiers, a threshold that never skips, FasterCache,
MagCache without ratios, first-block cache under sequence parallelism) raise ``Permanent``.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from gpu_runner import caches
from gpu_runner.caches import (
    CacheConfig,
    ComputeCounter,
    FirstBlockParams,
    PABParams,
    TaylorSeerParams,
    applied_cache,
    calibrate_mag_ratios,
    hooked_modules,
    verify_cache_skips,
)
from gpu_runner.pipelines import wan
from gpu_runner.pipelines.base import GenerateParams, LoadContext
from schemas.errors import ErrorCode, Permanent
from schemas.registry import MODELS

torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and much faster on a loaded host

STEPS = 10
PARAMS = GenerateParams(prompt="a dog running on the beach", width=32, height=32, num_frames=5, steps=STEPS,
                        guidance_scale=3.0, seed=3)  # CFG on: cond and uncond are separate transformer calls
CALLS = 2 * STEPS  # transformer calls per generation
BLOCKS = 2


@pytest.fixture(scope="module")
def model() -> wan.WanT2V:
    return wan.load(MODELS["tiny-wan"], None, LoadContext(seed=0))


@pytest.fixture(scope="module")
def baseline(model: wan.WanT2V) -> np.ndarray:
    with ComputeCounter(model) as counter:
        frames = model.generate(PARAMS)
    report = counter.report()
    assert report.transformer_calls == CALLS and report.blocks == BLOCKS
    assert report.computed == dict.fromkeys(caches.PARTS, CALLS * BLOCKS) and report.skipped_total == 0
    return frames


@pytest.fixture(scope="module")
def mag_ratios(model: wan.WanT2V, baseline: np.ndarray) -> tuple[float, ...]:
    ratios = calibrate_mag_ratios(model, PARAMS)
    assert len(ratios) == STEPS and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    assert hooked_modules(model.pipe.transformer) == {}  # calibration probe removed
    assert np.array_equal(model.generate(PARAMS), baseline)
    return ratios


# (config, expected skipped calls per part) on tiny-wan, 10 steps, CFG; see each comment.
CASES = {
    # threshold well above the default: random weights change block 0's residual a lot between steps
    "first_block": (CacheConfig(kind="first_block", first_block=FirstBlockParams(threshold=0.3)), None),
    # compute at steps 0,1,2,4,9; predict 3,5,6,7,8 -> 5 per branch per block
    "taylorseer": (CacheConfig(kind="taylorseer", taylorseer=TaylorSeerParams(lite=False)),
                   dict.fromkeys(caches.PARTS, 5 * 2 * BLOCKS)),
    "taylorseer_lite": (CacheConfig(kind="taylorseer", taylorseer=TaylorSeerParams(lite=True)),
                        dict.fromkeys(caches.PARTS, 5 * 2 * BLOCKS)),
    # timesteps in (100, 800) are steps 5..9; per branch, compute when step % range == 0:
    # range 2 skips steps 5, 7, 9; range 4 skips 5, 6, 7, 9
    "pab": (CacheConfig(kind="pab", pab=PABParams(spatial_skip_range=2, cross_skip_range=4)),
            {"self_attn": 3 * 2 * BLOCKS, "cross_attn": 4 * 2 * BLOCKS, "ffn": 0}),
    "mag": (CacheConfig(kind="mag"), None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cache_skips_compute_and_is_removed_cleanly(case: str, model: wan.WanT2V, baseline: np.ndarray,
                                                   mag_ratios: tuple[float, ...]) -> None:
    config, expected = CASES[case]
    if config.kind == "mag":
        config = config.with_mag_ratios(mag_ratios)
    with applied_cache(model, config, steps=STEPS) as handle, ComputeCounter(model) as counter:
        assert handle.hooked and hooked_modules(model.pipe.transformer)
        frames = model.generate(PARAMS)
    report = counter.report()
    assert report.transformer_calls == CALLS
    assert report.skipped_total > 0, report.as_dict()
    if expected is not None:
        assert report.skipped == expected, report.as_dict()
    assert frames.shape == baseline.shape and frames.dtype == np.uint8
    assert hooked_modules(model.pipe.transformer) == {}
    assert not model.pipe.transformer.is_cache_enabled
    assert np.array_equal(model.generate(PARAMS), baseline)  # next job without the cache: bit-identical


def test_pab_keeps_one_state_per_cfg_branch(model: wan.WanT2V) -> None:
    """diffusers' PAB shares one state across cond/uncond; ours keeps one per branch (cache context)."""
    config = CacheConfig(kind="pab", pab=PABParams(spatial_skip_range=2, spatial_timestep_range=(0, 1000)))
    with applied_cache(model, config), ComputeCounter(model) as counter:
        hook = model.pipe.transformer.blocks[0].attn1._diffusers_hook.get_hook("pyramid_attention_broadcast")
        assert type(hook).__name__ == "_BranchPABHook"
        seen: set[str] = set()
        model.generate(PARAMS, on_step=lambda i, n: seen.update(hook.states._state_cache))
    assert seen == {"cond", "uncond"}  # (the pipeline itself resets stateful hooks when it returns)
    # per branch: calls 0, 2, 4, ... compute, 1, 3, 5, ... reuse -> 5 of 10 per branch and block
    assert counter.report().skipped["self_attn"] == 5 * 2 * BLOCKS


def test_verify_cache_skips_passes_and_fails(model: wan.WanT2V, baseline: np.ndarray) -> None:
    report = verify_cache_skips(model, CacheConfig(kind="taylorseer"), PARAMS)
    assert report.skip_fraction == pytest.approx(0.5)
    never = CacheConfig(kind="first_block", first_block=FirstBlockParams(threshold=1e-9))
    with pytest.raises(Permanent, match="skipped no compute") as err:
        verify_cache_skips(model, never, PARAMS)
    assert err.value.code == ErrorCode.MODEL_ERROR
    assert not model.pipe.transformer.is_cache_enabled


def test_taylorseer_default_identifiers_are_refused(model: wan.WanT2V) -> None:
    diffusers_default = CacheConfig(kind="taylorseer", taylorseer=TaylorSeerParams(identifiers=(r"^blocks.*attn",),
                                                                                 lite=False))  # lite ignores patterns
    with pytest.raises(Permanent, match="matches no module") as err, applied_cache(model, diffusers_default):
        pass
    assert err.value.code == ErrorCode.MODEL_ERROR
    assert hooked_modules(model.pipe.transformer) == {}


def test_refusals(model: wan.WanT2V) -> None:
    with pytest.raises(Permanent, match="separate calls"), applied_cache(model, CacheConfig(kind="faster")):
        pass
    with pytest.raises(Permanent, match="calibrate_mag_ratios"), applied_cache(model, CacheConfig(kind="mag"), steps=9):
        pass
    sharded = SimpleNamespace(pipe=model.pipe, sequence_parallel=object())
    for kind in ("first_block", "mag"):
        config = CacheConfig(kind=kind).with_mag_ratios([1.0] * 9)
        with pytest.raises(Permanent, match="sequence parallel"), applied_cache(sharded, config, steps=9):
            pass
    with pytest.raises(Permanent, match="timestep"), applied_cache(model.pipe.transformer, CacheConfig(kind="pab")):
        pass
    with pytest.raises(ValueError):
        CacheConfig(kind="pab", pab=PABParams(spatial_skip_range=None))
    with pytest.raises(ValueError):
        CacheConfig(kind="unknown")  # type: ignore[arg-type]
    assert not model.pipe.transformer.is_cache_enabled and hooked_modules(model.pipe.transformer) == {}


def test_cache_is_removed_when_the_job_fails(model: wan.WanT2V) -> None:
    with pytest.raises(RuntimeError, match="boom"), applied_cache(model, CacheConfig(kind="taylorseer")):
        assert hooked_modules(model.pipe.transformer)
        raise RuntimeError("boom")
    assert not model.pipe.transformer.is_cache_enabled and hooked_modules(model.pipe.transformer) == {}
    with applied_cache(model, CacheConfig(kind="none")) as handle:  # no-op
        assert handle.hooked == []


def test_config_round_trips_as_json() -> None:
    config = CacheConfig(kind="mag").with_mag_ratios([1.0, 0.98, 0.97])
    assert CacheConfig.model_validate_json(config.model_dump_json()) == config
    assert config.summary()["mag_ratios"] == "3 ratios"


def test_prepare_calibrates_mag_and_verifies(model: wan.WanT2V) -> None:
    ready = caches.prepare(model, CacheConfig(kind="mag"), PARAMS)
    assert ready.mag.mag_ratios is not None and len(ready.mag.mag_ratios) == STEPS
    assert caches.prepare(model, CacheConfig(), PARAMS) == CacheConfig()  # none: nothing to do
    params = caches.verification_params(MODELS["wan2.1-t2v-1.3b"], world_size=64)
    assert params.steps == 50 and MODELS["wan2.1-t2v-1.3b"].latent_tokens(params.width, params.height,
                                                                           params.num_frames) >= 64


def test_counted_cache_per_job(model: wan.WanT2V) -> None:
    with caches.counted_cache(model, CacheConfig(kind="taylorseer"), steps=STEPS) as counter:
        model.generate(PARAMS)
    assert counter.report().skipped_total == 5 * 2 * BLOCKS * len(caches.PARTS)
    never = CacheConfig(kind="first_block", first_block=FirstBlockParams(threshold=1e-9))
    with pytest.raises(Permanent, match="skipped no compute"), \
            caches.counted_cache(model, never, steps=STEPS, check=True):
        model.generate(PARAMS)
    assert not model.pipe.transformer.is_cache_enabled


def test_cache_memory_estimates() -> None:
    wan13 = MODELS["wan2.1-t2v-1.3b"]
    gib = 2**30

    def est(config: CacheConfig, **kw: int) -> float:
        return caches.cache_memory_bytes(config, wan13, 832, 480, 81, **kw) / gib

    tokens, hidden = wan13.latent_tokens(832, 480, 81), wan13.transformer.hidden  # 32760 x 1536
    one = tokens * hidden * 2 / gib  # one bf16 hidden state: ~0.094 GiB
    assert est(CacheConfig()) == 0
    assert est(CacheConfig(kind="first_block")) == pytest.approx(2 * 3 * one)
    assert est(CacheConfig(kind="mag")) == pytest.approx(2 * one)
    # full TaylorSeer: 2 orders x 3 modules x 30 blocks x 2 branches -> ~34 GiB at 480p x 81
    full = CacheConfig(kind="taylorseer", taylorseer=TaylorSeerParams(lite=False))
    assert est(full) == pytest.approx(2 * 3 * 30 * 2 * one) and est(full) > 30
    assert est(CacheConfig(kind="taylorseer", taylorseer=TaylorSeerParams(lite=True))) < 0.1
    assert est(CacheConfig(kind="taylorseer")) < 0.1  # lite is the default (issue 17)
    # 14B at 720p x 81: full TaylorSeer ~346 GiB, PAB ~58 GiB (the figures the runner refuses at start)
    wan14 = MODELS["wan2.1-t2v-14b"]
    assert caches.cache_memory_bytes(full, wan14, 1280, 720, 81) / gib == pytest.approx(346, rel=0.02)
    assert caches.cache_memory_bytes(CacheConfig(kind="pab"), wan14, 1280, 720, 81) / gib == pytest.approx(58, rel=0.02)
    # CFG parallel: each rank holds only its own branch's state
    assert est(CacheConfig(kind="mag"), cfg_parallel=True) == pytest.approx(one)
    assert est(CacheConfig(kind="pab")) == pytest.approx(30 * 2 * one)
    assert est(CacheConfig(kind="pab"), world_size=2) == pytest.approx(30 * one)
