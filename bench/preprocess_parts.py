"""A long animate job's preprocessing on 1 vs 2 preprocess worker *processes* (issue 14: parts of whole
32-frame chunks on ``videogen.work.preprocess_part``), side by side in one run.

    .venv/bin/python -m bench.preprocess_parts [--seconds 20] [--part-frames 64] [--threads 1] [--repeats 1]

Starts its own NATS + S3 servers; for each mode N in (1, 2) starts N functions processes running
``preprocess preprocess-part`` with ``VIDEOGEN_PREPROCESS_WORKERS=--threads`` each (so 1 vs 2 processes
compares cross-process scaling, not threads), runs a warm-up job long enough that every process does a part
(pose graphs, imports), then the measured job: submit -> the complete ``pose/index.json`` (the join) is
stored. Prints the time per mode, frames/s, the ratio, the sha256 check (both modes' stored objects are
identical) and the load average (the machine is shared: other work slows both modes alike only roughly).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


async def _run_job(settings, job_id: str, fields: dict) -> float:
    from runtime.bus import Bus
    from runtime.storage import ObjectNotFound, Storage
    from schemas.messages import JobRequest
    from schemas.names import SUBJECT_SUBMIT, keypoints_key

    req = JobRequest(job_id=job_id, **fields)
    async with Bus(settings, "bench-parts") as bus, Storage(settings) as st:
        t0 = time.perf_counter()
        await bus.publish(SUBJECT_SUBMIT, req.model_dump_json(exclude_none=True).encode(), msg_id=job_id)
        key = keypoints_key(job_id, "pose/index.json")
        while True:
            try:
                if b'"complete": true' in await st.get_bytes(key):
                    return time.perf_counter() - t0
            except ObjectNotFound:
                pass
            await asyncio.sleep(0.1)


async def _digest(settings, job_id: str) -> str:
    from runtime.storage import Storage
    from schemas.names import frames_key, keypoints_key

    h = hashlib.sha256()
    async with Storage(settings) as st:
        for prefix in (frames_key(job_id, ""), keypoints_key(job_id, "")):
            for key in sorted(await st.list_keys(prefix)):
                data = await st.get_bytes(key)
                if key.endswith(".json"):
                    data = data.replace(f"jobs/{job_id}/".encode(), b"jobs/JOB/")
                h.update(key.removeprefix(f"jobs/{job_id}/").encode() + hashlib.sha256(data).digest())
    return h.hexdigest()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0, help="driving clip length (16 fps output)")
    p.add_argument("--part-frames", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="pose/encode threads per process")
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()

    from functions.preprocess.media import encode_png
    from functions.preprocess.synthetic import draw_figure, figure_video
    from runtime.settings import load_settings
    from runtime.stack import provision, start_servers
    from runtime.storage import Storage
    from tests.stack import start_functions, stop, wait_for_log

    fps = 16
    frames = int(args.seconds * fps) // 4 * 4 + 1
    with tempfile.TemporaryDirectory(prefix="bench-parts-") as tmp:
        data = Path(tmp)
        settings, nats, s3 = start_servers(load_settings(data_dir=data), fixed_ports=False)
        try:
            asyncio.run(provision(settings))

            async def upload() -> None:
                async with Storage(settings) as st:
                    await st.put_bytes("uploads/parts-dance.mp4", figure_video(args.seconds, fps=30, width=854,
                                                                               height=480), "video/mp4")
                    await st.put_bytes("uploads/parts-person.png", encode_png(draw_figure(0.0, 320, 240)),
                                       "image/png")

            asyncio.run(upload())
            base = dict(task="animate", model="tiny-wan-animate", prompt="x", seed=1, fps=fps, steps=2, width=64,
                        height=64, image=f"s3://{settings.bucket}/uploads/parts-person.png",
                        video=f"s3://{settings.bucket}/uploads/parts-dance.mp4")
            env = {"VIDEOGEN_PREPROCESS_PART_FRAMES": str(args.part_frames),
                   "VIDEOGEN_PREPROCESS_WORKERS": str(args.threads)}
            results: dict[int, list[float]] = {1: [], 2: []}
            digests: dict[int, str] = {}
            for rep in range(args.repeats):
                for n in (1, 2):
                    procs = [start_functions(settings, data / f"fn-{n}-{rep}-{i}.log",
                                             ["preprocess", "preprocess-part"], env_extra=env) for i in range(n)]
                    try:
                        for i, proc in enumerate(procs):
                            wait_for_log(data / f"fn-{n}-{rep}-{i}.log", '"consumer_started"', 120, proc)
                        warm = {**base, "num_frames": 4 * args.part_frames + 1}
                        asyncio.run(_run_job(settings, f"warm-{n}-{rep}", warm))
                        load0 = os.getloadavg()
                        elapsed = asyncio.run(_run_job(settings, f"job-{n}-{rep}", {**base, "num_frames": frames}))
                        load1 = os.getloadavg()
                        results[n].append(elapsed)
                        digests[n] = asyncio.run(_digest(settings, f"job-{n}-{rep}"))
                        print(f"{n} process(es), repeat {rep}: {elapsed:.1f} s for {frames} frames "
                              f"({frames / elapsed:.1f} frames/s); load average before {load0[0]:.2f}, "
                              f"after {load1[0]:.2f}", flush=True)
                    finally:
                        for proc in procs:
                            stop(proc)
            best1, best2 = min(results[1]), min(results[2])
            print(f"best: 1 process {best1:.1f} s, 2 processes {best2:.1f} s, speed-up {best1 / best2:.2f}x; "
                  f"clip {args.seconds:.0f} s, {frames} frames in parts of {args.part_frames}; "
                  f"cores {os.cpu_count()}, load average now {os.getloadavg()[0]:.2f}")
            print(f"stored objects identical (sha256 over frames/ + keypoints/): {digests[1] == digests[2]}")
        finally:
            s3.stop()
            nats.stop()


if __name__ == "__main__":
    main()
