"""The message log store (security_server.messagelog.store) on SQLite and on live PostgreSQL (``db_url``)."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from bridge.errors import InvalidState, LoggingFailed
from bridge.messagelog import GENESIS_HASH, LogPart, LogRecord, verify_chain
from bridge.spool import Spool
from security_server.messagelog import LogQuery
from security_server.messagelog import store as store_module
from security_server.messagelog.store import INLINE_BODY_MAX, MIGRATIONS, SqlLogStore, _Checkpointer, normalise_time

SERVER = "SERVER:AZ/GOV/1400057421/ss1"
BANK = "SUBSYSTEM:AZ/COM/9900001111/loans"
INSURER = "SUBSYSTEM:AZ/COM/9900002222/claims"
POPULATION = "SERVICE:AZ/GOV/1400057421/population/getPerson"
TAX = "SERVICE:AZ/GOV/1400057421/tax/getIncome"


def make_record(i: int, **changes: object) -> LogRecord:
    """An unsealed record ``i`` at 10:00:i (UTC) on 1 May 2024, with a signature and a decision."""
    record = LogRecord(
        at=f"2024-05-01T10:00:{i % 60:02d}.000000Z",
        server=SERVER,
        side="consumer",
        direction="request",
        request_id=f"req-{i}",
        message_id=f"msg-{i}",
        protocol="soap-4.0",
        client=BANK,
        service=POPULATION,
        signature="c2lnbmF0dXJl",
        decision={"allowed": True, "rule": "access-right 7"},
        timings_ms={"sign": 1.5},
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def seal_all(records: Sequence[LogRecord], head: tuple[int, bytes] = (0, GENESIS_HASH)) -> list[LogRecord]:
    """``records`` sealed in order, continuing ``head``."""
    seq, prev = head
    out = []
    for record in records:
        seq += 1
        sealed = record.sealed(seq, prev)
        prev = bytes.fromhex(sealed.hash)
        out.append(sealed)
    return out


def part_with_body(data: bytes, name: str = "body") -> tuple[LogPart, dict[str, Spool]]:
    """A stored part for ``data`` and the bodies mapping that carries it."""
    spool = Spool.from_bytes(data)
    digest = spool.digest.hex()
    return LogPart(name, "text/xml", len(data), digest), {digest: spool}


@pytest.fixture
def store(db_url: str, tmp_path: Path) -> Iterator[SqlLogStore]:
    s = SqlLogStore(db_url, tmp_path / "log")
    try:
        yield s
    finally:
        s.close()


def test_append_then_read_back(store: SqlLogStore) -> None:
    """Appended records read back identical, in order; the head is the last one; the chain verifies."""
    assert store.head() == (0, GENESIS_HASH)
    records = seal_all([make_record(i) for i in range(1, 4)])
    store.append(records, {})
    assert store.records(1, 3) == records
    assert store.records(2, 2) == records[1:2]
    assert store.head() == (3, bytes.fromhex(records[-1].hash))
    assert verify_chain(store.records(1, 3)) == bytes.fromhex(records[-1].hash)


def test_reopening_keeps_records_and_applies_migrations_once(db_url: str, tmp_path: Path) -> None:
    """A second store on the same database sees the records; the schema version is recorded once."""
    first = SqlLogStore(db_url, tmp_path / "log")
    records = seal_all([make_record(1)])
    first.append(records, {})
    first.close()
    second = SqlLogStore(db_url, tmp_path / "log")
    try:
        assert second.records(1, 1) == records
        assert second._query("SELECT version FROM schema_version ORDER BY version") == [
            (1,),
            (2,),
            (3,),
            (4,),
            (5,),
            (6,),
            (7,),
        ]
    finally:
        second.close()


@pytest.fixture
def populated(store: SqlLogStore) -> list[LogRecord]:
    """Six records differing in every field a query filters on."""
    records = seal_all(
        [
            make_record(1, user_id="AZ1111111"),
            make_record(2, client=INSURER, persons=("AZ1111111",)),
            make_record(3, service=TAX, user_id="AZ2222222", persons=("AZ3333333",)),
            make_record(4, request_id="req-1", direction="response", message_id="msg-4"),
            make_record(5, client=INSURER, service=TAX, persons=("AZ1111111", "AZ1111111")),
            make_record(6),
        ]
    )
    store.append(records, {})
    return records


def seqs(records: Sequence[LogRecord]) -> list[int]:
    return [r.seq for r in records]


def test_find_by_each_filter(store: SqlLogStore, populated: list[LogRecord]) -> None:
    """Each LogQuery field narrows the result to exactly the matching records, in seq order."""
    assert seqs(store.find(LogQuery(message_id="msg-4"))) == [4]
    assert seqs(store.find(LogQuery(request_id="req-1"))) == [1, 4]
    assert seqs(store.find(LogQuery(client=INSURER))) == [2, 5]
    assert seqs(store.find(LogQuery(service=TAX))) == [3, 5]
    assert seqs(store.find(LogQuery(client=INSURER, service=TAX))) == [5]
    assert seqs(store.find(LogQuery())) == [1, 2, 3, 4, 5, 6]
    assert store.find(LogQuery(message_id="no such message")) == []
    assert store.find(LogQuery(message_id="msg-4")) == [populated[3]]


def test_find_by_person_matches_user_id_and_declared_persons(store: SqlLogStore, populated: list[LogRecord]) -> None:
    """A person query finds records naming the person as userId or as a declared person, each once."""
    assert seqs(store.find(LogQuery(person="AZ1111111"))) == [1, 2, 5]
    assert seqs(store.find(LogQuery(person="AZ2222222"))) == [3]
    assert seqs(store.find(LogQuery(person="AZ3333333"))) == [3]
    assert seqs(store.find(LogQuery(person="AZ1111111", client=INSURER))) == [2, 5]
    assert store.find(LogQuery(person="AZ9999999")) == []


def test_find_by_time_range(store: SqlLogStore, populated: list[LogRecord]) -> None:
    """``since`` is inclusive, ``until`` exclusive, and any ISO 8601 spelling of a UTC instant works."""
    assert seqs(store.find(LogQuery(since="2024-05-01T10:00:02Z", until="2024-05-01T10:00:05Z"))) == [2, 3, 4]
    assert seqs(store.find(LogQuery(since="2024-05-01T14:00:05+04:00"))) == [5, 6]  # 10:00:05 UTC
    assert seqs(store.find(LogQuery(until="2024-05-01T10:00:01.000001"))) == [1]  # naive: UTC
    assert seqs(store.find(LogQuery(person="AZ1111111", since="2024-05-01T10:00:02Z"))) == [2, 5]
    with pytest.raises(LoggingFailed):
        store.find(LogQuery(since="yesterday"))


def test_find_pages_by_seq(store: SqlLogStore, populated: list[LogRecord]) -> None:
    """``limit`` caps a page and ``after_seq`` continues after the last seq seen, also for person queries."""
    assert seqs(store.find(LogQuery(limit=4))) == [1, 2, 3, 4]
    assert seqs(store.find(LogQuery(after_seq=4, limit=4))) == [5, 6]
    assert seqs(store.find(LogQuery(after_seq=6, limit=4))) == []
    assert seqs(store.find(LogQuery(person="AZ1111111", limit=2))) == [1, 2]
    assert seqs(store.find(LogQuery(person="AZ1111111", after_seq=2, limit=2))) == [5]


def test_person_query_walks_the_person_index_in_order(
    store: SqlLogStore, populated: list[LogRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The person query's plan: a range on the (person, seq) key, a record lookup by seq, no sort, no scan.

    This is what keeps a page of 100 under 100 ms on a 10 M-record log (``benchmarks/personquery.py``): the LIMIT
    stops the index walk after 100 entries, whatever the person's total.
    """
    if store.dialect != "sqlite":
        pytest.skip("PostgreSQL plans a six-row table differently; benchmarks/personquery.py checks it at scale")
    issued: list[tuple[str, tuple[object, ...]]] = []
    real_query = store._query

    def capturing(sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        issued.append((sql, tuple(params)))
        return real_query(sql, params)

    monkeypatch.setattr(store, "_query", capturing)
    assert seqs(store.find(LogQuery(person="AZ1111111", after_seq=1, limit=100))) == [2, 5]
    ((sql, params),) = issued
    plan = [row[-1] for row in real_query("EXPLAIN QUERY PLAN " + sql, params)]
    assert plan == ["SEARCH p USING PRIMARY KEY (person=? AND seq>?)", "SEARCH r USING INTEGER PRIMARY KEY (rowid=?)"]


def test_bodies_round_trip_and_deduplicate(store: SqlLogStore, tmp_path: Path) -> None:
    """Stored parts read back byte for byte; the same body logged twice is one file; unknown digests give None."""
    envelope = b"<Envelope>" + os.urandom(INLINE_BODY_MAX) + b"</Envelope>"  # large: a file
    part, bodies = part_with_body(envelope)
    attachment_part, attachment = part_with_body(b"%PDF-1.7 attachment", "attachment")
    records = seal_all(
        [make_record(1, parts=(part, attachment_part)), make_record(2, parts=(part,))],
    )
    store.append(records[:1], {**bodies, **attachment})
    store.append(records[1:], bodies)  # the same envelope again
    assert (store.body(part.sha512, 1), store.body(part.sha512, 2)) == (envelope, envelope)
    assert store.body(attachment_part.sha512, 1) == b"%PDF-1.7 attachment"
    assert store.body(attachment_part.sha512, 2) is None  # record 2 does not name it
    assert store.body("0" * 128, 1) is None
    assert store.body("not a digest", 1) is None
    expected = tmp_path / "log" / "bodies" / part.sha512[:2] / part.sha512[2:4] / part.sha512
    assert expected.read_bytes() == envelope
    stored_files = sorted(p.name for p in (tmp_path / "log" / "bodies").rglob("*") if p.is_file())
    assert stored_files == [part.sha512]  # the small attachment is inline


def small_bodies(store: SqlLogStore) -> list[tuple[int, int, str]]:
    """``(seq, part, sha512 hex)`` of every small-body row, in key order."""
    rows = store._query("SELECT seq, part, sha512 FROM log_small_bodies ORDER BY seq, part")
    return [(int(seq), int(part), bytes(digest).hex()) for seq, part, digest in rows]


def body_files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "log" / "bodies").rglob("*") if p.is_file())


