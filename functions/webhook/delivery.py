"""One webhook delivery attempt: SSRF check, signed POST, classification; plus the retry schedule.

``deliver`` never raises for anything the endpoint or the network does: every attempt ends in a
``DeliveryResult`` whose ``outcome`` maps to one broker action (see README):

    DELIVERED -> ack    RETRY -> nak(next_delay_s(...)) or give up when None
    GONE / PERMANENT / FORBIDDEN -> ack + stop (GONE: disable the endpoint)
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import aiohttp
from pydantic import SecretStr

from functions.webhook.signing import headers as signed_headers
from runtime.logging import get_logger
from runtime.netguard import (
    AllowList,
    ForbiddenTarget,
    HostResolver,
    TargetUnresolvable,
    check_url,
    redact_url,
    require_https,
)
from schemas.errors import ErrorCode

DEFAULT_RETRY_SCHEDULE_S: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
"""Delay before each attempt (first = immediately): 8 attempts over ~27.6 h."""
DEFAULT_TIMEOUT_S = 10.0
MAX_RETRY_AFTER_S = 3600.0
SNIPPET_BYTES = 256
RETRY_STATUSES = frozenset({408, 425, 429})
RETRY_AFTER_STATUSES = frozenset({429, 503})


class Outcome(StrEnum):
    DELIVERED = "delivered"  # 2xx
    RETRY = "retry"  # 408/425/429/5xx, timeout, connection or DNS error
    GONE = "gone"  # 410: stop and disable the endpoint
    PERMANENT = "permanent"  # 3xx (never followed), other 4xx, invalid URL
    FORBIDDEN = "forbidden"  # refused by the SSRF guard

    @property
    def final(self) -> bool:
        """True when no further attempt should be made."""
        return self is not Outcome.RETRY


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    outcome: Outcome
    url: str
    """Target without credentials, query or fragment (safe for logs)."""
    attempt: int
    status_code: int | None = None
    latency_ms: float = 0.0
    error: str | None = None
    retry_after_s: float | None = None
    """Server's Retry-After (429/503 only), capped; ``next_delay_s`` waits at least this long."""
    body_snippet: str = ""
    """First 256 bytes of the response body, decoded leniently."""

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.DELIVERED

    def log_fields(self) -> dict[str, Any]:
        fields = asdict(self)
        fields["outcome"] = str(self.outcome)
        return {k: v for k, v in fields.items() if v not in (None, "")}


# ---------------------------------------------------------------------------------------------
# retry schedule
# ---------------------------------------------------------------------------------------------
def retry_delay_s(
    attempt: int,
    schedule: Sequence[float] = DEFAULT_RETRY_SCHEDULE_S,
    *,
    jitter: float = 0.0,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait after attempt number ``attempt`` (1-based) failed; None = that was the last.

    ``schedule[i]`` is the delay before attempt ``i + 1``, so there are ``len(schedule)`` attempts
    and the delay after attempt n is ``schedule[n]``. ``jitter`` (e.g. 0.1) spreads each delay
    by up to that fraction either way.
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    if not 0.0 <= jitter < 1.0:
        raise ValueError("jitter must be in [0, 1)")
    if attempt >= len(schedule):
        return None
    delay = max(0.0, float(schedule[attempt]))
    if jitter and delay:
        delay *= 1.0 + (rng or random).uniform(-jitter, jitter)
    return delay


def next_delay_s(
    result: DeliveryResult,
    schedule: Sequence[float] = DEFAULT_RETRY_SCHEDULE_S,
    *,
    jitter: float = 0.0,
    rng: random.Random | None = None,
) -> float | None:
    """Delay before the next attempt after ``result``, or None (final outcome / schedule spent).

    Honours ``Retry-After`` as a lower bound: max(schedule delay, retry_after_s).
    """
    if result.outcome.final:
        return None
    delay = retry_delay_s(result.attempt, schedule, jitter=jitter, rng=rng)
    if delay is None:
        return None
    return max(delay, result.retry_after_s or 0.0)


def parse_retry_after(value: str | None, *, now: float | None = None, cap_s: float = MAX_RETRY_AFTER_S) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or HTTP-date), clamped to [0, cap_s]; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), cap_s)


