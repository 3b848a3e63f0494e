"""The rank broadcast is a typed command (``gpu_runner.inputs.RankCommand``), not a tuple protocol."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from gpu_runner import distributed as dist
from gpu_runner.inputs import IDLE, STOP, CommandKind, RankCommand, SegmentInputs
from schemas.messages import ResolvedJob, SegmentJob, Task

JOB = ResolvedJob(job_id="rank-1", task=Task.T2V, model="tiny-wan", prompt="p", negative_prompt="", width=32,
                  height=32, num_frames=9, fps=8, steps=2, guidance_scale=1.0, seed=1, presign_ttl_s=3600)
SEGMENT = SegmentJob(job=JOB, index=0, count=1, start_frame=0, frames=9, seed=1)


def test_job_command_survives_pickling_as_the_broadcast_does() -> None:
    inputs = SegmentInputs(condition=np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3))
    cmd = RankCommand.job(SEGMENT, inputs, {"lora-a": {"w": np.ones(2)}})
    again = pickle.loads(pickle.dumps(cmd))
    assert again.kind == CommandKind.JOB and again.segment == SEGMENT
    assert again.inputs is not None and np.array_equal(again.inputs.condition, inputs.condition)
    assert np.array_equal(again.adapters["lora-a"]["w"], np.ones(2))
    assert dist.broadcast_object(cmd, ctx=None) is cmd  # one rank: handed back as is


def test_idle_and_stop_carry_nothing_and_a_job_needs_its_segment() -> None:
    assert pickle.loads(pickle.dumps(IDLE)) == IDLE and STOP.kind == CommandKind.STOP and STOP.segment is None
    with pytest.raises(ValueError, match="carries a segment"):
        RankCommand(CommandKind.JOB)
    with pytest.raises(ValueError, match="carry neither"):
        RankCommand(CommandKind.IDLE, SEGMENT, SegmentInputs())
