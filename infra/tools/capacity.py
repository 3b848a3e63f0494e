#!/usr/bin/env python3
"""Capacity model for the GPU runners: seconds per denoising step, jobs per day, GPU sizing.

    python infra/tools/capacity.py            # print the tables used in infra/README.md

Seconds per step are *estimates from FLOPs* (no GPU measurement exists in this repository yet),
calibrated against a published measurement; replace ``MFU`` with measured numbers (bench/) when
you have them and re-run. The model:

    FLOPs/step  = CFG(2) x layers x [ 2 x S x P_layer  +  4 x S^2 x hidden ]
                  S = latent tokens of one window (ModelSpec.latent_tokens), P_layer = weights per
                  block (self-attn 4h^2, cross-attn q/o 2h^2, FFN 2 h ffn)
    s/step      = FLOPs/step / (N x peak_bf16 x MFU x eff(N))      N = GPUs per runner (USP)
    segment_s   = steps x s/step + overhead_s                     (text encoder, VAE decode, I/O)
    jobs/day    = 86400 / (segments x segment_s) x runners
    jobs/day/GPU = jobs/day per runner / N

Calibration: Morphic measured Wan2.2 I2V-A14B (the 14B-active DiT of wan2.1-t2v-14b) at
1280x720x81, 40 steps on 8x H100 SXM with Ulysses-8 + FSDP + FlashAttention-2: 250.7 s end to end
(https://www.morphic.com/blog/boosting-wan2-2-i2v-56-faster, Oct 2025). This model gives
``anchor()`` for the same setup; see the README for the comparison.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from schemas.registry import MODELS, ModelSpec  # noqa: E402

CFG = 2  # classifier-free guidance: a conditional and an unconditional pass per step
TEXT_ENCODER_GB = 11.4  # umT5-XXL encoder in bf16 (kept resident: conservative)
VAE_GB = 0.5
WORKSPACE_GB = 8.0  # CUDA context, NCCL buffers, allocator slack, VAE decode peak (tiled)
DAY_S = 86_400


@dataclass(frozen=True)
class Gpu:
    name: str
    peak_tflops: float  # dense BF16 tensor-core peak (vendor datasheet)
    mem_gb: float
    mfu: float  # achieved fraction of peak on these shapes (estimate, see README)
    eff: dict[int, float]  # sequence-parallel efficiency by GPU count (interconnect)


NVLINK = {1: 1.0, 2: 0.95, 4: 0.9, 8: 0.8}
PCIE = {1: 1.0, 2: 0.85, 4: 0.75, 8: 0.6}

GPUS = {
    "H100-SXM-80G": Gpu("H100-SXM-80G", 989.0, 80, 0.40, NVLINK),  # FA2; FA3 reaches ~0.6
    "H200-141G": Gpu("H200-141G", 989.0, 141, 0.40, NVLINK),
    "A100-SXM-80G": Gpu("A100-SXM-80G", 312.0, 80, 0.55, NVLINK),
    "L40S-48G": Gpu("L40S-48G", 362.0, 48, 0.50, PCIE),
}


@dataclass(frozen=True)
class Workload:
    model: str
    width: int
    height: int
    frames: int
    steps: int

    @property
    def spec(self) -> ModelSpec:
        return MODELS[self.model]

    @property
    def label(self) -> str:
        return f"{self.model} {self.width}x{self.height}x{self.frames}, {self.steps} steps"


WORKLOADS = (
    Workload("wan2.1-t2v-1.3b", 832, 480, 81, 50),
    Workload("wan2.2-ti2v-5b", 1280, 704, 121, 50),
    Workload("wan2.1-i2v-14b-480p", 832, 480, 81, 50),
    Workload("wan2.1-t2v-14b", 1280, 720, 81, 50),
)


def flops_per_step(w: Workload) -> float:
    t = w.spec.transformer
    s = w.spec.latent_tokens(w.width, w.height, w.frames)
    h = t.hidden
    params_per_layer = 4 * h * h + 2 * h * h + 2 * h * t.ffn_dim
    per_layer = 2 * s * params_per_layer + 4 * s * s * h
    return CFG * t.num_layers * per_layer


def s_per_step(w: Workload, gpu: Gpu, n: int) -> float:
    return flops_per_step(w) / (n * gpu.peak_tflops * 1e12 * gpu.mfu * gpu.eff[n])


def overhead_s(w: Workload, gpu: Gpu) -> float:
    """Per segment: ~5 s fixed (prompt encoding, latents, bus) + VAE decode, ~20 s for 720p x 81
    frames on one H100, scaled by pixels x frames and by compute. Encode/upload overlaps the next
    segment's denoising (ARCHITECTURE.md) and is not counted."""
    pixels = w.width * w.height * w.frames / (1280 * 720 * 81)
    return 5.0 + 20.0 * pixels * (989.0 / gpu.peak_tflops)


def memory_gb(w: Workload, n: int) -> float:
    """Per GPU: replicated DiT weights (Ulysses/ring shard activations, not weights), text encoder,
    VAE, activations of one block for this rank's share of tokens (both CFG branches), workspace."""
    t = w.spec.transformer
    s = w.spec.latent_tokens(w.width, w.height, w.frames)
    act = CFG * (s / n) * (4 * t.hidden + t.ffn_dim) * 2 / 1e9
    return t.params_b * 2 + TEXT_ENCODER_GB + VAE_GB + act + WORKSPACE_GB


