"""Every NATS subject, stream, consumer, KV bucket and S3 key layout — defined once.

Public names (see docs/CONTRACT.md) must not change without a version bump. Internal names live
under ``videogen.`` too and may change freely between releases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

CONTRACT_VERSION = "1"

# ---- public subjects -------------------------------------------------------------------
SUBJECT_SUBMIT = "videogen.jobs.submit"
SUBJECT_CANCEL = "videogen.jobs.cancel"
SUBJECT_EVENTS_PREFIX = "videogen.events"
SUBJECT_DLQ_PREFIX = "videogen.dlq"

# ---- internal subjects (stage hand-offs) -------------------------------------------------
SUBJECT_WORK_PLAN = "videogen.work.plan"  # preprocess -> planner: job ready to plan; runner -> planner: re-plan
SUBJECT_WORK_SEGMENT_DONE = "videogen.work.segment_done"  # runner -> planner: chain next
SUBJECT_WORK_STITCH = "videogen.work.stitch"  # planner -> stitch: all segments rendered
SUBJECT_WORK_PREPROCESS_PART = "videogen.work.preprocess_part"  # preprocess -> preprocess-part: frames [a, b) of a job
SUBJECT_SEGMENTS_PREFIX = "videogen.segments"  # planner -> runner, one subject per model

# ---- internal subjects (webhook dispatcher records) ---------------------------------------
SUBJECT_WEBHOOKS_PREFIX = "videogen.webhooks"
SUBJECT_WEBHOOK_ATTEMPTS_PREFIX = "videogen.webhooks.attempts"  # .<job_id>.<event_id>: one WebhookAttempt per attempt
SUBJECT_WEBHOOK_DISABLED_PREFIX = "videogen.webhooks.disabled"  # .<job_id>: WebhookDisabled (410 Gone seen)
SUBJECT_WEBHOOK_REPLAY_PREFIX = "videogen.webhooks.replay"  # .<job_id>: a JobEvent to deliver again

# ---- tenants (issue 13): who a message belongs to comes from its subject, never its payload ----
# A tenant is a NATS account (see runtime/accounts.py): it publishes and reads the public subjects
# above unchanged, and the broker maps them into the service account under ``videogen.t.<tenant>.``
# (submit, cancel, events, status). The ``default`` tenant keeps today's names and layout exactly.
DEFAULT_TENANT = "default"
TENANT_PATTERN = r"^[a-z][a-z0-9-]{0,30}$"
_TENANT_RE = re.compile(TENANT_PATTERN)
SUBJECT_TENANT_PREFIX = "videogen.t"
SUBJECT_STATUS_PREFIX = "videogen.status"  # request/reply: videogen.status.<job_id> -> JobStatus JSON
SUBJECT_EVENT_HISTORY_PREFIX = "videogen.history"  # request/reply: videogen.history.<job_id> -> [JobEvent]
RESERVED_TENANTS = frozenset({"service", "sys", "operator", "t"})


def valid_tenant(name: object) -> bool:
    return isinstance(name, str) and bool(_TENANT_RE.fullmatch(name)) and name not in RESERVED_TENANTS


def job_key(tenant: str, job_id: str) -> str:
    """The internal id of tenant ``tenant``'s job ``job_id``: every KV key, object key and internal
    subject is built from it. ``default``'s keys are its job ids (today's layout); another
    tenant's are ``<tenant>.<job_id>`` (job ids never contain a dot, so this never collides)."""
    return job_id if tenant == DEFAULT_TENANT else f"{tenant}.{job_id}"


def split_job_key(key: str) -> tuple[str, str]:
    """``(tenant, job_id)`` of an internal job key."""
    tenant, dot, job_id = key.partition(".")
    return (tenant, job_id) if dot else (DEFAULT_TENANT, key)


def tenant_of(key: str) -> str:
    return split_job_key(key)[0]


def public_job_id(key: str) -> str:
    """The job id its tenant knows (what events, webhooks and status replies carry)."""
    return split_job_key(key)[1]


