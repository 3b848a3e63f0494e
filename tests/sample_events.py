"""Well-formed ``data`` for every event type (tests that need an event, not a particular payload)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from schemas.messages import EVENT_DATA, EventType, ObjectRef, OutputInfo, Task

OUTPUT = OutputInfo(bucket="videogen", key="jobs/x/output.mp4", size=1, sha256="0" * 64, duration_s=1.0,
                    frames=9, width=64, height=64, fps=8.0)
_SAMPLES: dict[EventType, dict[str, Any]] = {
    EventType.ACCEPTED: {"model": "tiny-wan", "task": Task.T2V, "width": 64, "height": 64, "num_frames": 9,
                         "fps": 8, "steps": 4, "seed": 0},
    EventType.REJECTED: {"code": "invalid_request", "message": "rejected by a test"},
    EventType.PREPROCESSED: {},
    EventType.STARTED: {"segment": 0, "runner": "test"},
    EventType.PROGRESS: {"progress": 0.0, "segment": 0, "segments_total": 1, "step": 0, "steps": 100},
    EventType.SEGMENT_COMPLETED: {"segment": 0, "segments_total": 1, "frames": 9, "elapsed_s": 0.1,
                                  "object": ObjectRef(bucket="videogen", key="jobs/x/segments/0.mp4")},
    EventType.SUCCEEDED: {"output": OUTPUT, "url": "https://s3.example/x.mp4",
                          "url_expires_at": datetime(2030, 1, 1, tzinfo=UTC)},
    EventType.FAILED: {"code": "model_error", "message": "failed by a test"},
    EventType.CANCELLED: {},
}


def sample_data(type_: EventType, **fields: Any) -> BaseModel:
    """``EVENT_DATA[type_]`` filled with plausible values; ``fields`` override them."""
    return EVENT_DATA[type_].model_validate({**_SAMPLES[type_], **fields})
