"""The plan store: a job's segment plan is ``jobs/<job_id>/plan.json`` in S3, written by the
planner (revision 0, and each re-plan: revision r+1) and read by the chain stage (and anyone
else who needs the windows). No in-process cache: the planner and the chain run as separate
Deployments, so S3 is the one copy both see.
"""

from __future__ import annotations

from runtime.storage import Storage
from schemas.errors import Permanent, Retryable
from schemas.messages import JobPlan
from schemas.names import plan_key


async def store_plan(storage: Storage, plan: JobPlan) -> None:
    """Write (or overwrite, on a re-plan) the job's plan."""
    await storage.put_bytes(plan_key(plan.job.job_id), plan.model_dump_json().encode(), "application/json")


async def read_plan(storage: Storage, job_id: str, *, min_revision: int = 0) -> JobPlan:
    """The job's stored plan. Raises ``Permanent`` when there is none (e.g. a cancelled job's
    objects are gone) and ``Retryable`` when it is older than ``min_revision`` (a message refers to
    a re-plan whose plan.json is not readable yet)."""
    try:
        plan = JobPlan.model_validate_json(await storage.get_bytes(plan_key(job_id)))
    except Permanent as e:
        raise Permanent(f"plan for {job_id} is missing: {e}") from e
    if plan.info.revision < min_revision:  # plan.json is written before the segment that refers to it
        raise Retryable(f"plan for {job_id} is at revision {plan.info.revision}, message refers to {min_revision}")
    return plan
