"""Pydantic v2 models of every message on the bus and every value in the KV bucket.

Public: ``JobRequest``, ``CancelRequest``, ``JobEvent`` (its ``data`` is the model ``EVENT_DATA[type]``),
``JobStatus``. Internal (between stages): ``ResolvedJob`` (+ ``JobInputs``), ``PlanRequest``,
``SegmentJob``, ``SegmentResult``, ``StitchRequest``, ``DLQEntry``. All frozen; units are in field names where the
contract allows.
"""

from __future__ import annotations

import builtins
import hashlib
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    StrictFloat,
    StrictInt,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_serializer,
    field_validator,
    model_serializer,
)

JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_JOB_ID_RE = re.compile(JOB_ID_PATTERN)
INPUT_URI_PATTERN = r"^(s3://[^/\s]+/\S+|https?://\S+)$"
MAX_EXTEND_CONDITION_FRAMES = 17


def utcnow() -> datetime:
    return datetime.now(UTC)


_JOB_KEY_RE = re.compile(r"(?:[a-z][a-z0-9-]{0,30}\.)?[A-Za-z0-9_-]{1,64}")


def valid_job_key(value: object) -> bool:
    """An internal job key (``schemas.names.job_key``): a job id, or ``<tenant>.<job_id>``."""
    return isinstance(value, str) and bool(_JOB_KEY_RE.fullmatch(value))


def valid_job_id(value: object) -> bool:
    # fullmatch: ``$`` alone would accept a trailing newline ("j1\n")
    return isinstance(value, str) and bool(_JOB_ID_RE.fullmatch(value))


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Task(StrEnum):
    T2V = "t2v"
    I2V = "i2v"
    ANIMATE = "animate"


class EventType(StrEnum):
    ACCEPTED = "job.accepted"
    REJECTED = "job.rejected"
    PREPROCESSED = "job.preprocessed"
    STARTED = "job.started"
    PROGRESS = "job.progress"
    SEGMENT_COMPLETED = "job.segment_completed"
    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCELLED = "job.cancelled"


TERMINAL_EVENTS = frozenset({EventType.REJECTED, EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELLED})
DEFAULT_WEBHOOK_EVENTS: tuple[EventType, ...] = (EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELLED)


class JobState(StrEnum):
    QUEUED = "queued"
    PREPROCESSING = "preprocessing"
    RUNNING = "running"
    STITCHING = "stitching"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


# ---------------------------------------------------------------------------------------------
# Public: what a client publishes
# ---------------------------------------------------------------------------------------------
class WebhookSpec(_Frozen):
    url: Annotated[str, Field(max_length=2048, pattern=r"^https?://\S+$")] = Field(
        description="http(s) endpoint receiving signed POSTs (Standard Webhooks)."
    )
    events: tuple[EventType, ...] = Field(
        DEFAULT_WEBHOOK_EVENTS, description="event types to deliver; default terminal events."
    )


class LoraRef(_Frozen):
    """A LoRA adapter applied for one job (diffusers/PEFT ``.safetensors`` in the bucket)."""

    source: str = Field(max_length=2048, pattern=r"^s3://[^/\s]+/\S+\.safetensors$",
                        description="s3://bucket/key of a .safetensors LoRA (no pickles)")
    scale: StrictFloat = Field(1.0, ge=-4.0, le=4.0, description="adapter weight")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="expected file digest")


class ExtendSpec(_Frozen):
    """Continue a finished video (v1.3): the new job's first rendered frames are conditioned on the
    last ``condition_frames`` frames of ``job_id``'s output, and its output is that video followed
    by ``num_frames`` new frames."""

    job_id: str = Field(pattern=JOB_ID_PATTERN, description="the succeeded job to continue (same tenant)")
    condition_frames: StrictInt | None = Field(
        None, ge=1, le=MAX_EXTEND_CONDITION_FRAMES,
        description="frames of the source's end the extension is conditioned on (and cross-faded over); "
                    "default: the model's minimum segment overlap (5 for Wan)")


