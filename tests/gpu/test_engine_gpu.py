"""The engine's CUDA paths (issue 17): NCCL, a checkpoint saved and loaded on the GPU, text-encoder
offload, CPU offload, compile, attention backends. Marked ``gpu``; skipped without CUDA."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

REPO = Path(__file__).resolve().parents[2]


def _params(guidance: float = 4.0):  # type: ignore[no-untyped-def]
    from gpu_runner.pipelines.base import GenerateParams

    return GenerateParams(prompt="a cat", negative_prompt="blurry", width=64, height=64, num_frames=9, steps=3,
                          guidance_scale=guidance, seed=1)


def _load(**ctx_kwargs):  # type: ignore[no-untyped-def]
    from gpu_runner.pipelines.base import LoadContext
    from gpu_runner.registry import load_model

    return load_model("tiny-wan", Path("models"), LoadContext(device="cuda", dtype="bfloat16", **ctx_kwargs))


def _levels(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


NCCL_WORKER = r"""
import torch, torch.distributed as dist
from gpu_runner import distributed
ctx = distributed.init_from_env("cuda")  # 2 GPUs: our own init (cpu:gloo,cuda:nccl, device_id)
if not dist.is_initialized():  # one GPU: init_from_env makes no group; a real NCCL group of one rank
    dist.init_process_group(backend=distributed.CUDA_BACKEND, rank=0, world_size=1, device_id=torch.device("cuda:0"))
assert "nccl" in str(dist.get_backend()), dist.get_backend()
x = torch.full((4,), float(ctx.rank + 1), device=ctx.device)
dist.all_reduce(x)  # NCCL
n = dist.get_world_size()
assert torch.allclose(x, torch.full_like(x, n * (n + 1) / 2)), x
box = [{"job": "j", "rank": ctx.rank} if ctx.rank == 0 else None]
dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))  # gloo side of cpu:gloo,cuda:nccl
assert box[0] == {"job": "j", "rank": 0}
send = torch.arange(8.0 * n, device=ctx.device)
recv = torch.empty_like(send)
dist.all_to_all_single(recv, send)  # the Ulysses collective, over NCCL
torch.cuda.synchronize()
print("NCCL_OK", dist.get_backend(), n)
dist.destroy_process_group()
"""


def test_nccl_collectives_and_object_broadcast_over_gloo(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun
    worker = tmp_path / "nccl_worker.py"
    worker.write_text(NCCL_WORKER)
    ranks = min(2, torch.cuda.device_count())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    proc = subprocess.run([torchrun, f"--nproc_per_node={ranks}", "--master_addr=127.0.0.1",
                           f"--master_port={_free_port()}", str(worker)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert proc.stdout.count("NCCL_OK") == ranks


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="CFG parallel on CUDA needs 2 GPUs")
def test_cfg_parallel_on_two_gpus(tmp_path: Path) -> None:
    from tests.slow.test_cfg_parallel import _torchrun

    os.environ["VIDEOGEN_TEST_DEVICE"] = "cuda"
    try:
        report = _torchrun(tmp_path, 2, "cfg2", timeout=300)
    finally:
        os.environ.pop("VIDEOGEN_TEST_DEVICE", None)
    assert all(c["frames_max_level_diff"] <= 2 for c in report["cases"])


def test_checkpoint_saved_and_loaded_on_the_gpu(tmp_path: Path) -> None:
    from gpu_runner.pipelines import wan
    from gpu_runner.pipelines.base import LoadContext
    from schemas.registry import MODELS

    model = _load()
    before = model.generate(_params())
    model.save(tmp_path / "ckpt")
    t0 = time.perf_counter()
    loaded = wan.load(MODELS["tiny-wan"], tmp_path / "ckpt", LoadContext(device="cuda", dtype="bfloat16"))
    print(f"\ntiny-wan checkpoint loaded in {time.perf_counter() - t0:.2f} s")
    assert loaded.pipe.transformer.dtype == torch.bfloat16 and loaded.pipe.vae.dtype == torch.float32
    assert loaded.pipe.transformer.device.type == "cuda"
    assert _levels(loaded.generate(_params()), before) <= 1


def test_1_3b_shaped_transformer_round_trips_through_safetensors(tmp_path: Path) -> None:
    """A real-size checkpoint (2.8 GB of bf16) written and read back with from_pretrained on the GPU."""
    from diffusers import WanTransformer3DModel

    from bench.gpu_step import wan13b_transformer

    model = wan13b_transformer("cuda", torch.bfloat16)
    model.save_pretrained(tmp_path / "t")
    del model
    torch.cuda.empty_cache()
    t0 = time.perf_counter()
    loaded = WanTransformer3DModel.from_pretrained(tmp_path / "t", torch_dtype=torch.bfloat16).to("cuda")
    seconds = time.perf_counter() - t0
    params = sum(p.numel() for p in loaded.parameters())
    print(f"\n1.3B-shaped transformer: {params / 1e9:.2f} B params loaded in {seconds:.1f} s")
    assert params / 1e9 == pytest.approx(1.42, rel=0.02)  # the count the memory model uses


def test_text_encoder_offloaded_after_encoding_and_prompts_cached() -> None:
    model = _load()
    assert next(model.pipe.text_encoder.parameters()).device.type == "cpu"  # not resident while denoising
    model.generate(_params())
    model.generate(_params())
    assert model.prompt_encodes == 1
    assert next(model.pipe.text_encoder.parameters()).device.type == "cpu"


@pytest.mark.parametrize("offload", ["model", "block"])
def test_cpu_offload_gives_the_resident_result(offload: str) -> None:
    from gpu_runner.accel import AccelConfig

    ref = _load().generate(_params())
    model = _load(accel=AccelConfig(offload=offload))
    assert _levels(model.generate(_params()), ref) <= 1


def test_compiled_blocks_match_eager() -> None:
    from gpu_runner.accel import AccelConfig

    ref = _load().generate(_params())
    model = _load(accel=AccelConfig(compile=True))
    t0 = time.perf_counter()
    model.warmup()  # compiles before the first job
    print(f"\ncompile at warm-up: {time.perf_counter() - t0:.1f} s")
    assert _levels(model.generate(_params()), ref) <= 2


def test_requested_attention_backend_is_applied_or_refused() -> None:
    from gpu_runner.accel import AccelConfig
    from schemas.errors import Permanent

    for backend in ("flash", "sage", "_flash_3"):
        try:
            model = _load(accel=AccelConfig(attention_backend=backend))
        except Permanent as e:
            print(f"\n{backend}: refused ({e})")
            assert "unavailable" in str(e)
            continue
        try:
            out = model.generate(_params())
        finally:
            model.pipe.transformer.reset_attention_backend()
        assert _levels(out, _load().generate(_params())) <= 3
        print(f"\n{backend}: applied")
