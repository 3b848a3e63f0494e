"""The CLI behaves like people expect: one clear line and a non-zero exit when NATS is unreachable
(the real CLI as a subprocess against a closed port), logs for people in client commands and JSON in
services, URLs printed without credentials, and `videogen up`'s banner (where everything is, how to
verify a webhook: the printed snippet really verifies a signed delivery)."""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from standardwebhooks.webhooks import WebhookVerificationError

from functions.webhook import signing
from runtime import cli
from runtime.console import safe_url
from runtime.logging import configure_logging, get_logger
from runtime.settings import load_settings
from tests.stack import REPO


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on exit: connecting is refused


def cli_env(tmp_path: Path, nats_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOGEN_")}
    env.update({"VIDEOGEN_DATA_DIR": str(tmp_path), "VIDEOGEN_NATS_URL": nats_url, "PYTHONUNBUFFERED": "1"})
    return env


def assert_one_human_line(proc: subprocess.CompletedProcess[str], shown_url: str) -> None:
    assert proc.returncode not in (0, None), (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert shown_url in line and "cannot reach NATS" in line, line
    assert "hunter2" not in line and "alice" not in line, line  # credentials stripped
    assert not line.lstrip().startswith("{") and "Traceback" not in line, line
    with pytest.raises(ValueError):
        json.loads(line)
    assert proc.stdout.strip() == "", proc.stdout


def test_submit_with_nats_unreachable_prints_one_line_and_exits_fast(tmp_path: Path) -> None:
    port = closed_port()
    env = cli_env(tmp_path, f"nats://alice:hunter2@127.0.0.1:{port}")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "runtime.cli", "submit", "a lighthouse", "--num-frames", "9"],
                          env=env, cwd=str(REPO), capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - t0
    assert_one_human_line(proc, f"nats://127.0.0.1:{port}")
    assert proc.returncode == 2
    assert elapsed < 6.0, f"took {elapsed:.1f}s"


@pytest.mark.parametrize("args", [
    ["status"], ["status", "some-job"], ["events", "some-job"], ["cancel", "some-job"],
    ["webhooks", "attempts", "some-job"], ["webhooks", "replay", "evt-1"],
])
def test_every_connecting_command_gives_up_with_one_line(tmp_path: Path, args: list[str]) -> None:
    port = closed_port()
    env = cli_env(tmp_path, f"nats://alice:hunter2@127.0.0.1:{port}")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "runtime.cli", *args], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=60)
    assert_one_human_line(proc, f"nats://127.0.0.1:{port}")
    assert time.monotonic() - t0 < 15.0  # generous under load; the submit test bounds it tightly


