"""Government registries with synthetic data, as adapters: population, tax (E-Tax), labor contracts, e-licenses.

All four read one registries database made by :func:`adapters.registries.data.generate` (``korpu registries
generate``), so a person's PIN, their TIN, their employer's TIN and its licenses agree across the registries.
This package module holds what the registries share: identifier formats, the JSON answers and business errors
(``{"error": code, "message": text}``, as :mod:`adapters.base` asks), and the common options ``database`` and
``today``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from typing import Any

from adapters.base import AdapterContext, AdapterResponse
from adapters.registries.db import RegistryDb
from bridge.errors import ConfigError

__all__ = [
    "DOCUMENT_PATTERN",
    "PIN_PATTERN",
    "TIN_PATTERN",
    "clock",
    "database",
    "error",
    "error_schema",
    "json_answer",
]

#: A personal identification number (FİN): seven upper-case letters or digits.
PIN_PATTERN = re.compile(r"[0-9A-Z]{7}")
#: A taxpayer identification number (VÖEN): ten digits.
TIN_PATTERN = re.compile(r"[0-9]{10}")
#: An identity document number: ``AZE`` + 8 digits (identity card) or ``C`` + 8 digits (passport).
DOCUMENT_PATTERN = re.compile(r"(?:AZE|C)[0-9]{8}")


def json_answer(status: int, body: Any, headers: tuple[tuple[str, str], ...] = ()) -> AdapterResponse:
    """A JSON answer (UTF-8, non-ASCII letters kept as they are)."""
    return AdapterResponse(status, json.dumps(body, ensure_ascii=False).encode(), "application/json", headers)


def error(status: int, code: str, message: str) -> AdapterResponse:
    """A business error: ``status`` with ``{"error": code, "message": message}``."""
    return json_answer(status, {"error": code, "message": message})


def error_schema() -> dict[str, Any]:
    """The OpenAPI schema of a business error, for the registries' service descriptions."""
    return {
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    }


def database(context: AdapterContext, adapter: str) -> RegistryDb:
    """The ``database`` option (required) as a :class:`RegistryDb`; relative SQLite paths resolve in state_dir."""
    url = context.options.get("database")
    if not url:
        raise ConfigError(f"adapter {adapter}: option database (a sqlite:/// or postgresql:// URL) is required")
    return RegistryDb(url, base=context.state_dir)


def clock(context: AdapterContext, adapter: str) -> Callable[[], dt.date]:
    """The ``today`` option (an ISO date, for reproducible answers) as a clock; the real date when not given."""
    option = context.options.get("today")
    if option is None:
        return dt.date.today
    try:
        fixed = dt.date.fromisoformat(option)
    except ValueError:
        raise ConfigError(f"adapter {adapter}: option today must be an ISO date (YYYY-MM-DD)") from None
    return lambda: fixed
