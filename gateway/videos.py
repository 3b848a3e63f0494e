"""The ``/v1/videos`` resource: ids and their owners, the OpenAI-shaped Video object, and turning
a create request (multipart form or JSON) into a validated ``JobRequest``.

Pure: no I/O (the app does the uploads, the publish and the reads).

Video ids are ``video_<12 hex: ms since epoch><20 hex: random><16 hex: tenant tag>`` (54 chars,
inside the contract's ``[A-Za-z0-9_-]{1,64}``). The time prefix orders ids by creation (list and
its ``after`` cursor need nothing but the KV keys); the tag is ``sha256("videogen-tenant:" + tenant)``
and names the owner, so the gateway needs no table of who owns what. Ids are generated here, never
chosen by an HTTP client, so a client cannot make a job that carries another tenant's tag. Jobs
submitted on the bus directly (ids without a tag) belong to the ``default`` tenant.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import time
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from functions.preprocess.validate import RequestRejected, parse_request, resolve
from schemas.errors import ErrorCode
from schemas.messages import JobRequest, JobState, JobStatus, OutputInfo, Task
from schemas.registry import MODELS, get_model

DEFAULT_TENANT = "default"
ID_PREFIX = "video_"
_ID_RE = re.compile(r"^video_([0-9a-f]{12})([0-9a-f]{20})([0-9a-f]{16})$")

# Fields a create request may carry: OpenAI's and ours (JobRequest's, minus the id the gateway picks).
OPENAI_FIELDS = frozenset({"prompt", "model", "seconds", "size", "input_reference"})
EXTENSION_FIELDS = frozenset({
    "num_frames", "fps", "steps", "seed", "guidance_scale", "negative_prompt", "task", "image", "video",
    "webhook", "loras", "max_segment_frames", "presign_ttl_s", "width", "height",
})
_JSON_FIELDS = ("webhook", "loras")  # sent as JSON text in a multipart form
# numbers arrive as text in a multipart form (the OpenAI SDK sends every field so); a JSON body keeps
# the contract's strict types (``"num_frames": "9"`` is refused there, as on NATS)
_FORM_INTS = ("num_frames", "fps", "steps", "seed", "max_segment_frames", "presign_ttl_s", "width", "height")
_FORM_FLOATS = ("guidance_scale",)
_INT_TEXT = re.compile(r"[+-]?\d{1,19}")


def tenant_tag(tenant: str) -> str:
    return hashlib.sha256(f"videogen-tenant:{tenant}".encode()).hexdigest()[:16]


def new_video_id(tenant: str, now_ms: int | None = None) -> str:
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{ID_PREFIX}{ms:012x}{secrets.token_hex(10)}{tenant_tag(tenant)}"


def id_created_at(video_id: str) -> int | None:
    """Creation time (unix seconds) of a gateway id; None for other ids."""
    m = _ID_RE.match(video_id)
    return int(m.group(1), 16) // 1000 if m else None


def owned_by(video_id: str, tenant: str) -> bool:
    m = _ID_RE.match(video_id)
    if m is None:
        return tenant == DEFAULT_TENANT
    return m.group(3) == tenant_tag(tenant)


def is_gateway_id(video_id: str) -> bool:
    return _ID_RE.match(video_id) is not None


# ---------------------------------------------------------------------------------------------
# Response models (the OpenAI SDK's ``Video``, ``VideoDeleteResponse``, cursor page, error)
# ---------------------------------------------------------------------------------------------
class VideoError(BaseModel):
    code: str
    message: str


class Video(BaseModel):
    """OpenAI's Video object, plus videogen extensions (the SDK keeps unknown fields as extras)."""

    model_config = ConfigDict(extra="forbid")
    id: str
    object: Literal["video"] = "video"
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    model: str
    progress: int = Field(ge=0, le=100)
    prompt: str | None = None
    remixed_from_video_id: str | None = None
    extended_from_video_id: str | None = Field(None, description="videogen: the video this one continues "
                                               "(its frames come first in this one's output)")
    seconds: str
    size: str = Field(description="WxH of the output")
    status: Literal["queued", "in_progress", "completed", "failed"]
    error: VideoError | None = None
    # --- videogen extensions ---
    state: str = Field(description="videogen JobState (preprocessing, queued, running, ..., cancelled); "
                                   "'submitted' before the preprocess stage has accepted it")
    task: str
    num_frames: int
    fps: int
    queue_position: int | None = Field(None, description="0 = next to start (queued jobs only)")
    segments_done: int = 0
    segments_total: int = 0


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Video]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool


class ApiErrorBody(BaseModel):
    message: str
    type: str
    code: str
    param: str | None = None


class ApiError(BaseModel):
    error: ApiErrorBody


class ContentUrl(BaseModel):
    """``GET /v1/videos/{id}/content/url``: the presigned download (for a browser's <video>)."""

    url: str
    expires_at: int


class GatewayError(Exception):
    """An HTTP error answered as OpenAI's ``{"error": {...}}`` body."""

    def __init__(self, status: int, code: str, message: str, *, param: str | None = None,
                 type_: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.type = type_
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return ApiError(error=ApiErrorBody(message=self.message, type=self.type, code=self.code,
                                           param=self.param)).model_dump()


def not_found(video_id: str) -> GatewayError:
    return GatewayError(404, "not_found", f"no video {video_id!r}", param="video_id")


# ---------------------------------------------------------------------------------------------
# JobStatus (+ the request) -> Video
# ---------------------------------------------------------------------------------------------
_STATUS_FOR_STATE = {
    JobState.PREPROCESSING: "queued",
    JobState.QUEUED: "queued",
    JobState.RUNNING: "in_progress",
    JobState.STITCHING: "in_progress",
    JobState.SUCCEEDED: "completed",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "failed",
}


def _seconds(frames: int, fps: float) -> str:
    value = frames / fps if fps else 0.0
    return f"{round(value, 3):g}"


def _ts(dt: datetime | None) -> int | None:
    return None if dt is None else int(dt.timestamp())


def to_video(video_id: str, req: JobRequest | None, status: JobStatus | None, *, assets_ttl_s: int) -> Video:
    """The Video for a job from its KV status and its request (either may be missing, not both)."""
    if req is None and status is None:
        raise not_found(video_id)
    model = (status.model if status and status.model else None) or (req.model if req else "tiny-wan")
    spec = get_model(model)
    width = req.width if req and req.width else (spec.default_width if spec else 0)
    height = req.height if req and req.height else (spec.default_height if spec else 0)
    frames = req.num_frames if req and req.num_frames else (spec.default_frames if spec else 0)
    fps: float = req.fps if req and req.fps else (spec.default_fps if spec else 0)
    if status is not None and status.output is not None:
        width, height, frames, fps = status.output.width, status.output.height, status.output.frames, status.output.fps
    created = id_created_at(video_id) or (_ts(status.created_at) if status else None) or int(time.time())
    state = status.state if status else None
    error = None
    completed_at = expires_at = None
    if status is not None and state is not None and state.terminal:
        completed_at = _ts(status.updated_at)
        if state == JobState.SUCCEEDED:
            expires_at = (completed_at or created) + assets_ttl_s
        elif state == JobState.CANCELLED:
            error = VideoError(code=ErrorCode.CANCELLED.value,
                               message=status.error.message if status.error else "cancelled")
        else:
            error = VideoError(code=status.error.code if status.error else ErrorCode.INTERNAL.value,
                               message=status.error.message if status.error else "failed")
    task = (status.task if status and status.task else None) or (req.task.value if req else Task.T2V.value)
    return Video(
        id=video_id, created_at=created, completed_at=completed_at, expires_at=expires_at, model=model,
        progress=math.floor(status.progress) if status else 0,
        prompt=req.prompt if req else None,
        extended_from_video_id=req.extend.job_id if req and req.extend else None,
        seconds=_seconds(frames, fps), size=f"{width}x{height}",
        status=_STATUS_FOR_STATE[state] if state else "queued", error=error,
        state=state.value if state else "submitted", task=task, num_frames=frames, fps=round(fps),
        queue_position=status.queue_position if status else None,
        segments_done=status.segments_done if status else 0,
        segments_total=status.segments_total if status else 0,
    )


# ---------------------------------------------------------------------------------------------
# Create request -> JobRequest
# ---------------------------------------------------------------------------------------------
def rejected(e: RequestRejected) -> GatewayError:
    """A door rejection: 400 (422 for well-formed but unsatisfiable values), code = job.rejected's."""
    status = 422 if e.code in (ErrorCode.OUT_OF_RANGE, ErrorCode.UNSUPPORTED_TASK_FOR_MODEL) else 400
    param = None
    if e.details:
        loc = e.details[0].get("loc") or ()
        param = ".".join(str(p) for p in loc) or None
    return GatewayError(status, e.code.value, e.message, param=param)


def _bad(code: ErrorCode, message: str, param: str | None = None) -> GatewayError:
    status = 422 if code == ErrorCode.OUT_OF_RANGE else 400
    return GatewayError(status, code.value, message, param=param)


def _form_numbers(raw: dict[str, Any]) -> None:
    """Parse the numeric fields of a multipart form in place (decimal text only; no ``true``, no ``1e3``)."""
    for name in _FORM_INTS:
        value = raw.get(name)
        if isinstance(value, str):
            if not _INT_TEXT.fullmatch(value.strip()):
                raise _bad(ErrorCode.INVALID_REQUEST, f"{name} must be an integer, got {value!r}", name)
            raw[name] = int(value)
    for name in _FORM_FLOATS:
        value = raw.get(name)
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                raise _bad(ErrorCode.INVALID_REQUEST, f"{name} must be a number, got {value!r}", name)
            raw[name] = number


def _frames_for(seconds: object, fps: int) -> int:
    """OpenAI's ``seconds`` (text or number) as a frame count at ``fps``; 4xx when it is not a positive number."""
    try:
        secs = float(seconds)  # type: ignore[arg-type]  # validated here: anything float() refuses is a 400
    except (TypeError, ValueError):
        raise _bad(ErrorCode.INVALID_REQUEST, f"seconds must be a number, got {seconds!r}", "seconds") from None
    if not math.isfinite(secs) or secs <= 0:
        raise _bad(ErrorCode.OUT_OF_RANGE, f"seconds must be > 0, got {seconds!r}", "seconds")
    return max(1, round(secs * fps))


def build_request(video_id: str, fields: dict[str, Any], *, image: str | None = None,
                  video: str | None = None, form: bool = False) -> JobRequest:
    """Map OpenAI's create fields + our extensions to a validated JobRequest (raises GatewayError).

    ``image``/``video``: s3:// references of files uploaded with the request (``input_reference``,
    ``video``); they override the URL fields of the same name. ``form``: the fields came from a
    multipart/urlencoded form, where every value is text; numbers are parsed from decimal text.
    """
    unknown = sorted(set(fields) - OPENAI_FIELDS - EXTENSION_FIELDS)
    if unknown:
        raise _bad(ErrorCode.INVALID_REQUEST, f"unknown field(s): {', '.join(unknown)}", unknown[0])
    raw: dict[str, Any] = {k: v for k, v in fields.items() if k in EXTENSION_FIELDS and v not in (None, "")}
    for name in _JSON_FIELDS:
        if isinstance(raw.get(name), str):
            try:
                raw[name] = json.loads(raw[name])
            except ValueError as e:
                raise _bad(ErrorCode.INVALID_JSON, f"{name} must be JSON: {e}", name) from e
    if form:
        _form_numbers(raw)
    raw["job_id"] = video_id
    raw["prompt"] = fields.get("prompt") or ""
    if fields.get("model"):
        raw["model"] = fields["model"]
    ref = fields.get("input_reference")
    if isinstance(ref, dict):  # OpenAI's {"image_url": ...} reference object
        if ref.get("file_id"):
            raise _bad(ErrorCode.INVALID_REQUEST, "input_reference.file_id is not supported; upload the file "
                       "or pass image_url", "input_reference")
        if ref.get("image_url"):
            raw["image"] = ref["image_url"]
    elif isinstance(ref, str) and ref:
        raw["image"] = ref
    if image:
        raw["image"] = image
    if video:
        raw["video"] = video
    if "task" not in raw and raw.get("image"):
        raw["task"] = Task.ANIMATE.value if raw.get("video") else Task.I2V.value
    size = fields.get("size")
    if size:
        m = re.fullmatch(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*", str(size))
        if m is None:
            raise _bad(ErrorCode.INVALID_REQUEST, f"size must be 'WxH' (e.g. 1280x720), got {size!r}", "size")
        raw["width"], raw["height"] = int(m.group(1)), int(m.group(2))
    seconds = fields.get("seconds")
    if seconds not in (None, "") and "num_frames" not in raw:
        spec = MODELS.get(str(raw.get("model", "tiny-wan")))
        fps = raw.get("fps") or (spec.default_fps if spec else 16)
        try:
            fps = int(fps)
        except (TypeError, ValueError):
            raise _bad(ErrorCode.INVALID_REQUEST, f"fps must be an integer, got {fps!r}", "fps") from None
        raw["num_frames"] = _frames_for(seconds, fps)
    try:
        req = parse_request(json.dumps(raw).encode())
        resolve(req)
    except RequestRejected as e:
        raise rejected(e) from e
    return req


def remix_request(original: JobRequest, new_id: str, prompt: str) -> JobRequest:
    """Same settings (model, size, frames, steps, seed, inputs...), new prompt, new id."""
    if not prompt.strip():
        raise _bad(ErrorCode.INVALID_REQUEST, "remix needs a non-empty 'prompt'", "prompt")
    data = original.model_dump(mode="json", exclude_none=True)
    data.update(job_id=new_id, prompt=prompt)
    try:
        req = parse_request(json.dumps(data).encode())
        resolve(req)
    except RequestRejected as e:
        raise rejected(e) from e
    return req


def extend_request(original: JobRequest, new_id: str, fields: dict[str, Any], *,
                   output: OutputInfo | None) -> JobRequest:
    """Continue ``original``: same settings (model, size, fps, steps, inputs, webhook...), ``extend``
    naming it, ``num_frames`` = the new frames (``num_frames`` or ``seconds`` from ``fields``, else the
    original request's); ``prompt``, ``seed``, ``steps``, ``negative_prompt`` may be overridden."""
    data = original.model_dump(mode="json", exclude_none=True)
    data.pop("extend", None)
    data["job_id"] = new_id
    if output is not None:  # the source's real size and rate (the original may have left them to defaults)
        data.update(width=output.width, height=output.height, fps=round(output.fps))
    for name in ("prompt", "seed", "steps", "negative_prompt"):
        if fields.get(name) not in (None, ""):
            data[name] = fields[name]
    spec = MODELS.get(original.model)
    frames = fields.get("num_frames")
    seconds = fields.get("seconds")
    if frames is None and seconds not in (None, ""):
        frames = _frames_for(seconds, int(data.get("fps") or (spec.default_fps if spec else 16)))
    if frames is None:
        frames = original.num_frames or (spec.default_frames if spec else None)
    if frames is not None:
        data["num_frames"] = frames
    extend: dict[str, Any] = {"job_id": original.job_id}
    if fields.get("condition_frames") is not None:
        extend["condition_frames"] = fields["condition_frames"]
    data["extend"] = extend
    try:
        req = parse_request(json.dumps(data).encode())
        resolve(req)
    except RequestRejected as e:
        raise rejected(e) from e
    return req
