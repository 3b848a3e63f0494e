"""The CPU-heavy part of an animate job, driven step by step from the event loop.

``AnimateRun.step(n)`` (call it in a worker thread) pulls up to ``n`` more frames through
decode -> resample -> fit to grid -> [pose -> render pose] (thread pool, ordered) -> face crop ->
[encode chunk] (the same pool), and returns the chunks that got finished, ready to upload.

Everything heavy runs on the estimator's ``workers`` threads, so the whole path scales with cores:
pose and skeleton drawing per frame, and the encoding per 32-frame chunk (chunks are independent MP4s,
each encoded single-threaded, so the bytes are the same for any worker count). Only what is
sequential by nature stays in the calling thread: decode, the face box's temporal smoothing and its
crop. The smoothing restarts at every multiple of ``reset_every`` (the preprocess part size), in every
mode, so a part ``[start, end)`` processed alone (``start``/``end``, any worker) gives exactly the bytes of
the same frames in a run from 0 -- nothing else carries state from one frame to the next (pose is per
frame, chunks are independent MP4s). Memory stays bounded: the pool's in-flight window, the three
chunks being filled, at most ``2 x workers`` chunks being encoded, and the small keypoint rows.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from functions.preprocess.geometry import analysis_size
from functions.preprocess.limits import MediaLimits
from functions.preprocess.media import SampledFrame, Source, iter_frames
from functions.preprocess.pose import PoseEstimator, to_pixels
from functions.preprocess.render import FaceCropper, render_pose
from functions.preprocess.skeleton import DET, NUM_JOINTS
from runtime.frames_store import Chunk, encode_chunk

STREAMS = ("driving", "pose", "face")
"""Frame streams an animate job produces: the driving video on the model grid, the rendered
skeleton on the model grid, and the face crops (face_size x face_size)."""


@dataclass
class AnimateStats:
    source_frames: int = 0
    """Output frames taken from the video (the rest, if any, repeat the last one)."""
    padded_frames: int = 0
    detected_frames: int = 0
    """Frames in which a person was found."""
    chunks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))


class AnimateRun:
    """One animate job's frame processing. ``step`` and ``close`` may be called from any thread;
    a lock serialises them (``close`` waits for a running ``step``, e.g. after a cancellation)."""

    def __init__(self, video: Source, *, width: int, height: int, fps: int, num_frames: int,
                 limits: MediaLimits, estimator: PoseEstimator, face_size: int,
                 chunk_frames: int = 32, analysis_min_side: int = 512, start: int = 0, end: int | None = None,
                 reset_every: int | None = None) -> None:
        """Output frames ``[start, end)`` (default ``[0, num_frames)``); ``start`` a multiple of ``chunk_frames``."""
        end = num_frames if end is None else end
        if start % chunk_frames or not 0 <= start < end <= num_frames:
            raise ValueError(f"part [{start}, {end}) of {num_frames} frames is not on {chunk_frames}-frame chunks")
        if reset_every is not None and reset_every % chunk_frames:
            raise ValueError(f"reset_every={reset_every} is not a multiple of {chunk_frames}")
        self.width, self.height, self.fps, self.num_frames = width, height, fps, num_frames
        self.start, self.end, self.reset_every = start, end, reset_every
        self.face_size = face_size
        self.chunk_frames = chunk_frames
        self.analysis_w, self.analysis_h = analysis_size(width, height, analysis_min_side)
        frames = iter_frames(video, fps=fps, width=width, height=height, limits=limits, max_frames=end,
                             analysis_min_side=analysis_min_side, start=start)
        self._estimator = estimator
        self._results: Iterator[tuple[SampledFrame, np.ndarray, np.ndarray]] = estimator.map_ordered_then(
            frames, lambda s: s.analysis, self._draw)
        self._sizes = {"driving": (width, height), "pose": (width, height), "face": (face_size, face_size)}
        self._filling: dict[str, list[np.ndarray]] = {name: [] for name in STREAMS}
        self._numbers = dict.fromkeys(STREAMS, start // chunk_frames)
        self._next = start  # the output frame index the next emitted frame has
        self._encoding: deque[Future[tuple[str, Chunk]]] = deque()
        self._max_encoding = 2 * estimator.workers
        self._cropper = FaceCropper(face_size)
        self._rows: list[np.ndarray] = []
        self._last: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None  # driving, pose, face
        self._last_source: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # analysis, kp, grid row
        self.stats = AnimateStats()
        self.done = False
        self._lock = threading.Lock()

    def _draw(self, sampled: SampledFrame, kp: np.ndarray) -> np.ndarray:
        """In a pool thread, right after the pose: the skeleton frame (pure per frame)."""
        del sampled
        return render_pose(to_pixels(kp, self.width, self.height), self.width, self.height)

    def step(self, max_frames: int) -> list[tuple[str, Chunk]]:
        """Process up to ``max_frames`` frames; returns ``(stream, chunk)`` for each chunk whose encoding
        finished (in order per stream). After the video (or ``num_frames``) is exhausted, pads, flushes,
        waits for the last encodes and sets ``done``."""
        out: list[tuple[str, Chunk]] = []
        with self._lock:
            for _ in range(max_frames):
                nxt = next(self._results, None)
                if nxt is None:
                    self._finish(out)
                    break
                self._add(*nxt)
            self._collect(out, wait=False)
        return out

    def close(self) -> None:
        """Stop early: cancel in-flight pose and encode work and close the video (idempotent)."""
        with self._lock:
            close = getattr(self._results, "close", None)
            if close is not None:
                close()
            for fut in self._encoding:
                fut.cancel()
            self._encoding.clear()

    def keypoints(self) -> np.ndarray:
        """(F, 33, 4) float32: x, y in grid pixels, visibility, detected (see ``skeleton``)."""
        if not self._rows:
            return np.zeros((0, NUM_JOINTS, 4), np.float32)
        return np.stack(self._rows).astype(np.float32, copy=False)

    def _encode(self, stream: str, frames: list[np.ndarray], number: int, start: int) -> tuple[str, Chunk]:
        w, h = self._sizes[stream]
        return stream, encode_chunk(frames, number, start, w, h, self.fps)

    def _seal(self, name: str) -> None:
        frames = self._filling[name]
        if not frames:
            return
        number = self._numbers[name]
        self._numbers[name] += 1
        self._filling[name] = []
        start = number * self.chunk_frames
        self._encoding.append(self._estimator.submit(self._encode, name, frames, number, start))

    def _collect(self, out: list[tuple[str, Chunk]], *, wait: bool) -> None:
        """Finished encodes from the head (keeps stream order); blocks while too many are in flight."""
        while self._encoding and (wait or self._encoding[0].done() or len(self._encoding) > self._max_encoding):
            out.append(self._encoding.popleft().result())

    def _emit(self, frames: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        for name, frame in zip(STREAMS, frames, strict=True):
            self._filling[name].append(frame)
            if len(self._filling[name]) >= self.chunk_frames:
                self._seal(name)

    def _restart_smoothing(self) -> bool:
        """At a part boundary (every ``reset_every`` frames): the face box starts afresh."""
        if self.reset_every and self._next % self.reset_every == 0 and self._next > 0:
            self._cropper = FaceCropper(self.face_size)
            return True
        return False

    def _add(self, sampled: SampledFrame, kp: np.ndarray, pose: np.ndarray) -> None:
        grid_kp = to_pixels(kp, self.width, self.height)
        analysis_kp = to_pixels(kp, self.analysis_w, self.analysis_h)
        self._last_source = (sampled.analysis, analysis_kp, grid_kp)
        if sampled.index < self.start:
            # the video ended before this part: its last frame is what the part repeats (see _finish)
            self._last = (sampled.frame, pose, None)
            return
        self._rows.append(grid_kp)
        self.stats.source_frames += 1
        if kp[:, DET].max() > 0:
            self.stats.detected_frames += 1
        self._restart_smoothing()
        face = self._cropper.crop(sampled.analysis, analysis_kp)
        self._last = (sampled.frame, pose, face)
        self._emit(self._last)
        self._next += 1

    def _finish(self, out: list[tuple[str, Chunk]]) -> None:
        if self.done:
            return
        while self._last is not None and self._next < self.end:  # video shorter than asked: repeat its last frame
            assert self._last_source is not None
            analysis, analysis_kp, row = self._last_source
            if self._restart_smoothing() or self._last[2] is None:
                # the repeated face is cropped as the first frame of a part would be
                self._last = (self._last[0], self._last[1], self._cropper.crop(analysis, analysis_kp))
            self._rows.append(row)
            self.stats.padded_frames += 1
            self._emit(self._last)  # type: ignore[arg-type]
            self._next += 1
        for name in STREAMS:
            self._seal(name)
        self._collect(out, wait=True)
        for name in STREAMS:
            self.stats.chunks[name] = self._numbers[name] - self.start // self.chunk_frames
        self.done = True
