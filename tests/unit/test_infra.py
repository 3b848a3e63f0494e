"""Deployment code (infra/, minio/) checked without terraform, a cluster or Docker.

(a) every .tf file parses with python-hcl2; (b) the streams, consumers, KV bucket, bucket and
policies it declares agree with schemas/ - and a change in schemas/ that Terraform does not follow
is reported; (c) Kubernetes YAML, if any appears under infra/, validates against the bundled
Kubernetes schemas. Plus: generated files are fresh, per-stage S3 access is least privilege, and
minio/init.sh does what it says (run against a stub `mc`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "infra" / "tools"))

import gen_infra  # noqa: E402
import stage_access as sa  # noqa: E402
import tfcheck  # noqa: E402

from schemas import names, registry  # noqa: E402

TF_FILES = tfcheck.tf_files()


@pytest.fixture(scope="module")
def parsed() -> dict[Path, dict]:
    return tfcheck.parse_all()


# ---- (a) parse ------------------------------------------------------------------------------
def test_terraform_tree_is_complete() -> None:
    rel = {str(p.relative_to(tfcheck.TF_ROOT)) for p in TF_FILES}
    for module in ("nats", "nats-jetstream", "videogen", "minio", "s3-aws", "s3-stage-policies", "keda"):
        assert f"modules/{module}/versions.tf" in rel, module
    for env in ("dev", "prod"):
        assert {f"environments/{env}/{f}" for f in ("main.tf", "variables.tf", "versions.tf")} <= rel


@pytest.mark.parametrize("path", TF_FILES, ids=lambda p: str(p.relative_to(tfcheck.TF_ROOT)))
def test_tf_file_parses_with_hcl2(path: Path) -> None:
    doc = tfcheck.parse_file(path)
    assert isinstance(doc, dict) and doc, f"{path} parsed to nothing"
    assert set(doc) <= {"terraform", "provider", "variable", "locals", "resource", "data", "module", "output"}, \
        f"{path}: unexpected top-level blocks {sorted(doc)}"


def test_parse_error_is_reported(tmp_path: Path) -> None:
    (tmp_path / "bad.tf").write_text('resource "x" "y" {\n  a = \n}\n')
    with pytest.raises(tfcheck.TFParseError, match="bad.tf"):
        tfcheck.parse_all(tmp_path)


def test_every_module_input_is_documented(parsed: dict[Path, dict]) -> None:
    for path, _, name, body in tfcheck.blocks(parsed, "variable"):
        assert body.get("description"), f"{path.relative_to(REPO)}: variable {name} has no description"
        assert "type" in body, f"{path.relative_to(REPO)}: variable {name} has no type"


def test_no_secret_has_a_default(parsed: dict[Path, dict]) -> None:
    """Secrets come from Kubernetes Secrets or are generated; never from variable defaults."""
    secretish = re.compile(r"(password|secret_key|access_key|token|whsec|credential_data)", re.I)
    for path, _, name, body in tfcheck.blocks(parsed, "variable"):
        default = body.get("default")
        if secretish.search(name) and default not in (None, ""):
            # a *name* of a Secret is fine (webhook_secret_name = "videogen-webhook")
            assert name.endswith(("_name", "_secret")) and isinstance(default, str) \
                and not default.startswith("whsec_"), \
                f"{path.relative_to(REPO)}: variable {name} has a default that looks like a secret"
    text = "\n".join(p.read_text() for p in TF_FILES)
    assert "whsec_" not in text.replace("whsec_...", "").replace("`whsec_", ""), "a webhook secret in Terraform"
    assert not re.search(r"AKIA[0-9A-Z]{16}", text), "an AWS access key in Terraform"


# ---- (b) cross-check against schemas/ ------------------------------------------------------------
def test_terraform_matches_schemas(parsed: dict[Path, dict]) -> None:
    assert tfcheck.cross_check(parsed=parsed) == []


def test_renamed_stream_in_schemas_fails_the_cross_check(parsed, monkeypatch) -> None:
    renamed = tuple(dataclasses.replace(s, name="VIDEOGEN_JOBS_V2") if s.name == names.STREAM_JOBS else s
                    for s in names.STREAMS)
    monkeypatch.setattr(names, "STREAMS", renamed)
    problems = tfcheck.cross_check(parsed=parsed)
    assert any("VIDEOGEN_JOBS_V2" in p and "not declared in Terraform" in p for p in problems), problems
    assert any("declares stream VIDEOGEN_JOBS," in p for p in problems), problems
    # and the generator knows the generated Terraform is stale
    stale = gen_infra.stale()
    assert any("jetstream.gen.tf: stale" in s for s in stale), stale


def test_changed_limits_fail_the_cross_check(parsed, monkeypatch) -> None:
    monkeypatch.setattr(names, "STREAMS", tuple(
        dataclasses.replace(s, max_age_s=s.max_age_s + 1) if s.name == names.STREAM_DLQ else s for s in names.STREAMS))
    monkeypatch.setattr(names, "CPU_CONSUMERS", tuple(
        dataclasses.replace(c, ack_wait_s=7, backoff_s=(2, 4)) if c.durable == "stitch" else c
        for c in names.CPU_CONSUMERS))
    from schemas import stages as stage_table

    stitch = next(c for c in names.CPU_CONSUMERS if c.durable == "stitch")
    monkeypatch.setattr(stage_table, "STAGES", {k: dataclasses.replace(v, spec=stitch) if k == "stitch" else v
                                                for k, v in stage_table.STAGES.items()})
    real_runner = names.runner_consumer
    monkeypatch.setattr(names, "runner_consumer", lambda m: dataclasses.replace(real_runner(m), max_deliver=9))
    problems = "\n".join(tfcheck.cross_check(parsed=parsed))
    assert "stream VIDEOGEN_DLQ: max_age" in problems
    assert "consumer stitch: ack_wait is 120 in Terraform, 7 in schemas" in problems
    assert "consumer stitch: backoff" in problems
    assert "modules/videogen: function_consumers['stitch']" in problems  # KEDA would watch the wrong thing
    assert (f"runner consumer for wan2.1-t2v-14b: max_delivery is {names.RUNNER_MAX_DELIVER} in Terraform, "
            "9 in schemas") in problems


def test_renamed_consumer_and_kv_fail_the_cross_check(parsed, monkeypatch) -> None:
    monkeypatch.setattr(names, "CPU_CONSUMERS", tuple(
        dataclasses.replace(c, durable="webhooks") if c.durable == "webhook" else c for c in names.CPU_CONSUMERS))
    monkeypatch.setattr(names, "KV_JOBS", "videogen-status")
    monkeypatch.setattr(names, "DEFAULT_BUCKET", "videogen-out")
    problems = "\n".join(tfcheck.cross_check(parsed=parsed))
    assert "consumer webhooks is in schemas/names.py CPU_CONSUMERS but not declared" in problems
    assert "declares consumer webhook, which" in problems
    assert "videogen-status" in problems
    assert "variable bucket defaults to 'videogen'" in problems


def test_new_registry_model_needs_a_runner_consumer(parsed, monkeypatch) -> None:
    models = dict(registry.MODELS)
    models["wan9-t2v-1b"] = models["wan2.1-t2v-1.3b"].model_copy(update={"name": "wan9-t2v-1b"})
    monkeypatch.setattr(registry, "MODELS", models)
    problems = "\n".join(tfcheck.cross_check(parsed=parsed))
    assert "runner consumer for model wan9-t2v-1b (schemas/registry.py) missing" in problems
    assert any("jetstream.gen.tf: stale" in s for s in gen_infra.stale())


def test_new_stage_or_undrained_consumer_fails_the_cross_check(parsed, monkeypatch) -> None:
    from schemas import stages as stage_table

    stages = dict(stage_table.STAGES)
    stages["thumbnail"] = dataclasses.replace(stages["stitch"], name="thumbnail")
    del stages["cancel"]
    monkeypatch.setattr(stage_table, "STAGES", stages)
    problems = "\n".join(tfcheck.cross_check(parsed=parsed))
    assert "stage thumbnail (schemas/stages.py) has no S3/network entry" in problems
    assert "consumer cancel on VIDEOGEN_JOBS (schemas CPU_CONSUMERS) is drained by no stage" in problems
    assert "function_consumers['thumbnail']" in problems


def test_hand_edited_terraform_is_caught(parsed) -> None:
    doc = parsed[gen_infra.JETSTREAM_FILE]
    edited = json.loads(json.dumps(doc))
    for entry in edited["resource"]:
        if "jetstream_stream" in entry and "VIDEOGEN_EVENTS" in entry["jetstream_stream"]:
            entry["jetstream_stream"]["VIDEOGEN_EVENTS"]["retention"] = "interest"
            entry["jetstream_stream"]["VIDEOGEN_EVENTS"]["subjects"] = ["videogen.event.>"]
    problems = "\n".join(tfcheck.cross_check(parsed={**parsed, gen_infra.JETSTREAM_FILE: edited}))
    assert "stream VIDEOGEN_EVENTS: retention is 'interest'" in problems
    assert "stream VIDEOGEN_EVENTS: subjects" in problems


def test_sync_interval_always_is_enforced(parsed) -> None:
    nats_main = tfcheck.TF_ROOT / "modules" / "nats" / "main.tf"
    edited = json.loads(json.dumps(parsed[nats_main]))
    for loc in edited["locals"]:
        if "values" in loc:
            loc["values"]["config"]["jetstream"]["merge"] = {"sync_interval": "2m"}
    problems = tfcheck.cross_check(parsed={**parsed, nats_main: edited})
    assert any("sync_interval" in p for p in problems), problems


def test_generated_files_are_up_to_date() -> None:
    assert gen_infra.stale() == [], "run: .venv/bin/python infra/tools/gen_infra.py"


def test_generator_is_deterministic() -> None:
    assert gen_infra.render_all() == gen_infra.render_all()


def test_generated_hcl_parses_back_to_schemas() -> None:
    """The writer's output is valid HCL and carries the literal values (not just formatting)."""
    import hcl2

    doc = hcl2.loads(gen_infra.render_jetstream(), serialization_options=tfcheck._OPTS)
    streams = {b["name"] for e in doc["resource"] for t, r in e.items() if t == "jetstream_stream" for b in r.values()}
    assert streams == {s.name for s in names.STREAMS}


