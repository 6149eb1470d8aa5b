"""The federation's timestamp authority (RFC 3161), signing with a certificate from :mod:`catalog.ca`.

Security servers timestamp their message-log batches here.  Tokens are CMS SignedData over a TSTInfo, with the
signed attributes ``openssl ts -verify`` requires (contentType, messageDigest, signingTime and the ESS
signingCertificateV2 naming the TSA certificate), so an auditor can check evidence with standard tools.

Decisions (also in ``docs/pki.md``):

* Accepted message-imprint hashes: SHA-256, SHA-384, SHA-512; anything else is rejected with ``badAlg``.
* A request naming a policy other than ours is rejected with ``unacceptedPolicy`` and one with extensions with
  ``unacceptedExtension`` (RFC 3161 §2.4.2: the TSA must not silently change what was asked for).
* genTime has whole-second precision and the token states an accuracy of one second.
* Serial numbers are 128 random bits: unique without shared state, so several central-server nodes can sign.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from asn1crypto import algos, cms, core, tsp
from asn1crypto import x509 as a_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.errors import CertificateInvalid
from bridge.pki.keys import PrivateKey, sign
from bridge.pki.profile import check_tsa_cert
from bridge.pki.tsp import TimeStampRespAsn1
from catalog.api import read_capped

__all__ = [
    "CONTENT_TYPE_QUERY",
    "CONTENT_TYPE_REPLY",
    "DEFAULT_POLICY_OID",
    "MAX_REQUEST_SIZE",
    "TimestampAuthority",
]

#: Placeholder policy OID under a private-enterprise arc; a federation replaces it with its own registered arc.
DEFAULT_POLICY_OID = "1.3.6.1.4.1.55555.1.1"
#: Largest request read; a SHA-512 request with nonce is under 100 bytes.
MAX_REQUEST_SIZE = 4 * 1024
CONTENT_TYPE_QUERY = "application/timestamp-query"
CONTENT_TYPE_REPLY = "application/timestamp-reply"

#: Message-imprint hash algorithms accepted, with their digest lengths.
SUPPORTED_HASHES = {"sha256": 32, "sha384": 48, "sha512": 64}


class _Rejection(Exception):
    """Internal: a request the TSA refuses, with the RFC 3161 failInfo bit name."""

    def __init__(self, fail_info: str, text: str) -> None:
        super().__init__(text)
        self.fail_info = fail_info
        self.text = text


class TimestampAuthority:
    """An RFC 3161 TSA: :meth:`respond` is the pure core, :meth:`handle` the aiohttp edge."""

    def __init__(
        self,
        cert: x509.Certificate,
        key: PrivateKey,
        chain: Sequence[x509.Certificate] = (),
        policy_oid: str = DEFAULT_POLICY_OID,
        *,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        # Refuse to start with a certificate verifiers would reject: every token would be useless evidence.
        check_tsa_cert(cert)
        if cert.public_key() != key.public_key():
            raise CertificateInvalid("the TSA key does not match the TSA certificate")
        self.cert = cert
        self.key = key
        self.chain = tuple(chain)
        self.policy_oid = policy_oid
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._cert_der = cert.public_bytes(serialization.Encoding.DER)
        self._a_cert: Any = a_x509.Certificate.load(self._cert_der)
        self._a_chain: list[Any] = [
            a_x509.Certificate.load(c.public_bytes(serialization.Encoding.DER)) for c in self.chain
        ]

    # Core -----------------------------------------------------------------------------------------------------

    def respond(self, request_der: bytes, now: dt.datetime | None = None) -> bytes:
        """The DER TimeStampResp to ``request_der``: a granted token, or a rejection with a failInfo."""
        try:
            request = self._check_request(request_der)
        except _Rejection as rej:
            status = tsp.PKIStatusInfo(
                {"status": "rejection", "status_string": [rej.text], "fail_info": tsp.PKIFailureInfo({rej.fail_info})}
            )
            # A rejection carries no token (RFC 3161 §2.4.2), which asn1crypto's own TimeStampResp cannot express.
            return bytes(TimeStampRespAsn1({"status": status}).dump())
        when = (now or self._clock()).astimezone(dt.UTC).replace(microsecond=0)
        token = self._token(request, when)
        return bytes(TimeStampRespAsn1({"status": {"status": "granted"}, "time_stamp_token": token}).dump())

    def _check_request(self, request_der: bytes) -> Any:
        # (1) Size and syntax; asn1crypto parses lazily, so .native forces the whole structure through.
        if len(request_der) > MAX_REQUEST_SIZE:
            raise _Rejection("bad_data_format", "request too large")
        try:
            request = tsp.TimeStampReq.load(request_der, strict=True)
            _ = request.native
        except Exception:  # asn1crypto raises AttributeError too: an ObjectDescriptor has no value
            raise _Rejection("bad_data_format", "request does not parse as a TimeStampReq") from None
        if request["version"].native != "v1":
            raise _Rejection("bad_request", "unsupported request version")
        # (2) A hash we accept, with a digest of its length.
        imprint = request["message_imprint"]
        alg = imprint["hash_algorithm"]["algorithm"].native
        if alg not in SUPPORTED_HASHES:
            raise _Rejection("bad_alg", f"unsupported hash algorithm {alg}")
        if len(imprint["hashed_message"].native) != SUPPORTED_HASHES[alg]:
            raise _Rejection("bad_data_format", "hashed message length does not match its algorithm")
        # (3) Our policy only, and no extensions (we understand none).
        req_policy = request["req_policy"].native
        if req_policy is not None and req_policy != self.policy_oid:
            raise _Rejection("unaccepted_policy", f"policy {req_policy} is not offered")
        if request["extensions"].native:
            raise _Rejection("unaccepted_extensions", "request extensions are not supported")
        return request

    def _token(self, request: Any, when: dt.datetime) -> Any:
        # (4) The TSTInfo: the imprint echoed, our policy, a random serial, the time, the nonce echoed.
        fields: dict[str, Any] = {
            "version": "v1",
            "policy": self.policy_oid,
            "message_imprint": request["message_imprint"],
            "serial_number": secrets.randbits(128),
            "gen_time": when,
            "accuracy": {"seconds": 1},
        }
        if request["nonce"].native is not None:
            fields["nonce"] = request["nonce"].native
        tst_info = tsp.TSTInfo(fields)
        tst_der = tst_info.dump()
        # (5) Signed attributes; signingCertificateV2 binds the signature to our certificate (RFC 5816).
        ess = tsp.ESSCertIDv2(
            {
                "cert_hash": hashlib.sha256(self._cert_der).digest(),
                "issuer_serial": {
                    "issuer": [a_x509.GeneralName(name="directory_name", value=self._a_cert.issuer)],
                    "serial_number": self._a_cert.serial_number,
                },
            }
        )
        signed_attrs = cms.CMSAttributes(
            [
                cms.CMSAttribute({"type": "content_type", "values": ["tst_info"]}),
                cms.CMSAttribute({"type": "message_digest", "values": [hashlib.sha256(tst_der).digest()]}),
                cms.CMSAttribute({"type": "signing_time", "values": [cms.Time(name="utc_time", value=when)]}),
                cms.CMSAttribute(
                    {"type": "signing_certificate_v2", "values": [tsp.SigningCertificateV2({"certs": [ess]})]}
                ),
            ]
        )
        # (6) The signature covers the DER of the attributes as a SET OF (tag 0x31), per RFC 5652 §5.4.
        signature = sign(self.key, signed_attrs.dump())
        sig_alg = "sha256_ecdsa" if isinstance(self.key, ec.EllipticCurvePrivateKey) else "sha256_rsa"
        signer_info = cms.SignerInfo(
            {
                "version": "v1",
                "sid": cms.SignerIdentifier(
                    name="issuer_and_serial_number",
                    value={"issuer": self._a_cert.issuer, "serial_number": self._a_cert.serial_number},
                ),
                "digest_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
                "signed_attrs": signed_attrs,
                "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": sig_alg}),
                "signature": signature,
            }
        )
        # (7) SignedData v3 (the content type is not id-data); certificates when the client asked for them.
        certificates = [self._a_cert, *self._a_chain] if request["cert_req"].native else []
        signed_data: dict[str, Any] = {
            "version": "v3",
            "digest_algorithms": [algos.DigestAlgorithm({"algorithm": "sha256"})],
            "encap_content_info": {"content_type": "tst_info", "content": core.ParsableOctetString(tst_der)},
            "signer_infos": [signer_info],
        }
        if certificates:
            signed_data["certificates"] = certificates
        return cms.ContentInfo({"content_type": "signed_data", "content": cms.SignedData(signed_data)})

    # HTTP edge ------------------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        """POST ``application/timestamp-query`` → ``application/timestamp-reply`` (RFC 3161 §3.4)."""
        # The whole body, a chunked one too.  An oversized body is answered like any bad request (a rejection),
        # not by cutting the connection: the client then gets a status it understands.
        body = await read_capped(request, MAX_REQUEST_SIZE)
        reply = self.respond(b"" if body is None else body)
        return web.Response(body=reply, content_type=CONTENT_TYPE_REPLY, headers={"Cache-Control": "no-store"})

    def routes(self, path: str = "/tsa") -> list[web.RouteDef]:
        """The POST route of the TSA."""
        return [web.post(path, self.handle)]
