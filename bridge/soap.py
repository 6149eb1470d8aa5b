"""X-Road Message Protocol v4.0 (pr-mess): SOAP 1.1 envelopes, SOAP with attachments, request hashes and faults.

Everything here is sans-I/O: functions over ``bytes`` that return frozen dataclasses.  The client proxy hands
:func:`parse_soap` the HTTP ``Content-Type`` and body it received; the result is a :class:`SoapMessage` whose
``envelope`` is the envelope's bytes *exactly as received* — they are hashed (:func:`request_hash`), signed and
logged as they are and never re-serialised, so what the consumer sent is what the provider gets and what the
evidence shows.

Accepted wire forms:

* ``text/xml`` — a bare SOAP 1.1 envelope;
* ``multipart/related`` (SOAP with attachments, SwA) — the root part (named by the ``start`` parameter, else the
  first part) is the envelope, every other part an attachment.  Attachment bodies are decoded from their
  ``Content-Transfer-Encoding`` (base64, quoted-printable) so that what is hashed is the attachment's content, not
  one of its many possible encodings; :func:`build_multipart` writes them back as ``binary``.
* MTOM/XOP (``application/xop+xml``) is refused with ``Client.InvalidContentType``: it would need the XOP
  include processing that X-Road itself only passes through, and no Körpü service uses it yet.

Validation follows pr-mess §2 and refuses, with a specific fault code each: content types other than the above
(``InvalidContentType``), malformed MIME (``MimeParsingFailed``), a multipart message without an envelope part
(``MissingSoap``), XML that is not well-formed or uses a DTD/entities or nests too deep (``InvalidXml``), envelopes
that are not SOAP 1.1 with one Header and one Body (``InvalidSoap``), missing or repeated X-Road header fields
(``MissingHeaderField`` / ``DuplicateHeaderField``), a ``protocolVersion`` other than ``4.0``
(``InvalidProtocolVersion``), malformed identifiers or identifiers of the wrong kind (``InvalidIdentifier``), and a
Body whose element is not named after the service code (``InvalidBody``).  Size limits raise ``PayloadTooLarge``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import quopri
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lxml import etree

from bridge.errors import (
    DuplicateHeaderField,
    InconsistentResponse,
    InvalidBody,
    InvalidContentType,
    InvalidIdentifier,
    InvalidProtocolVersion,
    InvalidSoap,
    InvalidXml,
    KorpuError,
    MimeParsingFailed,
    MissingHeaderField,
    MissingSoap,
    PayloadTooLarge,
)
from bridge.identifiers import MemberId, SecurityServerId, ServiceId, SubsystemId, from_xml
from bridge.message import MessageHeader, Protocol, RepresentedParty
from bridge.xmlsafe import parse_xml

__all__ = [
    "DEFAULT_MAX_ATTACHMENTS",
    "DEFAULT_MAX_ATTACHMENT_BYTES",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_ENVELOPE_BYTES",
    "PROTOCOL_VERSION",
    "REPR_NS",
    "SHA512_ALGORITHM",
    "SOAP_ENV_NS",
    "XROAD_NS",
    "SoapAttachment",
    "SoapFault",
    "SoapMessage",
    "SoapResponse",
    "add_request_hash",
    "build_multipart",
    "check_response",
    "parse_content_type",
    "parse_soap",
    "parse_soap_response",
    "render_soap_fault",
    "request_hash",
]

#: SOAP 1.1 envelope namespace (X-Road 4.0 uses SOAP 1.1 only).
SOAP_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV_NS = "http://www.w3.org/2003/05/soap-envelope"
#: Namespace of X-Road's header elements (``xroad.xsd``); ``securityServer`` (pr-targetss) shares it.
XROAD_NS = "http://x-road.eu/xsd/xroad.xsd"
#: Namespace of the third-party representation extension's ``representedParty`` header.
REPR_NS = "http://x-road.eu/xsd/representation.xsd"
#: The only protocol version this module speaks.
PROTOCOL_VERSION = "4.0"
#: ``algorithmId`` of ``requestHash`` (pr-mess §2.2: SHA-512).
SHA512_ALGORITHM = "http://www.w3.org/2001/04/xmlenc#sha512"

#: Largest envelope accepted (the envelope is held in memory and parsed as a whole).
DEFAULT_MAX_ENVELOPE_BYTES = 8 * 1024 * 1024
#: Element nesting limit for envelopes: Envelope/Body/operation leave plenty of room for any sane payload.
DEFAULT_MAX_DEPTH = 64
#: Most attachments accepted in one SwA message.
DEFAULT_MAX_ATTACHMENTS = 32
#: Largest total size of all attachments (decoded) held in memory.
DEFAULT_MAX_ATTACHMENT_BYTES = 64 * 1024 * 1024

_MAX_PART_HEADER_BYTES = 16 * 1024
_MAX_CONTENT_TYPE = 1024

_CLIENT = f"{{{XROAD_NS}}}client"
_SERVICE = f"{{{XROAD_NS}}}service"
_ID = f"{{{XROAD_NS}}}id"
_USER_ID = f"{{{XROAD_NS}}}userId"
_ISSUE = f"{{{XROAD_NS}}}issue"
_PROTOCOL_VERSION = f"{{{XROAD_NS}}}protocolVersion"
_REQUEST_HASH = f"{{{XROAD_NS}}}requestHash"
_SECURITY_SERVER = f"{{{XROAD_NS}}}securityServer"
_REPRESENTED_PARTY = f"{{{REPR_NS}}}representedParty"
_PARTY_CLASS = f"{{{REPR_NS}}}partyClass"
_PARTY_CODE = f"{{{REPR_NS}}}partyCode"
#: The X-Road header fields this module interprets; each may appear at most once.
_XROAD_FIELDS = frozenset(
    {_CLIENT, _SERVICE, _ID, _USER_ID, _ISSUE, _PROTOCOL_VERSION, _REQUEST_HASH, _SECURITY_SERVER, _REPRESENTED_PARTY}
)


# Data model ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SoapAttachment:
    """One non-root MIME part of a SwA message.

    ``data`` is the decoded content; ``headers`` are the part's other MIME headers (``Content-Disposition``, …)
    to forward — ``Content-Type``, ``Content-ID`` and ``Content-Transfer-Encoding`` are carried by the fields
    and by :func:`build_multipart`.  ``content_id`` is given without angle brackets, as ``cid:`` URLs use it.
    """

    content_id: str | None
    content_type: str
    headers: tuple[tuple[str, str], ...]
    data: bytes


@dataclass(frozen=True, slots=True)
class SoapMessage:
    """A validated X-Road 4.0 SOAP request.

    ``envelope`` holds the envelope bytes exactly as received (hash and sign these); ``content_type`` is the
    envelope part's content type; ``body_element`` and ``header_names`` are Clark names (``{ns}local``) of the
    Body's first child and of the Header's children in document order.
    """

    header: MessageHeader
    envelope: bytes
    content_type: str
    body_element: str
    header_names: tuple[str, ...]
    attachments: tuple[SoapAttachment, ...] = ()

    @classmethod
    def from_bytes(cls, content_type: str, body: bytes) -> SoapMessage:
        """Parse with the default limits (see :func:`parse_soap`)."""
        return parse_soap(content_type, body)


@dataclass(frozen=True, slots=True)
class SoapFault:
    """A SOAP 1.1 Fault's fields as the provider sent them (not validated against any vocabulary)."""

    fault_code: str
    fault_string: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class SoapResponse:
    """A parsed X-Road 4.0 SOAP response.

    ``header`` is ``None`` only for a fault without X-Road headers (technical faults carry none, pr-mess Annex D);
    ``request_hash`` is the ``requestHash`` value (whitespace removed) when present; ``fault`` is set when the
    Body holds a SOAP Fault.
    """

    header: MessageHeader | None
    envelope: bytes
    content_type: str
    body_element: str
    header_names: tuple[str, ...]
    attachments: tuple[SoapAttachment, ...] = ()
    request_hash: str | None = None
    fault: SoapFault | None = None

    @property
    def is_fault(self) -> bool:
        """Whether the Body holds a SOAP Fault."""
        return self.fault is not None