# ---- per-stage S3 access ---------------------------------------------------------------------
def _allowed(patterns: tuple[str, ...], key: str) -> bool:
    return any(re.fullmatch(re.escape(p).replace(r"\*", ".*"), key) for p in patterns)


def _writers(key: str) -> set[str]:
    return {s.stage for s in sa.stage_access().values() if _allowed(s.write, key)}


def _readers(key: str) -> set[str]:
    return {s.stage for s in sa.stage_access().values() if _allowed(s.read, key)}


def test_each_stage_writes_only_its_own_outputs() -> None:
    j = "job-1"
    assert _writers(names.request_key(j)) == {"preprocess", "gateway"}  # the gateway stores it at create
    assert _writers(names.input_key(j, "image.png")) == {"preprocess"}
    # a long animate job's parts (preprocess-part) write frame chunks and keypoints, never inputs
    assert _writers(names.frames_key(j, "000001.png")) == {"preprocess", "preprocess-part"}
    assert _writers(names.keypoints_key(j, "pose.npz")) == {"preprocess", "preprocess-part"}
    assert _writers(names.preprocess_part_key(j, 1)) == {"preprocess", "preprocess-part"}
    assert "preprocess-part" in _readers(names.input_key(j, "video.mp4"))
    assert _writers(names.plan_key(j)) == {"planner", "preprocess"}  # preprocess plans a t2v job itself
    assert _writers(names.segment_key(j, 3)) == {"runner"}
    assert _writers(names.segment_tail_key(j, 3)) == {"runner"}
    # the runner completes a job whose plan is one window that is exactly the output (finishes_in_runner)
    assert _writers(names.output_key(j)) == {"stitch", "runner"}
    assert _writers(names.output_tail_key(j)) == {"stitch"}  # not the runner (contract v1.7)
    assert _writers(names.thumbnail_key(j)) == _writers(names.spritesheet_key(j)) == {"stitch", "gateway", "runner"}
    assert _writers(names.extend_condition_key(j)) == _writers(names.extend_source_key(j)) == {"preprocess"}
    # atomic uploads go through a temporary key first
    assert _writers(names.temp_key(names.output_key(j), "abc123")) == {"stitch", "runner"}
    assert _writers(names.temp_key(names.segment_key(j, 0), "abc123")) == {"runner"}
    assert _writers("unrelated/key") == set()


