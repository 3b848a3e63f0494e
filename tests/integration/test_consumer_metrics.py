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
