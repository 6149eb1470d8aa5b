"""The ``population`` adapter (population register), called directly through ``handle()`` on generated data.

Pins REST ``persons`` (by PIN, by identity card or passport number; the answer's fields agree with the database;
family links; expiry judged against the adapter's day), its business errors (400 ``invalid_pin`` /
``invalid_document`` / ``invalid_request``, 404 ``not_found``, 405), SOAP ``getPerson`` (headers echoed, the
person in the WSDL's shape, X-Road non-technical faults with HTTP 200), the descriptions, and the factory.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from adapters.base import AdapterContext, AdapterRequest, DescribedAdapter, create
from adapters.registries.data import REFERENCE_DATE
from adapters.registries.db import RegistryDb
from adapters.registries.population import NAMESPACE, PopulationRegister, factory, openapi, wsdl
from bridge.errors import ConfigError
from bridge.identifiers import ServiceId, parse_client
from bridge.message import MessageHeader, Protocol
from tests.adapters.support import bank_rest, query

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
XRD = "http://x-road.eu/xsd/xroad.xsd"


@pytest.fixture
def register_(db_path: Path) -> PopulationRegister:
    """The adapter over the small database, on the data's reference date."""
    return PopulationRegister(RegistryDb(f"sqlite:///{db_path}"), today=lambda: REFERENCE_DATE)


def rest(path: str, query_string: str = "", method: str = "GET") -> AdapterRequest:
    return bank_rest("AZ/GOV/1100000011/population/persons", path, query_string, method)


def soap(pin: str, operation: str = "getPerson", namespace: str = NAMESPACE) -> AdapterRequest:
    envelope = f"""<?xml version="1.0" encoding="UTF-8"?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="{SOAP_NS}" xmlns:xrd="{XRD}" xmlns:id="http://x-road.eu/xsd/identifiers"
    xmlns:pop="{namespace}">
  <SOAP-ENV:Header>
    <xrd:client id:objectType="SUBSYSTEM"><id:xRoadInstance>AZ</id:xRoadInstance><id:memberClass>COM</id:memberClass>
      <id:memberCode>9900001111</id:memberCode><id:subsystemCode>loans</id:subsystemCode></xrd:client>
    <xrd:service id:objectType="SERVICE"><id:xRoadInstance>AZ</id:xRoadInstance><id:memberClass>GOV</id:memberClass>
      <id:memberCode>1100000011</id:memberCode><id:subsystemCode>population</id:subsystemCode>
      <id:serviceCode>getPerson</id:serviceCode></xrd:service>
    <xrd:id>soap-1</xrd:id>
    <xrd:userId>AZ1234567</xrd:userId>
    <xrd:protocolVersion>4.0</xrd:protocolVersion>
  </SOAP-ENV:Header>
  <SOAP-ENV:Body><pop:{operation}><pin>{pin}</pin></pop:{operation}></SOAP-ENV:Body>
</SOAP-ENV:Envelope>""".encode()
    header = MessageHeader(
        protocol=Protocol.SOAP,
        client=parse_client("AZ/COM/9900001111/loans"),
        service=ServiceId.parse("AZ/GOV/1100000011/population/getPerson"),
        message_id="soap-1",
    )
    return AdapterRequest(Protocol.SOAP, header, "POST", "/", "", (), envelope, "text/xml; charset=UTF-8")


def body(answer: Any) -> Any:
    return json.loads(answer.body)


def a_family_pin(path: Path) -> str:
    """A married person with children (so every relation shows)."""
    rows = query(
        path,
        "SELECT pin FROM family_links GROUP BY pin HAVING sum(relation = 'spouse') = 1 AND sum(relation = 'child') >= 1"
        " ORDER BY pin LIMIT 1",
    )
    return str(rows[0][0])


# REST ----------------------------------------------------------------------------------------------------------


