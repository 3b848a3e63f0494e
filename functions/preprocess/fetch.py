"""Fetch a client input (``s3://bucket/key`` or ``https://…``) with strict limits.

* s3: ``Storage.get_bytes(max_bytes)`` — refused from the object's size before reading it;
  only buckets in ``allowed_buckets`` (default: any the service's credentials can read).
* http(s): SSRF guard before every request and again at connect time (``runtime.netguard``),
  redirects followed by hand (each hop re-checked, at most ``limits.max_redirects``), body
  streamed with a byte cap, one overall timeout. ``http://`` only for allow-listed hosts.

Failures: ``InputUnreadable`` / ``InputTooLarge`` / ``InputForbidden`` (permanent) or
``InputUnavailable`` (retryable: timeouts, 408/429/5xx, connection errors).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable, Sequence

import aiohttp
from yarl import URL

from functions.preprocess.errors import InputForbidden, InputTooLarge, InputUnavailable, InputUnreadable
from functions.preprocess.limits import MediaLimits
from runtime.logging import get_logger
from runtime.netguard import AllowList, ForbiddenTarget, HostResolver, check_url, guarded_session, redact_url
from runtime.objects import ObjectStore
from schemas.errors import ErrorCode, Permanent, Retryable

log = get_logger(stage="preprocess")

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_RETRY_STATUS = frozenset({408, 425, 429})
_CHUNK = 64 * 1024


def parse_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key:
        raise InputUnreadable(f"{uri}: an s3 URI needs a bucket and a key")
    return bucket, key


async def fetch_input(uri: str, storage: ObjectStore, limits: MediaLimits, allow_hosts: Iterable[str], *,
                      max_bytes: int | None = None, allowed_buckets: Sequence[str] | None = None,
                      resolver: HostResolver | None = None) -> bytes:
    """The input's bytes, at most ``max_bytes`` (default ``limits.max_video_bytes``)."""
    cap = limits.max_video_bytes if max_bytes is None else max_bytes
    if uri.startswith("s3://"):
        return await _fetch_s3(uri, storage, cap, allowed_buckets)
    if uri.startswith(("https://", "http://")):
        return await _fetch_http(uri, limits, AllowList.parse(allow_hosts), cap, resolver)
    raise InputForbidden(f"{redact_url(uri)}: only s3:// and https:// inputs are accepted")


async def _fetch_s3(uri: str, storage: ObjectStore, cap: int, allowed_buckets: Sequence[str] | None) -> bytes:
    bucket, key = parse_s3(uri)
    if allowed_buckets is not None and bucket not in allowed_buckets:
        raise InputForbidden(f"{uri}: bucket {bucket!r} is not readable by this service")
    try:
        data = await storage.get_bytes(key, bucket=bucket, max_bytes=cap)
    except Permanent as e:
        if e.code == ErrorCode.INPUT_TOO_LARGE:
            raise InputTooLarge(f"{uri}: {e}") from e
        if e.code == ErrorCode.STORAGE_ERROR:  # access denied
            raise InputForbidden(f"{uri}: {e}") from e
        raise InputUnreadable(f"{uri}: {e}") from e
    if len(data) > cap:  # servers that do not report ContentLength
        raise InputTooLarge(f"{uri} is over {cap} bytes")
    return data


def _allow_listed(host: str, allow: AllowList) -> bool:
    if allow.match_host(host):
        return True
    try:
        return allow.match_ip(ipaddress.ip_address(host.strip("[]"))) is not None
    except ValueError:
        return False


def _check_scheme(url: URL, allow: AllowList) -> None:
    if url.scheme == "https":
        return
    if url.scheme == "http" and url.raw_host and _allow_listed(url.raw_host, allow):
        return
    raise InputForbidden(f"{redact_url(url)}: only https:// is accepted (http:// only for allow-listed hosts)")


async def _fetch_http(uri: str, limits: MediaLimits, allow: AllowList, cap: int,
                      resolver: HostResolver | None) -> bytes:
    shown = redact_url(uri)
    timeout = aiohttp.ClientTimeout(total=limits.fetch_timeout_s, connect=limits.connect_timeout_s)
    try:
        async with asyncio.timeout(limits.fetch_timeout_s), guarded_session(
            allow, resolver=resolver, code=ErrorCode.INPUT_FORBIDDEN, timeout=timeout
        ) as session:
            return await _follow(session, URL(uri), limits, allow, cap, resolver)
    except ForbiddenTarget as e:
        raise InputForbidden(str(e)) from e
    except (Permanent, Retryable):
        raise
    except TimeoutError as e:
        raise InputUnavailable(f"{shown}: timed out after {limits.fetch_timeout_s:g} s",
                               code=ErrorCode.TIMEOUT) from e
    except (aiohttp.InvalidURL, ValueError) as e:
        raise InputUnreadable(f"{shown}: invalid URL: {e}") from e
    except aiohttp.ClientSSLError as e:  # a bad certificate will not fix itself
        raise InputUnreadable(f"{shown}: TLS error: {e}") from e
    except (aiohttp.ClientError, OSError) as e:
        raise InputUnavailable(f"{shown}: {type(e).__name__}: {e}") from e


async def _follow(session: aiohttp.ClientSession, url: URL, limits: MediaLimits, allow: AllowList, cap: int,
                  resolver: HostResolver | None) -> bytes:
    for hop in range(limits.max_redirects + 1):
        _check_scheme(url, allow)
        await check_url(url, allow, resolver=resolver, code=ErrorCode.INPUT_FORBIDDEN)
        async with session.get(url, allow_redirects=False, headers={"Accept": "image/*, video/*"}) as resp:
            if resp.status in _REDIRECTS:
                location = resp.headers.get("Location")
                if not location:
                    raise InputUnreadable(f"{redact_url(url)}: HTTP {resp.status} without Location")
                try:
                    url = url.join(URL(location))
                except (ValueError, TypeError) as e:
                    raise InputUnreadable(f"{redact_url(url)}: invalid redirect Location: {e}") from e
                log.info("input_redirect", hop=hop + 1, to=redact_url(url))
                continue
            _check_status(resp.status, url)
            return await _read_capped(resp, cap, url)
    raise InputUnreadable(f"{redact_url(url)}: more than {limits.max_redirects} redirects")


def _check_status(status: int, url: URL) -> None:
    if 200 <= status < 300:
        return
    shown = redact_url(url)
    if status in _RETRY_STATUS or status >= 500:
        raise InputUnavailable(f"{shown}: HTTP {status}", delay_s=10.0)
    if status in (401, 403):
        raise InputForbidden(f"{shown}: HTTP {status} (the server refuses access)")
    raise InputUnreadable(f"{shown}: HTTP {status}")


async def _read_capped(resp: aiohttp.ClientResponse, cap: int, url: URL) -> bytes:
    declared = resp.content_length
    if declared is not None and declared > cap:
        raise InputTooLarge(f"{redact_url(url)} is {declared} bytes; limit {cap}")
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(_CHUNK):
        buf += chunk
        if len(buf) > cap:
            raise InputTooLarge(f"{redact_url(url)} is over {cap} bytes; download aborted")
    return bytes(buf)
