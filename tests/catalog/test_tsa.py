"""The timestamp authority (catalog.tsa) and token verification (bridge.pki.tsp), with `openssl ts` as referee."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer
from asn1crypto import cms as a_cms
from asn1crypto import parser as a_parser
from asn1crypto import tsp as a_tsp
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bridge.errors import CertificateInvalid, PkiError
from bridge.pki import profile
from bridge.pki.keys import KeyAlgorithm, generate_private_key
from bridge.pki.tsp import (
    TimeStampRespAsn1,
    _der_headers,
    _der_reencoding,
    check_token_envelope,
    make_timestamp_request,
    parse_timestamp_response,
    timestamp_request_nonce,
    verify_timestamp_token,
)
from catalog.tsa import DEFAULT_POLICY_OID, MAX_REQUEST_SIZE, TimestampAuthority
from tests.catalog.test_api import chunked, handler_started
from tests.support.pki import Pki, build_pki

OPENSSL = "/usr/bin/openssl"
DATA = b"message log batch 42: hash chain head 9f86d081884c7d659a2feaa0c55ad015\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(tmp_path_factory.mktemp("tsa"))


@pytest.fixture(scope="module")
def tsa(pki: Pki) -> TimestampAuthority:
    return TimestampAuthority(pki.tsa_cert, pki.tsa_key, pki.ca.chain)


@pytest.fixture
async def tsa_url(tsa: TimestampAuthority) -> AsyncIterator[str]:
    """The TSA on a loopback port; yields its URL."""
    app = web.Application()
    app.add_routes(tsa.routes("/tsa"))
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield str(server.make_url("/tsa"))
    finally:
        await server.close()


async def run_openssl(*args: str | Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        OPENSSL, *map(str, args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def post(url: str, body: bytes) -> tuple[int, str, bytes]:
    async with (
        ClientSession() as session,
        session.post(url, data=body, headers={"Content-Type": "application/timestamp-query"}) as resp,
    ):
        return resp.status, resp.content_type, await resp.read()


def status_of(reply: bytes) -> tuple[str, set[str] | None]:
    status = TimeStampRespAsn1.load(reply)["status"]
    return status["status"].native, status["fail_info"].native


async def test_openssl_query_reply_verify(pki: Pki, tsa_url: str, tmp_path: Path) -> None:
    """An `openssl ts -query` POSTed to the TSA yields a reply that `openssl ts -verify` accepts, and so do we."""
    data = tmp_path / "data.bin"
    data.write_bytes(DATA)
    query = tmp_path / "q.tsq"
    code, _, err = await run_openssl("ts", "-query", "-data", data, "-sha256", "-cert", "-out", query)
    assert code == 0, err
    status, ctype, reply = await post(tsa_url, query.read_bytes())
    assert (status, ctype) == (200, "application/timestamp-reply")
    reply_path = tmp_path / "reply.tsr"
    reply_path.write_bytes(reply)

    root = pki.pem("root.pem", pki.ca.root_cert)
    untrusted = pki.pem("tsa-and-chain.pem", pki.tsa_cert, pki.ca.issuing_cert)
    code, out, err = await run_openssl(
        "ts", "-verify", "-in", reply_path, "-data", data, "-CAfile", root, "-untrusted", untrusted
    )
    assert (code, out.strip()) == (0, "Verification: OK"), err
    # The same check, tying the reply to the query (nonce and imprint) as well.
    code, out, err = await run_openssl(
        "ts", "-verify", "-in", reply_path, "-queryfile", query, "-CAfile", root, "-untrusted", untrusted
    )
    assert (code, out.strip()) == (0, "Verification: OK"), err

    token = parse_timestamp_response(reply)
    gen_time = verify_timestamp_token(
        token,
        data_digest=hashlib.sha256(DATA).digest(),
        tsa_cert=pki.tsa_cert,
        nonce=timestamp_request_nonce(query.read_bytes()),
    )
    assert abs(gen_time - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)


async def test_openssl_reply_text(tsa_url: str, tmp_path: Path) -> None:
    """`openssl ts -reply -text` shows our policy, the granted status, the echoed nonce and a 1 s accuracy."""
    request = make_timestamp_request(hashlib.sha256(DATA).digest())
    _, _, reply = await post(tsa_url, request)
    path = tmp_path / "reply.tsr"
    path.write_bytes(reply)
    code, out, err = await run_openssl("ts", "-reply", "-in", path, "-text")
    assert code == 0, err
    assert "Status: Granted." in out
    assert f"Policy OID: {DEFAULT_POLICY_OID}" in out
    assert "Accuracy: 0x01 seconds" in out
    nonce = timestamp_request_nonce(request)
    assert nonce is not None
    assert f"Nonce: 0x{nonce:X}" in out


def test_token_for_other_data_is_rejected(pki: Pki, tsa: TimestampAuthority) -> None:
    """A genuine token does not verify for data other than what was timestamped."""
    reply = tsa.respond(make_timestamp_request(hashlib.sha256(DATA).digest()))
    token = parse_timestamp_response(reply)
    with pytest.raises(PkiError, match="other data"):
        verify_timestamp_token(token, data_digest=hashlib.sha256(b"other").digest(), tsa_cert=pki.tsa_cert)


def test_token_checked_against_the_given_tsa_cert(pki: Pki, tsa: TimestampAuthority, tmp_path: Path) -> None:
    """A token is refused when verified against another TSA's certificate."""
    other = build_pki(tmp_path / "other")
    token = parse_timestamp_response(tsa.respond(make_timestamp_request(hashlib.sha256(DATA).digest())))
    with pytest.raises(CertificateInvalid, match="not signed by the given TSA certificate"):
        verify_timestamp_token(token, data_digest=hashlib.sha256(DATA).digest(), tsa_cert=other.tsa_cert)