# Content-Type and MIME -----------------------------------------------------------------------------------------

_TCHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\\r\n]|\\[^\r\n])*"'
_CT_HEAD = re.compile(rf"\s*({_TCHARS})/({_TCHARS})\s*")
_CT_PARAM = re.compile(rf";\s*({_TCHARS})\s*=\s*({_TCHARS}|{_QUOTED})\s*")


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Parse a ``Content-Type`` value strictly into ``(type/subtype lowercased, {param lowercased: value})``.

    Raises ``Client.InvalidContentType`` on anything that is not ``type/subtype *(; name=value)``, on repeated
    parameters and on control characters (which could smuggle header lines).
    """
    if not isinstance(value, str) or not value or len(value) > _MAX_CONTENT_TYPE:
        raise InvalidContentType("content type is missing or too long")
    if any((ord(ch) < 0x20 and ch != "\t") or ord(ch) >= 0x7F for ch in value):
        raise InvalidContentType("content type contains control or non-ASCII characters")
    head = _CT_HEAD.match(value)
    if head is None:
        raise InvalidContentType("content type is not of the form type/subtype")
    params: dict[str, str] = {}
    pos = head.end()
    while pos < len(value):
        param = _CT_PARAM.match(value, pos)
        if param is None:
            if value[pos:].strip(" \t;") == "":
                break  # a trailing ";" is common and harmless
            raise InvalidContentType("content type has a malformed parameter")
        name = param.group(1).lower()
        raw = param.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if name in params:
            raise InvalidContentType(f"content type repeats the parameter {name!r}")
        params[name] = raw
        pos = param.end()
    return f"{head.group(1)}/{head.group(2)}".lower(), params


def _strip_cid(value: str) -> str:
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return value


@dataclass(frozen=True, slots=True)
class _Part:
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def get(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name]
        if len(values) > 1:
            raise MimeParsingFailed(f"MIME part repeats the header {name}")
        return values[0] if values else None


def _parse_part_headers(block: bytes) -> tuple[tuple[str, str], ...]:
    if len(block) > _MAX_PART_HEADER_BYTES:
        raise MimeParsingFailed("MIME part headers are too large")
    try:
        text = block.decode("ascii")
    except UnicodeDecodeError:
        raise MimeParsingFailed("MIME part headers must be ASCII") from None
    headers: list[tuple[str, str]] = []
    for line in re.split(r"\r?\n", text):
        if not line:
            continue
        if line[0] in " \t":
            # Obsolete line folding (RFC 5322 §3.2.2): a continuation of the previous header's value.
            if not headers:
                raise MimeParsingFailed("MIME part starts with a continuation line")
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, sep, value = line.partition(":")
        if not sep or not re.fullmatch(_TCHARS, name):
            raise MimeParsingFailed("MIME part has a malformed header line")
        if any(ord(ch) < 0x20 and ch != "\t" for ch in value):
            raise MimeParsingFailed("MIME part header contains control characters")
        headers.append((name, value.strip()))
    return tuple(headers)


def _split_multipart(body: bytes, boundary: str) -> list[_Part]:
    """Split a multipart body into parts per RFC 2046 §5.1.1 (CRLF or bare LF line ends).

    A delimiter is ``--boundary`` at the start of a line, followed by optional transport padding and a line end;
    the line end *before* it belongs to the delimiter, so a part's bytes are exactly what lies between.
    """
    if not re.fullmatch(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]", boundary):
        raise MimeParsingFailed("multipart boundary is missing or invalid")
    dash = re.escape(b"--" + boundary.encode("ascii"))
    delimiter = re.compile(rb"(?:\A|\r?\n)" + dash + rb"(--)?[ \t]*(?:\r?\n|\Z)")
    matches = list(delimiter.finditer(body))
    if not matches or matches[0].group(1) is not None:
        raise MimeParsingFailed("multipart body has no opening boundary")
    parts: list[_Part] = []
    for index, current in enumerate(matches):
        if current.group(1) is not None:
            return parts  # close delimiter: what follows is the epilogue, which carries nothing
        if index + 1 == len(matches):
            break
        chunk = body[current.end() : matches[index + 1].start()]
        head, sep, content = _split_headers(chunk)
        if not sep:
            raise MimeParsingFailed("MIME part has no blank line after its headers")
        parts.append(_Part(_parse_part_headers(head), content))
    raise MimeParsingFailed("multipart body has no closing boundary")


def _split_headers(chunk: bytes) -> tuple[bytes, bool, bytes]:
    # Headers end at the first empty line; a part with no headers starts with the empty line itself.
    match = re.search(rb"\r?\n\r?\n", chunk)
    if chunk.startswith((b"\r\n", b"\n")):
        return b"", True, chunk[2:] if chunk.startswith(b"\r\n") else chunk[1:]
    if match is None:
        return chunk, False, b""
    return chunk[: match.start()], True, chunk[match.end() :]


def _decode_transfer(data: bytes, encoding: str | None) -> bytes:
    enc = (encoding or "binary").strip().lower()
    if enc in ("binary", "8bit", "7bit"):
        return data
    if enc == "base64":
        try:
            return base64.b64decode(re.sub(rb"\s+", b"", data), validate=True)
        except (binascii.Error, ValueError):
            raise MimeParsingFailed("attachment is not valid base64") from None
    if enc == "quoted-printable":
        return quopri.decodestring(data)
    raise MimeParsingFailed(f"unsupported Content-Transfer-Encoding {enc[:40]!r}")


def _check_envelope_type(content_type: str) -> None:
    ctype, _ = parse_content_type(content_type)
    if ctype == "application/xop+xml":
        raise InvalidContentType("MTOM/XOP messages (application/xop+xml) are not supported; use SwA")
    if ctype != "text/xml":
        raise InvalidContentType(f"SOAP 1.1 envelope must be text/xml, not {ctype}")


def _unwrap(
    content_type: str, body: bytes, *, max_envelope_bytes: int, max_attachments: int, max_attachment_bytes: int
) -> tuple[bytes, str, tuple[SoapAttachment, ...]]:
    """Return ``(envelope bytes, envelope content type, attachments)`` from an HTTP body."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise InvalidSoap("message body must be bytes")
    body = bytes(body)
    ctype, params = parse_content_type(content_type)
    # (1) A bare envelope.
    if ctype != "multipart/related":
        _check_envelope_type(content_type)
        if len(body) > max_envelope_bytes:
            raise PayloadTooLarge(f"SOAP envelope is larger than {max_envelope_bytes} bytes")
        return body, content_type, ()
    # (2) SwA: the declared root type must be SOAP 1.1 (an MTOM message says application/xop+xml here).
    declared = params.get("type", "text/xml").lower()
    if declared == "application/xop+xml":
        raise InvalidContentType("MTOM/XOP messages (application/xop+xml) are not supported; use SwA")
    if declared != "text/xml":
        raise InvalidContentType(f"multipart/related root type must be text/xml, not {declared[:40]}")
    if len(body) > max_envelope_bytes + max_attachment_bytes + 64 * 1024:
        raise PayloadTooLarge("multipart message is larger than the envelope and attachment limits allow")
    parts = _split_multipart(body, params.get("boundary", ""))
    # (3) Find the root part: the one whose Content-ID matches ``start``, else the first.
    start = params.get("start")
    root_index: int | None = None
    if start is not None:
        wanted = _strip_cid(start)
        for index, part in enumerate(parts):
            cid = part.get("content-id")
            if cid is not None and _strip_cid(cid) == wanted:
                root_index = index
                break
    elif parts:
        root_index = 0
    if root_index is None:
        raise MissingSoap("multipart message has no part holding the SOAP envelope")
    root = parts[root_index]
    root_type = root.get("content-type") or "text/xml"
    _check_envelope_type(root_type)
    # (4) The envelope's bytes must be used as sent, so no transfer encoding may stand between us and them.
    if (root.get("content-transfer-encoding") or "binary").strip().lower() not in ("binary", "8bit", "7bit"):
        raise MimeParsingFailed("the SOAP envelope part must not use a Content-Transfer-Encoding other than 8bit")
    if len(root.body) > max_envelope_bytes:
        raise PayloadTooLarge(f"SOAP envelope is larger than {max_envelope_bytes} bytes")
    # (5) Every other part is an attachment, within the count and total size limits.
    others = [p for i, p in enumerate(parts) if i != root_index]
    if len(others) > max_attachments:
        raise PayloadTooLarge(f"message has more than {max_attachments} attachments")
    attachments: list[SoapAttachment] = []
    total = 0
    for part in others:
        data = _decode_transfer(part.body, part.get("content-transfer-encoding"))
        total += len(data)
        if total > max_attachment_bytes:
            raise PayloadTooLarge(f"attachments are larger than {max_attachment_bytes} bytes in total")
        part_type = part.get("content-type") or "application/octet-stream"
        parse_content_type(part_type)
        cid = part.get("content-id")
        kept = tuple(
            (k, v)
            for k, v in part.headers
            if k.lower() not in ("content-type", "content-id", "content-transfer-encoding", "content-length")
        )
        attachments.append(SoapAttachment(_strip_cid(cid) if cid else None, part_type, kept, data))
    return root.body, root_type, tuple(attachments)


