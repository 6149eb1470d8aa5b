"""The message log's hot path: :class:`MessageLog`, the async facade the proxies call (group commit).

``await log.append(record, bodies)`` returns the sealed record once it is durable, or raises ``LoggingFailed`` —
and the exchange then fails, because nothing is delivered that is not logged (DESIGN decision 4).

Group commit
    Callers put their record on a queue and wait on a future.  One writer task takes what is queued (up to
    ``max_group``), seals the records in queue order continuing the chain, and hands them to the store in one
    transaction in a worker thread; then it resolves every future of the group.  While a transaction commits, new
    records queue up and form the next group, so N concurrent exchanges cost about one fsync, not N.

Pipelining
    Sealing is CPU work under the GIL; a commit mostly waits for SQLite or PostgreSQL outside it.  So while group N
    is being stored, group N+1 is sealed continuing N's last hash, in another worker thread, and is handed to the
    store as soon as N is durable — never before: one transaction at a time, in chain order.  With no group in
    flight the writer takes only half of what is queued, so that a fixed set of busy callers (all of them waiting
    on one group, nothing else arriving) still splits into two groups that alternate.

Failure
    When the store fails, every record of the group gets ``LoggingFailed`` (the store rolled back: none of them is
    stored), and so does every record of the group sealed after it, whose chain now starts from a record that does
    not exist; the in-memory head is reloaded from the store before the next group, so the chain continues from
    what is really durable.  If even the head cannot be read, :meth:`MessageLog.check` refuses traffic until a
    retry succeeds.

Sealing fast path
    Sealing is :meth:`LogRecord.sealed` plus ``canonical(record.to_json())`` for the stored JSON; both walk the record
    with ``dataclasses.asdict`` (a deep copy), about 140 µs per record together.  :func:`seal_row` builds the record's
    JSON object once, shallowly, encodes it once and derives both the hash and the stored JSON from that text, and
    copies the record's instance dict for the sealed record instead of running ``dataclasses.replace`` (about 30 µs
    in all, half of it the JSON encoder).  Because the
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


#: Types whose values ``dataclasses.asdict`` keeps as they are and the encoder writes as they are.
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
#: Sealing by copying the instance dict is ``dataclasses.replace`` only while ``LogRecord.__init__`` does nothing
#: more than set the fields (no ``__post_init__``, no slots); otherwise seal_row uses ``replace`` itself.
_COPY_DICT: Final = not hasattr(LogRecord, "__post_init__") and hasattr(LogRecord, "__dict__")


def _json_value(value: Any) -> Any:
    # What dataclasses.asdict + LogRecord.body() make of a field, without the deep copy.
    if type(value) in _SCALARS:
        return value
    if isinstance(value, tuple):
        return [{n: getattr(v, n) for n in _PART_FIELDS} if isinstance(v, LogPart) else v for v in value]
    if type(value) is dict:
        return value  # encoded as it is; a copy would encode the same
    if isinstance(value, Mapping):
        return dict(value)
    return value


def seal_row(record: LogRecord, seq: int, prev_hash: bytes, *, at: str | None = None) -> SealedRow:
    """``record.sealed(seq, prev_hash)`` and its stored JSON, from one shallow JSON object encoded once.

    The object is encoded with a placeholder for ``hash``: a random string per process that no record can contain
    (an unescaped quote cannot occur inside a JSON string, and the placeholder is unguessable), so removing the
    ``"hash":…`` member gives exactly the canonical body the hash covers, and substituting the hash gives
    ``canonical(record.to_json())`` — one encoding instead of two (each ~13 µs for a 3 KB record).  ``at``, when
    given, is ``normalise_time(record.at)`` already computed by the caller.
    """
    fields = record.__dict__ if _COPY_DICT else {n: getattr(record, n) for n in _RECORD_FIELDS}
    body = {name: value if type(value := fields[name]) in _SCALARS else _json_value(value) for name in _RECORD_FIELDS}
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
    hash_bytes = digest.digest()
    hash_hex = hash_bytes.hex()
    if _COPY_DICT:
        # dataclasses.replace runs __init__ over every field (6 µs); a copy of the instance dict is the same record.
        sealed = object.__new__(type(record))
        sealed.__dict__.update(fields)
        sealed.__dict__.update(seq=seq, prev_hash=prev_hex, hash=hash_hex)
    else:  # pragma: no cover - LogRecord has neither __post_init__ nor slots
        sealed = dataclasses.replace(record, seq=seq, prev_hash=prev_hex, hash=hash_hex)
    return SealedRow(
        record=sealed,
        json=text.replace(_PLACEHOLDER, hash_hex, 1),
        hash=hash_bytes,
        at=at if at is not None else normalise_time(record.at),
        persons=tuple(dict.fromkeys(p for p in (record.user_id, *record.persons) if p)),
    )


class _Pending:
    """One caller's record on its way through the queue."""

    __slots__ = ("at", "bodies", "dropped", "future", "record", "taken")

    def __init__(
        self, record: LogRecord, at: str, bodies: Mapping[str, Spool], future: asyncio.Future[LogRecord]
    ) -> None:
        self.record = record
        self.at = at  # normalise_time(record.at), computed once when the caller's record was checked
        self.bodies = bodies
        self.future = future
        self.taken = False  # the writer has started on it: its bodies are being read
        self.dropped = False  # the caller was cancelled before that: skip it


