"""NATS accounts: tenants the broker vouches for, one user per stage (issue 13; docs/SECURITY-DESIGN.md).

The embedded nats-server's ``accounts`` block is generated here from ``schemas.names`` and the
stage table, and written again (then ``nats-server --signal reload``) by ``videogen tenants add``:

- ``SERVICE``: JetStream, every stream and KV bucket. Users: ``service`` (the stack's own
  processes and the operator: provisioning, admin CLI), one user per stage (``stage_permissions``:
  only the subjects that stage needs), and ``default`` (the single-tenant namespace of
  ``videogen demo`` and the README: submit/cancel/replay of its own jobs on today's subjects plus
  read access to its events and status; no stream/KV management, no events/internal subjects).
- one account per tenant: no JetStream at all. It publishes ``videogen.jobs.submit`` /
  ``videogen.jobs.cancel`` unchanged and the broker hands them to SERVICE as
  ``videogen.t.<tenant>.jobs.…`` (service imports, ``account_token_position`` pins the tenant
  token to the importing account's name); it receives ``videogen.events.<job_id>`` of its own
  jobs only (a stream import of ``videogen.t.<tenant>.events.>``) and asks
  ``videogen.status.<job_id>`` / ``videogen.history.<job_id>`` (answered by the ``status`` stage).
  Nothing else of SERVICE is visible to it.

Tenant registry: ``<data_dir>/tenants.json`` (0600): name -> NATS password + webhook secret(s).
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.trust import write_private_file
from schemas import names
from schemas.stages import STAGES

SERVICE_ACCOUNT = "SERVICE"
SYSTEM_ACCOUNT = "SYS"
SERVICE_USER = "service"
TENANTS_FILE = "tenants.json"
STAGE_USERS_FILE = "nats-stage-users.json"

def _kv_read(bucket: str) -> list[str]:
    stream = f"KV_{bucket}"
    return [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.API.STREAM.MSG.GET.{stream}", "$JS.API.INFO"]


def _kv_write(bucket: str) -> list[str]:
    stream = f"KV_{bucket}"
    return [f"$KV.{bucket}.>", *_kv_read(bucket),
            f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}.>",
            "$JS.FC.>"]  # watch (cancel waits on its job's key)


_KV_STREAM = f"KV_{names.KV_JOBS}"
_KV_READ = _kv_read(names.KV_JOBS)
_KV_WRITE = _kv_write(names.KV_JOBS)
_EVENTS = list(names.all_tenants("events.>"))


def _consume(spec: names.ConsumerSpec) -> list[str]:
    # CREATE: a stage brings its own durable up to its spec at start-up (runtime/work.py Puller.open);
    # only that durable, by name (with or without the filter subject nats-py appends)
    return [f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}",
            f"$JS.API.CONSUMER.INFO.{spec.stream}.{spec.durable}",
            f"$JS.API.CONSUMER.CREATE.{spec.stream}.{spec.durable}",
            f"$JS.API.CONSUMER.CREATE.{spec.stream}.{spec.durable}.>",
            f"$JS.ACK.{spec.stream}.{spec.durable}.>"]


def _stream_read(stream: str) -> list[str]:
    return [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.MSG.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}.>", "$JS.FC.>"]


# queue a segment (functions/planner/handler.py queue_segment): publish it, read the runners' backlog
_QUEUE_SEGMENT = [names.segments_subject("*"), *_stream_read(names.STREAM_SEGMENTS),
                  f"$JS.API.CONSUMER.INFO.{names.STREAM_SEGMENTS}.*"]

# What each stage publishes besides its own consumer, its DLQ, events and status (from its README).
_STAGE_EXTRA: dict[str, list[str]] = {
    # admission quotas (runtime/quotas.py); a t2v job is planned and its segment 0 queued here, as the planner does
    "preprocess": [names.SUBJECT_WORK_PLAN, names.SUBJECT_WORK_PREPROCESS_PART,
                   f"$KV.{names.KV_QUOTAS}.>", *_kv_read(names.KV_QUOTAS), *_QUEUE_SEGMENT],
    "preprocess-part": [],
    "planner": [names.SUBJECT_WORK_STITCH, *_QUEUE_SEGMENT],
    "chain": [names.segments_subject("*"), names.SUBJECT_WORK_STITCH, names.SUBJECT_WORK_PLAN],
    "stitch": [],
    "webhook": [*names.all_tenants("webhooks.attempts.>"), *names.all_tenants("webhooks.disabled.>"),
                *_stream_read(names.STREAM_WEBHOOKS), *_stream_read(names.STREAM_EVENTS)],
    "webhook-replay": [*names.all_tenants("webhooks.attempts.>"), *_stream_read(names.STREAM_WEBHOOKS),
                       *_stream_read(names.STREAM_EVENTS)],
    "cancel": [*_stream_read(names.STREAM_SEGMENTS), f"$JS.API.STREAM.MSG.DELETE.{names.STREAM_SEGMENTS}"],
    "queue": [f"$JS.API.CONSUMER.INFO.{names.STREAM_SEGMENTS}.*", *_stream_read(names.STREAM_SEGMENTS),
              *_kv_read(names.KV_RUNNERS), f"$JS.API.CONSUMER.CREATE.KV_{names.KV_RUNNERS}.>",
              f"$JS.API.STREAM.MSG.DELETE.{names.STREAM_SEGMENTS}"],  # live runners; no_runner drops the segment
    "sweeper": [*(r for s in names.SWEPT_STREAMS for r in _stream_read(s)),
                *(f"$JS.API.STREAM.MSG.DELETE.{s}" for s in names.SWEPT_STREAMS)],
    "status": [*_stream_read(names.STREAM_EVENTS)],
}


def stage_permissions(stage: str) -> dict[str, Any]:
    """NATS permissions of one stage's user: only the subjects it needs (generated, never hand-written)."""
    st = STAGES[stage]
    pub = [names.dlq_subject(stage), *_EVENTS, *_KV_WRITE, *_STAGE_EXTRA.get(stage, [])]
    if st.spec is not None:
        pub += _consume(st.spec)
    sub = ["_INBOX.>"]
    if stage == "status":
        sub += [*names.all_tenants("status.*"), *names.all_tenants("history.*")]
    return {"publish": {"allow": sorted(set(pub))}, "subscribe": {"allow": sub}}