def test_small_bodies_are_inline_large_ones_files_and_delete_through_collects_both(
    store: SqlLogStore, tmp_path: Path
) -> None:
    """A body of at most INLINE_BODY_MAX bytes is a database row (no file), a larger one a file; both read back.

    Each record keeps its own copy of a small body; delete_through removes the copies of the deleted records.
    """
    small = b"<descriptor/>" + b"x" * (INLINE_BODY_MAX - 13)
    assert len(small) == INLINE_BODY_MAX
    large = small + b"!"
    own, own_bodies = part_with_body(small)
    shared, shared_bodies = part_with_body(b"<shared/>", "shared")
    big, big_bodies = part_with_body(large, "big")
    records = seal_all(
        [make_record(1, parts=(own, shared, big)), make_record(2), make_record(3, parts=(shared,)), make_record(4)]
    )
    store.append(records[:2], {**own_bodies, **shared_bodies, **big_bodies})
    store.append(records[2:], shared_bodies)
    assert body_files(tmp_path) == [big.sha512]
    # Each small body is a row under the record and part index naming it; record 3 has its own copy.
    assert small_bodies(store) == [(1, 0, own.sha512), (1, 1, shared.sha512), (3, 0, shared.sha512)]
    assert [store.body(p.sha512, 1) for p in (own, shared, big)] == [small, b"<shared/>", large]
    assert store.body(shared.sha512, 3) == b"<shared/>"
    store.add_batch(1, 2, b"\x01" * 32, b"token-1", "http://tsa", "2024-05-01T10:01:00Z")
    store.add_batch(3, 4, b"\x02" * 32, b"token-2", "http://tsa", "2024-05-01T10:02:00Z")
    store.delete_through(2)
    assert small_bodies(store) == [(3, 0, shared.sha512)]
    assert (store.body(own.sha512, 1), store.body(big.sha512, 1), body_files(tmp_path)) == (None, None, [])
    assert store.body(shared.sha512, 3) == b"<shared/>"