def scoped_subject(tenant: str, tail: str) -> str:
    """``videogen.<tail>`` for ``default``, ``videogen.t.<tenant>.<tail>`` for another tenant."""
    return f"videogen.{tail}" if tenant == DEFAULT_TENANT else f"{SUBJECT_TENANT_PREFIX}.{tenant}.{tail}"


def all_tenants(tail: str) -> tuple[str, ...]:
    """Filters matching ``tail`` of every tenant (default's and the tenant-qualified form)."""
    return (f"videogen.{tail}", f"{SUBJECT_TENANT_PREFIX}.*.{tail}")


def submit_subject(tenant: str = DEFAULT_TENANT) -> str:
    return scoped_subject(tenant, "jobs.submit")


def cancel_subject(tenant: str = DEFAULT_TENANT) -> str:
    return scoped_subject(tenant, "jobs.cancel")


def status_subject(tenant: str, job_id: str) -> str:
    return f"{scoped_subject(tenant, 'status')}.{job_id}"


def history_subject(tenant: str, job_id: str) -> str:
    return f"{scoped_subject(tenant, 'history')}.{job_id}"


def _unscoped(subject: str) -> tuple[str, list[str]]:
    tokens = subject.split(".")
    if tokens[:2] == ["videogen", "t"] and len(tokens) > 3:
        return tokens[2], ["videogen", *tokens[3:]]
    return DEFAULT_TENANT, tokens


def tenant_of_subject(subject: str) -> str:
    """The tenant a subject belongs to (``videogen.t.<tenant>.…``; anything else: ``default``)."""
    return _unscoped(subject)[0]


def job_key_for(subject: str, job_id: str) -> str:
    """The internal key of ``job_id`` as named in a message on ``subject``: a public submit or
    cancel arriving under ``videogen.t.<tenant>.`` names the tenant's job; internal messages
    already carry keys."""
    tenant = tenant_of_subject(subject)
    return job_key(tenant, job_id) if tenant != DEFAULT_TENANT and "." not in job_id else job_id


_JOB_TOKEN = {"events": 2, "status": 2, "history": 2, "webhooks": 3}


def job_key_of_subject(subject: str) -> str | None:
    """The internal job key named by a job-scoped subject (events, status, webhook records), or None."""
    tenant, tokens = _unscoped(subject)
    if len(tokens) < 3 or tokens[0] != "videogen" or tokens[1] not in _JOB_TOKEN:
        return None
    pos = _JOB_TOKEN[tokens[1]]
    if len(tokens) <= pos or not tokens[pos]:
        return None
    return job_key(tenant, tokens[pos])


# ---- server advisories (published by JetStream itself, captured in VIDEOGEN_ADVISORIES) ------
# .<stream>.<consumer>: a message reached the consumer's max_deliver without being acked or
# terminated -- its worker died, hung or was killed on the last delivery. Nothing redelivers it.
ADVISORY_MAX_DELIVERIES_PREFIX = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"


def max_deliveries_subject(stream: str, consumer: str = "*") -> str:
    return f"{ADVISORY_MAX_DELIVERIES_PREFIX}.{stream}.{consumer}"


# ---- streams ------------------------------------------------------------------------------
STREAM_JOBS = "VIDEOGEN_JOBS"
STREAM_EVENTS = "VIDEOGEN_EVENTS"
STREAM_DLQ = "VIDEOGEN_DLQ"
STREAM_WORK = "VIDEOGEN_WORK"
STREAM_SEGMENTS = "VIDEOGEN_SEGMENTS"
STREAM_WEBHOOKS = "VIDEOGEN_WEBHOOKS"
STREAM_ADVISORIES = "VIDEOGEN_ADVISORIES"
# streams whose consumers' stranded messages the sweeper dead-letters
SWEPT_STREAMS = (STREAM_JOBS, STREAM_WORK, STREAM_SEGMENTS, STREAM_EVENTS, STREAM_WEBHOOKS)

