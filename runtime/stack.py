"""Bring the stack up: embedded servers (optional), then idempotent provisioning.

``videogen up`` and ``videogen demo`` call ``start_stack``; with ``embedded=false`` it only
provisions streams, consumers, KV and the bucket on the configured NATS and S3.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from runtime import accounts
from runtime.bus import Bus
from runtime.embedded import NatsCluster, NatsServer, S3Server, port_of
from runtime.logging import get_logger
from runtime.settings import Settings, load_settings
from runtime.storage import Storage
from runtime.trust import private_dir, require_loopback, write_private_file
from schemas.registry import MODELS

log = get_logger(component="stack")


@dataclass
class Stack:
    settings: Settings
    nats: NatsServer | NatsCluster | None = None
    s3: S3Server | None = None
    provisioned: dict[str, list[str]] = field(default_factory=dict)

    def servers(self) -> list[NatsServer | S3Server]:
        """Every embedded server process (each node of a cluster)."""
        nats = self.nats.nodes if isinstance(self.nats, NatsCluster) else [self.nats] if self.nats else []
        return [*nats, *([self.s3] if self.s3 else [])]

    def stop(self) -> None:
        for server in (self.s3, self.nats):
            if server is not None:
                server.stop()

    def env(self) -> dict[str, str]:
        s = self.settings
        out = {
            "VIDEOGEN_DATA_DIR": str(s.data_dir),
            "VIDEOGEN_NATS_URL": s.nats_url,
            "VIDEOGEN_BUCKET": s.bucket,
        }
        if s.s3_endpoint:
            out["VIDEOGEN_S3_ENDPOINT"] = s.s3_endpoint
        return out


def write_stack_env(settings: Settings, path: Path) -> None:
    """Persist where the embedded servers listen so other processes (runner, submit) find them."""
    lines = [
        f"VIDEOGEN_NATS_URL={settings.nats_url}",
        f"VIDEOGEN_S3_ENDPOINT={settings.s3_endpoint}",
        f"VIDEOGEN_BUCKET={settings.bucket}",
        f"VIDEOGEN_NATS_REPLICAS={settings.nats_replicas}",
        f"VIDEOGEN_S3_ACCESS_KEY={settings.s3_access_key.get_secret_value()}",
        f"VIDEOGEN_S3_SECRET_KEY={settings.s3_secret_key.get_secret_value()}",
    ]
    if settings.nats_user and settings.nats_password:  # the stack's own processes: the service user
        lines += [f"VIDEOGEN_NATS_USER={settings.nats_user}",
                  f"VIDEOGEN_NATS_PASSWORD={settings.nats_password.get_secret_value()}"]
    if settings.webhook_tenant_secrets:
        lines.append("VIDEOGEN_WEBHOOK_TENANT_SECRETS=" + json.dumps(
            {t: s.get_secret_value() for t, s in sorted(settings.webhook_tenant_secrets.items())}))
    write_private_file(path, "\n".join(lines) + "\n")  # 0600 from its first byte, renamed into place


def start_servers(settings: Settings, *, fixed_ports: bool = True
                  ) -> tuple[Settings, NatsServer | NatsCluster, S3Server]:
    """Start nats-server + weed mini under ``settings.data_dir``; return settings pointing at them.

    ``settings.nats_cluster_size`` > 1: that many nats-servers in a loopback cluster (free ports;
    the URL lists every node) and streams/KV replicated on all of them (``nats_replicas``)."""
    data = private_dir(Path(settings.data_dir).resolve())
    nhost, nport = port_of(settings.nats_url, 4222)
    shost, sport = port_of(settings.s3_endpoint or "http://127.0.0.1:8333", 8333)
    require_loopback(nhost, "nats-server")
    require_loopback(shost, "S3 server")
    creds = accounts.load_credentials(data)
    nats: NatsServer | NatsCluster
    overrides: dict[str, object] = {}
    if settings.nats_cluster_size > 1:
        nats = NatsCluster(data, size=settings.nats_cluster_size, host=nhost,
                           accounts=accounts.accounts_config(creds)).start()
        overrides["nats_replicas"] = max(settings.nats_replicas, settings.nats_cluster_size)
    else:
        nats = NatsServer(data, host=nhost, port=nport if fixed_ports else 0,
                          accounts=accounts.accounts_config(creds)).start()
    s3 = S3Server(data, settings.s3_access_key.get_secret_value(), settings.s3_secret_key.get_secret_value(),
                  host=shost, port=sport if fixed_ports else 0).start()
    new = load_settings(**{
        **{k: v for k, v in settings.model_dump().items()},
        "data_dir": data, "nats_url": nats.url, "s3_endpoint": s3.endpoint, **overrides,
        "nats_user": accounts.SERVICE_USER, "nats_password": creds.service_password,
        "webhook_tenant_secrets": {**{t: e["webhook_secret"] for t, e in creds.tenants.items()},
                                   **{t: v.get_secret_value() for t, v in settings.webhook_tenant_secrets.items()}},
    })
    write_stack_env(new, data / "stack.env")
    return new, nats, s3


async def provision(settings: Settings, models: list[str] | None = None) -> dict[str, list[str]]:
    async with Bus(settings, "videogen-provision") as bus:
        report = await bus.provision(models if models is not None else sorted(MODELS))
    async with Storage(settings) as s3:
        created = await s3.ensure_bucket()
        try:
            await s3.put_lifecycle_expiry("jobs/", max(1, settings.status_ttl_s // 86400))
            report["lifecycle"] = [f"jobs/ expire after {max(1, settings.status_ttl_s // 86400)} d"]
        except Exception as e:  # not every S3 server implements lifecycle rules
            log.warning("lifecycle_not_supported", error=str(e))
    report["bucket"] = [f"{settings.bucket} ({'created' if created else 'exists'})"]
    log.info("provisioned", **{k: ", ".join(v) for k, v in report.items()})
    return report


async def start_stack(settings: Settings, *, fixed_ports: bool = True) -> Stack:
    stack = Stack(settings)
    if settings.embedded:
        stack.settings, stack.nats, stack.s3 = start_servers(settings, fixed_ports=fixed_ports)
    try:
        stack.provisioned = await provision(stack.settings)
    except BaseException:
        stack.stop()
        raise
    return stack
