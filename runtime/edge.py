"""Bus operations the HTTP gateway needs beyond ``runtime.client``: API keys in KV
``videogen-apikeys``, the job ids in KV ``videogen-jobs``, and removing a finished job's status.

The gateway (``gateway/``) never imports nats-py; everything it does on the bus goes through
``runtime.client``, ``runtime.jobs`` and this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from datetime import datetime

from nats.js.errors import KeyNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runtime.bus import Bus
from schemas.messages import utcnow
from schemas.names import KV_APIKEYS, TENANT_PATTERN, valid_tenant

API_KEY_PREFIX = "vg_"


class ApiKeyRecord(BaseModel):
    """Value stored under ``sha256(key)`` in KV ``videogen-apikeys`` (the key itself is never stored)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    tenant: str = Field(pattern=TENANT_PATTERN, description="the tenant (NATS account) whose namespace the key's "
                                                            "jobs live in")
    created_at: datetime = Field(default_factory=utcnow)
    hint: str = Field("", description="first characters of the key, to tell keys apart in listings")
    name: str = Field("", max_length=200)

    @field_validator("tenant")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if not valid_tenant(v):
            raise ValueError(f"tenant {v!r} is reserved")
        return v


def hash_key(key: str) -> str:
    """KV key for an API key: sha256 hex (keys are 256-bit random, so a fast hash is enough)."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyStore:
    """API keys -> tenants in KV ``videogen-apikeys`` (history 1, file storage, no TTL)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._kv: KeyValue | None = None

    async def _bucket(self, *, create: bool) -> KeyValue | None:
        if self._kv is not None:
            return self._kv
        try:
            self._kv = await self.bus.kv_bucket(KV_APIKEYS, create=create)
        except NotFoundError:
            return None
        return self._kv

    async def create(self, tenant: str, name: str = "") -> tuple[str, ApiKeyRecord]:
        """A new random key for ``tenant``; returns (key, record). The key is shown once, stored hashed."""
        key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKeyRecord(tenant=tenant, hint=key[:7], name=name)
        kv = await self._bucket(create=True)
        assert kv is not None
        await kv.create(hash_key(key), record.model_dump_json().encode())
        return key, record

    async def lookup(self, key: str) -> ApiKeyRecord | None:
        kv = await self._bucket(create=False)
        if kv is None or not key.startswith(API_KEY_PREFIX):
            return None
        try:
            entry = await kv.get(hash_key(key))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        try:
            return ApiKeyRecord.model_validate_json(entry.value)
        except ValidationError:  # a key of a tenant name no longer allowed (e.g. made before tenants were accounts)
            return None

    async def revoke(self, key_hash: str) -> bool:
        kv = await self._bucket(create=False)
        if kv is None:
            return False
        try:
            await kv.get(key_hash)
        except KeyNotFoundError:
            return False
        await kv.purge(key_hash)
        return True

    async def list(self) -> list[tuple[str, ApiKeyRecord]]:
        kv = await self._bucket(create=False)
        if kv is None:
            return []
        out = []
        for key_hash in await _keys(kv):
            try:
                entry = await kv.get(key_hash)
            except KeyNotFoundError:
                continue
            if entry.value:
                out.append((key_hash, ApiKeyRecord.model_validate_json(entry.value)))
        return out


async def _keys(kv: KeyValue) -> list[str]:
    try:
        return list(await kv.keys())
    except NoKeysError:
        return []


async def job_ids(bus: Bus) -> list[str]:
    """Every job id with a status in KV ``videogen-jobs`` (deleted/purged keys excluded)."""
    return await _keys(await bus.kv())


async def forget_job(bus: Bus, job_id: str) -> None:
    """Remove a *finished* job's status from KV (the gateway's ``DELETE /v1/videos/{id}``)."""
    kv = await bus.kv()
    await kv.purge(job_id)


class JobIndex:
    """The live set of job ids in KV ``videogen-jobs``, kept by one headers-only watch.

    ``GET /v1/videos`` pages through it instead of listing every key per request (measured in
    bench/gateway.py: a full key listing takes hundreds of ms with thousands of jobs). A cache of
    KV, not a store: rebuilt from KV at start, ``ids()`` is None until the initial pass is done.
    Cost: one small message per status write (headers only), per gateway replica.
    """

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._ids: set[str] = set()
        self._ready = False
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        kv = await self.bus.kv()
        self._watcher = await kv.watchall(meta_only=True)
        self._task = asyncio.create_task(self._run(), name="job-index")

    async def _run(self) -> None:
        assert self._watcher is not None
        async for entry in self._watcher:
            if entry is None:  # the initial values are all in
                self._ready = True
                continue
            if entry.operation in ("DEL", "PURGE"):
                self._ids.discard(entry.key)
            else:
                self._ids.add(entry.key)

    def ids(self) -> set[str] | None:
        return self._ids if self._ready else None

    def discard(self, job_id: str) -> None:
        self._ids.discard(job_id)

    async def stop(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
