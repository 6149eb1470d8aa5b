"""The message log's durable store: :class:`SqlLogStore` over SQLite (the default) or PostgreSQL.

One class, one SQL text, two backends, chosen by URL like the catalog's (``sqlite:///path/log.db`` or
``postgresql://…``).  The catalog's :mod:`catalog.db` layer is not reused on purpose: it opens a connection per
transaction (fine for a management API, milliseconds per call), while this store sits on the path of every message
and keeps one long-lived write connection; and a security server should not import the central server's package.

Durability
    ``append()`` returns only when the records and their bodies survive a SIGKILL *and* a power loss:

    * SQLite runs in WAL mode with ``synchronous=FULL``: every commit fsyncs the WAL.  ``NORMAL`` would survive a
      crash of the process (SIGKILL) but may lose the last commits on power loss or a kernel crash, because in WAL
      mode it syncs only at checkpoints — and a message that moved on must never lose its record.  The cost is one
      fsync per transaction, which the writer's group commit shares among all the records of a group.
    * PostgreSQL commits with the server's ``synchronous_commit`` (``on`` by default; an operator who turns it off
      trades away exactly this guarantee).

Bodies
    A small part (at most :data:`INLINE_BODY_MAX` bytes: envelopes, descriptors) is stored inline, as a row of
    ``log_small_bodies`` under the record naming it, in the same transaction as that record, so a group of small
    messages costs one database transaction and no file.  Larger parts live in a
    content-addressed directory next to the database, ``<dir>/bodies/ab/cd/<sha512 hex>``,
    deduplicated by digest.  Each body is written to a temporary file, the file data is flushed, the file renamed
    into place, and the rename flushed — all before the database transaction commits, so a committed record never
    names a missing or partial body, and a file under a digest name is always complete.  A crash after the bodies
    but before the commit leaves unreferenced bodies behind: harmless (they are content-addressed), but nothing
    collects them yet (an open point).  :meth:`SqlLogStore.delete_through` deletes small bodies with their records
    (same transaction) and, after its commit and under the body lock, unlinks the files no remaining record names,
    found through ``log_bodies``.  A small body must be given with every record that names it (each record keeps
    its own copy); a large one may be named again without being given, when its file is there (checked under the
    body lock).  :meth:`SqlLogStore.body` takes the digest *and* the naming record's seq, reads the small body's
    row first, then the file (logs written before migration 3 keep their small bodies as files).  On Linux the
    flushes are one ``syncfs(2)`` per group instead of an fsync per file and per directory (measured 5 µs against
    200 µs a file); elsewhere each file and directory is fsynced.
    With PostgreSQL the bodies still stay in the node's directory: a cluster of nodes needs that directory on
    shared storage (an open point, see ``docs/``).

Schema (migrations numbered in :data:`MIGRATIONS`, applied ones listed in ``schema_version``)
    ``log_records``  one row per record: the columns queries filter on, ``batch_id`` (set only in logs written
                     before batches became ranges: a record's batch is the ``log_batches`` row whose range holds
                     it), the record's canonical JSON (:meth:`LogRecord.to_json`) and its hash;
    ``log_persons``  ``(person, seq)`` for "who accessed this person's data" (``userId`` and every declared person);
    ``log_batches``  timestamped batches with their RFC 3161 token;
    ``log_bodies``   ``(sha512, last_seq)``: each body file and the newest record naming it, upserted on append;
                     records are deleted oldest first, so "last_seq <= deleted through" means "no reference left".
                     Chosen over scanning the remaining records' parts at delete time, which grows with the live
                     log and would hold the write lock that long.  Small bodies need no reference (see below);
    ``log_small_bodies``  ``(seq, part, sha512, data)``: the small bodies, keyed by the naming record's seq and
                     part index so that appends add to the end of the B-tree and deletes remove a range from its
                     start; no index by digest (every random-key index dirties a page per insert).  A body several
                     records name is stored under each of them.  Until migration 4, ``log_inline_bodies`` (keyed by
                     hex digest, with a ``log_bodies`` row) held them;
    ``log_pruned``   one row once records were deleted: the last deleted seq and hash (the head of an emptied
                     log, the end of the timestamped range when no batch row is left) and the last batch id.

Batches are contiguous: a batch starts right after the previous one ends (``add_batch`` refuses anything else), so
"unstamped" is simply "after the last batch" and needs no index of its own.

Errors
    Driver and file-system errors become :class:`~bridge.errors.LoggingFailed` with a message that holds no SQL,
    path or driver text; the diagnostic log gets the driver's exception class.  A failed ``append`` or
    ``add_batch`` has rolled back completely.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import datetime as dt
import fcntl
import itertools
import json
import os
import queue
import re
import sqlite3
import sys
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import psycopg
import psycopg.errors
import structlog

from bridge.errors import InvalidState, LoggingFailed
from bridge.messagelog import GENESIS_HASH, LogRecord, canonical
from bridge.spool import CHUNK_SIZE, Spool
from security_server.messagelog import Batch, LogQuery

__all__ = ["INLINE_BODY_MAX", "MIGRATIONS", "SealedRow", "SqlLogStore", "normalise_time", "sealed_row"]

log = structlog.get_logger(__name__)

Dialect = Literal["sqlite", "postgresql"]
_T = TypeVar("_T")

_SQLITE_BUSY_TIMEOUT_MS = 10_000
#: PostgreSQL advisory-lock key held while migrating, so concurrent nodes apply each migration exactly once.
_MIGRATION_LOCK_KEY = zlib.crc32(b"korpu.messagelog.schema_version")
_RECORD_COLUMNS = "seq, at, request_id, message_id, client, service, user_id, record, hash"
_SMALL_BODY_COLUMNS = "seq, part, sha512, data"
#: PostgreSQL types of the columns each appended table is copied into (binary COPY needs them), in column order.
_COPY_TYPES: dict[str, list[str]] = {
    "log_records": ["int8", "text", "text", "text", "text", "text", "text", "text", "bytea"],
    "log_persons": ["text", "int8"],
    "log_small_bodies": ["int8", "int8", "bytea", "bytea"],
}
#: Largest page ``find`` returns, whatever the query asks for.
MAX_FIND_LIMIT = 10_000

_TYPES: dict[Dialect, dict[str, str]] = {
    "sqlite": {"seq_pk": "INTEGER PRIMARY KEY", "id_pk": "INTEGER PRIMARY KEY", "bigint": "INTEGER",
               "blob": "BLOB", "without_rowid": " WITHOUT ROWID"},
    "postgresql": {"seq_pk": "BIGINT PRIMARY KEY", "id_pk": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
                   "bigint": "BIGINT", "blob": "BYTEA", "without_rowid": ""},
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema change; its statements run in order inside the migration transaction."""

    version: int
    name: str
    statements: tuple[str, ...]
    #: Fills new tables from existing rows, after the statements (``conn``, the dialect's ``_sql``).
    backfill: Callable[[Any, Callable[[str], str], Dialect], None] | None = None
    #: The one dialect the statements are for (``None``: both); the version is recorded on both, so a log's
    #: schema version means the same on either.
    only: Dialect | None = None


