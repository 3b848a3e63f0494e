"""Planner vs the vanilla fixed-window schedule (L=77, 1-frame overlap, tail padded).

For each memory budget and T it prints frames covered / requested and rendered / requested
(rendered counts every window frame, overlap included) for both schedules, and the modelled cost
ratio ours / vanilla. When 77-frame windows do not fit the budget, vanilla runs at the largest
window that fits (marked ``*``). Exit status 1 if ours does not cover T exactly or costs more
than vanilla (beyond 0.1 %: with a pure per-segment-overhead cost, e.g. ``tiny-wan``, our
5-frame minimum overlap can need 81-frame windows where vanilla's 1-frame overlap uses 77).

    .venv/bin/python bench/planner.py [--model wan2.1-t2v-14b --width 1280 --height 720 --budgets 80,40]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from functions.planner import plan_segments  # noqa: E402
from functions.planner.cost import window_cost  # noqa: E402
from functions.planner.memory import GIB, max_window_frames  # noqa: E402
from functions.planner.search import fixed_window_schedule  # noqa: E402
from schemas.registry import MODELS  # noqa: E402

TOTALS = (60, 77, 161, 308, 1000, 2000)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="wan2.1-t2v-14b")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--budgets", default="80,40", help="GiB per GPU, comma separated")
    args = ap.parse_args()
    spec = MODELS[args.model]
    steps = spec.default_steps
    ok = True
    print(f"model {spec.name} at {args.width}x{args.height}, {steps} steps, cost = modelled seconds (H100-class)")
    header = (f"{'budget':>7} {'cap':>4} {'T':>5} | {'vanilla N':>9} {'L':>4} {'cover/T':>8} {'render/T':>8} | "
              f"{'ours N':>6} {'L':>3} {'O':>6} {'pad':>3} {'cover/T':>8} {'render/T':>8} | {'cost ours/van':>13} "
              f"{'plan ms':>7}")
    print(header)
    print("-" * len(header))
    for budget_gib in (float(b) for b in args.budgets.split(",")):
        budget = int(budget_gib * GIB)
        cap = max_window_frames(spec, args.width, args.height, budget)
        van_l = 77 if cap >= 77 else cap
        for total in TOTALS:
            t0 = time.perf_counter()
            plan = plan_segments(total, spec, args.width, args.height, budget_bytes=budget)
            ms = (time.perf_counter() - t0) * 1e3
            van = fixed_window_schedule(total, van_l, 1)
            van_cost = van.segments * window_cost(spec, args.width, args.height, van_l, steps)
            covered = plan.windows[-1].end_frame
            ratio = plan.cost / van_cost
            exact = covered - plan.padding_frames == total and plan.padding_frames < spec.frame_multiple
            ok &= exact and (plan.padding_frames == 0 or plan.segments == 1) and ratio <= 1.0 + 1e-3
            ov = f"{plan.overlap_frames}" if plan.uniform else f"{plan.overlap_frames}/{plan.overlap_frames + 1}"
            mark = "" if van_l == 77 else "*"
            print(
                f"{budget_gib:>5.0f}Gi {cap:>4} {total:>5} | {van.segments:>9} {str(van_l) + mark:>4} "
                f"{van.covered_frames / total:>8.3f} {van.rendered_frames / total:>8.3f} | "
                f"{plan.segments:>6} {plan.window_frames:>3} {ov if plan.segments > 1 else '-':>6} "
                f"{plan.padding_frames:>3} {covered / total:>8.3f} {plan.rendered_frames / total:>8.3f} | "
                f"{ratio:>13.4f} {ms:>7.2f}"
            )
    print("check: ours covers exactly T (pad only inside one window) and costs <= vanilla (0.1 %):",
          "OK" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