def test_tampered_token_is_rejected(pki: Pki, tsa: TimestampAuthority) -> None:
    """Changing the TSTInfo (one byte of the imprint) breaks the messageDigest check."""
    digest = hashlib.sha256(DATA).digest()
    token = parse_timestamp_response(tsa.respond(make_timestamp_request(digest)))
    at = token.index(digest)
    tampered = token[:at] + bytes([token[at] ^ 1]) + token[at + 1 :]
    with pytest.raises(PkiError, match="messageDigest"):
        verify_timestamp_token(tampered, data_digest=digest, tsa_cert=pki.tsa_cert)


def test_nonce_and_cert_req_are_honoured(pki: Pki, tsa: TimestampAuthority) -> None:
    """Without certReq no certificates are included; a wrong expected nonce is refused."""
    from asn1crypto import cms

    digest = hashlib.sha256(DATA).digest()
    request = make_timestamp_request(digest, cert_req=False)
    token = parse_timestamp_response(tsa.respond(request))
    assert cms.ContentInfo.load(token)["content"]["certificates"].native is None
    nonce = timestamp_request_nonce(request)
    assert nonce is not None
    verify_timestamp_token(token, data_digest=digest, tsa_cert=pki.tsa_cert, nonce=nonce)
    with pytest.raises(PkiError, match="nonce"):
        verify_timestamp_token(token, data_digest=digest, tsa_cert=pki.tsa_cert, nonce=nonce + 1)


def test_sha512_imprint(pki: Pki, tsa: TimestampAuthority) -> None:
    """SHA-512 imprints are accepted and verified with hash_alg='sha512'."""
    digest = hashlib.sha512(DATA).digest()
    token = parse_timestamp_response(tsa.respond(make_timestamp_request(digest, "sha512")))
    verify_timestamp_token(token, data_digest=digest, tsa_cert=pki.tsa_cert, hash_alg="sha512")


