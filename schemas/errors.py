"""Error codes of the contract and the one exception root, ``VideogenError``.

A handler raises a typed failure; exactly one place (``runtime.consumer``) turns it into a
broker action: ``Permanent`` -> term (+ job.rejected / job.failed), ``Retryable`` -> nak(delay).
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # rejected at the door (client error, never retried)
    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    INVALID_JOB_ID = "invalid_job_id"
    UNKNOWN_TASK = "unknown_task"
    UNKNOWN_MODEL = "unknown_model"
    UNSUPPORTED_TASK_FOR_MODEL = "unsupported_task_for_model"
    OUT_OF_RANGE = "out_of_range"
    MISSING_INPUT = "missing_input"
    INPUT_UNREADABLE = "input_unreadable"
    INPUT_TOO_LARGE = "input_too_large"
    INPUT_UNSUPPORTED = "input_unsupported"
    INPUT_FORBIDDEN = "input_forbidden"
    WEBHOOK_URL_FORBIDDEN = "webhook_url_forbidden"
    DUPLICATE_JOB = "duplicate_job"  # a submission naming an existing job: DLQ entry, the job untouched
    OVER_LIMIT = "over_limit"  # admission: modelled GPU seconds, frames x pixels or stitch memory too high
    QUOTA_EXCEEDED = "quota_exceeded"  # per-tenant queued/running/rate limits (retryable)
    EXTEND_SOURCE_NOT_FOUND = "extend_source_not_found"  # v1.3: no such job for this tenant
    EXTEND_SOURCE_NOT_READY = "extend_source_not_ready"  # v1.3: the source has not succeeded (yet)
    EXTEND_INCOMPATIBLE = "extend_incompatible"  # v1.3: model, size or fps differ from the source's
    # failures while running
    STORAGE_ERROR = "storage_error"
    BUS_ERROR = "bus_error"
    MODEL_ERROR = "model_error"
    OUT_OF_MEMORY = "out_of_memory"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    MAX_DELIVERIES = "max_deliveries"
    NO_RUNNER = "no_runner"  # queued for longer than no_runner_timeout_s with no live runner for the model
    INTERNAL = "internal"


class VideogenError(Exception):
    """Root of every error videogen raises on purpose. ``code`` is an ``ErrorCode``."""

    code: ErrorCode = ErrorCode.INTERNAL
    retryable: bool = False

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class Permanent(VideogenError):
    """Bad input or a state that will never get better: terminate, do not retry."""

    retryable = False


class Rejected(Permanent):
    """A job refused at the door; becomes a ``job.rejected`` event."""

    code = ErrorCode.INVALID_REQUEST


class Retryable(VideogenError):
    """A transient failure: redeliver after ``delay_s``."""

    retryable = True
    # deliveries after which this failure is given up even if the consumer allows more (None: the
    # consumer's max_deliver): a client's input or webhook host that keeps failing does not get the
    # budget a stage keeps for an outage of our own storage or bus (``runtime.work.WorkItem.fail``)
    max_attempts: int | None = None

    def __init__(self, message: str, *, code: ErrorCode | None = None, delay_s: float = 5.0,
                 backoff: bool = True) -> None:
        super().__init__(message, code=code)
        self.delay_s = delay_s
        # True: the consumer grows the delay with each redelivery; False: use delay_s as is
        self.backoff = backoff


class Cancelled(VideogenError):
    code = ErrorCode.CANCELLED
    retryable = False
