"""Hard limits on client-supplied media, checked before any expensive work.

Every check happens as early as the data allows: the byte size while fetching (streaming,
aborted past the cap), image dimensions from the file header before a single pixel is decoded,
video dimensions / duration / frame count / codec from the container before decoding — and
again while decoding, because container metadata can lie.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class MediaLimits:
    """What preprocess accepts. The defaults fit the models in ``schemas.registry`` with margin."""

    max_image_bytes: int = 32 * MiB
    """Largest image file fetched (bytes)."""
    max_video_bytes: int = 256 * MiB
    """Largest video file fetched (bytes); the file is held in memory while decoding."""
    max_image_pixels: int = 40_000_000
    """width*height of an image (header value). 40 MP decodes to 120 MB of RGB."""
    max_video_pixels: int = 4096 * 2304
    """width*height of one video frame (4K with margin)."""
    max_width: int = 8192
    """Widest image or video frame (pixels)."""
    max_height: int = 8192
    """Tallest image or video frame (pixels)."""
    max_duration_s: float = 600.0
    """Longest video (seconds), from the container and from decoded timestamps."""
    max_frames: int = 36_000
    """Most source frames a video may have (declared or decoded): 10 min at 60 fps."""
    max_fps: float = 240.0
    """Highest declared source frame rate."""
    fetch_timeout_s: float = 60.0
    """Whole fetch (connect + headers + body) of one input."""
    connect_timeout_s: float = 10.0
    """TCP/TLS connect of one HTTP request."""
    max_redirects: int = 3
    """HTTP redirects followed, each target re-checked by the SSRF guard."""
    image_formats: tuple[str, ...] = ("png", "jpeg", "webp")
    """Sniffed image formats accepted (``MediaKind`` values)."""
    containers: tuple[str, ...] = ("mp4", "matroska")
    """Sniffed video containers accepted (``MediaKind`` values: mp4 covers MOV, matroska covers WebM)."""
    video_codecs: tuple[str, ...] = ("h264", "hevc", "vp8", "vp9", "av1")
    """Video codecs accepted (FFmpeg codec names)."""

    def max_bytes_for(self, what: str) -> int:
        """Byte cap for an input named ``image`` or ``video``."""
        return self.max_video_bytes if what == "video" else self.max_image_bytes


DEFAULT_LIMITS = MediaLimits()
