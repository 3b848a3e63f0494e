"""HLS playlist text (RFC 8216) for a job's stream, and closing a stream at its real end.

Shared by the chain (which appends a piece per finished segment, see ``functions/stitch/hls.py``)
and the job lifecycle (``runtime.jobs``: a failed job's playlist is closed with ``#EXT-X-ENDLIST``
after the pieces listed so far, so no player waits for frames that will never come).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from runtime.logging import get_logger
from runtime.storage import ObjectNotFound, Storage
from schemas.names import playlist_key

log = get_logger(component="hls")

ENDLIST = "#EXT-X-ENDLIST"
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"


def playlist_text(entries: Sequence[tuple[str, float]], *, target_duration_s: float, ended: bool) -> str:
    """An EVENT playlist of ``(uri, duration_s)`` media segments, closed with ENDLIST when ``ended``."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-PLAYLIST-TYPE:EVENT",
             f"#EXT-X-TARGETDURATION:{max(1, math.ceil(target_duration_s))}", "#EXT-X-MEDIA-SEQUENCE:0",
             "#EXT-X-INDEPENDENT-SEGMENTS"]
    for uri, duration in entries:
        lines += [f"#EXTINF:{duration:.6f},", uri]
    if ended:
        lines.append(ENDLIST)
    return "\n".join(lines) + "\n"


def is_closed(text: str) -> bool:
    return any(line.strip() == ENDLIST for line in text.splitlines())


def close_text(text: str) -> str:
    """The playlist with ``#EXT-X-ENDLIST`` appended (unchanged when already closed)."""
    return text if is_closed(text) else text.rstrip("\n") + "\n" + ENDLIST + "\n"


async def close_playlist(storage: Storage, job_id: str) -> bool:
    """Close a job's playlist at its real end (``#EXT-X-ENDLIST`` after the pieces listed so far).

    Idempotent; False when the job has no playlist (never streamed, or its objects were removed)."""
    key = playlist_key(job_id)
    try:
        text = (await storage.get_bytes(key, max_bytes=4 << 20)).decode()
    except ObjectNotFound:
        return False
    if not is_closed(text):
        await storage.put_bytes(key, close_text(text).encode(), PLAYLIST_TYPE)
        log.info("stream_playlist_closed", job_id=job_id)
    return True
