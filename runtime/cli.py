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
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from runtime.bus import Bus
from runtime.logging import configure_logging
from runtime.settings import Settings, load_settings
from schemas.messages import EventType, JobEvent, JobRequest, JobStatus, WebhookAttempt, WebhookSpec

app = typer.Typer(add_completion=False, no_args_is_help=True, help="videogen: NATS in, MP4 in S3 out.")
console = Console(stderr=False, soft_wrap=True)
err = Console(stderr=True)


def _settings(**overrides: object) -> Settings:
    s = load_settings(**overrides)
    configure_logging(s.log_level if "log_level" not in overrides else str(overrides["log_level"]), s.log_format)
    return s


# --------------------------------------------------------------------------------------------
@app.command()
def up(
    provision_only: Annotated[bool, typer.Option("--provision-only", help="start nothing; provision the configured NATS/S3")] = False,
) -> None:
    """Start the embedded nats-server + S3 server (or only provision external ones) until Ctrl-C."""
    from runtime.stack import provision, start_stack

    settings = _settings()
    if provision_only or not settings.embedded:
        report = asyncio.run(provision(settings))
        console.print_json(json.dumps(report))
        return
    stack = asyncio.run(start_stack(settings))
    console.print(f"[bold green]videogen stack up[/] (data: {stack.settings.data_dir})")
    for k, v in stack.env().items():
        console.print(f"  export {k}={v}")
    console.print("Ctrl-C to stop.")
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    gw: subprocess.Popen[bytes] | None = None
    try:
        from gateway.cli import console_url, create_key, start_gateway_process  # HTTP gateway + console
        gw, gw_url = start_gateway_process(stack.settings, Path(stack.settings.data_dir) / "gateway.log")
        console.print(f"  gateway: {gw_url}/v1/videos  console: {console_url(gw_url, asyncio.run(create_key(stack.settings, 'default', 'up')))}")
        while not stop:
            for server in (stack.nats, stack.s3):
                if server and server.process and server.process.proc.poll() is not None:
                    err.print(f"[red]{server.process.name} exited[/] (see {server.process.logfile})")
                    stop = True
            time.sleep(0.5)
    finally:
        if gw is not None:
            gw.terminate()
        stack.stop()
        console.print("stopped.")


@app.command()
def runner(
    model: Annotated[Optional[str], typer.Option(help="registry model name")] = None,
    nproc_per_node: Annotated[int, typer.Option("--nproc-per-node", help="ranks (GPUs) in this runner")] = 1,
    max_segments: Annotated[Optional[int], typer.Option(help="exit after N segments")] = None,
) -> None:
    """Run a GPU runner: ``torchrun --nproc_per_node N -m gpu_runner``."""
    settings = _settings()
    cmd = runner_command(model or settings.runner_model, nproc_per_node, max_segments)
    proc = subprocess.Popen(cmd)

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
    raise typer.Exit(proc.wait())


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
    stages: Annotated[Optional[list[str]], typer.Argument(
        help="preprocess planner chain stitch webhook webhook-replay cancel queue sweeper (default: all)")] = None,
) -> None:
    """Run CPU stage consumers in this process (all of them by default)."""
    from runtime.service import STAGES, serve

    settings = _settings()
    asyncio.run(serve(list(stages or STAGES), settings))


# --------------------------------------------------------------------------------------------
def _progress_line(event: JobEvent) -> str:
    d = event.data
    if event.type == EventType.PROGRESS:
        return f"segment {d.get('segment', 0) + 1}/{d.get('segments_total', 1)} step {d.get('step')}/{d.get('steps')}"
    return event.type.value


async def _follow_with_bar(bus: Bus, job_id: str, timeout_s: float) -> JobEvent:
    from runtime.client import follow

    last: JobEvent | None = None
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(job_id, total=100, detail="submitted")
        async with asyncio.timeout(timeout_s):
            async for event in follow(bus, job_id):
                last = event
                pct = event.data.get("progress")
                if event.type == EventType.SUCCEEDED:
                    pct = 100.0
                bar.update(task, completed=pct if pct is not None else bar.tasks[0].completed,
                           detail=_progress_line(event))
    assert last is not None
    return last


def _print_outcome(event: JobEvent) -> None:
    if event.type == EventType.SUCCEEDED:
        out = event.data["output"]
        console.print(f"[bold green]succeeded[/]: s3://{out['bucket']}/{out['key']} "
                      f"({out['frames']} frames {out['width']}x{out['height']} @ {out['fps']} fps, {out['size']} bytes)")
        console.print(f"download (expires {event.data['url_expires_at']}):\n{event.data['url']}")
    else:
        err.print(f"[bold red]{event.type.value}[/]: {event.data.get('code')}: {event.data.get('message')}")


