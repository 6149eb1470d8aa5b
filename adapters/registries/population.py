"""Population register: persons by PIN or identity document, over REST and SOAP.

The State Registry Service's register (member ``AZ/GOV/1100000011``, subsystem ``population``) as an adapter
named ``population``, reading the ``persons``, ``addresses``, ``identity_documents`` and ``family_links`` tables
of the registries database (option ``database``; relative SQLite paths resolve against the state directory).

REST service ``persons``:

=======  ===================================  ================================================================
method   path                                 answer
=======  ===================================  ================================================================
GET      ``/persons/{pin}``                   the person (below)
GET      ``/persons?document=AZE12345678``    the holder of that identity card or passport, same shape
=======  ===================================  ================================================================

A person is ``{pin, first_name, last_name, patronymic, birth_date, gender, address: {city, district, street,
building, apartment, postal_code, text}, document: {number, type, issued, expires, expired}, documents: [...],
family: [{relation, pin}]}``: ``document`` is the identity card that runs longest (a passport if there is no card),
``documents`` every identity document, ``expired`` is judged against today (option ``today`` fixes the date), and
``relation`` is ``spouse``, ``father``, ``mother`` or ``child`` (what the other person is to this one).

Business errors (JSON ``{"error": code, "message": text}``): a malformed PIN → 400 ``invalid_pin``, a malformed
document number → 400 ``invalid_document``, no ``pin`` nor ``document`` → 400 ``invalid_request``; an unknown
PIN or document → 404 ``not_found``; another path → 404 ``not_found``, another method → 405
``method_not_allowed``.

SOAP service ``getPerson`` (document/literal, :func:`wsdl`): ``<getPerson><pin>…</pin></getPerson>`` →
``<getPersonResponse><person>…</person></getPersonResponse>`` in namespace :data:`NAMESPACE`, the request's
X-Road headers echoed.  Business errors are X-Road *non-technical* faults: HTTP 200 and a normal
``getPersonResponse`` holding ``<fault><faultCode>not_found</faultCode><faultString>…</faultString></fault>``
(pr-mess Annex D.2), with the same codes as REST.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Sequence
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs

from lxml import etree

from adapters.base import (
    AdapterContext,
    AdapterRequest,
    AdapterResponse,
    ServiceDescription,
    register,
)
from adapters.registries import DOCUMENT_PATTERN, PIN_PATTERN, clock, database, error, error_schema, json_answer
from adapters.registries.db import Reader, RegistryDb
from bridge.errors import InvalidXml, KorpuError
from bridge.message import Protocol
from bridge.xmlsafe import parse_xml

__all__ = ["NAMESPACE", "REST_SERVICE", "SOAP_SERVICE", "PopulationRegister", "factory", "openapi", "wsdl"]

#: The REST service code.
REST_SERVICE = "persons"
#: The SOAP service code (and operation).
SOAP_SERVICE = "getPerson"
#: Namespace of the SOAP body elements (their children are unqualified, as in X-Road's example WSDL).
NAMESPACE = "urn:korpu:registries:population:1"
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"

_PERSON_SQL = (
    "SELECT p.pin, p.first_name, p.last_name, p.patronymic, p.birth_date, p.gender,"
    " a.city, a.district, a.street, a.building, a.apartment, a.postal_code"
    " FROM persons p JOIN addresses a ON a.id = p.address_id WHERE p.pin = ?"
)
_DOCUMENTS_SQL = "SELECT number, type, issued, expires FROM identity_documents WHERE pin = ? ORDER BY number"
_FAMILY_SQL = "SELECT relation, related_pin FROM family_links WHERE pin = ? ORDER BY relation, related_pin"
_HOLDER_SQL = "SELECT pin FROM identity_documents WHERE number = ?"


class _NotFound(Exception):
    """No such person or document (a business error, answered 404 / ``not_found``)."""


def wsdl() -> bytes:
    """The WSDL of ``getPerson`` (document/literal, X-Road headers, self-contained like the test service's)."""
    return files("adapters.registries").joinpath("population.wsdl").read_bytes()


class PopulationRegister:
    """The population register adapter (see the module docstring)."""

    def __init__(self, db: RegistryDb, *, today: Callable[[], dt.date] = dt.date.today) -> None:
        self._reader: Reader = db.reader()
        self._today = today

    def describe(self) -> Sequence[ServiceDescription]:
        """REST ``persons`` with its OpenAPI 3 document, SOAP ``getPerson`` with its WSDL."""
        import json

        return (
            ServiceDescription(
                REST_SERVICE,
                "REST",
                "Population register: persons",
                json.dumps(openapi(), indent=2, ensure_ascii=False).encode(),
            ),
            ServiceDescription(SOAP_SERVICE, "SOAP", "Population register: getPerson", wsdl()),
        )

    async def handle(self, request: AdapterRequest) -> AdapterResponse:
        """Answer REST ``persons`` or SOAP ``getPerson``."""
        if request.protocol is Protocol.SOAP:
            return await self._soap(request)
        return await self._rest(request)

    # REST ----------------------------------------------------------------------------------------------------

    async def _rest(self, request: AdapterRequest) -> AdapterResponse:
        parts = request.path.strip("/").split("/")
        if parts[0] != "persons" or len(parts) > 2:
            return error(404, "not_found", f"no resource {request.path}")
        if request.method != "GET":
            return error(405, "method_not_allowed", f"{request.method} is not supported here; use GET")
        if len(parts) == 2:
            pin = parts[1]
            if not PIN_PATTERN.fullmatch(pin):
                return error(400, "invalid_pin", "a PIN is 7 upper-case letters or digits")
        else:
            query = parse_qs(request.query)
            document = query.get("document", [""])[0]
            if not document:
                return error(400, "invalid_request", "give a PIN in the path or ?document=NUMBER")
            if not DOCUMENT_PATTERN.fullmatch(document):
                return error(400, "invalid_document", "a document number is AZE or C followed by 8 digits")
            holder = await asyncio.to_thread(self._reader.one, _HOLDER_SQL, (document,))
            if holder is None:
                return error(404, "not_found", f"no identity document {document}")
            pin = str(holder[0])
        try:
            person = await asyncio.to_thread(self.person, pin)
        except _NotFound:
            return error(404, "not_found", f"no person with PIN {pin}")
        return json_answer(200, person)

    # Lookups (blocking: run in a worker thread) --------------------------------------------------------------

    def person(self, pin: str) -> dict[str, Any]:
        """The person with ``pin`` as the API shows it; raises :class:`_NotFound`."""
        row = self._reader.one(_PERSON_SQL, (pin,))
        if row is None:
            raise _NotFound(pin)
        today = self._today()
        documents = [_document(d, today) for d in self._reader.query(_DOCUMENTS_SQL, (pin,))]
        # The identity card that runs longest is "the" document; a passport only if there is no card.
        primary = max(documents, key=lambda d: (d["type"] == "id_card", d["expires"]), default=None)
        city, district, street, building, apartment, postal_code = row[6:12]
        return {
            "pin": row[0],
            "first_name": row[1],
            "last_name": row[2],
            "patronymic": row[3],
            "birth_date": row[4],
            "gender": row[5],
            "address": {
                "city": city,
                "district": district,
                "street": street,
                "building": building,
                "apartment": apartment,
                "postal_code": postal_code,
                "text": _address_text(city, district, street, building, apartment, postal_code),
            },
            "document": primary,
            "documents": documents,
            "family": [{"relation": r, "pin": p} for r, p in self._reader.query(_FAMILY_SQL, (pin,))],
        }

    # SOAP ----------------------------------------------------------------------------------------------------

    async def _soap(self, request: AdapterRequest) -> AdapterResponse:
        try:
            envelope = parse_xml(request.body, max_bytes=len(request.body) + 1, error=InvalidXml)
        except KorpuError as exc:
            # The security server validated the envelope already; this is only reached by a direct caller.
            return _soap_fault("Client.InvalidXml", exc.message)
        header = envelope.find(f"{{{SOAP_NS}}}Header")
        body = envelope.find(f"{{{SOAP_NS}}}Body")
        operation = next((c for c in body if isinstance(c.tag, str)), None) if body is not None else None
        if header is None or operation is None:
            return _soap_fault("Client.InvalidSoap", "a SOAP request needs a Header and an operation in the Body")
        response = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={k: v for k, v in envelope.nsmap.items() if k})
        response.append(header)  # the X-Road headers, echoed unchanged and in order
        out_body = etree.SubElement(response, f"{{{SOAP_NS}}}Body")
        result = etree.SubElement(out_body, f"{{{NAMESPACE}}}{SOAP_SERVICE}Response", nsmap={"pop": NAMESPACE})
        if etree.QName(operation).localname != SOAP_SERVICE or etree.QName(operation).namespace != NAMESPACE:
            _fault(result, "unknown_operation", f"this service answers {{{NAMESPACE}}}{SOAP_SERVICE}")
        else:
            pin = (operation.findtext("pin") or "").strip()
            if not PIN_PATTERN.fullmatch(pin):
                _fault(result, "invalid_pin", "a PIN is 7 upper-case letters or digits")
            else:
                try:
                    person = await asyncio.to_thread(self.person, pin)
                except _NotFound:
                    _fault(result, "not_found", f"no person with PIN {pin}")
                else:
                    _person_xml(etree.SubElement(result, "person"), person)
        data = etree.tostring(response, xml_declaration=True, encoding="UTF-8")
        return AdapterResponse(200, data, "text/xml; charset=UTF-8")


