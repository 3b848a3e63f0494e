"""Wan on CUDA: tiny-wan in bf16, and the s/step of a Wan2.1-1.3B-shaped transformer at 480p×81.

Marked ``gpu``; skipped without CUDA.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_tiny_wan_bf16_generation_on_cuda() -> None:
    from gpu_runner.pipelines import wan
    from gpu_runner.pipelines.base import GenerateParams, LoadContext
    from schemas.registry import MODELS

    model = wan.load(MODELS["tiny-wan"], None, LoadContext(device="cuda", dtype="bfloat16"))
    assert model.pipe.transformer.dtype == torch.bfloat16
    assert model.pipe.vae.dtype == torch.float32
    params = GenerateParams(prompt="a cat", width=64, height=64, num_frames=9, steps=4, guidance_scale=3.0, seed=1)
    steps: list[int] = []
    first = model.generate(params, on_step=lambda i, n: steps.append(i))
    assert first.shape == (9, 64, 64, 3) and first.dtype == np.uint8
    assert steps == [1, 2, 3, 4]
    assert np.array_equal(model.generate(params), first)  # seeded noise is drawn on the CPU
    cond = first[-5:]
    chained = model.generate(dataclasses.replace(params, condition_frames=cond))
    assert chained.shape == first.shape
    model.warmup()


def test_wan13b_shaped_step_time_480p_81_frames() -> None:
    from bench.gpu_step import measure_step_seconds

    free_gib = torch.cuda.mem_get_info()[0] / 2**30
    if free_gib < 20:
        pytest.skip(f"only {free_gib:.0f} GiB free on the GPU")
    from functions.planner import cost, memory
    from schemas.registry import MODELS

    spec = MODELS["wan2.1-t2v-1.3b"]
    timing = measure_step_seconds(width=832, height=480, frames=81, steps=2, warmup=1, cfg=True)
    predicted_s = cost.step_flops(spec, 832, 480, 81, cfg=True) / cost.CostModel().flops_per_s
    est = memory.estimate_window(spec, 832, 480, 81)
    predicted_peak_gib = (spec.transformer.params_b * 1e9 * 2 + est.activation_bytes) / 2**30  # the DiT alone ran
    print(f"\nWan2.1-1.3B-shaped 480p x 81 frames: {timing.s_per_step:.3f} s/step on {timing.device_name} "
          f"(cost.py {predicted_s:.3f}), peak {timing.peak_memory_gib:.1f} GiB (memory.py {predicted_peak_gib:.1f})")
    assert timing.tokens == 32760 == spec.latent_tokens(832, 480, 81)
    assert math.isfinite(timing.s_per_step)
    # the planner's models are within a factor of what this GPU does (else plans are fiction)
    assert 1 / 4 <= predicted_s / timing.s_per_step <= 4, (predicted_s, timing.s_per_step)
    assert 1 / 2 <= predicted_peak_gib / timing.peak_memory_gib <= 2, (predicted_peak_gib, timing.peak_memory_gib)
