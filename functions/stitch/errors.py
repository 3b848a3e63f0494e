"""The stitcher's typed failure."""

from __future__ import annotations

from schemas.errors import ErrorCode, Permanent


class StitchError(Permanent):
    """Segments that cannot be stitched as asked (frame counts, ranges, sizes): never retried."""

    code = ErrorCode.INTERNAL
