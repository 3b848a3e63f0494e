"""A shared tester for the tiny pipeline families (after diffusers' ``PipelineTesterMixin``).

A family's test class sets the class attributes and overrides ``params`` (and, where the family
differs, ``input_variants``/``check_reloaded``); it inherits the checks every family must pass:
deterministic tiny weights that leave the global RNG alone, shape/dtype/progress, determinism per
seed and per conditioning input, classifier-free guidance, cancellation at a step boundary, invalid
inputs -> ``OUT_OF_RANGE``, bit-identical save/reload, load errors -> ``MODEL_ERROR``, loading
through ``gpu_runner.registry``, warmup and a bfloat16 build. Family-specific checks (architecture,
conditioning on the previous segment) stay in the family's class, using the helpers here.

Not collected itself (no ``Test`` prefix); ``pytest_generate_tests`` below parametrizes
``test_invalid_inputs_are_out_of_range`` from each subclass's ``invalid_inputs``.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from gpu_runner.pipelines.base import GenerateParams, LoadContext
from schemas.errors import Cancelled, ErrorCode, Permanent
from schemas.registry import ModelSpec

torch.set_num_threads(min(2, os.cpu_count() or 1))


# -- helpers ------------------------------------------------------------------------------------
def state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def gradient_image(height: int = 32, width: int = 32, shift: int = 0) -> np.ndarray:
    """A smooth RGB test picture (h, w, 3) uint8, rolled ``shift`` pixels to the right."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)], axis=-1)
    return np.roll(image.astype(np.uint8), shift, axis=1)


def gradient_clip(frames: int, height: int = 32, width: int | None = None) -> np.ndarray:
    """``frames`` of ``gradient_image`` moving 2 pixels per frame (F, h, w, 3) uint8."""
    return np.stack([gradient_image(height, height if width is None else width, 2 * k) for k in range(frames)])


