"""A small test service for sandboxes and tests: REST ``hello`` / ``echo`` and a SOAP echo.

REST (any service code mapped to this adapter):

* ``GET /hello?name=X`` → ``{"message": "Hello, X!", "client": "...", "userId": ...}``
* ``POST|PUT /echo`` → the request body and content type, unchanged
* anything else → 404 with a JSON business error

SOAP, echoing the request's X-Road headers in order as pr-mess requires of providers:

* ``helloService`` (described by :func:`wsdl`, ``testservice.wsdl`` beside this module) →
  ``<helloServiceResponse><message>Hello, NAME!</message><attachments>N</attachments></helloServiceResponse>``
  in the request's namespace, ``NAME`` being the request's ``name`` element (``world`` without one) and ``N`` the
  number of SwA attachments it carried;
* any other operation ``op`` → ``<opResponse>`` holding a copy of the request body's first element in
  ``<request>`` and the number of attachments in ``<attachments>``.
"""

from __future__ import annotations

import json
from importlib.resources import files
from urllib.parse import parse_qs

from lxml import etree

from adapters.base import AdapterRequest, AdapterResponse, register
from bridge.errors import InvalidRequest
from bridge.message import Protocol
from bridge.xmlsafe import parse_xml

__all__ = ["HELLO_OPERATION", "TestService", "wsdl"]

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
#: The SOAP operation (and service code) that :func:`wsdl` describes.
HELLO_OPERATION = "helloService"


def wsdl() -> bytes:
    """The test service's WSDL (document/literal ``helloService`` with X-Road headers), self-contained."""
    return files("adapters").joinpath("testservice.wsdl").read_bytes()


class TestService:
    """The sandbox's test service."""

    async def handle(self, request: AdapterRequest) -> AdapterResponse:
        """Answer REST or SOAP."""
        if request.protocol is Protocol.SOAP:
            return self._soap(request)
        return self._rest(request)

    def _rest(self, request: AdapterRequest) -> AdapterResponse:
        if request.method == "GET" and request.path == "/hello":
            name = parse_qs(request.query).get("name", ["world"])[0]
            body = {
                "message": f"Hello, {name}!",
                "client": request.header.client.path(),
                "userId": request.header.user_id,
            }
            return AdapterResponse(200, json.dumps(body).encode(), "application/json")
        if request.method in ("POST", "PUT") and request.path == "/echo":
            return AdapterResponse(200, request.body, request.content_type or "application/octet-stream")
        error = {"error": "not found", "path": request.path}
        return AdapterResponse(404, json.dumps(error).encode(), "application/json")

    def _soap(self, request: AdapterRequest) -> AdapterResponse:
        envelope = parse_xml(request.body, max_bytes=len(request.body) + 1, error=InvalidRequest)
        header = envelope.find(f"{{{SOAP_NS}}}Header")
        body = envelope.find(f"{{{SOAP_NS}}}Body")
        operation = next((child for child in body if isinstance(child.tag, str)), None) if body is not None else None
        if header is None or operation is None:
            raise InvalidRequest("SOAP request without Header or operation")
        nsmap = {k: v for k, v in envelope.nsmap.items() if k is not None}
        response = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap=nsmap)
        response.append(header)  # echo the X-Road headers unchanged and in order
        out_body = etree.SubElement(response, f"{{{SOAP_NS}}}Body")
        qname = etree.QName(operation.tag)
        result = etree.SubElement(
            out_body,
            f"{{{qname.namespace}}}{qname.localname}Response" if qname.namespace else f"{qname.localname}Response",
        )
        if qname.localname == HELLO_OPERATION:
            # The WSDL's helloServiceResponse: children are unqualified (elementFormDefault is unqualified there).
            name = operation.findtext("name") or "world"
            etree.SubElement(result, "message").text = f"Hello, {name}!"
        else:
            echoed = etree.SubElement(result, "request")
            echoed.append(operation)
        etree.SubElement(result, "attachments").text = str(len(request.attachments))
        data = etree.tostring(response, xml_declaration=True, encoding="UTF-8")
        return AdapterResponse(200, data, "text/xml; charset=UTF-8")


register("test-service", lambda _context: TestService())
