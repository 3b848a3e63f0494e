"""``videogen`` command line: up, runner, functions, submit, status, events, cancel, demo."""

from __future__ import annotations

import asyncio
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
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from runtime.bus import Bus
from runtime.logging import configure_logging
from runtime.settings import Settings, load_settings
from schemas.messages import EventType, JobEvent, JobRequest, WebhookSpec

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
    try:
        while not stop:
            for server in (stack.nats, stack.s3):
                if server and server.process and server.process.proc.poll() is not None:
                    err.print(f"[red]{server.process.name} exited[/] (see {server.process.logfile})")
                    stop = True
            time.sleep(0.5)
    finally:
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
    stages: Annotated[Optional[list[str]], typer.Argument(help="preprocess planner chain stitch webhook (default: all)")] = None,
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


@app.command()
def status(job_id: str) -> None:
    """Print a job's latest status (KV videogen-jobs)."""
    from runtime.client import status as get_status

    settings = _settings(log_level="WARNING")

    async def _run() -> int:
        async with Bus(settings, "videogen-cli") as bus:
            st = await get_status(bus, job_id)
        if st is None:
            err.print(f"no such job: {job_id}")
            return 1
        console.print_json(st.model_dump_json(exclude_none=True))
        return 0

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


@app.command()
def demo(
    prompt: Annotated[str, typer.Option()] = "a red fox running through fresh snow, cinematic",
    num_frames: Annotated[int, typer.Option()] = 9,
    keep: Annotated[bool, typer.Option(help="keep the data directory")] = True,
) -> None:
    """One command: start everything, submit a tiny t2v job, verify the webhook, print the URL."""
    from runtime.demo import run_demo

    settings = _settings(log_level=os.environ.get("VIDEOGEN_LOG_LEVEL", "WARNING"))
    raise typer.Exit(asyncio.run(run_demo(settings, console, prompt=prompt, num_frames=num_frames)))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
