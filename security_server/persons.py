"""Person identifiers in a request: what lets an auditor answer "who accessed this person's data, and when".

A provided service declares in ``server.yaml`` where its requests carry person identifiers
(:class:`~security_server.config.PersonField`); :func:`extract_persons` reads them from a request and the message
log stores them in the record's ``persons``.  Sources:

``query``
    every value of the query parameter ``name`` (percent-decoded, ``+`` as space, all occurrences);
``header``
    every value of the end-to-end header ``name`` (case-insensitive).  ``X-Road-*`` headers are consumed by the
    security server and never reach here; the end user's ``userId`` is recorded by the log stage itself;
``path``
    ``name`` is a pattern over the normalised REST path, matched segment by segment: literal segments must be
    equal (compared percent-decoded), ``*`` matches any one segment, ``{label}`` matches any one segment and
    captures it (percent-decoded), and a final ``**`` matches whatever follows.  Without ``**`` the segment counts
    must be equal, so ``/persons/{pin}`` does not match ``/persons/search/by-name`` (which would record "search"
    as a person); write ``/persons/{pin}/**`` to cover sub-resources as well;
``json``
    ``name`` is an RFC 6901 JSON pointer into the REST request body.  A string or number there is one identifier;
    an array there contributes each of its string and number elements (so ``/applicants`` can list several);
``xml``
    ``name`` is the local name of elements inside the SOAP Body; every leaf element of that name counts, its text
    stripped.

The function is pure and **never raises on what the client sent**: a body that is too large, is not JSON or not
well-formed XML, uses a DTD or entities, or nests too deep simply yields nothing for the fields that needed it.
Refusing malformed messages is the protocol parsers' job; this runs after them, on the logging path, where an
exception would turn a logging detail into a failed exchange.  Values that cannot be identifiers (empty, control
characters, longer than :data:`MAX_PERSON_LENGTH`) are dropped, not truncated: a truncated value would be a
different, wrong identifier in signed evidence.  At most :data:`MAX_PERSONS` identifiers are kept per request, the
first ones found in the order of ``fields``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote

from lxml import etree

from bridge.errors import InvalidXml, KorpuError
from bridge.rest import MAX_QUERY_LENGTH, RestRequest
from bridge.soap import SOAP_ENV_NS, SoapMessage
from bridge.xmlsafe import parse_xml
from security_server.config import PersonField

__all__ = [
    "DEFAULT_MAX_BODY",
    "MAX_PERSONS",
    "MAX_PERSON_LENGTH",
    "check_person_field",
    "clean_person",
    "extract_persons",
]

#: Largest request body (REST body or SOAP envelope) that is parsed for identifiers.
DEFAULT_MAX_BODY = 1024 * 1024
#: Most identifiers recorded for one request.
MAX_PERSONS = 64
#: Longest identifier recorded.  National identifiers are far shorter (an Azerbaijani FIN has 7 characters).
MAX_PERSON_LENGTH = 128
#: Nesting limit for the SOAP envelope: deep enough for any real service, far below libxml2's own limit.
_MAX_XML_DEPTH = 100
#: Query parameters parsed at most; the query is already capped at MAX_QUERY_LENGTH characters by bridge.rest.
_MAX_QUERY_FIELDS = MAX_QUERY_LENGTH // 2
_PLACEHOLDER = re.compile(r"\{[^{}/]+\}")


def clean_person(value: str) -> str | None:
    """``value`` stripped, if it can be a person identifier (printable, 1 to :data:`MAX_PERSON_LENGTH` chars)."""
    value = value.strip()
    if not value or len(value) > MAX_PERSON_LENGTH or not value.isprintable():
        return None
    return value


def check_person_field(field: PersonField) -> None:
    """Raise ``ValueError`` if ``field.name`` cannot work for its source (for validation at configuration load).

    A JSON pointer must be empty or start with ``/`` and use ``~`` only as ``~0``/``~1``; a path pattern must start
    with ``/`` and capture at least one ``{…}`` segment; the other sources need a non-empty name.
    """
    name = field.name
    if field.source == "json":
        if name and (not name.startswith("/") or re.search(r"~(?![01])", name)):
            raise ValueError(f"person field {name!r}: not a JSON pointer (RFC 6901)")
    elif field.source == "path":
        segments = name.split("/")
        if not name.startswith("/") or not any(_PLACEHOLDER.fullmatch(s) for s in segments):
            raise ValueError(f"person field {name!r}: a path pattern starts with '/' and has a {{…}} segment")
        if "**" in segments[:-1]:
            raise ValueError(f"person field {name!r}: '**' may only be the last segment")
    elif not name.strip():
        raise ValueError(f"person field of source {field.source}: the name must not be empty")


def extract_persons(
    fields: Sequence[PersonField],
    *,
    rest: RestRequest | None,
    rest_body: bytes | None,
    soap: SoapMessage | None,
    max_body: int = DEFAULT_MAX_BODY,
) -> tuple[str, ...]:
    """The person identifiers ``fields`` point at in a REST or SOAP request: sorted, unique, capped.

    Fields whose source does not apply to the request's protocol (``xml`` for REST, the others for SOAP) are
    skipped.  Bodies larger than ``max_body`` are not parsed.  Never raises on malformed input (see the module
    docstring).
    """
    found: dict[str, None] = {}  # insertion-ordered set: the first MAX_PERSONS found win
    parsed = _LazyBodies(rest_body, soap, max_body)
    for field in fields:
        for raw in _values(field, rest, parsed):
            value = clean_person(raw)
            if value is not None:
                found.setdefault(value)
                if len(found) >= MAX_PERSONS:
                    return tuple(sorted(found))
    return tuple(sorted(found))


# Sources -------------------------------------------------------------------------------------------------------


class _LazyBodies:
    """Parse each body at most once, and only if some field needs it."""

    def __init__(self, rest_body: bytes | None, soap: SoapMessage | None, max_body: int) -> None:
        self._rest_body, self._soap, self._max_body = rest_body, soap, max_body
        self._json: tuple[Any] | None = None
        self._json_done = False
        self._soap_body: etree._Element | None = None
        self._soap_done = False

    def json(self) -> tuple[Any] | None:
        """The REST body as a JSON value (in a 1-tuple, since ``null`` is a value), or ``None`` if unusable."""
        if not self._json_done:
            self._json_done = True
            self._json = _parse_json(self._rest_body, self._max_body)
        return self._json

    def soap_body(self) -> etree._Element | None:
        """The SOAP Body element, or ``None`` if unusable."""
        if not self._soap_done:
            self._soap_done = True
            self._soap_body = _parse_soap_body(self._soap, self._max_body)
        return self._soap_body


def _values(field: PersonField, rest: RestRequest | None, bodies: _LazyBodies) -> Iterator[str]:
    if field.source == "xml":
        body = bodies.soap_body()
        if body is not None:
            yield from _xml_values(body, field.name)
        return
    if rest is None:
        return
    if field.source == "query":
        yield from _query_values(rest.query, field.name)
    elif field.source == "header":
        wanted = field.name.lower()
        yield from (value for name, value in rest.headers if name.lower() == wanted)
    elif field.source == "path":
        yield from _path_values(rest.path, field.name)
    elif field.source == "json":
        document = bodies.json()
        if document is not None:
            yield from _json_values(document[0], field.name)


def _query_values(query: str, name: str) -> list[str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=False, max_num_fields=_MAX_QUERY_FIELDS)
    except ValueError:  # more fields than allowed; a request like that has been refused earlier anyway
        return []
    return [value for key, value in pairs if key == name]


def _path_values(path: str, pattern: str) -> list[str]:
    if not path.startswith("/") or not pattern.startswith("/"):
        return []
    segments = path[1:].split("/")
    wanted = pattern[1:].split("/")
    open_ended = wanted[-1] == "**"
    if open_ended:
        wanted = wanted[:-1]
        if len(segments) < len(wanted):
            return []
    elif len(segments) != len(wanted):
        return []
    captured: list[str] = []
    for want, raw in zip(wanted, segments, strict=False):
        # The path is normalised (bridge.rest.normalize_path): escapes are valid UTF-8, decoded exactly once here.
        try:
            segment = unquote(raw, errors="strict") if "%" in raw else raw
        except UnicodeDecodeError:  # only if the caller passed a path that was never normalised
            return []
        if _PLACEHOLDER.fullmatch(want):
            captured.append(segment)
        elif want != "*" and want != segment:
            return []
    return captured


def _parse_json(body: bytes | None, max_body: int) -> tuple[Any] | None:
    if body is None or not body or len(body) > max_body:
        return None
    try:
        # NaN and Infinity are not JSON; refusing them keeps "nan" from becoming somebody's identifier.
        return (json.loads(body, parse_constant=_refuse_constant),)
    except (ValueError, RecursionError):
        # ValueError covers syntax errors, bad UTF-8 and integers beyond Python's digit limit; RecursionError a
        # body nested deeper than the parser's recursion allows.  Either way: no identifiers from this body.
        return None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_values(document: Any, pointer: str) -> list[str]:
    target = _resolve_pointer(document, pointer)
    items = target if isinstance(target, list) else [target]
    out: list[str] = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, int | float) and not isinstance(item, bool):  # True is no identifier
            out.append(str(item))
    return out


def _resolve_pointer(document: Any, pointer: str) -> Any:
    """RFC 6901 evaluation; ``None`` when the pointer is malformed or names nothing."""
    if pointer == "":
        return document
    if not pointer.startswith("/"):
        return None
    node = document
    for token in pointer[1:].split("/"):
        if re.search(r"~(?![01])", token):
            return None
        token = token.replace("~1", "/").replace("~0", "~")  # in this order (RFC 6901 §4)
        if isinstance(node, dict):
            if token not in node:
                return None
            node = node[token]
        elif isinstance(node, list):
            # Array indexes are "0" or digits without a leading zero; "-" (past the end) names nothing.
            if not re.fullmatch(r"0|[1-9][0-9]*", token) or int(token) >= len(node):
                return None
            node = node[int(token)]
        else:
            return None
    return node


def _parse_soap_body(soap: SoapMessage | None, max_body: int) -> etree._Element | None:
    if soap is None:
        return None
    try:
        root = parse_xml(
            soap.envelope, max_bytes=max_body, error=InvalidXml, max_depth=_MAX_XML_DEPTH, what="SOAP envelope"
        )
    except KorpuError:
        return None
    return root.find(f"{{{SOAP_ENV_NS}}}Body")


def _xml_values(body: etree._Element, local_name: str) -> list[str]:
    out: list[str] = []
    for element in body.iter(etree.Element):
        if etree.QName(element).localname != local_name:
            continue
        # Only leaf elements: the text of an element with children would glue several values together.
        if len(element) == 0 or all(not isinstance(child.tag, str) for child in element):
            out.append("".join(str(text) for text in element.itertext()))
    return out
