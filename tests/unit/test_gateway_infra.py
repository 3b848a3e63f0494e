"""infra/terraform/modules/videogen/gateway.tf: the gateway's Deployment runs a real `videogen`
command, and the Service, Ingress, HPA, PDB and NetworkPolicy all point at it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from schemas import names

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "infra" / "tools"))

import tfcheck  # noqa: E402  (lives in infra/tools, put on sys.path just above; as in test_infra.py)

GATEWAY_TF = REPO / "infra" / "terraform" / "modules" / "videogen" / "gateway.tf"
NATS_TF = REPO / "infra" / "terraform" / "modules" / "nats" / "main.tf"


@pytest.fixture(scope="module")
def resources() -> dict[str, dict]:
    parsed = {GATEWAY_TF: tfcheck.parse_file(GATEWAY_TF)}
    return {f"{rtype}.{name}": body for _, rtype, name, body in tfcheck.blocks(parsed, "resource")}


def test_deployment_runs_the_gateway_command(resources: dict[str, dict]) -> None:
    import typer

    from runtime.cli import app

    container = resources["kubernetes_deployment_v1.gateway"]["spec"][0]["template"][0]["spec"][0]["container"][0]
    assert container["command"] == ["videogen"]
    args = container["args"]
    cli = typer.main.get_command(app)
    assert args[0] == "gateway" and args[0] in cli.commands
    options = {o for p in cli.commands["gateway"].params for o in p.opts}
    assert {a for a in args if a.startswith("--")} <= options
    probes = {p: container[p][0]["http_get"][0]["path"] for p in ("readiness_probe", "liveness_probe")}
    assert probes == {"readiness_probe": "/readyz", "liveness_probe": "/healthz"}


def test_service_ingress_hpa_target_the_deployment(resources: dict[str, dict]) -> None:
    assert {"kubernetes_deployment_v1.gateway", "kubernetes_service_v1.gateway", "kubernetes_ingress_v1.gateway",
            "kubernetes_horizontal_pod_autoscaler_v2.gateway", "kubernetes_pod_disruption_budget_v1.gateway",
            "kubernetes_network_policy_v1.gateway_ingress"} <= set(resources)
    dep = resources["kubernetes_deployment_v1.gateway"]["spec"][0]
    assert dep["selector"][0]["match_labels"] == "${local.gateway_labels}"
    assert resources["kubernetes_service_v1.gateway"]["spec"][0]["selector"] == "${local.gateway_labels}"
    backend = resources["kubernetes_ingress_v1.gateway"]["spec"][0]["rule"][0]["http"][0]["path"][0]["backend"][0]
    assert "kubernetes_service_v1.gateway" in backend["service"][0]["name"]
    hpa = resources["kubernetes_horizontal_pod_autoscaler_v2.gateway"]["spec"][0]
    assert "kubernetes_deployment_v1.gateway" in hpa["scale_target_ref"][0]["name"]
    assert hpa["metric"][0]["resource"][0]["name"] == "cpu"


def test_nats_app_user_may_read_the_api_keys() -> None:
    text = NATS_TF.read_text()
    assert text.count(f'"$KV.{names.KV_APIKEYS}.>"') == 2  # publish (KV API requests) and subscribe
