"""tiny-wan-animate: the real diffusers Wan-Animate architecture with tiny random weights, on the CPU.

Covers deterministic weights, generation shape/dtype, monotonic progress across the pipeline's
internal segments, cooperative cancellation, save/reload, input validation (absent image / pose /
face -> MISSING_INPUT), replace mode, and chaining on the previous segment's frames (mask
conditioning of the first internal segment + latent replacement).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from gpu_runner.pipelines import wan_animate
from gpu_runner.pipelines._common import condition_latent_frames, decode_latents
from gpu_runner.pipelines.base import GenerateParams, LoadContext
from schemas.errors import Cancelled, ErrorCode, Permanent
from schemas.registry import MODELS

torch.set_num_threads(min(2, os.cpu_count() or 1))

SPEC = MODELS["tiny-wan-animate"]
FACE = wan_animate.FACE_SIZE


def _image(height: int, width: int, shift: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)], axis=-1)
    return np.roll(image.astype(np.uint8), shift, axis=1)


def _clip(frames: int, height: int, width: int) -> np.ndarray:
    return np.stack([_image(height, width, 2 * k) for k in range(frames)])


def params(**overrides: object) -> GenerateParams:
    frames = int(overrides.get("num_frames", 5))  # type: ignore[call-overload]
    height, width = int(overrides.get("height", 32)), int(overrides.get("width", 32))  # type: ignore[call-overload]
    base: dict[str, object] = dict(
        prompt="a person dancing", width=width, height=height, num_frames=frames, steps=2, guidance_scale=1.0,
        seed=7, image=_image(height, width), pose_video=255 - _clip(frames, height, width),
        face_video=_clip(frames, FACE, FACE),
    )
    base.update(overrides)
    return GenerateParams(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def model() -> wan_animate.WanAnimate:
    return wan_animate.load(SPEC, None, LoadContext(seed=0))


@pytest.fixture(scope="module")
def reference(model: wan_animate.WanAnimate) -> np.ndarray:
    return model.generate(params())


SEGMENTED = dict(num_frames=9, extra={"segment_frame_length": 5})  # 2 internal segments of 5 (overlap 1)


@pytest.fixture(scope="module")
def segmented(model: wan_animate.WanAnimate) -> tuple[np.ndarray, list[tuple[int, int]]]:
    steps: list[tuple[int, int]] = []
    video = model.generate(params(**SEGMENTED), on_step=lambda i, n: steps.append((i, n)))
    return video, steps


def _state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_weights_are_deterministic_per_seed_and_leave_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = (wan_animate.build_tiny(SPEC, LoadContext(seed=s)).pipe for s in (0, 0, 1))
    assert torch.equal(torch.rand(3), expected)
    for name in ("transformer", "text_encoder", "vae", "image_encoder"):
        assert _same(_state(getattr(a, name)), _state(getattr(b, name))), name
        assert not _same(_state(getattr(a, name)), _state(getattr(c, name))), name


def test_architecture_is_real_wan_animate(model: wan_animate.WanAnimate) -> None:
    from diffusers import WanAnimatePipeline, WanAnimateTransformer3DModel
    from transformers import CLIPVisionModel

    pipe = model.pipe
    assert isinstance(pipe, WanAnimatePipeline)
    assert isinstance(pipe.transformer, WanAnimateTransformer3DModel)
    assert isinstance(pipe.image_encoder, CLIPVisionModel)
    cfg = pipe.transformer.config
    assert cfg.in_channels == 2 * pipe.vae.config.z_dim + 4
    assert cfg.image_dim == pipe.image_encoder.config.hidden_size
    assert cfg.added_kv_proj_dim == cfg.num_attention_heads * cfg.attention_head_dim
    assert len(pipe.transformer.face_adapter) >= 1
    assert model.face_size == cfg.motion_encoder_size == FACE == wan_animate.face_size(SPEC) == 16
    assert wan_animate.face_size(MODELS["wan2.2-animate-14b"]) == wan_animate.REAL_FACE_SIZE == 512


def test_generate_shape_dtype_and_progress(model: wan_animate.WanAnimate) -> None:
    steps: list[tuple[int, int]] = []
    video = model.generate(params(width=64, height=32, num_frames=9, steps=3), on_step=lambda i, n: steps.append((i, n)))
    assert video.shape == (9, 32, 64, 3)
    assert video.dtype == np.uint8
    assert steps == [(1, 3), (2, 3), (3, 3)]


def test_progress_is_monotonic_across_internal_segments(
        segmented: tuple[np.ndarray, list[tuple[int, int]]]) -> None:
    """9 frames in internal segments of 5 (overlap 1): 2 segments x 2 steps, reported as 1..4 of 4."""
    assert wan_animate.internal_segments(9, 5) == 2 and wan_animate.internal_segments(9, 9) == 1
    assert wan_animate.internal_segments(77, 77) == 1 and wan_animate.internal_segments(10, 5) == 3
    video, steps = segmented
    assert video.shape == (9, 32, 32, 3) and video.dtype == np.uint8
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_generate_is_deterministic_and_depends_on_seed_and_motion(model: wan_animate.WanAnimate,
                                                                  reference: np.ndarray) -> None:
    assert np.array_equal(model.generate(params()), reference)
    assert not np.array_equal(model.generate(params(seed=8)), reference)
    assert not np.array_equal(model.generate(params(face_video=255 - _clip(5, FACE, FACE))), reference)


def test_cancel_in_a_later_internal_segment_leaves_pipeline_usable(
        model: wan_animate.WanAnimate, segmented: tuple[np.ndarray, list[tuple[int, int]]]) -> None:
    p = params(**SEGMENTED)
    seen: list[int] = []

    def cancel_at_3(i: int, n: int) -> None:
        seen.append(i)
        if i == 3:
            raise Cancelled("job cancelled")

    with pytest.raises(Cancelled):
        model.generate(p, on_step=cancel_at_3)
    assert seen == [1, 2, 3]
    assert "prepare_prev_segment_cond_latents" not in vars(model.pipe)
    assert np.array_equal(model.generate(p), segmented[0])


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"image": None}, "image"),
        ({"pose_video": None}, "pose_video"),
        ({"face_video": None, "image": None}, "image, face_video"),
        ({"extra": {"mode": "replace"}}, "background_video, mask_video"),
    ],
)
def test_missing_inputs_are_permanent_missing_input(model: wan_animate.WanAnimate, overrides: dict[str, object],
                                                    names: str) -> None:
    with pytest.raises(Permanent, match=names) as err:
        model.generate(params(**overrides))
    assert err.value.code == ErrorCode.MISSING_INPUT


@pytest.mark.parametrize(
    "overrides",
    [
        {"pose_video": np.zeros((5, 16, 16, 3), np.uint8)},  # not on the output grid
        {"pose_video": np.zeros((4, 32, 32, 3), np.uint8)},  # wrong frame count
        {"face_video": np.zeros((5, FACE, FACE + 2, 3), np.uint8)},  # not square
        {"face_video": np.zeros((9, FACE, FACE, 3), np.uint8)},  # wrong frame count
        {"face_video": np.zeros((5, FACE, FACE, 3), np.float32)},
        {"image": np.zeros((32, 32), np.uint8)},
        {"extra": {"mode": "dance"}},
        {"extra": {"segment_frame_length": 6}},
        {"extra": {"segment_frame_length": 9}},  # longer than the window
        {"num_frames": 9, "extra": {"segment_frame_length": 5}, "condition_frames": np.zeros((5, 32, 32, 3), np.uint8)},
        {"extra": {"mode": "replace", "background_video": np.zeros((5, 32, 32, 3), np.uint8),
                   "mask_video": np.zeros((5, 32, 32, 3), np.uint8)}},  # mask must be (F, H, W)
        {"num_frames": 6},
    ],
)
def test_invalid_inputs_are_out_of_range(model: wan_animate.WanAnimate, overrides: dict[str, object]) -> None:
    with pytest.raises(Permanent) as err:
        model.generate(params(**overrides))
    assert err.value.code == ErrorCode.OUT_OF_RANGE


def test_replace_mode_cfg_and_other_face_sizes_run(model: wan_animate.WanAnimate, reference: np.ndarray) -> None:
    mask = np.zeros((5, 32, 32), np.uint8)
    mask[:, 8:24, 8:24] = 255  # regenerate the centre, keep the background elsewhere
    replaced = model.generate(params(extra={"mode": "replace", "background_video": _clip(5, 32, 32),
                                            "mask_video": mask}))
    assert replaced.shape == reference.shape and not np.array_equal(replaced, reference)
    guided = model.generate(params(guidance_scale=3.0, negative_prompt="blurry", face_video=_clip(5, 24, 24)))
    assert guided.shape == reference.shape and guided.dtype == np.uint8


def test_save_and_reload_is_bit_identical(model: wan_animate.WanAnimate, reference: np.ndarray, tmp_path: Path) -> None:
    model.save(tmp_path / "tiny-wan-animate")
    reloaded = wan_animate.load(SPEC, tmp_path / "tiny-wan-animate", LoadContext(seed=999))  # weights from disk
    for name in ("transformer", "image_encoder", "text_encoder", "vae"):
        assert _same(_state(getattr(reloaded.pipe, name)), _state(getattr(model.pipe, name))), name
    assert reloaded.face_size == FACE
    assert np.array_equal(reloaded.generate(params()), reference)


def test_load_errors_are_permanent_model_errors(tmp_path: Path) -> None:
    with pytest.raises(Permanent) as missing:
        wan_animate.load(SPEC, tmp_path / "nope", LoadContext())
    assert missing.value.code == ErrorCode.MODEL_ERROR
    with pytest.raises(Permanent) as no_ckpt:
        wan_animate.load(MODELS["wan2.2-animate-14b"], None, LoadContext())
    assert no_ckpt.value.code == ErrorCode.MODEL_ERROR
    with pytest.raises(Permanent, match="sequence parallelism") as no_sp:
        wan_animate.load(SPEC, None, LoadContext(world_size=2, sequence_parallel=True))
    assert no_sp.value.code == ErrorCode.MODEL_ERROR


def test_registry_loads_the_family(tmp_path: Path) -> None:
    from gpu_runner.registry import load_model

    assert isinstance(load_model("tiny-wan-animate", tmp_path, LoadContext(seed=0)), wan_animate.WanAnimate)


def test_condition_frames_start_the_window(model: wan_animate.WanAnimate, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chaining: the O condition frames enter the first internal segment's frame mask/condition
    channels (as a previous internal segment's tail would), and the first ``1 + (O-1)//4`` video
    latent frames end up exactly on the condition latents (decoded frames = decode(encode(cond)))."""
    pipe = model.pipe
    overlap, frames = 5, 9
    cond = _clip(overlap, 32, 32)
    k = condition_latent_frames(overlap)
    inputs: list[torch.Tensor] = []
    decoded: list[torch.Tensor] = []
    decode = pipe.vae.decode

    def spy_decode(z: torch.Tensor, *args: object, **kwargs: object) -> object:
        decoded.append(z.detach().clone())
        return decode(z, *args, **kwargs)

    def spy_forward(module: torch.nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        hidden = kwargs["hidden_states"]
        assert isinstance(hidden, torch.Tensor)
        inputs.append(hidden.detach().clone())

    monkeypatch.setattr(pipe.vae, "decode", spy_decode)
    hook = pipe.transformer.register_forward_pre_hook(spy_forward, with_kwargs=True)
    try:
        conditioned = model.generate(params(num_frames=frames, steps=3, condition_frames=cond))
        free = model.generate(params(num_frames=frames, steps=3))
    finally:
        hook.remove()
        monkeypatch.undo()
    assert "prepare_prev_segment_cond_latents" not in vars(pipe)  # the per-call override is gone

    z = pipe.vae.config.z_dim
    mask = inputs[0][:, z: z + 4]  # frame mask: [reference slot | video latent frames]
    assert torch.all(mask[:, :, : 1 + k] == 1) and torch.all(mask[:, :, 1 + k:] == 0)
    free_mask = inputs[-1][:, z: z + 4]
    assert torch.all(free_mask[:, :, :1] == 1) and torch.all(free_mask[:, :, 1:] == 0)

    expected = model.encode_condition(cond)
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(decoded[0][:, :, :k], expected * std + mean, atol=1e-5, rtol=1e-5)
    assert (decoded[1][:, :, :k] - (expected * std + mean)).abs().mean().item() > 0.1  # unconditioned differs
    target = decode_latents(pipe.vae, expected)
    assert conditioned.shape == free.shape == (frames, 32, 32, 3)
    assert np.abs(conditioned[:overlap].astype(int) - target.astype(int)).max() <= 1


def test_warmup(model: wan_animate.WanAnimate) -> None:
    model.warmup()