def test_a_stored_part_without_its_body_is_refused(store: SqlLogStore) -> None:
    """A record whose part is marked stored but whose body was neither given nor stored before is not logged."""
    part, _ = part_with_body(b"never given")
    with pytest.raises(LoggingFailed):
        store.append(seal_all([make_record(1, parts=(part,))]), {})
    assert store.head() == (0, GENESIS_HASH)
    metadata_only = dataclasses.replace(part, stored=False)
    store.append(seal_all([make_record(1, parts=(metadata_only,))]), {})
    assert store.head()[0] == 1
    assert store.body(part.sha512, 1) is None


def test_a_body_under_the_wrong_digest_is_refused(store: SqlLogStore) -> None:
    """A body whose bytes do not hash to its name is not stored (the name is the evidence)."""
    part, _ = part_with_body(b"what the record says")
    with pytest.raises(LoggingFailed):
        store.append(seal_all([make_record(1, parts=(part,))]), {part.sha512: Spool.from_bytes(b"something else")})
    assert store.body(part.sha512, 1) is None
    assert store.head() == (0, GENESIS_HASH)


def test_a_failed_body_write_returns_only_once_no_thread_reads_the_bodies(
    store: SqlLogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When one of the parallel body writers fails, the error surfaces after the others have finished reading.

    (Its caller frees the spools as soon as it hears of the failure.)
    """
    bodies = {s.digest.hex(): s for s in (Spool.from_bytes(bytes([i]) * 70_000) for i in range(4))}
    failing = next(iter(bodies))
    finished: list[str] = []
    real_stage = store_module._BodyStore._stage

    def stage(self: store_module._BodyStore, items: list[tuple[str, Spool]]) -> list[tuple[str, str]]:
        if any(digest == failing for digest, _ in items):
            raise OSError("disk full")
        threading.Event().wait(0.2)  # the other writers are still copying when the failure is raised
        result = real_stage(self, items)
        finished.extend(digest for digest, _ in items)
        return result

    monkeypatch.setattr(store_module._BodyStore, "_stage", stage)
    with pytest.raises(OSError, match="disk full"):
        store._bodies.write(bodies)
    assert sorted(finished) == sorted(d for d in bodies if d != failing)


def test_append_refuses_records_that_do_not_continue_the_head(store: SqlLogStore) -> None:
    """A gap, a repeat or a wrong prev_hash is refused and stores nothing."""
    first = seal_all([make_record(1), make_record(2)])
    store.append(first, {})
    head = store.head()
    gap = seal_all([make_record(4)], (3, head[1]))
    repeat = seal_all([make_record(2)], (1, bytes.fromhex(first[0].hash)))
    wrong_link = seal_all([make_record(3)], (2, bytes(32)))
    not_consecutive = seal_all([make_record(3)], head) + seal_all([make_record(5)], (4, head[1]))
    for records in (gap, repeat, wrong_link, not_consecutive):
        with pytest.raises(LoggingFailed):
            store.append(records, {})
        assert store.head() == head
    assert store.records(1, 10) == first


def test_a_failed_transaction_stores_nothing(store: SqlLogStore) -> None:
    """When the second record of a group violates a constraint, neither is stored, and the error shows no SQL."""
    broken = make_record(2, request_id=None)  # NOT NULL column
    records = seal_all([make_record(1, user_id="AZ1111111"), broken])
    with pytest.raises(LoggingFailed) as info:
        store.append(records, {})
    assert "INSERT" not in str(info.value)
    assert "log_records" not in str(info.value)
    assert store.head() == (0, GENESIS_HASH)
    assert store.records(1, 2) == []
    assert store.find(LogQuery(person="AZ1111111")) == []
    # The store is still usable: the same first record goes in now.
    store.append(records[:1], {})
    assert store.records(1, 2) == records[:1]


def test_add_batch_assigns_exactly_its_records_and_refuses_double_stamping(store: SqlLogStore) -> None:
    """A batch covers first..last once; overlap, repeats, gaps and ranges beyond the head are refused unchanged."""
    records = seal_all([make_record(i) for i in range(1, 7)])
    store.append(records, {})
    assert [seq for seq, _, _ in store.unstamped(10)] == [1, 2, 3, 4, 5, 6]
    assert store.oldest_unstamped_at() == records[0].at
    root = bytes(range(32))
    batch = store.add_batch(1, 3, root, b"token-1", "http://tsa.example/tsa", "2024-05-01T10:01:00.000000Z")
    assert (batch.first_seq, batch.last_seq, batch.merkle_root, batch.token) == (1, 3, root, b"token-1")
    assert [store.batch_of(s) for s in (1, 2, 3)] == [batch, batch, batch]
    assert store.batch_of(4) is None
    assert store.batch_of(99) is None
    assert store.stamped_through() == 3
    assert store.unstamped(2) == [
        (4, bytes.fromhex(records[3].hash), records[3].at),
        (5, bytes.fromhex(records[4].hash), records[4].at),
    ]
    assert store.oldest_unstamped_at() == records[3].at
    for first, last in ((1, 3), (3, 4), (5, 6), (4, 9)):  # repeat, overlap, gap, beyond the head
        with pytest.raises(LoggingFailed):
            store.add_batch(first, last, root, b"token-x", "http://tsa.example/tsa", "2024-05-01T10:02:00Z")
        assert store.stamped_through() == 3
        assert store.batch_of(4) is None
    second = store.add_batch(4, 6, root, b"token-2", "http://tsa.example/tsa", "2024-05-01T10:03:00.000000Z")
    assert second.id != batch.id
    assert [store.batch_of(s) for s in (4, 5, 6)] == [second, second, second]
    assert store.unstamped(10) == []
    assert store.oldest_unstamped_at() is None


def test_unstamped_reads_hashes_from_the_covering_index_on_sqlite(tmp_path: Path) -> None:
    """The timestamper's query never touches the records' JSON: SQLite answers it from log_records_stamping.

    Without the index, reaching each hash meant walking its record's overflow pages (~85 MB for a batch of 10,000
    exchange records, all through the page cache).
    """
    store = SqlLogStore(f"sqlite:///{tmp_path}/log.db", tmp_path / "bodies")
    try:
        store.append(seal_all([make_record(i) for i in range(1, 4)]), {})
        issued: list[tuple[str, tuple[object, ...]]] = []
        real_query = store._query

        def capturing(sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
            issued.append((sql, tuple(params)))
            return real_query(sql, params)

        store._query = capturing  # type: ignore[method-assign]
        assert [seq for seq, _, _ in store.unstamped(10)] == [1, 2, 3]
        ((sql, params),) = issued
        plan = " ".join(str(row[-1]) for row in real_query("EXPLAIN QUERY PLAN " + sql, params))
        assert "USING COVERING INDEX log_records_stamping (seq>?)" in plan  # "SEARCH [TABLE] log_records" by version
    finally:
        store.close()


def test_migration_6_indexes_an_existing_sqlite_log(tmp_path: Path) -> None:
    """A log written at schema version 5 gains log_records_stamping when opened, and keeps its records and chain."""
    url = f"sqlite:///{tmp_path}/log.db"
    old = SqlLogStore(url, tmp_path / "bodies")
    old.append(seal_all([make_record(i) for i in range(1, 6)]), {})
    head = old.head()
    with old._writing() as conn:  # back to version 5
        conn.execute("DROP INDEX log_records_stamping")
        conn.execute("DELETE FROM schema_version WHERE version >= 6")
    old.close()
    new = SqlLogStore(url, tmp_path / "bodies")
    try:
        assert new._query("SELECT MAX(version) FROM schema_version") == [(MIGRATIONS[-1].version,)]
        assert new._query("SELECT sql FROM sqlite_master WHERE name = 'log_records_stamping'") == [
            ("CREATE INDEX log_records_stamping ON log_records (seq, hash, at)",)
        ]
        assert new.head() == head
        assert [seq for seq, _, _ in new.unstamped(10)] == [1, 2, 3, 4, 5]
        assert verify_chain(new.records(1, 5)) == head[1]
    finally:
        new.close()


def test_normalise_time_orders_like_time() -> None:
    """Every spelling of an instant normalises to the same text, and text order is time order."""
    assert normalise_time("2024-05-01T10:00:00Z") == "2024-05-01T10:00:00.000000Z"
    assert normalise_time("2024-05-01T14:00:00+04:00") == "2024-05-01T10:00:00.000000Z"
    assert normalise_time("2024-05-01T10:00:00.5Z") < normalise_time("2024-05-01T10:00:01Z")


def test_unsupported_urls_are_refused(tmp_path: Path) -> None:
    """Only sqlite:/// file URLs and postgresql:// URLs open a store."""
    for url in ("mysql://localhost/log", "sqlite:///:memory:", "sqlite://relative"):
        with pytest.raises(LoggingFailed):
            SqlLogStore(url, tmp_path)


