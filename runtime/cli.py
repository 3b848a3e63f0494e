"""``videogen`` command line: up, runner, functions, submit, status, events, cancel,
webhooks (attempts, replay), demo."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import SecretStr
from rich.live import Live

from runtime.bus import Bus
from runtime.console import (
    attempt_line,
    console,
    err,
    follow_with_bar,
    print_outcome,
    safe_url,
    status_details,
    status_table,
)
from runtime.logging import configure_logging
from runtime.settings import Settings, load_settings
from schemas.messages import EventType, JobRequest, JobStatus, WebhookSpec
from schemas.names import KV_JOBS
from schemas.stages import STAGES

app = typer.Typer(add_completion=False, no_args_is_help=True, help="videogen: NATS in, MP4 in S3 out.")


CONNECT_ATTEMPTS = 2
"""A client command tries NATS this many times (0.5 s apart) before it says it cannot reach it."""
CONNECT_TIMEOUT_S = 2.0


def _settings(*, human: bool = False, **overrides: object) -> Settings:
    """Settings for a command, logging configured. ``human``: a command people read (submit, status,
    up, …) logs in the console format unless ``VIDEOGEN_LOG_FORMAT`` says otherwise; services
    (functions, runner) log JSON by default."""
    s = load_settings(**overrides)
    fmt = s.log_format if not human or "log_format" in s.model_fields_set else "console"
    configure_logging(s.log_level if "log_level" not in overrides else str(overrides["log_level"]), fmt)
    from runtime.trust import require_production_secrets

    require_production_secrets(s)  # embedded=false: no dev secrets, one clear line
    return s


class Unreachable(Exception):
    """NATS could not be reached: the one line the CLI prints before exiting non-zero."""


@contextlib.asynccontextmanager
async def connect(settings: Settings) -> AsyncIterator[Bus]:
    """A client command's connection: a few quick tries, then ``Unreachable`` (never retries forever)."""
    bus = Bus(settings, "videogen-cli", connect_attempts=CONNECT_ATTEMPTS, connect_timeout_s=CONNECT_TIMEOUT_S)
    try:
        await bus.__aenter__()
    except Exception as e:
        cause = bus.last_error or e.__cause__ or e
        if isinstance(cause, ConnectionRefusedError):
            reason = "connection refused"
        elif isinstance(cause, TimeoutError):
            reason = f"no answer within {CONNECT_TIMEOUT_S:g} s"
        else:
            reason = str(cause) or type(cause).__name__
        raise Unreachable(
            f"cannot reach NATS at {safe_url(settings.nats_url)} ({reason}) — is `videogen up` running? "
            "(VIDEOGEN_NATS_URL, or VIDEOGEN_DATA_DIR with the stack.env `videogen up` wrote, selects the server)"
        ) from e
    try:
        yield bus
    finally:
        await bus.close()


def run_client(settings: Settings, main: Coroutine[Any, Any, int | None]) -> int:
    """Run a client command's coroutine; NATS unreachable becomes one line on stderr and exit code 2."""
    from nats.js.errors import NotFoundError

    try:
        return asyncio.run(main) or 0
    except Unreachable as e:
        err.print(f"error: {e}", markup=False)
        return 2
    except NotFoundError as e:  # a stream / the KV bucket is missing: connected, but not provisioned
        err.print(f"error: {e.description or e} on NATS at {safe_url(settings.nats_url)}"
                  " — is the stack provisioned (`videogen up`, or `videogen up --provision-only`)?", markup=False)
        return 2


