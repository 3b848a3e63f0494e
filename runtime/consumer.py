"""The one place that turns a handler's outcome into a broker action.

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
import base64
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js.errors import FetchTimeoutError

from prometheus_client import Counter, Histogram

from runtime.bus import Bus
from runtime.logging import bound_contextvars, get_logger
from schemas.errors import Cancelled, ErrorCode, Permanent, Retryable, VideogenError
from schemas.messages import DLQEntry
from schemas.names import ConsumerSpec, dlq_subject

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


@dataclass
class Delivery:
    """What a handler gets besides the payload: the message's delivery facts and a heartbeat."""

    msg: Msg
    stage: str
    num_delivered: int
    max_deliver: int
    stream_seq: int | None

    @property
    def final_attempt(self) -> bool:
        return self.num_delivered >= self.max_deliver

    async def in_progress(self) -> None:
        with contextlib.suppress(Exception):
            await self.msg.in_progress()


Handler = Callable[[bytes, Delivery], Awaitable[None]]
# Returns True when the failure was recorded against a job (event + status); False sends the
# message to the DLQ as well (e.g. no job_id could be read).
FailureHook = Callable[[bytes, VideogenError, Delivery], Awaitable[bool]]


def job_id_of(payload: bytes) -> str | None:
    """Best-effort job_id from a JSON payload (top level or nested under ``job``)."""
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deeply nested JSON
        return None
    if not isinstance(obj, dict):
        return None
    for candidate in (obj.get("job_id"), (obj.get("job") or {}).get("job_id") if isinstance(obj.get("job"), dict) else None):
        if isinstance(candidate, str):
            return candidate
    return None


async def send_to_dlq(bus: Bus, stage: str, msg: Msg, code: str, reason: str, num_delivered: int | None) -> None:
    seq, delivered = _metadata(msg)
    await dead_letter(bus, stage, subject=msg.subject, data=msg.data, headers=msg.headers, stream_seq=seq,
                      num_delivered=num_delivered, code=code, reason=reason, dedupe_delivery=delivered)


async def dead_letter(bus: Bus, stage: str, *, subject: str, data: bytes, headers: dict[str, Any] | None,
                      stream_seq: int | None, num_delivered: int | None, code: str, reason: str,
                      dedupe_delivery: int | None = None) -> DLQEntry:
    """Publish a DLQ entry for a message (de-duplicated per stage, stream sequence and delivery)."""
    entry = DLQEntry(
        stage=stage,
        code=code,
        reason=reason,
        subject=subject,
        stream_seq=stream_seq,
        num_delivered=num_delivered,
        job_id=job_id_of(data),
        headers={k: str(v) for k, v in (headers or {}).items()},
        payload_b64=base64.b64encode(data).decode(),
    )
    delivery = num_delivered if dedupe_delivery is None else dedupe_delivery
    await bus.publish(dlq_subject(stage), entry, msg_id=f"{stage}:{stream_seq}:{delivery}")
    log.warning("dead_lettered", stage=stage, code=code, reason=reason, subject=subject, job_id=entry.job_id)
    return entry