# Envelope ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Envelope:
    header: etree._Element | None
    body: etree._Element
    first: etree._Element | None
    header_names: tuple[str, ...]


def _elements(parent: etree._Element, what: str) -> list[etree._Element]:
    """The element children of ``parent``; non-blank text between them is refused (SOAP has none there)."""
    if (parent.text or "").strip():
        raise InvalidSoap(f"{what} contains text")
    out: list[etree._Element] = []
    for child in parent:
        if (child.tail or "").strip():
            raise InvalidSoap(f"{what} contains text")
        if isinstance(child.tag, str):
            out.append(child)
    return out


def _read_envelope(envelope: bytes, *, max_envelope_bytes: int, max_depth: int) -> _Envelope:
    # (1) Safe parse: no DTD, no entities, no network, size and depth caps.
    root = parse_xml(envelope, max_bytes=max_envelope_bytes, max_depth=max_depth, error=InvalidXml, what="SOAP message")
    # (2) SOAP 1.1 Envelope with an optional Header followed by exactly one Body, nothing else.
    if root.tag == f"{{{SOAP12_ENV_NS}}}Envelope":
        raise InvalidSoap("SOAP 1.2 envelopes are not supported; X-Road 4.0 uses SOAP 1.1")
    if root.tag != f"{{{SOAP_ENV_NS}}}Envelope":
        raise InvalidSoap("root element is not a SOAP 1.1 Envelope")
    children = _elements(root, "Envelope")
    header: etree._Element | None = None
    if children and children[0].tag == f"{{{SOAP_ENV_NS}}}Header":
        header = children.pop(0)
    if not children or children[0].tag != f"{{{SOAP_ENV_NS}}}Body":
        raise InvalidSoap("Envelope has no Body (or its Header is not the first child)")
    if len(children) != 1:
        raise InvalidSoap("Envelope must contain only a Header and a Body")
    body = children[0]
    # (3) The Body's first element names the operation; it may be absent only in responses (checked by callers).
    body_children = _elements(body, "Body")
    names = tuple(str(c.tag) for c in _elements(header, "Header")) if header is not None else ()
    return _Envelope(header, body, body_children[0] if body_children else None, names)


