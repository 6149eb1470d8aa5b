"""The OCSP responder (catalog.ocsp) and the OCSP client verification (bridge.pki.ocsp), with openssl as referee."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer
from asn1crypto import ocsp as a_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from bridge.errors import CertificateInvalid, CertificateRevoked
from bridge.pki.keys import generate_private_key
from bridge.pki.ocsp import (
    RevocationStatus,
    issuer_key_hash,
    make_ocsp_request,
    request_nonce,
    require_good,
    verify_ocsp_response,
)
from catalog.certregistry import CertKind, CertRecord
from catalog.ocsp import MAX_REQUEST_SIZE, OcspResponder, build_ocsp_response
from tests.catalog.test_api import chunked, handler_started
from tests.support.pki import Pki, build_pki, custom_leaf

OPENSSL = "/usr/bin/openssl"
MAX_AGE = dt.timedelta(minutes=30)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(tmp_path_factory.mktemp("ocsp"))


def record(cert: x509.Certificate, *, revoked_at: dt.datetime | None = None, reason: str | None = None) -> CertRecord:
    return CertRecord(
        serial=cert.serial_number,
        kind=CertKind.AUTH,
        subject=cert.subject.rfc4514_string(),
        der=cert.public_bytes(serialization.Encoding.DER),
        not_after=cert.not_valid_after_utc,
        revoked_at=revoked_at,
        revocation_reason=reason,
    )


class MemoryStore:
    """An in-memory stand-in for the catalog store's certificate records."""

    def __init__(self) -> None:
        self.records: dict[int, CertRecord] = {}
        self.lookups: list[int] = []

    async def lookup(self, serial: int) -> CertRecord | None:
        self.lookups.append(serial)
        return self.records.get(serial)


@pytest.fixture
async def served(pki: Pki) -> AsyncIterator[tuple[TestServer, MemoryStore]]:
    """The responder on a loopback port, answering from a MemoryStore that knows the auth certificate."""
    store = MemoryStore()
    store.records[pki.auth_cert.serial_number] = record(pki.auth_cert)
    responder = OcspResponder(pki.ca.issuing_cert, pki.ocsp_cert, pki.ocsp_key, store.lookup)
    app = web.Application()
    app.add_routes(responder.routes("/ocsp"))
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield server, store
    finally:
        await server.close()


