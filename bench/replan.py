"""What a re-plan after an out-of-memory costs, side by side with a job planned right from the start.

    .venv/bin/python -m bench.replan [--pairs 5] [--frames 97]

One tiny-wan runner with ``VIDEOGEN_RUNNER_MAX_WINDOW_FRAMES=25`` (a "smaller GPU"). For each
pair, in alternating order:

* ``fit``: a job with ``max_segment_frames=25``: planned into 25-frame windows, never refused;
* ``replan``: the same job with ``max_segment_frames=45``: planned into 41-45-frame windows; the
  runner refuses segment 0, the planner re-plans the whole job to <= 25-frame windows.

Both end up with the same plan (the re-plan of segment 0 covers all T frames under the same
cap), so the ratio of their end-to-end times (submit -> ``job.succeeded``) is the whole price of
the refusal: one extra pull of the segment and the runner -> planner -> runner hop. The hop itself
(runner's ``segment_replan_requested`` -> planner's ``job_replanned``, both logged with
timestamps) is printed too. A real CUDA OOM also loses the compute done before it ran out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

LIMIT = 25


async def one(bus, job_id: str, frames: int, cap: int) -> float:
    from runtime.client import follow, submit
    from schemas.messages import EventType, JobRequest

    t0 = time.perf_counter()
    await submit(bus, JobRequest(job_id=job_id, prompt="replan", width=32, height=32, num_frames=frames, steps=2,
                                 fps=16, max_segment_frames=cap))
    events = [e async for e in follow(bus, job_id)]
    assert events and events[-1].type == EventType.SUCCEEDED, events[-1:]
    return time.perf_counter() - t0


async def run(settings, pairs: int, frames: int) -> tuple[list[float], list[float]]:
    from runtime.bus import Bus

    fit: list[float] = []
    replanned: list[float] = []
    prefix = f"rp-{int(time.time())}"
    async with Bus(settings, "bench") as bus:
        # not counted: the first multi-segment jobs after start-up see multi-second stalls (noted in
        # bench/README.md) that have nothing to do with re-planning
        for kind, cap in (("fit", LIMIT), ("replan", 45)) * 2:
            await one(bus, f"{prefix}-warm-{kind}-{time.monotonic_ns()}", frames, cap)
        for i in range(pairs):
            order = [("fit", LIMIT), ("replan", 45)] if i % 2 == 0 else [("replan", 45), ("fit", LIMIT)]
            for kind, cap in order:
                dt = await one(bus, f"{prefix}-{kind}-{i}", frames, cap)
                (fit if kind == "fit" else replanned).append(dt)
    return fit, replanned


def _events(log: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in log.read_text(errors="replace").splitlines()
            if line.startswith("{") and f'"{name}"' in line]


def _ts(e: dict) -> float:
    return datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--frames", type=int, default=97)
    args = ap.parse_args()
    from runtime.logging import configure_logging
    from tests.stack import running_pipeline

    configure_logging("WARNING")
    data = Path(tempfile.mkdtemp(prefix="videogen-bench-"))
    env = {"OMP_NUM_THREADS": str(os.cpu_count() or 1), "VIDEOGEN_RUNNER_MAX_WINDOW_FRAMES": str(LIMIT)}
    with running_pipeline(data, runner_env=env) as settings:
        fit, replanned = asyncio.run(run(settings, args.pairs, args.frames))
    refused = {e["job_id"]: _ts(e) for e in _events(data / "runner.log", "segment_replan_requested")}
    planned = {e["job_id"]: _ts(e) for e in _events(data / "functions.log", "job_replanned")}
    hops = [1000 * (planned[j] - refused[j]) for j in refused if j in planned and "-warm-" not in j]
    f, r = statistics.median(fit), statistics.median(replanned)
    print(f"tiny-wan {args.frames} frames 32x32, 2 steps; runner limit {LIMIT} frames; {args.pairs} pairs, "
          "alternating order")
    print(f"planned to fit (25-frame windows):   median {f:.2f} s  {[round(x, 2) for x in fit]}")
    print(f"re-planned after refusal of seg 0:   median {r:.2f} s  {[round(x, 2) for x in replanned]}")
    print(f"ratio re-planned / planned to fit:   {r / f:.3f}")
    if hops:
        print(f"re-plan hop (runner refusal -> planner published the new segment): "
              f"median {statistics.median(hops):.1f} ms, max {max(hops):.1f} ms over {len(hops)} jobs")


if __name__ == "__main__":
    main()
