"""Preprocess throughput: 1 worker vs all cores, side by side in one run, for decode + pose and for the
full path.

Generates a 480p clip of the synthetic walking figure (H.264, 30 fps), then for each worker
count runs the streaming path the animate preprocess uses — decode, resample, fit to the
832x480 grid, MediaPipe Pose on the thread pool (ordered, bounded window) — and the full path
(``AnimateRun``: also the skeleton drawing, face crops and chunked encoding of all three streams,
all on the same pool; ``--pose-only`` skips it).
Runs alternate (1, N, 1, N, ...) so background load hits both alike; the best run (least
disturbed by other processes on a shared machine) and the median are reported, with the CPU
time the process used per wall second ("cores busy") to show the parallelism achieved.

    python bench/preprocess.py [--seconds 10] [--workers N] [--repeats 3] [--pose-only]

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
    p.add_argument("--full", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    p.add_argument("--pose-only", action="store_true", help="skip the full path (render, face crops, encode)")
    args = p.parse_args()

    t = time.perf_counter()
    video = figure_video(args.seconds, args.fps, args.width, args.height)
    duration = args.seconds
    print(f"clip: {args.width}x{args.height} H.264, {args.seconds:g} s at {args.fps} fps, {len(video) / 1e6:.2f} MB "
          f"(generated in {time.perf_counter() - t:.1f} s); grid {args.grid_w}x{args.grid_h}")
    print(f"cores available: {available_cores()}, load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    counts = sorted({1, args.workers})
    modes = [("decode+pose", decode_pose)] + ([] if args.pose_only else [("full preprocess", full)])
    for label, fn in modes:
        estimators = {n: PoseEstimator(n) for n in counts}
        for n, est in estimators.items():  # build every thread's graph before timing
            est.estimate([draw_figure(i / 30, 320, 240) for i in range(2 * n)])
        times: dict[int, list[tuple[float, float]]] = {n: [] for n in counts}
        frames = detected = 0
        for _ in range(args.repeats):
            for n in counts:
                t, c = time.perf_counter(), time.process_time()
                frames, detected = fn(video, estimators[n], args)
                times[n].append((time.perf_counter() - t, time.process_time() - c))
        for est in estimators.values():
            est.close()
        print(f"\n[{label}] {frames} frames per run, person detected in {detected}, {args.repeats} runs each")
        best: dict[int, float] = {}
        for n in counts:
            walls = [w for w, _ in times[n]]
            best[n] = min(walls)
            med = statistics.median(walls)
            busy = statistics.median(cpu / wall for wall, cpu in times[n])
            cpu_ms = 1000 * statistics.median(cpu for _, cpu in times[n]) / frames
            print(f"  workers={n:<2d}  best {frames / best[n]:6.1f} frames/s ({1000 * best[n] / frames:5.1f} ms/frame, "
                  f"real-time factor {best[n] / duration:.2f})  median {frames / med:6.1f} frames/s "
                  f"(RTF {med / duration:.2f})  CPU {cpu_ms:5.1f} ms/frame  cores busy {busy:.2f}")
        if len(counts) > 1:
            n = counts[-1]
            print(f"  speed-up {n} workers vs 1: {best[1] / best[n]:.2f}x (best runs)")
        print(f"  load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