@app.command()
def submit(
    prompt: Annotated[str, typer.Argument(help="text prompt")],
    job_id: Annotated[Optional[str], typer.Option(help="default: random")] = None,
    model: Annotated[str, typer.Option()] = "tiny-wan",
    task: Annotated[str, typer.Option()] = "t2v",
    width: Annotated[Optional[int], typer.Option()] = None,
    height: Annotated[Optional[int], typer.Option()] = None,
    num_frames: Annotated[Optional[int], typer.Option()] = None,
    fps: Annotated[Optional[int], typer.Option()] = None,
    steps: Annotated[Optional[int], typer.Option()] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    image: Annotated[Optional[str], typer.Option(help="s3://… or https://… (i2v, animate)")] = None,
    video: Annotated[Optional[str], typer.Option(help="s3://… or https://… (animate)")] = None,
    webhook: Annotated[Optional[str], typer.Option(help="URL for signed callbacks")] = None,
    wait: Annotated[bool, typer.Option(help="follow progress until the job ends")] = True,
    timeout_s: Annotated[float, typer.Option()] = 3600.0,
) -> None:
    """Publish a JobRequest to videogen.jobs.submit and show live progress."""
    from runtime.client import submit as do_submit

    settings = _settings(log_level="WARNING")
    req = JobRequest(
        job_id=job_id or f"job-{uuid.uuid4().hex[:12]}", model=model, task=task, prompt=prompt,  # type: ignore[arg-type]
        width=width, height=height, num_frames=num_frames, fps=fps, steps=steps, seed=seed, image=image, video=video,
        webhook=WebhookSpec(url=webhook) if webhook else None,
    )

    async def _run() -> int:
        async with Bus(settings, "videogen-cli") as bus:
            seq = await do_submit(bus, req)
            console.print(f"submitted [bold]{req.job_id}[/] (stream seq {seq})")
            if not wait:
                return 0
            last = await _follow_with_bar(bus, req.job_id, timeout_s)
            _print_outcome(last)
            return 0 if last.type == EventType.SUCCEEDED else 1

    raise typer.Exit(asyncio.run(_run()))


def _status_table(statuses: list[JobStatus]) -> Table:
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col in ("job", "state", "queue", "progress", "segments", "updated"):
        table.add_column(col, no_wrap=True, overflow="fold" if col == "job" else "ellipsis")
    colours = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan",
               "stitching": "cyan", "queued": "magenta"}
    for st in statuses:
        filled = int(round(st.progress / 10))
        bar = f"{'█' * filled}{'░' * (10 - filled)} {st.progress:5.1f}%"
        queue = "-" if st.queue_position is None else (
            "next" if st.queue_position == 0 else f"{st.queue_position} ahead")
        segments = f"{st.segments_done}/{st.segments_total}" if st.segments_total else "-"
        colour = colours.get(st.state.value, "white")
        table.add_row(st.job_id, f"[{colour}]{st.state.value}[/]", queue, bar, segments,
                      st.updated_at.strftime("%H:%M:%S"))
    return table


def _status_details(statuses: list[JobStatus]) -> list[str]:
    """One line per job with an output or an error (too long for the table)."""
    out = []
    for st in statuses:
        if st.error is not None:
            out.append(f"{st.job_id}: [red]{st.error.code}[/]: {st.error.message}")
        elif st.output is not None:
            out.append(f"{st.job_id}: s3://{st.output.bucket}/{st.output.key} ({st.output.frames} frames "
                       f"{st.output.width}x{st.output.height}, {st.output.size} bytes)")
    return out


@app.command()
def status(
    job_ids: Annotated[list[str], typer.Argument(help="one or more job ids")],
    as_json: Annotated[bool, typer.Option("--json", help="print the raw JobStatus JSON")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="refresh every second until every job has ended")] = False,
) -> None:
    """Show jobs' latest status (KV videogen-jobs): state, queue position, progress, output."""
    from runtime.client import status as get_status

    settings = _settings(log_level="WARNING")

    async def _fetch(bus: Bus) -> tuple[list[JobStatus], list[str]]:
        found, missing = [], []
        for job_id in job_ids:
            st = await get_status(bus, job_id)
            if st is None:
                missing.append(job_id)
            else:
                found.append(st)
        return found, missing

    async def _run() -> int:
        async with Bus(settings, "videogen-cli") as bus:
            found, missing = await _fetch(bus)
            if as_json:
                for st in found:
                    console.print_json(st.model_dump_json(exclude_none=True))
            elif watch:
                with Live(_status_table(found), console=console, refresh_per_second=4) as live:
                    while found and not all(st.state.terminal for st in found):
                        await asyncio.sleep(1.0)
                        found, missing = await _fetch(bus)
                        live.update(_status_table(found))
                for line in _status_details(found):
                    console.print(line, highlight=False, soft_wrap=True)
            elif found:
                console.print(_status_table(found))
                for line in _status_details(found):
                    console.print(line, highlight=False, soft_wrap=True)
        for job_id in missing:
            err.print(f"no such job: {job_id}")
        return 1 if missing else 0

    raise typer.Exit(asyncio.run(_run()))


