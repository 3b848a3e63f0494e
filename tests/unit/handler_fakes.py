"""Shared bits of the handler unit tests: a job, its status, and events read back from a FakeBus."""

from __future__ import annotations

from runtime.ports import Ports
from runtime.testing.fakes import FakeBus, FakeStorage
from schemas.messages import EventType, JobEvent, JobStatus, ResolvedJob, StartedData, Task
from schemas.names import events_subject

MODEL = "tiny-wan"


def job(job_id: str = "job-1", num_frames: int = 9, *, max_segment_frames: int | None = None) -> ResolvedJob:
    return ResolvedJob(job_id=job_id, task=Task.T2V, model=MODEL, prompt="p", negative_prompt="", width=32,
                       height=32, num_frames=num_frames, fps=8, steps=2, guidance_scale=1.0, seed=7,
                       presign_ttl_s=3600, max_segment_frames=max_segment_frames)


def bus_of(ports: Ports) -> FakeBus:
    assert isinstance(ports.bus, FakeBus)
    return ports.bus


def storage_of(ports: Ports) -> FakeStorage:
    assert isinstance(ports.storage, FakeStorage)
    return ports.storage


def events(ports: Ports, job_id: str) -> list[JobEvent]:
    return bus_of(ports).payloads(events_subject(job_id), JobEvent)


async def status(ports: Ports, job_id: str) -> JobStatus | None:
    st, _ = await ports.tracker.status.get(job_id)
    return st


async def start(ports: Ports, job_id: str, *, model: str = MODEL, event: EventType = EventType.STARTED) -> None:
    """Put the job in a state (``running`` by default, ``queued`` with PREPROCESSED)."""
    data = StartedData(segment=0, runner="r") if event == EventType.STARTED else None
    await ports.tracker.record(JobEvent.build(job_id, event, data), model=model)


async def cancel(ports: Ports, job_id: str) -> None:
    await ports.tracker.record(JobEvent.build(job_id, EventType.CANCELLED, {"reason": "test"}))
