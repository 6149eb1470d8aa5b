"""Our own certificates' OCSP responses (security_server.ocsp_cache) against the real responder on 127.0.0.1.

The responder (catalog.ocsp.OcspResponder) answers from an in-memory record store; both it and the cache read the
same injected clock, so "time passes" is an assignment, never a sleep.  The server is stopped by its fixture.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509

from bridge.errors import CertificateInvalid, CertificateRevoked
from bridge.globalconf import GlobalConf
from catalog.certregistry import CertKind, CertRecord
from catalog.ocsp import OcspResponder
from security_server.certcheck import CertificateChecker
from security_server.ocsp_cache import OwnOcspResponses
from tests.security_server.test_certcheck import FRESHNESS_S, Federation, build_federation, der
from tests.support.pki import MEMBER, SERVER

# The responder's nextUpdate is an hour away, so the federation's 600 s freshness limit is what bounds a response:
# usable for 600 s after thisUpdate, renewed after 300 s (refresh_fraction 0.5).
STALE = dt.timedelta(seconds=FRESHNESS_S)
REFRESH = STALE / 2


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    return build_federation(tmp_path_factory.mktemp("ocspcache"))


@dataclass
class Clock:
    now: dt.datetime

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, delta: dt.timedelta) -> None:
        self.now += delta


@dataclass
class Responder:
    """The running responder, its records and a count of the lookups it made (one per request answered)."""

    server: TestServer
    url: str
    records: dict[int, CertRecord]
    lookups: list[int] = field(default_factory=list)
    down: bool = False


def record(cert: x509.Certificate, *, revoked_at: dt.datetime | None = None) -> CertRecord:
    return CertRecord(
        cert.serial_number,
        CertKind.AUTH,
        cert.subject.rfc4514_string(),
        der(cert),
        cert.not_valid_after_utc,
        revoked_at,
    )


@pytest.fixture
def clock(fed: Federation) -> Clock:
    return Clock(fed.now)


@pytest.fixture
async def responder(fed: Federation, clock: Clock) -> AsyncIterator[Responder]:
    """The federation's OCSP responder on 127.0.0.1, knowing ss1's auth and MEMBER's sign certificates."""
    records = {c.serial_number: record(c) for c in (fed.pki.auth_cert, fed.pki.sign_cert)}
    state: Responder

    async def lookup(serial: int) -> CertRecord | None:
        state.lookups.append(serial)
        return state.records.get(serial)

    ocsp = OcspResponder(fed.pki.ca.issuing_cert, fed.pki.ocsp_cert, fed.pki.ocsp_key, lookup, clock=clock)

    async def handle(request: web.Request) -> web.StreamResponse:
        if state.down:
            return web.Response(status=503)
        return await ocsp.handle(request)

    app = web.Application()
    app.router.add_post("/ocsp", handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    state = Responder(server, str(server.make_url("/ocsp")), records)
    try:
        yield state
    finally:
        await server.close()


def make_cache(fed: Federation, responder: Responder, clock: Clock) -> tuple[OwnOcspResponses, GlobalConf]:
    conf = fed.conf(cas=(fed.approved_ca(responder.url),))
    issuer = fed.pki.ca.issuing_cert
    certs = {"auth": (fed.pki.auth_cert, issuer), "sign": (fed.pki.sign_cert, issuer)}
    return OwnOcspResponses(lambda: conf, certs, timeout_s=5, clock=clock), conf


async def test_fetches_verifies_and_serves_responses(fed: Federation, responder: Responder, clock: Clock) -> None:
    """refresh() fetches one response per certificate; the stapled bytes pass the receiver's CertificateChecker."""
    cache, conf = make_cache(fed, responder, clock)
    assert await cache.refresh() == ["auth", "sign"]
    assert responder.lookups == [fed.pki.auth_cert.serial_number, fed.pki.sign_cert.serial_number]
    checker = CertificateChecker(lambda: conf)
    assert checker.check_auth_cert(der(fed.pki.auth_cert), cache.response_for("auth"), clock.now) == SERVER
    assert checker.check_sign_cert(der(fed.pki.sign_cert), cache.response_for("sign"), clock.now) == MEMBER
    status = cache.status()
    assert (status["auth"]["fresh"], status["auth"]["url"], status["auth"]["last_error"]) == (True, responder.url, None)


async def test_serving_is_cached_and_refresh_waits_until_due(
    fed: Federation, responder: Responder, clock: Clock
) -> None:
    """Between refreshes response_for never calls the responder, and refresh() before the due time fetches nothing."""
    cache, _ = make_cache(fed, responder, clock)
    await cache.refresh()
    first = cache.response_for("auth")
    clock.advance(REFRESH - dt.timedelta(seconds=1))
    assert await cache.refresh() == []
    assert (cache.response_for("auth"), len(responder.lookups)) == (first, 2)
    assert cache.next_due() == fed.now + REFRESH


async def test_refreshes_ahead_of_expiry(fed: Federation, responder: Responder, clock: Clock) -> None:
    """Half-way through a response's usable life a new one is fetched, well before the old one goes stale."""
    cache, _ = make_cache(fed, responder, clock)
    await cache.refresh()
    first = cache.response_for("auth")
    clock.advance(REFRESH + dt.timedelta(seconds=1))
    assert await cache.refresh() == ["auth", "sign"]
    second = cache.response_for("auth")
    assert second != first
    assert cache.status()["auth"]["this_update"] == (fed.now + REFRESH + dt.timedelta(seconds=1)).isoformat().replace(
        "+00:00", "Z"
    )


async def test_keeps_last_good_response_while_responder_is_down(
    fed: Federation, responder: Responder, clock: Clock
) -> None:
    """A failing responder leaves the last good response in use (and the error in status) while it is fresh."""
    cache, _ = make_cache(fed, responder, clock)
    await cache.refresh()
    good = cache.response_for("auth")
    responder.down = True
    clock.advance(REFRESH + dt.timedelta(seconds=1))
    assert await cache.refresh() == []
    assert cache.response_for("auth") == good
    error = cache.status()["auth"]["last_error"]
    assert error["code"] == "Server.NetworkError"


async def test_unreachable_responder_then_stale_raises(fed: Federation, responder: Responder, clock: Clock) -> None:
    """With the responder gone, the last good copy serves until it is no longer fresh; then response_for raises."""
    cache, _ = make_cache(fed, responder, clock)
    await cache.refresh()
    good = cache.response_for("auth")
    await responder.server.close()
    clock.advance(STALE - dt.timedelta(seconds=1))
    assert await cache.refresh() == []
    assert cache.response_for("auth") == good
    clock.advance(dt.timedelta(seconds=1))
    with pytest.raises(CertificateInvalid, match="no longer fresh"):
        cache.response_for("auth")
    assert cache.status()["auth"]["fresh"] is False


async def test_revocation_drops_the_cached_response(fed: Federation, responder: Responder, clock: Clock) -> None:
    """When the CA says our certificate is revoked, the still-fresh GOOD copy is dropped at once (fail closed).

    The fault then says so specifically (CertificateRevoked), and stays: a revoked certificate never comes back.
    """
    cache, _ = make_cache(fed, responder, clock)
    await cache.refresh()
    serial = fed.pki.auth_cert.serial_number
    responder.records[serial] = record(fed.pki.auth_cert, revoked_at=clock.now)
    clock.advance(dt.timedelta(seconds=10))
    assert await cache.refresh(force=True) == ["sign"]
    with pytest.raises(CertificateRevoked, match="revoked"):
        cache.response_for("auth")
    assert cache.status()["auth"]["last_error"]["code"] == "Server.CertificateRevoked"
    assert cache.response_for("sign")  # the other certificate is unaffected


async def test_nothing_fetched_yet_raises(fed: Federation, responder: Responder, clock: Clock) -> None:
    """Before the first successful refresh there is nothing to staple, and the proxy must not send unstapled."""
    cache, _ = make_cache(fed, responder, clock)
    with pytest.raises(CertificateInvalid, match="no good OCSP response"):
        cache.response_for("auth")
    with pytest.raises(CertificateInvalid, match="no certificate labelled"):
        cache.response_for("tls")


async def test_certificate_of_an_unapproved_ca_is_not_fetched(
    fed: Federation, responder: Responder, clock: Clock
) -> None:
    """A certificate whose issuer global configuration does not approve gets no response and a recorded error."""
    conf = fed.conf(cas=(fed.approved_ca(responder.url),))
    cache = OwnOcspResponses(lambda: conf, {"auth": (fed.other.auth_cert, fed.other.ca.issuing_cert)}, clock=clock)
    assert await cache.refresh() == []
    assert (responder.lookups, cache.status()["auth"]["last_error"]["code"]) == ([], "Server.InvalidCertificate")
