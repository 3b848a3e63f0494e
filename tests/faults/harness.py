"""The fault suite's stack: real nats-server (one, or a 3-node cluster) + weed mini, the CPU
functions and GPU runners as real processes that the tests kill -9, restart and count.

Renders are counted from the runners' own logs (``segment_rendered``, one line per finished
render of a segment, bound to job_id and segment), never inferred.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from runtime.bus import Bus
from runtime.client import status, submit
from runtime.embedded import NatsCluster, NatsServer, S3Server
from runtime.settings import Settings, load_settings
from runtime.stack import provision, start_servers
from schemas.messages import JobRequest, JobState, JobStatus
from tests.stack import start_functions, start_runner, stop, wait_for_log

TERMINAL = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out.extend(int(c) for c in (task / "children").read_text().split())
    except OSError:
        return []
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for c in children(todo.pop()):
            out.append(c)
            todo.append(c)
    return out


@dataclass
class Runner:
    proc: subprocess.Popen[bytes]
    log: Path

    def ranks(self) -> list[int]:
        """PIDs of the gpu_runner ranks (grandchildren: wrapper -> torchrun -> ranks)."""
        return [p for p in descendants(self.proc.pid) if _is_rank(p)]

    def kill9(self) -> list[int]:
        """SIGKILL the wrapper, torchrun and every rank at once (a node lost, the OOM killer)."""
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        self.proc.wait(timeout=10)
        return pids


def _is_rank(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"gpu_runner" in cmd and b"-m" in cmd and not any(b"torchrun" in c for c in cmd[:2])


@dataclass
class FaultStack:
    data: Path
    settings: Settings
    nats: NatsServer | NatsCluster
    s3: S3Server
    functions: subprocess.Popen[bytes] | None = None
    runners: list[Runner] = field(default_factory=list)
    _n: int = 0

    def start_runner(self, env: dict[str, str] | None = None, wait: bool = True) -> Runner:
        self._n += 1
        log = self.data / f"runner-{self._n}.log"
        r = Runner(start_runner(self.settings, log, env_extra=env), log)
        self.runners.append(r)
        if wait:
            wait_for_log(log, "runner_io_ready", 240, r.proc)
        return r

    def renders(self) -> Counter[tuple[str, int]]:
        """(job_id, segment) -> renders finished, from every runner log of this stack."""
        out: Counter[tuple[str, int]] = Counter()
        for log in self.data.glob("runner-*.log"):
            for line in log.read_text(errors="replace").splitlines():
                if '"segment_rendered"' in line and line.startswith("{"):
                    rec = json.loads(line)
                    out[(rec["job_id"], int(rec["segment"]))] += 1
        return out

    def log_lines(self, event: str) -> list[dict]:
        out = []
        for log in [*self.data.glob("runner-*.log"), self.data / "functions.log"]:
            if not log.exists():
                continue
            for line in log.read_text(errors="replace").splitlines():
                if f'"{event}"' in line and line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        out.append(json.loads(line))
        return out


def in_thread(fn: Callable[[], object]) -> object:
    """Run ``fn`` on a thread of its own (asyncio.run works there while a test's loop runs)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


@contextlib.contextmanager
def fault_stack(data: Path, *, functions_env: dict[str, str] | None = None, cluster: int = 1,
                stages: list[str] | None = None, with_functions: bool = True) -> Iterator[FaultStack]:
    base = load_settings(data_dir=data, embedded=True, webhook_allow_hosts=["127.0.0.1"], heartbeat_s=2.0,
                         nats_cluster_size=cluster)
    settings, nats, s3 = start_servers(base, fixed_ports=False)
    fs = FaultStack(data, settings, nats, s3)
    try:
        in_thread(lambda: asyncio.run(provision(settings, ["tiny-wan"])))
        if with_functions:
            fs.functions = start_functions(settings, data / "functions.log", stages, env_extra=functions_env)
            wait_for_log(data / "functions.log", '"consumer_started"', 120, fs.functions)
        yield fs
    finally:
        for r in fs.runners:
            if r.proc.poll() is None:
                stop(r.proc)
        if fs.functions is not None:
            stop(fs.functions)
        s3.stop()
        nats.stop()


async def submit_jobs(bus: Bus, prefix: str, n: int, **params: object) -> list[str]:
    ids = [f"{prefix}-{i}" for i in range(n)]
    for job_id in ids:
        await submit(bus, JobRequest(job_id=job_id, prompt=f"fault {job_id}", **params))  # type: ignore[arg-type]
    return ids


async def wait_jobs(bus: Bus, ids: list[str], pred: Callable[[JobStatus], bool] = lambda s: s.state in TERMINAL,
                    timeout_s: float = 120.0) -> dict[str, JobStatus]:
    deadline = time.monotonic() + timeout_s
    done: dict[str, JobStatus] = {}
    while True:
        for job_id in ids:
            if job_id in done:
                continue
            try:
                st = await status(bus, job_id)
            except Exception:  # a broker node just died: the cluster settles within seconds
                await asyncio.sleep(0.5)
                continue
            if st is not None and pred(st):
                done[job_id] = st
        if len(done) == len(ids):
            return done
        if time.monotonic() > deadline:
            missing = {j: await status(bus, j) for j in ids if j not in done}
            raise AssertionError(f"{len(missing)} of {len(ids)} jobs not done after {timeout_s}s: "
                                 f"{ {j: (s.state.value if s else None) for j, s in missing.items()} }")
        await asyncio.sleep(0.2)


def figure(name: str, **values: object) -> None:
    """Print a figure of the suite (collected in the issue note): one greppable line."""
    print(f"FAULT-FIGURE {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()), flush=True)