def _all_text(elem: etree._Element) -> str:
    return "".join(str(t) for t in elem.itertext())


def _text(elem: etree._Element, name: str) -> str:
    """The text content of a simple header element (no child elements), surrounding whitespace removed."""
    if any(isinstance(c.tag, str) for c in elem):
        raise InvalidSoap(f"header field {name} must contain only text")
    return _all_text(elem).strip()


def _read_header(header: etree._Element | None, *, response: bool) -> tuple[MessageHeader, str | None]:
    """Build the :class:`MessageHeader` (and the requestHash value, for responses) from the SOAP Header."""
    # (1) Collect the X-Road fields, each at most once; other header elements pass untouched (the Header is lax).
    fields: dict[str, etree._Element] = {}
    for child in _elements(header, "Header") if header is not None else []:
        if child.tag in _XROAD_FIELDS:
            if child.tag in fields:
                raise DuplicateHeaderField(f"header field {etree.QName(child).localname} appears more than once")
            fields[str(child.tag)] = child
    for tag, name in ((_CLIENT, "client"), (_SERVICE, "service"), (_ID, "id"), (_PROTOCOL_VERSION, "protocolVersion")):
        if tag not in fields:
            raise MissingHeaderField(f"required header field {name} is missing")
    # (2) protocolVersion must be exactly 4.0.
    version = _text(fields[_PROTOCOL_VERSION], "protocolVersion")
    if version != PROTOCOL_VERSION:
        raise InvalidProtocolVersion(f"protocolVersion must be {PROTOCOL_VERSION}")
    # (3) Identifiers: the client is a member or subsystem, the service a SERVICE, securityServer a SERVER.
    client = from_xml(fields[_CLIENT])
    if not isinstance(client, MemberId | SubsystemId):
        raise InvalidIdentifier("client must be a MEMBER or SUBSYSTEM identifier")
    service = from_xml(fields[_SERVICE])
    if not isinstance(service, ServiceId):
        raise InvalidIdentifier("service must be a SERVICE identifier")
    server: SecurityServerId | None = None
    if _SECURITY_SERVER in fields:
        parsed = from_xml(fields[_SECURITY_SERVER])
        if not isinstance(parsed, SecurityServerId):
            raise InvalidIdentifier("securityServer must be a SERVER identifier")
        server = parsed
    # (4) The representedParty extension: optional partyClass then partyCode.
    party: RepresentedParty | None = None
    if _REPRESENTED_PARTY in fields:
        party = _represented_party(fields[_REPRESENTED_PARTY])
    # (5) requestHash belongs to responses only, with the SHA-512 algorithm.
    hash_value: str | None = None
    if _REQUEST_HASH in fields:
        if not response:
            raise InvalidSoap("requestHash is set by the provider's security server and must not be in a request")
        elem = fields[_REQUEST_HASH]
        if elem.get("algorithmId") != SHA512_ALGORITHM:
            raise InvalidSoap("requestHash must use algorithmId " + SHA512_ALGORITHM)
        hash_value = re.sub(r"\s+", "", _text(elem, "requestHash"))
    # (6) Free-text fields; MessageHeader checks they are printable and bounded.
    header_obj = MessageHeader(
        protocol=Protocol.SOAP,
        client=client,
        service=service,
        message_id=_text(fields[_ID], "id"),
        user_id=_text(fields[_USER_ID], "userId") if _USER_ID in fields else None,
        issue=_text(fields[_ISSUE], "issue") if _ISSUE in fields else None,
        represented_party=party,
        security_server=server,
        protocol_version=version,
    )
    return header_obj, hash_value


