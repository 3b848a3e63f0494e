"""LoRA per job on tiny-wan: a real PEFT LoRA (random non-zero weights) applied and unloaded.

Covers: outputs differ with the adapter; after unloading, a run is bit-identical to the run before
loading (same seed) and the transformer's weights are the original ones; S3 sources fetched once
through an injected fetcher (sync and async) and cached on disk and in memory (LRU); bad sources.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from gpu_runner.lora import AdapterCache, LoraSpec, applied_lora, loaded_adapters, parse_s3_uri
from gpu_runner.pipelines import tiny_components as tc
from gpu_runner.pipelines import wan
from gpu_runner.pipelines.base import GenerateParams, LoadContext
from schemas.errors import ErrorCode, Permanent, Retryable
from schemas.registry import MODELS

torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and much faster on a loaded host

PARAMS = GenerateParams(prompt="a cat walking", width=32, height=32, num_frames=5, steps=3, guidance_scale=1.0, seed=11)


def make_lora_file(directory: Path, seed: int = 5, rank: int = 4,
                   targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")) -> Path:
    """A PEFT LoRA for the tiny Wan transformer with random non-zero A and B, in diffusers' file format."""
    from diffusers import WanPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    donor = tc.tiny_transformer(0)
    with tc.seeded(seed):
        donor.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), init_lora_weights=False))
    state = get_peft_model_state_dict(donor)
    assert state and all(v.abs().sum() > 0 for v in state.values())
    directory.mkdir(parents=True, exist_ok=True)
    WanPipeline.save_lora_weights(str(directory), transformer_lora_layers=state)
    return directory / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def model() -> wan.WanT2V:
    return wan.load(MODELS["tiny-wan"], None, LoadContext(seed=0))


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora_file(tmp_path_factory.mktemp("lora"))


