"""preprocess media: sniffing, header-only limits, bad-media suite (each -> a precise code,
no crash, bounded memory), resampling and fitting to the model grid."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from functions.preprocess.errors import InputRejected, InputTooLarge, InputUnsupported
from functions.preprocess.geometry import analysis_size, center_crop_box, fit_to_grid
from functions.preprocess.limits import MediaLimits
from functions.preprocess.media import decode_image, iter_frames, probe_image, probe_video, resample
from functions.preprocess.sniff import MediaKind, image_header_size, sniff
from functions.preprocess.synthetic import encode_video
from schemas.errors import ErrorCode

LIMITS = MediaLimits()


def gradient(w: int = 64, h: int = 48, t: int = 0) -> np.ndarray:
    x = np.arange(w, dtype=np.uint16)[None, :]
    y = np.arange(h, dtype=np.uint16)[:, None]
    r = (x * 4 + t * 8) % 256
    g = (y * 5 + 0 * x) % 256
    b = ((x + y + t) * 3) % 256
    return np.stack(np.broadcast_arrays(r, g, b), -1).astype(np.uint8)


def clip(frames: int = 30, fps: float = 30, w: int = 64, h: int = 48, **kw: Any) -> bytes:
    return encode_video((gradient(w, h, i) for i in range(frames)), fps, **kw)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose IHDR claims width x height (a decompression bomb header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + png_chunk(b"IEND", b""))


def encoded(ext: str, img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def code_of(fn: Callable[[], object]) -> ErrorCode:
    with pytest.raises(InputRejected) as info:
        fn()
    assert str(info.value)  # a human message
    return info.value.code


def frames_of(data: bytes, limits: MediaLimits = LIMITS, **kw: Any) -> list[Any]:
    args = {"fps": 8, "width": 32, "height": 32, "limits": limits} | kw
    return list(iter_frames(data, **args))


@pytest.fixture(scope="module")
def small_mp4() -> bytes:
    return clip(30)


# ----------------------------------------------------------------------------- sniffing
@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, MediaKind.PNG),
        (b"\xff\xd8\xff\xe0" + b"\0" * 20, MediaKind.JPEG),
        (b"RIFF\0\0\0\0WEBPVP8 ", MediaKind.WEBP),
        (b"RIFF\0\0\0\0AVI LIST", MediaKind.AVI),
        (b"GIF89a" + b"\0" * 10, MediaKind.GIF),
        (b"\0\0\0\x20ftypisom\0\0\0\0", MediaKind.MP4),
        (b"\0\0\0\x14ftypqt  \0\0\0\0", MediaKind.MP4),
        (b"\0\0\0\x1cftypheic\0\0\0\0", MediaKind.HEIF),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", MediaKind.MATROSKA),
        (b"hello, this is a text file named clip.mp4\n", MediaKind.UNKNOWN),
        (b"", MediaKind.UNKNOWN),
    ],
)
def test_sniff_magic_bytes(data: bytes, kind: MediaKind) -> None:
    assert sniff(data) == kind


def test_sniff_real_files(small_mp4: bytes) -> None:
    img = gradient()
    assert sniff(encoded(".png", img)) == MediaKind.PNG
    assert sniff(encoded(".jpg", img)) == MediaKind.JPEG
    assert sniff(encoded(".webp", img)) == MediaKind.WEBP
    assert sniff(small_mp4) == MediaKind.MP4
    assert sniff(clip(5, codec="libvpx-vp9", container="webm", options={})) == MediaKind.MATROSKA


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp"])
def test_header_size_matches_real_images(ext: str) -> None:
    data = encoded(ext, gradient(123, 45))
    assert image_header_size(data, sniff(data)) == (123, 45)
    assert probe_image(data, LIMITS).width == 123


def test_lossless_webp_header() -> None:
    data = cv2.imencode(".webp", gradient(77, 31), [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()  # >100: lossless
    assert data[12:16] == b"VP8L"
    assert image_header_size(data, MediaKind.WEBP) == (77, 31)


# ----------------------------------------------------------------------------- images
def test_decode_image_rgb_and_fit() -> None:
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, :40] = (0, 0, 255)  # BGR red on the left
    rgb, info = decode_image(encoded(".png", img), LIMITS)
    assert info.kind == MediaKind.PNG and rgb.shape == (40, 80, 3)
    assert tuple(rgb[0, 0]) == (255, 0, 0)
    fitted = fit_to_grid(rgb, 32, 32)
    assert fitted.shape == (32, 32, 3)


def test_decompression_bomb_refused_from_header_without_allocating() -> None:
    bomb = png_claiming(20_000, 20_000)  # would decode to 1.2 GB of RGB
    assert len(bomb) < 200
    tracemalloc.start()
    try:
        assert code_of(lambda: decode_image(bomb, LIMITS)) == ErrorCode.INPUT_TOO_LARGE
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


def test_image_limits_per_dimension() -> None:
    assert code_of(lambda: probe_image(png_claiming(9000, 10), LIMITS)) == ErrorCode.INPUT_TOO_LARGE
    assert code_of(lambda: probe_image(png_claiming(0, 10), LIMITS)) == ErrorCode.INPUT_UNREADABLE


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", ErrorCode.INPUT_UNREADABLE),
        (b"just some text, not an image", ErrorCode.INPUT_UNSUPPORTED),
        (b"GIF89a\x10\x00\x10\x00" + b"\0" * 30, ErrorCode.INPUT_UNSUPPORTED),
        (b"\x89PNG\r\n\x1a\n\0\0", ErrorCode.INPUT_UNREADABLE),  # truncated header
        (png_claiming(100, 100), ErrorCode.INPUT_UNREADABLE),  # header fine, pixel data missing
    ],
)
def test_bad_images(data: bytes, code: ErrorCode) -> None:
    assert code_of(lambda: decode_image(data, LIMITS)) == code


def test_truncated_jpeg_header_and_video_given_as_image(small_mp4: bytes) -> None:
    jpg = encoded(".jpg", gradient(64, 48))
    assert code_of(lambda: decode_image(jpg[:20], LIMITS)) == ErrorCode.INPUT_UNREADABLE
    err = pytest.raises(InputUnsupported, decode_image, small_mp4, LIMITS)
    assert "expected an image" in str(err.value)


# ----------------------------------------------------------------------------- bad videos
def test_zero_byte_video() -> None:
    assert code_of(lambda: frames_of(b"")) == ErrorCode.INPUT_UNREADABLE


def test_text_file_named_mp4(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_text("this is not a video, whatever the name says\n" * 20)
    assert code_of(lambda: probe_video(path, LIMITS)) == ErrorCode.INPUT_UNSUPPORTED
    assert code_of(lambda: frames_of(path.read_bytes())) == ErrorCode.INPUT_UNSUPPORTED


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_mp4_moov_at_end(small_mp4: bytes, keep: float) -> None:
    assert code_of(lambda: frames_of(small_mp4[: int(len(small_mp4) * keep)])) == ErrorCode.INPUT_UNREADABLE


def faststart_mp4(tmp_path: Path, frames: int = 60) -> bytes:
    path = tmp_path / "fast.mp4"
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            vf = av.VideoFrame.from_ndarray(gradient(64, 48, i), format="rgb24")
            vf.pts = i
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path.read_bytes()


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_mp4_moov_first(tmp_path: Path, keep: float) -> None:
    data = faststart_mp4(tmp_path)
    assert data.find(b"moov") < data.find(b"mdat")  # metadata intact, media data cut
    assert code_of(lambda: frames_of(data[: int(len(data) * keep)], fps=30)) == ErrorCode.INPUT_UNREADABLE


def hour_long_mp4() -> bytes:
    """Two 16x16 frames, 3599 s apart: the container says 1 hour; encodes in milliseconds."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=1)
        s.width, s.height, s.pix_fmt = 16, 16, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1)
        for pts in (0, 3599):
            vf = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
            vf.pts, vf.time_base = pts, Fraction(1, 1)
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def test_one_hour_video_refused_from_metadata_with_bounded_memory() -> None:
    data = hour_long_mp4()
    assert len(data) < 10_000
    info = probe_video(data, MediaLimits(max_duration_s=10_000))
    assert info.duration_s is not None and info.duration_s >= 3599
    tracemalloc.start()
    try:
        assert code_of(lambda: frames_of(data)) == ErrorCode.INPUT_TOO_LARGE
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


