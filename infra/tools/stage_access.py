"""Least-privilege S3 access per pipeline stage, derived from the key layout in ``schemas.names``.

This is the single source for every object-store policy the infrastructure creates:
``gen_infra.py`` renders it into the Terraform module ``s3-stage-policies`` (used by both the
in-cluster MinIO and the AWS S3 modules) and into ``minio/policies/*.json`` (local MinIO).

Key patterns are built by calling the schema's own key functions with ``*`` for the job id,
file name and segment index, so a change of layout in ``schemas/names.py`` changes the policies.
A pattern in an IAM resource ARN matches across ``/``, so ``jobs/*/inputs/*`` also covers
``jobs/<id>/inputs/<name>.tmp-<token>`` (the temporary key of an atomic upload).

Who reads and writes what (from the handlers in functions/ and gpu_runner/io.py):

==============  ============================================  ============================================
stage           reads (plus everything it writes)             writes (Put + Delete of its temp objects)
==============  ============================================  ============================================
preprocess      inputs, frames, keypoints, client uploads,    inputs (request.json, media), frames, keypoints
                an extension's source output + output.tail
preprocess-part inputs (the stored video), frames, keypoints  frames, keypoints (chunks, parts/); cleans up
planner         plan.json (idempotent re-plan)                plan.json
chain           plan.json, segment results (<k>.json)         - ; cleans up a job cancelled meanwhile
runner          inputs, frames, keypoints, segment tails      segments: <k>.mp4, <k>.tail.npy, <k>.json;
                                                              a one-window job's output.mp4 + previews
stitch          segment videos, output.mp4 (server copy),     output.mp4, thumbnail.jpg, spritesheet.jpg,
                an extension's inputs/source.mp4              output.tail.npy
gateway         request.json, output.mp4 (presigns it),       request.json, uploads/<id>/*, previews;
                previews; lists jobs/ and uploads/            deletes jobs/<id>/* and uploads/<id>/*
webhook         inputs/request.json (the job's subscription)  -
webhook-replay  inputs/request.json                           -
cancel          - (lists jobs/<id>/)                          - ; deletes under jobs/ but never request.json
queue           -                                             -  (reads the NATS stream only)
sweeper         -                                             -  (NATS only: advisories, DLQ, job status)
status          -                                             -  (NATS only: KV status, stored events)
provision       bucket metadata                               bucket, lifecycle rule (``videogen up`` only)
==============  ============================================  ============================================

Every stage that reads may ``s3:ListBucket`` under ``jobs/`` only: without it S3 answers a GET or
HEAD on a missing key with 403 instead of 404, and the handlers' ``ObjectNotFound`` paths (e.g. the
webhook's "rejected before its request was stored") would turn into errors. Client-provided
``s3://`` inputs are readable by preprocess only under ``uploads/`` of the videogen bucket.

Which stages are deployed is not decided here: a CPU function is whatever ``videogen functions
<stage>`` can run (``schemas.stages.STAGES``), plus the GPU runner. An entry for a stage the
service does not (yet) have is inert; a stage without an entry fails ``tfcheck.py``, so adding a
stage forces a deliberate access decision. ``internet`` marks the stages whose NetworkPolicy opens
public-internet egress (https inputs, client webhook endpoints).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from schemas import names, stages

ANY = "*"
# Objects a client uploads itself and references as s3://<bucket>/uploads/... in a JobRequest
# (i2v image, animate driving video). Only preprocess reads them.
CLIENT_UPLOADS_PREFIX = "uploads/"
# Files uploaded with an HTTP create: uploads/<video id>/<field><ext>, gateway ids start with "video_"
# (gateway/videos.py), so the gateway's user can neither overwrite nor delete a client's own uploads.
GATEWAY_UPLOADS = CLIENT_UPLOADS_PREFIX + "video_" + ANY
LIFECYCLE_RULE_ID = "videogen-expire-jobs"  # same id as runtime.storage.put_lifecycle_expiry


def jobs_prefix() -> str:
    """``jobs/``: the first path element of every per-job key (what the lifecycle rule expires)."""
    return names.job_prefix(ANY).split("/", 1)[0] + "/"


def _with_temp(*keys: str) -> tuple[str, ...]:
    out: list[str] = []
    for k in keys:
        out.append(k)
        if not k.endswith(ANY):  # a trailing * already covers "<key>.tmp-<token>"
            out.append(names.temp_key(k, ANY))
    return tuple(dict.fromkeys(out))


def _patterns() -> dict[str, tuple[str, ...]]:
    # every tenant's jobs live under jobs/<job key>/ (schemas.names.job_prefix), so one pattern covers all
    return {
        "request": (names.request_key(ANY),),
        "inputs": _with_temp(names.input_key(ANY, ANY)),
        "frames": _with_temp(names.frames_key(ANY, ANY)),
        "keypoints": _with_temp(names.keypoints_key(ANY, ANY)),
        "plan": _with_temp(names.plan_key(ANY)),
        "segment_video": _with_temp(names.segment_key(ANY, ANY)),
        "segment_tail": _with_temp(names.segment_tail_key(ANY, ANY)),
        "segment_result": _with_temp(names.segment_result_key(ANY, ANY)),
        "output": _with_temp(names.output_key(ANY)),
        "previews": (names.thumbnail_key(ANY), names.spritesheet_key(ANY)),
        "output_tail": (names.output_tail_key(ANY),),
        "extend_source": (names.extend_source_key(ANY),),
        # the default tenant's uploads/… and every other tenant's tenants/<t>/uploads/…
        "uploads": (CLIENT_UPLOADS_PREFIX + ANY, names.uploads_prefix(ANY) + ANY),
    }


@dataclass(frozen=True)
class StageAccess:
    stage: str
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    delete: tuple[str, ...] = ()  # DeleteObject only (cleanup of a cancelled job)
    keep: tuple[str, ...] = ()  # explicit Deny of DeleteObject (the job's record survives cleanup)
    list_prefixes: tuple[str, ...] = ()
    bucket_admin: bool = False
    internet: bool = False
    deployed: bool = True  # set by stage_access(): is it a Kubernetes workload?

    def __post_init__(self) -> None:
        # A writer reads what it writes: Storage.put_atomic copies the temp object onto the key
        # (GetObject on the source) and Storage.copy HEADs the result (GetObject on the key).
        object.__setattr__(self, "read", tuple(dict.fromkeys(self.read + self.write)))

    @property
    def needs_credentials(self) -> bool:
        return bool(self.read or self.write or self.delete or self.list_prefixes or self.bucket_admin)


RUNNER = stages.RUNNER_STAGE
PROVISION = "provision"
GATEWAY = "gateway"  # the HTTP edge (infra/terraform/modules/videogen/gateway.tf): no consumer, deployed


def function_stages() -> dict[str, names.ConsumerSpec]:
    """Consumer stages ``videogen functions <stage>`` can run, with the consumer each drains."""
    return stages.consumer_stages()


def periodic_stages() -> dict[str, float]:
    """Stages that tick on a timer instead of draining a consumer: name => interval (s)."""
    return stages.periodic_stages()


def deployable() -> set[str]:
    return set(function_stages()) | set(periodic_stages()) | {RUNNER, GATEWAY}


def stage_access() -> dict[str, StageAccess]:
    p = _patterns()

    def cat(*groups: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(k for g in groups for k in p[g]))

    jobs = (jobs_prefix(),)
    cleanup: dict[str, Any] = {"delete": (names.job_prefix(ANY) + ANY,), "keep": cat("request")}
    entries = (
        # preprocess also reads an extension's source (output.mp4 copied server-side, output.tail.npy), plans a
        # t2v job itself (plan.json) and, like the planner, cleans up a job cancelled while it wrote
        StageAccess("preprocess", read=cat("inputs", "frames", "keypoints", "uploads", "output", "output_tail"),
                    write=cat("inputs", "frames", "keypoints", "plan"),
                    list_prefixes=jobs + (CLIENT_UPLOADS_PREFIX, names.uploads_prefix(ANY)), internet=True,
                    **cleanup),
        # a part of a long animate job: reads the stored driving video, writes its chunks and part record; it
        # also cleans up a job cancelled while it wrote
        StageAccess("preprocess-part", read=(names.input_key(ANY, "video.*"), *cat("frames", "keypoints")),
                    write=cat("frames", "keypoints"),
                    list_prefixes=jobs, **cleanup),
        # planner, chain, runner and stitch also clean up a job cancelled while they wrote (write, then
        # check status, then delete: runtime.jobs.discard_partial_objects), never request.json
        StageAccess("planner", read=cat("plan"), write=cat("plan"), list_prefixes=jobs, **cleanup),
        StageAccess("chain", read=cat("plan", "segment_result"), list_prefixes=jobs, **cleanup),
        # the runner also completes a job whose plan is one window that is exactly the output
        # (functions.stitch.finish.finishes_in_runner): output.mp4 and its previews (no output.tail.npy, v1.7)
        StageAccess(RUNNER, read=cat("inputs", "frames", "keypoints", "segment_tail"),
                    write=cat("segment_video", "segment_tail", "segment_result", "output", "previews"),
                    list_prefixes=jobs, **cleanup),
        StageAccess("stitch", read=cat("segment_video", "output", "extend_source"),
                    write=cat("output", "previews", "output_tail"), list_prefixes=jobs, **cleanup),
        # the HTTP gateway (gateway/app.py): request.json at create, uploads/<video id>/<file>, previews for
        # jobs stitched before stitch made them; reads + presigns output.mp4; DELETE /v1/videos/{id}
        # removes jobs/<id>/ (request.json included) and uploads/<id>/
        StageAccess(GATEWAY, read=cat("request", "output", "previews"),
                    write=cat("request", "previews") + (GATEWAY_UPLOADS,),
                    delete=(*cleanup["delete"], GATEWAY_UPLOADS),
                    list_prefixes=jobs + (CLIENT_UPLOADS_PREFIX,)),
        StageAccess("webhook", read=cat("request"), list_prefixes=jobs, internet=True),
        StageAccess("webhook-replay", read=cat("request"), list_prefixes=jobs, internet=True),
        StageAccess("cancel", delete=cleanup["delete"], keep=cat("request"), list_prefixes=jobs),
        StageAccess("queue"),
        StageAccess("sweeper"),
        StageAccess("status"),  # answers tenants' status/history requests from KV and the events stream only
        StageAccess(PROVISION, bucket_admin=True),
    )
    can_run = deployable()
    entries = tuple(replace(st, deployed=st.stage in can_run) for st in entries)
    return {s.stage: s for s in entries}


# ---- IAM policy documents (the same JSON the Terraform module builds) -----------------------
READ_ACTIONS = ("s3:GetObject",)
WRITE_ACTIONS = ("s3:PutObject", "s3:DeleteObject")
DELETE_ACTIONS = ("s3:DeleteObject",)
LIST_ACTIONS = ("s3:ListBucket",)
ADMIN_ACTIONS = (
    "s3:CreateBucket",
    "s3:ListBucket",
    "s3:GetBucketLocation",
    "s3:GetLifecycleConfiguration",
    "s3:PutLifecycleConfiguration",
)


def policy_statements(access: StageAccess, bucket: str, partition: str = "aws") -> list[dict]:
    arn = f"arn:{partition}:s3:::{bucket}"
    out: list[dict] = []
    if access.read:
        out.append({"Sid": "ReadObjects", "Effect": "Allow", "Action": list(READ_ACTIONS),
                    "Resource": [f"{arn}/{k}" for k in access.read]})
    if access.write:
        out.append({"Sid": "WriteObjects", "Effect": "Allow", "Action": list(WRITE_ACTIONS),
                    "Resource": [f"{arn}/{k}" for k in access.write]})
    if access.delete:
        out.append({"Sid": "DeleteObjects", "Effect": "Allow", "Action": list(DELETE_ACTIONS),
                    "Resource": [f"{arn}/{k}" for k in access.delete]})
    if access.keep:
        out.append({"Sid": "KeepJobRecord", "Effect": "Deny", "Action": list(DELETE_ACTIONS),
                    "Resource": [f"{arn}/{k}" for k in access.keep]})
    if access.list_prefixes:
        out.append({"Sid": "ListJobKeys", "Effect": "Allow", "Action": list(LIST_ACTIONS),
                    "Resource": [arn],
                    "Condition": {"StringLike": {"s3:prefix": [f"{p}{ANY}" for p in access.list_prefixes]}}})
    if access.bucket_admin:
        out.append({"Sid": "ProvisionBucket", "Effect": "Allow", "Action": list(ADMIN_ACTIONS),
                    "Resource": [arn]})
    return out


def policy_document(access: StageAccess, bucket: str, partition: str = "aws") -> dict:
    return {"Version": "2012-10-17", "Statement": policy_statements(access, bucket, partition)}


def render_json(doc: dict) -> str:
    return json.dumps(doc, indent=2) + "\n"
