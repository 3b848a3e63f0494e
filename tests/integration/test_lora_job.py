"""A LoRA adapter applied for one job only, through the bus: output changes with it, and the next
job without it is bit-identical to a run before it."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from runtime.bus import Bus
from runtime.client import follow
from runtime.settings import Settings
from runtime.storage import Storage
from runtime.video import decode_mp4
from schemas.messages import EventType, JobRequest, LoraRef
from schemas.names import SUBJECT_SUBMIT
from tests.unit.test_lora import make_lora_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def _frames(bus: Bus, storage: Storage, job: JobRequest) -> np.ndarray:
    await bus.publish(SUBJECT_SUBMIT, job.model_dump_json(exclude_none=True).encode(), msg_id=job.job_id)
    async with asyncio.timeout(240):
        events = [e async for e in follow(bus, job.job_id)]
    assert events[-1].type == EventType.SUCCEEDED, events[-1]
    return decode_mp4(await storage.get_bytes(events[-1].data.output.key))


async def test_lora_for_one_job_only(stack: Settings, workers, bus: Bus, storage: Storage, tmp_path) -> None:
    path = make_lora_file(tmp_path / "lora")
    await storage.put_bytes("uploads/style.safetensors", path.read_bytes())
    common = dict(prompt="same seed", num_frames=9, steps=2, width=64, height=64, seed=42)
    before = await _frames(bus, storage, JobRequest(job_id="lora-before", **common))
    styled = await _frames(bus, storage, JobRequest(
        job_id="lora-on", loras=(LoraRef(source=f"s3://{stack.bucket}/uploads/style.safetensors", scale=1.0),),
        **common))
    after = await _frames(bus, storage, JobRequest(job_id="lora-after", **common))
    assert not np.array_equal(before, styled)
    assert np.array_equal(before, after)
