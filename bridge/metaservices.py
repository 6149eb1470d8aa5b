"""Formats of X-Road's metaservices (pr-meta for SOAP, pr-mrest for REST); what to list is decided elsewhere.

* ``listClients`` — :func:`render_list_clients_xml` (``xrd:clientList``, metaservice-clientList.xsd) and
  :func:`render_list_clients_json` (the JSON form of pr-meta Annex C.1).
* SOAP ``listMethods`` / ``allowedMethods`` — response envelopes that echo the request's Header and list
  ``xrd:service`` identifiers (pr-meta Annex C.3, C.5); the provider's security server adds ``requestHash`` with
  :func:`bridge.soap.add_request_hash` like for any response.
* SOAP ``getWsdl`` — :func:`parse_get_wsdl_request` reads the requested service from the Body and
  :func:`render_get_wsdl_response` returns the response envelope with the WSDL as a MIME attachment (C.6–C.8).
* REST ``listMethods`` / ``allowedMethods`` — :func:`render_rest_methods_json` (pr-mrest Annex B).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from lxml import etree

from bridge.errors import InvalidBody
from bridge.identifiers import ID_NS, ClientId, ServiceId, SubsystemId, check_code, to_xml
from bridge.soap import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_ENVELOPE_BYTES,
    SOAP_ENV_NS,
    XROAD_NS,
    SoapAttachment,
    SoapMessage,
    build_multipart,
)
from bridge.xmlsafe import parse_xml

__all__ = [
    "ALLOWED_METHODS",
    "GET_OPENAPI",
    "GET_WSDL",
    "LIST_METHODS",
    "METASERVICE_CODES",
    "SERVICE_TYPES",
    "ClientEntry",
    "RestServiceInfo",
    "parse_get_wsdl_request",
    "render_allowed_methods",
    "render_get_wsdl_response",
    "render_list_clients_json",
    "render_list_clients_xml",
    "render_list_methods",
    "render_rest_methods_json",
]

LIST_METHODS = "listMethods"
ALLOWED_METHODS = "allowedMethods"
GET_WSDL = "getWsdl"
GET_OPENAPI = "getOpenAPI"
#: Service codes answered by the provider's security server itself rather than by the provider.
METASERVICE_CODES = frozenset({LIST_METHODS, ALLOWED_METHODS, GET_WSDL, GET_OPENAPI})
#: REST service description types of pr-mrest (``WSDL`` for SOAP services listed next to REST ones).
SERVICE_TYPES = frozenset({"REST", "OPENAPI", "WSDL"})

_NSMAP = {"SOAP-ENV": SOAP_ENV_NS, "xrd": XROAD_NS, "id": ID_NS}


@dataclass(frozen=True, slots=True)
class ClientEntry:
    """One ``listClients`` entry: a client, its member's name and, for subsystems, optionally the subsystem's."""

    id: ClientId
    name: str
    subsystem_name: str | None = None


@dataclass(frozen=True, slots=True)
class RestServiceInfo:
    """One REST ``listMethods`` entry: a service, its type and its endpoints as ``(method, path)`` pairs."""

    service: ServiceId
    service_type: str
    endpoints: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.service_type not in SERVICE_TYPES:
            raise ValueError(f"service_type must be one of {sorted(SERVICE_TYPES)}")


def _entries(clients: Sequence[ClientEntry | tuple[ClientId, str]]) -> list[ClientEntry]:
    return [c if isinstance(c, ClientEntry) else ClientEntry(c[0], c[1]) for c in clients]


# listClients ---------------------------------------------------------------------------------------------------


def render_list_clients_xml(clients: Sequence[ClientEntry | tuple[ClientId, str]]) -> bytes:
    """``xrd:clientList`` as in pr-meta Annex C.1 (valid per metaservice-clientList.xsd)."""
    root = etree.Element(f"{{{XROAD_NS}}}clientList", nsmap={"id": ID_NS, "xrd": XROAD_NS})
    for entry in _entries(clients):
        member = etree.SubElement(root, f"{{{XROAD_NS}}}member")
        member.append(to_xml(entry.id, f"{{{XROAD_NS}}}id"))
        etree.SubElement(member, f"{{{XROAD_NS}}}name").text = entry.name
        if entry.subsystem_name is not None and isinstance(entry.id, SubsystemId):
            etree.SubElement(member, f"{{{XROAD_NS}}}subsystemName").text = entry.subsystem_name
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", standalone=True)


def render_list_clients_json(clients: Sequence[ClientEntry | tuple[ClientId, str]]) -> bytes:
    """The JSON form of ``listClients`` (pr-meta Annex C.1): ``{"member": [{"id": {...}, "name": ...}]}``."""
    members = []
    for entry in _entries(clients):
        ident: dict[str, str] = {
            "member_class": entry.id.member_class,
            "member_code": entry.id.member_code,
        }
        if isinstance(entry.id, SubsystemId):
            ident["subsystem_code"] = entry.id.subsystem_code
        ident["object_type"] = str(entry.id.object_type)
        ident["xroad_instance"] = entry.id.instance
        item: dict[str, object] = {"id": ident, "name": entry.name}
        if entry.subsystem_name is not None and isinstance(entry.id, SubsystemId):
            item["subsystem_name"] = entry.subsystem_name
        members.append(item)
    return json.dumps({"member": members}, ensure_ascii=False).encode("utf-8")


# SOAP listMethods / allowedMethods / getWsdl -------------------------------------------------------------------


def _response_envelope(request: SoapMessage) -> tuple[etree._Element, etree._Element]:
    """A new response Envelope whose Header is a copy of the request's; returns ``(envelope, body)``."""
    # The request was validated when it was parsed; re-parse its exact bytes safely to copy the Header as sent, so
    # every field (and extension) is echoed exactly.
    parsed = parse_xml(
        request.envelope, max_bytes=DEFAULT_MAX_ENVELOPE_BYTES, max_depth=DEFAULT_MAX_DEPTH, error=InvalidBody
    )
    header = parsed.find(f"{{{SOAP_ENV_NS}}}Header")
    env = etree.Element(f"{{{SOAP_ENV_NS}}}Envelope", nsmap=_NSMAP)
    if header is not None:
        env.append(copy.deepcopy(header))
    body = etree.SubElement(env, f"{{{SOAP_ENV_NS}}}Body")
    return env, body


