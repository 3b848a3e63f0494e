"""The job lifecycle, in one place: events on ``videogen.events.<job_id>``, the latest JobStatus
in KV, the progress formula, and the guard every writer uses against a job that ended under it.

Status writes are compare-and-set on the KV revision: a stale writer re-reads and re-applies
its change, and a terminal state is never overwritten (no "succeeded" flipping back).

Every stage that writes on a job's behalf follows one protocol (``JobGuard``):

1. before working: ``guard.stopped(job_id, among=TERMINAL)`` -- a message for a job that already
   ended is skipped (acked); a cancelled job's leftovers are removed again on the way;
2. write (objects, the next message, the status);
3. after writing: ``guard.stopped(job_id, queued_seq=...)`` -- a cancel that landed meanwhile may
   have listed ``jobs/<id>/`` before this write existed, so the last writer deletes: the message it
   just queued and the job's partial objects (see functions/cancel/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from runtime.bus import Bus
from runtime.hls import close_playlist
from runtime.logging import get_logger
from runtime.storage import Storage
from schemas.messages import (
    ErrorInfo,
    EventType,
    FailedData,
    JobEvent,
    JobState,
    JobStatus,
    RejectedData,
    utcnow,
)
from schemas.names import STREAM_SEGMENTS, events_subject, job_prefix, public_job_id, request_key

log = get_logger(component="jobs")

# What each event does to the status (besides the fields passed explicitly).
_STATE_FOR_EVENT: dict[EventType, JobState] = {
    EventType.ACCEPTED: JobState.PREPROCESSING,
    EventType.REJECTED: JobState.FAILED,
    EventType.PREPROCESSED: JobState.QUEUED,
    EventType.STARTED: JobState.RUNNING,
    EventType.PROGRESS: JobState.RUNNING,
    EventType.SEGMENT_COMPLETED: JobState.RUNNING,
    EventType.SUCCEEDED: JobState.SUCCEEDED,
    EventType.FAILED: JobState.FAILED,
    EventType.CANCELLED: JobState.CANCELLED,
}

Mutator = Callable[[JobStatus | None], JobStatus | None]

# ---- progress ------------------------------------------------------------------------------
# Job progress runs 0..PROGRESS_RENDERED while segments render (in output frames covered, so a
# re-plan into more, shorter segments never moves it back); stitching takes it to 100.
PROGRESS_RENDERED = 98.0


def progress_pct(done: float, total: float) -> float:
    """``done`` of ``total`` (frames, or segments) as job progress in 0..PROGRESS_RENDERED."""
    return round(PROGRESS_RENDERED * min(1.0, done / max(total, 1)), 2)


def window_progress(start_frame: int, frames: int, overlap_frames: int, total_frames: int,
                    step: int = 1, steps: int = 1) -> float:
    """Job progress at denoising ``step`` of ``steps`` of the window ``[start_frame, start_frame+frames)``:
    the output frames covered, counting this window's new frames (past its overlap) pro rata.
    At ``step == steps`` (the default) it is the progress once the window is rendered."""
    new = frames - overlap_frames
    covered = start_frame + overlap_frames + new * min(step, steps) / max(steps, 1)
    return progress_pct(covered, total_frames)


class StaleRevision(Exception):
    """A compare-and-set status write lost: the key moved past the revision it was based on."""


class StatusStore:
    """CAS-guarded access to KV ``videogen-jobs``.

    It remembers the last status (and revision) this process read or wrote for the most recent
    jobs, so the next ``update`` of the same job can try its compare-and-set without reading first:
    a stage that writes a job two or three times in a row (preprocess: claim, accepted,
    preprocessed; the runner: progress, segment done, succeeded) saves a KV round trip per write.
    Nothing is trusted that KV did not confirm: a write based on a remembered value that another
    writer moved on fails its CAS and is re-read and re-applied, and a remembered value on which
    ``mutate`` decides to change nothing, or a remembered terminal state, is read again before that
    answer is returned.
    """

    def __init__(self, bus: Bus, *, remember: int = 1024) -> None:
        self.bus = bus
        self._remember = remember
        self._known: OrderedDict[str, tuple[JobStatus, int]] = OrderedDict()

    def _note(self, job_id: str, status: JobStatus | None, rev: int) -> None:
        if status is None or self._remember <= 0:
            self._known.pop(job_id, None)
            return
        self._known[job_id] = (status, rev)
        self._known.move_to_end(job_id)
        while len(self._known) > self._remember:
            self._known.popitem(last=False)

    async def get(self, job_id: str) -> tuple[JobStatus | None, int]:
        kv = await self.bus.kv()
        try:
            entry = await kv.get(job_id)
        except KeyNotFoundError:
            self._known.pop(job_id, None)
            return None, 0
        if entry.value is None or entry.operation is not None and entry.operation != "PUT" and not entry.value:
            self._known.pop(job_id, None)
            return None, entry.revision or 0
        status = JobStatus.model_validate_json(entry.value)
        self._note(job_id, status, entry.revision or 0)
        return status, entry.revision or 0

    async def update(self, job_id: str, mutate: Mutator, *, attempts: int = 20,
                     assume_new: bool = False) -> JobStatus | None:
        """Apply ``mutate`` with optimistic concurrency; returns the stored status (or None if unchanged).

        ``assume_new``: the first try is a create, without a read (a submission's claim of its job id:
        the job almost never exists); a status that does exist fails it and is read and re-applied."""
        remembered: tuple[JobStatus | None, int] | None = (None, 0) if assume_new else self._known.get(job_id)
        for _ in range(attempts):
            current: JobStatus | None
            if remembered is not None:  # first try only: a CAS on what this process last saw
                (current, rev), remembered, confirmed = remembered, None, False
            else:
                (current, rev), confirmed = await self.get(job_id), True
            if current is not None and current.state.terminal:
                if not confirmed:
                    continue  # final, but only as KV says so now (a deleted job's id may be submitted again)
                return current  # terminal states are final
            new = mutate(current)
            if new is None:
                if not confirmed:
                    continue  # "nothing to change" was decided on a remembered value: read it first
                return current
            try:
                await self.write(job_id, new, last=rev)
                return new
            except StaleRevision:
                continue  # someone wrote in between: re-read, re-apply
        log.error("status_update_gave_up", job_id=job_id)
        return None

    async def write(self, job_id: str, status: JobStatus, *, last: int) -> None:
        """Store ``status`` if the key is still at revision ``last`` (0: not there yet); else raise
        :class:`StaleRevision`. Prefer :meth:`update`, which re-reads and re-applies."""
        kv = await self.bus.kv()
        data = status.model_dump_json().encode()
        try:
            if last == 0:
                rev = await kv.create(job_id, data)
            else:
                rev = await kv.update(job_id, data, last=last)
        except KeyWrongLastSequenceError as e:
            self._known.pop(job_id, None)
            raise StaleRevision(job_id) from e
        except Exception as e:  # create() on an existing key raises a wrong-sequence API error too
            self._known.pop(job_id, None)
            if "wrong last sequence" in str(e).lower() or "10071" in str(e):
                raise StaleRevision(job_id) from e
            raise
        self._note(job_id, status, int(rev))

    async def set_queue_position(self, job_id: str, position: int) -> JobStatus | None:
        """Record a queued job's place in its work queue (0 = next to start); returns the stored status.

        Writes only while the job is ``queued`` and only when the position goes down (or is first
        set): the messages ahead of a job only ever leave the queue, so a stale tracker that
        computed a larger number earlier can never move a job back.
        """

        def mutate(cur: JobStatus | None) -> JobStatus | None:
            if cur is None or cur.state != JobState.QUEUED:
                return None
            if cur.queue_position is not None and cur.queue_position <= position:
                return None
            return cur.model_copy(update={"queue_position": position, "updated_at": utcnow()})

        return await self.update(job_id, mutate)


    async def set_waiting_reason(self, job_id: str, reason: str | None, *,
                                 among: frozenset[JobState] = frozenset({JobState.QUEUED})) -> JobStatus | None:
        """Say why a job in one of ``among`` is not moving on (None clears); written only while the
        job is in one of those states and only when it changes."""

        def mutate(cur: JobStatus | None) -> JobStatus | None:
            if cur is None or cur.state not in among or cur.waiting_reason == reason:
                return None
            return cur.model_copy(update={"waiting_reason": reason, "updated_at": utcnow()})

        return await self.update(job_id, mutate)


class JobTracker:
    """Emits events and keeps the status in step with them."""

    def __init__(self, bus: Bus, storage: Storage | None = None) -> None:
        self.bus = bus
        self.status = StatusStore(bus)
        self.storage = storage
        """Set (``Ports`` does): a job that fails has its HLS playlist closed at its real end."""

    async def publish_event(self, event: JobEvent) -> None:
        # Nats-Msg-Id = event id: a redelivered stage re-emitting the same change is de-duplicated.
        # internal job key in, the tenant's own job id out (on the tenant's events subject)
        public = event if "." not in event.job_id else event.model_copy(
            update={"job_id": public_job_id(event.job_id)})
        await self.bus.publish(events_subject(event.job_id), public, msg_id=event.id)

    async def record(self, event: JobEvent, *, alongside: Awaitable[Any] | None = None,
                     state: JobState | None = None, then: Sequence[JobEvent] = (),
                     **fields: Any) -> JobStatus | None:
        """Update status for ``event`` (CAS), then publish the event. Idempotent per event id.

        ``alongside``: a write that must be done before the event is published, run concurrently
        with the status update. ``state``: the status state, when not the event's usual one.
        ``then``: events that follow ``event`` at once (a t2v job is accepted and preprocessed in
        one go): one status write takes the job through all of them to the last one's state, then
        every event is published, in order (pipelined on the one connection).
        """
        changes = [(event, state or _STATE_FOR_EVENT[event.type], fields),
                   *((e, _STATE_FOR_EVENT[e.type], {}) for e in then)]
        final = changes[-1][1]

        def mutate(cur: JobStatus | None) -> JobStatus | None:
            out, changed = cur, False
            for ev, st, flds in changes:
                new = _apply(ev, st, flds, out)
                if new is not None:
                    out, changed = new, True
            return out if changed else None

        if alongside is None:
            stored = await self.status.update(event.job_id, mutate)
        else:
            stored, _ = await asyncio.gather(self.status.update(event.job_id, mutate), alongside)
        if stored is not None and stored.state.terminal and stored.state != final:
            # a terminal state already won; do not publish a contradicting event
            log.info("event_suppressed_after_terminal", job_id=event.job_id, event_type=event.type.value,
                     state=stored.state.value)
            return stored
        if then:  # each PUB is queued on the connection before the next: stored in this order
            await asyncio.gather(*(self.publish_event(e) for e in (event, *then)))
        else:
            await self.publish_event(event)
        if (self.storage is not None and stored is not None and stored.state == JobState.FAILED
                and stored.playlist_url is not None):
            # a streaming job that failed: players see the stream end where the frames end
            await close_playlist(self.storage, event.job_id)
        return stored


def _apply(event: JobEvent, state: JobState, fields: dict[str, Any], cur: JobStatus | None) -> JobStatus | None:
    """The status after ``event`` (state ``state``, plus ``fields``); None: no change."""
    now = utcnow()
    base: dict[str, Any] = cur.model_dump() if cur is not None else {"job_id": event.job_id, "created_at": now}
    if cur is not None and event.type == EventType.PROGRESS and cur.state not in (
            JobState.RUNNING, JobState.QUEUED, JobState.PREPROCESSING):
        return None
    base.update(fields)
    base["state"] = state
    if state != JobState.QUEUED:
        base["queue_position"] = None  # only queued jobs have a place in the queue
    if state != (cur.state if cur is not None else None) and "waiting_reason" not in fields:
        base["waiting_reason"] = None  # the job moved on
    base["updated_at"] = now
    if state == JobState.SUCCEEDED:
        base["progress"] = 100.0
    if isinstance(event.data, FailedData | RejectedData) and "error" not in fields:
        base["error"] = ErrorInfo(code=event.data.code, message=event.data.message, retryable=event.data.retryable)
    return JobStatus.model_validate(base)


async def discard_partial_objects(storage: Storage, job_id: str) -> list[str]:
    """Delete what a cancelled job left under ``jobs/<job_id>/``; keep ``inputs/request.json``.

    The request stays because it is the job's record (and the webhook dispatcher reads the job's
    subscription from it to deliver ``job.cancelled``); the bucket's lifecycle rule removes it with
    the rest of ``jobs/`` later. Idempotent: every writer that finds the job cancelled after writing
    calls it again (see functions/cancel/README.md).
    """
    keep = request_key(job_id)
    keys = [k for k in await storage.list_keys(job_prefix(job_id)) if k != keep]
    for key in keys:
        await storage.delete(key)
    return keys


TERMINAL: frozenset[JobState] = frozenset(s for s in JobState if s.terminal)
CANCELLED: frozenset[JobState] = frozenset({JobState.CANCELLED})
# a runner drops a segment of a job in these states (a failed job's other segments are moot)
STOPPED: frozenset[JobState] = frozenset({JobState.CANCELLED, JobState.FAILED})

_READ: Any = object()  # sentinel: read the status


class JobGuard:
    """The "has the job ended under me?" checks and the clean-up after a cancel, for every writer."""

    def __init__(self, tracker: JobTracker, storage: Storage) -> None:
        self.tracker = tracker
        self.storage = storage

    async def stopped(self, job_id: str, *, among: frozenset[JobState] = CANCELLED, status: Any = _READ,
                      queued_seq: int | None = None, queue: str = STREAM_SEGMENTS,
                      clean_up: bool = True) -> JobState | None:
        """The job's state when it is one of ``among`` (the caller drops its work), else None.

        ``status``: the status already at hand (e.g. what ``tracker.record`` stored); read when
        not given. A cancelled job is cleaned up on the way (:meth:`discard`, with the message the
        caller just queued as ``queued_seq`` on stream ``queue``): idempotent, so every writer that
        finds the job cancelled after writing does it again. ``clean_up=False``: only look (a
        watcher polling while the work is still running).
        """
        if status is _READ:
            status, _ = await self.tracker.status.get(job_id)
        if status is None or status.state not in among:
            return None
        if status.state == JobState.CANCELLED and clean_up:
            removed = await self.discard(job_id, queued_seq=queued_seq, queue=queue)
            log.info("cancelled_job_cleaned", job_id=job_id, objects_deleted=len(removed))
        return status.state

    async def wait_stopped(self, job_id: str, *, among: frozenset[JobState] = STOPPED,
                           poll_s: float = 0.5) -> JobState:
        """Return as soon as the job's state is one of ``among`` (a long-running writer's stop signal).

        A KV watch on the job's key pushes every status write here (no polling delay); polling every
        ``poll_s`` is the fallback when the watch cannot be set up or breaks. No clean-up: the
        writer is still working and cleans up when it settles.
        """
        watcher = None
        try:
            watcher = await (await self.tracker.bus.kv()).watch(job_id)
            while True:
                entry = await watcher.updates(timeout=None)
                if entry is None or not entry.value:
                    continue  # end of the initial values, or a delete marker
                state = JobStatus.model_validate_json(entry.value).state
                if state in among:
                    return state
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("cancel_watch_failed_polling", job_id=job_id, error=str(e))
        finally:
            if watcher is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(watcher.stop())
        while True:
            await asyncio.sleep(poll_s)
            with contextlib.suppress(Exception):
                stopped = await self.stopped(job_id, among=among, clean_up=False)
                if stopped is not None:
                    return stopped

    async def discard(self, job_id: str, *, queued_seq: int | None = None, queue: str = STREAM_SEGMENTS) -> list[str]:
        """Delete what a cancelled job left: the message ``queued_seq`` (if still waiting; one a
        runner took is skipped by the runner) and the job's partial objects."""
        if queued_seq:
            await self.drop_message(queued_seq, queue=queue)
        return await discard_partial_objects(self.storage, job_id)

    async def drop_message(self, seq: int | None, *, queue: str = STREAM_SEGMENTS) -> bool:
        """Best effort: delete one queued message (already taken or acked: gone, nothing to do)."""
        if not seq:
            return False
        try:
            return await self.tracker.bus.delete_message(queue, seq)
        except Exception as e:
            log.debug("queued_message_not_deleted", seq=seq, error=str(e))
            return False
