"""Terminal rendering for the ``videogen`` commands (``runtime.cli``) and the demo (``runtime.demo``).

Pure presentation: a live progress bar over a job's events, a job's outcome, the status table,
webhook attempt lines. No command logic here and no broker work beyond following a job's events.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from runtime.bus import Bus
from schemas.messages import EventType, JobEvent, JobStatus, ProgressData, SucceededData, WebhookAttempt

console = Console(stderr=False, soft_wrap=True)
err = Console(stderr=True, soft_wrap=True, highlight=False)

STATE_COLOURS = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan",
                 "stitching": "cyan", "queued": "magenta"}


def safe_url(url: str | None) -> str:
    """A URL (or a comma-separated list of them) fit to print: ``user:password@`` and query strings
    (presigned signatures, tokens) removed."""
    if not url:
        return ""
    out = []
    for part in url.split(","):
        part = part.strip()
        p = urlsplit(part)
        if p.hostname is None:  # not a URL we can parse: print nothing that could be a secret
            out.append(part.split("@")[-1])
            continue
        host = p.hostname if ":" not in p.hostname else f"[{p.hostname}]"
        netloc = f"{host}:{p.port}" if p.port else host
        out.append(urlunsplit((p.scheme, netloc, p.path, "", "")))
    return ",".join(out)


def progress_line(event: JobEvent) -> str:
    """The bar's detail text for one event: ``segment 2/3 step 4/8`` or the event type."""
    d = event.data
    if isinstance(d, ProgressData):
        return f"segment {d.segment + 1}/{d.segments_total} step {d.step}/{d.steps}"
    return event.type.value


async def follow_with_bar(bus: Bus, job_id: str, timeout_s: float, out: Console | None = None) -> JobEvent:
    """Follow ``job_id``'s events with a progress bar until the job ends; return its last event."""
    from runtime.client import follow

    last: JobEvent | None = None
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=out or console,
                  transient=False) as bar:
        task = bar.add_task(job_id, total=100, detail="submitted")
        async with asyncio.timeout(timeout_s):
            async for event in follow(bus, job_id):
                last = event
                pct = event.data.progress if isinstance(event.data, ProgressData) else None
                if event.type == EventType.SUCCEEDED:
                    pct = 100.0
                bar.update(task, completed=pct if pct is not None else bar.tasks[0].completed,
                           detail=progress_line(event))
    if last is None:
        raise RuntimeError(f"the events of {job_id} ended without a terminal event")
    return last


def print_outcome(event: JobEvent, out: Console | None = None) -> None:
    """A terminal event: the output and its download URL, or the error code and message."""
    d = event.data
    if isinstance(d, SucceededData):
        o = d.output
        (out or console).print(
            f"[bold green]succeeded[/]: s3://{o.bucket}/{o.key} "
            f"({o.frames} frames {o.width}x{o.height} @ {o.fps} fps, {o.size} bytes)")
        expires = d.url_expires_at.isoformat().replace("+00:00", "Z")
        (out or console).print(f"download (expires {expires}):\n{d.url}")
    else:  # failed / rejected carry a code and a message; cancelled a reason
        err.print(f"[bold red]{event.type.value}[/]: {getattr(d, 'code', '-')}: "
                  f"{getattr(d, 'message', None) or getattr(d, 'reason', '')}")


STATUS_COLUMN_WIDTHS = {"state": len("stitching"), "queue": len("99 ahead"), "progress": len("░" * 10 + " 100.0%"),
                        "segments": len("segments"), "updated": len("00:00:00")}


def status_table(statuses: list[JobStatus]) -> Table:
    """One row per job: state, queue position, a progress bar, segments, last update."""
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    # every column but the job id keeps its full width; a long id (the gateway's are 54 characters)
    # folds onto more lines instead of squeezing the state out of an 80-column terminal
    table.add_column("job", overflow="fold", min_width=16)
    for col, width in STATUS_COLUMN_WIDTHS.items():
        table.add_column(col, no_wrap=True, min_width=width)
    for st in statuses:
        filled = int(round(st.progress / 10))
        bar = f"{'█' * filled}{'░' * (10 - filled)} {st.progress:5.1f}%"
        queue = "-" if st.queue_position is None else (
            "next" if st.queue_position == 0 else f"{st.queue_position} ahead")
        segments = f"{st.segments_done}/{st.segments_total}" if st.segments_total else "-"
        colour = STATE_COLOURS.get(st.state.value, "white")
        table.add_row(st.job_id, f"[{colour}]{st.state.value}[/]", queue, bar, segments,
                      st.updated_at.strftime("%H:%M:%S"))
    return table


def status_details(statuses: list[JobStatus]) -> list[str]:
    """One line per job with an output or an error (too long for the table)."""
    out = []
    for st in statuses:
        if st.error is not None:
            out.append(f"{st.job_id}: [red]{st.error.code}[/]: {st.error.message}")
        elif st.output is not None:
            out.append(f"{st.job_id}: s3://{st.output.bucket}/{st.output.key} ({st.output.frames} frames "
                       f"{st.output.width}x{st.output.height}, {st.output.size} bytes)")
    return out


def attempt_line(a: WebhookAttempt) -> str:
    """One webhook delivery attempt: time, event type, attempt, outcome, status code, latency."""
    code = a.status_code if a.status_code is not None else "-"
    retry = f", next in {a.next_retry_s:g}s" if a.next_retry_s is not None else ""
    error = f" ({a.error})" if a.error and a.outcome != "delivered" else ""
    kind = "replay " if a.replay else ""
    return (f"{a.time:%Y-%m-%d %H:%M:%S} {a.event_type.value:<22} {kind}attempt {a.attempt} -> {a.outcome} "
            f"[{code}] {a.latency_ms:.0f} ms{retry}{error}")
