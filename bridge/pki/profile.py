"""Körpü's certificate profile: what each kind of certificate contains, and the checks that enforce it.

The profile is specified in ``docs/pki.md``; this module is its executable form.  The CA (:mod:`catalog.ca`)
builds certificates only from the ``*_extensions`` and ``*_subject`` functions here, and verifiers check them only
with the ``check_*`` functions here, so the two cannot drift apart.

The identifier a certificate belongs to is carried in a SubjectAltName URI, ``urn:x-road:<TYPE>:<path>``, where
``<TYPE>`` is the identifier's object type and ``<path>`` its path form with each code percent-encoded (UTF-8,
everything but RFC 3986 unreserved characters).  Codes cannot contain ``/`` or ``%``, so the encoding is
reversible and unambiguous; verifiers also reject non-canonical encodings.  The subject's ``serialNumber``
repeats the path form for people reading ``openssl x509 -text``, and verifiers require the two to agree.
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
from collections.abc import Iterable, Sequence
from urllib.parse import quote, unquote

from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError

from bridge.errors import CertificateInvalid, InvalidCsr, InvalidIdentifier
from bridge.identifiers import MemberId, ObjectType, SecurityServerId, check_code
from bridge.pki.csr import check_public_key_strength
from bridge.pki.keys import PublicKey

__all__ = [
    "URN_PREFIX",
    "CertPurpose",
    "Extensions",
    "auth_cert_extensions",
    "auth_cert_subject",
    "ca_extensions",
    "check_auth_cert",
    "check_cert_purpose",
    "check_conf_cert",
    "check_ocsp_cert",
    "check_sign_cert",
    "check_tls_server_cert",
    "check_tsa_cert",
    "conf_cert_extensions",
    "conf_signer_uri",
    "identifier_uri",
    "instance_from_conf_cert",
    "member_from_sign_cert",
    "ocsp_cert_extensions",
    "parse_identifier_uri",
    "server_from_auth_cert",
    "sign_cert_extensions",
    "sign_cert_subject",
    "tls_server_cert_extensions",
    "tsa_cert_extensions",
    "verify_chain",
]

#: Prefix of every identifier URI in a SubjectAltName.
URN_PREFIX = "urn:x-road:"
#: Object-type word of the configuration-signing certificate's URI (``urn:x-road:GLOBALCONF:<instance>``).
CONF_URI_TYPE = "GLOBALCONF"

#: Extensions to put in a certificate: (extension value, critical).
Extensions = list[tuple[x509.ExtensionType, bool]]


class CertPurpose(enum.StrEnum):
    """What an end-entity certificate is for; selects the profile check in :func:`verify_chain`."""

    AUTH = "auth"
    SIGN = "sign"
    OCSP = "ocsp"
    TSA = "tsa"
    CONF = "conf"
    TLS = "tls"


# Identifier URIs ------------------------------------------------------------------------------------------------


def _encode_codes(parts: Iterable[str]) -> str:
    return "/".join(quote(p, safe="") for p in parts)


def identifier_uri(ident: MemberId | SecurityServerId) -> str:
    """The SubjectAltName URI of a member or security server, e.g. ``urn:x-road:MEMBER:AZ/GOV/123``."""
    return f"{URN_PREFIX}{ident.object_type}:{_encode_codes(ident.parts())}"


def conf_signer_uri(instance: str) -> str:
    """The SubjectAltName URI of a configuration-signing certificate, e.g. ``urn:x-road:GLOBALCONF:AZ``."""
    return f"{URN_PREFIX}{CONF_URI_TYPE}:{_encode_codes([check_code(instance, 'xRoadInstance')])}"


def _parse_uri(uri: str) -> tuple[str, list[str]]:
    """Split a ``urn:x-road:TYPE:path`` URI into the type and decoded codes; raise :class:`CertificateInvalid`."""
    if not uri.startswith(URN_PREFIX):
        raise CertificateInvalid(f"{uri!r} is not a {URN_PREFIX} URI")
    kind, sep, path = uri[len(URN_PREFIX) :].partition(":")
    if not sep:
        raise CertificateInvalid(f"identifier URI {uri!r} lacks an object type")
    codes = [unquote(p, errors="strict") for p in path.split("/")]
    # Only the canonical encoding is accepted, so one identifier has exactly one URI.
    if _encode_codes(codes) != path:
        raise CertificateInvalid(f"identifier URI {uri!r} is not canonically encoded")
    return kind, codes


def parse_identifier_uri(uri: str) -> MemberId | SecurityServerId:
    """Parse a member or security-server identifier URI; raise :class:`CertificateInvalid` if it is neither."""
    try:
        kind, codes = _parse_uri(uri)
        if kind == ObjectType.MEMBER and len(codes) == 3:
            return MemberId(*codes)
        if kind == ObjectType.SERVER and len(codes) == 4:
            return SecurityServerId(MemberId(*codes[:3]), codes[3])
    except (InvalidIdentifier, UnicodeDecodeError) as exc:
        raise CertificateInvalid(f"identifier URI {uri!r} is malformed: {exc}") from exc
    raise CertificateInvalid(f"{uri!r} is not a MEMBER or SERVER identifier URI")


# Subjects -------------------------------------------------------------------------------------------------------

_PRINTABLE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?")


def _serial_number_attr(value: str) -> x509.NameAttribute[str]:
    # X.520 wants PrintableString for serialNumber; codes outside its alphabet (e.g. '_' or Azerbaijani letters)
    # would make an invalid PrintableString, so those fall back to UTF8String, which every parser accepts.
    kind = _ASN1Type.PrintableString if set(value) <= _PRINTABLE else _ASN1Type.UTF8String
    return x509.NameAttribute(NameOID.SERIAL_NUMBER, value, _type=kind)


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidIdentifier(f"{what} must not be empty")
    if len(name) > 64:
        raise InvalidIdentifier(f"{what} is longer than 64 characters (the X.520 upper bound)")
    return name.strip()


def sign_cert_subject(member: MemberId, name: str) -> x509.Name:
    """Subject of a member's signing certificate: ``serialNumber=I/C/M, O=<name>, CN=<memberCode>``."""
    return x509.Name(
        [
            _serial_number_attr(member.path()),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _check_name(name, "member name")),
            x509.NameAttribute(NameOID.COMMON_NAME, member.member_code),
        ]
    )


