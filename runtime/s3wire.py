"""The hot single-object S3 requests (PUT, GET, HEAD, server-side COPY, DELETE) on aiohttp.

Every stage's critical path is a handful of small object reads and writes (a request, a plan, a
segment, its result, the previews). Through botocore each one costs ~1.8 ms of CPU before any
byte moves (its event hooks, endpoint rules, user-agent and model-driven serialisation);
this module signs the same request with AWS Signature Version 4 itself (header auth, path-style
URLs, the payload's SHA-256 in ``x-amz-content-sha256``) and sends it on one keep-alive pool:
~0.4 ms of CPU (``bench/s3_client.py`` measures both side by side). Listing, batch deletes,
presigning, lifecycle and bucket creation stay on botocore (``runtime.storage``): none is hot.

Semantics follow botocore's "standard" retry mode: a connection error, a timeout, a 5xx, 429 or
``SlowDown`` is retried (``attempts`` in all, exponential back-off with jitter); anything else is
answered at once as :class:`S3Error` (HTTP status + the S3 error code from the XML body).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

import aiohttp
from yarl import URL

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_ERROR_CODE = re.compile(rb"<Code>([^<]{1,128})</Code>")
_ERROR_MESSAGE = re.compile(rb"<Message>([^<]{0,512})</Message>")
_ETAG = re.compile(rb"<ETag>([^<]{1,256})</ETag>")


class S3Error(Exception):
    """An S3 answer that is not a success (``status`` 0: no answer: connection or timeout)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    region: str


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def uri_path(bucket: str, key: str) -> str:
    """The path-style request path, URI-encoded once as SigV4 wants it for S3 (every byte but
    ``A-Za-z0-9-_.~`` and the ``/`` separators)."""
    return "/" + quote(bucket, safe="") + "/" + quote(key, safe="/~")