# delete_through ----------------------------------------------------------------------------------------------------


def stamped_log(store: SqlLogStore) -> tuple[list[LogRecord], str, str]:
    """Records 1..4 in batches (1..2) and (3..4); a body only record 1 names, and one records 1 and 3 name.

    Returns the records, the unshared digest and the shared digest.
    """
    own, own_bodies = part_with_body(b"<only record 1>")
    shared, shared_bodies = part_with_body(b"<records 1 and 3>", "attachment")
    records = seal_all(
        [
            make_record(1, parts=(own, shared), user_id="AZE0000001", persons=("AZE0000009",)),
            make_record(2, user_id="AZE0000002"),
            make_record(3, parts=(shared,), user_id="AZE0000001"),
            make_record(4),
        ]
    )
    store.append(records[:2], {**own_bodies, **shared_bodies})
    store.append(records[2:], shared_bodies)
    store.add_batch(1, 2, b"\x01" * 32, b"token-1", "http://tsa", "2024-05-01T10:01:00Z")
    store.add_batch(3, 4, b"\x02" * 32, b"token-2", "http://tsa", "2024-05-01T10:02:00Z")
    return records, own.sha512, shared.sha512


def test_a_batch_is_a_range_and_stamping_rewrites_no_record(store: SqlLogStore) -> None:
    """add_batch leaves the records' rows alone; batch_of finds a record's batch by range, in old logs too."""
    records = seal_all([make_record(i) for i in range(1, 7)])
    store.append(records, {})
    before = store._query("SELECT seq, batch_id, record, hash FROM log_records ORDER BY seq")
    root = bytes(range(32))
    first = store.add_batch(1, 3, root, b"token-1", "http://tsa.example/tsa", "2024-05-01T10:01:00.000000Z")
    assert store._query("SELECT seq, batch_id, record, hash FROM log_records ORDER BY seq") == before
    # A log written before batches were ranges has batch_id set on its records: the answer is the same.
    with store._writing() as conn:
        conn.execute(store._sql("UPDATE log_records SET batch_id = ? WHERE seq <= 3"), (first.id,))
    second = store.add_batch(4, 6, root, b"token-2", "http://tsa.example/tsa", "2024-05-01T10:02:00.000000Z")
    assert [store.batch_of(s) for s in range(1, 7)] == [first] * 3 + [second] * 3


