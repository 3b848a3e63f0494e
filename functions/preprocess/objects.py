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
