"""How fast an auditor finds "who accessed this person's data" in a large message log: ``find(LogQuery(person=…))``.

Usage::

    .venv/bin/python benchmarks/personquery.py [--records 10000000] [--queries 2000] [--pg URL] [--skip-sqlite]

The log is generated straight into a :class:`SqlLogStore` database, bypassing the writer:

* the schema and indexes are the store's own (``SqlLogStore`` runs its migrations; secondary indexes are dropped for
  the load and re-created afterwards from the very SQL the migrations created them with);
* the first :data:`SEED_RECORDS` records go through ``SqlLogStore.append_rows`` (the writer's path); the rest are
  built from a template of the canonical record JSON in a tight loop, continuing a valid hash chain, and loaded with
  ``executemany`` (SQLite) or ``COPY`` (PostgreSQL) in large transactions.  Before loading, the generated rows are
  checked byte for byte against ``sealed_row(record.sealed(…))`` for a sample, and after loading the chain is
  verified with :func:`verify_chain` over the first records and a window at the end.
* records look like a REST exchange logged metadata-only: one part (digest, not stored), a ~350 B base64 signature,
  a decision and timings: ~1.4 KB of JSON each.  With ``--exchange-records`` they carry what an exchange's records
  really carry (as ``logappend.py``'s): a 3,475-byte signature document and two 910-byte OCSP responses, base64 —
  ~8.1 KB of JSON, past a database page, so a query reads overflow pages (SQLite) or TOAST (PostgreSQL) for every
  record it returns.  Such a log took 9.0 KB per record on SQLite (27 GB for 3 M): 10 M of them need ~90 GB, so
  this shape is for measuring what the record size does to the query at a size the disk holds (``--records``).
* persons: every record has a ``userId`` (one of 5 000 officials, ~2 000 records each) and one declared person:
  80 % drawn uniformly from 1 000 000 citizens (~8 records each), 20 % from 1 000 "frequent" ones (~2 000 each).

The query phase opens a fresh store and runs ``store.find(LogQuery(person=X, limit=100))`` for random persons of
three kinds (ordinary citizens, frequent citizens, officials' userIds): *cold* queries first — on SQLite the
database file is evicted from the OS page cache first (``posix_fadvise(DONTNEED)``) and the store is new; on
PostgreSQL the store is new but the server's own caches are not flushed — then *warm* queries (the same persons
again).  Reports p50/p99/max in milliseconds.  Target: p99 < 100 ms.

Generated databases are cached: SQLite under ``bench-results/personquery/`` (ignored by git; about 24 GB for
10 M records — see the printed size), PostgreSQL as database ``korpu_personquery_<records>_v<version>`` on the
server ``--pg`` points at (kept; ``--drop-pg`` removes it afterwards).  A cache entry counts only once the load has
completed (a sidecar ``.json`` for SQLite, a database comment for PostgreSQL).

``run(records=…, pg_url=None) -> dict`` is the entry point for the benchmark harness.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime as dt
import hashlib
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from logappend import OCSP_BYTES, SIGNATURE_BYTES  # the sizes an exchange record carries, in one place

from bridge.messagelog import GENESIS_HASH, LogPart, LogRecord, verify_chain
from security_server.messagelog import LogQuery
from security_server.messagelog.store import _RECORD_COLUMNS, SqlLogStore, sealed_row

#: Bump when the generated data changes shape: cached databases of another version are rebuilt.
VERSION = 1
ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / "bench-results" / "personquery"
SERVER = "SERVER:AZ/GOV/1400057421/ss1"
CITIZENS = 1_000_000
FREQUENT = 1_000
OFFICIALS = 5_000
FREQUENT_SHARE = 0.2
#: Records appended through SqlLogStore.append_rows before the bulk load continues the chain.
SEED_RECORDS = 2_000
#: Records per load transaction.
CHUNK = 100_000
#: Generated rows compared byte for byte with sealed_row() before loading.
CHECKED_RECORDS = 500
TARGET_MS = 100.0
START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
#: ~10 M records over a year: one every ~3 s.
STEP_US = 3_150_000
#: ``--exchange-records`` logs (records with logappend.py's signature and OCSP sizes) are cached under names ending
#: in this.
EXCHANGE_SUFFIX = "-exchange"
#: The record shape this run generates: set once by ``run`` before anything is generated.
_exchange_records = False

CLIENTS = (
    "SUBSYSTEM:AZ/COM/9900001111/loans",
    "SUBSYSTEM:AZ/COM/9900002222/claims",
    "SUBSYSTEM:AZ/GOV/1400011111/social",
    "SUBSYSTEM:AZ/GOV/1400022222/health",
)
SERVICES = (
    "SERVICE:AZ/GOV/1400057421/population/getPerson/v1",
    "SERVICE:AZ/GOV/1400057421/population/getAddress/v1",
    "SERVICE:AZ/GOV/1400099999/tax/getIncome/v2",
)


# Generation -------------------------------------------------------------------------------------------------------


def citizen(n: int) -> str:
    """Citizen ``n``'s person identifier."""
    return f"AZP{n:07d}"


