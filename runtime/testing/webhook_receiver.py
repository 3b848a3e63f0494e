"""A small webhook receiver for the demo and for tests: records and verifies every POST.

    async with WebhookReceiver(secret) as rx:           # listens on 127.0.0.1:<free port>
        rx.behave(Reply(503), Reply(503), then=Reply(200))
        ...deliver to rx.url...
        [d] = await rx.wait_for(1, timeout_s=5)
        assert d.verified

Verification uses the ``standardwebhooks`` reference package when installed, else our own
``functions.webhook.signing.verify`` (``Delivery.verified_by`` says which; imported only then, so
``runtime`` does not import ``functions`` at module level).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from pydantic import SecretStr

from runtime.logging import get_logger

HOOK_PATH = "/hook"


@dataclass(frozen=True, slots=True)
class Reply:
    """How the receiver answers one request."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay_s: float = 0.0
    """Wait this long before answering (to exercise client timeouts)."""

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Reply:
        return cls(status, {"Location": location})


@dataclass(frozen=True, slots=True)
class Delivery:
    """One request the receiver got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    verified_by: str
    error: str | None
    reply_status: int
    received_at: float

    @property
    def msg_id(self) -> str | None:
        return self.headers.get("webhook-id")

    def json(self) -> Any:
        return json.loads(self.body)


def _make_verifier(secret: str) -> tuple[str, Any]:
    """Returns (name, fn(body, headers) -> error or None)."""
    try:
        from standardwebhooks.webhooks import Webhook, WebhookVerificationError
    except ImportError:  # not a runtime dependency: fall back to our implementation
        from functions.webhook import signing

        def ours(body: bytes, headers: Mapping[str, str]) -> str | None:
            try:
                signing.verify(body, headers, secret)
            except signing.SignatureError as e:
                return str(e)
            return None

        return "videogen", ours

    hooks = [Webhook(s) for s in secret.split()]

    def reference(body: bytes, headers: Mapping[str, str]) -> str | None:
        errors = []
        for hook in hooks:  # any secret (rotation) may match
            try:
                hook.verify(body, dict(headers))
                return None
            except (WebhookVerificationError, ValueError) as e:
                errors.append(str(e) or type(e).__name__)
        return "; ".join(errors)

    return "standardwebhooks", reference


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


class WebhookReceiver:
    """aiohttp server recording deliveries; answers from a behaviour script, then a default reply."""

    def __init__(self, secret: str | SecretStr, host: str = "127.0.0.1", port: int = 0,
                 *, script: Iterable[Reply] = (), default: Reply = Reply(200)) -> None:
        self._secret = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        self.host = host
        self.port = port
        self.deliveries: list[Delivery] = []
        self._script: deque[Reply] = deque(script)
        self._default = default
        self._verifier_name, self._verify = _make_verifier(self._secret)
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Condition()
        self._closing = asyncio.Event()
        self._log = get_logger(stage="webhook-receiver")

    # -- behaviour ---------------------------------------------------------------------------
    def behave(self, *replies: Reply, then: Reply | None = None) -> None:
        """Answer the next requests with ``replies`` in order, then with ``then`` (default: unchanged)."""
        self._script = deque(replies)
        if then is not None:
            self._default = then

    def _next_reply(self) -> Reply:
        return self._script.popleft() if self._script else self._default

    # -- addresses ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """Where to point a webhook: ``http://<host>:<port>/hook``."""
        return self.base_url + HOOK_PATH

    def url_for(self, path: str) -> str:
        return self.base_url + "/" + path.lstrip("/")

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0,
                                     handler_cancellation=True, access_log=None)
        await self._runner.setup()
        family = socket.AF_INET6 if _is_ipv6(self.host) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            self.port = sock.getsockname()[1]
            await web.SockSite(self._runner, sock).start()
        except BaseException:
            sock.close()
            await self.close()
            raise
        self._log.info("webhook_receiver.started", url=self.url, verifier=self._verifier_name)
        return self

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- waiting -----------------------------------------------------------------------------
    async def wait_for(self, n: int, timeout_s: float = 5.0) -> list[Delivery]:
        """Wait until at least ``n`` deliveries arrived; returns them all. Raises ``TimeoutError``."""
        async def reached() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.deliveries) >= n)

        try:
            await asyncio.wait_for(reached(), timeout_s)
        except TimeoutError as e:
            raise TimeoutError(f"{len(self.deliveries)} of {n} webhook deliveries after {timeout_s}s") from e
        return list(self.deliveries)

    # -- handler -----------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        hdrs = {k.lower(): v for k, v in request.headers.items()}
        error = self._verify(body, hdrs)
        reply = self._next_reply()
        delivery = Delivery(method=request.method, path=request.path, headers=hdrs, body=body,
                            verified=error is None, verified_by=self._verifier_name, error=error,
                            reply_status=reply.status, received_at=time.time())
        async with self._changed:
            self.deliveries.append(delivery)
            self._changed.notify_all()
        self._log.info("webhook_receiver.received", path=delivery.path, msg_id=delivery.msg_id,
                       verified=delivery.verified, error=error, reply=reply.status)
        if reply.delay_s > 0:
            try:
                await asyncio.wait_for(self._closing.wait(), reply.delay_s)
            except TimeoutError:
                pass
        return web.Response(status=reply.status, headers=dict(reply.headers), body=reply.body)
