"""Bad input never changes someone else's job (issue 13 item 6), on the real broker and S3."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from runtime.bus import Bus
from runtime.jobs import StatusStore
from runtime.storage import Storage
from schemas.messages import DLQEntry, JobState
from schemas.names import STREAM_DLQ, SUBJECT_SUBMIT, dlq_subject, request_key

pytestmark = [pytest.mark.integration]


async def _dlq_for(bus: Bus, payload: bytes, timeout_s: float = 30.0) -> DLQEntry:
    """The preprocess DLQ entry whose payload is exactly ``payload`` (waits for it)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        info = await bus.js.stream_info(STREAM_DLQ)
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                m = await bus.js.get_msg(STREAM_DLQ, seq)
            except Exception:  # noqa: BLE001, S112 - a gap in the stream (deleted or purged)
                continue
            if m.subject != dlq_subject("preprocess"):
                continue
            entry = DLQEntry.model_validate_json(m.data)
            if base64.b64decode(entry.payload_b64) == payload:
                return entry
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no DLQ entry for {payload[:80]!r}")
        await asyncio.sleep(0.2)


async def _state(bus: Bus, job_id: str, want: JobState, timeout_s: float = 60.0) -> None:
    status = StatusStore(bus)
    async with asyncio.timeout(timeout_s):
        while True:
            cur, _ = await status.get(job_id)
            if cur is not None and cur.state == want:
                return
            await asyncio.sleep(0.1)


async def _submit(bus: Bus, body: dict | bytes, msg_id: str) -> bytes:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    await bus.publish(SUBJECT_SUBMIT, raw, msg_id=msg_id)
    return raw


async def test_resubmission_with_typo_never_fails_the_existing_job(stack, preprocess, bus: Bus,
                                                                   storage: Storage) -> None:
    original = await _submit(bus, {"job_id": "victim-1", "prompt": "mine", "steps": 1, "num_frames": 9}, "v1")
    await _state(bus, "victim-1", JobState.QUEUED)  # no planner runs here: the job waits, queued
    before, rev = await StatusStore(bus).get("victim-1")

    typo = await _submit(bus, {"job_id": "victim-1", "typo_field": 1}, "v1-typo")
    entry = await _dlq_for(bus, typo)
    assert entry.code == "duplicate_job"
    assert "victim-1 already exists" in entry.reason and "invalid_request" in entry.reason
    after, rev_after = await StatusStore(bus).get("victim-1")
    assert after == before and rev_after == rev  # not one write to the victim's status

    # a different, valid request with the same id does not replace the stored request either
    other = await _submit(bus, {"job_id": "victim-1", "prompt": "attacker's", "steps": 1}, "v1-other")
    entry = await _dlq_for(bus, other)
    assert entry.code == "duplicate_job" and "queued" in entry.reason
    assert await storage.get_bytes(request_key("victim-1")) == original
    assert (await StatusStore(bus).get("victim-1"))[1] == rev


async def test_identical_resubmission_is_a_quiet_no_op(stack, preprocess, bus: Bus) -> None:
    body = {"job_id": "same-twice", "prompt": "x", "steps": 1, "num_frames": 9}
    await _submit(bus, body, "same-1")
    await _state(bus, "same-twice", JobState.QUEUED)
    _, rev = await StatusStore(bus).get("same-twice")
    raw = await _submit(bus, body, "same-2")  # new msg id: not de-duplicated by the broker
    await asyncio.sleep(2.0)
    assert (await StatusStore(bus).get("same-twice"))[1] == rev
    with pytest.raises(AssertionError):
        await _dlq_for(bus, raw, timeout_s=0.5)


async def test_deeply_nested_json_is_dead_lettered_and_the_next_job_runs(stack, preprocess, bus: Bus) -> None:
    nested = b'{"job_id": "deep-1", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    await _submit(bus, nested, "deep-1")
    entry = await _dlq_for(bus, nested)
    assert entry.code == "invalid_json" and "nested" in entry.reason
    assert entry.num_delivered == 1  # refused at once, not retried into the ground
    await _submit(bus, {"job_id": "after-deep", "prompt": "x", "steps": 1, "num_frames": 9}, "after-deep")
    await _state(bus, "after-deep", JobState.QUEUED)


@pytest.mark.parametrize(("field", "value"), [("num_frames", "9"), ("num_frames", True), ("steps", 1.0)])
async def test_public_contract_is_strict(stack, preprocess, bus: Bus, field: str, value: object) -> None:
    job_id = f"strict-{field}-{type(value).__name__}"
    await _submit(bus, {"job_id": job_id, "prompt": "x", field: value}, job_id)
    await _state(bus, job_id, JobState.FAILED)
    status, _ = await StatusStore(bus).get(job_id)
    assert status is not None and status.error is not None
    assert status.error.code == "invalid_request" and field in status.error.message


async def test_over_cost_job_rejected_over_limit(stack, preprocess, bus: Bus) -> None:
    job_id = "twenty-gpu-days"
    await _submit(bus, {"job_id": job_id, "prompt": "x", "model": "wan2.1-t2v-14b", "num_frames": 5000,
                        "width": 1920, "height": 1920, "steps": 100}, job_id)
    await _state(bus, job_id, JobState.FAILED)
    status, _ = await StatusStore(bus).get(job_id)
    assert status is not None and status.error is not None
    assert status.error.code == "over_limit" and "18,432,000,000" in status.error.message
