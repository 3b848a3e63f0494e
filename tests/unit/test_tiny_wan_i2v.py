"""tiny-wan-i2v: the real diffusers Wan 2.1 image-to-video architecture with tiny random weights, on the CPU.

Covers deterministic weights, generation shape/dtype, step progress, cooperative cancellation,
save/reload, input validation (missing image -> MISSING_INPUT) and chaining on the previous
segment's frames (the window's frame 0 is the i2v image; latent replacement pins the overlap).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from gpu_runner.pipelines import wan_i2v
from gpu_runner.pipelines._common import condition_latent_frames, decode_latents
from gpu_runner.pipelines.base import GenerateParams, LoadContext
from schemas.errors import Cancelled, ErrorCode, Permanent
from schemas.registry import MODELS

torch.set_num_threads(min(2, os.cpu_count() or 1))

SPEC = MODELS["tiny-wan-i2v"]


def _image(height: int = 32, width: int = 32, shift: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)], axis=-1)
    return np.roll(image.astype(np.uint8), shift, axis=1)


def _clip(frames: int, size: int = 32) -> np.ndarray:
    return np.stack([_image(size, size, 2 * k) for k in range(frames)])


IMAGE = _image()


def params(**overrides: object) -> GenerateParams:
    base: dict[str, object] = dict(prompt="a cat walking on the beach", width=32, height=32, num_frames=5,
                                   steps=2, guidance_scale=1.0, seed=7, image=IMAGE)
    base.update(overrides)
    return GenerateParams(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def model() -> wan_i2v.WanI2V:
    return wan_i2v.load(SPEC, None, LoadContext(seed=0))


@pytest.fixture(scope="module")
def reference(model: wan_i2v.WanI2V) -> np.ndarray:
    return model.generate(params())


def _state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_weights_are_deterministic_per_seed_and_leave_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = (wan_i2v.build_tiny(SPEC, LoadContext(seed=s)).pipe for s in (0, 0, 1))
    assert torch.equal(torch.rand(3), expected)
    for name in ("transformer", "text_encoder", "vae", "image_encoder"):
        assert _same(_state(getattr(a, name)), _state(getattr(b, name))), name
        assert not _same(_state(getattr(a, name)), _state(getattr(c, name))), name


def test_architecture_is_real_wan_i2v(model: wan_i2v.WanI2V) -> None:
    from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import CLIPVisionModel

    pipe = model.pipe
    assert isinstance(pipe, WanImageToVideoPipeline)
    assert isinstance(pipe.transformer, WanTransformer3DModel)
    assert isinstance(pipe.vae, AutoencoderKLWan)
    assert isinstance(pipe.image_encoder, CLIPVisionModel)
    cfg = pipe.transformer.config
    assert cfg.in_channels == 36 == 2 * pipe.vae.config.z_dim + 4
    assert cfg.image_dim == pipe.image_encoder.config.hidden_size
    assert cfg.added_kv_proj_dim == cfg.num_attention_heads * cfg.attention_head_dim  # own image cross-attention
    assert pipe.transformer.blocks[0].attn2.add_k_proj is not None
    assert cfg.num_layers == SPEC.transformer.num_layers and cfg.num_attention_heads == SPEC.transformer.num_heads


def test_generate_shape_dtype_and_progress(model: wan_i2v.WanI2V) -> None:
    steps: list[tuple[int, int]] = []
    video = model.generate(params(width=64, height=32, num_frames=9, steps=3, image=_image(32, 64)),
                           on_step=lambda i, n: steps.append((i, n)))
    assert video.shape == (9, 32, 64, 3)
    assert video.dtype == np.uint8
    assert steps == [(1, 3), (2, 3), (3, 3)]


def test_generate_is_deterministic_and_depends_on_seed_and_image(model: wan_i2v.WanI2V, reference: np.ndarray) -> None:
    assert np.array_equal(model.generate(params()), reference)
    assert not np.array_equal(model.generate(params(seed=8)), reference)
    assert not np.array_equal(model.generate(params(image=255 - IMAGE)), reference)


def test_classifier_free_guidance_and_other_image_sizes_run(model: wan_i2v.WanI2V, reference: np.ndarray) -> None:
    video = model.generate(params(guidance_scale=5.0, negative_prompt="blurry", image=_image(48, 40)))
    assert video.shape == reference.shape and video.dtype == np.uint8


def test_cancel_stops_at_step_boundary_and_pipeline_stays_usable(model: wan_i2v.WanI2V, reference: np.ndarray) -> None:
    seen: list[int] = []

    def cancel_at_2(i: int, n: int) -> None:
        seen.append(i)
        if i == 2:
            raise Cancelled("job cancelled")

    with pytest.raises(Cancelled):
        model.generate(params(steps=4), on_step=cancel_at_2)
    assert seen == [1, 2]
    assert np.array_equal(model.generate(params()), reference)


def test_missing_image_is_a_permanent_missing_input(model: wan_i2v.WanI2V) -> None:
    with pytest.raises(Permanent) as err:
        model.generate(params(image=None))
    assert err.value.code == ErrorCode.MISSING_INPUT


@pytest.mark.parametrize(
    "overrides",
    [
        {"image": IMAGE.astype(np.float32)},
        {"image": IMAGE[..., :1]},
        {"image": np.zeros((32, 32, 4), np.uint8)},
        {"num_frames": 8},
        {"width": 40},
        {"steps": 0},
        {"guidance_scale": float("nan")},
        {"condition_frames": np.zeros((5, 32, 32, 3), np.uint8)},  # O must be < num_frames
        {"condition_frames": np.zeros((1, 16, 16, 3), np.uint8)},  # wrong size
    ],
)
def test_invalid_inputs_are_out_of_range(model: wan_i2v.WanI2V, overrides: dict[str, object]) -> None:
    with pytest.raises(Permanent) as err:
        model.generate(params(**overrides))
    assert err.value.code == ErrorCode.OUT_OF_RANGE


def test_save_and_reload_is_bit_identical(model: wan_i2v.WanI2V, reference: np.ndarray, tmp_path: Path) -> None:
    model.save(tmp_path / "tiny-wan-i2v")
    for name in wan_i2v.REQUIRED_COMPONENTS:
        assert (tmp_path / "tiny-wan-i2v" / name).is_dir(), name
    reloaded = wan_i2v.load(SPEC, tmp_path / "tiny-wan-i2v", LoadContext(seed=999))  # weights come from disk
    for name in ("transformer", "image_encoder", "text_encoder", "vae"):
        assert _same(_state(getattr(reloaded.pipe, name)), _state(getattr(model.pipe, name))), name
    assert np.array_equal(reloaded.generate(params()), reference)


def test_load_errors_are_permanent_model_errors(tmp_path: Path) -> None:
    with pytest.raises(Permanent) as missing:
        wan_i2v.load(SPEC, tmp_path / "nope", LoadContext())
    assert missing.value.code == ErrorCode.MODEL_ERROR
    partial = tmp_path / "partial"
    for name in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        (partial / name).mkdir(parents=True)
    (partial / "model_index.json").write_text("{}")
    with pytest.raises(Permanent, match="image_encoder, image_processor") as incomplete:
        wan_i2v.load(SPEC, partial, LoadContext())
    assert incomplete.value.code == ErrorCode.MODEL_ERROR
    with pytest.raises(Permanent) as no_ckpt:
        wan_i2v.load(MODELS["wan2.1-i2v-14b-480p"], None, LoadContext())
    assert no_ckpt.value.code == ErrorCode.MODEL_ERROR


def test_registry_loads_the_family(tmp_path: Path) -> None:
    from gpu_runner.registry import load_model

    assert isinstance(load_model("tiny-wan-i2v", tmp_path, LoadContext(seed=0)), wan_i2v.WanI2V)


@pytest.mark.parametrize("overlap", [5, 1])
def test_condition_frames_start_the_window(model: wan_i2v.WanI2V, overlap: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chaining: the i2v image is the window's frame 0 (= condition_frames[0]); the first
    ``1 + (O-1)//4`` latent frames end up exactly on the condition latents, so the decoded first O
    frames equal decode(encode(condition)). No ``params.image`` is needed for segment k+1."""
    pipe = model.pipe
    cond = _clip(overlap)
    k = condition_latent_frames(overlap)
    decoded: list[torch.Tensor] = []
    images: list[np.ndarray] = []
    decode, encode_image = pipe.vae.decode, pipe.encode_image

    def spy_decode(z: torch.Tensor, *args: object, **kwargs: object) -> object:
        decoded.append(z.detach().clone())
        return decode(z, *args, **kwargs)

    def spy_encode_image(image: object, *args: object, **kwargs: object) -> torch.Tensor:
        images.append(np.asarray(image))
        return encode_image(image, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(pipe.vae, "decode", spy_decode)
    monkeypatch.setattr(pipe, "encode_image", spy_encode_image)
    conditioned = model.generate(params(num_frames=9, steps=3, image=None, condition_frames=cond))
    monkeypatch.undo()

    assert len(images) == 1 and np.array_equal(images[0], cond[0])
    expected = model.encode_condition(cond)
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(decoded[0][:, :, :k], expected * std + mean, atol=1e-5, rtol=1e-5)
    target = decode_latents(pipe.vae, expected)
    assert conditioned.shape == (9, 32, 32, 3)
    assert np.abs(conditioned[:overlap].astype(int) - target.astype(int)).max() <= 1


def test_warmup(model: wan_i2v.WanI2V) -> None:
    model.warmup()


def test_bfloat16_build_keeps_fp32_modules() -> None:
    m = wan_i2v.build_tiny(SPEC, LoadContext(dtype="bfloat16"))
    assert m.pipe.transformer.proj_out.weight.dtype == torch.bfloat16
    assert m.pipe.transformer.scale_shift_table.dtype == torch.float32
    assert m.pipe.vae.dtype == torch.float32 and m.pipe.image_encoder.dtype == torch.float32
    video = m.generate(params(steps=1))
    assert video.shape == (5, 32, 32, 3) and video.dtype == np.uint8
