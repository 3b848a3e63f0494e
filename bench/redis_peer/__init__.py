"""The seed-000 design, rebuilt as the peer of ``bench/vs_redis.py``: FastAPI + a Redis list + ONE
worker process, running the same tiny-wan call and MP4 encode as the videogen runner.

- ``app.py``: ``POST /jobs`` pushes the job onto the ``peer:queue`` list; ``GET /jobs/{id}``
  answers 202 while the job is pending and the MP4 bytes (200, ``video/mp4``) once it is done.
- ``worker.py``: ``BLPOP``s the list, renders, encodes and stores the MP4 bytes in Redis.
- ``stack.py``: starts a real ``redis-server`` (own loopback port and data dir, no snapshots:
  the seed design kept nothing durable), uvicorn and the worker as child processes.

Nothing here is part of the product; it exists so the comparison runs in one process tree.
"""

QUEUE = "peer:queue"


def job_key(job_id: str) -> str:
    """Hash with the job's state, parameters and the worker's timestamps."""
    return f"peer:job:{job_id}"


def mp4_key(job_id: str) -> str:
    return f"peer:job:{job_id}:mp4"
