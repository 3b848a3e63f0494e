"""Per-tenant admission quotas (issue 13 item 5): in-flight job limits and a submit rate.

One record per tenant in KV ``videogen-quotas`` (key = the tenant name), written only with
compare-and-set, so any number of preprocess replicas agree on who got the last slot:

- ``active``: the internal keys of the tenant's admitted jobs that were not yet seen finished;
- ``recent``: the admission times (unix seconds) of the last minute (a sliding window).

A submission that has just created its status (``functions/preprocess/handler.py`` ``claim``)
asks :meth:`QuotaGate.admit`. Nothing is ever released explicitly: when the record holds as many
active jobs as ``max_queued_jobs_per_tenant``, the gate reads those jobs' statuses and drops the
finished (or vanished) ones, so a job that ends by any path (succeeded, failed, cancelled, TTL)
frees its slot the next time the tenant is near its limit. A redelivered submission whose job is
already in ``active`` is admitted again without counting twice.

Limits, all per tenant (``runtime/settings.py``):
- waiting jobs (preprocessing + queued) < ``max_queued_jobs_per_tenant``;
- in flight (waiting + running + stitching) < ``max_queued_jobs_per_tenant + max_running_jobs_per_tenant``
  (the GPU queue is shared and FIFO: nothing holds a tenant's queued job back from starting, so the
  running limit bounds what a tenant holds in flight at the door);
- admissions in the last 60 s < ``submit_rate_per_minute``.
A refused submission is ``job.rejected`` ``quota_exceeded`` with ``retryable: true``.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from runtime.logging import get_logger
from schemas.errors import ErrorCode, Rejected
from schemas.messages import JobState, JobStatus
from schemas.names import KV_QUOTAS

log = get_logger(component="quotas")

WINDOW_S = 60.0
WAITING = frozenset({JobState.PREPROCESSING, JobState.QUEUED})


class QuotaExceeded(Rejected):
    """A tenant over one of its limits: ``job.rejected`` ``quota_exceeded``, retryable by the client."""

    code = ErrorCode.QUOTA_EXCEEDED
    client_retryable = True

    def __init__(self, message: str, *, job_id: str, retry_after_s: float | None = None) -> None:
        super().__init__(message, code=ErrorCode.QUOTA_EXCEEDED)
        self.job_id = job_id
        self.details = [{"retry_after_s": round(retry_after_s, 1)}] if retry_after_s is not None else []


@dataclass(frozen=True)
class Limits:
    max_queued: int
    max_running: int
    rate_per_minute: int


@dataclass
class Record:
    active: list[str] = field(default_factory=list)
    recent: list[float] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: bytes | None) -> Record:
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(list(data.get("active", [])), [float(t) for t in data.get("recent", [])])

    def dump(self) -> bytes:
        return json.dumps({"active": self.active, "recent": self.recent}, separators=(",", ":")).encode()


StatusReader = Callable[[str], Awaitable[JobStatus | None]]


def quota_gate(bus: Any, settings: Any, statuses: Any) -> QuotaGate:
    """The gate of a deployment's per-tenant limits (``Settings``), reading job states from
    ``statuses`` (a ``runtime.jobs.StatusStore``): preprocess admits through it, the gateway checks."""
    limits = Limits(settings.max_queued_jobs_per_tenant, settings.max_running_jobs_per_tenant,
                    settings.submit_rate_per_minute)

    async def status_of(key: str) -> JobStatus | None:
        return (await statuses.get(key))[0]

    return QuotaGate(bus, limits, status_of)


async def decide(rec: Record, job_key: str, limits: Limits, now: float, status_of: StatusReader) -> Record | None:
    """The record after admitting ``job_key`` (None: already admitted), or raise :class:`QuotaExceeded`.

    Pure apart from ``status_of`` (read only when the record is at the waiting limit)."""
    if job_key in rec.active:
        return None
    recent = [t for t in rec.recent if t > now - WINDOW_S]
    if len(recent) >= limits.rate_per_minute:
        retry = recent[0] + WINDOW_S - now
        raise QuotaExceeded(f"submit rate over {limits.rate_per_minute} per minute ({len(recent)} accepted in the "
                            f"last {WINDOW_S:g} s); retry in {retry:.0f} s", job_id=job_key, retry_after_s=retry)
    active = list(rec.active)
    if len(active) >= limits.max_queued:
        statuses = await asyncio.gather(*(status_of(k) for k in active))
        live = [(k, st) for k, st in zip(active, statuses, strict=True) if st is not None and not st.state.terminal]
        active = [k for k, _ in live]
        waiting = sum(1 for _, st in live if st.state in WAITING)
        if waiting >= limits.max_queued:
            raise QuotaExceeded(f"{waiting} jobs waiting (preprocessing or queued), limit {limits.max_queued} per "
                                "tenant; retry when some have started", job_id=job_key)
        if len(active) >= limits.max_queued + limits.max_running:
            raise QuotaExceeded(f"{len(active)} jobs in flight, limit {limits.max_queued + limits.max_running} "
                                f"({limits.max_queued} waiting + {limits.max_running} running) per tenant; retry "
                                "when some have finished", job_id=job_key)
    return Record([*active, job_key], [*recent, now])


class QuotaGate:
    """CAS access to KV ``videogen-quotas`` (see the module docstring)."""

    def __init__(self, bus: Any, limits: Limits, status_of: StatusReader) -> None:
        self.bus = bus
        self.limits = limits
        self.status_of = status_of

    async def check(self, tenant: str) -> None:
        """Raise :class:`QuotaExceeded` when a new job of ``tenant`` would be refused now; writes
        nothing. The HTTP gateway asks at the door (429 instead of a job that is rejected a moment
        later); :meth:`admit` in preprocess stays the authority (two doors may both pass a last slot)."""
        kv = await self.bus.kv_bucket(KV_QUOTAS)
        try:
            raw = (await kv.get(tenant)).value
        except KeyNotFoundError:
            return
        await decide(Record.parse(raw), "\x00door-check", self.limits, time.time(), self.status_of)

    async def admit(self, tenant: str, job_key: str, *, attempts: int = 50) -> None:
        """Count ``job_key`` against ``tenant``'s limits, or raise :class:`QuotaExceeded`.

        The admissions of one tenant in this process take turns (a burst of its submissions would
        otherwise all read the same revision and retry each other's CAS, n² round trips), and each
        starts from the record and revision this process wrote last: one round trip, the CAS itself,
        when no other replica wrote in between (when one did, the CAS fails and the record is read)."""
        kv = await self.bus.kv_bucket(KV_QUOTAS)
        local = _local_state(self.bus)
        turn = local.locks.setdefault(tenant, asyncio.Lock())
        async with turn:
            known = local.known.pop(tenant, None)
            for _ in range(attempts):
                if known is not None:
                    (raw, rev), known = known, None
                else:
                    try:
                        entry = await kv.get(tenant)
                        raw, rev = entry.value, entry.revision or 0
                    except KeyNotFoundError:
                        raw, rev = None, 0
                new = await decide(Record.parse(raw), job_key, self.limits, time.time(), self.status_of)
                if new is None:
                    return
                body = new.dump()
                try:
                    written = await kv.create(tenant, body) if rev == 0 else await kv.update(tenant, body, last=rev)
                except KeyWrongLastSequenceError:
                    continue
                except Exception as e:  # create() on an existing key: a wrong-sequence API error
                    if "wrong last sequence" in str(e).lower() or "10071" in str(e):
                        continue
                    raise
                if isinstance(written, int) and written > 0:
                    local.known[tenant] = (body, written)
                return
        raise RuntimeError(f"quota record of {tenant} kept changing ({attempts} attempts)")


@dataclass
class _Local:
    """This process's turns and last written quota records, per tenant (per bus connection)."""

    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    known: dict[str, tuple[bytes, int]] = field(default_factory=dict)


_LOCAL: weakref.WeakKeyDictionary[Any, _Local] = weakref.WeakKeyDictionary()


def _local_state(bus: Any) -> _Local:
    state = _LOCAL.get(bus)
    if state is None:
        state = _LOCAL[bus] = _Local()
    return state