def official(n: int) -> str:
    """Official ``n``'s userId."""
    return f"AZU{n:05d}"


@dataclasses.dataclass(frozen=True)
class Fields:
    """What varies per record; everything else comes from the template."""

    seq: int
    at: str
    request_id: str
    message_id: str
    client: str
    service: str
    direction: str
    side: str
    user_id: str
    person: str
    digest: str


def fields(seq: int, rng: random.Random) -> Fields:
    """Record ``seq``'s varying fields (``rng`` is consumed in seq order, so the log is reproducible)."""
    person = citizen(rng.randrange(FREQUENT if rng.random() < FREQUENT_SHARE else CITIZENS))
    at = (START + dt.timedelta(microseconds=seq * STEP_US)).isoformat(timespec="microseconds").replace("+00:00", "Z")
    exchange = (seq + 1) // 2
    return Fields(
        seq=seq,
        at=at,
        request_id=f"req-{exchange:010d}-{rng.getrandbits(32):08x}",
        message_id=f"msg-{exchange:010d}",
        client=CLIENTS[rng.randrange(len(CLIENTS))],
        service=SERVICES[rng.randrange(len(SERVICES))],
        direction="request" if seq % 2 else "response",
        side="consumer",
        user_id=official(rng.randrange(OFFICIALS)),
        person=person,
        digest=f"{rng.getrandbits(512):0128x}",
    )


def template_record() -> LogRecord:
    """The record every generated one is a variation of (also used to build real records for checking)."""
    rng = random.Random(7)  # noqa: S311 - reproducible test data
    if _exchange_records:
        signature = base64.b64encode(rng.randbytes(SIGNATURE_BYTES)).decode()
        ocsp = tuple(base64.b64encode(rng.randbytes(OCSP_BYTES)).decode() for _ in range(2))
    else:
        signature, ocsp = base64.b64encode(rng.randbytes(260)).decode(), ()  # ~350 B base64
    return LogRecord(
        at="",
        server=SERVER,
        side="consumer",
        direction="request",
        request_id="",
        message_id="",
        protocol="rest",
        client="",
        service="",
        issue="CASE-2024-0042",
        peer="SERVER:AZ/GOV/1400057421/ss2",
        signature=signature,
        ocsp=ocsp,
        decision={"allowed": True, "rule": "access-right:population/getPerson", "purpose": "eligibility-check"},
        timings_ms={"verify": 1.2, "sign": 0.8, "backend": 14.5},
    )


