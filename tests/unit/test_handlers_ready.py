"""Rendering overlaps preprocessing (fakes): segment k goes out once k-1 is done AND its window's inputs
are stored; whichever of the planner (a ready message) and the chain (k-1 done) sees both publishes it,
exactly once."""

from __future__ import annotations

from collections import Counter

from functions.chain.handler import handle_segment_done
from functions.planner.handler import handle_plan
from functions.planner.segments import inputs_needed
from runtime.plans import read_plan
from runtime.testing.fakes import FakeDelivery, fake_ports
from schemas.messages import PlanRequest, SegmentJob
from schemas.names import segment_result_key, segments_subject
from tests.unit.handler_fakes import MODEL, bus_of, job, start, status
from tests.unit.test_handlers_chain import result

SEGMENTS = segments_subject(MODEL)


def counting(ports) -> Counter[str]:
    """Every publish to the segments subject, duplicates included (one publisher per segment)."""
    seen: Counter[str] = Counter()
    publish = ports.bus.publish

    async def wrapped(subject, payload, *, msg_id=None, **kw):
        if subject == SEGMENTS:
            seen[msg_id] += 1
        return await publish(subject, payload, msg_id=msg_id, **kw)

    ports.bus.publish = wrapped
    return seen


def segs(ports) -> list[SegmentJob]:
    return [SegmentJob.model_validate_json(m.data) for m in bus_of(ports).messages(SEGMENTS)]


async def ready(ports, j, frames: int, delivery: FakeDelivery | None = None) -> None:
    await handle_plan(PlanRequest(job=j, ready_frames=frames).model_dump_json().encode(), delivery or FakeDelivery(),
                      ports)


async def done(ports, res) -> None:
    await ports.storage.put_bytes(segment_result_key(res.job_id, res.index), res.model_dump_json().encode())
    await handle_segment_done(res.model_dump_json().encode(), FakeDelivery(), ports)


async def test_segments_wait_for_their_windows_inputs() -> None:
    ports = fake_ports()
    j = job("job-ready", num_frames=81, max_segment_frames=25)
    await start(ports, j.job_id)
    published = counting(ports)

    await ready(ports, j, 10)  # plans the job; window 0 needs more frames
    plan = await read_plan(ports.storage, j.job_id)
    assert len(plan.windows) >= 4 and inputs_needed(plan, 0) == 25
    st = await status(ports, j.job_id)
    assert st is not None and st.preprocessed_frames == 10 and st.segments_total == len(plan.windows)
    assert segs(ports) == []

    await ready(ports, j, 32)  # window 0 ready: released by the planner
    await ready(ports, j, 20)  # late, out of order: never moves readiness back
    assert [s.index for s in segs(ports)] == [0]
    assert (await status(ports, j.job_id)).preprocessed_frames == 32

    # segment 0 done, window 1 needs frames up to 45: the chain leaves it to the planner
    await done(ports, result(ports, plan, 0))
    assert [s.index for s in segs(ports)] == [0]
    await ready(ports, j, 40)  # still short
    assert [s.index for s in segs(ports)] == [0]
    await ready(ports, j, 64)  # now the planner releases segment 1, conditioned on segment 0's tail
    got = segs(ports)
    assert [s.index for s in got] == [0, 1] and got[1].condition == result(ports, plan, 0).tail
    await ready(ports, j, 81)  # window 2 is ready too, but segment 1 is not done: nothing yet
    assert [s.index for s in segs(ports)] == [0, 1]

    # from here the inputs are ahead: the chain publishes as before
    for k in range(1, len(plan.windows) - 1):
        await done(ports, result(ports, plan, k))
    assert [s.index for s in segs(ports)] == list(range(len(plan.windows)))
    assert all(n == 1 for n in published.values()), published  # exactly one publish per segment


async def test_a_redelivered_ready_message_publishes_again() -> None:
    ports = fake_ports()
    j = job("job-ready-redeliver", num_frames=81, max_segment_frames=25)
    await start(ports, j.job_id)
    published = counting(ports)
    await ready(ports, j, 32)
    # the planner died after its status write: the redelivery publishes (same message id: de-duplicated)
    await ready(ports, j, 32, FakeDelivery(num_delivered=2))
    assert list(published.values()) == [2] and [s.index for s in segs(ports)] == [0]


async def test_serial_plan_request_is_unchanged() -> None:
    ports = fake_ports()
    j = job("job-serial", num_frames=81, max_segment_frames=25)
    await start(ports, j.job_id)
    await handle_plan(PlanRequest(job=j).model_dump_json().encode(), FakeDelivery(), ports)
    st = await status(ports, j.job_id)
    assert st is not None and st.preprocessed_frames is None and [s.index for s in segs(ports)] == [0]
    await done(ports, result(ports, await read_plan(ports.storage, j.job_id), 0))
    assert [s.index for s in segs(ports)] == [0, 1]
