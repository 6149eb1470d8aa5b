"""The message log writer (security_server.messagelog.writer): group commit, sealing, failure handling, check()."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import LoggingFailed, TimestampingFailed
from bridge.messagelog import GENESIS_HASH, Direction, LogPart, LogRecord, Side, canonical, verify_chain
from bridge.spool import Spool
from security_server.messagelog import Batch, LogQuery
from security_server.messagelog.store import SqlLogStore
from security_server.messagelog.timestamper import Timestamper
from security_server.messagelog.writer import MessageLog, seal_row
from tests.security_server.test_logstore import SERVER, make_record, part_with_body


class CountingStore:
    """A LogStore that counts ``append`` calls and can be told to fail them (no ``append_rows``: slow path)."""

    def __init__(self, inner: SqlLogStore) -> None:
        self.inner = inner
        self.appends: list[int] = []
        self.fail = False

    def head(self) -> tuple[int, bytes]:
        return self.inner.head()

    def append(self, records: Sequence[LogRecord], bodies: Mapping[str, Spool]) -> None:
        if self.fail:
            raise LoggingFailed("the message log database write failed and was rolled back")
        self.inner.append(records, bodies)
        self.appends.append(len(records))

    def records(self, first_seq: int, last_seq: int) -> list[LogRecord]:
        return self.inner.records(first_seq, last_seq)

    def find(self, query: LogQuery) -> list[LogRecord]:
        return self.inner.find(query)

    def body(self, sha512_hex: str, seq: int) -> bytes | None:
        return self.inner.body(sha512_hex, seq)

    def unstamped(self, limit: int) -> list[tuple[int, bytes, str]]:
        return self.inner.unstamped(limit)

    def add_batch(
        self, first_seq: int, last_seq: int, merkle_root: bytes, token: bytes, tsa_url: str, stamped_at: str
    ) -> Batch:
        return self.inner.add_batch(first_seq, last_seq, merkle_root, token, tsa_url, stamped_at)

    def batch_of(self, seq: int) -> Batch | None:
        return self.inner.batch_of(seq)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
async def sql_store(db_url: str, tmp_path: Path) -> AsyncIterator[SqlLogStore]:
    store = SqlLogStore(db_url, tmp_path / "log")
    try:
        yield store
    finally:
        store.close()


async def test_concurrent_appends_form_one_gapless_chain_in_few_transactions(sql_store: SqlLogStore) -> None:
    """200 concurrent appends get seqs 1..200, the stored chain verifies, and they share store transactions."""
    counting = CountingStore(sql_store)
    async with MessageLog(counting, server_id=SERVER) as log:
        sealed = await asyncio.gather(*(log.append(make_record(i), {}) for i in range(200)))
    assert sorted(r.seq for r in sealed) == list(range(1, 201))
    stored = sql_store.records(1, 200)
    assert stored == sorted(sealed, key=lambda r: r.seq)
    assert verify_chain(stored) == bytes.fromhex(stored[-1].hash)
    assert sum(counting.appends) == 200
    assert len(counting.appends) < 200
    assert log.transactions == len(counting.appends)


async def test_fast_path_stores_the_same_chain(sql_store: SqlLogStore) -> None:
    """Through SqlLogStore's pre-serialised path the records, bodies and chain are what LogRecord.sealed gives."""
    part, bodies = part_with_body("<Envelope>ü</Envelope>".encode())
    async with MessageLog(sql_store, server_id=SERVER, max_group=7) as log:
        sealed = await asyncio.gather(
            *(log.append(make_record(i, parts=(part,), persons=("AZ1", "AZ2")), bodies) for i in range(50))
        )
    assert log.transactions >= 50 // 7
    stored = sql_store.records(1, 50)
    verify_chain(stored)
    assert stored == sorted(sealed, key=lambda r: r.seq)
    assert [sql_store.body(part.sha512, seq) for seq in (1, 50)] == ["<Envelope>ü</Envelope>".encode()] * 2
    assert [r.seq for r in sql_store.find(LogQuery(person="AZ2", limit=100))] == list(range(1, 51))


def test_seal_row_matches_the_reference_sealing() -> None:
    """seal_row gives LogRecord.sealed's record and hash, and canonical(to_json()) as the stored JSON."""
    record = make_record(
        3,
        user_id="AZ1234567",
        issue="İş №42",
        parts=(LogPart("body", "text/xml", 10, "ab" * 64), LogPart("att", "application/pdf", 5, "cd" * 64, False)),
        ocsp=("b2NzcA==",),
        persons=("AZ1", "AZ2"),
        decision={"allowed": False, "reasons": ["no consent", {"rule": 7}]},
        timings_ms={"b": 2.5, "a": 1.0},
    )
    prev = bytes(range(32))
    row = seal_row(record, 42, prev)
    reference = record.sealed(42, prev)
    assert row.record == reference
    assert row.json == canonical(reference.to_json()).decode()
    assert row.hash.hex() == reference.hash
    assert row.persons == ("AZ1234567", "AZ1", "AZ2")


