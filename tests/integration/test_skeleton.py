"""Walking skeleton against real servers: plain nats-py publish -> MP4 in S3, presigned URL,
verified webhook, KV status, idempotent resubmission."""

from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.error
import urllib.request

import pytest
from standardwebhooks.webhooks import Webhook

from runtime.bus import Bus
from runtime.client import follow, status
from runtime.settings import Settings
from runtime.storage import Storage
from runtime.testing.webhook_receiver import WebhookReceiver
from runtime.video import probe_mp4 as probe
from schemas.messages import EventType, JobEvent, JobState
from schemas.names import SUBJECT_SUBMIT, output_key

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def events_until_terminal(bus: Bus, job_id: str, timeout_s: float = 240) -> list[JobEvent]:
    out: list[JobEvent] = []
    async with asyncio.timeout(timeout_s):
        async for e in follow(bus, job_id):
            out.append(e)
    return out


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


async def test_job_to_mp4_with_webhook_and_presigned_url(stack: Settings, workers, bus: Bus, storage: Storage) -> None:
    secret = stack.webhook_secret.get_secret_value().split()[0]
    async with WebhookReceiver(secret) as receiver:
        job = {
            "job_id": "skeleton-1", "task": "t2v", "model": "tiny-wan", "prompt": "a red fox in snow",
            "width": 64, "height": 48, "num_frames": 13, "fps": 12, "steps": 2, "seed": 1,
            "webhook": {"url": receiver.url + "/hook", "events": ["job.accepted", "job.succeeded"]},
        }
        body = json.dumps(job).encode()
        # a plain nats-py publish, as a client would; published twice with the same Nats-Msg-Id
        ack1 = await bus.nc.jetstream().publish(SUBJECT_SUBMIT, body, headers={"Nats-Msg-Id": "skeleton-1"})
        ack2 = await bus.nc.jetstream().publish(SUBJECT_SUBMIT, body, headers={"Nats-Msg-Id": "skeleton-1"})
        assert ack2.duplicate and ack2.seq == ack1.seq

        events = await events_until_terminal(bus, "skeleton-1")
        types = [e.type for e in events]
        assert types[0] == EventType.ACCEPTED and types[-1] == EventType.SUCCEEDED, types
        assert EventType.STARTED in types and EventType.PROGRESS in types
        assert types.count(EventType.SUCCEEDED) == 1
        assert len({e.id for e in events}) == len(events)  # ids unique
        done = events[-1].data
        out = done.output
        assert out.key == output_key("skeleton-1")

        # the object itself, decoded (not just HEAD)
        data = await storage.get_bytes(out.key)
        info = probe(data)
        assert (info.frames, info.width, info.height) == (13, 64, 48)
        assert info.fps == pytest.approx(12)
        assert hashlib.sha256(data).hexdigest() == out.sha256 and len(data) == out.size

        # presigned URL: downloads without credentials; a tampered one is refused
        code, blob = await asyncio.to_thread(_get, done.url)
        assert code == 200 and blob == data
        tampered = done.url.replace("output.mp4", "output.mp5")
        assert (await asyncio.to_thread(_get, tampered))[0] == 403
        sig_tampered = done.url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        assert (await asyncio.to_thread(_get, sig_tampered))[0] == 403

        # KV status
        st = await status(bus, "skeleton-1")
        assert st is not None and st.state == JobState.SUCCEEDED and st.progress == 100
        assert st.output is not None and st.output.sha256 == out.sha256

        # webhooks: signed per Standard Webhooks, verified with the reference library
        await receiver.wait_for(2, timeout_s=30)
        wh = Webhook(secret)
        got = []
        for d in receiver.deliveries:
            payload = wh.verify(d.body, dict(d.headers))
            got.append(payload["type"])
            assert d.headers["webhook-id"] == payload["id"]
        assert sorted(got) == ["job.accepted", "job.succeeded"]

    # resubmission after the job finished is a no-op: still exactly one success, one segment
    await bus.publish(SUBJECT_SUBMIT, body, msg_id="skeleton-1-again")
    await asyncio.sleep(1.5)
    again = [e async for e in _drain(bus, "skeleton-1")]
    assert [e.type for e in again].count(EventType.SUCCEEDED) == 1
    # one window that is the whole output: the runner stored output.mp4 itself (no segment objects)
    keys = sorted(k.removeprefix("jobs/skeleton-1/") for k in await storage.list_keys("jobs/skeleton-1/"))
    assert not [k for k in keys if k.startswith("segments/")], keys
    assert {"output.mp4", "plan.json", "thumbnail.jpg", "spritesheet.jpg"} <= set(keys), keys
    assert "output.tail.npy" not in keys  # contract v1.7: an extension decodes the one-window output


async def _drain(bus: Bus, job_id: str):
    try:
        async for e in follow(bus, job_id, until_terminal=False, idle_timeout_s=1.0):
            yield e
    except TimeoutError:
        return