@app.command()
def events(job_id: str, follow_live: Annotated[bool, typer.Option("--follow/--no-follow")] = True) -> None:
    """Print a job's events (JSON lines), following live until the job ends."""
    from runtime.client import follow

    settings = _settings(log_level="WARNING")

    async def _run() -> None:
        async with Bus(settings, "videogen-cli") as bus:
            async for event in follow(bus, job_id, idle_timeout_s=None if follow_live else 2.0):
                console.print(event.model_dump_json(), soft_wrap=True, highlight=False)

    try:
        asyncio.run(_run())
    except TimeoutError:
        pass


@app.command()
def cancel(job_id: str, reason: Annotated[str, typer.Option()] = "") -> None:
    """Cancel a queued or running job."""
    from runtime.client import cancel as do_cancel

    settings = _settings(log_level="WARNING")

    async def _run() -> None:
        async with Bus(settings, "videogen-cli") as bus:
            await do_cancel(bus, job_id, reason)

    asyncio.run(_run())
    console.print(f"cancel requested for {job_id}")


webhooks_app = typer.Typer(no_args_is_help=True, help="Inspect and replay webhook deliveries.")
app.add_typer(webhooks_app, name="webhooks")


def _attempt_line(a: WebhookAttempt) -> str:
    code = a.status_code if a.status_code is not None else "-"
    retry = f", next in {a.next_retry_s:g}s" if a.next_retry_s is not None else ""
    error = f" ({a.error})" if a.error and a.outcome != "delivered" else ""
    kind = "replay " if a.replay else ""
    return (f"{a.time:%Y-%m-%d %H:%M:%S} {a.event_type.value:<22} {kind}attempt {a.attempt} -> {a.outcome} "
            f"[{code}] {a.latency_ms:.0f} ms{retry}{error}")


@webhooks_app.command("attempts")
def webhooks_attempts(
    job_id: str,
    event_id: Annotated[Optional[str], typer.Option("--event", help="only this event id")] = None,
) -> None:
    """List every recorded delivery attempt of a job's webhooks (status code, latency, outcome)."""
    from runtime.client import webhook_attempts, webhook_disabled

    settings = _settings(log_level="WARNING")

    async def _run() -> int:
        async with Bus(settings, "videogen-cli") as bus:
            attempts = await webhook_attempts(bus, job_id, event_id or "*")
            disabled = await webhook_disabled(bus, job_id)
        for a in attempts:
            console.print(f"{a.event_id}  {_attempt_line(a)}", highlight=False)
        if disabled is not None:
            console.print(f"[yellow]endpoint disabled[/]: {disabled.url} answered {disabled.status_code} "
                          f"for {disabled.event_id} at {disabled.time:%Y-%m-%d %H:%M:%S}")
        if not attempts:
            err.print(f"no webhook attempts recorded for {job_id}")
            return 1
        return 0

    raise typer.Exit(asyncio.run(_run()))


@webhooks_app.command("replay")
def webhooks_replay(
    event_id: str,
    job_id: Annotated[Optional[str], typer.Option("--job", help="the event's job (faster lookup)")] = None,
    wait: Annotated[bool, typer.Option(help="wait for the delivery's outcome")] = True,
    timeout_s: Annotated[float, typer.Option()] = 30.0,
) -> None:
    """Deliver an event's webhook again: same body and webhook-id (receivers de-duplicate on it)."""
    from runtime.client import attempts_seq, find_event, follow_attempts, replay_webhook

    settings = _settings(log_level="WARNING")

    async def _run() -> int:
        async with Bus(settings, "videogen-cli") as bus:
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
                            console.print(_attempt_line(attempt), highlight=False)
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

    raise typer.Exit(asyncio.run(_run()))


@app.command()
def demo(
    prompt: Annotated[str, typer.Option()] = "a red fox running through fresh snow, cinematic",
    num_frames: Annotated[int, typer.Option()] = 9,
    keep: Annotated[bool, typer.Option(help="keep the data directory")] = True,
    serve: Annotated[bool, typer.Option("--serve", help="afterwards keep everything (and the console) running until Ctrl-C")] = False,
) -> None:
    """One command: start everything, submit a tiny t2v job, verify the webhook, print the URL."""
    from runtime.demo import run_demo

    settings = _settings(log_level=os.environ.get("VIDEOGEN_LOG_LEVEL", "WARNING"))
    raise typer.Exit(asyncio.run(run_demo(settings, console, prompt=prompt, num_frames=num_frames, serve=serve)))


from gateway import cli as _gateway_cli  # noqa: E402 - the HTTP gateway's commands: gateway, keys

app.command("gateway")(_gateway_cli.gateway)
app.add_typer(_gateway_cli.keys_app, name="keys")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