def test_limits_enforced_while_decoding_when_metadata_is_silent() -> None:
    # Matroska declares no frame count: the metadata check passes, decoding still counts frames
    data = clip(30, container="matroska")
    limits = MediaLimits(max_frames=10)
    assert probe_video(data, limits).frames == 0
    err = pytest.raises(InputTooLarge, frames_of, data, limits, fps=30, max_frames=100)
    assert "more than 10 frames" in str(err.value)


def test_too_many_pixels_per_frame(small_mp4: bytes) -> None:
    assert code_of(lambda: frames_of(small_mp4, MediaLimits(max_video_pixels=1000))) == ErrorCode.INPUT_TOO_LARGE


@pytest.mark.parametrize(
    ("codec", "container", "pix_fmt"),
    [("mpeg4", "mp4", "yuv420p"), ("mjpeg", "avi", "yuvj420p"), ("mpeg2video", "matroska", "yuv420p")],
)
def test_unsupported_codec_or_container(codec: str, container: str, pix_fmt: str) -> None:
    data = clip(6, codec=codec, container=container, pix_fmt=pix_fmt, options={})
    err = pytest.raises(InputUnsupported, frames_of, data)
    assert codec in str(err.value) or container in str(err.value)
    assert err.value.code == ErrorCode.INPUT_UNSUPPORTED


