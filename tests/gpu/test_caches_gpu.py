"""Step caches and LoRA on CUDA (tiny-wan in bf16). Marked ``gpu``; skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

STEPS = 12


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    from gpu_runner.pipelines import wan
    from gpu_runner.pipelines.base import LoadContext
    from schemas.registry import MODELS

    return wan.load(MODELS["tiny-wan"], None, LoadContext(device="cuda", dtype="bfloat16"))


def _params():  # type: ignore[no-untyped-def]
    from gpu_runner.pipelines.base import GenerateParams

    return GenerateParams(prompt="a cat", width=64, height=64, num_frames=9, steps=STEPS, guidance_scale=4.0, seed=1)


@pytest.mark.parametrize("kind", ["first_block", "mag", "taylorseer", "pab"])
def test_each_cache_skips_on_cuda_and_leaves_no_trace(model, kind: str) -> None:  # type: ignore[no-untyped-def]
    from gpu_runner.caches import CacheConfig, FirstBlockParams, calibrate_mag_ratios, verify_cache_skips

    params = _params()
    before = model.generate(params)
    config = CacheConfig(kind=kind)
    if kind == "first_block":
        config = CacheConfig(kind=kind, first_block=FirstBlockParams(threshold=0.3))
    if kind == "mag":
        config = config.with_mag_ratios(calibrate_mag_ratios(model, params))
    report = verify_cache_skips(model, config, params)
    assert report.skipped_total > 0
    assert np.array_equal(model.generate(params), before)


def test_lora_on_cuda_bf16(model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from gpu_runner.lora import AdapterCache, LoraSpec, applied_lora
    from tests.unit.test_lora import make_lora_file

    params = _params()
    before = model.generate(params)
    lora = make_lora_file(tmp_path / "lora")
    with applied_lora(model, LoraSpec(source=str(lora), scale=1.0), AdapterCache(dir=tmp_path / "cache")):
        assert not np.array_equal(model.generate(params), before)
    assert np.array_equal(model.generate(params), before)
