"""X-Road metaservices end to end (pr-meta for SOAP, pr-mrest for REST) through two real security servers.

The federation (tests/functional/conftest.py): the bank's ss-a hosts client subsystems ``loans`` (granted every
ministry service) and ``marketing`` (no grants); the ministry's ss-b provides REST ``hello`` (with an OpenAPI
description), ``echo`` and ``stream``, and SOAP ``helloService`` (with the test service's WSDL).  ``listClients`` is
answered by ss-a's client proxy from global configuration; every other metaservice is a signed exchange answered by
ss-b's server proxy.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from lxml import etree

from adapters.testservice import wsdl
from security_server.sandbox import Federation
from tests.functional.conftest import HELLO_OPENAPI, agencies

pytestmark = [pytest.mark.functional, pytest.mark.asyncio(loop_scope="module")]

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
XRD = "http://x-road.eu/xsd/xroad.xsd"
ID = "http://x-road.eu/xsd/identifiers"
LOANS = "AZ/COM/9900001111/loans"
MARKETING = "AZ/COM/9900001111/marketing"
PROVIDER = "/r1/AZ/GOV/1400057421/population"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "xroad"
IDENTIFIERS_XSD = (Path(__file__).resolve().parents[2] / "schemas" / "xroad" / "identifiers.xsd").as_uri()
#: The ministry's REST services as conftest configures them (the stream URL does not matter here).
REST_CODES = [s.code for a in agencies("http://127.0.0.1:1") for s in a.services if s.type == "REST"]


def client_url(fed: Federation, path: str = "") -> str:
    return fed.server("ss-a").urls["client_http"] + path


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# listClients ---------------------------------------------------------------------------------------------------

EXPECTED_CLIENTS = [
    ("MEMBER", "AZ", "COM", "9900001111", None, "Kapital Bank"),
    ("SUBSYSTEM", "AZ", "COM", "9900001111", "loans", "Kapital Bank"),
    ("SUBSYSTEM", "AZ", "COM", "9900001111", "marketing", "Kapital Bank"),
    ("MEMBER", "AZ", "GOV", "1400057421", None, "Ministry of Digital Development"),
    ("SUBSYSTEM", "AZ", "GOV", "1400057421", "population", "Ministry of Digital Development"),
]


async def test_list_clients_xml(federation: Federation, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """``GET /listClients`` answers pr-meta C.1's clientList, valid per Annex A, naming both members and subsystems."""
    async with http.get(client_url(federation, "/listClients")) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/xml"
        body = await resp.read()
    root = etree.fromstring(body)
    schema("metaservice-clientList.xsd", tmp_path).assertValid(root)
    listed = []
    for member in root.iterfind(f"{{{XRD}}}member"):
        ident = member.find(f"{{{XRD}}}id")
        assert ident is not None
        listed.append(
            (
                ident.get(f"{{{ID}}}objectType"),
                ident.findtext(f"{{{ID}}}xRoadInstance"),
                ident.findtext(f"{{{ID}}}memberClass"),
                ident.findtext(f"{{{ID}}}memberCode"),
                ident.findtext(f"{{{ID}}}subsystemCode"),
                member.findtext(f"{{{XRD}}}name"),
            )
        )
    assert sorted(listed, key=_sort_key) == EXPECTED_CLIENTS


