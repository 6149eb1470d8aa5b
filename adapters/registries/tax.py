"""E-Tax: taxpayers, PIN→TIN, the "no tax debt" reference and declared income, over REST.

The State Tax Service's registry (member ``AZ/GOV/1300000013``, subsystem ``etax``) as an adapter named ``tax``,
reading the ``taxpayers``, ``addresses``, ``tax_debts`` and ``income_declarations`` tables of the registries
database (option ``database``; relative SQLite paths resolve against the state directory).

REST service ``taxpayers``:

=======  ======================================  ==============================================================
method   path                                    answer
=======  ======================================  ==============================================================
GET      ``/taxpayers/{tin}``                    the taxpayer (below)
GET      ``/taxpayers?pin=PIN``                  the taxpayer registered for that person (PIN → TIN)
GET      ``/taxpayers/{tin}/debt``               ``{tin, has_debt, amount, currency, debts: [{tax_type, amount,
                                                 since}], reference: "NDR-…", issued_at}``
GET      ``/taxpayers/{tin}/income?year=2025``   ``{tin, year, income, tax, currency, declared_on}``; without
                                                 ``year``: ``{tin, currency, declarations: [...]}``
=======  ======================================  ==============================================================

A taxpayer is ``{tin, type, name, pin, legal_form, registered, status, address}``: ``type`` is ``individual``
(``pin`` set) or ``legal_entity`` (``legal_form`` set).  Amounts are AZN as JSON numbers with two decimals.

The debt answer is the tax-debt reference a bank or a licensing authority asks for ("vergi borcu olmaması
haqqında arayış"): each one gets a new reference number ``NDR-YYYYMMDD-XXXXXXXXXX`` and the moment it was
issued; it states the debt (``has_debt`` false, ``amount`` 0 for a "no tax debt" reference).

Business errors (JSON ``{"error": code, "message": text}``): a malformed TIN → 400 ``invalid_tin``, a malformed
PIN → 400 ``invalid_pin``, a year that is not a number between 2000 and 2100 → 400 ``invalid_year``, no TIN nor
``pin`` → 400 ``invalid_request``; an unknown TIN, a person without a TIN, a year without declaration → 404
``not_found``; another path → 404 ``not_found``, another method → 405 ``method_not_allowed``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs

from adapters.base import AdapterContext, AdapterRequest, AdapterResponse, ServiceDescription, register
from adapters.registries import PIN_PATTERN, TIN_PATTERN, database, error, error_schema, json_answer
from adapters.registries.db import Reader, RegistryDb

__all__ = ["REST_SERVICE", "TaxService", "factory", "openapi"]

#: The REST service code.
REST_SERVICE = "taxpayers"
CURRENCY = "AZN"

_TAXPAYER_COLUMNS = (
    "t.tin, t.type, t.name, t.pin, t.legal_form, t.registered, t.status,"
    " a.city, a.district, a.street, a.building, a.apartment, a.postal_code"
)
_TAXPAYER_SQL = (
    f"SELECT {_TAXPAYER_COLUMNS} FROM taxpayers t JOIN addresses a ON a.id = t.address_id"  # noqa: S608
    " WHERE t.tin = ?"
)
# A person deregistered and registered again would have two rows: the active one first, then the newest.
_BY_PIN_SQL = (
    f"SELECT {_TAXPAYER_COLUMNS} FROM taxpayers t JOIN addresses a ON a.id = t.address_id"  # noqa: S608
    " WHERE t.pin = ? ORDER BY CASE WHEN t.status = 'active' THEN 0 ELSE 1 END, t.registered DESC"
)
_EXISTS_SQL = "SELECT 1 FROM taxpayers WHERE tin = ?"
_DEBTS_SQL = "SELECT tax_type, amount_qepik, since FROM tax_debts WHERE tin = ? ORDER BY tax_type"
_INCOME_SQL = "SELECT year, income_qepik, tax_qepik, declared_on FROM income_declarations WHERE tin = ? ORDER BY year"


class _NotFound(Exception):
    """An unknown taxpayer, person or declaration (answered 404 ``not_found`` with this message)."""


def _azn(qepik: int) -> float:
    """Integer qəpik as AZN (a JSON number with at most two decimals)."""
    return round(int(qepik) / 100, 2)


class TaxService:
    """The E-Tax adapter (see the module docstring)."""

    def __init__(self, db: RegistryDb, *, now: Callable[[], dt.datetime] | None = None) -> None:
        self._reader: Reader = db.reader()
        self._now = now or (lambda: dt.datetime.now(dt.UTC))

    def describe(self) -> Sequence[ServiceDescription]:
        """REST ``taxpayers`` with its OpenAPI 3 document."""
        document = json.dumps(openapi(), indent=2, ensure_ascii=False).encode()
        return (ServiceDescription(REST_SERVICE, "REST", "E-Tax: taxpayers", document),)

    async def handle(self, request: AdapterRequest) -> AdapterResponse:
        """Answer REST ``taxpayers`` (see the module docstring); never raises for bad input."""
        parts = request.path.strip("/").split("/")
        if parts[0] != "taxpayers" or len(parts) > 3 or (len(parts) == 3 and parts[2] not in ("debt", "income")):
            return error(404, "not_found", f"no resource {request.path}")
        if request.method != "GET":
            return error(405, "method_not_allowed", f"{request.method} is not supported here; use GET")
        query = parse_qs(request.query)
        if len(parts) == 1:
            pin = query.get("pin", [""])[0]
            if not pin:
                return error(400, "invalid_request", "give a TIN in the path or ?pin=PIN")
            if not PIN_PATTERN.fullmatch(pin):
                return error(400, "invalid_pin", "a PIN is 7 upper-case letters or digits")
            return await self._answer(self.taxpayer_of, pin)
        tin = parts[1]
        if not TIN_PATTERN.fullmatch(tin):
            return error(400, "invalid_tin", "a TIN is 10 digits")
        if len(parts) == 2:
            return await self._answer(self.taxpayer, tin)
        if parts[2] == "debt":
            return await self._answer(self.debt, tin)
        year_text = query.get("year", [""])[0]
        if not year_text:
            return await self._answer(self.declarations, tin)
        if not (year_text.isascii() and year_text.isdigit() and 2000 <= int(year_text) <= 2100):
            return error(400, "invalid_year", "year must be a number between 2000 and 2100")
        return await self._answer(self.income, tin, int(year_text))

    @staticmethod
    async def _answer(lookup: Callable[..., dict[str, Any]], *args: Any) -> AdapterResponse:
        try:
            return json_answer(200, await asyncio.to_thread(lookup, *args))
        except _NotFound as exc:
            return error(404, "not_found", str(exc))

    # Lookups (blocking: run in a worker thread) --------------------------------------------------------------

    def taxpayer(self, tin: str) -> dict[str, Any]:
        """The taxpayer with ``tin``."""
        row = self._reader.one(_TAXPAYER_SQL, (tin,))
        if row is None:
            raise _NotFound(f"no taxpayer with TIN {tin}")
        return _taxpayer(row)

    def taxpayer_of(self, pin: str) -> dict[str, Any]:
        """The taxpayer registered for the person with ``pin`` (PIN → TIN)."""
        rows = self._reader.query(_BY_PIN_SQL, (pin,))
        if not rows:
            raise _NotFound(f"no taxpayer registered for PIN {pin}")
        return _taxpayer(rows[0])

    def debt(self, tin: str) -> dict[str, Any]:
        """A tax-debt reference for ``tin``, issued now."""
        self._require(tin)
        debts = self._reader.query(_DEBTS_SQL, (tin,))
        total = sum(int(amount) for _type, amount, _since in debts)
        issued_at = self._now().astimezone(dt.UTC)
        # Random, so that references cannot be guessed; a registry of issued references is an open point.
        reference = f"NDR-{issued_at:%Y%m%d}-{secrets.token_hex(5).upper()}"
        return {
            "tin": tin,
            "has_debt": total > 0,
            "amount": _azn(total),
            "currency": CURRENCY,
            "debts": [{"tax_type": t, "amount": _azn(a), "since": s} for t, a, s in debts],
            "reference": reference,
            "issued_at": issued_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        }

    def declarations(self, tin: str) -> dict[str, Any]:
        """Every income declaration of ``tin``."""
        self._require(tin)
        rows = self._reader.query(_INCOME_SQL, (tin,))
        return {"tin": tin, "currency": CURRENCY, "declarations": [_declaration(r) for r in rows]}

    def income(self, tin: str, year: int) -> dict[str, Any]:
        """The income ``tin`` declared for ``year``."""
        self._require(tin)
        for row in self._reader.query(_INCOME_SQL, (tin,)):
            if int(row[0]) == year:
                return {"tin": tin, **_declaration(row), "currency": CURRENCY}
        raise _NotFound(f"taxpayer {tin} has no income declaration for {year}")

    def _require(self, tin: str) -> None:
        if self._reader.one(_EXISTS_SQL, (tin,)) is None:
            raise _NotFound(f"no taxpayer with TIN {tin}")


def _taxpayer(row: Sequence[Any]) -> dict[str, Any]:
    tin, kind, name, pin, legal_form, registered, status = row[:7]
    city, district, street, building, apartment, postal_code = row[7:13]
    return {
        "tin": tin,
        "type": kind,
        "name": name,
        "pin": pin,
        "legal_form": legal_form,
        "registered": registered,
        "status": status,
        "address": {
            "city": city,
            "district": district,
            "street": street,
            "building": building,
            "apartment": apartment,
            "postal_code": postal_code,
        },
    }


def _declaration(row: Sequence[Any]) -> dict[str, Any]:
    year, income, tax, declared_on = row
    return {"year": int(year), "income": _azn(income), "tax": _azn(tax), "declared_on": declared_on}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3 document of REST ``taxpayers``."""
    text = {"type": "string"}
    nullable = {"type": "string", "nullable": True}
    date = {"type": "string", "format": "date"}
    money = {"type": "number", "multipleOf": 0.01}
    tin = {"name": "tin", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9]{10}$"}}
    errors = {code: {"$ref": "#/components/responses/Error"} for code in ("400", "404")}

    def ok(schema: str, description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }

    declaration = {
        "type": "object",
        "required": ["year", "income", "tax", "declared_on"],
        "properties": {"year": {"type": "integer"}, "income": money, "tax": money, "declared_on": date},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "E-Tax: taxpayers",
            "version": "1.0.0",
            "description": "State Tax Service. Taxpayers by TIN (VÖEN) or PIN, tax-debt references, declared income.",
        },
        "paths": {
            "/taxpayers": {
                "get": {
                    "operationId": "getTaxpayerByPin",
                    "parameters": [
                        {
                            "name": "pin",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[0-9A-Z]{7}$"},
                        }
                    ],
                    "responses": {"200": ok("Taxpayer", "The person's taxpayer record"), **errors},
                }
            },
            "/taxpayers/{tin}": {
                "get": {
                    "operationId": "getTaxpayer",
                    "parameters": [tin],
                    "responses": {"200": ok("Taxpayer", "The taxpayer"), **errors},
                }
            },
            "/taxpayers/{tin}/debt": {
                "get": {
                    "operationId": "getTaxDebtReference",
                    "parameters": [tin],
                    "responses": {"200": ok("DebtReference", "A newly issued tax-debt reference"), **errors},
                }
            },
            "/taxpayers/{tin}/income": {
                "get": {
                    "operationId": "getDeclaredIncome",
                    "parameters": [
                        tin,
                        {"name": "year", "in": "query", "required": False, "schema": {"type": "integer"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "The declaration of that year (with year), else every declaration",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "oneOf": [
                                            {"$ref": "#/components/schemas/Income"},
                                            {"$ref": "#/components/schemas/Declarations"},
                                        ]
                                    }
                                }
                            },
                        },
                        **errors,
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Taxpayer": {
                    "type": "object",
                    "required": ["tin", "type", "name", "registered", "status"],
                    "properties": {
                        "tin": text,
                        "type": {"type": "string", "enum": ["individual", "legal_entity"]},
                        "name": text,
                        "pin": nullable,
                        "legal_form": nullable,
                        "registered": date,
                        "status": {"type": "string", "enum": ["active", "inactive", "liquidated"]},
                        "address": {"type": "object"},
                    },
                },
                "DebtReference": {
                    "type": "object",
                    "required": ["tin", "has_debt", "amount", "currency", "reference", "issued_at"],
                    "properties": {
                        "tin": text,
                        "has_debt": {"type": "boolean"},
                        "amount": money,
                        "currency": {"type": "string", "enum": [CURRENCY]},
                        "debts": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {"tax_type": text, "amount": money, "since": date},
                            },
                        },
                        "reference": {"type": "string", "pattern": "^NDR-[0-9]{8}-[0-9A-F]{10}$"},
                        "issued_at": {"type": "string", "format": "date-time"},
                    },
                },
                "Income": {
                    "allOf": [
                        declaration,
                        {"type": "object", "properties": {"tin": text, "currency": text}},
                    ]
                },
                "Declarations": {
                    "type": "object",
                    "properties": {
                        "tin": text,
                        "currency": text,
                        "declarations": {"type": "array", "items": declaration},
                    },
                },
            },
            "responses": {
                "Error": {
                    "description": "A business error",
                    "content": {"application/json": {"schema": error_schema()}},
                }
            },
        },
    }


def factory(context: AdapterContext) -> TaxService:
    """Build the adapter from its option ``database`` (required)."""
    return TaxService(database(context, "tax"))


register("tax", factory)
