"""Rank 0's I/O: an asyncio loop on its own thread owning the bus and S3 clients.

The compute thread never waits on the network except to take the next segment:
progress events, in_progress heartbeats, cancellation watching, and encode+upload of a
finished segment all run here, so segment k's upload overlaps segment k+1's denoising.

What this module does itself: fetch a segment's inputs, encode and upload its frames, report
progress. Broker actions (pull, ack, nak, term, heartbeats, fail + DLQ, hand-back) are the
segment message's ``runtime.work.WorkItem``'s; "has the job ended under me" checks and the
clean-up after a cancel are ``runtime.jobs.JobGuard``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import numpy as np

from functions.stitch.finish import (
    complete,
    finishes_in_runner,
    output_info,
    store_jpegs,
    store_previews,
    tail_frames_for,
)
from functions.stitch.previews import frame_jpegs
from gpu_runner.inputs import SegmentInputs
from runtime.bus import Bus
from runtime.frames_store import load_index, read_frames
from runtime.jobs import STOPPED, TERMINAL, JobGuard, JobTracker, window_progress
from runtime.liveness import RenderAttempts, RunnerPresence
from runtime.logging import get_logger
from runtime.ports import Ports
from runtime.settings import Settings
from runtime.storage import Storage
from runtime.video import encode_mp4, remux_keyframes
from runtime.work import Puller, WorkItem
from schemas.errors import ErrorCode, Permanent, Retryable, VideogenError
from schemas.messages import (
    EventType,
    FailedData,
    JobEvent,
    JobState,
    ObjectRef,
    PlanRequest,
    ProgressData,
    ReplanHint,
    SegmentCompletedData,
    SegmentJob,
    SegmentResult,
    StartedData,
)
from schemas.names import (
    RENDER_ATTEMPTS,
    RUNNER_PRESENCE_S,
    SUBJECT_WORK_PLAN,
    SUBJECT_WORK_SEGMENT_DONE,
    output_key,
    replan_msg_id,
    revision_tag,
    runner_consumer,
    segment_done_msg_id,
    segment_key,
    segment_result_key,
    segment_tail_key,
)

T = TypeVar("T")
log = get_logger(component="runner-io")
STAGE = "runner"


def encode_segment(frames: np.ndarray, job: SegmentJob) -> bytes:
    buf = io.BytesIO()
    keys = remux_keyframes(int(frames.shape[0]), job.overlap_frames, job.next_overlap_frames)
    encode_mp4(frames, job.job.fps, buf, keyframes_at=keys)
    return buf.getvalue()


def decode_png_rgb(data: bytes) -> np.ndarray:
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("reference image could not be decoded")
    return np.ascontiguousarray(bgr[:, :, ::-1])


async def _window(storage: Storage, index_ref: ObjectRef, j: SegmentJob) -> np.ndarray:
    """Frames [start, start+L) of a preprocessed stream; past its end (plan padding) the last
    frame repeats."""
    index = await load_index(storage, index_ref)
    start = min(j.start_frame, index.frames - 1)
    count = max(1, min(j.frames, index.frames - start))
    frames = await read_frames(storage, index, start, count, bucket=index_ref.bucket)
    if frames.shape[0] < j.frames:
        pad = np.repeat(frames[-1:], j.frames - frames.shape[0], axis=0)
        frames = np.concatenate([frames, pad])
    return frames


def segment_progress(j: SegmentJob, step: int, steps: int) -> float:
    """Job progress at ``step`` of ``steps`` of segment ``j`` (``runtime.jobs.window_progress``)."""
    return window_progress(j.start_frame, j.frames, j.overlap_frames, j.job.num_frames, step, steps)


@dataclass
class Active:
    """A segment message this runner holds: heartbeated until settled."""

    job: SegmentJob
    item: WorkItem
    started: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    step: int = 0  # last denoising step reported (every step, before the progress throttle)
    watcher: asyncio.Task[None] | None = None
    # the first job.progress comes progress_interval_s after the segment was taken (a segment done
    # sooner reports only its last step): fewer status writes on the I/O thread while the model runs
    last_progress: float = field(default_factory=time.monotonic)
    counting: Future[Any] | None = None  # the render-count increment (begin_render)
    handle: int = 0  # the I/O process's name for it (gpu_runner.io_process); 0 in-process

    @property
    def stored_at(self) -> datetime | None:
        """When JetStream stored the segment message, for the queue-wait metric."""
        return self.item.stored_at


class RunnerIO:
    def __init__(self, settings: Settings, model: str, *, runner_id: str | None = None,
                 progress_interval_s: float = 0.25) -> None:
        self.settings = settings
        self.model = model
        self.runner_id = runner_id or f"{socket.gethostname()}-{os.getpid()}"
        self.progress_interval_s = progress_interval_s
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="runner-io", daemon=True)
        self.bus = Bus(settings, f"videogen-runner-{model}")
        self.storage = Storage(settings)
        self.tracker: JobTracker | None = None
        self.guard: JobGuard | None = None
        self.ports: Ports | None = None
        self.puller: Puller | None = None
        self._uploads: set[Future[Any]] = set()
        self._finishing: set[Future[Any]] = set()  # rendered segments not yet stored (the spool)
        self._spool_bytes = 0
        self._spool_full_logged = False
        self.upload_retries = 0
        self.attempts = RenderAttempts(self.bus)
        self.presence: RunnerPresence | None = None
        self._presence_task: asyncio.Task[None] | None = None
        self.busy_s = 0.0
        # called on the I/O loop when a held segment's job stops (the I/O process mirrors the
        # flag into memory the compute process reads: ``gpu_runner.io_process``)
        self.on_cancelled: Callable[[Active], None] | None = None

    # ---- thread plumbing ---------------------------------------------------------------
    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> Future[Any]:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        self._uploads.add(fut)
        fut.add_done_callback(self._uploads.discard)
        return fut

    def start(self) -> None:
        self._thread.start()
        self.call(self._open())

    async def _open(self) -> None:
        await self.bus.connect()
        await self.storage.open()
        self.tracker = JobTracker(self.bus, self.storage)
        self.ports = Ports(self.settings, self.bus, self.storage, self.tracker)
        self.guard = self.ports.guard
        spec = runner_consumer(self.model)
        self.puller = Puller(self.bus, spec, stage=STAGE, on_permanent=self._record_failure,
                             on_exhausted=self._record_failure)
        await self.puller.open()
        self.presence = RunnerPresence(self.bus, self.model, self.runner_id)
        self._presence_task = asyncio.create_task(self._presence_loop())
        log.info("runner_io_ready", model=self.model, consumer=spec.durable, runner=self.runner_id)

    def close(self, timeout_s: float = 120.0) -> None:
        """Wait for pending uploads, then close clients and stop the loop."""
        deadline = time.monotonic() + timeout_s
        for fut in list(self._uploads):
            with contextlib.suppress(Exception):
                fut.result(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(Exception):
            self.call(self._close(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    async def _close(self) -> None:
        if self._presence_task is not None:
            self._presence_task.cancel()
        if self.presence is not None:
            await self.presence.withdraw()
        if self.puller is not None:
            await self.puller.close()
        await self.storage.close()
        await self.bus.close()

    def connected(self) -> bool:
        """The bus connection is up (the runner's health check)."""
        return self.bus.nc is not None and self.bus.nc.is_connected

    def fetch_lora(self, uri: str) -> bytes:
        """A LoRA file from S3 (``s3://bucket/key``), refused over ``lora_max_bytes``."""
        from gpu_runner.lora import storage_fetch  # imports torch: not in the I/O process until a LoRA is used

        fetch = storage_fetch(self.storage, max_bytes=self.settings.lora_max_bytes)

        async def get() -> bytes:
            return await fetch(uri)

        return self.call(get(), timeout=600)

    # ---- taking work -------------------------------------------------------------------
    def next_segment(self, timeout_s: float = 1.0) -> Active | None:
        return self.call(self._next(timeout_s), timeout=timeout_s + 30)

    async def _next(self, timeout_s: float) -> Active | None:
        assert self.puller is not None and self.tracker is not None and self.guard is not None
        if self.spool_full():  # rendered segments wait for their upload: take no new work
            if not self._spool_full_logged:
                log.warning("spool_full_not_pulling", segments=len(self._finishing), bytes=self._spool_bytes)
                self._spool_full_logged = True
            await asyncio.sleep(min(timeout_s, 1.0))
            return None
        self._spool_full_logged = False
        item = await self.puller.next(timeout_s)
        if item is None:
            return None
        try:
            job = SegmentJob.model_validate_json(item.payload)
        except ValueError as e:  # no job to fail: dead-lettered (the hook declines) and terminated
            await item.fail(Permanent(f"bad segment job: {e}", code=ErrorCode.INVALID_REQUEST))
            return None
        if (state := await self.guard.stopped(job.job.job_id, among=TERMINAL)) is not None:
            log.info("segment_skipped_job_finished", job_id=job.job.job_id, segment=job.index, state=state.value)
            await item.ack()
            return None
        if item.num_delivered > 1:
            if await self._already_done(item, job):
                return None
            renders = await self.attempts.count(job.job.job_id, job.index, job.plan_revision)
            if renders >= RENDER_ATTEMPTS:
                # every render so far ended with its runner gone (a reported failure would have
                # settled the message): the segment itself kills runners; stop here
                item.attempts, item.max_attempts = renders, RENDER_ATTEMPTS
                log.error("segment_render_budget_spent", job_id=job.job.job_id, segment=job.index, renders=renders,
                          delivery=item.num_delivered)
                await item.fail(Retryable(f"segment {job.index}: {renders} renders started, none finished "
                                          f"(the runner died each time)", code=ErrorCode.MAX_DELIVERIES))
                return None
        active = Active(job, item)
        item.start_heartbeat(self.settings.runner_heartbeat_s)
        active.watcher = asyncio.create_task(self._watch_cancel(active))
        if job.index == 0:  # off the critical path: compute starts now
            self.spawn(self.tracker.record(
                JobEvent.build(job.job.job_id, EventType.STARTED, StartedData(segment=0, runner=self.runner_id))))
        return active

    async def _watch_cancel(self, active: Active) -> None:
        """Set ``active.cancelled`` as soon as the job's status turns cancelled/failed (pushed by a
        KV watch, ``runtime.jobs.JobGuard.wait_stopped``), so the step callback stops at the first
        step boundary after the cancel."""
        assert self.guard is not None
        job_id = active.job.job.job_id
        state = await self.guard.wait_stopped(job_id, among=STOPPED)
        active.cancelled = True
        if self.on_cancelled is not None:
            self.on_cancelled(active)
        log.info("job_stop_observed", job_id=job_id, segment=active.job.index, state=state.value, step=active.step)

    async def _discard(self, active: Active, state: JobState, why: str) -> None:
        """The job stopped while this segment was finishing: ack without hand-off."""
        await active.item.ack()
        log.info("segment_discarded_job_stopped", job_id=active.job.job.job_id, segment=active.job.index,
                 state=state.value, why=why)

    def fetch_inputs(self, active: Active) -> SegmentInputs:
        """Everything the window needs from S3, as arrays (broadcast to the other ranks)."""
        return self.call(self._fetch_inputs(active.job), timeout=300)

    async def _fetch_inputs(self, j: SegmentJob) -> SegmentInputs:
        out = SegmentInputs()
        if j.condition is not None:
            data = await self.storage.get_bytes(j.condition.key, bucket=j.condition.bucket)
            out.condition = np.load(io.BytesIO(data), allow_pickle=False)
        inputs = j.job.inputs
        if inputs.reference is not None:
            png = await self.storage.get_bytes(inputs.reference.key, bucket=inputs.reference.bucket)
            out.image = await asyncio.to_thread(decode_png_rgb, png)
        if inputs.pose_index is not None:
            out.pose_video = await _window(self.storage, inputs.pose_index, j)
        if inputs.face_index is not None:
            out.face_video = await _window(self.storage, inputs.face_index, j)
        return out

    # ---- progress (fire and forget, throttled) ------------------------------------------
    def progress(self, active: Active, step: int, steps: int) -> None:
        active.step = step
        now = time.monotonic()
        if step < steps and now - active.last_progress < self.progress_interval_s:
            return
        active.last_progress = now
        j = active.job
        pct = segment_progress(j, step, steps)
        data = ProgressData(progress=pct, segment=j.index, segments_total=j.count, step=step, steps=steps,
                            playable_frames=j.playable_frames)
        event = JobEvent.build(j.job.job_id, EventType.PROGRESS, data, j.index, step, *revision_tag(j.plan_revision))
        assert self.tracker is not None
        self.spawn(self.tracker.record(event, progress=pct, segments_total=j.count))

    # ---- finishing ----------------------------------------------------------------------
    def submit_result(self, active: Active, frames: np.ndarray, elapsed_s: float) -> Future[Any]:
        """Encode + upload + hand off + ack on the I/O thread; returns at once."""
        fut = self.spawn(self._finish(active, frames, elapsed_s))
        self._finishing.add(fut)
        fut.add_done_callback(self._finishing.discard)
        return fut

    async def _finish(self, active: Active, frames: np.ndarray, elapsed_s: float) -> None:
        """Encode once, then store until stored: an S3 or NATS outage keeps the encoded segment here
        (the spool: ``runner_spool_segments``/``runner_spool_bytes``; when full the runner stops
        pulling) and retries with back-off while the heartbeat keeps the message. The segment is
        acked only once its objects and hand-off are stored, and is never rendered again for a
        fault of the infrastructure."""
        j = active.job
        job_id = j.job.job_id
        held = int(frames.nbytes)
        self._spool_bytes += held
        assert self.tracker is not None
        # the first try's status read overlaps the encode
        first_status: asyncio.Future[Any] | None = asyncio.ensure_future(self.tracker.status.get(job_id))
        first_status.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved, if unused
        # a one-window job's thumbnail and spritesheet come from the rendered frames, while they encode
        jpegs_of: asyncio.Future[tuple[bytes, bytes]] | None = (
            asyncio.ensure_future(asyncio.to_thread(frame_jpegs, frames)) if finishes_in_runner(j) else None)
        if jpegs_of is not None:
            jpegs_of.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved, if unused
        jpegs: tuple[bytes, bytes] | None = None
        try:
            try:
                data = await asyncio.to_thread(encode_segment, frames, j)
                tail: bytes | None = None
                if j.index + 1 < j.count and j.next_overlap_frames:
                    buf = io.BytesIO()
                    np.save(buf, np.ascontiguousarray(frames[-j.next_overlap_frames:]), allow_pickle=False)
                    tail = buf.getvalue()
            except Exception as e:  # not an outage: the frames cannot be encoded
                log.error("segment_encode_failed", job_id=job_id, segment=j.index, error=str(e))
                verr = Retryable(f"encode failed: {e}", code=ErrorCode.MODEL_ERROR)
                await active.item.fail(verr, retry_delay_s=5 * active.item.num_delivered)
                return
            self._spool_bytes += len(data) + len(tail or b"") - held
            held = len(data) + len(tail or b"")
            shape = (int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2]))
            if jpegs_of is not None:
                try:
                    jpegs = await jpegs_of
                except Exception as e:  # noqa: BLE001 - store_previews decodes the output for them instead
                    log.warning("frame_previews_failed", job_id=job_id, error=str(e))
            del frames  # only the encoded bytes are kept while the upload is retried
            delay = 0.5
            attempt = 0
            while True:
                attempt += 1
                try:
                    pre, first_status = first_status, None
                    await self._store(active, data, tail, shape, elapsed_s, pre, jpegs)
                    if attempt > 1:
                        log.info("segment_upload_recovered", job_id=job_id, segment=j.index, attempts=attempt)
                    return
                except Exception as e:
                    self.upload_retries += 1
                    log.warning("segment_upload_retry", job_id=job_id, segment=j.index, attempt=attempt,
                                next_in_s=round(delay, 2), error=str(e)[:300])
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.settings.runner_upload_backoff_max_s)
        finally:
            if first_status is not None:
                first_status.cancel()
            self._spool_bytes -= held
            self._release(active)

    async def _store(self, active: Active, data: bytes, tail: bytes | None, shape: tuple[int, int, int],
                     elapsed_s: float, status_read: asyncio.Future[Any] | None = None,
                     jpegs: tuple[bytes, bytes] | None = None) -> None:
        """One try at storing a rendered segment and handing it off; raises on any I/O failure."""
        j = active.job
        job_id = j.job.job_id
        assert self.tracker is not None
        assert self.guard is not None
        status, _ = await (status_read if status_read is not None else self.tracker.status.get(job_id))
        # cancelled or failed: drop the work; a cancelled job's partial objects are deleted on
        # the way (a failed job's are kept for inspection)
        stopped = await self.guard.stopped(job_id, among=STOPPED, status=status)
        if stopped is not None:
            await self._discard(active, stopped, "before upload")
            return
        if status is not None and status.plan is not None and status.plan.revision > j.plan_revision:
            # the job was re-planned after this segment was handed out (its runner died before
            # acking it): the new revision renders this part of the video; keep out of its keys
            await active.item.ack()
            log.info("segment_superseded", job_id=job_id, segment=j.index, revision=j.plan_revision,
                     plan_revision=status.plan.revision)
            return
        if finishes_in_runner(j):
            await self._complete_job(active, data, shape, elapsed_s, jpegs)
            return
        uploads = [self.storage.put_atomic(segment_key(job_id, j.index), data, "video/mp4")]
        if tail is not None:
            uploads.append(self.storage.put_atomic(segment_tail_key(job_id, j.index), tail))
        seg_ref, *rest = await asyncio.gather(*uploads)
        tail_ref = rest[0] if rest else None
        frames_n, height, width = shape
        result = SegmentResult(
            job_id=job_id, index=j.index, count=j.count, segment=seg_ref, tail=tail_ref,
            frames=frames_n, overlap_frames=j.overlap_frames, width=width,
            height=height, fps=j.job.fps, sha256=hashlib.sha256(data).hexdigest(),
            runner=self.runner_id, elapsed_s=round(elapsed_s, 3), plan_revision=j.plan_revision,
        )
        # the stored result (read by stitch) and the hand-off are independent: send both at once
        await asyncio.gather(
            self.storage.put_bytes(segment_result_key(job_id, j.index), result.model_dump_json().encode(),
                                   "application/json"),
            self.bus.publish(SUBJECT_WORK_SEGMENT_DONE, result,
                             msg_id=segment_done_msg_id(job_id, j.index, j.plan_revision)),
        )
        stopped = await self.guard.stopped(job_id, among=STOPPED)
        if stopped is not None:
            # cancelled during the upload: the canceller may have listed jobs/<id>/ before these
            # objects existed, so the last writer deletes (the chain ignores the hand-off of a
            # cancelled job); see functions/cancel/README.md
            await self._discard(active, stopped, "during upload")
            return
        await active.item.ack()
        log.info("segment_done", job_id=job_id, segment=j.index, of=j.count, frames=result.frames,
                 bytes=len(data), elapsed_s=result.elapsed_s)

    async def _complete_job(self, active: Active, data: bytes, shape: tuple[int, int, int], elapsed_s: float,
                            jpegs: tuple[bytes, bytes] | None) -> None:
        """A plan of one window that is exactly the output: this segment *is* ``output.mp4``. Store
        it there with its previews and complete the job here (``functions.stitch.finish``), as stitch
        would after a server-side copy, without the chain and stitch hops. The same events, in the
        same order (``job.segment_completed``, then ``job.succeeded``), from one status write.

        The thumbnail and spritesheet come from the rendered frames (``jpegs``; from a decode of the
        output if those could not be made). No ``output.tail.npy`` (contract v1.7): an extension of a
        one-window output decodes its last frames from it (a decode of one window, ~4 ms of CPU per
        job saved here, where it would compete with the next render)."""
        j = active.job
        job, job_id = j.job, j.job.job_id
        assert self.ports is not None
        frames_n, height, width = shape
        key = output_key(job_id)
        previews_of = (store_jpegs(self.ports, job_id, *jpegs) if jpegs is not None
                       else store_previews(self.ports, job_id, data, tail_frames_for(job.model), frames_n, tail=False))
        ref, previews, (url, expires) = await asyncio.gather(
            self.storage.put_atomic(key, data, "video/mp4"), previews_of,
            self.storage.presign_get(key, job.presign_ttl_s))
        done = SegmentCompletedData(segment=j.index, segments_total=j.count, object=ref, frames=frames_n,
                                    elapsed_s=round(elapsed_s, 3))
        segment_done = JobEvent.build(job_id, EventType.SEGMENT_COMPLETED, done, j.index,
                                      *revision_tag(j.plan_revision))
        output = output_info(job, ref, hashlib.sha256(data).hexdigest(), frames_n, width, height)
        # a job cancelled meanwhile: no events, the guard in complete() deletes what was stored
        await complete(self.ports, job, output, url, expires, previews, 1, by=STAGE, segment_done=segment_done)
        await active.item.ack()
        log.info("segment_done", job_id=job_id, segment=j.index, of=j.count, frames=frames_n, bytes=len(data),
                 elapsed_s=round(elapsed_s, 3), completed_job=True)

    # ---- spool and render budget ----------------------------------------------------------
    def spool_full(self) -> bool:
        return (len(self._finishing) >= self.settings.runner_spool_segments
                or self._spool_bytes >= self.settings.runner_spool_bytes)

    def begin_render(self, active: Active) -> None:
        """Count this render in KV ``videogen-renders`` (the segment's own budget) as the model starts.

        Off the critical path: the increment runs on the I/O thread while compute starts; a
        failure report waits for it (``_counted``) before deciding whether it was the last try."""
        active.counting = self.spawn(self._begin_render(active))

    async def _counted(self, active: Active) -> None:
        if active.counting is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.wrap_future(active.counting), 30)

    async def _begin_render(self, active: Active) -> None:
        j = active.job
        n = await self.attempts.begin(j.job.job_id, j.index, j.plan_revision)
        active.item.attempts = n
        active.item.max_attempts = RENDER_ATTEMPTS
        if n > 1:
            log.info("segment_render_retry", job_id=j.job.job_id, segment=j.index, render=n, of=RENDER_ATTEMPTS,
                     delivery=active.item.num_delivered)

    async def _already_done(self, item: WorkItem, j: SegmentJob) -> bool:
        """A redelivered segment whose result an earlier delivery stored (it died before its ack,
        or its ack was lost): hand it off again (de-duplicated by msg id) instead of rendering."""
        try:
            raw = await self.storage.get_bytes(segment_result_key(j.job.job_id, j.index))
            result = SegmentResult.model_validate_json(raw)
        except Exception:
            return False
        if result.plan_revision != j.plan_revision or result.count != j.count:
            return False
        await self.bus.publish(SUBJECT_WORK_SEGMENT_DONE, result,
                               msg_id=segment_done_msg_id(j.job.job_id, j.index, j.plan_revision))
        await item.ack()
        log.info("segment_already_stored", job_id=j.job.job_id, segment=j.index, delivery=item.num_delivered)
        return True

    async def _presence_loop(self) -> None:
        assert self.presence is not None
        while True:
            try:
                await self.presence.announce(busy=bool(self._finishing))
            except Exception as e:
                log.warning("presence_failed", error=str(e)[:200])
            await asyncio.sleep(RUNNER_PRESENCE_S)

    def fail(self, active: Active, err: BaseException) -> None:
        self.call(self._fail(active, err), timeout=60)

    async def _fail(self, active: Active, err: BaseException) -> None:
        """A model error: retry on another delivery unless permanent or out of attempts (then
        job.failed; out of attempts also dead-letters the segment so it can be replayed)."""
        verr = err if isinstance(err, VideogenError) else Retryable(str(err), code=ErrorCode.MODEL_ERROR)
        await self._counted(active)
        try:
            await active.item.fail(verr, retry_delay_s=5 * active.item.num_delivered)
        finally:
            self._release(active)

    async def _record_failure(self, payload: bytes, err: VideogenError, item: WorkItem) -> bool:
        """The runner's failure hook (permanent or exhausted): ``job.failed`` for the segment's job."""
        assert self.tracker is not None
        try:
            j = SegmentJob.model_validate_json(payload)
        except ValueError:
            return False  # not a segment job: nothing to attach the failure to (DLQ only)
        await self.tracker.record(JobEvent.build(
            j.job.job_id, EventType.FAILED,
            FailedData(code=err.code.value, message=f"runner: {err}", retryable=err.retryable), STAGE, j.index))
        return True

    def abandon(self, active: Active) -> None:
        """The job was cancelled mid-segment: ack (nothing to redo) and stop watching."""
        self.call(self._abandon(active), timeout=60)

    async def _abandon(self, active: Active) -> None:
        await active.item.ack()
        self._release(active)

    def hand_back(self, active: Active, delay_s: float = 0.0) -> None:
        """Give the segment back unfinished (shutdown, out of memory): redelivered after ``delay_s``;
        on its last delivery the job fails (retryable) and the segment is dead-lettered instead."""
        self.call(self._hand_back(active, delay_s), timeout=30)

    async def _hand_back(self, active: Active, delay_s: float) -> None:
        await self._counted(active)
        try:
            await active.item.hand_back(delay_s, reason=f"segment {active.job.index} handed back")
        finally:
            self._release(active)

    def replan(self, active: Active, max_window_frames: int, reason: str) -> None:
        """The segment does not fit this GPU: ask the planner for shorter windows from here on,
        then ack it (the planner also deletes it, should this runner die before the ack)."""
        self.call(self._replan(active, max_window_frames, reason), timeout=60)

    async def _replan(self, active: Active, max_window_frames: int, reason: str) -> None:
        j = active.job
        hint = ReplanHint(
            index=j.index, plan_revision=j.plan_revision, failed_frames=j.frames, max_window_frames=max_window_frames,
            reason=reason[:500], runner=self.runner_id, segment_seq=active.item.stream_seq,
            condition=j.condition,
        )
        try:
            await self.bus.publish(SUBJECT_WORK_PLAN, PlanRequest(job=j.job, replan=hint),
                                   msg_id=replan_msg_id(j.job.job_id, j.index, j.plan_revision))
        except Exception as e:  # the bus is down: retry the segment later as it is
            log.error("replan_request_failed", job_id=j.job.job_id, segment=j.index, error=str(e))
            await self._hand_back(active, 10.0)
            return
        await active.item.ack()
        self._release(active)
        log.warning("segment_replan_requested", job_id=j.job.job_id, segment=j.index, frames=j.frames,
                    max_window_frames=max_window_frames, revision=j.plan_revision, reason=reason)

    @staticmethod
    def _release(active: Active) -> None:
        active.item.stop_heartbeat()
        if active.watcher is not None:
            active.watcher.cancel()

    def pending_uploads(self) -> int:
        return len(self._uploads)

