"""What the HTTP gateway adds: request -> completed through ``POST /v1/videos`` vs a direct NATS
client on the same tiny job, and sustained create requests/s.

    .venv/bin/python -m bench.gateway [--jobs 20] [--seconds 10] [--concurrency 16]

Starts its own nats-server + weed mini, the CPU functions, a 1-rank tiny-wan runner and the
gateway (``videogen gateway``, its own process). Latency: jobs alternate between the two paths
(one at a time, so both see the same machine): *direct* = publish the JobRequest + follow
``videogen.events.<id>`` to ``job.succeeded`` (runtime.client, as the README's example does);
*gateway* = one ``POST /v1/videos`` with ``Prefer: wait=60`` answered ``completed`` (a kept-alive
HTTP connection, as an SDK client has). Added = gateway - direct, per pair. Throughput: the
functions and runner are stopped first (so only the gateway and the servers use the CPU), then
``--concurrency`` clients create jobs for ``--seconds``; the same number of direct publishes is
timed for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PARAMS = {"prompt": "bench", "model": "tiny-wan", "width": 64, "height": 64, "num_frames": 9, "steps": 2}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def latency(settings, base_url: str, key: str, jobs: int) -> tuple[list[float], list[float]]:
    import httpx2 as httpx

    from runtime.bus import Bus
    from runtime.client import follow, submit
    from schemas.messages import EventType, JobRequest

    direct: list[float] = []
    gateway: list[float] = []
    headers = {"Authorization": f"Bearer {key}", "Prefer": "wait=60"}
    async with Bus(settings, "bench-gateway") as bus, httpx.AsyncClient(base_url=base_url, timeout=90) as http:
        for i in range(jobs + 1):  # pair 0 warms both paths
            job_id = f"bench-gw-{int(time.time())}-{i}"
            t0 = time.perf_counter()
            await submit(bus, JobRequest(job_id=job_id, **PARAMS))
            async for event in follow(bus, job_id):
                last = event
            t_direct = time.perf_counter() - t0
            assert last.type == EventType.SUCCEEDED, last

            t0 = time.perf_counter()
            resp = await http.post("/v1/videos", json=PARAMS, headers=headers)
            t_gateway = time.perf_counter() - t0
            assert resp.status_code == 200 and resp.json()["status"] == "completed", resp.text
            if i:
                direct.append(1000 * t_direct)
                gateway.append(1000 * t_gateway)
    return direct, gateway


async def throughput(
    settings, base_url: str, key: str, seconds: float, concurrency: int
) -> tuple[int, float, list[float]]:
    import httpx2 as httpx

    body = {**PARAMS, "model": "tiny-wan"}
    headers = {"Authorization": f"Bearer {key}"}
    done = 0
    lat: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as http:
        await http.post("/v1/videos", json=body, headers=headers)  # warm
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                resp = await http.post("/v1/videos", json=body, headers=headers)
                assert resp.status_code == 200, resp.text
                lat.append(1000 * (time.perf_counter() - t0))
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return done, elapsed, lat


async def direct_publish_rate(settings, count: int, concurrency: int) -> float:
    from runtime.bus import Bus
    from runtime.client import submit
    from schemas.messages import JobRequest

    async with Bus(settings, "bench-publish") as bus:
        stamp = int(time.time())
        ids = iter(range(count))

        async def worker() -> None:
            for i in ids:
                await submit(bus, JobRequest(job_id=f"bench-pub-{stamp}-{i}", **PARAMS))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - t0)


async def list_cost(settings, base_url: str, key: str, n: int) -> tuple[float, float]:
    """GET /v1/videos?limit=20 (p50 ms) with ``n`` more job statuses in KV than before, and before."""
    import httpx2 as httpx

    from gateway.videos import new_video_id
    from runtime.bus import Bus
    from runtime.jobs import StatusStore
    from schemas.messages import JobState, JobStatus, utcnow

    async def p50() -> float:
        out = []
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
            for _ in range(10):
                t0 = time.perf_counter()
                resp = await http.get("/v1/videos", params={"limit": 20}, headers={"Authorization": f"Bearer {key}"})
                assert resp.status_code == 200, resp.text
                out.append(1000 * (time.perf_counter() - t0))
        return statistics.median(out)

    before = await p50()
    async with Bus(settings, "bench-list") as bus:
        store = StatusStore(bus)
        now = utcnow()
        sem = asyncio.Semaphore(64)

        async def put(i: int) -> None:
            vid = new_video_id("default" if i % 2 else "other")
            async with sem:
                await store.update(vid, lambda _: JobStatus(job_id=vid, state=JobState.QUEUED, created_at=now,
                                                            updated_at=now, model="tiny-wan"))

        await asyncio.gather(*(put(i) for i in range(n)))
    await asyncio.sleep(2.0)  # let the gateway's KV watch take in the new keys
    return before, await p50()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--list-keys", type=int, default=5000, help="statuses added to KV for the list measurement")
    args = ap.parse_args()

    from gateway.cli import create_key, start_gateway_process
    from runtime.settings import load_settings
    from runtime.stack import provision, start_servers
    from tests.stack import start_functions, start_runner, stop, wait_for_log

    data = Path(tempfile.mkdtemp(prefix="videogen-bench-gateway-"))
    settings, nats, s3 = start_servers(load_settings(data_dir=data), fixed_ports=False)
    procs = []
    try:
        asyncio.run(provision(settings, ["tiny-wan"]))
        fn = start_functions(settings, data / "functions.log")
        rn = start_runner(settings, data / "runner.log")
        procs += [fn, rn]
        env = {"VIDEOGEN_LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": "1"}
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        gw_settings = settings.model_copy(update={"gateway_port": _free()})
        gw, url = start_gateway_process(gw_settings, data / "gateway.log", env)
        procs.append(gw)
        wait_for_log(data / "functions.log", '"consumer_started"', 120, fn)
        wait_for_log(data / "runner.log", "runner_io_ready", 240, rn)
        key = asyncio.run(create_key(settings, "default", "bench"))

        direct, via = asyncio.run(latency(settings, url, key, args.jobs))
        added = [g - d for d, g in zip(direct, via, strict=True)]
        print(f"jobs: {args.jobs} pairs x tiny-wan 64x64x9, 2 steps (1 runner rank, CPU); "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"{'':36}{'p50':>8}{'p90':>9}")
        print(f"{'direct NATS client (ms)':36}{pct(direct, 50):8.1f}{pct(direct, 90):9.1f}")
        print(f"{'gateway POST, Prefer: wait (ms)':36}{pct(via, 50):8.1f}{pct(via, 90):9.1f}")
        print(f"{'added by the gateway, paired (ms)':36}{statistics.median(added):8.1f}{pct(added, 90):9.1f}")
        verdict = "OK" if statistics.median(added) <= 10 else "ABOVE GOAL"
        print(f"added p50 {statistics.median(added):.1f} ms (goal <= 10 ms): {verdict}")

        stop(rn)
        stop(fn)
        done, elapsed, lat = asyncio.run(throughput(settings, url, key, args.seconds, args.concurrency))
        rate = asyncio.run(direct_publish_rate(settings, done, args.concurrency))
        print(f"sustained creates: {done} in {elapsed:.1f} s = {done / elapsed:.0f} req/s "
              f"(concurrency {args.concurrency}; latency p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms); "
              f"direct NATS publishes of as many jobs: {rate:.0f}/s")
        before, after = asyncio.run(list_cost(settings, url, key, args.list_keys))
        print(f"GET /v1/videos?limit=20 p50: {before:.1f} ms with {args.jobs * 2 + 2} jobs in KV, "
              f"{after:.1f} ms with {args.list_keys} more (half of them this tenant's)")
    finally:
        for p in reversed(procs):
            stop(p)
        s3.stop()
        nats.stop()


def _free() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