def fits(w: Workload, gpu: Gpu, n: int) -> bool:
    return memory_gb(w, n) <= 0.92 * gpu.mem_gb


def heads_ok(w: Workload, n: int) -> bool:
    return w.spec.transformer.num_heads % n == 0  # Ulysses degree divides the heads (else ring)


def segment_s(w: Workload, gpu: Gpu, n: int) -> float:
    return w.steps * s_per_step(w, gpu, n) + overhead_s(w, gpu)


def jobs_per_day(w: Workload, gpu: Gpu, n: int, segments: int = 1, runners: int = 1) -> float:
    return DAY_S / (segments * segment_s(w, gpu, n)) * runners


def default_workload(model: str) -> Workload:
    m = MODELS[model]
    return Workload(model, m.default_width, m.default_height, m.default_frames, m.default_steps)


def min_grace_s(w: Workload, gpu: Gpu, n: int, upload_margin_s: float = 60.0) -> float:
    """Termination grace that lets a runner finish its current step, decode and upload."""
    return s_per_step(w, gpu, n) + overhead_s(w, gpu) + upload_margin_s


def anchor() -> tuple[float, float]:
    """(estimated, published) seconds for the Morphic 8x H100 run (40 steps, 720p x 81)."""
    w = Workload("wan2.1-t2v-14b", 1280, 720, 81, 40)
    return segment_s(w, GPUS["H100-SXM-80G"], 8), 250.7


TABLE_GPUS = ("H100-SXM-80G", "A100-SXM-80G", "L40S-48G")  # H200: H100 compute, more memory


def sizing_table() -> str:
    """Per workload and GPUs per runner: est. s/step and jobs/day per runner, for each GPU type
    ("-": does not fit in memory, or the GPU count does not divide the attention heads)."""
    short = [g.split("-")[0] for g in TABLE_GPUS]
    head = "| workload (1 segment) | GPUs/runner | " + " | ".join(
        f"{g} s/step | {g} jobs/day/runner | {g} jobs/day/GPU" for g in short) + " |"
    rows = [head, "|---|---:|" + "---:|---:|---:|" * len(TABLE_GPUS)]
    for w in WORKLOADS:
        for n in (1, 2, 4, 8):
            if not heads_ok(w, n):
                continue
            cells = []
            for name in TABLE_GPUS:
                g = GPUS[name]
                if fits(w, g, n):
                    jpd = jobs_per_day(w, g, n)
                    cells.append(f"{s_per_step(w, g, n):.2f} | {jpd:.0f} | {jpd / n:.0f}")
                else:
                    cells.append("- | - | -")
            rows.append(f"| {w.label} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def recommendation_table() -> str:
    """GPUs per runner per workload: the fewest that fit, and the count for a latency target."""
    rows = ["| workload | FLOPs/step | min GPUs/runner (H100 / L40S) | GPUs/runner for a segment < 5 min on H100 "
            "| termination grace ≥ |",
            "|---|---:|---|---:|---:|"]
    h100, l40s = GPUS["H100-SXM-80G"], GPUS["L40S-48G"]
    for w in WORKLOADS:
        def first_fit(g: Gpu, w: Workload = w) -> str:
            ns = [n for n in (1, 2, 4, 8) if fits(w, g, n) and heads_ok(w, n)]
            return str(ns[0]) if ns else "does not fit (needs FSDP / fp8)"
        fast = [n for n in (1, 2, 4, 8) if fits(w, h100, n) and heads_ok(w, n) and segment_s(w, h100, n) < 300]
        n_fast = fast[0] if fast else 8
        # one step at the slowest sensible size (min GPUs on H100) + decode + 60 s upload margin
        n_min = next(n for n in (1, 2, 4, 8) if fits(w, h100, n) and heads_ok(w, n))
        grace = math.ceil(min_grace_s(w, h100, n_min) / 30) * 30
        rows.append(f"| {w.label} | {flops_per_step(w):.2e} | {first_fit(h100)} / {first_fit(l40s)} | {n_fast} "
                    f"| {grace} s |")
    return "\n".join(rows)


def render() -> str:
    """The capacity section of infra/README.md (between the capacity markers)."""
    est, pub = anchor()
    return "\n".join([
        f"Calibration: wan2.1-t2v-14b 1280x720x81, 40 steps, 8x H100: this model estimates {est:.0f} s, "
        f"Morphic measured {pub:.1f} s ({(est - pub) / pub:+.0%}).",
        "",
        recommendation_table(),
        "",
        sizing_table(),
    ]) + "\n"


README = REPO / "infra" / "README.md"
BEGIN, END = "<!-- capacity:begin (generated by infra/tools/capacity.py) -->", "<!-- capacity:end -->"


def readme_block(text: str) -> str:
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="GPU capacity model (see module docstring)")
    ap.add_argument("--write-readme", action="store_true", help="replace the tables in infra/README.md")
    args = ap.parse_args(argv)
    out = render()
    if args.write_readme:
        text = README.read_text()
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        README.write_text(f"{head}{BEGIN}\n{out}{END}{tail}")
        print(f"updated {README.relative_to(REPO)}")
    else:
        print(out, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
