"""A forged replay is never signed and delivered; only what VIDEOGEN_EVENTS holds is (real broker)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from runtime.bus import Bus
from runtime.client import find_event
from runtime.settings import Settings
from schemas.messages import EventType, JobEvent
from schemas.names import SUBJECT_SUBMIT, webhook_replay_subject
from tests.stack import poll_until, start_functions, stop, wait_for_log

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def dispatchers(stack: Settings) -> Iterator[subprocess.Popen[bytes]]:
    log = Path(stack.data_dir) / "security-webhooks.log"
    proc = start_functions(stack, log, ["preprocess", "webhook", "webhook-replay"])
    try:
        wait_for_log(log, '"consumer_started"', 120, proc)
        yield proc
    finally:
        stop(proc)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[bytes]]]:
    bodies: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/hook", bodies
    finally:
        await runner.cleanup()


async def _until(cond, timeout_s: float = 30.0) -> None:
    await poll_until(cond, timeout_s=timeout_s, interval_s=0.1)


async def test_forged_replay_is_not_delivered(stack, dispatchers, bus: Bus, receiver) -> None:
    url, bodies = receiver
    job_id = "hook-forge-1"
    req = {"job_id": job_id, "prompt": "x", "steps": 1, "num_frames": 9,
           "webhook": {"url": url, "events": ["job.accepted", "job.succeeded"]}}
    await bus.publish(SUBJECT_SUBMIT, json.dumps(req).encode(), msg_id=job_id)
    await _until(lambda: len(bodies) == 1)
    accepted = JobEvent.model_validate_json(bodies[0])
    assert accepted.type == EventType.ACCEPTED
    stored, _ = await find_event(bus, accepted.id, job_id)  # type: ignore[misc]
    assert bodies[0] == stored

    # 1. an invented job.succeeded pointing at the attacker's download, on the replay subject
    #    (raw JSON: an attacker is not bound by our models)
    forged = {"id": JobEvent.make_id(job_id, EventType.SUCCEEDED, "forged"), "type": "job.succeeded",
              "job_id": job_id, "time": accepted.time.isoformat(), "data": {"url": "https://evil.example/steal"}}
    await bus.publish(webhook_replay_subject(job_id), json.dumps(forged).encode(), msg_id="forge-1")
    # 2. the real event's id with altered content
    altered_doc = json.loads(stored)
    altered_doc["data"]["model"] = "evil.example"
    altered = json.dumps(altered_doc).encode()
    await bus.publish(webhook_replay_subject(job_id), altered, msg_id="forge-2")
    # 3. a replay naming another job's subject than its body says
    await bus.publish(webhook_replay_subject("someone-else"), altered, msg_id="forge-3")

    await _until(lambda: len(bodies) >= 2)
    await asyncio.sleep(3.0)  # time for any further (wrong) delivery to arrive
    assert bodies == [stored, stored]  # the replay re-sent the stored bytes; nothing forged was sent
    assert not any(b"evil.example" in b for b in bodies)
