"""``videogen gateway`` (serve the HTTP API and console) and ``videogen keys`` (API keys).

Registered on the main app in ``runtime/cli.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from runtime.bus import Bus
from runtime.edge import ApiKeyStore
from runtime.logging import configure_logging
from runtime.settings import Settings, load_settings

keys_app = typer.Typer(help="API keys of the HTTP gateway (stored hashed in NATS KV videogen-apikeys).",
                       no_args_is_help=True)
console = Console(soft_wrap=True)


def _settings() -> Settings:
    s = load_settings()
    configure_logging(s.log_level, s.log_format)
    return s


@contextlib.asynccontextmanager
async def _bus(settings: Settings) -> AsyncIterator[Bus]:
    """A short-lived connection for a command: fails within seconds when NATS is unreachable."""
    bus = Bus(settings, "videogen-keys")
    await bus.connect(connect_timeout_s=3.0, max_reconnect_attempts=1)  # 0 would mean "forever" in nats-py
    try:
        yield bus
    finally:
        await bus.close()


async def create_key(settings: Settings, tenant: str, name: str = "") -> str:
    async with _bus(settings) as bus:
        key, _ = await ApiKeyStore(bus).create(tenant, name)
    return key


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="tenant the key acts for (e.g. default, acme)")] = "default",
    name: Annotated[str, typer.Option(help="a note to tell keys apart")] = "",
) -> None:
    """Make a new API key for TENANT and print it once (only its sha256 is stored)."""
    from pydantic import ValidationError

    from schemas.errors import VideogenError

    try:
        key = asyncio.run(create_key(_settings(), tenant, name))
    except ValidationError as e:
        console.print(f"[red]invalid tenant {tenant!r}[/]: {e.errors()[0]['msg']}")
        raise typer.Exit(2) from None
    except VideogenError as e:  # NATS unreachable: one line, not a traceback
        console.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    console.print(key)


@keys_app.command("list")
def keys_list() -> None:
    """Key hashes, tenants and hints (never the keys)."""

    async def _run() -> list[dict[str, str]]:
        async with _bus(_settings()) as bus:
            return [{"sha256": h, "tenant": r.tenant, "hint": r.hint + "…", "name": r.name,
                     "created_at": r.created_at.isoformat()} for h, r in await ApiKeyStore(bus).list()]

    console.print_json(json.dumps(asyncio.run(_run())))


@keys_app.command("revoke")
def keys_revoke(key_sha256: Annotated[str, typer.Argument(help="the sha256 shown by `videogen keys list`")]) -> None:
    """Revoke a key (gateways stop accepting it within 30 s)."""

    async def _run() -> bool:
        async with _bus(_settings()) as bus:
            return await ApiKeyStore(bus).revoke(key_sha256)

    ok = asyncio.run(_run())
    console.print("revoked" if ok else "no such key")
    raise typer.Exit(0 if ok else 1)


def gateway(
    host: Annotated[str | None, typer.Option(help="listen address (default VIDEOGEN_GATEWAY_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default VIDEOGEN_GATEWAY_PORT)")] = None,
) -> None:
    """Serve the HTTP API (/v1/videos, OpenAI-compatible), the web console (/) and /healthz /readyz /metrics."""
    serve(host, port)


def serve(host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    from gateway.app import create_app

    settings = _settings()
    app = create_app(settings)
    uvicorn.run(app, host=host or settings.gateway_host, port=settings.gateway_port if port is None else port,
                log_level=settings.log_level.lower(), access_log=False, timeout_graceful_shutdown=10)


# ---- the embedded stack (`videogen up`, `videogen demo`) ---------------------------------------
def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_gateway_process(settings: Settings, log_path: Path, env: dict[str, str] | None = None,
                          *, timeout_s: float = 60.0) -> tuple[subprocess.Popen[bytes], str]:
    """``videogen gateway`` as a child process for the embedded stack (the configured port, or a free
    one when it is taken); waits until it answers ``/readyz``. Returns (process, base URL)."""
    import os
    import sys
    import time
    import urllib.request

    host = settings.gateway_host
    port = settings.gateway_port
    with contextlib.suppress(OSError), socket_probe(host, port):
        port = _free_port(host)  # something listens on the configured port already
    child_env = {**os.environ, **(env or {}), "VIDEOGEN_DATA_DIR": str(settings.data_dir),
                 "VIDEOGEN_NATS_URL": settings.nats_url, "VIDEOGEN_S3_ENDPOINT": str(settings.s3_endpoint or "")}
    out = log_path.open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "gateway", "--host", host, "--port", str(port)],
                            env=child_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited ({proc.returncode}); see {log_path}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
            if resp.status == 200:
                return proc, url
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"gateway not ready after {timeout_s:.0f}s; see {log_path}")


@contextlib.contextmanager
def socket_probe(host: str, port: int) -> Iterator[None]:
    """Enter only when something accepts connections on host:port (raises OSError otherwise)."""
    import socket

    with socket.create_connection((host, port), timeout=0.5):
        yield


def console_url(url: str, key: str) -> str:
    """The console with the key in the fragment (never sent to the server, kept out of logs)."""
    return f"{url}/#key={key}"