async def test_a_store_failure_fails_the_group_and_the_log_recovers(sql_store: SqlLogStore) -> None:
    """While the store fails every waiting append gets LoggingFailed; afterwards appends continue from seq 1."""
    counting = CountingStore(sql_store)
    async with MessageLog(counting, server_id=SERVER) as log:
        counting.fail = True
        results = await asyncio.gather(*(log.append(make_record(i), {}) for i in range(20)), return_exceptions=True)
        assert [type(r) for r in results] == [LoggingFailed] * 20
        assert sql_store.head()[0] == 0
        log.check()  # the head could be re-read: the log takes records again
        counting.fail = False
        after = await log.append(make_record(99), {})
    assert after.seq == 1
    verify_chain(sql_store.records(1, 5))


async def test_a_malformed_record_fails_only_its_own_append(sql_store: SqlLogStore) -> None:
    """A record naming another server, an unparsable time or an already sealed record is refused before queuing."""
    async with MessageLog(sql_store, server_id=SERVER) as log:
        for bad in (
            make_record(1, server="SERVER:AZ/GOV/1400057421/other"),
            make_record(1, at="yesterday"),
            make_record(1).sealed(1, bytes(32)),
        ):
            with pytest.raises(LoggingFailed):
                await log.append(bad, {})
        filled = await log.append(make_record(2, server=""), {})
    assert (filled.seq, filled.server) == (1, SERVER)


async def test_check_and_append_refuse_when_stopped(sql_store: SqlLogStore) -> None:
    """Before start and after stop, check() and append() raise LoggingFailed."""
    log = MessageLog(sql_store, server_id=SERVER)
    with pytest.raises(LoggingFailed):
        log.check()
    await log.start()
    log.check()
    await log.stop()
    with pytest.raises(LoggingFailed):
        log.check()
    with pytest.raises(LoggingFailed):
        await log.append(make_record(1), {})


async def test_check_raises_once_the_timestamping_grace_is_exceeded(sql_store: SqlLogStore) -> None:
    """With no TSA, records wait; check() passes within the grace period and raises TimestampingFailed after it."""
    now = [dt.datetime(2024, 5, 1, 10, 0, 30, tzinfo=dt.UTC)]
    timestamper = Timestamper(sql_store, lambda: [], grace_s=3600, clock=lambda: now[0])
    async with MessageLog(sql_store, server_id=SERVER, timestamper=timestamper) as log:
        await log.append(make_record(1), {})  # at 10:00:01
        assert await timestamper.stamp_once() == []
        log.check()
        now[0] = dt.datetime(2024, 5, 1, 11, 0, 1, tzinfo=dt.UTC)
        log.check()  # exactly the grace period: still fine
        now[0] = dt.datetime(2024, 5, 1, 11, 0, 2, tzinfo=dt.UTC)
        with pytest.raises(TimestampingFailed):
            log.check()
        # Appends themselves still work (a response to a request already delivered must be logged).
        assert (await log.append(make_record(2), {})).seq == 2


class BlockingStore(CountingStore):
    """A store whose ``append`` waits (in its worker thread) until the test releases it."""

    def __init__(self, inner: SqlLogStore) -> None:
        super().__init__(inner)
        self.entered = threading.Event()
        self.release = threading.Event()

    def append(self, records: Sequence[LogRecord], bodies: Mapping[str, Spool]) -> None:
        self.entered.set()
        if not self.release.wait(10):
            raise LoggingFailed("test store was never released")
        super().append(records, bodies)


async def test_cancelled_callers_never_leave_half_written_bodies(sql_store: SqlLogStore) -> None:
    """Cancelled callers never leave a half-written body or a gap in the chain.

    One cancelled while the writer stores its record returns only once it is stored (its bodies were in use); one
    cancelled while still queued is dropped unsealed.
    """
    store = BlockingStore(sql_store)
    part, bodies = part_with_body(b"<Envelope/>")
    async with MessageLog(store, server_id=SERVER) as log:
        in_progress = asyncio.create_task(log.append(make_record(1, parts=(part,)), bodies))
        assert await asyncio.to_thread(store.entered.wait, 10) is True
        queued = asyncio.create_task(log.append(make_record(2), {}))
        await asyncio.sleep(0)  # let it reach the queue (a yield, not a wait for time)
        in_progress.cancel()
        queued.cancel()
        await asyncio.sleep(0)
        assert (in_progress.done(), queued.done()) == (False, True)
        store.release.set()
        with pytest.raises(asyncio.CancelledError):
            await in_progress
        assert sql_store.head()[0] == 1
        assert sql_store.body(part.sha512, 1) == b"<Envelope/>"
        assert (await log.append(make_record(3), {})).seq == 2
    verify_chain(sql_store.records(1, 2))


