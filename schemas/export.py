"""``python -m schemas.export``: write JSON Schema files and an AsyncAPI 3 document.

Outputs (committed; a test fails when they are stale):
- ``schemas/jsonschema/<Model>.json`` for every public and internal message; ``JobEvent.json`` is a
  union discriminated by ``type`` (one variant per event type, each with its ``data`` model)
- ``schemas/asyncapi.json`` describing subjects, streams and payloads (one message per event type)
Run with ``--check`` to verify without writing (exit 1 when stale).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from schemas import names
from schemas.messages import (
    EVENT_DATA,
    INTERNAL_MODELS,
    PUBLIC_MODELS,
    EventType,
    JobEvent,
)
from schemas.registry import MODELS

HERE = Path(__file__).resolve().parent
JSONSCHEMA_DIR = HERE / "jsonschema"
ASYNCAPI_FILE = HERE / "asyncapi.json"


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def event_variant_name(type_: EventType) -> str:
    """``job.segment_completed`` -> ``SegmentCompletedEvent``."""
    return "".join(part.capitalize() for part in type_.value.removeprefix("job.").split("_")) + "Event"


def event_variants() -> dict[EventType, type[BaseModel]]:
    """One schema-only model per event type: ``JobEvent`` with ``type`` fixed and ``data`` its model."""
    fields = JobEvent.model_fields
    out: dict[EventType, type[BaseModel]] = {}
    for type_, data_model in EVENT_DATA.items():
        fixed: Any = Literal[type_]
        out[type_] = create_model(
            event_variant_name(type_),
            __config__=ConfigDict(frozen=True, extra="forbid"),
            __doc__=f"A `{type_.value}` JobEvent.",
            id=(str, fields["id"]),
            type=(fixed, Field(description="event type; selects the schema of `data`")),
            job_id=(str, fields["job_id"]),
            time=(datetime, fields["time"]),
            data=(data_model, ...),
        )
    return out


def job_event_schema() -> dict[str, Any]:
    """``JobEvent`` as the wire has it: a union of the per-type variants, discriminated by ``type``."""
    variants = tuple(event_variants().values())
    union: Any = Annotated[Union[variants], Field(discriminator="type")]  # noqa: UP007
    adapter: TypeAdapter[Any] = TypeAdapter(union)
    schema = adapter.json_schema(mode="serialization")
    return {"title": "JobEvent", "description": JobEvent.__doc__, **schema}


def json_schemas() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, model in {**PUBLIC_MODELS, **INTERNAL_MODELS}.items():
        schema = job_event_schema() if model is JobEvent else model.model_json_schema(mode="validation")
        schema["$id"] = f"https://videogen.dev/schemas/v{names.CONTRACT_VERSION}/{name}.json"
        out[name] = schema
    return out


def _msg(name: str, title: str, summary: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {"name": name, "title": title, "summary": summary, "contentType": "application/json",
                         "payload": {"$ref": f"#/components/schemas/{name}"}}
    if headers:
        m["headers"] = headers
    return m


def asyncapi() -> dict[str, Any]:
    schemas = json_schemas()
    components: dict[str, Any] = {}
    for name, schema in schemas.items():
        s = dict(schema)
        s.pop("$id", None)
        defs = s.pop("$defs", {})
        for dname, d in defs.items():
            components.setdefault(dname, d)
        components[name] = s
    # rewrite $defs refs to components refs
    text = json.dumps(components).replace("#/$defs/", "#/components/schemas/")
    components = json.loads(text)
    # AsyncAPI Schema Objects name the discriminating property with a string (the mapping is implied
    # by each variant's `type` const)
    components["JobEvent"]["discriminator"] = components["JobEvent"]["discriminator"]["propertyName"]
    msg_id_header = {"type": "object", "properties": {names.HEADER_MSG_ID: {
        "type": "string", "description": "de-duplication id (job_id for submissions, event id for events)"}}}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "videogen",
            "version": names.CONTRACT_VERSION,
            "description": "Event-driven video generation over NATS JetStream. Submit a JobRequest, follow "
                           "JobEvents, read JobStatus from KV '" + names.KV_JOBS + "', download from S3 bucket '"
                           + names.DEFAULT_BUCKET + "'. Models: " + ", ".join(sorted(MODELS)) + ".",
        },
        "defaultContentType": "application/json",
        "servers": {"nats": {"host": "localhost:4222", "protocol": "nats",
                             "description": "NATS with JetStream (streams: "
                             + ", ".join(s.name for s in names.STREAMS) + ")"}},
        "channels": {
            "submit": {"address": names.SUBJECT_SUBMIT, "messages": {"JobRequest": _msg(
                "JobRequest", "Submit a job", f"stream {names.STREAM_JOBS}; set Nats-Msg-Id to job_id", msg_id_header)},
                "description": "Clients publish JobRequest here."},
            "cancel": {"address": names.SUBJECT_CANCEL, "messages": {"CancelRequest": _msg(
                "CancelRequest", "Cancel a job", f"stream {names.STREAM_JOBS}")}},
            "events": {"address": names.SUBJECT_EVENTS_PREFIX + ".{job_id}",
                       "parameters": {"job_id": {"description": "the job's id"}},
                       "description": "JobEvents (schema JobEvent: a union discriminated by `type`), one "
                                      "message per event type.",
                       "messages": {
                           event_variant_name(t): _msg(event_variant_name(t), f"{t.value}: a job state change",
                                                       f"stream {names.STREAM_EVENTS}; de-duplicate on id; "
                                                       f"data is {m.__name__}", msg_id_header)
                           for t, m in EVENT_DATA.items()}},
            "dlq": {"address": names.SUBJECT_DLQ_PREFIX + ".{stage}",
                    "parameters": {"stage": {"description": "the stage that gave up"}},
                    "messages": {"DLQEntry": _msg("DLQEntry", "Dead letter", f"stream {names.STREAM_DLQ}")}},
        },
        "operations": {
            "submitJob": {"action": "send", "channel": {"$ref": "#/channels/submit"}},
            "cancelJob": {"action": "send", "channel": {"$ref": "#/channels/cancel"}},
            "receiveEvents": {"action": "receive", "channel": {"$ref": "#/channels/events"}},
            "receiveDeadLetters": {"action": "receive", "channel": {"$ref": "#/channels/dlq"}},
        },
        "components": {"schemas": components},
    }


def rendered() -> dict[Path, str]:
    files = {JSONSCHEMA_DIR / f"{n}.json": _dump(s) for n, s in json_schemas().items()}
    files[ASYNCAPI_FILE] = _dump(asyncapi())
    return files


def stale_files() -> list[Path]:
    out = []
    for path, text in rendered().items():
        if not path.is_file() or path.read_text() != text:
            out.append(path)
    known = set(rendered())
    out += [p for p in JSONSCHEMA_DIR.glob("*.json") if p not in known]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m schemas.export")
    ap.add_argument("--check", action="store_true", help="exit 1 if the committed files are stale")
    args = ap.parse_args(argv)
    if args.check:
        stale = stale_files()
        for p in stale:
            print(f"stale: {p}", file=sys.stderr)
        if stale:
            print("run: python -m schemas.export", file=sys.stderr)
        return 1 if stale else 0
    JSONSCHEMA_DIR.mkdir(exist_ok=True)
    for p in JSONSCHEMA_DIR.glob("*.json"):
        if p not in rendered():
            p.unlink()
    for path, text in rendered().items():
        path.write_text(text)
    print(f"wrote {len(rendered())} files ({ASYNCAPI_FILE.name}, {JSONSCHEMA_DIR.name}/*.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