def runner_permissions() -> dict[str, Any]:
    """The GPU runners' user: pull segments of any model, publish segment_done / re-plans, events, status."""
    pub = [f"$JS.API.CONSUMER.MSG.NEXT.{names.STREAM_SEGMENTS}.*", f"$JS.API.CONSUMER.INFO.{names.STREAM_SEGMENTS}.*",
           f"$JS.ACK.{names.STREAM_SEGMENTS}.>", names.SUBJECT_WORK_SEGMENT_DONE, names.SUBJECT_WORK_PLAN,
           names.dlq_subject("runner"), *_EVENTS, *_KV_WRITE,
           *_kv_write(names.KV_RUNNERS), *_kv_write(names.KV_RENDERS)]  # presence; renders started per segment
    return {"publish": {"allow": sorted(set(pub))}, "subscribe": {"allow": ["_INBOX.>"]}}


def default_tenant_permissions() -> dict[str, Any]:
    """The ``default`` tenant (today's single-tenant clients: README, ``videogen submit``, demo)."""
    pub = [names.SUBJECT_SUBMIT, names.SUBJECT_CANCEL, f"{names.SUBJECT_WEBHOOK_REPLAY_PREFIX}.*",
           f"{names.SUBJECT_STATUS_PREFIX}.*", f"{names.SUBJECT_EVENT_HISTORY_PREFIX}.*",
           "$JS.API.INFO", "$JS.API.STREAM.NAMES", "$JS.FC.>",
           f"$JS.API.STREAM.INFO.{names.STREAM_EVENTS}", f"$JS.API.CONSUMER.CREATE.{names.STREAM_EVENTS}",
           f"$JS.API.CONSUMER.CREATE.{names.STREAM_EVENTS}.*.{names.SUBJECT_EVENTS_PREFIX}.*",
           f"$JS.API.STREAM.INFO.{_KV_STREAM}", f"$JS.API.DIRECT.GET.{_KV_STREAM}.$KV.{names.KV_JOBS}.*"]
    return {"publish": {"allow": pub}, "subscribe": {"allow": ["_INBOX.>", f"{names.SUBJECT_EVENTS_PREFIX}.*"]}}


def tenant_account(tenant: str, password: str) -> dict[str, Any]:
    imports: list[dict[str, Any]] = [
        {"service": {"account": SERVICE_ACCOUNT, "subject": names.submit_subject(tenant)}, "to": names.SUBJECT_SUBMIT},
        {"service": {"account": SERVICE_ACCOUNT, "subject": names.cancel_subject(tenant)}, "to": names.SUBJECT_CANCEL},
        {"service": {"account": SERVICE_ACCOUNT, "subject": names.status_subject(tenant, "*")},
         "to": f"{names.SUBJECT_STATUS_PREFIX}.*"},
        {"service": {"account": SERVICE_ACCOUNT, "subject": names.history_subject(tenant, "*")},
         "to": f"{names.SUBJECT_EVENT_HISTORY_PREFIX}.*"},
        {"stream": {"account": SERVICE_ACCOUNT, "subject": f"{names.scoped_subject(tenant, 'events')}.>"},
         "to": f"{names.SUBJECT_EVENTS_PREFIX}.>"},
    ]
    perms = {"publish": {"allow": [names.SUBJECT_SUBMIT, names.SUBJECT_CANCEL, f"{names.SUBJECT_STATUS_PREFIX}.*",
                                   f"{names.SUBJECT_EVENT_HISTORY_PREFIX}.*"]},
             "subscribe": {"allow": ["_INBOX.>", f"{names.SUBJECT_EVENTS_PREFIX}.*"]}}
    return {"users": [{"user": tenant, "password": password, "permissions": perms}], "imports": imports}


