"""Export of evidence from a log store, linked archives with retention, whole-log verification, ``korpu audit``."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import io
import shutil
import zipfile
from pathlib import Path

import pytest

from bridge.errors import InvalidState, LogVerificationFailed, NotFound
from bridge.evidence import verify_container
from security_server import audit_cli
from security_server.messagelog import LogStore
from security_server.messagelog.archive import cleanup, export_exchange, rotate, verify_archives, verify_log
from tests.support.memlog import ExchangeBuilder, MemoryLogStore
from tests.support.pki import Pki, build_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(tmp_path_factory.mktemp("pki"))


def sql_store(directory: Path) -> LogStore:
    store_module = pytest.importorskip("security_server.messagelog.store")
    store: LogStore = store_module.SqlLogStore(f"sqlite:///{directory / 'messagelog.db'}")
    return store


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LogStore:
    if request.param == "memory":
        return MemoryLogStore()
    return sql_store(tmp_path)


def filled(pki: Pki, store: LogStore, exchanges: int = 3) -> ExchangeBuilder:
    """``exchanges`` exchanges, each timestamped in its own batch."""
    builder = ExchangeBuilder(pki, store)
    for _ in range(exchanges):
        builder.exchange()
        builder.timestamp()
    return builder


# Export ----------------------------------------------------------------------------------------------------------


def test_export_finds_request_and_response_and_verifies(pki: Pki, store: LogStore) -> None:
    """export_exchange gathers both records, bodies, proofs and tokens into a container that verifies."""
    builder = filled(pki, store)
    data = export_exchange(store, "req-0002", builder.certs)
    report = verify_container(data, trust_roots=[pki.ca.root_cert])
    assert [(r.role, r.seq, r.request_id) for r in report.records] == [
        ("request", 3, "req-0002"),
        ("response", 4, "req-0002"),
    ]
    store.close()


def test_export_refuses_unknown_and_untimestamped_exchanges(pki: Pki, store: LogStore) -> None:
    """An unknown request id is NotFound; a record whose batch is not stamped yet says so and to retry."""
    builder = filled(pki, store, 1)
    with pytest.raises(NotFound, match="no request with request id 'nope'"):
        export_exchange(store, "nope", builder.certs)
    builder.exchange()
    with pytest.raises(InvalidState, match=r"request record 3 is not timestamped yet.*try again"):
        export_exchange(store, "req-0002", builder.certs)
    store.close()


# Archives ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def two_archives(pki: Pki, tmp_path: Path) -> tuple[MemoryLogStore, ExchangeBuilder, list[Path]]:
    store = MemoryLogStore()
    builder = filled(pki, store, 4)  # records 1..8 in four batches of two
    first = rotate(store, tmp_path / "archive", certs=builder.certs, before_seq=5)
    second = rotate(store, tmp_path / "archive", certs=builder.certs, before_seq=7, delete=True)
    return store, builder, [first, second]


def test_rotate_twice_and_verify(two_archives: tuple[MemoryLogStore, ExchangeBuilder, list[Path]]) -> None:
    """Two rotations write linked archives of whole batches; they verify in order; deleted records are gone."""
    store, builder, paths = two_archives
    assert [p.name for p in paths] == [
        "messagelog-000000000001-000000000004.zip",
        "messagelog-000000000005-000000000006.zip",
    ]
    report = verify_archives(paths)
    assert [(a.first_seq, a.last_seq, a.batches) for a in report.archives] == [(1, 4, 2), (5, 6, 1)]
    assert store.records(1, 8)[0].seq == 7  # delete=True removed 1..6 from the live store
    live = verify_log(store, builder.certs, after_archive=paths[1])
    assert (live.first_seq, live.last_seq, live.batches, live.unstamped) == (7, 8, 1, 0)


def test_missing_or_reordered_archive_is_named(
    two_archives: tuple[MemoryLogStore, ExchangeBuilder, list[Path]],
) -> None:
    """Without the first archive, or with the two swapped, verification fails naming the archive that no longer fits."""
    _, _, paths = two_archives
    with pytest.raises(LogVerificationFailed, match=r"archive messagelog-000000000005-000000000006\.zip: check \(5\)"):
        verify_archives([paths[1]])
    with pytest.raises(LogVerificationFailed, match=r"archive messagelog-000000000005-000000000006\.zip: check \(5\)"):
        verify_archives([paths[1], paths[0]])
    assert verify_archives([paths[1]], allow_pruned_start=True).starts_after is not None


@pytest.mark.parametrize("member", ["records.jsonl", "link.json", "batches/1.tsr", "batches.jsonl", "bodies/"])
def test_flipped_byte_in_an_archive_is_named(
    two_archives: tuple[MemoryLogStore, ExchangeBuilder, list[Path]], member: str
) -> None:
    """One flipped bit in the records, a body, a token, the batch list or the link fails naming the archive."""
    _, _, paths = two_archives
    path = paths[0]
    out = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        target = next(n for n in src.namelist() if n.startswith(member))
        for info in src.infolist():
            data = src.read(info)
            if info.filename == target:
                i = len(data) // 2
                data = data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :]
            dst.writestr(info, data)
    path.write_bytes(out.getvalue())
    with pytest.raises(LogVerificationFailed, match=r"archive messagelog-000000000001-000000000004\.zip.*check \(\d\)"):
        verify_archives(paths)


def test_rotate_refuses_nothing_to_do_and_store_without_delete(pki: Pki, tmp_path: Path) -> None:
    """No whole timestamped batch in range is an error; delete needs a store with delete_through."""
    store = MemoryLogStore()
    builder = filled(pki, store, 1)
    with pytest.raises(InvalidState, match="nothing to archive"):
        rotate(store, tmp_path, certs=builder.certs, before_seq=2)

    class NoDelete:
        def __getattr__(self, name: str) -> object:
            if name == "delete_through":
                raise AttributeError(name)
            return getattr(store, name)

    with pytest.raises(InvalidState, match="cannot delete"):
        rotate(NoDelete(), tmp_path, certs=builder.certs, before_seq=3, delete=True)  # type: ignore[arg-type]


def test_cleanup_keeps_the_newest_and_writes_the_ledger(
    two_archives: tuple[MemoryLogStore, ExchangeBuilder, list[Path]],
) -> None:
    """Retention deletes archives older than keep_days except the newest, listing them in pruned.jsonl."""
    _, _, paths = two_archives
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    assert cleanup(paths[0].parent, 30) == []
    assert cleanup(paths[0].parent, 365, now=later) == [paths[0]]
    assert not paths[0].exists() and paths[1].exists()
    assert b'"name":"messagelog-000000000001-000000000004.zip"' in (paths[0].parent / "pruned.jsonl").read_bytes()


def test_live_log_tampering_is_named(pki: Pki) -> None:
    """verify_log names the first record that does not fit the chain."""
    store = MemoryLogStore()
    builder = filled(pki, store, 2)
    assert verify_log(store, builder.certs).batches == 2
    import dataclasses

    record = store.records(3, 3)[0]
    store._records[3] = dataclasses.replace(record, user_id="someone else")
    with pytest.raises(LogVerificationFailed, match=r"record 3: check \(1\) record chain"):
        verify_log(store, builder.certs)


def test_a_live_log_starting_at_a_record_with_a_non_hex_prev_hash_fails_verification(pki: Pki) -> None:
    """After archiving, the first live record's prev_hash starts the chain: tampered to non-hex, it is named."""
    store = MemoryLogStore()
    builder = filled(pki, store, 2)
    del store._records[1]  # as if archived and deleted
    store._records[2] = dataclasses.replace(store.records(2, 2)[0], prev_hash="not hex")
    with pytest.raises(LogVerificationFailed, match=r"record 2: check \(1\) record chain"):
        verify_log(store, builder.certs)


