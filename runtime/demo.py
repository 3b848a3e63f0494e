"""``videogen demo``: the whole path on this machine, in one command.

Starts a real nats-server and S3 server (free ports, under ``<data_dir>/demo``), the CPU
functions and a tiny-wan GPU runner as child processes, and a local webhook receiver; submits
a t2v job, shows live progress, verifies the signed webhook and the downloaded MP4, prints the
presigned URL, then shuts everything down (with ``keep``: after Ctrl-C, so the stack can take
more jobs from ``videogen submit`` in another terminal).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.request import urlopen

from rich.console import Console

from runtime.bus import Bus
from runtime.console import follow_with_bar, print_outcome
from runtime.settings import Settings
from schemas.messages import EventType, JobEvent, JobRequest, SucceededData, WebhookSpec

if TYPE_CHECKING:
    from runtime.testing.webhook_receiver import WebhookReceiver


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


async def wait_until_stopped(procs: list[subprocess.Popen[bytes]], console: Console, poll_s: float = 0.5) -> None:
    """Block until SIGINT/SIGTERM, or until one of ``procs`` exits (then say which)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            for p in procs:
                if p.poll() is not None:
                    console.print(f"[red]worker pid {p.pid} exited[/] ({p.returncode}); stopping")
                    return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll_s)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def run_demo(settings: Settings, console: Console, *, prompt: str, num_frames: int, keep: bool = False) -> int:
    from runtime.client import submit
    from runtime.stack import provision, start_servers
    from runtime.testing.webhook_receiver import WebhookReceiver

    data = (Path(settings.data_dir) / "demo").resolve()
    data.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]videogen demo[/] — data in {data}")
    base = settings.model_copy(update={"data_dir": data, "embedded": True, "webhook_allow_hosts": ["127.0.0.1"]})
    t0 = time.monotonic()
    s, nats, s3 = start_servers(base, fixed_ports=False)
    console.print(f"  nats-server  {s.nats_url}  (JetStream, file store, sync always)")
    console.print(f"  S3 (weed)    {s.s3_endpoint}  bucket '{s.bucket}'")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        await provision(s)
        env = {**os.environ, "VIDEOGEN_DATA_DIR": str(data), "VIDEOGEN_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
               "VIDEOGEN_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}
        procs.append(_spawn([sys.executable, "-m", "runtime.cli", "functions"], env, data / "functions.log"))
        procs.append(_spawn([sys.executable, "-m", "runtime.cli", "runner", "--model", "tiny-wan"], env,
                            data / "runner.log"))
        console.print(f"  workers      functions (pid {procs[0].pid}), tiny-wan runner (pid {procs[1].pid}); "
                      f"logs: {data}/*.log")
        from gateway.cli import console_url, create_key, start_gateway_process  # HTTP gateway + console
        gw_proc, gw_url = start_gateway_process(s, data / "gateway.log", env)
        procs.append(gw_proc)
        api_key = await create_key(s, "default", "demo")  # a development key of this stack
        console_at = console_url(gw_url, api_key)
        console.print(f"  gateway      {gw_url}/v1/videos  console: {console_at}")
        secret = s.webhook_secret.get_secret_value().split()[0]
        async with WebhookReceiver(secret) as receiver, Bus(s, "videogen-demo") as bus:
            job = JobRequest(
                job_id=f"demo-{uuid.uuid4().hex[:8]}", prompt=prompt, num_frames=num_frames,
                webhook=WebhookSpec(url=receiver.url,
                                    events=(EventType.ACCEPTED, EventType.SUCCEEDED, EventType.FAILED)),
            )
            await submit(bus, job)
            console.print(f"submitted [bold]{job.job_id}[/] to videogen.jobs.submit "
                          f"(model {job.model}, {num_frames} frames); waiting for the runner to warm up…")
            last = await follow_with_bar(bus, job.job_id, timeout_s=600, out=console)
            print_outcome(last, out=console)
            ok = last.type == EventType.SUCCEEDED
            if ok:
                ok = await _verify(console, receiver, last)
            console.print(f"[bold]{'demo OK' if ok else 'demo FAILED'}[/] in {time.monotonic() - t0:.1f}s")
        if keep:  # keep the stack and the console up for a newcomer to explore
            console.print(f"stack kept running: console {console_at}\nin another terminal:\n"
                          f"  export VIDEOGEN_DATA_DIR={data}\n"
                          f"  export VIDEOGEN_GATEWAY_URL={gw_url}\n"
                          f"  export VIDEOGEN_API_KEY={api_key}\n"
                          "  videogen submit 'a paper boat on a pond' --num-frames 9\nCtrl-C to stop.")
            await wait_until_stopped(procs, console)
        return 0 if ok else 1
    finally:
        _stop(procs)
        s3.stop()
        nats.stop()


async def _verify(console: Console, receiver: WebhookReceiver, last: JobEvent) -> bool:
    """The signed webhooks arrived and verify; the presigned URL serves the MP4 the event describes."""
    await receiver.wait_for(2, timeout_s=60)
    console.print("webhooks received:")
    ok = True
    for d in receiver.deliveries:
        body = json.loads(d.body)
        mark = "[green]signature verified[/]" if d.verified else "[red]SIGNATURE INVALID[/]"
        ok &= d.verified
        console.print(f"  {body['type']:<16} webhook-id {d.headers.get('webhook-id')}  {mark}")
    done = last.payload(SucceededData)
    output = done.output
    blob = await asyncio.to_thread(lambda: urlopen(done.url, timeout=30).read())
    sha_ok = hashlib.sha256(blob).hexdigest() == output.sha256
    frames = _count_frames(blob)
    console.print(f"downloaded {len(blob)} bytes via the presigned URL (no credentials): "
                  f"sha256 {'matches' if sha_ok else 'MISMATCH'}, {frames} frames decoded")
    return ok and sha_ok and frames == output.frames


def _count_frames(blob: bytes) -> int:
    import io

    import av

    with av.open(io.BytesIO(blob), "r") as c:
        return sum(1 for _ in c.decode(video=0))
