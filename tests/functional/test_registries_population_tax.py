"""Population register and E-Tax end to end: a bank reads persons and taxpayers through two security servers.

The federation: Kapital Bank's server (client subsystems ``loans``, granted, and ``marketing``, not granted), the
State Registry Service's server providing ``population`` (REST ``persons``, SOAP ``getPerson``) and the State Tax
Service's server providing ``etax`` (REST ``taxpayers``), both through in-process adapters reading one small
generated registries database.  Pins the answers as a consumer sees them, the business errors passing through
unchanged (REST 4xx JSON; SOAP non-technical fault with HTTP 200), access control, and the OpenAPI description
coming from the adapter's ``describe()``.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from lxml import etree

import adapters.registries.population
import adapters.registries.tax
from adapters.registries.data import generate
from security_server.sandbox import AgencySpec, Federation, ServiceSpec, start_federation

pytestmark = [pytest.mark.functional, pytest.mark.asyncio(loop_scope="module")]

BANK = "AZ/COM/9900001111"
LOANS = f"{BANK}/loans"
MARKETING = f"{BANK}/marketing"
GRANTED = (("SUBSYSTEM:" + LOANS, None, None),)
POPULATION = "/r1/AZ/GOV/1100000011/population"
ETAX = "/r1/AZ/GOV/1300000013/etax"
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
NAMESPACE = adapters.registries.population.NAMESPACE


def agencies(database: str) -> tuple[AgencySpec, ...]:
    """The bank and the two registries, whose adapters read ``database``."""
    options = {"database": database}
    return (
        AgencySpec(f"{BANK}/ss-a", "Kapital Bank", clients=("loans", "marketing")),
        AgencySpec(
            "AZ/GOV/1100000011/ss-pop",
            "State Registry Service",
            clients=("population",),
            services=(
                ServiceSpec("population", "persons", adapter="population", options=options, grants=GRANTED),
                ServiceSpec(
                    "population", "getPerson", type="SOAP", adapter="population", options=options, grants=GRANTED
                ),
            ),
        ),
        AgencySpec(
            "AZ/GOV/1300000013/ss-tax",
            "State Tax Service",
            clients=("etax",),
            services=(ServiceSpec("etax", "taxpayers", adapter="tax", options=options, grants=GRANTED),),
        ),
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small registries database."""
    path = tmp_path_factory.mktemp("registries") / "registries.db"
    generate(f"sqlite:///{path}", scale="small")
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def federation(tmp_path_factory: pytest.TempPathFactory, database: Path) -> AsyncIterator[Federation]:
    """Central server, the bank's server and the two registries' servers on loopback."""
    fed = await start_federation(tmp_path_factory.mktemp("federation"), agencies(f"sqlite:///{database}"))
    try:
        yield fed
    finally:
        await fed.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def query(path: Path, sql: str) -> tuple[Any, ...]:
    with sqlite3.connect(path) as conn:
        row: tuple[Any, ...] = conn.execute(sql).fetchone()
        return row


