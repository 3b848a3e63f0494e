"""Join decoded segments into exactly T frames: drop or blend each overlap (pure numpy).

Segment ``i > 0`` starts ``overlaps[i-1]`` frames before segment ``i-1`` ends. Its first
``O`` frames and the last ``O`` frames stitched so far show the same output frames; a *blend*
turns the pair into the ``O`` output frames:

* ``"cut"``: the new segment's frames (a hard cut at the overlap's start);
* ``"crossfade"``: ``(1-a_j)*prev + a_j*next`` with ``a_j = (j+1)/(O+1)`` rising linearly;
* any callable ``(prev, next) -> frames``, e.g. :func:`functions.stitch.latent.latent_blend`.

Frames past ``total_frames`` (the plan's padding) are trimmed. :class:`Stitcher` works one
segment at a time and holds back only the frames the next segment will blend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal

import numpy as np

from functions.stitch.errors import StitchError

Method = Literal["cut", "crossfade"]
BlendFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def crossfade_weights(overlap: int) -> np.ndarray:
    """Weight of the next segment for each overlap frame: ``(j+1)/(O+1)``, ``j = 0..O-1``."""
    return np.arange(1, overlap + 1, dtype=np.float32) / np.float32(overlap + 1)


def crossfade(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """Linear alpha blend of two equally long uint8 clips ``(O, H, W, C)``."""
    a = crossfade_weights(len(prev)).reshape(-1, *([1] * (prev.ndim - 1)))
    mixed = (1.0 - a) * prev.astype(np.float32) + a * nxt.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def hard_cut(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """The next segment's frames: the overlap of the previous one is dropped."""
    del prev
    return nxt.copy()


def blend_function(method: Method | BlendFn) -> BlendFn:
    """Resolve a method name to its blend function (callables pass through)."""
    if callable(method):
        return method
    table: dict[str, BlendFn] = {"cut": hard_cut, "crossfade": crossfade}
    if method not in table:
        raise StitchError(f"unknown blend method {method!r}; expected one of {sorted(table)}")
    return table[method]


class Stitcher:
    """Streaming stitch: :meth:`push` each segment in order, then :meth:`finish`.

    ``overlaps[i]`` is the overlap between segments ``i`` and ``i+1`` (``N-1`` values).
    Frames come out once no later segment overlaps them; at most ``max(overlaps)`` frames are held.
    """

    def __init__(self, total_frames: int, overlaps: Sequence[int], method: Method | BlendFn = "crossfade") -> None:
        if total_frames < 1:
            raise StitchError(f"total_frames must be >= 1, got {total_frames}")
        if any(o < 0 for o in overlaps):
            raise StitchError(f"overlaps must be >= 0, got {list(overlaps)}")
        self.total_frames = total_frames
        self.overlaps = tuple(overlaps)
        self._blend = blend_function(method)
        self._held: np.ndarray | None = None
        self._index = 0
        self._emitted = 0

    def push(self, segment: np.ndarray) -> np.ndarray:
        """Add the next segment ``(F, H, W, C)``; return the frames that are now final."""
        i = self._index
        if i > len(self.overlaps):
            raise StitchError(f"got segment {i} but the plan has {len(self.overlaps) + 1}")
        overlap = self.overlaps[i - 1] if i > 0 else 0
        following = self.overlaps[i] if i < len(self.overlaps) else 0
        if overlap >= len(segment) or following > len(segment):
            raise StitchError(f"segment {i} has {len(segment)} frames, overlaps are {overlap} and {following}")
        if self._held is not None and self._held.shape[1:] != segment.shape[1:]:
            raise StitchError(f"segment {i} frame shape {segment.shape[1:]} != {self._held.shape[1:]}")
        if overlap:
            assert self._held is not None and len(self._held) >= overlap
            blended = self._blend(self._held[-overlap:], segment[:overlap])
            pending = np.concatenate([self._held[:-overlap], blended, segment[overlap:]])
        else:
            pending = segment if self._held is None else np.concatenate([self._held, segment])
        self._index += 1
        cut = len(pending) - following
        self._held = pending[cut:]
        return self._emit(pending[:cut])

    def _emit(self, frames: np.ndarray) -> np.ndarray:
        room = self.total_frames - self._emitted
        out = frames[:room]
        self._emitted += len(out)
        return out

    def finish(self) -> np.ndarray:
        """Check every segment arrived and exactly ``total_frames`` came out; return the rest."""
        if self._index != len(self.overlaps) + 1:
            raise StitchError(f"got {self._index} segments, the plan has {len(self.overlaps) + 1}")
        assert self._held is not None
        tail = self._emit(self._held)
        self._held = self._held[:0]
        if self._emitted != self.total_frames:
            raise StitchError(f"segments cover {self._emitted} frames, {self.total_frames} requested")
        return tail


def iter_stitch(
    segments: Iterable[np.ndarray], overlaps: Sequence[int], total_frames: int, method: Method | BlendFn = "crossfade"
) -> Iterator[np.ndarray]:
    """Yield chunks of final frames as segments arrive (see :class:`Stitcher`)."""
    stitcher = Stitcher(total_frames, overlaps, method)
    for segment in segments:
        chunk = stitcher.push(segment)
        if len(chunk):
            yield chunk
    tail = stitcher.finish()
    if len(tail):
        yield tail


def stitch_frames(
    segments: Sequence[np.ndarray], overlaps: Sequence[int], total_frames: int, method: Method | BlendFn = "crossfade"
) -> np.ndarray:
    """Exactly ``total_frames`` frames from decoded segments ``(F_i, H, W, 3)`` uint8."""
    return np.concatenate(list(iter_stitch(segments, overlaps, total_frames, method)))
