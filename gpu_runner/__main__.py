"""Entry point of one rank: ``torchrun --nproc_per_node N -m gpu_runner --model NAME``.

Use ``videogen runner`` to launch it (it wraps torchrun)."""

from __future__ import annotations

import argparse
import sys

from runtime.logging import configure_logging, get_logger
from runtime.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_runner")
    parser.add_argument("--model", default=None, help="registry name (default: settings.runner_model)")
    parser.add_argument("--max-segments", type=int, default=None, help="exit after N segments (tests)")
    args = parser.parse_args(argv)
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
                          device=runner.ctx.device, settings=settings.masked())
    runner.run()
    return runner.exit_code


if __name__ == "__main__":
    sys.exit(main())
