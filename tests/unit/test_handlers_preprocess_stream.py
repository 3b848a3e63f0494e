"""Streaming preprocess through the handler (fakes): the job is handed to the planner after its first
stored frames, ready messages follow to T, a redelivered submission carries on without moving the job
back, and a cancel mid-preprocess stops it and removes what it wrote."""

from __future__ import annotations

import json

import pytest

from functions.preprocess.handler import handle_submit
from functions.preprocess.media import encode_png
from functions.preprocess.synthetic import draw_figure, figure_video
from runtime.testing.fakes import FakeDelivery, fake_ports
from schemas.messages import EventType, JobEvent, JobState, PlanRequest
from schemas.names import SUBJECT_WORK_PLAN, events_subject, job_prefix, request_key
from tests.unit.handler_fakes import bus_of, status


@pytest.fixture(scope="module")
def media() -> dict[str, bytes]:
    return {"person.png": encode_png(draw_figure(0.0, 160, 120)), "drive.mp4": figure_video(4.0, 16, 160, 120)}


def submission(job_id: str) -> bytes:
    return json.dumps({"job_id": job_id, "task": "animate", "model": "tiny-wan-animate", "prompt": "dance",
                       "image": "s3://videogen/uploads/person.png", "video": "s3://videogen/uploads/drive.mp4",
                       "width": 64, "height": 64, "fps": 16, "num_frames": 61, "steps": 2}).encode()


async def ports_with(media: dict[str, bytes], **settings):
    ports = fake_ports(**settings)
    for name, data in media.items():
        await ports.storage.put_bytes(f"uploads/{name}", data)
    return ports


def plan_requests(ports) -> list[PlanRequest]:
    return bus_of(ports).payloads(SUBJECT_WORK_PLAN, PlanRequest)


async def test_job_is_handed_on_after_its_first_frames(media: dict[str, bytes]) -> None:
    ports = await ports_with(media)
    await handle_submit(submission("ps-1"), FakeDelivery(), ports)
    reqs = plan_requests(ports)
    readies = [r.ready_frames for r in reqs]
    assert readies[0] is not None and readies[0] < 61 and readies[-1] == 61 and readies == sorted(readies)
    assert reqs[0].job.inputs.pose_index is not None and reqs[0].job.inputs.keypoints is not None
    events = [e.type for e in bus_of(ports).payloads(events_subject("ps-1"), JobEvent)]
    assert events.count(EventType.PREPROCESSED) == 1
    st = await status(ports, "ps-1")
    assert st is not None and st.state == JobState.QUEUED and st.preprocessed_frames == readies[0]


async def test_serial_setting_hands_on_once_everything_is_stored(media: dict[str, bytes]) -> None:
    ports = await ports_with(media, preprocess_streaming=False)
    await handle_submit(submission("ps-serial"), FakeDelivery(), ports)
    assert [r.ready_frames for r in plan_requests(ports)] == [None]
    st = await status(ports, "ps-serial")
    assert st is not None and st.preprocessed_frames is None


async def test_redelivery_carries_on_without_moving_the_job_back(media: dict[str, bytes]) -> None:
    ports = await ports_with(media)
    payload = submission("ps-redeliver")
    await handle_submit(payload, FakeDelivery(), ports)
    # meanwhile rendering started and the planner recorded more frames; then the submission comes again
    await ports.tracker.status.update("ps-redeliver", lambda cur: cur.model_copy(update={
        "state": JobState.RUNNING, "preprocessed_frames": 32}))
    before = len(plan_requests(ports))
    await handle_submit(payload, FakeDelivery(num_delivered=2), ports)
    st = await status(ports, "ps-redeliver")
    assert st is not None and st.state == JobState.RUNNING and st.preprocessed_frames == 32
    assert len(plan_requests(ports)) == before  # the same ready messages again: de-duplicated by their ids


async def test_cancel_mid_preprocess_stops_and_cleans_up(media: dict[str, bytes]) -> None:
    ports = await ports_with(media)
    cancelled = False

    async def cancel_after_first_plan(msg) -> None:
        nonlocal cancelled
        if msg.subject == SUBJECT_WORK_PLAN and not cancelled:
            cancelled = True
            await ports.tracker.record(JobEvent.build("ps-cancel", EventType.CANCELLED, {"reason": "t"}))

    bus_of(ports).after_publish.append(cancel_after_first_plan)
    await handle_submit(submission("ps-cancel"), FakeDelivery(), ports)
    assert [r.ready_frames for r in plan_requests(ports)][-1] != 61  # stopped before the end
    assert await ports.storage.list_keys(job_prefix("ps-cancel")) == [request_key("ps-cancel")]