def _represented_party(elem: etree._Element) -> RepresentedParty:
    kids = _elements(elem, "representedParty")
    tags = [str(k.tag) for k in kids]
    if tags == [_PARTY_CODE]:
        return RepresentedParty(_text(kids[0], "partyCode"))
    if tags == [_PARTY_CLASS, _PARTY_CODE]:
        return RepresentedParty(_text(kids[1], "partyCode"), _text(kids[0], "partyClass"))
    raise InvalidSoap("representedParty must contain an optional partyClass followed by partyCode")


def parse_soap(
    content_type: str,
    body: bytes,
    *,
    max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_attachments: int = DEFAULT_MAX_ATTACHMENTS,
    max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES,
    check_body_name: bool = True,
) -> SoapMessage:
    """Parse and validate an X-Road 4.0 SOAP request as received over HTTP.

    Raises a :class:`~bridge.errors.KorpuError` subclass (a ``Client.*`` fault) for every defect; any other
    exception would be a bug.  ``check_body_name`` enforces that the Body's element is named after the service
    code, so that access checked against the header's service is access to the operation the provider runs; it
    exists to be switched off for providers known to name operations differently (pr-mess's own SwA example
    calls ``exampleServiceSwaRef`` as service ``exampleService``).
    """
    try:
        return _parse_request(
            content_type, body, max_envelope_bytes, max_depth, max_attachments, max_attachment_bytes, check_body_name
        )
    except KorpuError:
        raise
    except (ValueError, TypeError, UnicodeError) as exc:
        # Fail closed: an input that trips a library in a way not mapped above is still the client's fault.
        raise InvalidSoap(f"message cannot be processed ({type(exc).__name__})") from None