async def run_openssl(*args: str | Path) -> tuple[int, str, str]:
    """Run openssl without blocking the event loop (the responder under test runs on the same loop)."""
    proc = await asyncio.create_subprocess_exec(
        OPENSSL, *map(str, args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def respond(pki: Pki, request: bytes, rec: CertRecord | None, now: dt.datetime | None = None) -> bytes:
    return build_ocsp_response(
        request,
        issuer_cert=pki.ca.issuing_cert,
        responder_cert=pki.ocsp_cert,
        responder_key=pki.ocsp_key,
        lookup_result=rec,
        now=now or dt.datetime.now(dt.UTC),
    )


# openssl as the client -------------------------------------------------------------------------------------------


async def test_openssl_ocsp_good_then_revoked(pki: Pki, served: tuple[TestServer, MemoryStore]) -> None:
    """`openssl ocsp` verifies our signed answer: good, then revoked once the store records a revocation."""
    server, store = served
    files = dict(
        issuer=pki.pem("issuing.pem", pki.ca.issuing_cert),
        cert=pki.pem("auth.pem", pki.auth_cert),
        root=pki.pem("root.pem", pki.ca.root_cert),
    )
    url = str(server.make_url("/ocsp"))
    args: list[str | Path] = ["ocsp", "-issuer", files["issuer"], "-cert", files["cert"], "-url", url]
    args += ["-CAfile", files["root"]]
    args += ["-verify_other", files["issuer"], "-resp_text"]
    code, out, err = await run_openssl(*args)
    assert code == 0, err
    assert "Response verify OK" in err
    assert f"{files['cert']}: good" in out
    assert "OCSP Nonce" in out  # echoed, otherwise openssl would warn "WARNING: no nonce in response"

    revoked_at = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    store.records[pki.auth_cert.serial_number] = record(pki.auth_cert, revoked_at=revoked_at, reason="keyCompromise")
    code, out, err = await run_openssl(*args)
    assert code == 0, err
    assert "Response verify OK" in err
    assert f"{files['cert']}: revoked" in out
    assert "Reason: keyCompromise" in out
    assert "Revocation Time: Jan  2 03:04:05 2025 GMT" in out


async def test_get_form(pki: Pki, served: tuple[TestServer, MemoryStore]) -> None:
    """GET /ocsp/{url-encoded base64 request} (RFC 6960 Appendix A.1) gets the same kind of answer as POST."""
    server, _ = served
    request = make_ocsp_request(pki.auth_cert, pki.ca.issuing_cert)
    encoded = base64.b64encode(request).decode().replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    async with ClientSession() as session, session.get(str(server.make_url("/ocsp/")) + encoded) as resp:
        assert (resp.status, resp.content_type) == (200, "application/ocsp-response")
        der = await resp.read()
    status = verify_ocsp_response(
        der,
        pki.auth_cert,
        pki.ca.issuing_cert,
        now=dt.datetime.now(dt.UTC),
        max_age=MAX_AGE,
        nonce=request_nonce(request),
    )
    assert status.status is RevocationStatus.GOOD


async def test_post_garbage_gets_malformed_request(served: tuple[TestServer, MemoryStore]) -> None:
    """A body that is not an OCSP request gets HTTP 200 with OCSP status malformedRequest, not a server error."""
    server, store = served
    async with ClientSession() as session:
        async with session.post(
            server.make_url("/ocsp"), data=b"\x30\x03\x02\x01", headers={"Content-Type": "application/ocsp-request"}
        ) as resp:
            assert resp.status == 200
            der = await resp.read()
        async with session.post(server.make_url("/ocsp"), data=b"\x30" * 100_000) as resp:
            oversized = await resp.read()
    assert ocsp.load_der_ocsp_response(der).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert ocsp.load_der_ocsp_response(oversized).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert store.lookups == []


# The pure responder ----------------------------------------------------------------------------------------------


def test_other_issuer_is_unauthorized(pki: Pki, tmp_path: Path) -> None:
    """A request about a certificate of another CA is answered `unauthorized` (RFC 6960 §2.3)."""
    other = build_pki(tmp_path / "other")
    request = make_ocsp_request(other.auth_cert, other.ca.issuing_cert)
    response = ocsp.load_der_ocsp_response(respond(pki, request, None))
    assert response.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_unknown_serial_is_unknown(pki: Pki) -> None:
    """A serial our issuer never issued gets a signed, verifiable `unknown`; require_good refuses it."""
    request = make_ocsp_request(pki.sign_cert, pki.ca.issuing_cert)
    der = respond(pki, request, None)
    now = dt.datetime.now(dt.UTC)
    status = verify_ocsp_response(der, pki.sign_cert, pki.ca.issuing_cert, now=now, max_age=MAX_AGE)
    assert status.status is RevocationStatus.UNKNOWN
    with pytest.raises(CertificateInvalid, match="does not know"):
        require_good(der, pki.sign_cert, pki.ca.issuing_cert, now=now, max_age=MAX_AGE)


def test_sha256_cert_id_and_no_nonce(pki: Pki) -> None:
    """A SHA-256 CertID without nonce is answered with a SHA-256 CertID and no nonce extension."""
    request = make_ocsp_request(pki.auth_cert, pki.ca.issuing_cert, nonce=False, hash_algorithm=hashes.SHA256())
    response = ocsp.load_der_ocsp_response(respond(pki, request, record(pki.auth_cert)))
    assert response.hash_algorithm.name == "sha256"
    assert list(response.extensions) == []
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD


def test_response_fields(pki: Pki) -> None:
    """The thisUpdate is now, nextUpdate an hour later, the responder certificate is included, the nonce echoed."""
    now = dt.datetime(2030, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    request = make_ocsp_request(pki.auth_cert, pki.ca.issuing_cert)
    response = ocsp.load_der_ocsp_response(respond(pki, request, record(pki.auth_cert), now))
    assert (response.this_update_utc, response.next_update_utc) == (now, now + dt.timedelta(hours=1))
    assert response.certificates == [pki.ocsp_cert]
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == request_nonce(request)


# The client verification -----------------------------------------------------------------------------------------


def test_client_accepts_good_and_reports_revoked(pki: Pki) -> None:
    """verify_ocsp_response returns the revocation time and reason; require_good raises CertificateRevoked."""
    request = make_ocsp_request(pki.auth_cert, pki.ca.issuing_cert)
    revoked_at = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    der = respond(pki, request, record(pki.auth_cert, revoked_at=revoked_at, reason="superseded"))
    now = dt.datetime.now(dt.UTC)
    status = verify_ocsp_response(
        der, pki.auth_cert, pki.ca.issuing_cert, now=now, max_age=MAX_AGE, nonce=request_nonce(request)
    )
    assert (status.status, status.revoked_at, status.reason) == (RevocationStatus.REVOKED, revoked_at, "superseded")
    with pytest.raises(CertificateRevoked):
        require_good(der, pki.auth_cert, pki.ca.issuing_cert, now=now, max_age=MAX_AGE)


def test_client_rejects_unrelated_signer(pki: Pki, tmp_path: Path) -> None:
    """A response signed by a responder key the issuer never certified (another CA's responder) is rejected."""
    other = build_pki(tmp_path / "other")
    request = make_ocsp_request(pki.auth_cert, pki.ca.issuing_cert)
    forged = build_ocsp_response(
        request,
        issuer_cert=pki.ca.issuing_cert,
        responder_cert=other.ocsp_cert,
        responder_key=other.ocsp_key,
        lookup_result=record(pki.auth_cert),
        now=dt.datetime.now(dt.UTC),
    )
    with pytest.raises(CertificateInvalid, match="not issued by the certificate's issuer"):
        verify_ocsp_response(forged, pki.auth_cert, pki.ca.issuing_cert, now=dt.datetime.now(dt.UTC), max_age=MAX_AGE)


def test_client_rejects_tampered_response(pki: Pki) -> None:
    """Changing one byte of the signed response data (here: in the echoed nonce) breaks the signature."""
    request = make_ocsp_request(pki.auth_cert, pki.ca.issuing_cert)
    nonce = request_nonce(request)
    assert nonce is not None
    der = respond(pki, request, record(pki.auth_cert))
    at = der.index(nonce)
    tampered = der[:at] + bytes([der[at] ^ 1]) + der[at + 1 :]
    with pytest.raises(CertificateInvalid, match="signature does not verify"):
        verify_ocsp_response(tampered, pki.auth_cert, pki.ca.issuing_cert, now=dt.datetime.now(dt.UTC), max_age=MAX_AGE)


def _request_for_serial(issuer: x509.Certificate, serial: int) -> bytes:
    """An OCSP request for ``serial`` under ``issuer``, built with asn1crypto (cryptography refuses odd serials)."""
    cert_id = {
        "hash_algorithm": {"algorithm": "sha1"},
        "issuer_name_hash": hashlib.sha1(issuer.subject.public_bytes()).digest(),
        "issuer_key_hash": issuer_key_hash(issuer, hashes.SHA1()),
        "serial_number": serial,
    }
    return bytes(a_ocsp.OCSPRequest({"tbs_request": {"request_list": [{"req_cert": cert_id}]}}).dump())


async def test_serials_no_certificate_can_have_are_malformed_requests(pki: Pki) -> None:
    """A negative serial, or one of thousands of digits, is malformedRequest; a store failure is internalError."""
    looked_up: list[int] = []

    async def lookup(serial: int) -> CertRecord | None:
        looked_up.append(serial)
        str(serial)  # what the catalog's store does with it (and where 4,300 digits and more raised)
        return None

    responder = OcspResponder(pki.ca.issuing_cert, pki.ocsp_cert, pki.ocsp_key, lookup)
    for serial in (-5, 1 << 16_000):
        reply = ocsp.load_der_ocsp_response(await responder.answer(_request_for_serial(pki.ca.issuing_cert, serial)))
        assert reply.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert looked_up == []
    reply = ocsp.load_der_ocsp_response(await responder.answer(_request_for_serial(pki.ca.issuing_cert, 5)))
    assert (reply.response_status, looked_up) == (ocsp.OCSPResponseStatus.SUCCESSFUL, [5])

    async def failing(serial: int) -> CertRecord | None:
        raise OSError("the catalog is unavailable")

    broken = OcspResponder(pki.ca.issuing_cert, pki.ocsp_cert, pki.ocsp_key, failing)
    reply = ocsp.load_der_ocsp_response(await broken.answer(_request_for_serial(pki.ca.issuing_cert, 5)))
    assert reply.response_status is ocsp.OCSPResponseStatus.INTERNAL_ERROR


def test_client_refuses_a_response_it_cannot_check_as_invalid(pki: Pki) -> None:
    """An unknown signature algorithm (cryptography raises UnsupportedAlgorithm) is CertificateInvalid, like any flaw.

    The OCSP cache tries the next responder on CertificateInvalid only; another exception stopped the refresh.
    """
    request = make_ocsp_request(pki.auth_cert, pki.ca.issuing_cert)
    der = respond(pki, request, record(pki.auth_cert))
    ecdsa_sha256 = bytes.fromhex("2a8648ce3d040302")
    at = der.index(ecdsa_sha256)  # the first: BasicOCSPResponse.signatureAlgorithm, after tbsResponseData
    unknown = der[:at] + bytes.fromhex("2a8648ce3d040309") + der[at + len(ecdsa_sha256) :]
    with pytest.raises(CertificateInvalid, match="cannot be checked"):
        verify_ocsp_response(unknown, pki.auth_cert, pki.ca.issuing_cert, now=dt.datetime.now(dt.UTC), max_age=MAX_AGE)


def test_client_rejects_responder_without_ocsp_eku(pki: Pki) -> None:
    """A responder certificate from our issuer but without OCSPSigning (here: the auth cert) is not authorised."""
    request = make_ocsp_request(pki.sign_cert, pki.ca.issuing_cert)
    der = build_ocsp_response(
        request,
        issuer_cert=pki.ca.issuing_cert,
        responder_cert=pki.auth_cert,
        responder_key=pki.auth_key,
        lookup_result=record(pki.sign_cert),
        now=dt.datetime.now(dt.UTC),
    )
    with pytest.raises(CertificateInvalid, match="OCSPSigning"):
        verify_ocsp_response(der, pki.sign_cert, pki.ca.issuing_cert, now=dt.datetime.now(dt.UTC), max_age=MAX_AGE)


def test_client_rejects_stale_response(pki: Pki) -> None:
    """A response older than max_age, or past its nextUpdate, is rejected."""
    request = make_ocsp_request(pki.auth_cert, pki.ca.issuing_cert)
    now = dt.datetime.now(dt.UTC)
    old = respond(pki, request, record(pki.auth_cert), now - dt.timedelta(hours=2))
    with pytest.raises(CertificateInvalid, match="passed its nextUpdate"):
        verify_ocsp_response(old, pki.auth_cert, pki.ca.issuing_cert, now=now, max_age=dt.timedelta(days=1))
    recent = respond(pki, request, record(pki.auth_cert), now - dt.timedelta(minutes=40))
    with pytest.raises(CertificateInvalid, match="maximum age"):
        verify_ocsp_response(recent, pki.auth_cert, pki.ca.issuing_cert, now=now, max_age=MAX_AGE)


def test_client_rejects_response_for_another_cert(pki: Pki) -> None:
    """A valid response about the sign certificate does not vouch for the auth certificate."""
    request = make_ocsp_request(pki.sign_cert, pki.ca.issuing_cert)
    der = respond(pki, request, record(pki.sign_cert))
    with pytest.raises(CertificateInvalid, match="another certificate"):
        verify_ocsp_response(der, pki.auth_cert, pki.ca.issuing_cert, now=dt.datetime.now(dt.UTC), max_age=MAX_AGE)


def test_client_rejects_wrong_nonce_and_unsuccessful(pki: Pki) -> None:
    """A response for another request (nonce differs) and an unsigned error response are both rejected."""
    request = make_ocsp_request(pki.auth_cert, pki.ca.issuing_cert)
    der = respond(pki, request, record(pki.auth_cert))
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(CertificateInvalid, match="nonce"):
        verify_ocsp_response(der, pki.auth_cert, pki.ca.issuing_cert, now=now, max_age=MAX_AGE, nonce=b"x" * 32)
    malformed = respond(pki, b"junk", None)
    with pytest.raises(CertificateInvalid, match="MALFORMED_REQUEST"):
        verify_ocsp_response(malformed, pki.auth_cert, pki.ca.issuing_cert, now=now, max_age=MAX_AGE)


def test_client_rejects_expired_responder_cert(pki: Pki) -> None:
    """A delegated responder certificate outside its validity cannot vouch for anything."""
    key = generate_private_key()
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    expired = custom_leaf(
        pki,
        [(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING]), False)],
        not_before=past - dt.timedelta(days=1),
        not_after=past,
        key=key,
    )
    request = make_ocsp_request(pki.auth_cert, pki.ca.issuing_cert)
    der = build_ocsp_response(
        request,
        issuer_cert=pki.ca.issuing_cert,
        responder_cert=expired,
        responder_key=key,
        lookup_result=record(pki.auth_cert),
        now=dt.datetime.now(dt.UTC),
    )
    with pytest.raises(CertificateInvalid, match="not valid now"):
        verify_ocsp_response(der, pki.auth_cert, pki.ca.issuing_cert, now=dt.datetime.now(dt.UTC), max_age=MAX_AGE)


async def test_chunked_post_is_read_whole(pki: Pki) -> None:
    """A request POSTed chunked in 10-byte pieces is read to its end and answered (good), not malformedRequest.

    A chunked body over the size cap is malformedRequest, with no lookup.
    """
    store = MemoryStore()
    store.records[pki.auth_cert.serial_number] = record(pki.auth_cert)
    responder = OcspResponder(pki.ca.issuing_cert, pki.ocsp_cert, pki.ocsp_key, store.lookup)
    mark, started = handler_started()
    app = web.Application(middlewares=[mark])
    app.add_routes(responder.routes("/ocsp"))
    request = make_ocsp_request(pki.auth_cert, pki.ca.issuing_cert)
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        resp = await client.post("/ocsp", data=chunked(request, started=started))
        der = await resp.read()
        started.clear()
        resp = await client.post("/ocsp", data=chunked(b"\x30" * (MAX_REQUEST_SIZE + 1), 1024, started=started))
        oversized = await resp.read()
    status = verify_ocsp_response(
        der,
        pki.auth_cert,
        pki.ca.issuing_cert,
        now=dt.datetime.now(dt.UTC),
        max_age=MAX_AGE,
        nonce=request_nonce(request),
    )
    assert status.status is RevocationStatus.GOOD
    assert ocsp.load_der_ocsp_response(oversized).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert store.lookups == [pki.auth_cert.serial_number]
