"""A security server's message log: durable, chained, batch-timestamped records of every message it carries.

The evidence format is :mod:`bridge.messagelog`.  This package stores it:

* ``store``       — :class:`LogStore` over SQLite (WAL, the default) or PostgreSQL, plus a content-addressed body
                    store on disk; one interface, the same tests on both;
* ``writer``      — :class:`MessageLog`, the async facade the proxies call: ``await log.append(record, bodies)``
                    returns once the record is durable (group commit), or raises ``LoggingFailed``;
* ``timestamper`` — batches unstamped records, asks the TSA for one RFC 3161 token per batch over its Merkle root,
                    and refuses traffic (``TimestampingFailed``) once records waited longer than the grace period;
* ``archive``     — rotates old records into linked archive files, and the auditor's export and verification.

The contracts below are what those modules implement and what the proxies, the auditor API and ``korpu audit``
use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from bridge.messagelog import LogRecord
from bridge.spool import Spool

__all__ = ["Batch", "LogQuery", "LogStore", "MessageLogWriter"]


@dataclass(frozen=True)
class Batch:
    """A timestamped run of records ``first_seq..last_seq`` and its RFC 3161 token over the Merkle root."""

    id: int
    first_seq: int
    last_seq: int
    merkle_root: bytes
    token: bytes  # DER TimeStampToken (the CMS ContentInfo), what `openssl ts -verify -token_in` reads
    tsa_url: str
    stamped_at: str  # genTime from the token, ISO 8601 UTC


@dataclass(frozen=True)
class LogQuery:
    """What an auditor asks for; every field narrows the result (``None``: any).  ``after_seq`` pages."""

    message_id: str | None = None
    request_id: str | None = None
    client: str | None = None  # encoded identifier, e.g. SUBSYSTEM:AZ/COM/9900001111/loans
    service: str | None = None  # encoded, e.g. SERVICE:AZ/GOV/1400057421/population/hello
    person: str | None = None  # a person identifier (matches userId and the declared person fields)
    since: str | None = None  # ISO 8601 UTC, inclusive
    until: str | None = None  # ISO 8601 UTC, exclusive
    after_seq: int = 0
    limit: int = 100


class LogStore(Protocol):
    """Durable storage of sealed records, their bodies and their timestamp batches (blocking calls)."""

    def head(self) -> tuple[int, bytes]:
        """``(last seq, last hash)``; ``(0, GENESIS_HASH)`` for an empty log."""
        ...

    def append(self, records: Sequence[LogRecord], bodies: Mapping[str, Spool]) -> None:
        """Store sealed, consecutive records and the bodies they reference (by SHA-512 hex) in one transaction.

        Bodies are written (and fsynced) before the records commit; when this returns, all are durable.  Give the
        bodies of every stored part with each record (a store may keep small ones per record).
        """
        ...

    def records(self, first_seq: int, last_seq: int) -> list[LogRecord]:
        """Records ``first_seq..last_seq`` inclusive, in order."""
        ...

    def find(self, query: LogQuery) -> list[LogRecord]:
        """Records matching ``query``, in seq order, at most ``query.limit``."""
        ...

    def body(self, sha512_hex: str, seq: int) -> bytes | None:
        """The bytes of part ``sha512_hex`` as record ``seq`` names it, or ``None`` if not kept or archived away.

        ``None`` also for metadata-only logging.  The seq lets a store keep small bodies with their record, without
        an index by digest.
        """
        ...

    def unstamped(self, limit: int) -> list[tuple[int, bytes, str]]:
        """The oldest records not yet in a batch, as ``(seq, hash, at)``, consecutive from the oldest."""
        ...

    def add_batch(
        self, first_seq: int, last_seq: int, merkle_root: bytes, token: bytes, tsa_url: str, stamped_at: str
    ) -> Batch:
        """Record a batch and assign its records to it, in one transaction; refuse overlap (never stamp twice)."""
        ...

    def batch_of(self, seq: int) -> Batch | None:
        """The batch holding record ``seq``, if it has been timestamped."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class MessageLogWriter(Protocol):
    """What the proxies call on the hot path."""

    def check(self) -> None:
        """Raise ``TimestampingFailed`` / ``LoggingFailed`` if the log cannot take records now (O(1), no I/O)."""
        ...

    async def append(self, record: LogRecord, bodies: Mapping[str, Spool]) -> LogRecord:
        """Seal and durably store ``record``; return it sealed (with seq and hash); raise ``LoggingFailed``."""
        ...
