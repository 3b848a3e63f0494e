"""Stitch encoded segments: full re-encode vs remux (+ re-encoded blended overlaps), side by side.

Segments follow the planner's windows for T frames (synthetic moving content, encoded with a
forced IDR frame after each overlap, as the runner does). Timed on the same inputs in one run:

* ``re-encode``: decode every segment, cross-fade in numpy, encode the whole output;
* ``hybrid``: :func:`functions.stitch.assemble.stitch_mp4` with ``crossfade``: packets copied,
  only the blended overlaps re-encoded;
* ``remux``: ``stitch_mp4`` with ``cut``: packets copied, nothing encoded.

Every output is decoded and its frame count checked against T.

    .venv/bin/python bench/stitch.py [--frames 308 --width 832 --height 480]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from functions.planner import plan_segments  # noqa: E402
from functions.stitch.assemble import segment_keyframes, stitch_mp4  # noqa: E402
from functions.stitch.blend import stitch_frames  # noqa: E402
from runtime.video import decode_mp4, encode_mp4, probe_mp4  # noqa: E402
from schemas.registry import MODELS  # noqa: E402

FPS = 16


def scene(start: int, frames: int, width: int, height: int, shift: float) -> np.ndarray:
    t = np.arange(start, start + frames, dtype=np.float32)[:, None, None]
    y = np.arange(height, dtype=np.float32)[None, :, None]
    x = np.arange(width, dtype=np.float32)[None, None, :]
    r = 128 + 80 * np.sin((x + 3 * t) / 23.0) + 0 * y
    g = 128 + 60 * np.cos((y - 2 * t) / 17.0) + 0 * x
    b = 90 + 60 * np.sin((x + y + 4 * t) / 41.0)
    return (np.stack(np.broadcast_arrays(r, g, b), -1) + shift).clip(0, 255).astype(np.uint8)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=308)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--model", default="wan2.1-t2v-1.3b")
    args = ap.parse_args()
    spec = MODELS[args.model]
    plan = plan_segments(args.frames, spec, args.width, args.height)
    print(f"T={args.frames} at {args.width}x{args.height}: {plan.reason}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        segs = []
        for w in plan.windows:
            path = root / f"seg{w.index}.mp4"
            frames = scene(w.start_frame, w.frames, args.width, args.height, 6.0 * (-1) ** w.index)
            encode_mp4(frames, FPS, path, keyframes_at=segment_keyframes(w.index, plan.overlaps, w.frames))
            segs.append(path)
        seg_bytes = sum(p.stat().st_size for p in segs)
        results: dict[str, tuple[float, int, int]] = {}

        def reencode(out: Path) -> tuple[int, int]:
            video = stitch_frames([decode_mp4(p) for p in segs], plan.overlaps, args.frames, "crossfade")
            return 0, encode_mp4(video, FPS, out)

        def hybrid(out: Path) -> tuple[int, int]:
            r = stitch_mp4(segs, plan.overlaps, args.frames, out, fps=FPS, method="crossfade")
            return r.remuxed_frames, r.encoded_frames

        def remux(out: Path) -> tuple[int, int]:
            r = stitch_mp4(segs, plan.overlaps, args.frames, out, fps=FPS, method="cut")
            return r.remuxed_frames, r.encoded_frames

        for name, fn in (("re-encode", reencode), ("hybrid", hybrid), ("remux", remux)):
            out = root / f"{name}.mp4"
            t0 = time.perf_counter()
            copied, encoded = fn(out)
            results[name] = (time.perf_counter() - t0, copied, encoded)
            frames = probe_mp4(out).frames
            decoded = len(decode_mp4(out))
            assert frames == decoded == args.frames, (name, frames, decoded)
    base = results["re-encode"][0]
    print(f"{plan.segments} segments, {seg_bytes / 1e6:.1f} MB encoded")
    print(f"{'method':<10} {'seconds':>8} {'copied':>7} {'encoded':>7} {'x faster than re-encode':>24}")
    for name, (sec, copied, encoded) in results.items():
        print(f"{name:<10} {sec:>8.3f} {copied:>7} {encoded:>7} {base / sec:>24.1f}")
    print(f"all outputs decode to exactly {args.frames} frames")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
