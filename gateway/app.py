"""The HTTP gateway: OpenAI-shaped ``/v1/videos`` over the public NATS contract, plus the web
console at ``/`` and ``/healthz`` ``/readyz`` ``/metrics``.

Tenants: an API key names a tenant, and the gateway files the key's jobs in that tenant's namespace
(``schemas.names.job_key``) -- the same jobs the tenant's NATS account submits and reads. It is a
service-side process: with the service credentials it publishes on the tenant's internal subject
(``videogen.t.<tenant>.jobs.submit``, what the broker maps the tenant's own ``videogen.jobs.submit``
to; ``default``: the public subject) and reads the tenant's KV keys, objects and events.

Stateless: a create publishes a ``JobRequest`` (``Nats-Msg-Id`` = the job key) and writes the same
bytes to the job's ``inputs/request.json`` (the record preprocess writes too, so a just-created
video can be read back before preprocess has seen it); status comes from KV ``videogen-jobs``, live
events from the job's events subject, downloads are presigned S3 URLs. Any number of replicas can
serve the same clients; in-process caches hold only immutable data (requests) or short-lived data
(API-key lookups, 30 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import tempfile
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field
from sse_starlette.sse import EventSourceResponse
from starlette.datastructures import UploadFile

from functions.stitch import previews
from gateway.videos import (
    DEFAULT_TENANT,
    ContentUrl,
    GatewayError,
    Video,
    VideoDeleted,
    VideoList,
    build_request,
    extend_request,
    is_gateway_id,
    new_video_id,
    not_found,
    owned_by,
    remix_request,
    tenant_tag,
    to_video,
)
from runtime import client
from runtime.bus import Bus
from runtime.edge import (
    ApiKeyRecord,
    ApiKeyStore,
    JobIndex,
    forget_job,
    hash_key,
    job_ids,
)
from runtime.jobs import StatusStore
from runtime.logging import get_logger
from runtime.netguard import ForbiddenTarget, TargetUnresolvable, check_url
from runtime.settings import Settings
from runtime.storage import ObjectNotFound, Storage
from schemas.errors import ErrorCode, VideogenError
from schemas.messages import TERMINAL_EVENTS, JobEvent, JobRequest, JobStatus, valid_job_id
from schemas.names import job_key, job_prefix, request_key, split_job_key, spritesheet_key, thumbnail_key
from schemas.names import uploads_prefix as tenant_uploads_prefix
from schemas.registry import MODELS

log = get_logger(component="gateway")

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_BYTES = 256 << 20
MAX_WAIT_S = 300
KEY_CACHE_TTL_S = 30.0
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait=(\d+)")
_EXT = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "video/mp4": ".mp4",
        "video/webm": ".webm", "video/quicktime": ".mov"}


def uploads_prefix(tenant: str, video_id: str) -> str:
    """Where a create's uploaded files go: under the tenant's own upload prefix (the only s3:// inputs
    preprocess accepts from it)."""
    return f"{tenant_uploads_prefix(tenant)}{video_id}/"


def key_of(video_id: str, tenant: str) -> str:
    """The internal job key of ``tenant``'s video (404 for an id no tenant can own: never another's key)."""
    if not valid_job_id(video_id) or (is_gateway_id(video_id) and not owned_by(video_id, tenant)):
        raise not_found(video_id)
    return job_key(tenant, video_id)


class VideoCreateBody(BaseModel):
    """``POST /v1/videos`` as JSON (the same fields are accepted as multipart/form-data, where
    ``input_reference`` and ``video`` may be files and ``webhook``/``loras`` are JSON text)."""

    prompt: str = ""
    model: str | None = Field(None, description="registry name, default tiny-wan")
    seconds: str | None = Field(None, description="duration; frames = round(seconds * fps) unless num_frames is set")
    size: str | None = Field(None, description="WxH, e.g. 1280x720")
    input_reference: dict[str, str] | str | None = Field(None, description="{image_url: ...}, an URL, or a file")
    num_frames: int | None = None
    fps: int | None = None
    steps: int | None = None
    seed: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    task: Literal["t2v", "i2v", "animate"] | None = None
    image: str | None = Field(None, description="s3://bucket/key or https:// URL")
    video: str | None = Field(None, description="driving video (animate): s3:// or https:// URL, or a file")
    webhook: dict[str, Any] | None = None
    loras: list[dict[str, Any]] | None = None
    max_segment_frames: int | None = None
    presign_ttl_s: int | None = None


class RemixBody(BaseModel):
    prompt: str


class ExtendBody(BaseModel):
    """``POST /v1/videos/{id}/extend``: the new frames; every other setting is the original's."""

    prompt: str | None = Field(None, description="default: the original's prompt")
    seconds: str | None = Field(None, description="duration of the extension; frames = round(seconds * fps)")
    num_frames: int | None = Field(None, description="new frames (default: the original request's num_frames)")
    condition_frames: int | None = Field(None, description="original frames the extension is conditioned on "
                                         "and cross-faded over (default: the model's segment overlap)")
    seed: int | None = None
    steps: int | None = None
    negative_prompt: str | None = None


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("videogen_gateway_requests_total", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("videogen_gateway_request_seconds", "HTTP request time by route",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60))
        self.jobs = Counter("videogen_gateway_jobs_submitted_total", "jobs published by the gateway",
                            ["tenant"], registry=self.registry)
        self.quota_refused = Counter("videogen_gateway_quota_refused_total",
                                     "create requests answered 429 (the tenant over its quotas)", ["tenant"],
                                     registry=self.registry)


