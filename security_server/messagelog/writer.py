"""The message log's hot path: :class:`MessageLog`, the async facade the proxies call (group commit).

``await log.append(record, bodies)`` returns the sealed record once it is durable, or raises ``LoggingFailed`` —
and the exchange then fails, because nothing is delivered that is not logged (DESIGN decision 4).

Group commit
    Callers put their record on a thread-safe queue and wait on a future.  One writer *thread* takes everything
    queued (up to ``max_group``), seals the records in queue order continuing the chain's head, stores them in one
    transaction, and posts one callback to the event loop that resolves every future of the group; then it takes
    the next group at once.  While a transaction commits, new records queue up and form the next group, so N
    concurrent exchanges cost about one fsync, not N.
    A dedicated thread rather than a task handing each group to ``asyncio.to_thread``: the writer is the server's
    bottleneck under load, and with a task every group waited twice for a busy event loop (to be handed to a
    worker, and for its result to be seen) before the next could start — measured at ~35 % of each group's cycle
    with 32 concurrent exchanges.  Now the loop only resolves futures; the thread never waits for it.

Failure
    When the store fails, every record of the group gets ``LoggingFailed`` (the store rolled back: none of them is
    stored) and the in-memory head is reloaded from the store before the next group — and before the callers
    hear of the failure — so the chain continues from what is really durable.  If even the head cannot be read,
    :meth:`MessageLog.check` refuses traffic until a retry succeeds.

Sealing fast path
    Sealing is :meth:`LogRecord.sealed` plus ``canonical(record.to_json())`` for the stored JSON; both walk the record
    with ``dataclasses.asdict`` (a deep copy), about 140 µs per record together.  Instead the caller, in
    :meth:`MessageLog.append`, encodes its record once with placeholders for ``seq``, ``prev_hash`` and ``hash``
    (:func:`prepare_record`, ~60 µs for a record of 8 KB), and the writer thread only fills them in and hashes
    (:func:`finish_row`, a few µs).  This keeps the writer — the serial part — short, and keeps its Python work,
    which holds the GIL, from stalling the event loop: profiles under load showed the loop waiting hundreds of µs
    for the GIL around each C call while the writer thread encoded records.  Because the hash is evidence, the
    first record and one in :data:`REFERENCE_CHECK_EVERY` after it are also sealed the reference way and compared
    (:func:`check_prepared`): if the two ever differ (a field added to ``LogRecord`` that the fast path does not
    convert like ``asdict``), that append fails closed instead of storing a record auditors could not verify.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import queue
import secrets
import threading
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

__all__ = [
    "DEFAULT_MAX_GROUP",
    "REFERENCE_CHECK_EVERY",
    "MessageLog",
    "PreparedRecord",
    "RowStore",
    "check_prepared",
    "finish_row",
    "prepare_record",
    "seal_row",
]

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
_SEQ_PLACEHOLDER: Final = "korpu-seq-" + secrets.token_hex(16)
_PREV_PLACEHOLDER: Final = "korpu-prev-" + secrets.token_hex(16)
_HASH_MEMBER: Final = f'"hash":"{_PLACEHOLDER}",'
#: The caller checks one record in this many (and the first) against the reference sealing (see the docstring).
REFERENCE_CHECK_EVERY = 16


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


@dataclasses.dataclass(frozen=True, slots=True)
class PreparedRecord:
    """A record encoded up to its place in the chain: what :func:`finish_row` turns into a sealed row.

    ``text`` is the record's canonical JSON with placeholders for ``seq``, ``prev_hash`` and ``hash``: random
    strings per process that no record can contain (an unescaped quote cannot occur inside a JSON string, and the
    placeholders are unguessable), so substituting them is exact.  Keys sort by name whatever the values, so the
    text is the canonical form once they are filled in.
    """

    record: LogRecord
    text: str
    at: str
    persons: tuple[str, ...]


def prepare_record(record: LogRecord) -> PreparedRecord:
    """Encode an unsealed record once, in the caller's context (the costly part of sealing: ~60 µs for 8 KB)."""
    body = {name: _json_value(getattr(record, name)) for name in _RECORD_FIELDS}
    body["seq"] = _SEQ_PLACEHOLDER
    body["prev_hash"] = _PREV_PLACEHOLDER
    body["hash"] = _PLACEHOLDER
    text = _ENCODER.encode(body)
    # "hash" sorts neither first ("at") nor last ("user_id"): its member is always followed by a comma.
    if (
        text.count(_HASH_MEMBER) != 1 or text.count(f'"{_SEQ_PLACEHOLDER}"') != 1 or text.count(_PREV_PLACEHOLDER) != 1
    ):  # pragma: no cover - would need a record containing one of the secrets
        raise LoggingFailed("the message log could not seal the record")
    persons = tuple(dict.fromkeys(p for p in (record.user_id, *record.persons) if p))
    return PreparedRecord(record, text, normalise_time(record.at), persons)


