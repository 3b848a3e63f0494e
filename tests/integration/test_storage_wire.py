"""runtime.storage's single-object requests (runtime/s3wire.py, SigV4 on aiohttp) against the real
S3 server: round trips of awkward keys, metadata, integrity refusal, not-found, wrong credentials,
server-side copy, size limits, and that botocore (presign, list) sees what the wire wrote."""

from __future__ import annotations

import base64
import hashlib

import aiohttp
import pytest
from pydantic import SecretStr

from runtime.s3wire import S3Error
from runtime.settings import Settings
from runtime.storage import ObjectNotFound, ObjectTooLarge, Storage
from schemas.errors import Permanent

pytestmark = [pytest.mark.integration]

KEYS = ["jobs/wire.t1/segments/0.mp4", "uploads/a b+c=d&e/ü~x_y-z.(1).png", "uploads/%41 literal/x"]


@pytest.mark.parametrize("key", KEYS)
async def test_round_trip(storage: Storage, key: str) -> None:
    body = bytes(range(256)) * 40
    ref = await storage.put_atomic(key, body, "video/mp4", metadata={"job": "wire"})
    assert ref.etag == hashlib.md5(body, usedforsecurity=False).hexdigest() and ref.size == len(body)
    assert await storage.get_bytes(key) == body
    head = await storage.head(key)
    assert (head.etag, head.size) == (ref.etag, len(body))
    assert key in await storage.list_keys(key.rsplit("/", 1)[0])  # botocore lists what the wire wrote
    url, _ = await storage.presign_get(key, 60)  # and presigns it: fetched with no credentials
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200 and await r.read() == body
    copied = await storage.copy(key, key + ".copy")
    assert copied.etag == ref.etag and copied.size == len(body)
    assert await storage.get_bytes(key + ".copy") == body
    await storage.delete(key)
    await storage.delete(key)  # idempotent
    with pytest.raises(ObjectNotFound):
        await storage.get_bytes(key)
    assert not await storage.exists(key)


async def test_limits_and_refusals(storage: Storage, stack: Settings) -> None:
    await storage.put_bytes("jobs/wire.t2/big", b"x" * 5000)
    with pytest.raises(ObjectTooLarge):
        await storage.get_bytes("jobs/wire.t2/big", max_bytes=4999)
    assert len(await storage.get_bytes("jobs/wire.t2/big", max_bytes=5000)) == 5000
    with pytest.raises(ObjectNotFound):
        await storage.head("jobs/wire.t2/none")
    with pytest.raises(ObjectNotFound):
        await storage.copy("jobs/wire.t2/none", "jobs/wire.t2/dst")
    # a body that does not match its Content-MD5 is refused by the server, never stored
    wrong_md5 = base64.b64encode(hashlib.md5(b"other", usedforsecurity=False).digest()).decode()
    with pytest.raises(S3Error) as info:
        await storage.wire.put(storage.bucket, "jobs/wire.t2/bad", b"body", content_type="text/plain",
                               md5_b64=wrong_md5)
    assert info.value.status == 400 and info.value.code in ("BadDigest", "InvalidDigest")
    assert not await storage.exists("jobs/wire.t2/bad")


async def test_wrong_secret_is_permanent(stack: Settings) -> None:
    bad = stack.model_copy(update={"s3_secret_key": SecretStr("not-the-secret")})
    async with Storage(bad) as s3:
        with pytest.raises(Permanent) as info:
            await s3.put_bytes("jobs/wire.t3/x", b"x")
    assert not isinstance(info.value, ObjectNotFound)
