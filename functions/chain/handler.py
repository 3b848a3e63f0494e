"""chain: a segment is done -> record it, then publish the next segment or hand the job to stitch.

in:  ``videogen.work.segment_done`` (SegmentResult, from a runner)
out: ``job.segment_completed`` (status ``segments_done``, ``progress``; ``stitching`` after the last
     segment); segment k+1 on ``videogen.segments.<model>`` conditioned on k's tail frames, or
     ``videogen.work.stitch`` (StitchRequest with every segment's result) after the last one

The plan comes from the plan store (``runtime.plans``: ``jobs/<id>/plan.json``), never from memory:
the planner that wrote it is another process. Segment k+1 is published only when k is done, so
any runner can take it and a runner restart between segments loses nothing.
"""

from __future__ import annotations

from typing import Any

import av

from functions.planner.segments import inputs_needed, inputs_ready, progress_after, segment_job, window_overlap
from functions.stitch.errors import StitchError
from functions.stitch.stream import StreamUpdate, close_playlist, publish_piece
from runtime.jobs import TERMINAL, progress_pct
from runtime.logging import get_logger
from runtime.plans import read_plan
from runtime.ports import Ports
from runtime.storage import ObjectNotFound
from runtime.work import WorkItem
from schemas.errors import Permanent, Retryable
from schemas.messages import (
    EventType,
    JobEvent,
    JobPlan,
    JobState,
    SegmentCompletedData,
    SegmentResult,
    StitchRequest,
)
from schemas.names import SUBJECT_WORK_STITCH, revision_tag, segment_msg_id, segment_result_key, segments_subject

STREAM_ERRORS = (StitchError, ObjectNotFound, av.error.FFmpegError, ValueError, OSError)
"""A piece that cannot be built (e.g. a segment PyAV cannot read) stops the stream, not the job."""

log = get_logger(stage="chain")


async def handle_segment_done(payload: bytes, delivery: WorkItem, ports: Ports) -> None:
    res = SegmentResult.model_validate_json(payload)
    job_id = res.job_id
    try:
        plan: JobPlan | None = await read_plan(ports.storage, job_id, min_revision=res.plan_revision)
    except Permanent:
        plan = None  # e.g. a cancelled job's objects are gone: decided below, once the status is known
    if plan is not None and plan.info.revision != res.plan_revision:
        log.info("segment_result_superseded", job_id=job_id, segment=res.index, result_revision=res.plan_revision,
                 plan_revision=plan.info.revision)
        return
    stream = await _stream(ports, plan, res)
    extra: dict[str, Any] = {}
    stream_fields: dict[str, Any] = {}
    if stream is not None:
        extra = {"playable_frames": stream.playable_frames, "stream": stream.object,
                 "stream_start_frame": stream.piece.start, "url": stream.url, "url_expires_at": stream.url_expires_at,
                 "playlist_url": stream.playlist_url}
        stream_fields = {"playable_frames": stream.playable_frames, "playlist_url": stream.playlist_url,
                         "playlist_url_expires_at": stream.playlist_url_expires_at}
    data = SegmentCompletedData(segment=res.index, segments_total=res.count, object=res.segment,
                                frames=res.frames, elapsed_s=res.elapsed_s, **extra)
    last = res.index + 1 >= res.count
    stored = await ports.tracker.record(
        JobEvent.build(job_id, EventType.SEGMENT_COMPLETED, data, res.index, *revision_tag(res.plan_revision)),
        state=JobState.STITCHING if last else None,  # the last segment hands the job to stitch
        segments_done=res.index + 1, segments_total=res.count,
        progress=progress_after(plan, res.index) if plan is not None else progress_pct(res.index + 1, res.count),
        **stream_fields,
    )
    if (state := await ports.guard.stopped(job_id, among=TERMINAL, status=stored)) is not None:
        if state == JobState.FAILED and stream is not None:
            await close_playlist(ports.storage, job_id)  # the piece may have landed after the failure closed it
        log.info("job_already_finished", job_id=job_id, state=state.value)
        return
    if plan is None:
        plan = await read_plan(ports.storage, job_id, min_revision=res.plan_revision)  # raises: plan missing
    nxt = res.index + 1
    if nxt < len(plan.windows):
        if not inputs_ready(stored, plan, nxt):
            # preprocessing is still behind this window: the planner releases it when the inputs are
            # stored (it reads segments_done after recording them; we read them after recording ours)
            log.info("segment_waits_for_inputs", job_id=job_id, segment=nxt, needs=inputs_needed(plan, nxt),
                     ready_frames=stored.preprocessed_frames if stored else None)
            return
        seg = segment_job(plan, nxt, res.tail)
        ack = await ports.bus.publish(segments_subject(plan.job.model), seg,
                                      msg_id=segment_msg_id(job_id, nxt, plan.info.revision))
        if await ports.guard.stopped(job_id, queued_seq=ack.seq) is not None:
            return
        log.info("segment_chained", job_id=job_id, segment=nxt, of=len(plan.windows))
        return
    results = [res] if res.count == 1 else await _load_results(ports, plan, res)
    await ports.bus.publish(SUBJECT_WORK_STITCH, StitchRequest(job=plan.job, plan=plan.info, segments=results),
                            msg_id=f"stitch:{job_id}")


async def _stream(ports: Ports, plan: JobPlan | None, res: SegmentResult) -> StreamUpdate | None:
    """Publish the output frames segment ``res.index`` made final (HLS piece + playlist), before the
    event that announces them. Storage errors propagate (redelivery); a piece that cannot be built
    closes the stream at its real end and the job renders on."""
    if plan is None or plan.job.extend is not None:
        return None  # an extension's output starts with its source: not streamed (yet)
    if len(plan.windows) == 1:
        return None  # one segment: the whole video is final at once (output.mp4 follows), nothing to stream
    try:
        return await publish_piece(ports.storage, plan, res)
    except STREAM_ERRORS as e:
        log.warning("stream_piece_failed", job_id=res.job_id, segment=res.index, error=str(e))
        await close_playlist(ports.storage, res.job_id)
        return None


async def _load_results(ports: Ports, plan: JobPlan, last: SegmentResult) -> list[SegmentResult]:
    """Every segment's stored result, checked against the plan's windows (a re-plan changes them)."""
    out: list[SegmentResult] = []
    for w in plan.windows[:-1]:
        raw = await ports.storage.get_bytes(segment_result_key(plan.job.job_id, w.index))
        res = SegmentResult.model_validate_json(raw)
        overlap = window_overlap(plan, w.index)
        if res.frames != w.frames or res.overlap_frames != overlap:
            raise Retryable(f"segment {w.index} result ({res.frames} frames, overlap {res.overlap_frames}) does not "
                            f"match plan revision {plan.info.revision} ({w.frames}, {overlap})")
        out.append(res)
    out.append(last)
    return out
