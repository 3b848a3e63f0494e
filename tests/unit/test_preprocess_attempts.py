"""A client's input (or webhook host) that keeps failing is rejected after ``INPUT_ATTEMPTS``
deliveries; our own storage/bus trouble keeps the consumer's whole outage budget (issue 16: a
submission made during a 10-minute S3 outage still lands)."""

from __future__ import annotations

import pytest

from functions.preprocess import handler
from functions.preprocess.errors import InputUnavailable
from runtime.netguard import TargetUnresolvable
from runtime.testing.fakes import FakeDelivery, fake_ports
from schemas.errors import ErrorCode, Rejected, Retryable
from schemas.names import CONSUMER_PREPROCESS, INPUT_ATTEMPTS, OUTAGE_MAX_DELIVER


def test_budgets() -> None:
    assert CONSUMER_PREPROCESS.max_deliver == OUTAGE_MAX_DELIVER > INPUT_ATTEMPTS


@pytest.mark.parametrize("err", [InputUnavailable("image http://x/y.png: 503"),
                                 TargetUnresolvable("webhook.url: host 'nowhere.invalid' does not resolve",
                                                    code=ErrorCode.WEBHOOK_URL_FORBIDDEN)])
async def test_client_side_failures_give_up_at_input_attempts(monkeypatch: pytest.MonkeyPatch, err: Retryable) -> None:
    async def failing(*_: object) -> None:
        raise err

    monkeypatch.setattr(handler, "_handle_submit", failing)
    ports = fake_ports()
    with pytest.raises(type(err)):
        await handler.handle_submit(b"{}", FakeDelivery(num_delivered=INPUT_ATTEMPTS - 1, max_deliver=12), ports)
    with pytest.raises(Rejected) as info:
        await handler.handle_submit(b"{}", FakeDelivery(num_delivered=INPUT_ATTEMPTS, max_deliver=12), ports)
    assert info.value.code == err.code and f"gave up after {INPUT_ATTEMPTS} attempts" in str(info.value)


async def test_storage_trouble_keeps_the_outage_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    async def s3_down(*_: object) -> None:
        raise Retryable("put videogen/jobs/j/inputs/request.json: connection refused", code=ErrorCode.STORAGE_ERROR)

    monkeypatch.setattr(handler, "_handle_submit", s3_down)
    with pytest.raises(Retryable) as info:
        await handler.handle_submit(b"{}", FakeDelivery(num_delivered=OUTAGE_MAX_DELIVER - 1, max_deliver=12),
                                    fake_ports())
    assert not isinstance(info.value, Rejected) and info.value.code == ErrorCode.STORAGE_ERROR
