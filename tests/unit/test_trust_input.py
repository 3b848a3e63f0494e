"""Issue 13 item 6 at the unit level: job ids, strict numbers, nested JSON (no broker needed)."""

from __future__ import annotations

import json

import pytest

from functions.preprocess.validate import RequestRejected, check_loras, parse_request
from runtime.work import job_id_of
from schemas.errors import ErrorCode
from schemas.messages import CancelRequest, JobRequest, valid_job_id

NESTED = b'{"job_id": "deep", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"


@pytest.mark.parametrize("job_id", ["j1\n", "j1\r\n", "\nj1", "j 1", "", "x" * 65, None, 7])
def test_invalid_job_ids(job_id: object) -> None:
    assert valid_job_id(job_id) is False


@pytest.mark.parametrize("job_id", ["j1", "A-b_9", "x" * 64])
def test_valid_job_ids(job_id: str) -> None:
    assert valid_job_id(job_id) is True


def test_trailing_newline_job_id_rejected_by_the_model_too() -> None:
    with pytest.raises(RequestRejected) as e:
        parse_request(json.dumps({"job_id": "j1\n", "prompt": "x"}).encode())
    assert e.value.code == ErrorCode.INVALID_JOB_ID


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_frames", "9"), ("num_frames", True), ("width", "64"), ("steps", 1.5), ("steps", 1.0),
     ("seed", False), ("presign_ttl_s", "600"), ("guidance_scale", "5"), ("guidance_scale", True),
     ("max_segment_frames", "9")],
)
def test_numbers_are_strict(field: str, value: object) -> None:
    with pytest.raises(RequestRejected) as e:
        parse_request(json.dumps({"job_id": "j1", "prompt": "x", field: value}).encode())
    assert e.value.code == ErrorCode.INVALID_REQUEST
    assert e.value.job_id == "j1" and field in str(e.value)


def test_strict_numbers_still_accept_proper_json_numbers() -> None:
    req = parse_request(json.dumps({"job_id": "j1", "num_frames": 9, "guidance_scale": 5, "steps": 2,
                                    "loras": [{"source": "s3://b/l.safetensors", "scale": 1}],
                                    "task": "t2v"}).encode())
    assert req.num_frames == 9 and req.guidance_scale == 5.0 and req.loras[0].scale == 1.0
    # Python callers (CLI, demo) build requests with enum strings and lists as before
    assert JobRequest(job_id="j2", task="i2v", loras=[]).task.value == "i2v"  # type: ignore[arg-type]


def test_lora_scale_strict() -> None:
    with pytest.raises(RequestRejected):
        parse_request(json.dumps({"job_id": "j1", "loras": [{"source": "s3://b/l.safetensors",
                                                             "scale": "1"}]}).encode())


def test_cancel_request_job_id_fullmatch() -> None:
    with pytest.raises(ValueError):
        CancelRequest.model_validate_json(b'{"job_id": "j1\\n"}')


def test_deeply_nested_json_is_a_rejection_not_a_crash() -> None:
    with pytest.raises(RequestRejected) as e:
        parse_request(NESTED)
    assert e.value.code == ErrorCode.INVALID_JSON and e.value.job_id is None


def test_job_id_of_survives_deep_nesting() -> None:
    assert job_id_of(NESTED) is None
    assert job_id_of(b'{"job_id": "ok"}') == "ok"


# --- LoRA sources: pinned or from an allowed prefix, and a byte cap on the fetch -------------

SHA = "a" * 64


@pytest.mark.parametrize(
    ("lora", "ok"),
    [
        ({"source": "s3://videogen/loras/style.safetensors"}, True),
        ({"source": "s3://videogen/uploads/me/style.safetensors"}, True),
        ({"source": "s3://videogen/jobs/other/out/x.safetensors"}, False),  # another job's objects
        ({"source": "s3://videogen/jobs/other/out/x.safetensors", "sha256": SHA}, True),  # pinned
        ({"source": "s3://elsewhere/loras/style.safetensors"}, False),
        ({"source": "s3://elsewhere/loras/style.safetensors", "sha256": SHA}, False),  # bucket not configured
        ({"source": "s3://extra/x.safetensors", "sha256": SHA}, True),  # configured input bucket
        ({"source": "s3://videogen/loras/../jobs/x.safetensors"}, False),
        ({"source": "s3://videogen/loras/../jobs/x.safetensors", "sha256": SHA}, False),
    ],
)
def test_lora_source_policy(lora: dict, ok: bool) -> None:
    req = parse_request(json.dumps({"job_id": "j1", "loras": [lora]}).encode())
    if ok:
        check_loras(req, "videogen", ["loras/", "uploads/"], ["extra"])
    else:
        with pytest.raises(RequestRejected) as e:
            check_loras(req, "videogen", ["loras/", "uploads/"], ["extra"])
        assert e.value.code == ErrorCode.INPUT_FORBIDDEN and "loras.0.source" in str(e.value)


async def test_lora_fetch_has_a_byte_cap() -> None:
    from gpu_runner.lora import storage_fetch
    from runtime.storage import ObjectTooLarge

    class FakeStorage:  # stands in for Storage.get_bytes' contract: refuse past max_bytes
        def __init__(self) -> None:
            self.seen: list[int | None] = []

        async def get_bytes(self, key: str, *, bucket: str | None = None, max_bytes: int | None = None) -> bytes:
            self.seen.append(max_bytes)
            data = b"x" * 100
            if max_bytes is not None and len(data) > max_bytes:
                raise ObjectTooLarge("too big")
            return data

    store = FakeStorage()
    assert await storage_fetch(store, max_bytes=100)("s3://b/k.safetensors") == b"x" * 100
    with pytest.raises(ObjectTooLarge):
        await storage_fetch(store, max_bytes=99)("s3://b/k.safetensors")
    assert store.seen == [100, 99]


def test_lora_digest_checked_before_the_file_is_cached(tmp_path) -> None:
    from gpu_runner.lora import AdapterCache, LoraSpec
    from schemas.errors import Permanent

    cache = AdapterCache(dir=tmp_path, fetch=lambda uri: b"not the pinned bytes")
    spec = LoraSpec(source="s3://b/k.safetensors", sha256="0" * 64)
    with pytest.raises(Permanent, match="sha256 mismatch"):
        cache.resolve(spec)
    assert not list(tmp_path.glob("*.safetensors"))  # nothing unverified left in the cache
