"""Batch timestamping (security_server.messagelog.timestamper) against the real TSA (catalog.tsa) on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from asn1crypto import cms, core, parser
from asn1crypto import x509 as a_x509
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from bridge.errors import TimestampingFailed
from bridge.messagelog import merkle_proof, verify_proof
from bridge.pki.tsp import TimeStampRespAsn1, verify_timestamp_token
from catalog.tsa import TimestampAuthority
from security_server.messagelog import Batch
from security_server.messagelog.store import SqlLogStore
from security_server.messagelog.timestamper import Timestamper
from security_server.messagelog.writer import MessageLog
from tests.security_server.test_logstore import SERVER, make_record
from tests.support.pki import Pki, build_pki

OPENSSL = "/usr/bin/openssl"
#: Records are made at 10:00:ii on 1 May 2024; the injected clock starts just after.
START = dt.datetime(2024, 5, 1, 10, 1, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(tmp_path_factory.mktemp("tsa-pki"))


@dataclass
class TsaServer:
    """The federation TSA on a loopback port, with a switch that makes it answer 503 (an outage)."""

    url: str
    cert: x509.Certificate
    down: bool = False
    #: Rewrites each reply on its way (someone between the TSA and the security server).
    tamper: Callable[[bytes], bytes] | None = None


@pytest.fixture
async def tsa(pki: Pki) -> AsyncIterator[TsaServer]:
    authority = TimestampAuthority(pki.tsa_cert, pki.tsa_key, pki.ca.chain)
    state = TsaServer(url="", cert=pki.tsa_cert)

    async def handle(request: web.Request) -> web.StreamResponse:
        if state.down:
            return web.Response(status=503, text="maintenance")
        response = await authority.handle(request)
        if state.tamper is not None:
            assert isinstance(response.body, bytes)
            response.body = state.tamper(response.body)
        return response

    app = web.Application()
    app.router.add_post("/tsa", handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    state.url = str(server.make_url("/tsa"))
    try:
        yield state
    finally:
        await server.close()


@pytest.fixture
def store(db_url: str, tmp_path: Path) -> Iterator[SqlLogStore]:
    s = SqlLogStore(db_url, tmp_path / "log")
    try:
        yield s
    finally:
        s.close()


class Clock:
    """An injected wall clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now


async def append_many(log: MessageLog, first: int, count: int) -> None:
    await asyncio.gather(*(log.append(make_record(i), {}) for i in range(first, first + count)))


def assert_batches_cover(store: SqlLogStore, batches: list[Batch], head: int) -> None:
    """Every record 1..head is in exactly one of ``batches``, which are contiguous and stored as such."""
    assert [(b.first_seq, b.last_seq) for b in batches] == sorted((b.first_seq, b.last_seq) for b in batches)
    assert batches[0].first_seq == 1
    assert batches[-1].last_seq == head
    assert all(b.first_seq == a.last_seq + 1 for a, b in itertools.pairwise(batches))
    per_batch: dict[int, int] = {}
    for seq in range(1, head + 1):
        batch = store.batch_of(seq)
        assert batch is not None, f"record {seq} is not timestamped"
        per_batch[batch.id] = per_batch.get(batch.id, 0) + 1
    assert per_batch == {b.id: b.last_seq - b.first_seq + 1 for b in batches}
    assert store.unstamped(10) == []


async def test_batches_are_stamped_once_and_every_record_proves_into_its_token(
    store: SqlLogStore, tsa: TsaServer
) -> None:
    """Batches are stamped exactly once and every record proves into its batch's token.

    10 records with max_batch 4 make batches 1-4, 5-8, 9-10; a second attempt stamps nothing; each token verifies
    over its batch's Merkle root, and each record's Merkle proof leads to that root.
    """
    timestamper = Timestamper(store, lambda: [(tsa.url, tsa.cert)], max_batch=4)
    async with MessageLog(store, server_id=SERVER, timestamper=timestamper) as log:
        await append_many(log, 1, 10)
        batches = await timestamper.stamp_once()
        assert [(b.first_seq, b.last_seq) for b in batches] == [(1, 4), (5, 8), (9, 10)]
        assert await timestamper.stamp_once() == []
    assert_batches_cover(store, batches, 10)
    for batch in batches:
        assert store.batch_of(batch.first_seq) == batch
        gen_time = verify_timestamp_token(batch.token, data_digest=batch.merkle_root, tsa_cert=tsa.cert)
        assert batch.stamped_at == gen_time.isoformat(timespec="microseconds").replace("+00:00", "Z")
        assert batch.tsa_url == tsa.url
        records = store.records(batch.first_seq, batch.last_seq)
        hashes = [bytes.fromhex(r.hash) for r in records]
        for index, record in enumerate(records):
            proof = merkle_proof(hashes, index)
            assert verify_proof(bytes.fromhex(record.hash), proof) == batch.merkle_root
    status = timestamper.status()
    assert (status.last_error, status.stamped_through, status.unstamped) == (None, 10, 0)