def service_exports() -> list[dict[str, Any]]:
    pos = 3  # videogen.t.<tenant>.…: the importing account's name must be token 3
    return [
        {"service": names.submit_subject("*"), "account_token_position": pos},
        {"service": names.cancel_subject("*"), "account_token_position": pos},
        {"service": names.status_subject("*", "*"), "account_token_position": pos},
        {"service": names.history_subject("*", "*"), "account_token_position": pos},
        {"stream": f"{names.scoped_subject('*', 'events')}.>", "account_token_position": pos},
    ]


@dataclass(frozen=True)
class Credentials:
    service_password: str
    default_password: str
    stage_passwords: dict[str, str]
    tenants: dict[str, dict[str, str]]  # name -> {"nats_password", "webhook_secret"}


def _pw() -> str:
    return secrets.token_urlsafe(24)


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def load_credentials(data_dir: Path) -> Credentials:
    """The stack's NATS passwords and tenants (created on first use, kept across restarts)."""
    path = Path(data_dir) / TENANTS_FILE
    raw: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    stages = {s: raw.get("stages", {}).get(s) or _pw() for s in [*STAGES, "runner"]}
    creds = Credentials(raw.get("service") or _pw(), raw.get("default") or _pw(), stages, dict(raw.get("tenants", {})))
    if raw != _as_json(creds):
        save_credentials(data_dir, creds)
    return creds


def stage_user(stage: str) -> str:
    """The NATS user of one stage (``runner``: the GPU runners) in SERVICE."""
    return f"stage-{stage}"


def read_stage_password(data_dir: Path, stage: str) -> str | None:
    """``stage``'s NATS password from the stack's 0600 credentials file; None when there is none.

    Read only: unlike ``load_credentials`` it never creates the file or a password (a process
    that finds none keeps the user it was given)."""
    path = Path(data_dir) / TENANTS_FILE
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pw = raw.get("stages", {}).get(stage) if isinstance(raw, dict) else None
    return pw if isinstance(pw, str) and pw else None


def _as_json(c: Credentials) -> dict[str, Any]:
    return {"service": c.service_password, "default": c.default_password, "stages": c.stage_passwords,
            "tenants": c.tenants}


def save_credentials(data_dir: Path, creds: Credentials) -> None:
    write_private_file(Path(data_dir) / TENANTS_FILE, json.dumps(_as_json(creds), indent=1))


def add_tenant(data_dir: Path, name: str, *, rotate_secret: bool = False) -> tuple[Credentials, dict[str, str]]:
    """Create tenant ``name`` (NATS password + webhook secret), or rotate its secret (old one kept)."""
    if not names.valid_tenant(name) or name == names.DEFAULT_TENANT:
        raise ValueError(f"invalid tenant name {name!r}: {names.TENANT_PATTERN}, not default/service/sys/operator/t")
    creds = load_credentials(data_dir)
    tenants = dict(creds.tenants)
    entry = dict(tenants.get(name) or {"nats_password": _pw(), "webhook_secret": new_webhook_secret()})
    if rotate_secret:
        entry["webhook_secret"] = f"{new_webhook_secret()} {entry['webhook_secret'].split()[0]}"
    tenants[name] = entry
    creds = Credentials(creds.service_password, creds.default_password, creds.stage_passwords, tenants)
    save_credentials(data_dir, creds)
    return creds, entry


def tenant_secrets_env(creds: Credentials) -> str:
    """``VIDEOGEN_WEBHOOK_TENANT_SECRETS`` (JSON) for the stack's processes."""
    return json.dumps({t: e["webhook_secret"] for t, e in sorted(creds.tenants.items())})


def accounts_config(creds: Credentials) -> str:
    """The nats-server ``accounts`` block (JSON is valid nats-server config syntax)."""
    service_users: list[dict[str, Any]] = [
        {"user": SERVICE_USER, "password": creds.service_password},
        {"user": names.DEFAULT_TENANT, "password": creds.default_password, "permissions": default_tenant_permissions()},
    ]
    for stage, pw in sorted(creds.stage_passwords.items()):
        perms = runner_permissions() if stage == "runner" else stage_permissions(stage)
        service_users.append({"user": stage_user(stage), "password": pw, "permissions": perms})
    accounts: dict[str, Any] = {
        SERVICE_ACCOUNT: {"jetstream": "enabled", "users": service_users, "exports": service_exports()},
        SYSTEM_ACCOUNT: {},
    }
    for tenant, entry in sorted(creds.tenants.items()):
        accounts[tenant] = tenant_account(tenant, entry["nats_password"])
    return "accounts: " + json.dumps(accounts, indent=1) + f"\nsystem_account: {SYSTEM_ACCOUNT}\n"
