"""Metaservice formats (pr-meta, pr-mrest): schema-valid XML, example-shaped JSON, echoed SOAP headers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lxml import etree

from bridge.errors import InvalidBody
from bridge.identifiers import ID_NS, MemberId, ServiceId, SubsystemId
from bridge.metaservices import (
    ClientEntry,
    RestServiceInfo,
    parse_get_wsdl_request,
    render_allowed_methods,
    render_get_wsdl_response,
    render_list_clients_json,
    render_list_clients_xml,
    render_list_methods,
    render_rest_methods_json,
)
from bridge.soap import SOAP_ENV_NS, XROAD_NS, parse_soap, parse_soap_response

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "xroad"
IDENTIFIERS_XSD = (Path(__file__).resolve().parents[2] / "schemas" / "xroad" / "identifiers.xsd").as_uri()
CLIENTS = [
    ClientEntry(MemberId("AA", "GOV", "TS1OWNER"), "TS1 Owner"),
    ClientEntry(SubsystemId("AA", "ENT", "CLIENT1", "sub"), "Client One", "Client One Sub"),
]
PROVIDER = SubsystemId("Inst1", "MemberClass1", "ProviderId", "Subsystem1")


def schema(name: str, tmp_path: Path) -> etree.XMLSchema:
    """Compile a fixture XSD with its identifiers.xsd import pointed at our local copy."""
    text = (FIXTURES / name).read_text()
    text = text.replace('schemaLocation="http://x-road.eu/xsd/identifiers.xsd"', f'schemaLocation="{IDENTIFIERS_XSD}"')
    text = text.replace('schemaLocation="identifiers.xsd"', f'schemaLocation="{IDENTIFIERS_XSD}"')
    path = tmp_path / name
    path.write_text(text)
    return etree.XMLSchema(etree.parse(str(path)))


def test_list_clients_xml_validates_and_matches_example(tmp_path: Path) -> None:
    """ClientList validates against pr-meta Annex A and has the member/id/name/subsystemName shape of C.1."""
    out = render_list_clients_xml([*CLIENTS, (MemberId("AA", "ENT", "CLIENT1"), "Client One")])
    root = etree.fromstring(out)
    schema("metaservice-clientList.xsd", tmp_path).assertValid(root)
    assert out.startswith(b"<?xml version='1.0' encoding='UTF-8' standalone='yes'?>")
    x = f"{{{XROAD_NS}}}"
    assert [[c.tag.replace(x, "") for c in m] for m in root] == [
        ["id", "name"],
        ["id", "name", "subsystemName"],
        ["id", "name"],
    ]
    assert [m[0].get(f"{{{ID_NS}}}objectType") for m in root] == ["MEMBER", "SUBSYSTEM", "MEMBER"]


def test_list_clients_json_matches_example() -> None:
    """The JSON form has pr-meta C.1's keys and values."""
    assert json.loads(render_list_clients_json(CLIENTS)) == {
        "member": [
            {
                "id": {
                    "member_class": "GOV",
                    "member_code": "TS1OWNER",
                    "object_type": "MEMBER",
                    "xroad_instance": "AA",
                },
                "name": "TS1 Owner",
            },
            {
                "id": {
                    "member_class": "ENT",
                    "member_code": "CLIENT1",
                    "subsystem_code": "sub",
                    "object_type": "SUBSYSTEM",
                    "xroad_instance": "AA",
                },
                "name": "Client One",
                "subsystem_name": "Client One Sub",
            },
        ]
    }


@pytest.mark.parametrize(
    ("render", "element"),
    [(render_list_methods, "listMethodsResponse"), (render_allowed_methods, "allowedMethodsResponse")],
)
def test_method_lists_echo_headers_and_validate(render: object, element: str, tmp_path: Path) -> None:
    """Method lists echo the request headers, are valid per service-metainfo.xsd and omit the metaservices."""
    request = parse_soap("text/xml", (FIXTURES / "meta_listMethods_request.xml").read_bytes())
    services = [
        ServiceId(PROVIDER, "allowedService", "v1"),
        ServiceId(PROVIDER, "disallowedService", "v1"),
        ServiceId(PROVIDER, "getWsdl"),
    ]
    out = render(request, services)  # type: ignore[operator]
    response = parse_soap_response("text/xml", out)
    assert response.header == request.header
    assert response.body_element == f"{{{XROAD_NS}}}{element}"
    listing = etree.fromstring(out).find(f"{{{SOAP_ENV_NS}}}Body/{{{XROAD_NS}}}{element}")
    assert listing is not None
    schema("service-metainfo.xsd", tmp_path).assertValid(etree.ElementTree(listing))
    codes = [s.findtext(f"{{{ID_NS}}}serviceCode") for s in listing]
    assert codes == ["allowedService", "disallowedService"]


