"""Wan2.2-A14B as it really is: two experts (high-noise ``transformer``, low-noise ``transformer_2``)
switched at ``boundary_ratio`` — the pipeline runs both, LoRA loads into both (or the one named),
the memory model counts both (tests/unit/test_memory_model.py). Tiny random weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from diffusers import WanPipeline

from gpu_runner import accel
from gpu_runner.lora import AdapterCache, LoraSpec, applied_lora, loaded_adapters
from gpu_runner.pipelines import _common as common
from gpu_runner.pipelines import tiny_components as tc
from gpu_runner.pipelines.base import GenerateParams, LoadContext
from gpu_runner.pipelines.wan import WanT2V
from schemas.errors import Permanent
from schemas.registry import MODELS
from tests.unit.test_lora import make_lora_file

PARAMS = GenerateParams(prompt="a red car", width=32, height=32, num_frames=5, steps=4, guidance_scale=4.0, seed=3)


@pytest.fixture(scope="module")
def model() -> WanT2V:
    import torch

    spec = MODELS["tiny-wan"].model_copy(update={"name": "tiny-wan-a14b", "experts": 2})
    pipe = WanPipeline(**common.tiny_parts(0, torch.float32), transformer=tc.tiny_transformer(0),
                       transformer_2=tc.tiny_transformer(1), boundary_ratio=0.875)  # T2V-A14B's
    return WanT2V.finish(spec, pipe, LoadContext(seed=0))


def _calls(module: object) -> tuple[list[int], object]:
    calls = [0]
    hook = module.register_forward_pre_hook(lambda _m, _a: calls.__setitem__(0, calls[0] + 1))  # type: ignore[attr-defined]
    return calls, hook


def test_both_experts_denoise_switched_at_the_boundary(model: WanT2V) -> None:
    assert len(accel.transformers_of(model.pipe)) == 2
    high, h1 = _calls(model.pipe.transformer)
    low, h2 = _calls(model.pipe.transformer_2)
    frames = model.generate(PARAMS)
    h1.remove()  # type: ignore[attr-defined]
    h2.remove()  # type: ignore[attr-defined]
    # timesteps 999, 900 >= 875 (high noise), 750, 500 below; CFG: 2 calls a step
    assert (high[0], low[0]) == (4, 4)
    assert frames.shape == (5, 32, 32, 3)


def _peft_layers(module: object) -> int:
    return sum(1 for m in module.modules() if hasattr(m, "lora_A"))  # type: ignore[attr-defined]


def test_lora_loads_into_both_experts_or_the_one_named(model: WanT2V, tmp_path: Path) -> None:
    base = model.generate(PARAMS)
    lora = make_lora_file(tmp_path / "lora")
    cache = AdapterCache(dir=tmp_path / "cache")
    with applied_lora(model, LoraSpec(source=str(lora)), cache) as names:
        assert _peft_layers(model.pipe.transformer) > 0 and _peft_layers(model.pipe.transformer_2) > 0
        assert loaded_adapters(model) == names
        assert not np.array_equal(model.generate(PARAMS), base)
    with applied_lora(model, LoraSpec(source=str(lora), expert="low"), cache):
        assert _peft_layers(model.pipe.transformer) == 0 and _peft_layers(model.pipe.transformer_2) > 0
    assert _peft_layers(model.pipe.transformer) == 0 == _peft_layers(model.pipe.transformer_2)
    assert np.array_equal(model.generate(PARAMS), base)  # unloaded from both: the base model again


def test_an_expert_lora_on_a_one_expert_model_is_refused(tmp_path: Path) -> None:
    from gpu_runner.registry import load_model

    one = load_model("tiny-wan", Path("models"), LoadContext(seed=0))
    lora = make_lora_file(tmp_path / "lora")
    with pytest.raises(Permanent, match="one\\s+transformer"), \
            applied_lora(one, LoraSpec(source=str(lora), expert="high"), AdapterCache(dir=tmp_path / "c")):
        pass
