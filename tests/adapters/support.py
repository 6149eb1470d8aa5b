"""Helpers shared by the registry adapter tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from adapters.base import AdapterRequest
from bridge.identifiers import ServiceId, parse_client
from bridge.message import MessageHeader, Protocol


def query(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` read straight from the SQLite database at ``path`` (to compare answers with)."""
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


def bank_rest(service: str, path: str, query_string: str = "", method: str = "GET") -> AdapterRequest:
    """A verified REST request from the bank's loans subsystem to ``service``, as the server proxy hands it over."""
    header = MessageHeader(
        protocol=Protocol.REST,
        client=parse_client("AZ/COM/9900001111/loans"),
        service=ServiceId.parse(service),
        message_id="msg-1",
    )
    return AdapterRequest(Protocol.REST, header, method, path, query_string, (), b"")
