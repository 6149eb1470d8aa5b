"""The message log writer (security_server.messagelog.writer): group commit, sealing, failure handling, check()."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import gc
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

import security_server.messagelog.writer as writer
from bridge.errors import LoggingFailed, TimestampingFailed
from bridge.messagelog import Direction, LogPart, LogRecord, Side, canonical, verify_chain
from bridge.spool import Spool
from security_server.messagelog import Batch, LogQuery
from security_server.messagelog.store import SealedRow, SqlLogStore
from security_server.messagelog.timestamper import Timestamper
from security_server.messagelog.writer import REFERENCE_CHECK_EVERY, MessageLog, finish_row, prepare_record, seal_row
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
def sql_store(db_url: str, tmp_path: Path) -> Iterator[SqlLogStore]:
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


async def test_the_writer_commits_group_after_group_while_the_event_loop_is_busy(sql_store: SqlLogStore) -> None:
    """The writer thread does not wait for the event loop between groups: only resolving callers needs the loop.

    Three records queued with ``max_group=1`` are three transactions; they all commit while the loop is held by
    a synchronous wait (a CPU-busy event loop, as under load).
    """
    counting = CountingStore(sql_store)
    async with MessageLog(counting, server_id=SERVER, max_group=1) as log:
        tasks = [asyncio.create_task(log.append(make_record(i), {})) for i in range(3)]
        await asyncio.sleep(0)  # each task queues its record (a yield, not a wait for time)
        pause = threading.Event()  # never set: wait(0.01) just blocks the loop's thread for a moment
        for _ in range(1000):  # the loop stays blocked here; ends as soon as all three are stored (≤ 10 s)
            if len(counting.appends) == 3 or pause.wait(0.01):
                break
        assert counting.appends == [1, 1, 1]
        assert [t.done() for t in tasks] == [False] * 3  # callers learn it once the loop runs again
        assert sorted(r.seq for r in await asyncio.gather(*tasks)) == [1, 2, 3]


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


def test_finish_row_fills_in_any_place_in_the_chain() -> None:
    """One prepared record sealed at different places gives LogRecord.sealed's result at each."""
    record = make_record(5, persons=("AZ9",))
    prepared = prepare_record(record)
    for seq, prev in ((1, bytes(32)), (10**12, bytes(range(32))), (7, b"\xff" * 32)):
        row = finish_row(prepared, seq, prev)
        assert row.record == record.sealed(seq, prev)
        assert row.json == canonical(row.record.to_json()).decode()