def _document(row: Sequence[Any], today: dt.date) -> dict[str, Any]:
    number, kind, issued, expires = row
    return {
        "number": number,
        "type": kind,
        "issued": issued,
        "expires": expires,
        "expired": dt.date.fromisoformat(expires) < today,
    }


def _address_text(
    city: str, district: str | None, street: str, building: str, apartment: str | None, postal_code: str
) -> str:
    parts = [f"{street} {building}"]
    if apartment is not None:
        parts.append(f"mənzil {apartment}")
    if district is not None:
        parts.append(f"{district} rayonu")
    parts.append(f"{city} {postal_code}")
    return ", ".join(parts)


def _fault(result: etree._Element, code: str, message: str) -> None:
    """X-Road's non-technical fault inside the operation's response element (pr-mess Annex D.2)."""
    fault = etree.SubElement(result, "fault")
    etree.SubElement(fault, "faultCode").text = code
    etree.SubElement(fault, "faultString").text = message


def _person_xml(parent: etree._Element, person: dict[str, Any]) -> None:
    """``person`` as the WSDL's ``person`` element: camelCase children, absent values left out."""

    def add(elem: etree._Element, name: str, value: Any) -> None:
        if value is not None:
            etree.SubElement(elem, name).text = str(value).lower() if isinstance(value, bool) else str(value)

    for key, name in (
        ("pin", "pin"),
        ("first_name", "firstName"),
        ("last_name", "lastName"),
        ("patronymic", "patronymic"),
        ("birth_date", "birthDate"),
        ("gender", "gender"),
    ):
        add(parent, name, person[key])
    address = etree.SubElement(parent, "address")
    for key, name in (
        ("city", "city"),
        ("district", "district"),
        ("street", "street"),
        ("building", "building"),
        ("apartment", "apartment"),
        ("postal_code", "postalCode"),
        ("text", "text"),
    ):
        add(address, name, person["address"][key])
    documents = [("document", person["document"])] if person["document"] is not None else []
    documents += [("identityDocument", d) for d in person["documents"]]
    for name, document in documents:
        elem = etree.SubElement(parent, name)
        for key in ("number", "type", "issued", "expires", "expired"):
            add(elem, key, document[key])
    for member in person["family"]:
        elem = etree.SubElement(parent, "familyMember")
        add(elem, "relation", member["relation"])
        add(elem, "pin", member["pin"])


