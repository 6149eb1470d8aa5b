"""The ``labor`` adapter (Labor contract notification system), called directly through ``handle()``.

Pins every business rule of the ``contracts`` service: registration (201 with an id), the date order, the AZN
currency, the legal minimum wage, the employer being a registered legal-entity taxpayer (in the database, or over
the bus with the tax service), the employee's PIN existing, no overlapping duplicate, modification and
termination (and their 409s), the employee's contracts and employment reference, the employer's contracts by
status, and the OpenAPI description.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from adapters.base import AdapterContext, AdapterRequest, BusResponse, DescribedAdapter, available, create
from adapters.registries.data import SCHEMA, TABLES
from adapters.registries.db import RegistryDb
from adapters.registries.labor import MINIMUM_MONTHLY_WAGE_AZN, TAX_SERVICE, LaborRegistry
from bridge.errors import ConfigError
from bridge.identifiers import ServiceId, parse_client
from bridge.message import MessageHeader, Protocol

TODAY = dt.date(2025, 6, 1)

# A tiny registries database in the generator's schema, with rows chosen for each rule -------------------------------

PERSON_PIN = "5ZK7P2M"  # valid identity card; individual taxpayer PERSON_TIN, no debt
PERSON_PIN_2 = "7AB3C4D"  # valid identity card; once employed at EMPLOYER_TIN_2 (contract OLD_CONTRACT)
EXPIRED_PIN = "8XY2Z3W"  # identity card expired in 2024
EMPLOYER_TIN = "1000000011"  # active legal entity, no debt
EMPLOYER_TIN_2 = "1000000021"  # active legal entity, no debt
LIQUIDATED_TIN = "1000000031"  # liquidated legal entity
DEBTOR_TIN = "1000000041"  # active legal entity with a tax debt
PERSON_TIN = "1000000052"  # a natural person (PERSON_PIN)
OLD_CONTRACT = "LC-00000000A001"
LICENSE = "LIC-2025-0000A001"  # EMPLOYER_TIN's pharmacy licence, valid until 2029
EXPIRED_LICENSE = "LIC-2019-0000B007"  # EMPLOYER_TIN's expired licence

ROWS: dict[str, list[tuple[Any, ...]]] = {
    "addresses": [(1, "Bakı", "Nəsimi", "Nizami küçəsi", "10", "5", "AZ1000")],
    "persons": [
        (PERSON_PIN, "Aysel", "Məmmədova", "Elçin qızı", "1990-04-12", "female", 1),
        (PERSON_PIN_2, "Orxan", "Quliyev", "Rəşad oğlu", "1985-01-30", "male", 1),
        (EXPIRED_PIN, "Tural", "Həsənov", "Anar oğlu", "1979-09-02", "male", 1),
    ],
    "identity_documents": [
        ("AZE10000001", PERSON_PIN, "id_card", "2020-05-01", "2030-04-30"),
        ("AZE10000002", PERSON_PIN_2, "id_card", "2021-02-01", "2031-01-31"),
        ("AZE10000003", EXPIRED_PIN, "id_card", "2014-01-01", "2024-01-01"),
    ],
    "taxpayers": [
        (EMPLOYER_TIN, "legal_entity", None, "Kapital Tikinti MMC", "MMC", "2010-03-01", "active", 1),
        (EMPLOYER_TIN_2, "legal_entity", None, "Bakı Universiteti", "PHŞ", "2001-09-01", "active", 1),
        (LIQUIDATED_TIN, "legal_entity", None, "Köhnə Ticarət MMC", "MMC", "2005-01-01", "liquidated", 1),
        (DEBTOR_TIN, "legal_entity", None, "Borclu Logistika MMC", "MMC", "2015-06-01", "active", 1),
        (PERSON_TIN, "individual", PERSON_PIN, "Məmmədova Aysel Elçin qızı", None, "2012-01-01", "active", 1),
    ],
    "tax_debts": [(DEBTOR_TIN, "vat", 1_234_500, "2025-01-20")],
    "labor_contracts": [
        (
            OLD_CONTRACT,
            EMPLOYER_TIN_2,
            PERSON_PIN_2,
            "müəllim",
            "900.00",
            "AZN",
            "2015-09-01",
            None,
            "terminated",
            "2020-06-30",
            "resignation",
        ),
    ],
    "licenses": [
        (LICENSE, EMPLOYER_TIN, "pharmacy", "2025-02-01", "2030-01-31", "active", None),
        (EXPIRED_LICENSE, EMPLOYER_TIN, "alcohol_trade", "2019-03-01", "2024-02-28", "expired", None),
    ],
}


def tiny_registries_db(url: str) -> RegistryDb:
    """A registries database at ``url`` with the generator's tables and the few rows of :data:`ROWS`."""
    db = RegistryDb(url)
    with db.loader() as load:
        for statement in SCHEMA:
            load.execute(statement.replace("{wr}", "WITHOUT ROWID" if db.dialect == "sqlite" else ""))
        for table, rows in ROWS.items():
            load.insert(table, TABLES[table], rows)
    return db


