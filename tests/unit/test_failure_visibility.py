"""Retried failures are visible (waiting_reason with the next attempt) and a door failure that
never recovered ends in job.rejected (issue 16 item 4). Handler fakes: no broker."""

from __future__ import annotations

from functions.preprocess.errors import InputUnavailable
from runtime.failures import failure_hooks, retry_hook
from runtime.testing.fakes import FakeDelivery, fake_ports
from schemas.errors import ErrorCode, Retryable
from schemas.messages import EventType, JobEvent, JobState, JobStatus, StartedData, utcnow
from schemas.names import events_subject
from tests.unit.handler_fakes import status


async def test_retry_sets_the_reason_and_the_next_attempt_then_clears_when_the_job_moves_on() -> None:
    ports = fake_ports()
    job_id = "vis-1"
    now = utcnow()
    await ports.tracker.status.update(job_id, lambda cur: JobStatus(job_id=job_id, state=JobState.PREPROCESSING,
                                                                    created_at=now, updated_at=now))
    payload = f'{{"job_id": "{job_id}"}}'.encode()
    hook = retry_hook(ports.tracker, "preprocess")
    err = InputUnavailable("image http://x/y.png: connection refused")
    await hook(payload, err, FakeDelivery(num_delivered=2, max_deliver=5), 10.0)  # type: ignore[arg-type]
    st = await status(ports, job_id)
    assert st is not None and st.waiting_reason is not None
    assert "connection refused" in st.waiting_reason and "attempt 2 of 5" in st.waiting_reason
    assert "next attempt at" in st.waiting_reason and "input_unreadable" in st.waiting_reason
    # the job moves on: the reason goes
    await ports.tracker.record(JobEvent.build(job_id, EventType.STARTED, StartedData(segment=0, runner="r")))
    st = await status(ports, job_id)
    assert st is not None and st.state == JobState.RUNNING and st.waiting_reason is None


async def test_exhausted_door_failure_is_a_rejection_other_exhaustion_a_retryable_failure() -> None:
    ports = fake_ports()
    _, on_exhausted = failure_hooks(ports.tracker, "preprocess", rejects=True)
    d = FakeDelivery(num_delivered=5, max_deliver=5)
    assert await on_exhausted(b'{"job_id": "vis-2"}', InputUnavailable("still refused"), d)  # type: ignore[arg-type]
    ev = ports.bus.payloads(events_subject("vis-2"), JobEvent)[-1]  # type: ignore[attr-defined]
    assert ev.type == EventType.REJECTED and ev.data.code == ErrorCode.INPUT_UNREADABLE.value
    assert "gave up after 5 attempts" in ev.data.message
    assert await on_exhausted(b'{"job_id": "vis-3"}', Retryable("bus down", code=ErrorCode.BUS_ERROR), d)  # type: ignore[arg-type]
    ev = ports.bus.payloads(events_subject("vis-3"), JobEvent)[-1]  # type: ignore[attr-defined]
    assert ev.type == EventType.FAILED and ev.data.code == "max_deliveries" and ev.data.retryable
