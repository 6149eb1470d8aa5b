"""SOAP 4.0 (pr-mess): reference messages parse, hostile input gets a specific fault, hashes and faults render."""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from bridge.errors import (
    DuplicateHeaderField,
    GlobalConfExpired,
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
from bridge.identifiers import MemberId, SecurityServerId, ServiceId, SubsystemId
from bridge.message import Protocol, RepresentedParty
from bridge.soap import (
    SHA512_ALGORITHM,
    SOAP_ENV_NS,
    XROAD_NS,
    SoapAttachment,
    add_request_hash,
    build_multipart,
    check_response,
    parse_soap,
    parse_soap_response,
    render_soap_fault,
    request_hash,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "xroad"
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "xroad"
REQUEST = (FIXTURES / "soap_request.xml").read_bytes()
RESPONSE = (FIXTURES / "soap_response.xml").read_bytes()


def http_message(name: str) -> tuple[str, bytes]:
    """Split a spec MIME example into (Content-Type header value, body); its first lines are HTTP headers."""
    raw = (FIXTURES / name).read_bytes()
    head, body = raw.split(b"\n\n", 1)
    lines = head.decode().replace("\n    ", " ").splitlines()
    content_type = next(line.split(": ", 1)[1] for line in lines if line.startswith("Content-Type:"))
    return content_type, body


def swap(old: str, new: str, data: bytes = REQUEST) -> bytes:
    assert old.encode() in data
    return data.replace(old.encode(), new.encode(), 1)


# Reference messages --------------------------------------------------------------------------------------------


def test_reference_request_parses_with_all_fields() -> None:
    """pr-mess Annex E.1 parses into the expected header, body element and header order; bytes are kept as sent."""
    msg = parse_soap("text/xml; charset=UTF-8", REQUEST)
    h = msg.header
    assert h.protocol is Protocol.SOAP
    assert h.client == SubsystemId("EE", "GOV", "MEMBER1", "SUBSYSTEM1")
    assert h.service == ServiceId(SubsystemId("EE", "GOV", "MEMBER2", "SUBSYSTEM2"), "exampleService", "v1")
    assert (h.message_id, h.user_id, h.issue, h.protocol_version) == (
        "4894e35d-bf0f-44a6-867a-8e51f1daa7e0",
        "EE12345678901",
        "12345",
        "4.0",
    )
    assert msg.envelope == REQUEST
    assert msg.body_element == "{http://producer.x-road.eu}exampleService"
    assert [n.rpartition("}")[2] for n in msg.header_names] == [
        "client",
        "service",
        "id",
        "userId",
        "issue",
        "protocolVersion",
    ]
    assert msg.attachments == ()


def test_swaref_example_parses_with_its_attachment() -> None:
    """pr-mess Annex F (SwA) yields the envelope bytes verbatim and the decoded base64 attachment.

    The spec example names its body element exampleServiceSwaRef for service exampleService, so the
    body-name rule is switched off for it; the same message with a matching body parses with defaults.
    """
    content_type, body = http_message("soap_request_swaref_attachment.mime.txt")
    msg = parse_soap(content_type, body, check_body_name=False)
    assert msg.content_type == "text/xml; charset=UTF-8"
    assert msg.envelope.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<SOAP-ENV:Envelope')
    assert msg.envelope.endswith(b"</SOAP-ENV:Envelope>\n")
    assert msg.attachments == (
        SoapAttachment(
            "data.bin",
            "application/octet-stream; name=data.bin",
            (("Content-Disposition", 'attachment; name="data.bin"; filename="data.bin"'),),
            b"This is attachment.\r\n",
        ),
    )
    with pytest.raises(InvalidBody):
        parse_soap(content_type, body)
    renamed = body.replace(b"ns1:exampleServiceSwaRef>", b"ns1:exampleService>")
    assert parse_soap(content_type, renamed).attachments == msg.attachments


def test_mtom_is_refused_clearly() -> None:
    """MTOM (application/xop+xml, pr-mess Annex G) is refused with InvalidContentType, not misparsed."""
    content_type, body = http_message("soap_request_mtom_attachment.mime.txt")
    with pytest.raises(InvalidContentType, match="MTOM"):
        parse_soap(content_type, body)


def test_reference_response_header_elements_validate_against_xroad_xsd() -> None:
    """Each X-Road header element of pr-mess Annex E.2, and of our add_request_hash output, is valid per xroad.xsd."""
    schema = etree.XMLSchema(etree.parse(str(SCHEMAS / "xroad.xsd")))
    request = parse_soap("text/xml", REQUEST)
    for data in (RESPONSE, add_request_hash(RESPONSE, request_hash(request.envelope))):
        header = etree.fromstring(data).find(f"{{{SOAP_ENV_NS}}}Header")
        assert header is not None
        checked = 0
        for child in header:
            if isinstance(child.tag, str) and child.tag.startswith(f"{{{XROAD_NS}}}"):
                schema.assertValid(etree.ElementTree(copy.deepcopy(child)))
                checked += 1
        assert checked == 7
    bad = etree.fromstring(
        b'<x:client xmlns:x="http://x-road.eu/xsd/xroad.xsd" xmlns:id="http://x-road.eu/xsd/identifiers"'
        b' id:objectType="MEMBER"><id:xRoadInstance>EE</id:xRoadInstance></x:client>'
    )
    assert schema.validate(etree.ElementTree(bad)) is False  # the schema check can fail (memberClass missing)


def test_reference_response_parses_and_is_consistent() -> None:
    """pr-mess Annex E.2 parses with its requestHash, echoes the request's fields, and is not a fault."""
    request = parse_soap("text/xml", REQUEST)
    response = parse_soap_response("text/xml", RESPONSE)
    assert response.is_fault is False
    assert response.request_hash == (
        "29KTVbZf83XlfdYrsxjaSYMGoxvktnTUBTtA4BmSrh1egtRtvR9VY8QycYaVdsKtGJIh/8CpucYWPbWfaIgJDQ=="
    )
    assert response.header == request.header
    check_response(request, response)


def test_technical_fault_parses_flagged() -> None:
    """pr-mess Annex D.1 is a fault without X-Road headers: flagged, with its code, string and detail."""
    response = parse_soap_response("text/xml", (FIXTURES / "soap_fault_technical.xml").read_bytes())
    assert response.header is None
    assert response.fault is not None
    assert (response.fault.fault_code, response.fault.fault_string, response.fault.detail) == (
        "Server.ClientProxy.ServiceFailed.MissingBody",
        "Malformed SOAP message: body missing",
        "f31e7451-f0ac-48f6-9f05-1f0459e48eea",
    )
    check_response(parse_soap("text/xml", REQUEST), response)  # nothing to echo: passes


def test_optional_extension_headers() -> None:
    """RepresentedParty (representation.xsd) and securityServer (xroad.xsd) are read into the header."""
    extra = (
        '<repr:representedParty xmlns:repr="http://x-road.eu/xsd/representation.xsd">'
        "<repr:partyClass>COM</repr:partyClass><repr:partyCode>123</repr:partyCode></repr:representedParty>"
        '<xrd:securityServer id:objectType="SERVER"><id:xRoadInstance>EE</id:xRoadInstance>'
        "<id:memberClass>GOV</id:memberClass><id:memberCode>MEMBER2</id:memberCode>"
        "<id:serverCode>ss1</id:serverCode></xrd:securityServer>"
    )
    msg = parse_soap("text/xml", swap("<xrd:protocolVersion>", extra + "<xrd:protocolVersion>"))
    assert msg.header.represented_party == RepresentedParty("123", "COM")
    assert msg.header.security_server == SecurityServerId(MemberId("EE", "GOV", "MEMBER2"), "ss1")


# Hostile and malformed input -----------------------------------------------------------------------------------

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/"><SOAP-ENV:Body>&x;</SOAP-ENV:Body>
</SOAP-ENV:Envelope>"""
LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
    + b"".join(b'<!ENTITY %c "&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;">' % ((c,) + (c - 1,) * 8) for c in range(98, 106))
    + b"]><l>&i;</l>"
)
EXTERNAL_DTD = b'<?xml version="1.0"?><!DOCTYPE e SYSTEM "http://127.0.0.1:1/x.dtd"><e/>'


@pytest.mark.parametrize(
    ("content_type", "body", "error"),
    [
        ("text/xml", XXE, InvalidXml),
        ("text/xml", LAUGHS, InvalidXml),
        ("text/xml", EXTERNAL_DTD, InvalidXml),
        ("text/xml", b"<a>" * 100 + b"</a>" * 100, InvalidXml),
        ("text/xml", b"not xml", InvalidXml),
        ("text/xml", b"", InvalidXml),
        ("text/xml", b" " * (8 * 1024 * 1024 + 1), PayloadTooLarge),
        ("application/json", REQUEST, InvalidContentType),
        ("text/xml; charset=UTF-8\r\nX-Evil: 1", REQUEST, InvalidContentType),
        ("garbage", REQUEST, InvalidContentType),
        ("", REQUEST, InvalidContentType),
        ("text/xml; charset", REQUEST, InvalidContentType),
        ("application/soap+xml", REQUEST, InvalidContentType),
        ("multipart/related; boundary=b", b"--b\r\nContent-Type: text/xml\r\n\r\n<a/>", MimeParsingFailed),
        ("multipart/related", REQUEST, MimeParsingFailed),
        ("multipart/related; boundary=b", b"no boundary here", MimeParsingFailed),
        (
            'multipart/related; boundary=b; start="<nope>"',
            b"--b\r\nContent-ID: <x>\r\n\r\n" + REQUEST + b"\r\n--b--\r\n",
            MissingSoap,
        ),
        ("multipart/related; boundary=b", b"--b--\r\n", MimeParsingFailed),
        (
            "multipart/related; boundary=b",
            b"--b\r\nContent-Type: text/xml\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.b64encode(REQUEST)
            + b"\r\n--b--\r\n",
            MimeParsingFailed,
        ),
    ],
)
def test_hostile_transport_and_xml_is_refused(content_type: str, body: bytes, error: type[KorpuError]) -> None:
    """XXE, billion laughs, external DTDs, nesting, oversize, bad content types, broken MIME: each its own code."""
    with pytest.raises(error):
        parse_soap(content_type, body)


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ("<xrd:id>", "<xrd:client>x</xrd:client><xrd:id>", DuplicateHeaderField),
        ("<xrd:issue>12345</xrd:issue>", "<xrd:issue>1</xrd:issue><xrd:issue>2</xrd:issue>", DuplicateHeaderField),
        ("<xrd:id>4894e35d-bf0f-44a6-867a-8e51f1daa7e0</xrd:id>", "", MissingHeaderField),
        ("<xrd:protocolVersion>4.0</xrd:protocolVersion>", "", MissingHeaderField),
        ("<xrd:protocolVersion>4.0<", "<xrd:protocolVersion>4.x<", InvalidProtocolVersion),
        ("<xrd:protocolVersion>4.0<", "<xrd:protocolVersion>3.1<", InvalidProtocolVersion),
        ("<id:memberCode>MEMBER1<", "<id:memberCode>MEM:BER1<", InvalidIdentifier),
        ("<id:memberCode>MEMBER1<", "<id:memberCode>MEM/BER1<", InvalidIdentifier),
        ('<xrd:client id:objectType="SUBSYSTEM">', '<xrd:client id:objectType="SERVICE">', InvalidIdentifier),
        ('<xrd:service id:objectType="SERVICE">', '<xrd:service id:objectType="SUBSYSTEM">', InvalidIdentifier),
        ("<SOAP-ENV:Header>", "<SOAP-ENV:Header><xrd:requestHash>x</xrd:requestHash>", InvalidSoap),
        ("<SOAP-ENV:Header>", "<SOAP-ENV:Header>text", InvalidSoap),
        ("http://schemas.xmlsoap.org/soap/envelope/", "http://www.w3.org/2003/05/soap-envelope", InvalidSoap),
    ],
)
def test_invalid_headers_get_specific_faults(old: str, new: str, error: type[KorpuError]) -> None:
    """Duplicate or missing fields, wrong protocolVersion, bad identifiers and a body ≠ serviceCode are refused."""
    with pytest.raises(error):
        parse_soap("text/xml", swap(old, new))


def test_body_must_match_service_code() -> None:
    """The Body's operation must be the header's serviceCode, so access is checked for what the provider runs."""
    body = REQUEST.replace(b"ns1:exampleService>", b"ns1:deletePerson>")
    with pytest.raises(InvalidBody, match="deletePerson"):
        parse_soap("text/xml", body)


def test_missing_header_and_empty_body() -> None:
    """An envelope without Header lacks every X-Road field; an empty Body has no operation."""
    header_start = REQUEST.index(b"<SOAP-ENV:Header>")
    header_end = REQUEST.index(b"</SOAP-ENV:Header>") + len(b"</SOAP-ENV:Header>")
    with pytest.raises(MissingHeaderField):
        parse_soap("text/xml", REQUEST[:header_start] + REQUEST[header_end:])
    body_start = REQUEST.index(b"<ns1:exampleService>")
    body_end = REQUEST.index(b"</ns1:exampleService>") + len(b"</ns1:exampleService>")
    with pytest.raises(InvalidBody):
        parse_soap("text/xml", REQUEST[:body_start] + REQUEST[body_end:])


def test_attachment_limits() -> None:
    """More attachments than allowed, or more bytes than allowed, is PayloadTooLarge."""
    atts = [SoapAttachment(f"a{i}", "application/octet-stream", (), b"x" * 10) for i in range(3)]
    content_type, body = build_multipart(REQUEST, atts, boundary="bnd")
    assert len(parse_soap(content_type, body).attachments) == 3
    with pytest.raises(PayloadTooLarge, match="attachments"):
        parse_soap(content_type, body, max_attachments=2)
    with pytest.raises(PayloadTooLarge):
        parse_soap(content_type, body, max_attachment_bytes=25)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=400)
    | st.builds(lambda i, b: REQUEST[:i] + b + REQUEST[i:], st.integers(0, len(REQUEST)), st.binary(max_size=8))
)
def test_fuzz_only_korpu_errors(data: bytes) -> None:
    """Random bytes and mutated reference envelopes either parse or raise a KorpuError — nothing else."""
    for content_type in ("text/xml", "multipart/related; boundary=b"):
        for parse in (parse_soap, parse_soap_response):
            with contextlib.suppress(KorpuError):
                parse(content_type, data)


# Request hash, consistency, faults, multipart ------------------------------------------------------------------


def test_request_hash_is_base64_sha512_of_the_bytes() -> None:
    """RequestHash is base64(SHA-512(envelope bytes)) — byte-exact, so a whitespace change changes it."""
    assert request_hash(REQUEST) == base64.b64encode(hashlib.sha512(REQUEST).digest()).decode()
    assert request_hash(REQUEST + b" ") != request_hash(REQUEST)


def test_add_request_hash_replaces_and_appends_last() -> None:
    """The provider's requestHash replaces any present and is the Header's last child with the SHA-512 algorithm."""
    value = request_hash(REQUEST)
    out = add_request_hash(RESPONSE, value)
    response = parse_soap_response("text/xml", out)
    assert response.request_hash == value
    assert response.header_names[-1] == f"{{{XROAD_NS}}}requestHash"
    assert response.header_names.count(f"{{{XROAD_NS}}}requestHash") == 1
    header = etree.fromstring(out).find(f"{{{SOAP_ENV_NS}}}Header")
    assert header is not None
    assert header[-1].get("algorithmId") == SHA512_ALGORITHM
    request = parse_soap("text/xml", REQUEST)
    check_response(request, response, verify_request_hash=True)
    with pytest.raises(ValueError, match="SHA-512"):
        add_request_hash(RESPONSE, "not-base64")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("<id:memberCode>MEMBER1<", "<id:memberCode>OTHER<"),
        ("<id:serviceCode>exampleService<", "<id:serviceCode>otherService<"),
        ("<xrd:id>4894e35d", "<xrd:id>5894e35d"),
        ("<xrd:userId>EE12345678901</xrd:userId>", ""),
        ("<xrd:issue>12345<", "<xrd:issue>54321<"),
    ],
)
def test_inconsistent_response_is_refused(old: str, new: str) -> None:
    """A response that changes client, service, id, userId or issue is InconsistentResponse from the server proxy."""
    request = parse_soap("text/xml", REQUEST)
    response = parse_soap_response("text/xml", swap(old, new, RESPONSE))
    with pytest.raises(InconsistentResponse) as info:
        check_response(request, response)
    assert info.value.fault_code == "Server.ServerProxy.InconsistentResponse"


def test_wrong_request_hash_is_refused() -> None:
    """The consumer's security server refuses a response whose requestHash is not its request's."""
    request = parse_soap("text/xml", REQUEST)
    response = parse_soap_response("text/xml", RESPONSE)  # the spec's hash is not of these bytes
    with pytest.raises(InconsistentResponse, match="requestHash") as info:
        check_response(request, response, origin="Server.ClientProxy", verify_request_hash=True)
    assert info.value.fault_code == "Server.ClientProxy.InconsistentResponse"


def test_malformed_response_carries_server_origin() -> None:
    """A provider's malformed response is a Server.ServerProxy fault, not the consumer's."""
    with pytest.raises(InvalidXml) as info:
        parse_soap_response("text/xml", b"<broken")
    assert info.value.fault_code == "Server.ServerProxy.InvalidXml"


def test_render_soap_fault_shape() -> None:
    """Faults look like pr-mess Annex D.1: faultcode, faultstring, empty faultactor, detail/faultDetail."""
    error = GlobalConfExpired("global configuration is expired\x00", origin="Server.ClientProxy")
    out = render_soap_fault(error, correlation_id="abc-123")
    fault = parse_soap_response("text/xml", out).fault
    assert fault is not None
    assert (fault.fault_code, fault.fault_string, fault.detail) == (
        "Server.ClientProxy.OutdatedGlobalConf",
        "global configuration is expired\ufffd",
        "abc-123",
    )
    root = etree.fromstring(out)
    assert [c.tag for c in root.iter() if isinstance(c.tag, str)] == [
        f"{{{SOAP_ENV_NS}}}Envelope",
        f"{{{SOAP_ENV_NS}}}Body",
        f"{{{SOAP_ENV_NS}}}Fault",
        "faultcode",
        "faultstring",
        "faultactor",
        "detail",
        "faultDetail",
    ]


def test_build_multipart_round_trips_and_refuses_injection() -> None:
    """build_multipart output parses back to the same envelope and attachments; header injection is refused."""
    atts = (SoapAttachment("a.bin", "application/octet-stream", (("Content-Disposition", "attachment"),), b"\x00\xff"),)
    content_type, body = build_multipart(REQUEST, atts)
    msg = parse_soap(content_type, body)
    assert (msg.envelope, msg.attachments) == (REQUEST, atts)
    evil = (SoapAttachment("a", "text/plain\r\nX-Evil: 1", (), b""),)
    with pytest.raises(ValueError, match="invalid MIME header"):
        build_multipart(REQUEST, evil)
    with pytest.raises(ValueError, match="boundary"):
        build_multipart(REQUEST, (SoapAttachment(None, "text/plain", (), b"x\r\n--bnd--\r\n"),), boundary="bnd")
