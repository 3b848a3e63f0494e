"""runtime/s3wire.py signs exactly what botocore signs (and AWS's published example); its error
mapping and retries, without a server (the server round trips are in tests/integration/test_storage_wire.py)."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from runtime.s3wire import EMPTY_SHA256, Credentials, S3Error, S3Wire, _error, sign, uri_path

WHEN = datetime(2013, 5, 24, 0, 0, 0, tzinfo=UTC)
AK, SK = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def test_aws_documented_example() -> None:
    # "Example: GET Object" of the AWS SigV4 documentation for S3 (header auth, virtual-hosted host)
    out = sign("GET", "examplebucket.s3.amazonaws.com", "/test.txt", {"Range": "bytes=0-9"}, EMPTY_SHA256,
               Credentials(AK, SK, "us-east-1"), now=WHEN)
    assert out["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


def _botocore(method: str, url: str, headers: dict[str, str], body: bytes, region: str,
              monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: WHEN.replace(tzinfo=None))
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    S3SigV4Auth(BotoCredentials(AK, SK), "s3", region).add_auth(req)
    return str(req.headers["Authorization"])


@pytest.mark.parametrize("key", [
    "jobs/acme.job-1/segments/0.mp4",
    "uploads/a b+c=d&e/ü~x_y-z.(1).png",  # what quoting S3 wants: once, everything but unreserved and /
    "tenants/t/uploads/%41 literal percent",
])
@pytest.mark.parametrize("method,headers,body", [
    ("PUT", {"Content-Type": "video/mp4", "Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg==", "x-amz-meta-job": "j1"},
     b"x" * 999),
    ("GET", {}, b""),
    ("HEAD", {}, b""),
    ("DELETE", {}, b""),
    ("PUT", {"x-amz-copy-source": uri_path("src-bucket", "jobs/a b/0.mp4")}, b""),
])
def test_same_signature_as_botocore(key: str, method: str, headers: dict[str, str], body: bytes,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    path = uri_path("videogen", key)
    payload = hashlib.sha256(body).hexdigest()
    ours = sign(method, "127.0.0.1:8333", path, headers, payload, Credentials(AK, SK, "eu-west-3"), now=WHEN)
    theirs = _botocore(method, f"http://127.0.0.1:8333{path}", {**headers, "X-Amz-Content-SHA256": payload},
                       body, "eu-west-3", monkeypatch)
    assert ours["authorization"] == theirs


def test_error_body_parsed() -> None:
    e = _error(404, b"<?xml version='1.0'?><Error><Code>NoSuchKey</Code><Message>gone</Message></Error>")
    assert (e.status, e.code, e.message) == (404, "NoSuchKey", "gone")
    assert _error(403, b"").code == "AccessDenied" and _error(404, b"").code == "NotFound"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_refused_is_retried_then_raised() -> None:
    wire = S3Wire(f"http://127.0.0.1:{_free_port()}", Credentials(AK, SK, "us-east-1"), attempts=3,
                  connect_timeout_s=1)
    async with wire:
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(S3Error) as info:
            await wire.get("b", "k")
    assert info.value.status == 0 and info.value.code == "ConnectionError"
    assert asyncio.get_running_loop().time() - t0 < 5


async def test_a_5xx_is_retried_a_4xx_is_not() -> None:
    from aiohttp import web

    calls = {"5xx": 0, "4xx": 0}

    async def flaky(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        calls[name] += 1
        if name == "5xx" and calls[name] < 3:
            return web.Response(status=503, body=b"<Error><Code>SlowDown</Code></Error>")
        if name == "4xx":
            return web.Response(status=400, body=b"<Error><Code>BadDigest</Code><Message>md5</Message></Error>")
        assert request.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=")
        return web.Response(body=b"ok")

    app = web.Application()
    app.router.add_route("*", "/b/{name}", flaky)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with S3Wire(f"http://127.0.0.1:{port}", Credentials(AK, SK, "us-east-1"), attempts=4) as wire:
            assert await wire.get("b", "5xx") == b"ok"
            with pytest.raises(S3Error) as info:
                await wire.put("b", "4xx", b"body", content_type="text/plain")
    finally:
        await runner.cleanup()
    assert calls == {"5xx": 3, "4xx": 1}
    assert (info.value.status, info.value.code) == (400, "BadDigest")
