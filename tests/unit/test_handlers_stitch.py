"""stitch handler's lifecycle guard against in-memory fakes: a finished job is left alone, a
single exact segment is copied server-side and succeeds, and a cancel that wins while stitching
leaves no output and no job.succeeded."""

from __future__ import annotations

from functions.stitch.handler import handle_stitch
from runtime.testing.fakes import FakeDelivery, fake_ports
from schemas.messages import EventType, JobEvent, JobState, PlanInfo, SegmentResult, StitchRequest
from schemas.names import output_key, request_key, segment_key
from tests.unit.handler_fakes import bus_of, cancel, events, job, start, status, storage_of


async def one_segment_job(ports, job_id: str) -> StitchRequest:
    j = job(job_id, num_frames=9)
    await start(ports, job_id)
    await ports.storage.put_bytes(request_key(job_id), b"{}")
    seg = await ports.storage.put_bytes(segment_key(job_id, 0), b"mp4 bytes")
    res = SegmentResult(job_id=job_id, index=0, count=1, segment=seg, frames=9, width=32, height=32, fps=8,
                        sha256="ab" * 32, runner="r", elapsed_s=0.5)
    info = PlanInfo(segments=1, window_frames=9, overlap_frames=0, total_frames=9, reason="one window")
    return StitchRequest(job=j, plan=info, segments=[res])


async def test_single_exact_segment_is_copied_and_the_job_succeeds() -> None:
    ports = fake_ports()
    req = await one_segment_job(ports, "st-1")
    await handle_stitch(req.model_dump_json().encode(), FakeDelivery(), ports)
    assert await ports.storage.get_bytes(output_key("st-1")) == b"mp4 bytes"
    st = await status(ports, "st-1")
    assert st is not None and st.state == JobState.SUCCEEDED and st.progress == 100.0
    assert st.output is not None and st.output.frames == 9 and st.url
    assert events(ports, "st-1")[-1].type == EventType.SUCCEEDED


async def test_finished_job_is_not_stitched_again() -> None:
    ports = fake_ports()
    req = await one_segment_job(ports, "st-2")
    await ports.tracker.record(JobEvent.build("st-2", EventType.FAILED, {"code": "model_error", "message": "x"}))
    await handle_stitch(req.model_dump_json().encode(), FakeDelivery(), ports)
    stored = storage_of(ports).keys()  # FakeStorage.keys(): a sorted list, not a dict view
    assert output_key("st-2") not in stored
    assert EventType.SUCCEEDED not in [e.type for e in events(ports, "st-2")]


async def test_cancel_winning_while_stitching_leaves_no_output() -> None:
    ports = fake_ports()
    req = await one_segment_job(ports, "st-3")

    async def cancel_when_output_lands(key: str) -> None:
        if key == output_key("st-3"):
            await cancel(ports, "st-3")  # after the canceller listed jobs/st-3/ (it missed output.mp4)

    storage_of(ports).after_write.append(cancel_when_output_lands)
    await handle_stitch(req.model_dump_json().encode(), FakeDelivery(), ports)
    assert storage_of(ports).keys() == [request_key("st-3")]  # output.mp4 and the segment deleted
    st = await status(ports, "st-3")
    assert st is not None and st.state == JobState.CANCELLED
    assert EventType.SUCCEEDED not in [e.type for e in events(ports, "st-3")]
    assert bus_of(ports).messages("videogen.work.>") == []