def test_method_list_matches_reference_response_body() -> None:
    """Our listMethods body for pr-meta C.3's services equals the example's body element for element."""
    request = parse_soap("text/xml", (FIXTURES / "meta_listMethods_request.xml").read_bytes())
    ours = etree.fromstring(
        render_list_methods(
            request, [ServiceId(PROVIDER, "allowedService", "v1"), ServiceId(PROVIDER, "disallowedService", "v1")]
        )
    )
    ref = etree.fromstring((FIXTURES / "meta_listMethods_response.xml").read_bytes())
    body = f"{{{SOAP_ENV_NS}}}Body"

    def shape(root: etree._Element) -> list[tuple[str, str]]:
        node = root.find(body)
        assert node is not None
        return [(str(e.tag), (e.text or "").strip()) for e in node.iter() if isinstance(e.tag, str)]

    assert shape(ours) == shape(ref)


def get_wsdl_request() -> bytes:
    # pr-meta C.6 says protocolVersion 4.x, which no 4.0 parser accepts; everything else is verbatim.
    return (FIXTURES / "meta_getWsdl_request.xml").read_bytes().replace(b">4.x<", b">4.0<")


def test_get_wsdl_request_and_response() -> None:
    """getWsdl: the requested service is read from the body; the response echoes it and attaches the WSDL."""
    request = parse_soap("text/xml", get_wsdl_request())
    wanted = parse_get_wsdl_request(request)
    assert wanted == ServiceId(SubsystemId("FI", "COM", "111", "SUB"), "getRandom", "v1")
    wsdl = b"<wsdl:definitions xmlns:wsdl='http://schemas.xmlsoap.org/wsdl/'/>"
    content_type, body = render_get_wsdl_response(request, wsdl)
    assert content_type.startswith("multipart/related;")
    response = parse_soap_response(content_type, body)
    assert response.header == request.header
    assert [a.data for a in response.attachments] == [wsdl]
    assert response.attachments[0].content_type == "text/xml; charset=UTF-8"
    resp_body = etree.fromstring(response.envelope).find(f"{{{SOAP_ENV_NS}}}Body/{{{XROAD_NS}}}getWsdlResponse")
    assert resp_body is not None
    assert [(c.tag, c.text) for c in resp_body] == [
        (f"{{{XROAD_NS}}}serviceCode", "getRandom"),
        (f"{{{XROAD_NS}}}serviceVersion", "v1"),
    ]


def test_get_wsdl_request_body_is_checked() -> None:
    """A getWsdl body without serviceCode, or a non-getWsdl request, is InvalidBody."""
    data = get_wsdl_request().replace(b"<xro:serviceCode>getRandom</xro:serviceCode>", b"")
    with pytest.raises(InvalidBody):
        parse_get_wsdl_request(parse_soap("text/xml", data))
    with pytest.raises(InvalidBody):
        parse_get_wsdl_request(parse_soap("text/xml", (FIXTURES / "soap_request.xml").read_bytes()))


def test_rest_methods_json_matches_example() -> None:
    """REST listMethods JSON has pr-mrest B.1's keys, order and values; metaservices are left out."""
    provider = SubsystemId("INSTANCE", "CLASS2", "MEMBER2", "SUBSYSTEM2")
    out = render_rest_methods_json(
        [
            RestServiceInfo(ServiceId(provider, "kore"), "REST", (("GET", "/pet/*"),)),
            RestServiceInfo(ServiceId(provider, "getOpenAPI"), "REST"),
        ]
    )
    doc = json.loads(out)
    assert doc == {
        "service": [
            {
                "member_class": "CLASS2",
                "member_code": "MEMBER2",
                "object_type": "SERVICE",
                "service_code": "kore",
                "service_type": "REST",
                "subsystem_code": "SUBSYSTEM2",
                "xroad_instance": "INSTANCE",
                "endpoint_list": [{"method": "GET", "path": "/pet/*"}],
            }
        ]
    }
    assert list(doc["service"][0]) == [
        "member_class",
        "member_code",
        "object_type",
        "service_code",
        "service_type",
        "subsystem_code",
        "xroad_instance",
        "endpoint_list",
    ]
    with pytest.raises(ValueError, match="service_type"):
        RestServiceInfo(ServiceId(provider, "x"), "GRAPHQL")
