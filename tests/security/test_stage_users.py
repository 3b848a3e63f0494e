"""Least privilege in use (issue 13 item 2): a process running one stage connects as that stage's user.

On the real embedded nats-server: preprocess and planner each run alone (``videogen functions
<stage>``, as ``python -m functions.<stage>`` does), so each connects as ``stage-<name>`` with
its password from the stack's 0600 credentials file. A job goes through both and its segment
reaches ``VIDEOGEN_SEGMENTS``; the server's own connection list says which user each process is;
the planner's user is refused subjects outside its list.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.request import urlopen

import nats
import pytest

from runtime import accounts
from runtime.bus import Bus
from runtime.service import least_privilege
from runtime.settings import Settings
from schemas import names
from tests.security.test_tenants import connect, job, refused
from tests.stack import poll_until, start_functions, stop, wait_for_log

pytestmark = pytest.mark.integration


def _connz(stack: Settings) -> list[dict]:
    conf = (Path(stack.data_dir) / "nats-server.conf").read_text()
    match = re.search(r"^http: (\S+)$", conf, re.M)
    assert match, conf
    with urlopen(f"http://{match.group(1)}/connz?auth=true&limit=1024", timeout=5) as r:
        return list(json.loads(r.read())["connections"])


def _users_by_name(stack: Settings) -> dict[str, str]:
    return {c.get("name", ""): c.get("authorized_user", "") for c in _connz(stack)}


@pytest.fixture(scope="module")
def alone(stack: Settings) -> Iterator[dict[str, subprocess.Popen[bytes]]]:  # noqa: F811
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for stage in ("preprocess", "planner"):
            log = Path(stack.data_dir) / f"alone-{stage}.log"
            procs[stage] = start_functions(stack, log, [stage])
            wait_for_log(log, '"consumer_started"', 120, procs[stage])
        yield procs
    finally:
        for proc in procs.values():
            stop(proc)


def test_one_stage_takes_its_user_several_keep_service(stack: Settings) -> None:  # noqa: F811
    pw = accounts.read_stage_password(Path(stack.data_dir), "planner")
    assert pw and stack.nats_user == accounts.SERVICE_USER
    one = least_privilege(stack, ["planner"])
    assert one.nats_user == "stage-planner" and one.nats_password and one.nats_password.get_secret_value() == pw
    assert least_privilege(stack, ["preprocess", "planner"]).nats_user == accounts.SERVICE_USER
    assert least_privilege(stack.model_copy(update={"embedded": False}), ["planner"]).nats_user == "service"
    other = stack.model_copy(update={"data_dir": Path(stack.data_dir) / "nowhere"})
    assert least_privilege(other, ["planner"]).nats_user == accounts.SERVICE_USER  # no credentials file


async def test_single_stage_processes_run_as_their_users(stack: Settings, alone, bus: Bus) -> None:  # noqa: F811
    users = _users_by_name(stack)
    assert users.get("videogen-preprocess") == "stage-preprocess", users
    assert users.get("videogen-planner") == "stage-planner", users

    creds = accounts.load_credentials(Path(stack.data_dir))
    client = await connect(stack, names.DEFAULT_TENANT, creds.default_password)
    job_id = f"lp-{uuid.uuid4().hex[:8]}"
    try:
        await client.publish(names.SUBJECT_SUBMIT, job(job_id))
        await client.flush()
    finally:
        await client.close()

    subject = names.segments_subject("tiny-wan")

    async def planned() -> bool:
        seq = 1
        while (msg := await bus.next_message(names.STREAM_SEGMENTS, seq, subject)) is not None:
            if job_id.encode() in msg.data:
                return True
            seq = msg.seq + 1
        return False

    assert await poll_until(planned, timeout_s=90)
    for stage, proc in alone.items():
        assert proc.poll() is None, stage
        log = (Path(stack.data_dir) / f"alone-{stage}.log").read_text()
        assert "permissions violation" not in log.lower(), (stage, log[-3000:])


async def test_single_stage_user_is_refused_outside_its_list(stack: Settings, alone) -> None:  # noqa: F811
    """The planner process's credentials (read as it reads them) reach only the planner's subjects."""
    settings = least_privilege(stack, ["planner"])
    assert settings.nats_user == "stage-planner" and settings.nats_password
    errors: list[str] = []
    nc = await connect(stack, settings.nats_user, settings.nats_password.get_secret_value(), errors)
    try:
        outside = [names.SUBJECT_SUBMIT, names.dlq_subject("stitch"), f"$JS.API.STREAM.DELETE.{names.STREAM_SEGMENTS}",
                   names.SUBJECT_WORK_PREPROCESS_PART]
        for subject in [names.dlq_subject("planner"), *outside]:
            await nc.publish(subject, b"{}")
        await nc.flush()
        await asyncio.sleep(0.5)
        for subject in outside:
            assert refused(errors, subject), (subject, errors)
        assert not refused(errors, names.dlq_subject("planner")), errors
        with pytest.raises(nats.errors.Error):
            await nc.request(f"$JS.API.STREAM.PURGE.{names.STREAM_SEGMENTS}", b"", timeout=2)
    finally:
        await nc.close()
