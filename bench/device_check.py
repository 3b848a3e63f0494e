"""The GPU check in one run (issue 17): tests/gpu, then every figure the issue asks for.

Usage: ``python -m bench.device_check [--out DIR] [--cost-file PATH] [--dry-run]`` (normally via
``bench/device_check.sh``, which first installs from ``.whl/`` what a bare GPU host lacks).

Figures, for random-weight transformers of the real shapes (random weights run at the real speed):

1. Wan2.1-1.3B at 480p x 81: s/step bf16, without and with CFG (goal <= 1.0 s on H100-class);
2. Wan2.1-14B at 480p x 81: s/step with CFG (goal <= 5.0 s, LightX2V does 5.18 on one H100);
3. each step cache's speed-up and latent PSNR against no cache (1.3B, 480p x 81);
4. torch.compile (regional, the blocks) and FP8 (torchao) speed-ups on the 1.3B;
5. tiled VAE decode vs full decode: seconds, peak memory, PSNR (Wan2.1 VAE, 480p x 81);
6. the planner's predictions against the measurements: ``cost.py`` s/step (declared constants)
   and ``memory.py`` peak bytes, as ratios.

It then writes the measured throughput to the file the planner's cost model reads
(``functions/planner/measured_cost.json``, see ``functions.planner.cost.load_cost_model``) and a
JSON report to ``--out``. Each section runs under its own time budget and a failing section is
reported and makes the exit status 1 without stopping the others. ``--dry-run`` runs the same code
on the CPU with tiny shapes (the test suite does, so this script cannot rot); it measures nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.gpu_step import measure_step_seconds, wan_transformer
from functions.planner import cost, memory
from schemas.registry import MODELS, ModelSpec

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30

GOAL_13B_S = 1.0
GOAL_14B_CFG_S = 5.0
PREDICTION_FACTOR = 4.0  # cost.py / memory.py must be within this factor of the measurement


class Check:
    """Runs the sections, keeps the report, prints as it goes."""

    def __init__(self, dry_run: bool, out: Path) -> None:
        self.dry_run = dry_run
        self.device = "cpu" if dry_run else "cuda"
        self.dtype = torch.float32 if dry_run else torch.bfloat16
        self.out = out
        self.report: dict[str, Any] = {"dry_run": dry_run, "sections": {}, "failed": []}
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    def section(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        self.say(f"== {name}")
        t0 = time.monotonic()
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - reported, the other sections still run
            self.say(f"!! {name} failed: {type(e).__name__}: {e}")
            traceback.print_exc()
            self.report["failed"].append(name)
            self.report["sections"][name] = {"error": f"{type(e).__name__}: {e}"}
            return None
        finally:
            free_memory()
        result["seconds"] = round(time.monotonic() - t0, 2)
        self.report["sections"][name] = result
        self.say(f"   {name}: {json.dumps(_finite(result))}")
        return result

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int, int]:
        return (32, 32, 5) if self.dry_run else (832, 480, 81)

    def spec(self, name: str) -> ModelSpec:
        return MODELS["tiny-wan"] if self.dry_run else MODELS[name]


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / GIB if torch.cuda.is_available() else 0.0


# -- sections ----------------------------------------------------------------------------------
def run_gpu_tests(check: Check, timeout_s: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "tests/gpu", "-q", "-x", "-p", "no:cacheprovider", "-rs"]
    if check.dry_run:
        cmd += ["--collect-only"]  # CPU: the GPU tests skip; check they import and collect
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                              p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)))
    tail = (proc.stdout + proc.stderr)[-3000:]
    print(tail)
    if proc.returncode != 0:
        raise RuntimeError(f"pytest tests/gpu exited {proc.returncode}")
    return {"returncode": proc.returncode, "summary": tail.strip().splitlines()[-1] if tail.strip() else ""}


def step_times(check: Check, name: str, *, both: bool, steps: int) -> dict[str, Any]:
    spec = check.spec(name)
    width, height, frames = check.size
    model = wan_transformer(spec, check.device, check.dtype)
    out: dict[str, Any] = {"model": spec.name, "shape_of": name, "size": [width, height, frames],
                           "tokens": spec.latent_tokens(width, height, frames)}
    runs = (False, True) if both else (True,)
    for cfg in runs:
        t = measure_step_seconds(width, height, frames, steps=steps, warmup=1, cfg=cfg, device=check.device,
                                 model=model, spec=spec)
        key = "cfg" if cfg else "no_cfg"
        out[f"s_per_step_{key}"] = round(t.s_per_step, 4)
        out[f"peak_gib_{key}"] = round(t.peak_memory_gib, 2)
        out["device_name"] = t.device_name
        # the planner's predictions for this step (declared constants, not the measured file)
        predicted = cost.step_flops(spec, width, height, frames, cfg=cfg) / cost.CostModel().flops_per_s
        out[f"cost_py_s_{key}"] = round(predicted, 4)
        out[f"cost_py_ratio_{key}"] = round(predicted / t.s_per_step, 3)
    est = memory.estimate_window(spec, width, height, frames, dtype_bytes=2 if check.dtype != torch.float32 else 4)
    dit_peak = est.weights_bytes - spec.vae_params_b * 1e9 * 4 + est.activation_bytes  # the DiT alone was run
    out["memory_py_dit_gib"] = round(dit_peak / GIB, 2)
    if not check.dry_run:
        out["memory_py_ratio"] = round(dit_peak / GIB / max(out.get("peak_gib_cfg", 0.0), 1e-9), 3)
    return out


def caches_section(check: Check, steps: int) -> dict[str, Any]:
    from bench.runner_gpu import run_bench

    spec = check.spec("wan2.1-t2v-1.3b")
    width, height, frames = check.size
    model = wan_transformer(spec, check.device, check.dtype)
    out = run_bench(model, width=width, height=height, frames=frames, steps=steps, guidance_scale=5.0,
                    device=check.device, report=check.say)
    return {"steps": steps, "results": [{k: r[k] for k in ("cache", "s_per_step", "speedup", "skip_fraction",
                                                           "psnr_db", "peak_memory_gib")} for r in out["results"]]}


def compile_section(check: Check, steps: int) -> dict[str, Any]:
    spec = check.spec("wan2.1-t2v-1.3b")
    width, height, frames = check.size
    model = wan_transformer(spec, check.device, check.dtype)
    eager = measure_step_seconds(width, height, frames, steps=steps, warmup=1, cfg=True, device=check.device,
                                 model=model, spec=spec)
    # the runner's option (gpu_runner.accel): regional compile of the repeated blocks; the CPU dry run
    # uses the eager backend (no C++ toolchain needed) to check the code path only
    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {"fullgraph": True, "dynamic": True}
    if check.dry_run:
        kwargs["backend"] = "eager"
    model.compile_repeated_blocks(**kwargs)
    warm = measure_step_seconds(width, height, frames, steps=1, warmup=1, cfg=True, device=check.device,
                                model=model, spec=spec)
    compile_s = time.perf_counter() - t0
    compiled = measure_step_seconds(width, height, frames, steps=steps, warmup=0, cfg=True, device=check.device,
                                    model=model, spec=spec)
    return {"eager_s_per_step": round(eager.s_per_step, 4), "compiled_s_per_step": round(compiled.s_per_step, 4),
            "speedup": round(eager.s_per_step / compiled.s_per_step, 3), "compile_and_warmup_s": round(compile_s, 1),
            "first_compiled_step_s": round(warm.s_per_step, 3)}


def fp8_section(check: Check, steps: int) -> dict[str, Any]:
    from gpu_runner import accel
    from schemas.errors import Permanent

    if check.dry_run:  # on the CPU the option must be refused loudly
        try:
            accel.check(accel.AccelConfig(fp8=True), "cpu")
        except Permanent as e:
            return {"refused_on_cpu": str(e)}
        raise RuntimeError("FP8 was not refused on the CPU")
    spec = check.spec("wan2.1-t2v-1.3b")
    width, height, frames = check.size
    model = wan_transformer(spec, check.device, check.dtype)
    base = measure_step_seconds(width, height, frames, steps=steps, warmup=1, cfg=True, device=check.device,
                                model=model, spec=spec)

    class _Pipe:
        transformer = model

    accel.apply(_Pipe(), accel.AccelConfig(fp8=True), check.device)
    fp8 = measure_step_seconds(width, height, frames, steps=steps, warmup=1, cfg=True, device=check.device,
                               model=model, spec=spec)
    return {"bf16_s_per_step": round(base.s_per_step, 4), "fp8_s_per_step": round(fp8.s_per_step, 4),
            "speedup": round(base.s_per_step / fp8.s_per_step, 3), "fp8_peak_gib": round(fp8.peak_memory_gib, 2)}


def vae_section(check: Check) -> dict[str, Any]:
    from diffusers import AutoencoderKLWan

    from gpu_runner.pipelines import tiny_components as tc

    width, height, frames = check.size
    if check.dry_run:
        vae = tc.tiny_vae(0)
        tile = 16
    else:
        with torch.device(check.device):
            vae = AutoencoderKLWan(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                   temperal_downsample=[False, True, True]).eval()
        tile = 256
    vae = vae.to(check.device, torch.float32)
    spec = MODELS["wan2.1-t2v-1.3b"]
    g = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(1, 16, spec.latent_frames(frames), height // 8, width // 8, generator=g).to(check.device)

    def decode() -> tuple[torch.Tensor, float, float]:
        free_memory()
        if check.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            video = vae.decode(z).sample
        if check.device.startswith("cuda"):
            torch.cuda.synchronize()
        return video.float().cpu(), time.perf_counter() - t0, _peak_gib()

    full, full_s, full_peak = decode()
    vae.enable_tiling(tile_sample_min_height=tile, tile_sample_min_width=tile,
                      tile_sample_stride_height=tile * 3 // 4, tile_sample_stride_width=tile * 3 // 4)
    tiled, tiled_s, tiled_peak = decode()
    mse = torch.mean((full.clamp(-1, 1) - tiled.clamp(-1, 1)) ** 2).item()
    psnr = math.inf if mse == 0 else 10 * math.log10(4.0 / mse)  # peak-to-peak 2 in [-1, 1]
    return {"size": [width, height, frames], "tile": tile, "full_s": round(full_s, 3),
            "full_peak_gib": round(full_peak, 2),
            "tiled_s": round(tiled_s, 3), "tiled_peak_gib": round(tiled_peak, 2), "psnr_db": round(psnr, 2),
            "note": "random weights: PSNR is a lower bound of what trained (smooth) weights give"}


def write_cost_file(check: Check, path: Path) -> dict[str, Any]:
    """The measured throughput of the 14B (the production shape; the 1.3B as a fallback)."""
    sections = check.report["sections"]
    source = sections.get("14b_480p_cfg") or sections.get("13b_480p")
    if not source or "s_per_step_cfg" not in source:
        raise RuntimeError("no s/step measured: nothing to write")
    spec = check.spec(source["shape_of"])
    width, height, frames = source["size"]
    flops = cost.measured_flops_per_s(spec, width, height, frames, source["s_per_step_cfg"], cfg=True)
    data = {
        "flops_per_s": flops, "device_name": source.get("device_name", "?"), "dry_run": check.dry_run,
        "measured": [{k: s[k] for k in ("model", "shape_of", "size", "tokens", "s_per_step_cfg", "device_name")
                      if k in s} for s in (sections.get("13b_480p"), sections.get("14b_480p_cfg")) if s],
        "written_by": "bench/device_check.py", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    loaded = cost.load_cost_model(path)  # the planner reads what was written
    if not math.isclose(loaded.flops_per_s, flops):
        raise RuntimeError(f"{path} does not round-trip through cost.load_cost_model")
    return {"path": str(path), "flops_per_s": flops, "cost_model_source": loaded.source}


def summary(check: Check) -> str:
    s = check.report["sections"]
    lines = ["", "==== device check summary " + ("(DRY RUN: CPU, tiny shapes, nothing measured) " if check.dry_run
                                               else "") + "===="]

    def get(name: str, key: str) -> Any:
        return (s.get(name) or {}).get(key, "n/a")

    lines.append(f"1.3B 480p x 81 bf16 s/step: no CFG {get('13b_480p', 's_per_step_no_cfg')}, "
                 f"CFG {get('13b_480p', 's_per_step_cfg')} (goal <= {GOAL_13B_S} s)")
    lines.append(f"14B 480p x 81 s/step with CFG: {get('14b_480p_cfg', 's_per_step_cfg')} (goal <= {GOAL_14B_CFG_S} s)")
    for name in ("13b_480p", "14b_480p_cfg"):
        lines.append(f"  {name}: cost.py predicted/measured {get(name, 'cost_py_ratio_cfg')}, "
                     f"memory.py predicted/measured peak {get(name, 'memory_py_ratio')}")
    for r in (s.get("caches") or {}).get("results", []):
        psnr = "inf" if r["psnr_db"] is None or not math.isfinite(r["psnr_db"]) else f"{r['psnr_db']:.1f}"
        lines.append(f"cache {r['cache']:<12} speed-up {r['speedup']:.2f}x  latent PSNR {psnr} dB  "
                     f"skipped {r['skip_fraction']:.0%}")
    lines.append(f"compile speed-up: {get('compile', 'speedup')} "
                 f"(compile+warm-up {get('compile', 'compile_and_warmup_s')} s)")
    refused = f" ({get('fp8', 'refused_on_cpu')})" if check.dry_run else ""
    lines.append(f"FP8 speed-up: {get('fp8', 'speedup')}{refused}")
    lines.append(f"tiled VAE decode: {get('vae', 'tiled_s')} s, peak {get('vae', 'tiled_peak_gib')} GiB "
                 f"(full: {get('vae', 'full_s')} s, {get('vae', 'full_peak_gib')} GiB), "
                 f"PSNR {get('vae', 'psnr_db')} dB")
    lines.append(f"cost constants: {get('cost_file', 'path')} ({get('cost_file', 'cost_model_source')})")
    lines.append(f"failed sections: {check.report['failed'] or 'none'}; total {time.monotonic() - check.started:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: check the code path only")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".videogen/device_check")))
    parser.add_argument("--cost-file", type=Path, default=cost.MEASURED_PATH)
    parser.add_argument("--skip", default="", help="comma separated sections to skip")
    parser.add_argument("--cache-steps", type=int, default=10)
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench.device_check: CUDA is not available; run with --dry-run to check the code path.")
        return 2
    if args.dry_run:
        torch.set_num_threads(1)
    check = Check(args.dry_run, args.out)
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    if torch.cuda.is_available() and not args.dry_run:
        free, total = torch.cuda.mem_get_info()
        check.report["device"] = {"name": torch.cuda.get_device_name(), "free_gib": round(free / GIB, 1),
                                  "total_gib": round(total / GIB, 1), "torch": torch.__version__,
                                  "cuda": torch.version.cuda}
        check.say(f"device: {check.report['device']}")
    steps = 1 if args.dry_run else 2
    sections: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("gpu_tests", lambda: run_gpu_tests(check, timeout_s=60 if args.dry_run else 200)),
        ("13b_480p", lambda: step_times(check, "wan2.1-t2v-1.3b", both=True, steps=steps)),
        ("14b_480p_cfg", lambda: step_times(check, "wan2.1-t2v-14b", both=False, steps=steps)),
        ("caches", lambda: caches_section(check, 4 if args.dry_run else args.cache_steps)),
        ("compile", lambda: compile_section(check, steps)),
        ("fp8", lambda: fp8_section(check, steps)),
        ("vae", lambda: vae_section(check)),
        ("cost_file", lambda: write_cost_file(check, args.cost_file)),
    ]
    for name, fn in sections:
        if name not in skip:
            check.section(name, fn)
    text = summary(check)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "device_check.json").write_text(json.dumps(_finite(check.report), indent=2) + "\n")
    (args.out / "device_check.txt").write_text(text + "\n")
    if args.cost_file.is_file() and args.out.resolve() != args.cost_file.parent.resolve():
        (args.out / args.cost_file.name).write_text(args.cost_file.read_text())
    return 1 if check.report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

