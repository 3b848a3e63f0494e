"""Per-tenant quotas (runtime/quotas.py) on the in-memory KV: limits, pruning, rate window, CAS."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from runtime.quotas import Limits, QuotaExceeded, QuotaGate, Record, decide
from runtime.testing.fakes import FakeBus
from schemas.errors import ErrorCode
from schemas.messages import JobState, JobStatus
from schemas.names import KV_QUOTAS

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _st(key: str, state: JobState) -> JobStatus:
    return JobStatus(job_id=key, state=state, created_at=T0, updated_at=T0)


def _reader(states: dict[str, JobState]):
    async def status_of(key: str) -> JobStatus | None:
        return _st(key, states[key]) if key in states else None
    return status_of


async def test_waiting_limit_then_finished_jobs_free_their_slots() -> None:
    states = {f"acme.j{i}": JobState.QUEUED for i in range(3)}
    rec = Record(active=list(states), recent=[])
    limits = Limits(max_queued=3, max_running=2, rate_per_minute=100)
    with pytest.raises(QuotaExceeded) as e:
        await decide(rec, "acme.new", limits, 1000.0, _reader(states))
    assert e.value.code == ErrorCode.QUOTA_EXCEEDED and e.value.client_retryable
    assert "3 jobs waiting" in str(e.value)
    states["acme.j1"] = JobState.SUCCEEDED  # finished: no explicit release, pruned on the next look
    new = await decide(rec, "acme.new", limits, 1000.0, _reader(states))
    assert new is not None and new.active == ["acme.j0", "acme.j2", "acme.new"]
    # a job already admitted (a redelivery) passes without counting twice
    assert await decide(new, "acme.new", limits, 1000.0, _reader(states)) is None


async def test_running_jobs_count_against_the_in_flight_limit() -> None:
    states = {"a": JobState.RUNNING, "b": JobState.STITCHING, "c": JobState.QUEUED, "d": JobState.RUNNING}
    limits = Limits(max_queued=2, max_running=2, rate_per_minute=100)
    with pytest.raises(QuotaExceeded, match="4 jobs in flight"):
        await decide(Record(active=list(states)), "e", limits, 0.0, _reader(states))
    states["d"] = JobState.CANCELLED
    assert (await decide(Record(active=list(states)), "e", limits, 0.0, _reader(states))).active == ["a", "b", "c", "e"]
    # vanished statuses (TTL, deleted) free their slot too
    assert (await decide(Record(active=["x", "y"]), "e", limits, 0.0, _reader({}))).active == ["e"]


async def test_rate_is_a_sliding_window() -> None:
    limits = Limits(max_queued=100, max_running=1, rate_per_minute=3)
    rec = Record(active=[], recent=[10.0, 20.0, 30.0])
    with pytest.raises(QuotaExceeded, match="submit rate") as e:
        await decide(rec, "k", limits, 50.0, _reader({}))
    assert e.value.details == [{"retry_after_s": 20.0}]
    new = await decide(rec, "k", limits, 70.5, _reader({}))  # 10.0 left the window
    assert new is not None and new.recent == [20.0, 30.0, 70.5]


async def test_concurrent_admissions_on_one_record_take_exactly_the_free_slots() -> None:
    bus = FakeBus()
    states: dict[str, JobState] = {}
    gate = QuotaGate(bus, Limits(max_queued=4, max_running=1, rate_per_minute=100), _reader(states))

    async def one(i: int) -> bool:
        states[f"acme.j{i}"] = JobState.PREPROCESSING
        await asyncio.sleep(0)
        try:
            await gate.admit("acme", f"acme.j{i}")
            return True
        except QuotaExceeded:
            states[f"acme.j{i}"] = JobState.FAILED
            return False

    results = await asyncio.gather(*(one(i) for i in range(7)))
    assert sum(results) == 4 and results.count(False) == 3
    await gate.admit("bob", "bob.j0")  # another tenant: its own record
    kv = await bus.kv_bucket(KV_QUOTAS)
    assert len(Record.parse((await kv.get("acme")).value).active) == 4
    assert Record.parse((await kv.get("bob")).value).active == ["bob.j0"]


async def test_a_burst_of_one_tenant_takes_turns_one_write_each_and_another_writer_is_seen() -> None:
    """A burst of one tenant's submissions in one preprocess: each admission starts from the record this
    process wrote last (no read, no CAS retries among themselves); a write by another replica in between
    makes the next CAS fail, and that admission reads the record and counts both."""
    bus = FakeBus()
    gate = QuotaGate(bus, Limits(max_queued=100, max_running=1, rate_per_minute=1000), _reader({}))
    kv = await bus.kv_bucket(KV_QUOTAS)
    calls = {"get": 0, "update": 0}
    real_get, real_update = kv.get, kv.update

    async def get(key: str):  # type: ignore[no-untyped-def]
        calls["get"] += 1
        await asyncio.sleep(0)  # a round trip: the other admissions run meanwhile
        return await real_get(key)

    async def update(key: str, value: bytes, last: int | None = None) -> int:
        calls["update"] += 1
        await asyncio.sleep(0)
        return await real_update(key, value, last=last)

    kv.get, kv.update = get, update  # type: ignore[method-assign]
    await gate.admit("acme", "acme.first")  # creates the record (one read: there is none)
    await asyncio.gather(*(gate.admit("acme", f"acme.j{i}") for i in range(10)))
    assert calls == {"get": 1, "update": 10}  # no read, no failed CAS
    rec = Record.parse((await real_get("acme")).value)
    assert len(rec.active) == 11
    # another replica admits a job: our remembered revision is stale, the CAS fails, the record is read
    entry = await real_get("acme")
    await real_update("acme", Record([*rec.active, "acme.other"], rec.recent).dump(), last=entry.revision)
    await gate.admit("acme", "acme.after")
    assert calls == {"get": 2, "update": 12}
    assert Record.parse((await real_get("acme")).value).active[-2:] == ["acme.other", "acme.after"]
