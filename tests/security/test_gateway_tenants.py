"""The HTTP gateway files an API key's jobs in the key's tenant namespace (issue 13): a video created
over HTTP by tenant ``acme`` is the job ``acme``'s NATS account sees (status responder, events,
history, cancel), and neither ``default`` nor ``bob`` can see it, over NATS or HTTP.

Real nats-server and S3; preprocess, cancel and the status responder run (jobs stop at queued).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from runtime import accounts
from runtime.bus import Bus
from runtime.settings import Settings
from runtime.storage import Storage
from schemas import names
from tests.gateway_server import make_key, running_gateway
from tests.security.test_tenants import connect, status_of, wait_state
from tests.stack import start_functions, stop, wait_for_log

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stages(stack: Settings) -> Iterator[subprocess.Popen[bytes]]:  # noqa: F811
    log = Path(stack.data_dir) / "gateway-tenants-functions.log"
    proc = start_functions(stack, log, ["preprocess", "cancel", "status"])
    try:
        wait_for_log(log, '"status_responder_started"', 120, proc)
        yield proc
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def gateway(stack: Settings, stages) -> Iterator[str]:  # noqa: F811
    with running_gateway(stack) as url:
        yield url


@pytest.fixture(scope="module")
def keys(stack: Settings) -> dict[str, str]:  # noqa: F811
    return {t: make_key(stack, t) for t in ("acme", "bob", "default")}


async def test_http_job_of_acme_is_acmes_nats_job_and_nobody_elses(stack: Settings, gateway: str, keys, bus: Bus,
                                                                    storage: Storage) -> None:  # noqa: F811
    creds = accounts.load_credentials(Path(stack.data_dir))
    acme = await connect(stack, "acme", creds.tenants["acme"]["nats_password"])
    bob = await connect(stack, "bob", creds.tenants["bob"]["nats_password"])
    default = await connect(stack, "default", creds.default_password)
    seen: list[dict] = []
    try:
        async def on_event(msg) -> None:
            seen.append(json.loads(msg.data))
        await acme.subscribe("videogen.events.>", cb=on_event)
        await acme.flush()
        async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
            def auth(t: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {keys[t]}"}

            resp = await http.post("/v1/videos", json={"prompt": "acme over http", "num_frames": 9, "steps": 1},
                                   headers=auth("acme"))
            assert resp.status_code == 200, resp.text
            vid = resp.json()["id"]
            # acme's NATS client sees the job under the same id: status responder, events, history
            st = await wait_state(acme, vid, {"queued"})
            assert st["state"] == "queued" and st["job_id"] == vid, st
            kv = await bus.kv()
            assert (await kv.get(names.job_key("acme", vid))).value
            assert await storage.get_bytes(names.request_key(names.job_key("acme", vid)))
            assert (await bus.js.stream_info(names.STREAM_JOBS, subjects_filter=names.submit_subject("acme"))
                    ).state.subjects  # published on acme's internal subject, not the public one
            history = json.loads((await acme.request(f"videogen.history.{vid}", b"", timeout=5)).data)
            assert [e["type"] for e in history][:2] == ["job.accepted", "job.preprocessed"]
            await asyncio.sleep(0.3)
            assert {e["id"] for e in seen} >= {e["id"] for e in history} and all(e["job_id"] == vid for e in seen)
            # nobody else: default and bob over NATS ...
            assert await status_of(default, vid) == {"error": "not_found"}
            assert await status_of(bob, vid) == {"error": "not_found"}
            assert json.loads((await bob.request(f"videogen.history.{vid}", b"", timeout=5)).data) == []
            # ... and over HTTP
            for t in ("bob", "default"):
                assert (await http.get(f"/v1/videos/{vid}", headers=auth(t))).status_code == 404
                assert vid not in [v["id"] for v in (await http.get("/v1/videos", headers=auth(t))).json()["data"]]
            # a dotted id can never address another tenant's key from default's namespace
            assert (await http.get(f"/v1/videos/acme.{vid}", headers=auth("default"))).status_code == 404
            listed = (await http.get("/v1/videos", headers=auth("acme"))).json()["data"]
            assert [v["id"] for v in listed] == [vid]
            # acme cancels over NATS; the gateway shows acme the same job cancelled
            await acme.jetstream().publish("videogen.jobs.cancel", json.dumps({"job_id": vid}).encode())
            assert (await wait_state(acme, vid, {"cancelled"}))["state"] == "cancelled"
            got = (await http.get(f"/v1/videos/{vid}", headers=auth("acme"))).json()
            assert got["state"] == "cancelled" and got["status"] == "failed"
            # a job acme submitted over NATS is acme's over HTTP too
            body = {"job_id": "nats-made", "prompt": "p", "num_frames": 9, "width": 64, "height": 64, "steps": 1}
            await acme.jetstream().publish("videogen.jobs.submit", json.dumps(body).encode())
            await wait_state(acme, "nats-made", {"queued"})
            assert (await http.get("/v1/videos/nats-made", headers=auth("acme"))).json()["state"] == "queued"
            assert (await http.get("/v1/videos/nats-made", headers=auth("default"))).status_code == 404
            # cancelled over HTTP: acme's NATS client sees it
            assert (await http.post("/v1/videos/nats-made/cancel", headers=auth("acme"))).status_code == 200
            assert (await wait_state(acme, "nats-made", {"cancelled"}))["state"] == "cancelled"
    finally:
        for nc in (acme, bob, default):
            await nc.close()