# ---- key-value ----------------------------------------------------------------------------
KV_JOBS = "videogen-jobs"
KV_QUOTAS = "videogen-quotas"  # per tenant: its admitted in-flight jobs + recent submit times (preprocess, CAS)
KV_APIKEYS = "videogen-apikeys"  # HTTP gateway: sha256(api key) -> {tenant, ...}; never the key itself
# <model>.<runner_id> -> RunnerPresence, refreshed every RUNNER_PRESENCE_S by each live runner
# (rank 0's I/O thread); entries expire after RUNNER_PRESENCE_TTL_S (the runner died or hangs)
KV_RUNNERS = "videogen-runners"
# <job_id>.<index>.r<revision> -> how many times a runner *started rendering* the segment (see
# ``RENDER_ATTEMPTS``); deliveries that never reached the model do not count
KV_RENDERS = "videogen-renders"

# ---- S3 -----------------------------------------------------------------------------------
DEFAULT_BUCKET = "videogen"

# Header that makes JetStream publishes idempotent.
HEADER_MSG_ID = "Nats-Msg-Id"


def events_subject(job_id: str) -> str:
    """Events of a job, by its internal key (``default``: ``videogen.events.<job_id>``)."""
    tenant, jid = split_job_key(job_id)
    return f"{scoped_subject(tenant, 'events')}.{jid}"


def dlq_subject(stage: str) -> str:
    return f"{SUBJECT_DLQ_PREFIX}.{stage}"


def webhook_attempts_subject(job_id: str, event_id: str = "*") -> str:
    """Attempts of one event (or, with the default ``*``, a filter for every event of the job)."""
    tenant, jid = split_job_key(job_id)
    return f"{scoped_subject(tenant, 'webhooks.attempts')}.{jid}.{event_id}"


def webhook_disabled_subject(job_id: str) -> str:
    tenant, jid = split_job_key(job_id)
    return f"{scoped_subject(tenant, 'webhooks.disabled')}.{jid}"


def webhook_replay_subject(job_id: str) -> str:
    tenant, jid = split_job_key(job_id)
    return f"{scoped_subject(tenant, 'webhooks.replay')}.{jid}"


def runner_presence_key(model: str, runner_id: str) -> str:
    return f"{_kv_token(model)}.{_kv_token(runner_id)}"


def render_attempts_key(job_id: str, index: int, plan_revision: int = 0) -> str:
    return f"{_kv_token(job_id)}.{index}.r{plan_revision}"


def _kv_token(s: str) -> str:
    # KV keys: [-/_=.a-zA-Z0-9], '.' separates tokens
    return "".join(c if c.isalnum() or c in "-_=" else "_" for c in s)


def segments_subject(model: str) -> str:
    # NATS tokens may not contain '.', '*', '>' or whitespace; model names are [a-z0-9-_.]
    return f"{SUBJECT_SEGMENTS_PREFIX}.{model.replace('.', '_')}"


# ---- message ids (Nats-Msg-Id: JetStream drops a repeat within the stream's duplicate window) ----
def _revisioned(base: str, plan_revision: int) -> str:
    # revision 0 keeps the original ids; a re-planned segment k is a different message from the old k
    return base if plan_revision == 0 else f"{base}:r{plan_revision}"


def revision_tag(plan_revision: int) -> tuple[str, ...]:
    """Extra event-id discriminator for a re-planned segment's events (none for revision 0)."""
    return () if plan_revision == 0 else (f"r{plan_revision}",)


def segment_msg_id(job_id: str, index: int, plan_revision: int = 0) -> str:
    """planner -> runner: segment ``index`` of plan revision ``plan_revision``."""
    return _revisioned(f"seg:{job_id}:{index}", plan_revision)


def segment_done_msg_id(job_id: str, index: int, plan_revision: int = 0) -> str:
    """runner -> chain: segment ``index`` (of plan revision ``plan_revision``) rendered."""
    return _revisioned(f"done:{job_id}:{index}", plan_revision)


def replan_msg_id(job_id: str, index: int, plan_revision: int) -> str:
    """runner -> planner: segment ``index`` of revision ``plan_revision`` did not fit; re-plan."""
    return f"replan:{job_id}:{index}:r{plan_revision}"


