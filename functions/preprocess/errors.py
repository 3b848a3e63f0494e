"""Typed failures of preprocessing: each carries the contract's ``ErrorCode``.

All input problems are ``Rejected`` (permanent: the job becomes ``job.rejected``, never retried);
transient network/storage trouble is ``InputUnavailable`` (``Retryable``: redelivered later).
"""

from __future__ import annotations

from schemas.errors import ErrorCode, Rejected, Retryable
from schemas.names import INPUT_ATTEMPTS


class InputRejected(Rejected):
    """A client-supplied input that will never be processable as is."""

    code = ErrorCode.INPUT_UNREADABLE


class InputUnreadable(InputRejected):
    """Not found, empty, corrupt or truncated."""

    code = ErrorCode.INPUT_UNREADABLE


class InputTooLarge(InputRejected):
    """Over a ``MediaLimits`` bound (bytes, pixels, duration, frames)."""

    code = ErrorCode.INPUT_TOO_LARGE


class InputUnsupported(InputRejected):
    """A readable file of a kind we do not accept (format, container, codec, no person)."""

    code = ErrorCode.INPUT_UNSUPPORTED


class InputForbidden(InputRejected):
    """A location we may not read (private address, scheme, bucket)."""

    code = ErrorCode.INPUT_FORBIDDEN


class InputUnavailable(Retryable):
    """The input could not be fetched right now (timeout, 5xx, connection reset): retry later,
    ``INPUT_ATTEMPTS`` deliveries at most (then ``job.rejected``, "gave up after N attempts")."""

    code = ErrorCode.INPUT_UNREADABLE
    max_attempts = INPUT_ATTEMPTS


class JobStopped(Exception):
    """The job was cancelled or failed while its preprocessing was still going (message: the state)."""