def test_image_given_as_video() -> None:
    err = pytest.raises(InputUnsupported, frames_of, encoded(".png", gradient()))
    assert "expected a video" in str(err.value)


def test_no_library_exception_escapes_on_garbage() -> None:
    rng = np.random.default_rng(0)
    head = clip(3)[:64]
    for _ in range(5):
        junk = head + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
        with pytest.raises(InputRejected):
            frames_of(junk)


# ----------------------------------------------------------------------------- decoding
def test_iter_frames_resamples_and_fits(small_mp4: bytes) -> None:
    out = frames_of(small_mp4, fps=8, width=32, height=16, analysis_min_side=64)
    assert len(out) == 8  # 1 s at 8 fps
    assert [f.index for f in out] == list(range(8))
    assert out[1].time_s == pytest.approx(0.125)
    assert out[0].frame.shape == (16, 32, 3) and out[0].frame.dtype == np.uint8
    assert out[0].analysis.shape == (64, 128, 3)
    up = frames_of(small_mp4, fps=60, max_frames=1000)
    assert len(up) == 60
    capped = frames_of(small_mp4, fps=30, max_frames=7)
    assert len(capped) == 7


def test_iter_frames_streams_with_bounded_memory() -> None:
    data = clip(150, 30, 320, 240)
    tracemalloc.start()
    try:
        n = sum(1 for _ in iter_frames(data, fps=30, width=320, height=240, limits=LIMITS, analysis_min_side=16))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    frame_bytes = 320 * 240 * 3
    assert n == 150
    assert peak < 8 * frame_bytes, peak  # never the whole video (150 frames) in memory


def test_display_rotation_applied() -> None:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 32, "yuv420p"
        s.set_display_rotation(90)
        for i in range(3):
            vf = av.VideoFrame.from_ndarray(gradient(64, 32, i), format="rgb24")
            vf.pts = i
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    out = frames_of(buf.getvalue(), fps=10, width=32, height=64, analysis_min_side=1)
    # portrait after rotation: the full frame fits the 32x64 grid without cropping
    src = np.rot90(gradient(64, 32, 0), 1)
    assert np.abs(out[0].frame.astype(int) - src.astype(int)).mean() < 12


def test_resample_nearest_timestamp() -> None:
    src = [(i / 30, i) for i in range(30)]
    down = [item for _, _, item in resample(src, 10, 100, 1 / 30)]
    assert down == list(range(0, 30, 3))
    up = [item for _, _, item in resample([(i / 10, i) for i in range(10)], 30, 100, 0.1)]
    assert len(up) == 30 and up[:7] == [0, 0, 1, 1, 1, 2, 2]
    # a source that starts at 5 s and has a missing timestamp
    odd = [(5.0, "a"), (None, "b"), (5.2, "c")]
    assert [item for *_, item in resample(odd, 10, 100, 0.1)] == ["a", "b", "c"]


def test_geometry() -> None:
    box = center_crop_box(640, 480, 832, 480)
    assert (box.w, box.h) == (640, 369) and box.y == 55
    box = center_crop_box(640, 480, 64, 64)
    assert (box.x, box.w, box.h) == (80, 480, 480)
    assert analysis_size(64, 64, 512) == (512, 512)
    assert analysis_size(832, 480, 256) == (832, 480)
