"""Security tests: the real nats-server and S3 server of tests/integration (same fixtures), and
only the CPU stages a test needs (no GPU runner)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.settings import Settings
from tests.integration.conftest import bus, stack, storage  # noqa: F401  (re-exported fixtures)
from tests.stack import start_functions, stop, wait_for_log


@pytest.fixture(scope="session")
def preprocess(stack: Settings) -> Iterator[subprocess.Popen[bytes]]:  # noqa: F811
    """Only the preprocess stage: a valid job stops at ``queued`` (nobody plans it)."""
    log = Path(stack.data_dir) / "security-functions.log"
    proc = start_functions(stack, log, ["preprocess"])
    try:
        wait_for_log(log, '"consumer_started"', 120, proc)
        yield proc
    finally:
        stop(proc)
