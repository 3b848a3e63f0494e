"""The peer's single worker: BLPOP a job, run tiny-wan, encode the MP4, store the bytes in Redis.

    PEER_REDIS_URL=redis://127.0.0.1:6379/0 python -m bench.redis_peer.worker

The model call and the encode are the videogen runner's own: ``gpu_runner.registry.load_model``
(same tiny random weights, device cpu, float32), ``pipe.generate(GenerateParams(...))`` with the
parameters a one-segment job gets (segment seed = job seed), and ``runtime.video.encode_mp4`` with
the keyframes ``gpu_runner.io.encode_segment`` forces for a segment without overlaps.
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import redis

from bench.redis_peer import QUEUE, job_key, mp4_key
from runtime.logging import configure_logging, get_logger

log = get_logger(component="redis-peer-worker")


def main() -> None:
    configure_logging(os.environ.get("PEER_LOG_LEVEL", "INFO"))
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from gpu_runner.pipelines.base import GenerateParams, LoadContext
    from gpu_runner.registry import load_model
    from runtime.video import encode_mp4, remux_keyframes

    stop = False

    def _on_signal(signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    r = redis.Redis.from_url(os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/0"))
    pipe = load_model("tiny-wan", Path(os.environ.get("PEER_MODELS_DIR", "models")), LoadContext())
    pipe.warmup()
    r.set("peer:worker:ready", "1")
    log.info("peer_worker_ready")
    while not stop:
        item = r.blpop([QUEUE], timeout=1)
        if item is None:
            continue
        t_dequeued = time.time()
        msg = json.loads(item[1])
        job_id, p = msg["id"], msg["params"]
        key = job_key(job_id)
        r.hset(key, mapping={"state": "running", "t_dequeued": repr(t_dequeued)})
        try:
            params = GenerateParams(
                prompt=p["prompt"], negative_prompt=p["negative_prompt"], width=p["width"], height=p["height"],
                num_frames=p["num_frames"], steps=p["steps"], guidance_scale=p["guidance_scale"], seed=p["seed"],
            )
            frames = pipe.generate(params)
            t_generated = time.time()
            buf = io.BytesIO()
            encode_mp4(frames, p["fps"], buf, keyframes_at=remux_keyframes(int(frames.shape[0]), 0, 0))
            t_encoded = time.time()
            with r.pipeline(transaction=True) as tx:
                tx.set(mp4_key(job_id), buf.getvalue())
                tx.hset(key, mapping={"state": "done", "t_generated": repr(t_generated),
                                      "t_encoded": repr(t_encoded), "t_stored": repr(time.time())})
                tx.execute()
            log.info("peer_job_done", job_id=job_id, frames=int(frames.shape[0]), bytes=buf.tell(),
                     elapsed_s=round(time.time() - t_dequeued, 3))
        except Exception as e:  # the seed design: mark failed, keep serving
            log.exception("peer_job_failed", job_id=job_id, error=str(e))
            r.hset(key, mapping={"state": "failed", "error": str(e)[:500]})
    r.close()
    log.info("peer_worker_stopped")


if __name__ == "__main__":
    main()