async def test_tsa_outage_within_and_beyond_the_grace_period(store: SqlLogStore, tsa: TsaServer) -> None:
    """A TSA outage is survived within the grace period, refused beyond it, and healed when the TSA returns.

    TSA down: appends go on and check() passes within the grace; past it check() raises TimestampingFailed.
    TSA back: one attempt stamps the whole backlog in max_batch batches and check() passes again.
    """
    clock = Clock()
    timestamper = Timestamper(store, lambda: [(tsa.url, tsa.cert)], max_batch=3, grace_s=3600, clock=clock)
    async with MessageLog(store, server_id=SERVER, timestamper=timestamper) as log:
        await append_many(log, 1, 2)
        assert len(await timestamper.stamp_once()) == 1
        tsa.down = True
        await append_many(log, 3, 5)  # records 3..7, made at 10:00:03..07
        assert await timestamper.stamp_once() == []
        status = timestamper.status()
        assert (status.stamped_through, status.unstamped) == (2, 5)
        assert status.last_error is not None and "503" in status.last_error
        log.check()  # within the grace period exchanges continue
        clock.now = dt.datetime(2024, 5, 1, 11, 0, 3, tzinfo=dt.UTC)  # record 3 waited exactly the grace period
        log.check()
        clock.now += dt.timedelta(seconds=1)
        with pytest.raises(TimestampingFailed):
            log.check()
        assert timestamper.status().grace_exceeded is True
        assert await timestamper.stamp_once() == []  # still down: still refusing
        with pytest.raises(TimestampingFailed):
            log.check()
        await append_many(log, 8, 2)  # a response to a delivered request is still logged
        tsa.down = False
        backlog = await timestamper.stamp_once()
        assert [(b.first_seq, b.last_seq) for b in backlog] == [(3, 5), (6, 8), (9, 9)]
        log.check()
        status = timestamper.status()
        assert (status.last_error, status.unstamped, status.grace_exceeded) == (None, 0, False)
    assert_batches_cover(store, [store.batch_of(1), *backlog], 9)  # type: ignore[list-item]


async def test_the_first_tsa_that_gives_a_valid_token_is_used(store: SqlLogStore, tsa: TsaServer, pki: Pki) -> None:
    """A TSA whose token does not verify against its configured certificate is skipped for the next one."""
    wrong_cert = pki.ocsp_cert  # not a TSA certificate: the token must not be accepted under it
    timestamper = Timestamper(store, lambda: [(tsa.url + "?first", wrong_cert), (tsa.url, tsa.cert)])
    async with MessageLog(store, server_id=SERVER, timestamper=timestamper) as log:
        await append_many(log, 1, 3)
        (batch,) = await timestamper.stamp_once()
    assert (batch.first_seq, batch.last_seq, batch.tsa_url) == (1, 3, tsa.url)


async def test_no_tsa_configured_keeps_records_unstamped(store: SqlLogStore) -> None:
    """Without any TSA nothing is stamped and the reason is kept for the admin API."""
    timestamper = Timestamper(store, lambda: [], clock=Clock())
    async with MessageLog(store, server_id=SERVER, timestamper=timestamper) as log:
        await append_many(log, 1, 2)
        assert await timestamper.stamp_once() == []
    status = timestamper.status()
    assert (status.last_error, status.unstamped, status.oldest_unstamped_age_s) == (
        "no timestamp authority is configured",
        2,
        59.0,
    )


async def test_size_trigger_wakes_the_running_timestamper(store: SqlLogStore, tsa: TsaServer) -> None:
    """With an hour-long interval, reaching size_trigger unstamped records makes run() stamp them."""
    stamped = asyncio.Event()
    loop = asyncio.get_running_loop()
    add_batch = store.add_batch

    def observed_add_batch(*args: object) -> Batch:
        batch = add_batch(*args)  # type: ignore[arg-type]
        loop.call_soon_threadsafe(stamped.set)
        return batch

    store.add_batch = observed_add_batch  # type: ignore[method-assign,assignment]
    timestamper = Timestamper(store, lambda: [(tsa.url, tsa.cert)], interval_s=3600, size_trigger=5)
    async with MessageLog(store, server_id=SERVER, timestamper=timestamper) as log:
        runner = timestamper.running()
        await runner.__anext__()
        try:
            await append_many(log, 1, 5)
            await asyncio.wait_for(stamped.wait(), timeout=10)
        finally:
            with pytest.raises(StopAsyncIteration):
                await runner.__anext__()
    batch = store.batch_of(5)
    assert batch is not None and (batch.first_seq, batch.last_seq) == (1, 5)