def _weights(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_lora_changes_output_and_unload_restores_the_base_model(model: wan.WanT2V, lora_file: Path,
                                                                 tmp_path: Path) -> None:
    before_weights = _weights(model.pipe.transformer)
    before = model.generate(PARAMS)
    cache = AdapterCache(max_entries=2, dir=tmp_path)
    spec = LoraSpec(source=str(lora_file), scale=1.0, name="style")

    with applied_lora(model, spec, cache) as names:
        assert names == ["style"]
        assert loaded_adapters(model) == ["style"]
        with_lora = model.generate(PARAMS)
    assert with_lora.shape == before.shape
    assert not np.array_equal(with_lora, before)
    assert np.abs(with_lora.astype(np.int16) - before.astype(np.int16)).mean() > 0.5

    assert loaded_adapters(model) == []
    after_weights = _weights(model.pipe.transformer)
    assert after_weights.keys() == before_weights.keys()
    assert all(torch.equal(after_weights[k], before_weights[k]) for k in before_weights)
    assert np.array_equal(model.generate(PARAMS), before)  # next job without the adapter: bit-identical


def test_lora_and_step_cache_compose_and_both_go_away(model: wan.WanT2V, lora_file: Path, tmp_path: Path) -> None:
    from gpu_runner.caches import CacheConfig, ComputeCounter, applied_cache

    params = GenerateParams(**{**PARAMS.__dict__, "steps": 8})
    before = model.generate(params)
    with applied_lora(model, LoraSpec(source=str(lora_file)), AdapterCache(dir=tmp_path)), \
            applied_cache(model, CacheConfig(kind="taylorseer")), ComputeCounter(model) as counter:
        both = model.generate(params)
    assert counter.report().skipped_total > 0 and not np.array_equal(both, before)
    assert loaded_adapters(model) == [] and not model.pipe.transformer.is_cache_enabled
    assert np.array_equal(model.generate(params), before)


def test_adapter_that_does_not_fit_is_permanent_and_leaves_the_model_clean(model: wan.WanT2V, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.ones(4, 7),  # in_features is 24, not 7
               "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.ones(24, 4)}, str(bad))
    before_weights = _weights(model.pipe.transformer)
    with pytest.raises(Permanent) as err, applied_lora(model, LoraSpec(source=str(bad)), AdapterCache(dir=tmp_path)):
        pass
    assert err.value.code == ErrorCode.INPUT_UNSUPPORTED
    assert loaded_adapters(model) == []
    after = _weights(model.pipe.transformer)
    assert after.keys() == before_weights.keys() and all(torch.equal(after[k], before_weights[k]) for k in after)


def test_s3_source_is_fetched_once_then_served_from_disk_and_memory(lora_file: Path, tmp_path: Path) -> None:
    data = lora_file.read_bytes()
    calls: list[str] = []

    def fetch(uri: str) -> bytes:
        calls.append(uri)
        assert parse_s3_uri(uri) == ("models", "adapters/style.safetensors")
        return data

    cache = AdapterCache(max_entries=1, dir=tmp_path / "cache", fetch=fetch)
    spec = LoraSpec(source="s3://models/adapters/style.safetensors", scale=0.7,
                    sha256=hashlib.sha256(data).hexdigest())
    first = cache.state_dict(spec)
    assert calls == [spec.source]
    assert cache.local_path(spec).read_bytes() == data
    assert cache.state_dict(spec) is first and cache.hits == 1  # memory hit

    other = LoraSpec(source=str(lora_file), name="local")
    cache.state_dict(other)  # evicts the S3 entry (max_entries=1)
    assert spec not in cache and other in cache and len(cache) == 1
    again = cache.state_dict(spec)  # from the disk copy, no second fetch
    assert calls == [spec.source]
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)


def test_async_fetch_and_fetch_errors(lora_file: Path, tmp_path: Path) -> None:
    data = lora_file.read_bytes()

    async def fetch(uri: str) -> bytes:
        await asyncio.sleep(0)
        return data

    spec = LoraSpec(source="s3://b/k/a.safetensors")
    assert AdapterCache(dir=tmp_path / "a", fetch=fetch).state_dict(spec)

    def broken(uri: str) -> bytes:
        raise ConnectionError("s3 down")

    with pytest.raises(Retryable) as err:
        AdapterCache(dir=tmp_path / "b", fetch=broken).state_dict(spec)
    assert err.value.code == ErrorCode.STORAGE_ERROR
    with pytest.raises(Permanent):
        AdapterCache(dir=tmp_path / "c").state_dict(spec)  # no fetcher configured


def test_bad_specs_and_files(tmp_path: Path, lora_file: Path) -> None:
    for source in ("adapter.bin", "https://example.com/a.safetensors", "s3://bucket-only.safetensors"):
        with pytest.raises(ValidationError):
            LoraSpec(source=source)
    with pytest.raises(ValidationError):
        LoraSpec(source="a.safetensors", scale=float("nan"))
    with pytest.raises(Permanent) as err:
        AdapterCache(dir=tmp_path).state_dict(LoraSpec(source=str(tmp_path / "missing.safetensors")))
    assert err.value.code == ErrorCode.MISSING_INPUT
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(Permanent) as err:
        AdapterCache(dir=tmp_path).state_dict(LoraSpec(source=str(garbage)))
    assert err.value.code == ErrorCode.INPUT_UNREADABLE
    with pytest.raises(Permanent):
        AdapterCache(dir=tmp_path).state_dict(LoraSpec(source=str(lora_file), sha256="0" * 64))
    assert LoraSpec(source="x.safetensors").adapter_name == LoraSpec(source="x.safetensors").adapter_name
    assert LoraSpec(source="x.safetensors").adapter_name != LoraSpec(source="y.safetensors").adapter_name


def test_adapter_on_gathered_layer_is_refused_under_sequence_parallelism(model: wan.WanT2V, tmp_path: Path) -> None:
    from types import SimpleNamespace

    lora = make_lora_file(tmp_path / "po", targets=("to_q", "proj_out"))
    sharded = SimpleNamespace(pipe=model.pipe, sequence_parallel=object())
    with pytest.raises(Permanent, match="sequence parallelism") as err, \
            applied_lora(sharded, LoraSpec(source=str(lora)), AdapterCache(dir=tmp_path)):
        pass
    assert err.value.code == ErrorCode.INPUT_UNSUPPORTED and loaded_adapters(model) == []
    with applied_lora(model, LoraSpec(source=str(lora)), AdapterCache(dir=tmp_path)) as names:  # fine on 1 rank
        assert len(names) == 1
