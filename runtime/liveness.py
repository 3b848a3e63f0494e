"""Who is alive, and how often a segment has really been tried (issue 16).

``RunnerPresence``: each runner's rank 0 writes ``<model>.<runner_id>`` into KV ``videogen-runners``
every ``RUNNER_PRESENCE_S`` (its I/O thread, independent of compute); the bucket's TTL removes the
entry ``RUNNER_PRESENCE_TTL_S`` after the last write, so "no key for the model" = no live runner.
The queue stage reads it (``live_runners``) to tell a queued job that nothing serves its model.

``RenderAttempts``: KV ``videogen-renders`` counts, per segment and plan revision, the renders a
runner *started* (compare-and-set increment just before the model runs). The segment's retry
budget is that count (``schemas.names.RENDER_ATTEMPTS``), not JetStream's delivery count: a
delivery to a runner that died while idle, or one whose input fetch or upload failed, never
reached the model and costs the segment nothing. JetStream's ``max_deliver`` stays as the outer
bound (``RUNNER_MAX_DELIVER``).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from runtime.logging import get_logger
from schemas.names import (
    KV_RENDERS,
    KV_RUNNERS,
    RUNNER_PRESENCE_TTL_S,
    _kv_token,
    render_attempts_key,
    runner_presence_key,
)

if TYPE_CHECKING:
    from runtime.bus import Bus

log = get_logger(component="liveness")


class RunnerPresence:
    def __init__(self, bus: Bus, model: str, runner_id: str) -> None:
        self.bus = bus
        self.model = model
        self.runner_id = runner_id

    async def announce(self, *, busy: bool = False) -> None:
        kv = await self.bus.kv_bucket(KV_RUNNERS)
        body = {"model": self.model, "runner": self.runner_id, "at": time.time(), "busy": busy}
        await kv.put(runner_presence_key(self.model, self.runner_id), json.dumps(body).encode())

    async def withdraw(self) -> None:
        kv = await self.bus.kv_bucket(KV_RUNNERS)
        try:
            await kv.delete(runner_presence_key(self.model, self.runner_id))
        except Exception as e:  # expires on its own
            log.debug("presence_withdraw_failed", error=str(e))


async def live_runners(bus: Bus) -> dict[str, int]:
    """KV token of each model -> number of live runners (models with none are absent)."""
    kv = await bus.kv_bucket(KV_RUNNERS)
    out: dict[str, int] = {}
    try:
        keys = await kv.keys()
    except Exception:  # nats-py raises NoKeysError on an empty bucket
        return out
    now = time.time()
    for key in keys:
        try:
            entry = await kv.get(key)
            body = json.loads(entry.value or b"{}")
        except Exception:
            continue
        if now - float(body.get("at", 0)) > RUNNER_PRESENCE_TTL_S:
            continue  # not yet expired by the server, but stale
        model = key.split(".", 1)[0]
        out[model] = out.get(model, 0) + 1
    return out


def model_token(model: str) -> str:
    return _kv_token(model)


class RenderAttempts:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def _kv(self) -> KeyValue:
        return await self.bus.kv_bucket(KV_RENDERS)

    async def count(self, job_id: str, index: int, plan_revision: int = 0) -> int:
        kv = await self._kv()
        try:
            entry = await kv.get(render_attempts_key(job_id, index, plan_revision))
        except KeyNotFoundError:
            return 0
        return int(entry.value or b"0")

    async def begin(self, job_id: str, index: int, plan_revision: int = 0) -> int:
        """Count one more render of the segment; returns the count including this one."""
        kv = await self._kv()
        key = render_attempts_key(job_id, index, plan_revision)
        for _ in range(20):
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                try:
                    await kv.create(key, b"1")
                    return 1
                except KeyWrongLastSequenceError:
                    continue
                except Exception as e:
                    if "wrong last sequence" in str(e):
                        continue
                    raise
            n = int(entry.value or b"0") + 1
            try:
                await kv.update(key, str(n).encode(), last=entry.revision)
                return n
            except KeyWrongLastSequenceError:
                continue
        raise RuntimeError(f"render attempts of {key}: too much contention")
