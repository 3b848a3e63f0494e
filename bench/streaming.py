"""Streamed vs serial, side by side in one run: a tiny-wan-animate job on a synthetic driving video long
enough for >= 4 segments.

    .venv/bin/python -m bench.streaming [--seconds 10] [--steps 4] [--size 64] [--repeats 1]

Starts its own servers and one tiny-wan-animate runner, then for each mode a CPU-functions process:
``streamed`` (the default: segments start as soon as their window's frames are preprocessed, and the
HLS playlist grows as segments finish) and ``serial`` (``VIDEOGEN_PREPROCESS_STREAMING=false``: the whole
video is preprocessed before the planner sees the job). Each functions process first runs a short
warm-up job (pose graphs, imports), then the measured job; modes alternate when ``--repeats`` > 1.

Prints per mode: end-to-end time (submit -> job.succeeded), preprocessing time (submit ->
preprocess done, from the functions log), time to the first playable frames (the first
``job.segment_completed`` that carries ``playable_frames``) and the streamed/serial ratio (goal <= 0.75).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _log_times(path: Path, event: str, job_id: str) -> list[float]:
    from datetime import datetime

    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"{event}"' in line and job_id in line:
            rec = json.loads(line)
            if rec.get("event") == event and rec.get("job_id") == job_id:
                out.append(datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp())
    return out


async def _job(settings, job_id: str, fields: dict) -> dict[str, float]:
    from runtime.bus import Bus
    from runtime.client import follow, submit
    from schemas.messages import EventType, JobRequest

    async with Bus(settings, "bench-streaming") as bus:
        t0 = time.time()
        await submit(bus, JobRequest(job_id=job_id, **fields))
        first_playable = first_started = None
        segments = 0
        async for e in follow(bus, job_id):
            if e.type == EventType.STARTED and first_started is None:
                first_started = e.time.timestamp()
            if e.type == EventType.SEGMENT_COMPLETED:
                segments += 1
                if first_playable is None and getattr(e.data, "playable_frames", None):
                    first_playable = e.time.timestamp()
        if e.type != EventType.SUCCEEDED:
            raise RuntimeError(f"{job_id} ended {e.type.value}: {e.data}")
        end = e.time.timestamp()
    return {"t0": t0, "end": end, "first_playable": first_playable or end, "first_started": first_started or end,
            "segments": segments}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="driving video length (and output length)")
    ap.add_argument("--fps", type=int, default=16)
    ap.add_argument("--size", type=int, default=64, help="output width = height")
    ap.add_argument("--video-width", type=int, default=640)
    ap.add_argument("--video-height", type=int, default=480)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--window", type=int, default=41, help="max_segment_frames")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--keep", type=Path, default=None, help="keep servers' data and logs here")
    ap.add_argument("--no-pin", action="store_true",
                    help="let the runner and the functions share every core (default: the runner gets core 0, "
                         "the CPU functions the others, as a GPU node and CPU nodes would not compete)")
    args = ap.parse_args()

    from functions.preprocess.media import encode_png
    from functions.preprocess.synthetic import draw_figure, figure_video
    from runtime.logging import configure_logging
    from runtime.settings import load_settings
    from runtime.stack import provision, start_servers
    from runtime.storage import Storage
    from tests.stack import start_functions, start_runner, stop, wait_for_log

    configure_logging("WARNING")
    frames = round(args.seconds * args.fps)
    frames -= (frames - 1) % 4  # a 4k+1 count keeps the plan exact
    model = "tiny-wan-animate"
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp:
        data = args.keep or Path(tmp)
        data.mkdir(parents=True, exist_ok=True)
        settings, nats, s3 = start_servers(load_settings(data_dir=data), fixed_ports=False)
        procs = []
        try:
            asyncio.run(provision(settings, [model]))
            cores = sorted(os.sched_getaffinity(0))
            pin = not args.no_pin and len(cores) >= 2
            if pin:  # children inherit the affinity of the process that starts them
                os.sched_setaffinity(0, {cores[0]})
            runner = start_runner(settings, data / "runner.log", model=model)
            if pin:
                os.sched_setaffinity(0, set(cores[1:]))
            procs.append(runner)
            wait_for_log(data / "runner.log", "runner_io_ready", 300, runner)

            async def upload() -> None:
                async with Storage(settings) as st:
                    video = figure_video(args.seconds, args.fps, args.video_width, args.video_height)
                    await st.put_bytes("uploads/drive.mp4", video, "video/mp4")
                    await st.put_bytes("uploads/person.png", encode_png(draw_figure(0.0, 320, 240)), "image/png")

            asyncio.run(upload())
            base = {"task": "animate", "model": model, "prompt": "dance", "seed": 3, "fps": args.fps,
                    "steps": args.steps, "width": args.size, "height": args.size,
                    "image": f"s3://{settings.bucket}/uploads/person.png",
                    "video": f"s3://{settings.bucket}/uploads/drive.mp4"}
            job = {**base, "num_frames": frames, "max_segment_frames": args.window}
            warm = {**base, "num_frames": 9, "steps": 1}
            print(f"cores: {len(cores)}; " + (f"runner pinned to core {cores[0]}, CPU functions to {cores[1:]}"
                                             if pin else "runner and functions share every core"))
            print(f"tiny-wan-animate {args.size}x{args.size}, {frames} frames at {args.fps} fps ({args.seconds:g} s), "
                  f"{args.steps} steps, windows <= {args.window}; driving video {args.video_width}x"
                  f"{args.video_height}")
            results: dict[str, list[dict[str, float]]] = {"streamed": [], "serial": []}
            for rep in range(args.repeats):
                order = ("streamed", "serial") if rep % 2 == 0 else ("serial", "streamed")
                for mode in order:
                    log = data / f"functions-{mode}-{rep}.log"
                    env = {"VIDEOGEN_PREPROCESS_STREAMING": "true" if mode == "streamed" else "false"}
                    fn = start_functions(settings, log, env_extra=env)
                    procs.append(fn)
                    try:
                        wait_for_log(log, '"consumer_started"', 120, fn)
                        asyncio.run(_job(settings, f"warm-{mode}-{rep}", warm))
                        jid = f"{mode}-{rep}"
                        r = asyncio.run(_job(settings, jid, job))
                        done = _log_times(log, "preprocess_done", jid)
                        r["preprocess_done"] = done[-1] if done else r["end"]
                        results[mode].append(r)
                    finally:
                        stop(fn)
                        procs.remove(fn)
        finally:
            for p in procs:
                stop(p)
            s3.stop()
            nats.stop()

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] - r["t0"] for r in results[mode])

    print(f"\n{'mode':<9} {'end-to-end':>11} {'preprocess':>11} {'1st segment':>12} {'1st playable':>13} "
          f"{'segments':>9}")
    for mode in ("serial", "streamed"):
        segs = results[mode][0]["segments"]
        print(f"{mode:<9} {med(mode, 'end'):10.1f}s {med(mode, 'preprocess_done'):10.1f}s "
              f"{med(mode, 'first_started'):11.1f}s {med(mode, 'first_playable'):12.1f}s {segs:9.0f}")
    ratio = med("streamed", "end") / med("serial", "end")
    print(f"\nend-to-end streamed / serial: {ratio:.2f} (goal <= 0.75)")
    for mode in ("serial", "streamed"):
        print(f"{mode}: first playable frames after {med(mode, 'first_playable'):.1f} s of {med(mode, 'end'):.1f} s "
              f"({100 * med(mode, 'first_playable') / med(mode, 'end'):.0f} %)")


if __name__ == "__main__":
    main()
