"""Speed/memory options as configuration (issue 17): applied and logged, or refused loudly.

Tiled VAE tolerance (stated): on tiny random weights the tiled decode differs from the full one
by a mean of <= 8 levels (of 255) with a PSNR >= 20 dB — random weights have no smoothness for
the tile blending to rely on; the device check measures real checkpoints' PSNR. The tiles bound
memory: the decoder never sees more than one tile of latents.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gpu_runner import accel
from gpu_runner.accel import AccelConfig
from gpu_runner.pipelines import _common
from gpu_runner.pipelines.base import GenerateParams, LoadContext
from gpu_runner.registry import load_model
from schemas.errors import ErrorCode, Permanent


@pytest.mark.parametrize(("config", "match"), [
    (AccelConfig(fp8=True), "FP8 .* need CUDA"),
    (AccelConfig(attention_backend="flash"), "needs CUDA"),
    (AccelConfig(attention_backend="sage"), "needs CUDA"),
    (AccelConfig(attention_backend="_native_flash"), "needs CUDA"),
    (AccelConfig(attention_backend="flash_hub"), "no network"),
    (AccelConfig(attention_backend="magic"), "unknown"),
    (AccelConfig(offload="block"), "offload"),
    (AccelConfig(offload="model"), "offload"),
])
def test_unavailable_options_are_refused_loudly_on_cpu(config: AccelConfig, match: str) -> None:
    with pytest.raises(Permanent, match=match) as err:
        accel.check(config, "cpu")
    assert err.value.code == ErrorCode.MODEL_ERROR


def test_refused_at_load_not_at_the_first_job() -> None:
    with pytest.raises(Permanent, match="FP8"):
        load_model("tiny-wan", Path("models"), LoadContext(accel=AccelConfig(fp8=True)))


def test_xfuser_backend_is_refused_with_the_alternative() -> None:
    from gpu_runner.distributed import DistContext
    from gpu_runner.pipelines import tiny_components as tc
    from gpu_runner.sequence_parallel import apply_sequence_parallel

    with pytest.raises(Permanent, match="xfuser is not supported.*native"):
        apply_sequence_parallel(tc.tiny_transformer(0), DistContext(world_size=2), backend="xfuser")


PARAMS = GenerateParams(prompt="a red car", width=32, height=32, num_frames=5, steps=2, guidance_scale=4.0, seed=3)


def test_attention_backend_goes_through_diffusers_dispatcher() -> None:
    ref = load_model("tiny-wan", Path("models"), LoadContext(seed=0)).generate(PARAMS)
    model = load_model("tiny-wan", Path("models"), LoadContext(seed=0, accel=AccelConfig(
        attention_backend="_native_math")))
    transformer = model.pipe.transformer
    try:
        backends = {str(m.processor._attention_backend) for m in transformer.modules()
                    if hasattr(getattr(m, "processor", None), "_attention_backend")}
        assert backends == {"AttentionBackendName._NATIVE_MATH"} or backends == {"_native_math"}
        frames = model.generate(PARAMS)
    finally:
        transformer.reset_attention_backend()
    assert int(np.abs(frames.astype(int) - ref.astype(int)).max()) <= 1


def test_compile_is_applied_to_the_repeated_blocks() -> None:
    model = load_model("tiny-wan", Path("models"), LoadContext(seed=0))
    applied = accel.apply(model.pipe, AccelConfig(compile=True), "cpu")
    assert applied == ["compile:blocks"]
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in model.pipe.transformer.blocks)


def test_tiled_vae_decode_is_bounded_and_close_to_the_full_decode() -> None:
    params = GenerateParams(prompt="a red car", width=128, height=128, num_frames=5, steps=1, guidance_scale=1.0,
                            seed=3)
    full = load_model("tiny-wan", Path("models"), LoadContext(seed=0)).generate(params)
    tiled_model = load_model("tiny-wan", Path("models"), LoadContext(seed=0, accel=AccelConfig(
        vae_tiling=True, vae_tile=64)))
    seen: list[tuple[int, int]] = []
    hook = tiled_model.pipe.vae.decoder.register_forward_pre_hook(lambda _m, a: seen.append(tuple(a[0].shape[-2:])))
    tiled = tiled_model.generate(params)
    hook.remove()
    assert max(max(s) for s in seen) <= 64 // 8  # one 64-pixel tile of latents at a time, never 16x16
    diff = np.abs(tiled.astype(float) - full.astype(float))
    mse = float((diff**2).mean())
    assert diff.mean() <= 8 and 10 * np.log10(255**2 / max(mse, 1e-9)) >= 20


def test_frames_become_uint8_on_the_device_like_to_uint8() -> None:
    g = torch.Generator().manual_seed(0)
    video = torch.rand(1, 4, 3, 8, 8, generator=g)
    video[0, 0, 0, 0, :4] = torch.tensor([0.5 / 255, 1.5 / 255, 254.5 / 255, 1.0])
    ours = _common.frames_to_uint8(video).numpy()
    reference = _common.to_uint8(video[0].permute(0, 2, 3, 1).numpy())
    assert ours.dtype == np.uint8 and np.array_equal(ours, reference)


def test_prompt_embeddings_are_cached_per_prompt_and_ranks_above_0_keep_frames_on_device() -> None:
    model = load_model("tiny-wan", Path("models"), LoadContext(seed=0, host_frames=False))
    first = model.generate(PARAMS)
    model.generate(PARAMS)
    assert model.prompt_encodes == 1  # a job's segments share the prompt: encoded once
    model.generate(GenerateParams(**{**PARAMS.__dict__, "prompt": "a blue car"}))
    assert model.prompt_encodes == 2
    assert first.shape == (5, 0, 0, 3)  # no host copy off rank 0


def test_text_encoder_offload_default() -> None:
    assert _common.offloads_text_encoder(LoadContext(device="cuda:0"))
    assert not _common.offloads_text_encoder(LoadContext(device="cuda:0", offload_text_encoder=False))
    assert not _common.offloads_text_encoder(LoadContext(device="cpu"))
