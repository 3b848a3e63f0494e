"""planner handler against in-memory fakes: plan + segment 0, idempotent redelivery, the
cancel guard before and after its writes, and re-planning after an out-of-memory."""

from __future__ import annotations

import pytest

from functions.planner.handler import handle_plan
from functions.planner.segments import make_plan
from runtime.plans import read_plan, store_plan
from runtime.testing.fakes import FakeDelivery, fake_ports
from schemas.messages import EventType, JobEvent, JobState, PlanRequest, ReplanHint, SegmentJob
from schemas.names import job_prefix, plan_key, request_key, segment_msg_id, segments_subject
from tests.unit.handler_fakes import MODEL, bus_of, cancel, job, start, status, storage_of

SEGMENTS = segments_subject(MODEL)


async def test_plan_stores_the_plan_and_publishes_segment_zero_once() -> None:
    ports = fake_ports()
    j = job(num_frames=9)
    await start(ports, j.job_id, event=EventType.PREPROCESSED)
    payload = PlanRequest(job=j).model_dump_json().encode()
    await handle_plan(payload, FakeDelivery(), ports)
    await handle_plan(payload, FakeDelivery(num_delivered=2), ports)  # a redelivery changes nothing

    plan = await read_plan(ports.storage, j.job_id)
    assert plan.info.revision == 0 and plan.info.segments == len(plan.windows) == 1
    msgs = bus_of(ports).messages(SEGMENTS)
    assert len(msgs) == 1 and msgs[0].headers["Nats-Msg-Id"] == segment_msg_id(j.job_id, 0)
    seg = SegmentJob.model_validate_json(msgs[0].data)
    assert (seg.index, seg.count, seg.frames, seg.condition) == (0, 1, 9, None)
    st = await status(ports, j.job_id)
    assert st is not None and st.segments_total == 1 and st.plan == plan.info and st.state == JobState.QUEUED


async def test_plan_of_a_cancelled_job_publishes_nothing_and_cleans_up() -> None:
    ports = fake_ports()
    j = job()
    await start(ports, j.job_id, event=EventType.PREPROCESSED)
    await ports.storage.put_bytes(request_key(j.job_id), b"{}")
    await ports.storage.put_bytes(job_prefix(j.job_id) + "frames/0.png", b"frame")  # preprocess wrote late
    await cancel(ports, j.job_id)

    await handle_plan(PlanRequest(job=j).model_dump_json().encode(), FakeDelivery(), ports)
    assert bus_of(ports).messages(SEGMENTS) == []
    assert storage_of(ports).keys() == [request_key(j.job_id)]


async def test_cancel_landing_while_planning_deletes_the_queued_segment_and_the_plan() -> None:
    ports = fake_ports()
    j = job()
    await start(ports, j.job_id, event=EventType.PREPROCESSED)

    async def cancel_after_segment(msg) -> None:  # the cancel lands between the writes and the re-check
        if msg.subject == SEGMENTS:
            await cancel(ports, j.job_id)

    bus_of(ports).after_publish.append(cancel_after_segment)
    await handle_plan(PlanRequest(job=j).model_dump_json().encode(), FakeDelivery(), ports)
    assert bus_of(ports).messages(SEGMENTS) == []  # published, then deleted by the guard
    stored = storage_of(ports).keys()  # FakeStorage.keys(): a sorted list, not a dict view
    assert plan_key(j.job_id) not in stored
    st = await status(ports, j.job_id)
    assert st is not None and st.state == JobState.CANCELLED


async def _planned_two_segments(ports, job_id: str = "job-r"):
    j = job(job_id, num_frames=81, max_segment_frames=45)
    await start(ports, j.job_id)
    await handle_plan(PlanRequest(job=j).model_dump_json().encode(), FakeDelivery(), ports)
    plan = await read_plan(ports.storage, j.job_id)
    assert len(plan.windows) >= 2
    return j, plan


async def test_replan_raises_the_revision_and_replaces_the_segment_message() -> None:
    ports = fake_ports()
    j, plan = await _planned_two_segments(ports)
    old = bus_of(ports).messages(SEGMENTS)[0]
    w = plan.windows[0]
    hint = ReplanHint(index=0, plan_revision=0, failed_frames=w.frames, max_window_frames=w.frames - 8,
                      reason="oom", runner="r1", segment_seq=old.seq)
    payload = PlanRequest(job=j, replan=hint).model_dump_json().encode()
    await handle_plan(payload, FakeDelivery(), ports)
    await handle_plan(payload, FakeDelivery(num_delivered=2), ports)  # redelivered: same hand-off

    new = await read_plan(ports.storage, j.job_id)
    assert new.info.revision == 1 and new.replanned_from == 0
    assert all(x.frames <= w.frames - 8 for x in new.windows)
    msgs = bus_of(ports).messages(SEGMENTS)
    assert [m.headers["Nats-Msg-Id"] for m in msgs] == [segment_msg_id(j.job_id, 0, 1)]  # old one deleted
    seg = SegmentJob.model_validate_json(msgs[0].data)
    assert seg.plan_revision == 1 and seg.frames == new.windows[0].frames
    st = await status(ports, j.job_id)
    assert st is not None and st.plan is not None and st.plan.revision == 1 and st.segments_total == len(new.windows)


async def test_replan_of_a_finished_job_only_drops_the_old_segment() -> None:
    ports = fake_ports()
    j, plan = await _planned_two_segments(ports, "job-f")
    old = bus_of(ports).messages(SEGMENTS)[0]
    await ports.tracker.record(JobEvent.build(j.job_id, EventType.FAILED, {"code": "model_error", "message": "boom"}))
    hint = ReplanHint(index=0, plan_revision=0, failed_frames=plan.windows[0].frames, max_window_frames=21,
                      reason="oom", runner="r1", segment_seq=old.seq)
    await handle_plan(PlanRequest(job=j, replan=hint).model_dump_json().encode(), FakeDelivery(), ports)
    assert bus_of(ports).messages(SEGMENTS) == []
    assert (await read_plan(ports.storage, j.job_id)).info.revision == 0


async def test_replan_hint_of_a_stale_revision_is_dropped() -> None:
    ports = fake_ports()
    j, plan = await _planned_two_segments(ports, "job-s")
    replanned = plan.model_copy(update={"info": plan.info.model_copy(update={"revision": 3})})
    await store_plan(ports.storage, replanned)
    hint = ReplanHint(index=0, plan_revision=1, failed_frames=plan.windows[0].frames, max_window_frames=21,
                      reason="oom", runner="r1", segment_seq=None)
    await handle_plan(PlanRequest(job=j, replan=hint).model_dump_json().encode(), FakeDelivery(), ports)
    assert len(bus_of(ports).messages(SEGMENTS)) == 1  # only the original segment 0
    assert (await read_plan(ports.storage, j.job_id)).info.revision == 3


async def test_plan_store_refuses_a_missing_or_older_plan() -> None:
    from schemas.errors import Permanent, Retryable

    ports = fake_ports()
    with pytest.raises(Permanent):
        await read_plan(ports.storage, "nope")
    plan = make_plan(PlanRequest(job=job("job-p")), None)
    await store_plan(ports.storage, plan)
    with pytest.raises(Retryable):
        await read_plan(ports.storage, "job-p", min_revision=1)