def _parse_request(
    content_type: str,
    body: bytes,
    max_envelope_bytes: int,
    max_depth: int,
    max_attachments: int,
    max_attachment_bytes: int,
    check_body_name: bool,
) -> SoapMessage:
    # (1) Unwrap the transport form: bare envelope or SwA multipart.
    envelope, env_type, attachments = _unwrap(
        content_type,
        body,
        max_envelope_bytes=max_envelope_bytes,
        max_attachments=max_attachments,
        max_attachment_bytes=max_attachment_bytes,
    )
    # (2) Envelope structure.
    env = _read_envelope(envelope, max_envelope_bytes=max_envelope_bytes, max_depth=max_depth)
    if env.header is None:
        raise MissingHeaderField("SOAP Header with the X-Road header fields is missing")
    if env.first is None:
        raise InvalidBody("SOAP Body is empty")
    if env.first.tag in (f"{{{SOAP_ENV_NS}}}Fault",):
        raise InvalidBody("a request must not carry a SOAP Fault")
    # (3) X-Road header fields.
    header, _ = _read_header(env.header, response=False)
    # (4) The Body's element is named after the service code (pr-mess §2.3; metaservices such as listMethods and
    #     getWsdl follow the same rule with their own service codes).
    local = etree.QName(env.first).localname
    if check_body_name and local != header.service.service_code:
        raise InvalidBody(f"Body element {local!r} does not match serviceCode {header.service.service_code!r}")
    return SoapMessage(header, envelope, env_type, str(env.first.tag), env.header_names, attachments)


def parse_soap_response(
    content_type: str,
    body: bytes,
    *,
    origin: str = "Server.ServerProxy",
    max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_attachments: int = DEFAULT_MAX_ATTACHMENTS,
    max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES,
) -> SoapResponse:
    """Parse an X-Road 4.0 SOAP response (from a provider information system or security server).

    Like :func:`parse_soap`, but ``requestHash`` is allowed, the Body may hold a SOAP Fault (then the X-Road
    headers are optional and :attr:`SoapResponse.fault` is set), and the body element is not matched against the
    service code.  Errors carry ``origin`` (a malformed *response* is not the consumer's fault): the provider's
    security server reports ``Server.ServerProxy.*``; the consumer's passes ``Server.ClientProxy``.
    """
    try:
        return _parse_response(content_type, body, max_envelope_bytes, max_depth, max_attachments, max_attachment_bytes)
    except KorpuError as exc:
        exc.origin = origin
        raise
    except (ValueError, TypeError, UnicodeError) as exc:
        raise InvalidSoap(f"response cannot be processed ({type(exc).__name__})", origin=origin) from None


def _parse_response(
    content_type: str,
    body: bytes,
    max_envelope_bytes: int,
    max_depth: int,
    max_attachments: int,
    max_attachment_bytes: int,
) -> SoapResponse:
    envelope, env_type, attachments = _unwrap(
        content_type,
        body,
        max_envelope_bytes=max_envelope_bytes,
        max_attachments=max_attachments,
        max_attachment_bytes=max_attachment_bytes,
    )
    env = _read_envelope(envelope, max_envelope_bytes=max_envelope_bytes, max_depth=max_depth)
    if env.first is None:
        raise InvalidBody("SOAP Body is empty")
    fault: SoapFault | None = None
    if env.first.tag == f"{{{SOAP_ENV_NS}}}Fault":
        fault = _read_fault(env.first)
    header: MessageHeader | None = None
    hash_value: str | None = None
    has_xroad = any(name in _XROAD_FIELDS for name in env.header_names)
    if fault is None or has_xroad:
        if env.header is None:
            raise MissingHeaderField("SOAP Header with the X-Road header fields is missing")
        header, hash_value = _read_header(env.header, response=True)
    return SoapResponse(
        header, envelope, env_type, str(env.first.tag), env.header_names, attachments, hash_value, fault
    )