# ---- object keys --------------------------------------------------------------------------
# ``default``: jobs/<job_id>/…, uploads/…  (today's layout); tenant t: jobs/<t>.<job_id>/…,
# tenants/<t>/uploads/… . Every key below takes the internal job key (see ``job_key``).
def tenant_prefix(tenant: str) -> str:
    return "" if tenant == DEFAULT_TENANT else f"tenants/{tenant}/"


def uploads_prefix(tenant: str = DEFAULT_TENANT) -> str:
    """Where tenant ``tenant`` uploads inputs it names as ``s3://<bucket>/<key>`` (the only place)."""
    return f"{tenant_prefix(tenant)}uploads/"


def job_prefix(job_id: str) -> str:
    """``jobs/<job key>/``: every tenant's job objects under one prefix (``jobs/acme.j1/`` for tenant
    acme's job j1; the default tenant's keys are its job ids), so the S3 grants, the listing
    permission and the bucket's expiry rule cover every tenant alike."""
    return f"jobs/{job_id}/"


def request_key(job_id: str) -> str:
    return f"{job_prefix(job_id)}inputs/request.json"


def input_key(job_id: str, name: str) -> str:
    return f"{job_prefix(job_id)}inputs/{name}"


def frames_key(job_id: str, name: str) -> str:
    return f"{job_prefix(job_id)}frames/{name}"


def keypoints_key(job_id: str, name: str) -> str:
    return f"{job_prefix(job_id)}keypoints/{name}"


def preprocess_part_key(job_id: str, part: int, ext: str = "json") -> str:
    """A finished preprocess part's record (``json``: chunks and counts, written last) and keypoint rows (``npy``)."""
    return keypoints_key(job_id, f"parts/part-{part:05d}.{ext}")


def preprocess_part_msg_id(job_id: str, part: int) -> str:
    return f"prep:{job_id}:p{part}"


def plan_key(job_id: str) -> str:
    return f"{job_prefix(job_id)}plan.json"


def segment_key(job_id: str, index: int) -> str:
    return f"{job_prefix(job_id)}segments/{index}.mp4"


def segment_tail_key(job_id: str, index: int) -> str:
    """Last overlap frames of a segment (uint8 .npy), the conditioning for the next one."""
    return f"{job_prefix(job_id)}segments/{index}.tail.npy"


def segment_result_key(job_id: str, index: int) -> str:
    """The runner's SegmentResult for segment ``index`` (JSON), read back by the stitch step."""
    return f"{job_prefix(job_id)}segments/{index}.json"


def output_key(job_id: str) -> str:
    return f"{job_prefix(job_id)}output.mp4"


def thumbnail_key(job_id: str) -> str:
    """The output's first frame (JPEG), written by stitch next to output.mp4."""
    return f"{job_prefix(job_id)}thumbnail.jpg"


def spritesheet_key(job_id: str) -> str:
    """Up to 25 evenly spaced output frames, 5 per row (JPEG), written by stitch."""
    return f"{job_prefix(job_id)}spritesheet.jpg"


def output_tail_key(job_id: str) -> str:
    """The output's last frames (uint8 .npy, written by stitch): what an extension is conditioned on."""
    return f"{job_prefix(job_id)}output.tail.npy"


def extend_source_key(job_id: str) -> str:
    """An extension's copy of its source's output.mp4 (stitched in front of the new frames)."""
    return input_key(job_id, "source.mp4")


def extend_condition_key(job_id: str) -> str:
    """An extension's condition: the source's last ``condition_frames`` frames (uint8 .npy)."""
    return input_key(job_id, "condition.npy")


def stream_prefix(job_id: str) -> str:
    """Where the job's HLS stream lives (playlist + media segments), under the job's objects."""
    return f"jobs/{job_id}/stream/"


def playlist_key(job_id: str) -> str:
    """The job's HLS playlist (``EXT-X-PLAYLIST-TYPE:EVENT``), rewritten as segments finish."""
    return f"{stream_prefix(job_id)}playlist.m3u8"


def stream_piece_key(job_id: str, index: int) -> str:
    """HLS media segment ``index`` (MPEG-TS): the output frames that became final with segment ``index``."""
    return f"{stream_prefix(job_id)}{index:05d}.ts"


