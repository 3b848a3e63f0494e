"""NATS / JetStream access: connect, provision the topology from ``schemas.names``, publish, and
the few stored-message operations stages need (get / next / last / delete by stream sequence).

With ``runtime.work`` (pulling and acking) and ``runtime.jobs`` (the status KV) the only code
that touches nats-py: no module outside ``runtime/`` imports ``nats``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel

from runtime.logging import get_logger
from runtime.settings import Settings
from schemas.errors import ErrorCode, Retryable
from schemas.names import (
    CPU_CONSUMERS,
    HEADER_MSG_ID,
    KV_BUCKETS,
    KV_JOBS,
    KV_SPECS,
    STREAMS,
    ConsumerSpec,
    KvSpec,
    StreamSpec,
    runner_consumer,
)

log = get_logger(component="bus")


@dataclass(frozen=True)
class StoredMessage:
    """A message as stored in a stream (read back by sequence or subject)."""

    stream: str
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _stored(stream: str, raw: Any) -> StoredMessage:
    return StoredMessage(stream=stream, seq=int(raw.seq or 0), subject=raw.subject or "", data=raw.data or b"",
                         headers={k: str(v) for k, v in (raw.headers or {}).items()})


def _without_userinfo(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    p = urlsplit(url)
    if p.username is None and p.password is None:
        return url
    host = f"[{p.hostname}]" if p.hostname and ":" in p.hostname else (p.hostname or "")
    return urlunsplit((p.scheme, f"{host}:{p.port}" if p.port else host, p.path, p.query, p.fragment))


def stream_config(spec: StreamSpec, replicas: int = 1) -> js_api.StreamConfig:
    return js_api.StreamConfig(
        num_replicas=replicas,
        name=spec.name,
        description=spec.description,
        subjects=list(spec.subjects),
        retention=js_api.RetentionPolicy.WORK_QUEUE if spec.retention == "workqueue" else js_api.RetentionPolicy.LIMITS,
        storage=js_api.StorageType.FILE if spec.storage == "file" else js_api.StorageType.MEMORY,
        max_age=float(spec.max_age_s) if spec.max_age_s else None,
        duplicate_window=float(spec.duplicate_window_s),
        max_msg_size=spec.max_msg_size_bytes,
        max_bytes=spec.max_bytes,
        discard=js_api.DiscardPolicy.NEW if spec.discard == "new" else js_api.DiscardPolicy.OLD,
    )


def consumer_config(spec: ConsumerSpec) -> js_api.ConsumerConfig:
    return js_api.ConsumerConfig(
        name=spec.durable,
        durable_name=spec.durable,
        description=spec.description,
        filter_subject=None if spec.extra_filters else spec.filter_subject,
        filter_subjects=list(spec.filters) if spec.extra_filters else None,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_wait=float(spec.ack_wait_s),
        max_deliver=spec.max_deliver,
        max_ack_pending=spec.max_ack_pending,
        backoff=list(spec.backoff_s) or None,
        max_waiting=512,
    )


class Bus:
    """A connected NATS client + JetStream context. ``async with Bus(settings, "name") as bus``."""

    def __init__(self, settings: Settings, name: str = "videogen", *, connect_attempts: int | None = None,
                 connect_timeout_s: float = 5.0) -> None:
        """``connect_attempts``: None (services) retries the first connection and every reconnection
        forever, logging each failure; a number (the CLI) gives up after that many tries and raises
        without logging them (the caller says what happened, once)."""
        self.settings = settings
        self.name = name
        self.connect_attempts = connect_attempts
        self.connect_timeout_s = connect_timeout_s
        self.last_error: Exception | None = None
        self.nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._buckets: dict[str, KeyValue] = {}
        self._closing = False

    async def __aenter__(self) -> Bus:
        if self.connect_attempts is None:
            await self.connect(connect_timeout_s=self.connect_timeout_s)
        else:  # nats-py: 0 means "forever"; N allows N reconnects after the first try
            await self.connect(connect_timeout_s=self.connect_timeout_s,
                               max_reconnect_attempts=max(1, self.connect_attempts - 1))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, *, connect_timeout_s: float = 5.0, max_reconnect_attempts: int = -1) -> None:
        s = self.settings

        async def _error_cb(e: Exception) -> None:
            self.last_error = e
            if self.connect_attempts is not None and self.nc is None:
                return  # a bounded first connection: the raised error reports it
            log.warning("nats_error", error=str(e))

        async def _disconnected_cb() -> None:
            if not self._closing:
                log.warning("nats_disconnected")

        async def _reconnected_cb() -> None:
            log.info("nats_reconnected")

        servers = [u.strip() for u in s.nats_url.split(",") if u.strip()]
        if s.nats_user:  # explicit credentials win over any user:pass@ in the URL
            servers = [_without_userinfo(u) for u in servers]
        opts: dict[str, Any] = {
            "servers": servers,
            "name": self.name,
            "connect_timeout": connect_timeout_s,
            "max_reconnect_attempts": max_reconnect_attempts,
            "reconnect_time_wait": 1 if self.connect_attempts is None else 0.5,
            "error_cb": _error_cb,
            "disconnected_cb": _disconnected_cb,
            "reconnected_cb": _reconnected_cb,
        }
        if s.nats_user:
            opts["user"] = s.nats_user
            opts["password"] = s.nats_password.get_secret_value() if s.nats_password else None
        if s.nats_creds_file:
            opts["user_credentials"] = str(s.nats_creds_file)
        if s.nats_tls_ca:  # TLS to NATS, the servers' certificates checked against this CA (infra/: cert-manager)
            import ssl

            opts["tls"] = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(s.nats_tls_ca))
            opts["servers"] = [u.replace("nats://", "tls://", 1) for u in opts["servers"]]
        try:
            self.nc = await nats.connect(**opts)
        except Exception as e:
            cause = self.last_error if isinstance(e, nats.errors.NoServersError) and self.last_error else e
            self.last_error = cause
            raise Retryable(f"cannot connect to NATS at {s.nats_url}: {cause}", code=ErrorCode.BUS_ERROR) from e
        self._js = self.nc.jetstream()

    async def close(self) -> None:
        self._closing = True
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # already closing / connection lost: nothing left to drain
                await self.nc.close()
        self.nc = None

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("Bus is not connected")
        return self._js

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(KV_JOBS)
        return self._kv

    # ---- provisioning (idempotent) ----------------------------------------------------
    async def provision(self, models: list[str] | None = None) -> dict[str, list[str]]:
        """Create or update every stream, durable consumer and KV bucket (all with the configured replicas)."""
        report: dict[str, list[str]] = {"streams": [], "consumers": [], "kv": []}
        for spec in STREAMS:
            cfg = stream_config(spec, self.settings.nats_replicas)
            try:
                await self.js.stream_info(spec.name)
                await self.js.update_stream(cfg)
            except NotFoundError:
                await self.js.add_stream(cfg)
            report["streams"].append(spec.name)
        specs = list(CPU_CONSUMERS) + [runner_consumer(m) for m in (models or [])]
        for cspec in specs:
            await self.ensure_consumer(cspec)
            report["consumers"].append(f"{cspec.stream}/{cspec.durable}")
        for kspec in KV_BUCKETS:
            await self.kv_bucket(kspec.bucket, scale=True)
            report["kv"].append(kspec.bucket)
        self._kv = self._buckets[KV_JOBS]
        return report

    def kv_config(self, spec: KvSpec) -> js_api.KeyValueConfig:
        ttl = float(self.settings.status_ttl_s) if spec.status_ttl else spec.ttl_s
        return js_api.KeyValueConfig(bucket=spec.bucket, description=spec.description, history=spec.history,
                                     ttl=None if ttl is None else float(ttl), direct=spec.direct,
                                     storage=js_api.StorageType.FILE, replicas=self.settings.nats_replicas)

    async def kv_bucket(self, bucket: str, *, create: bool = True, scale: bool = False) -> KeyValue:
        """The KV bucket ``bucket`` (``schemas.names.KV_BUCKETS``), created from its spec with the
        configured replicas when it does not exist (``create``; NotFoundError otherwise). With
        ``scale`` (provisioning) an existing bucket with another replica count is rescaled: a
        bucket created R1 before the move to a 3-node cluster would die with its node."""
        cached = self._buckets.get(bucket)
        if cached is not None and not scale:
            return cached
        spec = KV_SPECS[bucket]
        try:
            kv = await self.js.key_value(bucket)
        except (NotFoundError, BadRequestError):
            if not create:
                raise NotFoundError from None
            kv = await self.js.create_key_value(self.kv_config(spec))
        else:
            if scale:
                info = await self.js.stream_info(f"KV_{bucket}")
                if info.config.num_replicas != self.settings.nats_replicas:
                    log.info("kv_rescaled", bucket=bucket, replicas_from=info.config.num_replicas,
                             replicas_to=self.settings.nats_replicas)
                    info.config.num_replicas = self.settings.nats_replicas
                    await self.js.update_stream(info.config)
        self._buckets[bucket] = kv
        return kv

    async def ensure_consumer(self, spec: ConsumerSpec) -> None:
        cfg = consumer_config(spec)
        try:
            await self.js.add_consumer(spec.stream, config=cfg)  # create or update (same name)
        except BadRequestError as e:
            log.warning("consumer_update_refused", consumer=spec.durable, error=str(e))

    # ---- request/reply (core NATS) ------------------------------------------------------
    async def serve(self, subjects: list[str], answer: Any, *, queue: str) -> list[Any]:
        """Answer requests on ``subjects`` (queue group ``queue``): ``await answer(subject) -> bytes``."""

        async def on_request(msg: Any) -> None:
            try:
                reply = await answer(msg.subject)
            except Exception as e:  # one bad request never stops the responder
                log.warning("request_failed", subject=msg.subject, error=str(e))
                reply = b'{"error":"internal"}'
            if msg.reply:
                await msg.respond(reply)

        assert self.nc is not None
        return [await self.nc.subscribe(subj, queue=queue, cb=on_request) for subj in subjects]

    # ---- publishing -------------------------------------------------------------------
    async def publish(self, subject: str, payload: BaseModel | bytes, *, msg_id: str | None = None,
                      headers: dict[str, str] | None = None, timeout_s: float = 5.0) -> js_api.PubAck:
        data = payload if isinstance(payload, bytes) else payload.model_dump_json().encode()
        hdrs = dict(headers or {})
        if msg_id:
            hdrs[HEADER_MSG_ID] = msg_id
        try:
            return await self.js.publish(subject, data, headers=hdrs or None, timeout=timeout_s)
        except (TimeoutError, nats.errors.Error) as e:
            raise Retryable(f"publish to {subject} failed: {e}", code=ErrorCode.BUS_ERROR, delay_s=2.0) from e

    async def pending(self, stream: str, durable: str) -> tuple[int, int]:
        """(messages not yet delivered, delivered but not acked) for a consumer."""
        info = await self.js.consumer_info(stream, durable)
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)

    # ---- stored messages ----------------------------------------------------------------
    async def get_message(self, stream: str, seq: int) -> StoredMessage | None:
        """The message at ``seq`` of ``stream``; None when there is none (acked off a work queue,
        deleted, expired)."""
        try:
            return _stored(stream, await self.js.get_msg(stream, seq))
        except NotFoundError:
            return None

    async def next_message(self, stream: str, seq: int, subject: str) -> StoredMessage | None:
        """The first message on ``subject`` at sequence ``seq`` or later; None when there is none."""
        try:
            return _stored(stream, await self.js.get_msg(stream, seq=seq, subject=subject, next=True))
        except NotFoundError:
            return None

    async def last_message(self, stream: str, subject: str) -> StoredMessage | None:
        """The latest message on ``subject``; None when the subject has none."""
        try:
            return _stored(stream, await self.js.get_last_msg(stream, subject))
        except NotFoundError:
            return None

    async def delete_message(self, stream: str, seq: int) -> bool:
        """Delete one message; False when it was already gone (taken and acked, deleted before)."""
        try:
            await self.js.delete_msg(stream, seq)
        except NotFoundError:
            return False
        return True

    async def subject_counts(self, stream: str, subjects_filter: str) -> tuple[int, dict[str, int]]:
        """(the stream's last sequence, messages stored per subject matching ``subjects_filter``)."""
        info = await self.js.stream_info(stream, subjects_filter=subjects_filter)
        return int(info.state.last_seq or 0), {k: int(v) for k, v in (info.state.subjects or {}).items()}

    async def consumer_position(self, stream: str, durable: str) -> tuple[int, int] | None:
        """(highest stream sequence delivered, messages not yet delivered) of a consumer; None if
        it does not exist."""
        try:
            info = await self.js.consumer_info(stream, durable)
        except NotFoundError:
            return None
        delivered = int(info.delivered.stream_seq or 0) if info.delivered else 0
        return delivered, int(info.num_pending or 0)
