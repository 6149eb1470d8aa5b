"""The labor and licensing registries in a real federation, over real security servers on loopback.

Five security servers: population (``AZ/GOV/1100000011``), tax (``AZ/GOV/1300000013``), labor
(``AZ/GOV/1400000014``), licensing (``AZ/GOV/1500000015``, whose adapter calls tax and population over the bus as
its client subsystem ``licensing``) and the e-Gov portal (``AZ/GOV/1000000001``, client ``portal``), all over one
generated registries database (scale ``small``).  Pins: an employer's contract registered through the portal's
and the ministry's servers, read back as the employee's contracts and reference, refused as a duplicate or with
dates out of order, terminated; licence applications decided over the bus (approved for a debt-free applicant,
with the tax and population servers' logs showing the licensing subsystem as the client, the applicant's PIN as
userId and the application id as issue; rejected for a debtor), and the licence verified.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

import adapters.registries.labor
import adapters.registries.licensing  # noqa: F401 - registers the licensing adapter
from adapters.base import available
from adapters.registries.data import REFERENCE_DATE, generate
from adapters.registries.db import RegistryDb
from security_server.messagelog import LogQuery
from security_server.sandbox import AgencySpec, Federation, ServiceSpec, start_federation

pytestmark = [pytest.mark.functional, pytest.mark.asyncio(loop_scope="module")]

PORTAL = "AZ/GOV/1000000001/portal"
LICENSING_CLIENT = "SUBSYSTEM:AZ/GOV/1500000015/licensing"
PORTAL_CLIENT = f"SUBSYSTEM:{PORTAL}"
LABOR = "/r1/AZ/GOV/1400000014/contracts/contracts"
LICENSES = "/r1/AZ/GOV/1500000015/licensing/licenses"
TODAY = REFERENCE_DATE.isoformat()


def provider_adapters() -> None:
    """Import the population and tax adapters (a colleague's modules), so that their names are registered."""
    for name in ("population", "tax"):
        try:
            importlib.import_module(f"adapters.registries.{name}")
        except ModuleNotFoundError:
            if name not in available():
                pytest.skip(f"adapters.registries.{name} is not there yet")


@dataclass(frozen=True)
class Subjects:
    """Rows of the generated database the tests act on."""

    employer_tin: str
    employee_pin: str
    applicant_pin: str
    clean_tin: str
    debtor_tin: str


def pick_subjects(db: RegistryDb) -> Subjects:
    """An active employer, a working-age person, a debt-free and an indebted active legal entity, an applicant."""
    reader = db.reader()
    try:
        legal = (
            "SELECT t.tin FROM taxpayers t WHERE t.type = 'legal_entity' AND t.status = 'active'"
            " AND {} EXISTS (SELECT 1 FROM tax_debts d WHERE d.tin = t.tin) ORDER BY t.tin LIMIT 1"
        )
        (clean,) = reader.one(legal.format("NOT")) or ("",)
        (debtor,) = reader.one(legal.format("")) or ("",)
        valid_id = (
            "SELECT p.pin FROM persons p WHERE p.birth_date < ? AND EXISTS (SELECT 1 FROM identity_documents i"
            " WHERE i.pin = p.pin AND i.expires >= ?) ORDER BY p.pin LIMIT 2"
        )
        people = reader.query(valid_id, ("2000-01-01", TODAY))
    finally:
        reader.close()
    assert clean and debtor and len(people) == 2
    return Subjects(clean, people[0][0], people[1][0], clean, debtor)


def agencies(database: str) -> tuple[AgencySpec, ...]:
    """Population, tax, labor, licensing and the e-Gov portal, every registry on ``database``."""
    data = {"database": database}
    fixed = {**data, "today": TODAY}
    return (
        AgencySpec(
            "AZ/GOV/1100000011/ss-population",
            "State Registration Service",
            clients=("population",),
            services=(
                ServiceSpec(
                    "population",
                    "persons",
                    adapter="population",
                    options=data,
                    grants=((LICENSING_CLIENT, "GET", "/persons/*"),),
                ),
            ),
        ),
        AgencySpec(
            "AZ/GOV/1300000013/ss-tax",
            "State Tax Service",
            clients=("etax",),
            services=(
                ServiceSpec(
                    "etax",
                    "taxpayers",
                    adapter="tax",
                    options=data,
                    grants=((LICENSING_CLIENT, "GET", "/taxpayers/*/debt"),),
                ),
            ),
        ),
        AgencySpec(
            "AZ/GOV/1400000014/ss-labor",
            "Ministry of Labour and Social Protection",
            clients=("contracts",),
            services=(
                ServiceSpec(
                    "contracts", "contracts", adapter="labor", options=fixed, grants=((PORTAL_CLIENT, None, None),)
                ),
            ),
        ),
        AgencySpec(
            "AZ/GOV/1500000015/ss-licensing",
            "Ministry of Economy",
            clients=("licensing",),
            services=(
                ServiceSpec(
                    "licensing",
                    "licenses",
                    adapter="licensing",
                    options={**fixed, "bus_client": "licensing"},
                    grants=((PORTAL_CLIENT, None, None),),
                ),
            ),
        ),
        AgencySpec("AZ/GOV/1000000001/ss-portal", "e-Gov Portal", clients=("portal",)),
    )


@dataclass
class World:
    """The running federation and the generated database's chosen rows."""

    federation: Federation
    subjects: Subjects


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """A small generated registries database and the five-server federation over it."""
    provider_adapters()
    state = tmp_path_factory.mktemp("registries")
    url = f"sqlite:///{state / 'registries.db'}"
    await asyncio.to_thread(generate, url, scale="small")
    subjects = await asyncio.to_thread(pick_subjects, RegistryDb(url))
    federation = await start_federation(state / "federation", agencies(url))
    try:
        yield World(federation, subjects)
    finally:
        await federation.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client for the portal's information system."""
    async with aiohttp.ClientSession() as session:
        yield session


async def portal(
    world: World, http: aiohttp.ClientSession, method: str, path: str, body: Any = None, *, user: str = "AZ0000001"
) -> tuple[int, Any]:
    """Call a service through the portal's security server as the portal; returns status and JSON."""
    url = world.federation.server("ss-portal").urls["client_http"] + path
    headers = {"X-Road-Client": PORTAL, "X-Road-UserId": user}
    async with http.request(method, url, json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_contract_lifecycle_through_two_security_servers(world: World, http: aiohttp.ClientSession) -> None:
    """Register, read contracts and reference, refuse a duplicate and reversed dates, terminate (twice: 409)."""
    s = world.subjects
    contract = {
        "employer_tin": s.employer_tin,
        "employee_pin": s.employee_pin,
        "position": "Baş mühasib (sınaq)",
        "salary": 1850,
        "currency": "AZN",
        "start_date": "2026-02-01",
    }
    status, body = await portal(world, http, "POST", f"{LABOR}/contracts", contract)
    assert status == 201, body
    assert body["status"] == "active"
    contract_id = body["id"]

    status, body = await portal(world, http, "GET", f"{LABOR}/employees/{s.employee_pin}/contracts")
    assert status == 200
    assert contract_id in [c["id"] for c in body["contracts"]]

    status, reference = await portal(world, http, "GET", f"{LABOR}/employees/{s.employee_pin}/reference")
    assert (status, reference["as_of"], reference["employed"]) == (200, TODAY, True)
    (job,) = [e for e in reference["employments"] if e["contract_id"] == contract_id]
    assert (job["employer_tin"], job["monthly_salary"], job["since"]) == (s.employer_tin, 1850.0, "2026-02-01")

    status, body = await portal(world, http, "POST", f"{LABOR}/contracts", {**contract, "start_date": "2026-03-01"})
    assert (status, body["error"]) == (409, "duplicate_contract")
    reversed_dates = {**contract, "position": "Auditor", "end_date": "2026-01-31"}
    status, body = await portal(world, http, "POST", f"{LABOR}/contracts", reversed_dates)
    assert (status, body["error"]) == (400, "invalid_dates")

    termination = {"date": "2026-03-31", "reason": "resignation"}
    status, body = await portal(world, http, "POST", f"{LABOR}/contracts/{contract_id}/terminate", termination)
    assert (status, body["status"], body["terminated_on"]) == (200, "terminated", "2026-03-31")
    status, body = await portal(world, http, "POST", f"{LABOR}/contracts/{contract_id}/terminate", termination)
    assert (status, body["error"]) == (409, "already_terminated")
    status, body = await portal(world, http, "GET", f"{LABOR}/employers/{s.employer_tin}/contracts?status=terminated")
    assert status == 200
    assert contract_id in [c["id"] for c in body["contracts"]]


async def test_license_application_composed_over_the_bus(world: World, http: aiohttp.ClientSession) -> None:
    """Approved when debt-free; tax and population log the licensing subsystem asking; the licence verifies.

    The providers' records carry the applicant's PIN as userId and the application id as issue.
    """
    s = world.subjects
    application = {"tin": s.clean_tin, "pin": s.applicant_pin, "activity": "pharmacy"}
    status, body = await portal(world, http, "POST", f"{LICENSES}/applications", application)
    assert status == 201, body
    assert (body["status"], body["reasons"]) == ("approved", [])
    number, application_id = body["license_number"], body["id"]

    for code in ("ss-tax", "ss-population"):
        store = world.federation.server(code).runtime.log_store
        records = await asyncio.to_thread(store.find, LogQuery(client=LICENSING_CLIENT, limit=1000))
        mine = [r for r in records if r.issue == application_id]
        assert mine != [], code
        assert {r.user_id for r in mine} == {s.applicant_pin}

    status, verified = await portal(world, http, "GET", f"{LICENSES}/licenses/{number}/verify")
    assert status == 200
    assert (verified["valid"], verified["holder_tin"], verified["activity"]) == (True, s.clean_tin, "pharmacy")
    status, held = await portal(world, http, "GET", f"{LICENSES}/licenses?tin={s.clean_tin}")
    assert status == 200
    assert number in [lic["number"] for lic in held["licenses"]]


async def test_license_application_of_a_debtor_is_rejected(world: World, http: aiohttp.ClientSession) -> None:
    """An applicant whose taxpayer has a tax debt is rejected with reason tax_debt and gets no licence."""
    s = world.subjects
    application = {"tin": s.debtor_tin, "pin": s.applicant_pin, "activity": "tourism"}
    status, body = await portal(world, http, "POST", f"{LICENSES}/applications", application)
    assert (status, body["status"], body["license_number"]) == (201, "rejected", None), body
    assert [r["code"] for r in body["reasons"]] == ["tax_debt"]
    status, stored = await portal(world, http, "GET", f"{LICENSES}/applications/{body['id']}")
    assert (status, stored["status"]) == (200, "rejected")
