"""The model registry and the pipeline families cannot drift; frame arithmetic has one home."""

from __future__ import annotations

import importlib

import pytest
from pydantic import ValidationError

from functions.preprocess.validate import RequestRejected, resolve
from gpu_runner import registry as gpu_registry
from gpu_runner.pipelines.base import LoadContext
from schemas.errors import ErrorCode, Permanent
from schemas.messages import JobRequest, Task
from schemas.registry import (
    MODELS,
    ModelSpec,
    latent_frames,
    round_down_window,
    round_up_window,
)

SPECS = sorted(MODELS.values(), key=lambda s: s.name)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_model_is_served_by_a_family_implementing_its_tasks(spec: ModelSpec) -> None:
    module = importlib.import_module(f"gpu_runner.pipelines.{spec.family}")
    assert spec.tasks and set(spec.tasks) <= module.TASKS, (spec.name, spec.tasks, module.TASKS)
    assert all(t in Task.__members__.values() for t in spec.tasks)
    assert gpu_registry.family_module(spec) is module


def test_ti2v_5b_is_text_to_video_only() -> None:
    """The `wan` family ignores images: an i2v job on TI2V-5B must be refused, never rendered as t2v."""
    spec = MODELS["wan2.2-ti2v-5b"]
    assert spec.family == "wan" and spec.tasks == ("t2v",)
    with pytest.raises(RequestRejected, match="does not support task i2v") as e:
        resolve(JobRequest(job_id="ti2v-i2v", model=spec.name, task=Task.I2V, image="s3://videogen/x.png"))
    assert e.value.code == ErrorCode.UNSUPPORTED_TASK_FOR_MODEL


def test_loading_refuses_a_task_the_family_does_not_implement(tmp_path) -> None:
    drifted = MODELS["tiny-wan"].model_copy(update={"name": "tiny-wan-drift", "tasks": ("t2v", "i2v")})
    with pytest.raises(Permanent, match="family 'wan' implements only t2v") as e:
        gpu_registry.family_module(drifted)
    assert e.value.code == ErrorCode.MODEL_ERROR
    from gpu_runner.pipelines import wan

    with pytest.raises(Permanent, match="implements only t2v"):  # the family's own load refuses it too
        wan.load(drifted, None, LoadContext(seed=0))
    with pytest.raises(Permanent, match="registered with family 'wan_i2v', not 'wan'"):
        wan.load(MODELS["tiny-wan-i2v"], None, LoadContext(seed=0))
    missing = MODELS["tiny-wan"].model_copy(update={"name": "tiny-nope", "family": "nope"})
    with pytest.raises(Permanent, match="no pipeline file"):
        gpu_registry.family_module(missing)


def test_loading_refuses_a_vae_that_disagrees_with_the_registry() -> None:
    from gpu_runner.pipelines import wan

    wrong = MODELS["tiny-wan"].model_copy(update={"vae_scale_temporal": 8})
    with pytest.raises(Permanent, match="compresses 4x in time"):
        wan.load(wrong, None, LoadContext(seed=0))


def test_face_size_has_one_source() -> None:
    from gpu_runner.pipelines import wan_animate

    tiny = MODELS["tiny-wan-animate"]
    model = wan_animate.load(tiny, None, LoadContext(seed=0))
    assert model.face_size == tiny.face_size == 16
    assert MODELS["wan2.2-animate-14b"].face_size == 512
    with pytest.raises(Permanent, match="motion encoder takes 16x16 faces"):
        wan_animate.WanAnimate.finish(tiny.model_copy(update={"face_size": 32}), model.pipe, LoadContext(seed=0))


@pytest.mark.parametrize("spec", [MODELS["tiny-wan"], MODELS["wan2.2-ti2v-5b"]], ids=lambda s: s.name)
def test_frame_arithmetic(spec: ModelSpec) -> None:
    assert [spec.latent_frames(n) for n in (1, 2, 4, 5, 6, 9, 81)] == [1, 1, 1, 2, 2, 3, 21]
    assert [spec.pixel_frames(k) for k in (1, 2, 5, 21)] == [1, 5, 17, 81]
    assert all(spec.latent_frames(spec.pixel_frames(k)) == k for k in range(1, 40))
    assert [spec.latent_aligned_frames(n) for n in (1, 4, 5, 7, 9)] == [1, 1, 5, 5, 9]
    assert [spec.valid_window(n) for n in (0, 1, 4, 5, 81, 82)] == [False, True, False, True, True, False]
    assert [spec.smallest_window_at_least(n) for n in (-3, 0, 1, 2, 5, 40, 41)] == [1, 1, 1, 5, 5, 41, 41]
    assert [spec.largest_window_at_most(n) for n in (-1, 0, 1, 4, 5, 80, 81)] == [0, 0, 1, 1, 5, 77, 81]
    assert list(spec.window_lengths(2, 17)) == [5, 9, 13, 17] and list(spec.window_lengths(0, 1)) == [1]
    for n in range(1, 200):  # the three agree with each other
        lo, hi = spec.largest_window_at_most(n), spec.smallest_window_at_least(n)
        assert spec.valid_window(lo) and spec.valid_window(hi) and lo <= n <= hi
        assert (lo == hi) == spec.valid_window(n) and hi - lo in (0, spec.frame_multiple)
    assert spec.latent_tokens(64, 64, 9) == 3 * (64 // spec.vae_scale_spatial // spec.patch_hw) ** 2


def test_module_helpers() -> None:
    assert latent_frames(9, 4) == 3 and latent_frames(9, 8) == 2
    assert round_up_window(6, 4) == 9 and round_down_window(6, 4) == 5 and round_down_window(0, 4) == 0
    with pytest.raises(ValueError):
        latent_frames(0, 4)


def test_specs_are_frozen() -> None:
    with pytest.raises(ValidationError):
        MODELS["tiny-wan"].tasks = ("i2v",)  # type: ignore[misc]
