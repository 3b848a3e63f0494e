"""What rank 0 fetches for a window and broadcasts to every rank (plain arrays, picklable)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from schemas.messages import SegmentJob


@dataclass
class SegmentInputs:
    """Arrays for one window: the previous segment's tail and the preprocessed conditioning."""

    condition: np.ndarray | None = None
    image: np.ndarray | None = None
    pose_video: np.ndarray | None = None
    face_video: np.ndarray | None = None


class CommandKind(StrEnum):
    JOB = "job"
    IDLE = "idle"
    STOP = "stop"


@dataclass(frozen=True)
class RankCommand:
    """Rank 0's word to every rank for one turn of the loop (sent with ``distributed.broadcast_object``).

    ``job``: render ``segment`` with ``inputs``; ``adapters`` holds the LoRA state dicts
    (``LoraSpec.cache_key`` -> tensors) rank 0 fetched, for ranks that lack them (empty on one rank).
    ``idle``: nothing to do this turn. ``stop``: leave the loop.
    """

    kind: CommandKind
    segment: SegmentJob | None = None
    inputs: SegmentInputs | None = None
    adapters: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.kind == CommandKind.JOB) != (self.segment is not None and self.inputs is not None):
            raise ValueError("a job command carries a segment and its inputs; idle/stop carry neither")

    @classmethod
    def job(cls, segment: SegmentJob, inputs: SegmentInputs, adapters: dict[str, dict[str, Any]]) -> RankCommand:
        return cls(CommandKind.JOB, segment, inputs, adapters)


IDLE = RankCommand(CommandKind.IDLE)
STOP = RankCommand(CommandKind.STOP)
