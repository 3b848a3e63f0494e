"""Per-tenant quotas (issue 13 item 5) on the real nats-server: in-flight job limits and the submit
rate -> ``job.rejected`` ``quota_exceeded`` (retryable), exact under concurrency.

Two preprocess processes compete for the submissions (so the per-tenant record is really written
concurrently, by CAS), with small limits: 3 waiting jobs and 4 admissions a minute per tenant.
No planner runs: admitted jobs stay ``queued`` until the test cancels them.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from runtime import accounts
from runtime.settings import Settings
from tests.security.test_tenants import connect, job, status_of, wait_state
from tests.stack import start_functions, stop, wait_for_log

pytestmark = pytest.mark.integration

LIMITS = {"VIDEOGEN_MAX_QUEUED_JOBS_PER_TENANT": "3", "VIDEOGEN_MAX_RUNNING_JOBS_PER_TENANT": "1",
          "VIDEOGEN_SUBMIT_RATE_PER_MINUTE": "4"}


@pytest.fixture(scope="module")
def limited(stack: Settings) -> Iterator[list[subprocess.Popen[bytes]]]:  # noqa: F811
    data = Path(stack.data_dir)
    logs = [data / "quota-functions-a.log", data / "quota-functions-b.log"]
    procs = [start_functions(stack, logs[0], ["preprocess", "cancel", "status"], LIMITS),
             start_functions(stack, logs[1], ["preprocess"], LIMITS)]
    try:
        wait_for_log(logs[0], '"status_responder_started"', 120, procs[0])
        wait_for_log(logs[1], '"consumer_started"', 120, procs[1])
        yield procs
    finally:
        for p in procs:
            stop(p)


@pytest.fixture
async def clients(stack: Settings, limited) -> AsyncIterator[dict[str, nats.NATS]]:  # noqa: F811
    creds = accounts.load_credentials(Path(stack.data_dir))
    out = {t: await connect(stack, t, creds.tenants[t]["nats_password"]) for t in ("dave", "bob", "carol")}
    try:
        yield out
    finally:
        for nc in out.values():
            await nc.close()


async def _submit_all(nc: nats.NATS, ids: list[str]) -> None:
    js = nc.jetstream()
    await asyncio.gather(*(js.publish("videogen.jobs.submit", job(i)) for i in ids))


async def _settled(nc: nats.NATS, ids: list[str]) -> dict[str, dict]:
    return dict(zip(ids, await asyncio.gather(*(wait_state(nc, i, {"queued", "failed"}) for i in ids)), strict=True))


async def _cancel(nc: nats.NATS, ids: list[str]) -> None:
    for i in ids:
        await nc.jetstream().publish("videogen.jobs.cancel", json.dumps({"job_id": i}).encode())
    for i in ids:
        assert (await wait_state(nc, i, {"cancelled"}))["state"] == "cancelled", i


def _rejected(states: dict[str, dict]) -> list[str]:
    out = []
    for i, st in states.items():
        if st["state"] == "failed":
            assert st["error"]["code"] == "quota_exceeded" and st["error"]["retryable"] is True, (i, st)
            out.append(i)
    return out


async def test_waiting_limit_is_exact_per_tenant_and_frees_when_jobs_finish(clients) -> None:
    acme, bob = clients["dave"], clients["bob"]  # dave: a tenant no other test uses (starts with no jobs)
    ids = [f"quota-{i}" for i in range(5)]  # limit 3 + 2
    await _submit_all(acme, ids)
    states = await _settled(acme, ids)
    rejected = _rejected(states)
    assert len(rejected) == 2, states
    admitted = [i for i in ids if i not in rejected]
    assert all(states[i]["state"] == "queued" for i in admitted), states
    assert "waiting" in states[rejected[0]]["error"]["message"]
    # another tenant is unaffected by acme's full quota
    await _submit_all(bob, ["quota-0"])
    assert (await wait_state(bob, "quota-0", {"queued", "failed"}))["state"] == "queued"
    # acme is still full: one more is refused ...
    await _submit_all(acme, ["quota-more"])
    assert _rejected({"quota-more": await wait_state(acme, "quota-more", {"queued", "failed"})}) == ["quota-more"]
    # ... until its jobs finish (cancelled here: nothing is released explicitly, finished jobs are pruned)
    await _cancel(acme, admitted)
    await _submit_all(acme, ["quota-after"])
    assert (await wait_state(acme, "quota-after", {"queued", "failed"}))["state"] == "queued"
    assert (await status_of(bob, "quota-0"))["state"] == "queued"


async def test_submit_rate_per_tenant(clients) -> None:
    carol = clients["carol"]
    first = ["rate-0", "rate-1", "rate-2"]
    await _submit_all(carol, first)
    assert not _rejected(await _settled(carol, first))
    await _cancel(carol, first)  # the waiting limit is not what stops the next ones
    more = ["rate-3", "rate-4", "rate-5"]  # 4 per minute: exactly one more is admitted
    await _submit_all(carol, more)
    states = await _settled(carol, more)
    rejected = _rejected(states)
    assert len(rejected) == 2, states
    assert all("submit rate" in states[i]["error"]["message"] for i in rejected), states


async def test_gateway_answers_429_at_the_door(stack: Settings, limited) -> None:  # noqa: F811
    """The HTTP gateway checks the same quotas before publishing: a tenant over a limit gets 429 with
    ``Retry-After`` (the OpenAI SDK's RateLimitError, retried after that long), no job is created; under
    the limits the request is published as before and preprocess stays the authority."""
    import httpx2 as httpx
    import openai

    from gateway.cli import create_key
    from tests.gateway_server import running_gateway

    limits = {"max_queued_jobs_per_tenant": 3, "max_running_jobs_per_tenant": 1, "submit_rate_per_minute": 4}
    key = await create_key(stack, "erin")  # erin: a tenant no other test uses
    auth = {"Authorization": f"Bearer {key}"}
    body = {"prompt": "door", "num_frames": 9, "steps": 1}

    async def wait_status(http: httpx.AsyncClient, vid: str, want: set[str]) -> dict:
        for _ in range(200):
            got = (await http.get(f"/v1/videos/{vid}", headers=auth)).json()
            if got.get("state") in want:
                return got
            await asyncio.sleep(0.05)
        raise AssertionError(f"{vid}: {got}")

    with running_gateway(stack.model_copy(update=limits)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            ids = []
            for _ in range(3):
                resp = await http.post("/v1/videos", json=body, headers=auth)
                assert resp.status_code == 200, resp.text
                ids.append(resp.json()["id"])
            for vid in ids:
                assert (await wait_status(http, vid, {"queued", "failed"}))["state"] == "queued"
            listed = {v["id"] for v in (await http.get("/v1/videos", headers=auth)).json()["data"]}
            # 3 waiting = the limit: the 4th is refused at the door, nothing is created
            refused = await http.post("/v1/videos", json=body, headers=auth)
            assert refused.status_code == 429, refused.text
            err = refused.json()["error"]
            assert err["code"] == "quota_exceeded" and err["type"] == "rate_limit_error" and "waiting" in err["message"]
            assert int(refused.headers["retry-after"]) >= 1
            assert {v["id"] for v in (await http.get("/v1/videos", headers=auth)).json()["data"]} == listed
            # the OpenAI SDK sees its RateLimitError
            sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
            with pytest.raises(openai.RateLimitError):
                await sdk.videos.create(prompt="door", model="tiny-wan")
            await sdk.close()
            # one finishes (cancelled): one more is accepted -- the 4th admission this minute ...
            assert (await http.post(f"/v1/videos/{ids[0]}/cancel", headers=auth)).status_code == 200
            await wait_status(http, ids[0], {"cancelled"})
            resp = await http.post("/v1/videos", json=body, headers=auth)
            assert resp.status_code == 200, resp.text
            assert (await wait_status(http, resp.json()["id"], {"queued", "failed"}))["state"] == "queued"
            # ... and after another finishes, the submit rate (4 a minute) is what refuses the next
            assert (await http.post(f"/v1/videos/{ids[1]}/cancel", headers=auth)).status_code == 200
            await wait_status(http, ids[1], {"cancelled"})
            rate = await http.post("/v1/videos", json=body, headers=auth)
            assert rate.status_code == 429 and "submit rate" in rate.json()["error"]["message"], rate.text
            assert 1 <= int(rate.headers["retry-after"]) <= 61