def temp_key(final_key: str, token: str) -> str:
    """Upload target before an atomic finalise (copy) to ``final_key``."""
    return f"{final_key}.tmp-{token}"


# ---- stream / consumer topology -----------------------------------------------------------
@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    retention: str  # "limits" | "workqueue"
    max_age_s: int  # 0 = unlimited
    duplicate_window_s: int
    max_msg_size_bytes: int = 1 << 20
    storage: str = "file"
    description: str = ""
    max_bytes: int = 1 << 30  # the stream's disk budget (issue 13: no unbounded stream)
    discard: str = "old"  # at max_bytes: "old" drops history; "new" refuses publishes (work never dropped)


@dataclass(frozen=True)
class ConsumerSpec:
    stream: str
    durable: str
    filter_subject: str
    ack_wait_s: int
    max_deliver: int
    max_ack_pending: int = 64
    # Waits before redelivering a message whose ack timed out (a worker died or hung): entry n
    # after the n-th delivery. NATS then *replaces ack_wait by backoff_s[0]* (also the window an
    # in_progress heartbeat renews), so the first entry must be ack_wait_s: a shorter one redelivers
    # every message a worker holds longer than it, heartbeats or not. Failures a handler reports
    # are retried with the nak delay ``runtime.consumer`` computes, not with these.
    backoff_s: tuple[float, ...] = field(default_factory=tuple)
    description: str = ""
    extra_filters: tuple[str, ...] = ()  # more subjects it drains (other tenants' form of the same subject)

    @property
    def filters(self) -> tuple[str, ...]:
        return (self.filter_subject, *self.extra_filters)


DAY_S = 86_400

STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec(
        STREAM_JOBS,
        (SUBJECT_SUBMIT, SUBJECT_CANCEL, submit_subject("*"), cancel_subject("*")),
        retention="limits",
        max_age_s=7 * DAY_S,
        duplicate_window_s=3600,
        max_msg_size_bytes=256 * 1024,
        description="Client job submissions and cancellations (public).",
        max_bytes=1 << 30,
        discard="new",
    ),
    StreamSpec(
        STREAM_EVENTS,
        all_tenants("events.>"),
        retention="limits",
        max_age_s=7 * DAY_S,
        duplicate_window_s=3600,
        description="Every state change of every job, as JobEvent (public).",
        max_bytes=4 << 30,
    ),
    StreamSpec(
        STREAM_DLQ,
        (f"{SUBJECT_DLQ_PREFIX}.>",),
        retention="limits",
        max_age_s=30 * DAY_S,
        duplicate_window_s=120,
        max_msg_size_bytes=1 << 20,
        description="Messages a stage could not process, with reason and original payload.",
        max_bytes=1 << 30,
    ),
    StreamSpec(
        STREAM_WORK,
        (SUBJECT_WORK_PLAN, SUBJECT_WORK_SEGMENT_DONE, SUBJECT_WORK_STITCH, SUBJECT_WORK_PREPROCESS_PART),
        retention="workqueue",
        max_age_s=7 * DAY_S,
        duplicate_window_s=3600,
        description="Internal hand-offs between CPU stages (work queue).",
        max_bytes=1 << 30,
        discard="new",
    ),
    StreamSpec(
        STREAM_SEGMENTS,
        (f"{SUBJECT_SEGMENTS_PREFIX}.>",),
        retention="workqueue",
        max_age_s=7 * DAY_S,
        duplicate_window_s=3600,
        description="GPU segment jobs, one subject per model (work queue).",
        max_bytes=1 << 30,
        discard="new",
    ),
    StreamSpec(
        STREAM_WEBHOOKS,
        all_tenants("webhooks.>"),
        retention="limits",
        max_age_s=30 * DAY_S,  # longer than the whole retry schedule (~27.6 h) and the events stream
        duplicate_window_s=3600,
        max_msg_size_bytes=1 << 20,
        description="Webhook delivery records (one per attempt), disabled endpoints (410), replay requests.",
        max_bytes=2 << 30,
    ),
    StreamSpec(
        STREAM_ADVISORIES,
        tuple(max_deliveries_subject(s) for s in SWEPT_STREAMS),
        retention="limits",
        max_age_s=7 * DAY_S,
        duplicate_window_s=120,
        max_msg_size_bytes=64 * 1024,
        description="JetStream max-deliveries advisories of videogen's consumers (messages no worker finished).",
        max_bytes=256 << 20,
    ),
)