def real_record(f: Fields, prev_hash: bytes) -> LogRecord:
    """Record ``f`` built and sealed the way the writer does (slow; for the seed and the byte-for-byte check)."""
    record = dataclasses.replace(
        template_record(),
        at=f.at,
        side=f.side,
        direction=f.direction,
        request_id=f.request_id,
        message_id=f.message_id,
        client=f.client,
        service=f.service,
        user_id=f.user_id,
        persons=(f.person,),
        parts=(LogPart("body", "application/json", 2048, f.digest, stored=False),),
    )
    return record.sealed(f.seq, prev_hash)


_SENTINELS = {
    "at": "@@at@@",
    "side": "@@side@@",
    "direction": "@@direction@@",
    "request_id": "@@request_id@@",
    "message_id": "@@message_id@@",
    "client": "@@client@@",
    "service": "@@service@@",
    "user_id": "@@user_id@@",
    "person": "@@person@@",
    "digest": "@@digest@@",
    "prev_hash": "@@prev_hash@@",
    "hash": "@@hash@@",
}
_SEQ_SENTINEL = 918273645546372819


def _templates() -> tuple[str, str]:
    """``(body template, record template)``: canonical JSON with ``{name}`` holes, from the real serialiser."""
    s = _SENTINELS
    record = dataclasses.replace(
        template_record(),
        at=s["at"],
        side=s["side"],
        direction=s["direction"],
        request_id=s["request_id"],
        message_id=s["message_id"],
        client=s["client"],
        service=s["service"],
        user_id=s["user_id"],
        persons=(s["person"],),
        parts=(LogPart("body", "application/json", 2048, s["digest"], stored=False),),
        seq=_SEQ_SENTINEL,
        prev_hash=s["prev_hash"],
        hash=s["hash"],
    )
    from bridge.messagelog import canonical

    out = []
    for obj in (record.body(), record.to_json()):
        text = canonical(obj).decode().replace("{", "{{").replace("}", "}}")
        for name, sentinel in s.items():
            text = text.replace(f'"{sentinel}"', f'"{{{name}}}"')
        text = text.replace(f":{_SEQ_SENTINEL}", ":{seq}")
        assert "@@" not in text and str(_SEQ_SENTINEL) not in text
        out.append(text)
    return out[0], out[1]


Row = tuple[int, str, str, str, str, str, str, str, bytes]


def generate(first_seq: int, last_seq: int, prev_hash: bytes, rng: random.Random) -> Iterator[tuple[Row, Fields]]:
    """Rows ``first_seq..last_seq`` as ``append_rows`` writes them, chained on ``prev_hash``."""
    body_t, record_t = _templates()
    sha256 = hashlib.sha256
    for seq in range(first_seq, last_seq + 1):
        f = fields(seq, rng)
        values = {
            "seq": seq, "at": f.at, "side": f.side, "direction": f.direction, "request_id": f.request_id,
            "message_id": f.message_id, "client": f.client, "service": f.service, "user_id": f.user_id,
            "person": f.person, "digest": f.digest, "prev_hash": prev_hash.hex(),
        }  # fmt: skip
        digest = sha256(prev_hash + body_t.format(**values).encode()).digest()
        text = record_t.format(hash=digest.hex(), **values)
        yield (seq, f.at, f.request_id, f.message_id, f.client, f.service, f.user_id, text, digest), f
        prev_hash = digest


def _check_generator() -> None:
    """Generated rows equal what ``sealed_row`` makes of the really sealed record, byte for byte."""
    rng_a, rng_b = random.Random(99), random.Random(99)  # noqa: S311 - reproducible test data
    prev = GENESIS_HASH
    for (row, _), seq in zip(
        generate(1, CHECKED_RECORDS, GENESIS_HASH, rng_a), range(1, CHECKED_RECORDS + 1), strict=True
    ):
        sealed = real_record(fields(seq, rng_b), prev)
        want = sealed_row(sealed)
        r = want.record
        expected = (r.seq, want.at, r.request_id, r.message_id, r.client, r.service, r.user_id, want.json, want.hash)
        assert row == expected, f"generated row {seq} differs from sealed_row()"
        prev = want.hash


# Loading ----------------------------------------------------------------------------------------------------------


