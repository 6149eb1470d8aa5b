"""How fast the message log appends: records/s through MessageLog (group commit) on SQLite and PostgreSQL.

Usage::

    .venv/bin/python benchmarks/logappend.py [-n 100000] [-k 200] [--bodies stored|none] [--pg URL]

``-k`` producers (think: concurrent exchanges) each append their share of ``-n`` records and wait for each to be
durable before the next, as a proxy does.  Records are realistic: three parts (SOAP envelope, two attachments), a
4.6 KB base64 signature and two ~1.2 KB base64 OCSP responses (the sizes a security server logs for an exchange
with this project's certificates: the detached XML-DSig carries the signer's certificate and its issuing CA's,
and one OCSP response is stapled per certificate), a userId and two declared persons.  With ``--bodies stored`` (the
default) every part's bytes are stored too (three unique ~1 KB bodies per record); ``none`` logs digests only.
Records and their spools are built before the clock starts, so the figure is the log's own cost.

SQLite runs on a temporary file (``--dir`` to choose the file system); with ``--pg URL`` (an admin connection,
e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``) the benchmark also runs on PostgreSQL in a database it
creates and drops.  Prints records/s and the number of store transactions (groups).

Timestamping runs as on a security server: a :class:`Timestamper` (size trigger 10,000 records) stamps batches
during the run against a real RFC 3161 TSA (``catalog.tsa``) on a loopback port, which counts the requests it
gets; after the timed part the rest is stamped, and the run prints the TSA calls against the batches stored.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import gc
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web

from bridge.messagelog import LogPart, LogRecord, canonical, utc_now_text, verify_chain
from bridge.pki.keys import generate_private_key
from bridge.pki.token import SoftwareToken
from bridge.spool import Spool
from catalog.ca import CertificateAuthority
from catalog.tsa import TimestampAuthority
from security_server.messagelog.store import SqlLogStore
from security_server.messagelog.timestamper import Timestamper
from security_server.messagelog.writer import MessageLog

SERVER = "SERVER:AZ/GOV/1400057421/ss1"
PART_SIZES = (1200, 900, 1000)
SIGNATURE_BYTES = 3475
OCSP_BYTES = 910


def build(n: int, stored: bool) -> list[tuple[LogRecord, dict[str, Spool]]]:
    """``n`` distinct records with their bodies (built before timing)."""
    # Sizes as logged by the benchmark bed's security servers (ss-a's REST exchange records, 2026-11-27): a
    # 3,475-byte signature document and two 910-byte OCSP responses, base64 in the record.
    signature = base64.b64encode(os.urandom(SIGNATURE_BYTES)).decode()
    ocsp = tuple(base64.b64encode(os.urandom(OCSP_BYTES)).decode() for _ in range(2))
    template = LogRecord(
        at="",
        server=SERVER,
        side="consumer",
        direction="request",
        request_id="",
        message_id="",
        protocol="soap-4.0",
        client="SUBSYSTEM:AZ/COM/9900001111/loans",
        service="SERVICE:AZ/GOV/1400057421/population/getPerson/v1",
        issue="LOAN-2024-0042",
        peer="SERVER:AZ/GOV/1400057421/ss1",
        signature=signature,
        ocsp=ocsp,
        decision={"allowed": True, "rule": "access-right:population/getPerson", "purpose": "loan-application"},
        timings_ms={"verify": 1.2, "sign": 0.8},
    )
    out = []
    filler = os.urandom(max(PART_SIZES))
    for i in range(n):
        spools: dict[str, Spool] = {}
        parts = []
        for p, size in enumerate(PART_SIZES):
            data = f"<part {p} of message {i}/>".encode() + filler[: size - 30]
            spool = Spool.from_bytes(data)
            digest = spool.digest.hex()
            parts.append(LogPart(f"part{p}", "text/xml" if p == 0 else "application/pdf", len(data), digest, stored))
            if stored:
                spools[digest] = spool
        record = dataclasses.replace(
            template,
            at=utc_now_text(),
            request_id=f"req-{i}-{uuid.uuid4().hex[:8]}",
            message_id=f"msg-{i}",
            user_id=f"AZ{i % 50_000:07d}",
            persons=(f"PIN{i % 70_000:07d}", f"PIN{(i * 7) % 70_000:07d}"),
            parts=tuple(parts),
        )
        out.append((record, spools))
    return out


def disk_writes() -> int | None:
    """Bytes this process has caused to be written to storage (Linux ``/proc/self/io``), or None elsewhere."""
    try:
        with open("/proc/self/io") as f:
            line = next((line for line in f if line.startswith("write_bytes:")), None)
            return None if line is None else int(line.split(":", 1)[1])
    except (OSError, ValueError):
        return None


class CountingTsa:
    """The federation's RFC 3161 TSA on a loopback port, counting the requests it answers."""

    def __init__(self, directory: Path) -> None:
        token = SoftwareToken.init(directory / "tsa-token", "bench-only-pin")  # a throwaway test CA
        ca = CertificateAuthority.create(token, "AZ", "Körpü benchmark CA", ocsp_url=None)
        key = generate_private_key()
        self.cert = ca.issue_tsa_cert(key.public_key())
        self._authority = TimestampAuthority(self.cert, key, ca.chain)
        self.calls = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        return await self._authority.handle(request)

    async def __aenter__(self) -> CountingTsa:
        app = web.Application()
        app.router.add_post("/tsa", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/tsa"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def run(url: str, body_dir: Path, items: list[tuple[LogRecord, dict[str, Spool]]], k: int) -> None:
    """Append ``items`` with ``k`` producers, timestamping as a server does, and print the rate and TSA calls."""
    store = SqlLogStore(url, body_dir)
    async with CountingTsa(body_dir) as tsa:
        timestamper = Timestamper(store, lambda: [(tsa.url, tsa.cert)], interval_s=3600)
        log = MessageLog(store, server_id=SERVER, timestamper=timestamper)
        await log.start()
        stamping = asyncio.create_task(timestamper.run())
        shares = [items[i::k] for i in range(k)]

        async def producer(share: list[tuple[LogRecord, dict[str, Spool]]]) -> None:
            for record, bodies in share:
                await log.append(record, bodies)

        written = disk_writes()
        started = time.perf_counter()
        await asyncio.gather(*(producer(s) for s in shares))
        elapsed = time.perf_counter() - started
        written = None if written is None or (after := disk_writes()) is None else after - written
        calls_during = tsa.calls
        await log.stop()
        stamping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stamping
        await timestamper.stamp_once()  # the rest, after the clock stopped
    n = len(items)
    print(
        f"  {n} records in {elapsed:.2f} s = {n / elapsed:,.0f} records/s; "
        f"{log.transactions} store transactions ({n / log.transactions:.0f} records each)"
    )
    if written is not None and url.startswith("sqlite"):
        # Every byte SQLite and the body store write is this process's: the WAL, the checkpoints' copies of it
        # into the database, body files.  (PostgreSQL writes in its own processes.)
        print(f"  written to storage: {written / n / 1024:.1f} KiB per record, {written / elapsed / 1e6:.0f} MB/s")
    head_seq, _ = store.head()
    # The batches, walked from the first record: each must start right after the one before.
    batches, seq = 0, 1
    while (batch := store.batch_of(seq)) is not None:
        assert batch.first_seq == seq, (batch, seq)
        batches, seq = batches + 1, batch.last_seq + 1
    print(
        f"  timestamping: {tsa.calls} TSA calls ({calls_during} during the timed run) for {batches} batches "
        f"covering all {head_seq} records"
    )
    # Sanity: everything is there, stamped, and the chain verifies (not timed).
    assert store.unstamped(1) == [], "records left unstamped"
    sample = store.records(1, min(head_seq, 5000))
    verify_chain(sample)
    assert head_seq == n, (head_seq, n)
    store.close()


def main() -> None:
    """Parse arguments and run the benchmark on SQLite and, with --pg, PostgreSQL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000, help="records to append (default 100000)")
    parser.add_argument("-k", type=int, default=200, help="concurrent producers (default 200)")
    parser.add_argument("--bodies", choices=("stored", "none"), default="stored")
    parser.add_argument("--pg", metavar="URL", help="PostgreSQL admin URL; also benchmark PostgreSQL")
    parser.add_argument("--dir", type=Path, default=None, help="where the SQLite file and bodies go")
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()

    print(f"building {args.n} records (bodies: {args.bodies}) ...")
    items = build(args.n, args.bodies == "stored")
    # The prebuilt records are the benchmark's, not the log's: keep the collector from rescanning them all run long.
    gc.collect()
    gc.freeze()
    size = len(canonical(items[0][0].to_json()))
    print(f"  records of ~{size:,} B of JSON, {len(items[0][1])} stored bodies each, {args.k} producers")

    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory(prefix="korpu-bench-", dir=args.dir) as tmp:
            print("SQLite (WAL, synchronous=FULL):")
            asyncio.run(run(f"sqlite:///{tmp}/log.db", Path(tmp), items, args.k))
    if args.pg:
        name = f"korpu_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            with tempfile.TemporaryDirectory(prefix="korpu-bench-", dir=args.dir) as tmp:
                print("PostgreSQL:")
                asyncio.run(run(args.pg.rsplit("/", 1)[0] + "/" + name, Path(tmp), items, args.k))
        finally:
            with psycopg.connect(args.pg, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
