"""chain handler against in-memory fakes: segment k done -> k+1 (conditioned on k's tail) or
stitch; progress in frames; superseded results (the plan is re-read from the store each time),
finished and cancelled jobs."""

from __future__ import annotations

import pytest

from functions.chain.handler import handle_segment_done
from functions.planner.handler import handle_plan
from runtime.jobs import window_progress
from runtime.plans import read_plan
from runtime.testing.fakes import FakeDelivery, fake_ports
from schemas.errors import Permanent, Retryable
from schemas.messages import EventType, JobPlan, JobState, PlanRequest, SegmentJob, SegmentResult, StitchRequest
from schemas.names import (
    SUBJECT_WORK_STITCH,
    job_prefix,
    plan_key,
    request_key,
    segment_key,
    segment_result_key,
    segment_tail_key,
    segments_subject,
)
from tests.unit.handler_fakes import MODEL, bus_of, cancel, events, job, start, status, storage_of

SEGMENTS = segments_subject(MODEL)


def result(ports, plan: JobPlan, index: int, *, revision: int | None = None) -> SegmentResult:
    w, jid = plan.windows[index], plan.job.job_id
    return SegmentResult(
        job_id=jid, index=index, count=len(plan.windows), segment=ports.storage.ref(segment_key(jid, index)),
        tail=ports.storage.ref(segment_tail_key(jid, index)), frames=w.frames, overlap_frames=w.overlap_frames,
        width=32, height=32, fps=8, sha256="0" * 64, runner="r1", elapsed_s=1.0,
        plan_revision=plan.info.revision if revision is None else revision,
    )


async def planned(job_id: str = "job-c", *, num_frames: int = 81, max_segment_frames: int | None = 45):
    """A running job planned by the planner handler (plan.json in the store, segment 0 queued)."""
    ports = fake_ports()
    j = job(job_id, num_frames=num_frames, max_segment_frames=max_segment_frames)
    await start(ports, j.job_id)
    await handle_plan(PlanRequest(job=j).model_dump_json().encode(), FakeDelivery(), ports)
    return ports, await read_plan(ports.storage, j.job_id)


async def done(ports, res: SegmentResult) -> None:
    await ports.storage.put_bytes(segment_result_key(res.job_id, res.index), res.model_dump_json().encode())
    await handle_segment_done(res.model_dump_json().encode(), FakeDelivery(), ports)


async def test_segment_done_chains_the_next_segment_on_its_tail() -> None:
    ports, plan = await planned()
    res = result(ports, plan, 0)
    await done(ports, res)
    await done(ports, res)  # redelivered: the same segment message id, nothing new

    segs = [SegmentJob.model_validate_json(m.data) for m in bus_of(ports).messages(SEGMENTS)]
    assert [s.index for s in segs] == [0, 1]
    assert segs[1].condition == res.tail and segs[1].overlap_frames == plan.windows[1].overlap_frames
    st = await status(ports, plan.job.job_id)
    w = plan.windows[0]
    assert st is not None and st.state == JobState.RUNNING and st.segments_done == 1
    assert st.progress == window_progress(w.start_frame, w.frames, w.overlap_frames, plan.job.num_frames)
    assert [e.type for e in events(ports, plan.job.job_id)].count(EventType.SEGMENT_COMPLETED) == 1


async def test_last_segment_hands_every_result_to_stitch() -> None:
    ports, plan = await planned("job-last")
    results = [result(ports, plan, i) for i in range(len(plan.windows))]
    for res in results:
        await done(ports, res)
    reqs = bus_of(ports).payloads(SUBJECT_WORK_STITCH, StitchRequest)
    assert len(reqs) == 1 and reqs[0].segments == results and reqs[0].plan == plan.info
    st = await status(ports, plan.job.job_id)
    assert st is not None and st.state == JobState.STITCHING and st.progress == 98.0


async def test_a_stored_result_that_does_not_match_the_plan_is_retried() -> None:
    ports, plan = await planned("job-mismatch")
    first = result(ports, plan, 0).model_copy(update={"frames": plan.windows[0].frames - 4})
    await ports.storage.put_bytes(segment_result_key(first.job_id, 0), first.model_dump_json().encode())
    for i in range(1, len(plan.windows) - 1):
        await done(ports, result(ports, plan, i))
    with pytest.raises(Retryable):
        await done(ports, result(ports, plan, len(plan.windows) - 1))


async def test_result_of_a_superseded_revision_is_ignored() -> None:
    ports, plan = await planned("job-old")
    await ports.storage.put_bytes(plan_key(plan.job.job_id), plan.model_copy(update={
        "info": plan.info.model_copy(update={"revision": 1})}).model_dump_json().encode())
    await done(ports, result(ports, plan, 0, revision=0))
    assert len(bus_of(ports).messages(SEGMENTS)) == 1  # only the planner's segment 0
    st = await status(ports, plan.job.job_id)
    assert st is not None and st.segments_done == 0


async def test_cancelled_job_gets_no_next_segment_and_its_objects_go() -> None:
    ports, plan = await planned("job-x")
    jid = plan.job.job_id
    await ports.storage.put_bytes(request_key(jid), b"{}")
    await ports.storage.put_bytes(segment_key(jid, 0), b"mp4")
    await cancel(ports, jid)
    await done(ports, result(ports, plan, 0))
    assert len(bus_of(ports).messages(SEGMENTS)) == 1
    assert storage_of(ports).keys() == [request_key(jid)]
    assert EventType.SEGMENT_COMPLETED not in [e.type for e in events(ports, jid)]


async def test_cancel_landing_while_chaining_deletes_the_next_segment() -> None:
    ports, plan = await planned("job-race")
    jid = plan.job.job_id

    async def cancel_on_next(msg) -> None:
        if msg.subject == SEGMENTS and SegmentJob.model_validate_json(msg.data).index == 1:
            await cancel(ports, jid)

    bus_of(ports).after_publish.append(cancel_on_next)
    await done(ports, result(ports, plan, 0))
    assert [SegmentJob.model_validate_json(m.data).index for m in bus_of(ports).messages(SEGMENTS)] == [0]
    stored = storage_of(ports).keys()  # FakeStorage.keys(): a sorted list; FakeStorage is not iterable
    assert [k for k in stored if k.startswith(job_prefix(jid))] == []


async def test_missing_plan_of_a_live_job_fails_permanently() -> None:
    ports, plan = await planned("job-gone")
    await ports.storage.delete(plan_key(plan.job.job_id))
    with pytest.raises(Permanent):
        await done(ports, result(ports, plan, 0))