def _secondary_indexes_sqlite(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        " AND tbl_name IN ('log_records', 'log_persons')"
    ).fetchall()
    return [(str(n), str(s)) for n, s in rows]


def _secondary_indexes_pg(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
        " AND tablename IN ('log_records', 'log_persons') AND indexname NOT LIKE '%%_pkey'"
    ).fetchall()
    return [(str(n), str(s)) for n, s in rows]


def _seed(store: SqlLogStore, rng: random.Random) -> bytes:
    """The first records through the store's own append path; returns the head hash."""
    prev = GENESIS_HASH
    records = []
    for seq in range(1, SEED_RECORDS + 1):
        record = real_record(fields(seq, rng), prev)
        prev = bytes.fromhex(record.hash)
        records.append(record)
    for i in range(0, len(records), 500):
        store.append_rows([sealed_row(r) for r in records[i : i + 500]], {})
    return prev


def _progress(label: str, done: int, total: int, started: float) -> None:
    rate = done / max(time.perf_counter() - started, 1e-9)
    print(f"  {label}: {done:,}/{total:,} records, {rate:,.0f}/s", flush=True)


def load_sqlite(path: Path, records: int) -> dict[str, float]:
    """Generate ``records`` records into a new SQLite store at ``path``; returns phase timings (s)."""
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    store = SqlLogStore(f"sqlite:///{path}", path.parent / (path.name + ".d"))
    rng = random.Random(20240501)  # noqa: S311 - reproducible test data
    prev = _seed(store, rng)
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-2000000")  # 2 GB while building indexes
    conn.execute("PRAGMA temp_store=FILE")
    indexes = _secondary_indexes_sqlite(conn)
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    # Persons go to a plain staging table first and into the (person, seq) primary key in key order at the end:
    # random inserts into a 20 M-row B-tree would cost a page miss each.
    conn.execute("CREATE TEMP TABLE staged_persons (person TEXT NOT NULL, seq INTEGER NOT NULL)")
    insert_records = f"INSERT INTO log_records ({_RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
    started = time.perf_counter()
    batch: list[Row] = []
    persons: list[tuple[str, int]] = []
    done = SEED_RECORDS
    for row, f in generate(SEED_RECORDS + 1, records, prev, rng):
        batch.append(row)
        persons.append((f.user_id, f.seq))
        persons.append((f.person, f.seq))
        if len(batch) >= CHUNK:
            _flush_sqlite(conn, insert_records, batch, persons)
            done += len(batch)
            batch, persons = [], []
            if done % (10 * CHUNK) < CHUNK:
                _progress("sqlite load", done, records, started)
    _flush_sqlite(conn, insert_records, batch, persons)
    times["load_s"] = time.perf_counter() - started
    started = time.perf_counter()
    conn.execute("BEGIN")
    conn.execute("INSERT INTO log_persons (person, seq) SELECT person, seq FROM staged_persons ORDER BY person, seq")
    conn.execute("COMMIT")
    conn.execute("DROP TABLE staged_persons")
    times["persons_s"] = time.perf_counter() - started
    started = time.perf_counter()
    for _, sql in indexes:
        conn.execute(sql)
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    times["indexes_s"] = time.perf_counter() - started
    times["total_s"] = time.perf_counter() - t0
    return times


def _flush_sqlite(conn: sqlite3.Connection, sql: str, batch: list[Row], persons: list[tuple[str, int]]) -> None:
    conn.execute("BEGIN")
    conn.executemany(sql, batch)
    conn.executemany("INSERT INTO staged_persons (person, seq) VALUES (?, ?)", persons)
    conn.execute("COMMIT")