async def test_openssl_verifies_a_batch_token(store: SqlLogStore, tsa: TsaServer, pki: Pki, tmp_path: Path) -> None:
    """`openssl ts -verify -digest <root> -token_in` accepts a batch's token: what an auditor runs."""
    timestamper = Timestamper(store, lambda: [(tsa.url, tsa.cert)])
    async with MessageLog(store, server_id=SERVER, timestamper=timestamper) as log:
        await append_many(log, 1, 3)
        (batch,) = await timestamper.stamp_once()
    token = tmp_path / "token.der"
    token.write_bytes(batch.token)
    root = pki.pem("root.pem", pki.ca.root_cert)
    untrusted = pki.pem("tsa-and-issuing.pem", pki.tsa_cert, pki.ca.issuing_cert)
    args = ["ts", "-verify", "-digest", batch.merkle_root.hex(), "-in", str(token), "-token_in"]
    args += ["-CAfile", str(root), "-untrusted", str(untrusted)]
    proc = await asyncio.create_subprocess_exec(
        OPENSSL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert (proc.returncode, out.decode().strip()) == (0, "Verification: OK"), err.decode()
    # And a different digest is refused, so the check above can fail.
    args[3] = bytes(32).hex()
    proc = await asyncio.create_subprocess_exec(
        OPENSSL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode != 0


def _reply_with_token(reply: bytes, token: bytes) -> bytes:
    """``reply`` (a TimeStampResp) carrying ``token`` instead of its own."""
    status = TimeStampRespAsn1.load(reply)["status"].dump()
    return bytes(parser.emit(0, 1, 16, status + token))


def _token_of(reply: bytes) -> bytes:
    return bytes(TimeStampRespAsn1.load(reply)["time_stamp_token"].dump())


def _add_certificate(cert: x509.Certificate) -> Callable[[bytes], bytes]:
    def tamper(reply: bytes) -> bytes:
        content_info = cms.ContentInfo.load(_token_of(reply))
        extra = a_x509.Certificate.load(cert.public_bytes(Encoding.DER))
        content_info["content"]["certificates"] = cms.CertificateSet(
            [cms.CertificateChoices(name="certificate", value=extra)]
        )
        return _reply_with_token(reply, bytes(content_info.dump(force=True)))

    return tamper


def _longer_length(reply: bytes) -> bytes:
    token = _token_of(reply)
    assert token[:2] == b"\x30\x82"
    return _reply_with_token(reply, b"\x30\x83\x00" + token[2:])


async def test_a_token_changed_on_the_way_is_not_stored(store: SqlLogStore, tsa: TsaServer, pki: Pki) -> None:
    """Changes outside what the TSA signs (an added certificate, a non-DER length) are refused before storing.

    The signature still verifies over such a token, but an auditor would refuse it (check_token_envelope): stored,
    it would leave its batch without usable evidence.  The records stay unstamped and the error shows in status;
    once replies arrive intact, the same records are stamped.  The timestamper asks for no certificates.
    """
    timestamper = Timestamper(store, lambda: [(tsa.url, tsa.cert)])
    async with MessageLog(store, server_id=SERVER, timestamper=timestamper) as log:
        await append_many(log, 1, 3)
        for tamper, reason in (
            (_add_certificate(pki.ocsp_cert), "not among the known ones"),
            (_longer_length, "not DER"),
        ):
            tsa.tamper = tamper
            assert await timestamper.stamp_once() == []
            status = timestamper.status()
            assert status.last_error is not None and reason in status.last_error
            assert (status.stamped_through, status.unstamped) == (0, 3)
        tsa.tamper = None
        (batch,) = await timestamper.stamp_once()
    assert (batch.first_seq, batch.last_seq) == (1, 3)
    assert timestamper.status().last_error is None
    # Asked without certificates (the TSA honours certReq): the token carries none.
    assert isinstance(cms.ContentInfo.load(batch.token)["content"]["certificates"], core.Void)


async def test_a_tsa_sending_its_chain_unasked_is_accepted_when_the_chain_is_known(
    store: SqlLogStore, tsa: TsaServer, pki: Pki
) -> None:
    """A TSA that includes CA certificates although asked for none: accepted if global configuration approves them.

    Those are the certificates an auditor's evidence carries (certs/), so the stored token passes the audit too.
    """
    issuing = pki.ca.issuing_cert.public_bytes(Encoding.DER)
    tsa.tamper = _add_certificate(pki.ca.issuing_cert)
    unknowing = Timestamper(store, lambda: [(tsa.url, tsa.cert)])
    knowing = Timestamper(store, lambda: [(tsa.url, tsa.cert)], ca_certs=lambda: {issuing})
    async with MessageLog(store, server_id=SERVER, timestamper=knowing) as log:
        await append_many(log, 1, 2)
        assert await unknowing.stamp_once() == []
        (batch,) = await knowing.stamp_once()
    assert (batch.first_seq, batch.last_seq) == (1, 2)
    embedded = [c.chosen.dump() for c in cms.ContentInfo.load(batch.token)["content"]["certificates"]]
    assert embedded == [issuing]
