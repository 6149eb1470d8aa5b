"""A stock SOAP toolkit (zeep) against Körpü: the WSDL from ``getWsdl`` is enough to call ``helloService``.

The bank's information system fetches the ministry's WSDL through its own security server (ss-a) with a raw
``getWsdl`` request, builds a zeep client from it, points the binding at ss-a's client proxy and calls the service
with the X-Road headers the WSDL declares.  zeep is synchronous, so its calls run in a worker thread while the
in-process federation keeps serving; its HTTP session refuses anything but 127.0.0.1, and the WSDL is
self-contained, so nothing is fetched from the network.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator, Mapping
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import pytest_asyncio
import requests
import zeep
from requests.adapters import HTTPAdapter
from zeep.transports import Transport

from adapters.testservice import wsdl
from security_server.sandbox import Federation

pytestmark = [pytest.mark.functional, pytest.mark.asyncio(loop_scope="module")]

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
XRD = "http://x-road.eu/xsd/xroad.xsd"
ID = "http://x-road.eu/xsd/identifiers"
BINDING = "{urn:korpu:testservice:1}testServicePortSoap11"
CLIENT = {
    "objectType": "SUBSYSTEM",
    "xRoadInstance": "AZ",
    "memberClass": "COM",
    "memberCode": "9900001111",
    "subsystemCode": "loans",
}
SERVICE = {
    "objectType": "SERVICE",
    "xRoadInstance": "AZ",
    "memberClass": "GOV",
    "memberCode": "1400057421",
    "subsystemCode": "population",
    "serviceCode": "helloService",
}


class LoopbackOnly(HTTPAdapter):
    """A requests adapter that sends only to 127.0.0.1 and keeps the bodies it sent (zeep must not go online)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        host = urlsplit(request.url or "").hostname
        if host != "127.0.0.1":
            raise AssertionError(f"zeep tried to reach {request.url}")
        body = request.body
        self.sent.append(body.encode() if isinstance(body, str) else bytes(body or b""))
        return super().send(request, *args, **kwargs)


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_zeep_calls_hello_service_from_get_wsdl(
    federation: Federation, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """zeep, given only the WSDL that ``getWsdl`` returned, calls ``helloService`` through ss-a and gets typed values.

    Pins: the WSDL served is the one configured; zeep compiles it offline; the request zeep builds from it passes
    the client proxy's X-Road checks; the answer deserialises to the WSDL's types, with the X-Road headers echoed
    and ``requestHash`` equal to the SHA-512 of exactly the envelope zeep sent.
    """
    proxy = federation.server("ss-a").urls["client_http"] + "/"
    # (1) The WSDL, fetched as any X-Road consumer would: getWsdl through our own security server.
    fetched = await get_wsdl(http, proxy, "helloService")
    assert fetched == wsdl()
    wsdl_path = tmp_path / "helloService.wsdl"
    wsdl_path.write_bytes(fetched)

    # (2) zeep builds its client from that file alone and calls the service through the client proxy.
    adapter = LoopbackOnly()
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    headers = {"client": CLIENT, "service": SERVICE, "id": "zeep-1", "userId": "AZ1234567", "protocolVersion": "4.0"}

    def call() -> Any:
        client = zeep.Client(str(wsdl_path), transport=Transport(session=session, timeout=10, operation_timeout=30))
        service = client.create_service(BINDING, proxy)
        return service.helloService(name="Aysel", _soapheaders=headers)

    try:
        result = await asyncio.wait_for(asyncio.to_thread(call), timeout=60)
    finally:
        session.close()

    # (3) Typed answer and echoed headers.
    assert result.body.message == "Hello, Aysel!"
    assert result.body.attachments == 0
    header = result.header
    assert identifier(header.client) == CLIENT
    assert identifier(header.service) == SERVICE
    assert (header.id, header.userId, header.protocolVersion) == ("zeep-1", "AZ1234567", "4.0")
    assert len(adapter.sent) == 1
    assert header.requestHash.algorithmId == "http://www.w3.org/2001/04/xmlenc#sha512"
    assert (
        "".join(header.requestHash._value_1.split())
        == base64.b64encode(hashlib.sha512(adapter.sent[0]).digest()).decode()
    )


async def get_wsdl(http: aiohttp.ClientSession, proxy: str, service_code: str) -> bytes:
    """A raw pr-meta C.6 ``getWsdl`` request from ``loans``; the WSDL attachment of the multipart answer."""
    envelope = f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}" xmlns:xro="{XRD}" xmlns:iden="{ID}">
    <soapenv:Header>
        <xro:client iden:objectType="SUBSYSTEM">
            <iden:xRoadInstance>AZ</iden:xRoadInstance>
            <iden:memberClass>COM</iden:memberClass>
            <iden:memberCode>9900001111</iden:memberCode>
            <iden:subsystemCode>loans</iden:subsystemCode>
        </xro:client>
        <xro:service iden:objectType="SERVICE">
            <iden:xRoadInstance>AZ</iden:xRoadInstance>
            <iden:memberClass>GOV</iden:memberClass>
            <iden:memberCode>1400057421</iden:memberCode>
            <iden:subsystemCode>population</iden:subsystemCode>
            <iden:serviceCode>getWsdl</iden:serviceCode>
        </xro:service>
        <xro:id>zeep-getWsdl</xro:id>
        <xro:protocolVersion>4.0</xro:protocolVersion>
    </soapenv:Header>
    <soapenv:Body>
        <xro:getWsdl><xro:serviceCode>{service_code}</xro:serviceCode></xro:getWsdl>
    </soapenv:Body>
</soapenv:Envelope>
""".encode()
    async with http.post(proxy, data=envelope, headers={"Content-Type": "text/xml; charset=UTF-8"}) as resp:
        answer = await resp.read()
        assert resp.status == 200, answer.decode(errors="replace")
        content_type = resp.headers["Content-Type"]
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + answer)
    assert message.get_content_type() == "multipart/related"
    parts = message.get_payload()
    assert isinstance(parts, list)
    assert [p.get_content_type() for p in parts] == ["text/xml", "text/xml"]
    data = parts[1].get_payload(decode=True)
    assert isinstance(data, bytes)
    return data


def identifier(value: Mapping[str, Any] | Any) -> dict[str, Any]:
    """A zeep identifier value as a dict of the fields it has (absent optional codes left out)."""
    fields = ("objectType", "xRoadInstance", "memberClass", "memberCode", "subsystemCode", "serviceCode")
    return {name: value[name] for name in fields if name in value and value[name] is not None}
