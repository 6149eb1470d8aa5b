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
    Sealing is :meth:`LogRecord.sealed` plus ``canonical(record.to_json())`` for the stored JSON: two encodings of
    the record.  Instead the caller, in :meth:`MessageLog.append`, encodes its record once with placeholders for
    ``seq``, ``prev_hash`` and ``hash`` (:func:`prepare_record`), and the writer thread only fills them in and
    hashes (:func:`finish_row`).  This keeps the writer — the serial part — short, and keeps its Python work,
    which holds the GIL, from stalling the event loop: profiles under load showed the loop waiting hundreds of µs
    for the GIL around each C call while the writer thread encoded records.  Both paths encode
    :meth:`LogRecord.body`; what only the fast path does is the substitution.  Because the hash is evidence, one
    record in :data:`REFERENCE_CHECK_EVERY` (and the first) is also sealed the reference way and compared
    (:func:`check_prepared`); if the two ever differ, the log seals every record from then on the reference way,
    instead of storing records auditors could not verify.
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
from typing import TYPE_CHECKING, Any, Final, Protocol, cast, runtime_checkable

import structlog

from bridge.errors import LoggingFailed
from bridge.messagelog import LogRecord
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


def prepare_record(record: LogRecord, *, at: str | None = None) -> PreparedRecord:
    """Encode an unsealed record once, in the caller's context (the costly part of sealing).

    ``at``, when given, is ``normalise_time(record.at)`` already computed by the caller.

    Raises ``LoggingFailed`` for a record that cannot be encoded (a value JSON or UTF-8 cannot carry, such as a
    lone surrogate from undecodable header bytes): found here, it fails only its own exchange, where in the writer
    thread it would fail every record of its group.
    """
    try:
        body = record.body()
        body["seq"] = _SEQ_PLACEHOLDER
        body["prev_hash"] = _PREV_PLACEHOLDER
        body["hash"] = _PLACEHOLDER
        text = _ENCODER.encode(body)
        text.encode()  # finish_row hashes the UTF-8 form: a value without one must not reach the writer
        if at is None:
            at = normalise_time(record.at)
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise LoggingFailed("the message log could not encode the record") from exc
    # "hash" sorts neither first ("at") nor last ("user_id"): its member is always followed by a comma.
    if (
        text.count(_PLACEHOLDER) != 1
        or text.count(_HASH_MEMBER) != 1
        or text.count(f'"{_SEQ_PLACEHOLDER}"') != 1
        or text.count(_PREV_PLACEHOLDER) != 1
    ):  # pragma: no cover - would need a record containing one of the secrets
        raise LoggingFailed("the message log could not seal the record")
    persons = tuple(dict.fromkeys(p for p in (record.user_id, *record.persons) if p))
    return PreparedRecord(record, text, at, persons)


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
        record=prepared.record.with_seal(seq, prev_hex, hash_hex),
        json=text.replace(_HASH_MEMBER, f'"hash":"{hash_hex}",', 1),
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
    try:
        same = finish_row(prepared, 1, prev) == reference_row(prepared.record, 1, prev)
    except (TypeError, ValueError) as exc:
        raise LoggingFailed("the message log could not encode the record") from exc
    if not same:
        log.critical("message log fast sealing differs from LogRecord.sealed; sealing the reference way from now on")
        raise FastSealingDiffers("the message log could not seal the record")


class FastSealingDiffers(LoggingFailed):
    """The fast sealing path disagreed with :meth:`LogRecord.sealed` (a bug; the log then seals the slow way)."""


def reference_prepared(prepared: PreparedRecord, seq: int, prev_hash: bytes) -> SealedRow:
    """:func:`finish_row`'s reference twin: seals ``prepared.record`` with :func:`reference_row`."""
    return reference_row(prepared.record, seq, prev_hash)


def reference_row(record: LogRecord, seq: int, prev_hash: bytes) -> SealedRow:
    """The :class:`SealedRow` by the reference way (:meth:`LogRecord.sealed`, ``canonical(to_json())``): slow."""
    return sealed_row(record.sealed(seq, prev_hash))


