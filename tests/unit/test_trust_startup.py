"""No silent dev secrets, no credentials in logs, private files and loopback-only embedded servers."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from runtime.settings import Settings
from runtime.trust import (
    InsecureSettings,
    NotLoopback,
    dev_defaults,
    insecure_settings,
    private_dir,
    require_loopback,
    require_production_secrets,
    strip_credentials,
    write_private_file,
)

GOOD = {"webhook_secret": SecretStr("whsec_" + "A" * 40), "s3_access_key": SecretStr("AKIAREALKEY"),
        "s3_secret_key": SecretStr("a-real-long-secret-key")}


def _settings(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


def test_embedded_mode_may_use_the_dev_defaults() -> None:
    assert insecure_settings(_settings(embedded=True)) == []


@pytest.mark.parametrize(
    ("override", "variable"),
    [
        ({}, "VIDEOGEN_WEBHOOK_SECRET"),
        ({"webhook_secret": SecretStr("")}, "VIDEOGEN_WEBHOOK_SECRET"),
        ({"s3_access_key": SecretStr(dev_defaults()["s3_access_key"])}, "VIDEOGEN_S3_ACCESS_KEY"),
        ({"s3_secret_key": SecretStr(dev_defaults()["s3_secret_key"])}, "VIDEOGEN_S3_SECRET_KEY"),
        ({"nats_user": "svc"}, "VIDEOGEN_NATS_PASSWORD"),
        ({"nats_user": "svc", "nats_password": SecretStr("password")}, "VIDEOGEN_NATS_PASSWORD"),
        ({"nats_url": "nats://svc:videogen@nats:4222"}, "VIDEOGEN_NATS_URL"),
        ({"webhook_tenant_secrets": {"acme": SecretStr(dev_defaults()["webhook_secret"])}},
         "VIDEOGEN_WEBHOOK_TENANT_SECRETS[acme]"),
    ],
)
def test_production_refuses_dev_or_unset_secrets(override: dict, variable: str) -> None:
    fields = {**GOOD, **override} if override else {}
    s = _settings(embedded=False, **fields)
    problems = insecure_settings(s)
    assert any(p.startswith(variable) for p in problems), problems
    with pytest.raises(InsecureSettings) as e:
        require_production_secrets(s)
    line = str(e.value)
    assert "\n" not in line and variable in line and e.value.code == 2


def test_production_with_real_secrets_starts() -> None:
    s = _settings(embedded=False, nats_user="svc", nats_password=SecretStr("long-random-pw"), **GOOD)
    assert insecure_settings(s) == []
    require_production_secrets(s)  # does not raise


def test_strip_credentials() -> None:
    assert strip_credentials("nats://u:p@h:4222,nats://h2:4222") == "nats://***@h:4222,nats://h2:4222"
    assert strip_credentials("http://AKIA:sekrit@s3.local:8333/x") == "http://***@s3.local:8333/x"
    assert strip_credentials("nats://h:4222") == "nats://h:4222"
    assert strip_credentials(None) is None


def test_masked_settings_hide_url_credentials_and_secrets() -> None:
    s = _settings(nats_url="nats://svc:hunter2@nats:4222", s3_endpoint="http://k:hunter3@s3:8333",
                  webhook_tenant_secrets={"acme": SecretStr("whsec_x")})
    text = repr(s.masked())
    assert "hunter2" not in text and "hunter3" not in text and "whsec_x" not in text
    assert "nats://***@nats:4222" in text


def test_private_file_is_0600_from_the_first_byte(tmp_path: Path) -> None:
    old = os.umask(0)  # the worst umask: a plain open() would create 0666
    try:
        target = tmp_path / "stack.env"
        target.write_text("old")
        os.chmod(target, 0o644)
        write_private_file(target, "VIDEOGEN_S3_SECRET_KEY=x\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text() == "VIDEOGEN_S3_SECRET_KEY=x\n"
    assert [p.name for p in tmp_path.iterdir()] == ["stack.env"]  # no temp file left behind


def test_private_file_never_follows_a_planted_temp_symlink(tmp_path: Path, monkeypatch) -> None:
    from runtime import trust

    monkeypatch.setattr(trust._secrets, "token_hex", lambda n: "fixed")
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (tmp_path / ".stack.env.fixed.tmp").symlink_to(victim)
    with pytest.raises(FileExistsError):
        write_private_file(tmp_path / "stack.env", "secret")
    assert victim.read_text() == "untouched"


def test_private_dir_is_0700(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir(mode=0o755)
    private_dir(d)
    private_dir(d / "nats")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / "nats").stat().st_mode) == 0o700


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_binds_allowed(host: str) -> None:
    assert require_loopback(host, "x") == host


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "example.com", ""])
def test_non_loopback_binds_refused(host: str) -> None:
    with pytest.raises(NotLoopback):
        require_loopback(host, "nats-server")


def test_embedded_servers_refuse_non_loopback(tmp_path: Path) -> None:
    from runtime.embedded import NatsServer, S3Server

    with pytest.raises(NotLoopback):
        NatsServer(tmp_path, host="0.0.0.0").start()
    with pytest.raises(NotLoopback):
        S3Server(tmp_path, "k", "s", host="0.0.0.0").start()
    assert not (tmp_path / "nats-server.conf").exists()  # refused before anything was written
