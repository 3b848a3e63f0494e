"""HLS pieces and playlist: which frames are final when, and that the stream shows output.mp4's frames."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from functions.planner import plan_segments
from functions.stitch.assemble import segment_keyframes, stitch_mp4
from functions.stitch.hls import (
    ENDLIST,
    StreamPiece,
    build_piece,
    close_text,
    is_closed,
    piece_frames_available,
    playlist_text,
    stream_pieces,
)
from runtime.video import decode_mp4, encode_mp4
from schemas.registry import MODELS
from tests.unit.test_stitch import FPS, scene


def _windows(total: int, max_window: int = 41) -> list[tuple[int, int, int]]:
    plan = plan_segments(total, MODELS["tiny-wan"], 64, 48, max_window=max_window, min_window=1)
    return [(w.start_frame, w.frames, w.overlap_frames) for w in plan.windows]


def test_piece_boundaries_follow_the_finality_rule() -> None:
    # three windows of 17 sharing 5 frames: 17 + 12 + 12 = 41 frames
    windows = [(0, 17, 0), (12, 17, 5), (24, 17, 5)]
    pieces = stream_pieces(windows, 41)
    # piece k = [s_k, s_{k+1}): segment 0's frames 12..16 wait for the cross-fade with segment 1
    assert pieces == [StreamPiece(0, 0, 12), StreamPiece(1, 12, 24), StreamPiece(2, 24, 41)]
    assert [piece_frames_available(pieces, d) for d in range(4)] == [0, 12, 24, 41]
    # the last piece stops at T (a padded single window drops its padding)
    assert stream_pieces([(0, 21, 0)], 19) == [StreamPiece(0, 0, 19)]
    # a frame in three windows (O_1 + O_2 > F_1) is final after neither neighbour: not streamed
    assert stream_pieces([(0, 9, 0), (4, 9, 5), (8, 9, 5)], 17) is None


@pytest.mark.parametrize("total", [150, 161])
def test_pieces_cover_every_frame_once(total: int) -> None:
    pieces = stream_pieces(_windows(total), total)
    assert pieces is not None and len(pieces) >= 3
    assert pieces[0].start == 0 and pieces[-1].stop == total
    assert all(a.stop == b.start for a, b in zip(pieces, pieces[1:], strict=False))


def _decode_ts(chunks: list[bytes]) -> np.ndarray:
    with av.open(io.BytesIO(b"".join(chunks)), "r", format="mpegts") as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _ts_pts(data: bytes) -> list[int]:
    with av.open(io.BytesIO(data), "r", format="mpegts") as c:
        return [p.pts for p in c.demux(video=0) if p.size]


def test_pieces_decode_to_exactly_output_mp4s_frames(tmp_path: Path) -> None:
    total = 150
    plan = plan_segments(total, MODELS["tiny-wan"], 64, 48, max_window=41, min_window=1)
    paths = []
    for w in plan.windows:
        p = tmp_path / f"seg{w.index}.mp4"
        encode_mp4(scene(w.frames, w.start_frame, 8.0 * (-1) ** w.index), FPS, p,
                   keyframes_at=segment_keyframes(w.index, plan.overlaps, w.frames))
        paths.append(p)
    out = tmp_path / "output.mp4"
    stitch_mp4(paths, list(plan.overlaps), total, out, fps=FPS, method="crossfade")
    windows = [(w.start_frame, w.frames, w.overlap_frames) for w in plan.windows]
    pieces = stream_pieces(windows, total)
    assert pieces is not None
    ts = [build_piece(paths[p.index], paths[p.index - 1] if p.index else None, p, windows[p.index][2], fps=FPS)
          for p in pieces]
    # timestamps continue across pieces (a player sees one timeline)
    step = 90000 // FPS
    for p, data in zip(pieces, ts, strict=True):
        pts = _ts_pts(data)
        assert len(pts) == p.frames
        assert [b - a for a, b in zip(pts, pts[1:], strict=False)] == [step] * (p.frames - 1)
        assert pts[0] - _ts_pts(ts[0])[0] == p.start * step
    # the same encoded frames: exact, not just within codec tolerance
    np.testing.assert_array_equal(_decode_ts(ts), decode_mp4(out))
    # a prefix of the pieces is a prefix of the output
    np.testing.assert_array_equal(_decode_ts(ts[:2]), decode_mp4(out)[: pieces[1].stop])


def test_playlist_event_and_closing() -> None:
    text = playlist_text([("https://s3/a.ts?sig=1", 0.75), ("https://s3/b.ts?sig=2", 0.75)],
                         target_duration_s=1.1, ended=False)
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U" and "#EXT-X-PLAYLIST-TYPE:EVENT" in lines
    assert "#EXT-X-TARGETDURATION:2" in lines and lines.count("#EXTINF:0.750000,") == 2
    assert not is_closed(text) and ENDLIST not in text
    closed = close_text(text)
    assert is_closed(closed) and closed.splitlines()[-1] == ENDLIST and closed.startswith(text.rstrip("\n"))
    assert close_text(closed) == closed
    assert is_closed(playlist_text([("u", 1.0)], target_duration_s=1, ended=True))


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not installed")
def test_ffprobe_reads_a_local_playlist(tmp_path: Path) -> None:
    total = 60
    plan = plan_segments(total, MODELS["tiny-wan"], 64, 48, max_window=25, min_window=1)
    windows = [(w.start_frame, w.frames, w.overlap_frames) for w in plan.windows]
    pieces = stream_pieces(windows, total)
    assert pieces is not None and len(pieces) >= 3
    entries = []
    for w in plan.windows:
        p = tmp_path / f"seg{w.index}.mp4"
        encode_mp4(scene(w.frames, w.start_frame), FPS, p,
                   keyframes_at=segment_keyframes(w.index, plan.overlaps, w.frames))
    for piece in pieces:
        data = build_piece(tmp_path / f"seg{piece.index}.mp4",
                           tmp_path / f"seg{piece.index - 1}.mp4" if piece.index else None, piece,
                           windows[piece.index][2], fps=FPS)
        (tmp_path / f"{piece.index}.ts").write_bytes(data)
        entries.append((f"{piece.index}.ts", piece.frames / FPS))
    (tmp_path / "p.m3u8").write_text(playlist_text(entries[:2], target_duration_s=1, ended=True))
    got = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_frames", "-of", "csv=p=0", str(tmp_path / "p.m3u8")],
                         capture_output=True, text=True, timeout=60, check=True)
    counts = {int(line) for line in got.stdout.split() if line.strip()}  # per program and per stream
    assert counts == {pieces[1].stop}