def load_pg(url: str, body_dir: Path, records: int) -> dict[str, float]:
    """Generate ``records`` records into the (empty) PostgreSQL database at ``url``; returns phase timings (s)."""
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    store = SqlLogStore(url, body_dir)
    rng = random.Random(20240501)  # noqa: S311 - reproducible test data
    prev = _seed(store, rng)
    store.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '1GB'")
        indexes = _secondary_indexes_pg(conn)
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        pkey = conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'log_persons'::regclass AND contype = 'p'"
        ).fetchone()
        assert pkey is not None
        conn.execute(f'ALTER TABLE log_persons DROP CONSTRAINT "{pkey[0]}"')
        started = time.perf_counter()
        done = SEED_RECORDS
        gen = generate(SEED_RECORDS + 1, records, prev, rng)
        while done < records:
            n = min(CHUNK * 5, records - done)
            with conn.transaction(), conn.cursor() as cur:
                persons: list[tuple[str, int]] = []
                with cur.copy(f"COPY log_records ({_RECORD_COLUMNS}) FROM STDIN") as copy:
                    for _ in range(n):
                        row, f = next(gen)
                        copy.write_row(row)
                        persons.append((f.user_id, f.seq))
                        persons.append((f.person, f.seq))
                with cur.copy("COPY log_persons (person, seq) FROM STDIN") as copy:
                    for pair in persons:
                        copy.write_row(pair)
            done += n
            _progress("postgresql load", done, records, started)
        times["load_s"] = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute(f'ALTER TABLE log_persons ADD CONSTRAINT "{pkey[0]}" {pkey[1]}')
        for _, sql in indexes:
            conn.execute(sql)
        times["indexes_s"] = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute("VACUUM (ANALYZE) log_records")  # also sets the visibility map (index-only scans)
        conn.execute("VACUUM (ANALYZE) log_persons")
        times["vacuum_s"] = time.perf_counter() - started
    times["total_s"] = time.perf_counter() - t0
    return times


def _verify(store: SqlLogStore, records: int) -> None:
    """The chain verifies over the seed, the seam to the bulk load and a window at the end."""
    head, _ = store.head()
    assert head == records, (head, records)
    first = store.records(1, min(records, SEED_RECORDS + 5000))
    verify_chain(first)
    if records > len(first):
        lo = max(len(first), records - 5000)
        prev = bytes.fromhex(store.records(lo, lo)[0].hash)
        verify_chain(store.records(lo + 1, records), prev, lo + 1)


# Caching ----------------------------------------------------------------------------------------------------------