def finish_row(prepared: PreparedRecord, seq: int, prev_hash: bytes) -> SealedRow:
    """``record.sealed(seq, prev_hash)`` and its stored JSON: two substitutions and one SHA-256 (the writer's part).

    Removing the ``"hash":…`` member gives exactly the canonical body the hash covers, and substituting the hash
    gives ``canonical(record.to_json())``.
    """
    prev_hex = prev_hash.hex()
    text = prepared.text.replace(f'"{_SEQ_PLACEHOLDER}"', str(seq), 1).replace(_PREV_PLACEHOLDER, prev_hex, 1)
    digest = hashlib.sha256(prev_hash)
    digest.update(text.replace(_HASH_MEMBER, "", 1).encode())
    hash_bytes = digest.digest()
    hash_hex = hash_bytes.hex()
    return SealedRow(
        record=dataclasses.replace(prepared.record, seq=seq, prev_hash=prev_hex, hash=hash_hex),
        json=text.replace(_PLACEHOLDER, hash_hex, 1),
        hash=hash_bytes,
        at=prepared.at,
        persons=prepared.persons,
    )


def seal_row(record: LogRecord, seq: int, prev_hash: bytes) -> SealedRow:
    """``record.sealed(seq, prev_hash)`` with its :class:`SealedRow`, by the fast path (prepare, then finish)."""
    return finish_row(prepare_record(record), seq, prev_hash)


def check_prepared(prepared: PreparedRecord) -> None:
    """Raise ``LoggingFailed`` unless the fast path seals ``prepared`` exactly as :meth:`LogRecord.sealed` does.

    The substitutions do not depend on the values, so one (seq, prev_hash) pair checks the encoding for all.
    """
    prev = bytes(32)
    row = finish_row(prepared, 1, prev)
    reference = prepared.record.sealed(1, prev)
    if reference != row.record or sealed_row(reference).json != row.json:
        log.critical("message log fast sealing differs from LogRecord.sealed")
        raise LoggingFailed("the message log could not seal the record")