def latent_stats(vae: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's latent normalisation (mean, std), shaped to broadcast over (1, C, T, H, W)."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return mean, std


class DecodeSpy:
    """Records the latents the pipeline hands to ``vae.decode`` (de-normalised by the pipeline)."""

    def __init__(self, model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.latents: list[torch.Tensor] = []
        vae = model.pipe.vae
        original = vae.decode

        def decode(z: torch.Tensor, *args: object, **kwargs: object) -> object:
            self.latents.append(z.detach().clone())
            return original(z, *args, **kwargs)

        monkeypatch.setattr(vae, "decode", decode)


# -- the tester -----------------------------------------------------------------------------------
class TinyPipelineTester:
    family: ClassVar[ModuleType]  # gpu_runner.pipelines.<family>
    spec: ClassVar[ModelSpec]  # the tiny spec
    real_spec: ClassVar[ModelSpec]  # a full-size spec of the family (no checkpoint here)
    pipeline_class: ClassVar[type]  # what ``family.load`` returns
    weight_components: ClassVar[tuple[str, ...]] = ("transformer", "text_encoder", "vae")
    fp32_components: ClassVar[tuple[str, ...]] = ("vae",)  # stay float32 in a bfloat16 build
    shape_case: ClassVar[dict[str, Any]] = {"width": 64, "height": 32, "num_frames": 9, "steps": 3}
    cfg_overrides: ClassVar[dict[str, Any]] = {"guidance_scale": 5.0, "negative_prompt": "blurry"}
    invalid_inputs: ClassVar[list[dict[str, Any]]] = []

    # -- what a family provides -------------------------------------------------------------
    def params(self, **overrides: Any) -> GenerateParams:
        base: dict[str, Any] = {"prompt": "a cat walking on the beach", "width": 32, "height": 32, "num_frames": 5,
                                    "steps": 2, "guidance_scale": 1.0, "seed": 7}
        base.update(overrides)
        return GenerateParams(**base)

    def input_variants(self) -> list[dict[str, Any]]:
        """Overrides of a conditioning input that must change the output (beyond the seed)."""
        return []

    def check_reloaded(self, reloaded: Any) -> None:
        """Family-specific checks of a pipeline reloaded from disk."""

    # -- parametrization and fixtures ---------------------------------------------------------
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "invalid" in metafunc.fixturenames:
            cases = metafunc.cls.invalid_inputs  # type: ignore[union-attr]
            metafunc.parametrize("invalid", cases, ids=[",".join(c) for c in cases])

    @pytest.fixture(scope="class")
    def model(self) -> Any:
        return self.family.load(self.spec, None, LoadContext(seed=0))

    @pytest.fixture(scope="class")
    def reference(self, model: Any) -> np.ndarray:
        return model.generate(self.params())

    # -- the shared checks --------------------------------------------------------------------
    def test_weights_are_deterministic_per_seed_and_leave_global_rng_alone(self) -> None:
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        a, b, c = (self.family.build_tiny(self.spec, LoadContext(seed=s)).pipe for s in (0, 0, 1))
        assert torch.equal(torch.rand(3), expected)
        for name in self.weight_components:
            assert same(state(getattr(a, name)), state(getattr(b, name))), name
            assert not same(state(getattr(a, name)), state(getattr(c, name))), name

    def test_generate_shape_dtype_and_progress(self, model: Any) -> None:
        case = self.shape_case
        steps: list[tuple[int, int]] = []
        video = model.generate(self.params(**case), on_step=lambda i, n: steps.append((i, n)))
        assert video.shape == (case["num_frames"], case["height"], case["width"], 3)
        assert video.dtype == np.uint8
        assert steps == [(i, case["steps"]) for i in range(1, case["steps"] + 1)]

    def test_generate_is_deterministic_per_seed_and_input(self, model: Any, reference: np.ndarray) -> None:
        assert np.array_equal(model.generate(self.params()), reference)
        assert not np.array_equal(model.generate(self.params(seed=8)), reference)
        for overrides in self.input_variants():
            assert not np.array_equal(model.generate(self.params(**overrides)), reference), list(overrides)

    def test_classifier_free_guidance_runs(self, model: Any, reference: np.ndarray) -> None:
        video = model.generate(self.params(**self.cfg_overrides))
        assert video.shape == reference.shape and video.dtype == np.uint8
        assert not np.array_equal(video, reference)

    def test_cancel_stops_at_step_boundary_and_pipeline_stays_usable(self, model: Any,
                                                                     reference: np.ndarray) -> None:
        seen: list[int] = []

        def cancel_at_2(i: int, n: int) -> None:
            seen.append(i)
            if i == 2:
                raise Cancelled("job cancelled")

        with pytest.raises(Cancelled):
            model.generate(self.params(steps=4), on_step=cancel_at_2)
        assert seen == [1, 2]
        # the next job on the same pipeline is unaffected
        assert np.array_equal(model.generate(self.params()), reference)

    def test_invalid_inputs_are_out_of_range(self, model: Any, invalid: dict[str, Any]) -> None:
        with pytest.raises(Permanent) as err:
            model.generate(self.params(**invalid))
        assert err.value.code == ErrorCode.OUT_OF_RANGE

    def test_save_and_reload_is_bit_identical(self, model: Any, reference: np.ndarray, tmp_path: Path) -> None:
        path = tmp_path / self.spec.name
        model.save(path)
        assert (path / "model_index.json").is_file()
        for name in self.family.REQUIRED_COMPONENTS:
            assert (path / name).is_dir(), name
        reloaded = self.family.load(self.spec, path, LoadContext(seed=999))  # weights come from disk
        for name in ("transformer", *self.weight_components):
            assert same(state(getattr(reloaded.pipe, name)), state(getattr(model.pipe, name))), name
        self.check_reloaded(reloaded)
        assert np.array_equal(reloaded.generate(self.params()), reference)

    def test_load_errors_are_permanent_model_errors(self, tmp_path: Path) -> None:
        with pytest.raises(Permanent) as missing:
            self.family.load(self.spec, tmp_path / "nope", LoadContext())
        assert missing.value.code == ErrorCode.MODEL_ERROR
        with pytest.raises(Permanent) as no_ckpt:
            self.family.load(self.real_spec, None, LoadContext())
        assert no_ckpt.value.code == ErrorCode.MODEL_ERROR

    def test_registry_loads_the_family(self, tmp_path: Path) -> None:
        from gpu_runner.registry import load_model

        assert isinstance(load_model(self.spec.name, tmp_path, LoadContext(seed=0)), self.pipeline_class)

    def test_warmup(self, model: Any) -> None:
        model.warmup()

    def test_bfloat16_build_keeps_fp32_modules(self) -> None:
        m = self.family.build_tiny(self.spec, LoadContext(dtype="bfloat16"))
        transformer = m.pipe.transformer
        assert transformer.proj_out.weight.dtype == torch.bfloat16
        assert transformer.scale_shift_table.dtype == torch.float32
        for name in self.fp32_components:
            assert getattr(m.pipe, name).dtype == torch.float32, name
        video = m.generate(self.params(steps=1))
        assert video.shape == (5, 32, 32, 3) and video.dtype == np.uint8