class _Pending:
    """One caller's record on its way through the queue."""

    __slots__ = ("bodies", "dropped", "future", "prepared", "released", "settled", "taken")

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
        # Event loop only: the writer has posted this record's outcome, so it no longer reads the bodies; and what a
        # caller cancelled after ``taken`` waits on until then (its ``future`` is cancelled with it).
        self.settled = False
        self.released: asyncio.Future[None] | None = None

    def settle(self) -> None:
        """Event loop: the writer is done with this record (its outcome is posted); wake a cancelled caller."""
        self.settled = True
        if self.released is not None and not self.released.done():
            self.released.set_result(None)


_STOP: Final = object()


class MessageLog:
    """:class:`~security_server.messagelog.MessageLogWriter` over a :class:`LogStore`, with group commit.

    ``server_id`` is the encoded security server identifier every record names (a record with ``server`` empty
    gets it; one naming another server is refused).  ``timestamper``, when given, is told about appended records
    (its size trigger) and consulted by :meth:`check` (its grace period).  A started log belongs to the event loop
    that started it: appends from another loop are refused.
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
        # Checked once: isinstance against a runtime-checkable Protocol inspects the class each time (~6 us).
        self._row_store = isinstance(store, RowStore)
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._take_lock = threading.Lock()
        self._lifecycle: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        # Set by the writer thread if it ever ends other than by stop(): check() and append() then refuse.
        self._broken = False
        # Set once the fast sealing disagreed with the reference: from then on the writer seals the reference way.
        self._reference_only = False
        # Written by the writer thread, read by check() on the event loop (one attribute store: atomic).
        self._head: tuple[int, bytes] | None = None
        #: Store transactions committed and records appended since start (for metrics and the benchmark).
        self.transactions = 0
        self.appended = 0
        self._prepared = 0  # records prepared since start: picks those checked against the reference sealing

    # Lifecycle --------------------------------------------------------------------------------------------------

    def _lifecycle_lock(self) -> asyncio.Lock:
        # One lock per event loop (an asyncio.Lock may not be shared between loops): serialises start and stop.
        loop = asyncio.get_running_loop()
        if self._lifecycle is None or self._lifecycle[0] is not loop:
            self._lifecycle = (loop, asyncio.Lock())
        return self._lifecycle[1]

    async def start(self) -> None:
        """Read the chain's head (and the timestamper's state) and start the writer thread."""
        async with self._lifecycle_lock():
            if self._thread is not None:
                if self._loop is asyncio.get_running_loop():
                    return
                # Started on a loop that ended without stop(): end that writer before starting a new one.
                await self._end_thread()
            self._head = await asyncio.to_thread(self._store.head)
            if self._timestamper is not None:
                await self._timestamper.load()
            self._loop = asyncio.get_running_loop()
            self._queue = queue.SimpleQueue()
            self._broken = False
            self._prepared = 0
            self._running = True
            self._thread = threading.Thread(
                target=self._run, args=(self._queue,), name="korpu-messagelog-writer", daemon=True
            )
            self._thread.start()

    async def stop(self) -> None:
        """Refuse new records, finish every record already queued, and end the writer thread."""
        async with self._lifecycle_lock():
            if self._thread is not None:
                await self._end_thread()

    async def _end_thread(self) -> None:
        self._running = False
        thread = self._thread
        assert thread is not None
        self._queue.put(_STOP)
        # The thread posts each group's outcome with call_soon_threadsafe before it ends; the join's own result
        # reaches this coroutine the same way, after them, so every caller has its answer once this returns.
        # Shielded: a cancelled stop() still leaves the thread ended before anything can start another.
        await asyncio.shield(asyncio.to_thread(thread.join))
        self._thread = None

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
        if self._broken or self._thread is None or not self._thread.is_alive():
            raise LoggingFailed("the message log writer has stopped")
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
        if self._broken:
            raise LoggingFailed("the message log writer has stopped")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            raise LoggingFailed("the message log was started on another event loop")
        record, at = self._validated(record)
        prepared = prepare_record(record, at=at)
        # The reference check (~180 µs): one record in REFERENCE_CHECK_EVERY, and every record once the fast path
        # has disagreed.
        if self._reference_only or self._prepared % REFERENCE_CHECK_EVERY == 0:
            try:
                check_prepared(prepared)
            except FastSealingDiffers:
                # Safe and available: this and every later record are sealed the reference way by the writer.
                self._reference_only = True
        self._prepared += 1
        future: asyncio.Future[LogRecord] = loop.create_future()
        pending = _Pending(prepared, bodies, future)
        self._queue.put(pending)
        try:
            # Awaited directly, not through asyncio.shield: each future a result passes through costs the caller one
            # more trip round a busy event loop (the writer posts the outcome, the loop sets the future, the caller
            # resumes) — with 32 exchanges in flight a trip took ~4 ms, and every exchange waits for four records.
            # Cancelling the caller therefore cancels ``future``; the writer's outcome for it is then dropped.
            return await future
        except asyncio.CancelledError:
            with self._take_lock:
                if not pending.taken:
                    pending.dropped = True
            if pending.dropped or pending.settled:
                raise
            # The writer is reading this caller's bodies: wait until its outcome is posted before the caller frees
            # them (the record may yet be stored; its outcome is in the diagnostic log).
            released = pending.released = loop.create_future()
            while not released.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([released])
            raise

    def _validated(self, record: LogRecord) -> tuple[LogRecord, str]:
        """``record`` with its server filled in, and its normalised time; ``LoggingFailed`` if it cannot be logged."""
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

    # Writer thread ----------------------------------------------------------------------------------------------

    def _run(self, inbox: queue.SimpleQueue[_Pending | object]) -> None:
        group: list[_Pending] = []
        try:
            stopping = False
            while not stopping:
                group = []
                if self._head is None:
                    # The store could not even give its head: retry now and then, so check() recovers by itself.
                    try:
                        item = inbox.get(timeout=HEAD_RETRY_S)
                    except queue.Empty:
                        self._reload_head()
                        continue
                else:
                    item = inbox.get()
                if item is _STOP:
                    return
                group = [item] if isinstance(item, _Pending) else []
                while len(group) < self._max_group:
                    try:
                        more = inbox.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        stopping = True
                        break
                    if isinstance(more, _Pending):
                        group.append(more)
                try:
                    self._commit(group)
                except Exception as exc:  # pragma: no cover - _commit handles store errors; this is for bugs
                    log.exception("message log writer error", error=type(exc).__name__)
                    self._reload_head()
                    live = [p for p in group if p.taken]
                    if live:
                        self._post(self._fail, live, "the message log failed")
            group = []
        finally:
            # After _STOP nothing more is queued (append refuses once _running is False): anything else is a crash.
            if group or self._running or not inbox.empty():
                # Only an unexpected error ends the thread with a group in hand: nobody may wait forever.
                self._broken = True
                log.critical("message log writer ended unexpectedly")
                # Every record in hand: also one whose caller was cancelled waits for its outcome (see append).
                rest = list(group)
                while True:
                    try:
                        item = inbox.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(item, _Pending):
                        rest.append(item)
                if rest:
                    self._post(self._fail, rest, "the message log writer has stopped")

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

    @staticmethod
    def _post(callback: Any, group: list[_Pending], *args: Any) -> None:
        """Run ``callback(group, *args)`` on the event loop the group's callers wait on (from the writer thread)."""
        try:
            group[0].future.get_loop().call_soon_threadsafe(callback, group, *args)
        except RuntimeError:  # pragma: no cover - that loop is closed: its callers ended with it
            log.warning("message log outcome not delivered: the event loop is closed", records=len(group))

    def _resolve(self, live: list[_Pending], rows: list[SealedRow]) -> None:
        """Event loop: hand each caller its sealed record and tell the timestamper."""
        for pending, row in zip(live, rows, strict=True):
            pending.settle()
            if not pending.future.done():
                pending.future.set_result(row.record)
        if self._timestamper is not None:
            self._timestamper.records_appended(rows[0].record.seq, rows[-1].record.seq, min(r.at for r in rows))

    def _write(self, group: list[_Pending], seq: int, prev: bytes) -> list[SealedRow]:
        """Finish sealing the group continuing ``(seq, prev)``, and store it in one transaction."""
        seal = reference_prepared if self._reference_only else finish_row
        rows: list[SealedRow] = []
        bodies: dict[str, Spool] = {}
        for pending in group:
            seq += 1
            row = seal(pending.prepared, seq, prev)
            rows.append(row)
            prev = row.hash
            bodies.update(pending.bodies)
        if self._row_store:
            cast(RowStore, self._store).append_rows(rows, bodies)
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
            pending.settle()
            if not pending.future.done():
                # A fresh exception per caller: one instance raised in many tasks would share its traceback.
                pending.future.set_exception(LoggingFailed(message))
