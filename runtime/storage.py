"""S3 access (SigV4, path-style): the only module that talks to object storage.

Single-object reads and writes (PUT, GET, HEAD, COPY, DELETE: every stage's hot path) go through
``runtime.s3wire`` (SigV4 on aiohttp); listing, batch deletes, presigning, lifecycle and bucket
creation through aiobotocore.

Segment and output writes go through ``put_atomic``: a single PUT (atomic in S3: visible
only when complete) with ``Content-MD5`` so a corrupted body is refused by the server.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from runtime.s3wire import Credentials, ObjectTooLargeError, S3Error, S3Wire
from runtime.settings import Settings
from schemas.errors import ErrorCode, Permanent, Retryable
from schemas.messages import ObjectRef

_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


def _client_config() -> AioConfig:
    return AioConfig(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"max_attempts": 4, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=32,
    )


class ObjectNotFound(Permanent):
    code = ErrorCode.INPUT_UNREADABLE


class ObjectTooLarge(Permanent):
    code = ErrorCode.INPUT_TOO_LARGE


def _wrap(exc: Exception, what: str) -> Exception:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _NOT_FOUND:
            return ObjectNotFound(f"{what}: not found")
        if code in _DENIED:
            return Permanent(f"{what}: access denied ({code})", code=ErrorCode.STORAGE_ERROR)
    if isinstance(exc, S3Error):
        if exc.status == 404 or exc.code in _NOT_FOUND:
            return ObjectNotFound(f"{what}: not found")
        if exc.status == 403 or exc.code in _DENIED:
            return Permanent(f"{what}: access denied ({exc.code})", code=ErrorCode.STORAGE_ERROR)
    return Retryable(f"{what}: {exc}", code=ErrorCode.STORAGE_ERROR, delay_s=5.0)


class Storage:
    """Async S3 port. Use as ``async with Storage(settings) as s3: ...``."""

    def __init__(self, settings: Settings, bucket: str | None = None) -> None:
        self.settings = settings
        self.bucket = bucket or settings.bucket
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._presigner: Any = None
        self._wire: S3Wire | None = None

    async def __aenter__(self) -> Storage:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _client_kwargs(self, endpoint: str | None) -> dict[str, Any]:
        s = self.settings
        return {
            "endpoint_url": endpoint,
            "region_name": s.s3_region,
            "aws_access_key_id": s.s3_access_key.get_secret_value(),
            "aws_secret_access_key": s.s3_secret_key.get_secret_value(),
            "config": _client_config(),
        }

    async def open(self) -> None:
        session = get_session()
        self._client = await self._stack.enter_async_context(
            session.create_client("s3", **self._client_kwargs(self.settings.s3_endpoint))
        )
        if self.settings.presign_endpoint != self.settings.s3_endpoint:
            self._presigner = await self._stack.enter_async_context(
                session.create_client("s3", **self._client_kwargs(self.settings.presign_endpoint))
            )
        else:
            self._presigner = self._client
        s = self.settings
        self._wire = await self._stack.enter_async_context(S3Wire(
            s.s3_endpoint or f"https://s3.{s.s3_region}.amazonaws.com",
            Credentials(s.s3_access_key.get_secret_value(), s.s3_secret_key.get_secret_value(), s.s3_region),
            connect_timeout_s=5, read_timeout_s=60, attempts=4, pool=32))

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None
        self._wire = None

    @property
    def wire(self) -> S3Wire:
        if self._wire is None:
            raise RuntimeError("Storage is not open")
        return self._wire

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("Storage is not open")
        return self._client

    # ---- bucket -------------------------------------------------------------------------
    async def ensure_bucket(self, bucket: str | None = None) -> bool:
        """Create the bucket if missing. Returns True when it was created."""
        b = bucket or self.bucket
        try:
            await self.client.head_bucket(Bucket=b)
            return False
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) not in _NOT_FOUND:
                raise _wrap(e, f"head_bucket {b}") from e
        try:
            await self.client.create_bucket(Bucket=b)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise _wrap(e, f"create_bucket {b}") from e
            return False
        return True

    # ---- objects ------------------------------------------------------------------------
    def ref(self, key: str, *, etag: str = "", size: int = 0, bucket: str | None = None) -> ObjectRef:
        return ObjectRef(bucket=bucket or self.bucket, key=key, etag=etag.strip('"'), size=size)

    async def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream",
                        *, bucket: str | None = None, metadata: dict[str, str] | None = None,
                        verify_md5: bool = False) -> ObjectRef:
        """One PUT. ``verify_md5``: send ``Content-MD5`` so the server refuses a corrupted body."""
        b = bucket or self.bucket
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode() if verify_md5 else None
        try:
            etag = await self.wire.put(b, key, data, content_type=content_type, md5_b64=md5, metadata=metadata)
        except S3Error as e:
            raise _wrap(e, f"put {b}/{key}") from e
        return self.ref(key, etag=etag, size=len(data), bucket=b)

    async def put_atomic(self, key: str, data: bytes, content_type: str = "application/octet-stream",
                         metadata: dict[str, str] | None = None) -> ObjectRef:
        """Write ``key`` so readers see the whole object or nothing, byte-exact.

        An S3 PUT is atomic: the object becomes visible only once completely received (a
        crashed or cut upload leaves the previous version or nothing), so no temporary key is
        needed. ``Content-MD5`` makes the server reject a body corrupted on the way.
        """
        return await self.put_bytes(key, data, content_type, metadata=metadata, verify_md5=True)

    async def copy(self, src_key: str, dst_key: str, *, src_bucket: str | None = None,
                   size: int | None = None) -> ObjectRef:
        """Server-side copy (no download). ``size``: known source size, saves a HEAD."""
        try:
            etag = await self.wire.copy(src_bucket or self.bucket, src_key, self.bucket, dst_key)
        except S3Error as e:
            raise _wrap(e, f"copy {src_key} -> {dst_key}") from e
        if size is None:
            head = await self.head(dst_key)
            etag, size = etag or head.etag, head.size
        return self.ref(dst_key, etag=etag, size=size)

    async def head(self, key: str, *, bucket: str | None = None) -> ObjectRef:
        b = bucket or self.bucket
        try:
            etag, size = await self.wire.head(b, key)
        except S3Error as e:
            raise _wrap(e, f"head {b}/{key}") from e
        return self.ref(key, etag=etag, size=size, bucket=b)

    async def exists(self, key: str, *, bucket: str | None = None) -> bool:
        try:
            await self.head(key, bucket=bucket)
            return True
        except ObjectNotFound:
            return False

    async def get_bytes(self, key: str, *, bucket: str | None = None, max_bytes: int | None = None) -> bytes:
        """Read a whole object; refuse (ObjectTooLarge) past ``max_bytes`` without reading it all."""
        b = bucket or self.bucket
        try:
            return await self.wire.get(b, key, max_bytes=max_bytes)
        except ObjectTooLargeError as e:
            raise ObjectTooLarge(f"s3://{b}/{key} is {e.size} bytes (limit {max_bytes})") from e
        except S3Error as e:
            raise _wrap(e, f"get {b}/{key}") from e

    async def iter_chunks(self, key: str, chunk_bytes: int = 1 << 20, *,
                          bucket: str | None = None) -> AsyncIterator[bytes]:
        b = bucket or self.bucket
        try:
            resp = await self.client.get_object(Bucket=b, Key=key)
            async with resp["Body"] as stream:
                while chunk := await stream.read(chunk_bytes):
                    yield chunk
        except (ClientError, BotoCoreError) as e:
            raise _wrap(e, f"get {b}/{key}") from e

    async def sha256(self, key: str) -> tuple[str, int]:
        h = hashlib.sha256()
        n = 0
        async for chunk in self.iter_chunks(key):
            h.update(chunk)
            n += len(chunk)
        return h.hexdigest(), n

    async def delete(self, key: str) -> None:
        try:
            await self.wire.delete(self.bucket, key)
        except S3Error as e:
            if not (e.status == 404 or e.code in _NOT_FOUND):  # S3 answers 204 for a missing key; some servers 404
                raise _wrap(e, f"delete {key}") from e

    async def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
        except (ClientError, BotoCoreError) as e:
            raise _wrap(e, f"list {prefix}") from e
        return keys

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (batches of 1000); returns how many there were."""
        keys = await self.list_keys(prefix)
        for i in range(0, len(keys), 1000):
            batch = keys[i : i + 1000]
            try:
                await self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            except Exception as e:
                raise _wrap(e, f"delete {prefix}*") from e
        return len(keys)

    async def presign_get(self, key: str, ttl_s: int, *, bucket: str | None = None) -> tuple[str, datetime]:
        url = await self._presigner.generate_presigned_url(
            "get_object", Params={"Bucket": bucket or self.bucket, "Key": key}, ExpiresIn=int(ttl_s)
        )
        return url, datetime.now(UTC) + timedelta(seconds=int(ttl_s))

    async def put_lifecycle_expiry(self, prefix: str, days: int) -> None:
        """Expire job objects after ``days`` (best effort: not every S3 server supports it)."""
        await self.client.put_bucket_lifecycle_configuration(
            Bucket=self.bucket,
            LifecycleConfiguration={
                "Rules": [
                    {"ID": "videogen-expire-jobs", "Status": "Enabled", "Filter": {"Prefix": prefix},
                     "Expiration": {"Days": days}}
                ]
            },
        )


def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key:
        raise ValueError(f"s3 URI needs bucket and key: {uri}")
    return bucket, key
