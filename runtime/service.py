"""Run one or more stage consumers in a process: wiring, signals, graceful drain.

Each ``functions/<stage>/__main__.py`` is one line calling ``main([stage])``; ``videogen
functions`` runs all CPU stages in one process (handy locally; in Kubernetes each stage is
its own Deployment, scaled by KEDA on its consumer's lag).

Most stages are durable pull consumers (``StageDef.spec``). A periodic stage (``spec=None``,
``interval_s`` set; today only ``queue``) instead runs ``tick()`` every ``interval_s``.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
import contextlib
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import REGISTRY, generate_latest

from runtime.bus import Bus
from runtime.consumer import ConsumerLoop, Delivery
from runtime.failures import failure_hooks
from runtime.health import HealthServer
from runtime.jobs import JobTracker
from runtime.logging import configure_logging, get_logger
from runtime.ports import Ports
from runtime.settings import Settings, load_settings
from runtime.trust import require_production_secrets
from runtime.storage import Storage
from schemas.names import (
    CONSUMER_CANCEL,
    CONSUMER_CHAIN,
    CONSUMER_PLANNER,
    CONSUMER_PREPROCESS,
    CONSUMER_STITCH,
    CONSUMER_SWEEPER,
    CONSUMER_WEBHOOK,
    CONSUMER_WEBHOOK_REPLAY,
    ConsumerSpec,
)

log = get_logger(component="service")

StageHandler = Callable[[bytes, Delivery, Ports], Awaitable[None]]


@dataclass(frozen=True)
class StageDef:
    name: str
    spec: ConsumerSpec | None  # None: a periodic stage
    rejects: bool = False  # permanent failures are job.rejected (door) rather than job.failed
    concurrency: int = 1
    records_failures: bool = True  # False: failures only go to the DLQ (webhook must not fail jobs)
    interval_s: float = 0.0  # periodic stages: seconds between ticks


class Ticker(Protocol):
    async def tick(self) -> Any: ...


def _handler(stage: str) -> StageHandler:
    # imported lazily so a process only loads the stages it runs
    if stage == "preprocess":
        from functions.preprocess.handler import handle_submit
        return handle_submit
    if stage == "planner":
        from functions.planner.handler import handle_plan
        return handle_plan
    if stage == "chain":
        from functions.planner.handler import handle_segment_done
        return handle_segment_done
    if stage == "stitch":
        from functions.stitch.handler import handle_stitch
        return handle_stitch
    if stage == "webhook":
        from functions.webhook.handler import handle_event
        return handle_event
    if stage == "webhook-replay":
        from functions.webhook.handler import handle_replay
        return handle_replay
    if stage == "cancel":
        from functions.cancel.handler import handle_cancel
        return handle_cancel
    if stage == "sweeper":
        from functions.sweeper.handler import handle_advisory
        return handle_advisory
    raise ValueError(f"unknown stage {stage!r}")


def _ticker(stage: str, ports: Ports) -> Ticker:
    if stage == "queue":
        from functions.queue.handler import QueueTracker
        return QueueTracker(ports)
    raise ValueError(f"unknown periodic stage {stage!r}")


STAGES: dict[str, StageDef] = {
    "preprocess": StageDef("preprocess", CONSUMER_PREPROCESS, rejects=True, concurrency=2),
    "planner": StageDef("planner", CONSUMER_PLANNER, rejects=False, concurrency=4),
    "chain": StageDef("chain", CONSUMER_CHAIN, rejects=False, concurrency=4),
    "stitch": StageDef("stitch", CONSUMER_STITCH, rejects=False, concurrency=2),
    "webhook": StageDef("webhook", CONSUMER_WEBHOOK, rejects=False, concurrency=32,
                        records_failures=False),
    "webhook-replay": StageDef("webhook-replay", CONSUMER_WEBHOOK_REPLAY, concurrency=4, records_failures=False),
    # a bad cancel request must not fail the job it names: failures only go to the DLQ
    "cancel": StageDef("cancel", CONSUMER_CANCEL, concurrency=4, records_failures=False),
    "queue": StageDef("queue", None, interval_s=1.0),
    # records its own job.failed (the stranded message's stage decides); its own failures: DLQ only
    "sweeper": StageDef("sweeper", CONSUMER_SWEEPER, concurrency=2, records_failures=False),
}


class PeriodicLoop:
    """Runs ``ticker.tick()`` every ``interval_s`` until stopped; a failing tick is logged, not fatal."""

    def __init__(self, ticker: Ticker, *, stage: str, interval_s: float) -> None:
        self.ticker = ticker
        self.stage = stage
        self.interval_s = interval_s
        self._stopping = asyncio.Event()
        self.ticks = 0

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        log.info("periodic_started", stage=self.stage, interval_s=self.interval_s)
        failures = 0
        while not self._stopping.is_set():
            try:
                await self.ticker.tick()
                failures = 0
            except Exception as e:  # NATS blip, server restart: try again next tick
                failures += 1
                log.warning("tick_failed", stage=self.stage, error=str(e), exc_info=failures == 1)
            self.ticks += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)
        log.info("periodic_stopped", stage=self.stage, ticks=self.ticks)


class Service:
    """Consumers for ``stages`` sharing one bus connection and one S3 client."""

    def __init__(self, settings: Settings, stages: list[str]) -> None:
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s): {', '.join(unknown)}; known: {', '.join(STAGES)}")
        self.settings = settings
        self.stages = stages
        self.loops: list[ConsumerLoop | PeriodicLoop] = []
        self.ready = asyncio.Event()

    def stop(self) -> None:
        for loop in self.loops:
            loop.stop()

    async def run(self) -> None:
        async with Bus(self.settings, f"videogen-{'+'.join(self.stages)}") as bus, Storage(self.settings) as storage:
            ports = Ports(self.settings, bus, storage, JobTracker(bus))
            for name in self.stages:
                st = STAGES[name]
                if st.spec is None:
                    self.loops.append(PeriodicLoop(_ticker(name, ports), stage=name, interval_s=st.interval_s))
                    continue
                handler = _handler(name)

                async def bound(payload: bytes, d: Delivery, _h: StageHandler = handler) -> None:
                    await _h(payload, d, ports)

                on_perm, on_exh = (failure_hooks(ports.tracker, name, rejects=st.rejects)
                                   if st.records_failures else (None, None))
                self.loops.append(ConsumerLoop(
                    bus, st.spec, bound, stage=name, on_permanent=on_perm, on_exhausted=on_exh,
                    heartbeat_s=self.settings.heartbeat_s, concurrency=st.concurrency,
                ))
            tasks = [asyncio.create_task(loop.run(), name=f"consumer-{loop.stage}") for loop in self.loops]
            health = self._health(bus)
            self.ready.set()
            try:
                await asyncio.gather(*tasks)
            finally:
                if health is not None:
                    health.stop()

    def heartbeat_age_s(self) -> float | None:
        """Age of the stalest consumer loop's last turn (a loop turns at least every fetch timeout)."""
        if not self.loops:
            return None
        return time.monotonic() - min(loop.last_tick for loop in self.loops)

    def exposition(self) -> bytes:
        return generate_latest(REGISTRY)

    def _health(self, bus: Bus) -> HealthServer | None:
        if self.settings.health_port is None:
            return None
        checks = {
            "bus_connected": lambda: bus.nc is not None and bus.nc.is_connected,
            "consumers_started": lambda: all(loop.started for loop in self.loops),
        }
        return HealthServer(self.settings.health_port, self, checks, heartbeat_timeout_s=120).start()


async def serve(stages: list[str], settings: Settings | None = None) -> None:
    settings = settings or load_settings()
    require_production_secrets(settings)  # embedded=false: no dev secrets, one clear line
    service = Service(settings, stages)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    log.info("service_starting", stages=stages, settings=settings.masked())
    await service.run()
    log.info("service_stopped", stages=stages)


def main(stages: list[str]) -> None:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(serve(stages, settings))