async def test_person_by_pin(register_: PopulationRegister, db_path: Path) -> None:
    """GET /persons/{pin} answers the person's names, birth, address, identity card and family from the database."""
    pin = a_family_pin(db_path)
    answer = await register_.handle(rest(f"/persons/{pin}"))
    assert answer.status == 200
    assert answer.content_type == "application/json"
    person = body(answer)
    row = query(
        db_path, "SELECT first_name, last_name, patronymic, birth_date, gender FROM persons WHERE pin = ?", (pin,)
    )
    assert (
        person["first_name"],
        person["last_name"],
        person["patronymic"],
        person["birth_date"],
        person["gender"],
    ) == row[0]
    assert person["pin"] == pin
    assert set(person["address"]) == {"city", "district", "street", "building", "apartment", "postal_code", "text"}
    assert person["address"]["city"] in person["address"]["text"]
    card = query(
        db_path, "SELECT number, issued, expires FROM identity_documents WHERE pin = ? AND type = 'id_card'", (pin,)
    )[0]
    assert person["document"] == {
        "number": card[0],
        "type": "id_card",
        "issued": card[1],
        "expires": card[2],
        "expired": dt.date.fromisoformat(card[2]) < REFERENCE_DATE,
    }
    assert person["document"] in person["documents"]
    family = {(m["relation"], m["pin"]) for m in person["family"]}
    expected = set(query(db_path, "SELECT relation, related_pin FROM family_links WHERE pin = ?", (pin,)))
    assert family == expected
    assert {"spouse", "child"} <= {r for r, _ in family}


async def test_family_links_point_back(register_: PopulationRegister, db_path: Path) -> None:
    """A child's answer names its parents, whose answers name it as their child."""
    child = str(query(db_path, "SELECT pin FROM family_links WHERE relation = 'father' ORDER BY pin LIMIT 1")[0][0])
    person = body(await register_.handle(rest(f"/persons/{child}")))
    father = next(m["pin"] for m in person["family"] if m["relation"] == "father")
    parent = body(await register_.handle(rest(f"/persons/{father}")))
    assert {"relation": "child", "pin": child} in parent["family"]
    assert parent["gender"] == "male"
    assert person["patronymic"].startswith(parent["first_name"] + " ")


async def test_person_by_document(register_: PopulationRegister, db_path: Path) -> None:
    """GET /persons?document= finds the holder of an identity card or a passport; the answer is the same person."""
    card, pin = query(
        db_path, "SELECT number, pin FROM identity_documents WHERE type = 'id_card' ORDER BY number LIMIT 1"
    )[0]
    by_card = await register_.handle(rest("/persons", f"document={card}"))
    assert by_card.status == 200
    assert body(by_card) == body(await register_.handle(rest(f"/persons/{pin}")))
    passport, holder = query(db_path, "SELECT number, pin FROM identity_documents WHERE type = 'passport' LIMIT 1")[0]
    by_passport = body(await register_.handle(rest("/persons", f"document={passport}")))
    assert by_passport["pin"] == holder
    assert by_passport["document"]["type"] == "id_card"  # the card stays "the" document
    assert passport in {d["number"] for d in by_passport["documents"]}


async def test_expiry_is_judged_against_today(db_path: Path) -> None:
    """``expired`` compares the expiry date with the adapter's day: a card valid today is expired ten years on."""
    number, pin, expires = query(
        db_path,
        "SELECT number, pin, expires FROM identity_documents WHERE type = 'id_card' AND expires > ?"
        " ORDER BY number LIMIT 1",
        (REFERENCE_DATE.isoformat(),),
    )[0]
    db = RegistryDb(f"sqlite:///{db_path}")
    now = PopulationRegister(db, today=lambda: REFERENCE_DATE)
    later = PopulationRegister(db, today=lambda: dt.date.fromisoformat(expires) + dt.timedelta(days=1))
    assert body(await now.handle(rest(f"/persons/{pin}")))["document"]["expired"] is False
    assert body(await later.handle(rest(f"/persons/{pin}")))["document"]["expired"] is True
    expired = query(
        db_path,
        "SELECT pin FROM identity_documents WHERE type = 'id_card' AND expires < ? LIMIT 1",
        (REFERENCE_DATE.isoformat(),),
    )
    assert body(await now.handle(rest(f"/persons/{expired[0][0]}")))["document"]["expired"] is True
    del number


