"""Security tests: the real nats-server and S3 server of tests/integration (same fixtures), and
only the CPU stages a test needs (no GPU runner)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.settings import Settings
from tests.integration.conftest import bus, storage  # noqa: F401  (re-exported fixtures)
from tests.stack import start_functions, stop, wait_for_log


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The integration stack, with tenant accounts (acme, bob, carol, dave) configured before nats-server starts."""
    import asyncio

    from runtime import accounts
    from runtime.settings import load_settings
    from runtime.stack import provision, start_servers

    data = tmp_path_factory.mktemp("videogen")
    for name in ("acme", "bob", "carol", "dave", "erin"):  # carol, dave, erin: only tests/security/test_quotas.py
        accounts.add_tenant(data, name)
    base = load_settings(data_dir=data, embedded=True, webhook_allow_hosts=["127.0.0.1"], heartbeat_s=2.0)
    settings, nats, s3 = start_servers(base, fixed_ports=False)
    asyncio.run(provision(settings))
    try:
        yield settings
    finally:
        s3.stop()
        nats.stop()


@pytest.fixture(scope="module")  # not session: tests/security/test_quotas.py runs its own with other limits
def preprocess(stack: Settings) -> Iterator[subprocess.Popen[bytes]]:  # noqa: F811
    """Only the preprocess stage: a valid job stops at ``queued`` (nobody plans it)."""
    log = Path(stack.data_dir) / "security-functions.log"
    proc = start_functions(stack, log, ["preprocess"])
    try:
        wait_for_log(log, '"consumer_started"', 120, proc)
        yield proc
    finally:
        stop(proc)