def test_delete_through_refuses_anything_but_the_end_of_a_batch(store: SqlLogStore) -> None:
    """Inside a batch, past the stamped range or before any record: InvalidState naming the rule, nothing deleted."""
    _, own, _ = stamped_log(store)
    store.append(seal_all([make_record(5)], store.head()), {})  # 5 is not timestamped
    for seq in (1, 3, 5, 0, 99):
        with pytest.raises(InvalidState, match=f"through record {seq}: it is not the last record of a timestamped"):
            store.delete_through(seq)
    assert [r.seq for r in store.find(LogQuery(limit=10))] == [1, 2, 3, 4, 5]
    assert store.body(own, 1) == b"<only record 1>"
    assert store.batch_of(1) is not None


def test_delete_through_removes_records_persons_batches_and_unshared_bodies(store: SqlLogStore) -> None:
    """delete_through(2) removes records 1..2, their person rows and batch, and record 1's own body (file too).

    The body record 3 also names stays; head, stamped range and later batches are unchanged.
    """
    records, own, shared = stamped_log(store)
    head = store.head()
    store.delete_through(2)
    assert store.records(1, 4) == records[2:]
    assert store._query("SELECT person, seq FROM log_persons ORDER BY seq, person") == [("AZE0000001", 3)]
    assert store.find(LogQuery(person="AZE0000009")) == []
    assert (store.batch_of(2), getattr(store.batch_of(3), "id", None)) == (None, 2)
    assert store.body(own, 1) is None
    assert not os.path.exists(store._bodies.path(own))
    assert store.body(shared, 3) == b"<records 1 and 3>"
    assert (store.head(), store.stamped_through()) == (head, 4)
    # Deleting the rest leaves the shared body unnamed, so it goes too; the head is still known.
    store.delete_through(4)
    assert (store.find(LogQuery()), store.body(shared, 3), store.head()) == ([], None, head)


