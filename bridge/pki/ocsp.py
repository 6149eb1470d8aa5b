"""OCSP client side (RFC 6960): building requests and verifying responses.

A response is trusted only if it is signed by the certificate's issuer itself, by a delegated responder whose
certificate the issuer issued with the OCSPSigning EKU (RFC 6960 §4.2.2.2), or by a responder certificate the
caller trusts explicitly.  Every failure raises :class:`CertificateInvalid`; a verified "revoked" answer is
returned as data, and :func:`require_good` turns anything but "good" into an exception.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from bridge.errors import CertificateInvalid, CertificateRevoked, PkiError, fail_closed
from bridge.pki.keys import as_public_key, verify_signature

__all__ = [
    "DEFAULT_CLOCK_SKEW",
    "OcspStatus",
    "RevocationStatus",
    "issuer_key_hash",
    "make_ocsp_request",
    "request_nonce",
    "require_good",
    "verify_ocsp_response",
]

#: How far a responder's clock may run ahead of ours before its thisUpdate counts as "in the future".
DEFAULT_CLOCK_SKEW = dt.timedelta(minutes=5)
_NONCE_BYTES = 32


class RevocationStatus(enum.StrEnum):
    """A certificate's status as an OCSP responder reports it."""

    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class OcspStatus:
    """A verified OCSP answer about one certificate."""

    status: RevocationStatus
    produced_at: dt.datetime
    this_update: dt.datetime
    next_update: dt.datetime | None
    revoked_at: dt.datetime | None = None
    reason: str | None = None


def _key_bits(public_key: object) -> bytes:
    """The subjectPublicKey BIT STRING contents, which the CertID's issuerKeyHash is computed over."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    if isinstance(public_key, rsa.RSAPublicKey):
        return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    raise PkiError(f"unsupported issuer key type {type(public_key).__name__}")


def issuer_key_hash(issuer: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    """The CertID ``issuerKeyHash`` of ``issuer`` under ``algorithm`` (a hash of its public key bits)."""
    return hashlib.new(algorithm.name, _key_bits(issuer.public_key())).digest()


def _issuer_name_hash(issuer: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    return hashlib.new(algorithm.name, issuer.subject.public_bytes()).digest()


def make_ocsp_request(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    nonce: bool = True,
    *,
    hash_algorithm: hashes.HashAlgorithm | None = None,
) -> bytes:
    """A DER OCSP request for ``cert`` issued by ``issuer``, with a random nonce unless ``nonce`` is false.

    The CertID uses SHA-1 by default: it only identifies the certificate (the response's signature is what
    authenticates), and SHA-1 CertIDs are what every responder must support (RFC 5019 §2.1.1).
    """
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hash_algorithm or hashes.SHA1())  # noqa: S303
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(os.urandom(_NONCE_BYTES)), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def request_nonce(request_der: bytes) -> bytes | None:
    """The nonce of an OCSP request made by :func:`make_ocsp_request` (``None`` if it has none)."""
    req = ocsp.load_der_ocsp_request(request_der)
    try:
        return req.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        return None


def _signer(
    response: ocsp.OCSPResponse, issuer: x509.Certificate, trusted: Sequence[x509.Certificate]
) -> list[x509.Certificate]:
    """Certificates that match the response's responderID, in the order they should be tried."""
    candidates = [issuer, *trusted, *response.certificates]
    if response.responder_key_hash is not None:
        wanted = response.responder_key_hash
        return [c for c in candidates if issuer_key_hash(c, hashes.SHA1()) == wanted]  # noqa: S303
    return [c for c in candidates if c.subject == response.responder_name]


def _authorise_signer(
    signer: x509.Certificate, issuer: x509.Certificate, trusted: Sequence[x509.Certificate], now: dt.datetime
) -> None:
    """Raise unless ``signer`` may speak for ``issuer``: the issuer itself, locally trusted, or delegated."""
    if signer == issuer or signer in trusted:
        return
    # A delegated responder: issued directly by the issuer, for OCSP signing, and currently valid.
    try:
        signer.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertificateInvalid("the OCSP responder certificate was not issued by the certificate's issuer") from exc
    try:
        eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise CertificateInvalid("the OCSP responder certificate lacks the OCSPSigning EKU") from None
    if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        raise CertificateInvalid("the OCSP responder certificate lacks the OCSPSigning EKU")
    if not signer.not_valid_before_utc <= now <= signer.not_valid_after_utc:
        raise CertificateInvalid("the OCSP responder certificate is not valid now")


