"""Runner duty cycle: how much of the wall time the model is computing with a queue of jobs.

    .venv/bin/python -m bench.runner [--jobs 20]

Starts its own servers, the CPU functions and one tiny-wan runner, submits all jobs at once,
and measures duty cycle = sum of per-segment compute time (the runner's own measurement) /
wall time from the first segment start to the last segment completion. Encode and upload of
segment k run in rank 0's I/O process while segment k+1 is denoised, so the goal is >= 95%.
GPU figures (s/step, caches): bench/runner_gpu.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path


async def run(settings, jobs: int) -> tuple[float, float, int]:
    from runtime.bus import Bus
    from runtime.client import follow, submit
    from runtime.storage import Storage
    from schemas.messages import EventType, JobRequest, SegmentResult
    from schemas.names import segment_result_key

    prefix = f"duty-{int(time.time())}"
    reqs = [JobRequest(job_id=f"{prefix}-{i}", prompt="duty", width=64, height=64, num_frames=17, steps=4)
            for i in range(jobs)]
    async with Bus(settings, "bench") as bus, Storage(settings) as storage:
        for r in reqs:
            await submit(bus, r)
        started: list[float] = []
        done: list[float] = []
        for r in reqs:
            async for e in follow(bus, r.job_id):
                if e.type == EventType.STARTED:
                    started.append(e.time.timestamp())
                if e.type == EventType.SEGMENT_COMPLETED:
                    done.append(e.time.timestamp())
            assert e.type == EventType.SUCCEEDED, e
        compute = 0.0
        for r in reqs:
            res = SegmentResult.model_validate_json(await storage.get_bytes(segment_result_key(r.job_id, 0)))
            compute += res.elapsed_s
    first_start = min(started)
    # the first segment's own compute began just before its job.started event was recorded
    return compute, max(done) - first_start, len(reqs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=20)
    args = ap.parse_args()
    from runtime.logging import configure_logging
    from tests.stack import running_pipeline

    configure_logging("WARNING")
    data = Path(tempfile.mkdtemp(prefix="videogen-bench-"))
    with running_pipeline(data, runner_env={"OMP_NUM_THREADS": str(os.cpu_count() or 1)}) as settings:
        compute, wall, n = asyncio.run(run(settings, args.jobs))
    print(f"{n} queued tiny-wan jobs (64x64x17, 4 steps), 1 runner rank on CPU")
    print(f"compute (sum of segment times): {compute:.2f} s")
    print(f"wall (first start -> last segment done): {wall:.2f} s")
    print(f"duty cycle: {100 * compute / wall:.1f}% (goal >= 95%)")


if __name__ == "__main__":
    main()