@pytest.mark.parametrize(
    ("path", "query_string", "method", "status", "code"),
    [
        ("/persons/abc1234", "", "GET", 400, "invalid_pin"),
        ("/persons/TOOLONG12", "", "GET", 400, "invalid_pin"),
        ("/persons/AB-1234", "", "GET", 400, "invalid_pin"),
        ("/persons", "document=XYZ1", "GET", 400, "invalid_document"),
        ("/persons", "document=AZE1234567", "GET", 400, "invalid_document"),
        ("/persons", "", "GET", 400, "invalid_request"),
        ("/persons", "document=AZE99999999", "GET", 404, "not_found"),
        ("/persons/ZZZZZZZ", "", "GET", 404, "not_found"),
        ("/people/ZZZZZZZ", "", "GET", 404, "not_found"),
        ("/persons/ZZZZZZZ/extra", "", "GET", 404, "not_found"),
        ("/persons/ZZZZZZZ", "", "DELETE", 405, "method_not_allowed"),
    ],
)
async def test_business_errors(
    register_: PopulationRegister, path: str, query_string: str, method: str, status: int, code: str
) -> None:
    """Bad input and unknown persons are JSON business errors with their status, never exceptions."""
    answer = await register_.handle(rest(path, query_string, method))
    assert answer.status == status
    error = body(answer)
    assert error["error"] == code
    assert isinstance(error["message"], str)
    assert error["message"] != ""


# SOAP ----------------------------------------------------------------------------------------------------------


async def test_soap_get_person(register_: PopulationRegister, db_path: Path) -> None:
    """SOAP getPerson answers getPersonResponse/person in the service namespace, echoing the X-Road headers in order."""
    pin = a_family_pin(db_path)
    answer = await register_.handle(soap(pin))
    assert answer.status == 200
    doc = etree.fromstring(answer.body)
    header = doc.find(f"{{{SOAP_NS}}}Header")
    assert header is not None
    assert [etree.QName(c).localname for c in header] == ["client", "service", "id", "userId", "protocolVersion"]
    response = doc.find(f"{{{SOAP_NS}}}Body/{{{NAMESPACE}}}getPersonResponse")
    assert response is not None
    assert response.find("fault") is None
    rest_person = body(await register_.handle(rest(f"/persons/{pin}")))
    assert response.findtext("person/pin") == pin
    assert response.findtext("person/firstName") == rest_person["first_name"]
    assert response.findtext("person/birthDate") == rest_person["birth_date"]
    assert response.findtext("person/address/postalCode") == rest_person["address"]["postal_code"]
    assert response.findtext("person/document/number") == rest_person["document"]["number"]
    assert response.findtext("person/document/expired") in ("true", "false")
    members = {(m.findtext("relation"), m.findtext("pin")) for m in response.iterfind("person/familyMember")}
    assert members == {(m["relation"], m["pin"]) for m in rest_person["family"]}


@pytest.mark.parametrize(
    ("pin", "code"),
    [("ZZZZZZZ", "not_found"), ("bad", "invalid_pin"), ("", "invalid_pin")],
)
async def test_soap_business_error_is_a_non_technical_fault(register_: PopulationRegister, pin: str, code: str) -> None:
    """Unknown or malformed PINs: HTTP 200 and getPersonResponse/fault{faultCode, faultString}, no person."""
    answer = await register_.handle(soap(pin))
    assert answer.status == 200
    response = etree.fromstring(answer.body).find(f"{{{SOAP_NS}}}Body/{{{NAMESPACE}}}getPersonResponse")
    assert response is not None
    assert response.find("person") is None
    assert response.findtext("fault/faultCode") == code
    assert (response.findtext("fault/faultString") or "") != ""