# The stages between a job's acceptance and its output (planner, chain, stitch) read and write S3
# on every message: their retries (nak 5 s doubling to 80 s, runtime.work.WorkItem.retry_delay_s)
# must outlast a 10-minute S3 outage (5+10+20+40+80x8 s = 715 s) before a job fails for it.
OUTAGE_MAX_DELIVER = 12

# A client's input URL or webhook host that keeps failing (timeouts, 5xx, DNS) is rejected after
# this many deliveries of its submission; a failure of our own storage or bus is retried for the
# whole OUTAGE_MAX_DELIVER budget, so a submission made during a 10-minute S3 outage still lands.
INPUT_ATTEMPTS = 5
CONSUMER_PREPROCESS = ConsumerSpec(
    STREAM_JOBS, "preprocess", SUBJECT_SUBMIT, ack_wait_s=60, max_deliver=OUTAGE_MAX_DELIVER,
    extra_filters=(submit_subject("*"),),
    backoff_s=(60, 120, 300, 600), description="Validates and preprocesses submissions.",
)
CONSUMER_PREPROCESS_PART = ConsumerSpec(
    STREAM_WORK, "preprocess-part", SUBJECT_WORK_PREPROCESS_PART, ack_wait_s=60, max_deliver=5,
    backoff_s=(60, 120, 300, 600), description="Preprocesses one part (whole 32-frame chunks) of a long animate job.",
)
CONSUMER_PLANNER = ConsumerSpec(
    STREAM_WORK, "planner", SUBJECT_WORK_PLAN, ack_wait_s=30, max_deliver=OUTAGE_MAX_DELIVER,
    backoff_s=(30, 60, 120, 300), description="Plans segments for a preprocessed job.",
)
CONSUMER_CHAIN = ConsumerSpec(
    STREAM_WORK, "chain", SUBJECT_WORK_SEGMENT_DONE, ack_wait_s=30, max_deliver=OUTAGE_MAX_DELIVER,
    backoff_s=(30, 60, 120, 300), description="Publishes segment k+1 when segment k is done.",
)
CONSUMER_STITCH = ConsumerSpec(
    STREAM_WORK, "stitch", SUBJECT_WORK_STITCH, ack_wait_s=120, max_deliver=OUTAGE_MAX_DELIVER,
    backoff_s=(120, 240, 480, 960), description="Joins segments into output.mp4 and completes the job.",
)
CONSUMER_WEBHOOK = ConsumerSpec(
    STREAM_EVENTS, "webhook", f"{SUBJECT_EVENTS_PREFIX}.>", ack_wait_s=30, max_deliver=9,
    extra_filters=(all_tenants("events.>")[1],),
    # an event waiting for its next attempt (nak with a delay of up to 10 h) keeps its ack-pending
    # slot: when this many wait, no new event is delivered to anyone (see functions/webhook/README.md)
    max_ack_pending=20_000, description="Delivers subscribed events to client webhooks.",
)

CONSUMER_WEBHOOK_REPLAY = ConsumerSpec(
    STREAM_WEBHOOKS, "webhook-replay", f"{SUBJECT_WEBHOOK_REPLAY_PREFIX}.>", ack_wait_s=30, max_deliver=9,
    extra_filters=(all_tenants("webhooks.replay.>")[1],),
    max_ack_pending=256, description="Delivers events again on request (`videogen webhooks replay`).",
)
CONSUMER_CANCEL = ConsumerSpec(
    STREAM_JOBS, "cancel", SUBJECT_CANCEL, ack_wait_s=60, max_deliver=5, extra_filters=(cancel_subject("*"),),
    backoff_s=(60, 120, 300, 600), description="Cancels queued and running jobs; deletes their partial objects.",
)
CONSUMER_SWEEPER = ConsumerSpec(
    STREAM_ADVISORIES, "sweeper", f"{ADVISORY_MAX_DELIVERIES_PREFIX}.>", ack_wait_s=30, max_deliver=5,
    backoff_s=(30, 60, 120, 300),
    description="Dead-letters messages whose worker died on the last delivery; fails their job.",
)


