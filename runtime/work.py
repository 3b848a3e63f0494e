"""One message being worked on: its delivery facts and every broker action taken on it.

Both message-driven loops use it: the CPU stages' ``runtime.consumer.ConsumerLoop`` and the GPU
runner's rank-0 puller (``gpu_runner.io``), so "what happens to a message" is written once:

=====================================  ==============================================================
``ack()``                              done
``nak(delay_s)``                       try again after ``delay_s``
``term()``                             never deliver again (the failure is recorded elsewhere)
``in_progress()``                      still working: restart the ack wait (``start_heartbeat``)
``dead_letter(code, reason)``          a ``DLQEntry`` on ``videogen.dlq.<stage>`` with the payload
``fail(err)``                          permanent -> ``on_permanent`` (+ DLQ when nobody took it) + term;
                                       retryable -> nak(delay), on the final delivery
                                       ``on_exhausted`` + DLQ (``max_deliveries``) + term
``hand_back(delay_s, reason)``         unfinished, not failed: nak; on the final delivery (JetStream
                                       would never deliver a nak'ed message again) ``fail`` instead
=====================================  ==============================================================

``ack``/``nak``/``term``/``in_progress`` never raise (a failed ack is logged: the message comes back
after its ack wait, and every stage is idempotent per message). ``dead_letter`` raises when the DLQ
entry could not be published; ``fail`` then naks the message for a later retry.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.msg import Msg
from nats.js.errors import FetchTimeoutError

from runtime.logging import get_logger
from schemas.errors import ErrorCode, Retryable, VideogenError
from schemas.messages import DLQEntry
from schemas.names import ConsumerSpec, dlq_subject

if TYPE_CHECKING:
    from runtime.bus import Bus

log = get_logger(component="work")

# Returns True when the failure was recorded against a job (event + status); False sends the
# message to the DLQ as well (e.g. no job_id could be read).
FailureHook = Callable[[bytes, VideogenError, "WorkItem"], Awaitable[bool]]


def job_id_of(payload: bytes) -> str | None:
    """Best-effort job_id from a JSON payload (top level or nested under ``job``)."""
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deeply nested JSON
        return None
    if not isinstance(obj, dict):
        return None
    nested = obj.get("job")
    for candidate in (obj.get("job_id"), nested.get("job_id") if isinstance(nested, dict) else None):
        if isinstance(candidate, str):
            return candidate
    return None


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


class WorkItem:
    """A JetStream message a stage holds, with the stage's failure hooks."""

    def __init__(self, msg: Msg, bus: Bus, *, stage: str, max_deliver: int,
                 on_permanent: FailureHook | None = None, on_exhausted: FailureHook | None = None) -> None:
        self.msg = msg
        self.bus = bus
        self.stage = stage
        self.max_deliver = max_deliver
        self.on_permanent = on_permanent
        self.on_exhausted = on_exhausted
        try:
            md = msg.metadata
            self.stream_seq: int | None = md.sequence.stream
            self.num_delivered = int(md.num_delivered)
            self.stored_at: datetime | None = md.timestamp
        except Exception:  # not a JetStream message (a core NATS message in a test)
            self.stream_seq, self.num_delivered, self.stored_at = None, 1, None
        self._heartbeat: asyncio.Task[None] | None = None
        # the owner's own budget (the runner: renders started, runtime.liveness.RenderAttempts):
        # when set, the final attempt is the one reaching ``max_attempts`` -- or JetStream's
        # ``max_deliver``, which stays the outer bound
        self.heartbeats = 0
        self.attempts: int | None = None
        self.max_attempts: int | None = None

    # ---- facts ----------------------------------------------------------------------------
    @property
    def payload(self) -> bytes:
        return self.msg.data

    @property
    def subject(self) -> str:
        return self.msg.subject

    @property
    def final_attempt(self) -> bool:
        """No further try after this one: JetStream will not deliver the message again, or the
        owner's attempt budget (``attempts``/``max_attempts``) is spent."""
        if self.attempts is not None and self.max_attempts is not None and self.attempts >= self.max_attempts:
            return True
        return self.num_delivered >= self.max_deliver

    @property
    def job_id(self) -> str | None:
        return job_id_of(self.msg.data)

    # ---- broker actions (never raise) -------------------------------------------------------
    async def ack(self) -> None:
        await self._safe("ack", self.msg.ack())

    async def nak(self, delay_s: float = 0.0) -> None:
        await self._safe("nak", self.msg.nak(delay=delay_s))

    async def term(self) -> None:
        await self._safe("term", self.msg.term())

    async def in_progress(self) -> None:
        with contextlib.suppress(Exception):
            await self.msg.in_progress()

    def start_heartbeat(self, interval_s: float) -> None:
        """``in_progress`` every ``interval_s`` until :meth:`stop_heartbeat` (long work keeps its message).

        A task on the owner's event loop: it beats while that loop runs, whatever the work does
        elsewhere (the GPU runner's compute runs on another thread; its loop is I/O only)."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(interval_s)
                await self.in_progress()
                self.heartbeats += 1

        self.stop_heartbeat()
        self._heartbeat = asyncio.create_task(beat())

    def stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    # ---- failure ----------------------------------------------------------------------------
    async def dead_letter(self, code: str, reason: str) -> DLQEntry:
        """A DLQ entry with this message's payload and delivery facts (raises when it cannot be published)."""
        return await dead_letter(self.bus, self.stage, subject=self.msg.subject, data=self.msg.data,
                                 headers=self.msg.headers, stream_seq=self.stream_seq,
                                 num_delivered=self.num_delivered, code=code, reason=reason)

    async def fail(self, err: VideogenError, *, retry_delay_s: float | None = None) -> str:
        """The one failure policy; returns the outcome (``term``, ``dead_letter`` or ``nak``).

        ``retry_delay_s``: the nak delay of a retryable failure (default: the error's own delay,
        doubled per delivery when it asks for back-off, at most 16-fold).
        """
        if not err.retryable:
            await self._record(err, exhausted=False)
            return "term"
        budget = getattr(err, "max_attempts", None)
        if self.final_attempt or (budget is not None and self.num_delivered >= budget):
            await self._record(err, exhausted=True)
            return "dead_letter"
        await self.nak(self.retry_delay_s(err) if retry_delay_s is None else retry_delay_s)
        return "nak"

    def retry_delay_s(self, err: VideogenError) -> float:
        """The nak delay for a retryable ``err`` at this delivery."""
        delay = err.delay_s if isinstance(err, Retryable) else 5.0
        if getattr(err, "backoff", True):
            delay *= min(2 ** (self.num_delivered - 1), 16)
        return delay

    async def hand_back(self, delay_s: float = 0.0, *, reason: str = "handed back unfinished") -> str:
        """Give the message back unfinished (shutdown, a GPU short of memory): redelivered after ``delay_s``.

        On the final delivery a nak would strand it (JetStream never delivers it again and its job
        would stay ``running``): fail it as exhausted instead (job.failed + DLQ, replayable)."""
        if self.final_attempt:
            return await self.fail(Retryable(f"{reason} on its last delivery ({self.num_delivered})",
                                             code=ErrorCode.MAX_DELIVERIES))
        await self.nak(delay_s)
        return "nak"

    async def _record(self, err: VideogenError, *, exhausted: bool) -> None:
        hook = self.on_exhausted if exhausted else self.on_permanent
        code = ErrorCode.MAX_DELIVERIES.value if exhausted else err.code.value
        try:
            handled = await hook(self.msg.data, err, self) if hook is not None else False
            if exhausted or not handled:
                await self.dead_letter(code, str(err))
        except Exception as e:  # could not record the failure: retry the whole message later
            log.error("failure_recording_failed", stage=self.stage, error=str(e))
            await self.nak(5.0)
            return
        await self.term()

    async def _safe(self, action: str, coro: Awaitable[Any]) -> None:
        try:
            await coro
        except Exception as e:
            log.warning("ack_failed", stage=self.stage, action=action, error=str(e))


