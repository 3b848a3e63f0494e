"""videogen vs the seed-000 design (FastAPI + a Redis list + one worker), side by side in one run.

    .venv/bin/python -m bench.vs_redis [--quick] [--singles 30] [--burst 20] [--big 10] [--repeats 2]

Both systems run at once on this machine and get the same jobs (same sizes, steps and seeds):

- **peer** (``bench/redis_peer/``): real ``redis-server`` + uvicorn/FastAPI + ONE worker process.
  ``POST /jobs`` pushes onto a Redis list, the worker ``BLPOP``s, runs tiny-wan and the MP4
  encode, stores the bytes in Redis; the client polls ``GET /jobs/{id}`` until it gets the bytes.
- **ours**: the embedded stack as ``bench/overhead.py`` starts it (nats-server, weed mini, the CPU
  functions, a 1-rank tiny-wan runner): publish a ``JobRequest`` on ``videogen.jobs.submit``,
  follow the job's events to ``job.succeeded``, GET the presigned URL -> MP4 bytes in hand.

Workloads (issue 16): single 64x64x9 jobs one at a time (p50/p99 request -> bytes; peer and ours
alternate, the order flipping every job), a burst of 20 jobs of 64x64x17 (makespan: first request
-> last bytes in hand) and 10 jobs of 128x128x49 (makespan). Each side gets warm-up jobs first.
The same tiny random weights, parameters and encoder settings on both sides make the MP4s
byte-identical: the bench counts the pairs that are, as a check that both did the same work.
Every MP4 is decoded (PyAV) and its frame count checked.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.overhead import STAGES, pct

OUTLIER_S = 1.0  # a single 64x64x9 job taking longer than this is a stall, not work


@dataclass(frozen=True)
class Workload:
    name: str
    width: int
    height: int
    num_frames: int
    steps: int

    def params(self, seed: int) -> dict[str, Any]:
        return {"prompt": f"vs-redis {self.name}", "width": self.width, "height": self.height,
                "num_frames": self.num_frames, "steps": self.steps, "seed": seed}

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}x{self.num_frames}"


@dataclass
class Done:
    """One job, request -> bytes in hand."""

    e2e_s: float
    data: bytes
    marks: dict[str, float] = field(default_factory=dict)  # absolute epoch seconds of each hop's end
    compute_s: float = 0.0  # the model call alone (peer: generate; ours: the runner's segment time)
    t_end: float = 0.0  # perf_counter when the bytes were in hand
    job_id: str = ""

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


# ---- the two clients ---------------------------------------------------------------------------
class PeerClient:
    def __init__(self, http: Any, base: str, poll_s: float) -> None:
        self.http = http
        self.base = base
        self.poll_s = poll_s

    async def run(self, params: dict[str, Any]) -> Done:
        t0, w0 = time.perf_counter(), time.time()
        async with self.http.post(f"{self.base}/jobs", json=params) as resp:
            assert resp.status == 201, (resp.status, await resp.text())
            job_id = (await resp.json())["id"]
        t_post = time.time()
        while True:
            async with self.http.get(f"{self.base}/jobs/{job_id}") as resp:
                if resp.status == 200:
                    data = await resp.read()
                    break
                assert resp.status == 202, (resp.status, await resp.text())
            await asyncio.sleep(self.poll_s)
        e2e = time.perf_counter() - t0
        t_bytes = time.time()
        async with self.http.get(f"{self.base}/jobs/{job_id}/timings") as resp:
            t = await resp.json()
        marks = {"request": w0, "POST answered": t_post, "dequeued (BLPOP)": t["t_dequeued"],
                 "generated": t["t_generated"], "encoded": t["t_encoded"], "stored in Redis": t["t_stored"],
                 "bytes in hand (poll)": t_bytes}
        return Done(e2e, data, marks, t["t_generated"] - t["t_dequeued"], t0 + e2e, job_id)


PEER_HOPS = ("POST answered", "dequeued (BLPOP)", "generated", "encoded", "stored in Redis", "bytes in hand (poll)")
OURS_HOPS = (*STAGES, "bytes in hand (GET)")


class OursClient:
    def __init__(self, http: Any, bus: Any, run_id: str) -> None:
        self.http = http
        self.bus = bus
        self.run_id = run_id
        self.n = 0

    async def run(self, params: dict[str, Any]) -> Done:
        from runtime.client import follow, submit
        from schemas.messages import (
            EventType,
            JobRequest,
            SegmentCompletedData,
            SucceededData,
        )

        self.n += 1
        req = JobRequest(job_id=f"vs-{self.run_id}-{self.n}", **params)
        t0, w0 = time.perf_counter(), time.time()
        await submit(self.bus, req)
        seen: dict[str, float] = {}
        last = None
        compute = 0.0
        async for e in follow(self.bus, req.job_id):
            last = e
            seen.setdefault(e.type.value, e.time.timestamp())
            if e.type == EventType.SEGMENT_COMPLETED:
                compute += SegmentCompletedData.model_validate(e.data).elapsed_s
        assert last is not None and last.type == EventType.SUCCEEDED, last
        url = SucceededData.model_validate(last.data).url
        async with self.http.get(url) as resp:
            assert resp.status == 200, (resp.status, await resp.text())
            data = await resp.read()
        e2e = time.perf_counter() - t0
        marks = {"request": w0, **{s: seen[s] for s in STAGES}, "bytes in hand (GET)": time.time()}
        return Done(e2e, data, marks, compute, t0 + e2e, req.job_id)


# ---- measurements ------------------------------------------------------------------------------
ROLES = (  # (label, a substring of the command line), first match wins
    ("peer worker", "bench.redis_peer.worker"), ("peer uvicorn", "uvicorn"), ("peer redis-server", "redis-server"),
    ("ours runner", "gpu_runner"), ("ours torchrun", "runner"), ("ours functions", "functions"),
    ("ours nats-server", "nats-server"), ("ours weed", "weed"),
)
_TICK = os.sysconf("SC_CLK_TCK")


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        for c in children.get(pid, []):
            out.append(c)
            todo.append(c)
    return out


def cpu_by_role() -> dict[str, float]:
    """CPU seconds (user + system) used so far by each process of both systems, by role, plus
    this client process ('bench client': both sides' client code)."""
    t = os.times()
    cpu = {"bench client": t.user + t.system}
    for pid in _descendants(os.getpid()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        role = next((label for label, needle in ROLES if needle in cmd), "other")
        cpu[role] = cpu.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / _TICK
    return cpu


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}


def frames_of(data: bytes) -> int:
    """Decode every frame (PyAV): a truncated or corrupt MP4 fails here."""
    from runtime.video import decode_mp4

    return int(decode_mp4(data).shape[0])


def check(done: list[Done], wl: Workload, side: str) -> None:
    for d in done:
        n = frames_of(d.data)
        if n != wl.num_frames:
            raise AssertionError(f"{side} {wl.name}: an MP4 with {n} frames, expected {wl.num_frames}")


async def singles(peer: PeerClient, ours: OursClient, wl: Workload, n: int, warmup: int,
                  seed0: int) -> tuple[list[Done], list[Done]]:
    for i in range(warmup):
        await peer.run(wl.params(seed0 - 1 - i))
        await ours.run(wl.params(seed0 - 1 - i))
    p: list[Done] = []
    o: list[Done] = []
    for i in range(n):
        params = wl.params(seed0 + i)
        if i % 2 == 0:
            p.append(await peer.run(params))
            o.append(await ours.run(params))
        else:
            o.append(await ours.run(params))
            p.append(await peer.run(params))
    return p, o


async def burst(run: Callable[[dict[str, Any]], Awaitable[Done]], wl: Workload, n: int,
                seed0: int) -> tuple[float, list[Done], float]:
    """All ``n`` requests at once; returns (makespan, jobs, epoch of the first request)."""
    w0 = time.time()
    t0 = time.perf_counter()
    done = await asyncio.gather(*(run(wl.params(seed0 + i)) for i in range(n)))
    # from the end times, not the gather: the clients read the timings after the bytes are in hand
    return max(d.t_end for d in done) - t0, list(done), w0


@dataclass
class BurstFigures:
    makespan: list[float] = field(default_factory=list)
    head: list[float] = field(default_factory=list)  # first request -> first model call starts
    compute: list[float] = field(default_factory=list)  # sum of model-call seconds
    tail: list[float] = field(default_factory=list)  # last result stored -> last bytes in hand
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by role over this side's bursts
    last: list[Done] = field(default_factory=list)


def burst_marks(done: list[Done], w0: float, side: str) -> tuple[float, float]:
    if side == "peer":
        start = min(d.marks["dequeued (BLPOP)"] for d in done)
        stored = max(d.marks["stored in Redis"] for d in done)
    else:
        start = min(d.marks["job.started"] for d in done)
        stored = max(d.marks["job.succeeded"] for d in done)
    end = max(d.marks[PEER_HOPS[-1] if side == "peer" else OURS_HOPS[-1]] for d in done)
    return start - w0, end - stored


async def bursts(peer: PeerClient, ours: OursClient, wl: Workload, n: int, repeats: int,
                 seed0: int) -> tuple[BurstFigures, BurstFigures]:
    figs = {"peer": BurstFigures(), "ours": BurstFigures()}
    clients = {"peer": peer.run, "ours": ours.run}
    for r in range(repeats):
        order = ("peer", "ours") if r % 2 == 0 else ("ours", "peer")
        for side in order:
            cpu0 = cpu_by_role()
            makespan, done, w0 = await burst(clients[side], wl, n, seed0)
            for k, v in cpu_delta(cpu0, cpu_by_role()).items():
                figs[side].cpu[k] = figs[side].cpu.get(k, 0.0) + v
            check(done, wl, side)
            head, tail = burst_marks(done, w0, side)
            f = figs[side]
            f.makespan.append(makespan)
            f.head.append(head)
            f.tail.append(tail)
            f.compute.append(sum(d.compute_s for d in done))
            f.last = done
    return figs["peer"], figs["ours"]


def hop_table(done: list[Done], hops: tuple[str, ...]) -> list[tuple[str, float, float]]:
    rows = []
    for d_prev, name in zip(("request", *hops), hops, strict=False):
        ms = [1000 * (d.marks[name] - d.marks[d_prev]) for d in done]
        rows.append((name, pct(ms, 50), pct(ms, 99)))
    return rows


LOG_MARKS = {  # services' log lines (structlog JSON, UTC timestamps) that split the event hops
    "job_preprocessed": "log preprocess: handler done", "job_planned": "log planner: planned",
    "generation_done": "log runner: model call done", "segment_rendered": "log runner: compute thread free",
    "segment_done": "log runner: encoded+stored+handed off+acked",
    "job_succeeded": "log: job_succeeded (runner or stitch)",
}


def add_log_marks(done: list[Done], logs: list[Path]) -> None:
    """Add the services' log lines of these jobs to their marks (first occurrence of each)."""
    from datetime import datetime

    by_job = {d.job_id: d.marks for d in done}
    for path in logs:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            marks = by_job.get(rec.get("job_id", ""))
            name = LOG_MARKS.get(rec.get("event", ""))
            if marks is not None and name is not None and name not in marks:
                marks[name] = datetime.fromisoformat(rec["timestamp"]).timestamp()


def timeline(done: list[Done]) -> list[tuple[str, float, float]]:
    """(mark, p50 ms after the request, p50 ms after the previous mark) for every mark all jobs
    have (events, log lines, bytes in hand), in the order of their p50 offsets."""
    names = [n for n in done[0].marks if n != "request" and all(n in d.marks for d in done)]
    offsets = {n: [1000 * (d.marks[n] - d.marks["request"]) for d in done] for n in names}
    rows, prev = [], "request"
    for n in sorted(names, key=lambda n: pct(offsets[n], 50)):
        rows.append((n, pct(offsets[n], 50), pct([1000 * (d.marks[n] - d.marks[prev]) for d in done], 50)))
        prev = n
    return rows


def idle_between_calls(done: list[Done], side: str) -> list[float]:
    """Seconds between one model call's end and the next one's start in the model process (the
    peer's worker encodes and stores in between; our runner's I/O process does that during the next call)."""
    if side == "peer":
        spans = sorted((d.marks["dequeued (BLPOP)"], d.marks["generated"]) for d in done)
    else:
        if not all(LOG_MARKS["segment_rendered"] in d.marks for d in done):
            return []
        spans = sorted((d.marks["job.started"], d.marks[LOG_MARKS["segment_rendered"]]) for d in done)
    return [nxt[0] - cur[1] for cur, nxt in itertools.pairwise(spans)]


def identical(a: list[Done], b: list[Done]) -> int:
    return sum(x.sha == y.sha for x, y in zip(a, b, strict=True))


def save(out: Path | None, side: str, wl: Workload, done: list[Done]) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(done):
        (out / f"{side}-{wl.name}-{i}.mp4").write_bytes(d.data)


# ---- the run -----------------------------------------------------------------------------------
async def measure(settings: Any, base: str, args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    from runtime.bus import Bus

    single = Workload("single", 64, 64, 9, 2)
    small = Workload("burst", 64, 64, 17, 4)
    big = Workload("big", 128, 128, 49, 2)
    out = Path(args.out) if args.out else None
    res: dict[str, Any] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http, Bus(settings, "bench-vs-redis") as bus:
        peer = PeerClient(http, base, args.poll_ms / 1000)
        ours = OursClient(http, bus, str(int(time.time())))
        p, o = await singles(peer, ours, single, args.singles, args.warmup, 1000)
        check(p, single, "peer")
        check(o, single, "ours")
        save(out, "peer", single, p)
        save(out, "ours", single, o)
        res["single"] = (single, p, o)
        # a warm-up for the burst size on both sides (first 17-frame call allocates)
        for run in (peer.run, ours.run):
            await run(small.params(1))
        peer.poll_s = args.burst_poll_ms / 1000
        res["burst"] = (small, *await bursts(peer, ours, small, args.burst, args.repeats, 2000))
        save(out, "peer", small, res["burst"][1].last)
        save(out, "ours", small, res["burst"][2].last)
        for run in (peer.run, ours.run):
            await run(big.params(1))
        res["big"] = (big, *await bursts(peer, ours, big, args.big, args.big_repeats, 3000))
        save(out, "peer", big, res["big"][1].last)
        save(out, "ours", big, res["big"][2].last)
    return res


def verdict(ratio: float, goal: float | None) -> str:
    if goal is None:
        return ""
    return f"<= {goal:.1f}x  {'met' if ratio <= goal else 'NOT MET'}"


def report(res: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    single, p, o = res["single"]
    pe, oe = [d.e2e_s for d in p], [d.e2e_s for d in o]
    small, pb, ob = res["burst"]
    big, pg, og = res["big"]
    med = statistics.median
    rows = [
        (f"single {single.size} p50 (ms)", 1000 * pct(pe, 50), 1000 * pct(oe, 50), 1.2),
        (f"single {single.size} p99 (ms)", 1000 * pct(pe, 99), 1000 * pct(oe, 99), None),
        (f"burst {args.burst} x {small.size} makespan (s)", med(pb.makespan), med(ob.makespan), 1.0),
        (f"{args.big} x {big.size} makespan (s)", med(pg.makespan), med(og.makespan), None),
    ]
    load = os.getloadavg()
    print(f"videogen vs the Redis-list design; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
          f"{os.cpu_count()} CPUs, torch threads {args.threads} per model process")
    print(f"peer client polls GET /jobs/{{id}} every {args.poll_ms:g} ms (single jobs), "
          f"{args.burst_poll_ms:g} ms (bursts)")
    print(f"single: {len(p)} jobs each, {single.steps} steps, alternating order; burst: {args.burst} jobs "
          f"x {args.repeats} repeats, {small.steps} steps; big: {args.big} jobs x {args.big_repeats} repeats, "
          f"{big.steps} steps (makespans: median of repeats)")
    print(f"{'':40}{'peer':>10}{'ours':>10}{'ours/peer':>11}   goal")
    summary: dict[str, Any] = {"load_average": load, "rows": []}
    for name, a, b, goal in rows:
        ratio = b / a
        print(f"{name:40}{a:>10.1f}{b:>10.1f}{ratio:>10.2f}x   {verdict(ratio, goal)}" if "ms" in name else
              f"{name:40}{a:>10.2f}{b:>10.2f}{ratio:>10.2f}x   {verdict(ratio, goal)}")
        summary["rows"].append({"name": name, "peer": a, "ours": b, "ratio": ratio, "goal": goal})
    print(f"burst makespans (s): peer {', '.join(f'{x:.2f}' for x in pb.makespan)}; "
          f"ours {', '.join(f'{x:.2f}' for x in ob.makespan)}")
    print(f"big makespans (s):   peer {', '.join(f'{x:.2f}' for x in pg.makespan)}; "
          f"ours {', '.join(f'{x:.2f}' for x in og.makespan)}")
    outliers_p = sum(x > OUTLIER_S for x in pe)
    outliers_o = [round(x, 2) for x in oe if x > OUTLIER_S]
    print(f"single jobs over {OUTLIER_S:.0f} s: peer {outliers_p}, ours {len(outliers_o)} {outliers_o or ''}")
    print(f"byte-identical MP4s (same seed, peer vs ours): single {identical(p, o)}/{len(p)}, "
          f"burst {identical(pb.last, ob.last)}/{len(pb.last)}, big {identical(pg.last, og.last)}/{len(pg.last)}; "
          f"all {len(p) + len(o) + 2 * (len(pb.last) + len(pg.last))} decoded with the right frame count")
    print()
    print(f"model call alone, single {single.size} p50: peer {1000 * pct([d.compute_s for d in p], 50):.1f} ms, "
          f"ours {1000 * pct([d.compute_s for d in o], 50):.1f} ms")
    print("peer: p50 / p99 time from the previous mark (request = POST sent):")
    for name, a, b in hop_table(p, PEER_HOPS):
        print(f"  {name:28}{a:>8.1f}{b:>9.1f} ms")
    print("ours: p50 / p99 time from the previous mark (request = publish; event timestamps; "
          "started->segment_completed includes the model call, encode and upload):")
    for name, a, b in hop_table(o, OURS_HOPS):
        print(f"  {name:28}{a:>8.1f}{b:>9.1f} ms")
    if any(LOG_MARKS["segment_done"] in d.marks for d in o):
        print("ours, single jobs: event timestamps and the services' log lines, p50 ms after the publish / "
              "after the previous mark:")
        for name, at, step in timeline(o):
            print(f"  {name:44}{at:>8.1f}{step:>8.1f} ms")
    for label, wl, fp, fo in (("burst", small, pb, ob), ("big", big, pg, og)):
        print(f"{label} {wl.size} (medians of repeats): first request -> first model call: peer "
              f"{1000 * med(fp.head):.0f} ms, ours {1000 * med(fo.head):.0f} ms; model calls summed: peer "
              f"{med(fp.compute):.2f} s, ours {med(fo.compute):.2f} s; last result stored -> last bytes: "
              f"peer {1000 * med(fp.tail):.0f} ms, ours {1000 * med(fo.tail):.0f} ms")
        gp, go = idle_between_calls(fp.last, "peer"), idle_between_calls(fo.last, "ours")
        if gp and go:
            print(f"  model process between model calls (peer: encode + store + BLPOP; ours: take the next "
                  f"segment, encode overlaps), last round: peer p50 {1000 * pct(gp, 50):.1f} ms, "
                  f"sum {sum(gp):.2f} s; ours p50 {1000 * pct(go, 50):.1f} ms, sum {sum(go):.2f} s")
        for side, f in (("peer", fp), ("ours", fo)):
            busy = ", ".join(f"{k} {v:.2f}" for k, v in sorted(f.cpu.items(), key=lambda kv: -kv[1]) if v >= 0.005)
            print(f"  CPU-s while {side}'s {label} ran ({sum(f.makespan):.2f} s wall): {busy}")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--singles", type=int, default=30, help="single 64x64x9 jobs per side")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up single jobs per side")
    ap.add_argument("--burst", type=int, default=20, help="jobs in the 64x64x17 burst")
    ap.add_argument("--repeats", type=int, default=3, help="bursts per side (order alternates)")
    ap.add_argument("--big", type=int, default=10, help="jobs of 128x128x49")
    ap.add_argument("--big-repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the runner and of the peer worker")
    ap.add_argument("--poll-ms", type=float, default=10.0,
                    help="the peer client's GET /jobs/{id} poll interval for the single jobs")
    ap.add_argument("--burst-poll-ms", type=float, default=50.0,
                    help="the same for the bursts: 20 clients polling every 10 ms cost the peer's 2 cores "
                         "~1 core (uvicorn + client), 50 ms costs ~0.2 core and <= 50 ms at the end")
    ap.add_argument("--runner-io", choices=("process", "thread"), default=None,
                    help="ours: VIDEOGEN_RUNNER_IO for the runner (default: the setting's default, process)")
    ap.add_argument("--quick", action="store_true", help="small counts: 6 singles, 1 warm-up, burst 6, big 2")
    ap.add_argument("--out", help="write every side's MP4s of the last round here")
    ap.add_argument("--json", help="write the summary rows here")
    args = ap.parse_args()
    if args.quick:
        for k, v in {"singles": 6, "warmup": 1, "burst": 6, "repeats": 1, "big": 2, "big_repeats": 1}.items():
            if ap.get_default(k) == getattr(args, k):
                setattr(args, k, v)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    from bench.redis_peer.stack import running_peer
    from runtime.logging import configure_logging
    from tests.stack import BENCH_QUOTAS, running_pipeline

    configure_logging("WARNING")
    data = Path(tempfile.mkdtemp(prefix="videogen-vs-redis-"))
    with running_peer(data / "peer", threads=args.threads) as base, \
            running_pipeline(data / "ours", runner_env={"OMP_NUM_THREADS": str(args.threads),
                                                        **({"VIDEOGEN_RUNNER_IO": args.runner_io}
                                                           if args.runner_io else {})},
                             functions_env=BENCH_QUOTAS) as settings:
        res = asyncio.run(measure(settings, base, args))
    logs = [data / "ours" / "functions.log", data / "ours" / "runner.log"]
    for key in ("burst", "big"):
        add_log_marks(res[key][2].last, logs)
    add_log_marks(res["single"][2], logs)
    summary = report(res, args)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
