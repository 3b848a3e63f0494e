"""The CPU stages' consumer loop: turns a handler's outcome into a broker action.

The actions themselves (and the failure policy shared with the GPU runner) are
``runtime.work.WorkItem``'s; this loop maps outcomes onto them:

handler returns        -> ack
raises Retryable       -> nak(delay)   (after max deliveries: DLQ entry + on_exhausted + term)
raises Permanent       -> on_permanent (job.rejected / job.failed) + term
raises Cancelled       -> ack (the job was cancelled; nothing to retry)
raises anything else   -> treated as retryable (a bug or a blip); DLQ after max deliveries

While the handler runs, ``in_progress`` heartbeats keep the message alive. On shutdown the
loop stops fetching, lets the in-flight message finish (or naks it if it outlives the grace
period), and returns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Histogram

from runtime.bus import Bus
from runtime.logging import bound_contextvars, get_logger
from runtime.work import BusClosed, FailureHook, Puller, WorkItem, dead_letter, job_id_of
from schemas.errors import Cancelled, ErrorCode, Permanent, Retryable, VideogenError
from schemas.names import ConsumerSpec

log = get_logger(component="consumer")

MESSAGES = Counter("videogen_stage_messages_total", "messages handled, by stage and outcome",
                   ["stage", "outcome"])
HANDLER_SECONDS = Histogram("videogen_stage_handler_seconds", "handler time per message", ["stage"],
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
QUEUE_WAIT_SECONDS = Histogram(
    "videogen_stage_queue_wait_seconds", "first deliveries: stored in the stream -> handler started", ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600))
# a first delivery waiting longer than this is logged (``slow_delivery``): lag, a cold start or a stall
SLOW_DELIVERY_S = 2.0

# What a handler gets besides the payload: the message's delivery facts, heartbeat and broker actions.
Delivery = WorkItem
Handler = Callable[[bytes, WorkItem], Awaitable[None]]

__all__ = ["ConsumerLoop", "Delivery", "FailureHook", "Handler", "WorkItem", "dead_letter", "job_id_of"]


class ConsumerLoop:
    """Pulls from one durable consumer and runs ``handler`` per message."""

    def __init__(
        self,
        bus: Bus,
        spec: ConsumerSpec,
        handler: Handler,
        *,
        stage: str,
        on_permanent: FailureHook | None = None,
        on_exhausted: FailureHook | None = None,
        on_retry: Callable[[bytes, VideogenError, WorkItem, float], Awaitable[None]] | None = None,
        heartbeat_s: float = 10.0,
        fetch_timeout_s: float = 5.0,
        shutdown_grace_s: float = 30.0,
        concurrency: int = 1,
    ) -> None:
        self.bus = bus
        self.spec = spec
        self.handler = handler
        self.stage = stage
        self.on_permanent = on_permanent
        self.on_exhausted = on_exhausted
        self.on_retry = on_retry
        self.heartbeat_s = heartbeat_s
        self.fetch_timeout_s = fetch_timeout_s
        self.shutdown_grace_s = shutdown_grace_s
        self.concurrency = max(1, concurrency)
        self._stopping = asyncio.Event()
        self.processed = 0
        self.busy = False
        self.started = False
        self.last_tick = time.monotonic()  # liveness: the fetch loop is turning

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        puller = Puller(self.bus, self.spec, stage=self.stage, on_permanent=self.on_permanent,
                        on_exhausted=self.on_exhausted)
        await puller.open()
        log.info("consumer_started", stage=self.stage, consumer=self.spec.durable, stream=self.spec.stream)
        self.started = True
        inflight: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping.is_set():
                self.last_tick = time.monotonic()
                free = self.concurrency - len(inflight)
                if free <= 0:
                    await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    # one message per pull, even with free slots: nats-py's batch fetch (``_fetch_n``)
                    # holds a message that arrives during its lingering pull until the whole batch
                    # is full or the pull expires -- up to ``fetch_timeout_s`` of stall per hop (the
                    # "start-up stall" of bench/README.md). A single-message pull returns at once;
                    # the loop comes straight back for the next free slot.
                    items = await puller.fetch(1, self.fetch_timeout_s)
                except BusClosed:
                    break
                except Exception as e:  # reconnecting etc.: back off briefly
                    log.warning("fetch_failed", stage=self.stage, error=str(e))
                    await asyncio.sleep(0.5)
                    continue
                for item in items:
                    task = asyncio.create_task(self._process(item))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
        finally:
            if inflight:
                done, pending = await asyncio.wait(inflight, timeout=self.shutdown_grace_s)
                for t in pending:
                    t.cancel()
            await puller.close()
            log.info("consumer_stopped", stage=self.stage, processed=self.processed)

    async def _process(self, item: WorkItem) -> None:
        num = item.num_delivered
        self.busy = True
        started = time.perf_counter()
        outcome = "ack"
        with bound_contextvars(stage=self.stage, job_id=item.job_id, delivery=num):
            if num == 1:  # redeliveries wait on purpose (back-off)
                self._observe_queue_wait(item)
            item.start_heartbeat(self.heartbeat_s)
            try:
                await self.handler(item.payload, item)
            except Cancelled as e:
                log.info("handler_cancelled", reason=str(e))
                outcome = "cancelled"
                await item.ack()
            except Permanent as e:
                log.warning("handler_permanent_failure", code=e.code.value, error=str(e))
                outcome = await item.fail(e)
            except asyncio.CancelledError:
                # shutdown while working: hand the message back for another worker right away
                await item.nak(0)
                raise
            except Exception as e:
                err = e if isinstance(e, Retryable) else Retryable(
                    f"{type(e).__name__}: {e}", code=ErrorCode.INTERNAL, delay_s=5.0
                )
                if item.final_attempt:
                    log.error("handler_exhausted", code=err.code.value, error=str(e),
                              exc_info=not isinstance(e, VideogenError))
                else:
                    log.warning("handler_retry", code=err.code.value, error=str(e), delay_s=item.retry_delay_s(err),
                                exc_info=not isinstance(e, VideogenError))
                    if self.on_retry is not None:
                        try:  # visible, best effort: the retry itself does not depend on it
                            await self.on_retry(item.payload, err, item, item.retry_delay_s(err))
                        except Exception as hook_error:
                            log.warning("retry_hook_failed", error=str(hook_error))
                outcome = await item.fail(err)
            else:
                await item.ack()
            finally:
                item.stop_heartbeat()
                self.processed += 1
                self.busy = False
                MESSAGES.labels(self.stage, outcome).inc()
                HANDLER_SECONDS.labels(self.stage).observe(time.perf_counter() - started)

    def _observe_queue_wait(self, item: WorkItem) -> None:
        stored = item.stored_at
        if stored is None:
            return
        wait_s = max(0.0, time.time() - stored.timestamp())
        QUEUE_WAIT_SECONDS.labels(self.stage).observe(wait_s)
        if wait_s > SLOW_DELIVERY_S:
            log.warning("slow_delivery", wait_ms=round(1000 * wait_s, 1))
