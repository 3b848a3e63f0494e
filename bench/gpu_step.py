"""Seconds per denoising step of a Wan2.1-T2V-1.3B-shaped transformer with random weights.

Usage: ``python -m bench.gpu_step [--width 832 --height 480 --frames 81 --steps 3 --no-cfg]``.
Needs CUDA; without it, prints why and exits 0. One step = one transformer forward per CFG branch
(2 with classifier-free guidance, as ``WanPipeline`` runs them), bf16, PyTorch SDPA attention.
Random weights run at the same speed as real ones: the numbers are the real model's cost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch

from schemas.registry import MODELS, ModelSpec

SPEC = MODELS["wan2.1-t2v-1.3b"]


@dataclass(frozen=True)
class StepTiming:
    width: int
    height: int
    frames: int
    tokens: int
    cfg: bool
    dtype: str
    s_per_step: float
    s_per_step_min: float
    peak_memory_gib: float
    device_name: str


def wan13b_transformer(device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """A ``WanTransformer3DModel`` with Wan2.1-1.3B's config, random weights, built on ``device``."""
    return wan_transformer(SPEC, device, dtype)


def wan_transformer(spec: ModelSpec, device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """A ``WanTransformer3DModel`` of ``spec``'s T2V shape (layers, heads, FFN), random weights, on ``device``."""
    from diffusers import WanTransformer3DModel

    from gpu_runner.pipelines.tiny_components import cast_like_from_pretrained

    shape = spec.transformer
    with torch.device(device):
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=shape.num_heads, attention_head_dim=shape.head_dim,
            in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=shape.ffn_dim,
            num_layers=shape.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
            rope_max_seq_len=1024,
        )
    return cast_like_from_pretrained(model, dtype).eval()


def measure_step_seconds(
    width: int = 832, height: int = 480, frames: int = 81, steps: int = 3, warmup: int = 1,
    cfg: bool = True, dtype: torch.dtype = torch.bfloat16, device: str = "cuda",
    model: torch.nn.Module | None = None, spec: ModelSpec = SPEC,
) -> StepTiming:
    """Time ``steps`` denoising steps (after ``warmup`` untimed ones) of a ``spec``-shaped transformer
    (default the 1.3B). On the CPU (``device="cpu"``) only to check the code path."""
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("measure_step_seconds needs CUDA")
    model = model or wan_transformer(spec, device, dtype)
    dtype = next(model.parameters()).dtype
    text_dim = int(model.config.text_dim)
    latent_frames = spec.latent_frames(frames)
    g = torch.Generator(device=device).manual_seed(0)
    latents = torch.randn(1, 16, latent_frames, height // 8, width // 8, generator=g, device=device, dtype=dtype)
    text = torch.randn(1, 512, text_dim, generator=g, device=device, dtype=dtype)
    timestep = torch.tensor([500.0], device=device)
    branches = 2 if cfg else 1

    def step() -> None:
        for _ in range(branches):
            model(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times: list[float] = []
    with torch.inference_mode():
        for i in range(warmup + steps):
            sync()
            start = time.perf_counter()
            step()
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return StepTiming(
        width=width, height=height, frames=frames, tokens=spec.latent_tokens(width, height, frames), cfg=cfg,
        dtype=str(dtype).removeprefix("torch."), s_per_step=statistics.mean(times), s_per_step_min=min(times),
        peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
        device_name=torch.cuda.get_device_name() if cuda else "cpu",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-cfg", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.gpu_step: CUDA is not available on this machine; nothing measured.")
        return 0
    timing = measure_step_seconds(args.width, args.height, args.frames, args.steps, args.warmup, cfg=not args.no_cfg)
    print(f"Wan2.1-1.3B-shaped DiT, {timing.width}x{timing.height}x{timing.frames} ({timing.tokens} tokens), "
          f"cfg={timing.cfg}, {timing.dtype} on {timing.device_name}: {timing.s_per_step:.3f} s/step "
          f"(min {timing.s_per_step_min:.3f}), peak {timing.peak_memory_gib:.1f} GiB")
    print(asdict(timing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
