"""queue: write each queued job's place in its GPU work queue into its status, about once a second.

in:  the waiting messages of ``videogen.segments.<model>`` (``runtime.queue.WorkQueueView``: an
     incremental index, no consumer of its own: the work queue allows only the runners' one)
out: ``JobStatus.queue_position`` (0 = next to start) of every ``queued`` job, by compare-and-set,
     only when it changed, and only downwards (see ``StatusStore.set_queue_position``)

     ``JobStatus.waiting_reason`` of a queued job whose model has no live runner (KV
     ``videogen-runners``, ``runtime.liveness``), and after ``no_runner_timeout_s`` without one
     ``job.failed`` ``no_runner`` (retryable; its waiting segment is removed from the queue)

A periodic stage, not a consumer: ``Service`` calls ``QueueTracker.tick`` every ``interval_s``.
Several replicas are harmless (they compute the same numbers; a stale one cannot raise a position;
the failure event has one id per job, so two replicas failing a job publish it once). The
no-runner clock of a job starts when this replica first saw it queued with nothing serving its
model (a restarted replica starts it again).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from runtime.liveness import live_runners, model_token
from runtime.logging import get_logger
from runtime.ports import Ports
from runtime.queue import Waiting, WorkQueueView
from schemas.errors import ErrorCode
from schemas.messages import EventType, FailedData, JobEvent
from schemas.names import SUBJECT_SEGMENTS_PREFIX

log = get_logger(stage="queue")

TICK_INTERVAL_S = 1.0


def positions(queue: list[Waiting]) -> dict[str, int]:
    """job_id -> number of waiting messages ahead of the job's first segment (0 = next to start).

    Only jobs whose segment 0 is waiting get a position: they are the ``queued`` ones. Later
    segments of running jobs take places in the queue but have no position of their own.
    """
    out: dict[str, int] = {}
    for ahead, w in enumerate(sorted(queue, key=lambda w: w.seq)):
        if w.segment == 0 and w.job_id not in out:
            out[w.job_id] = ahead
    return out


class QueueTracker:
    def __init__(self, ports: Ports) -> None:
        self.ports = ports
        self.view = WorkQueueView(ports.bus)
        self.written: dict[str, int] = {}  # what this replica last wrote (or decided not to write)
        self.unserved_since: dict[str, float] = {}  # job_id -> first tick seen queued with no live runner
        self.reasons: dict[str, str] = {}  # job_id -> the reason written (its model part)
        self.failed_no_runner = 0

    async def tick(self) -> int:
        """One refresh; returns the number of statuses written."""
        queues = await self.view.refresh()
        current: dict[str, int] = {}
        for waiting in queues.values():
            current.update(positions(waiting))
        writes = 0
        for job_id, pos in current.items():
            if self.written.get(job_id) == pos:
                continue
            stored = await self.ports.tracker.status.set_queue_position(job_id, pos)
            if stored is not None and stored.queue_position == pos:
                writes += 1
            self.written[job_id] = pos  # written, or the job is no longer queued: do not retry each tick
        for job_id in [j for j in self.written if j not in current]:
            del self.written[job_id]
        writes += await self._check_runners(queues)
        if writes:
            log.debug("queue_positions_written", writes=writes, queued=len(current))
        return writes

    async def _check_runners(self, queues: dict[str, list[Waiting]]) -> int:
        """Queued jobs of models no live runner serves: say so, and fail them after the timeout."""
        live = await live_runners(self.ports.bus)
        now = time.monotonic()
        timeout = self.ports.settings.no_runner_timeout_s
        seen: set[str] = set()
        writes = 0
        for subject, waiting in queues.items():
            token = subject.removeprefix(SUBJECT_SEGMENTS_PREFIX + ".")
            if live.get(model_token(token), 0) > 0:
                for w in waiting:
                    if w.segment == 0 and self.unserved_since.pop(w.job_id, None) is not None:
                        self.reasons.pop(w.job_id, None)
                        await self.ports.tracker.status.set_waiting_reason(w.job_id, None)
                continue
            for w in waiting:
                if w.segment != 0:
                    continue
                seen.add(w.job_id)
                since = self.unserved_since.setdefault(w.job_id, now)
                left = timeout - (now - since)
                if left > 0:
                    deadline = datetime.fromtimestamp(time.time() + left, UTC).isoformat(timespec="seconds")
                    reason = (f"no live runner for model {token}: fails with no_runner at {deadline} "
                              f"(no_runner_timeout_s={timeout:g}) unless one starts")
                    if self.reasons.get(w.job_id) != reason[:60]:  # written once per job and outage
                        await self.ports.tracker.status.set_waiting_reason(w.job_id, reason)
                        self.reasons[w.job_id] = reason[:60]
                        writes += 1
                    continue
                msg = f"no live runner for model {token} for {timeout:.0f} s (no_runner_timeout_s)"
                await self.ports.tracker.record(JobEvent.build(
                    w.job_id, EventType.FAILED,
                    FailedData(code=ErrorCode.NO_RUNNER.value, message=msg, retryable=True), "queue", "no_runner"),
                    waiting_reason=None)
                await self.ports.guard.drop_message(w.seq)
                self.unserved_since.pop(w.job_id, None)
                self.failed_no_runner += 1
                log.warning("job_failed_no_runner", job_id=w.job_id, model=token, waited_s=round(timeout))
                writes += 1
        for job_id in [j for j in self.unserved_since if j not in seen]:
            del self.unserved_since[job_id]
            self.reasons.pop(job_id, None)
        return writes