def auth_cert_subject(server: SecurityServerId, owner_name: str) -> x509.Name:
    """Subject of a security server's authentication certificate: ``serialNumber=I/C/M/S, O=<owner>, CN=<S>``."""
    return x509.Name(
        [
            _serial_number_attr(server.path()),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _check_name(owner_name, "owner name")),
            x509.NameAttribute(NameOID.COMMON_NAME, server.server_code),
        ]
    )


# Extensions the CA puts in ---------------------------------------------------------------------------------------


def _key_usage(
    *,
    digital_signature: bool = False,
    content_commitment: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=content_commitment,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf() -> Extensions:
    return [(x509.BasicConstraints(ca=False, path_length=None), True)]


def ca_extensions(path_length: int) -> Extensions:
    """Extensions of a CA certificate (root: ``path_length=1``, issuing: ``0``), besides SKI/AKI."""
    return [
        (x509.BasicConstraints(ca=True, path_length=path_length), True),
        (_key_usage(key_cert_sign=True, crl_sign=True), True),
    ]


def sign_cert_extensions(member: MemberId) -> Extensions:
    """Signing certificate: KU digitalSignature + contentCommitment (critical), member URI, no EKU."""
    return [
        *_leaf(),
        (_key_usage(digital_signature=True, content_commitment=True), True),
        (x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identifier_uri(member))]), False),
    ]