#: Largest body (bytes) stored inline in ``log_small_bodies`` rather than as a file.
INLINE_BODY_MAX = 64 * 1024
#: Records read per page while deleting their ``(person, seq)`` index rows.
_PRUNE_CHUNK = 1000
#: Body files unlinked per hold of the body lock: appends wait for at most one chunk (unlink took 20 µs to 2 ms
#: a file on the file systems measured).
_UNLINK_CHUNK = 100
#: The end of the timestamped range: the last batch, or where pruning left it once every batch was deleted.
_STAMPED_THROUGH = "COALESCE((SELECT MAX(last_seq) FROM log_batches), (SELECT through_seq FROM log_pruned), 0)"


def _upsert_body_refs(conn: Any, dialect: Dialect, refs: Mapping[bytes, int]) -> None:
    """Record that body ``digest`` is named by record ``seq`` (keeping the newest seq per body)."""
    if not refs:
        return
    if dialect == "sqlite":
        conn.executemany(
            "INSERT INTO log_bodies (sha512, last_seq) VALUES (?, ?)"
            " ON CONFLICT (sha512) DO UPDATE SET last_seq = MAX(last_seq, excluded.last_seq)",
            list(refs.items()),
        )
        return
    # One statement for the whole group (arrays), instead of a round trip per body.
    conn.execute(
        "INSERT INTO log_bodies (sha512, last_seq) SELECT * FROM unnest(%s::bytea[], %s::bigint[])"
        " ON CONFLICT (sha512) DO UPDATE SET last_seq = GREATEST(log_bodies.last_seq, excluded.last_seq)",
        (list(refs), list(refs.values())),
    )


def _body_refs(records: Iterator[LogRecord] | Sequence[LogRecord]) -> dict[bytes, int]:
    """``{body digest: newest seq naming it}`` over the stored parts of ``records`` (given in seq order)."""
    return {bytes.fromhex(p.sha512): r.seq for r in records for p in r.parts if p.stored}


def _backfill_body_refs(conn: Any, sql: Callable[[str], str], dialect: Dialect) -> None:
    """Migration 2: ``log_bodies`` from the records already stored, a page at a time."""
    after = 0
    while True:
        rows = conn.execute(
            sql("SELECT seq, record FROM log_records WHERE seq > ? ORDER BY seq LIMIT ?"), (after, 10_000)
        ).fetchall()
        if not rows:
            return
        _upsert_body_refs(conn, dialect, _body_refs([_parse(text) for _, text in rows]))
        after = int(rows[-1][0])


def _move_inline_bodies(conn: Any, sql: Callable[[str], str], dialect: Dialect) -> None:
    """Migration 4: ``log_inline_bodies`` into ``log_small_bodies``, each under the newest record naming it.

    ``log_bodies.last_seq`` is that record; the body goes under its first part with the digest, so it is deleted
    with that record — exactly when delete_through would have collected it.  An inline body no record names (left
    by a crash between a delete's commit and its clean-up) is garbage and is dropped.  The ``log_bodies`` rows stay:
    :meth:`SqlLogStore.body` finds a moved body through them when asked for it by an older record naming it, and a
    digest may also have a file from before migration 3, which they still collect.
    """
    after = ""
    while True:
        page = conn.execute(
            sql("SELECT sha512, data FROM log_inline_bodies WHERE sha512 > ? ORDER BY sha512 LIMIT ?"), (after, 1000)
        ).fetchall()
        if not page:
            break
        moved: list[tuple[int, int, bytes, bytes]] = []
        for hex_digest, data in page:
            digest = bytes.fromhex(str(hex_digest))
            ref = conn.execute(sql("SELECT last_seq FROM log_bodies WHERE sha512 = ?"), (digest,)).fetchone()
            if ref is None:
                continue
            seq = int(ref[0])
            text = conn.execute(sql("SELECT record FROM log_records WHERE seq = ?"), (seq,)).fetchone()
            if text is None:
                continue
            parts = [p.sha512 for p in _parse(str(text[0])).parts]
            if hex_digest in parts:
                moved.append((seq, parts.index(hex_digest), digest, bytes(data)))
        if moved:
            if dialect == "sqlite":
                conn.executemany("INSERT INTO log_small_bodies (seq, part, sha512, data) VALUES (?, ?, ?, ?)", moved)
            else:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO log_small_bodies (seq, part, sha512, data) VALUES (%s, %s, %s, %s)", moved
                    )
        after = str(page[-1][0])
    conn.execute("DROP TABLE log_inline_bodies")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "message log records, persons and batches",
        (
            "CREATE TABLE log_batches ("
            " id {id_pk}, first_seq {bigint} NOT NULL UNIQUE, last_seq {bigint} NOT NULL UNIQUE,"
            " merkle_root {blob} NOT NULL, token {blob} NOT NULL, tsa_url TEXT NOT NULL, stamped_at TEXT NOT NULL,"
            " CHECK (first_seq <= last_seq))",
            "CREATE TABLE log_records ("
            " seq {seq_pk}, at TEXT NOT NULL, request_id TEXT NOT NULL, message_id TEXT NOT NULL,"
            " client TEXT NOT NULL, service TEXT NOT NULL, user_id TEXT,"
            " batch_id {bigint} REFERENCES log_batches (id), record TEXT NOT NULL, hash {blob} NOT NULL)",
            # Indexes are what every insert pays for; each one here answers an auditor's query (LogQuery field).
            "CREATE INDEX log_records_message_id ON log_records (message_id)",
            "CREATE INDEX log_records_request_id ON log_records (request_id)",
            "CREATE INDEX log_records_client ON log_records (client, seq)",
            "CREATE INDEX log_records_service ON log_records (service, seq)",
            "CREATE INDEX log_records_at ON log_records (at)",
            # The primary key is the (person, seq) index; WITHOUT ROWID makes it the table itself on SQLite.
            "CREATE TABLE log_persons (person TEXT NOT NULL, seq {bigint} NOT NULL,"
            " PRIMARY KEY (person, seq)){without_rowid}",
        ),
    ),
    Migration(
        2,
        "archiving: body references, the pruned log's state, records by batch",
        (
            # One row per stored body: the newest record naming it.  Records are deleted oldest first, so a body
            # whose newest reference is deleted has no reference left (see delete_through).
            "CREATE TABLE log_bodies (sha512 {blob} PRIMARY KEY, last_seq {bigint} NOT NULL){without_rowid}",
            "CREATE INDEX log_bodies_last_seq ON log_bodies (last_seq)",
            # Where the chain stood when records were last deleted: the head of an emptied log, the end of the
            # timestamped range once no batch row is left, and the highest batch id handed out so far.
            "CREATE TABLE log_pruned (id INTEGER PRIMARY KEY CHECK (id = 1), through_seq {bigint} NOT NULL,"
            " last_hash {blob} NOT NULL, last_batch_id {bigint} NOT NULL)",
            # Deleting a batch row checks the foreign key from log_records; without this index both databases
            # scan the whole live log once per deleted batch.
            "CREATE INDEX log_records_batch ON log_records (batch_id)",
        ),
        backfill=_backfill_body_refs,
    ),
    Migration(
        3,
        "small bodies inline",
        # Bodies of at most INLINE_BODY_MAX bytes, written in the records' transaction (no file, no syncfs).
        # A rowid table on SQLite: WITHOUT ROWID suits small rows, not values of up to 64 KiB.
        ("CREATE TABLE log_inline_bodies (sha512 TEXT PRIMARY KEY, data {blob} NOT NULL)",),
    ),
    Migration(
        4,
        "small bodies keyed by their record",
        (
            # Keyed by the naming record's (seq, part index): a group's rows go to the end of the B-tree instead of
            # one random page per 128-character hex key, and they are deleted with their records (a range at the
            # start), so they need no log_bodies reference.  A body two records name is stored twice: deduplicating
            # needs a random-key index, and with the hex-keyed table plus its log_bodies rows the WAL grew by ~30 KB
            # per benchmark record (three 1 KB bodies) against ~12 KB this way.
            "CREATE TABLE log_small_bodies (seq {bigint} NOT NULL, part {bigint} NOT NULL,"
            " sha512 {blob} NOT NULL, data {blob} NOT NULL, PRIMARY KEY (seq, part))",
            # No index by digest: readers name the record too (body(digest, seq)).  An index on even 8 bytes of
            # the digest dirtied a random page per body: measured, ~25 us of CPU per benchmark record.
        ),
        backfill=_move_inline_bodies,
    ),
    Migration(
        5,
        "records stay in the heap row (PostgreSQL)",
        # A record's JSON is ~3 KB, above PostgreSQL's default 2 KB TOAST threshold: every insert tried to
        # compress it (base64 signatures barely compress) and moved it to the TOAST table and its index.  Rows up
        # to a page now stay inline; larger records are still toasted.  Measured: COPY of 10,000 records with
        # their indexes 97-102 -> 60-65 us/record.  Affects rows written from now on.
        ("ALTER TABLE log_records SET (toast_tuple_target = 8160)",),
        only="postgresql",
    ),
    Migration(
        6,
        "the timestamper reads record hashes from an index (SQLite)",
        # unstamped() wants (seq, hash, at) of up to a batch of records, but in the table each record's hash
        # sits after its ~8 KB JSON, so SQLite walked every record's overflow pages to reach it: a batch of
        # 10,000 exchange records read ~85 MB and filled the reading connection's page cache (measured: 138 ms,
        # and the server's resident memory stepped up by ~56 MB at its first batches).  A covering index,
        # appended at its end like the table, answers it in ~15 ms without touching the records.  PostgreSQL
        # would still visit the heap for rows not yet vacuumed, so there it would be cost without benefit.
        ("CREATE INDEX log_records_stamping ON log_records (seq, hash, at)",),
        only="sqlite",
    ),
    Migration(
        7,
        "records past a page are stored uncompressed (PostgreSQL)",
        # An exchange record is ~8.4 KB (a 3.5 KB signature document with two certificates and two OCSP
        # responses, all base64), past the page that migration 5 keeps inline, so PostgreSQL toasts it — and first
        # compresses it with pglz, which runs over the whole value and then gives up (base64 saves less than the
        # 25 % pglz demands): ~70 us of the server's CPU per record for nothing.  EXTERNAL stores such values out
        # of line without trying; rows that fit a page stay inline as before.  Measured with COPY of 10,000
        # records of 8.4 KB into the table with its indexes: 132-157 -> 59-77 us per record, the same bytes on
        # disk (9.4 KB per record either way).  Affects rows written from now on.
        ("ALTER TABLE log_records ALTER COLUMN record SET STORAGE EXTERNAL",),
        only="postgresql",
    ),
)