async def call(
    fed: Federation, http: aiohttp.ClientSession, path: str, client: str = LOANS
) -> tuple[int, dict[str, str], Any]:
    """GET ``path`` through the bank's client proxy as ``client``; status, headers and JSON body."""
    url = fed.server("ss-a").urls["client_http"] + path
    headers = {"X-Road-Client": client, "X-Road-UserId": "AZ5ZK7P2M", "X-Road-Id": uuid.uuid4().hex}
    async with http.get(url, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.json()


# Population ----------------------------------------------------------------------------------------------------


async def test_person_by_pin(federation: Federation, http: aiohttp.ClientSession, database: Path) -> None:
    """The bank reads a person by PIN: names, identity card and family come back through both servers."""
    pin, first, last = query(database, "SELECT pin, first_name, last_name FROM persons ORDER BY pin LIMIT 1")
    status, headers, person = await call(federation, http, f"{POPULATION}/persons/persons/{pin}")
    assert status == 200, person
    assert headers["X-Road-Service"] == "AZ/GOV/1100000011/population/persons"
    assert (person["pin"], person["first_name"], person["last_name"]) == (pin, first, last)
    assert person["document"]["number"].startswith("AZE")
    assert isinstance(person["family"], list)


async def test_person_by_document(federation: Federation, http: aiohttp.ClientSession, database: Path) -> None:
    """The bank finds the holder of an identity card by its number."""
    number, pin = query(database, "SELECT number, pin FROM identity_documents WHERE type = 'id_card' LIMIT 1")
    status, _, person = await call(federation, http, f"{POPULATION}/persons/persons?document={number}")
    assert status == 200, person
    assert person["pin"] == pin
    assert number in {d["number"] for d in person["documents"]}


async def test_soap_get_person(federation: Federation, http: aiohttp.ClientSession, database: Path) -> None:
    """SOAP getPerson answers the person, with the X-Road headers and requestHash added by the provider."""
    (pin,) = query(database, "SELECT pin FROM persons ORDER BY pin DESC LIMIT 1")
    status, doc = await soap_call(federation, http, pin)
    assert status == 200
    response = doc.find(f"{{{SOAP_NS}}}Body/{{{NAMESPACE}}}getPersonResponse")
    assert response is not None
    assert response.findtext("person/pin") == pin
    assert response.find("fault") is None
    header = doc.find(f"{{{SOAP_NS}}}Header")
    assert header is not None
    assert [etree.QName(c).localname for c in header][-1] == "requestHash"


async def test_soap_unknown_pin_is_a_non_technical_fault(federation: Federation, http: aiohttp.ClientSession) -> None:
    """An unknown PIN over SOAP: HTTP 200, no SOAP Fault, getPersonResponse/fault with faultCode not_found."""
    status, doc = await soap_call(federation, http, "ZZZZZZZ")
    assert status == 200
    assert doc.find(f".//{{{SOAP_NS}}}Fault") is None
    response = doc.find(f"{{{SOAP_NS}}}Body/{{{NAMESPACE}}}getPersonResponse")
    assert response is not None
    assert response.findtext("fault/faultCode") == "not_found"
    assert "ZZZZZZZ" in (response.findtext("fault/faultString") or "")


# E-Tax ---------------------------------------------------------------------------------------------------------


async def test_taxpayer_and_pin_to_tin(federation: Federation, http: aiohttp.ClientSession, database: Path) -> None:
    """The bank reads a taxpayer by TIN and finds the same record from the person's PIN."""
    tin, pin = query(database, "SELECT tin, pin FROM taxpayers WHERE type = 'individual' ORDER BY tin LIMIT 1")
    status, _, taxpayer = await call(federation, http, f"{ETAX}/taxpayers/taxpayers/{tin}")
    assert status == 200, taxpayer
    assert (taxpayer["tin"], taxpayer["pin"], taxpayer["type"]) == (tin, pin, "individual")
    status, _, by_pin = await call(federation, http, f"{ETAX}/taxpayers/taxpayers?pin={pin}")
    assert status == 200
    assert by_pin == taxpayer


async def test_debt_reference_and_income(federation: Federation, http: aiohttp.ClientSession, database: Path) -> None:
    """A "no tax debt" reference and the 2025 declared income, as a bank checks before a loan."""
    (tin,) = query(
        database,
        "SELECT tin FROM income_declarations WHERE year = 2025 AND tin NOT IN (SELECT tin FROM tax_debts)"
        " ORDER BY tin LIMIT 1",
    )
    status, _, debt = await call(federation, http, f"{ETAX}/taxpayers/taxpayers/{tin}/debt")
    assert status == 200, debt
    assert (debt["tin"], debt["has_debt"], debt["amount"]) == (tin, False, 0)
    assert debt["reference"].startswith("NDR-")
    (income,) = query(database, f"SELECT income_qepik FROM income_declarations WHERE tin = '{tin}' AND year = 2025")
    status, _, declared = await call(federation, http, f"{ETAX}/taxpayers/taxpayers/{tin}/income?year=2025")
    assert status == 200, declared
    assert declared["income"] == round(income / 100, 2)


# Errors and access ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        (f"{POPULATION}/persons/persons/bad-pin", 400, "invalid_pin"),
        (f"{ETAX}/taxpayers/taxpayers/123", 400, "invalid_tin"),
        (f"{POPULATION}/persons/persons/ZZZZZZZ", 404, "not_found"),
        (f"{ETAX}/taxpayers/taxpayers/0000000001", 404, "not_found"),
    ],
)
async def test_business_errors_pass_through(
    federation: Federation, http: aiohttp.ClientSession, path: str, status: int, code: str
) -> None:
    """The registries' 400/404 business errors reach the bank unchanged, not as X-Road faults."""
    got, headers, error = await call(federation, http, path)
    assert got == status
    assert "X-Road-Error" not in headers
    assert error["error"] == code


