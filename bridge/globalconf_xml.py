"""Global configuration on the wire: XML form (``schemas/globalconf.xsd``), signing and verification.

The published document is one ``gc:globalConf`` element (namespace ``urn:korpu:globalconf:1``) carrying an
*enveloped* XML-DSig signature as its last child:

* ``ds:Reference URI=""`` — the whole document — with the transforms enveloped-signature and exclusive XML
  canonicalisation 1.0 (``http://www.w3.org/2001/10/xml-exc-c14n#``), digest SHA-256;
* ``ds:SignedInfo`` canonicalised with exclusive c14n 1.0 as well;
* signature ECDSA-SHA256 (EC keys) or RSA-SHA256 (PKCS#1 v1.5, RSA keys);
* the signing certificate in ``ds:KeyInfo/ds:X509Data/ds:X509Certificate``.

Exclusive c14n was chosen because the signed element is the document root today but may be embedded elsewhere
(an evidence container, say) later; exclusive c14n keeps the signature valid regardless of the namespaces in scope
around it, and ``xmlsec1`` and every other XML-DSig implementation support it.

:func:`verify_and_parse` is the only way bytes become a :class:`~bridge.globalconf.GlobalConf` outside tests.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
from typing import TYPE_CHECKING, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from lxml import etree

import schemas
from bridge import identifiers
from bridge.errors import (
    GlobalConfError,
    GlobalConfExpired,
    GlobalConfMalformed,
    GlobalConfSignatureInvalid,
    InvalidIdentifier,
)
from bridge.globalconf import (
    AccessRight,
    ApprovedCA,
    GlobalConf,
    GlobalConfParams,
    GlobalGroup,
    MemberInfo,
    SecurityServerInfo,
    ServiceInfo,
    ServiceType,
    TimestampingService,
)
from bridge.identifiers import (
    ClientId,
    GlobalGroupId,
    MemberId,
    SecurityServerId,
    ServiceId,
    SubsystemId,
)
from bridge.xmlsafe import parse_xml, safe_parser, schema_error

if TYPE_CHECKING:
    from bridge.anchor import ConfigurationAnchor

__all__ = [
    "DS_NS",
    "GC_NS",
    "MAX_GLOBALCONF_BYTES",
    "SigningKey",
    "from_xml",
    "sign",
    "to_xml",
    "verify_and_parse",
]

#: Namespace of Körpü's global configuration documents.
GC_NS = "urn:korpu:globalconf:1"
#: XML-DSig namespace.
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
#: Largest signed document a security server accepts (checked before parsing).
MAX_GLOBALCONF_BYTES = 16 * 1024 * 1024

#: Private keys the central server may sign global configuration with.
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_ID = identifiers.ID_NS
_NSMAP: dict[str, str] = {"gc": GC_NS, "id": _ID}
_SERVICE_TYPES: tuple[ServiceType, ...] = ("REST", "SOAP", "OPENAPI3")
_EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"


def _q(local: str) -> str:
    return f"{{{GC_NS}}}{local}"


# Serialisation -------------------------------------------------------------------------------------------------


def _stamp(value: dt.datetime, field: str) -> str:
    if value.tzinfo is None:
        raise ValueError(f"{field} must be timezone-aware")
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _text(parent: etree._Element, local: str, value: str) -> None:
    etree.SubElement(parent, _q(local)).text = value


def _b64(der: bytes) -> str:
    return base64.b64encode(der).decode("ascii")


def to_xml(conf: GlobalConf) -> etree._Element:
    """Build the unsigned ``gc:globalConf`` element for ``conf`` (children in schema order)."""
    root = etree.Element(_q("globalConf"), nsmap=_NSMAP)
    _text(root, "instance", conf.instance)
    _text(root, "version", str(conf.version))
    _text(root, "generatedAt", _stamp(conf.generated_at, "generated_at"))
    _text(root, "expiresAt", _stamp(conf.expires_at, "expires_at"))
    _text(root, "centralServerUrl", conf.central_server_url)
    params = etree.SubElement(root, _q("params"))
    _text(params, "timestampingIntervalSeconds", str(conf.params.timestamping_interval_s))
    _text(params, "refreshIntervalSeconds", str(conf.params.refresh_interval_s))
    _text(params, "ocspFreshnessSeconds", str(conf.params.ocsp_freshness_s))
    for member in conf.members:
        elem = etree.SubElement(root, _q("member"))
        elem.append(identifiers.to_xml(member.id, _q("id")))
        _text(elem, "name", member.name)
        for code in member.subsystems:
            _text(elem, "subsystemCode", code)
    for server in conf.servers:
        elem = etree.SubElement(root, _q("securityServer"))
        elem.append(identifiers.to_xml(server.id, _q("id")))
        _text(elem, "address", server.address)
        for digest in server.auth_cert_hashes:
            _text(elem, "authCertHash", digest)
        for client in server.clients:
            elem.append(identifiers.to_xml(client, _q("client")))
    for ca in conf.cas:
        elem = etree.SubElement(root, _q("approvedCA"))
        _text(elem, "name", ca.name)
        _text(elem, "topCert", _b64(ca.top_cert))
        for der in ca.intermediate_certs:
            _text(elem, "intermediateCert", _b64(der))
        for url in ca.ocsp_urls:
            _text(elem, "ocspUrl", url)
        for der in ca.ocsp_responder_certs:
            _text(elem, "ocspResponderCert", _b64(der))
    for tsa in conf.tsas:
        elem = etree.SubElement(root, _q("tsa"))
        _text(elem, "name", tsa.name)
        _text(elem, "url", tsa.url)
        _text(elem, "cert", _b64(tsa.cert))
    for group in conf.groups:
        elem = etree.SubElement(root, _q("globalGroup"))
        elem.append(identifiers.to_xml(group.id, _q("id")))
        _text(elem, "description", group.description)
        for client in group.members:
            elem.append(identifiers.to_xml(client, _q("member")))
    for service in conf.services:
        elem = etree.SubElement(root, _q("service"))
        elem.append(identifiers.to_xml(service.id, _q("id")))
        _text(elem, "type", service.type)
        _text(elem, "title", service.title)
        if service.description_url is not None:
            _text(elem, "descriptionUrl", service.description_url)
    for right in conf.access_rights:
        elem = etree.SubElement(root, _q("accessRight"))
        elem.append(identifiers.to_xml(right.subject, _q("subject")))
        elem.append(identifiers.to_xml(right.service, _q("service")))
        if right.method is not None:
            _text(elem, "method", right.method)
        if right.path is not None:
            _text(elem, "path", right.path)
    return root


# Parsing -------------------------------------------------------------------------------------------------------

_T = TypeVar("_T")


class _Children:
    """Reads an element's children strictly in order, so that unknown or misplaced elements are refused.

    The schema already enforces structure; this reader does not rely on it, so :func:`from_xml` fails closed
    even when called on a tree that was never validated.
    """

    def __init__(self, elem: etree._Element) -> None:
        self._items = [c for c in elem if isinstance(c.tag, str)]
        self._pos = 0
        self._parent = etree.QName(elem).localname

    def _peek(self, local: str) -> etree._Element | None:
        if self._pos < len(self._items) and self._items[self._pos].tag == _q(local):
            return self._items[self._pos]
        return None

    def one(self, local: str) -> etree._Element:
        elem = self._peek(local)
        if elem is None:
            raise GlobalConfMalformed(f"{self._parent}: expected element {local}")
        self._pos += 1
        return elem

    def optional(self, local: str) -> etree._Element | None:
        elem = self._peek(local)
        if elem is not None:
            self._pos += 1
        return elem

    def many(self, local: str) -> list[etree._Element]:
        found: list[etree._Element] = []
        while (elem := self._peek(local)) is not None:
            found.append(elem)
            self._pos += 1
        return found

    def text(self, local: str) -> str:
        return _strip(self.one(local))

    def exact(self, local: str) -> str:
        # Free text (names, titles, descriptions) is kept exactly as written: xs:string does no whitespace
        # processing, and stripping would make a round trip lossy.
        return self.one(local).text or ""

    def skip_signature(self) -> None:
        # The signature lives in another namespace, so it is matched on its Clark name, and only as the last child.
        items = self._items
        if self._pos == len(items) - 1 and items[-1].tag == f"{{{DS_NS}}}Signature":
            self._pos += 1

    def end(self) -> None:
        if self._pos != len(self._items):
            extra = etree.QName(self._items[self._pos]).localname
            raise GlobalConfMalformed(f"{self._parent}: unexpected element {extra}")


def _strip(elem: etree._Element) -> str:
    return (elem.text or "").strip()


def _ident(elem: etree._Element, kinds: tuple[type[_T], ...], what: str) -> _T:
    try:
        value = identifiers.from_xml(elem)
    except InvalidIdentifier as exc:
        raise GlobalConfMalformed(f"{what}: {exc.message}") from None
    if not isinstance(value, kinds):
        allowed = " or ".join(str(k.object_type) for k in kinds)  # type: ignore[attr-defined]
        raise GlobalConfMalformed(f"{what}: identifier must be {allowed}, not {value.object_type}")
    return value


def _int(text: str, what: str, minimum: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise GlobalConfMalformed(f"{what} must be an integer") from None
    if value < minimum:
        raise GlobalConfMalformed(f"{what} must be at least {minimum}")
    return value


def _datetime(text: str, what: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise GlobalConfMalformed(f"{what} is not a date and time") from None
    if value.tzinfo is None or value.utcoffset() != dt.timedelta(0):
        raise GlobalConfMalformed(f"{what} must be in UTC")
    return value.astimezone(dt.UTC)


def _cert(text: str, what: str) -> bytes:
    try:
        der = base64.b64decode("".join(text.split()), validate=True)
        x509.load_der_x509_certificate(der)
    except (binascii.Error, ValueError):
        # Certificates are checked when the document is loaded, not when a TLS handshake first needs them: a
        # configuration that cannot be used must be refused as a whole.
        raise GlobalConfMalformed(f"{what} is not a base64 DER X.509 certificate") from None
    return der


def from_xml(elem: etree._Element) -> GlobalConf:
    """Build a :class:`GlobalConf` from a ``gc:globalConf`` element, or raise :class:`GlobalConfMalformed`.

    Identifier types are checked: a member's id must be a MEMBER, a server's a SERVER, clients and group members
    MEMBER or SUBSYSTEM, access-right subjects MEMBER, SUBSYSTEM or GLOBALGROUP, and so on.  A trailing
    ``ds:Signature`` is ignored (it is verified by :func:`verify_and_parse`, not here).
    """
    if elem.tag != _q("globalConf"):
        raise GlobalConfMalformed(f"root element must be {{{GC_NS}}}globalConf")
    try:
        return _from_xml(elem)
    except GlobalConfMalformed:
        raise
    except (InvalidIdentifier, ValueError, TypeError) as exc:
        # Dataclass invariants (identifier codes, …) surface as these; fail closed as malformed.
        raise GlobalConfMalformed(f"global configuration is invalid: {exc}") from None


def _from_xml(elem: etree._Element) -> GlobalConf:
    top = _Children(elem)
    instance = top.text("instance")
    version = _int(top.text("version"), "version")
    generated_at = _datetime(top.text("generatedAt"), "generatedAt")
    expires_at = _datetime(top.text("expiresAt"), "expiresAt")
    if expires_at <= generated_at:
        raise GlobalConfMalformed("expiresAt must be later than generatedAt")
    central_server_url = top.text("centralServerUrl")

    p = _Children(top.one("params"))
    params = GlobalConfParams(
        timestamping_interval_s=_int(p.text("timestampingIntervalSeconds"), "timestampingIntervalSeconds"),
        refresh_interval_s=_int(p.text("refreshIntervalSeconds"), "refreshIntervalSeconds"),
        ocsp_freshness_s=_int(p.text("ocspFreshnessSeconds"), "ocspFreshnessSeconds"),
    )
    p.end()

    members: list[MemberInfo] = []
    for m_elem in top.many("member"):
        c = _Children(m_elem)
        member_id = _ident(c.one("id"), (MemberId,), "member id")
        name = c.exact("name")
        codes = tuple(_strip(e) for e in c.many("subsystemCode"))
        c.end()
        for code in codes:
            identifiers.check_code(code, "subsystemCode")
        members.append(MemberInfo(member_id, name, codes))

    client_kinds: tuple[type[ClientId], ...] = (MemberId, SubsystemId)
    servers: list[SecurityServerInfo] = []
    for s_elem in top.many("securityServer"):
        c = _Children(s_elem)
        server_id = _ident(c.one("id"), (SecurityServerId,), "security server id")
        address = c.text("address")
        hashes = tuple(_strip(e) for e in c.many("authCertHash"))
        clients = tuple(_ident(e, client_kinds, "security server client") for e in c.many("client"))
        c.end()
        for digest in hashes:
            if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
                raise GlobalConfMalformed("authCertHash must be 64 lowercase hex digits")
        servers.append(SecurityServerInfo(server_id, address, hashes, clients))

    cas: list[ApprovedCA] = []
    for ca_elem in top.many("approvedCA"):
        c = _Children(ca_elem)
        name = c.exact("name")
        top_cert = _cert(c.text("topCert"), "approvedCA topCert")
        intermediates = tuple(_cert(_strip(e), "approvedCA intermediateCert") for e in c.many("intermediateCert"))
        ocsp_urls = tuple(_strip(e) for e in c.many("ocspUrl"))
        responders = tuple(_cert(_strip(e), "approvedCA ocspResponderCert") for e in c.many("ocspResponderCert"))
        c.end()
        cas.append(ApprovedCA(name, top_cert, intermediates, ocsp_urls, responders))

    tsas: list[TimestampingService] = []
    for t_elem in top.many("tsa"):
        c = _Children(t_elem)
        tsa = TimestampingService(c.exact("name"), c.text("url"), _cert(c.text("cert"), "tsa cert"))
        c.end()
        tsas.append(tsa)

    groups: list[GlobalGroup] = []
    for g_elem in top.many("globalGroup"):
        c = _Children(g_elem)
        group_id = _ident(c.one("id"), (GlobalGroupId,), "global group id")
        description = c.exact("description")
        group_members = tuple(_ident(e, client_kinds, "global group member") for e in c.many("member"))
        c.end()
        groups.append(GlobalGroup(group_id, description, group_members))

    services: list[ServiceInfo] = []
    for sv_elem in top.many("service"):
        c = _Children(sv_elem)
        service_id = _ident(c.one("id"), (ServiceId,), "service id")
        type_text = c.text("type")
        service_type = next((t for t in _SERVICE_TYPES if t == type_text), None)
        if service_type is None:
            raise GlobalConfMalformed(f"service type must be one of {', '.join(_SERVICE_TYPES)}")
        title = c.exact("title")
        url_elem = c.optional("descriptionUrl")
        c.end()
        services.append(ServiceInfo(service_id, service_type, title, None if url_elem is None else _strip(url_elem)))

    subject_kinds: tuple[type[ClientId | GlobalGroupId], ...] = (MemberId, SubsystemId, GlobalGroupId)
    rights: list[AccessRight] = []
    for r_elem in top.many("accessRight"):
        c = _Children(r_elem)
        subject = _ident(c.one("subject"), subject_kinds, "access right subject")
        service = _ident(c.one("service"), (ServiceId,), "access right service")
        method_elem = c.optional("method")
        path_elem = c.optional("path")
        c.end()
        rights.append(
            AccessRight(
                subject,
                service,
                None if method_elem is None else _strip(method_elem),
                None if path_elem is None else _strip(path_elem),
            )
        )

    # The enveloped signature, if still present, is the only thing allowed after the content.
    top.skip_signature()
    top.end()

    return GlobalConf(
        instance=instance,
        version=version,
        generated_at=generated_at,
        expires_at=expires_at,
        central_server_url=central_server_url,
        params=params,
        members=tuple(members),
        servers=tuple(servers),
        cas=tuple(cas),
        tsas=tuple(tsas),
        groups=tuple(groups),
        services=tuple(services),
        access_rights=tuple(rights),
    )


# Signing -------------------------------------------------------------------------------------------------------


def sign(conf: GlobalConf, key: SigningKey, cert: x509.Certificate) -> bytes:
    """Serialise ``conf`` and sign it with an enveloped XML-DSig signature; return the bytes to publish.

    ECDSA-SHA256 for EC keys, RSA-SHA256 for RSA keys; SHA-256 digest; exclusive c14n 1.0; ``cert`` goes into
    ``KeyInfo/X509Data``.  The output is UTF-8 with an XML declaration.
    """
    # Imported here so that modules importing only to_xml/from_xml do not pay for signxml's schema loading.
    from cryptography.hazmat.primitives.serialization import Encoding
    from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
    from signxml.signer import XMLSigner

    if isinstance(key, ec.EllipticCurvePrivateKey):
        method = SignatureMethod.ECDSA_SHA256
    elif isinstance(key, rsa.RSAPrivateKey):
        method = SignatureMethod.RSA_SHA256
    else:  # pragma: no cover - guarded by the type, kept for callers without type checking
        raise TypeError("global configuration must be signed with an EC or RSA key")
    signer = XMLSigner(
        signature_algorithm=method,
        digest_algorithm=DigestAlgorithm.SHA256,
        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
    )
    signer.namespaces = {"ds": DS_NS}
    pem = cert.public_bytes(Encoding.PEM).decode("ascii")
    signed: etree._Element = signer.sign(to_xml(conf), key=key, cert=[pem])
    return bytes(etree.tostring(signed, xml_declaration=True, encoding="UTF-8"))


# Verification --------------------------------------------------------------------------------------------------


@functools.cache
def _schema() -> etree.XMLSchema:
    # Compiled once per process.  The import of identifiers.xsd is a relative local path; no network access.
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    return etree.XMLSchema(etree.parse(str(schemas.path("globalconf.xsd")), parser))


def validate_schema(elem: etree._Element) -> None:
    """Validate a ``gc:globalConf`` element against ``schemas/globalconf.xsd``; raise GlobalConfMalformed."""
    schema = _schema()
    if not schema.validate(elem):
        raise GlobalConfMalformed(f"global configuration does not match globalconf.xsd: {schema_error(schema)}")


def verify_and_parse(
    data: bytes,
    *,
    anchor: ConfigurationAnchor,
    now: dt.datetime | None = None,
    allow_expired: bool = False,
) -> GlobalConf:
    """Verify a signed global configuration against ``anchor`` and return it; raise on any problem.

    Raises :class:`GlobalConfMalformed`, :class:`GlobalConfSignatureInvalid` or :class:`GlobalConfExpired`
    (the last unless ``allow_expired``, which the configuration client uses to load an expired cache for status).
    Any unexpected exception is turned into one of these: verification fails closed.
    """
    now = now or dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    try:
        return _verify_and_parse(bytes(data), anchor, now, allow_expired)
    except GlobalConfError:
        raise
    except Exception as exc:
        raise GlobalConfMalformed(f"global configuration could not be verified ({type(exc).__name__})") from None


def _verify_and_parse(data: bytes, anchor: ConfigurationAnchor, now: dt.datetime, allow_expired: bool) -> GlobalConf:
    from signxml.algorithms import DigestAlgorithm, SignatureMethod
    from signxml.verifier import SignatureConfiguration, VerifyResult, XMLVerifier

    # (1) Safe parse: size cap before parsing, no DOCTYPE/entities, depth cap.  The tree is used only to refuse
    #     hostile input early; what is trusted later comes from the verifier's output, never from this tree.
    root = parse_xml(data, max_bytes=MAX_GLOBALCONF_BYTES, error=GlobalConfMalformed, what="global configuration")
    if root.tag != _q("globalConf"):
        raise GlobalConfMalformed(f"root element must be {{{GC_NS}}}globalConf")

    # (2) Signature.  Exactly one reference, the signature a direct child of the root (location "./"), only the
    #     algorithms Körpü signs with, and the key from the anchor (never from KeyInfo).  Each anchor certificate
    #     is tried in turn; the first that verifies wins.
    config = SignatureConfiguration(
        location="./",
        expect_references=1,
        signature_methods=frozenset({SignatureMethod.ECDSA_SHA256, SignatureMethod.RSA_SHA256}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA256}),
        verification_time=now,
    )
    certs = anchor.verification_certs
    signed: etree._Element | None = None
    reason = "no verification certificate in the anchor"
    for cert in certs:
        try:
            result = XMLVerifier().verify(data, x509_cert=cert, expect_config=config, parser=safe_parser())
        except Exception as exc:
            reason = _first_line(exc)
            continue
        if not isinstance(result, VerifyResult):  # expect_references=1 returns a single result
            reason = "unexpected verification result"
            continue
        # (2a) The single reference must be the whole document (URI=""), so that the verified bytes are the
        #      entire root minus the enveloped signature; anything else could sign a fragment and let unsigned
        #      content through (signature wrapping).
        refs = result.signature_xml.findall(f"{{{DS_NS}}}SignedInfo/{{{DS_NS}}}Reference")
        if len(refs) != 1 or refs[0].get("URI") != "":
            reason = 'the signature must have exactly one reference to the whole document (URI="")'
            continue
        # (2b) No unsigned slack: the certificate in KeyInfo must be the anchor certificate that verified, and
        #      the signature value must be canonical base64.  Neither is covered by the digest, and leaving them
        #      free would let a relay alter published bytes without detection (and confuse operators comparing
        #      documents or hashes).
        try:
            _check_unsigned_parts(result.signature_xml, cert)
        except ValueError as exc:
            reason = str(exc)
            continue
        candidate = result.signed_xml
        if not isinstance(candidate, etree._Element) or candidate.tag != _q("globalConf"):
            reason = "the signed content is not a globalConf document"
            continue
        signed = candidate
        break
    if signed is None:
        raise GlobalConfSignatureInvalid(f"global configuration signature does not verify: {reason}")

    # From here on only ``signed`` (the verifier's canonical re-parse of the signed bytes) is looked at.

    # (3) Schema.
    validate_schema(signed)

    # (4) Instance.
    instance = (signed.findtext(_q("instance")) or "").strip()
    if instance != anchor.instance:
        raise GlobalConfMalformed(
            f"global configuration is for instance {instance!r}, the anchor for {anchor.instance!r}"
        )

    # (5) Build the model (identifier types, certificates and dates are checked here).
    conf = from_xml(signed)

    # (6) Expiry.
    if not allow_expired and conf.is_expired(now):
        raise GlobalConfExpired(
            f"global configuration version {conf.version} expired at {_stamp(conf.expires_at, 'expires_at')}"
        )
    return conf


def _strict_b64(text: str | None) -> bytes:
    compact = "".join((text or "").split())
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("invalid base64") from None
    # Non-canonical encodings (non-zero padding bits) decode to the same bytes; refuse them.
    if base64.b64encode(raw).decode("ascii") != compact:
        raise ValueError("non-canonical base64")
    return raw


def _check_unsigned_parts(signature: etree._Element, cert: x509.Certificate) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    values = signature.findall(f"{{{DS_NS}}}SignatureValue")
    if len(values) != 1:
        raise ValueError("the signature must have one SignatureValue")
    try:
        _strict_b64(values[0].text)
    except ValueError as exc:
        raise ValueError(f"SignatureValue is {exc}") from None
    certs = signature.findall(f"{{{DS_NS}}}KeyInfo/{{{DS_NS}}}X509Data/{{{DS_NS}}}X509Certificate")
    if len(certs) != 1:
        raise ValueError("KeyInfo must carry exactly one X509Certificate")
    try:
        der = _strict_b64(certs[0].text)
    except ValueError as exc:
        raise ValueError(f"KeyInfo X509Certificate is {exc}") from None
    if der != cert.public_bytes(Encoding.DER):
        raise ValueError("KeyInfo certificate is not the anchor certificate that verified the signature")


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