def sign(method: str, host: str, path: str, headers: dict[str, str], payload_sha256: str, creds: Credentials,
         now: datetime | None = None) -> dict[str, str]:
    """The request's headers plus ``x-amz-date``, ``x-amz-content-sha256`` and ``Authorization``
    (SigV4, every given header signed; ``path`` already URI-encoded, no query string)."""
    now = now or datetime.now(UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    signed = {k.lower(): " ".join(v.split()) for k, v in headers.items()}
    signed["host"] = host
    signed["x-amz-date"] = amz_date
    signed["x-amz-content-sha256"] = payload_sha256
    names = sorted(signed)
    canonical = "\n".join([method, path, "", "".join(f"{n}:{signed[n]}\n" for n in names), ";".join(names),
                           payload_sha256])
    scope = f"{day}/{creds.region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = _hmac(("AWS4" + creds.secret_key).encode(), day)
    for part in (creds.region, "s3", "aws4_request"):
        k = _hmac(k, part)
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    out = {name: value for name, value in signed.items() if name != "host"}
    out["authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                            f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return out


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class S3Wire:
    """One endpoint, one credential, one aiohttp pool. ``async with S3Wire(...) as s3``."""

    def __init__(self, endpoint: str, creds: Credentials, *, connect_timeout_s: float = 5.0,
                 read_timeout_s: float = 60.0, attempts: int = 4, pool: int = 32) -> None:
        self.endpoint = URL(endpoint.rstrip("/"))
        if self.endpoint.host is None:
            raise ValueError(f"S3 endpoint without a host: {endpoint!r}")
        default_port = {"http": 80, "https": 443}.get(self.endpoint.scheme)
        self.host = self.endpoint.host if self.endpoint.port in (None, default_port) \
            else f"{self.endpoint.host}:{self.endpoint.port}"
        self.creds = creds
        self.attempts = attempts
        self._timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout_s, sock_read=read_timeout_s)
        self._pool = pool
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> S3Wire:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, connector=aiohttp.TCPConnector(limit=self._pool),
                auto_decompress=False, skip_auto_headers=("User-Agent", "Content-Type"))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- operations -------------------------------------------------------------------------
    async def put(self, bucket: str, key: str, body: bytes, *, content_type: str, md5_b64: str | None = None,
                  metadata: dict[str, str] | None = None) -> str:
        """PUT the object; returns its ETag."""
        headers = {"content-type": content_type}
        if md5_b64 is not None:
            headers["content-md5"] = md5_b64
        for name, value in (metadata or {}).items():
            headers[f"x-amz-meta-{name.lower()}"] = value
        ans = await self._request("PUT", bucket, key, headers, body)
        return ans.headers.get("etag", "")

    async def get(self, bucket: str, key: str, *, max_bytes: int | None = None) -> bytes:
        """The whole object; :class:`ObjectTooLargeError` past ``max_bytes`` (read no further)."""
        return (await self._request("GET", bucket, key, {}, b"", max_bytes=max_bytes)).body

    async def head(self, bucket: str, key: str) -> tuple[str, int]:
        """(ETag, size)."""
        ans = await self._request("HEAD", bucket, key, {}, b"")
        return ans.headers.get("etag", ""), int(ans.headers.get("content-length", "0"))

    async def copy(self, src_bucket: str, src_key: str, bucket: str, key: str) -> str:
        """Server-side copy; returns the new object's ETag. S3 may answer 200 with an error in the
        body when the copy fails late: that is an error here too."""
        headers = {"x-amz-copy-source": uri_path(src_bucket, src_key)}
        ans = await self._request("PUT", bucket, key, headers, b"")
        if b"<Error>" in ans.body:
            raise _error(500, ans.body)  # a late failure: retryable like any 5xx
        m = _ETAG.search(ans.body)
        return m.group(1).decode().replace("&quot;", '"') if m else ""

    async def delete(self, bucket: str, key: str) -> None:
        await self._request("DELETE", bucket, key, {}, b"")

    # ---- one signed request, retried ------------------------------------------------------
    async def _request(self, method: str, bucket: str, key: str, headers: dict[str, str], body: bytes, *,
                       max_bytes: int | None = None) -> Answer:
        if self._session is None:
            raise RuntimeError("S3Wire is not open")
        path = uri_path(bucket, key)
        url = self.endpoint.with_path(path, encoded=True)
        payload_sha = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        last: S3Error | None = None
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(min(random.uniform(0, 0.1 * 2 ** attempt), 2.0))
            signed = sign(method, self.host, path, headers, payload_sha, self.creds)
            try:
                async with self._session.request(method, url, data=body if body else None, headers=signed,
                                                 allow_redirects=False) as resp:
                    status = resp.status
                    if 200 <= status < 300 and max_bytes is not None and (resp.content_length or 0) > max_bytes:
                        raise ObjectTooLargeError(resp.content_length or 0)
                    data = b"" if method == "HEAD" else await resp.read()
                    answer = Answer(status, {k.lower(): v for k, v in resp.headers.items()}, data)
            except (aiohttp.ClientError, TimeoutError) as e:
                last = S3Error(0, "ConnectionError", f"{method} {path}: {type(e).__name__}: {e}")
                continue
            if 200 <= answer.status < 300:
                return answer
            err = _error(answer.status, answer.body)
            if answer.status in RETRY_STATUS or err.code in ("SlowDown", "InternalError", "RequestTimeout"):
                last = err
                continue
            raise err
        assert last is not None
        raise last


class ObjectTooLargeError(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"{size} bytes")
        self.size = size


def _error(status: int, body: bytes) -> S3Error:
    code = _ERROR_CODE.search(body)
    message = _ERROR_MESSAGE.search(body)
    fallback = {403: "AccessDenied", 404: "NotFound"}.get(status, f"HTTP{status}")
    return S3Error(status, code.group(1).decode() if code else fallback,
                   message.group(1).decode(errors="replace") if message else "")