def _render_method_list(request: SoapMessage, services: Sequence[ServiceId], element: str) -> bytes:
    env, body = _response_envelope(request)
    listing = etree.SubElement(body, f"{{{XROAD_NS}}}{element}")
    # pr-meta: the listing never names the metaservices themselves.
    for service in services:
        if service.service_code in METASERVICE_CODES:
            continue
        listing.append(to_xml(service, f"{{{XROAD_NS}}}service"))
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def render_list_methods(request: SoapMessage, services: Sequence[ServiceId]) -> bytes:
    """The ``listMethods`` response envelope (pr-meta Annex C.3): the request's Header and the services."""
    return _render_method_list(request, services, "listMethodsResponse")


def render_allowed_methods(request: SoapMessage, services: Sequence[ServiceId]) -> bytes:
    """The ``allowedMethods`` response envelope (pr-meta Annex C.5): the request's Header and the services."""
    return _render_method_list(request, services, "allowedMethodsResponse")


def parse_get_wsdl_request(msg: SoapMessage) -> ServiceId:
    """The service whose WSDL a ``getWsdl`` request asks for (same provider, ``serviceCode`` and optional version).

    Raises ``Client.InvalidBody`` unless the Body is ``xrd:getWsdl`` with ``xrd:serviceCode`` and optionally
    ``xrd:serviceVersion``, in that order and nothing else.
    """
    # (1) It must be a getWsdl call.
    if msg.header.service.service_code != GET_WSDL or msg.body_element != f"{{{XROAD_NS}}}{GET_WSDL}":
        raise InvalidBody("request is not a getWsdl request")
    # (2) Read the Body element from the envelope bytes (safely; they were validated by parse_soap).
    root = parse_xml(msg.envelope, max_bytes=DEFAULT_MAX_ENVELOPE_BYTES, max_depth=DEFAULT_MAX_DEPTH, error=InvalidBody)
    call = root.find(f"{{{SOAP_ENV_NS}}}Body/{{{XROAD_NS}}}{GET_WSDL}")
    if call is None:
        raise InvalidBody("getWsdl element is missing")
    kids = [c for c in call if isinstance(c.tag, str)]
    tags = [c.tag for c in kids]
    if tags not in ([f"{{{XROAD_NS}}}serviceCode"], [f"{{{XROAD_NS}}}serviceCode", f"{{{XROAD_NS}}}serviceVersion"]):
        raise InvalidBody("getWsdl must contain serviceCode and optionally serviceVersion")
    # (3) Codes follow the identifier rules (check_code raises Client.InvalidIdentifier).
    code = check_code((kids[0].text or "").strip(), "serviceCode")
    version = check_code((kids[1].text or "").strip(), "serviceVersion") if len(kids) == 2 else None
    return ServiceId(msg.header.service.provider, code, version)


def render_get_wsdl_response(request: SoapMessage, wsdl: bytes) -> tuple[str, bytes]:
    """The ``getWsdl`` response (pr-meta Annex C.7/C.8): envelope echoing the request, WSDL as a MIME attachment.

    Returns ``(content type, body)`` of a ``multipart/related`` message; the Body's ``getWsdlResponse`` repeats
    the requested ``serviceCode`` / ``serviceVersion``.
    """
    wanted = parse_get_wsdl_request(request)
    env, body = _response_envelope(request)
    response = etree.SubElement(body, f"{{{XROAD_NS}}}getWsdlResponse")
    etree.SubElement(response, f"{{{XROAD_NS}}}serviceCode").text = wanted.service_code
    if wanted.service_version is not None:
        etree.SubElement(response, f"{{{XROAD_NS}}}serviceVersion").text = wanted.service_version
    envelope = etree.tostring(env, xml_declaration=True, encoding="UTF-8")
    attachment = SoapAttachment("wsdl", "text/xml; charset=UTF-8", (), wsdl)
    return build_multipart(envelope, [attachment])


# REST listMethods / allowedMethods -----------------------------------------------------------------------------


def render_rest_methods_json(services: Sequence[RestServiceInfo]) -> bytes:
    """REST ``listMethods`` / ``allowedMethods`` body (pr-mrest Annex B): ``{"service": [...]}``.

    Keys follow the example's order (identifier fields alphabetically, then ``endpoint_list``).
    """
    items = []
    for info in services:
        svc = info.service
        if svc.service_code in METASERVICE_CODES:
            continue  # pr-mrest §4: the response SHALL NOT contain the metaservices
        item: dict[str, object] = {
            "member_class": svc.provider.member_class,
            "member_code": svc.provider.member_code,
            "object_type": "SERVICE",
            "service_code": svc.service_code,
            "service_type": info.service_type,
        }
        if svc.service_version is not None:
            item["service_version"] = svc.service_version
        item["subsystem_code"] = svc.provider.subsystem_code
        item["xroad_instance"] = svc.provider.instance
        item["endpoint_list"] = [{"method": method, "path": path} for method, path in info.endpoints]
        items.append(item)
    return json.dumps({"service": items}, ensure_ascii=False).encode("utf-8")
