"""The contract: names, models, exported files."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from schemas import export, names
from schemas.messages import EventType, JobEvent, JobRequest, JobStatus, JobState, utcnow


def test_exported_files_are_fresh() -> None:
    stale = export.stale_files()
    assert not stale, f"run `python -m schemas.export`; stale: {stale}"


def test_check_mode_detects_staleness(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(export, "JSONSCHEMA_DIR", tmp_path / "js")
    monkeypatch.setattr(export, "ASYNCAPI_FILE", tmp_path / "asyncapi.json")
    assert export.main(["--check"]) == 1
    assert export.main([]) == 0
    assert export.main(["--check"]) == 0
    (tmp_path / "js" / "JobRequest.json").write_text("{}")
    assert export.main(["--check"]) == 1


def test_asyncapi_document_has_contract_subjects() -> None:
    doc = export.asyncapi()
    assert doc["asyncapi"].startswith("3.")
    addresses = {c["address"] for c in doc["channels"].values()}
    assert {"videogen.jobs.submit", "videogen.jobs.cancel", "videogen.events.{job_id}", "videogen.dlq.{stage}"} <= addresses
    # every $ref resolves inside the document
    text = json.dumps(doc)
    for ref in {r.split('"')[0] for r in text.split('"$ref": "')[1:]}:
        node = doc
        for part in ref.lstrip("#/").split("/"):
            node = node[part]


def test_contract_names_are_exact() -> None:
    assert names.SUBJECT_SUBMIT == "videogen.jobs.submit"
    assert names.SUBJECT_CANCEL == "videogen.jobs.cancel"
    assert names.events_subject("j1") == "videogen.events.j1"
    assert names.dlq_subject("preprocess") == "videogen.dlq.preprocess"
    assert names.KV_JOBS == "videogen-jobs"
    assert names.DEFAULT_BUCKET == "videogen"
    assert {s.name for s in names.STREAMS} >= {"VIDEOGEN_JOBS", "VIDEOGEN_EVENTS", "VIDEOGEN_DLQ"}
    assert names.segment_key("j1", 3) == "jobs/j1/segments/3.mp4"
    assert names.output_key("j1") == "jobs/j1/output.mp4"


@pytest.mark.parametrize("job_id", ["", "a" * 65, "has space", "dot.ted", "slash/x", "ü"])
def test_job_id_pattern_rejects(job_id: str) -> None:
    with pytest.raises(ValidationError):
        JobRequest(job_id=job_id, prompt="x")


def test_job_request_defaults_and_unknown_fields() -> None:
    r = JobRequest(job_id="ok_1-A", prompt="p")
    assert r.model == "tiny-wan" and r.task.value == "t2v" and r.presign_ttl_s == 3600
    with pytest.raises(ValidationError):
        JobRequest.model_validate({"job_id": "x", "prompt": "p", "num_frame": 9})  # typo is an error


def test_event_ids_are_stable_and_distinct() -> None:
    a = JobEvent.build("j", EventType.PROGRESS, {"progress": 1}, 0, 1)
    b = JobEvent.build("j", EventType.PROGRESS, {"progress": 1}, 0, 1)
    c = JobEvent.build("j", EventType.PROGRESS, {"progress": 2}, 0, 2)
    assert a.id == b.id != c.id
    assert JobEvent.build("j", EventType.SUCCEEDED).id != JobEvent.build("k", EventType.SUCCEEDED).id


def test_messages_are_frozen() -> None:
    s = JobStatus(job_id="j", state=JobState.QUEUED, created_at=utcnow(), updated_at=utcnow())
    with pytest.raises(ValidationError):
        s.state = JobState.RUNNING  # type: ignore[misc]
    assert JobState.SUCCEEDED.terminal and not JobState.RUNNING.terminal