async def test_soap_unknown_operation_is_a_non_technical_fault(register_: PopulationRegister) -> None:
    """An operation in another namespace gets a non-technical fault, not an exception."""
    answer = await register_.handle(soap("ZZZZZZZ", namespace="urn:other"))
    assert answer.status == 200
    assert (
        etree.fromstring(answer.body).findtext(f".//{{{NAMESPACE}}}getPersonResponse/fault/faultCode")
        == "unknown_operation"
    )


async def test_soap_broken_envelope_is_a_soap_fault(register_: PopulationRegister) -> None:
    """Bytes that are not XML (only a direct caller could send them) get a SOAP Fault, not an exception."""
    request = soap("ZZZZZZZ")
    broken = AdapterRequest(Protocol.SOAP, request.header, "POST", "/", "", (), b"<not-xml", "text/xml")
    answer = await register_.handle(broken)
    assert answer.status == 500
    assert etree.fromstring(answer.body).findtext(f".//{{{SOAP_NS}}}Fault/faultcode") == "Client.InvalidXml"


# Descriptions and factory --------------------------------------------------------------------------------------


def test_describe(register_: PopulationRegister) -> None:
    """describe() gives REST persons with its OpenAPI 3 document and SOAP getPerson with its WSDL."""
    assert isinstance(register_, DescribedAdapter)
    described = {d.code: d for d in register_.describe()}
    assert set(described) == {"persons", "getPerson"}
    assert described["persons"].type == "REST"
    assert described["persons"].document is not None
    document = json.loads(described["persons"].document)
    assert document == openapi()
    assert set(document["paths"]) == {"/persons/{pin}", "/persons"}
    assert described["getPerson"].type == "SOAP"
    assert described["getPerson"].document == wsdl()
    tree = etree.fromstring(wsdl())
    operations = tree.findall(
        ".//{http://schemas.xmlsoap.org/wsdl/}portType/{http://schemas.xmlsoap.org/wsdl/}operation"
    )
    assert [o.get("name") for o in operations] == ["getPerson"]
    assert tree.get("targetNamespace") == NAMESPACE


def test_wsdl_loads_in_zeep() -> None:
    """A SOAP toolkit reads the WSDL offline and sees getPerson with person and fault in its response."""
    zeep = pytest.importorskip("zeep")
    import io

    client = zeep.Client(io.BytesIO(wsdl()))
    operation = client.service._binding._operations["getPerson"]
    signature = operation.output.body.signature()
    assert "person" in signature
    assert "fault" in signature


async def test_factory_resolves_relative_database(db_path: Path) -> None:
    """``database: sqlite:///registries.db`` resolves in the state directory; the adapter is registered by name."""
    context = AdapterContext(
        options={"database": "sqlite:///registries.db", "today": "2026-04-01"}, state_dir=db_path.parent
    )
    adapter = create("population", context)
    assert isinstance(adapter, PopulationRegister)
    pin = str(query(db_path, "SELECT pin FROM persons LIMIT 1")[0][0])
    assert (await adapter.handle(rest(f"/persons/{pin}"))).status == 200


def test_factory_needs_a_database(tmp_path: Path) -> None:
    """Without option database, or with a malformed today, the adapter refuses to start with a clear message."""
    with pytest.raises(ConfigError, match="option database"):
        factory(AdapterContext(options={}, state_dir=tmp_path))
    with pytest.raises(ConfigError, match="option today"):
        factory(AdapterContext(options={"database": "sqlite:///x.db", "today": "soon"}, state_dir=tmp_path))


async def test_missing_database_file_is_a_config_error(tmp_path: Path) -> None:
    """A database file that does not exist is reported as such (the server answers a service failure)."""
    adapter = factory(AdapterContext(options={"database": "sqlite:///missing.db"}, state_dir=tmp_path))
    with pytest.raises(ConfigError, match="no registries database"):
        await adapter.handle(rest("/persons/ZZZZZZZ"))
    assert not (tmp_path / "missing.db").exists()
