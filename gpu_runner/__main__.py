"""Entry point of one rank: ``torchrun --nproc_per_node N -m gpu_runner --model NAME``.

Use ``videogen runner`` to launch it (it wraps torchrun)."""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import threading
import time

from runtime.logging import configure_logging, get_logger
from runtime.settings import load_settings

PR_SET_PDEATHSIG = 1


def die_with_parent(poll_s: float = 1.0) -> str:
    """Exit when the launcher (torchrun) dies, even by SIGKILL: an orphaned rank would keep
    pulling work beside the restarted runner, unsupervised.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` -- the kernel kills this rank when its parent
    dies; the parent may already be gone by the time it is set, so that is checked after. Elsewhere
    (or when prctl fails) a daemon thread polls the parent pid. Its segment is redelivered by
    JetStream once the heartbeats stop (``RUNNER_ACK_WAIT_S``)."""
    parent = os.getppid()
    if parent == 1:  # started by init (no launcher): nothing to follow
        return "none"
    how = "watchdog"
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                how = "pdeathsig"
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(70)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(70)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()  # also behind prctl
    return how


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_runner")
    parser.add_argument("--model", default=None, help="registry name (default: settings.runner_model)")
    parser.add_argument("--max-segments", type=int, default=None, help="exit after N segments (tests)")
    args = parser.parse_args(argv)
    orphan_guard = die_with_parent()
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    from runtime.trust import require_production_secrets

    require_production_secrets(settings)  # embedded=false: no dev secrets, one clear line
    model = args.model or settings.runner_model
    from gpu_runner.runner import Runner

    runner = Runner(settings, model, max_segments=args.max_segments)
    runner.install_signal_handlers()
    if runner.is_rank0:
        get_logger().info("runner_starting", model=model, world_size=runner.ctx.world_size,
                          device=runner.ctx.device, orphan_guard=orphan_guard,
                          settings=settings.masked())
    runner.run()
    return runner.exit_code


if __name__ == "__main__":
    sys.exit(main())