def test_gen_time_is_the_given_time(pki: Pki, tsa: TimestampAuthority) -> None:
    """respond(now=…) stamps that time, truncated to whole seconds."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=654321)
    digest = hashlib.sha256(DATA).digest()
    token = parse_timestamp_response(tsa.respond(make_timestamp_request(digest), now=now))
    assert verify_timestamp_token(token, data_digest=digest, tsa_cert=pki.tsa_cert) == now.replace(microsecond=0)


def test_unsupported_hash_is_bad_alg(tsa: TimestampAuthority) -> None:
    """A SHA-1 imprint is rejected with failInfo badAlg, and the client reports the refusal as PkiError."""
    request = a_tsp.TimeStampReq(
        {
            "version": "v1",
            "message_imprint": {"hash_algorithm": {"algorithm": "sha1"}, "hashed_message": hashlib.sha1(DATA).digest()},
        }
    ).dump()
    reply = tsa.respond(request)
    assert status_of(reply) == ("rejection", {"bad_alg"})
    with pytest.raises(PkiError, match="bad_alg"):
        parse_timestamp_response(reply)


def test_a_granted_reply_without_a_token_is_refused() -> None:
    """A reply saying "granted" but carrying no token is a PkiError, not an empty token."""
    reply = TimeStampRespAsn1({"status": {"status": "granted"}}).dump()
    with pytest.raises(PkiError, match="carries no token"):
        parse_timestamp_response(reply)


def test_the_token_returned_is_the_bytes_received(tsa: TimestampAuthority) -> None:
    """The token comes back exactly as the TSA encoded it (it is evidence; nothing re-encodes it)."""
    reply = tsa.respond(make_timestamp_request(hashlib.sha256(DATA).digest()))
    token = parse_timestamp_response(reply)
    assert len(token) > 500
    assert reply.endswith(token)  # timeStampToken is the last field of TimeStampResp


def test_malformed_is_bad_data_format(tsa: TimestampAuthority) -> None:
    """Garbage, a truncated request, a wrong-length digest and an oversized body get badDataFormat."""
    good = make_timestamp_request(hashlib.sha256(DATA).digest())
    wrong_length = a_tsp.TimeStampReq(
        {"version": "v1", "message_imprint": {"hash_algorithm": {"algorithm": "sha256"}, "hashed_message": b"short"}}
    ).dump()
    # An unknown hash algorithm with ObjectDescriptor parameters: well-formed, but asn1crypto raises AttributeError.
    descriptor = bytes.fromhex(
        "3030020101302b300706022a0307016104200000000000000000000000000000000000000000000000000000000000000000"
    )
    for body in (b"not asn.1", good[:-5], wrong_length, b"\x30" * 10_000, descriptor):
        assert status_of(tsa.respond(body)) == ("rejection", {"bad_data_format"})


def test_foreign_policy_and_extensions_are_refused(tsa: TimestampAuthority) -> None:
    """A request for another policy gets unacceptedPolicy (RFC 3161 §2.4.2); our own policy is granted."""
    imprint = {"hash_algorithm": {"algorithm": "sha256"}, "hashed_message": hashlib.sha256(DATA).digest()}
    foreign = a_tsp.TimeStampReq({"version": "v1", "message_imprint": imprint, "req_policy": "1.2.3.4"}).dump()
    ours = a_tsp.TimeStampReq({"version": "v1", "message_imprint": imprint, "req_policy": DEFAULT_POLICY_OID}).dump()
    assert status_of(tsa.respond(foreign)) == ("rejection", {"unaccepted_policy"})
    assert status_of(tsa.respond(ours)) == ("granted", None)


def test_rsa_tsa_openssl_verifies(pki: Pki, tmp_path: Path) -> None:
    """A TSA with an RSA-2048 key produces tokens that openssl and our verifier both accept."""
    import subprocess

    key = generate_private_key(KeyAlgorithm.RSA_2048)
    cert = pki.ca.issue_tsa_cert(key.public_key())
    tsa = TimestampAuthority(cert, key, pki.ca.chain)
    data = tmp_path / "data.bin"
    data.write_bytes(DATA)
    reply = tmp_path / "reply.tsr"
    reply.write_bytes(tsa.respond(make_timestamp_request(hashlib.sha256(DATA).digest())))
    result = subprocess.run(
        [
            OPENSSL, "ts", "-verify", "-in", str(reply), "-data", str(data),
            "-CAfile", str(pki.pem("root.pem", pki.ca.root_cert)),
            "-untrusted", str(pki.pem("rsa-tsa-chain.pem", cert, pki.ca.issuing_cert)),
        ],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout.strip()) == (0, "Verification: OK"), result.stderr
    token = parse_timestamp_response(reply.read_bytes())
    verify_timestamp_token(token, data_digest=hashlib.sha256(DATA).digest(), tsa_cert=cert)


def test_tsa_refuses_a_non_tsa_certificate(pki: Pki) -> None:
    """The TSA will not start with a certificate lacking the critical timeStamping EKU."""
    with pytest.raises(CertificateInvalid, match="timeStamping"):
        TimestampAuthority(pki.ocsp_cert, pki.ocsp_key)
    profile.check_tsa_cert(pki.tsa_cert)


async def test_chunked_post_is_read_whole(pki: Pki, tsa: TimestampAuthority) -> None:
    """A query POSTed chunked in 10-byte pieces is read to its end and granted; an oversized one is rejected."""
    mark, started = handler_started()
    app = web.Application(middlewares=[mark])
    app.add_routes(tsa.routes("/tsa"))
    query = make_timestamp_request(hashlib.sha256(DATA).digest())
    headers = {"Content-Type": "application/timestamp-query"}
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        resp = await client.post("/tsa", data=chunked(query, started=started), headers=headers)
        reply = await resp.read()
        started.clear()
        big = chunked(b"\x30" * (MAX_REQUEST_SIZE + 1), 1024, started=started)
        resp = await client.post("/tsa", data=big, headers=headers)
        oversized = await resp.read()
    assert status_of(reply) == ("granted", None)
    gen_time = verify_timestamp_token(
        parse_timestamp_response(reply),
        data_digest=hashlib.sha256(DATA).digest(),
        tsa_cert=pki.tsa_cert,
        nonce=timestamp_request_nonce(query),
    )
    assert abs(gen_time - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
    assert status_of(oversized) == ("rejection", {"bad_data_format"})


# What the signature does not cover (check_token_envelope) --------------------------------------------------------


def _der(*certs: x509.Certificate) -> set[bytes]:
    return {c.public_bytes(serialization.Encoding.DER) for c in certs}


def _non_der(token: bytes) -> bytes:
    """The token with its outer length in a longer form than DER allows (BER accepts it; the signature holds)."""
    assert token[:2] == b"\x30\x82"
    return b"\x30\x83\x00" + token[2:]


def _with_unsigned_attribute(token: bytes) -> bytes:
    from asn1crypto import cms

    content_info = cms.ContentInfo.load(token)
    signer = content_info["content"]["signer_infos"][0]
    signer["unsigned_attrs"] = cms.CMSAttributes(
        [
            cms.CMSAttribute(
                {"type": "signing_time", "values": [cms.Time(name="utc_time", value=dt.datetime.now(dt.UTC))]}
            )
        ]
    )
    return bytes(content_info.dump(force=True))


def _corrupt_first_certificate(token: bytes, pki: Pki) -> bytes:
    """One tag byte inside the embedded TSA certificate changed: outside what the TSA signed."""
    cert = pki.tsa_cert.public_bytes(serialization.Encoding.DER)
    at = token.index(cert)
    inner = at + 4 + 4  # inside the certificate's TBSCertificate (30 82 LL LL 30 82 LL LL ...)
    return token[:inner] + bytes([token[inner] ^ 0x20]) + token[inner + 1 :]


def test_a_genuine_token_has_a_sound_envelope(pki: Pki, tsa: TimestampAuthority) -> None:
    """The TSA's own tokens pass, with or without certificates; certificates must be among the known ones."""
    digest = hashlib.sha256(DATA).digest()
    with_certs = parse_timestamp_response(tsa.respond(make_timestamp_request(digest)))
    check_token_envelope(with_certs, _der(pki.tsa_cert, *pki.ca.chain))
    without = parse_timestamp_response(tsa.respond(make_timestamp_request(digest, cert_req=False)))
    check_token_envelope(without, set())
    with pytest.raises(PkiError, match="certificate that is not among the known ones"):
        check_token_envelope(with_certs, _der(pki.tsa_cert))  # the CA certificates ride along unknown


