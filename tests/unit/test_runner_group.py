"""A failing rank ends the group (issue 17): with world size > 1 an exception out of ``generate``
hands the segment back and exits ``EXIT_RESTART`` on every rank, never re-entering the broadcast;
CUDA/NCCL errors are fatal at any world size. Input errors every rank raises alike still fail the
job. Routed through ``Runner._render`` with the fakes of ``test_runner_oom``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from gpu_runner.runner import EXIT_RESTART, GroupFailed, Runner, ends_group, is_device_error
from schemas.errors import Cancelled, ErrorCode, Permanent
from tests.unit.test_runner_oom import IO, Pipe, render, segment
from tests.unit.test_runner_oom import _no_process_group as _no_process_group  # noqa: F401 - autouse fixture
from tests.unit.test_runner_oom import runner as runner  # noqa: F401 - fixture
from tests.unit.test_runner_oom import tiny as tiny  # noqa: F401 - fixture

Make = Callable[..., tuple[Runner, Pipe, IO]]


def _as_rank(r: Runner, rank: int, world_size: int) -> None:
    r.ctx = dataclasses.replace(r.ctx, rank=rank, world_size=world_size)


@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_local_error_in_a_group_hands_back_and_restarts(runner: Make, rank: int) -> None:
    r, pipe, io = runner()
    _as_rank(r, rank, 2)
    pipe.raise_ = RuntimeError("shape mismatch on this rank only")
    with pytest.raises(GroupFailed):
        render(r, segment("a", 9))
    assert r.exit_code == EXIT_RESTART
    # rank 0 hands the segment back (redelivered to a fresh group); no job failure is published
    assert io.sent == ([("hand_back", pytest.approx(10.0))] if rank == 0 else [])
    assert r.stats.segments == 0


def test_input_errors_raised_alike_on_every_rank_still_fail_the_job(runner: Make) -> None:
    r, pipe, io = runner()
    _as_rank(r, 0, 2)
    pipe.raise_ = Permanent("num_frames=8: bad", code=ErrorCode.OUT_OF_RANGE)
    render(r, segment("a", 9))  # no GroupFailed
    assert io.sent[0][0] == "fail" and r.exit_code == 0


def test_cuda_errors_are_fatal_even_alone(runner: Make) -> None:
    r, pipe, io = runner()
    pipe.raise_ = RuntimeError("CUDA error: an illegal memory access was encountered")
    with pytest.raises(GroupFailed):
        render(r, segment("a", 9))
    assert io.sent == [("hand_back", pytest.approx(10.0))] and r.exit_code == EXIT_RESTART


def test_classification() -> None:
    assert is_device_error(RuntimeError("NCCL error in: ProcessGroupNCCL.cpp, unhandled system error"))
    assert not is_device_error(RuntimeError("shape mismatch"))
    assert not is_device_error(ValueError("CUDA error"))  # only runtime errors from the device
    assert ends_group(RuntimeError("x"), 2) and not ends_group(RuntimeError("x"), 1)
    assert not ends_group(Cancelled("stop"), 2)
    assert ends_group(Permanent("model broke", code=ErrorCode.MODEL_ERROR), 2)
    assert not ends_group(Permanent("bad", code=ErrorCode.MISSING_INPUT), 2)


def test_lora_state_is_broadcast_once_not_every_segment(runner: Make) -> None:
    """Rank 0 sends an adapter's tensors only while the other ranks lack it (their LRU is mirrored)."""
    from types import SimpleNamespace

    import torch

    from gpu_runner.inputs import SegmentInputs
    from gpu_runner.lora import LoraSpec
    from schemas.messages import LoraRef

    r, _pipe, io = runner()
    _as_rank(r, 0, 2)
    io.fetch_inputs = lambda active: SegmentInputs()  # type: ignore[attr-defined]
    refs = [LoraRef(source="s3://b/loras/a.safetensors"), LoraRef(source="s3://b/loras/b.safetensors")]
    for ref in refs:  # already fetched on rank 0
        r.adapters.put(LoraSpec(source=ref.source), {"w": torch.zeros(1)})
    seg = segment("a", 9)
    seg = seg.model_copy(update={"job": seg.job.model_copy(update={"loras": refs})})
    first = r._job_command(SimpleNamespace(job=seg))
    second = r._job_command(SimpleNamespace(job=seg))
    assert sorted(first.adapters) == sorted(LoraSpec(source=x.source).cache_key for x in refs)
    assert second.adapters == {}  # the next segment of the job carries no tensors
    # after the peers evicted one (8 other adapters used since), it travels again
    r.peer_adapters.record([], [f"other-{i}" for i in range(r.adapters.max_entries - 1)])
    third = r._job_command(SimpleNamespace(job=seg))
    assert len(third.adapters) == 1


def test_no_cache_means_no_counting_hooks(runner: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    import gpu_runner.runner as runner_module

    calls: list[str] = []
    monkeypatch.setattr(runner_module, "counted_cache", lambda *a, **k: calls.append("hooked"))
    r, _pipe, io = runner()
    render(r, segment("a", 9))
    assert calls == [] and io.sent[0][0] == "result"