def test_readers_cover_the_pipeline() -> None:
    j = "job-1"
    assert _readers(names.segment_tail_key(j, 0)) == {"runner"}  # conditions segment k+1
    assert _readers(names.segment_result_key(j, 0)) == {"chain", "runner"}
    assert _readers(names.segment_key(j, 0)) == {"stitch", "runner"}
    assert _readers(names.plan_key(j)) == {"planner", "chain", "preprocess"}
    # stitch: server-side copy, presign; preprocess: an extension's copy of its source; gateway: presign
    assert _readers(names.output_key(j)) == {"stitch", "preprocess", "gateway", "runner"}
    # an extension's condition (stitch: its writer)
    assert _readers(names.output_tail_key(j)) == {"preprocess", "stitch"}
    assert _readers(names.extend_source_key(j)) == {"preprocess", "runner", "stitch"}
    assert _readers(names.extend_condition_key(j)) == {"preprocess", "runner"}  # conditions segment 0
    assert _readers(names.request_key(j)) == {"preprocess", "runner", "webhook", "webhook-replay", "gateway"}
    assert _readers(names.keypoints_key(j, "pose/chunk-00000.mp4")) == {"preprocess", "preprocess-part", "runner"}
    assert _readers("uploads/client/image.png") == {"preprocess"}
    assert _writers(names.segment_result_key(j, 0)) == {"runner"}


