"""The message log's hot path: :class:`MessageLog`, the async facade the proxies call (group commit).

``await log.append(record, bodies)`` returns the sealed record once it is durable, or raises ``LoggingFailed`` —
and the exchange then fails, because nothing is delivered that is not logged (DESIGN decision 4).

Group commit
    Callers put their record on a queue and wait on a future.  One writer task takes everything queued (up to
    ``max_group``), seals the records in queue order continuing the chain's head, and hands them to the store in one
    transaction in a worker thread; then it resolves every future of the group.  While a transaction commits, new
    records queue up and form the next group, so N concurrent exchanges cost about one fsync, not N.

Failure
    When the store fails, every record of the group gets ``LoggingFailed`` (the store rolled back: none of them is
    stored) and the in-memory head is reloaded from the store before the next group, so the chain continues from
    what is really durable.  If even the head cannot be read, :meth:`MessageLog.check` refuses traffic until a
    retry succeeds.

Sealing fast path
    Sealing is :meth:`LogRecord.sealed` plus ``canonical(record.to_json())`` for the stored JSON; both walk the record
    with ``dataclasses.asdict`` (a deep copy), about 140 µs per record together.  :func:`seal_row` builds the record's
    JSON object once, shallowly, encodes it once and derives both the hash and the stored JSON from that text (about
    30 µs).  Because the
    hash is evidence, the first record of every group is also sealed the reference way and compared: if the two
    ever differ (a field added to ``LogRecord`` that the fast path does not convert like ``asdict``), the group
    fails closed instead of storing a chain auditors could not verify.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import structlog

from bridge.errors import LoggingFailed
from bridge.messagelog import LogPart, LogRecord
from bridge.spool import Spool
from security_server.messagelog import LogStore
from security_server.messagelog.store import SealedRow, normalise_time, sealed_row

if TYPE_CHECKING:
    from security_server.messagelog.timestamper import Timestamper

__all__ = ["DEFAULT_MAX_GROUP", "MessageLog", "RowStore", "seal_row"]

log = structlog.get_logger(__name__)

#: Most records committed in one transaction.  Larger groups gain little (the fsync is already shared) and hold
#: more callers waiting on one commit.
DEFAULT_MAX_GROUP = 1000
#: Seconds between attempts to re-read the head after the store failed to give it.
HEAD_RETRY_S = 1.0

_RECORD_FIELDS: Final = tuple(f.name for f in dataclasses.fields(LogRecord) if f.name != "hash")
_PART_FIELDS: Final = tuple(f.name for f in dataclasses.fields(LogPart))
# The same settings as bridge.messagelog.canonical, built once instead of per call.
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)
_PLACEHOLDER: Final = "korpu-seal-" + secrets.token_hex(16)


@runtime_checkable
class RowStore(Protocol):
    """A store that takes pre-serialised rows (:class:`~security_server.messagelog.store.SqlLogStore` does)."""

    def append_rows(self, rows: list[SealedRow], bodies: Mapping[str, Spool]) -> None:
        """Store sealed rows and their bodies in one transaction."""
        ...


def _json_value(value: Any) -> Any:
    # What dataclasses.asdict + LogRecord.body() make of a field, without the deep copy.
    if isinstance(value, tuple):
        return [{n: getattr(v, n) for n in _PART_FIELDS} if isinstance(v, LogPart) else v for v in value]
    if isinstance(value, Mapping):
        return dict(value)
    return value


def seal_row(record: LogRecord, seq: int, prev_hash: bytes) -> SealedRow:
    """``record.sealed(seq, prev_hash)`` and its stored JSON, from one shallow JSON object encoded once.

    The object is encoded with a placeholder for ``hash``: a random string per process that no record can contain
    (an unescaped quote cannot occur inside a JSON string, and the placeholder is unguessable), so removing the
    ``"hash":…`` member gives exactly the canonical body the hash covers, and substituting the hash gives
    ``canonical(record.to_json())`` — one encoding instead of two (each ~13 µs for a 3 KB record).
    """
    body = {name: _json_value(getattr(record, name)) for name in _RECORD_FIELDS}
    prev_hex = prev_hash.hex()
    body["seq"] = seq
    body["prev_hash"] = prev_hex
    body["hash"] = _PLACEHOLDER
    text = _ENCODER.encode(body)
    # "hash" sorts neither first ("at") nor last ("user_id"): its member is always followed by a comma.
    member = f'"hash":"{_PLACEHOLDER}",'
    if text.count(_PLACEHOLDER) != 1:  # pragma: no cover - would need a record containing the secret
        raise LoggingFailed("the message log could not seal the record")
    digest = hashlib.sha256(prev_hash)
    digest.update(text.replace(member, "", 1).encode())
    hash_hex = digest.hexdigest()
    sealed = dataclasses.replace(record, seq=seq, prev_hash=prev_hex, hash=hash_hex)
    return sealed_row(sealed, text.replace(_PLACEHOLDER, hash_hex, 1))


class _Pending:
    """One caller's record on its way through the queue."""

    __slots__ = ("bodies", "dropped", "future", "record", "taken")

    def __init__(self, record: LogRecord, bodies: Mapping[str, Spool], future: asyncio.Future[LogRecord]) -> None:
        self.record = record
        self.bodies = bodies
        self.future = future
        self.taken = False  # the writer has started on it: its bodies are being read
        self.dropped = False  # the caller was cancelled before that: skip it