def rest_request(
    code: str, method: str, path: str, query: str = "", *, body: bytes = b"", user_id: str | None = None
) -> AdapterRequest:
    """A verified REST request from the e-Gov portal, as the server proxy hands it to an adapter."""
    header = MessageHeader(
        protocol=Protocol.REST,
        client=parse_client("AZ/GOV/1000000001/portal"),
        service=ServiceId.parse(f"AZ/GOV/1400000014/contracts/{code}"),
        message_id="msg-1",
        user_id=user_id,
    )
    content_type = "application/json" if body else None
    return AdapterRequest(Protocol.REST, header, method, path, query, (), body, content_type)


@pytest.fixture
def db(db_url: str) -> RegistryDb:
    """The tiny registries database, on SQLite and (integration) on the live PostgreSQL."""
    return tiny_registries_db(db_url)


@pytest.fixture
def labor(db: RegistryDb) -> LaborRegistry:
    """The adapter over the tiny database, checking employers in the database, on a fixed day."""
    return LaborRegistry(db, today=lambda: TODAY)


def contract(**overrides: Any) -> dict[str, Any]:
    """A valid registration body, with ``overrides``."""
    body: dict[str, Any] = {
        "employer_tin": EMPLOYER_TIN,
        "employee_pin": PERSON_PIN,
        "position": "Accountant",
        "salary": 1200,
        "currency": "AZN",
        "start_date": "2024-03-01",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


async def call(adapter: LaborRegistry, method: str, path: str, body: Any = None, query: str = "") -> tuple[int, Any]:
    """``handle()`` one request; returns the status and the parsed JSON answer."""
    data = b"" if body is None else json.dumps(body).encode()
    response = await adapter.handle(rest_request("contracts", method, path, query, body=data))
    assert response.content_type == "application/json"
    return response.status, json.loads(response.body)


async def register(adapter: LaborRegistry, **overrides: Any) -> str:
    """Register a contract that must pass; returns its id."""
    status, body = await call(adapter, "POST", "/contracts", contract(**overrides))
    assert status == 201, body
    return str(body["id"])


# Registration -----------------------------------------------------------------------------------------------------


async def test_register_answers_201_with_id_and_active_status(labor: LaborRegistry) -> None:
    """A valid registration is stored and answered 201 {id, status: active}; GET returns it as registered."""
    status, body = await call(labor, "POST", "/contracts", contract(end_date="2026-02-28"))
    assert status == 201
    assert body["status"] == "active"
    assert re.fullmatch(r"LC-[0-9A-F]{12}", body["id"])
    status, stored = await call(labor, "GET", f"/contracts/{body['id']}")
    assert status == 200
    assert stored == {
        "id": body["id"],
        "employer_tin": EMPLOYER_TIN,
        "employee_pin": PERSON_PIN,
        "position": "Accountant",
        "salary": 1200.0,
        "currency": "AZN",
        "start_date": "2024-03-01",
        "end_date": "2026-02-28",
        "status": "active",
        "terminated_on": None,
        "termination_reason": None,
    }


async def test_end_before_start_is_invalid_dates(labor: LaborRegistry) -> None:
    """An end date before the start date is a 400 invalid_dates, and nothing is stored."""
    status, body = await call(labor, "POST", "/contracts", contract(start_date="2024-03-01", end_date="2024-02-29"))
    assert (status, body["error"]) == (400, "invalid_dates")
    assert (await call(labor, "GET", f"/employees/{PERSON_PIN}/contracts"))[1]["contracts"] == []


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"start_date": "2024-02-30"}, "invalid_request"),
        ({"start_date": "20240301"}, "invalid_request"),
        ({"start_date": None}, "invalid_request"),
        ({"position": "  "}, "invalid_request"),
        ({"salary": "a lot"}, "invalid_request"),
        ({"salary": True}, "invalid_request"),
        ({"salary": 1200.123}, "invalid_request"),
        ({"bonus": 5}, "invalid_request"),
        ({"currency": "USD"}, "unsupported_currency"),
        ({"employer_tin": "12AB"}, "invalid_tin"),
        ({"employee_pin": "5zk7p2m"}, "invalid_pin"),
    ],
)
async def test_malformed_registrations_are_400(labor: LaborRegistry, overrides: dict[str, Any], code: str) -> None:
    """Missing, malformed and unknown fields, and a foreign currency, are 400s naming the problem."""
    body = contract(**overrides)
    if overrides.get("start_date", "") is None:
        body.pop("start_date", None)
    status, answer = await call(labor, "POST", "/contracts", body)
    assert (status, answer["error"]) == (400, code)
    assert answer["message"] != ""


