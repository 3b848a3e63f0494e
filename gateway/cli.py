"""``videogen gateway`` (serve the HTTP API and console) and ``videogen keys`` (API keys).

Registered on the main app in ``runtime/cli.py``.
"""

from __future__ import annotations

import asyncio
import json
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


async def create_key(settings: Settings, tenant: str, name: str = "") -> str:
    async with Bus(settings, "videogen-keys") as bus:
        key, _ = await ApiKeyStore(bus).create(tenant, name)
    return key


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="tenant the key acts for ([a-z0-9_-], e.g. default)")] = "default",
    name: Annotated[str, typer.Option(help="a note to tell keys apart")] = "",
) -> None:
    """Make a new API key for TENANT and print it once (only its sha256 is stored)."""
    from pydantic import ValidationError

    try:
        key = asyncio.run(create_key(_settings(), tenant, name))
    except ValidationError as e:
        console.print(f"[red]invalid tenant {tenant!r}[/]: {e.errors()[0]['msg']}")
        raise typer.Exit(2) from None
    console.print(key)


@keys_app.command("list")
def keys_list() -> None:
    """Key hashes, tenants and hints (never the keys)."""

    async def _run() -> list[dict[str, str]]:
        async with Bus(_settings(), "videogen-keys") as bus:
            return [{"sha256": h, "tenant": r.tenant, "hint": r.hint + "…", "name": r.name,
                     "created_at": r.created_at.isoformat()} for h, r in await ApiKeyStore(bus).list()]

    console.print_json(json.dumps(asyncio.run(_run())))


@keys_app.command("revoke")
def keys_revoke(key_sha256: Annotated[str, typer.Argument(help="the sha256 shown by `videogen keys list`")]) -> None:
    """Revoke a key (gateways stop accepting it within 30 s)."""

    async def _run() -> bool:
        async with Bus(_settings(), "videogen-keys") as bus:
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