def normalise_time(text: str) -> str:
    """``text`` (ISO 8601) as the one form the store compares: UTC, microseconds, ``Z`` — so text order is time order.

    A naive time is taken as UTC.  Raises :class:`ValueError` if ``text`` is not ISO 8601.
    """
    when = dt.datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class SealedRow:
    """A sealed record with what the store writes for it, computed outside the database transaction.

    ``json`` is ``canonical(record.to_json())``, ``at`` the normalised time, ``persons`` the distinct person
    identifiers (``userId`` and the declared ones).
    """

    record: LogRecord
    json: str
    hash: bytes
    at: str
    persons: tuple[str, ...]


def sealed_row(record: LogRecord, json_text: str | None = None) -> SealedRow:
    """The :class:`SealedRow` for a sealed ``record`` (``json_text`` if the caller already serialised it)."""
    persons = dict.fromkeys(p for p in (record.user_id, *record.persons) if p)
    return SealedRow(
        record=record,
        json=json_text if json_text is not None else canonical(record.to_json()).decode(),
        hash=bytes.fromhex(record.hash),
        at=normalise_time(record.at),
        persons=tuple(persons),
    )


class _Syncfs:
    """``syncfs(2)`` through libc when the platform has it: one call flushes a whole file system."""

    def __init__(self) -> None:
        self._fn: Any = None
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
                self._fn = libc.syncfs

    @property
    def available(self) -> bool:
        return self._fn is not None

    def __call__(self, fd: int) -> None:
        if self._fn(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))


_syncfs = _Syncfs()


_HEX512 = re.compile(r"[0-9a-f]{128}")
#: Threads writing one group's bodies in parallel (shared by all stores of the process).
_BODY_THREADS = 4
_BODY_POOL: list[concurrent.futures.ThreadPoolExecutor] = []
_BODY_POOL_LOCK = threading.Lock()


def _body_pool() -> concurrent.futures.ThreadPoolExecutor:
    with _BODY_POOL_LOCK:
        if not _BODY_POOL:
            _BODY_POOL.append(
                concurrent.futures.ThreadPoolExecutor(max_workers=_BODY_THREADS, thread_name_prefix="korpu-log-body")
            )
        return _BODY_POOL[0]