async def test_body_that_is_not_a_json_object_is_400(labor: LaborRegistry) -> None:
    """A body that is not JSON, or JSON but not an object, is 400 invalid_request."""
    response = await labor.handle(rest_request("contracts", "POST", "/contracts", body=b"{not json"))
    assert (response.status, json.loads(response.body)["error"]) == (400, "invalid_request")
    assert (await call(labor, "POST", "/contracts", [1, 2]))[0] == 400


async def test_salary_below_legal_minimum_is_refused(labor: LaborRegistry) -> None:
    """A salary under 345 AZN is 422 salary_below_minimum; exactly the minimum passes."""
    assert Decimal("345") == MINIMUM_MONTHLY_WAGE_AZN
    status, body = await call(labor, "POST", "/contracts", contract(salary=344.99))
    assert (status, body["error"]) == (422, "salary_below_minimum")
    await register(labor, salary="345")


async def test_employer_must_be_an_active_legal_entity(labor: LaborRegistry) -> None:
    """422 for an unknown TIN, a natural person's TIN, and a liquidated legal entity, each with its own code."""
    status, body = await call(labor, "POST", "/contracts", contract(employer_tin="9999999999"))
    assert (status, body["error"]) == (422, "employer_not_registered")
    status, body = await call(labor, "POST", "/contracts", contract(employer_tin=PERSON_TIN))
    assert (status, body["error"]) == (422, "employer_not_legal_entity")
    status, body = await call(labor, "POST", "/contracts", contract(employer_tin=LIQUIDATED_TIN))
    assert (status, body["error"]) == (422, "employer_not_active")


async def test_employee_pin_must_exist(labor: LaborRegistry) -> None:
    """A PIN unknown to the population register is 422 unknown_employee."""
    status, body = await call(labor, "POST", "/contracts", contract(employee_pin="ZZZZZZZ"))
    assert (status, body["error"]) == (422, "unknown_employee")


async def test_overlapping_duplicate_is_409(labor: LaborRegistry) -> None:
    """Same employer, employee and position overlapping in time is 409; another position or period is not."""
    first = await register(labor, start_date="2024-03-01", end_date="2024-12-31")
    status, body = await call(labor, "POST", "/contracts", contract(start_date="2024-12-31"))
    assert (status, body["error"]) == (409, "duplicate_contract")
    assert first in body["message"]
    status, body = await call(labor, "POST", "/contracts", contract(position="ACCOUNTANT", start_date="2024-06-01"))
    assert (status, body["error"]) == (409, "duplicate_contract")  # positions compare case-insensitively
    await register(labor, start_date="2025-01-01")  # after the first one ended
    await register(labor, position="Auditor", start_date="2024-06-01", end_date="2024-08-31")
    await register(labor, employer_tin=EMPLOYER_TIN_2, start_date="2024-06-01")


