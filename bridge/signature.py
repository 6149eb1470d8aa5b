"""Detached XML-DSig signatures over the parts of a message: what every security server signs and verifies.

Each message between security servers is signed with the member's signing key over the SHA-512 digests of all its
parts.  The signature is a plain, detached XML-DSig ``ds:Signature`` document whose ``ds:Reference`` elements
name the parts by a relative URI (the part's name, ``message``, ``body``, ``attachment-1``, …) and carry their
digests, so an auditor can check it with standard tools: put each part in a file named like its URI next to the
signature and run ``xmlsec1 --verify``.  The format is specified in ``docs/protocol.md`` ("Message signature").

Algorithms are fixed, not negotiated: exclusive XML canonicalisation 1.0, SHA-512 digests, and ECDSA-SHA256
(P-256 keys; ECDSA-SHA384 for P-384 keys from external CAs) or RSA-SHA256 (PKCS#1 v1.5), chosen by the key type
as :func:`bridge.pki.keys.signature_hash` does.  A verifier accepts only the method that matches the certificate's
key, so a signature cannot be re-labelled with another algorithm.

Speed matters because this runs once per message on each side.  :class:`MessageSigner` builds ``SignedInfo`` from a
fixed template whose text *is* its exclusive canonical form, so signing costs one hash-and-sign and some string
formatting, never a canonicalisation.  :func:`verify_signature` parses once with :func:`bridge.xmlsafe.parse_xml`,
canonicalises the received ``SignedInfo`` with lxml (it must not assume the sender used our template) and caches
parsed signer certificates by their encoding, so messages from the same member do not re-parse the certificate.

Verification here proves only that the parts were signed with the key of the certificate in ``KeyInfo``.  Whether
that certificate may sign for the member named in the message (chain to an approved CA, signing profile, OCSP
status) is the caller's check, with :mod:`bridge.pki.profile` and the stapled OCSP responses.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from bridge.errors import KorpuError, PkiError, SignatureInvalid
from bridge.pki.keys import PrivateKey, PublicKey, as_private_key, as_public_key
from bridge.xmlsafe import parse_xml

__all__ = [
    "C14N_EXCLUSIVE",
    "DIGEST_SHA512",
    "DS_NS",
    "MAX_SIGNATURE_BYTES",
    "PART_NAME_RE",
    "SIGNATURE_ECDSA_SHA256",
    "SIGNATURE_ECDSA_SHA384",
    "SIGNATURE_RSA_SHA256",
    "SIGNING_TIME_NS",
    "MessageSigner",
    "Part",
    "VerifiedSignature",
    "check_part_name",
    "part_digest",
    "verify_signature",
    "verify_signature_details",
]

#: XML-DSig namespace.
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
#: Exclusive XML canonicalisation 1.0 without comments: the only canonicalisation accepted.
C14N_EXCLUSIVE = "http://www.w3.org/2001/10/xml-exc-c14n#"
#: SHA-512 digest method: the only digest accepted (the same hash :class:`bridge.spool.Spool` computes).
DIGEST_SHA512 = "http://www.w3.org/2001/04/xmlenc#sha512"
#: ECDSA with SHA-256 (RFC 6931), for P-256 keys; the signature value is raw ``r || s``, not DER.
SIGNATURE_ECDSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
#: ECDSA with SHA-384 (RFC 6931), for P-384 keys.
SIGNATURE_ECDSA_SHA384 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384"
#: RSASSA-PKCS1-v1_5 with SHA-256 (RFC 6931), for RSA keys.
SIGNATURE_RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
#: Namespace of the optional signed ``SigningTime`` element.
SIGNING_TIME_NS = "urn:korpu:signature:1"
#: Part names: simple lowercase tokens, used verbatim as relative Reference URIs (and file names for xmlsec1).
PART_NAME_RE = re.compile(r"[a-z0-9-]{1,32}")
#: Default cap on the size of a signature document (checked before parsing).
MAX_SIGNATURE_BYTES = 64 * 1024

_SHA512_LEN = 64
_OBJECT_TYPE = "http://www.w3.org/2000/09/xmldsig#Object"
_SIGNING_TIME_ID = "signing-time"
_TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z")

# Clark names of the elements the verifier looks at.
_SIGNATURE = f"{{{DS_NS}}}Signature"
_SIGNED_INFO = f"{{{DS_NS}}}SignedInfo"
_C14N_METHOD = f"{{{DS_NS}}}CanonicalizationMethod"
_SIGNATURE_METHOD = f"{{{DS_NS}}}SignatureMethod"
_REFERENCE = f"{{{DS_NS}}}Reference"
_TRANSFORMS = f"{{{DS_NS}}}Transforms"
_TRANSFORM = f"{{{DS_NS}}}Transform"
_DIGEST_METHOD = f"{{{DS_NS}}}DigestMethod"
_DIGEST_VALUE = f"{{{DS_NS}}}DigestValue"
_SIGNATURE_VALUE = f"{{{DS_NS}}}SignatureValue"
_KEY_INFO = f"{{{DS_NS}}}KeyInfo"
_X509_DATA = f"{{{DS_NS}}}X509Data"
_X509_CERTIFICATE = f"{{{DS_NS}}}X509Certificate"
_OBJECT = f"{{{DS_NS}}}Object"
_SIGNING_TIME = f"{{{SIGNING_TIME_NS}}}SigningTime"

# Templates.  Every string below is already in exclusive-c14n form: empty elements written as start/end pairs,
# attributes in c14n order (unqualified attributes sorted by name: Type before URI), no whitespace between
# elements, and no characters that c14n would escape (part names, base64 and URIs contain none).  Inside the
# document SignedInfo inherits xmlns:ds from Signature; its canonical form carries the declaration itself,
# because exclusive c14n renders a visibly used namespace on the apex element.
_SIGNED_INFO_OPEN_C14N = f'<ds:SignedInfo xmlns:ds="{DS_NS}">'
_SIGNED_INFO_OPEN_DOC = "<ds:SignedInfo>"
_METHODS = (
    f'<ds:CanonicalizationMethod Algorithm="{C14N_EXCLUSIVE}"></ds:CanonicalizationMethod>'
    '<ds:SignatureMethod Algorithm="{method}"></ds:SignatureMethod>'
)
_PART_REFERENCE = (
    '<ds:Reference URI="{name}">'
    f'<ds:DigestMethod Algorithm="{DIGEST_SHA512}"></ds:DigestMethod>'
    "<ds:DigestValue>{digest}</ds:DigestValue></ds:Reference>"
)
_TIME_REFERENCE = (
    f'<ds:Reference Type="{_OBJECT_TYPE}" URI="#{_SIGNING_TIME_ID}">'
    f'<ds:Transforms><ds:Transform Algorithm="{C14N_EXCLUSIVE}"></ds:Transform></ds:Transforms>'
    f'<ds:DigestMethod Algorithm="{DIGEST_SHA512}"></ds:DigestMethod>'
    "<ds:DigestValue>{digest}</ds:DigestValue></ds:Reference>"
)
# The Object's canonical form (with xmlns:ds, as c14n renders it as apex) and its form inside the document.
_TIME_OBJECT = (
    '<ds:Object{ns} Id="' + _SIGNING_TIME_ID + '">'
    f'<k:SigningTime xmlns:k="{SIGNING_TIME_NS}">{{time}}</k:SigningTime></ds:Object>'
)


# Parts ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Part:
    """One signed part of a message: its name (the Reference URI) and the SHA-512 digest of its bytes."""

    name: str
    digest: bytes


def part_digest(data: bytes) -> bytes:
    """SHA-512 of ``data``: the digest of a small in-memory part (large parts get theirs from a Spool)."""
    return hashlib.sha512(data).digest()


def check_part_name(name: object) -> str:
    """Return ``name`` if it is a valid part name (``[a-z0-9-]{1,32}``); raise :class:`ValueError` otherwise."""
    if not isinstance(name, str) or PART_NAME_RE.fullmatch(name) is None:
        raise ValueError(f"part name must match [a-z0-9-]{{1,32}}: {name!r:.40}")
    return name


# Signing --------------------------------------------------------------------------------------------------------


def _method_for(key: PrivateKey | PublicKey) -> str:
    """The signature method URI Körpü uses for ``key`` (the same pairing as :func:`keys.signature_hash`)."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return SIGNATURE_ECDSA_SHA256
        if isinstance(key.curve, ec.SECP384R1):
            return SIGNATURE_ECDSA_SHA384
        raise PkiError(f"unsupported curve {key.curve.name} for message signatures")
    if key.key_size < 2048:
        raise PkiError(f"RSA key of {key.key_size} bits is too weak for message signatures")
    return SIGNATURE_RSA_SHA256


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _stamp(value: dt.datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("signing_time must be timezone-aware")
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class MessageSigner:
    """Signs message parts with one member's signing key; build once per key, call :meth:`sign` per message.

    ``chain`` certificates (intermediate CAs) follow the signer certificate in ``KeyInfo`` so a verifier without
    them can still build the path; they are not covered by the signature (nothing in ``KeyInfo`` is).
    """

    __slots__ = ("_coord_bytes", "_ec_algorithm", "_key", "_method", "_tail")

    def __init__(
        self,
        key: PrivateKey | object,
        cert: x509.Certificate,
        chain: Sequence[x509.Certificate] = (),
    ) -> None:
        private = as_private_key(key)
        # A key/certificate mismatch would only show up as a failed verification on the other side; catch it here.
        if private.public_key() != cert.public_key():
            raise PkiError("the signing key does not match the signing certificate")
        self._key = private
        self._method = _method_for(private)
        self._ec_algorithm: ec.ECDSA | None = None
        self._coord_bytes = 0
        if isinstance(private, ec.EllipticCurvePrivateKey):
            hash_algorithm = hashes.SHA256() if self._method == SIGNATURE_ECDSA_SHA256 else hashes.SHA384()
            self._ec_algorithm = ec.ECDSA(hash_algorithm)
            self._coord_bytes = (private.curve.key_size + 7) // 8
        certs = "".join(
            f"<ds:X509Certificate>{_b64(c.public_bytes(Encoding.DER))}</ds:X509Certificate>" for c in (cert, *chain)
        )
        # Everything after SignatureValue is the same for every message: build it once.
        self._tail = f"</ds:SignatureValue><ds:KeyInfo><ds:X509Data>{certs}</ds:X509Data></ds:KeyInfo>"

    @property
    def signature_method(self) -> str:
        """The signature method URI this signer writes."""
        return self._method

    def sign(self, parts: Sequence[Part], *, signing_time: dt.datetime | None = None) -> bytes:
        """Sign ``parts`` and return the ``ds:Signature`` document (UTF-8, no XML declaration).

        ``signing_time``, if given, is put in a ``ds:Object`` that a further Reference covers, so it is signed too.
        Raises :class:`ValueError` for no parts, a malformed or repeated name or a digest that is not SHA-512.
        """
        if not parts:
            raise ValueError("a message signature needs at least one part")
        seen: set[str] = set()
        refs: list[str] = []
        for part in parts:
            name = check_part_name(part.name)
            if name in seen:
                raise ValueError(f"part {name!r} is listed twice")
            seen.add(name)
            if len(part.digest) != _SHA512_LEN:
                raise ValueError(f"part {name!r}: digest must be {_SHA512_LEN} bytes (SHA-512)")
            refs.append(_PART_REFERENCE.format(name=name, digest=_b64(part.digest)))
        time_object = ""
        if signing_time is not None:
            stamp = _stamp(signing_time)
            canonical_object = _TIME_OBJECT.format(ns=f' xmlns:ds="{DS_NS}"', time=stamp)
            refs.append(_TIME_REFERENCE.format(digest=_b64(part_digest(canonical_object.encode("ascii")))))
            time_object = _TIME_OBJECT.format(ns="", time=stamp)
        body = _METHODS.format(method=self._method) + "".join(refs) + "</ds:SignedInfo>"
        # The canonical SignedInfo is exactly what a verifier's exc-c14n will produce; it is what gets signed.
        signed_info = (_SIGNED_INFO_OPEN_C14N + body).encode("ascii")
        value = self._sign(signed_info)
        document = (
            f'<ds:Signature xmlns:ds="{DS_NS}">{_SIGNED_INFO_OPEN_DOC}{body}'
            f"<ds:SignatureValue>{_b64(value)}{self._tail}{time_object}</ds:Signature>"
        )
        return document.encode("ascii")

    def _sign(self, data: bytes) -> bytes:
        key = self._key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            assert self._ec_algorithm is not None
            r, s = decode_dss_signature(key.sign(data, self._ec_algorithm))
            # XML-DSig's ECDSA value is r || s, each left-padded to the curve's byte length (RFC 4050 / 6931).
            n = self._coord_bytes
            return r.to_bytes(n, "big") + s.to_bytes(n, "big")
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


# Verification ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedSignature:
    """What a verified signature tells: the signer certificate, the chain it carried and the signed time, if any."""

    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    signing_time: dt.datetime | None


@dataclass(frozen=True, slots=True)
class _CertInfo:
    cert: x509.Certificate
    key: PublicKey
    method: str


@functools.lru_cache(maxsize=256)
def _load_cert(text: str) -> _CertInfo:
    # Keyed by the base64 text as received, so a cache hit skips base64 decoding as well as DER parsing.  Failures
    # raise and are therefore not cached.  256 entries: a security server talks to a bounded set of members.
    der = _strict_b64(text, "X509Certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise SignatureInvalid("KeyInfo certificate is not a DER X.509 certificate") from None
    try:
        key = as_public_key(cert.public_key())
        method = _method_for(key)
    except (PkiError, ValueError) as exc:
        raise SignatureInvalid(f"KeyInfo certificate has an unusable key: {exc.args[0] if exc.args else ''}") from None
    return _CertInfo(cert, key, method)


def _strict_b64(text: str | None, what: str) -> bytes:
    # Whitespace is allowed (other signers wrap base64 lines), non-canonical padding bits are not: a value must
    # have one encoding, so that relays cannot alter logged bytes without detection.
    compact = "".join((text or "").split())
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureInvalid(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != compact:
        raise SignatureInvalid(f"{what} is not canonical base64")
    return raw


def _children(elem: etree._Element) -> list[etree._Element]:
    # Comments and processing instructions count as children here (their tag is not a str), so they are refused
    # where the structure is checked: the format has no use for them.
    return list(elem)


def _expect_empty(elem: etree._Element, what: str, attrs: tuple[str, ...]) -> None:
    if len(elem) or (elem.text or "").strip():
        raise SignatureInvalid(f"{what} must be empty")
    if tuple(sorted(elem.attrib.keys())) != attrs:
        raise SignatureInvalid(f"{what} has unexpected attributes")


def _algorithm(elem: etree._Element, what: str) -> str:
    _expect_empty(elem, what, ("Algorithm",))
    return elem.get("Algorithm") or ""


def _digest_of(children: list[etree._Element], what: str) -> bytes:
    method, value = children
    if method.tag != _DIGEST_METHOD or value.tag != _DIGEST_VALUE:
        raise SignatureInvalid(f"{what}: expected DigestMethod and DigestValue")
    if _algorithm(method, f"{what} DigestMethod") != DIGEST_SHA512:
        raise SignatureInvalid(f"{what}: digest method must be SHA-512")
    if len(value) or value.attrib:
        raise SignatureInvalid(f"{what}: DigestValue must hold only base64 text")
    digest = _strict_b64(value.text, f"{what} DigestValue")
    if len(digest) != _SHA512_LEN:
        raise SignatureInvalid(f"{what}: DigestValue is not a SHA-512 digest")
    return digest


def verify_signature(
    signature: bytes,
    parts: Mapping[str, bytes],
    *,
    max_bytes: int = MAX_SIGNATURE_BYTES,
) -> x509.Certificate:
    """Verify a message signature over ``parts`` (name → SHA-512 digest); return the signer certificate.

    Raises :class:`SignatureInvalid` on any problem; never returns without a verified signature.  The certificate
    is *not* validated here (chain, profile, revocation): see the module docstring.
    """
    return verify_signature_details(signature, parts, max_bytes=max_bytes).cert


def verify_signature_details(
    signature: bytes,
    parts: Mapping[str, bytes],
    *,
    max_bytes: int = MAX_SIGNATURE_BYTES,
) -> VerifiedSignature:
    """Like :func:`verify_signature`, also returning the chain certificates from KeyInfo and the signing time."""
    try:
        return _verify(signature, parts, max_bytes)
    except SignatureInvalid:
        raise
    except KorpuError as exc:
        raise SignatureInvalid(f"message signature does not verify: {exc.message}") from None
    except Exception as exc:
        # Fail closed: whatever went wrong, the message is not accepted as signed.
        raise SignatureInvalid(f"message signature could not be verified ({type(exc).__name__})") from None


def _verify(data: bytes, parts: Mapping[str, bytes], max_bytes: int) -> VerifiedSignature:
    # (1) Safe parse: size cap before parsing, no DOCTYPE or entities, shallow nesting (the format is 5 deep).
    root = parse_xml(data, max_bytes=max_bytes, error=SignatureInvalid, max_depth=8, what="message signature")
    if root.tag != _SIGNATURE:
        raise SignatureInvalid("message signature must be a ds:Signature element")

    # (2) Structure of Signature: SignedInfo, SignatureValue, KeyInfo and an Object only for the signing time.
    top = _children(root)
    if len(top) not in (3, 4) or [e.tag for e in top[:3]] != [_SIGNED_INFO, _SIGNATURE_VALUE, _KEY_INFO]:
        raise SignatureInvalid("ds:Signature must hold SignedInfo, SignatureValue and KeyInfo, in that order")
    signed_info, value_elem, key_info = top[:3]
    time_object = top[3] if len(top) == 4 else None
    if time_object is not None and time_object.tag != _OBJECT:
        raise SignatureInvalid("unexpected element after KeyInfo")

    # (3) SignedInfo: exclusive c14n and a signature method; nothing in SignedInfo may carry an Id or a
    #     namespace-prefix list that would change what is canonicalised.
    si = _children(signed_info)
    if len(si) < 3 or si[0].tag != _C14N_METHOD or si[1].tag != _SIGNATURE_METHOD or signed_info.attrib:
        raise SignatureInvalid("SignedInfo must hold CanonicalizationMethod, SignatureMethod and References")
    if _algorithm(si[0], "CanonicalizationMethod") != C14N_EXCLUSIVE:
        raise SignatureInvalid("canonicalization method must be exclusive XML canonicalization 1.0")
    method = _algorithm(si[1], "SignatureMethod")
    if method not in (SIGNATURE_ECDSA_SHA256, SIGNATURE_ECDSA_SHA384, SIGNATURE_RSA_SHA256):
        raise SignatureInvalid("signature method must be ECDSA-SHA256/384 or RSA-SHA256")

    # (4) References: each part exactly once, by name, no transforms; at most one signed-time reference.
    signed: dict[str, bytes] = {}
    time_digest: bytes | None = None
    for ref in si[2:]:
        if ref.tag != _REFERENCE:
            raise SignatureInvalid("SignedInfo may hold only References after SignatureMethod")
        children = _children(ref)
        uri = ref.get("URI")
        if uri == f"#{_SIGNING_TIME_ID}":
            if time_digest is not None or tuple(sorted(ref.attrib.keys())) != ("Type", "URI"):
                raise SignatureInvalid("signing-time reference is repeated or has unexpected attributes")
            if ref.get("Type") != _OBJECT_TYPE or len(children) != 3 or children[0].tag != _TRANSFORMS:
                raise SignatureInvalid("signing-time reference must be an Object with one exc-c14n transform")
            transforms = _children(children[0])
            if children[0].attrib or len(transforms) != 1 or transforms[0].tag != _TRANSFORM:
                raise SignatureInvalid("signing-time reference must have exactly one transform")
            if _algorithm(transforms[0], "Transform") != C14N_EXCLUSIVE:
                raise SignatureInvalid("signing-time transform must be exclusive XML canonicalization 1.0")
            time_digest = _digest_of(children[1:], "signing-time reference")
            continue
        if uri is None or PART_NAME_RE.fullmatch(uri) is None or tuple(ref.attrib.keys()) != ("URI",):
            raise SignatureInvalid("a Reference URI must be a part name and its only attribute")
        if uri in signed:
            raise SignatureInvalid(f"part {uri!r} is referenced twice")
        if len(children) != 2:
            raise SignatureInvalid(f"reference to part {uri!r} must hold only DigestMethod and DigestValue")
        signed[uri] = _digest_of(children, f"reference to part {uri!r}")

    # (5) The reference set equals the message's parts: nothing unsigned, nothing signed that is not there.
    if signed.keys() != parts.keys():
        missing = sorted(parts.keys() - signed.keys())
        extra = sorted(signed.keys() - parts.keys())
        detail = "; ".join(
            x
            for x in (
                f"parts not signed: {', '.join(missing)}" if missing else "",
                f"signed parts not in the message: {', '.join(extra)}" if extra else "",
            )
            if x
        )
        raise SignatureInvalid(f"signature does not cover exactly the message's parts ({detail})")
    for name, digest in signed.items():
        if not hmac.compare_digest(digest, parts[name]):
            raise SignatureInvalid(f"digest of part {name!r} does not match the signature")

    # (6) The signing time, when present, is the Object its reference covers (canonicalised in place).
    signing_time: dt.datetime | None = None
    if (time_object is None) != (time_digest is None):
        raise SignatureInvalid("signing-time Object and its reference must come together")
    if time_object is not None and time_digest is not None:
        signing_time = _signing_time(time_object, time_digest)

    # (7) Certificates: X509Data with the signer certificate first, then any chain certificates.
    ki = _children(key_info)
    if key_info.attrib or len(ki) != 1 or ki[0].tag != _X509_DATA or ki[0].attrib:
        raise SignatureInvalid("KeyInfo must hold exactly one X509Data")
    cert_elems = _children(ki[0])
    if not cert_elems or any(e.tag != _X509_CERTIFICATE or len(e) or e.attrib for e in cert_elems):
        raise SignatureInvalid("X509Data must hold only X509Certificate elements")
    infos = [_load_cert(e.text or "") for e in cert_elems]
    signer = infos[0]

    # (8) The method must be the one Körpü pairs with the signer's key: no algorithm substitution.
    if method != signer.method:
        raise SignatureInvalid("signature method does not match the signer certificate's key")

    # (9) Signature value over the exclusive canonical form of SignedInfo as received.
    if value_elem.attrib or len(value_elem):
        raise SignatureInvalid("SignatureValue must hold only base64 text")
    value = _strict_b64(value_elem.text, "SignatureValue")
    canonical = etree.tostring(signed_info, method="c14n", exclusive=True)
    try:
        _check_value(signer, value, canonical)
    except InvalidSignature:
        raise SignatureInvalid("signature value does not verify with the signer certificate") from None
    return VerifiedSignature(signer.cert, tuple(i.cert for i in infos[1:]), signing_time)


def _signing_time(obj: etree._Element, digest: bytes) -> dt.datetime:
    if tuple(obj.attrib.items()) != (("Id", _SIGNING_TIME_ID),) or len(obj) != 1 or (obj.text or "").strip():
        raise SignatureInvalid("signing-time Object must hold exactly one SigningTime")
    stamp = obj[0]
    if stamp.tag != _SIGNING_TIME or len(stamp) or stamp.attrib:
        raise SignatureInvalid("signing-time Object must hold exactly one SigningTime")
    canonical = etree.tostring(obj, method="c14n", exclusive=True)
    if not hmac.compare_digest(part_digest(canonical), digest):
        raise SignatureInvalid("digest of the signing time does not match the signature")
    text = stamp.text or ""
    if _TIME_RE.fullmatch(text) is None:
        raise SignatureInvalid("SigningTime must be a UTC time like 2025-01-31T12:00:00Z")
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _check_value(signer: _CertInfo, value: bytes, data: bytes) -> None:
    key = signer.key
    if isinstance(key, ec.EllipticCurvePublicKey):
        n = (key.curve.key_size + 7) // 8
        if len(value) != 2 * n:
            raise InvalidSignature
        der = encode_dss_signature(int.from_bytes(value[:n], "big"), int.from_bytes(value[n:], "big"))
        algorithm = hashes.SHA256() if signer.method == SIGNATURE_ECDSA_SHA256 else hashes.SHA384()
        key.verify(der, data, ec.ECDSA(algorithm))
    else:
        key.verify(value, data, padding.PKCS1v15(), hashes.SHA256())
