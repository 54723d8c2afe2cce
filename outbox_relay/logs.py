"""structlog configuration: JSON lines in production, readable output on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["auto", "json", "console"]
LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(*, level: str = "info", fmt: LogFormat = "auto") -> None:
    """Configure structlog once, at start. ``auto`` is console on a TTY, JSON otherwise."""
    use_console = sys.stderr.isatty() if fmt == "auto" else fmt == "console"
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
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
        wrapper_class=structlog.make_filtering_bound_logger(LOG_LEVELS[level.lower()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        # Not cached: a logger bound once would keep this level and these processors for
        # good (structlog.testing.capture_logs and a later configure could not reach it);
        # the relay logs per batch, not per row, so binding per call costs nothing visible.
        cache_logger_on_first_use=False,
    )
    # pika logs every reconnect attempt at ERROR through stdlib logging; ours say it once.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
