"""Validation at the door: raw bytes -> ResolvedJob, or a ``Rejected`` with a precise code.

Pure: no I/O. The SSRF check of the webhook URL (needs DNS) happens in the handler.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import ValidationError

from schemas.errors import ErrorCode, Rejected
from schemas.messages import JobRequest, ResolvedJob, Task, valid_job_id
from schemas.names import uploads_prefix
from schemas.registry import MODELS, ModelSpec


class RequestRejected(Rejected):
    def __init__(self, message: str, *, code: ErrorCode, job_id: str | None = None,
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message, code=code)
        self.job_id = job_id
        self.details = details or []


def _code_for(errors: list[dict[str, Any]]) -> ErrorCode:
    first = errors[0]
    loc = first.get("loc", ())
    kind = first.get("type", "")
    field = loc[0] if loc else ""
    if field == "job_id":
        return ErrorCode.INVALID_JOB_ID
    if field == "task":
        return ErrorCode.UNKNOWN_TASK
    if field == "model":
        return ErrorCode.UNKNOWN_MODEL
    if kind in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}:
        return ErrorCode.OUT_OF_RANGE
    return ErrorCode.INVALID_REQUEST


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ())) or "(body)"
        parts.append(f"{loc}: {e.get('msg')}")
    return "; ".join(parts)


def parse_request(payload: bytes) -> JobRequest:
    try:
        raw = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestRejected(f"body is not valid JSON: {e}", code=ErrorCode.INVALID_JSON) from e
    except RecursionError as e:  # "[[[[..." thousands deep: refused, never a crash loop
        raise RequestRejected("body is nested too deeply", code=ErrorCode.INVALID_JSON) from e
    if not isinstance(raw, dict):
        raise RequestRejected("body must be a JSON object", code=ErrorCode.INVALID_REQUEST)
    job_id = raw.get("job_id") if valid_job_id(raw.get("job_id")) else None
    try:
        return JobRequest.model_validate(raw)
    except ValidationError as e:
        errors = [{k: v for k, v in err.items() if k in ("loc", "msg", "type")} for err in e.errors()]
        raise RequestRejected(_describe(errors), code=_code_for(errors), job_id=job_id, details=errors) from e


def check_loras(req: JobRequest, bucket: str, allow_prefixes: list[str], input_buckets: list[str]) -> None:
    """A LoRA is code-like input: it must be pinned (``sha256``) or come from an allowed prefix.

    Without a sha256 the source must be ``s3://<bucket>/<allowed prefix>...``; with one, any key
    in ``bucket`` or ``input_buckets``. ``..`` segments are always refused. The runner caps the
    bytes it fetches (``lora_max_bytes``) and checks the digest before loading.
    """
    for i, lora in enumerate(req.loras):
        src_bucket, _, key = lora.source.removeprefix("s3://").partition("/")
        where = f"loras.{i}.source"
        if ".." in key.split("/") or key.startswith("/"):
            raise RequestRejected(f"{where}: '..' and absolute keys are not allowed",
                                  code=ErrorCode.INPUT_FORBIDDEN, job_id=req.job_id)
        if src_bucket != bucket and src_bucket not in input_buckets:
            raise RequestRejected(f"{where}: bucket {src_bucket!r} is not allowed",
                                  code=ErrorCode.INPUT_FORBIDDEN, job_id=req.job_id)
        if lora.sha256 is None and not (src_bucket == bucket and any(key.startswith(p) for p in allow_prefixes)):
            allowed = ", ".join(f"s3://{bucket}/{p}" for p in allow_prefixes) or "(none)"
            raise RequestRejected(f"{where}: needs a sha256 unless it is under {allowed}",
                                  code=ErrorCode.INPUT_FORBIDDEN, job_id=req.job_id)


def check_input_scope(req: JobRequest, tenant: str, bucket: str, input_buckets: list[str]) -> None:
    """``s3://`` inputs (image, video, LoRA) come from the tenant's own upload prefix only.

    In ``bucket`` a key must be under ``uploads_prefix(tenant)`` (``uploads/`` for ``default``,
    ``tenants/<t>/uploads/`` for another tenant) -- never another job's or tenant's objects; LoRAs may
    also come from the operator's shared ``loras/``. Other buckets only when listed in
    ``input_buckets`` (operator-configured, shared). ``..`` and empty segments are refused.
    """
    own = uploads_prefix(tenant)
    sources = [("image", req.image), ("video", req.video)]
    sources += [(f"loras.{i}.source", lora.source) for i, lora in enumerate(req.loras)]
    for where, uri in sources:
        if not uri or not uri.startswith("s3://"):
            continue
        src_bucket, _, key = uri.removeprefix("s3://").partition("/")
        parts = key.split("/")
        if ".." in parts or "." in parts or key.startswith("/") or "" in parts[:-1]:
            raise RequestRejected(f"{where}: '..', '.' and empty path segments are not allowed",
                                  code=ErrorCode.INPUT_FORBIDDEN, job_id=req.job_id)
        if src_bucket != bucket:
            if src_bucket in input_buckets:
                continue
            raise RequestRejected(f"{where}: bucket {src_bucket!r} is not allowed",
                                  code=ErrorCode.INPUT_FORBIDDEN, job_id=req.job_id)
        if key.startswith(own) or (where.startswith("loras.") and key.startswith("loras/")):
            continue
        raise RequestRejected(f"{where}: s3:// inputs must be under s3://{bucket}/{own} (your upload prefix)",
                              code=ErrorCode.INPUT_FORBIDDEN, job_id=req.job_id)


def _check_range(name: str, value: int, lo: int, hi: int, job_id: str) -> None:
    if not lo <= value <= hi:
        raise RequestRejected(f"{name}={value} is out of range [{lo}, {hi}] for this model",
                              code=ErrorCode.OUT_OF_RANGE, job_id=job_id)


def default_seed(job_id: str) -> int:
    """Deterministic per job: a redelivered submission resolves to the same seed."""
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big")


def resolve(req: JobRequest) -> tuple[ResolvedJob, ModelSpec]:
    """Apply model constraints and defaults. Raises RequestRejected."""
    spec = MODELS.get(req.model)
    if spec is None:
        raise RequestRejected(f"unknown model {req.model!r}; known: {', '.join(sorted(MODELS))}",
                              code=ErrorCode.UNKNOWN_MODEL, job_id=req.job_id)
    if req.task.value not in spec.tasks:
        raise RequestRejected(
            f"model {spec.name} does not support task {req.task.value} (supports {', '.join(spec.tasks)})",
            code=ErrorCode.UNSUPPORTED_TASK_FOR_MODEL, job_id=req.job_id)
    if req.task in (Task.I2V, Task.ANIMATE) and not req.image:
        raise RequestRejected(f"task {req.task.value} needs 'image'", code=ErrorCode.MISSING_INPUT, job_id=req.job_id)
    if req.task == Task.ANIMATE and not req.video:
        raise RequestRejected("task animate needs 'video'", code=ErrorCode.MISSING_INPUT, job_id=req.job_id)
    if req.task == Task.T2V and not req.prompt.strip():
        raise RequestRejected("task t2v needs a non-empty 'prompt'", code=ErrorCode.INVALID_REQUEST, job_id=req.job_id)
    width = req.width or spec.default_width
    height = req.height or spec.default_height
    _check_range("width", width, spec.spatial_multiple, spec.max_width, req.job_id)
    _check_range("height", height, spec.spatial_multiple, spec.max_height, req.job_id)
    for name, v in (("width", width), ("height", height)):
        if v % spec.spatial_multiple:
            raise RequestRejected(f"{name}={v} must be a multiple of {spec.spatial_multiple} for {spec.name}",
                                  code=ErrorCode.OUT_OF_RANGE, job_id=req.job_id)
    if req.max_segment_frames is not None and not spec.valid_window(req.max_segment_frames):
        raise RequestRejected(
            f"max_segment_frames={req.max_segment_frames} must be {spec.frame_multiple}k+1",
            code=ErrorCode.OUT_OF_RANGE, job_id=req.job_id)
    job = ResolvedJob(
        job_id=req.job_id,
        task=req.task,
        model=spec.name,
        prompt=req.prompt,
        negative_prompt=req.negative_prompt,
        width=width,
        height=height,
        num_frames=req.num_frames or spec.default_frames,
        fps=req.fps or spec.default_fps,
        steps=req.steps or spec.default_steps,
        guidance_scale=req.guidance_scale if req.guidance_scale is not None else spec.default_guidance_scale,
        seed=req.seed if req.seed is not None else default_seed(req.job_id),
        presign_ttl_s=req.presign_ttl_s,
        max_segment_frames=req.max_segment_frames,
        webhook=req.webhook,
        loras=req.loras,
    )
    return job, spec