def test_a_body_named_again_after_the_delete_committed_is_kept(store: SqlLogStore) -> None:
    """A body file named again by an append between delete_through's commit and its unlinking stays.

    The append does not re-send the body (the file exists); the unlinking re-checks log_bodies under the body lock.
    (Small bodies are rows deleted in delete_through's own transaction, so they have no such window.)
    """
    large = b"<Envelope>" + b"x" * INLINE_BODY_MAX + b"</Envelope>"
    part, bodies = part_with_body(large)
    store.append(seal_all([make_record(1, parts=(part,)), make_record(2)]), bodies)
    store.add_batch(1, 2, b"\x01" * 32, b"token-1", "http://tsa", "2024-05-01T10:01:00Z")
    unlink = store._unlink_bodies

    def append_then_unlink(digests: list[str]) -> None:
        store.append(seal_all([make_record(3, parts=(part,))], store.head()), {})
        unlink(digests)

    store._unlink_bodies = append_then_unlink  # type: ignore[method-assign]
    store.delete_through(2)
    assert store.body(part.sha512, 3) == large
    assert [r.seq for r in store.find(LogQuery(limit=10))] == [3]


def test_migration_2_backfills_body_references(db_url: str, tmp_path: Path) -> None:
    """A log written before migration 2 gets log_bodies from its records, so delete_through collects its bodies."""
    old = SqlLogStore(db_url, tmp_path / "log")
    _, own, shared = stamped_log(old)
    # Back to the schema of version 1, records and bodies kept.
    with old._writing() as conn:
        for statement in ("DROP TABLE log_bodies", "DROP TABLE log_pruned", "DROP INDEX log_records_batch"):
            conn.execute(statement)
        conn.execute("DELETE FROM schema_version WHERE version = 2")
    old.close()
    new = SqlLogStore(db_url, tmp_path / "log")
    try:
        refs = new._query("SELECT sha512, last_seq FROM log_bodies ORDER BY last_seq")
        assert [(bytes(d).hex(), seq) for d, seq in refs] == [(own, 1), (shared, 3)]
        new.delete_through(2)
        assert (new.body(own, 1), new.body(shared, 3)) == (None, b"<records 1 and 3>")
    finally:
        new.close()


def test_a_small_body_must_be_given_with_every_record_naming_it(store: SqlLogStore) -> None:
    """A small body is kept per record: a record naming one stored before, without giving it, is refused.

    (A large body's file may be named again without being given: see the delete_through race test.)
    """
    part, bodies = part_with_body(b"<small/>")
    store.append(seal_all([make_record(1, parts=(part,))]), bodies)
    head = store.head()
    with pytest.raises(LoggingFailed, match="has no body"):
        store.append(seal_all([make_record(2, parts=(part,))], head), {})
    assert (store.head(), small_bodies(store)) == (head, [(1, 0, part.sha512)])


def test_a_body_given_but_named_by_no_stored_part_is_not_kept(store: SqlLogStore) -> None:
    """Only bodies of stored parts are kept: a metadata-only part's bytes, given anyway, are not stored."""
    part, bodies = part_with_body(b"<metadata only/>")
    store.append(seal_all([make_record(1, parts=(dataclasses.replace(part, stored=False),))]), bodies)
    assert (store.head()[0], store.body(part.sha512, 1), small_bodies(store)) == (1, None, [])


