"""Watch while it renders, against the session's real workers (functions + one tiny-wan runner).

Midway through a job of >= 4 segments ``ffprobe`` of the presigned playlist URL decodes the frames
finished so far; at the end the playlist is closed and decodes to exactly ``output.mp4``'s frames
(the same H.264 packets: compared in the decoder's own YUV, bit for bit). A cancelled streaming job's
playlist goes with the job's objects.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import urllib.error
import urllib.request

import av
import numpy as np
import pytest

from runtime.bus import Bus
from runtime.client import cancel, submit
from runtime.settings import Settings
from runtime.storage import Storage
from schemas.messages import EventType, JobPlan, JobRequest, JobState, SegmentCompletedData
from schemas.names import plan_key, playlist_key, stream_prefix
from tests.integration.test_cancel import Watch, wait_status

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe/ffmpeg not installed")]

JOB = {"width": 64, "height": 64, "num_frames": 81, "fps": 16, "steps": 3, "seed": 5, "max_segment_frames": 25}


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310 (a presigned URL of the test's S3)
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def ffprobe_frames(url: str) -> int:
    """Frames ffprobe decodes from an HLS URL; a playlist still growing is read as far as it goes."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-live_start_index", "0", "-m3u8_hold_counters", "2", "-count_frames",
         "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", url],
        capture_output=True, text=True, timeout=120, check=True)
    counts = {int(x) for x in out.stdout.split() if x.strip().isdigit()}
    assert len(counts) == 1, out.stdout
    return counts.pop()


def ffmpeg_yuv(url: str, w: int, h: int) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-live_start_index", "0", "-i", url, "-map", "0:v:0", "-f",
                          "rawvideo", "-pix_fmt", "yuv420p", "-"], capture_output=True, timeout=120, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h * w * 3 // 2)


def mp4_yuv(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="yuv420p").reshape(-1) for f in c.decode(video=0)])


async def test_playlist_grows_midway_and_ends_equal_to_output(stack: Settings, workers, bus: Bus,
                                                              storage: Storage) -> None:
    jid = "stream-4seg"
    watch = Watch(bus, jid)
    await submit(bus, JobRequest(job_id=jid, prompt="watch me render", **JOB))
    first = await watch.wait(lambda e: e.type == EventType.SEGMENT_COMPLETED and e.data.segment == 1, 300)
    data = first.payload(SegmentCompletedData)
    plan = JobPlan.model_validate_json(await storage.get_bytes(plan_key(jid)))
    n = len(plan.windows)
    assert n >= 4
    assert data.playlist_url and data.url and data.playable_frames == plan.windows[2].start_frame
    # the piece's own URL plays alone
    code, body = await asyncio.to_thread(http_get, data.url)
    assert code == 200 and body[:1] == b"\x47"  # MPEG-TS sync byte
    boundaries = [w.start_frame for w in plan.windows[1:]] + [plan.job.num_frames]
    midway = await asyncio.to_thread(ffprobe_frames, data.playlist_url)
    # at least what was final when segment 1 finished, and always a whole number of pieces
    assert midway >= data.playable_frames and midway in boundaries
    status_mid = await wait_status(bus, jid, lambda s: s.playable_frames >= data.playable_frames)
    assert status_mid.playlist_url is not None

    done = await watch.wait(lambda e: e.type in (EventType.SUCCEEDED, EventType.FAILED), 300)
    assert done.type == EventType.SUCCEEDED, done
    completed = [e.payload(SegmentCompletedData) for e in watch.events if e.type == EventType.SEGMENT_COMPLETED]
    assert [c.playable_frames for c in completed] == boundaries
    progress = [e.data.playable_frames for e in watch.events if e.type == EventType.PROGRESS]
    assert progress == sorted(progress) and set(progress) <= {0, *boundaries}
    final = await wait_status(bus, jid, lambda s: s.state == JobState.SUCCEEDED)
    assert final.playable_frames == 81 and final.playlist_url is not None
    text = (await storage.get_bytes(playlist_key(jid))).decode()
    assert text.rstrip().endswith("#EXT-X-ENDLIST") and "#EXT-X-PLAYLIST-TYPE:EVENT" in text
    assert await asyncio.to_thread(ffprobe_frames, final.playlist_url) == 81
    out = await storage.get_bytes(done.data.output.key)
    streamed = await asyncio.to_thread(ffmpeg_yuv, final.playlist_url, 64, 64)
    np.testing.assert_array_equal(streamed, mp4_yuv(out))


async def test_cancelled_streaming_job_takes_its_playlist_with_it(stack: Settings, workers, bus: Bus,
                                                                  storage: Storage) -> None:
    jid = "stream-cancel"
    watch = Watch(bus, jid)
    await submit(bus, JobRequest(job_id=jid, prompt="cancel me while streaming", **{**JOB, "steps": 8}))
    seg = await watch.wait(lambda e: e.type == EventType.SEGMENT_COMPLETED, 300)
    url = seg.payload(SegmentCompletedData).playlist_url
    assert url is not None
    await cancel(bus, jid, "seen enough")
    await watch.wait(lambda e: e.type == EventType.CANCELLED, 60)
    await asyncio.sleep(3)  # a segment the runner was finishing is discarded too
    assert await storage.list_keys(stream_prefix(jid)) == []
    assert (await asyncio.to_thread(http_get, url))[0] == 404