# --------------------------------------------------------------------------------------------
@app.command()
def up(
    provision_only: Annotated[bool, typer.Option(
        "--provision-only", help="start nothing; provision the configured NATS/S3")] = False,
) -> None:
    """Start the embedded nats-server + S3 server (or only provision external ones) until Ctrl-C."""
    from runtime.stack import provision, start_stack

    settings = _settings(human=True)
    if provision_only or not settings.embedded:
        report = asyncio.run(provision(settings))
        console.print_json(json.dumps(report))
        return
    stack = asyncio.run(start_stack(settings))
    gw: subprocess.Popen[bytes] | None = None
    try:
        from gateway.cli import create_key, start_gateway_process  # HTTP gateway + console

        gw, gw_url = start_gateway_process(stack.settings, Path(stack.settings.data_dir) / "gateway.log")
        api_key = asyncio.run(create_key(stack.settings, "default", "up"))  # a development key for this stack
        for line in up_banner(stack.settings, write_webhook_secret(stack.settings), gateway_url=gw_url,
                              api_key=api_key):
            console.print(line, highlight=False, markup=False)
        stop = False

        def _stop(*_: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        while not stop:
            for server in stack.servers():
                if server.process and server.process.proc.poll() is not None:
                    err.print(f"[red]{server.process.name} exited[/] (see {server.process.logfile})")
                    stop = True
            if gw is not None and gw.poll() is not None:
                err.print(f"[red]gateway exited[/] (see {Path(stack.settings.data_dir) / 'gateway.log'})")
                stop = True
            time.sleep(0.5)
    finally:
        if gw is not None:
            gw.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                gw.wait(timeout=15)
        stack.stop()
        console.print("stopped.")


WEBHOOK_SECRET_FILE = "webhook-secret"


def write_webhook_secret(settings: Settings) -> Path:
    """``<data_dir>/webhook-secret`` (0600, written atomically): the secret(s) this stack signs
    webhooks with, so a receiver can read it."""
    from runtime.trust import write_private_file

    path = Path(settings.data_dir).resolve() / WEBHOOK_SECRET_FILE
    write_private_file(path, settings.webhook_secret.get_secret_value().strip() + "\n")
    return path


NATS_URL_FILE = "nats-url"


def write_client_url(settings: Settings) -> Path:
    """``<data_dir>/nats-url`` (0600): the NATS URL a `default`-tenant client connects with,
    credentials included — read by ``export VIDEOGEN_NATS_URL="$(cat …)"`` so the banner never
    prints a password."""
    from runtime.trust import write_private_file

    path = Path(settings.data_dir).resolve() / NATS_URL_FILE
    write_private_file(path, default_tenant_url(settings) + "\n")
    return path


def default_tenant_url(settings: Settings) -> str:
    """The NATS URL a `default`-tenant client (README, your own code) connects with: user:pass@host."""
    from runtime import accounts

    if not settings.embedded or not (Path(settings.data_dir) / accounts.TENANTS_FILE).is_file():
        return settings.nats_url
    pw = accounts.load_credentials(Path(settings.data_dir)).default_password
    return ",".join(u.replace("://", f"://default:{pw}@", 1) if "@" not in u else u
                    for u in (x.strip() for x in settings.nats_url.split(",")) if u)


def up_banner(settings: Settings, secret_file: Path, *, gateway_url: str | None = None,
              api_key: str | None = None) -> list[str]:
    """What ``videogen up`` prints: where everything is (no passwords), how to verify a webhook, and
    the ``export`` lines for other terminals. ``gateway_url``/``api_key``: the HTTP gateway ``up``
    started and a key of tenant ``default`` it made for this stack (a development convenience:
    printed once, like the console URL that carries it)."""
    from gateway.cli import console_url

    data = Path(settings.data_dir).resolve()
    dev_secret = Settings.model_fields["webhook_secret"].default.get_secret_value()
    source = ("from VIDEOGEN_WEBHOOK_SECRET" if settings.webhook_secret.get_secret_value() != dev_secret else
              "the built-in development secret; set VIDEOGEN_WEBHOOK_SECRET=whsec_... (the same for every "
              "process) for your own")
    lines = [
        f"videogen stack up (data: {data})",
        f"  NATS      {safe_url(settings.nats_url)}",
        f"  S3        {safe_url(settings.s3_endpoint)}  bucket '{settings.bucket}' "
        f"(access keys in {data / 'stack.env'})",
    ]
    if gateway_url:
        lines.append(f"  gateway   {gateway_url}/v1/videos (OpenAI-compatible)"
                     + (f"  console: {console_url(gateway_url, api_key)}" if api_key else ""))
    if api_key:
        lines.append("  API key   a development key of tenant 'default', made for this stack "
                     "(`videogen keys create --tenant T` for more, `videogen keys revoke` to drop one)")
    lines += [
        f"  webhooks  signed with the secret in {secret_file} ({source})",
        "  verify a webhook in your receiver (pip install standardwebhooks); raises if forged or stale:",
        "    from standardwebhooks.webhooks import Webhook",
        f"    event = Webhook(open({str(secret_file)!r}).read().split()[0]).verify(body, headers)",
        "  other terminals (submit, functions, runner, the HTTP examples) find the stack with:",
    ]
    url_file = write_client_url(settings)
    exports = {"VIDEOGEN_DATA_DIR": str(data), "VIDEOGEN_NATS_URL": f'"$(cat {url_file})"',
               "VIDEOGEN_S3_ENDPOINT": safe_url(settings.s3_endpoint or ""),
               "VIDEOGEN_GATEWAY_URL": gateway_url or "",
               "VIDEOGEN_API_KEY": api_key or ""}
    lines += [f"    export {k}={v}" for k, v in exports.items() if v]
    lines.append(f"  ({url_file} holds the `default` tenant's NATS URL with its credentials, mode 0600: "
                 "anonymous clients are refused)")
    lines.append("Ctrl-C to stop.")
    return lines


@app.command()
def runner(
    model: Annotated[str | None, typer.Option(help="registry model name")] = None,
    nproc_per_node: Annotated[int, typer.Option("--nproc-per-node", help="ranks (GPUs) in this runner")] = 1,
    max_segments: Annotated[int | None, typer.Option(help="exit after N segments")] = None,
) -> None:
    """Run a GPU runner: ``torchrun --nproc_per_node N -m gpu_runner``."""
    settings = _settings()
    cmd = runner_command(model or settings.runner_model, nproc_per_node, max_segments)
    # torchrun and its ranks get a process group of their own, owned by this wrapper: whatever way
    # the wrapper ends, the group goes with it (killpg below; PDEATHSIG if the wrapper is SIGKILLed)
    proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent(signal.SIGTERM))

    def _forward(signum: int, _frame: object) -> None:
        # Signal the ranks, not torchrun: rank 0 finishes (or hands back) its segment and tells
        # the others to stop, every rank exits 0 and torchrun exits 0. Signalling torchrun itself
        # makes it kill the workers and exit non-zero.
        ranks = _children(proc.pid)
        for pid in ranks or [proc.pid]:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _forward)
    try:
        code = proc.wait()
    finally:
        _kill_group(proc.pid)
    raise typer.Exit(code if code >= 0 else 128 - code)


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child receive ``sig`` when this process dies (Linux prctl)."""
    if not sys.platform.startswith("linux"):
        return None

    def set_pdeathsig() -> None:
        import ctypes

        ctypes.CDLL(None).prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG

    return set_pdeathsig


def _kill_group(pgid: int, grace_s: float = 5.0) -> None:
    """End what is left of the runner's process group: SIGTERM, then SIGKILL after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.1)


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc); empty when unknown."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            out.extend(int(c) for c in text)
    except OSError:
        return []
    return out


