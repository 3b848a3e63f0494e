"""In-memory fakes of the bus and the object store, for fast handler unit tests (no servers).

They implement exactly the surface stage handlers use (``runtime.bus.Bus``'s publish and stored-
message operations, the status KV behind ``runtime.jobs.StatusStore``; ``runtime.storage.Storage``'s
put/get/list/delete/copy/presign) with the same semantics where handlers depend on them:

* publish routes a subject to its stream (``schemas.names.STREAMS``) and de-duplicates by
  ``Nats-Msg-Id`` (same sequence back, ``duplicate=True``), as JetStream does in its window;
* the KV is compare-and-set on revisions and raises the client's own errors (``KeyNotFoundError``,
  ``KeyWrongLastSequenceError``), so ``StatusStore`` runs unchanged;
* a missing object raises ``ObjectNotFound`` (a ``Permanent``), as the real store does.

``fake_ports()`` wires them into :class:`runtime.ports.Ports`. Integration tests stay on the real
servers; these are for the handlers' own logic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from pydantic import BaseModel

from runtime.bus import StoredMessage
from runtime.jobs import JobTracker
from runtime.ports import Ports
from runtime.settings import Settings, load_settings
from runtime.storage import ObjectNotFound
from schemas.messages import ObjectRef
from schemas.names import HEADER_MSG_ID, STREAMS


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` one or more trailing tokens."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


@dataclass(frozen=True)
class FakePubAck:
    stream: str
    seq: int
    duplicate: bool = False


@dataclass
class FakeStream:
    name: str
    subjects: tuple[str, ...]
    last_seq: int = 0
    messages: dict[int, StoredMessage] = field(default_factory=dict)
    msg_ids: dict[str, int] = field(default_factory=dict)


@dataclass
class _Entry:
    bucket: str
    key: str
    value: bytes | None
    revision: int
    delta: int | None = None
    created: int | None = None
    operation: str | None = None


class FakeKV:
    """The ``videogen-jobs`` bucket: get / create / update(last=) / put / delete."""

    def __init__(self, bucket: str = "videogen-jobs") -> None:
        self.bucket = bucket
        self._rev = 0
        self.entries: dict[str, _Entry] = {}

    async def get(self, key: str) -> _Entry:
        entry = self.entries.get(key)
        if entry is None or entry.operation == "DEL":
            raise KeyNotFoundError()
        return entry

    async def create(self, key: str, value: bytes) -> int:
        if key in self.entries and self.entries[key].operation != "DEL":
            raise KeyWrongLastSequenceError(description="wrong last sequence: key exists")
        return self._store(key, value)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        current = self.entries.get(key)
        if current is None or current.revision != last:
            raise KeyWrongLastSequenceError(description=f"wrong last sequence: {current and current.revision}")
        return self._store(key, value)

    async def put(self, key: str, value: bytes) -> int:
        return self._store(key, value)

    async def delete(self, key: str) -> None:
        self._rev += 1
        self.entries[key] = _Entry(self.bucket, key, b"", self._rev, operation="DEL")

    def _store(self, key: str, value: bytes) -> int:
        self._rev += 1
        self.entries[key] = _Entry(self.bucket, key, value, self._rev)
        return self._rev


class FakeBus:
    """Streams from ``schemas.names.STREAMS`` in memory, plus the status KV."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings
        self.name = "fake-bus"
        self.streams = {s.name: FakeStream(s.name, tuple(s.subjects)) for s in STREAMS}
        self._kv = FakeKV()
        self._buckets: dict[str, FakeKV] = {}
        # consumer (stream, durable) -> highest delivered stream sequence; absent: no such consumer
        self.delivered: dict[tuple[str, str], int] = {}
        self.fail_publish: set[str] = set()  # subjects whose publish raises (a bus outage)
        # awaited after each stored publish: lets a test land a racing write (a cancel) right there
        self.after_publish: list[Callable[[StoredMessage], Awaitable[None]]] = []

    # ---- the Bus surface -----------------------------------------------------------------
    async def kv(self) -> FakeKV:
        return self._kv

    async def kv_bucket(self, name: str, *, create: bool = True, scale: bool = False) -> FakeKV:
        return self._buckets.setdefault(name, FakeKV(name))

    async def publish(self, subject: str, payload: BaseModel | bytes, *, msg_id: str | None = None,
                      headers: dict[str, str] | None = None, timeout_s: float = 5.0) -> FakePubAck:
        from schemas.errors import ErrorCode, Retryable

        if any(subject_matches(p, subject) for p in self.fail_publish):
            raise Retryable(f"publish to {subject} failed: fake outage", code=ErrorCode.BUS_ERROR, delay_s=2.0)
        stream = self.stream_for(subject)
        if msg_id is not None and msg_id in stream.msg_ids:
            return FakePubAck(stream.name, stream.msg_ids[msg_id], duplicate=True)
        data = payload if isinstance(payload, bytes) else payload.model_dump_json().encode()
        hdrs = dict(headers or {})
        if msg_id:
            hdrs[HEADER_MSG_ID] = msg_id
            stream.msg_ids[msg_id] = stream.last_seq + 1
        stream.last_seq += 1
        stored = StoredMessage(stream.name, stream.last_seq, subject, data, hdrs)
        stream.messages[stream.last_seq] = stored
        for hook in list(self.after_publish):
            await hook(stored)
        return FakePubAck(stream.name, stored.seq)

    async def get_message(self, stream: str, seq: int) -> StoredMessage | None:
        return self.streams[stream].messages.get(seq)

    async def next_message(self, stream: str, seq: int, subject: str) -> StoredMessage | None:
        for s in sorted(self.streams[stream].messages):
            m = self.streams[stream].messages[s]
            if s >= seq and subject_matches(subject, m.subject):
                return m
        return None

    async def last_message(self, stream: str, subject: str) -> StoredMessage | None:
        found = [m for m in self.streams[stream].messages.values() if subject_matches(subject, m.subject)]
        return max(found, key=lambda m: m.seq) if found else None

    async def delete_message(self, stream: str, seq: int) -> bool:
        return self.streams[stream].messages.pop(seq, None) is not None

    async def subject_counts(self, stream: str, subjects_filter: str) -> tuple[int, dict[str, int]]:
        st = self.streams[stream]
        counts: dict[str, int] = {}
        for m in st.messages.values():
            if subject_matches(subjects_filter, m.subject):
                counts[m.subject] = counts.get(m.subject, 0) + 1
        return st.last_seq, counts

    async def consumer_position(self, stream: str, durable: str) -> tuple[int, int] | None:
        if (stream, durable) not in self.delivered:
            return None
        delivered = self.delivered[(stream, durable)]
        pending = sum(1 for s in self.streams[stream].messages if s > delivered)
        return delivered, pending

    # ---- for assertions ------------------------------------------------------------------
    def stream_for(self, subject: str) -> FakeStream:
        for st in self.streams.values():
            if any(subject_matches(p, subject) for p in st.subjects):
                return st
        raise LookupError(f"no stream holds subject {subject!r} (schemas.names.STREAMS)")

    def messages(self, subject: str) -> list[StoredMessage]:
        """Stored messages whose subject matches ``subject`` (wildcards allowed), in publish order."""
        out = [m for st in self.streams.values() for m in st.messages.values() if subject_matches(subject, m.subject)]
        return sorted(out, key=lambda m: (m.stream, m.seq))

    def payloads(self, subject: str, model: type[BaseModel]) -> list[Any]:
        return [model.model_validate_json(m.data) for m in self.messages(subject)]


