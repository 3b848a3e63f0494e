"""Every code example in README.md runs as written against the embedded stack.

The README's fenced ```python and ```bash blocks are extracted and run in order against a real
nats-server + weed mini with the CPU functions and a tiny-wan runner, with the environment a
newcomer has after `videogen up` (the `export` lines it prints: VIDEOGEN_DATA_DIR,
VIDEOGEN_NATS_URL, VIDEOGEN_S3_ENDPOINT; nothing else). Only blocks with an
``<!-- not-runnable: reason -->`` comment just above them are skipped, and that list stays short.
In shell blocks, the long-running service commands (`videogen up`, `functions`, `runner`) are what
the fixtures run; every other `videogen …` line is executed and must succeed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

import pytest

from functions.webhook import signing
from runtime.cli import up_banner, write_webhook_secret
from runtime.settings import Settings
from tests.stack import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

README = REPO / "README.md"
FENCE = re.compile(r"(?P<marker><!--\s*not-runnable(?P<reason>[^>]*)-->\s*\n)?^```(?P<lang>\w*)\n(?P<body>.*?)^```",
                   re.S | re.M)
CODE_LANGS = {"python", "bash", "sh", "shell", "console"}  # a bare ``` fence is a diagram or output, not code
SERVICES = {"up", "functions", "runner"}  # long-running; the stack/workers fixtures run exactly these
MAX_NOT_RUNNABLE = 4
EXAMPLE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    line: int
    skip_reason: str | None


def readme_blocks() -> list[Block]:
    text = README.read_text()
    out = []
    for m in FENCE.finditer(text):
        reason = m.group("reason")
        out.append(Block(m.group("lang"), m.group("body"), text.count("\n", 0, m.start("lang")) + 1,
                         None if m.group("marker") is None else reason.strip(" :-") or "(no reason)"))
    return out


def videogen_lines(body: str) -> list[list[str]]:
    """The `videogen …` commands of a shell block, comments stripped, as argv."""
    out = []
    for raw in body.splitlines():
        argv = shlex.split(raw, comments=True)
        if argv and argv[0].endswith("videogen"):
            out.append(argv)
    return out


def newcomer_env(stack: Settings) -> dict[str, str]:
    """What a newcomer's second terminal has: the `export` lines `videogen up` printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOGEN_")}
    for line in up_banner(stack, Path(stack.data_dir) / "webhook-secret"):
        if line.strip().startswith("export "):
            key, value = line.strip().removeprefix("export ").split("=", 1)
            cat = re.fullmatch(r'"\$\(cat (.+)\)"', value)  # a secret the banner points at, never prints
            env[key] = Path(cat.group(1)).read_text().strip() if cat else value
    assert {"VIDEOGEN_NATS_URL", "VIDEOGEN_DATA_DIR"} <= env.keys()
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def videogen_argv(argv: list[str]) -> list[str]:
    """`.venv/bin/videogen …` as written when that script exists (a set-up checkout), else the module."""
    script = REPO / argv[0]
    return [str(script), *argv[1:]] if script.is_file() else [sys.executable, "-m", "runtime.cli", *argv[1:]]


def test_readme_marks_few_blocks_not_runnable_and_each_says_why() -> None:
    blocks = readme_blocks()
    assert sum(b.lang == "python" for b in blocks) >= 2
    skipped = [b for b in blocks if b.skip_reason is not None]
    assert len(skipped) <= MAX_NOT_RUNNABLE, [(b.line, b.skip_reason) for b in skipped]
    assert all(b.skip_reason and b.skip_reason != "(no reason)" for b in skipped), skipped
    # the first example a newcomer copies is runnable and never names a stranger's server
    first_python = next(b for b in blocks if b.lang == "python")
    assert first_python.skip_reason is None and "example.com" not in first_python.body
    for b in blocks:
        if b.lang in ("bash", "sh", "shell") and b.skip_reason is None:
            assert videogen_lines(b.body), f"README.md:{b.line}: a runnable shell block without videogen commands"


def check_submit_example(out: str) -> None:
    """The nats-py example prints every event, the download URL and the final state."""
    lines = out.splitlines()
    types = [line.split()[0] for line in lines if line.startswith("job.")]
    assert types[0] == "job.accepted" and types[-1] == "job.succeeded", out
    url = next(line.split(" ", 1)[1] for line in lines if line.startswith("download: "))
    assert lines[-1] == "succeeded", out
    blob = urlopen(url, timeout=30).read()
    assert blob[4:8] == b"ftyp", "the printed URL does not serve an MP4"


