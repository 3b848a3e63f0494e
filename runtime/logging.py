"""structlog JSON logs with ``job_id``, ``segment``, ``stage`` bound via contextvars."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_configured = False


def configure_logging(level: str = "INFO", fmt: str = "json", stream: Any = None) -> None:
    global _configured
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    # third-party libraries log through stdlib: keep them quiet and on stderr
    logging.basicConfig(level=logging.WARNING, stream=stream or sys.stderr, format="%(name)s %(levelname)s %(message)s")
    _configured = True


def get_logger(**bind: Any) -> Any:
    """A lazy logger: picks up the configuration in force when it first logs."""
    if not _configured:
        configure_logging()
    return structlog.get_logger(**bind)


bind_contextvars = structlog.contextvars.bind_contextvars
bound_contextvars = structlog.contextvars.bound_contextvars
clear_contextvars = structlog.contextvars.clear_contextvars
