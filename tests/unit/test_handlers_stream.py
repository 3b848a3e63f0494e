"""Watch while it renders, against in-memory fakes: each segment_done publishes the frames it made final
(an MPEG-TS piece + the EVENT playlist growing), the event and the status say how many frames are
playable, the stream equals the stitched output, and a failed job's playlist is closed at its real end."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np

from functions.chain.handler import handle_segment_done
from functions.stitch.assemble import segment_keyframes, stitch_mp4
from functions.stitch.hls import ENDLIST, is_closed
from runtime.video import decode_mp4, encode_mp4
from schemas.messages import EventType, FailedData, JobEvent, JobState, SegmentCompletedData, SegmentJob
from schemas.names import playlist_key, segment_key, segment_result_key, segments_subject, stream_piece_key
from tests.unit.handler_fakes import MODEL, bus_of, events, status
from tests.unit.test_handlers_chain import planned, result
from tests.unit.test_stitch import scene

FPS = 8


async def _render(ports, plan, index: int, tmp: Path) -> bytes:
    """What a runner uploads for segment ``index``: its window's frames, keyframes for the remux."""
    w = plan.windows[index]
    overlaps = [x.overlap_frames for x in plan.windows[1:]]
    p = tmp / f"{index}.mp4"
    frames = scene(w.frames, w.start_frame, 8.0 * (-1) ** index)[:, :32, :32]
    encode_mp4(frames, FPS, p, keyframes_at=segment_keyframes(index, overlaps, w.frames))
    data = p.read_bytes()
    await ports.storage.put_bytes(segment_key(plan.job.job_id, index), data, "video/mp4")
    return data


async def _done(ports, res) -> None:
    await ports.storage.put_bytes(segment_result_key(res.job_id, res.index), res.model_dump_json().encode())
    await handle_segment_done(res.model_dump_json().encode(), _delivery(), ports)


def _delivery():
    from runtime.testing.fakes import FakeDelivery

    return FakeDelivery()


def _uris(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def _decode_pieces(ports, job_id: str, count: int) -> np.ndarray:
    data = b"".join(ports.storage.objects[(ports.storage.bucket, stream_piece_key(job_id, i))] for i in range(count))
    with av.open(io.BytesIO(data), "r", format="mpegts") as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


async def test_each_segment_extends_the_playlist_and_the_stream_equals_the_output(tmp_path: Path) -> None:
    ports, plan = await planned("job-stream", num_frames=81, max_segment_frames=25)
    jid, n = plan.job.job_id, len(plan.windows)
    assert n >= 4
    segs = [await _render(ports, plan, i, tmp_path) for i in range(n)]
    playable = []
    for i in range(n):
        await _done(ports, result(ports, plan, i))
        text = (await ports.storage.get_bytes(playlist_key(jid))).decode()
        assert "#EXT-X-PLAYLIST-TYPE:EVENT" in text
        assert len(_uris(text)) == i + 1 and all(u.startswith("http") and "X-Amz-Expires=3600" in u
                                                 for u in _uris(text))
        assert is_closed(text) == (i == n - 1)  # ENDLIST only once the last frame is final
        st = await status(ports, jid)
        assert st is not None and st.playlist_url is not None and playlist_key(jid) in st.playlist_url
        playable.append(st.playable_frames)
        # the frames listed so far decode and are exactly the next window's start (or T at the end)
        got = _decode_pieces(ports, jid, i + 1)
        expect = plan.windows[i + 1].start_frame if i + 1 < n else plan.job.num_frames
        assert len(got) == st.playable_frames == expect
        if i + 1 < n:  # the next segment's message says how many frames are playable while it renders
            nxt = SegmentJob.model_validate_json(bus_of(ports).messages(segments_subject(MODEL))[-1].data)
            assert nxt.index == i + 1 and nxt.playable_frames == expect
    assert playable == sorted(playable) and playable[-1] == 81
    completed = [e.payload(SegmentCompletedData) for e in events(ports, jid)
                 if e.type == EventType.SEGMENT_COMPLETED]
    assert [c.playable_frames for c in completed] == playable
    assert all(c.url and stream_piece_key(jid, c.segment) in c.url and c.stream is not None for c in completed)
    assert [c.stream_start_frame for c in completed] == [0] + playable[:-1]
    # the stream shows output.mp4's frames, exactly
    paths = []
    for i, data in enumerate(segs):
        p = tmp_path / f"s{i}.mp4"
        p.write_bytes(data)
        paths.append(p)
    out = tmp_path / "output.mp4"
    stitch_mp4(paths, [w.overlap_frames for w in plan.windows[1:]], 81, out, fps=FPS, method="crossfade")
    np.testing.assert_array_equal(_decode_pieces(ports, jid, n), decode_mp4(out))


async def test_a_failed_job_has_its_playlist_closed_at_its_real_end(tmp_path: Path) -> None:
    ports, plan = await planned("job-stream-fail", num_frames=81, max_segment_frames=25)
    jid = plan.job.job_id
    for i in range(2):
        await _render(ports, plan, i, tmp_path)
        await _done(ports, result(ports, plan, i))
    text = (await ports.storage.get_bytes(playlist_key(jid))).decode()
    assert not is_closed(text) and len(_uris(text)) == 2
    await ports.tracker.record(JobEvent.build(jid, EventType.FAILED, FailedData(code="internal", message="boom")))
    closed = (await ports.storage.get_bytes(playlist_key(jid))).decode()
    assert closed.splitlines()[-1] == ENDLIST and _uris(closed) == _uris(text)
    st = await status(ports, jid)
    assert st is not None and st.state == JobState.FAILED and st.playable_frames == plan.windows[2].start_frame
    # a late segment_done after the failure writes its piece but the playlist ends closed again
    await _render(ports, plan, 2, tmp_path)
    await _done(ports, result(ports, plan, 2))
    assert is_closed((await ports.storage.get_bytes(playlist_key(jid))).decode())


async def test_a_piece_that_cannot_be_built_stops_the_stream_not_the_job(tmp_path: Path) -> None:
    ports, plan = await planned("job-stream-bad", num_frames=81, max_segment_frames=25)
    jid = plan.job.job_id
    await _render(ports, plan, 0, tmp_path)
    await _done(ports, result(ports, plan, 0))
    await ports.storage.put_bytes(segment_key(jid, 1), b"not an mp4", "video/mp4")
    await _done(ports, result(ports, plan, 1))
    st = await status(ports, jid)
    assert st is not None and st.state == JobState.RUNNING and st.segments_done == 2
    assert st.playable_frames == plan.windows[1].start_frame  # unchanged: nothing new became playable
    assert is_closed((await ports.storage.get_bytes(playlist_key(jid))).decode())
    nxt = SegmentJob.model_validate_json(bus_of(ports).messages(segments_subject(MODEL))[-1].data)
    assert nxt.index == 2  # rendering goes on