def test_gateway_access_is_what_the_gateway_does() -> None:
    """gateway/app.py: writes request.json, uploads/<video id>/<file> and previews; reads request.json,
    output.mp4 and previews; deletes a video's objects; nothing of the pipeline's own."""
    g = sa.stage_access()[sa.GATEWAY]
    j = "video_1"
    assert g.deployed and g.needs_credentials and not g.internet and not g.bucket_admin and g.keep == ()
    for key in (names.request_key(j), "uploads/video_1/input_reference.png", names.thumbnail_key(j)):
        assert _allowed(g.write, key), key
    for key in (names.output_key(j), names.plan_key(j), names.segment_key(j, 0), names.input_key(j, "image.png"),
                names.frames_key(j, "000001.png"), names.output_tail_key(j), "unrelated/key"):
        assert not _allowed(g.write, key), key
    assert not _allowed(g.read, names.segment_key(j, 0)) and not _allowed(g.read, names.input_key(j, "image.png"))
    assert _allowed(g.delete, names.output_key(j)) and _allowed(g.delete, "uploads/video_1/video.mp4")
    assert not _allowed(g.delete, "unrelated/key") and not _allowed(g.delete, "uploads/client/image.png")
    assert not _allowed(g.write, "uploads/client/image.png")  # a client's own uploads are not the gateway's
    doc = sa.policy_document(g, names.DEFAULT_BUCKET)
    assert "KeepJobRecord" not in {st["Sid"] for st in doc["Statement"]}  # DELETE /v1/videos removes it all


def test_webhook_only_reads_requests_and_only_provision_administers() -> None:
    acc = sa.stage_access()
    assert acc["webhook"].read == (names.request_key(sa.ANY),) and not acc["webhook"].write
    # every tenant's job objects are under jobs/ (jobs/<tenant>.<job_id>/…): the same grants cover them
    assert names.request_key(names.job_key("acme", "j1")).startswith(sa.jobs_prefix())
    # cancel deletes a job's partial objects but can never delete the job's record
    cancel = sa.policy_document(acc["cancel"], "videogen")["Statement"]
    deny = [st for st in cancel if st["Effect"] == "Deny"]
    assert deny and deny[0]["Resource"] == [f"arn:aws:s3:::videogen/{names.request_key('*')}"]
    assert not acc["cancel"].read and not acc["cancel"].write
    assert [s for s, a in acc.items() if a.bucket_admin] == ["provision"]
    assert not acc["provision"].deployed
    for a in acc.values():
        for k in a.write:
            # the one write outside jobs/: the gateway's multipart uploads, under uploads/video_*
            assert k.startswith(sa.jobs_prefix()) or (a.stage, k) == (sa.GATEWAY, sa.GATEWAY_UPLOADS), (a.stage, k)
            # put_atomic copies its temp object onto the key, then HEADs it: a writer reads both
            assert k in a.read, (a.stage, k)
    for key in (names.segment_key("j", 1), names.output_key("j")):
        tmp = names.temp_key(key, "0123abcd")
        for writer in _writers(key):
            assert writer in _readers(tmp) and writer in _readers(key) and writer in _writers(tmp)