class JobRequest(_Frozen):
    """A video-generation job. Unset size/frames/steps/guidance/fps take the model's defaults."""

    # Numbers are strict, as the published JSON Schema says: "9" or true for an integer is
    # rejected, never coerced (contract 1.1).

    job_id: str = Field(pattern=JOB_ID_PATTERN, description="1-64 chars of [A-Za-z0-9_-]; idempotency key.")
    task: Task = Task.T2V
    model: str = Field("tiny-wan", min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    prompt: str = Field("", max_length=4000)
    negative_prompt: str = Field("", max_length=4000)
    image: str | None = Field(None, max_length=2048, pattern=INPUT_URI_PATTERN,
                              description="i2v/animate reference image")
    video: str | None = Field(None, max_length=2048, pattern=INPUT_URI_PATTERN, description="animate driving video")
    width: StrictInt | None = Field(None, ge=16, le=4096,
                                    description="pixels; multiple of the model's spatial_multiple")
    height: StrictInt | None = Field(None, ge=16, le=4096,
                                     description="pixels; multiple of the model's spatial_multiple")
    num_frames: StrictInt | None = Field(None, ge=1, le=5000, description="frames in the output video")
    fps: StrictInt | None = Field(None, ge=1, le=60, description="frames per second of the output")
    steps: StrictInt | None = Field(None, ge=1, le=100, description="denoising steps per segment")
    guidance_scale: StrictFloat | None = Field(None, ge=0.0, le=20.0)
    seed: StrictInt | None = Field(None, ge=0, le=2**32 - 1, description="unset: chosen at accept time and recorded")
    webhook: WebhookSpec | None = None
    presign_ttl_s: StrictInt = Field(3600, ge=60, le=7 * 86400, description="lifetime of the presigned download URL")
    max_segment_frames: StrictInt | None = Field(
        None, ge=5, le=1000, description="advanced: cap the planner's window length (frames)"
    )
    loras: tuple[LoraRef, ...] = Field((), max_length=4, description="LoRA adapters applied for this job only")
    extend: ExtendSpec | None = Field(None, description="v1.3: continue this finished job's video; "
                                      "num_frames counts the new frames only")


class CancelRequest(_Frozen):
    job_id: str = Field(pattern=JOB_ID_PATTERN)
    reason: str = Field("", max_length=500)


# ---------------------------------------------------------------------------------------------
# Objects, events, status
# ---------------------------------------------------------------------------------------------
class ObjectRef(_Frozen):
    """A reference to an S3 object; large data never rides the bus."""

    bucket: str
    key: str
    etag: str = ""
    size: int = Field(0, ge=0, description="bytes")


class OutputInfo(_Frozen):
    bucket: str
    key: str
    size: int = Field(ge=0, description="bytes")
    sha256: str
    duration_s: float
    frames: int
    width: int
    height: int
    fps: float


class ErrorInfo(_Frozen):
    code: str
    message: str
    retryable: bool = False


class PlanInfo(_Frozen):
    """How the planner covers the requested frames: N windows of L frames overlapping by O."""

    segments: int
    window_frames: int
    overlap_frames: int
    total_frames: int
    reason: str = ""
    revision: int = Field(0, ge=0, description="bumped each time the rest of the job is re-planned "
                                               "(a runner ran out of memory at this window length)")


class AcceptedData(_Frozen):
    model: str
    task: Task
    width: int
    height: int
    num_frames: int
    fps: int
    steps: int
    seed: int


class RejectedData(_Frozen):
    code: str
    message: str
    details: list[dict[str, Any]] = Field(default_factory=list)
    retryable: bool = Field(False, description="the same request may be accepted later (quota_exceeded); "
                                               "submit it again under a new job_id. Contract 1.3; omitted when false")

    @model_serializer(mode="wrap")
    def _omit_false_retryable(self, handler: Any) -> Any:
        # v1 job.rejected events stay byte for byte what they were: the field appears only when true
        out = handler(self)
        if isinstance(out, dict) and out.get("retryable") is False:
            out.pop("retryable")
        return out


class PreprocessedData(_Frozen):
    inputs: list[ObjectRef] = Field(default_factory=list)
    plan: PlanInfo | None = None


class StartedData(_Frozen):
    segment: int
    runner: str


class ProgressData(_Frozen):
    progress: float = Field(ge=0, le=100)
    segment: int
    segments_total: int
    step: int
    steps: int
    playable_frames: int | None = Field(None, ge=0, description="output frames already final and in the job's "
                                        "HLS playlist (added in v1.1)")


class SegmentCompletedData(_Frozen):
    segment: int
    segments_total: int
    object: ObjectRef
    frames: int
    elapsed_s: float
    # streaming (v1.1): the output frames this segment made final, and the growing playlist
    playable_frames: int | None = Field(None, ge=0, description="output frames [0, playable_frames) are final "
                                        "and listed in the playlist")
    stream: ObjectRef | None = Field(None, description="HLS media segment (MPEG-TS) of the output frames this "
                                     "segment made final: [stream_start_frame, playable_frames)")
    stream_start_frame: int | None = Field(None, ge=0)
    url: str | None = Field(None, description="presigned GET of `stream` (the job's presign_ttl_s)")
    url_expires_at: datetime | None = None
    playlist_url: str | None = Field(None, description="presigned GET of the job's HLS playlist; its media "
                                     "segment URIs are presigned absolute URLs too")


class SucceededData(_Frozen):
    output: OutputInfo
    url: str
    url_expires_at: datetime
    thumbnail: ObjectRef | None = Field(None, description="v1.3: the first frame as JPEG")
    spritesheet: ObjectRef | None = Field(None, description="v1.3: up to 25 evenly spaced frames, 5 per row, JPEG")


class FailedData(_Frozen):
    code: str
    message: str
    retryable: bool = False


class CancelledData(_Frozen):
    reason: str = ""
    previous_state: JobState | None = Field(None, description="state the job was cancelled in (queued, running, ...)")


EventData = (AcceptedData | RejectedData | PreprocessedData | StartedData | ProgressData | SegmentCompletedData
             | SucceededData | FailedData | CancelledData)
"""The payload of any ``JobEvent``; which one is fixed by the event's ``type`` (``EVENT_DATA``)."""

EVENT_DATA: dict[EventType, type[BaseModel]] = {
    EventType.ACCEPTED: AcceptedData,
    EventType.REJECTED: RejectedData,
    EventType.PREPROCESSED: PreprocessedData,
    EventType.STARTED: StartedData,
    EventType.PROGRESS: ProgressData,
    EventType.SEGMENT_COMPLETED: SegmentCompletedData,
    EventType.SUCCEEDED: SucceededData,
    EventType.FAILED: FailedData,
    EventType.CANCELLED: CancelledData,
}
"""Event type -> its ``data`` model: the one table to extend when adding an event type."""

D = TypeVar("D", bound=BaseModel)


class JobEvent(_Frozen):
    """A job state change. ``data`` is the model ``EVENT_DATA[type]`` (validated against it on the
    way in); on the wire it is that model's JSON with unset (``None``) fields left out."""

    id: str = Field(description="unique, stable across redeliveries (de-duplicate on it)")
    type: EventType
    job_id: str
    time: datetime
    data: EventData = Field(description="payload; its schema is chosen by `type` (see EVENT_DATA)")

    @field_validator("data", mode="wrap")
    @classmethod
    def _data_for_type(cls, value: Any, _handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        model = EVENT_DATA.get(info.data.get("type"))  # type: ignore[arg-type]
        if model is None:  # `type` itself is invalid (and reported as such): nothing to choose by
            return value
        if isinstance(value, model):
            return value
        if isinstance(value, BaseModel):
            raise ValueError(f"a {info.data['type']} event carries {model.__name__}, not {type(value).__name__}")  # noqa: TRY004 (pydantic wants ValueError)
        return model.model_validate({} if value is None else value)

    @field_serializer("data")
    def _data_wire(self, value: BaseModel, info: SerializationInfo) -> Any:
        # unset optional fields are left out, as producers always did (`exclude_none`)
        return value.model_dump(mode=info.mode, exclude_none=True)

    def payload(self, model: builtins.type[D]) -> D:
        """``data`` as ``model`` (a typed accessor); ``TypeError`` when this event carries another."""
        data = self.data
        if not isinstance(data, model):
            raise TypeError(f"{self.type.value} event carries {builtins.type(data).__name__}, not {model.__name__}")
        return data

    @staticmethod
    def make_id(job_id: str, type_: EventType | str, *discriminators: object) -> str:
        """Deterministic id: the same state change always gets the same id."""
        raw = "|".join([job_id, str(type_), *map(str, discriminators)])
        return "evt_" + hashlib.sha256(raw.encode()).hexdigest()[:24]

    @classmethod
    def build(cls, job_id: str, type_: EventType, data: EventData | dict[str, Any] | None = None,
              *discriminators: object) -> JobEvent:
        """``data``: the type's model (or a dict validated into it; ``None``: all defaults)."""
        return cls(id=cls.make_id(job_id, type_, *discriminators), type=type_, job_id=job_id, time=utcnow(),
                   data=data)


class JobStatus(_Frozen):
    job_id: str
    state: JobState
    progress: float = Field(0.0, ge=0, le=100)
    segments_done: int = 0
    segments_total: int = 0
    created_at: datetime
    updated_at: datetime
    output: OutputInfo | None = None
    url: str | None = None
    url_expires_at: datetime | None = None
    error: ErrorInfo | None = None
    model: str | None = None
    task: str | None = None
    plan: PlanInfo | None = None
    queue_position: int | None = None
    playable_frames: int = Field(0, ge=0, description="output frames final and playable in the HLS playlist "
                                 "(v1.1)")
    playlist_url: str | None = Field(None, description="presigned GET of the job's HLS playlist (v1.1)")
    playlist_url_expires_at: datetime | None = None
    preprocessed_frames: int | None = Field(None, ge=0, description="animate jobs preprocessed while they render: "
                                            "driving/pose/face frames stored so far (v1.1); None: not streamed")
    waiting_reason: str | None = Field(
        None, description="why a queued or preprocessing job is not moving on (no live runner for its model; "
                          "an input fetch being retried, with its next attempt); cleared when it does")


# ---------------------------------------------------------------------------------------------
# Internal hand-offs
# ---------------------------------------------------------------------------------------------
class JobInputs(_Frozen):
    """The objects preprocess stored for a job (``ResolvedJob.inputs``); unset for t2v.

    On the wire a JSON object of name -> ``ObjectRef`` holding only the names that are set (the
    same keys as the earlier ``dict[str, ObjectRef]``), in the order preprocess writes them."""

    image: ObjectRef | None = Field(None, description="i2v/animate: the original image bytes")
    reference: ObjectRef | None = Field(None, description="i2v/animate: reference image PNG on the model grid")
    video: ObjectRef | None = Field(None, description="animate: the original driving video bytes")
    keypoints: ObjectRef | None = Field(None, description="animate: (F, 33, 4) float32 .npy")
    keypoints_meta: ObjectRef | None = Field(None, description="animate: the keypoints' JSON sidecar")
    frames_index: ObjectRef | None = Field(None, description="animate: driving frames (FramesIndex JSON)")
    pose_index: ObjectRef | None = Field(None, description="animate: pose skeleton frames (FramesIndex JSON)")
    face_index: ObjectRef | None = Field(None, description="animate: face crop frames (FramesIndex JSON)")

    @model_serializer(mode="wrap")
    def _set_only(self, handler: Any):  # no return annotation: it would change the serialization schema
        return {k: v for k, v in handler(self).items() if v is not None}

    def refs(self) -> dict[str, ObjectRef]:
        """The set names -> refs, in field order (what the dict used to hold)."""
        return {name: ref for name in type(self).model_fields if (ref := getattr(self, name)) is not None}

    def objects(self) -> list[ObjectRef]:
        return list(self.refs().values())


class ExtendSource(_Frozen):
    """An extension's source, resolved by preprocess (``JobRequest.extend``)."""

    job_id: str = Field(description="internal key of the source job")
    output: ObjectRef = Field(description="copy of the source's output.mp4 under the extension's inputs")
    frames: int = Field(ge=1, description="frames of the source output")
    condition: ObjectRef = Field(description="the source's last condition_frames frames (uint8 .npy)")
    condition_frames: int = Field(ge=1)


class ResolvedJob(_Frozen):
    """A validated JobRequest with every default filled in (what downstream stages use)."""

    job_id: str
    task: Task
    model: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_frames: int
    fps: int
    steps: int
    guidance_scale: float
    seed: int
    presign_ttl_s: int
    max_segment_frames: int | None = None
    webhook: WebhookSpec | None = None
    loras: tuple[LoraRef, ...] = ()
    inputs: JobInputs = Field(default_factory=JobInputs, description="stored input/preprocessed objects")
    extend: ExtendSource | None = Field(None, description="an extension: num_frames then counts the rendered "
                                        "frames (condition_frames re-rendered + the new ones)")

    @model_serializer(mode="wrap")
    def _no_unset_extend(self, handler: Any):  # unannotated return: keeps the JSON schema as it was
        # the wire of a job that extends nothing is what it was before v1.3 (no "extend": null)
        data = handler(self)
        if isinstance(data, dict) and data.get("extend", 0) is None:
            del data["extend"]
        return data

    @property
    def output_frames(self) -> int:
        """Frames of the job's output.mp4 (an extension: the source's followed by the new ones)."""
        if self.extend is None:
            return self.num_frames
        return self.extend.frames + self.num_frames - self.extend.condition_frames


class ReplanHint(_Frozen):
    """A runner could not render segment ``index`` of plan ``plan_revision`` at its window length
    (CUDA out of memory, or longer than the runner's ``runner_max_window_frames``): re-plan the
    job from that segment on with windows of at most ``max_window_frames``."""

    index: int = Field(ge=0, description="the segment that did not fit")
    plan_revision: int = Field(ge=0, description="revision of the plan the segment came from")
    failed_frames: int = Field(ge=1, description="window length that did not fit")
    max_window_frames: int = Field(ge=1, description="longest window to plan from that segment on")
    reason: str = Field("", max_length=500)
    runner: str = ""
    segment_seq: int | None = Field(None, description="stream sequence of the segment message (deleted by the planner)")
    condition: ObjectRef | None = Field(None, description="the segment's conditioning (previous tail), reused as is")


class PreprocessPart(_Frozen):
    """preprocess -> preprocess-part: make the frame products of output frames ``[start, start + frames)``
    of an animate job (whole 32-frame chunks; the worker holding the submission joins the parts)."""

    job: ResolvedJob
    part: int = Field(ge=0)
    parts: int = Field(ge=1)
    part_frames: int = Field(ge=1, description="frames per part (the last may be shorter)")
    start: int = Field(ge=0, description="first output frame (part * part_frames)")
    frames: int = Field(ge=1)
    video: ObjectRef = Field(description="the stored driving video (inputs/video.<ext>)")
    face_size: int = Field(ge=8)
    require_person: bool = True


class PlanRequest(_Frozen):
    job: ResolvedJob
    replan: ReplanHint | None = Field(
        None, description="set: re-plan from a segment that did not fit (runner -> planner)")
    ready_frames: int | None = Field(None, ge=0, description="streaming preprocess: the job's frame inputs are "
                                     "stored for output frames [0, ready_frames); None: every input is stored")


class WindowSpec(_Frozen):
    index: int = Field(ge=0)
    start_frame: int = Field(ge=0, description="first output frame this window covers")
    frames: int = Field(ge=1, description="window length L")
    overlap_frames: int = Field(0, ge=0, description="frames shared with the previous window")


class JobPlan(_Frozen):
    """Stored at ``jobs/<id>/plan.json``: what every later stage needs to continue the job."""

    job: ResolvedJob
    info: PlanInfo
    windows: list[WindowSpec]
    padding_frames: int = Field(0, ge=0, description="extra frames rendered at the end, trimmed by stitch")
    replanned_from: int | None = Field(None, ge=0, description="segment this revision re-planned from (None: original)")


class SegmentJob(_Frozen):
    job: ResolvedJob
    index: int = Field(ge=0)
    count: int = Field(ge=1)
    start_frame: int = Field(ge=0, description="first output frame this window covers")
    frames: int = Field(ge=1, description="window length L (4k+1 for Wan)")
    overlap_frames: int = Field(0, ge=0, description="frames shared with the previous window")
    next_overlap_frames: int = Field(0, ge=0, description="trailing frames the next window is conditioned on")
    seed: int
    condition: ObjectRef | None = Field(None, description="previous segment's tail frames (uint8 .npy)")
    plan_revision: int = Field(0, ge=0, description="revision of the plan this segment belongs to")
    playable_frames: int | None = Field(None, ge=0, description="output frames already final (in the job's HLS "
                                        "stream) while this segment renders; None: the plan is not streamed")

    @field_validator("count")
    @classmethod
    def _count_covers_index(cls, v: int, info: Any) -> int:
        idx = info.data.get("index", 0)
        if idx >= v:
            raise ValueError("index must be < count")
        return v


class SegmentResult(_Frozen):
    job_id: str
    index: int
    count: int
    segment: ObjectRef
    tail: ObjectRef | None = None
    frames: int
    overlap_frames: int = Field(0, ge=0, description="leading frames shared with the previous segment")
    width: int
    height: int
    fps: int
    sha256: str
    runner: str
    elapsed_s: float
    plan_revision: int = Field(0, ge=0, description="revision of the plan the segment was rendered for")


class StitchRequest(_Frozen):
    job: ResolvedJob
    plan: PlanInfo
    segments: list[SegmentResult]


class WebhookAttempt(_Frozen):
    """One webhook delivery attempt, on ``videogen.webhooks.attempts.<job_id>.<event_id>``."""

    event_id: str
    event_type: EventType
    job_id: str
    attempt: int = Field(ge=1, description="1-based delivery count of this event (replays count separately)")
    replay: bool = Field(False, description="requested by `videogen webhooks replay`")
    url: str = Field(description="target without credentials, query or fragment")
    outcome: str = Field(description="delivered | retry | gone | permanent | forbidden")
    status_code: int | None = None
    latency_ms: float = Field(0.0, ge=0)
    error: str | None = None
    next_retry_s: float | None = Field(None, description="delay before the next attempt; None: no further attempt")
    time: datetime = Field(default_factory=utcnow)


class WebhookDisabled(_Frozen):
    """The job's endpoint answered 410 Gone: no further deliveries (``videogen.webhooks.disabled.<job_id>``)."""

    job_id: str
    url: str
    event_id: str
    status_code: int = 410
    time: datetime = Field(default_factory=utcnow)


class MaxDeliveriesAdvisory(BaseModel):
    """JetStream's ``io.nats.jetstream.advisory.v1.max_deliver`` on
    ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`` (the fields used here)."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    type: str = ""
    id: str = ""
    stream: str
    consumer: str
    stream_seq: int = Field(ge=1)
    deliveries: int = Field(ge=0)


class DLQEntry(_Frozen):
    stage: str
    code: str
    reason: str
    subject: str
    stream_seq: int | None = None
    num_delivered: int | None = None
    job_id: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    payload_b64: str = Field(description="the original message body, base64")
    time: datetime = Field(default_factory=utcnow)


PUBLIC_MODELS: dict[str, type[BaseModel]] = {
    "JobRequest": JobRequest,
    "CancelRequest": CancelRequest,
    "JobEvent": JobEvent,
    "JobStatus": JobStatus,
    "OutputInfo": OutputInfo,
    "LoraRef": LoraRef,
    "ExtendSpec": ExtendSpec,
    **{model.__name__: model for model in EVENT_DATA.values()},
    "DLQEntry": DLQEntry,
}
INTERNAL_MODELS: dict[str, type[BaseModel]] = {
    "ResolvedJob": ResolvedJob,
    "JobInputs": JobInputs,
    "ExtendSource": ExtendSource,
    "PlanRequest": PlanRequest,
    "ReplanHint": ReplanHint,
    "WindowSpec": WindowSpec,
    "JobPlan": JobPlan,
    "SegmentJob": SegmentJob,
    "SegmentResult": SegmentResult,
    "StitchRequest": StitchRequest,
    "WebhookAttempt": WebhookAttempt,
    "WebhookDisabled": WebhookDisabled,
    "MaxDeliveriesAdvisory": MaxDeliveriesAdvisory,
}

