"""The fault hierarchy: stable codes, documented, rendered in X-Road's REST error shape."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import bridge.errors as errors
from bridge.errors import DuplicateRegistration, GlobalConfExpired, KorpuError, render_json

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def all_error_classes() -> list[type[KorpuError]]:
    return [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, KorpuError)]


def test_every_code_is_documented_with_its_status() -> None:
    """docs/errors.md lists every fault code with its HTTP status, so the table cannot drift from the code."""
    doc = DOC.read_text(encoding="utf-8")
    missing = []
    for cls in all_error_classes():
        row = f"| `{cls.origin_default}.{cls.code}` | {cls.http_status} |"
        if row not in doc:
            missing.append(row)
    assert missing == []


def test_codes_are_unique() -> None:
    """No two fault classes share a code (a code must identify one condition)."""
    codes = [c.code for c in all_error_classes()]
    assert sorted(codes) == sorted(set(codes))


def test_render_json_shape_and_correlation() -> None:
    """Errors render as {type, message, detail}; detail falls back to the correlation id."""
    body = json.loads(render_json(DuplicateRegistration("already there"), correlation_id="abc123"))
    assert body == {"type": "Client.DuplicateRegistration", "message": "already there", "detail": "abc123"}


def test_origin_override() -> None:
    """The same condition carries the origin of the side that reports it."""
    exc = GlobalConfExpired("expired", origin="Server.ClientProxy")
    assert exc.fault_code == "Server.ClientProxy.OutdatedGlobalConf"
    assert str(exc) == "Server.ClientProxy.OutdatedGlobalConf: expired"