def test_safe_url_strips_credentials_and_queries() -> None:
    assert safe_url("nats://alice:hunter2@127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert safe_url("nats://a:b@h1:4222, tls://h2:4223") == "nats://h1:4222,tls://h2:4223"
    assert safe_url("http://127.0.0.1:8333/bucket?X-Amz-Signature=abc") == "http://127.0.0.1:8333/bucket"
    assert safe_url("tls://[::1]:4222") == "tls://[::1]:4222"
    assert safe_url(None) == ""


def test_console_format_is_for_people_and_json_for_services() -> None:
    buf = io.StringIO()
    configure_logging("INFO", "console", stream=buf)
    get_logger(component="bus").warning("nats_reconnected", server="nats://127.0.0.1:4222")
    line = buf.getvalue().strip()
    assert "nats_reconnected" in line and "component=bus" in line and "warning" in line, line
    with pytest.raises(ValueError):
        json.loads(line)

    buf = io.StringIO()
    configure_logging("INFO", "json", stream=buf)
    get_logger(component="bus").warning("nats_reconnected", job_id="j1")
    record = json.loads(buf.getvalue())
    assert record["event"] == "nats_reconnected" and record["job_id"] == "j1" and record["level"] == "warning"


def test_client_commands_default_to_console_logs_unless_format_is_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VIDEOGEN_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("VIDEOGEN_LOG_FORMAT", raising=False)
    try:
        cli._settings(human=True)
        get_logger().warning("human_line")
        cli._settings()  # a service (functions, runner): JSON
        get_logger().warning("service_line")
        monkeypatch.setenv("VIDEOGEN_LOG_FORMAT", "json")
        cli._settings(human=True)  # an explicit choice wins
        get_logger().warning("explicit_json")
    finally:
        configure_logging()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3, lines
    assert "human_line" in lines[0] and not lines[0].startswith("{")
    assert json.loads(lines[1])["event"] == "service_line"
    assert json.loads(lines[2])["event"] == "explicit_json"


def test_up_banner_says_where_everything_is_and_its_snippet_verifies_a_webhook(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIDEOGEN_WEBHOOK_SECRET", raising=False)
    monkeypatch.setenv("VIDEOGEN_DATA_DIR", str(tmp_path))
    s = load_settings(data_dir=tmp_path, nats_url="nats://nuser:natspass@127.0.0.1:4999",
                      s3_endpoint="http://127.0.0.1:8999", s3_access_key="AKIDBANNERTEST",
                      s3_secret_key="s3-banner-secret")
    secret_file = cli.write_webhook_secret(s)
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert secret_file.read_text().strip() == s.webhook_secret.get_secret_value()
    text = "\n".join(cli.up_banner(s, secret_file))

    assert "nats://127.0.0.1:4999" in text and "http://127.0.0.1:8999" in text
    assert str(secret_file) in text and "development secret" in text
    for secret in ("natspass", s.s3_secret_key.get_secret_value(), s.s3_access_key.get_secret_value(),
                   s.webhook_secret.get_secret_value()):
        assert secret not in text
    assert f"export VIDEOGEN_DATA_DIR={tmp_path.resolve()}" in text

    # the two printed lines verify a delivery signed by our signer, and refuse a forged one
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "from standardwebhooks" in line)
    snippet = "\n".join(line.strip() for line in lines[start:start + 2])
    body = json.dumps({"type": "job.succeeded", "data": {"url": "http://x"}}).encode()
    headers = signing.headers("evt-1", body, s.webhook_secret)
    scope: dict[str, object] = {"body": body, "headers": headers}
    exec(snippet, scope)  # noqa: S102 - the printed example itself
    assert scope["event"] == {"type": "job.succeeded", "data": {"url": "http://x"}}
    with pytest.raises(WebhookVerificationError):
        exec(snippet, {"body": body.replace(b"http://x", b"http://evil"), "headers": headers})  # noqa: S102

    # with the gateway `up` started: its URL and the development key, as exports and in the console URL
    assert "VIDEOGEN_GATEWAY_URL" not in text and "VIDEOGEN_API_KEY" not in text
    key = "vg_" + "k" * 43
    with_gw = cli.up_banner(s, secret_file, gateway_url="http://127.0.0.1:8123", api_key=key)
    exports = dict(line.strip().removeprefix("export ").split("=", 1) for line in with_gw
                   if line.strip().startswith("export "))
    assert exports["VIDEOGEN_GATEWAY_URL"] == "http://127.0.0.1:8123" and exports["VIDEOGEN_API_KEY"] == key
    # no password in an export either: the URL with credentials is read from a 0600 file
    url_file = Path(s.data_dir).resolve() / cli.NATS_URL_FILE
    assert exports["VIDEOGEN_NATS_URL"] == f'"$(cat {url_file})"'
    assert url_file.stat().st_mode & 0o777 == 0o600 and url_file.read_text().startswith("nats://")
    assert f"http://127.0.0.1:8123/#key={key}" in "\n".join(with_gw) and "development key" in "\n".join(with_gw)
    assert with_gw[-1].startswith("Ctrl-C to stop")

    monkeypatch.setenv("VIDEOGEN_WEBHOOK_SECRET", signing.generate_secret())
    own = load_settings(data_dir=tmp_path)
    assert "from VIDEOGEN_WEBHOOK_SECRET" in "\n".join(cli.up_banner(own, cli.write_webhook_secret(own)))
