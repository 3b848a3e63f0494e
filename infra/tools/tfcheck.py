#!/usr/bin/env python3
"""Parse every Terraform file under infra/ with python-hcl2 and cross-check it against schemas/.

    python infra/tools/tfcheck.py     # exit 1 and list the problems when anything disagrees

What is checked (independently of gen_infra.py, which writes the generated files: a hand edit of
a generated file, or a change in schemas/ without regenerating, both show up here):

- every ``.tf`` file parses;
- the streams (name, subjects, retention, storage, max age, duplicate window, max message size),
  the CPU consumers (durable, stream, filter, ack wait, max deliveries, max ack pending, backoff),
  the per-model runner consumers and the KV bucket declared for the ``nats-jetstream`` provider
  are exactly ``schemas.names`` STREAMS / CPU_CONSUMERS / runner_consumer(model) / KV_JOBS;
- the names the KEDA scalers and the workloads use (modules/videogen/names.gen.tf) and the
  per-stage S3 access (modules/s3-stage-policies) match schemas/ and stage_access.py;
- bucket defaults equal DEFAULT_BUCKET and expiry defaults equal the job status TTL;
- the NATS Helm values keep JetStream on files with ``sync_interval: always`` on 3 servers, and
  the app user's permissions cover the subjects and the KV bucket of schemas/;
- minio/init.sh and minio/policies/ agree with schemas/ too.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent.parent
for p in (TOOLS, REPO):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import hcl2  # noqa: E402
import stage_access as sa  # noqa: E402
from hcl2 import SerializationOptions  # noqa: E402

from schemas import names, registry  # noqa: E402

TF_ROOT = REPO / "infra" / "terraform"
MINIO_DIR = REPO / "minio"
_OPTS = SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)

# values runtime/bus.py uses for every stream/consumer/KV (not in schemas/)
BUS_DISCARD = "old"
BUS_ACK_POLICY = "explicit"
BUS_MAX_WAITING = 512


class TFParseError(Exception):
    pass


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def parse_file(path: Path) -> dict[str, Any]:
    return hcl2.loads(path.read_text(), serialization_options=_OPTS)


def tf_files(root: Path = TF_ROOT) -> list[Path]:
    return sorted(p for p in root.rglob("*.tf") if ".terraform" not in p.parts)


def parse_all(root: Path = TF_ROOT) -> dict[Path, dict[str, Any]]:
    parsed, errors = {}, []
    for path in tf_files(root):
        try:
            parsed[path] = parse_file(path)
        except Exception as e:  # lark raises several unrelated types
            errors.append(f"{_rel(path)}: {type(e).__name__}: {e}")
    if errors:
        raise TFParseError("\n".join(errors))
    return parsed


# ---- walking the parsed documents ------------------------------------------------------------
def blocks(parsed: dict[Path, dict], kind: str, rtype: str | None = None) -> Iterator[tuple[Path, str, str, dict]]:
    """(file, type, label, body) of every ``resource``/``data`` block (or label, label, body for
    one-label blocks such as ``variable``/``output``/``module``, with type == label)."""
    for path, doc in parsed.items():
        for entry in doc.get(kind, []):
            for first, rest in entry.items():
                if kind in ("resource", "data"):
                    for lbl, body in rest.items():
                        if rtype is None or first == rtype:
                            yield path, first, lbl, body
                else:
                    yield path, first, first, rest


def locals_in(parsed: dict[Path, dict], directory: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, doc in parsed.items():
        if path.parent == directory:
            for entry in doc.get("locals", []):
                out.update(entry)
    return out


def is_expr(v: Any) -> bool:
    return isinstance(v, str) and v.startswith("${")


_REF = re.compile(r"^\$\{jetstream_stream\.([A-Za-z0-9_-]+)\.id\}$")


# ---- the cross-check -------------------------------------------------------------------------
def cross_check(root: Path = TF_ROOT, parsed: dict[Path, dict] | None = None) -> list[str]:
    """Every disagreement between the Terraform under ``root`` and schemas/, as a sentence."""
    parsed = parsed if parsed is not None else parse_all(root)
    problems: list[str] = []
    problems += _check_streams(parsed)
    problems += _check_consumers(parsed)
    problems += _check_kv(parsed)
    problems += _check_names_module(parsed, root)
    problems += _check_stage_access(parsed, root)
    problems += _check_defaults(parsed)
    problems += _check_nats_values(parsed, root)
    if root == TF_ROOT:
        problems += check_minio_files()
    return problems


def _streams_by_label(parsed: dict[Path, dict]) -> dict[str, dict]:
    return {lbl: body for _, _, lbl, body in blocks(parsed, "resource", "jetstream_stream")}


def _check_streams(parsed: dict[Path, dict]) -> list[str]:
    out = []
    declared = {}
    for path, _, lbl, body in blocks(parsed, "resource", "jetstream_stream"):
        name = body.get("name")
        if is_expr(name) or name is None:
            out.append(f"{_rel(path)}: jetstream_stream.{lbl} must name its stream literally")
            continue
        declared[name] = body
    expected = {s.name: s for s in names.STREAMS}
    for name in sorted(set(expected) - set(declared)):
        out.append(f"stream {name} is in schemas/names.py STREAMS but not declared in Terraform")
    for name in sorted(set(declared) - set(expected)):
        out.append(f"Terraform declares stream {name}, which schemas/names.py STREAMS does not have")
    for name in sorted(set(expected) & set(declared)):
        s, b = expected[name], declared[name]
        want = {
            "subjects": list(s.subjects),
            "retention": s.retention,
            "storage": s.storage,
            "max_age": s.max_age_s,
            "duplicate_window": s.duplicate_window_s,
            "max_msg_size": s.max_msg_size_bytes,
            "discard": BUS_DISCARD,
        }
        for attr, value in want.items():
            if b.get(attr) != value:
                out.append(f"stream {name}: {attr} is {b.get(attr)!r} in Terraform, {value!r} in schemas")
        if "replicas" not in b:
            out.append(f"stream {name}: replicas not set (R3 expected on a 3-server cluster)")
    return out


def _consumer_want(c: names.ConsumerSpec) -> dict[str, Any]:
    return {
        **({"filter_subjects": list(c.filters)} if c.extra_filters else {"filter_subject": c.filter_subject}),
        "ack_wait": c.ack_wait_s,
        "max_delivery": c.max_deliver,
        "max_ack_pending": c.max_ack_pending,
        "backoff": [int(x) for x in c.backoff_s],
    }


def _check_consumers(parsed: dict[Path, dict]) -> list[str]:
    out = []
    streams = _streams_by_label(parsed)
    literal: dict[str, dict] = {}
    for_each: list[tuple[str, dict]] = []
    for path, _, lbl, body in blocks(parsed, "resource", "jetstream_consumer"):
        if "for_each" in body:
            for_each.append((lbl, body))
        elif is_expr(body.get("durable_name")) or body.get("durable_name") is None:
            out.append(f"{_rel(path)}: jetstream_consumer.{lbl} must name its durable literally")
        else:
            literal[body["durable_name"]] = body

    def stream_of(body: dict) -> str | None:
        m = _REF.match(str(body.get("stream_id", "")))
        return streams.get(m.group(1), {}).get("name") if m else None

    def common(where: str, body: dict) -> list[str]:
        errs = []
        if body.get("ack_policy") != BUS_ACK_POLICY:
            errs.append(f"{where}: ack_policy must be {BUS_ACK_POLICY!r} (every stage acks explicitly)")
        if body.get("deliver_all") is not True:
            errs.append(f"{where}: deliver_all must be true")
        if body.get("max_waiting") != BUS_MAX_WAITING:
            errs.append(f"{where}: max_waiting is {body.get('max_waiting')!r}, runtime/bus.py uses {BUS_MAX_WAITING}")
        return errs

    expected = {c.durable: c for c in names.CPU_CONSUMERS}
    for d in sorted(set(expected) - set(literal)):
        out.append(f"consumer {d} is in schemas/names.py CPU_CONSUMERS but not declared in Terraform")
    for d in sorted(set(literal) - set(expected)):
        out.append(f"Terraform declares consumer {d}, which schemas/names.py CPU_CONSUMERS does not have")
    for d in sorted(set(expected) & set(literal)):
        c, b = expected[d], literal[d]
        if stream_of(b) != c.stream:
            out.append(f"consumer {d}: on stream {stream_of(b)!r} in Terraform, {c.stream!r} in schemas")
        for attr, value in _consumer_want(c).items():
            got = b.get(attr, [] if attr == "backoff" else None)
            if got != value:
                out.append(f"consumer {d}: {attr} is {got!r} in Terraform, {value!r} in schemas")
        out += common(f"consumer {d}", b)

    # runner consumers: one generated table of every registry model + one for_each resource
    tables = [(p, loc["runner_consumers"]) for p, doc in parsed.items() for loc in doc.get("locals", [])
              if isinstance(loc.get("runner_consumers"), dict)
              and all(isinstance(v, dict) and "durable_name" in v for v in loc["runner_consumers"].values())]
    if len(tables) != 1:
        out.append(f"expected exactly one locals.runner_consumers table with durable names, found {len(tables)}")
    else:
        table = tables[0][1]
        models = sorted(registry.MODELS)
        for m in sorted(set(models) - set(table)):
            out.append(f"runner consumer for model {m} (schemas/registry.py) missing from locals.runner_consumers")
        for m in sorted(set(table) - set(models)):
            out.append(f"locals.runner_consumers has model {m}, which schemas/registry.py does not have")
        for m in sorted(set(models) & set(table)):
            c, b = names.runner_consumer(m), table[m]
            want = {"durable_name": c.durable, **_consumer_want(c)}
            for attr, value in want.items():
                if b.get(attr) != value:
                    out.append(f"runner consumer for {m}: {attr} is {b.get(attr)!r} in Terraform, {value!r} in schemas")
    runner_streams = {names.runner_consumer(m).stream for m in registry.MODELS}
    if len(for_each) != 1:
        out.append(f"expected one for_each jetstream_consumer (the runner consumers), found {len(for_each)}")
    else:
        lbl, b = for_each[0]
        if "local.runner_consumers" not in str(b.get("for_each")):
            out.append(f"jetstream_consumer.{lbl}: for_each must come from local.runner_consumers")
        if {stream_of(b)} != runner_streams:
            out.append(f"jetstream_consumer.{lbl}: on stream {stream_of(b)!r}, schemas says {sorted(runner_streams)}")
        for attr in ("durable_name", "filter_subject", "ack_wait", "max_delivery", "max_ack_pending", "backoff"):
            if b.get(attr) != f"${{each.value.{attr}}}":
                out.append(f"jetstream_consumer.{lbl}: {attr} must be each.value.{attr}")
        out += common(f"jetstream_consumer.{lbl}", b)
    return out


def _status_ttl_s() -> int:
    from runtime.settings import Settings

    return int(Settings.model_fields["status_ttl_s"].default)


def _check_kv(parsed: dict[Path, dict]) -> list[str]:
    kvs = {b.get("name"): b for _, _, _, b in blocks(parsed, "resource", "jetstream_kv_bucket")}
    out = []
    provisioned = sorted(k.bucket for k in names.KV_BUCKETS)  # Bus.provision
    if sorted(map(str, kvs)) != provisioned:
        out.append(f"KV buckets in Terraform are {sorted(map(str, kvs))}, schemas/names.py has {provisioned}")
    wants = {k.bucket: {"history": k.history, "storage": "file", "replicas": "${var.replicas}",
                        "ttl": _status_ttl_s() if k.status_ttl else k.ttl_s} for k in names.KV_BUCKETS}
    for bucket, want in wants.items():
        b = kvs.get(bucket)
        if b is None:
            continue
        for attr, value in want.items():
            if b.get(attr) != value:
                out.append(f"KV {bucket}: {attr} is {b.get(attr)!r}, runtime uses {value!r}")
    return out


def _check_names_module(parsed: dict[Path, dict], root: Path) -> list[str]:
    loc = locals_in(parsed, root / "modules" / "videogen")
    out = []
    acc = sa.stage_access()
    stages = sa.function_stages()
    periodic = sa.periodic_stages()
    for stage in sorted((set(stages) | set(periodic)) - set(acc)):
        out.append(f"stage {stage} (schemas/stages.py) has no S3/network entry in infra/tools/stage_access.py")
    drained = {(c.stream, c.durable) for c in stages.values()}
    for c in names.CPU_CONSUMERS:
        if (c.stream, c.durable) not in drained:
            out.append(f"consumer {c.durable} on {c.stream} (schemas CPU_CONSUMERS) is drained by no stage of "
                       f"schemas/stages.py: no Deployment or scaler would serve it")
    want_fc = {stage: {"stream": c.stream, "consumer": c.durable, "ack_wait_s": c.ack_wait_s,
                       "internet_egress": acc[stage].internet if stage in acc else None}
               for stage, c in stages.items()}
    want_pf = {stage: {"interval_s": interval, "internet_egress": acc[stage].internet if stage in acc else None}
               for stage, interval in periodic.items()}
    want_rc = {m: {"stream": names.runner_consumer(m).stream, "consumer": names.runner_consumer(m).durable,
                   "ack_wait_s": names.runner_consumer(m).ack_wait_s} for m in registry.MODELS}
    for table, want in (("function_consumers", want_fc), ("periodic_functions", want_pf),
                        ("runner_consumers", want_rc)):
        got = loc.get(table) or {}
        for key in sorted(set(want) | set(got)):
            if got.get(key) != want.get(key):
                out.append(f"modules/videogen: {table}[{key!r}] (KEDA scaler target) is {got.get(key)!r}, "
                           f"schemas says {want.get(key)!r}")
    models = loc.get("models") or {}
    if set(models) != set(registry.MODELS):
        out.append(f"modules/videogen: models {sorted(models)} != schemas/registry.py {sorted(registry.MODELS)}")
    for m, spec in registry.MODELS.items():
        if m in models and (models[m].get("hub_id") or None) != spec.hub_id:
            out.append(f"modules/videogen: model {m} hub_id {models[m].get('hub_id')!r} != {spec.hub_id!r}")
    if loc.get("default_bucket") != names.DEFAULT_BUCKET:
        out.append(f"modules/videogen: default_bucket {loc.get('default_bucket')!r} != {names.DEFAULT_BUCKET!r}")
    if loc.get("kv_jobs") != names.KV_JOBS:
        out.append(f"modules/videogen: kv_jobs {loc.get('kv_jobs')!r} != {names.KV_JOBS!r}")
    want_stages = [s.stage for s in sa.stage_access().values() if s.deployed and s.needs_credentials]
    if loc.get("s3_stages") != want_stages:
        out.append(f"modules/videogen: s3_stages {loc.get('s3_stages')!r} != {want_stages!r}")
    # every KEDA trigger reads its stream/consumer from those tables
    for path, _, lbl, body in blocks(parsed, "resource", "kubernetes_manifest"):
        spec = (body.get("manifest") or {}).get("spec") or {}
        for t in spec.get("triggers", []) or []:
            if t.get("type") != "nats-jetstream":
                continue
            md = t.get("metadata") or {}
            for key in ("stream", "consumer"):
                if md.get(key) != f"${{each.value.{key}}}":
                    out.append(f"{_rel(path)}: kubernetes_manifest.{lbl} trigger {key} must be "
                               f"each.value.{key} (from names.gen.tf), got {md.get(key)!r}")
    return out


def _check_stage_access(parsed: dict[Path, dict], root: Path) -> list[str]:
    loc = locals_in(parsed, root / "modules" / "s3-stage-policies")
    out = []
    want = {
        s.stage: {"read": list(s.read), "write": list(s.write), "delete": list(s.delete), "keep": list(s.keep),
                  "list_prefixes": list(s.list_prefixes), "bucket_admin": s.bucket_admin,
                  "internet": s.internet, "deployed": s.deployed}
        for s in sa.stage_access().values()
    }
    if loc.get("stage_access") != want:
        out.append("modules/s3-stage-policies: stage_access disagrees with infra/tools/stage_access.py "
                   "(schemas key layout)")
    for attr, value in (("jobs_prefix", sa.jobs_prefix()), ("lifecycle_rule_id", sa.LIFECYCLE_RULE_ID),
                        ("default_bucket", names.DEFAULT_BUCKET),
                        ("read_actions", list(sa.READ_ACTIONS)), ("write_actions", list(sa.WRITE_ACTIONS)),
                        ("delete_actions", list(sa.DELETE_ACTIONS)),
                        ("list_actions", list(sa.LIST_ACTIONS)), ("admin_actions", list(sa.ADMIN_ACTIONS))):
        if loc.get(attr) != value:
            out.append(f"modules/s3-stage-policies: {attr} is {loc.get(attr)!r}, expected {value!r}")
    return out


def _check_defaults(parsed: dict[Path, dict]) -> list[str]:
    out = []
    expire = max(1, _status_ttl_s() // 86400)
    for path, _, name, body in blocks(parsed, "variable"):
        if name == "bucket" and "default" in body and body["default"] != names.DEFAULT_BUCKET:
            out.append(f"{_rel(path)}: variable bucket defaults to {body['default']!r}, "
                       f"schemas DEFAULT_BUCKET is {names.DEFAULT_BUCKET!r}")
        if name == "expire_days" and body.get("default") != expire:
            out.append(f"{_rel(path)}: variable expire_days defaults to {body.get('default')!r}; "
                       f"objects should live as long as the job status ({expire} days)")
    return out


def _check_nats_values(parsed: dict[Path, dict], root: Path) -> list[str]:
    d = root / "modules" / "nats"
    loc = locals_in(parsed, d)
    out = []
    values = loc.get("values")
    if not isinstance(values, dict):
        return ["modules/nats: locals.values (the Helm values) not found"]
    js = (values.get("config") or {}).get("jetstream") or {}
    if (js.get("merge") or {}).get("sync_interval") != "always":
        out.append("modules/nats: config.jetstream.merge.sync_interval must be \"always\" (acknowledged = on disk)")
    if js.get("enabled") is not True or (js.get("fileStore") or {}).get("enabled") is not True:
        out.append("modules/nats: JetStream with file storage must be enabled")
    if (js.get("memoryStore") or {}).get("enabled") is not False:
        out.append("modules/nats: the JetStream memory store must stay disabled (every stream is file-backed)")
    cluster = (values.get("config") or {}).get("cluster") or {}
    if cluster.get("enabled") is not True or cluster.get("replicas") != "${var.replicas}":
        out.append("modules/nats: config.cluster must be enabled with replicas = var.replicas")
    variables = {name: body for p, _, name, body in blocks(parsed, "variable") if p.parent == d}
    if (variables.get("replicas") or {}).get("default") != 3:
        out.append("modules/nats: variable replicas must default to 3")
    perms = json.dumps(loc.get("app_permissions"))
    root_subject = names.SUBJECT_SUBMIT.split(".", 1)[0]
    for needed in (f"{root_subject}.>", f"$KV.{names.KV_JOBS}.>", f"$KV.{names.KV_RUNNERS}.>",
                   f"$KV.{names.KV_RENDERS}.>", "$JS.API.>", "_INBOX.>"):
        if needed not in perms:
            out.append(f"modules/nats: the app user's permissions lack {needed!r}")
    return out


def check_minio_files() -> list[str]:
    out = []
    script = (MINIO_DIR / "init.sh").read_text()
    for var, value in (("JOBS_PREFIX", sa.jobs_prefix()), ("LIFECYCLE_RULE_ID", sa.LIFECYCLE_RULE_ID)):
        m = re.search(rf'^{var}="([^"]*)"', script, re.M)
        if not m or m.group(1) != value:
            out.append(f"minio/init.sh: {var} is {m.group(1) if m else None!r}, expected {value!r}")
    for var, env in (("BUCKET", "VIDEOGEN_BUCKET"), ("POLICY_BUCKET", "POLICY_BUCKET")):
        m = re.search(rf"^{var}=\$\{{{env}:-([^}}]*)\}}", script, re.M)
        if not m or m.group(1) != names.DEFAULT_BUCKET:
            out.append(f"minio/init.sh: {var} defaults to {m.group(1) if m else None!r}, "
                       f"expected {names.DEFAULT_BUCKET!r}")
    expected = {f"{s.stage}.json": sa.policy_document(s, names.DEFAULT_BUCKET)
                for s in sa.stage_access().values() if s.needs_credentials and (s.deployed or s.stage == sa.PROVISION)}
    present = {p.name: p for p in (MINIO_DIR / "policies").glob("*.json")}
    for name in sorted(set(expected) ^ set(present)):
        out.append(f"minio/policies/{name}: {'missing' if name in expected else 'not a stage in stage_access.py'}")
    for name in sorted(set(expected) & set(present)):
        if json.loads(present[name].read_text()) != expected[name]:
            out.append(f"minio/policies/{name}: differs from stage_access.py (run infra/tools/gen_infra.py)")
    return out


def main() -> int:
    try:
        parsed = parse_all()
    except TFParseError as e:
        print(f"tfcheck: parse errors\n{e}", file=sys.stderr)
        return 1
    problems = cross_check(parsed=parsed)
    for p in problems:
        print(f"tfcheck: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"tfcheck: {len(parsed)} Terraform files parse; streams, consumers, KV, bucket and policies match schemas/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