class BusClosed(Exception):
    """The bus connection was closed: a puller's owner stops."""


class Puller:
    """A bound pull subscription on one durable consumer, handing out :class:`WorkItem` s."""

    def __init__(self, bus: Bus, spec: ConsumerSpec, *, stage: str, on_permanent: FailureHook | None = None,
                 on_exhausted: FailureHook | None = None) -> None:
        self.bus = bus
        self.spec = spec
        self.stage = stage
        self.on_permanent = on_permanent
        self.on_exhausted = on_exhausted
        self._sub: Any = None

    async def open(self, *, ensure: bool = True) -> None:
        """Bind to the durable consumer (``ensure``: create or update it from the spec first)."""
        if ensure:
            await self.bus.ensure_consumer(self.spec)
        self._sub = await self.bus.js.pull_subscribe_bind(self.spec.durable, stream=self.spec.stream)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    def item(self, msg: Msg) -> WorkItem:
        return WorkItem(msg, self.bus, stage=self.stage, max_deliver=self.spec.max_deliver,
                        on_permanent=self.on_permanent, on_exhausted=self.on_exhausted)

    async def fetch(self, batch: int = 1, timeout_s: float = 5.0) -> list[WorkItem]:
        """Up to ``batch`` messages; [] when none came within ``timeout_s``. Raises :class:`BusClosed`
        when the connection is closed, and the client's error for anything else (reconnecting...)."""
        if self._sub is None:
            raise RuntimeError("Puller is not open")
        try:
            msgs = await self._sub.fetch(batch=batch, timeout=timeout_s)
        except (TimeoutError, FetchTimeoutError, nats.errors.TimeoutError):
            return []
        except nats.errors.ConnectionClosedError as e:
            raise BusClosed(str(e)) from e
        return [self.item(m) for m in msgs]

    async def next(self, timeout_s: float = 1.0) -> WorkItem | None:
        """One message or None (timeout; a fetch error is logged and waited out briefly)."""
        try:
            items = await self.fetch(1, timeout_s)
        except Exception as e:
            log.warning("fetch_failed", stage=self.stage, error=str(e))
            await asyncio.sleep(0.5)
            return None
        return items[0] if items else None