async def test_a_fast_sealing_that_differs_from_the_reference_switches_to_the_reference(
    sql_store: SqlLogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the fast encoding ever differs from LogRecord.sealed, records are sealed the reference way from then on."""
    async with MessageLog(sql_store, server_id=SERVER) as log:
        # A fast path whose stored JSON is not what the hash covers (as a substitution gone wrong would give).
        real = writer.finish_row

        def broken(prepared: writer.PreparedRecord, seq: int, prev_hash: bytes) -> SealedRow:
            row = real(prepared, seq, prev_hash)
            return dataclasses.replace(row, json=row.json.replace('"AZ1"', '"AZ2"'))

        monkeypatch.setattr(writer, "finish_row", broken)
        sealed = [await log.append(make_record(i, persons=("AZ1",)), {}) for i in range(3)]
    stored = sql_store.records(1, 3)
    assert stored == sealed
    assert [r.persons for r in stored] == [("AZ1",)] * 3
    verify_chain(stored)
    for record in stored:
        assert record == make_record(record.seq - 1, persons=("AZ1",)).sealed(
            record.seq, bytes.fromhex(record.prev_hash)
        )


async def test_a_record_that_cannot_be_encoded_fails_alone(sql_store: SqlLogStore) -> None:
    """A lone surrogate (undecodable header bytes) fails its own append in the caller, not the writer's group."""
    async with MessageLog(sql_store, server_id=SERVER) as log:
        good = [asyncio.create_task(log.append(make_record(i), {})) for i in range(3)]
        with pytest.raises(LoggingFailed, match="could not encode"):
            await log.append(make_record(9, issue="bad\udcff"), {})
        assert sorted(r.seq for r in await asyncio.gather(*good)) == [1, 2, 3]
    verify_chain(sql_store.records(1, 3))


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


def run_within(seconds: float, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main()`` on an event loop of its own in a daemon thread; fail if it is not done within ``seconds``.

    For the cancellation tests: a cancelled caller waiting for the writer refuses further cancels (its bodies may be
    in use), so a regression that never wakes it would hang the test run — here it fails the test instead.
    """
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # handed to the test's thread below
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"not done within {seconds} s: a caller is waiting for ever")
    if outcome[0] is not None:
        raise outcome[0]


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


def test_cancelled_callers_never_leave_half_written_bodies(sql_store: SqlLogStore) -> None:
    """Cancelled callers never leave a half-written body or a gap in the chain.

    One cancelled while the writer stores its record returns only once it is stored (its bodies were in use); one
    cancelled while still queued is dropped unsealed.
    """
    store = BlockingStore(sql_store)
    part, bodies = part_with_body(b"<Envelope/>")

    async def main() -> None:
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

    run_within(30, main)
    verify_chain(sql_store.records(1, 2))


async def test_a_caller_resumes_in_the_loop_iteration_after_its_outcome_arrives(
    sql_store: SqlLogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One trip round the event loop from the writer's outcome to the caller, not two (no asyncio.shield between).

    Under load each trip waits for everything else ready on the loop, and an exchange waits for four records.
    """
    loop = asyncio.get_running_loop()
    ticks = 0
    ticking = True

    def tick() -> None:  # runs once per loop iteration while ticking
        nonlocal ticks
        ticks += 1
        if ticking:
            loop.call_soon(tick)

    async with MessageLog(sql_store, server_id=SERVER) as log:
        resolved_at: list[int] = []
        real = log._resolve

        def spy(live: list[writer._Pending], rows: list[SealedRow]) -> None:
            resolved_at.append(ticks)
            real(live, rows)

        monkeypatch.setattr(log, "_resolve", spy)
        loop.call_soon(tick)
        try:
            for i in range(5):
                await log.append(make_record(i), {})
                assert ticks - resolved_at[-1] == 1
        finally:
            ticking = False


def test_a_caller_cancelled_while_its_group_fails_waits_for_the_failure(sql_store: SqlLogStore) -> None:
    """A caller cancelled while the writer stores its record returns once the outcome is in, also a failure.

    The cancelled caller leaves no unretrieved exception behind, and a second cancel does not cut the wait short.
    """
    store = BlockingStore(sql_store)
    store.fail = True
    part, bodies = part_with_body(b"<Envelope/>")
    unhandled: list[dict[str, object]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: unhandled.append(context))
        async with MessageLog(store, server_id=SERVER) as log:
            in_progress = asyncio.create_task(log.append(make_record(1, parts=(part,)), bodies))
            assert await asyncio.to_thread(store.entered.wait, 10) is True
            in_progress.cancel()
            await asyncio.sleep(0)
            in_progress.cancel()  # again, while it waits for the writer
            await asyncio.sleep(0)
            assert not in_progress.done()  # the writer still reads its bodies
            store.release.set()
            with pytest.raises(asyncio.CancelledError):
                await in_progress
            assert sql_store.head()[0] == 0  # the failed group stored nothing
            store.fail = False
            assert (await log.append(make_record(2), {})).seq == 1
        gc.collect()  # an exception set on a future nobody retrieved is reported when the future is collected
        await asyncio.sleep(0)

    run_within(30, main)
    assert unhandled == []


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_cancel_in_the_same_iteration_as_the_outcome_returns_at_once(sql_store: SqlLogStore, when: str) -> None:
    """A caller cancelled in the loop iteration that brings its outcome (before or after it is set) ends at once.

    Its record is stored: the cancel came after the commit, and the outcome is already in when the caller sees it.
    """

    async def main() -> None:
        async with MessageLog(sql_store, server_id=SERVER) as log:
            caller: asyncio.Task[LogRecord] | None = None
            real = log._resolve

            def cancelling(live: list[writer._Pending], rows: list[SealedRow]) -> None:
                assert caller is not None
                if when == "before":
                    caller.cancel()
                real(live, rows)
                if when == "after":
                    caller.cancel()

            log._resolve = cancelling  # type: ignore[method-assign]
            caller = asyncio.create_task(log.append(make_record(1), {}))
            with pytest.raises(asyncio.CancelledError):
                await caller
            assert sql_store.head()[0] == 1

    run_within(30, main)


class WriterCrash(BaseException):
    """Not an Exception: nothing in the writer thread catches it, so the thread ends with a group in hand."""


def test_a_writer_that_crashes_answers_every_caller_in_hand_or_queued(
    sql_store: SqlLogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash of the writer thread fails the queued callers and releases a cancelled one whose record it held."""
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the crash is the test's, not a failure

    class CrashingStore(BlockingStore):
        def append(self, records: Sequence[LogRecord], bodies: Mapping[str, Spool]) -> None:
            self.entered.set()
            self.release.wait(10)
            raise WriterCrash

    store = CrashingStore(sql_store)
    part, bodies = part_with_body(b"<Envelope/>")

    async def main() -> None:
        log = MessageLog(store, server_id=SERVER)
        await log.start()
        in_progress = asyncio.create_task(log.append(make_record(1, parts=(part,)), bodies))
        assert await asyncio.to_thread(store.entered.wait, 10) is True
        queued = asyncio.create_task(log.append(make_record(2), {}))
        await asyncio.sleep(0)
        in_progress.cancel()
        await asyncio.sleep(0)
        assert not in_progress.done()  # the writer holds its record
        store.release.set()
        with pytest.raises(asyncio.CancelledError):
            await in_progress
        with pytest.raises(LoggingFailed, match="writer has stopped"):
            await queued
        assert log._broken
        with pytest.raises(LoggingFailed, match="writer has stopped"):
            log.check()
        await log.stop()

    run_within(30, main)
    assert sql_store.head()[0] == 0


async def test_the_reference_check_runs_on_the_first_record_and_one_in_sixteen(
    sql_store: SqlLogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check_prepared sees record 0 and then every REFERENCE_CHECK_EVERY-th, queued or not."""
    checked: list[str] = []
    real = writer.check_prepared

    def spy(prepared: writer.PreparedRecord) -> None:
        checked.append(prepared.record.message_id)
        real(prepared)

    monkeypatch.setattr(writer, "check_prepared", spy)
    store = BlockingStore(sql_store)
    async with MessageLog(store, server_id=SERVER) as log:
        first = asyncio.create_task(log.append(make_record(0), {}))
        assert await asyncio.to_thread(store.entered.wait, 10) is True  # the writer holds record 0; queue empty
        queued = [asyncio.create_task(log.append(make_record(i), {})) for i in range(1, 2 * REFERENCE_CHECK_EVERY + 1)]
        await asyncio.sleep(0)  # every task prepares and queues its record (a yield, not a wait for time)
        store.release.set()
        await asyncio.gather(first, *queued)
        for i in range(2 * REFERENCE_CHECK_EVERY + 1, 3 * REFERENCE_CHECK_EVERY + 1):  # one at a time: nothing queued
            await log.append(make_record(i), {})
    expected = [0, REFERENCE_CHECK_EVERY, 2 * REFERENCE_CHECK_EVERY, 3 * REFERENCE_CHECK_EVERY]
    assert checked == [make_record(i).message_id for i in expected]
    verify_chain(sql_store.records(1, 3 * REFERENCE_CHECK_EVERY + 1))


async def test_the_timestamper_hears_of_appends_on_the_event_loop_thread(
    sql_store: SqlLogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """records_appended touches asyncio state: it must run on the loop's thread, not the writer's."""
    timestamper = Timestamper(sql_store, lambda: [])
    threads: list[int] = []
    real = timestamper.records_appended

    def spy(first: int, last: int, oldest_at: str) -> None:
        threads.append(threading.get_ident())
        real(first, last, oldest_at)

    monkeypatch.setattr(timestamper, "records_appended", spy)
    async with MessageLog(sql_store, server_id=SERVER, timestamper=timestamper) as log:
        await asyncio.gather(*(log.append(make_record(i), {}) for i in range(5)))
    assert threads and set(threads) == {threading.get_ident()}


async def test_stop_answers_every_queued_caller_and_ends_the_thread(sql_store: SqlLogStore) -> None:
    """Records queued or in flight when stop() is called are stored and answered; the thread is gone after."""
    store = BlockingStore(sql_store)
    log = MessageLog(store, server_id=SERVER)
    await log.start()
    thread = log._thread
    assert thread is not None
    tasks = [asyncio.create_task(log.append(make_record(0), {}))]
    assert await asyncio.to_thread(store.entered.wait, 10) is True
    tasks += [asyncio.create_task(log.append(make_record(i), {})) for i in range(1, 4)]
    await asyncio.sleep(0)
    stopping = asyncio.create_task(log.stop())
    await asyncio.sleep(0)
    with pytest.raises(LoggingFailed, match="not running"):
        await log.append(make_record(9), {})
    store.release.set()
    await stopping
    assert sorted(r.seq for r in await asyncio.gather(*tasks)) == [1, 2, 3, 4]
    assert not thread.is_alive()
    # And it starts again, continuing the chain.
    async with log:
        assert (await log.append(make_record(5), {})).seq == 5
    verify_chain(sql_store.records(1, 5))


def test_a_log_belongs_to_the_loop_that_started_it(db_url: str, tmp_path: Path) -> None:
    """Appends from another loop are refused; start() there ends the old writer (its loop ended without stop)."""
    store = SqlLogStore(db_url, tmp_path / "log")
    log = MessageLog(store, server_id=SERVER)

    async def first_loop() -> None:
        await log.start()
        assert (await log.append(make_record(1), {})).seq == 1

    async def second_loop() -> int:
        with pytest.raises(LoggingFailed, match="another event loop"):
            await log.append(make_record(2), {})
        await log.start()
        log.check()
        seq = (await log.append(make_record(2), {})).seq
        await log.stop()
        return seq

    try:
        asyncio.run(first_loop())  # ends without stop(): the writer thread outlives its loop
        assert asyncio.run(second_loop()) == 2
        verify_chain(store.records(1, 2))
    finally:
        store.close()


def test_seal_row_matches_the_reference_sealing_for_enums_and_nested_values() -> None:
    """Str enums, nested dicts and tuples (what proxies may pass) seal exactly as LogRecord.sealed does."""
    record = make_record(
        5,
        side=Side.PROVIDER,
        direction=Direction.RESPONSE,
        decision={"allowed": True, "nested": {"b": 1, "a": (1, 2)}},
        timings_ms={"sign": 0.25, "verify": 1e16},
    )
    row = seal_row(record, 9, bytes(32))
    reference = record.sealed(9, bytes(32))
    assert (row.record, row.json, row.hash.hex()) == (
        reference,
        canonical(reference.to_json()).decode(),
        reference.hash,
    )
