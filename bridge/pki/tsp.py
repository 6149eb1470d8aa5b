"""RFC 3161 timestamp client side: requests, responses, and verification of timestamp tokens.

asn1crypto (untyped) is used only inside this module; the public functions take and return ``bytes``,
``int`` and ``datetime`` so no ``Any`` leaks into callers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Collection
from typing import Any, ClassVar

from asn1crypto import cms, core, parser, tsp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization

from bridge.errors import CertificateInvalid, PkiError, fail_closed
from bridge.pki.keys import as_public_key, verify_signature
from bridge.pki.profile import check_tsa_cert

__all__ = [
    "check_token_envelope",
    "make_timestamp_request",
    "parse_timestamp_response",
    "timestamp_request_nonce",
    "verify_timestamp_token",
]


class TimeStampRespAsn1(core.Sequence):  # type: ignore[misc]  # asn1crypto is untyped
    """RFC 3161 TimeStampResp with timeStampToken OPTIONAL, as the RFC has it.

    asn1crypto's own ``tsp.TimeStampResp`` makes the token mandatory, so it can neither parse nor build a rejection.
    """

    _fields: ClassVar[list[tuple[Any, ...]]] = [
        ("status", tsp.PKIStatusInfo),
        ("time_stamp_token", cms.ContentInfo, {"optional": True}),
    ]


_DIGEST_SIZES = {"sha256": 32, "sha384": 48, "sha512": 64}
_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}
# How asn1crypto names signature algorithms in a SignerInfo, mapped to the hash they use.  "rsassa_pkcs1v15" and
# "ecdsa" (no hash in the OID) take the SignerInfo's digestAlgorithm instead, as RFC 5652 allows.
_SIG_HASH = {
    "sha256_rsa": "sha256",
    "sha384_rsa": "sha384",
    "sha512_rsa": "sha512",
    "sha256_ecdsa": "sha256",
    "sha384_ecdsa": "sha384",
    "sha512_ecdsa": "sha512",
}


def _check_alg(hash_alg: str, digest: bytes | None = None) -> None:
    if hash_alg not in _DIGEST_SIZES:
        raise PkiError(f"unsupported timestamp hash algorithm {hash_alg!r}")
    if digest is not None and len(digest) != _DIGEST_SIZES[hash_alg]:
        raise PkiError(f"a {hash_alg} digest is {_DIGEST_SIZES[hash_alg]} bytes, got {len(digest)}")


def make_timestamp_request(
    data_digest: bytes, hash_alg: str = "sha256", nonce: bool = True, cert_req: bool = True
) -> bytes:
    """A DER TimeStampReq for ``data_digest`` (already hashed with ``hash_alg``), with a 64-bit random nonce."""
    _check_alg(hash_alg, data_digest)
    fields: dict[str, Any] = {
        "version": "v1",
        "message_imprint": {"hash_algorithm": {"algorithm": hash_alg}, "hashed_message": data_digest},
        "cert_req": cert_req,
    }
    if nonce:
        fields["nonce"] = secrets.randbits(63) | (1 << 62)
    return bytes(tsp.TimeStampReq(fields).dump())


def timestamp_request_nonce(request_der: bytes) -> int | None:
    """The nonce of a TimeStampReq (``None`` if it has none), to pass to :func:`verify_timestamp_token`."""
    try:
        value = tsp.TimeStampReq.load(request_der)["nonce"].native
    except (ValueError, TypeError) as exc:
        raise PkiError("the timestamp request does not parse") from exc
    return int(value) if value is not None else None


@fail_closed(PkiError, "the timestamp response does not parse")
def parse_timestamp_response(der: bytes) -> bytes:
    """The DER timestamp token (a CMS ContentInfo) in a TimeStampResp; raise :class:`PkiError` if not granted."""
    response = TimeStampRespAsn1.load(der, strict=True)  # a malformed one: "does not parse" (fail_closed)
    status = response["status"]["status"].native
    texts = response["status"]["status_string"].native or []
    fail_info = response["status"]["fail_info"].native
    token = response["time_stamp_token"]
    if status not in ("granted", "granted_with_mods"):
        detail = "; ".join(str(t) for t in texts)
        failures = ", ".join(sorted(fail_info)) if fail_info else "none"
        raise PkiError(f"the TSA refused the request: {status} (failInfo: {failures}) {detail}".rstrip())
    # Not ``token.native``: converting the token to Python values took ~150 ms (certificates and all), and then
    # dump() re-encoded it.  Untouched, the token's bytes are the ones received; verify_timestamp_token parses them.
    if isinstance(token, core.Void):
        raise PkiError("the timestamp response is granted but carries no token")
    return bytes(token.dump())


@fail_closed(PkiError, "the timestamp token does not parse")
def verify_timestamp_token(
    token_der: bytes,
    *,
    data_digest: bytes,
    tsa_cert: x509.Certificate,
    hash_alg: str = "sha256",
    nonce: int | None = None,
) -> dt.datetime:
    """Verify an RFC 3161 token over ``data_digest`` signed by ``tsa_cert``; return its genTime (UTC).

    Does not validate ``tsa_cert``'s chain; do that with :func:`bridge.pki.profile.verify_chain` (purpose
    ``tsa``) against the federation's trust roots.  Raises :class:`PkiError` or :class:`CertificateInvalid`.
    """
    _check_alg(hash_alg, data_digest)
    # (1) The TSA certificate fits the TSA profile.
    check_tsa_cert(tsa_cert)
    # (2) Parse: a ContentInfo holding SignedData over a TSTInfo, with exactly one signer.
    #     What asn1crypto raises on a malformed token becomes "does not parse" (fail_closed).
    content_info = cms.ContentInfo.load(token_der, strict=True)
    if content_info["content_type"].native != "signed_data":
        raise PkiError("the timestamp token is not CMS SignedData")
    signed_data = content_info["content"]
    encap = signed_data["encap_content_info"]
    if encap["content_type"].native != "tst_info":
        raise PkiError("the timestamp token does not contain a TSTInfo")
    tst_der = bytes(encap["content"].contents)
    tst_info = encap["content"].parsed
    _ = tst_info.native
    signer_infos = list(signed_data["signer_infos"])
    if len(signer_infos) != 1:
        raise PkiError(f"the timestamp token has {len(signer_infos)} signers, expected 1")
    signer = signer_infos[0]
    _verify_signer(signer, tst_der, tsa_cert)
    # (7) The token is about our data: same hash algorithm and digest, and our nonce if we sent one.
    imprint = tst_info["message_imprint"]
    if imprint["hash_algorithm"]["algorithm"].native != hash_alg:
        raise PkiError("the timestamp token's hash algorithm differs from the one requested")
    if imprint["hashed_message"].native != data_digest:
        raise PkiError("the timestamp token is for other data")
    if nonce is not None and tst_info["nonce"].native != nonce:
        raise PkiError("the timestamp token's nonce differs from the request's")
    # (8) genTime lies within the TSA certificate's validity.
    gen_time = tst_info["gen_time"].native
    if not isinstance(gen_time, dt.datetime):
        raise PkiError("the timestamp token has no valid genTime")
    gen_time = gen_time.astimezone(dt.UTC)
    if not tsa_cert.not_valid_before_utc <= gen_time <= tsa_cert.not_valid_after_utc:
        raise CertificateInvalid("the timestamp's genTime is outside the TSA certificate's validity")
    return gen_time


@fail_closed(PkiError, "the timestamp token does not parse")
def check_token_envelope(token_der: bytes, known_certs: Collection[bytes]) -> None:
    """Check the parts of a token its signature does not cover; raise :class:`PkiError` if one is unexpected.

    :func:`verify_timestamp_token` checks what the TSA signed.  Anyone on the way from the TSA can still change the
    rest without breaking the signature, so this requires: DER throughout, SignedData version 3 and a signer of
    version 1 or 3, digestAlgorithms exactly the signer's, algorithm parameters absent or NULL where the signature
    does not cover them, no CRLs, no unsigned attributes, and embedded certificates only among ``known_certs``
    (DER).  The auditor applies the same rules (``bridge.evidence``), and the timestamper before it stores a token,
    so that no token is kept that an audit would refuse.

    The DER test compares the token with asn1crypto's forced re-encoding (:func:`_der_reencoding`, 2-10 ms), and
    every header nested in its constructed values with the DER header (:func:`_der_headers`).  What asn1crypto
    raises on a malformed token (RecursionError for one nested too deep) becomes "does not parse" (fail_closed).
    """
    content_info = cms.ContentInfo.load(token_der, strict=True)
    if not _der_headers(token_der) or _der_reencoding(content_info) != token_der:
        raise PkiError("the timestamp token is not DER")
    signed = content_info["content"]
    signers = list(signed["signer_infos"])
    if len(signers) != 1:
        raise PkiError(f"the timestamp token has {len(signers)} signers, expected 1")
    signer = signers[0]
    if signed["version"].native != "v3" or signer["version"].native not in ("v1", "v3"):
        raise PkiError("the timestamp token has unexpected CMS versions")
    digest_algs = [a["algorithm"].native for a in signed["digest_algorithms"]]
    if digest_algs != [signer["digest_algorithm"]["algorithm"].native]:
        raise PkiError("the timestamp token's digestAlgorithms differ from its signer's")
    unsigned_algorithms = [*signed["digest_algorithms"], signer["digest_algorithm"], signer["signature_algorithm"]]
    if any(not isinstance(a["parameters"], (core.Void, core.Null)) for a in unsigned_algorithms):
        raise PkiError("the timestamp token has unexpected algorithm parameters")
    if not isinstance(signed["crls"], core.Void) or not isinstance(signer["unsigned_attrs"], core.Void):
        raise PkiError("the timestamp token carries CRLs or unsigned attributes")
    certificates = signed["certificates"]
    known = set(known_certs)
    if not isinstance(certificates, core.Void) and any(choice.chosen.dump() not in known for choice in certificates):
        raise PkiError("the timestamp token carries a certificate that is not among the known ones")


def _der_reencoding(value: Any) -> bytes:
    """``value.dump(force=True)`` — asn1crypto's DER re-encoding of a parsed value — with each node encoded once.

    asn1crypto's own forced dump is exponential in the depth of a tree with a changed node in it: a changed node's
    ancestors re-encode their subtree each time their contents are read, twice per dump.  Parsing a timestamp
    token's ESSCertIDv2 fills in its default hashAlgorithm, which counts as a change, ~20 levels deep; so
    re-encoding one token took ~0.3 s of CPU, which in the timestamper's worker thread held the GIL and stalled the
    event loop in ~5 ms steps for that long (~250 ms of added lateness per batch, measured with a 1 ms ticker).
    Here each node is re-encoded bottom-up, exactly once, by asn1crypto itself, and its encoding is then pinned on
    the node, so its parent's forced dump reuses it.  Children are enumerated as asn1crypto's dump reaches them
    (:func:`_asn1_children`).  The nodes of ``value`` keep the pinned encodings: read ``value`` further only once
    the result has been found equal to the bytes it was loaded from (then they are those bytes).  A test holds the
    result equal to the plain forced dump for sound and altered tokens.
    """
    for child in _asn1_children(value):
        _der_reencoding(child)
    der = bytes(value.dump(force=True))
    value.dump = lambda force=False: der
    return der


def _asn1_children(value: Any) -> list[Any]:
    """The values ``value.dump(force=True)`` dumps in turn (asn1crypto internals; see :func:`_der_reencoding`)."""
    if isinstance(value, core.Any):
        if value._parsed is None:
            value.parse()
        return [value._parsed[0]]
    if isinstance(value, core.Choice):
        return [value.chosen]
    if isinstance(value, core.ParsableOctetString):  # parsed contents are re-encoded; raw ones are kept
        return [value._parsed[0]] if value._parsed is not None else []
    if value.__class__ is core.Sequence and not value._fields:
        return []  # a SEQUENCE of no known type: asn1crypto keeps its bytes as received
    if isinstance(value, (core.Sequence, core.SequenceOf)):
        if value.children is None:
            value._parse_children()
        children = [value._lazy_child(i) for i, child in enumerate(value.children) if child is not None]
        return [child for child in children if child is not core.VOID]
    return []


#: Deeper than any token needs (certificates with names and extensions stay under ~25 levels).
_MAX_DER_DEPTH = 64


def _der_headers(data: bytes) -> bool:
    """Whether ``data`` is one value and it and every value nested in a constructed one has its DER header.

    asn1crypto's forced re-encoding keeps some headers as received — a NULL's (``05 81 00`` for ``05 00``) — so
    without this a token could be re-encoded on the way without the DER test noticing.  Primitive values are not
    entered: the ones holding encodings are covered by the signature (the TSTInfo, through messageDigest) or are
    the signature value itself.  asn1crypto's parser finds each value's extent (and refuses non-minimal tags);
    this walks them by offset, so a value with many parts costs linear time, and compares each header's length
    octets with the DER form: definite, and as short as the length allows.
    """
    # (start, end) of runs of sibling values still to check, with their depth.
    runs = [(0, len(data), 0)]
    top = True
    while runs:
        at, end, depth = runs.pop()
        if depth > _MAX_DER_DEPTH:
            return False
        while at < end:
            header_end, contents_end = parser._parse(data, end, at, lengths_only=True)
            if top and contents_end != end:
                return False  # trailing data after the one value
            top = False
            length_at = at + 1
            if data[at] & 0x1F == 0x1F:  # a tag number in more octets: up to the one without the high bit
                while data[length_at] & 0x80:
                    length_at += 1
                length_at += 1
            size = contents_end - header_end
            der_length = bytes([size]) if size < 0x80 else _long_length(size)
            if data[length_at:header_end] != der_length:
                return False  # indefinite, or longer than needed
            if data[at] & 0x20:  # constructed
                runs.append((header_end, contents_end, depth + 1))
            at = contents_end
    return True


def _long_length(size: int) -> bytes:
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _verify_signer(signer: Any, tst_der: bytes, tsa_cert: x509.Certificate) -> None:
    from asn1crypto import x509 as a_x509

    cert_der = tsa_cert.public_bytes(serialization.Encoding.DER)
    a_cert = a_x509.Certificate.load(cert_der)
    # (3) The signer is the TSA certificate (by issuer and serial, or by subject key identifier).
    sid = signer["sid"]
    if sid.name == "issuer_and_serial_number":
        matches = (
            sid.chosen["issuer"].dump() == a_cert.issuer.dump()
            and sid.chosen["serial_number"].native == a_cert.serial_number
        )
    else:
        matches = sid.chosen.native == a_cert.key_identifier
    if not matches:
        raise CertificateInvalid("the timestamp token was not signed by the given TSA certificate")
    # (4) Signed attributes are mandatory for TSTInfo; contentType must be id-ct-TSTInfo.
    attrs = signer["signed_attrs"]
    if not attrs.native:
        raise PkiError("the timestamp token has no signed attributes")
    by_type: dict[str, list[Any]] = {}
    for attr in attrs:
        by_type.setdefault(attr["type"].native, []).append(attr["values"])
    if any(len(v) != 1 for v in by_type.values()):
        raise PkiError("the timestamp token repeats a signed attribute")

    def single(name: str) -> Any:
        values = by_type.get(name)
        if values is None or len(values[0]) != 1:
            raise PkiError(f"the timestamp token lacks the {name} signed attribute")
        return values[0][0]

    if single("content_type").native != "tst_info":
        raise PkiError("the timestamp token's contentType attribute is not id-ct-TSTInfo")
    # (5) messageDigest is the hash of the TSTInfo actually encapsulated.
    digest_name = signer["digest_algorithm"]["algorithm"].native
    if digest_name not in _DIGEST_SIZES:
        raise PkiError(f"unsupported digest algorithm {digest_name} in the timestamp token")
    if single("message_digest").native != hashlib.new(digest_name, tst_der).digest():
        raise PkiError("the timestamp token's messageDigest does not match its content")
    # The ESS signing-certificate attribute (v2, or v1 with SHA-1) must name exactly this certificate, so a
    # token cannot be re-attributed to another certificate with the same key.
    if "signing_certificate_v2" in by_type:
        ess = single("signing_certificate_v2")["certs"][0]
        ess_alg = ess["hash_algorithm"]["algorithm"].native
        if ess_alg not in _DIGEST_SIZES or ess["cert_hash"].native != hashlib.new(ess_alg, cert_der).digest():
            raise CertificateInvalid("the timestamp token's signingCertificateV2 names another certificate")
    elif "signing_certificate" in by_type:
        ess = single("signing_certificate")["certs"][0]
        if ess["cert_hash"].native != hashlib.sha1(cert_der).digest():  # noqa: S324 - ESS v1 is defined with SHA-1
            raise CertificateInvalid("the timestamp token's signingCertificate names another certificate")
    else:
        raise PkiError("the timestamp token lacks the ESS signingCertificate attribute")
    # (6) The signature over the signed attributes, re-tagged from [0] IMPLICIT to SET OF as RFC 5652 §5.4 says.
    signed_bytes = b"\x31" + attrs.dump()[1:]
    sig_alg = signer["signature_algorithm"]["algorithm"].native
    hash_name = _SIG_HASH.get(sig_alg, digest_name if sig_alg in ("rsassa_pkcs1v15", "ecdsa") else None)
    if hash_name is None or hash_name not in _HASHES:
        raise PkiError(f"unsupported signature algorithm {sig_alg} in the timestamp token")
    try:
        verify_signature(
            as_public_key(tsa_cert.public_key()), signer["signature"].native, signed_bytes, _HASHES[hash_name]
        )
    except (InvalidSignature, PkiError, ValueError) as exc:
        raise CertificateInvalid("the timestamp token's signature does not verify") from exc