@fail_closed(CertificateInvalid, "the OCSP response cannot be checked")
def verify_ocsp_response(
    der: bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    trusted_responder_certs: Sequence[x509.Certificate] = (),
    now: dt.datetime,
    max_age: dt.timedelta,
    nonce: bytes | None = None,
    clock_skew: dt.timedelta = DEFAULT_CLOCK_SKEW,
) -> OcspStatus:
    """Verify an OCSP response about ``cert`` (issued by ``issuer``) and return the status it reports.

    ``max_age`` bounds how old thisUpdate may be; ``nonce``, if given, must be echoed.  Raises
    :class:`CertificateInvalid` if the response is malformed, unsuccessful, not signed by an authorised
    responder, about another certificate, or stale — and for anything else that goes wrong checking it:
    cryptography parses parts lazily and raises ``UnsupportedAlgorithm`` or ``ValueError`` for an unknown
    algorithm in them, which must cost this response (the caller tries the next responder), never more.
    """
    if now.tzinfo is None:
        raise CertificateInvalid("verification time must be timezone-aware")
    # (1) Parse, and accept only a successful response (the other statuses are unsigned).
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise CertificateInvalid("the OCSP response does not parse") from exc
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise CertificateInvalid(f"the OCSP responder answered {response.response_status.name}")
    # (2) Find the certificate the responderID names, and check it may answer for this issuer.
    signers = _signer(response, issuer, trusted_responder_certs)
    if not signers:
        raise CertificateInvalid("no known certificate matches the OCSP responder id")
    signer = signers[0]
    _authorise_signer(signer, issuer, trusted_responder_certs, now)
    # (3) The signature over tbsResponseData verifies with the signer's key.
    algorithm = response.signature_hash_algorithm
    if algorithm is None:
        raise CertificateInvalid("the OCSP response's signature algorithm is not supported")
    try:
        verify_signature(as_public_key(signer.public_key()), response.signature, response.tbs_response_bytes, algorithm)
    except (InvalidSignature, PkiError, ValueError) as exc:
        raise CertificateInvalid("the OCSP response's signature does not verify") from exc
    # (4) It is about our certificate: exactly one answer, whose CertID matches serial, issuer name and issuer key.
    singles = list(response.responses)
    if len(singles) != 1:
        raise CertificateInvalid(f"the OCSP response has {len(singles)} answers, expected 1")
    single = singles[0]
    id_alg = single.hash_algorithm
    if (
        single.serial_number != cert.serial_number
        or single.issuer_name_hash != _issuer_name_hash(issuer, id_alg)
        or single.issuer_key_hash != issuer_key_hash(issuer, id_alg)
    ):
        raise CertificateInvalid("the OCSP response is about another certificate")
    if cert.issuer != issuer.subject:
        raise CertificateInvalid("the certificate was not issued by the given issuer")
    # (5) Fresh: thisUpdate not in the future nor older than max_age, nextUpdate (if any) not passed.
    this_update = single.this_update_utc
    next_update = single.next_update_utc
    if this_update > now + clock_skew:
        raise CertificateInvalid("the OCSP response's thisUpdate is in the future")
    if now - this_update > max_age:
        raise CertificateInvalid("the OCSP response is older than the allowed maximum age")
    if next_update is not None and now > next_update + clock_skew:
        raise CertificateInvalid("the OCSP response has passed its nextUpdate")
    # (6) The nonce, when we sent one, comes back unchanged (replay protection).
    if nonce is not None:
        try:
            echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            raise CertificateInvalid("the OCSP response does not echo the request nonce") from None
        if echoed != nonce:
            raise CertificateInvalid("the OCSP response's nonce differs from the request's")
    # (7) Report what the responder said.
    if single.certificate_status is ocsp.OCSPCertStatus.GOOD:
        status = RevocationStatus.GOOD
    elif single.certificate_status is ocsp.OCSPCertStatus.REVOKED:
        status = RevocationStatus.REVOKED
    else:
        status = RevocationStatus.UNKNOWN
    reason = single.revocation_reason
    return OcspStatus(
        status=status,
        produced_at=response.produced_at_utc,
        this_update=this_update,
        next_update=next_update,
        revoked_at=single.revocation_time_utc,
        reason=reason.name if reason is not None else None,
    )


def require_good(
    der: bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    trusted_responder_certs: Sequence[x509.Certificate] = (),
    now: dt.datetime,
    max_age: dt.timedelta,
    nonce: bytes | None = None,
) -> OcspStatus:
    """Like :func:`verify_ocsp_response`, but raise unless the certificate is "good".

    Revoked raises :class:`CertificateRevoked`; "unknown" raises :class:`CertificateInvalid`, because a
    certificate its CA does not vouch for must not be used (fail closed).
    """
    result = verify_ocsp_response(
        der, cert, issuer, trusted_responder_certs=trusted_responder_certs, now=now, max_age=max_age, nonce=nonce
    )
    if result.status is RevocationStatus.REVOKED:
        raise CertificateRevoked(f"certificate {cert.serial_number:x} was revoked at {result.revoked_at}")
    if result.status is not RevocationStatus.GOOD:
        raise CertificateInvalid(f"the OCSP responder does not know certificate {cert.serial_number:x}")
    return result
