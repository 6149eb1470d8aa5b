"""Person identifiers extracted from requests for the message log ("who accessed this person's data").

Pins: each source (query, header, path pattern, JSON pointer, SOAP Body element) finds what the service declared
and only that; the result is sorted, unique and capped; hostile or malformed bodies (invalid or huge JSON, deep
nesting, XXE, entity expansion) yield nothing rather than an exception; configuration-time validation of fields.
"""

from __future__ import annotations

import json

import pytest

from bridge.identifiers import ServiceId, SubsystemId
from bridge.message import MessageHeader, Protocol
from bridge.rest import RestRequest
from bridge.soap import SoapMessage
from security_server.config import PersonField
from security_server.persons import (
    MAX_PERSON_LENGTH,
    MAX_PERSONS,
    check_person_field,
    extract_persons,
)

SERVICE = "AZ/GOV/1400057421/population/persons"
CLIENT = ("X-Road-Client", "AZ/COM/9900001111/loans")


def rest(path: str = "", query: str = "", headers: tuple[tuple[str, str], ...] = ()) -> RestRequest:
    """A REST request parsed the way the client proxy parses it (so the path is normalised)."""
    return RestRequest.from_http("POST", f"/r1/{SERVICE}{path}", query, [CLIENT, *headers], generate_id=lambda: "msg-1")


def soap(body: str | bytes) -> SoapMessage:
    """A SoapMessage whose envelope has ``body`` inside its Body (built directly: hostile envelopes included)."""
    inner = body.encode() if isinstance(body, str) else body
    envelope = (
        b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"'
        b' xmlns:p="http://population.gov.az/">'
        b"<soapenv:Header/><soapenv:Body>" + inner + b"</soapenv:Body></soapenv:Envelope>"
    )
    return envelope_message(envelope)


def envelope_message(envelope: bytes) -> SoapMessage:
    service = ServiceId(SubsystemId("AZ", "GOV", "1400057421", "population"), "persons")
    header = MessageHeader(Protocol.SOAP, SubsystemId("AZ", "COM", "9900001111", "loans"), service, "msg-1")
    return SoapMessage(header, envelope, "text/xml", "{http://population.gov.az/}persons", ())


def persons_of(
    *fields: PersonField,
    request: RestRequest | None = None,
    body: bytes | None = None,
    message: SoapMessage | None = None,
    max_body: int = 1024 * 1024,
) -> tuple[str, ...]:
    return extract_persons(fields, rest=request, rest_body=body, soap=message, max_body=max_body)


# Sources -------------------------------------------------------------------------------------------------------


def test_query_parameter_every_occurrence_decoded() -> None:
    """All values of the named query parameter count, percent-decoded; other parameters do not."""
    request = rest("/persons", "pin=AZE2&other=X9&pin=AZE1&pin=A%20Z")
    assert persons_of(PersonField("query", "pin"), request=request) == ("A Z", "AZE1", "AZE2")


def test_header_values_case_insensitive() -> None:
    """Header names match case-insensitively; every occurrence counts."""
    request = rest("/persons", headers=(("X-Person-Id", "AZE7"), ("x-person-id", "AZE3"), ("X-Other", "Q")))
    assert persons_of(PersonField("header", "X-PERSON-ID"), request=request) == ("AZE3", "AZE7")


def test_xroad_headers_never_reach_the_extractor() -> None:
    """X-Road-* headers are consumed by the security server; a header field naming one finds nothing."""
    request = rest("/persons", headers=(("X-Road-UserId", "AZE0"),))
    assert persons_of(PersonField("header", "X-Road-UserId"), request=request) == ()


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/persons/{pin}", "/persons/AZE1", ("AZE1",)),
        ("/persons/{pin}", "/persons/A%20Z%C3%BC", ("A Zü",)),  # captured segment is percent-decoded
        ("/persons/{pin}", "/persons/AZE1/documents", ()),  # different segment count
        ("/persons/{pin}/**", "/persons/AZE1/documents/7", ("AZE1",)),
        ("/persons/{pin}/**", "/persons/AZE1", ("AZE1",)),
        ("/persons/{pin}", "/people/AZE1", ()),  # literal segment differs
        ("/*/{pin}", "/people/AZE1", ("AZE1",)),
        ("/families/{a}/members/{b}", "/families/F1/members/AZE5", ("AZE5", "F1")),
        ("/persons/{pin}", "", ()),
    ],
)
def test_path_pattern(pattern: str, path: str, expected: tuple[str, ...]) -> None:
    """Path patterns match segment by segment; {…} captures, * skips one segment, a final ** takes the rest."""
    assert persons_of(PersonField("path", pattern), request=rest(path)) == expected


