"""tiny-wan-animate: the real diffusers Wan-Animate architecture with tiny random weights, on the CPU.

The shared checks (``tests/unit/tiny_pipeline.py``): deterministic weights, generation
shape/dtype, step progress, cooperative cancellation, save/reload, input validation, load errors,
warmup, bfloat16. Here: the architecture, monotonic progress across the pipeline's internal
segments and cancelling in a later one, absent image / pose / face (-> MISSING_INPUT), replace
mode, no sequence parallelism, and chaining on the previous segment's frames (mask conditioning of
the first internal segment + latent replacement).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from gpu_runner.pipelines import wan_animate
from gpu_runner.pipelines._common import condition_latent_frames, decode_latents
from gpu_runner.pipelines.base import GenerateParams, LoadContext
from schemas.errors import Cancelled, ErrorCode, Permanent
from schemas.registry import MODELS
from tests.unit.tiny_pipeline import (
    TinyPipelineTester,
    gradient_clip,
    gradient_image,
    latent_stats,
)

SPEC = MODELS["tiny-wan-animate"]
FACE = SPEC.face_size
SEGMENTED = {"num_frames": 9, "extra": {"segment_frame_length": 5}}  # 2 internal segments of 5 (overlap 1)


class TestTinyWanAnimate(TinyPipelineTester):
    family = wan_animate
    spec = SPEC
    real_spec = MODELS["wan2.2-animate-14b"]
    pipeline_class = wan_animate.WanAnimate
    weight_components: ClassVar[tuple[str, ...]] = ("transformer", "text_encoder", "vae", "image_encoder")
    fp32_components: ClassVar[tuple[str, ...]] = ("vae", "image_encoder")
    cfg_overrides: ClassVar[dict[str, Any]] = {
        "guidance_scale": 3.0, "negative_prompt": "blurry", "face_video": gradient_clip(5, 24)}
    invalid_inputs: ClassVar[list[dict[str, Any]]] = [
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
    ]

    def params(self, **overrides: Any) -> GenerateParams:
        frames = int(overrides.get("num_frames", 5))
        height, width = int(overrides.get("height", 32)), int(overrides.get("width", 32))
        base: dict[str, Any] = {
            "prompt": "a person dancing", "image": gradient_image(height, width),
            "pose_video": 255 - gradient_clip(frames, height, width), "face_video": gradient_clip(frames, FACE),
        }
        return super().params(**{**base, **overrides})

    def input_variants(self) -> list[dict[str, Any]]:
        return [{"face_video": 255 - gradient_clip(5, FACE)}]  # the motion drives the output

    def check_reloaded(self, reloaded: Any) -> None:
        assert reloaded.face_size == FACE

    @pytest.fixture(scope="class")
    def segmented(self, model: wan_animate.WanAnimate) -> tuple[np.ndarray, list[tuple[int, int]]]:
        steps: list[tuple[int, int]] = []
        video = model.generate(self.params(**SEGMENTED), on_step=lambda i, n: steps.append((i, n)))
        return video, steps

    def test_architecture_is_real_wan_animate(self, model: wan_animate.WanAnimate) -> None:
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
        # one source for the face-crop side: the registry (preprocess crops to it; load checks it)
        assert model.face_size == cfg.motion_encoder_size == FACE == SPEC.face_size == 16
        assert MODELS["wan2.2-animate-14b"].face_size == 512

    def test_progress_is_monotonic_across_internal_segments(
            self, segmented: tuple[np.ndarray, list[tuple[int, int]]]) -> None:
        """9 frames in internal segments of 5 (overlap 1): 2 segments x 2 steps, reported as 1..4 of 4."""
        assert wan_animate.internal_segments(9, 5) == 2 and wan_animate.internal_segments(9, 9) == 1
        assert wan_animate.internal_segments(77, 77) == 1 and wan_animate.internal_segments(10, 5) == 3
        video, steps = segmented
        assert video.shape == (9, 32, 32, 3) and video.dtype == np.uint8
        assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]

    def test_cancel_in_a_later_internal_segment_leaves_pipeline_usable(
            self, model: wan_animate.WanAnimate, segmented: tuple[np.ndarray, list[tuple[int, int]]]) -> None:
        p = self.params(**SEGMENTED)
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
    def test_missing_inputs_are_permanent_missing_input(self, model: wan_animate.WanAnimate,
                                                        overrides: dict[str, object], names: str) -> None:
        with pytest.raises(Permanent, match=names) as err:
            model.generate(self.params(**overrides))
        assert err.value.code == ErrorCode.MISSING_INPUT

    def test_replace_mode_runs(self, model: wan_animate.WanAnimate, reference: np.ndarray) -> None:
        mask = np.zeros((5, 32, 32), np.uint8)
        mask[:, 8:24, 8:24] = 255  # regenerate the centre, keep the background elsewhere
        replaced = model.generate(self.params(extra={"mode": "replace", "background_video": gradient_clip(5),
                                                     "mask_video": mask}))
        assert replaced.shape == reference.shape and not np.array_equal(replaced, reference)

    def test_no_sequence_parallelism(self) -> None:
        with pytest.raises(Permanent, match="sequence parallelism") as no_sp:
            wan_animate.load(SPEC, None, LoadContext(world_size=2, sequence_parallel=True))
        assert no_sp.value.code == ErrorCode.MODEL_ERROR

    def test_condition_frames_start_the_window(self, model: wan_animate.WanAnimate,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
        """Chaining: the O condition frames enter the first internal segment's frame mask/condition
        channels (as a previous internal segment's tail would), and the first ``1 + (O-1)//4`` video
        latent frames end up exactly on the condition latents (decoded frames = decode(encode(cond)))."""
        pipe = model.pipe
        overlap, frames = 5, 9
        cond = gradient_clip(overlap)
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
            conditioned = model.generate(self.params(num_frames=frames, steps=3, condition_frames=cond))
            free = model.generate(self.params(num_frames=frames, steps=3))
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
        mean, std = latent_stats(pipe.vae)
        torch.testing.assert_close(decoded[0][:, :, :k], expected * std + mean, atol=1e-5, rtol=1e-5)
        assert (decoded[1][:, :, :k] - (expected * std + mean)).abs().mean().item() > 0.1  # unconditioned differs
        target = decode_latents(pipe.vae, expected)
        assert conditioned.shape == free.shape == (frames, 32, 32, 3)
        assert np.abs(conditioned[:overlap].astype(int) - target.astype(int)).max() <= 1
