"""Webhook delivery: event publish -> verified receipt latency, and dispatcher throughput.

    .venv/bin/python -m bench.events [--events 1000] [--jobs 20] [--rate 100]

Starts its own nats-server + weed mini and the webhook dispatcher as its own process
(``videogen functions webhook``, concurrency 32, attempt records on), and a local aiohttp receiver
that verifies every request with the ``standardwebhooks`` reference package. Events are
``job.progress`` JobEvents published to ``videogen.events.<job_id>`` for ``--jobs`` jobs whose
stored request subscribes to them. Latency = receiver's clock after verification - publisher's
clock just before the publish (same machine).

Phases: warm-up (one event per job: caches, connections); paced (``--rate`` events/s, 300 events:
latency without a backlog); burst (``--events`` published at once: throughput = events / (last
receipt - first publish), latency includes the queueing).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def run(settings, events: int, jobs: int, rate: float) -> int:
    from runtime.bus import Bus
    from runtime.client import webhook_attempts
    from runtime.storage import Storage
    from runtime.testing.webhook_receiver import WebhookReceiver
    from schemas.messages import EventType, JobEvent, JobRequest, ProgressData, WebhookSpec
    from schemas.names import events_subject, request_key

    secret = settings.webhook_secret.get_secret_value().split()[0]
    async with WebhookReceiver(secret) as rx, Bus(settings, "bench-events") as bus, Storage(settings) as s3:
        job_ids = [f"bench-evt-{i}" for i in range(jobs)]
        for job_id in job_ids:
            hook = WebhookSpec(url=rx.url, events=(EventType.PROGRESS,))
            req = JobRequest(job_id=job_id, prompt="bench", webhook=hook)
            await s3.put_bytes(request_key(job_id), req.model_dump_json().encode(), "application/json")
        sent: dict[str, float] = {}
        counter = iter(range(10**9))

        async def publish_one(job_id: str) -> None:
            n = next(counter)
            data = ProgressData(progress=0.0, segment=0, segments_total=1, step=n, steps=10**9)
            event = JobEvent.build(job_id, EventType.PROGRESS, data, 0, n)
            sent[event.id] = time.time()
            await bus.publish(events_subject(job_id), event, msg_id=event.id)

        async def phase(name: str, count: int, paced_rate: float | None) -> tuple[list[float], float]:
            start_n = len(rx.deliveries)
            ids: list[str] = []
            t0 = time.time()
            if paced_rate:
                for i in range(count):
                    before = set(sent)
                    await publish_one(job_ids[i % jobs])
                    ids.extend(set(sent) - before)
                    await asyncio.sleep(max(0.0, t0 + (i + 1) / paced_rate - time.time()))
            else:
                before = set(sent)
                await asyncio.gather(*(publish_one(job_ids[i % jobs]) for i in range(count)))
                ids = list(set(sent) - before)
            await rx.wait_for(start_n + count, timeout_s=300)
            got = rx.deliveries[start_n:]
            lat = [1000.0 * (d.received_at - sent[d.msg_id]) for d in got]
            span = max(d.received_at for d in got) - t0
            assert {d.msg_id for d in got} == set(ids), f"{name}: wrong set of deliveries"
            assert all(d.verified and d.verified_by == "standardwebhooks" for d in got), f"{name}: unverified"
            return lat, span

        await phase("warm-up", jobs, None)
        paced_lat, _ = await phase("paced", 300, rate)
        burst_lat, burst_span = await phase("burst", events, None)
        await asyncio.sleep(1.0)
        dup = [k for k, v in Counter(d.msg_id for d in rx.deliveries).items() if v > 1]
        recorded = sum([len(await webhook_attempts(bus, j)) for j in job_ids])

    print(f"webhook dispatcher: 1 process, concurrency 32, {jobs} jobs, receiver verifies with standardwebhooks")
    print(f"{'phase':<28} {'events':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'deliveries/s':>13}")
    print(f"{f'paced {rate:g}/s':<28} {len(paced_lat):>7} {pct(paced_lat, 50):>8.1f} {pct(paced_lat, 99):>8.1f} "
          f"{max(paced_lat):>8.1f} {'-':>13}")
    print(f"{'burst (all published at once)':<28} {len(burst_lat):>7} {pct(burst_lat, 50):>8.1f} "
          f"{pct(burst_lat, 99):>8.1f} {max(burst_lat):>8.1f} {len(burst_lat) / burst_span:>13.0f}")
    print(f"duplicates: {len(dup)}; attempt records: {recorded} for {len(rx.deliveries)} deliveries")
    return 0 if not dup and recorded == len(rx.deliveries) else 1


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.events")
    ap.add_argument("--events", type=int, default=1000, help="events in the burst phase")
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--rate", type=float, default=100.0, help="events/s in the paced phase")
    args = ap.parse_args()

    from runtime.logging import configure_logging
    from runtime.settings import load_settings
    from runtime.stack import provision, start_servers
    from tests.stack import start_functions, stop, wait_for_log

    configure_logging("WARNING", "console")
    with tempfile.TemporaryDirectory(prefix="videogen-bench-events-") as tmp:
        settings, nats, s3 = start_servers(load_settings(data_dir=Path(tmp), webhook_allow_hosts=["127.0.0.1"]),
                                           fixed_ports=False)
        fn = None
        try:
            asyncio.run(provision(settings, []))
            log = Path(tmp) / "webhook.log"
            fn = start_functions(settings, log, ["webhook"])  # default log level (INFO): one line per attempt
            wait_for_log(log, '"consumer_started"', 60, fn)
            deadline = time.monotonic() + 30
            while not _dispatcher_fetching(settings) and time.monotonic() < deadline:
                time.sleep(0.3)
            return asyncio.run(run(settings, args.events, args.jobs, args.rate))
        finally:
            if fn is not None:
                stop(fn)
            s3.stop()
            nats.stop()


def _dispatcher_fetching(settings) -> bool:
    """The dispatcher has a pull request waiting on its durable (it is up and fetching)."""
    async def check() -> bool:
        from runtime.bus import Bus
        from schemas.names import CONSUMER_WEBHOOK

        async with Bus(settings, "bench-probe") as bus:
            info = await bus.js.consumer_info(CONSUMER_WEBHOOK.stream, CONSUMER_WEBHOOK.durable)
            return (info.num_waiting or 0) > 0

    return asyncio.run(check())


if __name__ == "__main__":
    raise SystemExit(main())
