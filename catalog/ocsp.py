"""The federation's OCSP responder (RFC 6960), answering for certificates of the issuing CA.

The answer is built by the pure :func:`build_ocsp_response`; :class:`OcspResponder` is the aiohttp edge that reads
a request (POST body, or GET with the base64 request in the path, RFC 6960 Appendix A), asks the store for the
certificate's record, and returns the DER response as ``application/ocsp-response``.

Decisions (also in ``docs/pki.md``):

* A request that does not parse, or asks about more than one certificate, gets ``malformedRequest``
  (cryptography, which parses requests, supports exactly one; security servers never ask about more).
* A request about a certificate of another issuer gets ``unauthorized`` (RFC 6960 §2.3: the server "is not
  capable of responding authoritatively").  A signed "unknown" would be a statement about a CA this responder does
  not speak for, which no client could verify anyway.
* A serial of our issuer that the CA never issued gets a signed ``unknown``; an issued one ``good`` or
  ``revoked`` (with time and reason) according to its :class:`~catalog.certregistry.CertRecord`.
* Responses are signed by a delegated responder certificate (EKU OCSPSigning, ocsp-nocheck) which is included, so
  clients need only the issuing CA; thisUpdate is now, nextUpdate now plus ``validity``; a request nonce is echoed.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
from collections.abc import Callable
from urllib.parse import unquote

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from bridge.logsetup import get_logger
from bridge.pki.keys import PrivateKey, signature_hash
from bridge.pki.ocsp import issuer_key_hash
from catalog.api import read_capped
from catalog.certregistry import CertRecord, StatusLookup

__all__ = [
    "DEFAULT_VALIDITY",
    "MAX_REQUEST_SIZE",
    "OcspResponder",
    "build_ocsp_response",
    "requested_serial",
]

log = get_logger(__name__)

#: How long a response stays valid (nextUpdate - thisUpdate).
DEFAULT_VALIDITY = dt.timedelta(hours=1)
#: Largest request the responder reads; a single-certificate request with a nonce is about 120 bytes.
MAX_REQUEST_SIZE = 8 * 1024
CONTENT_TYPE_REQUEST = "application/ocsp-request"
CONTENT_TYPE_RESPONSE = "application/ocsp-response"
_SUPPORTED_ID_HASHES = ("sha1", "sha256", "sha384", "sha512")


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)


#: Certificate serial numbers are positive and at most 20 octets (RFC 5280 4.1.2.2); ours are random 159-bit ones.
_MAX_SERIAL = 1 << 160


def _parse(request_der: bytes) -> ocsp.OCSPRequest | None:
    try:
        request = ocsp.load_der_ocsp_request(request_der)
        # Touch what we use so a lazily detected defect surfaces here, as a malformed request.
        _ = (request.serial_number, request.issuer_name_hash, request.issuer_key_hash, request.hash_algorithm)
        _ = list(request.extensions)
    except (ValueError, UnsupportedAlgorithm):
        return None
    # A serial no certificate can have: negative (the response builder refuses it) or thousands of digits long
    # (beyond what int() and str() convert, where the store looks it up).
    if not 0 <= request.serial_number < _MAX_SERIAL:
        return None
    return request


def requested_serial(request_der: bytes) -> int | None:
    """The serial number an OCSP request asks about, or ``None`` if the request is malformed."""
    request = _parse(request_der)
    return None if request is None else request.serial_number


def build_ocsp_response(
    request_der: bytes,
    *,
    issuer_cert: x509.Certificate,
    responder_cert: x509.Certificate,
    responder_key: PrivateKey,
    lookup_result: CertRecord | None,
    now: dt.datetime,
    validity: dt.timedelta = DEFAULT_VALIDITY,
) -> bytes:
    """The DER OCSP response to ``request_der``, given the store's record of the requested serial.

    ``lookup_result`` is the :class:`CertRecord` for :func:`requested_serial` of the request (``None`` when the
    CA never issued it).  Never raises for a bad request: it answers ``malformedRequest`` instead.
    """
    # (1) Parse; anything unparsable (including multi-certificate requests) is malformedRequest.
    request = _parse(request_der)
    if request is None:
        return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
    algorithm = request.hash_algorithm
    if algorithm.name not in _SUPPORTED_ID_HASHES:
        return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
    # (2) Only our issuer's certificates: compare the CertID's hashes with our issuer's under its algorithm.
    name_hash = hashlib.new(algorithm.name, issuer_cert.subject.public_bytes()).digest()
    if request.issuer_name_hash != name_hash or request.issuer_key_hash != issuer_key_hash(issuer_cert, algorithm):
        return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
    # (3) Status from the record; a record for a different serial is a caller bug and must not be answered.
    revocation_time: dt.datetime | None = None
    reason: x509.ReasonFlags | None = None
    if lookup_result is None or lookup_result.serial != request.serial_number:
        status = ocsp.OCSPCertStatus.UNKNOWN
    elif lookup_result.revoked_at is not None:
        status = ocsp.OCSPCertStatus.REVOKED
        revocation_time = lookup_result.revoked_at
        reason = _reason(lookup_result.revocation_reason)
    else:
        status = ocsp.OCSPCertStatus.GOOD
    now = now.replace(microsecond=0)
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response_by_hash(
            issuer_name_hash=request.issuer_name_hash,
            issuer_key_hash=request.issuer_key_hash,
            serial_number=request.serial_number,
            algorithm=algorithm,
            cert_status=status,
            this_update=now,
            next_update=now + validity,
            revocation_time=revocation_time,
            revocation_reason=reason,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, responder_cert)
        .certificates([responder_cert])
    )
    # (4) Echo the nonce so the client can tell this answer was made for its request.
    try:
        nonce = request.extensions.get_extension_for_class(x509.OCSPNonce).value
        builder = builder.add_extension(nonce, critical=False)
    except x509.ExtensionNotFound:
        pass
    # (5) Sign with the delegated responder key.
    response = builder.sign(responder_key, signature_hash(responder_key))
    return response.public_bytes(serialization.Encoding.DER)


def _reason(name: str | None) -> x509.ReasonFlags | None:
    if name is None:
        return None
    try:
        return x509.ReasonFlags[name] if name in x509.ReasonFlags.__members__ else x509.ReasonFlags(name)
    except ValueError:
        # An unrecognised reason in the store must not turn a revocation into an error; omit the reason instead.
        return None


class OcspResponder:
    """aiohttp handler serving :func:`build_ocsp_response` over HTTP (RFC 6960 Appendix A)."""

    def __init__(
        self,
        issuer_cert: x509.Certificate,
        responder_cert: x509.Certificate,
        responder_key: PrivateKey,
        lookup: StatusLookup,
        *,
        validity: dt.timedelta = DEFAULT_VALIDITY,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.issuer_cert = issuer_cert
        self.responder_cert = responder_cert
        self.responder_key = responder_key
        self.lookup = lookup
        self.validity = validity
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))

    async def answer(self, request_der: bytes) -> bytes:
        """The DER response to ``request_der``, looking the requested serial up in the store.

        A client always gets an OCSP response: one the responder cannot make (the store failed, or a request
        nothing here foresaw) is ``internalError``, which clients treat as no answer.
        """
        try:
            serial = requested_serial(request_der)
            record = await self.lookup(serial) if serial is not None else None
            return build_ocsp_response(
                request_der,
                issuer_cert=self.issuer_cert,
                responder_cert=self.responder_cert,
                responder_key=self.responder_key,
                lookup_result=record,
                now=self._clock(),
                validity=self.validity,
            )
        except Exception as exc:
            log.error("ocsp response failed", error=type(exc).__name__)
            return _unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR)

    async def handle(self, request: web.Request) -> web.Response:
        """Answer a POST (DER body) or GET (``/{base64 DER}``) OCSP request; malformed ones get malformedRequest."""
        if request.method == "POST":
            # The whole body (a chunked one too), or None if it is oversized: either way no truncated DER is parsed.
            request_der = await read_capped(request, MAX_REQUEST_SIZE)
        else:
            request_der = _decode_get(request.match_info.get("req", ""))
        if request_der is None:
            der = _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        else:
            der = await self.answer(request_der)
        return web.Response(body=der, content_type=CONTENT_TYPE_RESPONSE, headers={"Cache-Control": "no-store"})

    def routes(self, prefix: str = "/ocsp") -> list[web.RouteDef]:
        """Routes for POST ``prefix`` and GET ``prefix/{base64 request}``."""
        prefix = prefix.rstrip("/")
        return [
            web.post(prefix or "/", self.handle),
            web.get(prefix + "/{req:.+}", self.handle),
        ]


def _decode_get(text: str) -> bytes | None:
    """Decode the GET form: the DER request, base64-encoded, then URL-encoded (RFC 6960 Appendix A.1)."""
    # aiohttp has already percent-decoded the path once; a client that encoded '/' and '+' leaves nothing to do,
    # one that did not leaves them raw.  Decoding again is harmless because base64 has no '%'.
    text = unquote(text)
    if len(text) > MAX_REQUEST_SIZE * 2:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
