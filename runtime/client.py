"""Client side: submit a job, follow its events, read its status (what `videogen submit` uses).

Plain nats-py is all a client needs; this module is a convenience over it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from nats.js import api as js_api

from runtime.bus import Bus
from runtime.jobs import StatusStore
from schemas.messages import TERMINAL_EVENTS, CancelRequest, JobEvent, JobRequest, JobStatus
from schemas.names import SUBJECT_CANCEL, SUBJECT_SUBMIT, events_subject


async def submit(bus: Bus, req: JobRequest) -> int:
    """Publish a JobRequest; ``Nats-Msg-Id = job_id`` makes resubmission idempotent. Returns the stream seq."""
    ack = await bus.publish(SUBJECT_SUBMIT, req.model_dump_json(exclude_none=True).encode(), msg_id=req.job_id)
    return int(ack.seq)


async def cancel(bus: Bus, job_id: str, reason: str = "") -> None:
    await bus.publish(SUBJECT_CANCEL, CancelRequest(job_id=job_id, reason=reason))


async def follow(bus: Bus, job_id: str, *, until_terminal: bool = True,
                 idle_timeout_s: float | None = None) -> AsyncIterator[JobEvent]:
    """Every event of the job from the beginning (ordered, ephemeral consumer), then live."""
    queue: asyncio.Queue[JobEvent] = asyncio.Queue()

    async def on_msg(msg: object) -> None:
        await queue.put(JobEvent.model_validate_json(msg.data))  # type: ignore[attr-defined]

    sub = await bus.js.subscribe(
        events_subject(job_id), cb=on_msg, ordered_consumer=True,
        config=js_api.ConsumerConfig(deliver_policy=js_api.DeliverPolicy.ALL),
    )
    try:
        while True:
            event = await asyncio.wait_for(queue.get(), timeout=idle_timeout_s)
            yield event
            if until_terminal and event.type in TERMINAL_EVENTS:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def status(bus: Bus, job_id: str) -> JobStatus | None:
    st, _ = await StatusStore(bus).get(job_id)
    return st
