"""The ``tax`` adapter (E-Tax), called directly through ``handle()`` on generated data.

Pins REST ``taxpayers``: a natural person and a legal entity by TIN, PIN → TIN, the tax-debt reference (a "no
tax debt" one and one stating a debt, each with a fresh ``NDR-…`` number and its issue time), declared income by
year and all years; business errors (400 ``invalid_tin`` / ``invalid_pin`` / ``invalid_year`` /
``invalid_request``, 404 ``not_found``, 405); the OpenAPI description, on SQLite and (integration) PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest

from adapters.base import AdapterContext, AdapterRequest, DescribedAdapter, create
from adapters.registries.data import generate
from adapters.registries.db import RegistryDb
from adapters.registries.tax import TaxService, openapi
from tests.adapters.support import bank_rest, query

NOW = dt.datetime(2026, 4, 2, 9, 30, tzinfo=dt.UTC)


@pytest.fixture
def tax(db_path: Path) -> TaxService:
    """The adapter over the small database, with a fixed clock."""
    return TaxService(RegistryDb(f"sqlite:///{db_path}"), now=lambda: NOW)


def rest(path: str, query_string: str = "", method: str = "GET") -> AdapterRequest:
    return bank_rest("AZ/GOV/1300000013/etax/taxpayers", path, query_string, method)


async def get(tax: TaxService, path: str, query_string: str = "") -> tuple[int, Any]:
    answer = await tax.handle(rest(path, query_string))
    assert answer.content_type == "application/json"
    return answer.status, json.loads(answer.body)


async def test_individual_taxpayer_and_pin_to_tin(tax: TaxService, db_path: Path) -> None:
    """A person's taxpayer record by TIN and by PIN are the same; it names the person and carries the PIN."""
    tin, pin, name = query(
        db_path, "SELECT tin, pin, name FROM taxpayers WHERE type = 'individual' ORDER BY tin LIMIT 1"
    )[0]
    status, by_tin = await get(tax, f"/taxpayers/{tin}")
    assert status == 200
    assert by_tin["tin"] == tin
    assert by_tin["type"] == "individual"
    assert by_tin["pin"] == pin
    assert by_tin["name"] == name
    assert by_tin["legal_form"] is None
    assert set(by_tin["address"]) == {"city", "district", "street", "building", "apartment", "postal_code"}
    status, by_pin = await get(tax, "/taxpayers", f"pin={pin}")
    assert status == 200
    assert by_pin == by_tin
    first, last = query(db_path, "SELECT first_name, last_name FROM persons WHERE pin = ?", (pin,))[0]
    assert name.startswith(f"{last} {first} ")


async def test_legal_entity(tax: TaxService, db_path: Path) -> None:
    """A legal entity (an employer) has no PIN, a legal form, and the employers table's name."""
    tin, name = query(db_path, "SELECT tin, name FROM employers ORDER BY tin LIMIT 1")[0]
    status, taxpayer = await get(tax, f"/taxpayers/{tin}")
    assert status == 200
    assert taxpayer["type"] == "legal_entity"
    assert taxpayer["pin"] is None
    assert taxpayer["name"] == name
    assert taxpayer["legal_form"] in ("MMC", "ASC", "QSC", "PHŞ")
    assert tin.endswith("1")


async def test_no_tax_debt_reference(tax: TaxService, db_path: Path) -> None:
    """A taxpayer without debts gets a "no tax debt" reference: has_debt false, amount 0, NDR number, time."""
    tin = query(db_path, "SELECT tin FROM taxpayers WHERE tin NOT IN (SELECT tin FROM tax_debts) ORDER BY tin LIMIT 1")[
        0
    ][0]
    status, first = await get(tax, f"/taxpayers/{tin}/debt")
    assert status == 200
    assert first["tin"] == tin
    assert first["has_debt"] is False
    assert first["amount"] == 0
    assert first["currency"] == "AZN"
    assert first["debts"] == []
    assert re.fullmatch(r"NDR-20260402-[0-9A-F]{10}", first["reference"])
    assert first["issued_at"] == "2026-04-02T09:30:00Z"
    _, second = await get(tax, f"/taxpayers/{tin}/debt")
    assert second["reference"] != first["reference"]  # every reference issued is a new one


async def test_debt_reference_states_the_debt(tax: TaxService, db_path: Path) -> None:
    """A debtor's reference sums the outstanding debts (qəpik → AZN) and lists them by tax type."""
    tin = query(db_path, "SELECT tin FROM tax_debts GROUP BY tin HAVING count(*) = 2 ORDER BY tin LIMIT 1")[0][0]
    debts = query(
        db_path, "SELECT tax_type, amount_qepik, since FROM tax_debts WHERE tin = ? ORDER BY tax_type", (tin,)
    )
    status, reference = await get(tax, f"/taxpayers/{tin}/debt")
    assert status == 200
    assert reference["has_debt"] is True
    assert reference["amount"] == round(sum(d[1] for d in debts) / 100, 2)
    assert reference["debts"] == [{"tax_type": t, "amount": round(a / 100, 2), "since": s} for t, a, s in debts]


