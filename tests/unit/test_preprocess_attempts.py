"""A client's input (or webhook host) that keeps failing is given up after ``INPUT_ATTEMPTS``
deliveries (then ``job.rejected`` "gave up after N attempts", see test_failure_visibility.py); our own
storage/bus trouble keeps the consumer's whole outage budget (issue 16: a submission made during a
10-minute S3 outage still lands). The budget is the error's (``Retryable.max_attempts``), applied by
the one failure policy, ``WorkItem.fail``."""

from __future__ import annotations

import pytest

from functions.preprocess.errors import InputUnavailable
from runtime.netguard import TargetUnresolvable
from schemas.errors import ErrorCode, Retryable
from schemas.names import CONSUMER_PREPROCESS, INPUT_ATTEMPTS, OUTAGE_MAX_DELIVER
from tests.unit.test_work_item import item


def test_budgets() -> None:
    assert CONSUMER_PREPROCESS.max_deliver == OUTAGE_MAX_DELIVER > INPUT_ATTEMPTS


@pytest.mark.parametrize("err", [InputUnavailable("image http://x/y.png: 503"),
                                 TargetUnresolvable("webhook.url: host 'nowhere.invalid' does not resolve",
                                                    code=ErrorCode.WEBHOOK_URL_FORBIDDEN)])
async def test_client_side_failures_give_up_at_input_attempts(err: Retryable) -> None:
    wi, msg, _, hooks = item(INPUT_ATTEMPTS - 1, max_deliver=OUTAGE_MAX_DELIVER)
    assert await wi.fail(err) == "nak" and hooks == []
    wi, msg, _, hooks = item(INPUT_ATTEMPTS, max_deliver=OUTAGE_MAX_DELIVER)
    assert await wi.fail(err) == "dead_letter"
    assert hooks == [f"exhausted:{err.code.value}"] and msg.actions == [("term", None)]


async def test_storage_trouble_keeps_the_outage_budget() -> None:
    s3_down = Retryable("put videogen/jobs/j/inputs/request.json: connection refused", code=ErrorCode.STORAGE_ERROR)
    wi, msg, _, hooks = item(OUTAGE_MAX_DELIVER - 1, max_deliver=OUTAGE_MAX_DELIVER)
    assert await wi.fail(s3_down) == "nak" and hooks == []
    wi, msg, _, hooks = item(OUTAGE_MAX_DELIVER, max_deliver=OUTAGE_MAX_DELIVER)
    assert await wi.fail(s3_down) == "dead_letter" and hooks == ["exhausted:storage_error"]
