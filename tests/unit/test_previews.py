"""Previews of a one-window job made from its rendered frames (the runner) match what stitch makes by
decoding the output: the same images' shapes, and exactly the decoded output's last frames as the tail."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from functions.stitch.previews import frame_jpegs, make_previews
from runtime.video import decode_mp4, encode_mp4


def _mp4(frames: np.ndarray) -> bytes:
    buf = io.BytesIO()
    encode_mp4(frames, 16, buf)
    return buf.getvalue()


def _img(jpeg: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


@pytest.mark.parametrize("n_frames", [9, 33])
def test_frame_previews_match_the_decoded_ones(n_frames: int) -> None:
    rng = np.random.default_rng(n_frames)
    base = rng.integers(0, 256, (1, 48, 64, 3), dtype=np.uint8)
    frames = np.clip(base.astype(int) + np.arange(n_frames)[:, None, None, None] * 3, 0, 255).astype(np.uint8)
    mp4 = _mp4(frames)
    decoded = make_previews(mp4, 5, frames=n_frames)
    thumb, sheet = frame_jpegs(frames)
    assert _img(thumb).shape == _img(decoded.thumbnail).shape == (48, 64, 3)
    assert _img(sheet).shape == _img(decoded.spritesheet).shape
    # the images show the same pictures (the rendered frames, before the encode's loss)
    assert np.abs(_img(thumb).astype(int) - _img(decoded.thumbnail).astype(int)).mean() < 12
    assert decoded.tail.shape == (5, 48, 64, 3)
    assert np.array_equal(decoded.tail, decode_mp4(mp4)[-5:])  # exactly the decoded output's last frames


def test_the_tail_of_a_short_video_and_none() -> None:
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    assert make_previews(_mp4(frames), 5, frames=3).tail.shape == (3, 16, 16, 3)
    with pytest.raises(ValueError):
        frame_jpegs(frames[:0])

