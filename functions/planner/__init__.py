"""Segment planner: cover T frames with N windows of L = 4k+1 frames overlapping by O (pure).

Public API: :func:`plan_segments` -> :class:`SegmentPlan`; memory model in ``memory``,
cost model in ``cost``, the optimiser in ``search``.
"""

from functions.planner.plan import PlanError, SegmentPlan, Window, plan_segments

__all__ = ["PlanError", "SegmentPlan", "Window", "plan_segments"]
