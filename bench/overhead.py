"""Control-plane overhead: N tiny jobs through the whole pipeline vs the same model call in-process.

    .venv/bin/python -m bench.overhead [--jobs 20]

Starts its own nats-server + weed mini, the CPU functions and a 1-rank tiny-wan runner, then
submits jobs one at a time and measures publish -> job.succeeded. The model's own compute for
each job is the runner's measured segment time; overhead = end-to-end - compute. The same
generate() call is also timed directly in this process (no bus, no S3) for the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


STAGES = ("job.accepted", "job.preprocessed", "job.started", "job.segment_completed", "job.succeeded")


async def run_pipeline(
    settings, jobs: int, params: dict, marks: dict[str, list[float]]
) -> tuple[list[float], list[float]]:
    from runtime.bus import Bus
    from runtime.client import follow, submit
    from runtime.storage import ObjectNotFound, Storage
    from schemas.messages import EventType, JobRequest, SegmentResult
    from schemas.names import segment_result_key

    e2e: list[float] = []
    compute: list[float] = []
    async with Bus(settings, "bench") as bus, Storage(settings) as storage:
        for i in range(jobs + 1):  # job 0 warms the path (connections, caches)
            job_id = f"bench-{int(time.time())}-{i}"
            t0 = time.perf_counter()
            wall0 = time.time()
            await submit(bus, JobRequest(job_id=job_id, **params))
            seen = {}
            async for e in follow(bus, job_id):
                last = e
                seen.setdefault(e.type.value, e.time.timestamp())
            t1 = time.perf_counter()
            assert last.type == EventType.SUCCEEDED, last
            # the runner stores its result JSON alongside the hand-off, so the job can finish first
            for _ in range(50):
                try:
                    res = SegmentResult.model_validate_json(await storage.get_bytes(segment_result_key(job_id, 0)))
                    break
                except ObjectNotFound:
                    await asyncio.sleep(0.02)
            else:
                raise AssertionError(f"{job_id}: no segment result stored")
            if i:
                e2e.append(t1 - t0)
                compute.append(res.elapsed_s)
                prev = wall0
                for name in STAGES:
                    marks.setdefault(name, []).append(1000 * (seen[name] - prev))
                    prev = seen[name]
    return e2e, compute


def run_direct(jobs: int, params: dict) -> list[float]:
    from gpu_runner.pipelines.base import GenerateParams, LoadContext
    from gpu_runner.registry import load_model

    pipe = load_model("tiny-wan", Path("models"), LoadContext())
    pipe.warmup()
    gp = GenerateParams(prompt=params["prompt"], width=params["width"], height=params["height"],
                        num_frames=params["num_frames"], steps=params["steps"], guidance_scale=1.0, seed=1)
    out = []
    for _ in range(jobs):
        t0 = time.perf_counter()
        pipe.generate(gp)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=20)
    args = ap.parse_args()
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from runtime.logging import configure_logging
    from tests.stack import BENCH_QUOTAS, running_pipeline

    configure_logging("WARNING")
    params = {"prompt": "overhead probe", "width": 64, "height": 64, "num_frames": 9, "steps": 2}
    with running_pipeline(Path(tempfile.mkdtemp(prefix="videogen-bench-")), functions_env=BENCH_QUOTAS) as settings:
        marks: dict[str, list[float]] = {}
        e2e, compute = asyncio.run(run_pipeline(settings, args.jobs, params, marks))
    direct = run_direct(args.jobs, params)
    overhead_ms = [1000 * (a - b) for a, b in zip(e2e, compute, strict=True)]
    print(f"jobs: {args.jobs} x tiny-wan {params['width']}x{params['height']}x{params['num_frames']}, "
          f"{params['steps']} steps (1 runner rank, CPU)")
    print(f"{'':28}{'p50':>10}{'p99':>10}")
    print(f"{'end-to-end (ms)':28}{1000 * pct(e2e, 50):>10.1f}{1000 * pct(e2e, 99):>10.1f}")
    print(f"{'runner compute (ms)':28}{1000 * pct(compute, 50):>10.1f}{1000 * pct(compute, 99):>10.1f}")
    print(f"{'direct in-process (ms)':28}{1000 * pct(direct, 50):>10.1f}{1000 * pct(direct, 99):>10.1f}")
    print(f"{'overhead e2e-compute (ms)':28}{pct(overhead_ms, 50):>10.1f}{pct(overhead_ms, 99):>10.1f}")
    print(f"ratio end-to-end / direct (p50): {pct(e2e, 50) / pct(direct, 50):.2f}x; "
          f"overhead p50 {pct(overhead_ms, 50):.1f} ms (target <= 50 ms): "
          f"{'OK' if pct(overhead_ms, 50) <= 50 else 'ABOVE TARGET'}")
    print(f"mean overhead {statistics.mean(overhead_ms):.1f} ms")
    print("p50 time from the previous mark to each event (event timestamps; started->segment_completed "
          "includes compute):")
    for name in STAGES:
        print(f"  {name:24} {pct(marks[name], 50):8.1f} ms")


if __name__ == "__main__":
    main()
