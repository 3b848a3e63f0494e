"""queue: write each queued job's place in its GPU work queue into its status, about once a second.

in:  the waiting messages of ``videogen.segments.<model>`` (``runtime.queue.WorkQueueView``: an
     incremental index, no consumer of its own: the work queue allows only the runners' one)
out: ``JobStatus.queue_position`` (0 = next to start) of every ``queued`` job, by compare-and-set,
     only when it changed, and only downwards (see ``StatusStore.set_queue_position``)

A periodic stage, not a consumer: ``Service`` calls ``QueueTracker.tick`` every ``interval_s``.
Several replicas are harmless (they compute the same numbers; a stale one cannot raise a position).
"""

from __future__ import annotations

from runtime.logging import get_logger
from runtime.ports import Ports
from runtime.queue import Waiting, WorkQueueView

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
        if writes:
            log.debug("queue_positions_written", writes=writes, queued=len(current))
        return writes
