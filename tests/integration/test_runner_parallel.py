"""The runner as a real torchrun group of 2 ranks (gloo): end to end through the bus."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.bus import Bus
from runtime.client import follow, submit
from runtime.settings import Settings, load_settings
from runtime.stack import provision, start_servers
from runtime.storage import Storage
from runtime.video import probe_mp4 as probe
from schemas.messages import EventType, JobRequest
from tests.stack import start_functions, start_runner, stop, wait_for_log

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def private_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Its own servers, so no other runner can take the segment."""
    data = tmp_path_factory.mktemp("videogen-parallel")
    settings, nats, s3 = start_servers(load_settings(data_dir=data, heartbeat_s=2.0), fixed_ports=False)
    asyncio.run(provision(settings, ["tiny-wan"]))
    fn = start_functions(settings, data / "functions.log")
    try:
        wait_for_log(data / "functions.log", '"consumer_started"', 120, fn)
        yield settings
    finally:
        stop(fn)
        s3.stop()
        nats.stop()


async def test_two_rank_runner_renders_a_job(private_stack: Settings) -> None:
    data = Path(private_stack.data_dir)
    log = data / "runner2.log"
    runner = start_runner(private_stack, log, nproc=2)
    try:
        wait_for_log(log, "runner_io_ready", 240, runner)
        text = log.read_text()
        ranks = {json.loads(line)["rank"] for line in text.splitlines()
                 if line.startswith("{") and '"model_ready"' in line}
        assert ranks == {0, 1}, text[-2000:]
        async with Bus(private_stack, "test") as bus, Storage(private_stack) as storage:
            await submit(bus, JobRequest(job_id="par-1", prompt="two ranks", num_frames=9, steps=2,
                                         width=64, height=64))
            async with asyncio.timeout(240):
                events = [e async for e in follow(bus, "par-1")]
            assert events[-1].type == EventType.SUCCEEDED, events[-1]
            out = events[-1].data.output
            info = probe(await storage.get_bytes(out.key))
            assert info.frames == 9 and (info.width, info.height) == (64, 64)
            # one window that is the whole output: the runner stored output.mp4 and completed the job
            (done,) = [e for e in events if e.type == EventType.SEGMENT_COMPLETED]
            assert done.data.frames == 9 and done.data.object.key == out.key
            # the I/O process logs job_succeeded just after it published the event the test saw
            await asyncio.to_thread(wait_for_log, log, '"job_succeeded"', 30, runner)
            assert '"by": "runner"' in log.read_text()
        # the group really ran sequence-parallel on two ranks
        assert '"world_size": 2' in log.read_text()
    finally:
        assert stop(runner, 60) == 0, log.read_text()[-3000:]


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                out += [int(child), *_descendants(int(child))]
    except OSError:
        pass
    return out


def _rank_pid(wrapper_pid: int, rank: int) -> int:
    for pid in _descendants(wrapper_pid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + str(rank).encode() in env:
            return pid
    raise LookupError(f"rank {rank} not found under {wrapper_pid}")


async def test_kill_9_of_a_rank_mid_segment_redelivers_and_job_succeeds_once(private_stack: Settings) -> None:
    import os
    import signal

    data = Path(private_stack.data_dir)
    log_a = data / "runner-kill.log"
    group = start_runner(private_stack, log_a, nproc=2)
    wait_for_log(log_a, "runner_io_ready", 240, group)
    async with Bus(private_stack, "test") as bus, Storage(private_stack) as storage:
        await submit(bus, JobRequest(job_id="kill-1", prompt="survive", num_frames=33, steps=60,
                                     width=64, height=64))
        seen: list[EventType] = []
        async with asyncio.timeout(120):
            async for e in follow(bus, "kill-1", until_terminal=False):
                seen.append(e.type)
                if e.type == EventType.PROGRESS and e.data.step >= 2:
                    break
        os.kill(_rank_pid(group.pid, 1), signal.SIGKILL)  # one rank dies mid-segment
        assert group.wait(timeout=120) != 0  # the whole group exits non-zero
        log_b = data / "runner-after-kill.log"
        replacement = start_runner(private_stack, log_b, nproc=1)
        try:
            async with asyncio.timeout(300):
                events = [e async for e in follow(bus, "kill-1")]
        finally:
            stop(replacement)
        assert events[-1].type == EventType.SUCCEEDED, events[-1]
        assert [e.type for e in events].count(EventType.SUCCEEDED) == 1
        info = probe(await storage.get_bytes(events[-1].data.output.key))
        assert info.frames == 33
        # the replacement rendered it; the killed group never reported it done
        assert '"segment_done"' in log_b.read_text() and '"segment_done"' not in log_a.read_text()