@pytest.mark.parametrize("path", [f"{POPULATION}/persons/persons/ZZZZZZZ", f"{ETAX}/taxpayers/taxpayers/0000000001"])
async def test_client_without_grant_is_denied(federation: Federation, http: aiohttp.ClientSession, path: str) -> None:
    """The bank's marketing subsystem has no access right: the provider answers AccessDenied."""
    status, headers, body = await call(federation, http, path, client=MARKETING)
    assert status == 500
    assert headers["X-Road-Error"] == "Server.ServerProxy.AccessDenied"
    assert body["type"] == "Server.ServerProxy.AccessDenied"


async def test_openapi_comes_from_the_adapter(federation: Federation, http: aiohttp.ClientSession) -> None:
    """The getOpenAPI metaservice answers the tax adapter's own OpenAPI document (from describe())."""
    status, _, document = await call(federation, http, f"{ETAX}/getOpenAPI?serviceCode=taxpayers")
    assert status == 200
    assert document == adapters.registries.tax.openapi()


# Helpers -------------------------------------------------------------------------------------------------------


async def soap_call(fed: Federation, http: aiohttp.ClientSession, pin: str) -> tuple[int, etree._Element]:
    """POST a getPerson request for ``pin`` from the bank's ``loans`` subsystem; status and parsed answer."""
    envelope = f"""<?xml version="1.0" encoding="UTF-8"?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="{SOAP_NS}" xmlns:xrd="http://x-road.eu/xsd/xroad.xsd"
    xmlns:id="http://x-road.eu/xsd/identifiers" xmlns:pop="{NAMESPACE}">
  <SOAP-ENV:Header>
    <xrd:client id:objectType="SUBSYSTEM"><id:xRoadInstance>AZ</id:xRoadInstance><id:memberClass>COM</id:memberClass>
      <id:memberCode>9900001111</id:memberCode><id:subsystemCode>loans</id:subsystemCode></xrd:client>
    <xrd:service id:objectType="SERVICE"><id:xRoadInstance>AZ</id:xRoadInstance><id:memberClass>GOV</id:memberClass>
      <id:memberCode>1100000011</id:memberCode><id:subsystemCode>population</id:subsystemCode>
      <id:serviceCode>getPerson</id:serviceCode></xrd:service>
    <xrd:id>{uuid.uuid4()}</xrd:id>
    <xrd:userId>AZ5ZK7P2M</xrd:userId>
    <xrd:protocolVersion>4.0</xrd:protocolVersion>
  </SOAP-ENV:Header>
  <SOAP-ENV:Body><pop:getPerson><pin>{pin}</pin></pop:getPerson></SOAP-ENV:Body>
</SOAP-ENV:Envelope>""".encode()
    url = fed.server("ss-a").urls["client_http"] + "/"
    async with http.post(url, data=envelope, headers={"Content-Type": "text/xml; charset=UTF-8"}) as resp:
        return resp.status, etree.fromstring(await resp.read())
