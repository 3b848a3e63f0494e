"""A read-only view of the GPU work queues (stream ``VIDEOGEN_SEGMENTS``): who waits where.

Each model has one work-queue subject ``videogen.segments.<model>`` drained, in stream-sequence
order, by one durable consumer shared by all runners of that model. A message still in the stream
is not acked yet; one with a sequence above the consumer's ``delivered.stream_seq`` has not even
been handed to a runner: it *waits*. So the jobs waiting ahead of a message are exactly the waiting
messages of the same subject with a lower sequence.

``WorkQueueView.refresh()`` keeps an incremental index ``seq -> (job_id, segment)`` of the waiting
messages: per refresh one STREAM.INFO (last sequence, messages per subject), one CONSUMER.INFO per
model with messages, and one direct get per message published since the previous refresh. Messages
that leave the queue (delivered to a runner, deleted by a cancel) are dropped by comparing with the
consumer's ``delivered`` sequence; when the count of waiting messages the index holds disagrees with
the consumer's ``num_pending`` (a deleted message, a purge), that subject is re-scanned from the
delivered sequence. Message bodies are never decoded: the planner's ``Nats-Msg-Id`` header
(``seg:<job_id>:<index>``) names the job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.bus import Bus
from runtime.logging import get_logger
from schemas.messages import SegmentJob
from schemas.names import (
    HEADER_MSG_ID,
    STREAM_SEGMENTS,
    SUBJECT_SEGMENTS_PREFIX,
    runner_durable_for_subject,
)

log = get_logger(component="queue")


@dataclass(frozen=True, slots=True)
class Waiting:
    seq: int
    job_id: str
    segment: int


@dataclass
class SubjectIndex:
    subject: str
    delivered_seq: int = 0  # consumer's highest delivered stream sequence
    scanned_seq: int = 0  # every waiting message with seq <= scanned_seq is in ``waiting``
    waiting: dict[int, Waiting] = field(default_factory=dict)

    def ordered(self) -> list[Waiting]:
        return [self.waiting[s] for s in sorted(self.waiting)]


def parse_msg_id(msg_id: str | None) -> tuple[str, int] | None:
    """``seg:<job_id>:<index>[:r<revision>]`` -> (job_id, index); None for anything else."""
    if not msg_id or not msg_id.startswith("seg:"):
        return None
    body = msg_id[4:]
    head, _, last = body.rpartition(":")
    if head and last[:1] == "r" and last[1:].isdigit():  # a re-planned segment (schemas.names.segment_msg_id)
        body = head
    job_id, _, index = body.rpartition(":")
    if not job_id or not index.isdigit():
        return None
    return job_id, int(index)


class WorkQueueView:
    def __init__(self, bus: Bus, stream: str = STREAM_SEGMENTS) -> None:
        self.bus = bus
        self.stream = stream
        self.subjects: dict[str, SubjectIndex] = {}

    async def refresh(self, only: str | None = None) -> dict[str, list[Waiting]]:
        """Bring the index up to date; returns subject -> waiting messages in queue order.

        ``only``: one ``videogen.segments.<model>`` subject (the others are left as they are).
        """
        last_seq, counts = await self.bus.subject_counts(self.stream, f"{SUBJECT_SEGMENTS_PREFIX}.>")
        for subject in list(self.subjects):
            if not counts.get(subject):
                del self.subjects[subject]  # queue empty
        out: dict[str, list[Waiting]] = {}
        for subject, count in counts.items():
            if not count or (only is not None and subject != only):
                continue
            idx = self.subjects.setdefault(subject, SubjectIndex(subject))
            await self._refresh_subject(idx, last_seq)
            out[subject] = idx.ordered()
        return out

    async def _refresh_subject(self, idx: SubjectIndex, last_seq: int) -> None:
        position = await self.bus.consumer_position(self.stream, runner_durable_for_subject(idx.subject))
        if position is None:
            idx.delivered_seq = 0  # no runner consumer yet: nothing delivered
            num_pending = None
        else:
            idx.delivered_seq, num_pending = position
        for seq in [s for s in idx.waiting if s <= idx.delivered_seq]:
            del idx.waiting[seq]
        start = max(idx.scanned_seq, idx.delivered_seq) + 1
        await self._scan(idx, start, last_seq)
        if num_pending is not None and len(idx.waiting) > num_pending:
            # messages left without being delivered (deleted by a cancel, purged): rebuild.
            # (num_pending is read after the stream info, so new publishes only make it larger.)
            log.debug("queue_rescan", subject=idx.subject, indexed=len(idx.waiting), pending=num_pending)
            idx.waiting.clear()
            await self._scan(idx, idx.delivered_seq + 1, last_seq)

    async def _scan(self, idx: SubjectIndex, start: int, last_seq: int) -> None:
        seq = start
        while seq <= last_seq:
            msg = await self.bus.next_message(self.stream, seq, idx.subject)
            if msg is None or not msg.seq or msg.seq > last_seq:
                break
            ident = parse_msg_id(msg.headers.get(HEADER_MSG_ID))
            if ident is None and msg.data:  # published without the planner's msg id: read the body
                try:
                    job = SegmentJob.model_validate_json(msg.data)
                    ident = (job.job.job_id, job.index)
                except ValueError:
                    ident = None
            if ident is not None:
                idx.waiting[msg.seq] = Waiting(msg.seq, ident[0], ident[1])
            seq = msg.seq + 1
        idx.scanned_seq = max(idx.scanned_seq, last_seq)  # every message <= last_seq was stored already

    async def waiting_for(self, job_id: str, subject: str | None = None) -> list[Waiting]:
        """Every waiting message of one job (in ``subject``, or any model's queue); refreshes first."""
        queues = await self.refresh(only=subject)
        return [w for ws in queues.values() for w in ws if w.job_id == job_id]