def _read_fault(elem: etree._Element) -> SoapFault:
    # SOAP 1.1 §4.4: faultcode and faultstring are unqualified children; detail is optional.
    values: dict[str, etree._Element] = {}
    for child in _elements(elem, "Fault"):
        if child.tag in values:
            raise InvalidSoap(f"Fault repeats {child.tag}")
        values[str(child.tag)] = child
    if "faultcode" not in values or "faultstring" not in values:
        raise InvalidSoap("Fault must contain faultcode and faultstring")
    detail: str | None = None
    if "detail" in values:
        detail = _all_text(values["detail"]).strip() or None
    return SoapFault(_text(values["faultcode"], "faultcode"), _all_text(values["faultstring"]).strip(), detail)


# Request hash and response consistency -------------------------------------------------------------------------


def request_hash(envelope: bytes) -> str:
    """pr-mess ``requestHash``: base64 of the SHA-512 digest of the request envelope bytes as sent."""
    return base64.b64encode(hashlib.sha512(envelope).digest()).decode("ascii")


def add_request_hash(response_envelope: bytes, request_hash_b64: str) -> bytes:
    """Return the response envelope with ``requestHash`` as the Header's last child (replacing any present).

    This is the provider security server's step; the result is new bytes (serialised as UTF-8), which are then
    what is signed and logged.  The Header must exist: a response that does not echo the request's headers has
    failed :func:`check_response` already.
    """
    # (1) The value must be a base64 SHA-512 digest; anything else would put garbage into signed evidence.
    try:
        if len(base64.b64decode(request_hash_b64, validate=True)) != hashlib.sha512().digest_size:
            raise ValueError
    except (binascii.Error, ValueError):
        raise ValueError("request hash must be base64 of a SHA-512 digest") from None
    # (2) Parse the response safely; its Header is where the hash goes.
    root = parse_xml(response_envelope, max_bytes=DEFAULT_MAX_ENVELOPE_BYTES, error=InvalidXml, what="SOAP response")
    header = root.find(f"{{{SOAP_ENV_NS}}}Header")
    if root.tag != f"{{{SOAP_ENV_NS}}}Envelope" or header is None:
        raise InvalidSoap("response has no SOAP Header to carry requestHash", origin="Server.ServerProxy")
    # (3) Drop any requestHash the provider set (pr-mess: the security server's value wins), then append ours,
    #     keeping the indentation of the existing children.
    for old in header.findall(_REQUEST_HASH):
        _remove_keeping_tail(old)
    children = [c for c in header if isinstance(c.tag, str)]
    nsmap = None if XROAD_NS in header.nsmap.values() else {"xrd": XROAD_NS}
    elem = etree.Element(_REQUEST_HASH, nsmap=nsmap)
    elem.set("algorithmId", SHA512_ALGORITHM)
    elem.text = request_hash_b64
    if children:
        last = children[-1]
        elem.tail = last.tail
        last.tail = (children[-2].tail if len(children) > 1 else header.text) or last.tail
    header.append(elem)
    return etree.tostring(root.getroottree(), xml_declaration=True, encoding="UTF-8")


def _remove_keeping_tail(elem: etree._Element) -> None:
    parent = elem.getparent()
    assert parent is not None
    previous = elem.getprevious()
    if previous is not None:
        previous.tail = elem.tail
    else:
        parent.text = elem.tail
    parent.remove(elem)


