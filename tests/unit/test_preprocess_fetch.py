"""fetch_input: s3 via the storage port, http(s) with the SSRF guard, manual redirects, byte
cap while streaming, timeouts; every failure maps to its error code (or is retryable)."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from functions.preprocess.errors import InputRejected, InputUnavailable
from functions.preprocess.fetch import fetch_input
from functions.preprocess.limits import MediaLimits
from runtime.objects import MemoryStore
from schemas.errors import ErrorCode, Retryable

LIMITS = MediaLimits(fetch_timeout_s=5.0)
LOCAL = ["127.0.0.1"]
BODY = b"\x89PNG\r\n\x1a\n" + b"x" * 1000


class Origin:
    """A local HTTP server with the behaviours fetch must cope with; counts requests."""

    def __init__(self) -> None:
        self.hits = 0
        self.base = ""
        app = web.Application()
        app.router.add_get("/ok", self.ok)
        app.router.add_get("/redirect/{n}", self.redirect)
        app.router.add_get("/to/{where}", self.to)
        app.router.add_get("/status/{code}", self.status)
        app.router.add_get("/declared-big", self.declared_big)
        app.router.add_get("/stream", self.stream)
        app.router.add_get("/slow", self.slow)
        self.runner = web.AppRunner(app, shutdown_timeout=0.2)

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}"

    async def ok(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(body=BODY, content_type="image/png")

    async def redirect(self, request: web.Request) -> web.Response:
        self.hits += 1
        n = int(request.match_info["n"])
        raise web.HTTPFound("/ok" if n == 0 else f"/redirect/{n - 1}")

    async def to(self, request: web.Request) -> web.Response:
        self.hits += 1
        targets = {"metadata": "http://169.254.169.254/latest/meta-data/",
                   "private-https": "https://10.1.2.3/image.png", "ftp": "ftp://example.com/x.png"}
        raise web.HTTPFound(targets[request.match_info["where"]])

    async def status(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(status=int(request.match_info["code"]), text="nope")

    async def declared_big(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(body=b"\0" * (3 << 20))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """64 MiB, chunked (no Content-Length): only the running byte count can stop it."""
        self.hits += 1
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = b"\0" * 65536
        try:
            for _ in range(1024):
                await resp.write(chunk)
        except (ConnectionResetError, RuntimeError):
            pass
        return resp

    async def slow(self, request: web.Request) -> web.Response:
        self.hits += 1
        await asyncio.sleep(3)
        return web.Response(body=BODY)


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    o = Origin()
    await o.start()
    yield o
    await o.runner.cleanup()


async def code_of(coro: object) -> ErrorCode:
    with pytest.raises(InputRejected) as info:
        await coro  # type: ignore[misc]
    return info.value.code


# ----------------------------------------------------------------------------- s3
async def test_s3_read_and_failures() -> None:
    store = MemoryStore()
    store.objects[("uploads", "a.png")] = BODY
    uri = "s3://uploads/a.png"
    assert await fetch_input(uri, store, LIMITS, []) == BODY
    assert await code_of(fetch_input("s3://uploads/missing.png", store, LIMITS, [])) == ErrorCode.INPUT_UNREADABLE
    assert await code_of(fetch_input(uri, store, LIMITS, [], max_bytes=100)) == ErrorCode.INPUT_TOO_LARGE
    assert await code_of(fetch_input(uri, store, LIMITS, [], allowed_buckets=["videogen"])) == ErrorCode.INPUT_FORBIDDEN
    assert await code_of(fetch_input("file:///etc/passwd", store, LIMITS, [])) == ErrorCode.INPUT_FORBIDDEN


# ----------------------------------------------------------------------------- http(s)
async def test_http_allow_listed_host(origin: Origin) -> None:
    assert await fetch_input(f"{origin.base}/ok", MemoryStore(), LIMITS, LOCAL) == BODY


async def test_plain_http_refused_unless_allow_listed(origin: Origin) -> None:
    code = await code_of(fetch_input(f"{origin.base}/ok", MemoryStore(), LIMITS, []))
    assert code == ErrorCode.INPUT_FORBIDDEN and origin.hits == 0


async def test_https_to_private_address_refused_before_connecting(origin: Origin) -> None:
    for url in ("https://127.0.0.1/x.png", "https://169.254.169.254/latest", "https://[::1]/x", "https://10.0.0.7/"):
        assert await code_of(fetch_input(url, MemoryStore(), LIMITS, [])) == ErrorCode.INPUT_FORBIDDEN


async def test_hostname_resolving_to_private_address_refused() -> None:
    async def rebinding(host: str) -> list[str]:
        return ["10.0.0.5"]

    url = "https://images.example.com/a.png"
    code = await code_of(fetch_input(url, MemoryStore(), LIMITS, [], resolver=rebinding))
    assert code == ErrorCode.INPUT_FORBIDDEN


async def test_redirects_followed_by_hand_and_capped(origin: Origin) -> None:
    assert await fetch_input(f"{origin.base}/redirect/2", MemoryStore(), LIMITS, LOCAL) == BODY
    origin.hits = 0
    code = await code_of(fetch_input(f"{origin.base}/redirect/5", MemoryStore(), LIMITS, LOCAL))
    assert code == ErrorCode.INPUT_UNREADABLE and origin.hits == LIMITS.max_redirects + 1


@pytest.mark.parametrize("where", ["metadata", "private-https", "ftp"])
async def test_redirect_to_forbidden_target_refused(origin: Origin, where: str) -> None:
    assert await code_of(fetch_input(f"{origin.base}/to/{where}", MemoryStore(), LIMITS, LOCAL)) \
        == ErrorCode.INPUT_FORBIDDEN


@pytest.mark.parametrize(
    ("status", "code"),
    [(404, ErrorCode.INPUT_UNREADABLE), (410, ErrorCode.INPUT_UNREADABLE), (403, ErrorCode.INPUT_FORBIDDEN)],
)
async def test_client_errors_are_permanent(origin: Origin, status: int, code: ErrorCode) -> None:
    assert await code_of(fetch_input(f"{origin.base}/status/{status}", MemoryStore(), LIMITS, LOCAL)) == code


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_server_errors_are_retryable(origin: Origin, status: int) -> None:
    with pytest.raises(InputUnavailable) as info:
        await fetch_input(f"{origin.base}/status/{status}", MemoryStore(), LIMITS, LOCAL)
    assert info.value.retryable and str(status) in str(info.value)


async def test_declared_size_over_cap_refused_without_reading(origin: Origin) -> None:
    code = await code_of(fetch_input(f"{origin.base}/declared-big", MemoryStore(), LIMITS, LOCAL, max_bytes=1 << 20))
    assert code == ErrorCode.INPUT_TOO_LARGE


async def test_streamed_body_aborted_past_cap_with_bounded_memory(origin: Origin) -> None:
    tracemalloc.start()
    try:
        code = await code_of(fetch_input(f"{origin.base}/stream", MemoryStore(), LIMITS, LOCAL, max_bytes=1 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == ErrorCode.INPUT_TOO_LARGE
    assert peak < 8 << 20, peak  # the server offered 64 MiB


async def test_slow_server_times_out_as_retryable(origin: Origin) -> None:
    limits = MediaLimits(fetch_timeout_s=0.5)
    with pytest.raises(Retryable) as info:
        await fetch_input(f"{origin.base}/slow", MemoryStore(), limits, LOCAL)
    assert info.value.code == ErrorCode.TIMEOUT


async def test_connection_refused_is_retryable() -> None:
    with pytest.raises(Retryable):
        await fetch_input("http://127.0.0.1:9/x.png", MemoryStore(), LIMITS, LOCAL)