class _BodyStore:
    """The content-addressed body directory (see the module docstring for the crash-safety argument).

    Plain ``os`` calls on ``str`` paths: this runs for every stored part, and pathlib's object overhead showed in
    profiles next to the system calls themselves.
    """

    def __init__(self, root: Path, *, use_syncfs: bool) -> None:
        self.root = str(root)
        self._tmp = os.path.join(self.root, "tmp")
        os.makedirs(self._tmp, exist_ok=True)
        # Temporary files of a crashed run are garbage (none was renamed into place), but another process may be
        # writing right now (the running server while `korpu audit` opens the store, or a node sharing the
        # directory): only files untouched for an hour are removed.
        stale_before = time.time() - 3600
        for leftover in os.listdir(self._tmp):
            path = os.path.join(self._tmp, leftover)
            with contextlib.suppress(OSError):
                if os.stat(path).st_mtime < stale_before:
                    os.unlink(path)
        # The 256 first-level directories once, so a body needs at most one mkdir (of its leaf directory).
        for i in range(256):
            os.makedirs(os.path.join(self.root, f"{i:02x}"), exist_ok=True)
        self._use_syncfs = use_syncfs and _syncfs.available
        self._dirs: set[str] = set()
        self._counter = itertools.count()

    def path(self, sha512_hex: str) -> str:
        if not _HEX512.fullmatch(sha512_hex):
            raise ValueError("a body is named by its lowercase SHA-512 hex digest")
        return os.path.join(self.root, sha512_hex[:2], sha512_hex[2:4], sha512_hex)

    def exists(self, sha512_hex: str) -> bool:
        try:
            return os.path.exists(self.path(sha512_hex))
        except ValueError:
            return False

    def read(self, sha512_hex: str) -> bytes | None:
        try:
            with open(self.path(sha512_hex), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def write(self, bodies: Mapping[str, Spool]) -> None:
        """Make every body in ``bodies`` durable under its digest (no-op for those already stored).

        A group's bodies are written by a few threads at once: the work is system calls (create, write, rename),
        which release the GIL and which the file system runs in parallel.
        """
        items = list(bodies.items())
        if not items:
            return
        chunks = [items[i::_BODY_THREADS] for i in range(min(_BODY_THREADS, len(items)))]
        # (1)-(2) Each body to a temporary file ...
        staged = [self._stage(chunks[0])] if len(chunks) == 1 else _all_or_raise(self._stage, chunks)
        pending = [p for chunk in staged for p in chunk]
        if not pending:
            return
        # (3) ... whose data reaches the disk before it gets its content-addressed name ...
        if self._use_syncfs:
            self._sync_fs()
        if len(staged) == 1:
            dirs = self._rename(pending)
        else:
            dirs = set().union(*_all_or_raise(self._rename, [c for c in staged if c]))
        # (4) ... and the names reach the disk before the records that refer to them commit.
        if self._use_syncfs:
            self._sync_fs()
        else:
            for directory in dirs | {os.path.dirname(d) for d in dirs} | {self.root}:
                _fsync_dir(directory)

    def _stage(self, items: list[tuple[str, Spool]]) -> list[tuple[str, str]]:
        pending: list[tuple[str, str]] = []
        for digest, spool in items:
            target = self.path(digest)
            if os.path.exists(target):
                continue  # deduplicated: same digest, same bytes, written completely by an earlier rename
            # (1) The spool must be the body it claims to be: its digest was computed while it was received.
            if spool.digest.hex() != digest:
                raise ValueError("a body's digest does not match its name")
            # (2) A private temporary name (the counter is atomic under the GIL).
            tmp = os.path.join(self._tmp, f"{digest[:32]}.{next(self._counter)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o640)
            try:
                _copy_spool(spool, fd)
                if not self._use_syncfs:
                    os.fsync(fd)
            finally:
                os.close(fd)
            pending.append((tmp, target))
        return pending

    def _rename(self, pending: list[tuple[str, str]]) -> set[str]:
        dirs: set[str] = set()
        for tmp, target in pending:
            leaf = os.path.dirname(target)
            if leaf not in self._dirs:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(leaf)
                self._dirs.add(leaf)
            os.replace(tmp, target)
            dirs.add(leaf)
        return dirs

    def _sync_fs(self) -> None:
        fd = os.open(self.root, os.O_RDONLY)
        try:
            _syncfs(fd)
        finally:
            os.close(fd)


def _all_or_raise(fn: Callable[[Any], _T], chunks: Sequence[Any]) -> list[_T]:
    """``fn`` over ``chunks`` in the body pool; every call has finished before this returns or raises.

    ``Executor.map`` raises at the first failed call while others still run: the writer would then report the
    failure and its callers free spools that a pool thread is still reading.
    """
    futures = [_body_pool().submit(fn, chunk) for chunk in chunks]
    concurrent.futures.wait(futures)
    return [f.result() for f in futures]


def _copy_spool(spool: Spool, fd: int) -> None:
    if spool.in_memory:
        view = memoryview(spool.getvalue())
        written = 0
        while written < len(view):
            written += os.write(fd, view[written:])
    else:
        # Spool offers no blocking chunked reader yet; _read_at is its positional read (os.pread, no shared seek).
        written = 0
        while written < spool.size:
            chunk = spool._read_at(written, CHUNK_SIZE)
            if not chunk:
                break
            view = memoryview(chunk)
            done = 0
            while done < len(view):
                done += os.write(fd, view[done:])
            written += done
    # A spool closed by its owner reads as empty: never store that under the real digest.
    if written != spool.size:
        raise ValueError("a body is shorter than its spool says (closed too early?)")


def _spool_bytes(spool: Spool, digest: str) -> bytes:
    """A small spool's bytes, checked against its name and its size (see :func:`_copy_spool`)."""
    if spool.digest.hex() != digest:
        raise ValueError("a body's digest does not match its name")
    data = spool.getvalue() if spool.in_memory else spool._read_at(0, spool.size)
    if len(data) != spool.size:
        raise ValueError("a body is shorter than its spool says (closed too early?)")
    return data


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: WAL size (bytes) past which the writer, right after a commit, finishes the background checkpoint itself so
#: that its next transaction starts the WAL over and truncates it back to this size (see :class:`_Checkpointer`).
WAL_LIMIT_BYTES = 16 * 1024 * 1024
#: Least time between two background checkpoints.  Each one fsyncs the database file (and the WAL): run after
#: every commit, as first built, that cost ~0.4 ms of each REST exchange on each security server in the benchmark
#: (small groups of records commit hundreds of times a second); once a second it is noise.
CHECKPOINT_INTERVAL_S = 1.0


class _Checkpointer:
    """SQLite WAL checkpoints off the writer's commit path.

    With the default ``wal_autocheckpoint`` the commit that crosses 1000 WAL pages copies them into the database and
    fsyncs it, and every caller of that group waits.  The write connection turns that off; after each commit this
    thread is woken and runs a PASSIVE checkpoint on its own connection, which copies committed pages while the
    writer goes on (it never blocks the writer or readers), at most once per :data:`CHECKPOINT_INTERVAL_S` (commits
    in between are copied together).  A background checkpoint alone cannot bound the WAL:
    the WAL starts over only when a write transaction begins with every frame copied, and under steady load new
    frames keep arriving.  So once the WAL file is larger than :data:`WAL_LIMIT_BYTES` the writer runs a PASSIVE
    checkpoint itself right after its commit, under the write lock: it copies only the frames this thread has not
    copied yet, and the next transaction starts the WAL over (``journal_size_limit`` then truncates the file back
    to the limit).  If this thread fails or falls behind, that writer-side checkpoint still bounds the WAL.

    Durability does not depend on any of this: a commit is durable once the WAL is fsynced (``synchronous=FULL``).
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._wake = threading.Event()
        self._stop_event = threading.Event()
        self._stopping = False
        self._conn: sqlite3.Connection | None = None
        #: Held while this thread checkpoints.  A PASSIVE checkpoint that meets another one gives up at once, so
        #: the writer, when it must checkpoint, takes this lock: it waits for at most the running one, which has
        #: copied most of the frames by then.
        self.lock = threading.Lock()
        #: Background checkpoints run (for tests and metrics), under ``done`` so a test can wait for the next one.
        self.runs = 0
        self.done = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="korpu-log-checkpoint", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """A write transaction committed: checkpoint soon."""
        self._wake.set()

    def stop(self) -> None:
        """End the thread (after its current checkpoint) and close its connection."""
        self._stopping = True
        self._stop_event.set()
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        last = -CHECKPOINT_INTERVAL_S
        while True:
            self._wake.wait()
            # Let the commits of the next moments join this checkpoint (stop() cuts the wait short).
            self._stop_event.wait(last + CHECKPOINT_INTERVAL_S - time.monotonic())
            self._wake.clear()
            if self._stopping:
                break
            last = time.monotonic()
            try:
                if self._conn is None:
                    self._conn = sqlite3.connect(
                        self._path, timeout=_SQLITE_BUSY_TIMEOUT_MS / 1000, isolation_level=None
                    )
                    # The checkpoint fsyncs the WAL before copying and the database after, at this level.
                    self._conn.execute("PRAGMA synchronous=FULL")
                with self.lock:
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:
                # The writer's own checkpoints keep the WAL bounded meanwhile; reconnect on the next wake.
                log.warning("message log checkpoint failed", error=type(exc).__name__)
                self._close()
            with self.done:
                self.runs += 1
                self.done.notify_all()
        self._close()

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None


class SqlLogStore:
    """:class:`~security_server.messagelog.LogStore` on SQLite or PostgreSQL, bodies in ``body_dir``.

    Thread-safe: writes (``append``, ``add_batch``) share one connection under a lock, reads take a connection
    from a small pool, so auditors' queries and the timestamper never wait for the writer on SQLite (WAL) and
    PostgreSQL alike.  ``body_dir`` defaults to ``<database file>.d`` for SQLite and is required for PostgreSQL.
    ``use_syncfs=False`` forces an fsync per body file and directory (see the module docstring).
    """

    def __init__(self, url: str, body_dir: str | Path | None = None, *, use_syncfs: bool = True) -> None:
        scheme = url.partition(":")[0].lower()
        if scheme == "sqlite":
            self.dialect: Dialect = "sqlite"
            self._sqlite_path = _sqlite_path(url)
            default_dir: Path | None = Path(self._sqlite_path + ".d")
        elif scheme in ("postgresql", "postgres"):
            self.dialect = "postgresql"
            self._sqlite_path = ""
            default_dir = None
        else:
            raise LoggingFailed("the message log database URL must start with sqlite:/// or postgresql://")
        directory = Path(body_dir) if body_dir is not None else default_dir
        if directory is None:
            raise LoggingFailed("a PostgreSQL message log needs a body directory")
        self._url = url
        self._bodies = _BodyStore(directory / "bodies", use_syncfs=use_syncfs)
        self._write_lock = threading.Lock()
        # Held by an append from "this body is already stored" until its records commit, and by delete_through
        # while it unlinks bodies: a body is never unlinked under a record that has just come to name it.  The
        # thread lock orders this process; an flock on bodies.lock (beside bodies/) orders it against another
        # process (korpu audit archive next to the running server): shared for appends, exclusive for unlinking.
        self._body_lock = threading.Lock()
        self._body_lock_fd = os.open(
            directory / "bodies.lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o640
        )
        self._write_conn: Any = None
        #: SQLite only, started by the first commit: a store that never writes (``korpu audit``) has no thread.
        self._checkpointer: _Checkpointer | None = None
        self._readers: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        # No checkpointer for the migrations: a store only read from (``korpu audit query``) starts no thread.
        with self._writing(checkpoint=False) as conn:
            self._migrate(conn)

    # Connections ------------------------------------------------------------------------------------------------

    def _sql(self, text: str) -> str:
        for token, value in _TYPES[self.dialect].items():
            text = text.replace("{" + token + "}", value)
        # psycopg uses %s placeholders; no statement here has a literal ? or %.
        return text.replace("?", "%s") if self.dialect == "postgresql" else text

    def _connect(self, *, write: bool) -> Any:
        if self.dialect == "sqlite":
            # isolation_level=None: transactions are begun explicitly (BEGIN IMMEDIATE for writers).
            conn = sqlite3.connect(
                self._sqlite_path, timeout=_SQLITE_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # durable across power loss; see the module docstring
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
            # A page cache, once filled, stays in the process's memory.  The writer's 16 MiB hold the interior
            # pages of the indexes it inserts into at random places (message and request ids, persons) for logs of
            # a few million records; beyond that some come from the OS page cache, a read each.  The pages of
            # records it wrote, which filled a 64 MiB cache within a minute under load, it never reads again
            # (appending 50,000 records: 2,802/s with 64 MiB, 2,876/s with 16).  Readers are pooled, one per
            # concurrent reader: 8 MiB each.
            conn.execute("PRAGMA cache_size=-16384" if write else "PRAGMA cache_size=-8192")
            if write:
                conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run in _Checkpointer, off the commit path
                conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            return conn
        # Readers autocommit (no idle transaction holding snapshots); the writer runs explicit transactions.
        return psycopg.connect(self._url, autocommit=not write)

    @contextlib.contextmanager
    def _writing(self, *, checkpoint: bool = True) -> Iterator[Any]:
        """One write transaction on the shared write connection; commit at the end, roll back on any error.

        ``checkpoint``: after the commit, start or wake the SQLite checkpointer (see :meth:`_after_commit`).
        """
        with self._write_lock:
            if self._closed:
                raise LoggingFailed("the message log store is closed")
            try:
                if self._write_conn is None:
                    self._write_conn = self._connect(write=True)
                conn = self._write_conn
                if self.dialect == "sqlite":
                    conn.execute("BEGIN IMMEDIATE")
            except (sqlite3.Error, psycopg.Error) as exc:
                self._drop_write_conn()
                log.error("message log database unavailable", dialect=self.dialect, error=type(exc).__name__)
                raise LoggingFailed("the message log database is unavailable") from exc
            try:
                yield conn
                conn.commit()
            except BaseException as exc:
                self._rollback(conn)
                if isinstance(exc, (sqlite3.Error, psycopg.Error)):
                    log.error("message log write failed", dialect=self.dialect, error=type(exc).__name__)
                    raise LoggingFailed("the message log database write failed and was rolled back") from exc
                raise
            if self.dialect == "sqlite" and checkpoint:
                self._after_commit(conn)

    def _after_commit(self, conn: sqlite3.Connection) -> None:
        """Wake the checkpointer; checkpoint here too once the WAL is past its limit (see :class:`_Checkpointer`).

        Runs under the write lock after a successful commit; a failure here is logged, never raised: the
        transaction is already durable.
        """
        if self._checkpointer is None:
            self._checkpointer = _Checkpointer(self._sqlite_path)
        try:
            if os.stat(self._sqlite_path + "-wal").st_size > WAL_LIMIT_BYTES:
                # A reader still on old frames, or another process checkpointing: the next commit retries.
                with self._checkpointer.lock:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except (OSError, sqlite3.Error) as exc:
            log.warning("message log checkpoint failed", error=type(exc).__name__)
        self._checkpointer.committed()

    def _rollback(self, conn: Any) -> None:
        try:
            conn.rollback()
        except (sqlite3.Error, psycopg.Error):
            log.warning("message log rollback failed", dialect=self.dialect)
        # A PostgreSQL connection that lost its server is useless; reconnect on the next write.
        if self.dialect == "postgresql" and (conn.closed or conn.broken):
            self._drop_write_conn()

    def _drop_write_conn(self) -> None:
        if self._write_conn is not None:
            with contextlib.suppress(sqlite3.Error, psycopg.Error):
                self._write_conn.close()
        self._write_conn = None

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Any]:
        """A pooled read connection (autocommit on PostgreSQL, a short read transaction on SQLite)."""
        if self._closed:
            raise LoggingFailed("the message log store is closed")
        try:
            conn = self._readers.get_nowait()
        except queue.Empty:
            conn = None
        try:
            if conn is None:
                conn = self._connect(write=False)
            yield conn
            if self.dialect == "sqlite":
                conn.rollback()  # end the implicit read snapshot, if any
        except (sqlite3.Error, psycopg.Error) as exc:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error, psycopg.Error):
                    conn.close()
            log.error("message log read failed", dialect=self.dialect, error=type(exc).__name__)
            raise LoggingFailed("the message log database read failed") from exc
        except BaseException:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error, psycopg.Error):
                    conn.close()
            raise
        self._readers.put(conn)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._reading() as conn:
            return [tuple(row) for row in conn.execute(self._sql(sql), tuple(params)).fetchall()]

    def _migrate(self, conn: Any) -> None:
        if self.dialect == "postgresql":
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        applied = {int(row[0]) for row in conn.execute("SELECT version FROM schema_version").fetchall()}
        for migration in MIGRATIONS:
            if migration.version in applied:
                continue
            for statement in migration.statements if migration.only in (None, self.dialect) else ():
                conn.execute(self._sql(statement))
            if migration.backfill is not None:
                migration.backfill(conn, self._sql, self.dialect)
            conn.execute(
                self._sql("INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)"),
                (migration.version, migration.name, dt.datetime.now(dt.UTC).isoformat()),
            )
            log.info("applied message log migration", version=migration.version, name=migration.name)

    # Writing ----------------------------------------------------------------------------------------------------

    def head(self) -> tuple[int, bytes]:
        """``(last seq, last hash)``; ``(0, GENESIS_HASH)`` for an empty log.

        After :meth:`delete_through` removed every record, the head is the last deleted record's, so appends
        continue the chain.
        """
        with self._reading() as conn:
            return _head(conn)

    def append(self, records: Sequence[LogRecord], bodies: Mapping[str, Spool]) -> None:
        """Store sealed, consecutive records continuing the head, and their bodies, in one transaction."""
        self.append_rows([sealed_row(r) for r in records], bodies)

    def append_rows(self, rows: Sequence[SealedRow], bodies: Mapping[str, Spool]) -> None:
        """:meth:`append` for records the caller already serialised (the writer's hot path)."""
        if not rows:
            return
        # (1) The batch is a chain by itself: consecutive numbers, each linked to the one before.
        for before, after in itertools.pairwise(rows):
            if after.record.seq != before.record.seq + 1 or after.record.prev_hash != before.record.hash:
                raise LoggingFailed("the records to append are not consecutive")
        record_params = [
            (r.record.seq, r.at, r.record.request_id, r.record.message_id, r.record.client, r.record.service,
             r.record.user_id, r.json, r.hash)
            for r in rows
        ]  # fmt: skip
        person_params = [(p, r.record.seq) for r in rows for p in r.persons]
        first = rows[0].record
        with self._bodies_locked(exclusive=False):
            # (2) Where each stored part's body goes: a small one is a row under its record's (seq, part index)
            #     and must be given with every record naming it; a large one is a file (log_bodies names its
            #     newest record), and one not given must be stored already (checked here, and under the body lock
            #     not unlinked before the records below commit).
            try:
                small, files, refs = self._place_bodies(rows, bodies)
                # (3) Large bodies are durable files before the records that name them commit.
                self._bodies.write(files)
            except (OSError, ValueError) as exc:
                log.error("message log body write failed", error=type(exc).__name__)
                raise LoggingFailed("the message log could not store a message body") from exc
            with self._writing() as conn:
                # (4) Defensive: the first record continues the stored head (another writer, or a stale head, is
                #     refused here; the primary key catches a concurrent one on PostgreSQL).
                head_seq, head_hash = _head(conn)
                if first.seq != head_seq + 1 or first.prev_hash != head_hash.hex():
                    raise LoggingFailed("the records to append do not continue the log's head")
                # (5) All rows in one transaction: all stored or, on any error, none.
                self._insert(conn, "log_records", _RECORD_COLUMNS, record_params)
                if person_params:
                    self._insert(conn, "log_persons", "person, seq", person_params)
                if small:
                    self._insert(conn, "log_small_bodies", _SMALL_BODY_COLUMNS, small)
                _upsert_body_refs(conn, self.dialect, refs)

    def _place_bodies(
        self, rows: Sequence[SealedRow], bodies: Mapping[str, Spool]
    ) -> tuple[list[tuple[int, int, bytes, bytes]], dict[str, Spool], dict[bytes, int]]:
        """Split the stored parts of ``rows`` into small-body rows, body files and file references.

        Returns ``(small rows (seq, part, digest, data), files {hex: spool}, refs {digest: newest seq})``.  Raises
        ``LoggingFailed`` for a part whose body is neither given nor (large) stored as a file, ``ValueError`` for a
        body that does not match its digest.  Bodies given but named by no stored part are not stored (nothing
        would ever collect them).
        """
        small: list[tuple[int, int, bytes, bytes]] = []
        files: dict[str, Spool] = {}
        refs: dict[bytes, int] = {}
        data_of: dict[str, bytes] = {}
        for row in rows:
            seq = row.record.seq
            seen: set[str] = set()
            for index, part in enumerate(row.record.parts):
                hex_digest = part.sha512
                if not part.stored or hex_digest in seen:
                    continue
                seen.add(hex_digest)
                spool = bodies.get(hex_digest)
                if spool is not None and spool.size <= INLINE_BODY_MAX:
                    data = data_of.get(hex_digest)
                    if data is None:
                        data = data_of[hex_digest] = _spool_bytes(spool, hex_digest)
                    small.append((seq, index, bytes.fromhex(hex_digest), data))
                elif spool is not None:
                    files[hex_digest] = spool
                    refs[bytes.fromhex(hex_digest)] = seq
                elif self._bodies.exists(hex_digest):
                    refs[bytes.fromhex(hex_digest)] = seq
                else:
                    raise LoggingFailed("a logged part marked as stored has no body")
        return small, files, refs

    def _insert(self, conn: Any, table: str, columns: str, params: list[tuple[Any, ...]]) -> None:
        if self.dialect == "sqlite":
            placeholders = ", ".join("?" * (columns.count(",") + 1))
            conn.executemany(f"INSERT INTO {table} ({columns}) VALUES ({placeholders})", params)  # noqa: S608
            return
        # PostgreSQL: COPY streams the rows in one command, several times faster than even a pipelined
        # executemany; it is still part of the transaction, so it commits or rolls back with it.  Binary format:
        # the text format hex-escapes every bytea (bodies, digests) on the client and parses it on the server;
        # measured for the small bodies, 105-115 -> 53-61 us per record (three 1 KB bodies).
        with conn.cursor() as cur, cur.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_COPY_TYPES[table])
            for row in params:
                copy.write_row(row)

    def add_batch(
        self, first_seq: int, last_seq: int, merkle_root: bytes, token: bytes, tsa_url: str, stamped_at: str
    ) -> Batch:
        """Record a batch and assign exactly ``first_seq..last_seq`` to it, in one transaction.

        Refuses (``LoggingFailed``, nothing changed) a batch that does not start right after the previous one, or
        whose records are missing or already in a batch: every record ends up in exactly one batch.
        """
        if not 1 <= first_seq <= last_seq or len(merkle_root) != 32:
            raise LoggingFailed("invalid batch bounds or root")
        with self._writing() as conn:
            # (1) Contiguous with the previous batch: no gap, no overlap.
            stamped = int(conn.execute(f"SELECT {_STAMPED_THROUGH}").fetchone()[0])
            if first_seq != stamped + 1:
                raise LoggingFailed("the batch does not start right after the last timestamped record")
            # (2) The batch row.  Ids are given here rather than by the database so that they keep growing after
            #     delete_through removed every batch row (SQLite would otherwise hand out 1 again).
            row = conn.execute(
                self._sql(
                    "INSERT INTO log_batches (id, first_seq, last_seq, merkle_root, token, tsa_url, stamped_at)"
                    " VALUES (COALESCE((SELECT MAX(id) FROM log_batches), (SELECT last_batch_id FROM log_pruned), 0)"
                    " + 1, ?, ?, ?, ?, ?, ?) RETURNING id"
                ),
                (first_seq, last_seq, merkle_root, token, tsa_url, stamped_at),
            ).fetchone()
            batch_id = int(row[0])
            # (3) Every record of the range is there (a count over the primary key).  Nothing is written to the
            #     records themselves: a batch is its range in log_batches (see batch_of).  Setting
            #     log_records.batch_id, as logs before this version did, rewrote every record of the batch —
            #     10,000 rows of ~8 KB, ~100 MB of WAL per batch, which showed as a latency and memory spike on each
            #     timestamping round.
            count = conn.execute(
                self._sql("SELECT COUNT(*) FROM log_records WHERE seq BETWEEN ? AND ?"), (first_seq, last_seq)
            ).fetchone()[0]
            if int(count) != last_seq - first_seq + 1:
                raise LoggingFailed("the batch's records are missing or already timestamped")
        return Batch(batch_id, first_seq, last_seq, bytes(merkle_root), bytes(token), tsa_url, stamped_at)

    # Pruning ----------------------------------------------------------------------------------------------------

    def delete_through(self, last_seq: int) -> None:
        """Delete records up to ``last_seq``, their person-index rows and batches, then bodies nothing names.

        ``last_seq`` must be the last record of a timestamped batch (:class:`InvalidState` otherwise, nothing
        changed): archives hold whole batches, and every remaining record stays in a complete batch.  The rows go
        in one transaction; ``log_pruned`` keeps the deleted head's seq and hash, so :meth:`head` and appends
        continue the chain even when no record is left.  Small bodies go with their records; body files are
        unlinked after the commit (a crash in between leaves unreferenced files, as a crashed append can); a file
        that a newer record names stays.
        """
        with self._writing() as conn:
            # (1) A batch ends exactly at last_seq.
            end = conn.execute(
                self._sql("SELECT b.id, r.hash FROM log_batches b JOIN log_records r ON r.seq = b.last_seq"
                          " WHERE b.last_seq = ?"),
                (last_seq,),
            ).fetchone()  # fmt: skip
            if end is None:
                raise InvalidState(
                    f"cannot delete the message log through record {last_seq}: it is not the last record of a "
                    "timestamped batch in the live log (only whole batches are archived and deleted)"
                )
            last_hash = bytes(end[1])
            # (2) The person index, row by row from the records being deleted (the index is keyed by person: a
            #     "seq <= ?" delete would scan all of it while the log cannot be written).
            after = 0
            while True:
                page = conn.execute(
                    self._sql("SELECT seq, record FROM log_records WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"),
                    (after, last_seq, _PRUNE_CHUNK),
                ).fetchall()
                if not page:
                    break
                pairs = [(p, r.record.seq) for _, text in page for r in (sealed_row(_parse(text), text),)
                         for p in r.persons]  # fmt: skip
                self._delete_persons(conn, pairs)
                after = int(page[-1][0])
            # (3) The records with their small bodies, then their batches (the index on log_records.batch_id keeps
            #     the foreign-key check from scanning the live log per batch).
            conn.execute(self._sql("DELETE FROM log_records WHERE seq <= ?"), (last_seq,))
            conn.execute(self._sql("DELETE FROM log_small_bodies WHERE seq <= ?"), (last_seq,))
            top = conn.execute(self._sql("SELECT MAX(id) FROM log_batches WHERE last_seq <= ?"), (last_seq,))
            last_batch_id = int(top.fetchone()[0])
            conn.execute(self._sql("DELETE FROM log_batches WHERE last_seq <= ?"), (last_seq,))
            # (4) Where the chain stands, for head() and add_batch() once no record or batch row is left.
            conn.execute(
                self._sql(
                    "INSERT INTO log_pruned (id, through_seq, last_hash, last_batch_id) VALUES (1, ?, ?, ?)"
                    " ON CONFLICT (id) DO UPDATE SET through_seq = excluded.through_seq,"
                    " last_hash = excluded.last_hash, last_batch_id = excluded.last_batch_id"
                ),
                (last_seq, last_hash, last_batch_id),
            )
            # (5) Body files whose newest reference was deleted have none left.
            gone = conn.execute(
                self._sql("DELETE FROM log_bodies WHERE last_seq <= ? RETURNING sha512"), (last_seq,)
            ).fetchall()
        self._unlink_bodies([bytes(row[0]).hex() for row in gone])

    def _delete_persons(self, conn: Any, pairs: list[tuple[str, int]]) -> None:
        if not pairs:
            return
        if self.dialect == "sqlite":
            conn.executemany("DELETE FROM log_persons WHERE person = ? AND seq = ?", pairs)
            return
        conn.execute(
            "DELETE FROM log_persons p USING unnest(%s::text[], %s::bigint[]) AS d (person, seq)"
            " WHERE p.person = d.person AND p.seq = d.seq",
            ([p for p, _ in pairs], [s for _, s in pairs]),
        )

    @contextlib.contextmanager
    def _bodies_locked(self, *, exclusive: bool) -> Iterator[None]:
        with self._body_lock:
            fcntl.flock(self._body_lock_fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(self._body_lock_fd, fcntl.LOCK_UN)

    def _unlink_bodies(self, digests: list[str]) -> None:
        """Remove body files no record names, a chunk per hold of the body lock so appends wait only briefly.

        Under the lock a digest that an append has named again since the delete committed is skipped: that
        append found the file present and did not write it again.  (Small bodies need none of this: they are rows
        deleted with their records.)
        """
        removed = 0
        for start in range(0, len(digests), _UNLINK_CHUNK):
            chunk = digests[start : start + _UNLINK_CHUNK]
            with self._bodies_locked(exclusive=True):
                marks = ", ".join("?" * len(chunk))
                named = {
                    bytes(row[0]).hex()
                    for row in self._query(
                        f"SELECT sha512 FROM log_bodies WHERE sha512 IN ({marks})",  # noqa: S608 - placeholders only
                        [bytes.fromhex(d) for d in chunk],
                    )
                }
                for digest in chunk:
                    if digest in named:
                        continue
                    try:
                        os.unlink(self._bodies.path(digest))
                        removed += 1
                    except FileNotFoundError:
                        pass  # a crash between an earlier delete's commit and its unlinking, or a small body's ref
                    except OSError as exc:
                        # The records are gone either way; a file left behind is garbage, not a broken log.
                        log.warning("message log body not removed", error=type(exc).__name__)
        log.info("message log bodies removed", count=removed)

    # Reading ----------------------------------------------------------------------------------------------------

    def records(self, first_seq: int, last_seq: int) -> list[LogRecord]:
        """Records ``first_seq..last_seq`` inclusive, in order."""
        rows = self._query(
            "SELECT record FROM log_records WHERE seq BETWEEN ? AND ? ORDER BY seq", (first_seq, last_seq)
        )
        return [_parse(row[0]) for row in rows]

    def find(self, query: LogQuery) -> list[LogRecord]:
        """Records matching every field of ``query``, in seq order after ``query.after_seq``, at most ``limit``."""
        limit = max(0, min(query.limit, MAX_FIND_LIMIT))
        if limit == 0:
            return []
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("r.message_id", query.message_id),
            ("r.request_id", query.request_id),
            ("r.client", query.client),
            ("r.service", query.service),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        try:
            if query.since is not None:
                where.append("r.at >= ?")
                params.append(normalise_time(query.since))
            if query.until is not None:
                where.append("r.at < ?")
                params.append(normalise_time(query.until))
        except ValueError as exc:
            raise LoggingFailed("a query time is not ISO 8601") from exc
        if query.person is not None:
            # Walk the (person, seq) index in seq order and join: pages stay fast however large the log.
            sql = "SELECT r.record FROM log_persons p JOIN log_records r ON r.seq = p.seq WHERE p.person = ?"
            sql += " AND p.seq > ?"
            params = [query.person, query.after_seq, *params]
            order = " ORDER BY p.seq LIMIT ?"
        else:
            sql = "SELECT r.record FROM log_records r WHERE r.seq > ?"
            params = [query.after_seq, *params]
            order = " ORDER BY r.seq LIMIT ?"
        sql += "".join(f" AND {w}" for w in where) + order
        return [_parse(row[0]) for row in self._query(sql, [*params, limit])]

    def body(self, sha512_hex: str, seq: int) -> bytes | None:
        """The bytes of part ``sha512_hex`` as record ``seq`` names it (small-body row, else file), or ``None``.

        A small body moved by migration 4 is stored under the newest record naming it only; asked for by an older
        one, it is found through ``log_bodies``.
        """
        if not _HEX512.fullmatch(sha512_hex):
            return None
        digest = bytes.fromhex(sha512_hex)
        rows = self._query("SELECT data FROM log_small_bodies WHERE seq = ? AND sha512 = ? LIMIT 1", (seq, digest))
        if not rows:
            rows = self._query(
                "SELECT s.data FROM log_bodies b JOIN log_small_bodies s ON s.seq = b.last_seq AND s.sha512 = b.sha512"
                " WHERE b.sha512 = ? LIMIT 1",
                (digest,),
            )
        if rows:
            return bytes(rows[0][0])
        try:
            return self._bodies.read(sha512_hex)
        except ValueError:
            return None
        except OSError as exc:
            raise LoggingFailed("the message log could not read a message body") from exc

    def stamped_through(self) -> int:
        """The last seq in a batch (0 if none): every record up to it is timestamped, none after it."""
        return int(self._query(f"SELECT {_STAMPED_THROUGH}")[0][0])

    def unstamped(self, limit: int) -> list[tuple[int, bytes, str]]:
        """The oldest records not yet in a batch, as ``(seq, hash, at)``, consecutive from the oldest."""
        rows = self._query(
            f"SELECT seq, hash, at FROM log_records WHERE seq > {_STAMPED_THROUGH} ORDER BY seq LIMIT ?",  # noqa: S608
            (limit,),
        )
        return [(int(seq), bytes(digest), str(at)) for seq, digest, at in rows]

    def oldest_unstamped_at(self) -> str | None:
        """``at`` of the oldest record not yet in a batch, or ``None`` when all are timestamped."""
        rows = self._query(f"SELECT at FROM log_records WHERE seq = {_STAMPED_THROUGH} + 1")  # noqa: S608
        return str(rows[0][0]) if rows else None

    def batch_of(self, seq: int) -> Batch | None:
        """The batch holding record ``seq``, if it has been timestamped."""
        # By range: batches are contiguous and do not overlap (add_batch), and records hold no batch id any more
        # (older logs' batch_id column agrees with the ranges, so either way gives the same batch).
        rows = self._query(
            "SELECT b.id, b.first_seq, b.last_seq, b.merkle_root, b.token, b.tsa_url, b.stamped_at"
            " FROM log_batches b JOIN log_records r ON r.seq = ?"
            " WHERE b.first_seq <= r.seq AND r.seq <= b.last_seq ORDER BY b.first_seq DESC LIMIT 1",
            (seq,),
        )
        if not rows:
            return None
        bid, first, last, root, token, url, at = rows[0]
        return Batch(int(bid), int(first), int(last), bytes(root), bytes(token), str(url), str(at))

    def close(self) -> None:
        """Release connections (idempotent)."""
        with self._write_lock:
            if not self._closed:
                os.close(self._body_lock_fd)
            self._closed = True
            self._drop_write_conn()
            if self._checkpointer is not None:
                self._checkpointer.stop()
                self._checkpointer = None
        while True:
            try:
                conn = self._readers.get_nowait()
            except queue.Empty:
                break
            with contextlib.suppress(sqlite3.Error, psycopg.Error):
                conn.close()


def _head(conn: Any) -> tuple[int, bytes]:
    row = conn.execute("SELECT seq, hash FROM log_records ORDER BY seq DESC LIMIT 1").fetchone()
    if row is not None:
        return int(row[0]), bytes(row[1])
    row = conn.execute("SELECT through_seq, last_hash FROM log_pruned").fetchone()
    return (int(row[0]), bytes(row[1])) if row is not None else (0, GENESIS_HASH)


def _parse(text: str) -> LogRecord:
    return LogRecord.from_json(json.loads(text))


def _sqlite_path(url: str) -> str:
    # The catalog's convention: sqlite:///relative.db and sqlite:////absolute/path.db.  No in-memory databases:
    # the writer and the readers use separate connections, which would each see an empty database.
    if not url.lower().startswith("sqlite:///"):
        raise LoggingFailed("a sqlite URL must look like sqlite:///path/to/log.db")
    path = urllib.parse.unquote(url[len("sqlite:///") :].partition("?")[0])
    if not path or path == ":memory:":
        raise LoggingFailed("a sqlite URL must name a database file")
    return path