@pytest.mark.parametrize(
    ("pointer", "expected"),
    [
        ("/applicant/pin", ("AZE1",)),
        ("/applicant/number", ("1234567",)),  # numbers become text
        ("/applicants", ("AZE2", "AZE3")),  # an array contributes its strings and numbers
        ("/applicants/1", ("AZE3",)),
        ("/a~1b/c~0d", ("ESCAPED",)),  # RFC 6901 escapes
        ("/applicant/flag", ()),  # booleans are not identifiers
        ("/applicant/missing", ()),
        ("/applicants/01", ()),  # leading zeros are not array indexes
        ("/applicants/-", ()),
        ("/applicant", ()),  # an object is not an identifier
        ("applicant", ()),  # not a pointer
    ],
)
def test_json_pointer(pointer: str, expected: tuple[str, ...]) -> None:
    """A JSON pointer into the REST body picks strings and numbers (and the scalar elements of an array)."""
    body = json.dumps(
        {
            "applicant": {"pin": "AZE1", "number": 1234567, "flag": True},
            "applicants": ["AZE2", "AZE3", {"x": 1}, None],
            "a/b": {"c~d": "ESCAPED"},
        }
    ).encode()
    assert persons_of(PersonField("json", pointer), request=rest("/persons"), body=body) == expected


def test_soap_body_elements_by_local_name() -> None:
    """Every leaf element with the local name counts, in any namespace, its text stripped."""
    message = soap(
        "<p:persons><p:pin> AZE2 </p:pin><other><pin>AZE1</pin></other>"
        "<p:pin><!-- noted -->AZE3</p:pin><pin><nested>NOPE</nested></pin></p:persons>"
    )
    assert persons_of(PersonField("xml", "pin"), message=message) == ("AZE1", "AZE2", "AZE3")


def test_soap_header_elements_are_not_searched() -> None:
    """Only the Body is searched: an element of that name in the SOAP Header is not a declared person field."""
    envelope = (
        b'<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Header><pin>AZE9</pin></e:Header>'
        b"<e:Body><q/></e:Body></e:Envelope>"
    )
    assert persons_of(PersonField("xml", "pin"), message=envelope_message(envelope)) == ()


def test_sources_of_the_other_protocol_are_ignored() -> None:
    """Fields of source xml find nothing in REST requests, and query/header/path/json fields nothing in SOAP ones."""
    request = rest("/persons/AZE1", "pin=AZE2")
    assert persons_of(PersonField("xml", "pin"), request=request) == ()
    message = soap("<pin>AZE3</pin>")
    rest_fields = (PersonField("query", "pin"), PersonField("path", "/persons/{pin}"), PersonField("json", "/pin"))
    assert persons_of(*rest_fields, message=message, body=b'{"pin": "AZE4"}') == ()


def test_several_fields_give_one_sorted_unique_tuple() -> None:
    """Identifiers from several fields are merged, deduplicated and sorted."""
    request = rest("/persons/AZE5", "pin=AZE1&pin=AZE5", headers=(("X-Pin", "AZE3"),))
    fields = (PersonField("query", "pin"), PersonField("path", "/persons/{pin}"), PersonField("header", "x-pin"))
    assert persons_of(*fields, request=request) == ("AZE1", "AZE3", "AZE5")


# Caps and hostile input ----------------------------------------------------------------------------------------


def test_values_that_cannot_be_identifiers_are_dropped_not_truncated() -> None:
    """Empty, blank, over-long and control-character values are dropped; a truncated value would be wrong evidence."""
    long_value = "A" * (MAX_PERSON_LENGTH + 1)
    body = json.dumps({"p": ["", "   ", long_value, "bad\u0000nul", "A" * MAX_PERSON_LENGTH, "ok"]}).encode()
    assert persons_of(PersonField("json", "/p"), request=rest("/x"), body=body) == ("A" * MAX_PERSON_LENGTH, "ok")


