"""Integration fixtures: real nats-server + real S3 server (weed mini) for the session,
CPU functions and a tiny-wan runner as real child processes."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from runtime.bus import Bus
from runtime.settings import Settings, load_settings
from runtime.stack import provision, start_servers
from runtime.storage import Storage
from tests.stack import start_functions, start_runner, stop, wait_for_log


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    data = tmp_path_factory.mktemp("videogen")
    base = load_settings(data_dir=data, embedded=True, webhook_allow_hosts=["127.0.0.1"], heartbeat_s=2.0)
    settings, nats, s3 = start_servers(base, fixed_ports=False)
    asyncio.run(provision(settings))
    try:
        yield settings
    finally:
        s3.stop()
        nats.stop()


@pytest.fixture(scope="session")
def workers(stack: Settings) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    data = Path(stack.data_dir)
    fn = start_functions(stack, data / "functions.log")
    rn = start_runner(stack, data / "runner.log")
    # a test may swap a process (e.g. functions with other settings): whatever is there at the end is stopped
    procs = {"functions": fn, "runner": rn}
    try:
        wait_for_log(data / "functions.log", '"consumer_started"', 120, fn)
        wait_for_log(data / "runner.log", "runner_io_ready", 180, rn)
        yield procs
    finally:
        for proc in {*procs.values(), fn, rn}:
            stop(proc)


@pytest.fixture
async def bus(stack: Settings) -> AsyncIterator[Bus]:
    async with Bus(stack, "videogen-test") as b:
        yield b


@pytest.fixture
async def storage(stack: Settings) -> AsyncIterator[Storage]:
    async with Storage(stack) as s:
        yield s