def runner_command(model: str, nproc: int, max_segments: int | None = None) -> list[str]:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [torchrun, "--standalone", f"--nproc_per_node={nproc}", "-m", "gpu_runner", "--model", model]
    if max_segments is not None:
        cmd += ["--max-segments", str(max_segments)]
    return cmd


@app.command()
def functions(
    stages: Annotated[list[str] | None, typer.Argument(
        help=f"{' '.join(STAGES)} (default: all)")] = None,
) -> None:
    """Run CPU stage consumers in this process (all of them by default)."""
    from runtime.service import serve

    settings = _settings()
    asyncio.run(serve(list(stages or STAGES), settings))


@app.command()
def submit(
    prompt: Annotated[str, typer.Argument(help="text prompt")],
    job_id: Annotated[str | None, typer.Option(help="default: random")] = None,
    model: Annotated[str, typer.Option()] = "tiny-wan",
    task: Annotated[str, typer.Option()] = "t2v",
    width: Annotated[int | None, typer.Option()] = None,
    height: Annotated[int | None, typer.Option()] = None,
    num_frames: Annotated[int | None, typer.Option()] = None,
    fps: Annotated[int | None, typer.Option()] = None,
    steps: Annotated[int | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    image: Annotated[str | None, typer.Option(help="s3://… or https://… (i2v, animate)")] = None,
    video: Annotated[str | None, typer.Option(help="s3://… or https://… (animate)")] = None,
    webhook: Annotated[str | None, typer.Option(help="URL for signed callbacks")] = None,
    wait: Annotated[bool, typer.Option(help="follow progress until the job ends")] = True,
    timeout_s: Annotated[float, typer.Option()] = 3600.0,
) -> None:
    """Publish a JobRequest to videogen.jobs.submit and show live progress."""
    from runtime.client import submit as do_submit

    settings = _settings(human=True, log_level="WARNING")
    req = JobRequest(
        job_id=job_id or f"job-{uuid.uuid4().hex[:12]}", model=model, task=task, prompt=prompt,
        width=width, height=height, num_frames=num_frames, fps=fps, steps=steps, seed=seed, image=image, video=video,
        webhook=WebhookSpec(url=webhook) if webhook else None,
    )

    async def _run() -> int:
        async with connect(settings) as bus:
            seq = await do_submit(bus, req)
            console.print(f"submitted [bold]{req.job_id}[/] (stream seq {seq})")
            if not wait:
                return 0
            last = await follow_with_bar(bus, req.job_id, timeout_s)
            print_outcome(last)
            return 0 if last.type == EventType.SUCCEEDED else 1

    raise typer.Exit(run_client(settings, _run()))


@app.command()
def status(
    job_ids: Annotated[list[str] | None, typer.Argument(
        help="job ids (default: the most recently updated jobs)")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="without job ids: how many jobs")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw JobStatus JSON")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="refresh every second until every job has ended")] = False,
) -> None:
    """Show jobs' latest status (KV videogen-jobs): state, queue position, progress, output.

    Without job ids: the ``--limit`` most recently updated jobs, newest first."""
    from runtime.client import recent_jobs
    from runtime.client import status as get_status

    settings = _settings(human=True, log_level="WARNING")

    async def _fetch(bus: Bus) -> tuple[list[JobStatus], list[str]]:
        if not job_ids:
            return await recent_jobs(bus, limit), []
        found, missing = [], []
        for job_id in job_ids:
            st = await get_status(bus, job_id)
            if st is None:
                missing.append(job_id)
            else:
                found.append(st)
        return found, missing

    async def _run() -> int:
        async with connect(settings) as bus:
            found, missing = await _fetch(bus)
            if as_json:
                for st in found:
                    console.print_json(st.model_dump_json(exclude_none=True))
            elif watch:
                with Live(status_table(found), console=console, refresh_per_second=4) as live:
                    while found and not all(st.state.terminal for st in found):
                        await asyncio.sleep(1.0)
                        found, missing = await _fetch(bus)
                        live.update(status_table(found))
                for line in status_details(found):
                    console.print(line, highlight=False, soft_wrap=True)
            elif found:
                console.print(status_table(found))
                for line in status_details(found):
                    console.print(line, highlight=False, soft_wrap=True)
            elif not job_ids:
                err.print(f"no jobs in {KV_JOBS} yet (submit one: videogen submit \"a prompt\")", markup=False)
        for job_id in missing:
            err.print(f"no such job: {job_id}")
        return 1 if missing else 0

    raise typer.Exit(run_client(settings, _run()))


@app.command()
def events(job_id: str, follow_live: Annotated[bool, typer.Option("--follow/--no-follow")] = True) -> None:
    """Print a job's events (JSON lines), following live until the job ends."""
    from runtime.client import follow

    settings = _settings(human=True, log_level="WARNING")

    async def _run() -> None:
        async with connect(settings) as bus:
            with contextlib.suppress(TimeoutError):
                async for event in follow(bus, job_id, idle_timeout_s=None if follow_live else 2.0):
                    console.print(event.model_dump_json(), soft_wrap=True, highlight=False)

    raise typer.Exit(run_client(settings, _run()))


@app.command()
def cancel(job_id: str, reason: Annotated[str, typer.Option()] = "") -> None:
    """Cancel a queued or running job."""
    from runtime.client import cancel as do_cancel

    settings = _settings(human=True, log_level="WARNING")

    async def _run() -> None:
        async with connect(settings) as bus:
            await do_cancel(bus, job_id, reason)
        console.print(f"cancel requested for {job_id}")

    raise typer.Exit(run_client(settings, _run()))


tenants_app = typer.Typer(no_args_is_help=True, help="Tenants: NATS accounts the broker vouches for.")
app.add_typer(tenants_app, name="tenants")


_ROTATE_HELP = "new webhook secret; the previous one keeps verifying until the next rotation"


@tenants_app.command("add")
def tenants_add(name: str,
                rotate_secret: Annotated[bool, typer.Option("--rotate-secret", help=_ROTATE_HELP)] = False) -> None:
    """Create tenant NAME (its NATS account, user and webhook secret), or rotate its webhook secret.

    Embedded stack: the accounts config is regenerated and nats-server reloaded; restart
    `videogen functions` so the dispatcher signs with the new secret. Prints the tenant's credentials
    and the Terraform/Helm values for infra/."""
    from runtime import accounts
    from runtime.embedded import reload_accounts

    settings = _settings()
    data = Path(settings.data_dir)
    try:
        creds, entry = accounts.add_tenant(data, name, rotate_secret=rotate_secret)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    reloaded = reload_accounts(data, accounts.accounts_config(creds))
    from runtime.stack import write_stack_env

    env_file = data / "stack.env"
    if env_file.is_file():
        secrets_now = {t: e["webhook_secret"] for t, e in creds.tenants.items()}
        write_stack_env(settings.model_copy(update={"webhook_tenant_secrets": {
            t: SecretStr(v) for t, v in secrets_now.items()}}), env_file)
    typer.echo(f"tenant {name}: NATS user {name} (account {name}); config "
               f"{'rewritten, nats-server reloaded' if reloaded else 'applies at the next videogen up'}")
    hostport = safe_url(settings.nats_url).split("//", 1)[-1]
    typer.echo(f"  NATS URL        nats://{name}:{entry['nats_password']}@{hostport}")
    typer.echo("  a new account's imports take effect when nats-server restarts: restart `videogen up`")
    typer.echo(f"  webhook secret  {entry['webhook_secret'].split()[0]}"
               + ("  (previous one still signs until the next rotation)" if rotate_secret else ""))
    typer.echo("  infra values (terraform.tfvars.json / Helm values):")
    typer.echo("  " + json.dumps({"videogen_tenants": {name: {"nats_password": entry["nats_password"],
                                                              "webhook_secrets": entry["webhook_secret"]}}}))


webhooks_app = typer.Typer(no_args_is_help=True, help="Inspect and replay webhook deliveries.")
app.add_typer(webhooks_app, name="webhooks")


@webhooks_app.command("attempts")
def webhooks_attempts(
    job_id: str,
    event_id: Annotated[str | None, typer.Option("--event", help="only this event id")] = None,
) -> None:
    """List every recorded delivery attempt of a job's webhooks (status code, latency, outcome)."""
    from runtime.client import webhook_attempts, webhook_disabled

    settings = _settings(human=True, log_level="WARNING")

    async def _run() -> int:
        async with connect(settings) as bus:
            attempts = await webhook_attempts(bus, job_id, event_id or "*")
            disabled = await webhook_disabled(bus, job_id)
        for a in attempts:
            console.print(f"{a.event_id}  {attempt_line(a)}", highlight=False)
        if disabled is not None:
            console.print(f"[yellow]endpoint disabled[/]: {disabled.url} answered {disabled.status_code} "
                          f"for {disabled.event_id} at {disabled.time:%Y-%m-%d %H:%M:%S}")
        if not attempts:
            err.print(f"no webhook attempts recorded for {job_id}")
            return 1
        return 0

    raise typer.Exit(run_client(settings, _run()))


@webhooks_app.command("replay")
def webhooks_replay(
    event_id: str,
    job_id: Annotated[str | None, typer.Option("--job", help="the event's job (faster lookup)")] = None,
    wait: Annotated[bool, typer.Option(help="wait for the delivery's outcome")] = True,
    timeout_s: Annotated[float, typer.Option()] = 30.0,
) -> None:
    """Deliver an event's webhook again: same body and webhook-id (receivers de-duplicate on it)."""
    from runtime.client import attempts_seq, find_event, follow_attempts, replay_webhook

    settings = _settings(human=True, log_level="WARNING")

    async def _run() -> int:
        async with connect(settings) as bus:
            found = await find_event(bus, event_id, job_id)
            if found is None:
                err.print(f"event {event_id} not found in the events stream"
                          + ("" if job_id else " (pass --job <job_id> if it was never delivered)"))
                return 1
            raw, event = found
            start = await attempts_seq(bus) + 1
            request_id = await replay_webhook(bus, raw, event)
            console.print(f"replay requested for {event.id} ({event.type.value}, job {event.job_id}): {request_id}")
            if not wait:
                return 0
            attempts = follow_attempts(bus, event.job_id, event.id, start)
            try:
                async with asyncio.timeout(timeout_s):
                    async for attempt in attempts:
                        if attempt.replay:
                            console.print(attempt_line(attempt), highlight=False)
                            if attempt.next_retry_s is None:
                                return 0 if attempt.outcome == "delivered" else 1
                return 1
            except TimeoutError:
                err.print(f"no final outcome after {timeout_s:g}s (see `videogen webhooks attempts {event.job_id}`; "
                          "a job not subscribed to this event type is skipped by the dispatcher)")
                return 1
            finally:
                with contextlib.suppress(Exception):
                    await attempts.aclose()

    raise typer.Exit(run_client(settings, _run()))


@app.command()
def demo(
    prompt: Annotated[str, typer.Option()] = "a red fox running through fresh snow, cinematic",
    num_frames: Annotated[int, typer.Option()] = 9,
    keep: Annotated[bool, typer.Option(
        "--keep/--no-keep", "--serve",
        help="afterwards keep everything (servers, functions, runner, gateway and console) running until Ctrl-C")
    ] = False,
) -> None:
    """One command: start everything, submit a tiny t2v job, verify the webhook, print the URL."""
    from runtime.demo import run_demo

    configured = load_settings()
    # quiet by default; VIDEOGEN_LOG_LEVEL (or stack.env) still wins
    settings = _settings(log_level=configured.log_level if "log_level" in configured.model_fields_set else "WARNING")
    raise typer.Exit(asyncio.run(run_demo(settings, console, prompt=prompt, num_frames=num_frames, keep=keep)))


from gateway import cli as _gateway_cli  # noqa: E402 - the HTTP gateway's commands: gateway, keys

app.command("gateway")(_gateway_cli.gateway)
app.add_typer(_gateway_cli.keys_app, name="keys")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