# Modification and termination -------------------------------------------------------------------------------------


async def test_modify_salary_position_and_end_date(labor: LaborRegistry) -> None:
    """PUT changes salary, position and end date of an active contract; the answer is the updated contract."""
    contract_id = await register(labor)
    status, body = await call(
        labor, "PUT", f"/contracts/{contract_id}", {"salary": "1500.50", "position": "Chief accountant"}
    )
    assert status == 200
    assert (body["salary"], body["position"], body["end_date"]) == (1500.5, "Chief accountant", None)
    status, body = await call(labor, "PUT", f"/contracts/{contract_id}", {"end_date": "2025-12-31"})
    assert (status, body["end_date"], body["salary"]) == (200, "2025-12-31", 1500.5)
    status, body = await call(labor, "PUT", f"/contracts/{contract_id}", {"end_date": None})
    assert (status, body["end_date"]) == (200, None)


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"end_date": "2024-01-01"}, 400, "invalid_dates"),
        ({"salary": 100}, 422, "salary_below_minimum"),
        ({}, 400, "invalid_request"),
        ({"employer_tin": EMPLOYER_TIN_2}, 400, "invalid_request"),
    ],
)
async def test_modify_checks_the_same_rules(
    labor: LaborRegistry, change: dict[str, Any], status: int, code: str
) -> None:
    """A modification obeys the registration rules; fields other than salary/position/end_date are refused."""
    contract_id = await register(labor)
    answer = await call(labor, "PUT", f"/contracts/{contract_id}", change)
    assert (answer[0], answer[1]["error"]) == (status, code)
    assert (await call(labor, "GET", f"/contracts/{contract_id}"))[1]["salary"] == 1200.0  # unchanged


async def test_modify_into_a_duplicate_is_409(labor: LaborRegistry) -> None:
    """Renaming a position so that it duplicates another contract in force is 409 duplicate_contract."""
    await register(labor, position="Accountant")
    other = await register(labor, position="Auditor")
    status, body = await call(labor, "PUT", f"/contracts/{other}", {"position": "Accountant"})
    assert (status, body["error"]) == (409, "duplicate_contract")


async def test_terminate_then_terminate_again_is_409(labor: LaborRegistry) -> None:
    """Termination records date and reason; a second termination is 409, and so is modifying it."""
    contract_id = await register(labor)
    status, body = await call(
        labor, "POST", f"/contracts/{contract_id}/terminate", {"date": "2025-05-31", "reason": "resignation"}
    )
    assert (status, body["status"], body["terminated_on"]) == (200, "terminated", "2025-05-31")
    assert body["termination_reason"] == "resignation"
    status, body = await call(
        labor, "POST", f"/contracts/{contract_id}/terminate", {"date": "2025-06-01", "reason": "again"}
    )
    assert (status, body["error"]) == (409, "already_terminated")
    status, body = await call(labor, "PUT", f"/contracts/{contract_id}", {"salary": 2000})
    assert (status, body["error"]) == (409, "contract_terminated")


async def test_terminate_before_start_and_unknown_contract(labor: LaborRegistry) -> None:
    """A termination date outside the contract is 400 invalid_dates; unknown ids are 404 contract_not_found."""
    contract_id = await register(labor, start_date="2025-01-01", end_date="2025-12-31")
    for day in ("2024-12-31", "2026-01-01"):
        status, body = await call(labor, "POST", f"/contracts/{contract_id}/terminate", {"date": day, "reason": "x"})
        assert (status, body["error"]) == (400, "invalid_dates")
    for path in ("/contracts/LC-FFFFFFFFFFFF", "/contracts/LC-NOPE", "/contracts/'; DROP TABLE x"):
        status, body = await call(labor, "GET", path)
        assert (status, body["error"]) == (404, "contract_not_found")
    status, body = await call(labor, "POST", "/contracts/LC-NOPE/terminate", {"date": "2025-01-01", "reason": "x"})
    assert (status, body["error"]) == (404, "contract_not_found")


