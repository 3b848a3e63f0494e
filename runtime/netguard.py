"""SSRF guard for every outbound HTTP request whose URL a client chose (webhooks, input URLs).

Policy: the scheme must be ``http``/``https``; the host is resolved (every A/AAAA record) and the
URL is refused if ANY address is not publicly routable — loopback, private (RFC 1918, fc00::/7),
link-local (169.254/16 incl. the 169.254.169.254 metadata service, fe80::/10), multicast,
unspecified (0.0.0.0, ::), CGNAT (100.64/10), reserved/special-purpose, deprecated site-local,
or an IPv6 address that embeds one of those (IPv4-mapped, NAT64, 6to4, Teredo) — unless the host
or the address matches the allow-list (hostnames, ``*.suffix`` wildcards, IPs, CIDRs).

Two layers, use both:

* ``check_url`` — pre-flight check (at submit time, and before each request).
* ``GuardedResolver`` / ``guarded_connector`` / ``guarded_session`` — an aiohttp resolver that
  re-runs the same check on every resolution at connect time, so a DNS answer that changes
  between the check and the connection (DNS rebinding) is caught. aiohttp skips the resolver for
  IP-literal hosts; those cannot rebind, and ``check_url`` has classified them already.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from runtime.logging import get_logger
from schemas.errors import ErrorCode, Permanent, Retryable
from schemas.names import INPUT_ATTEMPTS

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
HostResolver = Callable[[str], Awaitable[Sequence[str]]]
"""``async (hostname) -> IP address strings``; injectable for tests."""

ALLOWED_SCHEMES = frozenset({"http", "https"})
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_RFC1918 = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_ULA = ipaddress.IPv6Network("fc00::/7")
_HOST_CHARS = re.compile(r"[A-Za-z0-9._:%-]+")


class ForbiddenTarget(Permanent):
    """The URL may not be contacted (scheme, malformed, or a non-public address)."""

    code = ErrorCode.WEBHOOK_URL_FORBIDDEN


class TargetUnresolvable(Retryable):
    """The host did not resolve; DNS may recover, so this is retryable (same code as the caller's),
    ``INPUT_ATTEMPTS`` deliveries at most: a client's host, not our outage."""

    code = ErrorCode.WEBHOOK_URL_FORBIDDEN
    max_attempts = INPUT_ATTEMPTS


@dataclass(frozen=True, slots=True)
class ResolvedAddr:
    """One checked address of a URL's host."""

    hostname: str
    ip: IPAddress
    port: int
    allowed_by: str | None = None
    """The allow-list entry that admitted a non-public address (None: the address is public)."""

    @property
    def family(self) -> int:
        return socket.AF_INET6 if self.ip.version == 6 else socket.AF_INET


# ---------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------
def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    out: list[tuple[str, ipaddress.IPv4Address]] = []
    if ip.ipv4_mapped is not None:
        out.append(("ipv4-mapped", ip.ipv4_mapped))
    if ip in _NAT64:
        out.append(("nat64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
    if ip.sixtofour is not None:
        out.append(("6to4", ip.sixtofour))
    if ip.teredo is not None:
        out.extend(("teredo", v4) for v4 in ip.teredo)
    return out


def classify_ip(ip: IPAddress | str) -> str | None:
    """Why ``ip`` is not a public unicast address (e.g. ``"loopback"``), or None if it is public."""
    if isinstance(ip, str):
        ip = ipaddress.ip_address(ip)
    if isinstance(ip, ipaddress.IPv6Address):
        for kind, v4 in _embedded_ipv4(ip):
            reason = classify_ip(v4)
            if reason is not None:
                return f"{kind} {reason}"
    checks: tuple[tuple[str, bool], ...] = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("cgnat", isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT),
        ("private", any(ip in n for n in _RFC1918) or (ip.version == 6 and ip in _ULA)),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
        ("reserved", ip.is_reserved or ip.is_private or not ip.is_global),
    )
    return next((reason for reason, hit in checks if hit), None)


# ---------------------------------------------------------------------------------------------
# allow-list
# ---------------------------------------------------------------------------------------------
def _norm_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


@dataclass(frozen=True, slots=True)
class AllowList:
    """Parsed allow-list: exact hostnames, ``*.suffix`` wildcards, IP networks (an IP is a /32 or /128)."""

    hosts: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    entries: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str] | AllowList | None) -> AllowList:
        if isinstance(entries, AllowList):
            return entries
        hosts: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        kept: list[str] = []
        for raw in entries or ():
            entry = raw.strip()
            if not entry:
                continue
            kept.append(entry)
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if entry.startswith("*."):
                suffixes.append("." + _norm_host(entry[2:]))
            else:
                hosts.add(_norm_host(entry))
        return cls(frozenset(hosts), tuple(suffixes), tuple(networks), tuple(kept))

    def match_host(self, host: str) -> str | None:
        h = _norm_host(host)
        if h in self.hosts:
            return h
        return next(("*" + s for s in self.suffixes if h.endswith(s)), None)

    def match_ip(self, ip: IPAddress) -> str | None:
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        for net in self.networks:
            if any(c.version == net.version and c in net for c in candidates):
                return str(net)
        return None


