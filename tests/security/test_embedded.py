"""The embedded stack exposes objects only through the S3 API, on loopback, with private files."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.settings import Settings, load_settings
from runtime.stack import start_servers
from runtime.storage import Storage

pytestmark = [pytest.mark.integration]

SECRET = b"only-through-s3-" * 64


def _listening_ports(pid: int) -> set[tuple[str, int]]:
    """(ip, port) of every TCP socket process ``pid`` listens on (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A = LISTEN
                continue
            addr, port = cols[1].split(":")
            if v6:
                raw = b"".join(bytes.fromhex(addr[i:i + 8])[::-1] for i in range(0, 32, 8))  # 4 LE words
                ip = socket.inet_ntop(socket.AF_INET6, raw)
            else:
                ip = socket.inet_ntoa(bytes.fromhex(addr)[::-1])
            found.add((ip, int(port, 16)))
    return found


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, object, object]]:
    data = tmp_path_factory.mktemp("embedded") / "data"
    settings, nats, s3 = start_servers(load_settings(data_dir=data, embedded=True), fixed_ports=False)
    try:
        yield settings, nats, s3
    finally:
        s3.stop()
        nats.stop()


def test_data_dirs_and_secret_files_are_private(embedded) -> None:
    settings, _, _ = embedded
    data = Path(settings.data_dir)
    for d in (data, data / "nats", data / "s3"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    for f in ("stack.env", "s3-identities.json", "security.toml", "nats-server.conf"):
        assert stat.S_IMODE((data / f).stat().st_mode) == 0o600, f
    assert settings.s3_secret_key.get_secret_value() in (data / "stack.env").read_text()


def test_every_server_port_is_loopback(embedded) -> None:
    _, nats, s3 = embedded
    for proc in (nats.process.proc, s3.process.proc):
        ports = _listening_ports(proc.pid)
        assert ports, "found no listening sockets"
        assert all(ip.startswith("127.") or ip == "::1" for ip, _ in ports), ports


def _http(method: str, port: int, path: str, data: bytes | None = None) -> tuple[int | None, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            return r.status, r.read(1 << 16)
    except urllib.error.HTTPError as e:
        return e.code, e.read(1 << 16)
    except (OSError, urllib.error.URLError):
        return None, b""  # not HTTP (gRPC) or connection refused


def test_no_unauthenticated_object_access_on_any_weed_port(embedded) -> None:
    settings, _, s3 = embedded
    key = "jobs/victim/out/video.mp4"

    async def put_and_get() -> bytes:
        async with Storage(settings) as st:
            await st.ensure_bucket()
            await st.put_bytes(key, SECRET, "video/mp4")
            return await st.get_bytes(key)

    assert asyncio.run(put_and_get()) == SECRET  # the S3 API (signed) works
    ports = sorted(p for _, p in _listening_ports(s3.process.proc.pid))
    assert s3.port in ports and len(ports) >= 5
    paths = [f"/{settings.bucket}/{key}", f"/buckets/{settings.bucket}/{key}", "/1,0123456789", "/2,0123456789",
             "/dir/assign", "/dir/lookup?volumeId=1", f"/col/delete?collection={settings.bucket}",
             "/vol/grow?count=1", "/submit", f"/buckets/{settings.bucket}/"]
    opened = []
    for port in ports:
        for path in paths:
            for method, body in (("GET", None), ("PUT", b"pwned"), ("POST", b"pwned"), ("DELETE", None)):
                status, text = _http(method, port, path, body)
                assert SECRET[:32] not in text, (port, method, path)
                if status is not None and 200 <= status < 300:
                    opened.append((port, method, path, status, text[:120]))
    assert opened == []

    async def still_there() -> bytes:
        async with Storage(settings) as st:
            return await st.get_bytes(key)

    assert asyncio.run(still_there()) == SECRET  # nothing overwritten or deleted
