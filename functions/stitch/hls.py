"""Watch while it renders: the job's final frames as HLS media segments and an EVENT playlist.

**Which frames are final when.** Window ``k`` covers output frames ``[s_k, s_k + F_k)`` and shares its
first ``O_k`` frames with window ``k-1`` (``s_0 = 0``, ``O_0 = 0``). Output frame ``f`` is final once no
window still to be rendered covers it *and* every window that covers it is rendered (a cross-faded
frame needs both sides). So when segment ``k`` is done (and ``0..k-1`` before it):

* frames ``[s_k, s_k + O_k)`` -- the cross-fade of ``k-1``'s tail with ``k``'s head -- became final now;
* frames ``[s_k + O_k, s_{k+1})`` are ``k``'s alone and final;
* frames ``[s_{k+1}, s_k + F_k)`` are *not* final: window ``k+1`` will cross-fade them.

Hence **piece k = output frames [s_k, s_{k+1})** (``s_N = T``: the last piece ends at the requested
frames, the plan's padding dropped) and after segment ``k`` the playable prefix is ``[0, s_{k+1})``.
A piece is a pure function of segments ``k-1`` and ``k``, so a redelivered chain step rewrites the
same bytes. Plans where a frame lies in three windows (``O_k + O_{k+1} > F_k``) are not streamed
(:func:`stream_pieces` returns ``None``): such a frame is not final after either neighbour.

**Same frames as output.mp4.** A piece is built by the very code the stitcher uses
(:func:`functions.stitch.remux.concat_pieces` on the layout of
:func:`functions.stitch.assemble.plan_pieces`): the blended overlap is encoded as its own GOP with the
same x264 settings (deterministic) and the rest is a packet copy of the segment. The resulting
H.264 packets are then copied into MPEG-TS with timestamps continuing from the previous piece
(``pts = output frame index``), so the concatenation of the pieces decodes to exactly
``output.mp4``'s frames.

**Playlist.** ``#EXT-X-PLAYLIST-TYPE:EVENT`` (segments are only ever appended), one ``#EXTINF`` per
piece, each URI a presigned absolute URL (a client needs nothing but the playlist's URL), and
``#EXT-X-ENDLIST`` once the last piece is listed -- or when the job fails, closing the stream at
its real end (:func:`close_playlist`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import av

from functions.stitch.blend import BlendFn, Method, blend_function
from functions.stitch.errors import StitchError
from functions.stitch.remux import Clip, Piece, concat_pieces
from runtime.hls import ENDLIST, PLAYLIST_TYPE, close_text, is_closed, playlist_text
from runtime.video import DEFAULT_CRF, Source, decode_range, probe_mp4

__all__ = ["ENDLIST", "PIECE_TYPE", "PLAYLIST_TYPE", "StreamPiece", "build_piece", "close_text", "is_closed",
           "mp4_to_ts", "piece_frames_available", "playlist_text", "stream_pieces"]

PIECE_TYPE = "video/mp2t"


@dataclass(frozen=True)
class StreamPiece:
    """Output frames ``[start, stop)``, final once segment ``index`` is rendered."""

    index: int
    start: int
    stop: int

    @property
    def frames(self) -> int:
        return self.stop - self.start


def stream_pieces(windows: Sequence[tuple[int, int, int]], total_frames: int) -> list[StreamPiece] | None:
    """Pieces of a plan's ``(start_frame, frames, overlap_frames)`` windows (see module); ``None`` when a
    frame lies in three windows (not streamable)."""
    n = len(windows)
    out: list[StreamPiece] = []
    for k, (start, frames, overlap) in enumerate(windows):
        start = 0 if k == 0 else start
        stop = windows[k + 1][0] if k + 1 < n else total_frames
        if stop < start + overlap or stop > start + frames or stop <= start:
            return None
        out.append(StreamPiece(k, start, stop))
    return out


def piece_frames_available(pieces: Sequence[StreamPiece], done: int) -> int:
    """Output frames playable once segments ``0..done-1`` are rendered."""
    return pieces[done - 1].stop if done > 0 else 0


def build_piece(segment: Source, prev: Source | None, piece: StreamPiece, overlap: int, *, fps: int,
                method: Method | BlendFn = "crossfade", crf: int = DEFAULT_CRF) -> bytes:
    """MPEG-TS bytes of ``piece`` from segment ``piece.index`` (``overlap`` = ``O_k``) and, when it
    overlaps, the previous segment; timestamps are output frame indices."""
    blend = method != "cut"
    local_stop = piece.stop - piece.start  # segment k's frame 0 is output frame s_k
    pieces: list[Piece] = []
    if overlap and blend:
        if prev is None:
            raise StitchError(f"piece {piece.index} needs the previous segment to blend {overlap} frames")
        count = probe_mp4(prev).frames
        mixed = blend_function(method)(decode_range(prev, count - overlap, count), decode_range(segment, 0, overlap))
        pieces.append(mixed)
        if local_stop > overlap:
            pieces.append(Clip(segment, overlap, local_stop - overlap))
    else:
        # "cut" (or no overlap): this segment's frames from its start, the same layout as plan_pieces
        pieces.append(Clip(segment, 0, local_stop))
    mp4 = io.BytesIO()
    report = concat_pieces(pieces, mp4, fps=fps, crf=crf)
    if report.frames != piece.frames:
        raise StitchError(f"piece {piece.index}: built {report.frames} frames, expected {piece.frames}")
    return mp4_to_ts(mp4.getvalue(), first_frame=piece.start, fps=fps)


def mp4_to_ts(mp4: bytes, *, first_frame: int, fps: int) -> bytes:
    """Copy an MP4's H.264 packets into MPEG-TS (no re-encode), ``pts = dts = first_frame + i`` frames."""
    src = av.open(io.BytesIO(mp4), "r")
    buf = io.BytesIO()
    out = av.open(buf, "w", format="mpegts")
    try:
        istream = src.streams.video[0]
        ostream = out.add_stream_from_template(istream)
        tb = Fraction(1, fps)
        for i, packet in enumerate(p for p in src.demux(istream) if p.size > 0):
            packet.stream = ostream
            packet.time_base = tb
            packet.pts = packet.dts = first_frame + i
            packet.duration = 1
            out.mux(packet)
    finally:
        out.close()
        src.close()
    return buf.getvalue()