class Gateway:
    """Per-process connections and caches; one per app."""

    def __init__(self, settings: Settings, *, poll_after_ms: int = 500) -> None:
        self.settings = settings
        self.poll_after_ms = poll_after_ms
        self.bus = Bus(settings, "videogen-gateway")
        self.storage = Storage(settings)
        self.keys = ApiKeyStore(self.bus)
        self.status = StatusStore(self.bus)
        self.index = JobIndex(self.bus)
        self.metrics = _Metrics()
        self._requests: OrderedDict[str, JobRequest] = OrderedDict()
        self._key_cache: dict[str, tuple[ApiKeyRecord, float]] = {}
        self.started = False

    async def start(self) -> None:
        await self.bus.connect()
        await self.storage.open()
        await self.index.start()
        self.started = True
        log.info("gateway_started", nats=self.settings.nats_url, s3=self.settings.s3_endpoint)

    async def stop(self) -> None:
        self.started = False
        await self.index.stop()
        await self.bus.close()
        await self.storage.close()

    # ---- auth ------------------------------------------------------------------------------
    async def tenant_for(self, authorization: str | None) -> str:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise GatewayError(401, "missing_api_key", "send 'Authorization: Bearer <api key>'",
                               type_="authentication_error")
        key = authorization[7:].strip()
        digest = hash_key(key)
        cached = self._key_cache.get(digest)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0].tenant
        record = await self.keys.lookup(key)
        if record is None:
            raise GatewayError(401, "invalid_api_key", "invalid API key", type_="authentication_error")
        if len(self._key_cache) > 10_000:
            self._key_cache.clear()
        self._key_cache[digest] = (record, time.monotonic() + KEY_CACHE_TTL_S)
        return record.tenant

    # ---- reads -----------------------------------------------------------------------------
    def _remember(self, key: str, req: JobRequest) -> None:
        self._requests[key] = req
        self._requests.move_to_end(key)
        while len(self._requests) > 4096:
            self._requests.popitem(last=False)

    async def request_of(self, key: str) -> JobRequest | None:
        req = self._requests.get(key)
        if req is not None:
            return req
        try:
            raw = await self.storage.get_bytes(request_key(key), max_bytes=1 << 20)
        except ObjectNotFound:
            return None
        req = JobRequest.model_validate_json(raw)
        self._remember(key, req)
        return req

    async def load(self, video_id: str, tenant: str) -> tuple[JobRequest | None, JobStatus | None]:
        key = key_of(video_id, tenant)
        (status, _), req = await asyncio.gather(self.status.get(key), self.request_of(key))
        if status is None and req is None:
            raise not_found(video_id)
        return req, status

    def video(self, video_id: str, req: JobRequest | None, status: JobStatus | None) -> Video:
        return to_video(video_id, req, status, assets_ttl_s=self.settings.status_ttl_s)

    async def current(self, video_id: str, tenant: str) -> Video:
        req, status = await self.load(video_id, tenant)
        return self.video(video_id, req, status)

    async def wait_terminal(self, key: str, timeout_s: float) -> JobEvent | None:
        """The terminal event of the job with internal key ``key``, or None after ``timeout_s``."""
        if timeout_s <= 0:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                async with contextlib.aclosing(client.follow(self.bus, key)) as events:
                    async for event in events:
                        if event.type in TERMINAL_EVENTS:
                            return event
        return None

    async def wait_accepted(self, key: str, timeout_s: float) -> bool:
        """Wait for the job's first event (its status exists from then on)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                async with contextlib.aclosing(client.follow(self.bus, key)) as events:
                    async for _ in events:
                        return True
        return False

    # ---- writes ----------------------------------------------------------------------------
    async def check_targets(self, req: JobRequest) -> None:
        """The SSRF policy preprocess applies, at the door: a forbidden webhook or input URL is a
        4xx now instead of a ``job.rejected`` later. DNS failures are left to preprocess (it retries)."""
        checks = [(req.webhook.url, self.settings.webhook_allow_hosts, ErrorCode.WEBHOOK_URL_FORBIDDEN, "webhook.url")
                  ] if req.webhook else []
        checks += [(url, self.settings.input_allow_hosts, ErrorCode.INPUT_FORBIDDEN, name)
                   for name, url in (("image", req.image), ("video", req.video)) if url and not url.startswith("s3://")]
        for url, allow, code, param in checks:
            try:
                await check_url(url, allow, code=code)
            except ForbiddenTarget as e:
                raise GatewayError(400, code.value, f"{param} refused: {e}", param=param) from e
            except TargetUnresolvable:
                pass

    async def door(self, req: JobRequest, tenant: str) -> None:
        """What a create (remix, extend) must pass before anything is uploaded or published."""
        await self.check_targets(req)
        await self.check_quota(tenant)

    async def check_quota(self, tenant: str) -> None:
        """The tenant's quotas at the door (``runtime/quotas.py``, read only): 429 with ``Retry-After``
        now instead of a job that preprocess rejects ``quota_exceeded`` a moment later. Preprocess
        stays the authority: two requests racing for the last slot may both pass here."""
        from runtime.quotas import QuotaExceeded, quota_gate

        try:
            await quota_gate(self.bus, self.settings, self.status).check(tenant)
        except QuotaExceeded as e:
            retry = next((d["retry_after_s"] for d in e.details if "retry_after_s" in d), None)
            self.metrics.quota_refused.labels(tenant=tenant).inc()
            log.info("video_refused_quota", tenant=tenant, reason=e.message)
            raise GatewayError(429, ErrorCode.QUOTA_EXCEEDED.value, e.message, type_="rate_limit_error",
                               headers={"Retry-After": str(max(1, math.ceil(retry or 1)))}) from e

    async def submit(self, req: JobRequest, tenant: str) -> None:
        payload = req.model_dump_json(exclude_none=True).encode()
        key = job_key(tenant, req.job_id)
        record, published = await asyncio.gather(
            self.storage.put_bytes(request_key(key), payload, "application/json"),
            client.submit(self.bus, req, tenant), return_exceptions=True)
        if isinstance(published, BaseException):
            raise GatewayError(503, "bus_error", f"could not publish the job: {published}", type_="server_error")
        if isinstance(record, BaseException):  # preprocess writes the same record; reads fall back to the cache
            log.warning("request_record_write_failed", job_id=req.job_id, error=str(record))
        self._remember(key, req)
        self.metrics.jobs.labels(tenant=tenant).inc()
        log.info("video_created", job_id=req.job_id, tenant=tenant, model=req.model)

    async def cancel(self, video_id: str, tenant: str, status: JobStatus | None) -> None:
        if status is None:  # the cancel stage ignores jobs it has no status for: wait for the accept
            await self.wait_accepted(job_key(tenant, video_id), 10.0)
        await client.cancel(self.bus, video_id, reason="cancelled via the HTTP gateway", tenant=tenant)

    async def upload(self, video_id: str, tenant: str, name: str, file: UploadFile) -> str:
        data = await file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise GatewayError(413, "input_too_large", f"{name} is larger than {MAX_UPLOAD_BYTES} bytes", param=name)
        if not data:
            raise GatewayError(400, "missing_input", f"{name} is empty", param=name)
        ext = _EXT.get((file.content_type or "").split(";")[0].strip(), Path(file.filename or "").suffix[:8])
        key = f"{uploads_prefix(tenant, video_id)}{name}{ext}"
        await self.storage.put_bytes(key, data, file.content_type or "application/octet-stream")
        return f"s3://{self.storage.bucket}/{key}"

    async def preview(self, job: str, status: JobStatus, variant: str) -> bytes:
        """``thumbnail`` / ``spritesheet`` JPEG (of job key ``job``) as stitch stored it; for a job stitched
        before stitch made previews, made now from the output and stored the same way."""
        key = thumbnail_key(job) if variant == "thumbnail" else spritesheet_key(job)
        with contextlib.suppress(ObjectNotFound):
            return await self.storage.get_bytes(key)
        assert status.output is not None
        with tempfile.NamedTemporaryFile(suffix=".mp4") as tmp:
            async for chunk in self.storage.iter_chunks(status.output.key, bucket=status.output.bucket):
                tmp.write(chunk)
            tmp.flush()
            make = previews.thumbnail_jpeg if variant == "thumbnail" else previews.spritesheet_jpeg
            data = await asyncio.to_thread(make, Path(tmp.name))
        await self.storage.put_bytes(key, data, "image/jpeg")
        return data


async def _tenant(request: Request) -> str:
    """The caller's tenant from ``Authorization: Bearer <key>`` (401 otherwise)."""
    gw: Gateway = request.app.state.gateway
    return await gw.tenant_for(request.headers.get("authorization"))