async def test_termination_frees_the_period_for_a_new_contract(labor: LaborRegistry) -> None:
    """After termination the same job may be registered again from the day after."""
    contract_id = await register(labor, start_date="2024-01-01")
    await call(labor, "POST", f"/contracts/{contract_id}/terminate", {"date": "2024-12-31", "reason": "restructuring"})
    status, body = await call(labor, "POST", "/contracts", contract(start_date="2024-12-31"))
    assert (status, body["error"]) == (409, "duplicate_contract")
    await register(labor, start_date="2025-01-01")


# Reads ------------------------------------------------------------------------------------------------------------


async def test_employee_contracts_and_reference(labor: LaborRegistry) -> None:
    """The employee's list holds contracts not ended; the reference lists those in force today with the total."""
    main = await register(labor, salary=1200, start_date="2023-09-01")
    side = await register(
        labor, employer_tin=EMPLOYER_TIN_2, position="Lecturer", salary="450.5", start_date="2025-01-15"
    )
    future = await register(labor, employer_tin=EMPLOYER_TIN_2, position="Dean", start_date="2025-09-01")
    ended = await register(labor, position="Intern", start_date="2022-01-01", end_date="2022-06-30")
    assert ended not in (main, side, future)
    gone = await register(labor, position="Cashier", start_date="2024-01-01")
    await call(labor, "POST", f"/contracts/{gone}/terminate", {"date": "2024-12-31", "reason": "dismissal"})

    status, body = await call(labor, "GET", f"/employees/{PERSON_PIN}/contracts")
    assert status == 200
    assert [c["id"] for c in body["contracts"]] == [main, side, future]
    assert ended not in [c["id"] for c in body["contracts"]]

    status, reference = await call(labor, "GET", f"/employees/{PERSON_PIN}/reference")
    assert status == 200
    assert reference["as_of"] == "2025-06-01"
    assert reference["employed"] is True
    assert reference["employments"] == [
        {
            "contract_id": main,
            "employer_tin": EMPLOYER_TIN,
            "employer_name": "Kapital Tikinti MMC",
            "position": "Accountant",
            "monthly_salary": 1200.0,
            "currency": "AZN",
            "since": "2023-09-01",
            "until": None,
        },
        {
            "contract_id": side,
            "employer_tin": EMPLOYER_TIN_2,
            "employer_name": "Bakı Universiteti",
            "position": "Lecturer",
            "monthly_salary": 450.5,
            "currency": "AZN",
            "since": "2025-01-15",
            "until": None,
        },
    ]
    assert (reference["total_monthly_salary"], reference["currency"]) == (1650.5, "AZN")


async def test_reference_of_unemployed_and_unknown_person(labor: LaborRegistry) -> None:
    """A known person without contracts is employed: false; an unknown PIN is 404 person_not_found."""
    status, body = await call(labor, "GET", f"/employees/{PERSON_PIN_2}/reference")
    assert (status, body["employed"], body["employments"], body["total_monthly_salary"]) == (200, False, [], 0.0)
    for path in ("/employees/NOBODY1/reference", "/employees/NOBODY1/contracts"):
        status, body = await call(labor, "GET", path)
        assert (status, body["error"]) == (404, "person_not_found")


async def test_employer_contracts_by_status(labor: LaborRegistry) -> None:
    """The employer's contracts filter by ?status= (active by default); a bad status is 400, unknown TIN 404."""
    active = await register(labor)
    gone = await register(labor, employee_pin=PERSON_PIN_2, start_date="2024-01-01")
    await call(labor, "POST", f"/contracts/{gone}/terminate", {"date": "2025-01-31", "reason": "end of project"})
    lists = {}
    for query in ("", "status=active", "status=terminated", "status=all"):
        status, body = await call(labor, "GET", f"/employers/{EMPLOYER_TIN}/contracts", query=query)
        assert status == 200
        lists[query] = [c["id"] for c in body["contracts"]]
    assert lists == {"": [active], "status=active": [active], "status=terminated": [gone], "status=all": [gone, active]}
    status, body = await call(labor, "GET", f"/employers/{EMPLOYER_TIN}/contracts", query="status=maybe")
    assert (status, body["error"]) == (400, "invalid_request")
    status, body = await call(labor, "GET", "/employers/0000000000/contracts")
    assert (status, body["error"]) == (404, "taxpayer_not_found")