def test_number_of_identifiers_is_capped_first_found_kept() -> None:
    """At most MAX_PERSONS identifiers are kept: the first ones found, in the order of the fields."""
    first = [f"B{i:04d}" for i in range(MAX_PERSONS)]
    body = json.dumps({"many": [*first, "A-late"], "one": "A-never"}).encode()
    fields = (PersonField("json", "/many"), PersonField("json", "/one"))
    assert persons_of(*fields, request=rest("/x"), body=body) == tuple(sorted(first))


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe\x00garbage",
        b'{"pin": NaN}',
        b'{"pin": "AZE1"',  # truncated
        b"[" * 100_000 + b"]" * 100_000,  # nesting beyond the parser's recursion
        b'{"pin": ' + b"9" * 5000 + b"}",  # beyond Python's integer digit limit
        b"",
    ],
)
def test_malformed_json_yields_nothing(body: bytes) -> None:
    """A body that is not (acceptable) JSON gives no identifiers for json fields and raises nothing."""
    assert persons_of(PersonField("json", "/pin"), request=rest("/x"), body=body) == ()


def test_json_body_over_the_cap_is_not_parsed() -> None:
    """A body larger than max_body is not parsed at all; other sources still count."""
    body = json.dumps({"pin": "AZE1", "pad": "x" * 2000}).encode()
    fields = (PersonField("json", "/pin"), PersonField("query", "pin"))
    request = rest("/x", "pin=AZE2")
    assert persons_of(*fields, request=request, body=body, max_body=1000) == ("AZE2",)
    assert persons_of(*fields, request=request, body=body, max_body=len(body)) == ("AZE1", "AZE2")


@pytest.mark.parametrize(
    "envelope",
    [
        # XXE: an external entity that would read a local file.
        b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body><pin>&x;</pin></e:Body>'
        b"</e:Envelope>",
        # Entity expansion ("billion laughs", shortened).
        b'<!DOCTYPE e [<!ENTITY a "AZE1"><!ENTITY b "&a;&a;&a;&a;">]>'
        b'<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body><pin>&b;</pin></e:Body>'
        b"</e:Envelope>",
        # Not well-formed.
        b'<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body><pin>AZE1</e:Body>',
        # Nested far too deep.
        b'<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body>'
        + b"<d>" * 5000
        + b"<pin>AZE1</pin>"
        + b"</d>" * 5000
        + b"</e:Body></e:Envelope>",
        b"",
    ],
)
def test_hostile_soap_envelope_yields_nothing(envelope: bytes) -> None:
    """XXE, entity expansion, malformed and over-deep envelopes give no identifiers and raise nothing."""
    assert persons_of(PersonField("xml", "pin"), message=envelope_message(envelope)) == ()


def test_soap_envelope_over_the_cap_is_not_parsed() -> None:
    """An envelope larger than max_body is not handed to the parser."""
    message = soap("<pin>AZE1</pin>" + "<pad/>" * 500)
    assert persons_of(PersonField("xml", "pin"), message=message, max_body=1000) == ()
    assert persons_of(PersonField("xml", "pin"), message=message) == ("AZE1",)


def test_no_request_no_fields() -> None:
    """Without a request, or without fields, the result is empty."""
    assert persons_of(PersonField("query", "pin")) == ()
    assert persons_of(request=rest("/persons/AZE1", "pin=AZE1")) == ()


# Configuration checks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        PersonField("json", "applicant/pin"),
        PersonField("json", "/a~2b"),
        PersonField("path", "persons/{pin}"),
        PersonField("path", "/persons/pin"),
        PersonField("path", "/**/{pin}"),
        PersonField("query", " "),
        PersonField("xml", ""),
    ],
)
def test_check_person_field_refuses_unusable_names(field: PersonField) -> None:
    """Names that can never match are refused with ValueError (for server.yaml validation)."""
    with pytest.raises(ValueError, match="person field"):
        check_person_field(field)


@pytest.mark.parametrize(
    "field",
    [
        PersonField("json", ""),
        PersonField("json", "/a~0b/c~1d/0"),
        PersonField("path", "/persons/{pin}/**"),
        PersonField("query", "pin"),
        PersonField("header", "X-Person"),
        PersonField("xml", "pin"),
    ],
)
def test_check_person_field_accepts_usable_names(field: PersonField) -> None:
    """Well-formed pointers, patterns and names pass."""
    check_person_field(field)
