"""Concatenate encoded clips and raw frames into one MP4, re-encoding as little as possible.

A :class:`Clip` (frames ``[skip, skip+keep)`` of an encoded MP4) is copied packet by packet when
its first kept frame is a keyframe, its stream has no frame reordering and its codec headers
(``extradata``: SPS/PPS) equal the output's. Otherwise it is decoded and re-encoded as its own
GOP. Raw frame pieces (e.g. a blended overlap) are always encoded as their own GOP with the same
settings (:data:`runtime.video.X264_PARAMS`), then spliced in. If a re-encoded piece
comes out with different headers (segments made by another encoder), the whole output is
re-encoded instead. Frames are numbered anew: ``pts = dts = index * frame_duration``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from functions.stitch.errors import StitchError
from runtime.video import DEFAULT_CRF, DEFAULT_PRESET, Dest, Source, encode_mp4, iter_decode, open_source


@dataclass(frozen=True)
class Clip:
    """Frames ``[skip, skip + keep)`` of an encoded MP4 (``keep=None``: to its end)."""

    source: Source = field(repr=False)
    skip: int = 0
    keep: int | None = None


Piece = Clip | np.ndarray
"""A remuxable clip, or raw RGB uint8 frames ``(F, H, W, 3)`` to encode."""


@dataclass(frozen=True)
class ConcatReport:
    """Frames written, and how many were copied (remuxed) vs encoded."""

    frames: int
    remuxed_frames: int
    encoded_frames: int


@dataclass
class _Packets:
    packets: list[av.Packet]
    extradata: bytes
    size: tuple[int, int]
    time_base: Fraction
    template: av.video.stream.VideoStream
    container: av.container.InputContainer


def _read(src: Source) -> _Packets:
    container = open_source(src)
    stream = container.streams.video[0]
    packets = [p for p in container.demux(stream) if p.size > 0]
    ctx = stream.codec_context
    assert stream.time_base is not None  # a demuxed stream always has one (the stubs allow None)
    return _Packets(packets, bytes(ctx.extradata or b""), (ctx.width, ctx.height), stream.time_base, stream, container)


def _range(clip: Clip, available: int) -> tuple[int, int]:
    keep = available - clip.skip if clip.keep is None else clip.keep
    if clip.skip < 0 or keep < 1 or clip.skip + keep > available:
        raise StitchError(f"clip range [{clip.skip}, {clip.skip + keep}) outside its {available} frames")
    return clip.skip, keep


def _remuxable(pk: _Packets, skip: int, ref: _Packets) -> bool:
    in_order = all(p.pts == p.dts for p in pk.packets)
    return in_order and pk.packets[skip].is_keyframe and pk.extradata == ref.extradata and pk.size == ref.size


def _clip_frames(clip: Clip) -> np.ndarray:
    frames = list(iter_decode(clip.source))
    skip, keep = _range(clip, len(frames))
    return np.stack(frames[skip : skip + keep])


class _Incompatible(Exception):
    """A re-encoded piece's headers differ from the output's: re-encode everything."""


def concat_pieces(
    pieces: Sequence[Piece], dest: Dest, *, fps: int, crf: int = DEFAULT_CRF, preset: str = DEFAULT_PRESET
) -> ConcatReport:
    """Write ``pieces`` in order as one MP4 at ``fps``; remux clips where possible (see module)."""
    if not pieces:
        raise StitchError("nothing to concatenate")
    clips = [p for p in pieces if isinstance(p, Clip)]
    if clips:
        try:
            return _remux(pieces, dest, fps=fps, crf=crf, preset=preset)
        except _Incompatible:
            if not isinstance(dest, (str, Path)) and hasattr(dest, "seek"):
                dest.seek(0)
                dest.truncate()
    n = encode_mp4(_all_frames(pieces), fps, dest, crf=crf, preset=preset)
    return ConcatReport(frames=n, remuxed_frames=0, encoded_frames=n)


def _all_frames(pieces: Sequence[Piece]) -> Iterator[np.ndarray]:
    for piece in pieces:
        yield from (piece if isinstance(piece, np.ndarray) else _clip_frames(piece))


def _remux(pieces: Sequence[Piece], dest: Dest, *, fps: int, crf: int, preset: str) -> ConcatReport:
    first_clip = next(p for p in pieces if isinstance(p, Clip))
    first = _read(first_clip.source)
    first_unused = True
    out = av.open(str(dest) if isinstance(dest, Path) else dest, "w", format="mp4")
    opened = [first.container]
    index = remuxed = encoded = 0
    try:
        ostream = out.add_stream_from_template(first.template)
        ostream.time_base = first.time_base
        step = int(round(1 / (fps * first.time_base)))
        for piece in pieces:
            if isinstance(piece, Clip):
                if piece is first_clip and first_unused:
                    pk, first_unused = first, False
                else:
                    pk = _read(piece.source)
                    opened.append(pk.container)
                skip, keep = _range(piece, len(pk.packets))
                if _remuxable(pk, skip, first):
                    packets = pk.packets[skip : skip + keep]
                    remuxed += keep
                else:
                    packets, keep = _encode_packets(_clip_frames(piece), fps, crf, preset, first, opened)
                    encoded += keep
            else:
                packets, keep = _encode_packets(piece, fps, crf, preset, first, opened)
                encoded += keep
            for packet in packets:
                packet.stream = ostream
                packet.time_base = first.time_base
                packet.pts = packet.dts = index * step
                packet.duration = step
                out.mux(packet)
                index += 1
    finally:
        out.close()
        for container in opened:
            container.close()
    return ConcatReport(frames=index, remuxed_frames=remuxed, encoded_frames=encoded)


def _encode_packets(
    frames: np.ndarray, fps: int, crf: int, preset: str, ref: _Packets, opened: list[av.container.InputContainer]
) -> tuple[list[av.Packet], int]:
    buf = io.BytesIO()
    n = encode_mp4(frames, fps, buf, crf=crf, preset=preset)
    pk = _read(buf)
    opened.append(pk.container)
    if pk.extradata != ref.extradata or pk.size != ref.size or len(pk.packets) != n:
        raise _Incompatible
    return pk.packets, n


def remux_concat(
    segment_files: Sequence[Source],
    trims: Sequence[tuple[int, int]],
    out_path: Dest,
    *,
    fps: int | None = None,
    crf: int = DEFAULT_CRF,
) -> ConcatReport:
    """Concatenate ``trims[i] = (skip_start_frames, keep_frames)`` of each segment.

    Packets are copied when ``skip_start_frames`` lands on a keyframe (encode the segment with
    ``keyframes_at=[skip]``); other segments are re-encoded from that frame as their own GOP.
    """
    if len(segment_files) != len(trims):
        raise StitchError(f"{len(segment_files)} segments but {len(trims)} trims")
    if fps is None:
        container = open_source(segment_files[0])
        try:
            rate = container.streams.video[0].average_rate
            assert rate is not None, f"{segment_files[0]!r}: no average frame rate; pass fps"
            fps = int(round(float(rate)))
        finally:
            container.close()
    pieces = [Clip(src, skip, keep) for src, (skip, keep) in zip(segment_files, trims, strict=True)]
    return concat_pieces(pieces, out_path, fps=fps, crf=crf)
