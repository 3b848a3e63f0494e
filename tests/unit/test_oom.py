"""OOM helpers: recognising out-of-memory errors, freeing memory, choosing a smaller window."""

from __future__ import annotations

import pytest
import torch

from gpu_runner.oom import default_min_frames, free_memory, is_oom, plan_after_oom, smaller_window
from schemas.errors import ErrorCode, Permanent, Retryable
from schemas.registry import MODELS

WAN = MODELS["wan2.1-t2v-1.3b"]


def test_is_oom_recognises_torch_and_wrapped_errors() -> None:
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(RuntimeError("CUDA error: out of memory"))
    assert is_oom(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"))
    assert is_oom(Permanent("rendering failed", code=ErrorCode.OUT_OF_MEMORY))  # what WanT2V.generate raises
    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory")
        except torch.OutOfMemoryError as inner:
            raise Retryable("segment failed", code=ErrorCode.MODEL_ERROR) from inner
    except Retryable as outer:
        assert is_oom(outer)  # found in the cause chain
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("out of memory"))  # only runtime/memory errors carry the marker
    assert not is_oom(Permanent("bad", code=ErrorCode.MODEL_ERROR))
    assert not is_oom(None)


def test_is_oom_survives_cyclic_chains() -> None:
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a
    assert not is_oom(a)


def test_free_memory_without_cuda() -> None:
    stats = free_memory()
    if not torch.cuda.is_available():
        assert stats == {"allocated_before": 0, "reserved_before": 0, "allocated_after": 0, "reserved_after": 0}


@pytest.mark.parametrize(("frames", "expected"), [
    (81, 53),  # 21 latent frames -> at most 14 -> 53 frames
    (53, 33),  # 14 -> at most 9.33 -> 9 latent frames -> 33 frames
    (33, 21),  # 9 -> at most 6 -> 21 frames
    (21, 13),  # 6 -> at most 4 -> 13 frames (allowed here: min_frames=5)
])
def test_smaller_window_keeps_at_most_two_thirds_of_the_tokens(frames: int, expected: int) -> None:
    got = smaller_window(frames, WAN, min_frames=5)
    assert got == expected and WAN.valid_window(got)
    assert WAN.latent_tokens(832, 480, got) <= 2 / 3 * WAN.latent_tokens(832, 480, frames)


def test_smaller_window_limits() -> None:
    assert default_min_frames(WAN) == 17
    assert smaller_window(21, WAN) is None  # 17 frames = 5 latent frames > 2/3 of 6
    assert smaller_window(17, WAN) is None
    assert smaller_window(200, WAN) == 81  # never above the model's largest window
    with pytest.raises(ValueError):
        smaller_window(81, WAN, token_fraction=1.0)
    seq = [81]
    while (nxt := smaller_window(seq[-1], WAN)) is not None:
        seq.append(nxt)
    assert seq == [81, 53, 33, 21]


def test_plan_after_oom() -> None:
    plan = plan_after_oom(81, WAN)
    assert plan.action == "replan" and plan.replan_max_window == 53 and "53" in plan.reason
    last = plan_after_oom(17, WAN)
    assert last.action == "fail" and last.replan_max_window is None
