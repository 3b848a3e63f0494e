"""Every code example in README.md runs as written against the embedded stack.

The README's fenced ```python and ```bash blocks are extracted and run in order against a real
nats-server + weed mini with the CPU functions, a tiny-wan runner and the HTTP gateway (started as
`videogen up` starts it), with the environment a newcomer has after `videogen up`: the `export`
lines it prints (VIDEOGEN_DATA_DIR, VIDEOGEN_NATS_URL, VIDEOGEN_S3_ENDPOINT, VIDEOGEN_GATEWAY_URL,
VIDEOGEN_API_KEY), nothing else. Only blocks with an ``<!-- not-runnable: reason -->`` comment just
above them are skipped, and that list stays short (MAX_NOT_RUNNABLE).

How a block runs (one rule):
- ```python: the block as a script (`python <file>`) in a scratch directory; its output is checked
  by what it is (the nats-py submit example, the webhook receiver, the openai SDK example).
- ```bash whose every command line starts with a `videogen` command: line by line. The
  long-running service commands (`up`, `functions`, `runner`, `gateway`) are what the fixtures run
  and are skipped; every other `videogen …` line is executed and must succeed (check_videogen).
- any other ```bash block: a script, run whole with `bash -euo pipefail` in its own scratch
  directory, where `.venv/bin/videogen` is this checkout's CLI. Every such block must have a check
  of what it prints in SCRIPT_CHECKS (a script nobody checks fails the test), and it must not start
  a service.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

import cv2
import numpy as np
import pytest

from functions.webhook import signing
from gateway.cli import create_key, start_gateway_process
from runtime.cli import up_banner, write_webhook_secret
from runtime.settings import Settings
from runtime.video import probe_mp4
from tests.gateway_server import free_port
from tests.stack import REPO, child_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

README = REPO / "README.md"
FENCE = re.compile(r"(?P<marker><!--\s*not-runnable(?P<reason>[^>]*)-->\s*\n)?^```(?P<lang>\w*)\n(?P<body>.*?)^```",
                   re.S | re.M)
CODE_LANGS = {"python", "bash", "sh", "shell", "console"}  # a bare ``` fence is a diagram or output, not code
SERVICES = {"up", "functions", "runner", "gateway"}  # long-running; the fixtures run exactly these
MAX_NOT_RUNNABLE = 4
PLACEHOLDER = re.compile(r"<[a-z0-9_]+>|\bvg_\.\.\.")  # `<job_id>`, `vg_...`: not runnable as written (bash -u
# catches a script's undefined $VARIABLE when it runs)
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


def command_lines(body: str) -> list[str]:
    """A shell block's lines that are not blank and not comments."""
    return [line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]


def is_videogen_block(body: str) -> bool:
    """Every command line starts with a `videogen` command: run line by line (else: a script)."""
    lines = command_lines(body)
    return bool(lines) and all(re.fullmatch(r"[\w./-]*videogen", line.split()[0]) for line in lines)


def videogen_lines(body: str) -> list[list[str]]:
    """The `videogen …` commands of a videogen-only shell block, comments stripped, as argv."""
    return [shlex.split(line, comments=True) for line in command_lines(body)]


def starts_a_service(body: str) -> bool:
    """A command (not a comment) of the block runs `videogen up|functions|runner|gateway`."""
    service = re.compile(r"(^|[;&|(]\s*)\S*videogen\s+(" + "|".join(SERVICES) + r")\b")
    return any(service.search(re.sub(r"\s#.*$", "", line)) for line in command_lines(body))


