"""cancel handler against in-memory fakes: status + job.cancelled once, waiting segment messages
deleted (a delivered one left to its runner), partial objects deleted but request.json kept;
unknown and finished jobs untouched; a bad request is permanent."""

from __future__ import annotations

import pytest

from functions.cancel.handler import handle_cancel
from runtime.testing.fakes import FakeDelivery, fake_ports
from schemas.errors import Permanent
from schemas.messages import CancelRequest, EventType, JobEvent, JobState, SegmentJob
from schemas.names import (
    STREAM_SEGMENTS,
    output_key,
    request_key,
    runner_durable_for_subject,
    segment_key,
    segment_msg_id,
    segments_subject,
)
from tests.sample_events import sample_data
from tests.unit.handler_fakes import MODEL, bus_of, events, job, start, status, storage_of

SEGMENTS = segments_subject(MODEL)


def cancel_payload(job_id: str) -> bytes:
    return CancelRequest(job_id=job_id, reason="user").model_dump_json().encode()


async def test_cancel_running_job_drops_waiting_segments_and_partial_objects() -> None:
    ports = fake_ports()
    bus = bus_of(ports)
    await start(ports, "c-1")
    await ports.storage.put_bytes(request_key("c-1"), b"{}")
    await ports.storage.put_bytes(segment_key("c-1", 0), b"mp4")
    j = job("c-1", num_frames=9)
    taken = await bus.publish(SEGMENTS, SegmentJob(job=j, index=0, count=3, start_frame=0, frames=9, seed=1),
                              msg_id=segment_msg_id("c-1", 0))
    other = await bus.publish(SEGMENTS, SegmentJob(job=job("other"), index=0, count=1, start_frame=0, frames=9,
                                                   seed=1), msg_id=segment_msg_id("other", 0))
    await bus.publish(SEGMENTS, SegmentJob(job=j, index=1, count=3, start_frame=4, frames=9, seed=2),
                      msg_id=segment_msg_id("c-1", 1))
    bus.delivered[(STREAM_SEGMENTS, runner_durable_for_subject(SEGMENTS))] = taken.seq  # a runner holds seg 0

    await handle_cancel(cancel_payload("c-1"), FakeDelivery(), ports)
    await handle_cancel(cancel_payload("c-1"), FakeDelivery(num_delivered=2), ports)  # repeated: no 2nd event

    st = await status(ports, "c-1")
    assert st is not None and st.state == JobState.CANCELLED
    assert [e.type for e in events(ports, "c-1")].count(EventType.CANCELLED) == 1
    assert events(ports, "c-1")[-1].data.previous_state == JobState.RUNNING.value
    assert [m.seq for m in bus.messages(SEGMENTS)] == [taken.seq, other.seq]  # the waiting c-1 segment is gone
    assert storage_of(ports).keys() == [request_key("c-1")]


async def test_cancel_of_unknown_or_finished_job_changes_nothing() -> None:
    ports = fake_ports()
    await handle_cancel(cancel_payload("nobody"), FakeDelivery(), ports)
    assert await status(ports, "nobody") is None and events(ports, "nobody") == []

    await start(ports, "c-done")
    await ports.tracker.record(JobEvent.build("c-done", EventType.SUCCEEDED, sample_data(EventType.SUCCEEDED)))
    await ports.storage.put_bytes(output_key("c-done"), b"mp4")
    await handle_cancel(cancel_payload("c-done"), FakeDelivery(), ports)
    st = await status(ports, "c-done")
    assert st is not None and st.state == JobState.SUCCEEDED
    stored = storage_of(ports).keys()  # FakeStorage.keys(): a sorted list, not a dict view
    assert output_key("c-done") in stored
    assert EventType.CANCELLED not in [e.type for e in events(ports, "c-done")]


async def test_bad_cancel_request_is_permanent() -> None:
    with pytest.raises(Permanent):
        await handle_cancel(b'{"reason": "no job id"}', FakeDelivery(), fake_ports())
