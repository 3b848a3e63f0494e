"""Run one or more stage consumers in a process: wiring, signals, graceful drain.

Each ``functions/<stage>/__main__.py`` is one line calling ``main([stage])``; ``videogen
functions`` runs all CPU stages in one process (handy locally; in Kubernetes each stage is
its own Deployment, scaled by KEDA on its consumer's lag).

The stages are data (``schemas/stages.py``): each names the consumer it drains and its handler
as a dotted path, loaded here with importlib when a process runs it. Most stages are durable
pull consumers (``StageDef.spec``). A periodic stage (``spec=None``, ``interval_s`` set; today
only ``queue``) instead names a ticker factory; its ``tick()`` runs every ``interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from prometheus_client import REGISTRY, generate_latest
from pydantic import SecretStr

from runtime import accounts
from runtime.bus import Bus
from runtime.consumer import ConsumerLoop, Delivery
from runtime.failures import failure_hooks, retry_hook
from runtime.health import HealthServer
from runtime.jobs import JobTracker
from runtime.logging import configure_logging, get_logger
from runtime.ports import Ports
from runtime.settings import Settings, load_settings
from runtime.storage import Storage
from runtime.trust import require_production_secrets
from schemas.stages import STAGES, StageDef

log = get_logger(component="service")

StageHandler = Callable[[bytes, Delivery, Ports], Awaitable[None]]


class Ticker(Protocol):
    async def tick(self) -> Any: ...


TickerFactory = Callable[[Ports], Ticker]


def load_handler(stage: StageDef) -> Any:
    """The object ``stage.handler`` names (``"package.module:attribute"``), imported now.

    Imported only when a process runs the stage, so a process loads only the stages it runs
    and ``runtime`` never imports ``functions`` at module level.
    """
    module = importlib.import_module(stage.handler_module)
    try:
        target = getattr(module, stage.handler_attr)
    except AttributeError:
        raise ImportError(f"stage {stage.name}: {stage.handler_module} has no attribute {stage.handler_attr!r} "
                          f"(schemas/stages.py names {stage.handler!r})") from None
    if not callable(target):
        raise TypeError(f"stage {stage.name}: {stage.handler} is not callable")
    return target


class PeriodicLoop:
    """Runs ``ticker.tick()`` every ``interval_s`` until stopped; a failing tick is logged, not fatal."""

    def __init__(self, ticker: Ticker, *, stage: str, interval_s: float) -> None:
        self.ticker = ticker
        self.stage = stage
        self.interval_s = interval_s
        self._stopping = asyncio.Event()
        self.ticks = 0
        self.started = False  # readiness, as ConsumerLoop.started
        self.last_tick = time.monotonic()  # liveness, as ConsumerLoop.last_tick

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        log.info("periodic_started", stage=self.stage, interval_s=self.interval_s)
        self.started = True
        failures = 0
        while not self._stopping.is_set():
            self.last_tick = time.monotonic()
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
                    make_ticker = cast(TickerFactory, load_handler(st))
                    self.loops.append(PeriodicLoop(make_ticker(ports), stage=name, interval_s=st.interval_s))
                    continue
                handler = cast(StageHandler, load_handler(st))

                async def bound(payload: bytes, d: Delivery, _h: StageHandler = handler) -> None:
                    await _h(payload, d, ports)

                on_perm, on_exh = (failure_hooks(ports.tracker, name, rejects=st.rejects)
                                   if st.records_failures else (None, None))
                on_retry = retry_hook(ports.tracker, name) if st.records_failures else None
                self.loops.append(ConsumerLoop(
                    bus, st.spec, bound, stage=name, on_permanent=on_perm, on_exhausted=on_exh,
                    on_retry=on_retry,
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


def least_privilege(settings: Settings, stages: list[str]) -> Settings:
    """Settings for a process running ``stages``: one stage on the embedded stack connects as its own user.

    ``stage-<name>`` (only the subjects that stage needs, ``runtime/accounts.py``) with its password
    from the stack's 0600 credentials file, instead of the broad ``service`` user ``stack.env``
    names. A process running several stages, a user other than ``service`` (an operator's choice,
    ``infra/`` sets the stage user itself) or no credentials file: unchanged."""
    if len(stages) != 1 or not settings.embedded or settings.nats_user != accounts.SERVICE_USER:
        return settings
    password = accounts.read_stage_password(settings.data_dir, stages[0])
    if password is None:
        return settings
    return settings.model_copy(update={"nats_user": accounts.stage_user(stages[0]),
                                       "nats_password": SecretStr(password)})


async def serve(stages: list[str], settings: Settings | None = None) -> None:
    settings = least_privilege(settings or load_settings(), stages)
    require_production_secrets(settings)  # embedded=false: no dev secrets, one clear line
    service = Service(settings, stages)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    log.info("service_starting", stages=stages, nats_user=settings.nats_user, settings=settings.masked())
    await service.run()
    log.info("service_stopped", stages=stages)


def main(stages: list[str]) -> None:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(serve(stages, settings))
