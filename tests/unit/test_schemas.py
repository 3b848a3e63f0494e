"""The contract: names, models, exported files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas import export, names
from schemas.messages import (
    EVENT_DATA,
    CancelledData,
    EventType,
    FailedData,
    JobEvent,
    JobInputs,
    JobRequest,
    JobState,
    JobStatus,
    ObjectRef,
    ProgressData,
    ResolvedJob,
    SucceededData,
    utcnow,
)

FIXTURES = Path(__file__).parent / "fixtures"


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
    expected = {"videogen.jobs.submit", "videogen.jobs.cancel", "videogen.events.{job_id}", "videogen.dlq.{stage}"}
    assert expected <= addresses
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
    def progress(pct: float) -> ProgressData:
        return ProgressData(progress=pct, segment=0, segments_total=1, step=1, steps=4)

    a = JobEvent.build("j", EventType.PROGRESS, progress(1), 0, 1)
    b = JobEvent.build("j", EventType.PROGRESS, progress(1), 0, 1)
    c = JobEvent.build("j", EventType.PROGRESS, progress(2), 0, 2)
    assert a.id == b.id != c.id
    assert JobEvent.build("j", EventType.CANCELLED).id != JobEvent.build("k", EventType.CANCELLED).id


# ---- typed data, unchanged wire ------------------------------------------------------------
def _v1_events() -> list[str]:
    """JobEvent JSON as the dict-typed ``data`` of contract v1 produced it, one or two per type."""
    return json.loads((FIXTURES / "job_events_v1.json").read_text())


V1_EVENT_TYPES = {"job.accepted", "job.rejected", "job.preprocessed", "job.started", "job.progress",
                  "job.segment_completed", "job.succeeded", "job.failed", "job.cancelled"}


def test_fixture_covers_every_v1_event_type() -> None:
    assert {json.loads(e)["type"] for e in _v1_events()} == V1_EVENT_TYPES <= {t.value for t in EventType}
    assert set(EVENT_DATA) == set(EventType)  # every event type has its data model


def test_sample_events_cover_every_event_type() -> None:
    from tests.sample_events import sample_data

    for type_ in EventType:
        assert isinstance(sample_data(type_), EVENT_DATA[type_])


@pytest.mark.parametrize("wire", _v1_events(), ids=lambda w: json.loads(w)["type"])
def test_event_wire_format_is_unchanged(wire: str) -> None:
    event = JobEvent.model_validate_json(wire)
    assert type(event.data) is EVENT_DATA[event.type]  # data is the type's model, not a dict
    assert event.model_dump_json() == wire  # byte for byte what the earlier code wrote
    rebuilt = JobEvent.build(event.job_id, event.type, event.data).model_copy(update={"id": event.id,
                                                                                      "time": event.time})
    assert rebuilt.model_dump_json() == wire


def test_event_data_unset_fields_stay_off_the_wire() -> None:
    e = JobEvent.build("j", EventType.CANCELLED, CancelledData(reason="r"))
    assert json.loads(e.model_dump_json())["data"] == {"reason": "r"}
    assert e.data == CancelledData(reason="r", previous_state=None)


def test_event_data_is_checked_against_type() -> None:
    with pytest.raises(ValidationError, match="carries ProgressData, not FailedData"):
        JobEvent.build("j", EventType.PROGRESS, FailedData(code="x", message="y"))
    with pytest.raises(ValidationError, match="data.steps"):  # a dict is validated into the type's model
        JobEvent.build("j", EventType.PROGRESS, {"progress": 1.0, "segment": 0, "segments_total": 1, "step": 1})
    wire = json.loads(_v1_events()[0])
    with pytest.raises(ValidationError):  # accepted data under another type
        JobEvent.model_validate({**wire, "type": "job.failed"})


def test_event_payload_accessor() -> None:
    e = JobEvent.model_validate_json(next(w for w in _v1_events() if '"job.succeeded"' in w))
    assert e.payload(SucceededData).output.frames == 9
    with pytest.raises(TypeError, match="carries SucceededData"):
        e.payload(FailedData)


def test_job_event_schema_is_chosen_by_type() -> None:
    schema = export.json_schemas()["JobEvent"]
    assert schema["discriminator"]["propertyName"] == "type"
    variants = {schema["$defs"][ref["$ref"].split("/")[-1]]["properties"]["type"]["const"]:
                schema["$defs"][ref["$ref"].split("/")[-1]]["properties"]["data"]["$ref"].split("/")[-1]
                for ref in schema["oneOf"]}
    assert variants == {t.value: m.__name__ for t, m in EVENT_DATA.items()}
    doc = export.asyncapi()
    messages = doc["channels"]["events"]["messages"]
    assert len(messages) == len(EventType)
    for msg in messages.values():  # each event type's message carries its own payload schema
        payload = doc["components"]["schemas"][msg["payload"]["$ref"].split("/")[-1]]
        assert payload["properties"]["data"]["$ref"].startswith("#/components/schemas/")


def test_resolved_job_inputs_wire_is_unchanged() -> None:
    wire = (FIXTURES / "resolved_job_v1.json").read_text()  # written when inputs was dict[str, ObjectRef]
    job = ResolvedJob.model_validate_json(wire)
    assert isinstance(job.inputs, JobInputs)
    assert job.inputs.pose_index == ObjectRef(bucket="videogen", key="jobs/a1/pose_index", etag="e", size=3)
    assert job.model_dump_json(indent=1) + "\n" == wire
    assert list(job.inputs.refs()) == list(json.loads(wire)["inputs"])  # same keys, same order
    i2v = job.model_copy(update={"inputs": JobInputs(image=job.inputs.image, reference=job.inputs.reference)})
    assert json.loads(i2v.model_dump_json())["inputs"] == {  # unset names stay off the wire, as before
        "image": json.loads(wire)["inputs"]["image"], "reference": json.loads(wire)["inputs"]["reference"]}
    t2v = ResolvedJob.model_validate_json(wire.replace(wire[wire.index('"inputs"'):wire.rindex("}")], '"inputs": {}\n'))
    assert t2v.inputs == JobInputs() and t2v.inputs.objects() == []
    assert json.loads(t2v.model_dump_json())["inputs"] == {}
    with pytest.raises(ValidationError):  # an unknown input name is refused, not carried silently
        JobInputs.model_validate({"mask": json.loads(wire)["inputs"]["image"]})


def test_messages_are_frozen() -> None:
    s = JobStatus(job_id="j", state=JobState.QUEUED, created_at=utcnow(), updated_at=utcnow())
    with pytest.raises(ValidationError):
        s.state = JobState.RUNNING  # type: ignore[misc]
    assert JobState.SUCCEEDED.terminal and not JobState.RUNNING.terminal
