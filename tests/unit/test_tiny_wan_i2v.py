"""tiny-wan-i2v: the real diffusers Wan 2.1 image-to-video architecture with tiny random weights, on the CPU.

The shared checks (``tests/unit/tiny_pipeline.py``): deterministic weights, generation
shape/dtype, step progress, cooperative cancellation, save/reload, input validation, load errors,
warmup, bfloat16. Here: the architecture, a missing image (-> MISSING_INPUT), an incomplete
checkpoint, and chaining on the previous segment's frames (the window's frame 0 is the i2v image;
latent replacement pins the overlap).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from gpu_runner.pipelines import wan_i2v
from gpu_runner.pipelines._common import condition_latent_frames, decode_latents
from gpu_runner.pipelines.base import GenerateParams, LoadContext
from schemas.errors import ErrorCode, Permanent
from schemas.registry import MODELS
from tests.unit.tiny_pipeline import (
    TinyPipelineTester,
    gradient_clip,
    gradient_image,
    latent_stats,
)

SPEC = MODELS["tiny-wan-i2v"]
IMAGE = gradient_image()


class TestTinyWanI2V(TinyPipelineTester):
    family = wan_i2v
    spec = SPEC
    real_spec = MODELS["wan2.1-i2v-14b-480p"]
    pipeline_class = wan_i2v.WanI2V
    weight_components: ClassVar[tuple[str, ...]] = ("transformer", "text_encoder", "vae", "image_encoder")
    fp32_components: ClassVar[tuple[str, ...]] = ("vae", "image_encoder")
    cfg_overrides: ClassVar[dict[str, Any]] = {
        "guidance_scale": 5.0, "negative_prompt": "blurry", "image": gradient_image(48, 40)}
    invalid_inputs: ClassVar[list[dict[str, Any]]] = [
        {"image": IMAGE.astype(np.float32)},
        {"image": IMAGE[..., :1]},
        {"image": np.zeros((32, 32, 4), np.uint8)},
        {"num_frames": 8},
        {"width": 40},
        {"steps": 0},
        {"guidance_scale": float("nan")},
        {"condition_frames": np.zeros((5, 32, 32, 3), np.uint8)},  # O must be < num_frames
        {"condition_frames": np.zeros((1, 16, 16, 3), np.uint8)},  # wrong size
    ]

    def params(self, **overrides: Any) -> GenerateParams:
        # the reference image on the output grid unless given (32x32: IMAGE)
        image = gradient_image(int(overrides.get("height", 32)), int(overrides.get("width", 32)))
        return super().params(**{"image": image, **overrides})

    def input_variants(self) -> list[dict[str, Any]]:
        return [{"image": 255 - IMAGE}]

    def test_architecture_is_real_wan_i2v(self, model: wan_i2v.WanI2V) -> None:
        from diffusers import (
            AutoencoderKLWan,
            WanImageToVideoPipeline,
            WanTransformer3DModel,
        )
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

    def test_missing_image_is_a_permanent_missing_input(self, model: wan_i2v.WanI2V) -> None:
        with pytest.raises(Permanent) as err:
            model.generate(self.params(image=None))
        assert err.value.code == ErrorCode.MISSING_INPUT

    def test_incomplete_checkpoint_is_a_permanent_model_error(self, tmp_path: Path) -> None:
        partial = tmp_path / "partial"
        for name in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
            (partial / name).mkdir(parents=True)
        (partial / "model_index.json").write_text("{}")
        with pytest.raises(Permanent, match="image_encoder, image_processor") as incomplete:
            wan_i2v.load(SPEC, partial, LoadContext())
        assert incomplete.value.code == ErrorCode.MODEL_ERROR

    @pytest.mark.parametrize("overlap", [5, 1])
    def test_condition_frames_start_the_window(self, model: wan_i2v.WanI2V, overlap: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
        """Chaining: the i2v image is the window's frame 0 (= condition_frames[0]); the first
        ``1 + (O-1)//4`` latent frames end up exactly on the condition latents, so the decoded first O
        frames equal decode(encode(condition)). No ``params.image`` is needed for segment k+1."""
        pipe = model.pipe
        cond = gradient_clip(overlap)
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
        conditioned = model.generate(self.params(num_frames=9, steps=3, image=None, condition_frames=cond))
        monkeypatch.undo()

        assert len(images) == 1 and np.array_equal(images[0], cond[0])
        expected = model.encode_condition(cond)
        mean, std = latent_stats(pipe.vae)
        torch.testing.assert_close(decoded[0][:, :, :k], expected * std + mean, atol=1e-5, rtol=1e-5)
        target = decode_latents(pipe.vae, expected)
        assert conditioned.shape == (9, 32, 32, 3)
        assert np.abs(conditioned[:overlap].astype(int) - target.astype(int)).max() <= 1
