"""StatusStore remembers what it last read or wrote: a write in a row skips the read, and nothing
decided on a remembered value is returned without KV's confirmation (FakeKV has real CAS errors)."""

from __future__ import annotations

import asyncio
from typing import Any

from runtime.jobs import StatusStore
from runtime.testing.fakes import FakeBus, FakeKV
from schemas.messages import JobState, JobStatus, utcnow


class CountingKV(FakeKV):
    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def get(self, key: str) -> Any:
        self.gets += 1
        return await super().get(key)


def _bus() -> tuple[FakeBus, CountingKV]:
    bus = FakeBus()
    kv = CountingKV()
    bus._kv = kv
    return bus, kv


def _status(job_id: str, state: JobState = JobState.PREPROCESSING, **kw: Any) -> JobStatus:
    now = utcnow()
    return JobStatus(job_id=job_id, state=state, created_at=now, updated_at=now, **kw)


def _set(**fields: Any) -> Any:
    return lambda cur: cur.model_copy(update=fields) if cur is not None else None


def test_writes_in_a_row_read_once() -> None:
    async def go() -> None:
        bus, kv = _bus()
        store = StatusStore(bus)  # type: ignore[arg-type]
        await store.update("j", lambda cur: _status("j") if cur is None else None)  # the create reads once
        assert kv.gets == 1
        await store.update("j", _set(state=JobState.QUEUED))
        await store.update("j", _set(progress=10.0))
        assert kv.gets == 1  # both CAS writes went on the remembered revision
        st, _ = await StatusStore(bus).get("j")  # type: ignore[arg-type]
        assert st is not None and st.state == JobState.QUEUED and st.progress == 10.0

    asyncio.run(go())


def test_another_writer_in_between_is_never_overwritten() -> None:
    async def go() -> None:
        bus, kv = _bus()
        ours, theirs = StatusStore(bus), StatusStore(bus)  # type: ignore[arg-type]
        await ours.update("j", lambda cur: _status("j") if cur is None else None)
        await theirs.update("j", _set(queue_position=3, state=JobState.QUEUED))  # another process
        gets = kv.gets
        stored = await ours.update("j", _set(progress=50.0))
        assert kv.gets == gets + 1  # the remembered revision lost its CAS: read, re-applied
        assert stored is not None and stored.queue_position == 3 and stored.progress == 50.0
        st, _ = await StatusStore(bus).get("j")  # type: ignore[arg-type]
        assert st == stored

    asyncio.run(go())


def test_no_change_on_a_remembered_value_is_checked_first() -> None:
    async def go() -> None:
        bus, _ = _bus()
        ours, theirs = StatusStore(bus), StatusStore(bus)  # type: ignore[arg-type]
        await ours.update("j", lambda cur: _status("j", JobState.RUNNING) if cur is None else None)
        await theirs.update("j", _set(state=JobState.CANCELLED))  # cancelled elsewhere
        seen: list[JobState] = []

        def only_if_preprocessing(cur: JobStatus | None) -> JobStatus | None:
            assert cur is not None
            seen.append(cur.state)
            return None  # "nothing to do": must not be answered from the stale RUNNING

        got = await ours.update("j", only_if_preprocessing)
        assert got is not None and got.state == JobState.CANCELLED
        assert seen == [JobState.RUNNING]  # called once on the remembered value; the re-read is terminal

    asyncio.run(go())


def test_a_deleted_status_is_forgotten() -> None:
    async def go() -> None:
        bus, kv = _bus()
        store = StatusStore(bus)  # type: ignore[arg-type]
        await store.update("j", lambda cur: _status("j") if cur is None else None)
        await kv.delete("j")
        created = await store.update("j", lambda cur: _status("j", JobState.QUEUED) if cur is None else None)
        assert created is not None and created.state == JobState.QUEUED  # stale CAS -> re-read: gone -> create
        assert (await store.get("j"))[0] == created

    asyncio.run(go())


def test_assume_new_creates_without_a_read_and_never_overwrites() -> None:
    async def go() -> None:
        bus, kv = _bus()
        store = StatusStore(bus)  # type: ignore[arg-type]
        created = await store.update("j", lambda cur: _status("j") if cur is None else None, assume_new=True)
        assert created is not None and kv.gets == 0  # one create, no read
        other = StatusStore(bus)  # type: ignore[arg-type]  # another process, the same job id
        seen: list[JobStatus | None] = []

        def claim(cur: JobStatus | None) -> JobStatus | None:
            seen.append(cur)
            return _status("j", JobState.QUEUED) if cur is None else None

        got = await other.update("j", claim, assume_new=True)
        assert seen == [None, created]  # the create failed, the real status was read and decided on
        assert got == created and (await store.get("j"))[0] == created

    asyncio.run(go())


def test_a_remembered_terminal_state_is_read_again() -> None:
    async def go() -> None:
        bus, kv = _bus()
        store = StatusStore(bus)  # type: ignore[arg-type]
        await store.update("j", lambda cur: _status("j", JobState.SUCCEEDED) if cur is None else None)
        gets = kv.gets
        assert (await store.update("j", _set(progress=1.0))).state == JobState.SUCCEEDED  # type: ignore[union-attr]
        assert kv.gets == gets + 1  # confirmed by KV, not answered from memory
        await kv.delete("j")  # e.g. the job expired or was deleted, and its id is used again
        again = await store.update("j", lambda cur: _status("j") if cur is None else None)
        assert again is not None and again.state == JobState.PREPROCESSING

    asyncio.run(go())


def test_record_then_takes_one_write_and_publishes_in_order() -> None:
    from runtime.jobs import JobTracker
    from schemas.messages import AcceptedData, EventType, JobEvent, PreprocessedData
    from schemas.names import events_subject

    async def go() -> None:
        bus, kv = _bus()
        tracker = JobTracker(bus)  # type: ignore[arg-type]
        accepted = JobEvent.build("j", EventType.ACCEPTED, AcceptedData(model="tiny-wan", task="t2v", width=64,
                                                                        height=64, num_frames=9, fps=16, steps=2,
                                                                        seed=1))
        pre = JobEvent.build("j", EventType.PREPROCESSED, PreprocessedData())
        writes = kv._rev
        stored = await tracker.record(accepted, then=[pre], model="tiny-wan", task="t2v")
        assert kv._rev == writes + 1  # one status write for both changes
        assert stored is not None and stored.state == JobState.QUEUED and stored.model == "tiny-wan"
        assert [e.type for e in bus.payloads(events_subject("j"), JobEvent)] == [EventType.ACCEPTED,
                                                                               EventType.PREPROCESSED]
        await tracker.record(JobEvent.build("j", EventType.CANCELLED, {}))
        late = JobEvent.build("j", EventType.PREPROCESSED, PreprocessedData(), "again")
        assert (await tracker.record(accepted, then=[late])).state == JobState.CANCELLED  # type: ignore[union-attr]
        assert [e.type for e in bus.payloads(events_subject("j"), JobEvent)][-1] == EventType.CANCELLED  # none after

    asyncio.run(go())