def check_response(
    request: SoapMessage,
    response: SoapResponse,
    *,
    origin: str = "Server.ServerProxy",
    verify_request_hash: bool = False,
) -> None:
    """Raise ``InconsistentResponse`` unless ``response`` echoes ``request``'s header; return nothing otherwise.

    The echoed fields are client, service, id, userId, issue and protocolVersion (pr-mess §2.3; X-Road's
    consistency check) — absent in the request means absent in the response.  Faults without X-Road headers are
    not checked: they answer no particular request field.  With ``verify_request_hash`` (the consumer's security
    server) the response must also carry ``requestHash`` equal to :func:`request_hash` of the request envelope.
    ``origin`` is the reporting side: ``Server.ServerProxy`` for a provider's answer; the consumer's security
    server passes ``Server.ClientProxy``.
    """
    # (1) A fault without X-Road headers has nothing to echo.
    if response.header is None:
        return
    # (2) Every echoed field must be equal.
    req, resp = request.header, response.header
    pairs = (
        ("client", req.client, resp.client),
        ("service", req.service, resp.service),
        ("id", req.message_id, resp.message_id),
        ("userId", req.user_id, resp.user_id),
        ("issue", req.issue, resp.issue),
        ("protocolVersion", req.protocol_version, resp.protocol_version),
    )
    for name, want, got in pairs:
        if want != got:
            raise InconsistentResponse(f"response {name} does not match the request", origin=origin)
    # (3) The request hash binds the response to exactly these request bytes.
    if verify_request_hash:
        if response.request_hash is None:
            raise InconsistentResponse("response has no requestHash", origin=origin)
        if not secrets.compare_digest(response.request_hash, request_hash(request.envelope)):
            raise InconsistentResponse("response requestHash does not match the request", origin=origin)


# Rendering -----------------------------------------------------------------------------------------------------

_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    # Fault strings may quote input; characters XML 1.0 cannot hold are replaced rather than failing the fault.
    return _XML_INVALID.sub("\ufffd", text)


def render_soap_fault(error: KorpuError, correlation_id: str | None = None) -> bytes:
    """Render ``error`` as a SOAP 1.1 Fault envelope shaped like pr-mess Annex D.1.

    ``faultcode`` is the full fault code (``Server.ClientProxy.OutdatedGlobalConf``), ``faultstring`` the message,
    ``detail/faultDetail`` the error's detail or else the correlation id.  Nothing else is included.
    """
    env = etree.Element(f"{{{SOAP_ENV_NS}}}Envelope", nsmap={"SOAP-ENV": SOAP_ENV_NS})
    body = etree.SubElement(env, f"{{{SOAP_ENV_NS}}}Body")
    fault = etree.SubElement(body, f"{{{SOAP_ENV_NS}}}Fault")
    etree.SubElement(fault, "faultcode").text = _xml_text(error.fault_code)
    etree.SubElement(fault, "faultstring").text = _xml_text(error.message)
    etree.SubElement(fault, "faultactor").text = ""
    detail = error.detail if error.detail is not None else correlation_id
    if detail is not None:
        etree.SubElement(etree.SubElement(fault, "detail"), "faultDetail").text = _xml_text(detail)
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def _check_header_line(name: str, value: str) -> None:
    if not re.fullmatch(_TCHARS, name) or any((ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F for ch in value):
        raise ValueError(f"invalid MIME header {name!r}")


def build_multipart(
    envelope: bytes,
    attachments: Iterable[SoapAttachment],
    *,
    boundary: str | None = None,
    root_content_id: str = "rootpart",
) -> tuple[str, bytes]:
    """Serialise an envelope and its attachments as SwA ``multipart/related``; return ``(content type, body)``.

    The envelope part is ``text/xml; charset=UTF-8`` with ``Content-ID: <root_content_id>``; attachments are
    written ``binary`` with their content type, Content-ID and forwarded headers.  A random boundary is chosen
    unless one is given; a given boundary that occurs in the data raises ``ValueError``.
    """
    items: Sequence[SoapAttachment] = tuple(attachments)
    for att in items:
        _check_header_line("Content-Type", att.content_type)
        for name, value in att.headers:
            _check_header_line(name, value)
        if att.content_id is not None:
            _check_header_line("Content-ID", att.content_id)
    _check_header_line("Content-ID", root_content_id)
    chosen = boundary or f"korpu-{secrets.token_hex(16)}"
    marker = b"--" + chosen.encode("ascii")
    if marker in envelope or any(marker in att.data for att in items):
        raise ValueError("multipart boundary occurs in the data")
    crlf = b"\r\n"
    out = bytearray()
    out += marker + crlf
    out += b"Content-Type: text/xml; charset=UTF-8" + crlf
    out += b"Content-Transfer-Encoding: binary" + crlf
    out += b"Content-ID: <" + root_content_id.encode("ascii") + b">" + crlf + crlf
    out += envelope
    for att in items:
        out += crlf + marker + crlf
        out += b"Content-Type: " + att.content_type.encode("latin-1") + crlf
        out += b"Content-Transfer-Encoding: binary" + crlf
        if att.content_id is not None:
            out += b"Content-ID: <" + att.content_id.encode("latin-1") + b">" + crlf
        for name, value in att.headers:
            out += name.encode("ascii") + b": " + value.encode("latin-1") + crlf
        out += crlf + att.data
    out += crlf + marker + b"--" + crlf
    content_type = f'multipart/related; type="text/xml"; start="<{root_content_id}>"; boundary="{chosen}"'
    return content_type, bytes(out)
