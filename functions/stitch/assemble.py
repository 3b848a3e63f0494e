"""Encoded segments -> one MP4 of exactly T frames, re-encoding only the blended overlaps.

Layout (``O_i`` = overlap between segments ``i-1`` and ``i``; ``O_0 = O_N = 0``):

* ``"cut"``: segment ``i`` contributes frames ``[0, F_i - O_{i+1})``: a pure remux (every segment
  starts with an IDR frame), nothing is re-encoded;
* blends: segment ``i`` contributes ``[O_i, F_i - O_{i+1})`` by remux (the runner encodes it with
  :func:`segment_keyframes` so that frame ``O_i`` is an IDR frame) and each boundary contributes the
  ``O_i`` blended frames, encoded as their own short GOP.

The last segment is cut at ``T`` (the plan's padding). Plans where a frame lies in three windows
(``O_i + O_{i+1} > F_i``) are stitched in full with :func:`functions.stitch.blend.stitch_frames`
and re-encoded. A blend decodes only the frames it needs: a segment's head, and its tail from the nearest
keyframe before it (the runner forces one there, see :func:`segment_keyframes`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from functions.stitch.blend import BlendFn, Method, blend_function, stitch_frames
from functions.stitch.errors import StitchError
from functions.stitch.remux import Clip, ConcatReport, Piece, concat_pieces
from runtime.video import DEFAULT_CRF, Dest, Source, decode_mp4, decode_range, encode_mp4, probe_mp4, remux_keyframes


def segment_keyframes(index: int, overlaps: Sequence[int], frames: int | None = None) -> list[int]:
    """Frames the runner forces to IDR when encoding segment ``index`` of ``frames`` frames.

    ``overlaps[i]`` is the overlap between segments ``i`` and ``i+1`` (see :func:`runtime.video.remux_keyframes`).
    """
    before = overlaps[index - 1] if index > 0 else 0
    after = overlaps[index] if frames is not None and index < len(overlaps) else 0
    if frames is None:
        return [before] if before > 0 else []
    return remux_keyframes(frames, before, after)


def plan_pieces(frames: Sequence[int], overlaps: Sequence[int], total_frames: int,
                blend: bool) -> list[tuple[int, int, int]]:
    """Pure layout: ``(segment, start, stop)`` remux ranges; a blended boundary ``i`` is ``(-i, 0, O_i)``."""
    if len(overlaps) != len(frames) - 1:
        raise StitchError(f"{len(frames)} segments need {len(frames) - 1} overlaps, got {len(overlaps)}")
    covered = sum(frames) - sum(overlaps)
    if covered < total_frames:
        raise StitchError(f"segments cover {covered} frames, {total_frames} requested")
    ov = (0, *overlaps, 0)
    out: list[tuple[int, int, int]] = []
    emitted = 0
    for i, count in enumerate(frames):
        if blend and ov[i] and emitted < total_frames:
            k = min(ov[i], total_frames - emitted)
            out.append((-i, 0, k))
            emitted += k
        start = ov[i] if blend else 0
        stop = min(count - ov[i + 1], start + total_frames - emitted)
        if stop > start:
            out.append((i, start, stop))
            emitted += stop - start
    return out


def stitch_mp4(
    segments: Sequence[Source],
    overlaps: Sequence[int],
    total_frames: int,
    dest: Dest,
    *,
    fps: int,
    method: Method | BlendFn = "crossfade",
    crf: int = DEFAULT_CRF,
) -> ConcatReport:
    """Write exactly ``total_frames`` frames from encoded segments to ``dest`` (see module)."""
    counts = [probe_mp4(s).frames for s in segments]
    blend = method != "cut"
    ov = (0, *overlaps, 0)
    if any(ov[i] + ov[i + 1] > counts[i] for i in range(len(counts))):
        frames = stitch_frames([decode_mp4(s) for s in segments], overlaps, total_frames, method)
        n = encode_mp4(frames, fps, dest, crf=crf)
        return ConcatReport(frames=n, remuxed_frames=0, encoded_frames=n)
    layout = plan_pieces(counts, overlaps, total_frames, blend)
    blends = _blends(segments, overlaps, blend_function(method)) if blend else {}
    pieces: list[Piece] = []
    for seg, start, stop in layout:
        if seg < 0:
            pieces.append(blends[-seg][start:stop])
        else:
            pieces.append(Clip(segments[seg], start, stop - start))
    report = concat_pieces(pieces, dest, fps=fps, crf=crf)
    if report.frames != total_frames:
        raise StitchError(f"stitched {report.frames} frames, expected {total_frames}")
    return report


def _blends(segments: Sequence[Source], overlaps: Sequence[int], fn: BlendFn) -> dict[int, np.ndarray]:
    """Blended frames of each boundary ``i >= 1``; decodes each involved segment once."""
    out: dict[int, np.ndarray] = {}
    tail: np.ndarray | None = None
    for i in range(len(segments)):
        o_in = overlaps[i - 1] if i > 0 else 0
        o_out = overlaps[i] if i < len(overlaps) else 0
        if not (o_in or o_out):
            tail = None
            continue
        count = probe_mp4(segments[i]).frames
        if o_in:
            assert tail is not None
            out[i] = fn(tail, decode_range(segments[i], 0, o_in))
        tail = decode_range(segments[i], count - o_out, count) if o_out else None
    return out