# ---------------------------------------------------------------------------------------------
# resolution + check
# ---------------------------------------------------------------------------------------------
async def system_resolver(host: str) -> list[str]:
    """Every A/AAAA address of ``host`` via ``loop.getaddrinfo`` (order kept, duplicates dropped)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _parse_ip(value: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return None


async def check_host(
    host: str,
    port: int,
    allow: Iterable[str] | AllowList | None,
    *,
    resolver: HostResolver | None = None,
    code: ErrorCode = ErrorCode.WEBHOOK_URL_FORBIDDEN,
    shown: str | None = None,
) -> list[ResolvedAddr]:
    """Resolve ``host`` and apply the policy; ``shown`` names the target in error messages."""
    allow_list = AllowList.parse(allow)
    target = shown or host
    literal = _parse_ip(host)
    if literal is not None:
        raw_ips: Sequence[str] = [str(literal)]
    else:
        try:
            raw_ips = await (resolver or system_resolver)(host)
        except (OSError, UnicodeError) as e:
            raise TargetUnresolvable(f"{target}: host {host!r} does not resolve: {e}", code=code) from e
        if not raw_ips:
            raise TargetUnresolvable(f"{target}: host {host!r} has no addresses", code=code)
    host_entry = allow_list.match_host(host)
    out: list[ResolvedAddr] = []
    for raw in raw_ips:
        ip = _parse_ip(raw)
        if ip is None:
            raise ForbiddenTarget(f"{target}: resolver returned a non-IP {raw!r}", code=code)
        reason = classify_ip(ip)
        allowed_by = (host_entry or allow_list.match_ip(ip)) if reason else None
        if reason and not allowed_by:
            get_logger(stage="netguard").warning(
                "netguard.refused", target=target, host=host, ip=str(ip), reason=reason, code=str(code)
            )
            what = f"address {ip}" if literal is not None else f"{host} resolves to {ip}"
            raise ForbiddenTarget(f"{target}: {what} ({reason}), which is not allowed", code=code)
        out.append(ResolvedAddr(hostname=host, ip=ip, port=port, allowed_by=allowed_by))
    return out


def redact_url(url: str | URL) -> str:
    """``scheme://host:port/path`` only: no credentials, query or fragment (safe for logs)."""
    try:
        u = URL(url) if isinstance(url, str) else url
        if not u.absolute:
            return "<relative url>"
        return str(u.with_user(None).with_password(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "<invalid url>"


def parse_target(url: str | URL, *, code: ErrorCode = ErrorCode.WEBHOOK_URL_FORBIDDEN) -> tuple[URL, str, int]:
    """Parse and vet the URL's shape: returns (url, host as aiohttp connects to it, port)."""
    shown = redact_url(url)
    try:
        u = URL(url) if isinstance(url, str) else url
        host, port, scheme = u.raw_host, u.port, u.scheme
    except (ValueError, TypeError) as e:
        raise ForbiddenTarget(f"{shown}: malformed URL: {e}", code=code) from e
    if scheme not in ALLOWED_SCHEMES:
        raise ForbiddenTarget(f"{shown}: scheme {scheme!r} is not allowed (http/https only)", code=code)
    if not host:
        raise ForbiddenTarget(f"{shown}: URL has no host", code=code)
    if not _HOST_CHARS.fullmatch(host):
        raise ForbiddenTarget(f"{shown}: malformed host {host!r}", code=code)
    if port is None or not 0 < port < 65536:
        raise ForbiddenTarget(f"{shown}: invalid port", code=code)
    return u, host, port


def require_https(url: str | URL, allow: Iterable[str] | AllowList | None = None, *,
                  code: ErrorCode = ErrorCode.WEBHOOK_URL_FORBIDDEN) -> None:
    """Webhooks carry a presigned URL (a bearer credential): ``https`` only, unless the host is
    allow-listed (``webhook_allow_hosts``: the local receivers of the embedded demo and tests)."""
    u, host, _port = parse_target(url, code=code)
    if u.scheme == "https":
        return
    allow_list = AllowList.parse(allow)
    ip = _parse_ip(host.strip("[]"))
    if allow_list.match_host(host) or (ip is not None and allow_list.match_ip(ip)):
        return
    raise ForbiddenTarget(f"{redact_url(url)}: plain http is refused (https only; allow-list the host "
                          "in VIDEOGEN_WEBHOOK_ALLOW_HOSTS for a local receiver)", code=code)


async def check_url(
    url: str | URL,
    allow: Iterable[str] | AllowList | None = None,
    *,
    resolver: HostResolver | None = None,
    code: ErrorCode = ErrorCode.WEBHOOK_URL_FORBIDDEN,
) -> list[ResolvedAddr]:
    """Vet ``url`` against the SSRF policy and return its checked addresses.

    Raises ``ForbiddenTarget`` (permanent, ``code``: ``WEBHOOK_URL_FORBIDDEN`` by default, pass
    ``INPUT_FORBIDDEN`` for input URLs) or ``TargetUnresolvable`` (retryable: DNS failure).
    No connection is made.
    """
    _u, host, port = parse_target(url, code=code)
    return await check_host(host, port, allow, resolver=resolver, code=code, shown=redact_url(url))


# ---------------------------------------------------------------------------------------------
# aiohttp integration: check again at connect time
# ---------------------------------------------------------------------------------------------
class GuardedResolver(AbstractResolver):
    """aiohttp resolver that applies the policy to every resolution (catches DNS rebinding).

    Raises ``ForbiddenTarget``/``TargetUnresolvable`` out of ``session.request(...)``: aiohttp
    only wraps ``OSError`` from resolvers, so the typed error reaches the caller unchanged.
    """

    def __init__(
        self,
        allow: Iterable[str] | AllowList | None = None,
        *,
        resolver: HostResolver | None = None,
        code: ErrorCode = ErrorCode.WEBHOOK_URL_FORBIDDEN,
    ) -> None:
        self._allow = AllowList.parse(allow)
        self._resolver = resolver
        self._code = code

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addrs = await check_host(host, port, self._allow, resolver=self._resolver, code=self._code)
        wanted = {socket.AF_INET: 4, socket.AF_INET6: 6}.get(family)
        results = [
            ResolveResult(hostname=host, host=str(a.ip), port=port, family=a.family, proto=0,
                          flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
            for a in addrs
            if wanted is None or a.ip.version == wanted
        ]
        if not results:
            raise OSError(f"{host} has no address of the requested family")
        return results

    async def close(self) -> None:
        return None


def guarded_connector(
    allow: Iterable[str] | AllowList | None = None,
    *,
    resolver: HostResolver | None = None,
    code: ErrorCode = ErrorCode.WEBHOOK_URL_FORBIDDEN,
    **kwargs: Any,
) -> aiohttp.TCPConnector:
    """A ``TCPConnector`` whose every DNS resolution is checked (no DNS cache: each connect re-checks)."""
    kwargs.setdefault("use_dns_cache", False)
    return aiohttp.TCPConnector(resolver=GuardedResolver(allow, resolver=resolver, code=code), **kwargs)


def guarded_session(
    allow: Iterable[str] | AllowList | None = None,
    *,
    resolver: HostResolver | None = None,
    code: ErrorCode = ErrorCode.WEBHOOK_URL_FORBIDDEN,
    **kwargs: Any,
) -> aiohttp.ClientSession:
    """A ``ClientSession`` on a guarded connector; ``trust_env=False`` so no env proxy bypasses the guard."""
    kwargs.setdefault("trust_env", False)
    return aiohttp.ClientSession(connector=guarded_connector(allow, resolver=resolver, code=code), **kwargs)