def sqlite_cached(records: int, *, rebuild: bool = False) -> tuple[Path, dict[str, Any]]:
    """The cached SQLite database for ``records`` records (generating it if needed) and its metadata."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / f"log-{records}-v{VERSION}{_suffix()}.db"
    meta_path = path.with_suffix(".json")
    if meta_path.exists() and path.exists() and not rebuild:
        return path, {**json.loads(meta_path.read_text()), "cached": True}
    meta_path.unlink(missing_ok=True)
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)
    shutil.rmtree(path.parent / (path.name + ".d"), ignore_errors=True)
    print(f"generating {records:,} records into {path} ...", flush=True)
    _check_generator()
    times = load_sqlite(path, records)
    store = SqlLogStore(f"sqlite:///{path}", path.parent / (path.name + ".d"))
    try:
        _verify(store, records)
    finally:
        store.close()
    meta = {"records": records, "version": VERSION, "generation": times, "bytes": _disk_size(path)}
    meta_path.write_text(json.dumps(meta, indent=2))
    return path, {**meta, "cached": False}


def _disk_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


def _suffix() -> str:
    return EXCHANGE_SUFFIX if _exchange_records else ""


def pg_name(records: int) -> str:
    """The cached PostgreSQL database's name for ``records`` records of this run's shape."""
    return f"korpu_personquery_{records}_v{VERSION}{_suffix().replace('-', '_')}"


def _pg_url(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + name


def pg_cached(admin_url: str, records: int, *, rebuild: bool = False) -> tuple[str, dict[str, Any]]:
    """The cached PostgreSQL database for ``records`` records (generating it if needed) and its metadata."""
    name = pg_name(records)
    url = _pg_url(admin_url, name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if row is not None and row[0] and not rebuild:
            return url, {**json.loads(row[0]), "cached": True}
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    print(f"generating {records:,} records into PostgreSQL database {name} ...", flush=True)
    _check_generator()
    body_dir = CACHE_DIR / f"{name}.d"
    shutil.rmtree(body_dir, ignore_errors=True)
    body_dir.mkdir(parents=True)
    times = load_pg(url, body_dir, records)
    store = SqlLogStore(url, body_dir)
    try:
        _verify(store, records)
    finally:
        store.close()
    with psycopg.connect(url, autocommit=True) as conn:
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        meta = {"records": records, "version": VERSION, "generation": times, "bytes": int(size[0]) if size else 0}
        conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{json.dumps(meta)}'")
    return url, {**meta, "cached": False}


# Querying ---------------------------------------------------------------------------------------------------------


def _evict_files(files: list[Path]) -> bool:
    """Drop ``files`` from the OS page cache (cold reads); False where the platform or permissions do not allow."""
    if not hasattr(os, "posix_fadvise"):
        return False
    try:
        for p in files:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    except OSError:
        return False
    return True


def _evict_sqlite(path: Path) -> bool:
    """The SQLite database, its WAL and index, out of the page cache."""
    return _evict_files([p for p in path.parent.glob(path.name + "*") if p.is_file()])


def _evict_pg(url: str) -> bool:
    """The store's tables and indexes out of the OS page cache, when the server's files are readable here.

    PostgreSQL's own shared buffers (``shared_buffers``, 128 MB by default) are not flushed: a restart would be.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        data_dir = conn.execute("SHOW data_directory").fetchone()
        rows = conn.execute(
            "SELECT pg_relation_filepath(c.oid) FROM pg_class c"
            " WHERE c.relname LIKE 'log\\_%%' AND c.relkind IN ('r', 'i', 't')"
        ).fetchall()
    if data_dir is None:
        return False
    files: list[Path] = []
    for (rel,) in rows:
        if rel is None:
            continue
        base = Path(str(data_dir[0])) / str(rel)
        try:
            files.extend(
                p
                for p in base.parent.iterdir()  # the relation's segments (N, N.1, …) and forks (N_fsm, N_vm)
                if p.name == base.name or p.name.startswith((base.name + ".", base.name + "_"))
            )
        except OSError:
            return False
    return bool(files) and _evict_files(files)


def _summary(samples_ms: list[float], rows: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
        "max_ms": round(ordered[-1], 3),
        "mean_rows": round(sum(rows) / len(rows), 1),
    }


def sample_persons(queries: int, records: int) -> dict[str, list[str]]:
    """Random persons to query: ordinary citizens, frequent citizens, officials (userId)."""
    rng = random.Random(4242)  # noqa: S311 - reproducible test data
    return {
        "citizen": [citizen(rng.randrange(CITIZENS)) for _ in range(queries)],
        "frequent": [citizen(rng.randrange(FREQUENT)) for _ in range(queries)],
        "official": [official(rng.randrange(OFFICIALS)) for _ in range(queries)],
    }