def test_policy_documents_are_valid_iam() -> None:
    for a in sa.stage_access().values():
        doc = sa.policy_document(a, "videogen")
        assert doc["Version"] == "2012-10-17"
        for st in doc["Statement"]:
            assert st["Effect"] in ("Allow", "Deny") and st["Action"] and st["Resource"]
            assert all(r.startswith("arn:aws:s3:::videogen") for r in st["Resource"])
            assert "*" not in st["Action"] and all(not x.endswith(":*") for x in st["Action"])
        assert len(json.dumps(doc, separators=(",", ":"))) < 2048  # MinIO / IAM inline limit


# ---- (c) Kubernetes YAML ---------------------------------------------------------------------------
def _k8s_yaml_docs() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted((REPO / "infra").rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                docs.append((path, doc))
    return docs


def test_kubernetes_yaml_under_infra_validates() -> None:
    """Workloads are declared in HCL (checkov scans them); any manifest added as YAML must pass
    the Kubernetes OpenAPI schemas bundled in kubernetes-validate (no network)."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    for path, doc in _k8s_yaml_docs():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{path}: {doc['apiVersion']}/{doc['kind']} has no bundled schema (a CRD?): declare it in HCL")
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{path}: {doc['kind']} {doc.get('metadata', {}).get('name')}: {e.message}")


def test_kubernetes_validator_is_strict() -> None:
    import kubernetes_validate

    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"replicas": "two", "selector": {}, "template": {}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


def test_minio_compose_is_pinned_and_local_only() -> None:
    compose = yaml.safe_load((REPO / "minio" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"minio", "init"}
    for name, svc in services.items():
        image = svc["image"]
        assert re.search(r":RELEASE\.\d{4}-\d\d-\d\dT", image), f"{name}: image {image} is not pinned"
    assert all(p.startswith("127.0.0.1:") for p in services["minio"]["ports"]), "MinIO must bind loopback only"
    assert services["init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["init"]["environment"]["POLICY_DIR"] == "/init/policies"
    assert "./policies:/init/policies:ro" in services["init"]["volumes"]
    gitignore = (REPO / "minio" / ".gitignore").read_text().split()
    assert ".env" in gitignore and ".creds/" in gitignore


# ---- minio/init.sh against a stub mc -------------------------------------------------------------
STUB_MC = r"""#!/usr/bin/env bash
# records every call; `ilm rule import` and `admin policy create` keep what they were given
while [[ "${1:-}" == --* ]]; do
  case "$1" in --config-dir) shift 2 ;; *) shift ;; esac
done
echo "$*" >> "$MC_LOG"
case "$1 $2 ${3:-}" in
  "ilm rule import") cat > "$MC_LOG.lifecycle.json" ;;
  "admin policy create") cp "$6" "$MC_LOG.policy.$5.json" ;;
  "admin policy attach")
    if [ -n "${MC_ATTACH_ALREADY:-}" ]; then
      echo "mc: <ERROR> The specified policy change is already in effect." >&2; exit 1
    fi ;;