def check_verify_example(body: str, stack: Settings, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The webhook example's `handle` accepts a delivery signed by the stack's signer, refuses a forged one."""
    from standardwebhooks.webhooks import WebhookVerificationError

    monkeypatch.setenv("VIDEOGEN_DATA_DIR", env["VIDEOGEN_DATA_DIR"])
    scope: dict[str, object] = {}
    exec(compile(body, "README.md", "exec"), scope)  # noqa: S102 - the example itself
    handle = scope["handle"]
    payload = json.dumps({"type": "job.succeeded", "data": {"url": "http://x", "url_expires_at": "later"}}).encode()
    headers = signing.headers("evt-readme", payload, stack.webhook_secret)
    assert handle(payload, headers)["type"] == "job.succeeded"  # type: ignore[operator]
    with pytest.raises(WebhookVerificationError):
        handle(payload.replace(b"http://x", b"http://evil"), headers)  # type: ignore[operator]


def check_videogen(argv: list[str], proc: subprocess.CompletedProcess[str], submitted: list[str]) -> None:
    cmd = argv[1]
    out = proc.stdout
    assert proc.returncode == 0, (argv, proc.stdout[-2000:], proc.stderr[-2000:])
    assert not any(line.startswith("{") for line in proc.stderr.splitlines()), ("JSON logs", proc.stderr)
    if cmd == "submit":
        assert "succeeded" in out and re.search(r"^https?://\S+", out, re.M), out
        job = next((argv[i + 1] for i, a in enumerate(argv) if a == "--job-id"), None)
        submitted.append(job or re.search(r"submitted (\S+)", out).group(1))  # type: ignore[union-attr]
    elif cmd == "status":
        ids = [a for a in argv[2:] if not a.startswith("-")] or submitted
        for job_id in ids:
            assert job_id in out, out
        assert "succeeded" in out, out
    elif cmd == "events":
        types = [json.loads(line)["type"] for line in out.splitlines() if line.startswith("{")]
        assert types and types[0] == "job.accepted" and types[-1] == "job.succeeded", out


def test_every_readme_example_runs_as_written(stack: Settings, workers: dict[str, subprocess.Popen[bytes]],
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_webhook_secret(stack)  # what `videogen up` does
    env = newcomer_env(stack)
    submitted: list[str] = []
    ran: list[str] = []
    t0 = time.monotonic()
    for block in readme_blocks():
        where = f"README.md:{block.line}"
        if block.skip_reason is not None or block.lang not in CODE_LANGS:
            continue
        if block.lang == "python":
            script = tmp_path / f"readme_{block.line}.py"
            script.write_text(block.body)
            proc = subprocess.run([sys.executable, str(script)], env=env, cwd=str(tmp_path), capture_output=True,
                                  text=True, timeout=EXAMPLE_TIMEOUT_S)
            assert proc.returncode == 0, (where, proc.stdout[-2000:], proc.stderr[-2000:])
            if "videogen.jobs.submit" in block.body:
                check_submit_example(proc.stdout)
            if "def handle(" in block.body:
                check_verify_example(block.body, stack, env, monkeypatch)
            ran.append(where)
        elif block.lang in ("bash", "sh", "shell"):
            for argv in videogen_lines(block.body):
                if argv[1] in SERVICES:
                    continue  # running for this test already (fixtures `stack` and `workers`)
                proc = subprocess.run(videogen_argv(argv), env=env, cwd=str(REPO), capture_output=True, text=True,
                                      timeout=EXAMPLE_TIMEOUT_S)
                check_videogen(argv, proc, submitted)
                ran.append(f"{where}: {' '.join(argv[1:3])}")
        else:
            pytest.fail(f"{where}: a ```{block.lang} block: mark it <!-- not-runnable: why --> or make it runnable")
    for name, proc in workers.items():
        assert proc.poll() is None, f"{name} died while the examples ran"
    assert len([r for r in ran if "submit" in r]) >= 2 and len(ran) >= 6, ran
    assert time.monotonic() - t0 < 900, f"README examples took {time.monotonic() - t0:.0f}s"
