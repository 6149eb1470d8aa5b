"""The registries' database: one SQLite file or PostgreSQL database named by URL, for bulk loading and lookups.

URL forms (as everywhere in Körpü):

* ``sqlite:///relative/file.db`` or ``sqlite:////absolute/file.db`` — a relative path is resolved against the
  ``base`` directory given (an adapter's state directory), else against the current directory;
* ``postgresql://…`` / ``postgres://…`` — passed to psycopg 3 as a libpq conninfo, so query parameters such as
  ``?options=-csearch_path%3Dschema`` keep working.

SQL is written once with ``?`` placeholders; :meth:`RegistryDb.sql` turns them into psycopg's ``%s``.

Two ways in:

* :meth:`RegistryDb.reader` — what the adapters use: :meth:`Reader.query` / :meth:`Reader.one` on pooled
  connections, SQLite opened **read-only** (``mode=ro``) so a registry adapter can never change its data.  Calls
  are blocking; adapters run them in a worker thread (``asyncio.to_thread``), and the pool is thread-safe.
* :meth:`RegistryDb.loader` — what the generator uses: one connection, one transaction, bulk inserts
  (``executemany`` on SQLite with bulk-load pragmas, ``COPY`` on PostgreSQL).
"""

from __future__ import annotations

import queue
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import psycopg

from bridge.errors import ConfigError

__all__ = ["Dialect", "Loader", "Reader", "RegistryDb"]

Dialect = Literal["sqlite", "postgresql"]

#: Idle connections a reader keeps for reuse (more may be open while many lookups run at once).
_POOL_SIZE = 8
_SQLITE_BUSY_TIMEOUT_S = 10.0


class RegistryDb:
    """A registries database named by ``url``; relative SQLite paths resolve against ``base``."""

    def __init__(self, url: str, *, base: Path | None = None) -> None:
        scheme = url.partition(":")[0].lower()
        self.url = url
        self.path: Path | None = None
        if scheme == "sqlite":
            self.dialect: Dialect = "sqlite"
            if not url.lower().startswith("sqlite:///"):
                raise ConfigError(f"{url!r}: a sqlite URL must look like sqlite:///path/to/file.db")
            raw = urllib.parse.unquote(url[len("sqlite:///") :].partition("?")[0])
            if not raw or raw == ":memory:":
                raise ConfigError(f"{url!r}: a sqlite URL must name a database file")
            path = Path(raw)
            self.path = path if path.is_absolute() or base is None else base / path
        elif scheme in ("postgresql", "postgres"):
            self.dialect = "postgresql"
        else:
            raise ConfigError(f"unsupported database URL scheme {scheme!r} (use sqlite:/// or postgresql://)")

    def sql(self, text: str) -> str:
        """``text`` with ``?`` placeholders in this dialect's form (the SQL never has ``?`` or ``%`` literals)."""
        return text if self.dialect == "sqlite" else text.replace("?", "%s")

    def connect(self, *, read_only: bool) -> Any:
        """A new DB-API connection (autocommit off on PostgreSQL; SQLite in explicit-transaction mode)."""
        if self.dialect == "sqlite":
            assert self.path is not None
            if read_only:
                if not self.path.is_file():
                    raise ConfigError(
                        f"{self.path}: no registries database (create it with `korpu registries generate`)"
                    )
                uri = f"file:{urllib.parse.quote(str(self.path))}?mode=ro"
                return sqlite3.connect(uri, uri=True, timeout=_SQLITE_BUSY_TIMEOUT_S, check_same_thread=False)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return sqlite3.connect(
                str(self.path), timeout=_SQLITE_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        conn = psycopg.connect(self.url, autocommit=read_only)
        if read_only:
            # Every autocommit statement is its own transaction, and each one is read-only from now on.
            conn.execute("SET default_transaction_read_only = on")
        return conn

    def reader(self) -> Reader:
        """A thread-safe, pooled, read-only query interface."""
        return Reader(self)

    @contextmanager
    def loader(self) -> Iterator[Loader]:
        """One connection in one transaction for bulk loading; committed at the end, rolled back on error."""
        conn = self.connect(read_only=False)
        try:
            if self.dialect == "sqlite":
                # Bulk-load settings: nothing else reads the file while it is generated, and a crash mid-way
                # leaves a file the generator recreates anyway, so journalling and fsync buy nothing here.
                for pragma in (
                    "journal_mode=OFF",
                    "synchronous=OFF",
                    "temp_store=MEMORY",
                    "cache_size=-524288",  # 512 MiB page cache for the index builds
                    "locking_mode=EXCLUSIVE",
                ):
                    conn.execute(f"PRAGMA {pragma}")
                conn.execute("BEGIN")
            loader = Loader(self, conn)
            yield loader
            conn.commit() if self.dialect == "postgresql" else conn.execute("COMMIT")
            if self.dialect == "sqlite":
                # Back to SQLite's safe defaults.  A rollback journal (not WAL) keeps the file self-contained, with
                # no -wal/-shm files beside it, so it can be copied around and opened read-only anywhere.
                conn.execute("PRAGMA locking_mode=NORMAL")
                conn.execute("PRAGMA journal_mode=DELETE")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("ANALYZE")
        except BaseException:
            if self.dialect == "sqlite":
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            else:
                conn.rollback()
            raise
        finally:
            conn.close()


class Loader:
    """Bulk writes on one connection inside one transaction (see :meth:`RegistryDb.loader`)."""

    def __init__(self, db: RegistryDb, conn: Any) -> None:
        self._db = db
        self._conn = conn

    @property
    def dialect(self) -> Dialect:
        """Which backend this loader writes to."""
        return self._db.dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement (DDL or a single write)."""
        self._conn.execute(self._db.sql(sql), tuple(params))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query in the loading transaction."""
        return [tuple(row) for row in self._conn.execute(self._db.sql(sql), tuple(params)).fetchall()]

    def insert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Append ``rows`` to ``table`` as fast as the backend allows (``executemany`` / ``COPY``).

        ``table`` and ``columns`` are trusted identifiers from the generator's schema, never user input.
        """
        if self.dialect == "sqlite":
            marks = ", ".join("?" * len(columns))
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608 - trusted names
            self._conn.executemany(sql, rows)
            return
        with self._conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


class Reader:
    """Read-only lookups over a small pool of connections; every method blocks (call it from a worker thread)."""

    def __init__(self, db: RegistryDb) -> None:
        self._db = db
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()

    @property
    def dialect(self) -> Dialect:
        """Which backend this reader queries."""
        return self._db.dialect

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = self._db.connect(read_only=True)
        try:
            yield conn
        except BaseException:
            # A connection that failed mid-query may be in any state: drop it rather than reuse it.
            conn.close()
            raise
        if self._idle.qsize() < _POOL_SIZE:
            self._idle.put(conn)
        else:
            conn.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """All rows of a query, as tuples."""
        with self._connection() as conn:
            return [tuple(row) for row in conn.execute(self._db.sql(sql), tuple(params)).fetchall()]

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """The first row of a query, or ``None``."""
        with self._connection() as conn:
            row = conn.execute(self._db.sql(sql), tuple(params)).fetchone()
            return None if row is None else tuple(row)

    def close(self) -> None:
        """Close the idle connections."""
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
