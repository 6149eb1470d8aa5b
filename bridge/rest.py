r"""X-Road Message Protocol for REST r1 (pr-rest): request parsing, path normalisation, descriptors and errors.

Sans-I/O: the client proxy passes in the request line parts and headers it received and gets a validated
:class:`RestRequest`.  Three rules carry the security weight:

* **What is checked is what is sent.**  :func:`normalize_path` decodes the path once, refuses every traversal
  trick (dot segments, encoded or not; encoded ``/`` and ``\\``; NUL and control characters; empty segments) and
  re-encodes it canonically.  Access rules match that string, the descriptor signs it and the provider receives it.
  Double encoding is decoded exactly once: ``%252e%252e`` becomes the literal segment text ``%2e%2e``, which is not
  a dot segment, and it is re-encoded as ``%252e%252e`` so the provider cannot decode it into ``..``.
* **X-Road headers are the security server's.**  Every ``X-Road-*`` request header is consumed (each at most
  once) and removed from what is forwarded; the provider's security server re-creates them.  Hop-by-hop headers,
  ``Host`` and ``Content-Length`` are not forwarded either (they describe one connection, not the message).
* **The signed descriptor is the request.**  :func:`descriptor` serialises everything that is forwarded — method,
  path, query, forwarded headers, X-Road header fields — canonically; :func:`parse_descriptor` rebuilds the request
  from it on the receiving side, so nothing unsigned reaches the provider.

Descriptor format (``korpu-rest-request/1``): UTF-8 JSON, keys sorted, no whitespace, ASCII-only (``\\uXXXX``
escapes), with the keys ``format``, ``method``, ``path``, ``query``, ``headers`` (list of ``[lowercased name,
value]`` in received order), ``client`` and ``service`` (encoded identifiers), ``id``, ``userId``, ``issue``,
``representedParty`` (``[CLASS/]CODE``), ``securityServer`` (encoded) — absent optional values are ``null``.
The response descriptor (``korpu-rest-response/1``) has ``format``, ``status``, ``headers`` and ``requestHash``.

Error statuses (:func:`render_rest_error`, pr-rest §4.6): client faults keep their own 4xx status (400 for
protocol violations, 401/403/404/405/413 where the fault says exactly that); every server-side fault is 500.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from bridge.errors import (
    ClientError,
    DuplicateHeaderField,
    InvalidIdentifier,
    InvalidPath,
    InvalidProtocolVersion,
    InvalidRequest,
    KorpuError,
    MethodNotAllowed,
    MissingHeaderField,
    render_json,
)
from bridge.identifiers import (
    MemberId,
    SecurityServerId,
    ServiceId,
    SubsystemId,
    parse_client,
    parse_encoded,
)
from bridge.message import MessageHeader, Protocol, RepresentedParty

__all__ = [
    "ALLOWED_METHODS",
    "HOP_BY_HOP",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_PATH_LENGTH",
    "MAX_QUERY_LENGTH",
    "PROTOCOL_VERSION",
    "RestRequest",
    "RestResponse",
    "descriptor",
    "normalize_path",
    "parse_descriptor",
    "parse_response_descriptor",
    "render_rest_error",
    "request_hash",
    "response_descriptor",
    "response_headers",
]

#: The protocol version segment of REST r1 URLs.
PROTOCOL_VERSION = "r1"
#: Methods a consumer may use (RFC 7231/5789 methods with ordinary semantics; no CONNECT or TRACE).
ALLOWED_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
#: Headers that describe one connection (RFC 9110 §7.6.1) plus ones the security server sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "host",
        "content-length",
    }
)
#: Most request headers accepted, and their total size (names and values).
MAX_HEADERS = 100
MAX_HEADER_BYTES = 32 * 1024
#: Longest path (after the service id) and query accepted.
MAX_PATH_LENGTH = 4096
MAX_QUERY_LENGTH = 8192
_MAX_DESCRIPTOR = MAX_HEADER_BYTES * 2 + MAX_PATH_LENGTH * 3 + MAX_QUERY_LENGTH + 16 * 1024

_REQUEST_FORMAT = "korpu-rest-request/1"
_RESPONSE_FORMAT = "korpu-rest-response/1"
_TCHAR = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
#: Characters left raw in a canonical segment: RFC 3986 unreserved (always kept by quote) plus sub-delims, ":"
#: and "@" (pchar).  Everything else, including "%", is percent-encoded with upper-case hex digits.
_SAFE = "!$&'()*+,;=:@"


# Paths ---------------------------------------------------------------------------------------------------------


def _decode_segment(raw: str) -> str:
    """Percent-decode one raw segment exactly once, strictly (every ``%`` starts a valid escape; UTF-8)."""
    if "%" in _PCT.sub("", raw):
        raise InvalidPath("path contains a malformed percent-escape")
    try:
        return _PCT.sub(lambda m: chr(int(m.group(1), 16)), raw).encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise InvalidPath("path is not valid UTF-8 once decoded") from None


def _is_dot_segment(segment: str) -> bool:
    # "." and ".." are RFC 3986 dot segments.  Servlet containers also treat "..;param" as ".." and Windows
    # servers strip trailing dots and spaces ("... " -> ""), so any segment made only of dots (before a ";"
    # parameter, ignoring trailing spaces) is refused.
    core = segment.split(";", 1)[0].rstrip(" ")
    return core != "" and set(core) == {"."}


def normalize_path(raw_path: str, *, max_length: int = MAX_PATH_LENGTH) -> str:
    r"""Return the canonical form of the still-percent-encoded ``raw_path`` (the part after the service id).

    The result is ``""`` (no path) or starts with ``/``; it is what access rules match and what is forwarded.
    Raises ``Client.InvalidPath`` for encoded ``/`` or ``\\``, dot segments in any spelling, NUL and control
    characters, empty segments other than a trailing ``/``, malformed escapes and over-long paths.
    """
    # (1) Bounded, printable ASCII, rooted: what an HTTP request target may carry (RFC 9112 §3.2).
    if not isinstance(raw_path, str):
        raise InvalidPath("path must be a string")
    if raw_path == "":
        return ""
    if len(raw_path) > max_length:
        raise InvalidPath(f"path is longer than {max_length} characters")
    if not raw_path.startswith("/"):
        raise InvalidPath("path must start with '/'")
    if any(not 0x21 <= ord(ch) <= 0x7E for ch in raw_path) or "#" in raw_path or "?" in raw_path:
        raise InvalidPath("path contains characters that must be percent-encoded")
    if "\\" in raw_path:
        raise InvalidPath("path contains a backslash")
    segments = raw_path[1:].split("/")
    out: list[str] = []
    for index, raw in enumerate(segments):
        # (2) Decode once.
        segment = _decode_segment(raw)
        # (3) Nothing decoded may act as a separator, a terminator or a control character downstream.
        if "/" in segment or "\\" in segment:
            raise InvalidPath("path contains an encoded slash or backslash")
        if any(unicodedata.category(ch) == "Cc" for ch in segment):
            raise InvalidPath("path contains NUL or control characters")
        # (4) No dot segments, and no empty segments except a trailing "/" (proxies and frameworks disagree on
        #     whether "//" collapses, so a path using it would mean different things to checker and provider).
        if _is_dot_segment(segment):
            raise InvalidPath("path contains a dot segment")
        if segment == "" and index != len(segments) - 1:
            raise InvalidPath("path contains an empty segment")
        # (5) Re-encode canonically.
        out.append(quote(segment, safe=_SAFE))
    return "/" + "/".join(out)


def _check_query(query: str) -> str:
    if not isinstance(query, str) or len(query) > MAX_QUERY_LENGTH:
        raise InvalidRequest(f"query must be a string of at most {MAX_QUERY_LENGTH} characters")
    if any(not 0x21 <= ord(ch) <= 0x7E for ch in query) or "#" in query:
        raise InvalidRequest("query contains characters that must be percent-encoded")
    return query


# Headers -------------------------------------------------------------------------------------------------------


def _check_headers(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Validate header names and values and the count/size caps; return them with values stripped."""
    if len(headers) > MAX_HEADERS:
        raise InvalidRequest(f"request has more than {MAX_HEADERS} headers")
    total = 0
    out: list[tuple[str, str]] = []
    for name, value in headers:
        if not isinstance(name, str) or not isinstance(value, str) or not _TCHAR.fullmatch(name):
            raise InvalidRequest("request has a malformed header name")
        total += len(name) + len(value)
        if total > MAX_HEADER_BYTES:
            raise InvalidRequest(f"request headers are larger than {MAX_HEADER_BYTES} bytes")
        if any((ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F for ch in value):
            raise InvalidRequest(f"header {name} contains control characters")
        out.append((name, value.strip(" \t")))
    return out


def _forwardable(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The end-to-end headers: no hop-by-hop, Proxy-*, X-Road-*, nor anything ``Connection`` names."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
        if token.strip()
    }
    return [
        (name, value)
        for name, value in headers
        if (low := name.lower()) not in HOP_BY_HOP and low not in named and not low.startswith(("proxy-", "x-road-"))
    ]


def _single(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in headers if k.lower() == name.lower()]
    if len(values) > 1:
        raise DuplicateHeaderField(f"header {name} appears more than once")
    return values[0] if values else None


def _content_type(headers: Sequence[tuple[str, str]]) -> str | None:
    values = [v for k, v in headers if k.lower() == "content-type"]
    if len(values) > 1:
        raise InvalidRequest("header Content-Type appears more than once")
    return values[0] if values else None


# Requests ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestRequest:
    """A validated REST r1 request.

    ``path`` is canonical (see :func:`normalize_path`); ``query`` is passed through unchanged (without ``?``);
    ``headers`` are the end-to-end headers to forward to the provider, in received order, names lowercased (HTTP
    header names are case-insensitive, and one spelling keeps the descriptor canonical).
    """

    header: MessageHeader
    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    content_type: str | None

    @classmethod
    def from_http(
        cls,
        method: str,
        raw_path: str,
        query: str,
        headers: Sequence[tuple[str, str]],
        *,
        generate_id: Callable[[], str],
    ) -> RestRequest:
        """Parse a consumer's request: ``raw_path`` is ``/r1/INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICE[/path]``.

        Raises ``Client.*`` faults: ``MethodNotAllowed``, ``InvalidProtocolVersion``, ``InvalidIdentifier``,
        ``InvalidPath``, ``MissingHeaderField``, ``DuplicateHeaderField``, ``InvalidRequest``.
        """
        # (1) Method whitelist (methods are case-sensitive, RFC 9110 §9.1).
        if method not in ALLOWED_METHODS:
            raise MethodNotAllowed(f"method {method[:20]!r} is not allowed")
        # (2) Headers: caps, syntax.
        checked = _check_headers(headers)
        # (3) /r1/ prefix, then exactly five service id segments, then the path.
        if not isinstance(raw_path, str) or not raw_path.startswith("/"):
            raise InvalidRequest("request path must start with '/'")
        version, _, rest = raw_path[1:].partition("/")
        if version != PROTOCOL_VERSION:
            raise InvalidProtocolVersion(f"REST protocol version must be {PROTOCOL_VERSION}")
        parts = rest.split("/", 5)
        if len(parts) < 5:
            raise InvalidIdentifier("service id must have 5 parts: INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICE")
        if any(_is_dot_segment(p) for p in parts[:5]):
            raise InvalidIdentifier("service id parts must not be dot segments")
        # Identifier codes may not contain "%" (check_code), so the raw segments need no decoding.
        service = ServiceId(SubsystemId(*parts[:4]), parts[4])
        path = normalize_path("/" + parts[5] if len(parts) == 6 else "")
        # (4) X-Road headers: the client exactly once; the others at most once.
        client_text = _single(checked, "X-Road-Client")
        if client_text is None:
            raise MissingHeaderField("header X-Road-Client is missing")
        client = parse_client(client_text)
        message_id = _single(checked, "X-Road-Id") or generate_id()
        user_id = _single(checked, "X-Road-UserId")
        issue = _single(checked, "X-Road-Issue")
        party_text = _single(checked, "X-Road-Represented-Party")
        server_text = _single(checked, "X-Road-Security-Server")
        for name in {k.lower() for k, _ in checked if k.lower().startswith("x-road-")}:
            _single(checked, name)  # any other X-Road header repeated is as suspicious as a repeated client
        header = MessageHeader(
            protocol=Protocol.REST,
            client=client,
            service=service,
            message_id=message_id,
            user_id=user_id,
            issue=issue,
            represented_party=RepresentedParty.parse(party_text) if party_text is not None else None,
            security_server=SecurityServerId.parse(server_text) if server_text is not None else None,
            protocol_version=PROTOCOL_VERSION,
        )
        # (5) Query and forwarded headers.
        forwarded = tuple((name.lower(), value) for name, value in _forwardable(checked))
        return cls(header, method, path, _check_query(query), forwarded, _content_type(forwarded))


def descriptor(req: RestRequest) -> bytes:
    """The canonical serialisation of ``req`` (the "headers part" that is hashed and signed); see module doc."""
    h = req.header
    doc = {
        "format": _REQUEST_FORMAT,
        "method": req.method,
        "path": req.path,
        "query": req.query,
        "headers": [[name.lower(), value] for name, value in req.headers],
        "client": h.client.encoded(),
        "service": h.service.encoded(),
        "id": h.message_id,
        "userId": h.user_id,
        "issue": h.issue,
        "representedParty": h.represented_party.path() if h.represented_party else None,
        "securityServer": h.security_server.encoded() if h.security_server else None,
    }
    return _dump(doc)


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _load(data: bytes, keys: frozenset[str], fmt: str) -> dict[str, Any]:
    """Strict JSON object load: size cap, no duplicate keys, no NaN/Infinity, exactly ``keys``, right format."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise InvalidRequest(f"descriptor repeats the key {key[:40]!r}")
            out[key] = value
        return out

    def no_constants(name: str) -> None:
        raise InvalidRequest("descriptor contains a non-JSON number")

    if not isinstance(data, bytes) or len(data) > _MAX_DESCRIPTOR:
        raise InvalidRequest("descriptor is missing or too large")
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InvalidRequest("descriptor is not valid JSON") from None
    if not isinstance(doc, dict) or set(doc) != keys:
        raise InvalidRequest("descriptor has missing or unexpected keys")
    if doc["format"] != fmt:
        raise InvalidRequest(f"descriptor format must be {fmt}")
    if data != _dump(doc):
        raise InvalidRequest("descriptor is not in canonical form")
    return doc


def _str(doc: dict[str, Any], key: str, *, optional: bool = False) -> str | None:
    value = doc[key]
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"descriptor field {key} must be a string")
    return value


def _headers_field(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in value
    ):
        raise InvalidRequest("descriptor headers must be a list of [name, value] pairs")
    pairs = [(str(p[0]), str(p[1])) for p in value]
    checked = _check_headers(pairs)
    if checked != pairs or _forwardable(checked) != checked or any(n != n.lower() for n, _ in pairs):
        raise InvalidRequest("descriptor headers are not canonical end-to-end headers")
    return tuple(pairs)


_REQUEST_KEYS = frozenset(
    {
        "format",
        "method",
        "path",
        "query",
        "headers",
        "client",
        "service",
        "id",
        "userId",
        "issue",
        "representedParty",
        "securityServer",
    }
)


def parse_descriptor(data: bytes) -> RestRequest:
    """Rebuild a :class:`RestRequest` from :func:`descriptor` output, strictly (the receiving side).

    Every field is re-validated as :meth:`RestRequest.from_http` would, and the input must be byte-for-byte the
    canonical serialisation of the result, so two different byte strings never mean the same request.
    """
    # (1) Strict, canonical JSON with exactly the expected keys.
    doc = _load(data, _REQUEST_KEYS, _REQUEST_FORMAT)
    # (2) Method, path (already canonical), query, headers.
    method = _str(doc, "method")
    if method not in ALLOWED_METHODS:
        raise MethodNotAllowed("descriptor method is not allowed")
    path = str(_str(doc, "path"))
    if normalize_path(path) != path:
        raise InvalidPath("descriptor path is not canonical")
    query = _check_query(str(_str(doc, "query")))
    headers = _headers_field(doc["headers"])
    # (3) Identifiers of the right kinds.
    client = parse_encoded(str(_str(doc, "client")))
    if not isinstance(client, MemberId | SubsystemId):
        raise InvalidIdentifier("descriptor client must be a member or subsystem")
    service = parse_encoded(str(_str(doc, "service")))
    if not isinstance(service, ServiceId) or service.service_version is not None:
        raise InvalidIdentifier("descriptor service must be a REST service id (no version)")
    server_text = _str(doc, "securityServer", optional=True)
    server = parse_encoded(server_text) if server_text is not None else None
    if server is not None and not isinstance(server, SecurityServerId):
        raise InvalidIdentifier("descriptor securityServer must be a security server id")
    party_text = _str(doc, "representedParty", optional=True)
    header = MessageHeader(
        protocol=Protocol.REST,
        client=client,
        service=service,
        message_id=str(_str(doc, "id")),
        user_id=_str(doc, "userId", optional=True),
        issue=_str(doc, "issue", optional=True),
        represented_party=RepresentedParty.parse(party_text) if party_text is not None else None,
        security_server=server,
        protocol_version=PROTOCOL_VERSION,
    )
    req = RestRequest(header, str(method), path, query, headers, _content_type(headers))
    # (4) Round trip: the descriptor of what we built must be the input.
    if descriptor(req) != data:
        raise InvalidRequest("descriptor is not in canonical form")
    return req


def request_hash(headers_digest: bytes, body_digest: bytes | None) -> str:
    """pr-rest §4.3 ``X-Road-Request-Hash`` from SHA-512 digests of the descriptor and (if any) the body.

    With a body: base64(SHA512(SHA512(headers) + SHA512(body))); without: base64(SHA512(headers)), which is the
    headers digest itself.
    """
    size = hashlib.sha512().digest_size
    if len(headers_digest) != size or (body_digest is not None and len(body_digest) != size):
        raise ValueError("digests must be SHA-512 digests (64 bytes)")
    if body_digest is None:
        return base64.b64encode(headers_digest).decode("ascii")
    return base64.b64encode(hashlib.sha512(headers_digest + body_digest).digest()).decode("ascii")


# Responses -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestResponse:
    """A provider's response as forwarded: status, end-to-end headers (no ``X-Road-*``) and content type.

    Header names are lowercased, as in :class:`RestRequest`.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    content_type: str | None

    @classmethod
    def from_http(cls, status: int, headers: Sequence[tuple[str, str]]) -> RestResponse:
        """Validate a provider's status and headers, keeping only the end-to-end, non-X-Road ones."""
        if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
            raise InvalidRequest("response status must be a final HTTP status (200-599)", origin="Server.ServerProxy")
        try:
            forwarded = tuple((n.lower(), v) for n, v in _forwardable(_check_headers(headers)))
            return cls(status, forwarded, _content_type(forwarded))
        except KorpuError as exc:
            exc.origin = "Server.ServerProxy"  # a malformed response is the provider's fault, not the consumer's
            raise


def response_descriptor(resp: RestResponse, request_hash: str) -> bytes:
    """The canonical serialisation of a response's meaning, bound to its request by ``request_hash``."""
    return _dump(
        {
            "format": _RESPONSE_FORMAT,
            "status": resp.status,
            "headers": [[name.lower(), value] for name, value in resp.headers],
            "requestHash": request_hash,
        }
    )


def parse_response_descriptor(data: bytes) -> tuple[RestResponse, str]:
    """Rebuild ``(response, request hash)`` from :func:`response_descriptor` output, strictly."""
    doc = _load(data, frozenset({"format", "status", "headers", "requestHash"}), _RESPONSE_FORMAT)
    status = doc["status"]
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        raise InvalidRequest("descriptor status must be an HTTP status")
    headers = _headers_field(doc["headers"])
    hash_value = str(_str(doc, "requestHash"))
    resp = RestResponse(status, headers, _content_type(headers))
    if response_descriptor(resp, hash_value) != data:
        raise InvalidRequest("descriptor is not in canonical form")
    return resp, hash_value


def response_headers(header: MessageHeader, request_hash: str, request_id: str) -> list[tuple[str, str]]:
    """X-Road's response headers (pr-rest §4.3) that the provider's security server adds to a response.

    ``X-Road-Id`` echoes the message id; ``X-Road-Request-Id`` is the security server's own id for the request.
    """
    return [
        ("X-Road-Client", header.client.path()),
        ("X-Road-Service", header.service.path()),
        ("X-Road-Id", header.message_id),
        ("X-Road-Request-Id", request_id),
        ("X-Road-Request-Hash", request_hash),
    ]


def render_rest_error(error: KorpuError, correlation_id: str | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
    """Render ``error`` as pr-rest §4.6 wants: ``(status, headers, body)``.

    Status: a client fault (origin ``Client``) keeps its own 4xx (400 for protocol violations; 401/403/404/405/413
    where the fault says exactly that); anything else is 500 (pr-rest category 2 and 4), whatever its own status,
    so that a consumer never mistakes a security server problem for its own.  Headers: ``X-Road-Error`` with the
    fault code and a JSON content type; body ``{type, message, detail}``.
    """
    # The origin decides, not the class: a client-fault class re-issued as Server.ServerProxy (a provider's
    # malformed response, say) is a server-side problem for the consumer.
    client_side = isinstance(error, ClientError) and error.origin.split(".", 1)[0] == "Client"
    status = error.http_status if client_side and 400 <= error.http_status < 500 else 500
    headers = [("Content-Type", "application/json;charset=utf-8"), ("X-Road-Error", error.fault_code)]
    return status, headers, render_json(error, correlation_id)
