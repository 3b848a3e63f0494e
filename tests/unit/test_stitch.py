"""Stitcher: exact frame counts, blends, MP4 encode/decode/probe, remux without re-encoding."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from functions.planner import plan_segments
from functions.stitch import Stitcher, StitchError, crossfade, stitch_frames
from functions.stitch.assemble import plan_pieces, segment_keyframes, stitch_mp4
from functions.stitch.remux import Clip, concat_pieces, remux_concat
from runtime.video import decode_mp4, encode_mp4, iter_decode, probe_mp4
from schemas.registry import MODELS

H, W, FPS = 48, 64, 16


def scene(frames: int, start: int = 0, shift: float = 0.0) -> np.ndarray:
    """Smooth moving content (continuous in the global frame index), brightness shifted."""
    t = np.arange(start, start + frames, dtype=np.float32)[:, None, None]
    y = np.arange(H, dtype=np.float32)[None, :, None]
    x = np.arange(W, dtype=np.float32)[None, None, :]
    r = 128 + 90 * np.sin((x + 2 * t) / 9.0) + 0 * y
    g = 128 + 70 * np.cos((y - t) / 7.0) + 0 * x
    b = 60 + 50 * np.sin((x + y + 3 * t) / 13.0)
    return (np.stack(np.broadcast_arrays(r, g, b), -1) + shift).clip(0, 255).astype(np.uint8)


def segments_of(video: np.ndarray, plan_windows: list[tuple[int, int]]) -> list[np.ndarray]:
    return [video[s : s + n] for s, n in plan_windows]


# ----------------------------------------------------------------------------- pure frame stitching
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 400), st.integers(1, 9), st.sampled_from(["cut", "crossfade"]))
def test_stitch_recovers_a_consistent_video_exactly(total: int, o_min: int, method: str) -> None:
    spec = MODELS["tiny-wan"]
    plan = plan_segments(total, spec, 64, 64, min_overlap=o_min, max_window=41, min_window=1)
    rng = np.random.default_rng(total)
    video = rng.integers(0, 256, (total + plan.padding_frames, 2, 3, 3), dtype=np.uint8)
    segs = segments_of(video, [(w.start_frame, w.frames) for w in plan.windows])
    out = stitch_frames(segs, plan.overlaps, total, method)  # type: ignore[arg-type]
    assert out.shape[0] == total
    np.testing.assert_array_equal(out, video[:total])


def test_streaming_holds_only_the_next_overlap() -> None:
    overlaps = [5, 6, 5]
    stitcher = Stitcher(4 * 41 - 16, overlaps, "crossfade")
    emitted = [len(stitcher.push(scene(41, 0))) for _ in range(4)]
    assert emitted == [36, 35, 36, 41] and len(stitcher.finish()) == 0


def test_triple_overlap_and_padding() -> None:
    video = scene(30)
    # windows of 13 starting at 0, 5, 10, 15: overlaps of 8 (> half a window) ; T = 26 < 28 trims 2
    segs = [video[s : s + 13] for s in (0, 5, 10, 15)]
    out = stitch_frames(segs, [8, 8, 8], 26, "crossfade")
    np.testing.assert_array_equal(out, video[:26])


def test_crossfade_smooths_the_seam() -> None:
    total, overlap = 81, 9
    a = scene(45, 0, shift=-12.0)
    b = scene(45, 36, shift=+12.0)
    steps = {}
    for method in ("cut", "crossfade"):
        out = stitch_frames([a, b], [overlap], total, method).astype(np.float32)  # type: ignore[arg-type]
        diffs = np.abs(np.diff(out, axis=0)).mean(axis=(1, 2, 3))
        steps[method] = diffs[30:50].max()
    assert steps["crossfade"] < 0.5 * steps["cut"]
    blended = crossfade(a[-overlap:], b[:overlap]).astype(np.float32)
    assert np.all(np.diff(blended.mean(axis=(1, 2, 3))) > -1.0)  # brightness ramps up, no jump back


def test_stitch_errors() -> None:
    seg = scene(21)
    with pytest.raises(StitchError, match="cover 37 frames"):
        stitch_frames([seg, seg], [5], 40)
    with pytest.raises(StitchError, match="the plan has 2"):
        stitch_frames([seg], [5], 20)
    with pytest.raises(StitchError, match="unknown blend"):
        stitch_frames([seg, seg], [5], 37, "wipe")  # type: ignore[arg-type]


def test_latent_blend_with_a_tiny_wan_vae() -> None:
    torch = pytest.importorskip("torch")
    from diffusers import AutoencoderKLWan

    from functions.stitch.latent import latent_blend, latent_weights

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()
    a, b = scene(6, 0, -10.0)[:, :32, :32], scene(6, 3, 10.0)[:, :32, :32]
    for overlap in (5, 6):  # 4j+1 and a padded length
        out = latent_blend(a[:overlap], b[:overlap], vae)
        assert out.shape == (overlap, 32, 32, 3) and out.dtype == np.uint8
    w = latent_weights(9)
    assert len(w) == 3 and np.all(np.diff(w) > 0) and w[0] > 0 and w[-1] < 1
    same = latent_blend(a[:5], a[:5], vae)  # blending a clip with itself = the VAE round trip
    with torch.no_grad():
        x = torch.from_numpy(a[:5]).float().permute(3, 0, 1, 2)[None] / 127.5 - 1
        rt = vae.decode(vae.encode(x).latent_dist.mode()).sample[0].clamp(-1, 1)
    ref = ((rt + 1) * 127.5).round().permute(1, 2, 3, 0).to(torch.uint8).numpy()
    assert np.abs(same.astype(int) - ref.astype(int)).max() <= 1
    out = stitch_frames([a, b], [5], 7, lambda p, n: latent_blend(p, n, vae))
    assert out.shape == (7, 32, 32, 3)


# ----------------------------------------------------------------------------- MP4 I/O
def test_encode_decode_probe_roundtrip(tmp_path: Path) -> None:
    frames = scene(21)
    path = tmp_path / "a.mp4"
    assert encode_mp4(frames, FPS, path, crf=12) == 21
    info = probe_mp4(path)
    assert (info.frames, info.width, info.height, info.fps) == (21, W, H, FPS)
    assert info.duration_s == pytest.approx(21 / FPS)
    back = decode_mp4(path)
    assert back.shape == frames.shape and np.abs(back.astype(int) - frames).mean() < 5.0
    buf = io.BytesIO()
    encode_mp4(iter(frames), FPS, buf)
    assert decode_mp4(buf.getvalue()).shape == frames.shape and probe_mp4(buf).frames == 21
    with pytest.raises(ValueError, match="even"):
        encode_mp4(scene(3)[:, :47], FPS, io.BytesIO())


def test_keyframes_at(tmp_path: Path) -> None:
    path = tmp_path / "k.mp4"
    encode_mp4(scene(30), FPS, path, keyframes_at=[7, 20])
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        key = [i for i, p in enumerate(q for q in c.demux(stream) if q.size) if p.is_keyframe]
    assert key == [0, 7, 20]


def _segments(tmp_path: Path, total: int, shift: float = 8.0) -> tuple[list[Path], list[int], int]:
    plan = plan_segments(total, MODELS["tiny-wan"], 64, 64, max_window=41, min_window=1)
    paths = []
    for w in plan.windows:
        p = tmp_path / f"seg{w.index}.mp4"
        frames = scene(w.frames, w.start_frame, shift * (-1) ** w.index)
        encode_mp4(frames, FPS, p, keyframes_at=segment_keyframes(w.index, plan.overlaps, w.frames))
        paths.append(p)
    return paths, list(plan.overlaps), total


def test_remux_concat_is_bit_exact(tmp_path: Path) -> None:
    paths, overlaps, total = _segments(tmp_path, 161)
    counts = [probe_mp4(p).frames for p in paths]
    trims = [(0 if i == 0 else overlaps[i - 1], c - (0 if i == 0 else overlaps[i - 1])) for i, c in enumerate(counts)]
    out = tmp_path / "out.mp4"
    report = remux_concat(paths, trims, out)
    assert report.frames == report.remuxed_frames == total and report.encoded_frames == 0
    got = decode_mp4(out)
    ref = np.concatenate([decode_mp4(p)[s : s + k] for p, (s, k) in zip(paths, trims, strict=True)])
    assert got.shape[0] == total == probe_mp4(out).frames
    np.testing.assert_array_equal(got, ref)


def test_remux_falls_back_to_reencode_off_keyframe(tmp_path: Path) -> None:
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    encode_mp4(scene(20), FPS, a)
    encode_mp4(scene(20, 20), FPS, b)  # no keyframe at 3
    out = io.BytesIO()
    report = remux_concat([a, b], [(0, 20), (3, 10)], out)
    assert (report.frames, report.remuxed_frames, report.encoded_frames) == (30, 20, 10)
    got = decode_mp4(out.getvalue())
    np.testing.assert_array_equal(got[:20], decode_mp4(a))
    assert np.abs(got[20:].astype(int) - decode_mp4(b)[3:13]).mean() < 5.0
    with pytest.raises(StitchError, match="outside"):
        remux_concat([a], [(15, 10)], io.BytesIO())


def test_concat_raw_pieces_only(tmp_path: Path) -> None:
    report = concat_pieces([scene(5), scene(4)], tmp_path / "r.mp4", fps=FPS)
    assert report.frames == report.encoded_frames == 9 and probe_mp4(tmp_path / "r.mp4").frames == 9


@pytest.mark.parametrize("method", ["cut", "crossfade"])
def test_stitch_mp4_exact_count_and_bit_exact_outside_blends(tmp_path: Path, method: str) -> None:
    paths, overlaps, total = _segments(tmp_path, 150)
    out = tmp_path / f"{method}.mp4"
    report = stitch_mp4(paths, overlaps, total, out, fps=FPS, method=method)  # type: ignore[arg-type]
    assert report.frames == total == probe_mp4(out).frames
    decoded = [decode_mp4(p) for p in paths]
    ref = stitch_frames(decoded, overlaps, total, method)  # type: ignore[arg-type]
    got = decode_mp4(out)
    blended = np.zeros(total, dtype=bool)
    if method == "cut":
        assert report.encoded_frames == 0
    else:
        assert report.encoded_frames == sum(overlaps)
        start = 0
        for i, o in enumerate(overlaps):
            start += decoded[i].shape[0] - o
            blended[start : start + o] = True
        assert np.abs(got[blended].astype(int) - ref[blended]).mean() < 5.0
    np.testing.assert_array_equal(got[~blended], ref[~blended])


def test_stitch_mp4_single_padded_and_triple_overlap(tmp_path: Path) -> None:
    one = tmp_path / "one.mp4"
    encode_mp4(scene(13), FPS, one)
    assert stitch_mp4([one], [], 11, tmp_path / "o.mp4", fps=FPS).frames == 11
    assert probe_mp4(tmp_path / "o.mp4").frames == 11
    segs = []
    for k, s in enumerate((0, 5, 10)):
        p = tmp_path / f"t{k}.mp4"
        encode_mp4(scene(13, s), FPS, p)
        segs.append(p)
    report = stitch_mp4(segs, [8, 8], 23, tmp_path / "t.mp4", fps=FPS)  # frames 5..7 lie in 3 windows
    assert report.frames == 23 == len(list(iter_decode(tmp_path / "t.mp4")))


def test_plan_pieces_layout() -> None:
    assert plan_pieces([41, 41, 41], [5, 6], 112, blend=True) == [
        (0, 0, 36), (-1, 0, 5), (1, 5, 35), (-2, 0, 6), (2, 6, 41)]
    assert plan_pieces([41, 41, 41], [5, 6], 110, blend=True)[-1] == (2, 6, 39)  # padding trimmed
    assert plan_pieces([41, 41], [5], 77, blend=False) == [(0, 0, 36), (1, 0, 41)]
    assert plan_pieces([13], [], 11, blend=True) == [(0, 0, 11)]
    with pytest.raises(StitchError):
        plan_pieces([13, 13], [5], 30, blend=True)
    _ = Clip(b"")
