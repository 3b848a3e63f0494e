"""Sequence parallelism (Ulysses) on CPU: 2 ranks under ``torchrun`` with gloo vs 1 rank.

The test launches this same file as the worker (``torchrun --nproc_per_node=2 <this file> OUT``).
Every rank builds tiny-wan from the same seed, renders once without sequence parallelism (the
1-rank reference) and again sharded over both ranks, for each backend; rank 0 writes a JSON
report the test checks: equal outputs, and each rank's self-attention saw only its own
contiguous shard of the tokens (the split is real, not redundant).

The world-size-1 behaviour of ``gpu_runner.distributed`` (no process group) is tested in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------
# world size 1: the same API, no process group
# --------------------------------------------------------------------------------------------
def test_single_process_collectives_are_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpu_runner import distributed

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = distributed.init_from_env("cpu")
    assert (ctx.rank, ctx.world_size, ctx.device, ctx.backend, ctx.is_main) == (0, 1, "cpu", "gloo", True)
    x = torch.arange(12.0).view(1, 2, 3, 2)
    assert distributed.broadcast_object({"a": 1}, ctx=ctx) == {"a": 1}
    assert distributed.all_gather(x, dim=1, ctx=ctx) is x
    assert distributed.all_to_all_4d(x, scatter_dim=2, gather_dim=1, ctx=ctx) is x
    distributed.barrier(ctx)
    distributed.destroy(ctx)


def test_sequence_parallel_needs_a_process_group() -> None:
    from gpu_runner.distributed import DistContext
    from gpu_runner.pipelines import tiny_components as tc
    from gpu_runner.sequence_parallel import apply_sequence_parallel
    from schemas.errors import Permanent

    with pytest.raises(Permanent, match="world size"):
        apply_sequence_parallel(tc.tiny_transformer(0), DistContext())
    with pytest.raises(Permanent, match="VIDEOGEN_SP_BACKEND"):
        apply_sequence_parallel(tc.tiny_transformer(0), DistContext(world_size=2), backend="magic")


# --------------------------------------------------------------------------------------------
# 2 ranks under torchrun
# --------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_rank_sequence_parallel_matches_one_rank(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found next to the interpreter"
    out = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("VIDEOGEN_SP_BACKEND", None)
    cmd = [torchrun, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           str(Path(__file__).resolve()), str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    report = json.loads(out.read_text())

    # collectives used by the runner and by Ulysses
    assert report["broadcast"] == {"job": "j1", "from": 0}
    assert report["all_gather"] == [0.0, 1.0]
    assert report["all_to_all_round_trip"] is True
    assert report["all_to_all_matches_reference"] is True

    for case in report["cases"]:
        name = case["name"]
        tokens, world = case["tokens"], 2
        shards = [tokens // world + (1 if r < tokens % world else 0) for r in range(world)]
        # the split is real: each rank's attn1 only ever saw its own shard ...
        assert case["attn1_tokens_per_rank"] == [[s] for s in shards], name
        # ... and that shard is the contiguous slice of the 1-rank sequence
        assert case["shard_matches_reference_slice"] == [True, True], name
        assert case["transformer_max_abs_diff"] <= 1e-4, name
        assert case["frames_max_level_diff"] <= 1, name
        assert case["after_remove_tokens"] == [tokens], name  # removed: back to the full sequence
    names = {c["name"] for c in report["cases"]}
    assert {"native-even", "native-uneven", "ulysses-even", "load-context"} <= names
    assert report["ulysses_uneven_error"] == "out_of_range"


# --------------------------------------------------------------------------------------------
# the worker (runs under torchrun)
# --------------------------------------------------------------------------------------------
def _worker(out: Path) -> None:  # pragma: no cover - runs in the torchrun children
    import numpy as np

    from gpu_runner import distributed
    from gpu_runner.pipelines import wan
    from gpu_runner.pipelines.base import GenerateParams, LoadContext
    from gpu_runner.sequence_parallel import apply_sequence_parallel
    from schemas.errors import Permanent
    from schemas.registry import MODELS

    torch.set_num_threads(1)
    ctx = distributed.init_from_env("cpu")
    assert ctx.world_size == 2 and ctx.backend == "gloo"
    spec = MODELS["tiny-wan"]
    report: dict[str, Any] = {"cases": []}

    # --- collectives
    job = distributed.broadcast_object({"job": "j1", "from": ctx.rank} if ctx.is_main else None, ctx=ctx)
    report["broadcast"] = job
    report["all_gather"] = distributed.all_gather(torch.tensor([float(ctx.rank)]), ctx=ctx).tolist()
    full = torch.Generator().manual_seed(3)
    seq = torch.randn(1, 8, 4, 3, generator=full)  # (B, S, H, D), identical on both ranks
    local = seq.chunk(2, dim=1)[ctx.rank]
    heads = distributed.all_to_all_4d(local, scatter_dim=2, gather_dim=1, ctx=ctx)  # (1, 8, 2, 3)
    back = distributed.all_to_all_4d(heads, scatter_dim=1, gather_dim=2, ctx=ctx)
    report["all_to_all_round_trip"] = bool(torch.equal(back, local))
    report["all_to_all_matches_reference"] = bool(torch.equal(heads, seq.chunk(2, dim=2)[ctx.rank]))
    distributed.barrier(ctx)

    model = wan.load(spec, None, LoadContext(seed=0))

    def both(value: Any) -> list[Any]:
        """[rank 0's value, rank 1's value] on every rank."""
        return [distributed.broadcast_object(value if ctx.rank == r else None, src=r, ctx=ctx) for r in range(2)]

    def observe(transformer: Any) -> tuple[list[torch.Tensor], Any]:
        """Record every hidden_states tensor entering the first block's self-attention."""
        seen: list[torch.Tensor] = []
        hook = transformer.blocks[0].attn1.register_forward_pre_hook(
            lambda _m, args: seen.append(args[0].detach().clone()))
        return seen, hook

    def forward(transformer: Any, size: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(11)
        latents = torch.randn(1, 16, 3, size // 8, size // 8, generator=g)
        text = torch.randn(1, 512, 32, generator=g)
        with torch.no_grad():
            out = transformer(hidden_states=latents, timestep=torch.tensor([700.0]), encoder_hidden_states=text,
                              return_dict=False)[0]
        return out  # type: ignore[no-any-return]

    def run_case(name: str, size: int, backend: str | None, via_load: bool = False) -> None:
        params = GenerateParams(prompt="a red car in the city", width=size, height=size, num_frames=9, steps=3,
                                guidance_scale=4.0, seed=5)
        tokens = 3 * (size // 16) ** 2
        ref_inputs, hook = observe(model.pipe.transformer)
        ref_out = forward(model.pipe.transformer, size)
        hook.remove()
        ref_frames = model.generate(params)

        if via_load:
            sp_model = wan.load(spec, None, LoadContext(seed=0, rank=ctx.rank, world_size=2, sequence_parallel=True))
            handle = sp_model.sequence_parallel
        else:
            sp_model, handle = model, apply_sequence_parallel(model.pipe, ctx, backend)
        transformer = sp_model.pipe.transformer
        try:
            inputs, hook = observe(transformer)
            sp_out = forward(transformer, size)
            sp_frames = sp_model.generate(params)
            hook.remove()
        finally:
            handle.remove()
        after, hook = observe(transformer)
        forward(transformer, size)
        hook.remove()

        start = sum(handle.local_tokens(tokens)[: ctx.rank])
        mine = inputs[0]
        shard_ok = bool(torch.allclose(mine, ref_inputs[0][:, start:start + mine.shape[1]], atol=1e-5))
        report["cases"].append({
            "name": name, "tokens": tokens,
            "attn1_tokens_per_rank": both(sorted({int(x.shape[1]) for x in inputs})),
            "shard_matches_reference_slice": both(shard_ok),
            "transformer_max_abs_diff": max(both(float((sp_out - ref_out).abs().max()))),
            "frames_max_level_diff": max(both(int(np.abs(sp_frames.astype(int) - ref_frames.astype(int)).max()))),
            "after_remove_tokens": sorted({int(x.shape[1]) for x in after}),
        })

    run_case("native-even", 64, "native")       # 48 tokens -> 24 + 24
    run_case("native-uneven", 48, "native")     # 27 tokens -> 14 + 13 ("Ulysses anything")
    run_case("ulysses-even", 64, "ulysses")     # our processor + all_to_all_4d (the xfuser code path)
    run_case("load-context", 64, None, via_load=True)  # LoadContext(sequence_parallel=True) in wan.load

    handle = apply_sequence_parallel(model.pipe, ctx, "ulysses")
    try:
        model.generate(GenerateParams(prompt="x", width=48, height=48, num_frames=9, steps=1, guidance_scale=1.0,
                                      seed=0))
        report["ulysses_uneven_error"] = None
    except Permanent as e:
        report["ulysses_uneven_error"] = str(e.code)
    finally:
        handle.remove()

    if ctx.is_main:
        out.write_text(json.dumps(report, indent=1))
    distributed.barrier(ctx)
    distributed.destroy(ctx)


if __name__ == "__main__":  # pragma: no cover
    _worker(Path(sys.argv[1]))