class _Pending:
    """One caller's record on its way through the queue."""

    __slots__ = ("bodies", "dropped", "future", "prepared", "taken")

    def __init__(
        self, prepared: PreparedRecord, bodies: Mapping[str, Spool], future: asyncio.Future[LogRecord]
    ) -> None:
        self.prepared = prepared
        self.bodies = bodies
        self.future = future
        # Both flags change only under MessageLog._take_lock: the writer thread takes a record, or its cancelled
        # caller drops it — never both.
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
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._take_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        # Written by the writer thread, read by check() on the event loop (one attribute store: atomic).
        self._head: tuple[int, bytes] | None = None
        #: Store transactions committed and records appended since start (for metrics and the benchmark).
        self.transactions = 0
        self.appended = 0
        self._prepared = 0  # records prepared since start: picks those checked against the reference sealing

    # Lifecycle --------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the chain's head (and the timestamper's state) and start the writer thread."""
        if self._thread is not None:
            return
        self._head = await asyncio.to_thread(self._store.head)
        if self._timestamper is not None:
            await self._timestamper.load()
        self._loop = asyncio.get_running_loop()
        self._queue = queue.SimpleQueue()
        self._running = True
        self._thread = threading.Thread(target=self._run, name="korpu-messagelog-writer", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Refuse new records, finish every record already queued, and end the writer thread."""
        if self._thread is None:
            return
        self._running = False
        self._queue.put(_STOP)
        thread, self._thread = self._thread, None
        # The thread posts each group's outcome with call_soon_threadsafe before it ends; the join's own result
        # reaches this coroutine the same way, after them, so every caller has its answer once this returns.
        await asyncio.to_thread(thread.join)

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
        prepared = prepare_record(self._validated(record))
        if self._prepared % REFERENCE_CHECK_EVERY == 0:
            check_prepared(prepared)
        self._prepared += 1
        future: asyncio.Future[LogRecord] = asyncio.get_running_loop().create_future()
        pending = _Pending(prepared, bodies, future)
        self._queue.put(pending)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            with self._take_lock:
                if not pending.taken:
                    pending.dropped = True
            if pending.dropped:
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

    # Writer thread ----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            if self._head is None:
                # The store could not even give its head: retry now and then, so check() recovers on its own.
                try:
                    item = self._queue.get(timeout=HEAD_RETRY_S)
                except queue.Empty:
                    self._reload_head()
                    continue
            else:
                item = self._queue.get()
            if item is _STOP:
                break
            group: list[_Pending] = [item] if isinstance(item, _Pending) else []
            while len(group) < self._max_group:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stopping = True
                    break
                if isinstance(more, _Pending):
                    group.append(more)
            try:
                self._commit(group)
            except Exception as exc:  # pragma: no cover - _commit handles its errors; this keeps the thread alive
                log.exception("message log writer error", error=type(exc).__name__)
                self._post(self._fail, group, "the message log failed")

    def _commit(self, group: list[_Pending]) -> None:
        with self._take_lock:
            live = [p for p in group if not p.dropped]
            for pending in live:
                pending.taken = True
        if not live:
            return
        if self._head is None:
            self._reload_head()
            if self._head is None:
                self._post(self._fail, live, "the message log store is unavailable")
                return
        seq, prev = self._head
        try:
            rows = self._write(live, seq, prev)
        except Exception as exc:
            # (1) Nothing of the group is stored (the store rolled back): each caller learns it failed ...
            log.error("message log append failed", records=len(live), error=type(exc).__name__)
            # (2) ... once the head is what is really durable, not what we believed.
            self._reload_head()
            self._post(
                self._fail, live, exc.message if isinstance(exc, LoggingFailed) else "the message log could not write"
            )
            return
        last = rows[-1]
        self._head = (last.record.seq, last.hash)
        self.transactions += 1
        self.appended += len(rows)
        self._post(self._resolve, live, rows)

    def _post(self, callback: Any, *args: Any) -> None:
        """Run ``callback(*args)`` on the event loop (from the writer thread)."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # pragma: no cover - the loop closed without stop(): nobody is waiting any more
            log.warning("message log outcome not delivered: the event loop is closed")

    def _resolve(self, live: list[_Pending], rows: list[SealedRow]) -> None:
        """Event loop: hand each caller its sealed record and tell the timestamper."""
        for pending, row in zip(live, rows, strict=True):
            if not pending.future.done():
                pending.future.set_result(row.record)
        if self._timestamper is not None:
            self._timestamper.records_appended(rows[0].record.seq, rows[-1].record.seq, min(r.at for r in rows))

    def _write(self, group: list[_Pending], seq: int, prev: bytes) -> list[SealedRow]:
        """Finish sealing the group continuing ``(seq, prev)``, and store it in one transaction."""
        rows: list[SealedRow] = []
        bodies: dict[str, Spool] = {}
        for pending in group:
            seq += 1
            row = finish_row(pending.prepared, seq, prev)
            rows.append(row)
            prev = row.hash
            bodies.update(pending.bodies)
        if isinstance(self._store, RowStore):
            self._store.append_rows(rows, bodies)
        else:
            self._store.append([r.record for r in rows], bodies)
        return rows

    def _reload_head(self) -> None:
        try:
            self._head = self._store.head()
        except Exception as exc:
            log.error("message log head unavailable", error=type(exc).__name__)
            self._head = None

    @staticmethod
    def _fail(group: list[_Pending], message: str) -> None:
        """Event loop: each caller of ``group`` gets ``LoggingFailed(message)``."""
        for pending in group:
            if not pending.future.done():
                # A fresh exception per caller: one instance raised in many tasks would share its traceback.
                pending.future.set_exception(LoggingFailed(message))