def _metadata(msg: Msg) -> tuple[int | None, int]:
    try:
        md = msg.metadata
        return md.sequence.stream, int(md.num_delivered)
    except Exception:  # not a JetStream message (tests)
        return None, 1


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
        await self.bus.ensure_consumer(self.spec)
        sub = await self.bus.js.pull_subscribe_bind(self.spec.durable, stream=self.spec.stream)
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
                    msgs = await sub.fetch(batch=free, timeout=self.fetch_timeout_s)
                except (FetchTimeoutError, asyncio.TimeoutError, nats.errors.TimeoutError):
                    continue
                except nats.errors.ConnectionClosedError:
                    break
                except Exception as e:  # reconnecting etc.: back off briefly
                    log.warning("fetch_failed", stage=self.stage, error=str(e))
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    task = asyncio.create_task(self._process(msg))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
        finally:
            if inflight:
                done, pending = await asyncio.wait(inflight, timeout=self.shutdown_grace_s)
                for t in pending:
                    t.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            log.info("consumer_stopped", stage=self.stage, processed=self.processed)

    async def _heartbeat(self, delivery: Delivery) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await delivery.in_progress()

    async def _process(self, msg: Msg) -> None:
        seq, num = _metadata(msg)
        delivery = Delivery(msg, self.stage, num, self.spec.max_deliver, seq)
        job_id = job_id_of(msg.data)
        self.busy = True
        started = time.perf_counter()
        outcome = "ack"
        with bound_contextvars(stage=self.stage, job_id=job_id, delivery=num):
            if num == 1:  # redeliveries wait on purpose (back-off)
                self._observe_queue_wait(msg)
            hb = asyncio.create_task(self._heartbeat(delivery))
            try:
                await self.handler(msg.data, delivery)
            except Cancelled as e:
                log.info("handler_cancelled", reason=str(e))
                outcome = "cancelled"
                await self._safe(msg.ack())
            except Permanent as e:
                log.warning("handler_permanent_failure", code=e.code.value, error=str(e))
                outcome = "term"
                await self._fail(msg, e, delivery, exhausted=False)
            except asyncio.CancelledError:
                # shutdown while working: hand the message back for another worker right away
                await self._safe(msg.nak(delay=0))
                raise
            except Exception as e:
                err = e if isinstance(e, Retryable) else Retryable(
                    f"{type(e).__name__}: {e}", code=ErrorCode.INTERNAL, delay_s=5.0
                )
                outcome = "dead_letter" if delivery.final_attempt else "nak"
                if delivery.final_attempt:
                    log.error("handler_exhausted", code=err.code.value, error=str(e), exc_info=not isinstance(e, VideogenError))
                    await self._fail(msg, err, delivery, exhausted=True)
                else:
                    delay = err.delay_s * (min(2 ** (num - 1), 16) if err.backoff else 1)
                    log.warning("handler_retry", code=err.code.value, error=str(e), delay_s=delay,
                                exc_info=not isinstance(e, VideogenError))
                    await self._safe(msg.nak(delay=delay))
            else:
                await self._safe(msg.ack())
            finally:
                hb.cancel()
                self.processed += 1
                self.busy = False
                MESSAGES.labels(self.stage, outcome).inc()
                HANDLER_SECONDS.labels(self.stage).observe(time.perf_counter() - started)

    def _observe_queue_wait(self, msg: Msg) -> None:
        try:
            stored = msg.metadata.timestamp
        except Exception:  # not a JetStream message (tests)
            return
        if stored is None:
            return
        wait_s = max(0.0, time.time() - stored.timestamp())
        QUEUE_WAIT_SECONDS.labels(self.stage).observe(wait_s)
        if wait_s > SLOW_DELIVERY_S:
            log.warning("slow_delivery", wait_ms=round(1000 * wait_s, 1))

    async def _fail(self, msg: Msg, err: VideogenError, delivery: Delivery, *, exhausted: bool) -> None:
        hook = self.on_exhausted if exhausted else self.on_permanent
        code = ErrorCode.MAX_DELIVERIES.value if exhausted else err.code.value
        try:
            handled = await hook(msg.data, err, delivery) if hook is not None else False
            if exhausted or not handled:
                await send_to_dlq(self.bus, self.stage, msg, code, str(err), delivery.num_delivered)
        except Exception as e:  # could not record the failure: retry the whole message later
            log.error("failure_recording_failed", error=str(e))
            await self._safe(msg.nak(delay=5.0))
            return
        await self._safe(msg.term())

    @staticmethod
    async def _safe(coro: Awaitable[Any]) -> None:
        try:
            await coro
        except Exception as e:
            log.warning("ack_failed", error=str(e))
