"""The stage table (schemas/stages.py) and how runtime/service.py wires it (no servers)."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from runtime.service import PeriodicLoop, Service, load_handler
from runtime.settings import Settings
from schemas import names
from schemas.stages import (
    RUNNER_STAGE,
    STAGES,
    StageDef,
    consumer_stages,
    periodic_stages,
    stage_of_consumer,
)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_handler_path_loads(name: str) -> None:
    st = STAGES[name]
    target = load_handler(st)
    if st.periodic:
        assert inspect.isclass(target) or callable(target)
        assert inspect.iscoroutinefunction(target.tick), f"{st.handler}: a ticker factory makes objects with tick()"
    else:
        assert inspect.iscoroutinefunction(target), f"{st.handler} must be an async handler"
        assert list(inspect.signature(target).parameters) == ["payload", "delivery", "ports"]


def test_every_cpu_consumer_is_drained_by_exactly_one_stage() -> None:
    drained = [st.spec.durable for st in STAGES.values() if st.spec is not None]
    assert sorted(drained) == sorted(c.durable for c in names.CPU_CONSUMERS)
    assert set(consumer_stages()) | set(periodic_stages()) == set(STAGES)
    # status: a request/reply responder, re-checked each tick
    assert periodic_stages() == {"queue": 1.0, "status": 30.0}


def test_stage_of_consumer() -> None:
    assert stage_of_consumer("runner-wan2_1-t2v-1_3b") == RUNNER_STAGE
    assert stage_of_consumer(names.CONSUMER_WEBHOOK_REPLAY.durable) == "webhook-replay"
    assert stage_of_consumer(names.CONSUMER_CHAIN.durable) == "chain"
    assert stage_of_consumer("nobody") is None


def test_failure_policy_of_the_table() -> None:
    # only the door rejects; stages that must never fail a job only dead-letter
    assert [n for n, st in STAGES.items() if st.rejects] == ["preprocess"]
    assert {n for n, st in STAGES.items() if not st.records_failures and not st.periodic} == {
        "webhook", "webhook-replay", "cancel", "sweeper"}


def test_a_malformed_entry_is_refused() -> None:
    with pytest.raises(ValueError, match="package.module:attribute"):
        StageDef("x", "functions.x.handler.handle", names.CONSUMER_STITCH)
    with pytest.raises(ValueError, match="exactly one of spec and interval_s"):
        StageDef("x", "functions.x.handler:handle", names.CONSUMER_STITCH, interval_s=1.0)
    with pytest.raises(ValueError, match="exactly one of spec and interval_s"):
        StageDef("x", "functions.x.handler:handle")
    with pytest.raises(ValueError, match="concurrency"):
        StageDef("x", "functions.x.handler:handle", names.CONSUMER_STITCH, concurrency=0)


def test_a_wrong_handler_path_names_the_table() -> None:
    with pytest.raises(ImportError, match="schemas/stages.py names 'runtime.service:nope'"):
        load_handler(StageDef("x", "runtime.service:nope", names.CONSUMER_STITCH))
    with pytest.raises(ModuleNotFoundError):
        load_handler(StageDef("x", "functions.nosuchstage.handler:handle", names.CONSUMER_STITCH))


def test_unknown_stage_is_refused_before_connecting() -> None:
    with pytest.raises(ValueError, match="unknown stage.*thumbnail.*known: preprocess"):
        Service(Settings(), ["stitch", "thumbnail"])


async def test_periodic_loop_ticks_survives_a_failing_tick_and_reports_liveness() -> None:
    class Flaky:
        def __init__(self) -> None:
            self.calls = 0

        async def tick(self) -> None:
            self.calls += 1
            if self.calls == 2:
                raise ConnectionError("blip")

    ticker = Flaky()
    loop = PeriodicLoop(ticker, stage="queue", interval_s=0.01)
    assert not loop.started
    before = loop.last_tick
    task = asyncio.create_task(loop.run())
    for _ in range(200):
        if ticker.calls >= 4:
            break
        await asyncio.sleep(0.01)
    loop.stop()
    await asyncio.wait_for(task, 2)
    assert ticker.calls >= 4 and loop.ticks >= 4  # the failing second tick did not stop it
    assert loop.started and loop.last_tick > before