_STOP: Final = object()


class MessageLog:
    """:class:`~security_server.messagelog.MessageLogWriter` over a :class:`LogStore`, with group commit.

    ``server_id`` is the encoded security server identifier every record names (a record with ``server`` empty
    gets it; one naming another server is refused).  ``timestamper``, when given, is told about appended records
    (its size trigger) and consulted by :meth:`check` (its grace period).
    """

    def __init__(
        self,
        store: LogStore,
        *,
        server_id: str,
        timestamper: Timestamper | None = None,
        max_group: int = DEFAULT_MAX_GROUP,
    ) -> None:
        if max_group < 1:
            raise ValueError("max_group must be at least 1")
        self._store = store
        self._server_id = server_id
        self._timestamper = timestamper
        self._max_group = max_group
        self._queue: asyncio.Queue[_Pending | object] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._head: tuple[int, bytes] | None = None
        #: Store transactions committed and records appended since start (for metrics and the benchmark).
        self.transactions = 0
        self.appended = 0

    # Lifecycle --------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the chain's head (and the timestamper's state) and start the writer task."""
        if self._task is not None:
            return
        self._head = await asyncio.to_thread(self._store.head)
        if self._timestamper is not None:
            await self._timestamper.load()
        self._queue = asyncio.Queue()
        self._running = True
        self._task = asyncio.create_task(self._run(), name="korpu-messagelog-writer")

    async def stop(self) -> None:
        """Refuse new records, finish every record already queued, and end the writer task."""
        if self._task is None:
            return
        self._running = False
        self._queue.put_nowait(_STOP)
        task, self._task = self._task, None
        await task

    async def __aenter__(self) -> MessageLog:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # Hot path ---------------------------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise ``LoggingFailed`` / ``TimestampingFailed`` if the log cannot take records now (O(1), no I/O)."""
        if not self._running:
            raise LoggingFailed("the message log is not running")
        if self._head is None:
            raise LoggingFailed("the message log store is unavailable")
        if self._timestamper is not None:
            self._timestamper.check()

    async def append(self, record: LogRecord, bodies: Mapping[str, Spool]) -> LogRecord:
        """Seal and durably store ``record`` with ``bodies``; return it sealed; raise ``LoggingFailed``.

        The caller may release ``bodies`` once this returns or raises — also when it is cancelled: a record the
        writer has already started on is waited for, one it has not is dropped.
        """
        if not self._running:
            raise LoggingFailed("the message log is not running")
        record = self._validated(record)
        future: asyncio.Future[LogRecord] = asyncio.get_running_loop().create_future()
        pending = _Pending(record, bodies, future)
        self._queue.put_nowait(pending)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if not pending.taken:
                pending.dropped = True
                raise
            # The writer is reading this caller's bodies: wait until it is done before the caller frees them.
            while not future.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([future])
            if not future.cancelled():
                future.exception()  # retrieved: the caller is gone, its outcome is in the diagnostic log
            raise

    def _validated(self, record: LogRecord) -> LogRecord:
        # Checked in the caller's context, so one malformed record fails its own exchange, not a whole group.
        if record.seq or record.hash or record.prev_hash:
            raise LoggingFailed("the record is already sealed")
        if not record.server:
            record = dataclasses.replace(record, server=self._server_id)
        elif record.server != self._server_id:
            raise LoggingFailed("the record names another security server")
        try:
            normalise_time(record.at)
        except ValueError as exc:
            raise LoggingFailed("the record's time is not ISO 8601") from exc
        return record

    # Writer task ------------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            if self._head is None:
                # The store could not even give its head: retry now and then, so check() recovers on its own.
                try:
                    item = await asyncio.wait_for(self._queue.get(), HEAD_RETRY_S)
                except TimeoutError:
                    await self._reload_head()
                    continue
            else:
                item = await self._queue.get()
            if item is _STOP:
                break
            group: list[_Pending] = [item] if isinstance(item, _Pending) else []
            while len(group) < self._max_group and not self._queue.empty():
                more = self._queue.get_nowait()
                if more is _STOP:
                    stopping = True
                    break
                if isinstance(more, _Pending):
                    group.append(more)
            try:
                await self._commit(group)
            except Exception as exc:  # pragma: no cover - _commit handles its errors; this keeps the task alive
                log.exception("message log writer error", error=type(exc).__name__)
                self._fail(group, "the message log failed")

    async def _commit(self, group: list[_Pending]) -> None:
        live = [p for p in group if not p.dropped]
        for pending in live:
            pending.taken = True
        if not live:
            return
        if self._head is None:
            await self._reload_head()
            if self._head is None:
                self._fail(live, "the message log store is unavailable")
                return
        seq, prev = self._head
        try:
            rows = await asyncio.to_thread(self._write, live, seq, prev)
        except Exception as exc:
            # (1) Nothing of the group is stored (the store rolled back): each caller learns it failed.
            log.error("message log append failed", records=len(live), error=type(exc).__name__)
            self._fail(live, exc.message if isinstance(exc, LoggingFailed) else "the message log could not write")
            # (2) Continue from what is really durable, not from what we believed.
            await self._reload_head()
            return
        last = rows[-1]
        self._head = (last.record.seq, last.hash)
        self.transactions += 1
        self.appended += len(rows)
        for pending, row in zip(live, rows, strict=True):
            if not pending.future.done():
                pending.future.set_result(row.record)
        if self._timestamper is not None:
            self._timestamper.records_appended(rows[0].record.seq, last.record.seq, min(r.at for r in rows))

    def _write(self, group: list[_Pending], seq: int, prev: bytes) -> list[SealedRow]:
        """Worker thread: seal the group continuing ``(seq, prev)``, and store it in one transaction."""
        rows: list[SealedRow] = []
        bodies: dict[str, Spool] = {}
        for pending in group:
            seq += 1
            row = seal_row(pending.record, seq, prev)
            rows.append(row)
            prev = row.hash
            bodies.update(pending.bodies)
        # Fail closed if the fast path ever disagrees with the reference sealing (see the module docstring).
        first = group[0].record.sealed(rows[0].record.seq, bytes.fromhex(rows[0].record.prev_hash))
        if first != rows[0].record or sealed_row(first).json != rows[0].json:
            log.critical("message log fast sealing differs from LogRecord.sealed")
            raise LoggingFailed("the message log could not seal the record")
        if isinstance(self._store, RowStore):
            self._store.append_rows(rows, bodies)
        else:
            self._store.append([r.record for r in rows], bodies)
        return rows

    async def _reload_head(self) -> None:
        try:
            self._head = await asyncio.to_thread(self._store.head)
        except Exception as exc:
            log.error("message log head unavailable", error=type(exc).__name__)
            self._head = None

    @staticmethod
    def _fail(group: list[_Pending], message: str) -> None:
        for pending in group:
            if not pending.future.done():
                # A fresh exception per caller: one instance raised in many tasks would share its traceback.
                pending.future.set_exception(LoggingFailed(message))
