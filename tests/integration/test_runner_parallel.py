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
from schemas.messages import EventType, JobRequest, SegmentResult
from schemas.names import segment_result_key
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
        wait_for_log(data / "functions.log", '"consumer_started"', 60, fn)
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
            out = events[-1].data["output"]
            info = probe(await storage.get_bytes(out["key"]))
            assert info.frames == 9 and (info.width, info.height) == (64, 64)
            res = SegmentResult.model_validate_json(await storage.get_bytes(segment_result_key("par-1", 0)))
            assert res.frames == 9
        # the group really ran sequence-parallel on two ranks
        assert '"world_size": 2' in log.read_text()
    finally:
        assert stop(runner, 60) == 0, log.read_text()[-3000:]
