"""Archiving with deletion on the SQL store (both backends), the background archiver, and ``korpu audit archive``."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.errors import GlobalConfError, InvalidState
from bridge.evidence import EvidenceCerts
from bridge.messagelog import GENESIS_HASH, LogRecord, verify_chain
from security_server import audit_cli
from security_server.messagelog import LogQuery
from security_server.messagelog.archive import PRUNED_LEDGER, rotate, verify_archives, verify_log
from security_server.messagelog.archiver import Archiver, archive_lock
from security_server.messagelog.store import SqlLogStore
from tests.support.memlog import ExchangeBuilder
from tests.support.pki import Pki, build_pki

SHARED_BODY = b"AZE1234567 income 2029"  # every ExchangeBuilder request carries this body


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def store(db_url: str, tmp_path: Path) -> Iterator[SqlLogStore]:
    s = SqlLogStore(db_url, tmp_path / "log")
    try:
        yield s
    finally:
        s.close()


def filled(pki: Pki, store: SqlLogStore, exchanges: int) -> ExchangeBuilder:
    """``exchanges`` exchanges, each (request and response) timestamped in its own batch."""
    builder = ExchangeBuilder(pki, store)
    for _ in range(exchanges):
        builder.exchange()
        builder.timestamp()
    return builder


def archived_records(path: Path) -> list[LogRecord]:
    with zipfile.ZipFile(path) as zf:
        lines = zf.read("records.jsonl").splitlines()
    return [LogRecord.from_json(json.loads(line)) for line in lines]


def live(store: SqlLogStore) -> list[LogRecord]:
    return store.find(LogQuery(limit=1000))


def at(record: LogRecord) -> dt.datetime:
    return dt.datetime.fromisoformat(record.at)


def test_rotate_with_delete_leaves_later_records_and_the_chain_continues(
    pki: Pki, store: SqlLogStore, tmp_path: Path
) -> None:
    """rotate(delete=True) on SqlLogStore leaves only later records, and the chain continues across the archive.

    Archive records + live records verify as one chain; shared bodies stay, unshared ones are gone.
    """
    builder = filled(pki, store, 3)  # records 1..6, batches (1,2) (3,4) (5,6)
    request, response = store.records(1, 2)
    # Unique to exchange 1: its request descriptor (holds the message id) and both index parts (ids, hashes).
    unshared = [p.sha512 for p in request.parts if p.name != "body"] + [response.parts[-1].sha512]
    shared = hashlib.sha512(SHARED_BODY).hexdigest()
    head_before = store.head()

    path = rotate(store, tmp_path / "archive", certs=builder.certs, before_seq=5, delete=True)

    assert path.name == "messagelog-000000000001-000000000004.zip"
    assert [r.seq for r in live(store)] == [5, 6]
    assert store.head() == head_before
    assert store.batch_of(1) is None
    assert store.find(LogQuery(person="AZE1234567", limit=10))[0].seq == 5
    # Bodies: the request body is shared with records 5.. and stays; exchange 1's own parts are gone.
    assert store.body(shared, 5) == SHARED_BODY
    assert len(set(unshared)) == 3
    assert [store.body(d, s) for d, s in zip(unshared, (1, 1, 2), strict=True)] == [None] * 3
    assert [p for p in (tmp_path / "log" / "bodies").rglob("*") if p.name in unshared] == []
    # Appends continue the chain across the archive.
    builder.exchange()
    builder.timestamp()
    chain = archived_records(path) + live(store)
    assert [r.seq for r in chain] == list(range(1, 9))
    assert verify_chain(chain).hex() == chain[-1].hash
    report = verify_log(store, builder.certs, after_archive=path)
    assert (report.first_seq, report.last_seq, report.batches, report.unstamped) == (5, 8, 2, 0)
    assert [(a.first_seq, a.last_seq, a.batches) for a in verify_archives([path]).archives] == [(1, 4, 2)]


def test_deleting_every_record_keeps_the_head_and_the_batch_numbering(
    pki: Pki, store: SqlLogStore, tmp_path: Path
) -> None:
    """With every record archived and deleted, head() is the last deleted record's and numbering continues.

    Nothing counts as unstamped, new records and batches continue (seq 5, batch 3), the next archive links.
    """
    builder = filled(pki, store, 2)
    last = store.records(4, 4)[0]
    first = rotate(store, tmp_path / "archive", certs=builder.certs, before_seq=100, delete=True)
    assert live(store) == []
    assert store.head() == (4, bytes.fromhex(last.hash))
    assert (store.stamped_through(), store.unstamped(10), store.oldest_unstamped_at()) == (4, [], None)
    assert not list((tmp_path / "log" / "bodies").glob("??/??/*"))
    builder.exchange()
    batch = builder.timestamp()
    assert (batch.id, batch.first_seq, batch.last_seq) == (3, 5, 6)
    second = rotate(store, tmp_path / "archive", certs=builder.certs, before_seq=100, delete=True)
    report = verify_archives([first, second])
    assert [(a.first_seq, a.last_seq) for a in report.archives] == [(1, 4), (5, 6)]
    assert (SqlLogStore.head(store), live(store)) == ((6, bytes.fromhex(archived_records(second)[-1].hash)), [])


def test_reopening_after_deleting_everything_continues_the_chain(pki: Pki, db_url: str, tmp_path: Path) -> None:
    """The pruned head survives a restart: a new store on the same database appends after it."""
    store = SqlLogStore(db_url, tmp_path / "log")
    builder = filled(pki, store, 1)
    rotate(store, tmp_path / "archive", certs=builder.certs, before_seq=100, delete=True)
    head = store.head()
    store.close()
    reopened = SqlLogStore(db_url, tmp_path / "log")
    try:
        assert reopened.head() == head
        builder.store = reopened
        request = builder.exchange(response=False).request
        assert (request.seq, request.prev_hash) == (3, head[1].hex())
    finally:
        reopened.close()


# The archiver --------------------------------------------------------------------------------------------------


def archiver(store: SqlLogStore, builder: ExchangeBuilder, directory: Path, *, after_s: float = 3600) -> Archiver:
    return Archiver(
        store, directory, lambda: builder.certs, archive_after_s=after_s, retention_days=365, interval_s=3600
    )


def test_a_round_archives_old_batches_and_leaves_young_ones(pki: Pki, store: SqlLogStore, tmp_path: Path) -> None:
    """One round archives (and deletes) the batches older than archive_after_s, no others; then nothing is due."""
    builder = filled(pki, store, 3)
    # "Now" is one hour after record 4 was written: batches (1,2) and (3,4) are due, (5,6) is younger.
    now = at(store.records(4, 4)[0]) + dt.timedelta(hours=1, microseconds=1)
    if at(store.records(6, 6)[0]) <= at(store.records(4, 4)[0]):
        pytest.skip("the clock did not advance between the exchanges")
    runner = archiver(store, builder, tmp_path / "archive")
    result = runner.run_once(now=now)
    assert (result.first_seq, result.last_seq, result.removed) == (1, 4, ())
    assert result.archive == tmp_path / "archive" / "messagelog-000000000001-000000000004.zip"
    assert [r.seq for r in live(store)] == [5, 6]
    again = runner.run_once(now=now)
    assert (again.archive, again.first_seq, again.removed) == (None, None, ())
    assert [r.seq for r in live(store)] == [5, 6]


def test_a_round_applies_retention_to_archives(pki: Pki, store: SqlLogStore, tmp_path: Path) -> None:
    """A round deletes archives older than retention_days (not the newest) and lists them in pruned.jsonl.

    The remaining archive verifies with a pruned start.
    """
    builder = filled(pki, store, 1)
    runner = archiver(store, builder, tmp_path / "archive")
    now = at(store.records(2, 2)[0]) + dt.timedelta(hours=2)
    old = runner.run_once(now=now).archive
    builder.exchange()
    builder.timestamp()
    newest = runner.run_once(now=at(store.records(4, 4)[0]) + dt.timedelta(hours=2)).archive
    assert old is not None and newest is not None
    later = runner.run_once(now=now + dt.timedelta(days=366))
    assert (later.archive, later.removed) == (None, (old,))
    assert sorted(p.name for p in (tmp_path / "archive").glob("*.zip")) == [newest.name]
    ledger = [json.loads(line) for line in (tmp_path / "archive" / PRUNED_LEDGER).read_text().splitlines()]
    assert [(e["name"], e["first_seq"], e["last_seq"]) for e in ledger] == [(old.name, 1, 2)]
    report = verify_archives([newest], allow_pruned_start=True)
    assert report.starts_after is not None and report.starts_after.startswith(old.name)


def test_archive_after_zero_never_archives(pki: Pki, store: SqlLogStore, tmp_path: Path) -> None:
    """archive_after_s=0 turns automatic archiving off: a round writes nothing and deletes nothing."""
    builder = filled(pki, store, 2)
    result = archiver(store, builder, tmp_path / "archive", after_s=0).run_once(
        now=dt.datetime.now(dt.UTC) + dt.timedelta(days=1000)
    )
    assert (result.archive, result.removed) == (None, ())
    assert [r.seq for r in live(store)] == [1, 2, 3, 4]


def test_a_concurrent_rotation_is_refused(pki: Pki, store: SqlLogStore, tmp_path: Path) -> None:
    """While the archive directory's lock is held (korpu audit archive running), a round refuses, changing nothing."""
    builder = filled(pki, store, 1)
    with archive_lock(tmp_path / "archive"), pytest.raises(InvalidState, match="another archiving run"):
        archiver(store, builder, tmp_path / "archive").run_once(now=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
    assert [r.seq for r in live(store)] == [1, 2]


async def test_run_logs_a_failed_round_and_tries_again(pki: Pki, store: SqlLogStore, tmp_path: Path) -> None:
    """A round that raises (no certificates in global configuration) does not end run(): the next round runs."""
    filled(pki, store, 1)
    calls: list[int] = []
    second = asyncio.Event()
    loop = asyncio.get_running_loop()

    def no_certs() -> EvidenceCerts:
        calls.append(1)
        if len(calls) == 2:
            loop.call_soon_threadsafe(second.set)
        raise GlobalConfError("global configuration names no CA or no timestamp authority to verify evidence")

    runner = Archiver(store, tmp_path / "archive", no_certs, archive_after_s=1e-6, retention_days=1, interval_s=0.01)
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(second.wait(), timeout=10)
        assert task.done() is False
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [r.seq for r in live(store)] == [1, 2]


# korpu audit archive ---------------------------------------------------------------------------------------------


def test_cli_archive_runs_one_rotation(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`korpu audit archive --older-than-days 0` archives every timestamped batch and prints path and range.

    --no-delete keeps the records; with nothing left to archive the command fails with InvalidState.
    """
    state = tmp_path / "ss"
    (state / "log").mkdir(parents=True)
    (state / "server.yaml").write_text(
        "server_id: AZ/GOV/1400057421/ss1\nowner_name: Ministry of Taxes\naddress: 127.0.0.1:5500\n"
        "message_log:\n  database: sqlite:///log/ml.db\n  bodies: log/b\n  archive_dir: arch\n"
    )
    store = SqlLogStore(f"sqlite:///{state / 'log' / 'ml.db'}", state / "log" / "b")
    builder = filled(pki, store, 2)
    builder.exchange()  # records 5, 6: not timestamped, never archived
    store.close()
    monkeypatch.setattr(audit_cli, "load_certs", lambda state_dir: builder.certs)

    def audit(*argv: str) -> int:
        parser = argparse.ArgumentParser(prog="korpu audit")
        audit_cli.register(parser)
        args = parser.parse_args(argv)
        result: int = args.handler(args)
        return result

    assert audit("archive", "--dir", str(state), "--older-than-days", "0", "--no-delete") == 0
    path = state / "arch" / "messagelog-000000000001-000000000004.zip"
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"wrote {path}: records 1..4 (older than 0 day(s)), kept in the live log"
    )
    reopened = SqlLogStore(f"sqlite:///{state / 'log' / 'ml.db'}", state / "log" / "b")
    try:
        assert [r.seq for r in live(reopened)] == [1, 2, 3, 4, 5, 6]
    finally:
        reopened.close()
    path.unlink()
    assert audit("archive", "--dir", str(state), "--older-than-days", "0") == 0
    assert "records 1..4 (older than 0 day(s)), deleted from the live log" in capsys.readouterr().out
    with pytest.raises(InvalidState, match="nothing to archive"):
        audit("archive", "--dir", str(state), "--older-than-days", "0")
    reopened = SqlLogStore(f"sqlite:///{state / 'log' / 'ml.db'}", state / "log" / "b")
    try:
        assert [r.seq for r in live(reopened)] == [5, 6]
        assert reopened.head()[0] == 6
        assert reopened.head()[1] != GENESIS_HASH
    finally:
        reopened.close()
