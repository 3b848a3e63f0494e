"""Preprocess throughput: decode + pose with 1 worker vs all cores, side by side in one run.

Generates a 480p clip of the synthetic walking figure (H.264, 30 fps), then for each worker
count runs the streaming path the animate preprocess uses — decode, resample, fit to the
832x480 grid, MediaPipe Pose on the thread pool (ordered, bounded window) — and, with
``--full``, also the pose rendering, face crops and chunked encoding of all three streams.
Runs alternate (1, N, 1, N, ...) so background load hits both alike; the median is reported.

    python bench/preprocess.py [--seconds 10] [--workers N] [--repeats 3] [--full]

Prints frames/s per worker count, the speed-up ratio (goal >= 1.7x on 2 cores) and the
real-time factor = processing time / clip duration (goal <= 1.0).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from functions.preprocess.animate import AnimateRun  # noqa: E402
from functions.preprocess.limits import MediaLimits  # noqa: E402
from functions.preprocess.media import iter_frames  # noqa: E402
from functions.preprocess.pose import PoseEstimator, available_cores  # noqa: E402
from functions.preprocess.synthetic import draw_figure, figure_video  # noqa: E402


def decode_pose(video: bytes, est: PoseEstimator, args: argparse.Namespace) -> tuple[int, int]:
    frames = iter_frames(video, fps=args.fps, width=args.grid_w, height=args.grid_h, limits=MediaLimits(),
                         max_frames=10**6)
    n = detected = 0
    for _, kp in est.map_ordered(frames, lambda s: s.analysis):
        n += 1
        detected += int(kp[:, 3].max() > 0)
    return n, detected


def full(video: bytes, est: PoseEstimator, args: argparse.Namespace) -> tuple[int, int]:
    run = AnimateRun(video, width=args.grid_w, height=args.grid_h, fps=args.fps,
                     num_frames=round(args.seconds * args.fps), limits=MediaLimits(), estimator=est, face_size=512)
    while not run.done:
        run.step(32)
    return run.stats.source_frames, run.stats.detected_frames


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--fps", type=int, default=30, help="source and target frame rate")
    p.add_argument("--width", type=int, default=854)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--grid-w", type=int, default=832)
    p.add_argument("--grid-h", type=int, default=480)
    p.add_argument("--workers", type=int, default=available_cores())
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--full", action="store_true", help="also render pose, crop faces, encode all streams")
    args = p.parse_args()

    t = time.perf_counter()
    video = figure_video(args.seconds, args.fps, args.width, args.height)
    duration = args.seconds
    print(f"clip: {args.width}x{args.height} H.264, {args.seconds:g} s at {args.fps} fps, {len(video) / 1e6:.2f} MB "
          f"(generated in {time.perf_counter() - t:.1f} s); grid {args.grid_w}x{args.grid_h}")
    print(f"cores available: {available_cores()}, load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    counts = sorted({1, args.workers})
    modes = [("decode+pose", decode_pose)] + ([("full preprocess", full)] if args.full else [])
    for label, fn in modes:
        estimators = {n: PoseEstimator(n) for n in counts}
        for n, est in estimators.items():  # build every thread's graph before timing
            est.estimate([draw_figure(i / 30, 320, 240) for i in range(2 * n)])
        times: dict[int, list[float]] = {n: [] for n in counts}
        frames = detected = 0
        for _ in range(args.repeats):
            for n in counts:
                t = time.perf_counter()
                frames, detected = fn(video, estimators[n], args)
                times[n].append(time.perf_counter() - t)
        for est in estimators.values():
            est.close()
        print(f"\n[{label}] {frames} frames per run, person detected in {detected}, median of {args.repeats} runs")
        fps = {}
        for n in counts:
            med = statistics.median(times[n])
            fps[n] = frames / med
            print(f"  workers={n:<2d}  {fps[n]:7.1f} frames/s  {1000 * med / frames:6.1f} ms/frame  "
                  f"real-time factor {med / duration:.2f}  (runs: {', '.join(f'{x:.2f}s' for x in times[n])})")
        if len(counts) > 1:
            print(f"  speed-up {counts[-1]} workers vs 1: {fps[counts[-1]] / fps[1]:.2f}x")


if __name__ == "__main__":
    main()