async def test_unknown_paths_and_methods(labor: LaborRegistry) -> None:
    """Unknown resources are 404 not_found; a known resource with the wrong method is 405."""
    assert (await call(labor, "GET", "/salaries"))[1]["error"] == "not_found"
    status, body = await call(labor, "DELETE", "/contracts")
    assert (status, body["error"]) == (405, "method_not_allowed")


# Employer check over the bus ---------------------------------------------------------------------------------------


class FakeTax:
    """A BusClient standing in for the tax service: answers ``GET /taxpayers/{tin}`` from a table."""

    def __init__(self, taxpayers: Mapping[str, str], *, error: str | None = None, fail: bool = False) -> None:
        self.taxpayers = taxpayers
        self.error = error
        self.fail = fail
        self.calls: list[tuple[str, str, str, str | None]] = []

    async def rest(
        self,
        service: str,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        json_body: Any = None,
        user_id: str | None = None,
        issue: str | None = None,
    ) -> BusResponse:
        """Answer like the tax service would (or fail like the bus would)."""
        self.calls.append((service, method, path, user_id))
        if self.fail:
            raise ConnectionError("no route")
        if self.error is not None:
            return BusResponse(500, b'{"type": "x"}', self.error)
        tin = path.rsplit("/", 1)[-1]
        if tin not in self.taxpayers:
            return BusResponse(404, b'{"error": "taxpayer_not_found", "message": "no"}')
        return BusResponse(200, json.dumps({"tin": tin, "type": self.taxpayers[tin], "status": "active"}).encode())


async def test_employer_check_over_the_bus(db: RegistryDb) -> None:
    """With employer_check bus, the tax service decides: legal entity passes, others are 422, failures 503."""
    tax = FakeTax({EMPLOYER_TIN: "legal_entity", PERSON_TIN: "individual"})
    labor = LaborRegistry(db, bus=tax, tax_service=TAX_SERVICE, today=lambda: TODAY)
    await register(labor)
    assert tax.calls == [(TAX_SERVICE, "GET", f"/taxpayers/{EMPLOYER_TIN}", None)]
    assert (await call(labor, "POST", "/contracts", contract(employer_tin=PERSON_TIN)))[1]["error"] == (
        "employer_not_legal_entity"
    )
    assert (await call(labor, "POST", "/contracts", contract(employer_tin="1111111111")))[1]["error"] == (
        "employer_not_registered"
    )
    for broken in (FakeTax({}, error="Server.ServerProxy.AccessDenied"), FakeTax({}, fail=True)):
        labor = LaborRegistry(db, bus=broken, tax_service=TAX_SERVICE, today=lambda: TODAY)
        status, body = await call(labor, "POST", "/contracts", contract(position="Other"))
        assert (status, body["error"]) == (503, "registry_unavailable")


# Factory and description ------------------------------------------------------------------------------------------


def test_factory_options_and_description(db: RegistryDb, tmp_path: Path) -> None:
    """``labor`` is registered; it needs a database, describes ``contracts`` in OpenAPI, and bus mode needs a bus."""
    assert "labor" in available()
    adapter = create("labor", AdapterContext(options={"database": db.url}, state_dir=tmp_path))
    assert isinstance(adapter, DescribedAdapter)
    (description,) = adapter.describe()
    assert (description.code, description.type) == ("contracts", "REST")
    assert description.document is not None
    document = json.loads(description.document)
    assert document["openapi"] == "3.0.3"
    assert set(document["paths"]) == {
        "/contracts",
        "/contracts/{id}",
        "/contracts/{id}/terminate",
        "/employees/{pin}/contracts",
        "/employees/{pin}/reference",
        "/employers/{tin}/contracts",
    }
    with pytest.raises(ConfigError, match="database"):
        create("labor", AdapterContext(options={}))
    with pytest.raises(ConfigError, match="bus_client"):
        create("labor", AdapterContext(options={"database": db.url, "employer_check": "bus"}))
    with pytest.raises(ConfigError, match="employer_check"):
        create("labor", AdapterContext(options={"database": db.url, "employer_check": "guess"}))
