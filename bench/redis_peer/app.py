"""FastAPI front of the Redis-list peer (run with real uvicorn, one process).

    PEER_REDIS_URL=redis://127.0.0.1:6379/0 uvicorn bench.redis_peer.app:app
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field

from bench.redis_peer import QUEUE, job_key, mp4_key


class PeerJob(BaseModel):
    """What the seed design accepted: the generation parameters, validated at the door."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str = Field("", max_length=4000)
    negative_prompt: str = Field("", max_length=4000)
    width: int = Field(64, ge=16, le=256)
    height: int = Field(64, ge=16, le=256)
    num_frames: int = Field(9, ge=1, le=81)
    steps: int = Field(4, ge=1, le=100)
    guidance_scale: float = Field(1.0, ge=0.0, le=20.0)
    fps: int = Field(8, ge=1, le=60)
    seed: int = Field(0, ge=0, le=2**32 - 1)


class Queued(BaseModel):
    id: str
    state: str


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.redis = aioredis.from_url(os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/0"))
    await app.state.redis.ping()
    yield
    await app.state.redis.aclose()


app = FastAPI(title="redis-peer", lifespan=lifespan)


@app.get("/healthz")
async def healthz() -> dict[str, bool]:
    await app.state.redis.ping()
    return {"ok": True}


@app.post("/jobs", status_code=201)
async def create_job(job: PeerJob) -> Queued:
    job_id = uuid.uuid4().hex
    r = app.state.redis
    async with r.pipeline(transaction=True) as p:
        p.hset(job_key(job_id), mapping={"state": "queued", "t_queued": repr(time.time())})
        p.rpush(QUEUE, f'{{"id":"{job_id}","params":{job.model_dump_json()}}}')
        await p.execute()
    return Queued(id=job_id, state="queued")


@app.get("/jobs/{job_id}", response_model=None)
async def get_job(job_id: str) -> Response | dict[str, str]:
    r = app.state.redis
    state = await r.hget(job_key(job_id), "state")
    if state is None:
        raise HTTPException(404, "no such job")
    if state == b"done":
        data = await r.get(mp4_key(job_id))
        if data is None:
            raise HTTPException(500, "job done but its video is missing")
        return Response(content=data, media_type="video/mp4")
    if state == b"failed":
        err = await r.hget(job_key(job_id), "error")
        raise HTTPException(500, f"job failed: {(err or b'').decode()}")
    return Response(content=f'{{"state":"{state.decode()}"}}', status_code=202, media_type="application/json")


@app.get("/jobs/{job_id}/timings")
async def get_timings(job_id: str) -> dict[str, float]:
    """The worker's timestamps (epoch seconds) for the bench's per-hop breakdown."""
    h = await app.state.redis.hgetall(job_key(job_id))
    return {k.decode(): float(v) for k, v in h.items() if k.startswith(b"t_")}