def downgrade_to_migration_3(store: SqlLogStore) -> None:
    """Rewrite ``store``'s small bodies the way migration 3 kept them (hex key, a log_bodies row), schema 3."""
    rows = store._query("SELECT seq, sha512, data FROM log_small_bodies ORDER BY seq, part")
    with store._writing() as conn:
        conn.execute(store._sql("CREATE TABLE log_inline_bodies (sha512 TEXT PRIMARY KEY, data {blob} NOT NULL)"))
        for seq, digest, data in rows:
            conn.execute(
                store._sql("INSERT INTO log_inline_bodies (sha512, data) VALUES (?, ?) ON CONFLICT DO NOTHING"),
                (bytes(digest).hex(), bytes(data)),
            )
            conn.execute(
                store._sql(
                    "INSERT INTO log_bodies (sha512, last_seq) VALUES (?, ?)"
                    " ON CONFLICT (sha512) DO UPDATE SET last_seq = excluded.last_seq"
                ),
                (bytes(digest), seq),
            )
        conn.execute("DROP TABLE log_small_bodies")
        conn.execute("DELETE FROM schema_version WHERE version = 4")


def test_migration_4_moves_inline_bodies_under_their_newest_record(db_url: str, tmp_path: Path) -> None:
    """A log written under migration 3 keeps every small body: each moves under the newest record naming it.

    Bodies read back; delete_through then removes a body with its last record and keeps a shared one until the
    later record naming it goes; an unreferenced leftover inline body is dropped.
    """
    old = SqlLogStore(db_url, tmp_path / "log")
    records, own, shared = stamped_log(old)
    downgrade_to_migration_3(old)
    with old._writing() as conn:  # a leftover of a crash between a delete's commit and its clean-up
        conn.execute(old._sql("INSERT INTO log_inline_bodies (sha512, data) VALUES (?, ?)"), ("ab" * 64, b"junk"))
    old.close()
    new = SqlLogStore(db_url, tmp_path / "log")
    try:
        assert new._query("SELECT MAX(version) FROM schema_version") == [(MIGRATIONS[-1].version,)]
        assert small_bodies(new) == sorted([(1, 0, own), (3, 0, shared)])
        # Record 1 names the shared body too: found under record 3 through log_bodies.
        assert [new.body(own, 1), new.body(shared, 1), new.body(shared, 3), new.body("ab" * 64, 1)] == [
            b"<only record 1>",
            b"<records 1 and 3>",
            b"<records 1 and 3>",
            None,
        ]
        assert new._query("SELECT COUNT(*) FROM log_bodies") == [(2,)]  # kept: they may still name old files
        new.delete_through(2)
        assert (new.body(own, 1), new.body(shared, 3)) == (None, b"<records 1 and 3>")
        new.delete_through(4)
        assert (new.body(shared, 3), small_bodies(new)) == (None, [])
        assert new.records(1, 4) == []
        assert records[0].seq == 1
    finally:
        new.close()


# SQLite checkpoints ------------------------------------------------------------------------------------------------


def wait_for_checkpoint(checkpointer: _Checkpointer, runs: int) -> None:
    """Wait (at most 10 s) until the background checkpointer has run ``runs`` times."""
    with checkpointer.done:
        assert checkpointer.done.wait_for(lambda: checkpointer.runs >= runs, timeout=10) is True


def append_with_body(store: SqlLogStore, i: int) -> None:
    """Append record ``i`` with its own 20 KB small body (about six WAL frames with the index pages)."""
    part, bodies = part_with_body(f"<body {i}/>".encode() + os.urandom(20_000))
    store.append(seal_all([make_record(i, parts=(part,))], store.head()), bodies)