Change = Callable[[int, int, int, int, bytes], tuple[bytes, bytes]]


def _rewrite(data: bytes, change: Change, counter: list[int]) -> bytes:
    """``data`` (one TLV) re-emitted with ``change`` applied to each TLV in document order, lengths adjusted.

    ``change(index, class, method, tag, contents)`` returns ``(header, contents)``; an empty header means the DER
    one.  Recurses into constructed values and into OCTET STRINGs that hold exactly one TLV (the encapsulated
    TSTInfo, the signature value).
    """
    class_, method, tag, _, contents, _ = a_parser.parse(data, strict=True)
    index = counter[0]
    counter[0] += 1
    inner: list[bytes] = []
    nested = method == 1
    if not nested and class_ == 0 and tag == 4:
        try:
            nested = a_parser.parse(contents, strict=True)[3] != b""
        except ValueError:
            nested = False
    if nested:
        at = 0
        while at < len(contents):
            _, _, _, h, c, t = a_parser.parse(contents[at:])
            size = len(h) + len(c) + len(t)
            inner.append(_rewrite(contents[at : at + size], change, counter))
            at += size
        contents = b"".join(inner)
    header, contents = change(index, class_, method, tag, contents)
    if not header:
        emitted = a_parser.emit(class_, method, tag, contents)
        header = emitted[: len(emitted) - len(contents)]
    return header + contents