def measure(store: SqlLogStore, persons: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """Time ``find(LogQuery(person=X, limit=100))`` for each person, by kind."""
    out: dict[str, dict[str, float]] = {}
    for kind, names in persons.items():
        samples, rows = [], []
        for person in names:
            started = time.perf_counter()
            found = store.find(LogQuery(person=person, limit=100))
            samples.append((time.perf_counter() - started) * 1000)
            rows.append(len(found))
            assert all(person in (r.user_id, *r.persons) for r in found)
        out[kind] = _summary(samples, rows)
    return out


def query_phase(url: str, body_dir: Path, queries: int, records: int, sqlite_path: Path | None) -> dict[str, Any]:
    """Cold then warm query timings on a fresh store."""
    persons = sample_persons(queries, records)
    evicted = _evict_sqlite(sqlite_path) if sqlite_path is not None else _evict_pg(url)
    store = SqlLogStore(url, body_dir)
    try:
        cold = measure(store, persons)
        warm = measure(store, persons)
    finally:
        store.close()
    return {"cold": cold, "warm": warm, "page_cache_evicted": evicted}


def run(
    records: int = 10_000_000,
    pg_url: str | None = None,
    *,
    queries: int = 1000,
    sqlite: bool = True,
    rebuild: bool = False,
    exchange_records: bool = False,
) -> dict[str, Any]:
    """Generate (or reuse) the logs and measure person queries; the harness's entry point.

    ``exchange_records``: records of an exchange's real size (see the module docstring) instead of metadata-only ones.
    """
    global _exchange_records
    _exchange_records = exchange_records
    result: dict[str, Any] = {"records": records, "target_ms": TARGET_MS, "exchange_records": exchange_records}
    if sqlite:
        path, meta = sqlite_cached(records, rebuild=rebuild)
        q = query_phase(f"sqlite:///{path}", path.parent / (path.name + ".d"), queries, records, path)
        result["sqlite"] = {**meta, **q}
    if pg_url:
        url, meta = pg_cached(pg_url, records, rebuild=rebuild)
        q = query_phase(url, CACHE_DIR / f"{url.rsplit('/', 1)[1]}.d", queries, records, None)
        result["postgresql"] = {**meta, **q}
    worst = [
        v["p99_ms"] for b in ("sqlite", "postgresql") if b in result for phase in ("cold", "warm")
        for v in result[b][phase].values()
    ]  # fmt: skip
    result["worst_p99_ms"] = max(worst) if worst else None
    result["ok"] = bool(worst) and max(worst) < TARGET_MS
    return result


def _print(result: dict[str, Any]) -> None:
    for backend in ("sqlite", "postgresql"):
        if backend not in result:
            continue
        b = result[backend]
        gen = b["generation"]
        print(
            f"{backend}: {b['records']:,} records, {b['bytes'] / 1e9:.2f} GB on disk, "
            f"generated in {gen['total_s']:.0f} s{' (cached)' if b['cached'] else ''} {gen}; "
            f"cold = {'evicted from the page cache' if b['page_cache_evicted'] else 'page cache NOT evicted'}"
        )
        for phase in ("cold", "warm"):
            for kind, s in b[phase].items():
                print(
                    f"  {phase:4} {kind:8} n={s['n']:5} p50 {s['p50_ms']:7.2f} ms  p99 {s['p99_ms']:7.2f} ms"
                    f"  max {s['max_ms']:7.2f} ms  rows/query {s['mean_rows']}"
                )
    print(f"worst p99 {result['worst_p99_ms']} ms (target < {TARGET_MS:.0f} ms): {'OK' if result['ok'] else 'MISS'}")


def main() -> None:
    """Parse arguments, run, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000_000, help="log size (default 10000000)")
    parser.add_argument("--queries", type=int, default=1000, help="queries per kind and phase (default 1000)")
    parser.add_argument(
        "--pg", metavar="URL", help="PostgreSQL admin URL, e.g. postgresql://postgres@127.0.0.1/postgres"
    )
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--rebuild", action="store_true", help="regenerate even if cached")
    parser.add_argument("--drop-pg", action="store_true", help="drop the cached PostgreSQL database afterwards")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument(
        "--exchange-records", action="store_true", help="records of an exchange's real size (~8.1 KB of JSON)"
    )
    args = parser.parse_args()
    if args.records < SEED_RECORDS:
        parser.error(f"--records must be at least {SEED_RECORDS}")
    result = run(
        args.records,
        args.pg,
        queries=args.queries,
        sqlite=not args.skip_sqlite,
        rebuild=args.rebuild,
        exchange_records=args.exchange_records,
    )
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.pg and args.drop_pg:
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{pg_name(args.records)}" WITH (FORCE)')


if __name__ == "__main__":
    main()
