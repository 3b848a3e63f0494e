"""Step caches on a Wan2.1-1.3B-shaped transformer: seconds per step, speed-up and PSNR vs no cache.

Usage: ``python -m bench.runner_gpu [--width 832 --height 480 --frames 81 --steps 25 --caches all]``.
Needs CUDA; without it, prints why and exits 0 (``--smoke`` runs the same code on the CPU with the
tiny transformer, to check the code path only).

What is measured, side by side in one process: a full denoising loop as ``WanPipeline`` runs it
(UniPC flow-matching scheduler, shift 3.0; classifier-free guidance as two transformer calls per
step inside ``cache_context("cond" | "uncond", step_index=…)``), bf16, random weights and random
text embeddings. First an untimed run (warm-up + MagCache calibration), then the no-cache baseline,
then each cache applied with ``gpu_runner.caches.applied_cache`` (the runner's code path) and the
runner's default parameters; MagCache uses ratios calibrated in the warm-up run on other noise and
text embeddings (as the runner calibrates once at warm-up, not per job).

- s/step: wall time of the loop / steps (CUDA-synchronised).
- skipped: fraction of block work (self-attn, cross-attn, FFN calls) that did not run, counted.
- PSNR: of the final LATENTS vs the no-cache latents, peak = the baseline's value range. The weights
  are random, so decoded frames would be noise either way: latent PSNR measures how far the cache's
  approximation moved the sampler's trajectory, not visual quality. Random weights run at the same
  speed as real ones, but data-dependent caches (first_block, mag) skip differently on real weights.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from bench.gpu_step import SPEC, measure_step_seconds, wan13b_transformer
from gpu_runner.caches import CacheConfig, ComputeCounter, MagCalibrator, applied_cache
from gpu_runner.pipelines import tiny_components as tc

KINDS = ("first_block", "mag", "taylorseer", "pab")


@dataclass(frozen=True)
class CacheResult:
    cache: str
    s_per_step: float
    speedup: float
    skip_fraction: float
    psnr_db: float
    peak_memory_gib: float
    seconds: float


@dataclass
class Inputs:
    latents: torch.Tensor
    cond: torch.Tensor
    uncond: torch.Tensor


def make_inputs(model: Any, width: int, height: int, frames: int, device: str,
                dtype: torch.dtype, text_tokens: int = 512, seed: int = 0) -> Inputs:
    """Seeded noise latents and random (cond, uncond) text embeddings of the model's widths."""
    cfg = model.config
    g = torch.Generator(device="cpu").manual_seed(seed)
    shape = (1, cfg.in_channels, SPEC.latent_frames(frames),
             height // SPEC.vae_scale_spatial, width // SPEC.vae_scale_spatial)
    latents = torch.randn(shape, generator=g).to(device)
    cond = torch.randn(1, text_tokens, cfg.text_dim, generator=g).to(device, dtype)
    uncond = torch.randn(1, text_tokens, cfg.text_dim, generator=g).to(device, dtype)
    return Inputs(latents, cond, uncond)


class Sampler:
    """``WanPipeline``'s denoising loop without text encoder and VAE; exposes the current timestep."""

    def __init__(self, model: Any, steps: int, guidance_scale: float, device: str) -> None:
        self.model = model
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.device = device
        self.current_timestep: torch.Tensor | None = None

    def timestep(self) -> Any:
        return self.current_timestep

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    @torch.inference_mode()
    def run(self, inputs: Inputs) -> tuple[torch.Tensor, float]:
        """Final latents (float32) and wall seconds of the whole loop."""
        scheduler: Any = tc.tiny_scheduler(flow_shift=3.0)  # Wan 2.1 at 480p: UniPC, flow shift 3.0
        scheduler.set_timesteps(self.steps, device=self.device)
        latents = inputs.latents.clone()
        dtype = next(self.model.parameters()).dtype
        self._sync()
        started = time.perf_counter()
        for i, t in enumerate(scheduler.timesteps):
            self.current_timestep = t
            x = latents.to(dtype)
            ts = t.expand(x.shape[0])
            ctx = {"step_index": i, "sigma": float(scheduler.sigmas[i]), "num_inference_steps": self.steps}
            with self.model.cache_context("cond", **ctx):
                pred = self.model(hidden_states=x, timestep=ts, encoder_hidden_states=inputs.cond, return_dict=False)[0]
            if self.guidance_scale > 1.0:
                with self.model.cache_context("uncond", **ctx):
                    uncond = self.model(hidden_states=x, timestep=ts, encoder_hidden_states=inputs.uncond,
                                        return_dict=False)[0]
                pred = uncond + self.guidance_scale * (pred - uncond)
            latents = scheduler.step(pred, t, latents, return_dict=False)[0]
        self._sync()
        self.current_timestep = None
        self.model._reset_stateful_cache()  # as WanPipeline does when it returns
        return latents.float(), time.perf_counter() - started


def psnr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    """PSNR of ``other`` vs ``reference`` with peak = the reference's value range (inf when equal)."""
    mse = torch.mean((reference.float() - other.float()) ** 2).item()
    peak = (reference.max() - reference.min()).item()
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def default_configs(ratios: tuple[float, ...]) -> dict[str, CacheConfig]:
    """The caches with the defaults the runner uses for Wan (MagCache with the calibrated ratios)."""
    return {
        "first_block": CacheConfig(kind="first_block"),
        "mag": CacheConfig(kind="mag").with_mag_ratios(ratios),
        "taylorseer": CacheConfig(kind="taylorseer"),
        "pab": CacheConfig(kind="pab"),
    }


def _peak_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0.0


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_bench(model: Any, *, width: int, height: int, frames: int, steps: int, guidance_scale: float,
              device: str, kinds: tuple[str, ...] = KINDS,
              report: Callable[[str], None] = print) -> dict[str, Any]:
    dtype = next(model.parameters()).dtype
    inputs = make_inputs(model, width, height, frames, device, dtype)
    sampler = Sampler(model, steps, guidance_scale, device)

    with MagCalibrator(model) as calibration:  # untimed: warm-up + MagCache ratios, on other inputs
        sampler.run(make_inputs(model, width, height, frames, device, dtype, seed=1))
    ratios = calibration.ratios_for("cond")
    report(f"warm-up done; MagCache ratios (cond): {[round(r, 3) for r in ratios]}")

    _reset_peak(device)
    reference, base_s = sampler.run(inputs)
    base = CacheResult("none", base_s / steps, 1.0, 0.0, math.inf, _peak_gib(device), base_s)
    report(f"{'cache':<12} {'s/step':>8} {'speed-up':>9} {'skipped':>8} {'PSNR dB':>8} {'peak GiB':>9}")
    results = [base]

    def line(r: CacheResult) -> str:
        return (f"{r.cache:<12} {r.s_per_step:>8.3f} {r.speedup:>8.2f}x {r.skip_fraction:>7.1%} "
                f"{r.psnr_db:>8.2f} {r.peak_memory_gib:>9.1f}")

    report(line(base))
    configs = default_configs(ratios)
    for kind in kinds:
        config = configs[kind]
        _reset_peak(device)
        with applied_cache(model, config, steps=steps, timestep_fn=sampler.timestep), ComputeCounter(model) as counter:
            latents, seconds = sampler.run(inputs)
        result = CacheResult(kind, seconds / steps, base_s / seconds, counter.report().skip_fraction,
                             psnr_db(reference, latents), _peak_gib(device), seconds)
        results.append(result)
        report(line(result))
    return {"width": width, "height": height, "frames": frames, "steps": steps, "guidance_scale": guidance_scale,
            "dtype": str(dtype).removeprefix("torch."), "device": device,
            "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
            "tokens": SPEC.latent_tokens(width, height, frames), "mag_ratios": list(ratios),
            "configs": {k: configs[k].summary() for k in kinds}, "results": [asdict(r) for r in results]}


def _finite(value: Any) -> Any:
    """JSON-safe copy: infinite PSNR (identical latents) becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--caches", default="all", help=f"comma separated subset of {','.join(KINDS)}")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--smoke", action="store_true", help="tiny transformer on the CPU (code path check only)")
    args = parser.parse_args(argv)
    kinds = KINDS if args.caches == "all" else tuple(k.strip() for k in args.caches.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown caches {unknown}")

    model: Any
    if args.smoke:
        torch.set_num_threads(1)
        model = tc.tiny_transformer(0)
        out = run_bench(model, width=32, height=32, frames=5, steps=args.steps, guidance_scale=args.guidance,
                        device="cpu", kinds=kinds)
    elif not torch.cuda.is_available():
        print("bench.runner_gpu: CUDA is not available on this machine; nothing measured "
              "(use --smoke to check the code path on the CPU).")
        return 0
    else:
        model = wan13b_transformer("cuda", torch.bfloat16)
        raw = measure_step_seconds(args.width, args.height, args.frames, steps=2, model=model)
        print(f"Wan2.1-1.3B-shaped DiT, random weights, {args.width}x{args.height}x{args.frames} "
              f"({raw.tokens} tokens), "
              f"bf16 on {raw.device_name}; bench.gpu_step: {raw.s_per_step:.3f} s/step (cfg)")
        out = run_bench(model, width=args.width, height=args.height, frames=args.frames, steps=args.steps,
                        guidance_scale=args.guidance, device="cuda", kinds=kinds)
    print("PSNR is latent-space vs the no-cache run (random weights: decoded frames would be noise).")
    out = _finite(out)
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