def _long_length_at(target: int) -> Change:
    """A change giving the TLV number ``target`` a length in long form where DER requires the short one."""

    def change(index: int, class_: int, method: int, tag: int, contents: bytes) -> tuple[bytes, bytes]:
        if index != target or len(contents) >= 128 or tag >= 31:
            return b"", contents
        return a_parser.emit(class_, method, tag, b"")[:1] + b"\x81" + bytes([len(contents)]), contents

    return change


def _padded_integers(index: int, class_: int, method: int, tag: int, contents: bytes) -> tuple[bytes, bytes]:
    """Every INTEGER with a redundant leading zero byte (BER reads the same number; DER forbids it)."""
    return (b"", b"\x00" + contents) if (class_, method, tag) == (0, 0, 2) else (b"", contents)


def test_the_der_test_is_asn1cryptos_forced_reencoding(pki: Pki, tsa: TimestampAuthority) -> None:
    """_der_reencoding gives what asn1crypto's own (exponentially slow) forced dump gives, for DER and BER alike."""
    digest = hashlib.sha256(DATA).digest()
    with_certs = parse_timestamp_response(tsa.respond(make_timestamp_request(digest)))
    without = parse_timestamp_response(tsa.respond(make_timestamp_request(digest, cert_req=False)))
    identity = _rewrite(without, lambda i, k, m, t, c: (b"", c), [0])
    assert identity == without  # the rewriter itself changes nothing unless asked
    nodes = [0]
    _rewrite(without, lambda i, k, m, t, c: (b"", c), nodes)
    assert nodes[0] > 60  # it reached deep into the token: signed attributes, TSTInfo, the ESS certificate ids
    # Long-form lengths at a spread of depths, from the outer SignedData to names deep in the signed attributes
    # (not in the signature value, the last four values), and on every NULL outside the TSTInfo: asn1crypto's
    # re-encoding keeps a NULL's header as received, so those only the header check finds.
    seen: dict[int, tuple[int, int, int]] = {}  # index: (class, tag, length)
    _rewrite(without, lambda i, k, m, t, c: (seen.setdefault(i, (k, t, len(c))) and b"", c), [0])
    nulls = [i for i, (k, t, _) in seen.items() if (k, t) == (0, 5) and not 12 <= i <= 25]  # 12-25: the TSTInfo
    assert seen[12][:2] == (0, 4) and seen[13][:2] == (0, 16) and len(nulls) == 2  # eContent, TSTInfo, 2 NULLs
    short = [i for i, (_, _, size) in seen.items() if 2 <= i < nodes[0] - 4 and size < 128]  # a short form
    targets = [*short[::8], *nulls]
    assert len(targets) > 8
    non_der = [_non_der(without), _rewrite(without, _padded_integers, [0])]
    non_der += [_rewrite(without, _long_length_at(at), [0]) for at in targets]
    for token in [with_certs, without, _with_unsigned_attribute(without), *non_der]:
        fast = _der_reencoding(a_cms.ContentInfo.load(token, strict=True))
        assert fast == a_cms.ContentInfo.load(token, strict=True).dump(force=True)
    for token in non_der:
        assert token not in (with_certs, without)
        with pytest.raises(PkiError, match="not DER"):
            check_token_envelope(token, _der(pki.tsa_cert, *pki.ca.chain))
    check_token_envelope(with_certs, _der(pki.tsa_cert, *pki.ca.chain))
    check_token_envelope(without, set())


