"""The slice of ``runtime.storage.Storage`` that preprocess uses, as a Protocol.

``Storage`` satisfies it structurally; unit tests pass an in-memory fake.
"""

from __future__ import annotations

from typing import Protocol

from schemas.messages import ObjectRef


class ObjectStore(Protocol):
    bucket: str

    async def get_bytes(self, key: str, *, bucket: str | None = None, max_bytes: int | None = None) -> bytes: ...

    async def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream", *,
                        bucket: str | None = None, metadata: dict[str, str] | None = None) -> ObjectRef: ...


class MemoryStore:
    """An in-memory ``ObjectStore`` (tests, local tools). Mirrors ``Storage``'s size refusal."""

    def __init__(self, bucket: str = "videogen") -> None:
        self.bucket = bucket
        self.objects: dict[tuple[str, str], bytes] = {}

    async def get_bytes(self, key: str, *, bucket: str | None = None, max_bytes: int | None = None) -> bytes:
        from runtime.storage import ObjectNotFound, ObjectTooLarge

        b = bucket or self.bucket
        if (b, key) not in self.objects:
            raise ObjectNotFound(f"get {b}/{key}: not found")
        data = self.objects[(b, key)]
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectTooLarge(f"s3://{b}/{key} is {len(data)} bytes (limit {max_bytes})")
        return data

    async def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream", *,
                        bucket: str | None = None, metadata: dict[str, str] | None = None) -> ObjectRef:
        b = bucket or self.bucket
        self.objects[(b, key)] = bytes(data)
        return ObjectRef(bucket=b, key=key, etag=f"{len(data):x}", size=len(data))

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(k for b, k in self.objects if b == self.bucket and k.startswith(prefix))
