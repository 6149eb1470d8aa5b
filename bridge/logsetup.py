"""Diagnostic logging, configured once per process with structlog.

JSON lines in production (``KORPU_LOG_FORMAT=json``, the default when stderr is not a terminal), a readable
console format otherwise.  Request context (correlation id, route) is bound through contextvars by the web
middlewares.  This is the diagnostic log: it never holds message bodies, key material or personal data — the
message log (evidence) is a separate, signed store.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

__all__ = ["configure_logging", "get_logger"]

_configured = False


def configure_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Configure structlog and the stdlib root logger (idempotent)."""
    global _configured
    if _configured:
        return
    level_name = (level or os.environ.get("KORPU_LOG_LEVEL", "INFO")).upper()
    fmt = fmt or os.environ.get("KORPU_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level_name)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level_name, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # aiohttp's access log duplicates what our middlewares log with more context.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    _configured = True


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger bound to ``name`` (the module)."""
    return structlog.get_logger(name)  # type: ignore[no-any-return]