_SHA256_ALGORITHM = bytes.fromhex("300d06096086480165030402010500")  # AlgorithmIdentifier sha256, NULL parameters
_ECDSA_SHA256 = bytes.fromhex("06082a8648ce3d040302")  # the OID, as the contents of its AlgorithmIdentifier


def _signature_algorithm_parameters(parameters: bytes) -> Change:
    """A change giving the signer's signatureAlgorithm (ecdsa-with-SHA256, no parameters) ``parameters``."""

    def change(index: int, class_: int, method: int, tag: int, contents: bytes) -> tuple[bytes, bytes]:
        hit = (class_, method, tag) == (0, 1, 16) and contents == _ECDSA_SHA256
        return b"", contents + parameters if hit else contents

    return change


def _extra_digest_algorithm(algorithm: bytes) -> Change:
    """A change adding ``algorithm`` (a whole AlgorithmIdentifier) to SignedData's digestAlgorithms."""

    def change(index: int, class_: int, method: int, tag: int, contents: bytes) -> tuple[bytes, bytes]:
        hit = (class_, method, tag) == (0, 1, 17) and contents == _SHA256_ALGORITHM
        return b"", algorithm + contents if hit else contents

    return change


def test_hostile_envelopes_get_the_pki_fault_never_another_error(pki: Pki, tsa: TimestampAuthority) -> None:
    """What asn1crypto trips over in the unsigned parts is refused as PkiError by every public function.

    An ObjectDescriptor (tag 7) is well-formed DER that asn1crypto cannot turn into a value (AttributeError); in
    the TSA's reply it must cost that TSA, not the timestamper, and in evidence an audit failure, not a crash.
    """
    digest = hashlib.sha256(DATA).digest()
    without = parse_timestamp_response(tsa.respond(make_timestamp_request(digest, cert_req=False)))
    known = _der(pki.tsa_cert, *pki.ca.chain)
    descriptor = _rewrite(without, _extra_digest_algorithm(bytes.fromhex("300a06032a0304070144")), [0])
    assert descriptor != without
    verify_timestamp_token(descriptor, data_digest=digest, tsa_cert=pki.tsa_cert)  # digestAlgorithms: unsigned
    with pytest.raises(PkiError, match="does not parse"):
        check_token_envelope(descriptor, known)  # asn1crypto raises AttributeError inside
    for junk in (b"\x30\x03\x07\x01\x44", b"\x30\x80", b""):
        with pytest.raises(PkiError):
            check_token_envelope(junk, known)
        with pytest.raises(PkiError):
            verify_timestamp_token(junk, data_digest=digest, tsa_cert=pki.tsa_cert)
        with pytest.raises(PkiError):
            parse_timestamp_response(junk)
    # The signer's signatureAlgorithm is not signed: parameters ECDSA has none of are refused, whatever they hold.
    for parameters in ("3003070144", "30053103020101", "020101"):
        token = _rewrite(without, _signature_algorithm_parameters(bytes.fromhex(parameters)), [0])
        assert token != without
        verify_timestamp_token(token, data_digest=digest, tsa_cert=pki.tsa_cert)  # the signature still holds
        with pytest.raises(PkiError, match="unexpected algorithm parameters"):
            check_token_envelope(token, known)


