"""A t2v submission: accepted, preprocessed and planned in one status write, then its events, then its
segment 0 queued for the runners (no planner hop). Whatever fails on the way (S3 down before the write,
events or the segment lost after it) is carried on by the redelivery: never left queued without its
request or plan, never dead-lettered as a duplicate of itself (the S3-outage fault test found that),
never queued twice."""

from __future__ import annotations

import json
from typing import Any

import pytest

from functions.planner.handler import plan_for
from functions.preprocess.handler import handle_submit
from runtime.testing.fakes import FakeDelivery, fake_ports
from schemas.errors import ErrorCode, Retryable
from schemas.messages import EventType, JobPlan, JobState, PlanRequest, SegmentJob
from schemas.names import SUBJECT_WORK_PLAN, plan_key, request_key, segments_subject
from tests.unit.handler_fakes import bus_of, cancel, events, status

PAYLOAD = json.dumps({"job_id": "t2v-1", "prompt": "p", "width": 64, "height": 64, "num_frames": 9,
                      "steps": 2}).encode()
SEGMENTS = segments_subject("tiny-wan")


def segments(ports: Any) -> list[SegmentJob]:
    return bus_of(ports).payloads(SEGMENTS, SegmentJob)


async def test_one_status_write_then_both_events_then_segment_zero() -> None:
    ports = fake_ports()
    await handle_submit(PAYLOAD, FakeDelivery(), ports)
    st = await status(ports, "t2v-1")
    assert st is not None and st.state == JobState.QUEUED and st.model == "tiny-wan"
    plan = JobPlan.model_validate_json(await ports.storage.get_bytes(plan_key("t2v-1")))
    assert st.plan == plan.info and st.segments_total == plan.info.segments == 1
    assert [e.type for e in events(ports, "t2v-1")] == [EventType.ACCEPTED, EventType.PREPROCESSED]
    assert await ports.storage.get_bytes(request_key("t2v-1")) == PAYLOAD
    # the plan the planner would make, and its segment 0 queued here: no planner hop
    assert plan == plan_for(ports, PlanRequest(job=plan.job))
    [seg] = segments(ports)
    assert (seg.job.job_id, seg.index, seg.count, seg.frames, seg.plan_revision) == ("t2v-1", 0, 1, 9, 0)
    assert bus_of(ports).payloads(SUBJECT_WORK_PLAN, PlanRequest) == []


async def test_request_not_stored_the_redelivery_carries_on() -> None:
    ports = fake_ports()
    real_put = ports.storage.put_bytes

    async def s3_down(key: str, *a: Any, **kw: Any) -> Any:
        raise Retryable(f"put videogen/{key}: connection refused", code=ErrorCode.STORAGE_ERROR)

    ports.storage.put_bytes = s3_down  # type: ignore[method-assign]
    with pytest.raises(Retryable):
        await handle_submit(PAYLOAD, FakeDelivery(), ports)
    st = await status(ports, "t2v-1")
    assert st is not None and st.state == JobState.PREPROCESSING  # claimed, not queued without its request
    assert events(ports, "t2v-1") == [] and segments(ports) == []
    ports.storage.put_bytes = real_put  # type: ignore[method-assign]
    await handle_submit(PAYLOAD, FakeDelivery(num_delivered=2), ports)  # a dead letter would raise here
    st = await status(ports, "t2v-1")
    assert st is not None and st.state == JobState.QUEUED and st.plan is not None
    assert [e.type for e in events(ports, "t2v-1")] == [EventType.ACCEPTED, EventType.PREPROCESSED]
    assert len(segments(ports)) == 1


async def test_events_lost_after_the_status_write_are_published_by_the_redelivery() -> None:
    ports = fake_ports()
    bus = bus_of(ports)
    bus.fail_publish.add("videogen.events.>")  # the status write lands, its events do not
    with pytest.raises(Retryable):
        await handle_submit(PAYLOAD, FakeDelivery(), ports)
    st = await status(ports, "t2v-1")
    assert st is not None and st.state == JobState.QUEUED and events(ports, "t2v-1") == []
    assert segments(ports) == []  # the events go out before the segment
    bus.fail_publish.clear()
    await handle_submit(PAYLOAD, FakeDelivery(num_delivered=2), ports)  # claim: the hand-off is resumed
    assert [e.type for e in events(ports, "t2v-1")] == [EventType.ACCEPTED, EventType.PREPROCESSED]
    await handle_submit(PAYLOAD, FakeDelivery(num_delivered=3), ports)  # once more: nothing twice
    assert [e.type for e in events(ports, "t2v-1")] == [EventType.ACCEPTED, EventType.PREPROCESSED]
    assert len(segments(ports)) == 1


async def test_segment_lost_after_the_events_is_queued_by_the_redelivery_once() -> None:
    ports = fake_ports()
    bus = bus_of(ports)
    bus.fail_publish.add(SEGMENTS)
    with pytest.raises(Retryable):
        await handle_submit(PAYLOAD, FakeDelivery(), ports)
    assert [e.type for e in events(ports, "t2v-1")] == [EventType.ACCEPTED, EventType.PREPROCESSED]
    assert segments(ports) == []
    bus.fail_publish.clear()
    await handle_submit(PAYLOAD, FakeDelivery(num_delivered=2), ports)
    await handle_submit(PAYLOAD, FakeDelivery(num_delivered=3), ports)  # de-duplicated by its message id
    assert len(segments(ports)) == 1
    assert [e.type for e in events(ports, "t2v-1")] == [EventType.ACCEPTED, EventType.PREPROCESSED]


async def test_a_first_delivery_seen_again_is_not_queued_again() -> None:
    ports = fake_ports()
    await handle_submit(PAYLOAD, FakeDelivery(), ports)
    await handle_submit(PAYLOAD, FakeDelivery(), ports)  # the same message, delivered once more as "first"
    assert len(segments(ports)) == 1


async def test_cancelled_while_admitted_is_not_queued() -> None:
    ports = fake_ports()
    real_record = ports.tracker.record

    async def cancel_first(*a: Any, **kw: Any) -> Any:  # a cancel lands just before the status write
        ports.tracker.record = real_record  # type: ignore[method-assign]
        await cancel(ports, "t2v-1")
        return await real_record(*a, **kw)

    ports.tracker.record = cancel_first  # type: ignore[method-assign]
    await handle_submit(PAYLOAD, FakeDelivery(), ports)
    st = await status(ports, "t2v-1")
    assert st is not None and st.state == JobState.CANCELLED
    assert segments(ports) == []
    assert not await ports.storage.exists(plan_key("t2v-1"))  # its objects cleaned up, request.json kept
    assert await ports.storage.get_bytes(request_key("t2v-1")) == PAYLOAD

