"""The ``licensing`` adapter (E-license and permits), called through ``handle()`` with a fake bus.

Pins the composed decision: the adapter asks tax (debt) and population (person, identity document) over the bus
with the applicant's PIN as userId and the application id as issue; a debt, an unknown taxpayer or person, an
expired identity document reject; a refused or failed bus call leaves the application ``pending`` (503 with
Retry-After) until a retry decides it; approval issues a licence that ``verify`` and ``/licenses?tin=`` show.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from adapters.base import AdapterContext, BusResponse, DescribedAdapter, available, create
from adapters.registries.db import RegistryDb
from adapters.registries.licensing import POPULATION_SERVICE, TAX_SERVICE, LicensingRegistry
from bridge.errors import ConfigError, UpstreamUnavailable
from tests.adapters.test_labor import (
    DEBTOR_TIN,
    EMPLOYER_TIN,
    EXPIRED_LICENSE,
    EXPIRED_PIN,
    LICENSE,
    PERSON_PIN,
    rest_request,
    tiny_registries_db,
)

TODAY = dt.date(2026, 4, 1)


class FakeBus:
    """Stands in for tax and population over the bus, answering from the tiny database's facts.

    ``refuse`` maps a service to the X-Road error the bus returns for it; ``unreachable`` services raise.
    """

    def __init__(self, *, refuse: Mapping[str, str] | None = None, unreachable: tuple[str, ...] = ()) -> None:
        self.refuse = dict(refuse or {})
        self.unreachable = unreachable
        self.calls: list[dict[str, Any]] = []

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
        """Answer like the tax service and the population register would."""
        self.calls.append({"service": service, "method": method, "path": path, "user_id": user_id, "issue": issue})
        if service in self.unreachable:
            raise UpstreamUnavailable("cannot reach this server's client proxy")
        if service in self.refuse:
            error = self.refuse[service]
            return BusResponse(500, json.dumps({"type": error, "message": "refused"}).encode(), error)
        key = path.split("/")[2]
        if service == TAX_SERVICE:
            if key not in (EMPLOYER_TIN, DEBTOR_TIN):
                return BusResponse(404, b'{"error": "taxpayer_not_found", "message": "no such taxpayer"}')
            debt = key == DEBTOR_TIN
            return BusResponse(
                200, json.dumps({"tin": key, "has_debt": debt, "amount": "12345.00" if debt else "0.00"}).encode()
            )
        if service == POPULATION_SERVICE:
            if key not in (PERSON_PIN, EXPIRED_PIN):
                return BusResponse(404, b'{"error": "person_not_found", "message": "no such person"}')
            expires = "2024-01-01" if key == EXPIRED_PIN else "2030-04-30"
            person = {"pin": key, "documents": [{"type": "id_card", "number": "AZE10000001", "expires": expires}]}
            return BusResponse(200, json.dumps(person).encode())
        return BusResponse(404, b"{}", "Server.ServerProxy.UnknownService")


@pytest.fixture
def db(db_url: str) -> RegistryDb:
    """The tiny registries database (see tests/adapters/test_labor.py), on SQLite and on the live PostgreSQL."""
    return tiny_registries_db(db_url)


def licensing(db: RegistryDb, bus: FakeBus) -> LicensingRegistry:
    """The adapter over ``db`` and ``bus`` on a fixed day."""
    return LicensingRegistry(db, bus, today=lambda: TODAY)


async def call(
    adapter: LicensingRegistry, method: str, path: str, body: Any = None, query: str = ""
) -> tuple[int, Any, dict[str, str]]:
    """``handle()`` one request; returns status, parsed JSON and headers."""
    data = b"" if body is None else json.dumps(body).encode()
    response = await adapter.handle(rest_request("licenses", method, path, query, body=data))
    return response.status, json.loads(response.body), dict(response.headers)


def application(**overrides: Any) -> dict[str, Any]:
    """A valid application body."""
    return {"tin": EMPLOYER_TIN, "pin": PERSON_PIN, "activity": "pharmacy", **overrides}


async def test_debt_free_applicant_is_approved_with_a_license(db: RegistryDb) -> None:
    """No debt and a valid identity card: 201 approved with a new licence, asked with PIN as userId, id as issue."""
    bus = FakeBus()
    adapter = licensing(db, bus)
    status, body, _ = await call(adapter, "POST", "/applications", application(activity="tourism"))
    assert status == 201
    assert (body["status"], body["reasons"]) == ("approved", [])
    assert re.fullmatch(r"APP-[0-9A-F]{12}", body["id"])
    assert re.fullmatch(r"LIC-2026-[0-9A-F]{8}", body["license_number"])
    assert sorted((c["service"], c["path"]) for c in bus.calls) == [
        (POPULATION_SERVICE, f"/persons/{PERSON_PIN}"),
        (TAX_SERVICE, f"/taxpayers/{EMPLOYER_TIN}/debt"),
    ]
    assert {(c["method"], c["user_id"], c["issue"]) for c in bus.calls} == {("GET", PERSON_PIN, body["id"])}

    status, verified, _ = await call(adapter, "GET", f"/licenses/{body['license_number']}/verify")
    assert status == 200
    assert verified == {
        "valid": True,
        "number": body["license_number"],
        "holder_tin": EMPLOYER_TIN,
        "activity": "tourism",
        "issued": "2026-04-01",
        "expires": "2031-03-31",
        "status": "active",
    }
    status, stored, _ = await call(adapter, "GET", f"/applications/{body['id']}")
    assert status == 200
    assert (stored["status"], stored["license_number"], stored["pin"], stored["activity"]) == (
        "approved",
        body["license_number"],
        PERSON_PIN,
        "tourism",
    )
    assert stored["decided_at"] is not None


@pytest.mark.parametrize(
    ("overrides", "codes"),
    [
        ({"tin": DEBTOR_TIN}, ["tax_debt"]),
        ({"tin": "9999999991"}, ["taxpayer_not_found"]),
        ({"pin": "NOBODY7"}, ["person_not_found"]),
        ({"pin": EXPIRED_PIN}, ["id_document_expired"]),
        ({"tin": DEBTOR_TIN, "pin": EXPIRED_PIN}, ["tax_debt", "id_document_expired"]),
    ],
)
async def test_rejections(db: RegistryDb, overrides: dict[str, Any], codes: list[str]) -> None:
    """Tax debt, unknown taxpayer or person, expired identity document: 201 rejected with every reason, no licence."""
    adapter = licensing(db, FakeBus())
    status, body, _ = await call(adapter, "POST", "/applications", application(**overrides))
    assert (status, body["status"], body["license_number"]) == (201, "rejected", None)
    assert [r["code"] for r in body["reasons"]] == codes
    assert all(r["message"] for r in body["reasons"])
    status, stored, _ = await call(adapter, "GET", f"/applications/{body['id']}")
    assert (status, stored["status"], stored["reasons"]) == (200, "rejected", body["reasons"])


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        ({"refuse": {TAX_SERVICE: "Server.ServerProxy.AccessDenied"}}, "tax_unavailable"),
        ({"unreachable": (POPULATION_SERVICE,)}, "population_unavailable"),
    ],
)
async def test_bus_failure_leaves_the_application_pending(db: RegistryDb, failure: dict[str, Any], code: str) -> None:
    """A refused or failed bus call: the application is stored pending, answered 503 with Retry-After."""
    bus = FakeBus(**failure)
    adapter = licensing(db, bus)
    status, body, headers = await call(adapter, "POST", "/applications", application())
    assert (status, body["error"], body["status"], body["license_number"]) == (
        503,
        "registry_unavailable",
        "pending",
        None,
    )
    assert [r["code"] for r in body["reasons"]] == [code]
    assert headers["Retry-After"] == "60"
    status, stored, _ = await call(adapter, "GET", f"/applications/{body['id']}")
    assert (status, stored["status"], stored["decided_at"]) == (200, "pending", None)

    # Once the registries answer again, a retry decides it; a second retry is 409.
    bus.refuse.clear()
    bus.unreachable = ()
    status, decided, _ = await call(adapter, "POST", f"/applications/{body['id']}/retry")
    assert (status, decided["status"], decided["reasons"]) == (200, "approved", [])
    assert decided["license_number"] is not None
    status, again, _ = await call(adapter, "POST", f"/applications/{body['id']}/retry")
    assert (status, again["error"]) == (409, "already_decided")


async def test_definite_rejection_wins_over_an_unavailable_registry(db: RegistryDb) -> None:
    """A tax debt rejects even when population cannot be asked: no reason to keep the applicant waiting."""
    adapter = licensing(db, FakeBus(unreachable=(POPULATION_SERVICE,)))
    status, body, _ = await call(adapter, "POST", "/applications", application(tin=DEBTOR_TIN))
    assert (status, body["status"], [r["code"] for r in body["reasons"]]) == (201, "rejected", ["tax_debt"])


class RefusingPopulation(FakeBus):
    """A population register that refuses the lookup as a business error of its own (400 invalid_pin)."""

    async def rest(self, service: str, method: str, path: str, **kwargs: Any) -> BusResponse:
        """Refuse population lookups; answer tax as usual."""
        if service == POPULATION_SERVICE:
            return BusResponse(400, b'{"error": "invalid_pin", "message": "a PIN is seven characters"}')
        return await super().rest(service, method, path, **kwargs)


async def test_a_registry_business_refusal_rejects(db: RegistryDb) -> None:
    """A provider's own 4xx business error (not the bus's) is a definite rejection carrying its code."""
    status, body, _ = await call(licensing(db, RefusingPopulation()), "POST", "/applications", application())
    assert (status, body["status"], body["reasons"]) == (
        201,
        "rejected",
        [{"code": "invalid_pin", "message": "a PIN is seven characters"}],
    )


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"tin": EMPLOYER_TIN, "pin": PERSON_PIN}, 400, "invalid_request"),
        (application(extra=1), 400, "invalid_request"),
        (application(tin=""), 400, "invalid_request"),
        (application(activity="space_tourism"), 422, "unknown_activity"),
        (application(tin="12345"), 400, "invalid_tin"),
        (application(pin="5zk7p2m"), 400, "invalid_pin"),
    ],
)
async def test_invalid_applications_ask_nobody(db: RegistryDb, body: dict[str, Any], status: int, code: str) -> None:
    """Malformed applications and unknown activities are refused before anything is asked over the bus."""
    bus = FakeBus()
    answer = await call(licensing(db, bus), "POST", "/applications", body)
    assert (answer[0], answer[1]["error"]) == (status, code)
    assert bus.calls == []


async def test_licenses_of_a_holder_and_verification(db: RegistryDb) -> None:
    """/licenses?tin= lists the holder's licences with validity; verify says invalid for an expired one."""
    adapter = licensing(db, FakeBus())
    status, body, _ = await call(adapter, "GET", "/licenses", query=f"tin={EMPLOYER_TIN}")
    assert status == 200
    assert [(lic["number"], lic["valid"]) for lic in body["licenses"]] == [(EXPIRED_LICENSE, False), (LICENSE, True)]
    status, verified, _ = await call(adapter, "GET", f"/licenses/{EXPIRED_LICENSE}/verify")
    assert (status, verified["valid"], verified["status"], verified["expires"]) == (200, False, "expired", "2024-02-28")
    for number in ("LIC-2026-FFFFFFFF", "LIC-1' OR '1'='1"):
        status, missing, _ = await call(adapter, "GET", f"/licenses/{number}/verify")
        assert (status, missing["error"]) == (404, "license_not_found")
    status, body, _ = await call(adapter, "GET", "/licenses")
    assert (status, body["error"]) == (400, "invalid_request")
    status, body, _ = await call(adapter, "GET", "/applications/APP-000000000000")
    assert (status, body["error"]) == (404, "application_not_found")
    status, body, _ = await call(adapter, "DELETE", "/licenses")
    assert (status, body["error"]) == (405, "method_not_allowed")


def test_factory_options_and_description(db: RegistryDb, tmp_path: Path) -> None:
    """``licensing`` is registered, needs a database and a bus client, and describes ``licenses`` in OpenAPI."""
    assert "licensing" in available()
    adapter = create("licensing", AdapterContext(options={"database": db.url}, state_dir=tmp_path, bus=FakeBus()))
    assert isinstance(adapter, DescribedAdapter)
    (description,) = adapter.describe()
    assert (description.code, description.type) == ("licenses", "REST")
    assert description.document is not None
    assert set(json.loads(description.document)["paths"]) == {
        "/applications",
        "/applications/{id}",
        "/applications/{id}/retry",
        "/licenses",
        "/licenses/{number}/verify",
    }
    with pytest.raises(ConfigError, match="bus_client"):
        create("licensing", AdapterContext(options={"database": db.url}))
    with pytest.raises(ConfigError, match="database"):
        create("licensing", AdapterContext(options={}, bus=FakeBus()))
    with pytest.raises(ConfigError, match="today"):
        create("licensing", AdapterContext(options={"database": db.url, "today": "soon"}, bus=FakeBus()))