def test_audit_verify_reports_a_zip_with_undecodable_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A ZIP whose UTF-8-flagged name is not UTF-8 is a failed file, not an aborted command."""
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("mimetype", b"x")
    data = bytearray(bad.read_bytes())
    for header in (b"PK\x03\x04", b"PK\x01\x02"):  # local and central headers: set the UTF-8 flag (bit 11)
        at = data.index(header)
        flags = at + (6 if header == b"PK\x03\x04" else 8)
        data[flags + 1] |= 0x08
    name_at = data.rindex(b"mimetype")
    data[name_at] = 0xFF  # not UTF-8
    bad.write_bytes(bytes(data))
    with pytest.raises(UnicodeDecodeError):
        zipfile.ZipFile(bad)  # what the command met, and ended with an internal error
    assert audit("verify", str(bad)) == 1
    assert "bad.zip" in capsys.readouterr().err


# korpu audit ---------------------------------------------------------------------------------------------------------

SERVER_YAML = "server_id: AZ/GOV/1400057421/ss1\nowner_name: Ministry of Taxes\naddress: 127.0.0.1:5500\n"


def audit(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="korpu audit")
    audit_cli.register(parser)
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result


def test_cli_export_query_and_verify(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Export writes a container from a server's state dir; query lists; verify exits 0, or 1 naming the check."""
    state = tmp_path / "ss"
    state.mkdir()
    (state / "server.yaml").write_text(SERVER_YAML + "message_log:\n  database: sqlite:///log/ml.db\n  bodies: log/b\n")
    (state / "log").mkdir()
    store_module = pytest.importorskip("security_server.messagelog.store")
    store = store_module.SqlLogStore(f"sqlite:///{state / 'log' / 'ml.db'}", state / "log" / "b")
    builder = filled(pki, store, 2)
    store.close()
    monkeypatch.setattr(audit_cli, "load_certs", lambda state_dir: builder.certs)
    out = tmp_path / "evidence.zip"
    assert audit("export", "--dir", str(state), "--request-id", "req-0001", "--out", str(out)) == 0
    assert audit("query", "--dir", str(state), "--request-id", "req-0002") == 0
    listing = capsys.readouterr().out
    assert "2 record(s)" in listing
    root = builder.pki.pem("root.pem", pki.ca.root_cert)
    assert audit("verify", str(out), "--ca", str(root)) == 0
    assert audit("verify", "--log", str(state)) == 0
    data = out.read_bytes()
    tampered = tmp_path / "tampered.zip"
    shutil.copy(out, tampered)
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            body = src.read(info)
            dst.writestr(
                info, body.replace(b"income 2029", b"income 2020") if info.filename == "request/body" else body
            )
    capsys.readouterr()
    assert audit("verify", str(tampered)) == 1
    assert "request record 1: check (3) part digests failed" in capsys.readouterr().err


def test_cli_refuses_a_state_dir_without_a_log(tmp_path: Path) -> None:
    """A state dir whose log database does not exist is an error, never a new empty log."""
    (tmp_path / "server.yaml").write_text(SERVER_YAML)
    from bridge.errors import ConfigError

    with pytest.raises(ConfigError, match="no message log database"):
        audit("query", "--dir", str(tmp_path))
    assert not (tmp_path / "messagelog.db").exists()
