"""The consumer loop measures how long a message waited in its stream before a handler took it
(``videogen_stage_queue_wait_seconds``) and logs a first delivery that waited too long."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from runtime import consumer
from runtime.bus import Bus
from runtime.consumer import ConsumerLoop, Delivery
from runtime.work import Puller
from schemas.names import STREAM_SEGMENTS, ConsumerSpec, segments_subject

pytestmark = [pytest.mark.integration]


def _count(stage: str) -> float:
    return REGISTRY.get_sample_value("videogen_stage_queue_wait_seconds_count", {"stage": stage}) or 0.0


def _sum(stage: str) -> float:
    return REGISTRY.get_sample_value("videogen_stage_queue_wait_seconds_sum", {"stage": stage}) or 0.0


async def test_queue_wait_is_measured_and_a_slow_first_delivery_logged(bus: Bus,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    stage = "qwait-test"
    spec = ConsumerSpec(STREAM_SEGMENTS, stage, segments_subject("qwaittest"), ack_wait_s=30, max_deliver=3)
    await bus.ensure_consumer(spec)
    monkeypatch.setattr(consumer, "SLOW_DELIVERY_S", 0.4)
    await bus.publish(segments_subject("qwaittest"), b'{"job_id": "qwait-1"}')
    await asyncio.sleep(0.6)  # waits in the stream before any worker pulls
    seen: list[int] = []

    async def handler(payload: bytes, d: Delivery) -> None:
        seen.append(d.num_delivered)
        loop.stop()

    loop = ConsumerLoop(bus, spec, handler, stage=stage, fetch_timeout_s=1.0)
    with capture_logs() as logs:
        async with asyncio.timeout(20):
            await loop.run()
    assert seen == [1]
    assert _count(stage) == 1 and 0.6 <= _sum(stage) < 10
    slow = [e for e in logs if e["event"] == "slow_delivery"]
    assert len(slow) == 1 and slow[0]["wait_ms"] >= 600  # (job_id, stage come from the bound context)
    await bus.js.delete_consumer(STREAM_SEGMENTS, stage)


async def test_no_delivery_stall_with_free_slots(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage with several free slots takes a message the moment it is stored.

    Regression: pulling ``batch=free`` made nats-py's ``_fetch_n`` hold a message that arrived during
    its lingering pull until the batch filled or the pull expired -- up to the whole fetch window
    per hop (reproduced: 14 of 150 messages delayed by 50-85 ms with 0.2 s windows; multi-second
    with the default 5 s). The loop must pull one message at a time and take each at once."""
    stage = "nostall-test"
    spec = ConsumerSpec(STREAM_SEGMENTS, stage, segments_subject("nostalltest"), ack_wait_s=30, max_deliver=3)
    await bus.ensure_consumer(spec)
    batches: list[int] = []
    real_fetch = Puller.fetch

    async def spy(self: Puller, batch: int = 1, timeout_s: float = 5.0) -> list:
        batches.append(batch)
        return await real_fetch(self, batch, timeout_s)

    monkeypatch.setattr(Puller, "fetch", spy)
    waits: list[float] = []
    n = 30

    async def handler(payload: bytes, d: Delivery) -> None:
        waits.append(asyncio.get_running_loop().time() - float(payload))
        if len(waits) >= n:
            loop.stop()

    loop = ConsumerLoop(bus, spec, handler, stage=stage, fetch_timeout_s=1.0, concurrency=4)
    task = asyncio.create_task(loop.run())
    try:
        await asyncio.sleep(0.3)
        for i in range(n):  # arrivals spread over the pull windows
            await asyncio.sleep(0.021 + 0.029 * (i % 5))
            await bus.publish(segments_subject("nostalltest"), str(asyncio.get_running_loop().time()).encode())
        async with asyncio.timeout(30):
            await task
    finally:
        loop.stop()
        await bus.js.delete_consumer(STREAM_SEGMENTS, stage)
    assert len(waits) == n
    assert batches and set(batches) == {1}, f"batch pulls {sorted(set(batches))}"
    # a stalled hop waits for the rest of the 1 s pull window; a prompt one takes milliseconds
    assert max(waits) < 0.5, sorted(round(w * 1000) for w in waits)[-5:]
