"""WorkItem: the one failure policy shared by the consumer loop and the GPU runner (no servers:
a recording stand-in for the JetStream message and a FakeBus for the DLQ)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from runtime.testing.fakes import FakeBus
from runtime.work import WorkItem
from schemas.errors import ErrorCode, Permanent, Retryable, VideogenError
from schemas.messages import DLQEntry
from schemas.names import dlq_subject


@dataclass
class RecordingMsg:
    data: bytes
    num_delivered: int
    subject: str = "videogen.work.plan"
    headers: dict[str, str] | None = None
    actions: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def metadata(self) -> Any:
        return SimpleNamespace(sequence=SimpleNamespace(stream=42), num_delivered=self.num_delivered, timestamp=None)

    async def ack(self) -> None:
        self.actions.append(("ack", None))

    async def nak(self, delay: float | None = None) -> None:
        self.actions.append(("nak", delay))

    async def term(self) -> None:
        self.actions.append(("term", None))

    async def in_progress(self) -> None:
        self.actions.append(("in_progress", None))


def item(n: int, *, max_deliver: int = 3, handled: bool = True) -> tuple[WorkItem, RecordingMsg, FakeBus, list[str]]:
    msg, bus, hooks = RecordingMsg(b'{"job_id": "w-1"}', n), FakeBus(), []

    async def on_permanent(payload: bytes, err: VideogenError, it: WorkItem) -> bool:
        hooks.append(f"permanent:{err.code.value}")
        return handled

    async def on_exhausted(payload: bytes, err: VideogenError, it: WorkItem) -> bool:
        hooks.append(f"exhausted:{err.code.value}")
        return True

    wi = WorkItem(msg, bus, stage="planner", max_deliver=max_deliver, on_permanent=on_permanent,  # type: ignore[arg-type]
                  on_exhausted=on_exhausted)
    return wi, msg, bus, hooks


def dlq(bus: FakeBus) -> list[DLQEntry]:
    return bus.payloads(dlq_subject("planner"), DLQEntry)


async def test_retryable_naks_with_backoff_until_the_final_delivery() -> None:
    for n, delay in ((1, 2.0), (2, 4.0)):
        wi, msg, bus, hooks = item(n)
        assert await wi.fail(Retryable("blip", delay_s=2.0)) == "nak"
        assert msg.actions == [("nak", delay)] and hooks == [] and dlq(bus) == []
    wi, msg, _, _ = item(2)
    await wi.fail(Retryable("blip", delay_s=2.0, backoff=False))
    assert msg.actions == [("nak", 2.0)]


async def test_retryable_on_the_final_delivery_fails_dead_letters_and_terms() -> None:
    wi, msg, bus, hooks = item(3)
    assert await wi.fail(Retryable("still down", code=ErrorCode.BUS_ERROR)) == "dead_letter"
    assert hooks == ["exhausted:bus_error"] and msg.actions == [("term", None)]
    [entry] = dlq(bus)
    assert entry.code == "max_deliveries" and entry.num_delivered == 3 and entry.stream_seq == 42
    assert entry.job_id == "w-1" and base64.b64decode(entry.payload_b64) == msg.data


async def test_permanent_terms_and_dead_letters_only_when_no_job_took_it() -> None:
    wi, msg, bus, hooks = item(1)
    assert await wi.fail(Permanent("bad", code=ErrorCode.INVALID_REQUEST)) == "term"
    assert hooks == ["permanent:invalid_request"] and msg.actions == [("term", None)] and dlq(bus) == []
    wi, msg, bus, _ = item(1, handled=False)
    await wi.fail(Permanent("bad", code=ErrorCode.INVALID_REQUEST))
    assert [e.code for e in dlq(bus)] == ["invalid_request"] and msg.actions == [("term", None)]


async def test_hand_back_naks_but_fails_on_the_last_delivery() -> None:
    wi, msg, bus, hooks = item(2)
    assert await wi.hand_back(7.0, reason="segment 0 handed back") == "nak"
    assert msg.actions == [("nak", 7.0)] and hooks == []
    wi, msg, bus, hooks = item(3)
    assert await wi.hand_back(7.0, reason="segment 0 handed back") == "dead_letter"
    assert hooks == ["exhausted:max_deliveries"] and msg.actions == [("term", None)]
    assert dlq(bus)[0].reason == "segment 0 handed back on its last delivery (3)"


async def test_a_failure_that_cannot_be_recorded_is_retried_later() -> None:
    wi, msg, bus, _ = item(3)
    bus.fail_publish.add("videogen.dlq.>")
    await wi.fail(Retryable("x"))
    assert msg.actions == [("nak", 5.0)]  # not term: the DLQ entry would be lost
