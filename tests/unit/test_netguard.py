"""SSRF guard: classification only, plus the connect-time resolver against a 127.0.0.1 receiver.

No traffic leaves the machine: public addresses are only classified, never connected to.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Sequence

import aiohttp
import pytest

from runtime.netguard import (
    AllowList,
    ForbiddenTarget,
    GuardedResolver,
    TargetUnresolvable,
    check_url,
    classify_ip,
    guarded_session,
    redact_url,
)
from runtime.testing.webhook_receiver import WebhookReceiver
from schemas.errors import ErrorCode, Permanent, Retryable

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"


def fake_dns(table: dict[str, Sequence[str]]):  # type: ignore[no-untyped-def]
    """An injectable resolver answering from ``table``; unknown names fail like NXDOMAIN."""
    calls: list[str] = []

    async def resolve(host: str) -> Sequence[str]:
        calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


# --- classification -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "cgnat"),
        ("100.127.255.254", "cgnat"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("0.1.2.3", "reserved"),
        ("192.0.2.1", "reserved"),
        ("fec0::1", "site-local"),
        ("::ffff:127.0.0.1", "ipv4-mapped loopback"),
        ("::ffff:10.0.0.1", "ipv4-mapped private"),
        ("::ffff:169.254.169.254", "ipv4-mapped link-local"),
        ("64:ff9b::a00:1", "nat64 private"),
        ("2002:7f00:1::1", "6to4 loopback"),
        (PUBLIC_V4, None),
        ("8.8.8.8", None),
        ("100.128.0.1", None),
        (PUBLIC_V6, None),
        ("::ffff:93.184.216.34", "reserved"),  # mapped form is never a routable v6 target
    ],
)
def test_classify(ip: str, reason: str | None) -> None:
    assert classify_ip(ip) == reason


# --- check_url: refusals ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://127.0.0.1:8080/hook?token=x",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::1]:9000/",
        "https://[::ffff:127.0.0.1]/",
        "http://0.0.0.0:80/",
        "http://[fe80::1]/",
        "http://100.64.1.2/",
    ],
)
async def test_private_literals_refused(url: str) -> None:
    with pytest.raises(ForbiddenTarget) as info:
        await check_url(url, [])
    err = info.value
    assert isinstance(err, Permanent) and not err.retryable
    assert err.code is ErrorCode.WEBHOOK_URL_FORBIDDEN
    assert "token=x" not in str(err)


def _hosts_file_has_localhost() -> bool:
    try:
        with open("/etc/hosts", encoding="utf-8") as f:
            return any("localhost" in line.split("#")[0].split()[1:] for line in f)
    except OSError:
        return False


@pytest.mark.skipif(not _hosts_file_has_localhost(), reason="no localhost in /etc/hosts (would query DNS)")
async def test_localhost_refused_via_system_resolver() -> None:
    # resolves through /etc/hosts (no DNS query, no traffic); every answer is loopback
    with pytest.raises(ForbiddenTarget, match="loopback"):
        await check_url("http://localhost:8000/hook", [])


async def test_hostname_resolving_to_loopback_refused() -> None:
    dns = fake_dns({"hooks.example.com": ["127.0.0.1"]})
    with pytest.raises(ForbiddenTarget, match="hooks.example.com resolves to 127.0.0.1"):
        await check_url("https://hooks.example.com/x", [], resolver=dns)
    assert dns.calls == ["hooks.example.com"]  # type: ignore[attr-defined]


async def test_any_private_answer_refuses_whole_host() -> None:
    dns = fake_dns({"mixed.example.com": [PUBLIC_V4, "10.1.2.3"]})
    with pytest.raises(ForbiddenTarget, match="10.1.2.3"):
        await check_url("https://mixed.example.com/", [], resolver=dns)


async def test_metadata_via_hostname_refused() -> None:
    dns = fake_dns({"metadata.evil.test": ["169.254.169.254"]})
    with pytest.raises(ForbiddenTarget, match="link-local"):
        await check_url("http://metadata.evil.test/", [], resolver=dns)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://example.com/x", "scheme 'ftp'"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("gopher://example.com/", "scheme"),
        ("http:///nohost", "no host"),
        ("/relative/path", "scheme"),
        ("http://exa mple.com/", "malformed host"),
    ],
)
async def test_bad_shapes_refused(url: str, fragment: str) -> None:
    with pytest.raises(ForbiddenTarget, match=fragment):
        await check_url(url, [], resolver=fake_dns({}))


async def test_input_code_parameter() -> None:
    with pytest.raises(ForbiddenTarget) as info:
        await check_url("http://10.0.0.1/in.png", [], code=ErrorCode.INPUT_FORBIDDEN)
    assert info.value.code is ErrorCode.INPUT_FORBIDDEN


async def test_unresolvable_is_retryable() -> None:
    with pytest.raises(TargetUnresolvable) as info:
        await check_url("https://nx.example.invalid/", [], resolver=fake_dns({}))
    assert isinstance(info.value, Retryable) and info.value.retryable


async def test_empty_answer_is_unresolvable() -> None:
    with pytest.raises(TargetUnresolvable):
        await check_url("https://empty.example.com/", [], resolver=fake_dns({"empty.example.com": []}))


# --- check_url: acceptances ---------------------------------------------------------------------
async def test_public_literal_accepted_without_connecting() -> None:
    [addr] = await check_url(f"https://{PUBLIC_V4}/hook", [])
    assert str(addr.ip) == PUBLIC_V4 and addr.port == 443 and addr.allowed_by is None


async def test_public_hostname_accepted() -> None:
    dns = fake_dns({"hooks.example.com": [PUBLIC_V4, PUBLIC_V6]})
    addrs = await check_url("http://hooks.example.com:8080/x", [], resolver=dns)
    assert [str(a.ip) for a in addrs] == [PUBLIC_V4, PUBLIC_V6]
    assert {a.port for a in addrs} == {8080}
    assert [a.family for a in addrs] == [socket.AF_INET, socket.AF_INET6]


async def test_allow_listed_ip_accepted() -> None:
    [addr] = await check_url("http://127.0.0.1:9999/hook", ["127.0.0.1"])
    assert addr.allowed_by == "127.0.0.1/32"


async def test_allow_list_cidr_host_and_wildcard() -> None:
    dns = fake_dns({"svc.internal.": ["172.16.8.7"], "a.dev.local": ["192.168.0.5"], "b.other": ["192.168.0.5"]})
    allow = ["10.0.0.0/8", "svc.internal", "*.dev.local", "::1"]
    assert (await check_url("http://10.1.1.1/", allow))[0].allowed_by == "10.0.0.0/8"
    assert (await check_url("http://SVC.internal./", allow, resolver=dns))[0].allowed_by == "svc.internal"
    assert (await check_url("http://a.dev.local/", allow, resolver=dns))[0].allowed_by == "*.dev.local"
    assert (await check_url("http://[::1]:81/", allow))[0].allowed_by == "::1/128"
    with pytest.raises(ForbiddenTarget):
        await check_url("http://b.other/", allow, resolver=dns)
    with pytest.raises(ForbiddenTarget):
        await check_url("http://127.0.0.1/", allow)


async def test_allow_listed_host_admits_all_its_addresses() -> None:
    dns = fake_dns({"localhost": ["127.0.0.1", "::1"]})
    addrs = await check_url("http://localhost:1/", ["localhost"], resolver=dns)
    assert [a.allowed_by for a in addrs] == ["localhost", "localhost"]


async def test_allow_listed_v4_covers_mapped_v6() -> None:
    [addr] = await check_url("http://[::ffff:127.0.0.1]/", ["127.0.0.1"])
    assert addr.allowed_by == "127.0.0.1/32"


def test_allow_list_parse_ignores_blanks() -> None:
    allow = AllowList.parse(["", "  ", "Example.COM.", "[::1]"])
    assert allow.match_host("example.com") == "example.com"
    assert allow.entries == ("Example.COM.", "[::1]")


def test_redact_url() -> None:
    assert redact_url("https://user:pw@h.example.com:8443/p/a?token=s#frag") == "https://h.example.com:8443/p/a"
    assert redact_url("/relative") == "<relative url>"


# --- connect-time resolver (DNS rebinding) ------------------------------------------------------
async def test_guarded_resolver_refuses_and_filters_family() -> None:
    dns = fake_dns({"h.test": ["127.0.0.1", "::1"], "pub.test": [PUBLIC_V4, PUBLIC_V6]})
    with pytest.raises(ForbiddenTarget):
        await GuardedResolver([], resolver=dns).resolve("h.test", 80, socket.AF_UNSPEC)
    res = await GuardedResolver([], resolver=dns).resolve("pub.test", 443, socket.AF_INET6)
    assert [(r["host"], r["port"], r["family"]) for r in res] == [(PUBLIC_V6, 443, socket.AF_INET6)]


async def test_rebinding_between_check_and_connect_is_caught() -> None:
    """The pre-flight check sees a public address, the connect-time lookup gets 127.0.0.1."""
    answers = iter([[PUBLIC_V4], ["127.0.0.1"]])

    async def rebinding_dns(host: str) -> Sequence[str]:
        return next(answers)

    async with WebhookReceiver(SECRET) as rx:
        url = f"http://rebind.test:{rx.port}/hook"
        await check_url(url, [], resolver=rebinding_dns)  # passes: public answer
        async with guarded_session([], resolver=rebinding_dns) as session:
            with pytest.raises(ForbiddenTarget, match="loopback"):
                await session.post(url, data=b"{}")
        assert rx.deliveries == []


async def test_guarded_session_reaches_allow_listed_receiver() -> None:
    dns = fake_dns({"hooks.test": ["127.0.0.1"]})
    async with WebhookReceiver(SECRET) as rx:
        url = f"http://hooks.test:{rx.port}/hook"
        async with guarded_session(["127.0.0.1"], resolver=dns) as session, session.post(url, data=b"{}") as resp:
            assert resp.status == 200
        await rx.wait_for(1, timeout_s=5)
        assert dns.calls == ["hooks.test"]  # type: ignore[attr-defined]


async def test_guarded_session_ignores_env_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://10.0.0.1:3128")
    async with guarded_session([]) as session:
        assert session.trust_env is False
        assert isinstance(session.connector, aiohttp.TCPConnector)