class SealWatch:
    """Wraps ``MessageLog._seal`` of ``log``: ``sealed`` is set once a group of ``size`` records has been sealed."""

    def __init__(self, log: MessageLog, size: int) -> None:
        self.sealed = threading.Event()
        seal = log._seal

        def watched(group: list[Any], seq: int, prev: bytes) -> list[Any]:
            rows = seal(group, seq, prev)
            if len(group) == size:
                self.sealed.set()
            return rows

        log._seal = watched  # type: ignore[method-assign]


async def test_the_next_group_is_sealed_while_one_is_stored_and_stored_after_it(sql_store: SqlLogStore) -> None:
    """While a group is being stored the next one is sealed after it; it is stored once the first is durable."""
    store = BlockingStore(sql_store)
    async with MessageLog(store, server_id=SERVER) as log:
        watch = SealWatch(log, 4)
        first = asyncio.create_task(log.append(make_record(1), {}))
        assert await asyncio.to_thread(store.entered.wait, 10) is True
        rest = [asyncio.create_task(log.append(make_record(i), {})) for i in range(2, 6)]
        assert await asyncio.to_thread(watch.sealed.wait, 10) is True
        assert store.appends == []  # sealed, but not stored before the group in flight is
        store.release.set()
        sealed = [await first, *[await t for t in rest]]
    assert [r.seq for r in sealed] == [1, 2, 3, 4, 5]
    assert store.appends == [1, 4]
    assert verify_chain(sql_store.records(1, 5)) == bytes.fromhex(sealed[-1].hash)


async def test_a_group_sealed_after_a_failed_one_fails_too_and_the_log_recovers(sql_store: SqlLogStore) -> None:
    """If the group in flight fails, the group sealed after it fails as well (its chain starts from nothing stored).

    Nothing of either is stored, and the next append continues from the durable head.
    """
    store = BlockingStore(sql_store)
    async with MessageLog(store, server_id=SERVER) as log:
        watch = SealWatch(log, 4)
        first = asyncio.create_task(log.append(make_record(1), {}))
        assert await asyncio.to_thread(store.entered.wait, 10) is True
        rest = [asyncio.create_task(log.append(make_record(i), {})) for i in range(2, 6)]
        assert await asyncio.to_thread(watch.sealed.wait, 10) is True
        store.fail = True
        store.release.set()
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        assert [type(r) for r in results] == [LoggingFailed] * 5
        assert (store.appends, sql_store.head()) == ([], (0, GENESIS_HASH))
        store.fail = False
        after = await log.append(make_record(6), {})
    assert after.seq == 1
    assert verify_chain(sql_store.records(1, 1)) == bytes.fromhex(after.hash)


async def test_without_a_group_in_flight_the_writer_seals_half_the_queue(sql_store: SqlLogStore) -> None:
    """A burst of queued records is split in two groups, so one is sealed while the other is stored."""
    counting = CountingStore(sql_store)
    log = MessageLog(counting, server_id=SERVER)
    await log.start()
    try:
        sealed = await asyncio.gather(*(log.append(make_record(i), {}) for i in range(1, 101)))
    finally:
        await log.stop()
    assert sorted(r.seq for r in sealed) == list(range(1, 101))
    assert counting.appends == [50, 50]


def test_seal_row_matches_the_reference_sealing_for_enums_and_nested_values() -> None:
    """Str enums, nested dicts and tuples (what proxies may pass) seal exactly as LogRecord.sealed does."""
    record = make_record(
        5,
        side=Side.PROVIDER,
        direction=Direction.RESPONSE,
        decision={"allowed": True, "nested": {"b": 1, "a": (1, 2)}},
        timings_ms={"sign": 0.25, "verify": 1e16},
    )
    row = seal_row(record, 9, bytes(32), at="2024-05-01T10:00:05.000000Z")
    reference = record.sealed(9, bytes(32))
    assert (row.record, row.json, row.hash.hex()) == (
        reference,
        canonical(reference.to_json()).decode(),
        reference.hash,
    )
    assert row.at == "2024-05-01T10:00:05.000000Z"
