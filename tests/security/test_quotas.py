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