async def test_income_by_year_and_all_years(tax: TaxService, db_path: Path) -> None:
    """Declared income for one year, and every declaration when no year is given."""
    tin = query(db_path, "SELECT tin FROM income_declarations WHERE year = 2025 ORDER BY tin LIMIT 1")[0][0]
    rows = query(
        db_path,
        "SELECT year, income_qepik, tax_qepik, declared_on FROM income_declarations WHERE tin = ? ORDER BY year",
        (tin,),
    )
    year, income, tax_due, declared_on = next(r for r in rows if r[0] == 2025)
    status, answer = await get(tax, f"/taxpayers/{tin}/income", "year=2025")
    assert status == 200
    assert answer == {
        "tin": tin,
        "year": 2025,
        "income": round(income / 100, 2),
        "tax": round(tax_due / 100, 2),
        "declared_on": declared_on,
        "currency": "AZN",
    }
    status, everything = await get(tax, f"/taxpayers/{tin}/income")
    assert status == 200
    assert [d["year"] for d in everything["declarations"]] == [r[0] for r in rows]
    del year


@pytest.mark.parametrize(
    ("path", "query_string", "status", "code"),
    [
        ("/taxpayers/12345", "", 400, "invalid_tin"),
        ("/taxpayers/12345678901", "", 400, "invalid_tin"),
        ("/taxpayers/ABCDEFGHIJ/debt", "", 400, "invalid_tin"),
        ("/taxpayers", "pin=abc", 400, "invalid_pin"),
        ("/taxpayers", "", 400, "invalid_request"),
        ("/taxpayers/1000000001/income", "year=last", 400, "invalid_year"),
        ("/taxpayers/1000000001/income", "year=1850", 400, "invalid_year"),
        ("/taxpayers/0000000001", "", 404, "not_found"),
        ("/taxpayers/0000000001/debt", "", 404, "not_found"),
        ("/taxpayers/0000000001/income", "year=2025", 404, "not_found"),
        ("/taxpayers", "pin=ZZZZZZZ", 404, "not_found"),
        ("/taxpayers/0000000001/salary", "", 404, "not_found"),
        ("/persons/0000000001", "", 404, "not_found"),
    ],
)
async def test_business_errors(tax: TaxService, path: str, query_string: str, status: int, code: str) -> None:
    """Bad input and unknown taxpayers are JSON business errors with their status, never exceptions."""
    got, error = await get(tax, path, query_string)
    assert got == status
    assert error["error"] == code
    assert error["message"] != ""


async def test_year_without_declaration_is_not_found(tax: TaxService, db_path: Path) -> None:
    """A known taxpayer without a declaration for that year: 404 not_found naming the year."""
    tin = query(db_path, "SELECT tin FROM taxpayers ORDER BY tin LIMIT 1")[0][0]
    status, error = await get(tax, f"/taxpayers/{tin}/income", "year=2001")
    assert status == 404
    assert error["error"] == "not_found"
    assert "2001" in error["message"]


async def test_other_methods_are_refused(tax: TaxService) -> None:
    """The service is read-only: POST answers 405 method_not_allowed."""
    answer = await tax.handle(rest("/taxpayers/1000000001", method="POST"))
    assert answer.status == 405
    assert json.loads(answer.body)["error"] == "method_not_allowed"


def test_describe() -> None:
    """describe() gives REST taxpayers with its OpenAPI 3 document (four paths)."""
    adapter = create("tax", AdapterContext(options={"database": "sqlite:///unused.db"}))
    assert isinstance(adapter, DescribedAdapter)
    (description,) = adapter.describe()
    assert (description.code, description.type) == ("taxpayers", "REST")
    assert description.document is not None
    document = json.loads(description.document)
    assert document == openapi()
    assert set(document["paths"]) == {
        "/taxpayers",
        "/taxpayers/{tin}",
        "/taxpayers/{tin}/debt",
        "/taxpayers/{tin}/income",
    }


@pytest.mark.integration
async def test_on_postgresql(pg_url: str, db_path: Path) -> None:
    """The same answers from the same data on PostgreSQL."""
    generate(pg_url, scale="small")
    on_pg = TaxService(RegistryDb(pg_url), now=lambda: NOW)
    on_sqlite = TaxService(RegistryDb(f"sqlite:///{db_path}"), now=lambda: NOW)
    tin, pin = query(db_path, "SELECT tin, pin FROM taxpayers WHERE pin IS NOT NULL ORDER BY tin LIMIT 1")[0]
    for path, query_string in (
        (f"/taxpayers/{tin}", ""),
        ("/taxpayers", f"pin={pin}"),
        (f"/taxpayers/{tin}/income", ""),
    ):
        assert await get(on_pg, path, query_string) == await get(on_sqlite, path, query_string)
    status, debt = await get(on_pg, f"/taxpayers/{tin}/debt")
    assert status == 200
    assert debt["tin"] == tin