def classify_status(status: int) -> Outcome:
    """Outcome of an HTTP status (redirects are never followed, so 3xx is a failure)."""
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status == 410:
        return Outcome.GONE
    if status in RETRY_STATUSES or status >= 500:
        return Outcome.RETRY
    return Outcome.PERMANENT


# ---------------------------------------------------------------------------------------------
# one attempt
# ---------------------------------------------------------------------------------------------
async def _read_snippet(resp: aiohttp.ClientResponse, limit: int = SNIPPET_BYTES) -> bytes:
    buf = bytearray()
    while len(buf) < limit:
        chunk = await resp.content.read(limit - len(buf))
        if not chunk:
            break
        buf.extend(chunk)
    return bytes(buf)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def deliver(
    session: aiohttp.ClientSession,
    url: str,
    event_json: bytes,
    msg_id: str,
    secrets: str | SecretStr | bytes | Sequence[bytes],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    allow: Iterable[str] | AllowList | None = (),
    attempt: int = 1,
    resolver: HostResolver | None = None,
    max_retry_after_s: float = MAX_RETRY_AFTER_S,
    now: float | None = None,
) -> DeliveryResult:
    """POST ``event_json`` to ``url`` signed per Standard Webhooks, and classify what happened.

    ``msg_id`` is the event id (``webhook-id``); ``attempt`` is the 1-based delivery count, only
    recorded in the result. ``timeout_s`` bounds connect + response + reading the body snippet.
    Use a ``runtime.netguard.guarded_session`` with the same allow-list so the connect-time DNS
    answer is checked too (DNS rebinding); the pre-flight ``check_url`` here covers IP literals.
    """
    shown = redact_url(url)
    log = get_logger(stage="webhook", msg_id=msg_id)
    started = time.monotonic()

    def done(outcome: Outcome, **kw: Any) -> DeliveryResult:
        latency = round((time.monotonic() - started) * 1000.0, 1)
        result = DeliveryResult(outcome=outcome, url=shown, attempt=attempt, latency_ms=latency, **kw)
        level = "info" if outcome is Outcome.DELIVERED else "warning"
        getattr(log, level)("webhook.attempt", **result.log_fields())
        return result

    try:
        await check_url(url, allow, resolver=resolver, code=ErrorCode.WEBHOOK_URL_FORBIDDEN)
        require_https(url, allow)  # after the SSRF check: its reason is the more specific one
    except ForbiddenTarget as e:
        return done(Outcome.FORBIDDEN, error=str(e))
    except TargetUnresolvable as e:
        return done(Outcome.RETRY, error=str(e))

    hdrs = signed_headers(msg_id, event_json, secrets, now=now)
    try:
        async with session.post(
            url,
            data=event_json,
            headers=hdrs,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            snippet = (await _read_snippet(resp)).decode("utf-8", errors="replace")
            status = resp.status
            outcome = classify_status(status)
            retry_after = None
            error = None
            if outcome is Outcome.RETRY and status in RETRY_AFTER_STATUSES:
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), cap_s=max_retry_after_s)
            if outcome is not Outcome.DELIVERED:
                error = f"HTTP {status}"
                if 300 <= status < 400:
                    error += f" redirect to {redact_url(resp.headers.get('Location', ''))} not followed"
            return done(outcome, status_code=status, error=error, retry_after_s=retry_after, body_snippet=snippet)
    except ForbiddenTarget as e:  # raised by a GuardedResolver at connect time
        return done(Outcome.FORBIDDEN, error=str(e))
    except TargetUnresolvable as e:
        return done(Outcome.RETRY, error=str(e))
    except (aiohttp.InvalidURL, ValueError) as e:
        return done(Outcome.PERMANENT, error=_describe(e))
    except TimeoutError:
        return done(Outcome.RETRY, error=f"timeout after {timeout_s:g}s")
    except aiohttp.ClientError as e:
        return done(Outcome.RETRY, error=_describe(e))

