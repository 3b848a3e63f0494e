"""CFG parallel on CPU under ``torchrun`` with gloo (issue 17), against 1 rank.

* 2 ranks: rank 0 computes the conditional branch, rank 1 the unconditional one, exchanged once
  per step; frames equal to the 1-rank render (±1 level) for tiny-wan, tiny-wan-i2v and
  tiny-wan-animate, and each rank ran exactly half of the 1-rank transformer block calls.
* 4 ranks: 2 CFG x 2 Ulysses on tiny-wan (each rank's attention sees half the tokens).
* ``guidance_scale <= 1`` (step-distilled LoRAs): the unconditional branch is not computed at all
  (block calls counted: half those of a CFG render).
* FSDP2 (``runner_shard=fsdp``): DiT and text encoder sharded over 2 ranks (alone and with Ulysses),
  and over each CFG half of 4 ranks; equal frames, each rank holding about half the weights.

The test launches this same file as the worker (``torchrun --nproc_per_node=N <this file> MODE OUT``).
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
STEPS = 2
SIZE = 32
FRAMES = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(tmp_path: Path, ranks: int, mode: str, timeout: int) -> dict[str, Any]:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found next to the interpreter"
    out = tmp_path / f"{mode}.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("VIDEOGEN_SP_BACKEND", None)
    cmd = [torchrun, f"--nproc_per_node={ranks}", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           str(Path(__file__).resolve()), mode, str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def test_cfg_parallel_needs_an_even_group() -> None:
    from gpu_runner.distributed import DistContext
    from gpu_runner.parallel import layout
    from schemas.errors import Permanent

    with pytest.raises(Permanent, match="CFG parallel"):
        layout(DistContext(), cfg_parallel=True)
    with pytest.raises(Permanent, match="odd"):
        layout(DistContext(world_size=3), cfg_parallel=True)


@pytest.mark.slow
def test_two_rank_cfg_parallel_matches_one_rank(tmp_path: Path) -> None:
    report = _torchrun(tmp_path, 2, "cfg2", timeout=300)
    layers = report["layers"]
    for case in report["cases"]:
        name = case["model"]
        assert case["frames_max_level_diff"] <= 1, name
        assert case["latents_max_abs_diff"] <= 1e-4, name
        # 1 rank with CFG: 2 branches x steps x layers block calls; each CFG rank: half of that
        assert case["ref_block_calls"] == 2 * STEPS * layers * case["internal_loops"], name
        assert case["block_calls_per_rank"] == [STEPS * layers * case["internal_loops"]] * 2, name
        assert case["exchanges_per_rank"] == [STEPS * case["internal_loops"]] * 2, name
    assert {c["model"] for c in report["cases"]} == {"tiny-wan", "tiny-wan-i2v", "tiny-wan-animate"}
    # guidance <= 1: no unconditional branch anywhere (1 rank: half the calls; CFG ranks: no exchange)
    assert report["no_cfg_ref_block_calls"] == STEPS * layers
    assert report["no_cfg_block_calls_per_rank"] == [STEPS * layers] * 2
    assert report["no_cfg_exchanges"] == [0, 0]
    assert report["no_cfg_frames_max_level_diff"] <= 1


@pytest.mark.slow
def test_four_rank_cfg_times_ulysses_matches_one_rank(tmp_path: Path) -> None:
    report = _torchrun(tmp_path, 4, "cfg2sp2", timeout=300)
    assert report["layout"] == [[2, 2]] * 4
    assert report["frames_max_level_diff"] <= 1
    tokens = report["tokens"]
    assert report["attn1_tokens_per_rank"] == [tokens // 2] * 4  # the sequence really is split in each half
    assert report["block_calls_per_rank"] == [STEPS * report["layers"]] * 4
    assert report["animate_refused"] == "model_error"


@pytest.mark.slow
def test_fsdp_sharded_weights_match_one_rank(tmp_path: Path) -> None:
    report = _torchrun(tmp_path, 2, "fsdp2", timeout=300)
    for case in report["cases"]:
        assert case["frames_max_level_diff"] <= 1, case["name"]
        # each rank holds about half of the DiT and text-encoder parameters
        for part in ("transformer", "text_encoder"):
            full, local = case["full_bytes"][part], case["local_bytes"][part]
            assert all(0.4 * full <= x <= 0.6 * full for x in local), (case["name"], part, full, local)
    assert {c["name"] for c in report["cases"]} == {"fsdp", "fsdp+sp"}


@pytest.mark.slow
def test_four_rank_fsdp_within_cfg_halves(tmp_path: Path) -> None:
    report = _torchrun(tmp_path, 4, "fsdp4", timeout=300)
    assert report["frames_max_level_diff"] <= 1
    full, local = report["full_bytes"], report["local_bytes"]
    assert all(0.4 * full <= x <= 0.6 * full for x in local)  # sharded over the 2 ranks of each CFG half


@pytest.mark.slow
def test_tiled_vae_decode_split_across_ranks(tmp_path: Path) -> None:
    report = _torchrun(tmp_path, 2, "vae2", timeout=300)
    assert report["frames_max_level_diff"] == 0  # the 1-rank tiled decode, exactly
    assert report["tiles_per_rank"] == [5, 4]  # 9 tiles of 64 px (stride 48) at 128x128, dealt round-robin


# --------------------------------------------------------------------------------------------
# the worker (runs under torchrun)
# --------------------------------------------------------------------------------------------
def _inputs(name: str) -> dict[str, Any]:  # pragma: no cover - torchrun children
    import numpy as np

    rng = np.random.default_rng(7)
    if name == "tiny-wan-i2v":
        return {"image": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)}
    if name == "tiny-wan-animate":
        from schemas.registry import MODELS

        face = MODELS[name].face_size
        return {"image": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
                "pose_video": rng.integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8),
                "face_video": rng.integers(0, 256, (FRAMES, face, face, 3), dtype=np.uint8)}
    return {}


def _worker(mode: str, out: Path) -> None:  # pragma: no cover - runs in the torchrun children
    import numpy as np

    from gpu_runner import distributed
    from gpu_runner.pipelines.base import GenerateParams, LoadContext
    from gpu_runner.registry import load_model
    from schemas.errors import Permanent

    torch.set_num_threads(1)
    device = os.environ.get("VIDEOGEN_TEST_DEVICE", "cpu")  # tests/gpu runs this worker on CUDA
    ctx = distributed.init_from_env(device)
    world = ctx.world_size
    cuda_kwargs = {"device": ctx.device} if device != "cpu" else {}

    def gather(value: Any) -> list[Any]:
        return [distributed.broadcast_object(value if ctx.rank == r else None, src=r, ctx=ctx) for r in range(world)]

    def count_blocks(transformer: Any) -> tuple[list[int], list[Any]]:
        calls = [0]
        hooks = [b.register_forward_pre_hook(lambda _m, _a: calls.__setitem__(0, calls[0] + 1))
                 for b in transformer.blocks]
        return calls, hooks

    def last_latents(model: Any) -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []
        orig = model.pipe.vae.decode

        def spy(z: torch.Tensor, *a: Any, **k: Any) -> Any:
            seen.append(z.detach().clone())
            return orig(z, *a, **k)

        model.pipe.vae.decode = spy
        return seen

    def render(model: Any, name: str, guidance: float) -> tuple[np.ndarray, int, list[torch.Tensor]]:
        params = GenerateParams(prompt="a red car in the city", negative_prompt="blurry", width=SIZE, height=SIZE,
                                num_frames=FRAMES, steps=STEPS, guidance_scale=guidance, seed=5, **_inputs(name))
        calls, hooks = count_blocks(model.pipe.transformer)
        latents = last_latents(model)
        frames = model.generate(params)
        for h in hooks:
            h.remove()
        return frames, calls[0], latents

    report: dict[str, Any] = {"cases": []}
    if mode == "cfg2":
        for name in ("tiny-wan", "tiny-wan-i2v", "tiny-wan-animate"):
            ref = load_model(name, Path("models"), LoadContext(seed=0, **cuda_kwargs))
            ref_frames, ref_calls, ref_lat = render(ref, name, 4.0)
            par = load_model(name, Path("models"), LoadContext(seed=0, rank=ctx.rank, world_size=world,
                                                               cfg_parallel=True, **cuda_kwargs))
            frames, calls, lat = render(par, name, 4.0)
            stats = par.cfg_parallel.stats
            report["layers"] = len(par.pipe.transformer.blocks)
            report["cases"].append({
                "model": name,
                "internal_loops": len(ref_lat),  # animate decodes once per internal segment
                "frames_max_level_diff": max(gather(int(np.abs(frames.astype(int) - ref_frames.astype(int)).max()))),
                "latents_max_abs_diff": max(gather(max(float((a - b).abs().max()) for a, b in zip(lat, ref_lat,
                                                                                                  strict=True)))),
                "ref_block_calls": ref_calls,
                "block_calls_per_rank": gather(calls),
                "exchanges_per_rank": gather(stats.exchanges),
            })
            if name == "tiny-wan":
                ref_frames1, ref_calls1, _ = render(ref, name, 1.0)
                before = stats.exchanges
                frames1, calls1, _ = render(par, name, 1.0)
                report["no_cfg_ref_block_calls"] = ref_calls1
                report["no_cfg_block_calls_per_rank"] = gather(calls1)
                report["no_cfg_exchanges"] = gather(par.cfg_parallel.stats.exchanges - before)
                report["no_cfg_frames_max_level_diff"] = max(gather(
                    int(np.abs(frames1.astype(int) - ref_frames1.astype(int)).max())))
            par.close()
    elif mode == "cfg2sp2":
        name = "tiny-wan"
        ref = load_model(name, Path("models"), LoadContext(seed=0))
        ref_frames, _, _ = render(ref, name, 4.0)
        par = load_model(name, Path("models"), LoadContext(seed=0, rank=ctx.rank, world_size=world, cfg_parallel=True,
                                                           sequence_parallel=True))
        seen: list[int] = []
        hook = par.pipe.transformer.blocks[0].attn1.register_forward_pre_hook(
            lambda _m, args: seen.append(int(args[0].shape[1])))
        frames, calls, _ = render(par, name, 4.0)
        hook.remove()
        from gpu_runner import parallel

        lay = parallel.layout(ctx, cfg_parallel=True)
        report.update({
            "layout": gather([lay.cfg_degree, lay.sp_degree]),
            "layers": len(par.pipe.transformer.blocks),
            "tokens": (1 + (FRAMES - 1) // 4) * (SIZE // 16) ** 2,
            "attn1_tokens_per_rank": gather(max(seen)),
            "block_calls_per_rank": gather(calls),
            "frames_max_level_diff": max(gather(int(np.abs(frames.astype(int) - ref_frames.astype(int)).max()))),
        })
        try:
            load_model("tiny-wan-animate", Path("models"), LoadContext(seed=0, rank=ctx.rank, world_size=world,
                                                                       cfg_parallel=True, sequence_parallel=True))
            report["animate_refused"] = None
        except Permanent as e:
            report["animate_refused"] = str(e.code)
    elif mode in ("fsdp2", "fsdp4"):
        from gpu_runner import accel

        name = "tiny-wan"
        ref = load_model(name, Path("models"), LoadContext(seed=0))
        ref_frames, _, _ = render(ref, name, 4.0)
        full = {k: v for k, v in accel.resident_bytes(ref.pipe, "cpu").items()}
        variants = [("fsdp", False, False), ("fsdp+sp", True, False)] if mode == "fsdp2" else [
            ("fsdp+cfg+sp", True, True)]
        for label, sp, cfg in variants:
            par = load_model(name, Path("models"), LoadContext(
                seed=0, rank=ctx.rank, world_size=world, sequence_parallel=sp, cfg_parallel=cfg,
                accel=accel.AccelConfig(shard="fsdp")))
            frames, _, _ = render(par, name, 4.0)
            local = accel.resident_bytes(par.pipe, "cpu")
            diff = max(gather(int(np.abs(frames.astype(int) - ref_frames.astype(int)).max())))
            if mode == "fsdp2":
                report["cases"].append({
                    "name": label, "frames_max_level_diff": diff,
                    "full_bytes": {k: full[k] for k in ("transformer", "text_encoder")},
                    "local_bytes": {k: gather(local[k]) for k in ("transformer", "text_encoder")},
                })
            else:
                report.update({"frames_max_level_diff": diff, "full_bytes": full["transformer"],
                               "local_bytes": gather(local["transformer"])})
    elif mode == "vae2":
        from gpu_runner.accel import AccelConfig

        tiling = AccelConfig(vae_tiling=True, vae_tile=64)
        params = GenerateParams(prompt="a red car", width=128, height=128, num_frames=FRAMES, steps=1,
                                guidance_scale=1.0, seed=5)
        ref = load_model("tiny-wan", Path("models"), LoadContext(seed=0, accel=tiling)).generate(params)
        split = load_model("tiny-wan", Path("models"), LoadContext(seed=0, rank=ctx.rank, world_size=world,
                                                                   accel=tiling))
        frames = split.generate(params)
        report.update({
            "frames_max_level_diff": max(gather(int(np.abs(frames.astype(int) - ref.astype(int)).max()))),
            "tiles_per_rank": gather(int(split.pipe.vae._videogen_tiles_decoded)),
        })
    if ctx.is_main:
        out.write_text(json.dumps(report, indent=1))
    distributed.barrier(ctx)
    distributed.destroy(ctx)


if __name__ == "__main__":  # pragma: no cover
    _worker(sys.argv[1], Path(sys.argv[2]))
