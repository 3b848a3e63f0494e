"""Bad input at the door: job.rejected with a code, DLQ when no job_id, next job still fine."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from runtime.bus import Bus
from runtime.client import follow
from schemas.messages import DLQEntry, EventType, JobEvent
from schemas.names import STREAM_DLQ, SUBJECT_SUBMIT, dlq_subject

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def _terminal(bus: Bus, job_id: str, timeout_s: float = 120) -> JobEvent:
    async with asyncio.timeout(timeout_s):
        async for e in follow(bus, job_id):
            last = e
    return last


async def _dlq_entries(bus: Bus) -> list[DLQEntry]:
    info = await bus.js.stream_info(STREAM_DLQ)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            m = await bus.js.get_msg(STREAM_DLQ, seq)
        except Exception:
            continue
        if m.subject == dlq_subject("preprocess"):
            out.append(DLQEntry.model_validate_json(m.data))
    return out


@pytest.mark.parametrize(
    ("job", "code"),
    [
        ({"job_id": "bad-task", "task": "t2i", "prompt": "x"}, "unknown_task"),
        ({"job_id": "bad-model", "model": "sdxl", "prompt": "x"}, "unknown_model"),
        ({"job_id": "bad-frames", "prompt": "x", "num_frames": 100000}, "out_of_range"),
        ({"job_id": "bad-width", "prompt": "x", "width": 50}, "out_of_range"),
        ({"job_id": "bad-hook", "prompt": "x", "webhook": {"url": "http://169.254.169.254/latest"}},
         "webhook_url_forbidden"),
    ],
)
async def test_rejected_with_code(stack, workers, bus: Bus, job: dict, code: str) -> None:
    await bus.publish(SUBJECT_SUBMIT, json.dumps(job).encode(), msg_id=job["job_id"])
    last = await _terminal(bus, job["job_id"])
    assert last.type == EventType.REJECTED
    assert last.data.code == code and last.data.message


async def test_unreadable_messages_go_to_dlq_and_next_job_succeeds(stack, workers, bus: Bus) -> None:
    await bus.publish(SUBJECT_SUBMIT, b"{this is not json", msg_id="garbage-1")
    await bus.publish(SUBJECT_SUBMIT, json.dumps({"job_id": "no spaces allowed", "prompt": "x"}).encode(),
                      msg_id="garbage-2")
    await bus.publish(SUBJECT_SUBMIT, json.dumps({"job_id": "after-bad", "prompt": "ok", "steps": 1}).encode(),
                      msg_id="after-bad")
    last = await _terminal(bus, "after-bad", 240)
    assert last.type == EventType.SUCCEEDED
    entries = await _dlq_entries(bus)
    payloads = {base64.b64decode(e.payload_b64) for e in entries}
    assert b"{this is not json" in payloads
    codes = {e.code for e in entries}
    assert {"invalid_json", "invalid_job_id"} <= codes
    assert all(e.reason and e.stage == "preprocess" for e in entries)
