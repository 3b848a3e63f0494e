"""A t2v submission (accepted and preprocessed in one status write) whose request.json cannot be stored
(S3 down) is carried on by its redelivery: never left queued without its request, never dead-lettered
as a duplicate of itself (the S3-outage fault test found that)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from functions.preprocess.handler import handle_submit
from runtime.testing.fakes import FakeDelivery, fake_ports
from schemas.errors import ErrorCode, Retryable
from schemas.messages import EventType, JobState, PlanRequest
from schemas.names import SUBJECT_WORK_PLAN, request_key
from tests.unit.handler_fakes import bus_of, events, status

PAYLOAD = json.dumps({"job_id": "t2v-1", "prompt": "p", "width": 64, "height": 64, "num_frames": 9,
                      "steps": 2}).encode()


async def test_one_status_write_then_both_events_then_the_hand_off() -> None:
    ports = fake_ports()
    await handle_submit(PAYLOAD, FakeDelivery(), ports)
    st = await status(ports, "t2v-1")
    assert st is not None and st.state == JobState.QUEUED and st.model == "tiny-wan"
    assert [e.type for e in events(ports, "t2v-1")] == [EventType.ACCEPTED, EventType.PREPROCESSED]
    assert await ports.storage.get_bytes(request_key("t2v-1")) == PAYLOAD
    assert [r.job.job_id for r in bus_of(ports).payloads(SUBJECT_WORK_PLAN, PlanRequest)] == ["t2v-1"]


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
    assert events(ports, "t2v-1") == []
    ports.storage.put_bytes = real_put  # type: ignore[method-assign]
    await handle_submit(PAYLOAD, FakeDelivery(num_delivered=2), ports)  # a dead letter would raise here
    st = await status(ports, "t2v-1")
    assert st is not None and st.state == JobState.QUEUED
    assert [e.type for e in events(ports, "t2v-1")] == [EventType.ACCEPTED, EventType.PREPROCESSED]
    assert len(bus_of(ports).payloads(SUBJECT_WORK_PLAN, PlanRequest)) == 1


async def test_events_lost_after_the_status_write_are_published_by_the_redelivery() -> None:
    ports = fake_ports()
    bus = bus_of(ports)
    bus.fail_publish.add("videogen.events.>")  # the status write lands, its events do not
    with pytest.raises(Retryable):
        await handle_submit(PAYLOAD, FakeDelivery(), ports)
    st = await status(ports, "t2v-1")
    assert st is not None and st.state == JobState.QUEUED and events(ports, "t2v-1") == []
    bus.fail_publish.clear()
    await handle_submit(PAYLOAD, FakeDelivery(num_delivered=2), ports)  # claim: the hand-off is resumed
    assert [e.type for e in events(ports, "t2v-1")] == [EventType.ACCEPTED, EventType.PREPROCESSED]
    await handle_submit(PAYLOAD, FakeDelivery(num_delivered=3), ports)  # once more: nothing twice
    assert [e.type for e in events(ports, "t2v-1")] == [EventType.ACCEPTED, EventType.PREPROCESSED]
    assert len(bus.payloads(SUBJECT_WORK_PLAN, PlanRequest)) == 1