_STOP: Final = object()


class _Flight:
    """A sealed group being stored: its callers, its rows, and the task storing them."""

    __slots__ = ("landed", "live", "rows", "task")

    def __init__(self, live: list[_Pending], rows: list[SealedRow], task: asyncio.Task[None]) -> None:
        self.live = live
        self.rows = rows
        self.task = task
        self.landed: bool | None = None  # set once by MessageLog._land: stored or not

    @property
    def tail(self) -> tuple[int, bytes]:
        """Where the next group's chain continues: this group's last seq and hash."""
        return self.rows[-1].record.seq, self.rows[-1].hash


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
        record, at = self._validated(record)
        future: asyncio.Future[LogRecord] = asyncio.get_running_loop().create_future()
        pending = _Pending(record, at, bodies, future)
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

    def _validated(self, record: LogRecord) -> tuple[LogRecord, str]:
        # Checked in the caller's context, so one malformed record fails its own exchange, not a whole group.
        if record.seq or record.hash or record.prev_hash:
            raise LoggingFailed("the record is already sealed")
        if not record.server:
            record = dataclasses.replace(record, server=self._server_id)
        elif record.server != self._server_id:
            raise LoggingFailed("the record names another security server")
        try:
            at = normalise_time(record.at)
        except ValueError as exc:
            raise LoggingFailed("the record's time is not ISO 8601") from exc
        return record, at

    # Writer task ------------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        flight: _Flight | None = None
        stopping = False
        while True:
            if stopping:
                if flight is not None:
                    await self._land(flight)
                break
            item = await self._next_item(flight)
            if item is None:
                # The group in flight was stored first (or the head retry timed out): finish it, look again.
                if flight is not None and flight.task.done():
                    await self._land(flight)
                    flight = None
                continue
            if item is _STOP:
                stopping = True
                continue
            # (1) The group: everything queued, or, with no group in flight, half of it, so that one half is
            #     sealed while the other commits (with a fixed set of busy callers nothing else would arrive).
            limit = self._max_group if flight is not None else max(1, (self._queue.qsize() + 1) // 2)
            group: list[_Pending] = [item] if isinstance(item, _Pending) else []
            while len(group) < min(limit, self._max_group) and not self._queue.empty():
                more = self._queue.get_nowait()
                if more is _STOP:
                    stopping = True
                    break
                if isinstance(more, _Pending):
                    group.append(more)
            try:
                flight = await self._seal_and_send(group, flight)
            except Exception as exc:  # pragma: no cover - the steps handle their errors; this keeps the task alive
                log.exception("message log writer error", error=type(exc).__name__)
                self._fail(group, "the message log failed")
                if flight is not None:
                    await self._land(flight)
                    flight = None
                await self._reload_head()

    async def _next_item(self, flight: _Flight | None) -> _Pending | object | None:
        """The next queued item; ``None`` if ``flight`` was stored first or the head retry is due."""
        if flight is None:
            if self._head is None:
                # The store could not even give its head: retry now and then, so check() recovers on its own.
                try:
                    return await asyncio.wait_for(self._queue.get(), HEAD_RETRY_S)
                except TimeoutError:
                    await self._reload_head()
                    return None
            return await self._queue.get()
        if not self._queue.empty():
            return self._queue.get_nowait()
        # Whichever comes first: a record to seal while the flight commits, or the flight's end (its callers then
        # resume and queue their next records).  A cancelled Queue.get leaves its item in the queue.
        getter = asyncio.ensure_future(self._queue.get())
        try:
            await asyncio.wait((getter, flight.task), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        return None

    async def _seal_and_send(self, group: list[_Pending], flight: _Flight | None) -> _Flight | None:
        """Seal ``group`` after the group in flight (or the head), then store it once that one is durable.

        Returns the group now in flight, or ``None`` if this one failed.
        """
        live = [p for p in group if not p.dropped]
        for pending in live:
            pending.taken = True
        if not live:
            return flight
        if flight is None and self._head is None:
            await self._reload_head()
        base = flight.tail if flight is not None else self._head
        if base is None:
            self._fail(live, "the message log store is unavailable")
            return None
        # (2) Seal in a worker thread, while the group in flight commits in another.
        try:
            rows = await asyncio.to_thread(self._seal, live, *base)
        except Exception as exc:
            log.error("message log sealing failed", records=len(live), error=type(exc).__name__)
            self._fail(live, exc.message if isinstance(exc, LoggingFailed) else "the message log could not write")
            return flight
        # (3) This group continues the one in flight: if that one fails, this chain has no durable start, and
        #     it fails too (fail closed: nothing is stored that the stored chain does not lead to).
        if flight is not None and not await self._land(flight):
            self._fail(live, "the message log could not write")
            return None
        bodies: dict[str, Spool] = {}
        for pending in live:
            bodies.update(pending.bodies)
        task = asyncio.create_task(asyncio.to_thread(self._store_rows, rows, bodies))
        return _Flight(live, rows, task)

    async def _land(self, flight: _Flight) -> bool:
        """Wait for ``flight`` to be stored; resolve its callers; on failure reload the head.  True if stored.

        Idempotent: a flight is landed once, later calls return the same answer.
        """
        if flight.landed is not None:
            return flight.landed
        flight.landed = False
        try:
            await flight.task
        except Exception as exc:
            # (4) Nothing of the group is stored (the store rolled back): each caller learns it failed.
            log.error("message log append failed", records=len(flight.live), error=type(exc).__name__)
            self._fail(
                flight.live, exc.message if isinstance(exc, LoggingFailed) else "the message log could not write"
            )
            # (5) Continue from what is really durable, not from what we believed.
            await self._reload_head()
            return False
        rows = flight.rows
        last = rows[-1]
        self._head = (last.record.seq, last.hash)
        self.transactions += 1
        self.appended += len(rows)
        for pending, row in zip(flight.live, rows, strict=True):
            if not pending.future.done():
                pending.future.set_result(row.record)
        if self._timestamper is not None:
            self._timestamper.records_appended(rows[0].record.seq, last.record.seq, min(r.at for r in rows))
        flight.landed = True
        return True

    def _seal(self, group: list[_Pending], seq: int, prev: bytes) -> list[SealedRow]:
        """Worker thread: seal the group continuing ``(seq, prev)``."""
        rows: list[SealedRow] = []
        for pending in group:
            seq += 1
            row = seal_row(pending.record, seq, prev, at=pending.at)
            rows.append(row)
            prev = row.hash
        # Fail closed if the fast path ever disagrees with the reference sealing (see the module docstring).
        first = group[0].record.sealed(rows[0].record.seq, bytes.fromhex(rows[0].record.prev_hash))
        if first != rows[0].record or sealed_row(first) != rows[0]:
            log.critical("message log fast sealing differs from LogRecord.sealed")
            raise LoggingFailed("the message log could not seal the record")
        return rows

    def _store_rows(self, rows: list[SealedRow], bodies: Mapping[str, Spool]) -> None:
        """Worker thread: store sealed rows in one transaction."""
        if isinstance(self._store, RowStore):
            self._store.append_rows(rows, bodies)
        else:
            self._store.append([r.record for r in rows], bodies)

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