def _soap_fault(code: str, message: str) -> AdapterResponse:
    """A technical SOAP fault (only for envelopes the security server would not have let through)."""
    envelope = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"SOAP-ENV": SOAP_NS})
    fault = etree.SubElement(etree.SubElement(envelope, f"{{{SOAP_NS}}}Body"), f"{{{SOAP_NS}}}Fault")
    etree.SubElement(fault, "faultcode").text = code
    etree.SubElement(fault, "faultstring").text = message
    return AdapterResponse(500, etree.tostring(envelope, xml_declaration=True, encoding="UTF-8"), "text/xml")


def openapi() -> dict[str, Any]:
    """The OpenAPI 3 document of REST ``persons``."""
    text = {"type": "string"}
    pin = {"type": "string", "pattern": "^[0-9A-Z]{7}$"}
    nullable = {"type": "string", "nullable": True}
    date = {"type": "string", "format": "date"}
    document = {
        "type": "object",
        "required": ["number", "type", "issued", "expires", "expired"],
        "properties": {
            "number": {"type": "string", "example": "AZE12345678"},
            "type": {"type": "string", "enum": ["id_card", "passport"]},
            "issued": date,
            "expires": date,
            "expired": {"type": "boolean"},
        },
    }
    person = {
        "type": "object",
        "required": ["pin", "first_name", "last_name", "patronymic", "birth_date", "gender", "address", "family"],
        "properties": {
            "pin": pin,
            "first_name": text,
            "last_name": text,
            "patronymic": text,
            "birth_date": date,
            "gender": {"type": "string", "enum": ["male", "female"]},
            "address": {
                "type": "object",
                "properties": {
                    "city": text,
                    "district": nullable,
                    "street": text,
                    "building": text,
                    "apartment": nullable,
                    "postal_code": text,
                    "text": text,
                },
            },
            "document": {**document, "nullable": True},
            "documents": {"type": "array", "items": document},
            "family": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "relation": {"type": "string", "enum": ["spouse", "father", "mother", "child"]},
                        "pin": text,
                    },
                },
            },
        },
    }
    answer = {
        "description": "The person",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Person"}}},
    }
    errors = {
        "400": {"$ref": "#/components/responses/Error"},
        "404": {"$ref": "#/components/responses/Error"},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Population register: persons",
            "version": "1.0.0",
            "description": "State Registry Service. Persons by PIN (FİN) or identity document number.",
        },
        "paths": {
            "/persons/{pin}": {
                "get": {
                    "operationId": "getPersonByPin",
                    "parameters": [{"name": "pin", "in": "path", "required": True, "schema": pin}],
                    "responses": {"200": answer, **errors},
                }
            },
            "/persons": {
                "get": {
                    "operationId": "getPersonByDocument",
                    "parameters": [
                        {
                            "name": "document",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^(AZE|C)[0-9]{8}$"},
                        }
                    ],
                    "responses": {"200": answer, **errors},
                }
            },
        },
        "components": {
            "schemas": {"Person": person},
            "responses": {
                "Error": {
                    "description": "A business error",
                    "content": {"application/json": {"schema": error_schema()}},
                }
            },
        },
    }


def factory(context: AdapterContext) -> PopulationRegister:
    """Build the adapter from its options: ``database`` (required) and ``today`` (a fixed ISO date, optional)."""
    return PopulationRegister(database(context, "population"), today=clock(context, "population"))


register("population", factory)