def auth_cert_extensions(
    server: SecurityServerId,
    public_key: PublicKey,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
) -> Extensions:
    """Authentication certificate: KU digitalSignature (+ keyEncipherment for RSA), EKU server+clientAuth, SANs."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identifier_uri(server))]
    names += [x509.DNSName(d) for d in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    # keyEncipherment only matters for RSA key transport in TLS 1.2; an EC key can never do it.
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    return [
        *_leaf(),
        (_key_usage(digital_signature=True, key_encipherment=is_rsa), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        (x509.SubjectAlternativeName(names), False),
    ]


def ocsp_cert_extensions() -> Extensions:
    """OCSP responder certificate: KU digitalSignature, EKU OCSPSigning, id-pkix-ocsp-nocheck."""
    return [
        *_leaf(),
        (_key_usage(digital_signature=True), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), False),
        (x509.OCSPNoCheck(), False),
    ]


def tsa_cert_extensions() -> Extensions:
    """TSA certificate: KU digitalSignature + contentCommitment, EKU timeStamping only and critical (RFC 3161)."""
    return [
        *_leaf(),
        (_key_usage(digital_signature=True, content_commitment=True), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), True),
    ]


def conf_cert_extensions(instance: str) -> Extensions:
    """Configuration-signing certificate: KU digitalSignature + contentCommitment, URI ``urn:x-road:GLOBALCONF:I``."""
    return [
        *_leaf(),
        (_key_usage(digital_signature=True, content_commitment=True), True),
        (x509.SubjectAlternativeName([x509.UniformResourceIdentifier(conf_signer_uri(instance))]), False),
    ]


def tls_server_cert_extensions(hostnames: Sequence[str]) -> Extensions:
    """TLS server certificate of the central server: KU digitalSignature, EKU serverAuth, DNS/IP SANs."""
    if not hostnames:
        raise CertificateInvalid("a TLS server certificate needs at least one host name")
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return [
        *_leaf(),
        (_key_usage(digital_signature=True), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.SubjectAlternativeName(names), False),
    ]


# Checks ----------------------------------------------------------------------------------------------------------


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType], what: str) -> x509.Extension[x509.ExtensionType]:
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        raise CertificateInvalid(f"{what} lacks the {kind.__name__} extension") from None
    except ValueError as exc:
        raise CertificateInvalid(f"{what} has malformed extensions") from exc


def _check_leaf(cert: x509.Certificate, what: str) -> x509.KeyUsage:
    """Checks every end-entity certificate shares; returns its (critical) KeyUsage."""
    # (a) Not a CA: a leaf that could issue certificates would let its holder mint identities.
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            raise CertificateInvalid(f"{what} is a CA certificate")
    except x509.ExtensionNotFound:
        pass
    except ValueError as exc:
        raise CertificateInvalid(f"{what} has malformed extensions") from exc
    # (b) A key Körpü accepts.
    try:
        check_public_key_strength(cert.public_key())
    except InvalidCsr as exc:
        raise CertificateInvalid(f"{what}: {exc.message}") from exc
    except ValueError as exc:
        raise CertificateInvalid(f"{what} has an unreadable public key") from exc
    # (c) KeyUsage present and critical, never certificate or CRL signing.
    ext = _ext(cert, x509.KeyUsage, what)
    if not ext.critical:
        raise CertificateInvalid(f"{what}: KeyUsage must be critical")
    ku = ext.value
    assert isinstance(ku, x509.KeyUsage)
    if ku.key_cert_sign or ku.crl_sign:
        raise CertificateInvalid(f"{what}: KeyUsage must not allow keyCertSign or cRLSign")
    if not ku.digital_signature:
        raise CertificateInvalid(f"{what}: KeyUsage lacks digitalSignature")
    return ku


def _ekus(cert: x509.Certificate, what: str) -> tuple[list[x509.ObjectIdentifier], bool]:
    ext = _ext(cert, x509.ExtendedKeyUsage, what)
    assert isinstance(ext.value, x509.ExtendedKeyUsage)
    return list(ext.value), ext.critical


def _uris(cert: x509.Certificate, what: str) -> list[str]:
    ext = _ext(cert, x509.SubjectAlternativeName, what)
    assert isinstance(ext.value, x509.SubjectAlternativeName)
    return [u for u in ext.value.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(URN_PREFIX)]


def _serial_number(cert: x509.Certificate) -> str | None:
    values = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    return str(values[0].value) if len(values) == 1 else None


def _identifier(cert: x509.Certificate, what: str) -> MemberId | SecurityServerId:
    # (1) Exactly one urn:x-road: URI: two would make the certificate's owner ambiguous.
    uris = _uris(cert, what)
    if len(uris) != 1:
        raise CertificateInvalid(f"{what} must carry exactly one {URN_PREFIX} identifier URI, found {len(uris)}")
    # (2) It parses as an identifier.
    ident = parse_identifier_uri(uris[0])
    # (3) The subject's serialNumber says the same, so what people read is what software trusts.
    if _serial_number(cert) != ident.path():
        raise CertificateInvalid(f"{what}: subject serialNumber does not match the identifier {ident}")
    return ident


def member_from_sign_cert(cert: x509.Certificate) -> MemberId:
    """The member a signing certificate belongs to; raise :class:`CertificateInvalid` if it names none."""
    ident = _identifier(cert, "signing certificate")
    if not isinstance(ident, MemberId):
        raise CertificateInvalid(f"signing certificate names {ident}, not a member")
    return ident


def server_from_auth_cert(cert: x509.Certificate) -> SecurityServerId:
    """The security server an authentication certificate belongs to; raise :class:`CertificateInvalid`."""
    ident = _identifier(cert, "authentication certificate")
    if not isinstance(ident, SecurityServerId):
        raise CertificateInvalid(f"authentication certificate names {ident}, not a security server")
    return ident


def check_sign_cert(cert: x509.Certificate) -> None:
    """Raise :class:`CertificateInvalid` unless ``cert`` follows the signing-certificate profile."""
    what = "signing certificate"
    # (1) Leaf, strong key, critical KU with digitalSignature.
    ku = _check_leaf(cert, what)
    # (2) Non-repudiation: a signing key's signatures are evidence.
    if not ku.content_commitment:
        raise CertificateInvalid(f"{what}: KeyUsage lacks contentCommitment (nonRepudiation)")
    # (3) No EKU: signing keys must not double as TLS keys.
    try:
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        raise CertificateInvalid(f"{what} must not have an ExtendedKeyUsage extension")
    except x509.ExtensionNotFound:
        pass
    # (4) Names a member.
    member_from_sign_cert(cert)


def check_auth_cert(cert: x509.Certificate) -> None:
    """Raise :class:`CertificateInvalid` unless ``cert`` follows the authentication-certificate profile."""
    what = "authentication certificate"
    # (1) Leaf, strong key, critical KU with digitalSignature.
    _check_leaf(cert, what)
    # (2) Usable on both ends of the mutual-TLS connection between security servers.
    ekus, _ = _ekus(cert, what)
    for needed, label in (
        (ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth"),
        (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth"),
    ):
        if needed not in ekus:
            raise CertificateInvalid(f"{what}: ExtendedKeyUsage lacks {label}")
    # (3) Names a security server.
    server_from_auth_cert(cert)


def check_ocsp_cert(cert: x509.Certificate) -> None:
    """Raise :class:`CertificateInvalid` unless ``cert`` is a delegated OCSP responder certificate."""
    what = "OCSP responder certificate"
    _check_leaf(cert, what)
    ekus, _ = _ekus(cert, what)
    if ExtendedKeyUsageOID.OCSP_SIGNING not in ekus:
        raise CertificateInvalid(f"{what}: ExtendedKeyUsage lacks OCSPSigning")


def check_tsa_cert(cert: x509.Certificate) -> None:
    """Raise :class:`CertificateInvalid` unless ``cert`` is a TSA certificate as RFC 3161 §2.3 requires."""
    what = "TSA certificate"
    _check_leaf(cert, what)
    ekus, critical = _ekus(cert, what)
    if ekus != [ExtendedKeyUsageOID.TIME_STAMPING] or not critical:
        raise CertificateInvalid(f"{what}: ExtendedKeyUsage must be critical and hold only timeStamping")


def instance_from_conf_cert(cert: x509.Certificate) -> str:
    """The instance a configuration-signing certificate signs for; raise :class:`CertificateInvalid`."""
    what = "configuration-signing certificate"
    uris = _uris(cert, what)
    if len(uris) != 1:
        raise CertificateInvalid(f"{what} must carry exactly one {URN_PREFIX} URI, found {len(uris)}")
    try:
        kind, codes = _parse_uri(uris[0])
        if kind != CONF_URI_TYPE or len(codes) != 1:
            raise CertificateInvalid(f"{what}: {uris[0]!r} is not a {CONF_URI_TYPE} URI")
        return check_code(codes[0], "xRoadInstance")
    except (InvalidIdentifier, UnicodeDecodeError) as exc:
        raise CertificateInvalid(f"{what}: malformed URI {uris[0]!r}") from exc


def check_conf_cert(cert: x509.Certificate) -> None:
    """Raise :class:`CertificateInvalid` unless ``cert`` is a configuration-signing certificate."""
    what = "configuration-signing certificate"
    ku = _check_leaf(cert, what)
    if not ku.content_commitment:
        raise CertificateInvalid(f"{what}: KeyUsage lacks contentCommitment (nonRepudiation)")
    instance_from_conf_cert(cert)


def check_tls_server_cert(cert: x509.Certificate) -> None:
    """Raise :class:`CertificateInvalid` unless ``cert`` is a TLS server certificate with a host name."""
    what = "TLS server certificate"
    _check_leaf(cert, what)
    ekus, _ = _ekus(cert, what)
    if ExtendedKeyUsageOID.SERVER_AUTH not in ekus:
        raise CertificateInvalid(f"{what}: ExtendedKeyUsage lacks serverAuth")
    san = _ext(cert, x509.SubjectAlternativeName, what).value
    assert isinstance(san, x509.SubjectAlternativeName)
    if not san.get_values_for_type(x509.DNSName) and not san.get_values_for_type(x509.IPAddress):
        raise CertificateInvalid(f"{what} has no DNS or IP SubjectAltName")


_CHECKS = {
    CertPurpose.AUTH: check_auth_cert,
    CertPurpose.SIGN: check_sign_cert,
    CertPurpose.OCSP: check_ocsp_cert,
    CertPurpose.TSA: check_tsa_cert,
    CertPurpose.CONF: check_conf_cert,
    CertPurpose.TLS: check_tls_server_cert,
}


def check_cert_purpose(cert: x509.Certificate, purpose: CertPurpose | str) -> None:
    """Run the profile check for ``purpose``; raise :class:`CertificateInvalid` if ``cert`` does not fit it."""
    try:
        check = _CHECKS[CertPurpose(purpose)]
    except ValueError:
        raise CertificateInvalid(f"unknown certificate purpose {purpose!r}") from None
    check(cert)


# Chains ----------------------------------------------------------------------------------------------------------

#: Longest chain verify_chain accepts: leaf, issuing CA, root (plus one spare for a CA rollover cross-certificate).
MAX_CHAIN_DEPTH = 3


def verify_chain(
    cert: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    trust_roots: Sequence[x509.Certificate],
    at: dt.datetime,
    purpose: CertPurpose | str,
) -> None:
    """Verify that ``cert`` chains to one of ``trust_roots`` at time ``at`` and fits the profile for ``purpose``.

    Raises :class:`CertificateInvalid`.  Revocation is not checked here; that is OCSP's job
    (:mod:`bridge.pki.ocsp`).
    """
    # (1) Something to trust at all.
    if not trust_roots:
        raise CertificateInvalid("no trusted root certificates are configured")
    if at.tzinfo is None:
        raise CertificateInvalid("verification time must be timezone-aware")
    # (2) Path building and validation by cryptography's RFC 5280 verifier: issuer names, signatures, validity
    #     at ``at`` for every certificate, basicConstraints and pathLen, CA KeyUsage.  The end-entity extension
    #     policy is relaxed to "anything" because Körpü's leaf profiles are not web PKI ones (a signing
    #     certificate has no EKU and no DNS name); step (3) enforces our own profile instead.
    try:
        verifier = (
            PolicyBuilder()
            .store(Store(list(trust_roots)))
            .time(at.astimezone(dt.UTC))
            .max_chain_depth(MAX_CHAIN_DEPTH)
            .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all())
            .build_client_verifier()
        )
        verifier.verify(cert, list(intermediates))
    except VerificationError as exc:
        raise CertificateInvalid(f"certificate {cert.subject.rfc4514_string()} does not chain: {exc}") from exc
    except ValueError as exc:
        raise CertificateInvalid(f"certificate chain cannot be checked: {exc}") from exc
    # (3) The leaf fits the purpose it is presented for.
    check_cert_purpose(cert, purpose)
