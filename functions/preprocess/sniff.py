"""Content sniffing from magic bytes, and image dimensions read from the header only.

Never trusts a file name or a Content-Type header. ``image_header_size`` parses just enough of
PNG / JPEG / WebP / GIF to learn width and height, so a decompression bomb (a small file whose
header claims 20000x20000) is refused before any pixel buffer is allocated.
"""

from __future__ import annotations

import struct
from enum import StrEnum


class MediaKind(StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"
    GIF = "gif"
    BMP = "bmp"
    TIFF = "tiff"
    HEIF = "heif"
    MP4 = "mp4"  # ISO BMFF / QuickTime: .mp4 .mov .m4v
    MATROSKA = "matroska"  # EBML: .mkv .webm
    AVI = "avi"
    MPEG_TS = "mpegts"
    FLV = "flv"
    OGG = "ogg"
    UNKNOWN = "unknown"

    @property
    def is_image(self) -> bool:
        return self in _IMAGES

    @property
    def is_video(self) -> bool:
        return self in _VIDEOS

    @property
    def extension(self) -> str:
        """File extension used when the original is stored under ``inputs/``."""
        return _EXT.get(self, "bin")

    @property
    def mime(self) -> str:
        return _MIME.get(self, "application/octet-stream")


_IMAGES = frozenset({MediaKind.PNG, MediaKind.JPEG, MediaKind.WEBP, MediaKind.GIF, MediaKind.BMP,
                     MediaKind.TIFF, MediaKind.HEIF})
_VIDEOS = frozenset({MediaKind.MP4, MediaKind.MATROSKA, MediaKind.AVI, MediaKind.MPEG_TS, MediaKind.FLV,
                     MediaKind.OGG})
_EXT = {MediaKind.PNG: "png", MediaKind.JPEG: "jpg", MediaKind.WEBP: "webp", MediaKind.GIF: "gif",
        MediaKind.BMP: "bmp", MediaKind.TIFF: "tiff", MediaKind.HEIF: "heif", MediaKind.MP4: "mp4",
        MediaKind.MATROSKA: "mkv", MediaKind.AVI: "avi", MediaKind.MPEG_TS: "ts", MediaKind.FLV: "flv",
        MediaKind.OGG: "ogg"}
_MIME = {MediaKind.PNG: "image/png", MediaKind.JPEG: "image/jpeg", MediaKind.WEBP: "image/webp",
         MediaKind.GIF: "image/gif", MediaKind.MP4: "video/mp4", MediaKind.MATROSKA: "video/x-matroska"}

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1",
                          b"msf1", b"avif", b"avis"})
_QT_ATOMS = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})

SNIFF_BYTES = 64
"""How many leading bytes ``sniff`` looks at."""


def sniff(data: bytes) -> MediaKind:
    """The media kind from the leading bytes (``UNKNOWN`` if none matches)."""
    head = bytes(data[:SNIFF_BYTES])
    if head.startswith(_PNG_SIG):
        return MediaKind.PNG
    if head.startswith(b"\xff\xd8\xff"):
        return MediaKind.JPEG
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return MediaKind.WEBP
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return MediaKind.AVI
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return MediaKind.GIF
    if head[:2] == b"BM" and len(head) >= 26:
        return MediaKind.BMP
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return MediaKind.TIFF
    if head[4:8] == b"ftyp":
        return MediaKind.HEIF if head[8:12] in _HEIF_BRANDS else MediaKind.MP4
    if head[4:8] in _QT_ATOMS:
        return MediaKind.MP4
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return MediaKind.MATROSKA
    if head[:3] == b"FLV":
        return MediaKind.FLV
    if head[:4] == b"OggS":
        return MediaKind.OGG
    if len(data) >= 377 and data[0] == 0x47 and data[188] == 0x47 and data[376] == 0x47:
        return MediaKind.MPEG_TS
    return MediaKind.UNKNOWN


class HeaderError(ValueError):
    """The header is missing, truncated or malformed."""


def image_header_size(data: bytes, kind: MediaKind) -> tuple[int, int]:
    """(width, height) from the image header alone. Raises ``HeaderError``."""
    try:
        if kind == MediaKind.PNG:
            return _png_size(data)
        if kind == MediaKind.JPEG:
            return _jpeg_size(data)
        if kind == MediaKind.WEBP:
            return _webp_size(data)
        if kind == MediaKind.GIF:
            w, h = struct.unpack_from("<HH", data, 6)
            return int(w), int(h)
    except (struct.error, IndexError) as e:
        raise HeaderError(f"truncated {kind.value} header") from e
    raise HeaderError(f"no header parser for {kind.value}")


def _png_size(data: bytes) -> tuple[int, int]:
    # signature (8) + chunk length (4) + "IHDR" (4) + width (4) + height (4)
    if data[12:16] != b"IHDR":
        raise HeaderError("PNG has no IHDR chunk first")
    w, h = struct.unpack_from(">II", data, 16)
    return int(w), int(h)


# SOFn markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    n = len(data)
    while i < n:
        if data[i] != 0xFF:
            raise HeaderError(f"JPEG marker expected at offset {i}")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in _STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # EOI / SOS before any SOF
            raise HeaderError("JPEG has no frame header (SOF) before the scan")
        (length,) = struct.unpack_from(">H", data, i)
        if length < 2:
            raise HeaderError("JPEG segment length < 2")
        if marker in _SOF:
            h, w = struct.unpack_from(">HH", data, i + 3)
            if h == 0:
                raise HeaderError("JPEG height is deferred to a DNL marker (unsupported)")
            return int(w), int(h)
        i += length
    raise HeaderError("JPEG ended before a frame header (SOF)")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise HeaderError("WebP VP8 start code missing")
        w, h = struct.unpack_from("<HH", data, 26)
        return int(w & 0x3FFF), int(h & 0x3FFF)
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise HeaderError("WebP VP8L signature missing")
        (bits,) = struct.unpack_from("<I", data, 21)
        return int((bits & 0x3FFF) + 1), int(((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        raw = data[24:30]
        if len(raw) < 6:
            raise HeaderError("truncated WebP VP8X header")
        w = int.from_bytes(raw[0:3], "little") + 1
        h = int.from_bytes(raw[3:6], "little") + 1
        return w, h
    raise HeaderError(f"unknown WebP chunk {chunk!r}")