def newcomer_env(stack: Settings, gateway: tuple[str, str]) -> dict[str, str]:
    """What a newcomer's second terminal has: the `export` lines `videogen up` printed."""
    url, key = gateway
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOGEN_")}
    for line in up_banner(stack, Path(stack.data_dir) / "webhook-secret", gateway_url=url, api_key=key):
        if line.strip().startswith("export "):
            name, value = line.strip().removeprefix("export ").split("=", 1)
            cat = re.fullmatch(r'"\$\(cat (.+)\)"', value)  # a secret the banner points at, never prints
            env[name] = Path(cat.group(1)).read_text().strip() if cat else value
    assert {"VIDEOGEN_NATS_URL", "VIDEOGEN_DATA_DIR", "VIDEOGEN_GATEWAY_URL", "VIDEOGEN_API_KEY"} <= env.keys()
    assert (env["VIDEOGEN_GATEWAY_URL"], env["VIDEOGEN_API_KEY"]) == (url, key)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def videogen_argv(argv: list[str]) -> list[str]:
    """`.venv/bin/videogen …` as written when that script exists (a set-up checkout), else the module."""
    script = REPO / argv[0]
    return [str(script), *argv[1:]] if script.is_file() else [sys.executable, "-m", "runtime.cli", *argv[1:]]


def script_check(body: str) -> Callable[[str, Path], None] | None:
    return next((check for needle, check in SCRIPT_CHECKS if needle in body), None)


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
        if b.skip_reason is not None or b.lang not in CODE_LANGS:
            continue
        where = f"README.md:{b.line}"
        placeholder = PLACEHOLDER.search(b.body)
        assert placeholder is None, f"{where}: a placeholder {placeholder.group()!r} in a runnable block"
        if b.lang in ("bash", "sh", "shell"):
            if is_videogen_block(b.body):
                assert all(argv[0].endswith("videogen") for argv in videogen_lines(b.body)), where
            else:
                assert not starts_a_service(b.body), f"{where}: a script that starts a service would never end"
                assert script_check(b.body) is not None, f"{where}: a runnable script whose output nothing checks"


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


def check_sdk_example(out: str, cwd: Path) -> None:
    """The openai SDK example: completed, an 8-frame MP4 and its thumbnail, the remix, the list, the delete."""
    lines = out.splitlines()
    assert lines[0] == "completed 64x64 1", out
    info = probe_mp4(cwd / "lighthouse.mp4")
    assert (info.frames, info.width, info.height) == (8, 64, 64), info  # 1 s at tiny-wan's 8 fps
    assert decode_image(cwd / "lighthouse.jpg").shape == (64, 64, 3)
    assert lines[1] == "completed 64x64 the same lighthouse at night", out
    listed = [line.split() for line in lines[2:-1]]
    assert len(listed) >= 2 and all(row[0].startswith("video_") for row in listed), out
    assert ["completed", "100"] in [row[1:] for row in listed], out
    assert lines[-1] == "video.deleted", out


def check_curl_example(out: str, cwd: Path) -> None:
    """The curl script: a completed video, its MP4 (9 frames) and thumbnail, its events, the i2v upload
    cancelled, the delete."""
    lines = out.splitlines()
    video_id, status = lines[0].split()
    assert video_id.startswith("video_") and status == "completed", out
    assert lines[1] == "100", out
    info = probe_mp4(cwd / "fox.mp4")
    assert (info.frames, info.width, info.height) == (9, 64, 64), info
    assert (cwd / "fox.jpg").read_bytes()[:3] == b"\xff\xd8\xff" and decode_image(cwd / "fox.jpg").shape == (64, 64, 3)
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event:")]
    assert events[0] == "job.accepted" and events[-1] == "job.succeeded" and "job.progress" in events, out
    assert lines[-2:] == ["failed", "video.deleted"], out


def check_keys_example(out: str, cwd: Path) -> None:
    """The keys script: `keys list` shows the new key (hash, tenant, name; never the key), revoke finds it."""
    listed = json.loads(out[out.index("["):out.rindex("]") + 1])
    laptop = [k for k in listed if k["name"] == "laptop"]
    assert laptop and all(k["tenant"] == "default" and len(k["sha256"]) == 64 for k in laptop), out
    assert not re.search(r"vg_[\w-]{20,}", out), "a key was printed"  # hints only (`vg_` + 4 characters)
    assert out.splitlines()[-1] == "revoked", out


SCRIPT_CHECKS: list[tuple[str, Callable[[str, Path], None]]] = [
    ("curl ", check_curl_example),
    ("videogen keys create", check_keys_example),
]


