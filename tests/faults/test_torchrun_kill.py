"""No orphans: kill -9 of torchrun leaves no rank running (PR_SET_PDEATHSIG in every rank), and
kill -9 of the ``videogen runner`` wrapper takes torchrun and its ranks down (the wrapper's
process group; PDEATHSIG on torchrun)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.faults.harness import alive, children, descendants, fault_stack, figure


def _wait_gone(pids: list[int], timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if not any(alive(p) for p in pids):
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"still running {timeout_s}s later: {[p for p in pids if alive(p)]}")


def test_torchrun_or_wrapper_killed_leaves_no_rank(tmp_path: Path) -> None:
    with fault_stack(tmp_path, with_functions=False) as fs:
        r = fs.start_runner()
        (torchrun,) = children(r.proc.pid)
        ranks = r.ranks()
        assert ranks, "no rank found under torchrun"
        # rank 0's I/O process (gpu_runner/io_process.py) and multiprocessing's resource tracker
        # are the ranks' children: they must go with them (PDEATHSIG in the I/O process)
        below = [p for rank in ranks for p in descendants(rank)]
        assert below, "rank 0 has no I/O process"
        os.kill(torchrun, signal.SIGKILL)
        gone_s = _wait_gone(ranks + below, 10)
        r.proc.wait(timeout=15)  # the wrapper notices and exits too
        figure("torchrun_kill9", ranks=len(ranks), their_children=len(below),
               surviving=sum(alive(p) for p in ranks + below), all_gone_s=round(gone_s, 2),
               wrapper_exit=r.proc.returncode)
        assert r.proc.returncode != 0

        r2 = fs.start_runner()
        (torchrun2,) = children(r2.proc.pid)
        ranks2 = r2.ranks()
        assert ranks2
        os.kill(r2.proc.pid, signal.SIGKILL)  # the wrapper itself
        gone_s = _wait_gone([torchrun2, *ranks2], 20)
        figure("wrapper_kill9", surviving=sum(alive(p) for p in [torchrun2, *ranks2]), all_gone_s=round(gone_s, 2))