class FakeStorage:
    """One bucket of objects in memory."""

    def __init__(self, bucket: str = "videogen") -> None:
        self.bucket = bucket
        self.objects: dict[tuple[str, str], bytes] = {}
        self.deleted: list[str] = []
        # awaited after each write with its key: lets a test land a racing write (a cancel) right there
        self.after_write: list[Callable[[str], Awaitable[None]]] = []

    def ref(self, key: str, *, etag: str = "", size: int = 0, bucket: str | None = None) -> ObjectRef:
        return ObjectRef(bucket=bucket or self.bucket, key=key, etag=etag, size=size)

    async def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream", *,
                        bucket: str | None = None, metadata: dict[str, str] | None = None,
                        verify_md5: bool = False) -> ObjectRef:
        b = bucket or self.bucket
        self.objects[(b, key)] = bytes(data)
        for hook in list(self.after_write):
            await hook(key)
        return self.ref(key, etag=hashlib.md5(data, usedforsecurity=False).hexdigest(), size=len(data), bucket=b)

    async def put_atomic(self, key: str, data: bytes, content_type: str = "application/octet-stream",
                         metadata: dict[str, str] | None = None) -> ObjectRef:
        return await self.put_bytes(key, data, content_type, metadata=metadata)

    async def get_bytes(self, key: str, *, bucket: str | None = None, max_bytes: int | None = None) -> bytes:
        b = bucket or self.bucket
        if (b, key) not in self.objects:
            raise ObjectNotFound(f"get {b}/{key}: NoSuchKey")
        return self.objects[(b, key)]

    async def head(self, key: str, *, bucket: str | None = None) -> ObjectRef:
        data = await self.get_bytes(key, bucket=bucket)
        return self.ref(key, size=len(data), bucket=bucket)

    async def exists(self, key: str, *, bucket: str | None = None) -> bool:
        return ((bucket or self.bucket), key) in self.objects

    async def copy(self, src_key: str, dst_key: str, *, src_bucket: str | None = None,
                   size: int | None = None) -> ObjectRef:
        data = await self.get_bytes(src_key, bucket=src_bucket)
        return await self.put_bytes(dst_key, data)

    async def list_keys(self, prefix: str) -> list[str]:
        return sorted(k for b, k in self.objects if b == self.bucket and k.startswith(prefix))

    async def delete(self, key: str) -> None:
        self.objects.pop((self.bucket, key), None)  # S3 DELETE of a missing key succeeds too
        self.deleted.append(key)

    async def delete_prefix(self, prefix: str) -> int:
        keys = await self.list_keys(prefix)
        for k in keys:
            await self.delete(k)
        return len(keys)

    async def presign_get(self, key: str, ttl_s: int, *, bucket: str | None = None) -> tuple[str, datetime]:
        return (f"http://fake-s3/{bucket or self.bucket}/{key}?X-Amz-Expires={int(ttl_s)}",
                datetime.now(UTC) + timedelta(seconds=int(ttl_s)))

    def keys(self) -> list[str]:
        return sorted(k for _, k in self.objects)


@dataclass
class FakeDelivery:
    """What a handler gets as its ``WorkItem`` when no broker is involved."""

    num_delivered: int = 1
    max_deliver: int = 5
    stream_seq: int | None = 1
    stage: str = "test"
    heartbeats: int = 0
    subject: str = ""  # the subject it came on (a tenant's: ``videogen.t.<tenant>.…``)

    @property
    def final_attempt(self) -> bool:
        return self.num_delivered >= self.max_deliver

    async def in_progress(self) -> None:
        self.heartbeats += 1


def fake_ports(settings: Settings | None = None, **overrides: Any) -> Ports:
    """Ports over a FakeBus and a FakeStorage (``ports.bus`` / ``ports.storage`` for assertions)."""
    settings = settings or load_settings(**overrides)
    bus = FakeBus(settings)
    storage = FakeStorage(settings.bucket)
    return Ports(settings, bus, storage, JobTracker(bus))  # type: ignore[arg-type]
