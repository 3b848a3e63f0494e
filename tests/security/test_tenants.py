"""Tenants the broker vouches for (issue 13 item 1-2): two tenant accounts on the real nats-server.

Each tenant connects with its own credentials (NATS account), publishes the public subjects
unchanged and sees only its own jobs; the stage users and the tenants are refused everything
outside their lists. Only preprocess, cancel and the status responder run (jobs stop at queued).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from runtime import accounts
from runtime.bus import Bus
from runtime.settings import Settings
from schemas import names
from tests.stack import start_functions, stop, wait_for_log

pytestmark = pytest.mark.integration


def _host(stack: Settings) -> str:
    return stack.nats_url.split("//", 1)[1]


@pytest.fixture(scope="module")
def tenants(stack: Settings) -> dict[str, str]:  # noqa: F811
    # created before nats-server started (tests/security/conftest.py): a reload does not wire a
    # new account's service imports into running streams (nats-server 2.15), see README
    creds = accounts.load_credentials(Path(stack.data_dir))
    assert {"acme", "bob"} <= creds.tenants.keys()
    return {t: e["nats_password"] for t, e in creds.tenants.items()}


@pytest.fixture(scope="module")
def stages(stack: Settings, tenants: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:  # noqa: F811
    log = Path(stack.data_dir) / "tenants-functions.log"
    proc = start_functions(stack, log, ["preprocess", "cancel", "status"])
    try:
        wait_for_log(log, '"status_responder_started"', 120, proc)
        yield proc
    finally:
        stop(proc)


async def connect(stack: Settings, user: str, password: str, errors: list[str] | None = None) -> nats.NATS:
    async def on_error(e: Exception) -> None:
        if errors is not None:
            errors.append(str(e))

    return await nats.connect(f"nats://{user}:{password}@{_host(stack)}", error_cb=on_error,
                              max_reconnect_attempts=0, allow_reconnect=False)


@pytest.fixture
async def clients(stack: Settings, tenants: dict[str, str], stages) -> AsyncIterator[dict[str, nats.NATS]]:
    out = {t: await connect(stack, t, pw) for t, pw in tenants.items()}
    try:
        yield out
    finally:
        for nc in out.values():
            await nc.close()


def refused(errors: list[str], subject: str) -> bool:
    """The server reported a permissions violation for ``subject`` (nats-py lower-cases it)."""
    return any("permissions violation" in e.lower() and subject.lower() in e.lower() for e in errors)


def job(job_id: str, **extra: object) -> bytes:
    return json.dumps({"job_id": job_id, "task": "t2v", "model": "tiny-wan", "prompt": "p", "num_frames": 9,
                       "width": 64, "height": 64, "steps": 1, **extra}).encode()


async def status_of(nc: nats.NATS, job_id: str) -> dict:
    return json.loads((await nc.request(f"videogen.status.{job_id}", b"", timeout=5)).data)


async def wait_state(nc: nats.NATS, job_id: str, states: set[str], timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        st = await status_of(nc, job_id)
        if st.get("state") in states or time.monotonic() > deadline:
            return st
        await asyncio.sleep(0.3)


async def test_anonymous_connections_are_refused(stack: Settings) -> None:  # noqa: F811
    with pytest.raises(nats.errors.Error):
        nc = await nats.connect(f"nats://{_host(stack)}", max_reconnect_attempts=0, allow_reconnect=False,
                                connect_timeout=2)
        await nc.close()


async def test_same_job_id_two_tenants_isolated(stack: Settings, clients, bus: Bus) -> None:  # noqa: F811
    acme, bob = clients["acme"], clients["bob"]
    seen: dict[str, list[dict]] = {"acme": [], "bob": []}
    for name, nc in clients.items():
        async def on_event(msg, _n=name) -> None:
            seen[_n].append(json.loads(msg.data))
        await nc.subscribe("videogen.events.>", cb=on_event)
        await nc.flush()
    # both use job-1 (ids are per tenant); JetStream publishes through the service import
    ack_a = await acme.jetstream().publish("videogen.jobs.submit", job("job-1", prompt="acme's"))
    ack_b = await bob.jetstream().publish("videogen.jobs.submit", job("job-1", prompt="bob's"))
    assert ack_a.stream == ack_b.stream == names.STREAM_JOBS and not ack_b.duplicate
    await bob.jetstream().publish("videogen.jobs.submit", job("bob-only"))
    assert (await wait_state(acme, "job-1", {"queued"}))["state"] == "queued"
    assert (await wait_state(bob, "job-1", {"queued"}))["state"] == "queued"
    # the service side sees the tenant in the subject and the key; each tenant sees its own job id
    st_a, st_b = await status_of(acme, "job-1"), await status_of(bob, "job-1")
    assert st_a["job_id"] == st_b["job_id"] == "job-1"
    kv = await bus.kv()
    assert (await kv.get("acme.job-1")).value and (await kv.get("bob.job-1")).value
    with pytest.raises(nats.errors.Error):
        await kv.get("job-1")  # the default tenant has no job-1
    # read another tenant's job: not found
    assert await status_of(acme, "bob-only") == {"error": "not_found"}
    assert (await status_of(bob, "bob-only"))["state"] in {"queued", "preprocessing"}
    # events: each tenant got its own job's events under the public name, none of the other's
    await asyncio.sleep(0.5)
    ids = {t: {e["id"] for e in evs} for t, evs in seen.items()}
    assert ids["acme"] and ids["bob"] and not ids["acme"] & ids["bob"]
    assert all(e["job_id"] == "job-1" for e in seen["acme"])
    assert "bob-only" in {e["job_id"] for e in seen["bob"]}
    stored = [json.loads(m.data)["id"] async for m in _events(bus, "acme.job-1")]
    assert set(stored) == ids["acme"]
    history = json.loads((await acme.request("videogen.history.job-1", b"", timeout=5)).data)
    assert [e["id"] for e in history] == stored
    assert json.loads((await acme.request("videogen.history.bob-only", b"", timeout=5)).data) == []
    # cancel: acme's job-1 only
    await acme.jetstream().publish("videogen.jobs.cancel", json.dumps({"job_id": "job-1"}).encode())
    assert (await wait_state(acme, "job-1", {"cancelled"}))["state"] == "cancelled"
    await acme.jetstream().publish("videogen.jobs.cancel", json.dumps({"job_id": "bob-only"}).encode())
    await asyncio.sleep(2.0)
    assert (await status_of(bob, "job-1"))["state"] == "queued"
    assert (await status_of(bob, "bob-only"))["state"] == "queued"


async def _events(bus: Bus, key: str):
    from runtime.client import stream_messages

    async for m in stream_messages(bus, names.STREAM_EVENTS, names.events_subject(key)):
        yield m


async def test_tenant_is_refused_internal_subjects_and_management(stack: Settings, tenants, stages,
                                                                  bus: Bus) -> None:  # noqa: F811
    errors: list[str] = []
    nc = await connect(stack, "acme", tenants["acme"], errors)
    try:
        forbidden = ["videogen.events.job-1", "videogen.t.acme.events.job-1", "videogen.t.bob.jobs.submit",
                     "videogen.webhooks.replay.job-1", "videogen.t.bob.webhooks.replay.job-1",
                     names.SUBJECT_WORK_PLAN, "$JS.API.STREAM.DELETE.VIDEOGEN_JOBS", f"$KV.{names.KV_JOBS}.job-1"]
        for subject in forbidden:
            await nc.publish(subject, b"{}")
        await nc.flush()
        await asyncio.sleep(0.5)
        for subject in forbidden:
            assert refused(errors, subject), (subject, "\n".join(errors))
        # no JetStream for a tenant account at all: no stream info, no KV, no consumers
        with pytest.raises(nats.errors.Error):
            await nc.jetstream().stream_info(names.STREAM_EVENTS)
        # other tenants' events can not even be subscribed to
        errors.clear()
        await nc.subscribe("videogen.t.bob.events.>")
        await nc.flush()
        await asyncio.sleep(0.3)
        assert any("permissions violation" in e.lower() for e in errors), errors
    finally:
        await nc.close()
    info = await bus.js.stream_info(names.STREAM_JOBS)
    assert info.config.name == names.STREAM_JOBS  # still there


async def test_s3_input_from_another_tenants_prefix_is_rejected(stack: Settings, clients) -> None:  # noqa: F811
    acme = clients["acme"]
    bucket = stack.bucket
    cases = {"steal-bob": f"s3://{bucket}/tenants/bob/uploads/x.png",
             "steal-default": f"s3://{bucket}/uploads/x.png",
             "steal-job": f"s3://{bucket}/jobs/job-1/frames/reference.png",
             "dotdot": f"s3://{bucket}/tenants/acme/uploads/../../bob/uploads/x.png"}
    for job_id, uri in cases.items():
        await acme.jetstream().publish("videogen.jobs.submit", job(job_id, task="i2v", model="tiny-wan-i2v", image=uri))
    for job_id in cases:
        st = await wait_state(acme, job_id, {"failed"})
        assert st["state"] == "failed", (job_id, st)
        assert st["error"]["code"] == "input_forbidden", (job_id, st)


async def test_stage_user_is_refused_subjects_outside_its_list(stack: Settings, tenants) -> None:  # noqa: F811
    creds = accounts.load_credentials(Path(stack.data_dir))
    errors: list[str] = []
    nc = await connect(stack, "stage-planner", creds.stage_passwords["planner"], errors)
    try:
        allowed = names.dlq_subject("planner")
        outside = [names.webhook_replay_subject("job-1"), names.SUBJECT_SUBMIT, names.dlq_subject("stitch"),
                   "$JS.API.STREAM.DELETE.VIDEOGEN_JOBS", f"$JS.API.CONSUMER.MSG.NEXT.{names.STREAM_WORK}.stitch"]
        for subject in [allowed, *outside]:
            await nc.publish(subject, b"{}")
        await nc.flush()
        await asyncio.sleep(0.5)
        for subject in outside:
            assert refused(errors, subject), (subject, "\n".join(errors))
        assert not any(allowed in e for e in errors), errors
        perms = accounts.stage_permissions("planner")["publish"]["allow"]
        assert allowed in perms and names.SUBJECT_SUBMIT not in perms
    finally:
        await nc.close()