def wal_size(path: Path) -> int:
    wal = Path(str(path) + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_sqlite_checkpoints_run_in_the_background_not_in_the_commit(tmp_path: Path) -> None:
    """The write connection never checkpoints on commit; the checkpointer thread copies the WAL after commits."""
    path = tmp_path / "log.db"
    store = SqlLogStore(f"sqlite:///{path}", tmp_path / "log")
    try:
        assert store._write_conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        assert store._checkpointer is None  # opening (and migrating) starts no thread: a reader needs none
        append_with_body(store, 1)
        checkpointer = store._checkpointer
        assert checkpointer is not None
        wait_for_checkpoint(checkpointer, 1)
        # Everything committed is in the database file already: a new checkpoint finds nothing left to copy.
        other = sqlite3.connect(path)
        try:
            busy, frames, copied = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            other.close()
        assert (busy, copied) == (0, frames)
    finally:
        store.close()
    assert checkpointer._thread.is_alive() is False


def test_commits_in_quick_succession_share_one_background_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a checkpoint the next waits CHECKPOINT_INTERVAL_S (each fsyncs the database); stop() cuts it short."""
    monkeypatch.setattr(store_module, "CHECKPOINT_INTERVAL_S", 3600.0)
    store = SqlLogStore(f"sqlite:///{tmp_path / 'log.db'}", tmp_path / "log")
    try:
        append_with_body(store, 1)
        checkpointer = store._checkpointer
        assert checkpointer is not None
        wait_for_checkpoint(checkpointer, 1)
        for i in range(2, 12):
            append_with_body(store, i)
        with checkpointer.done:  # built as first, each of these commits started a checkpoint within milliseconds
            assert checkpointer.done.wait_for(lambda: checkpointer.runs >= 2, timeout=0.5) is False
    finally:
        store.close()  # returns at once: the hour's wait ends with stop()
    assert checkpointer.runs == 1
    assert checkpointer._thread.is_alive() is False


def appends_keep_the_wal_bounded(store: SqlLogStore, path: Path) -> None:
    """Append 150 records of ~6 WAL frames back to back; the WAL never gets far past its limit."""
    largest = 0
    for i in range(1, 151):
        append_with_body(store, i)
        largest = max(largest, wal_size(path))
    # Never started over, the WAL would hold some 900 frames (4 KiB + 24 B each): 3.7 MB.
    assert largest < 2 * store_module.WAL_LIMIT_BYTES
    assert store.head()[0] == 150


def test_the_wal_starts_over_once_past_its_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under steady appends the WAL stays bounded: past the limit the writer finishes a checkpoint itself."""
    monkeypatch.setattr(store_module, "WAL_LIMIT_BYTES", 64 * 4120)
    path = tmp_path / "log.db"
    store = SqlLogStore(f"sqlite:///{path}", tmp_path / "log")
    try:
        appends_keep_the_wal_bounded(store, path)
    finally:
        store.close()


def test_a_failing_checkpointer_leaves_the_checkpoints_to_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the checkpointer cannot work, appends still succeed and the writer keeps the WAL bounded after commits."""
    monkeypatch.setattr(store_module, "WAL_LIMIT_BYTES", 64 * 4120)
    path = tmp_path / "log.db"
    store = SqlLogStore(f"sqlite:///{path}", tmp_path / "log")
    try:
        # A checkpointer whose database cannot be opened: every run fails.
        assert store._checkpointer is None
        broken = _Checkpointer(str(tmp_path / "missing" / "log.db"))
        store._checkpointer = broken
        appends_keep_the_wal_bounded(store, path)
        wait_for_checkpoint(broken, 1)
        assert broken._conn is None
    finally:
        store.close()


def test_postgresql_keeps_records_up_to_a_page_out_of_toast(db_url: str, tmp_path: Path) -> None:
    """Migration 5: on PostgreSQL log_records toasts only rows past a page; on SQLite it is recorded, a no-op."""
    store = SqlLogStore(db_url, tmp_path / "log")
    try:
        assert store._query("SELECT MAX(version) FROM schema_version") == [(MIGRATIONS[-1].version,)]
        if store.dialect == "postgresql":
            options = store._query("SELECT reloptions FROM pg_class WHERE oid = 'log_records'::regclass")
            assert options == [(["toast_tuple_target=8160"],)]
        records = seal_all([make_record(1, signature="QUJD" * 900)])  # a ~3.6 KB signature: past the old threshold
        store.append(records, {})
        assert store.records(1, 1) == records
    finally:
        store.close()


def test_postgresql_stores_records_past_a_page_uncompressed(db_url: str, tmp_path: Path) -> None:
    """Migration 7: a record too large for a page is toasted without a compression attempt; short ones stay inline."""
    store = SqlLogStore(db_url, tmp_path / "log")
    try:
        # A value pglz would compress (repetitive), so that a compression attempt would show.
        records = seal_all([make_record(1, signature="QUJD" * 3000), make_record(2, signature="QUJD" * 900)])
        store.append(records, {})
        assert store.records(1, 2) == records
        if store.dialect == "postgresql":
            storage = store._query(
                "SELECT attstorage FROM pg_attribute WHERE attrelid = 'log_records'::regclass AND attname = 'record'"
            )
            assert storage == [("e",)]
            # pg_column_compression names the method of a compressed value and is NULL for one stored as is (with
            # the default storage the 12 KB record would be 'pglz'); pg_column_size is the stored size.
            stored = store._query(
                "SELECT seq, pg_column_compression(record), pg_column_size(record), octet_length(record)"
                " FROM log_records ORDER BY seq"
            )
            assert [(seq, method) for seq, method, _, _ in stored] == [(1, None), (2, None)]
            assert all(size >= length for _, _, size, length in stored)
            # Exactly one value went out of line (the 12 KB record); the 3.6 KB one stayed in its row.
            ((toast,),) = store._query(
                "SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = 'log_records'::regclass"
            )
            assert store._query(f"SELECT COUNT(DISTINCT chunk_id) FROM {toast}") == [(1,)]
    finally:
        store.close()