Tenant = Annotated[str, Depends(_tenant)]


def _route_of(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def create_app(settings: Settings, *, poll_after_ms: int = 500) -> FastAPI:
    gw = Gateway(settings, poll_after_ms=poll_after_ms)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    app = FastAPI(
        title="videogen HTTP gateway", version="1",
        description="OpenAI-compatible `/v1/videos` over the videogen NATS contract. "
                    "Authenticate with `Authorization: Bearer <api key>` (`videogen keys create --tenant T`).",
        lifespan=lifespan,
    )
    app.state.gateway = gw

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, e: GatewayError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        err = GatewayError(400, "invalid_request", str(first.get("msg", "invalid request")),
                           param=".".join(str(p) for p in first.get("loc", ())[1:]) or None)
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(VideogenError)
    async def _videogen_error(_: Request, e: VideogenError) -> JSONResponse:
        log.warning("backend_error", code=e.code.value, error=str(e))
        err = GatewayError(503 if e.retryable else 500, e.code.value, str(e), type_="server_error")
        return JSONResponse(err.body(), status_code=err.status)

    @app.middleware("http")
    async def _observe(request: Request, call_next: Any) -> Response:
        t0 = time.perf_counter()
        response: Response = await call_next(request)
        route = _route_of(request)
        gw.metrics.requests.labels(request.method, route, str(response.status_code)).inc()
        gw.metrics.latency.labels(request.method, route).observe(time.perf_counter() - t0)
        return response

    def video_response(video: Video, *, headers: dict[str, str] | None = None) -> JSONResponse:
        hdrs = dict(headers or {})
        if video.status in ("queued", "in_progress"):
            hdrs["openai-poll-after-ms"] = str(gw.poll_after_ms)
        return JSONResponse(video.model_dump(mode="json"), headers=hdrs)

    # ---- console, health ------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def console() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        checks = {"started": gw.started,
                  "nats_connected": bool(gw.bus.nc is not None and gw.bus.nc.is_connected)}
        ok = all(checks.values())
        return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks},
                            status_code=200 if ok else 503)

    @app.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", tags=["models"])
    async def models(_: Tenant) -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": m.name, "object": "model", "owned_by": "videogen", "tasks": list(m.tasks),
             "default_size": f"{m.default_width}x{m.default_height}", "default_frames": m.default_frames,
             "default_fps": m.default_fps, "max_size": f"{m.max_width}x{m.max_height}",
             "spatial_multiple": m.spatial_multiple}
            for m in MODELS.values()]}

    # ---- /v1/videos ----------------------------------------------------------------------
    @app.post("/v1/videos", tags=["videos"], response_model=Video, openapi_extra={"requestBody": {
        "required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/VideoCreateBody"}},
            "multipart/form-data": {"schema": {"$ref": "#/components/schemas/VideoCreateBody"}}}}})
    async def create_video(request: Request, who: Tenant) -> JSONResponse:
        """Create a video job (multipart/form-data like the OpenAI SDK, or JSON).

        `Prefer: wait=N` answers when the job has finished or after N seconds (at most 300),
        whichever comes first."""
        fields, files, form = await _read_body(request)
        video_id = new_video_id(who)
        refs = {name: f"s3://{gw.storage.bucket}/{uploads_prefix(who, video_id)}{name}" for name in files}
        req = build_request(video_id, fields, image=refs.get("input_reference") or refs.get("image"),
                            video=refs.get("video"), form=form)
        await gw.door(req, who)  # before anything is uploaded
        uploaded = {name: await gw.upload(video_id, who, name, f) for name, f in files.items()}
        if uploaded:  # the stored keys carry the file's extension
            req = req.model_copy(update={
                "image": uploaded.get("input_reference") or uploaded.get("image") or req.image,
                "video": uploaded.get("video") or req.video})
        return await _submit_and_answer(request, req, who)

    def _wait_s(request: Request) -> int | None:
        wait = _PREFER_WAIT.search(request.headers.get("prefer", ""))
        return min(int(wait.group(1)), MAX_WAIT_S) if wait else None

    async def _submit_and_answer(request: Request, req: JobRequest, who: str) -> JSONResponse:
        """Publish; with ``Prefer: wait=N`` the event subscription starts alongside the publish."""
        seconds = _wait_s(request)
        if seconds is None:  # just published: nothing has a status yet
            await gw.submit(req, who)
            return video_response(gw.video(req.job_id, req, None))
        waiter = asyncio.create_task(gw.wait_terminal(job_key(who, req.job_id), seconds))
        try:
            await gw.submit(req, who)
        except BaseException:
            waiter.cancel()
            raise
        return await _answer(request, req.job_id, who, req, waiter)

    async def _answer(request: Request, video_id: str, who: str, req: JobRequest | None,
                      waiter: asyncio.Task[JobEvent | None] | None = None) -> JSONResponse:
        """The video now, or (``Prefer: wait=N``) once it has finished or N seconds have passed."""
        headers: dict[str, str] = {}
        seconds = _wait_s(request)
        key = job_key(who, video_id)
        if seconds is not None:
            await (waiter if waiter is not None else gw.wait_terminal(key, seconds))
            headers["Preference-Applied"] = f"wait={seconds}"
        status, _ = await gw.status.get(key)
        return video_response(gw.video(video_id, req, status), headers=headers)

    @app.get("/v1/videos", tags=["videos"], response_model=VideoList)
    async def list_videos(who: Tenant, after: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 20,
                          order: Literal["asc", "desc"] = "desc") -> VideoList:
        """This tenant's videos, newest first by default (ids order by creation time)."""
        known = gw.index.ids()
        if known is None:  # the index is still loading: list the keys
            known = set(await job_ids(gw.bus))
        tag = tenant_tag(who)
        mine = (split_job_key(k) for k in known)  # the tenant's keys, by its own ids
        ids = sorted((i for t, i in mine if t == who and i.endswith(tag) and is_gateway_id(i)),
                     reverse=order == "desc")
        if after:
            ids = [i for i in ids if (i < after if order == "desc" else i > after)]
        page, has_more = ids[:limit], len(ids) > limit
        loaded = await asyncio.gather(*(gw.load(i, who) for i in page), return_exceptions=True)
        data = [gw.video(i, *r) for i, r in zip(page, loaded, strict=True) if not isinstance(r, BaseException)]
        return VideoList(data=data, first_id=data[0].id if data else None,
                         last_id=data[-1].id if data else None, has_more=has_more)

    @app.get("/v1/videos/{video_id}", tags=["videos"], response_model=Video)
    async def retrieve_video(video_id: str, request: Request, who: Tenant) -> JSONResponse:
        """The video's current state (`openai-poll-after-ms` says when to ask again). `Prefer: wait=N`
        waits up to N seconds for it to finish."""
        req, status = await gw.load(video_id, who)
        if (status is None or not status.state.terminal) and _wait_s(request) is not None:
            return await _answer(request, video_id, who, req)
        return video_response(gw.video(video_id, req, status))

    @app.delete("/v1/videos/{video_id}", tags=["videos"], response_model=VideoDeleted)
    async def delete_video(video_id: str, who: Tenant) -> VideoDeleted:
        """Cancel the job if it is still running, then delete its objects and its status.
        `deleted` is false when the job did not stop within 15 s (the cancel stays requested)."""
        _, status = await gw.load(video_id, who)
        key = job_key(who, video_id)
        if status is None or not status.state.terminal:
            await gw.cancel(video_id, who, status)
            await gw.wait_terminal(key, 15.0)
            status, _ = await gw.status.get(key)
            if status is None or not status.state.terminal:
                return VideoDeleted(id=video_id, deleted=False)
        await gw.storage.delete_prefix(job_prefix(key))
        await gw.storage.delete_prefix(uploads_prefix(who, video_id))
        await forget_job(gw.bus, key)
        gw.index.discard(key)
        gw._requests.pop(key, None)
        log.info("video_deleted", job_id=video_id, tenant=who)
        return VideoDeleted(id=video_id, deleted=True)

    @app.post("/v1/videos/{video_id}/cancel", tags=["videos"], response_model=Video)
    async def cancel_video(video_id: str, request: Request, who: Tenant) -> JSONResponse:
        """Cancel a queued or running job (a no-op for a finished one); answers the current state
        (with `Prefer: wait=N`, once the job has stopped)."""
        req, status = await gw.load(video_id, who)
        if status is None or not status.state.terminal:
            await gw.cancel(video_id, who, status)
        if _wait_s(request) is not None:
            return await _answer(request, video_id, who, req)
        return video_response(await gw.current(video_id, who))

    @app.post("/v1/videos/{video_id}/remix", tags=["videos"], response_model=Video)
    async def remix_video(video_id: str, body: RemixBody, request: Request, who: Tenant) -> JSONResponse:
        """A new video with the same settings (model, size, frames, steps, seed, inputs) and a new prompt."""
        original, _ = await gw.load(video_id, who)
        if original is None:
            raise GatewayError(409, "not_ready", f"{video_id} has not been accepted yet; retry shortly")
        new_id = new_video_id(who)
        req = remix_request(original, new_id, body.prompt)
        await gw.door(req, who)  # the allow-lists and the quotas may have changed since the original
        return await _submit_and_answer(request, req, who)

    @app.post("/v1/videos/{video_id}/extend", tags=["videos"], response_model=Video)
    async def extend_video(video_id: str, body: ExtendBody, request: Request, who: Tenant) -> JSONResponse:
        """Continue a finished video: a new video whose frames are the original's followed by the new
        ones, the first new frames conditioned on the original's last frames (contract v1.3 `extend`).
        Same settings as the original unless given here."""
        original, status = await gw.load(video_id, who)
        if original is None or status is None or status.state.value != "succeeded":
            state = status.state.value if status else "submitted"
            raise GatewayError(409, "extend_source_not_ready", f"{video_id} has not succeeded ({state}); "
                               "only a finished video can be extended", param="video_id")
        new_id = new_video_id(who)
        req = extend_request(original, new_id, body.model_dump(exclude_none=True), output=status.output)
        await gw.door(req, who)
        return await _submit_and_answer(request, req, who)

    async def _finished(video_id: str, who: str) -> JobStatus:
        _, status = await gw.load(video_id, who)
        if status is None or status.output is None or status.state.value != "succeeded":
            state = status.state.value if status else "submitted"
            raise GatewayError(409, "not_ready", f"{video_id} has no output ({state})", param="video_id")
        return status

    @app.get("/v1/videos/{video_id}/content", tags=["videos"], responses={
        302: {"description": "variant=video: redirect to the presigned S3 URL of the MP4"},
        200: {"content": {"image/jpeg": {}}, "description": "variant=thumbnail|spritesheet"}})
    async def video_content(video_id: str, who: Tenant,
                            variant: Literal["video", "thumbnail", "spritesheet"] = "video") -> Response:
        """The MP4 (a 302 to a presigned URL), the first frame as JPEG (`thumbnail`) or a 5-column
        grid of up to 25 frames (`spritesheet`)."""
        status = await _finished(video_id, who)
        if variant == "video":
            assert status.output is not None
            url, _ = await gw.storage.presign_get(status.output.key, 3600, bucket=status.output.bucket)
            return RedirectResponse(url, status_code=302)
        return Response(await gw.preview(job_key(who, video_id), status, variant), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/v1/videos/{video_id}/content/url", tags=["videos"], response_model=ContentUrl)
    async def video_content_url(video_id: str, who: Tenant,
                                ttl_s: Annotated[int, Query(ge=60, le=7 * 86400)] = 3600) -> ContentUrl:
        """The presigned MP4 URL as JSON (for a browser's `<video src>`, which cannot send headers)."""
        status = await _finished(video_id, who)
        assert status.output is not None
        url, expires = await gw.storage.presign_get(status.output.key, ttl_s, bucket=status.output.bucket)
        return ContentUrl(url=url, expires_at=int(expires.timestamp()))

    @app.get("/v1/videos/{video_id}/events", tags=["videos"], responses={
        200: {"content": {"text/event-stream": {}},
              "description": "one SSE message per JobEvent: `event` = type, `id` = event id, `data` = the JobEvent"}})
    async def video_events(video_id: str, who: Tenant) -> EventSourceResponse:
        """Server-Sent Events: every event of the job from the start, then live, until a terminal one."""
        await gw.load(video_id, who)

        async def stream() -> AsyncIterator[dict[str, str]]:
            async with contextlib.aclosing(client.follow(gw.bus, job_key(who, video_id))) as events:
                async for event in events:
                    yield {"event": event.type.value, "id": event.id, "data": event.model_dump_json()}

        return EventSourceResponse(stream(), ping=15)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            schema.setdefault("components", {}).setdefault("schemas", {})["VideoCreateBody"] = \
                VideoCreateBody.model_json_schema(ref_template="#/components/schemas/{model}")
            schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def _read_body(request: Request) -> tuple[dict[str, Any], dict[str, UploadFile], bool]:
    """(fields, uploaded files, whether it was a form: its values are all text)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields: dict[str, Any] = {}
    files: dict[str, UploadFile] = {}
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=4, max_fields=64)
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name not in ("input_reference", "image", "video"):
                    raise GatewayError(400, "invalid_request", f"unexpected file field {name!r}", param=name)
                files[name] = value
            else:
                fields[name] = value
    elif ctype in ("application/json", ""):
        body = await request.body()
        if body:
            try:
                parsed = json.loads(body)
            except ValueError as e:
                raise GatewayError(400, "invalid_json", f"body is not valid JSON: {e}") from e
            if not isinstance(parsed, dict):
                raise GatewayError(400, "invalid_request", "body must be a JSON object")
            fields = parsed
    else:
        raise GatewayError(415, "invalid_request", f"unsupported content type {ctype!r}; "
                           "use multipart/form-data or application/json")
    return fields, files, ctype != "application/json" and ctype != ""


__all__ = ["DEFAULT_TENANT", "Gateway", "create_app"]