def test_der_headers_are_checked_at_every_depth_and_read_in_place() -> None:
    """The header rule on its own: one value, definite lengths as short as possible, high tag numbers too."""
    with pytest.raises(ValueError):
        _der_headers(bytes.fromhex("300605000201"))  # truncated: the parser refuses it
    assert _der_headers(bytes.fromhex("30050500020105"))
    assert not _der_headers(bytes.fromhex("3005050002010500"))  # trailing data after the value
    assert not _der_headers(bytes.fromhex("3081050500020105"))  # long form for a short length
    assert not _der_headers(bytes.fromhex("3006058100020105"))  # ... on a NULL inside
    assert not _der_headers(bytes.fromhex("308005000201050000"))  # indefinite length
    long_value = b"\x04\x81\xc8" + bytes(200)  # 200 bytes need the long form with one length octet
    assert _der_headers(long_value)
    assert not _der_headers(b"\x04\x82\x00\xc8" + bytes(200))  # two length octets where one will do
    assert _der_headers(bytes.fromhex("bf8a3903020101"))  # [1337] constructed: a tag number in two octets
    assert not _der_headers(bytes.fromhex("bf8a39810302010100"[:-2]))  # the same with a long-form length
    deep = bytes.fromhex("0500")
    for _ in range(100):
        deep = a_parser.emit(0, 1, 16, deep)
    assert not _der_headers(deep)  # deeper than any token
    # Many siblings: each header is read in place (slicing the rest for each took minutes for a few MB).
    many = a_parser.emit(0, 1, 16, b"\x05\x00" * 500_000)
    assert _der_headers(many)
    assert not _der_headers(a_parser.emit(0, 1, 16, b"\x05\x00" * 499_999 + b"\x05\x81\x00"))  # the last: long


def test_changes_outside_the_signature_are_refused(pki: Pki, tsa: TimestampAuthority) -> None:
    """Each change verify_timestamp_token cannot see (the signature still holds) is refused by the envelope check."""
    digest = hashlib.sha256(DATA).digest()
    with_certs = parse_timestamp_response(tsa.respond(make_timestamp_request(digest)))
    without = parse_timestamp_response(tsa.respond(make_timestamp_request(digest, cert_req=False)))
    known = _der(pki.tsa_cert, *pki.ca.chain)
    cases = [
        (_non_der(without), "not DER"),
        (_with_unsigned_attribute(without), "CRLs or unsigned attributes"),
        (_corrupt_first_certificate(with_certs, pki), "does not parse"),
    ]
    for token, reason in cases:
        verify_timestamp_token(token, data_digest=digest, tsa_cert=pki.tsa_cert)  # the signature still holds
        with pytest.raises(PkiError, match=reason):
            check_token_envelope(token, known)
