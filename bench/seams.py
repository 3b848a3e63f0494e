"""Seam visibility of hard cut, cross-fade and latent blend on synthetic segments.

Content: a smooth moving pattern, continuous in the global frame index. Each segment is rendered
as an independent generation would drift: its own brightness offset (alternating ±shift), a small
horizontal offset and a fixed noise texture. Per overlap O: the planner's 4 windows of 41 frames
overlapping by O (T = 3*(41-O)+41).

Seam metric: ``d_t = mean |f_{t+1} - f_t|``; seam ratio = the largest ``d_t`` in a boundary zone
(one frame before the overlap to its end) / the median ``d_t`` inside segments. 1.0 = invisible.

* pixel domain: segments as rendered (cut, crossfade);
* VAE domain: every segment passed through a tiny random-weight Wan VAE (``AutoencoderKLWan``),
  as generated frames pass through the decoder; then cut, crossfade and latent blend. A random VAE
  shows the code path and the seam it leaves; absolute quality needs the real Wan VAE.

    .venv/bin/python bench/seams.py [--frames 161 --overlaps 5,9 --shift 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from functions.planner import SegmentPlan, plan_segments  # noqa: E402
from functions.stitch.blend import stitch_frames  # noqa: E402
from schemas.registry import MODELS  # noqa: E402

SIZE = 64
WINDOW = 41


def scene(start: int, frames: int, shift: float, dx: float, noise: np.ndarray) -> np.ndarray:
    """Frames ``start..start+frames`` of the moving pattern, with a segment's drift applied."""
    t = np.arange(start, start + frames, dtype=np.float32)[:, None, None]
    y = np.arange(SIZE, dtype=np.float32)[None, :, None]
    x = np.arange(SIZE, dtype=np.float32)[None, None, :] + dx
    r = 128 + 80 * np.sin((x + 1.5 * t) / 10.0) + 0 * y
    g = 128 + 60 * np.cos((y - t) / 8.0) + 0 * x
    cx, cy = 32 + 20 * np.sin(t / 15.0), 32 + 15 * np.cos(t / 11.0)
    b = 40 + 150 * (((x - cx) ** 2 + (y - cy) ** 2) < 64)
    frames_ = np.stack(np.broadcast_arrays(r, g, b), -1) + shift + noise
    return frames_.clip(0, 255).astype(np.uint8)


def render(plan: SegmentPlan, shift: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for w in plan.windows:
        noise = rng.normal(0, 3, (1, SIZE, SIZE, 3)).astype(np.float32)
        sign = 1 if w.index % 2 else -1
        out.append(scene(w.start_frame, w.frames, sign * shift, sign * 1.0, noise))
    return out


def seam_ratio(video: np.ndarray, plan: SegmentPlan) -> tuple[float, float]:
    """(largest boundary step / median interior step, largest boundary step in grey levels)."""
    d = np.abs(np.diff(video.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
    zone = np.zeros(len(d), dtype=bool)
    for w in plan.windows[1:]:
        zone[max(0, w.start_frame - 1) : w.start_frame + w.overlap_frames] = True
    boundary = float(d[zone].max())
    return boundary / float(np.median(d[~zone])), boundary


def vae_roundtrip(vae: object, frames: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        x = torch.from_numpy(frames).float().permute(3, 0, 1, 2)[None] / 127.5 - 1.0
        z = vae.encode(x).latent_dist.mode()  # type: ignore[attr-defined]
        y = vae.decode(z).sample[0, :, : len(frames)].clamp(-1, 1)  # type: ignore[attr-defined]
    return ((y + 1) * 127.5).round().permute(1, 2, 3, 0).to(torch.uint8).numpy()


def tiny_vae() -> object:
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--overlaps", default="5,9", help="minimum overlaps to plan with")
    ap.add_argument("--shift", type=float, default=10.0, help="± brightness drift per segment (grey levels)")
    ap.add_argument("--no-vae", action="store_true", help="skip the VAE-domain rows (no torch/diffusers)")
    args = ap.parse_args()
    spec = MODELS["tiny-wan"]
    print(f"4 windows of {WINDOW} frames at {SIZE}x{SIZE}, segment drift ±{args.shift:g} grey levels, ±1 px, noise σ=3")
    print(f"{'domain':<7} {'O':>3} {'T':>4} {'method':<10} {'seam ratio':>10} {'max step':>8} {'ms':>7}")
    vae = None if args.no_vae else tiny_vae()
    notes: list[str] = []
    for o_min in (int(o) for o in args.overlaps.split(",")):
        total = 3 * (WINDOW - o_min) + WINDOW  # 4 windows of 41 overlapping by exactly o_min
        plan = plan_segments(total, spec, SIZE, SIZE, min_overlap=o_min, max_window=WINDOW, min_window=WINDOW)
        assert plan.segments == 4 and plan.uniform and plan.overlap_frames == o_min
        raw = render(plan, args.shift)
        domains: list[tuple[str, list[np.ndarray], dict[str, str | Callable]]] = [
            ("pixel", raw, {"cut": "cut", "crossfade": "crossfade"})]
        if vae is not None:
            from functions.stitch.latent import latent_blend

            decoded = [vae_roundtrip(vae, seg) for seg in raw]
            methods = {"cut": "cut", "crossfade": "crossfade", "latent": lambda p, n: latent_blend(p, n, vae)}
            domains.append(("vae", decoded, methods))
            clip = decoded[0][-o_min:]
            first = np.abs(np.diff(decoded[1][:3].astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
            notes.append(f"O={o_min}: random-VAE causal first-frame step in a decoded segment "
                         f"{first[0]:.1f} (next step {first[1]:.1f}) grey levels")
            notes.append(f"O={o_min}: random-VAE re-encode error of an overlap clip "
                         f"{np.abs(latent_blend(clip, clip, vae).astype(np.float32) - clip).mean():.1f} grey levels")
        for domain, segs, methods in domains:
            for name, method in methods.items():
                t0 = time.perf_counter()
                video = stitch_frames(segs, plan.overlaps, total, method)  # type: ignore[arg-type]
                ms = (time.perf_counter() - t0) * 1e3
                assert len(video) == total
                ratio, step = seam_ratio(video, plan)
                print(f"{domain:<7} {o_min:>3} {total:>4} {name:<10} "
                      f"{ratio:>10.2f} {step:>8.2f} {ms:>7.1f}")
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