def runner_durable_for_subject(subject: str) -> str:
    """The runner consumer draining a ``videogen.segments.<model>`` subject (see ``runner_consumer``)."""
    return f"runner-{subject.rsplit('.', 1)[-1]}"


# ---- GPU runner failure detection (issue 16; docs: gpu_runner/README.md "Failure detection") ----
# A runner holding a segment sends in_progress every RUNNER_HEARTBEAT_S from rank 0's I/O thread
# (an asyncio loop of its own, never blocked by compute); a runner that died stops, and JetStream
# redelivers the segment RUNNER_ACK_WAIT_S after the last heartbeat.
RUNNER_ACK_WAIT_S = 10
RUNNER_HEARTBEAT_S = 3.0
# The segment's own budget: renders started (counted in KV_RENDERS before the model runs). A
# delivery to a runner that died idle, a failed input fetch or upload never reaches the model
# and costs nothing of it.
RENDER_ATTEMPTS = 3
# JetStream's max_deliver: only the outer bound (a segment that keeps failing before its render).
RUNNER_MAX_DELIVER = 30
# Runner presence (KV_RUNNERS): refreshed this often, gone this long after the last refresh.
RUNNER_PRESENCE_S = 3.0
RUNNER_PRESENCE_TTL_S = 15


@dataclass(frozen=True)
class KvSpec:
    """A KV bucket. Every bucket is created by ``Bus.provision`` (and by ``Bus.kv_bucket`` on
    first use) with ``Settings.nats_replicas`` replicas, like the streams: a bucket on one node
    of a cluster dies with that node. ``infra/tools/gen_infra.py`` emits the same table."""

    bucket: str
    description: str
    history: int = 1
    ttl_s: int | None = None  # entries expire after this; None: never
    status_ttl: bool = False  # entries expire after the deployment's Settings.status_ttl_s
    direct: bool = False  # reads by key on $JS.API.DIRECT.GET.<bucket stream>.<key> (permission-filterable)


KV_BUCKETS: tuple[KvSpec, ...] = (
    KvSpec(KV_JOBS, "latest JobStatus per job_id", history=5, status_ttl=True, direct=True),
    KvSpec(KV_RUNNERS, "live runners per model", ttl_s=RUNNER_PRESENCE_TTL_S),
    KvSpec(KV_RENDERS, "renders started per segment", status_ttl=True),
    KvSpec(KV_QUOTAS, "per-tenant admitted jobs and recent submissions (admission quotas)"),
    KvSpec(KV_APIKEYS, "HTTP gateway API keys: sha256(key) -> tenant"),
)
KV_SPECS: dict[str, KvSpec] = {k.bucket: k for k in KV_BUCKETS}


def runner_consumer(model: str) -> ConsumerSpec:
    """One durable work-queue consumer per model, shared by all runners serving it."""
    return ConsumerSpec(
        STREAM_SEGMENTS,
        f"runner-{model.replace('.', '_')}",
        segments_subject(model),
        ack_wait_s=RUNNER_ACK_WAIT_S,
        max_deliver=RUNNER_MAX_DELIVER,
        max_ack_pending=256,  # shared by all runners of the model; each pulls 1 at a time
        # no backoff list: every redelivery after a silent death waits RUNNER_ACK_WAIT_S (a
        # backoff entry would replace the ack wait, see ConsumerSpec.backoff_s)
        description=f"GPU runners serving model {model}.",
    )


CPU_CONSUMERS: tuple[ConsumerSpec, ...] = (
    CONSUMER_PREPROCESS,
    CONSUMER_PREPROCESS_PART,
    CONSUMER_PLANNER,
    CONSUMER_CHAIN,
    CONSUMER_STITCH,
    CONSUMER_WEBHOOK,
    CONSUMER_WEBHOOK_REPLAY,
    CONSUMER_CANCEL,
    CONSUMER_SWEEPER,
)
