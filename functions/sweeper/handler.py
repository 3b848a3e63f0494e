"""sweeper: messages that reached their consumer's ``max_deliver`` without being acked or terminated.

in:  ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`` (captured in the stream
     ``VIDEOGEN_ADVISORIES``; JetStream publishes one when it would deliver such a message again)
out: ``videogen.dlq.<stage>`` entry with the original payload; ``job.failed`` (``max_deliveries``,
     retryable) for stages whose failure ends the job; the message deleted from a work-queue stream

A stage that *handles* its last delivery dead-letters the message itself (``runtime.consumer``,
``gpu_runner.io``). What is left for the sweeper is a worker that died on it: a runner killed on
every delivery of a segment (a crash the segment itself causes), a function OOM-killed, a pod
evicted past its grace period. Without the sweeper such a message would sit in its work queue
forever (counted as lag, keeping a scaled-to-zero pool awake) and its job would stay ``running``.
"""

from __future__ import annotations

from runtime.logging import get_logger
from runtime.ports import Ports
from runtime.work import WorkItem, dead_letter, job_id_of
from schemas.errors import ErrorCode
from schemas.messages import EventType, FailedData, JobEvent, MaxDeliveriesAdvisory, valid_job_key
from schemas.names import STREAMS, SWEPT_STREAMS, job_key_for
from schemas.stages import RUNNER_STAGE, STAGES, stage_of_consumer

log = get_logger(stage="sweeper")

_WORK_QUEUES = frozenset(s.name for s in STREAMS if s.retention == "workqueue")


def stage_of(consumer: str) -> str:
    """The stage a durable consumer belongs to (``runner-<model>`` -> ``runner``)."""
    return stage_of_consumer(consumer) or consumer


def fails_job(stage: str) -> bool:
    """A lost message of these stages ends its job; webhook/cancel failures never fail a job."""
    if stage == RUNNER_STAGE:
        return True
    st = STAGES.get(stage)
    return st is not None and st.records_failures


async def handle_advisory(payload: bytes, delivery: WorkItem, ports: Ports) -> None:
    adv = MaxDeliveriesAdvisory.model_validate_json(payload)
    if adv.stream not in SWEPT_STREAMS:
        log.info("advisory_ignored", stream=adv.stream, consumer=adv.consumer)
        return
    raw = await ports.bus.get_message(adv.stream, adv.stream_seq)
    if raw is None:
        # acked at the last moment, deleted by a canceller, or swept before: nothing is stranded
        log.info("stranded_message_gone", stream=adv.stream, consumer=adv.consumer, stream_seq=adv.stream_seq)
        return
    data = raw.data
    stage = stage_of(adv.consumer)
    reason = (f"{adv.consumer}: no worker finished it in {adv.deliveries} deliveries "
              "(the worker crashed, was killed or timed out on each)")
    job_id = job_id_of(data)
    job_id = job_key_for(raw.subject, job_id) if job_id is not None else None  # a tenant's submit: its key
    # the DLQ entry first: once the job is failed or the message deleted, this is the only copy
    await dead_letter(ports.bus, stage, subject=raw.subject, data=data, headers=raw.headers,
                      stream_seq=adv.stream_seq, num_delivered=adv.deliveries,
                      code=ErrorCode.MAX_DELIVERIES.value, reason=reason)
    if job_id is not None and valid_job_key(job_id) and fails_job(stage):
        failed = FailedData(code=ErrorCode.MAX_DELIVERIES.value, message=f"{stage}: {reason}", retryable=True)
        # same event id as a handler's own exhaustion (runtime.failures): one job.failed either way
        await ports.tracker.record(JobEvent.build(job_id, EventType.FAILED, failed, stage, "exhausted"))
    if adv.stream in _WORK_QUEUES:
        await ports.bus.delete_message(adv.stream, adv.stream_seq)  # False: gone meanwhile
    log.warning("stranded_message_swept", stream=adv.stream, consumer=adv.consumer, stream_seq=adv.stream_seq,
                deliveries=adv.deliveries, stage=stage, job_id=job_id)