def decode_image(path: Path) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, f"{path.name} is not an image"
    return img


def run_script(body: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A shell block as a `bash -euo pipefail` script in ``cwd``, whose `.venv/bin/videogen` is this checkout's CLI."""
    cwd.mkdir(parents=True, exist_ok=True)
    shim = cwd / ".venv" / "bin" / "videogen"
    shim.parent.mkdir(parents=True, exist_ok=True)
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m runtime.cli \"$@\"\n")
    shim.chmod(0o755)
    script_env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", body], env=script_env, cwd=str(cwd),
                          capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S)


@pytest.fixture(scope="module")
def gateway(stack: Settings, workers: dict[str, subprocess.Popen[bytes]]) -> Iterator[tuple[str, str]]:
    """The HTTP gateway as `videogen up` starts it (a child `videogen gateway`), and the key `up` makes."""
    settings = stack.model_copy(update={"gateway_port": free_port()})
    proc, url = start_gateway_process(settings, Path(stack.data_dir) / "gateway-readme.log", child_env(stack))
    try:
        yield url, asyncio.run(create_key(stack, "default", "up"))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_every_readme_example_runs_as_written(stack: Settings, workers: dict[str, subprocess.Popen[bytes]],
                                             gateway: tuple[str, str], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    write_webhook_secret(stack)  # what `videogen up` does
    env = newcomer_env(stack, gateway)
    submitted: list[str] = []
    ran: list[str] = []
    t0 = time.monotonic()
    for block in readme_blocks():
        where = f"README.md:{block.line}"
        if block.skip_reason is not None or block.lang not in CODE_LANGS:
            continue
        if block.lang == "python":
            cwd = tmp_path / f"py_{block.line}"
            cwd.mkdir()
            script = cwd / "example.py"
            script.write_text(block.body)
            proc = subprocess.run([sys.executable, str(script)], env=env, cwd=str(cwd), capture_output=True,
                                  text=True, timeout=EXAMPLE_TIMEOUT_S)
            assert proc.returncode == 0, (where, proc.stdout[-2000:], proc.stderr[-2000:])
            checked = False
            if "videogen.jobs.submit" in block.body:
                check_submit_example(proc.stdout)
                checked = True
            if "def handle(" in block.body:
                check_verify_example(block.body, stack, env, monkeypatch)
                checked = True
            if "from openai import OpenAI" in block.body:
                check_sdk_example(proc.stdout, cwd)
                checked = True
            ran.append(where + ("" if checked else " (ran; nothing printed to check)"))
        elif block.lang in ("bash", "sh", "shell") and is_videogen_block(block.body):
            for argv in videogen_lines(block.body):
                if argv[1] in SERVICES:
                    continue  # running for this test already (fixtures `stack`, `workers`, `gateway`)
                proc = subprocess.run(videogen_argv(argv), env=env, cwd=str(REPO), capture_output=True, text=True,
                                      timeout=EXAMPLE_TIMEOUT_S)
                check_videogen(argv, proc, submitted)
                ran.append(f"{where}: {' '.join(argv[1:3])}")
        elif block.lang in ("bash", "sh", "shell"):
            check = script_check(block.body)
            assert check is not None, f"{where}: a runnable script whose output nothing checks"
            cwd = tmp_path / f"sh_{block.line}"
            proc = run_script(block.body, cwd, env)
            assert proc.returncode == 0, (where, proc.stdout[-2000:], proc.stderr[-2000:])
            check(proc.stdout, cwd)
            ran.append(f"{where}: script")
        else:
            pytest.fail(f"{where}: a ```{block.lang} block: mark it <!-- not-runnable: why --> or make it runnable")
    for name, proc in workers.items():
        assert proc.poll() is None, f"{name} died while the examples ran"
    assert len([r for r in ran if "submit" in r]) >= 2 and len(ran) >= 8, ran
    assert len([r for r in ran if r.endswith("script")]) >= 2, ran
    assert time.monotonic() - t0 < 900, f"README examples took {time.monotonic() - t0:.0f}s"
