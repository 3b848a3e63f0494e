"""Test helper: the HTTP gateway in this process (uvicorn on a free port, its own thread and loop)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from gateway.app import create_app
from gateway.cli import create_key
from runtime.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_gateway(settings: Settings, *, poll_after_ms: int = 200) -> Iterator[str]:
    """Serve the gateway for ``settings``; yields its base URL (``http://127.0.0.1:<port>``)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, poll_after_ms=poll_after_ms), host="127.0.0.1",
                                           port=port, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("gateway did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def make_key(settings: Settings, tenant: str) -> str:
    return asyncio.run(create_key(settings, tenant))