async def test_list_clients_json(federation: Federation, http: aiohttp.ClientSession) -> None:
    """With ``Accept: application/json``, ``listClients`` answers C.1's JSON form with the same entries."""
    headers = {"Accept": "application/json"}
    async with http.get(client_url(federation, "/listClients"), headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "application/json"
        data = await resp.json()
    assert list(data) == ["member"]
    listed = [
        (
            m["id"]["object_type"],
            m["id"]["xroad_instance"],
            m["id"]["member_class"],
            m["id"]["member_code"],
            m["id"].get("subsystem_code"),
            m["name"],
        )
        for m in data["member"]
    ]
    assert sorted(listed, key=_sort_key) == EXPECTED_CLIENTS
    loans = next(m for m in data["member"] if m["id"].get("subsystem_code") == "loans")
    assert loans == {
        "id": {
            "member_class": "COM",
            "member_code": "9900001111",
            "subsystem_code": "loans",
            "object_type": "SUBSYSTEM",
            "xroad_instance": "AZ",
        },
        "name": "Kapital Bank",
    }


# SOAP listMethods / allowedMethods / getWsdl -------------------------------------------------------------------


@pytest.mark.parametrize("client", ["loans", "marketing"])
async def test_soap_list_methods(
    federation: Federation, http: aiohttp.ClientSession, tmp_path: Path, client: str
) -> None:
    """``listMethods`` (pr-meta C.2/C.3) lists the provider's SOAP service to any registered client.

    The answer echoes the request's header fields in order, adds ``requestHash`` of the request envelope, validates
    against service-metainfo.xsd and never names the metaservices themselves.
    """
    envelope = meta_request(client, "listMethods", f"<xrd:listMethods xmlns:xrd='{XRD}'/>")
    doc = await post_soap(federation, http, envelope)
    check_echo(envelope, doc)
    listing = body_element(doc, "listMethodsResponse")
    schema("service-metainfo.xsd", tmp_path).assertValid(listing)
    assert services_in(listing) == ["AZ/GOV/1400057421/population/helloService"]


@pytest.mark.parametrize(
    ("client", "expected"),
    [("loans", ["AZ/GOV/1400057421/population/helloService"]), ("marketing", [])],
)
async def test_soap_allowed_methods(
    federation: Federation, http: aiohttp.ClientSession, tmp_path: Path, client: str, expected: list[str]
) -> None:
    """``allowedMethods`` (pr-meta C.4/C.5) lists only what the caller may call: ``marketing`` has no grants."""
    envelope = meta_request(client, "allowedMethods", f"<xrd:allowedMethods xmlns:xrd='{XRD}'/>")
    doc = await post_soap(federation, http, envelope)
    check_echo(envelope, doc)
    listing = body_element(doc, "allowedMethodsResponse")
    schema("service-metainfo.xsd", tmp_path).assertValid(listing)
    assert services_in(listing) == expected


async def test_soap_get_wsdl(federation: Federation, http: aiohttp.ClientSession) -> None:
    """``getWsdl`` (pr-meta C.6–C.8) answers multipart/related: the echoing envelope, then the WSDL byte for byte."""
    envelope = meta_request(
        "loans",
        "getWsdl",
        f"<xrd:getWsdl xmlns:xrd='{XRD}'><xrd:serviceCode>helloService</xrd:serviceCode></xrd:getWsdl>",
    )
    async with http.post(client_url(federation, "/"), data=envelope, headers={"Content-Type": "text/xml"}) as resp:
        answer = await resp.read()
        assert resp.status == 200, answer.decode(errors="replace")
        content_type = resp.headers["Content-Type"]
    message = mime(content_type, answer)
    assert message.get_content_type() == "multipart/related"
    parts = message.get_payload()
    assert isinstance(parts, list)
    assert len(parts) == 2
    root, attachment = parts
    assert root.get_content_type() == "text/xml"
    doc = etree.fromstring(root.get_payload(decode=True))
    check_echo(envelope, doc)
    response = body_element(doc, "getWsdlResponse")
    assert [(etree.QName(c).localname, c.text) for c in response] == [("serviceCode", "helloService")]
    assert attachment.get_content_type() == "text/xml"
    assert attachment.get_payload(decode=True) == wsdl()


async def test_soap_get_wsdl_without_description(federation: Federation, http: aiohttp.ClientSession) -> None:
    """``getWsdl`` for a service that publishes no WSDL is the provider's ``Client.NotFound`` SOAP Fault."""
    envelope = meta_request("loans", "getWsdl", get_wsdl_body("nothing"))
    async with http.post(client_url(federation, "/"), data=envelope, headers={"Content-Type": "text/xml"}) as resp:
        assert resp.status == 500
        fault = etree.fromstring(await resp.read())
    assert fault.findtext(".//faultcode") == "Client.NotFound"


async def test_soap_get_wsdl_of_a_rest_service(federation: Federation, http: aiohttp.ClientSession) -> None:
    """``getWsdl`` names a REST service with an OpenAPI description: no WSDL exists, so ``Client.NotFound``.

    (It used to return the OpenAPI document as if it were the WSDL.)
    """
    envelope = meta_request("loans", "getWsdl", get_wsdl_body("hello"))
    async with http.post(client_url(federation, "/"), data=envelope, headers={"Content-Type": "text/xml"}) as resp:
        answer = await resp.read()
        assert resp.status == 500, answer.decode(errors="replace")
    assert etree.fromstring(answer).findtext(".//faultcode") == "Client.NotFound"


# REST listMethods / allowedMethods / getOpenAPI ----------------------------------------------------------------


def rest_entry(code: str, service_type: str) -> dict[str, object]:
    """One pr-mrest B.1 entry for a ministry service (endpoints are not listed yet: see the report)."""
    return {
        "member_class": "GOV",
        "member_code": "1400057421",
        "object_type": "SERVICE",
        "service_code": code,
        "service_type": service_type,
        "subsystem_code": "population",
        "xroad_instance": "AZ",
        "endpoint_list": [],
    }


EXPECTED_REST = [rest_entry(code, "OPENAPI" if code == "hello" else "REST") for code in REST_CODES]


@pytest.mark.parametrize(
    ("client", "metaservice", "expected"),
    [
        ("loans", "listMethods", EXPECTED_REST),
        ("marketing", "listMethods", EXPECTED_REST),
        ("loans", "allowedMethods", EXPECTED_REST),
        ("marketing", "allowedMethods", []),
    ],
)
async def test_rest_methods(
    federation: Federation,
    http: aiohttp.ClientSession,
    client: str,
    metaservice: str,
    expected: list[dict[str, object]],
) -> None:
    """REST ``listMethods`` / ``allowedMethods`` (pr-mrest §4, B.1/B.2) list the provider's REST services.

    ``hello`` has an OpenAPI description (``OPENAPI``), the others none (``REST``); the SOAP service and the
    metaservices are not listed; ``marketing`` may call nothing.  The answer carries pr-rest's X-Road headers.
    """
    headers = {"X-Road-Client": f"AZ/COM/9900001111/{client}", "X-Road-Id": f"meta-{client}-{metaservice}"}
    async with http.get(client_url(federation, f"{PROVIDER}/{metaservice}"), headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "application/json"
        assert resp.headers["X-Road-Service"] == f"AZ/GOV/1400057421/population/{metaservice}"
        assert resp.headers["X-Road-Id"] == f"meta-{client}-{metaservice}"
        assert len(base64.b64decode(resp.headers["X-Road-Request-Hash"])) == 64
        data = await resp.json()
    assert list(data) == ["service"]
    assert sorted(data["service"], key=lambda s: str(s["service_code"])) == sorted(
        expected, key=lambda s: str(s["service_code"])
    )


async def test_rest_get_openapi(federation: Federation, http: aiohttp.ClientSession) -> None:
    """``getOpenAPI?serviceCode=hello`` (pr-mrest §5) answers the configured OpenAPI 3 document unchanged, as JSON."""
    url = client_url(federation, f"{PROVIDER}/getOpenAPI?serviceCode=hello")
    async with http.get(url, headers={"X-Road-Client": LOANS}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "application/json"
        body = await resp.read()
    assert body == HELLO_OPENAPI
    document = json.loads(body)
    assert document["openapi"].split(".")[0] == "3"
    assert list(document["paths"]) == ["/hello"]


async def test_rest_get_openapi_of_a_soap_service(federation: Federation, http: aiohttp.ClientSession) -> None:
    """``getOpenAPI`` names the SOAP service: its WSDL is not an OpenAPI description, so ``Client.NotFound``.

    (It used to return the WSDL labelled ``text/yaml``.)
    """
    url = client_url(federation, f"{PROVIDER}/getOpenAPI?serviceCode=helloService")
    async with http.get(url, headers={"X-Road-Client": LOANS}) as resp:
        assert resp.headers.get("X-Road-Error") == "Client.NotFound", await resp.text()


async def test_rest_get_openapi_without_description(federation: Federation, http: aiohttp.ClientSession) -> None:
    """``getOpenAPI`` for a service with no description is the provider's ``Client.NotFound`` as pr-rest's error."""
    url = client_url(federation, f"{PROVIDER}/getOpenAPI?serviceCode=echo")
    async with http.get(url, headers={"X-Road-Client": LOANS}) as resp:
        assert resp.headers["X-Road-Error"] == "Client.NotFound"
        # A client fault relayed from the provider's security server keeps its 4xx (pr-rest §4.6).
        assert resp.status == 404
        assert (await resp.json())["type"] == "Client.NotFound"


# Helpers -------------------------------------------------------------------------------------------------------


def _sort_key(entry: tuple[str | None, ...]) -> tuple[str, ...]:
    """Order ``listClients`` entries by instance, member class, member code, then subsystem (members first)."""
    return tuple(part or "" for part in entry[1:5])


def schema(name: str, tmp_path: Path) -> etree.XMLSchema:
    """Compile a fixture XSD with its identifiers.xsd import pointed at our local copy (no network)."""
    text = (FIXTURES / name).read_text()
    text = text.replace('schemaLocation="http://x-road.eu/xsd/identifiers.xsd"', f'schemaLocation="{IDENTIFIERS_XSD}"')
    text = text.replace('schemaLocation="identifiers.xsd"', f'schemaLocation="{IDENTIFIERS_XSD}"')
    path = tmp_path / name
    path.write_text(text)
    return etree.XMLSchema(etree.parse(str(path)))


def meta_request(client: str, service_code: str, body: str) -> bytes:
    """A SOAP metaservice request from the bank's ``client`` subsystem to the ministry's subsystem."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="{SOAP_ENV}" xmlns:xrd="{XRD}" xmlns:id="{ID}">
    <SOAP-ENV:Header>
        <xrd:client id:objectType="SUBSYSTEM">
            <id:xRoadInstance>AZ</id:xRoadInstance>
            <id:memberClass>COM</id:memberClass>
            <id:memberCode>9900001111</id:memberCode>
            <id:subsystemCode>{client}</id:subsystemCode>
        </xrd:client>
        <xrd:service id:objectType="SERVICE">
            <id:xRoadInstance>AZ</id:xRoadInstance>
            <id:memberClass>GOV</id:memberClass>
            <id:memberCode>1400057421</id:memberCode>
            <id:subsystemCode>population</id:subsystemCode>
            <id:serviceCode>{service_code}</id:serviceCode>
        </xrd:service>
        <xrd:id>meta-{client}-{service_code}</xrd:id>
        <xrd:userId>AZ1234567</xrd:userId>
        <xrd:protocolVersion>4.0</xrd:protocolVersion>
    </SOAP-ENV:Header>
    <SOAP-ENV:Body>{body}</SOAP-ENV:Body>
</SOAP-ENV:Envelope>
""".encode()


def get_wsdl_body(service_code: str) -> str:
    """The Body of a ``getWsdl`` request (pr-meta C.6) for one of the provider's services, without a version."""
    return f"<xrd:getWsdl xmlns:xrd='{XRD}'><xrd:serviceCode>{service_code}</xrd:serviceCode></xrd:getWsdl>"


async def post_soap(fed: Federation, http: aiohttp.ClientSession, envelope: bytes) -> etree._Element:
    """POST a bare SOAP envelope to ss-a's client proxy; the parsed text/xml answer."""
    async with http.post(client_url(fed, "/"), data=envelope, headers={"Content-Type": "text/xml"}) as resp:
        answer = await resp.read()
        assert resp.status == 200, answer.decode(errors="replace")
        assert resp.content_type == "text/xml"
    return etree.fromstring(answer)


def check_echo(request: bytes, response: etree._Element) -> None:
    """The response Header repeats the request's fields in order, then ``requestHash`` of the request envelope."""
    sent = etree.fromstring(request).find(f"{{{SOAP_ENV}}}Header")
    got = response.find(f"{{{SOAP_ENV}}}Header")
    assert sent is not None and got is not None
    assert [etree.QName(c).localname for c in got] == [*(etree.QName(c).localname for c in sent), "requestHash"]
    for mine, theirs in zip(sent, got, strict=False):
        assert etree.tostring(theirs, method="c14n", exclusive=True) == etree.tostring(
            mine, method="c14n", exclusive=True
        )
    request_hash = got[-1]
    assert request_hash.get("algorithmId") == "http://www.w3.org/2001/04/xmlenc#sha512"
    assert "".join((request_hash.text or "").split()) == base64.b64encode(hashlib.sha512(request).digest()).decode()


def body_element(doc: etree._Element, name: str) -> etree._Element:
    """The Body's only element, checked to be ``xrd:{name}``."""
    body = doc.find(f"{{{SOAP_ENV}}}Body")
    assert body is not None
    children = [c for c in body if isinstance(c.tag, str)]
    assert [c.tag for c in children] == [f"{{{XRD}}}{name}"]
    return children[0]


def services_in(listing: etree._Element) -> list[str]:
    """The ``xrd:service`` identifiers of a method list, as ``INSTANCE/CLASS/CODE/SUBSYSTEM/SERVICE`` paths."""
    paths = []
    for service in listing.iterfind(f"{{{XRD}}}service"):
        assert service.get(f"{{{ID}}}objectType") == "SERVICE"
        paths.append("/".join((c.text or "") for c in service))
    return paths


def mime(content_type: str, body: bytes) -> Message:
    """Parse an HTTP body as a MIME message with the standard library (independent of Körpü's own parser)."""
    return BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
