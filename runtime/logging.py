"""structlog logs with ``job_id``, ``segment``, ``stage`` bound via contextvars.

Two formats: ``json`` (services: functions, runner; one JSON object per line for log pipelines)
and ``console`` (the CLI's own commands: ``12:00:01 warning  nats_reconnected  key=value``, for
people). ``VIDEOGEN_LOG_FORMAT`` picks one; the CLI defaults to ``console`` for its client
commands unless the variable is set.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO, cast

import structlog

FORMATS = ("json", "console")

_configured = False


def _renderer(fmt: str, stream: Any) -> Any:
    if fmt == "json":
        return structlog.processors.JSONRenderer()
    # "console" (and anything else: a typo must not cost the logs)
    colors = bool(getattr(stream, "isatty", lambda: False)())
    return structlog.dev.ConsoleRenderer(colors=colors, pad_event=0, sort_keys=False)


class _CurrentStderr:
    """``sys.stderr`` looked up at each write: a logger configured while stderr was redirected (a
    test's capture, a CLI runner) keeps writing to whatever stderr is now, never a closed stream."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())


def configure_logging(level: str = "INFO", fmt: str = "json", stream: Any = None) -> None:
    global _configured
    # _CurrentStderr is a duck-typed TextIO (write/flush/isatty: all that PrintLogger uses)
    out: TextIO = stream or cast(TextIO, _CurrentStderr())
    renderer = _renderer(fmt, out)
    timestamper = (structlog.processors.TimeStamper(fmt="iso", utc=True) if fmt == "json"
                   else structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if fmt == "json" else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # third-party libraries log through stdlib: keep them quiet and on stderr
    logging.basicConfig(level=logging.WARNING, stream=out, format="%(name)s %(levelname)s %(message)s")
    _configured = True


def get_logger(**bind: Any) -> Any:
    """A lazy logger: picks up the configuration in force when it first logs."""
    if not _configured:
        configure_logging()
    return structlog.get_logger(**bind)


bind_contextvars = structlog.contextvars.bind_contextvars
bound_contextvars = structlog.contextvars.bound_contextvars
clear_contextvars = structlog.contextvars.clear_contextvars
