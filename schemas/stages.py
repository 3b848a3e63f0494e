"""Every CPU stage, described once as data: what it drains, which code handles it, how it fails.

Read by ``runtime.service`` (which runs stages: it loads ``handler`` by its dotted path, so
``runtime`` never imports ``functions`` at module level), by ``functions.sweeper`` (which stage a
stranded message belongs to, whether losing it fails the job), by the CLI (the stage list) and by
``infra/tools`` (one Deployment and KEDA scaler per stage, its S3 access). Adding a stage is one
entry here plus its handler module (and, for infra, an access entry in ``infra/tools/stage_access.py``).

``handler`` is ``"package.module:attribute"`` (as in arq's ``func("pkg.mod:fn")``):

- a consumer stage (``spec`` set): an ``async def handle(payload: bytes, delivery, ports)``;
- a periodic stage (``spec is None``, ``interval_s`` > 0): a factory ``(ports) -> ticker``
  whose ``async tick()`` ``runtime.service.PeriodicLoop`` calls every ``interval_s`` seconds.

Depends on the standard library and ``schemas.names`` only.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import names

RUNNER_STAGE = "runner"
"""The GPU runner (``gpu_runner``, launched by torchrun): a stage of the pipeline, not of this table."""


@dataclass(frozen=True)
class StageDef:
    name: str
    handler: str  # "package.module:attribute"
    spec: names.ConsumerSpec | None = None  # the durable consumer it drains (``names.CPU_CONSUMERS``); None: periodic
    rejects: bool = False  # permanent failures are job.rejected (the door) rather than job.failed
    concurrency: int = 1  # messages handled at once per process
    records_failures: bool = True  # False: failures only go to the DLQ (e.g. webhook must not fail jobs)
    interval_s: float = 0.0  # periodic stages: seconds between ticks

    def __post_init__(self) -> None:
        module, sep, attr = self.handler.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"stage {self.name}: handler {self.handler!r} is not 'package.module:attribute'")
        if (self.spec is None) == (self.interval_s <= 0):
            raise ValueError(f"stage {self.name}: exactly one of spec and interval_s > 0 must be set")
        if self.concurrency < 1:
            raise ValueError(f"stage {self.name}: concurrency must be >= 1")

    @property
    def periodic(self) -> bool:
        return self.spec is None

    @property
    def handler_module(self) -> str:
        return self.handler.partition(":")[0]

    @property
    def handler_attr(self) -> str:
        return self.handler.partition(":")[2]



_TABLE: tuple[StageDef, ...] = (
    StageDef("preprocess", "functions.preprocess.handler:handle_submit", names.CONSUMER_PREPROCESS,
             rejects=True, concurrency=2),
    # frames [a, b) of a long animate job, for whichever preprocess worker holds its submission (it joins them)
    StageDef("preprocess-part", "functions.preprocess.parts:handle_part", names.CONSUMER_PREPROCESS_PART,
             concurrency=1),
    StageDef("planner", "functions.planner.handler:handle_plan", names.CONSUMER_PLANNER, concurrency=4),
    StageDef("chain", "functions.chain.handler:handle_segment_done", names.CONSUMER_CHAIN, concurrency=4),
    StageDef("stitch", "functions.stitch.handler:handle_stitch", names.CONSUMER_STITCH, concurrency=2),
    # a failed delivery must not fail the job it reports on: failures only go to the DLQ
    StageDef("webhook", "functions.webhook.handler:handle_event", names.CONSUMER_WEBHOOK,
             concurrency=32, records_failures=False),
    StageDef("webhook-replay", "functions.webhook.handler:handle_replay", names.CONSUMER_WEBHOOK_REPLAY,
             concurrency=4, records_failures=False),
    # a bad cancel request must not fail the job it names: failures only go to the DLQ
    StageDef("cancel", "functions.cancel.handler:handle_cancel", names.CONSUMER_CANCEL,
             concurrency=4, records_failures=False),
    StageDef("queue", "functions.queue.handler:QueueTracker", interval_s=1.0),
    # answers videogen[.t.<tenant>].status|history.<job_id> (what tenant accounts read instead of KV/streams)
    StageDef("status", "functions.status.handler:StatusResponder", interval_s=30.0),
    # records its own job.failed (the stranded message's stage decides); its own failures: DLQ only
    StageDef("sweeper", "functions.sweeper.handler:handle_advisory", names.CONSUMER_SWEEPER,
             concurrency=2, records_failures=False),
)

STAGES: dict[str, StageDef] = {s.name: s for s in _TABLE}
"""Every CPU stage by name, in pipeline order (``videogen functions`` runs them all by default)."""


def consumer_stages() -> dict[str, names.ConsumerSpec]:
    """Stages that drain a durable consumer: name => the consumer (what its KEDA scaler watches)."""
    return {name: st.spec for name, st in STAGES.items() if st.spec is not None}


def periodic_stages() -> dict[str, float]:
    """Stages that tick on a timer instead of draining a consumer: name => interval (s)."""
    return {name: float(st.interval_s) for name, st in STAGES.items() if st.periodic}


def stage_of_consumer(durable: str) -> str | None:
    """The stage draining durable consumer ``durable`` (``runner-<model>`` => ``runner``); None: unknown."""
    if durable.startswith(f"{RUNNER_STAGE}-"):
        return RUNNER_STAGE
    for name, st in STAGES.items():
        if st.spec is not None and st.spec.durable == durable:
            return name
    return None