esac
exit 0
"""


@pytest.fixture
def minio_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    if not shutil.which("bash"):
        pytest.skip("bash not available")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    mc = bindir / "mc"
    mc.write_text(STUB_MC)
    mc.chmod(mc.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "mc.log"
    env = {
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "MC_LOG": str(log),
        "MINIO_ENDPOINT": "http://minio.test:9000",
        "MINIO_ROOT_USER": "root",
        "MINIO_ROOT_PASSWORD": "root-password",
        "POLICY_DIR": str(REPO / "minio" / "policies"),
        "MC_CONFIG_DIR": str(tmp_path / "mc-config"),
        "TMPDIR": str(tmp_path),
    }
    return env, log


def _run_init(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(REPO / "minio" / "init.sh")], env=env, capture_output=True, text=True,
                          timeout=60)


def test_minio_init_creates_bucket_rule_policies_and_users(minio_env, tmp_path) -> None:
    env, log = minio_env
    creds = tmp_path / "creds"
    env.update(CREDS_DIR=str(creds), VIDEOGEN_LOCAL_USER="1", VIDEOGEN_EXPIRE_DAYS="3")
    r = _run_init(env)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert "mb --ignore-existing videogen/videogen" in calls
    assert "anonymous set none videogen/videogen" in calls
    rule = json.loads(Path(f"{log}.lifecycle.json").read_text())["Rules"][0]
    assert rule == {"ID": sa.LIFECYCLE_RULE_ID, "Status": "Enabled", "Filter": {"Prefix": sa.jobs_prefix()},
                    "Expiration": {"Days": 3}}
    stages = [s.stage for s in sa.stage_access().values()
              if s.needs_credentials and (s.deployed or s.stage == "provision")]
    for stage in stages:
        assert any(c.startswith(f"admin policy create videogen videogen-{stage} ") for c in calls), stage
    deployed = [s for s in stages if s != "provision"]
    for stage in deployed:
        assert any(c.startswith(f"admin user add videogen videogen-{stage} ") for c in calls), stage
        assert f"admin policy attach videogen videogen-{stage} --user videogen-{stage}" in calls
        env_file = creds / f"videogen-{stage}.env"
        assert env_file.stat().st_mode & 0o777 == 0o600
        assert env_file.read_text().startswith(f"VIDEOGEN_S3_ACCESS_KEY=videogen-{stage}\n")
    assert not any("videogen-provision --user videogen-provision" in c for c in calls)
    local_attach = [c for c in calls if c.startswith("admin policy attach") and c.endswith("--user videogen-local")]
    assert local_attach and all(f"videogen-{s}" in local_attach[0] for s in stages)

    # idempotent: a second run keeps every generated secret and tolerates "already attached"
    before = {p.name: p.read_text() for p in creds.iterdir()}
    log.unlink()
    r = _run_init({**env, "MC_ATTACH_ALREADY": "1"})
    assert r.returncode == 0, r.stderr
    assert {p.name: p.read_text() for p in creds.iterdir()} == before


def test_minio_init_retargets_policies_and_requires_secrets(minio_env) -> None:
    env, log = minio_env
    secrets = {f"VIDEOGEN_S3_SECRET_{s.upper()}": f"secret-of-{s}-123" for s in ("preprocess", "planner", "chain",
                                                                                   "runner", "stitch")}
    r = _run_init({**env, **secrets, "VIDEOGEN_BUCKET": "videogen-prod", "VIDEOGEN_STAGES": "runner stitch"})
    assert r.returncode == 0, r.stderr
    runner_policy = json.loads(Path(f"{log}.policy.videogen-runner.json").read_text())
    resources = [res for st in runner_policy["Statement"] for res in st["Resource"]]
    assert resources and all(res.startswith("arn:aws:s3:::videogen-prod") for res in resources)
    assert "admin user add videogen videogen-runner secret-of-runner-123" in log.read_text()
    assert "videogen-preprocess secret" not in log.read_text()  # only the stages asked for

    r = _run_init({**env, "VIDEOGEN_STAGES": "runner"})  # no secret, no CREDS_DIR
    assert r.returncode != 0 and "VIDEOGEN_S3_SECRET_RUNNER is not set" in r.stderr
    r = _run_init({**env, "VIDEOGEN_EXPIRE_DAYS": "0"})
    assert r.returncode != 0 and "VIDEOGEN_EXPIRE_DAYS" in r.stderr


# ---- the commands the Deployments run exist ---------------------------------------------------------
def test_container_commands_match_the_cli(parsed) -> None:
    import typer

    from runtime.cli import app

    cli = typer.main.get_command(app)  # a click group of the `videogen` subcommands
    containers = {}
    for _path, _, lbl, body in tfcheck.blocks(parsed, "resource", "kubernetes_deployment_v1"):
        c = body["spec"][0]["template"][0]["spec"][0]["container"][0]
        containers[lbl] = (c["command"], c["args"])
    command, args = containers["function"]
    assert command == ["videogen"] and args[0] in cli.commands, args
    stage_param = cli.commands[args[0]].params[0]
    assert args[1] == "${each.key}" and stage_param.nargs == -1  # `videogen functions <stage>...`
    command, args = containers["runner"]
    assert command == ["videogen"] and args[0] == "runner"
    options = {o for p in cli.commands["runner"].params for o in p.opts}
    assert {a for a in args if a.startswith("--")} <= options, args


# ---- capacity model ---------------------------------------------------------------------------------
def test_readme_capacity_tables_are_current() -> None:
    import capacity

    block = capacity.readme_block(capacity.README.read_text())
    assert block == capacity.render(), "run: .venv/bin/python infra/tools/capacity.py --write-readme"


def test_capacity_model_is_calibrated_and_consistent() -> None:
    import capacity

    est, published = capacity.anchor()
    assert abs(est - published) / published < 0.15  # within 15 % of the published 8x H100 run
    w = capacity.default_workload("wan2.1-t2v-14b")
    h100 = capacity.GPUS["H100-SXM-80G"]
    # jobs/day = 86400 / (segments x (steps x s/step + overhead)) x runners
    expected = 86400 / (3 * (w.steps * capacity.s_per_step(w, h100, 8) + capacity.overhead_s(w, h100))) * 2
    assert capacity.jobs_per_day(w, h100, 8, segments=3, runners=2) == pytest.approx(expected)
    assert w.spec.latent_tokens(1280, 720, 81) == 75_600
    # more GPUs per runner: lower latency, lower throughput per GPU
    one, eight = capacity.jobs_per_day(w, h100, 1), capacity.jobs_per_day(w, h100, 8)
    assert eight > one and eight / 8 < one


def test_prod_runners_have_grace_for_a_step_and_an_upload(parsed) -> None:
    import capacity

    prod = tfcheck.TF_ROOT / "environments" / "prod"
    runners = tfcheck.locals_in(parsed, prod)["runners"]
    assert runners
    for name, r in runners.items():
        w = capacity.default_workload(r["model"])
        need = capacity.min_grace_s(w, capacity.GPUS["H100-SXM-80G"], r["gpus_per_pod"])
        assert r["termination_grace_s"] >= need, f"{name}: grace {r['termination_grace_s']} s < {need:.0f} s"
        assert capacity.fits(w, capacity.GPUS["H100-SXM-80G"], r["gpus_per_pod"]), name


def test_nats_accounts_come_from_runtime_accounts(parsed) -> None:
    """modules/nats: the accounts block is built from the generated locals (runtime/accounts.py), every
    stage has its user, the default tenant keeps its limited permissions, no global-account users."""
    from runtime import accounts
    from schemas.stages import STAGES

    d = REPO / "infra" / "terraform" / "modules" / "nats"
    loc = tfcheck.locals_in(parsed, d)
    assert set(loc["nats_stage_permissions"]) == {*STAGES, "runner"}
    assert loc["nats_stage_permissions"]["planner"] == accounts.stage_permissions("planner")
    assert loc["nats_default_tenant_permissions"] == accounts.default_tenant_permissions()
    assert "$JS.API.>" not in json.dumps(loc["nats_default_tenant_permissions"])
    imports = {(i["kind"], i["subject"] % "acme", i["to"]) for i in loc["nats_tenant_imports"]}
    want = accounts.tenant_account("acme", "x")["imports"]
    assert imports == {("service" if "service" in i else "stream", (i.get("service") or i["stream"])["subject"],
                        i["to"]) for i in want}
    merge = loc["values"]["config"]["merge"]
    assert "authorization" not in merge and merge["accounts"] == "${local.accounts}"
    assert loc["values"]["config"]["nats"]["tls"] == "${local.tls_values}"
    variables = {name: body for p, _, name, body in tfcheck.blocks(parsed, "variable") if p.parent == d}
    assert {"tenants", "tls"} <= set(variables)


def test_nats_tls_ca_setting_makes_the_client_use_tls(tmp_path: Path, monkeypatch) -> None:
    import asyncio
    import ssl

    from runtime.bus import Bus
    from runtime.settings import Settings

    seen: dict = {}

    async def fake_connect(**opts):
        seen.update(opts)
        raise OSError("stop here")

    import nats

    monkeypatch.setattr(nats, "connect", fake_connect)
    bundle = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    if not Path(bundle).is_file():
        pytest.skip("no CA bundle on this machine")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(Path(bundle).read_bytes())
    s = Settings(nats_url="nats://h:4222", nats_tls_ca=ca, embedded=True)
    with pytest.raises(Exception):  # noqa: B017 - the fake connect stops it
        asyncio.run(Bus(s, "t").connect(max_reconnect_attempts=0))
    assert isinstance(seen["tls"], ssl.SSLContext) and seen["servers"] == ["tls://h:4222"]


def _nats_secret_refs(node: object) -> dict[str, set[str]]:
    """env name => the secret names its secret_key_ref reads, for VIDEOGEN_NATS_USER / _PASSWORD."""
    out: dict[str, set[str]] = {}
    if isinstance(node, dict):
        if node.get("name") in ("VIDEOGEN_NATS_USER", "VIDEOGEN_NATS_PASSWORD") and "value_from" in node:
            out.setdefault(node["name"], set()).update(
                re.findall(r"name': '([^']+)'", str(node["value_from"])))
        for v in node.values():
            for k, refs in _nats_secret_refs(v).items():
                out.setdefault(k, set()).update(refs)
    elif isinstance(node, list):
        for v in node:
            for k, refs in _nats_secret_refs(v).items():
                out.setdefault(k, set()).update(refs)
    return out


def test_every_deployed_stage_connects_as_its_own_nats_user(parsed) -> None:
    """Least privilege in use (issue 13 item 2): each stage Deployment and the runners read
    VIDEOGEN_NATS_USER / _PASSWORD from their own per-stage Secret (modules/nats), never the app user's."""
    from runtime import accounts

    v = REPO / "infra" / "terraform" / "modules" / "videogen"
    n = REPO / "infra" / "terraform" / "modules" / "nats"
    for tf, key in (("functions.tf", "${var.nats.stage_credentials_secrets[each.key]}"),
                    ("runners.tf", '${var.nats.stage_credentials_secrets["runner"]}')):
        refs = _nats_secret_refs(parsed[v / tf]["resource"])
        assert refs == {"VIDEOGEN_NATS_USER": {key}, "VIDEOGEN_NATS_PASSWORD": {key}}, (tf, refs)
    # the per-stage Secrets: one per generated stage user, holding that user and its own password
    stage_secret = next(r["kubernetes_secret_v1"]["stage"] for r in parsed[n / "main.tf"]["resource"]
                        if "stage" in r.get("kubernetes_secret_v1", {}))
    assert stage_secret["for_each"] == "${toset(local.stage_users)}"
    assert stage_secret["data"] == {"VIDEOGEN_NATS_USER": "stage-${each.key}",
                                    "VIDEOGEN_NATS_PASSWORD": '${random_password.users["stage-${each.key}"].result}'}
    assert accounts.stage_user("${each.key}") == "stage-${each.key}"
    # every deployed stage (functions.tf's for_each) has a stage user, so a Secret
    users = set(tfcheck.locals_in(parsed, n)["nats_stage_permissions"])
    deployed = set(gen_infra.function_table()) | set(gen_infra.periodic_table())
    assert deployed and deployed <= users and "runner" in users, deployed - users
    for env in ("dev", "prod"):
        main = (REPO / "infra" / "terraform" / "environments" / env / "main.tf").read_text()
        assert "stage_credentials_secrets = module.nats.stage_credentials_secrets" in main, env
