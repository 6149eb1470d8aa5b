"""Labor contract notification system: employers register, modify and terminate employment contracts.

The Ministry of Labour and Social Protection's registry (member ``AZ/GOV/1400000014``, subsystem ``contracts``)
as an adapter, offering one REST service, ``contracts``:

=======  ==================================  ==================================================================
method   path                                what
=======  ==================================  ==================================================================
POST     ``/contracts``                      an employer registers a contract → 201 ``{id, status}``
GET      ``/contracts/{id}``                 one contract
PUT      ``/contracts/{id}``                 change ``salary``, ``position`` and/or ``end_date`` of an active one
POST     ``/contracts/{id}/terminate``       ``{date, reason}`` → the contract is terminated on ``date``
GET      ``/employees/{pin}/contracts``      the person's contracts in force or starting later
GET      ``/employees/{pin}/reference``      employment and salary reference (what a bank checks)
GET      ``/employers/{tin}/contracts``      the employer's contracts, ``?status=active|terminated|all``
=======  ==================================  ==================================================================

Business rules, each a 4xx JSON answer ``{"error": code, "message": text}``:

* malformed JSON or fields → 400 ``invalid_request`` (a malformed TIN or PIN: ``invalid_tin``, ``invalid_pin``);
  ``end_date`` (or a termination date) before ``start_date`` → 400 ``invalid_dates``; a currency other than AZN
  → 400 ``unsupported_currency``;
* the employee's PIN must be in the population register → 422 ``unknown_employee`` (404 ``person_not_found`` on
  the ``/employees/{pin}`` reads);
* the employer must be a registered, active *legal-entity* taxpayer → 422 ``employer_not_registered`` /
  ``employer_not_legal_entity`` / ``employer_not_active`` (liquidated);
* the monthly salary must be at least :data:`MINIMUM_MONTHLY_WAGE_AZN` → 422 ``salary_below_minimum``;
* no two contracts of the same employer, employee and position may overlap in time → 409 ``duplicate_contract``;
* a terminated contract can be neither changed nor terminated again → 409 ``contract_terminated`` /
  ``already_terminated``; a termination date before the start or after a fixed term's end → 400
  ``invalid_dates``; an unknown id → 404 ``contract_not_found``.

Where the employer check looks (option ``employer_check``)
    ``database`` (the default) reads the ``taxpayers`` table of the shared registries database; that is the same
    data the tax service publishes, and it needs no bus.  ``bus`` asks the tax service instead
    (``GET /taxpayers/{tin}`` of option ``tax_service``, default :data:`TAX_SERVICE`) through this security
    server, as client subsystem ``bus_client``: the check is then signed, permission-checked and logged like any
    exchange, and the labor registry needs no read access to the tax tables.  If the tax service cannot be
    reached, registration answers 503 ``registry_unavailable`` and stores nothing.

Storage
    Contracts live in the ``labor_contracts`` table of the registries database (option ``database``, a
    ``sqlite:///`` or ``postgresql://`` URL; relative SQLite paths resolve against the state directory), laid out
    as the generator (:mod:`adapters.registries.data`) makes it: the salary as decimal text in AZN, numbers
    ``LC-`` + 12 random hex digits, ``end_date`` a fixed term's last day, ``terminated_on`` and
    ``termination_reason`` once terminated.  Every write is one transaction that re-reads what it checks under a
    lock (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an advisory lock), so two concurrent registrations of the same
    contract cannot both pass the duplicate check.  All database work runs in a worker thread, never on the
    event loop.

Contract in force
    A contract is in force on day *D* (option ``today``, an ISO date, fixes *D* for demos over generated data;
    default the real date) when it is ``active`` and ``start_date ≤ D ≤`` its last day: the earlier of
    ``end_date`` and ``terminated_on`` (neither: open-ended).  The employee's list shows the ``active`` contracts
    that have not ended (including those starting later); the reference counts only those in force.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import secrets
import zlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qs

from adapters.base import (
    AdapterContext,
    AdapterRequest,
    AdapterResponse,
    BusClient,
    ServiceDescription,
    register,
)
from adapters.registries import PIN_PATTERN, TIN_PATTERN, clock, database, error_schema, json_answer
from adapters.registries import error as error_answer
from adapters.registries.db import RegistryDb
from bridge.errors import ConfigError

__all__ = [
    "MINIMUM_MONTHLY_WAGE_AZN",
    "SERVICE_CODE",
    "TAX_SERVICE",
    "BusinessError",
    "LaborRegistry",
    "factory",
    "openapi",
]

#: The national minimum monthly wage in manat, in force since 1 January 2024 (presidential decree of December
#: 2023).  A contract's monthly salary may not be lower.  Update it, with its legal basis, when the decree changes.
MINIMUM_MONTHLY_WAGE_AZN = Decimal("345")
#: The REST service code this adapter answers.
SERVICE_CODE = "contracts"
#: The tax service asked when ``employer_check`` is ``bus``.
TAX_SERVICE = "AZ/GOV/1300000013/etax/taxpayers"
CURRENCY = "AZN"

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CONTRACT_ID = re.compile(r"^LC-[0-9A-F]{12}$")
_MAX_TEXT = 200
_SELECT = (
    "SELECT id, employer_tin, employee_pin, position, salary, currency, start_date, end_date, status,"
    " terminated_on, termination_reason FROM labor_contracts"
)


class BusinessError(Exception):
    """A refused request: answered as ``status`` with ``{"error": code, "message": message}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(error: BusinessError) -> AdapterResponse:
    """The JSON business error for ``error``."""
    return error_answer(error.status, error.code, error.message)


Handler = Callable[..., Awaitable[AdapterResponse]]
Route = tuple[str, re.Pattern[str], Handler]  # (method, path pattern, handler(request, *captured))


def find_route(routes: Sequence[Route], request: AdapterRequest) -> tuple[Handler, tuple[str, ...]]:
    """The handler for ``request``'s method and path, with the path's captured parameters.

    Raises :class:`BusinessError` 405 ``method_not_allowed`` when the path is known but not for this method, and
    404 ``not_found`` when no route matches the path.
    """
    path_known = False
    for method, pattern, handler in routes:
        match = pattern.match(request.path)
        if match is None:
            continue
        path_known = True
        if method == request.method:
            return handler, match.groups()
    if path_known:
        raise BusinessError(405, "method_not_allowed", f"{request.method} is not allowed on {request.path}")
    raise BusinessError(404, "not_found", f"no such resource: {request.path}")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or 400 ``invalid_request``."""
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise BusinessError(400, "invalid_request", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BusinessError(400, "invalid_request", "the body must be a JSON object")
    return data


def text_field(data: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    """A non-empty string field of at most 200 characters (surrounding space stripped)."""
    value = data.get(name)
    if value is None:
        if required:
            raise BusinessError(400, "invalid_request", f"{name} is required")
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_TEXT:
        raise BusinessError(400, "invalid_request", f"{name} must be a non-empty string of at most {_MAX_TEXT}")
    return value.strip()


def date_field(data: Mapping[str, Any], name: str, *, required: bool = True) -> dt.date | None:
    """A ``YYYY-MM-DD`` date field."""
    value = data.get(name)
    if value is None:
        if required:
            raise BusinessError(400, "invalid_request", f"{name} is required")
        return None
    if not isinstance(value, str) or not _DATE.match(value):
        raise BusinessError(400, "invalid_request", f"{name} must be a date as YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise BusinessError(400, "invalid_request", f"{name} is not a calendar date") from None


def salary_field(data: Mapping[str, Any]) -> Decimal:
    """The monthly salary: a positive amount with at most two decimals, at least the legal minimum."""
    value = data.get("salary")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BusinessError(400, "invalid_request", "salary must be a number")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise BusinessError(400, "invalid_request", "salary must be a number") from None
    if not amount.is_finite() or amount.as_tuple().exponent < -2:  # type: ignore[operator]
        raise BusinessError(400, "invalid_request", "salary must be an amount with at most two decimals")
    if amount < MINIMUM_MONTHLY_WAGE_AZN:
        raise BusinessError(
            422,
            "salary_below_minimum",
            f"the monthly salary {amount} AZN is below the legal minimum of {MINIMUM_MONTHLY_WAGE_AZN} AZN",
        )
    return amount.quantize(Decimal("0.01"))


def _money(amount: Decimal) -> float:
    """An amount of manat as a JSON number (two decimals)."""
    return float(amount.quantize(Decimal("0.01")))


def _date(value: Any) -> dt.date | None:
    """A stored date (ISO text; ``date`` from a native column) or ``None``."""
    if value is None or isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


def _iso(value: Any) -> str | None:
    """A stored date (text on SQLite, ``date`` on PostgreSQL) as ISO text."""
    if value is None:
        return None
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def check_identifiers(*, tin: str | None = None, pin: str | None = None) -> None:
    """400 ``invalid_tin`` / ``invalid_pin`` unless the identifiers have the registries' formats."""
    if tin is not None and not TIN_PATTERN.fullmatch(tin):
        raise BusinessError(400, "invalid_tin", "a TIN is ten digits")
    if pin is not None and not PIN_PATTERN.fullmatch(pin):
        raise BusinessError(400, "invalid_pin", "a PIN is seven upper-case letters or digits")


def _no_unknown_fields(data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BusinessError(400, "invalid_request", f"unknown fields: {', '.join(unknown)}")


# Storage ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contract:
    """One row of ``labor_contracts`` (the salary as decimal text in the database, a Decimal here)."""

    id: str
    employer_tin: str
    employee_pin: str
    position: str
    salary: Decimal
    currency: str
    start_date: dt.date
    #: A fixed-term contract's last day (``None``: open-ended).
    end_date: dt.date | None
    status: str
    terminated_on: dt.date | None = None
    termination_reason: str | None = None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Contract:
        """A contract from a row of :data:`_SELECT`."""
        return cls(
            id=str(row[0]),
            employer_tin=str(row[1]),
            employee_pin=str(row[2]),
            position=str(row[3]),
            salary=Decimal(str(row[4])),
            currency=str(row[5]),
            start_date=_date(row[6]) or dt.date.min,
            end_date=_date(row[7]),
            status=str(row[8]),
            terminated_on=_date(row[9]),
            termination_reason=row[10],
        )

    @property
    def last_day(self) -> dt.date | None:
        """The last day of employment: the earlier of the end and the termination date (``None``: open)."""
        ends = [d for d in (self.end_date, self.terminated_on) if d is not None]
        return min(ends) if ends else None

    def overlaps(self, start: dt.date, end: dt.date | None) -> bool:
        """Whether this contract's period meets ``[start, end]`` (``end`` ``None``: open-ended)."""
        last = self.last_day
        return (last is None or start <= last) and (end is None or self.start_date <= end)

    def in_force(self, day: dt.date) -> bool:
        """Whether the contract is in force on ``day``."""
        return self.overlaps(day, day)

    def to_json(self) -> dict[str, Any]:
        """The contract as the API shows it."""
        return {
            "id": self.id,
            "employer_tin": self.employer_tin,
            "employee_pin": self.employee_pin,
            "position": self.position,
            "salary": _money(self.salary),
            "currency": self.currency,
            "start_date": self.start_date.isoformat(),
            "end_date": _iso(self.end_date),
            "status": self.status,
            "terminated_on": _iso(self.terminated_on),
            "termination_reason": self.termination_reason,
        }


class Transaction:
    """Statements inside one write transaction (see :func:`write_transaction`)."""

    def __init__(self, db: RegistryDb, conn: Any) -> None:
        self._db = db
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write; returns the number of rows it changed."""
        return int(self._conn.execute(self._db.sql(sql), tuple(params)).rowcount)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """All rows of a query, read inside the transaction."""
        return [tuple(row) for row in self._conn.execute(self._db.sql(sql), tuple(params)).fetchall()]

    def lock(self, name: str) -> None:
        """Serialise the writers that take lock ``name`` (PostgreSQL advisory lock; SQLite's is the database's)."""
        if self._db.dialect == "postgresql":
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (zlib.crc32(name.encode()),))


@contextmanager
def write_transaction(db: RegistryDb) -> Iterator[Transaction]:
    """One connection, one transaction: committed when the block ends, rolled back entirely when it raises.

    SQLite starts with ``BEGIN IMMEDIATE`` so the checks inside the block read what no other writer can change
    before the commit.  Blocking: call it from a worker thread.
    """
    conn = db.connect(read_only=False)
    try:
        if db.dialect == "sqlite":
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("BEGIN IMMEDIATE")
        yield Transaction(db, conn)
        conn.commit() if db.dialect == "postgresql" else conn.execute("COMMIT")
    except BaseException:
        if db.dialect == "postgresql":
            conn.rollback()
        elif conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()


# The registry -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewContract:
    """A validated registration."""

    employer_tin: str
    employee_pin: str
    position: str
    salary: Decimal
    start_date: dt.date
    end_date: dt.date | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NewContract:
        """Validate a ``POST /contracts`` body (400/422 business errors)."""
        _no_unknown_fields(
            data, {"employer_tin", "employee_pin", "position", "salary", "currency", "start_date", "end_date"}
        )
        employer = text_field(data, "employer_tin")
        employee = text_field(data, "employee_pin")
        position = text_field(data, "position")
        currency = data.get("currency", CURRENCY)
        if currency != CURRENCY:
            raise BusinessError(400, "unsupported_currency", f"salaries are registered in {CURRENCY}")
        start = date_field(data, "start_date")
        end = date_field(data, "end_date", required=False)
        assert employer is not None and employee is not None and position is not None and start is not None
        check_identifiers(tin=employer, pin=employee)
        if end is not None and end < start:
            raise BusinessError(400, "invalid_dates", "end_date is before start_date")
        return cls(employer, employee, position, salary_field(data), start, end)


class LaborRegistry:
    """The ``labor`` adapter: REST service ``contracts`` over the registries database."""

    def __init__(
        self,
        db: RegistryDb,
        *,
        bus: BusClient | None = None,
        tax_service: str | None = None,
        today: Callable[[], dt.date] = dt.date.today,
    ) -> None:
        """``bus`` and ``tax_service`` given: employers are checked with the tax service, else in the database."""
        self._db = db
        self._reader = db.reader()
        self._bus = bus
        self._tax_service = tax_service
        self._today = today
        self._routes: tuple[Route, ...] = (
            ("POST", re.compile(r"^/contracts$"), self._register),
            ("GET", re.compile(r"^/contracts/([^/]+)$"), self._get),
            ("PUT", re.compile(r"^/contracts/([^/]+)$"), self._modify),
            ("POST", re.compile(r"^/contracts/([^/]+)/terminate$"), self._terminate),
            ("GET", re.compile(r"^/employees/([^/]+)/contracts$"), self._employee_contracts),
            ("GET", re.compile(r"^/employees/([^/]+)/reference$"), self._reference),
            ("GET", re.compile(r"^/employers/([^/]+)/contracts$"), self._employer_contracts),
        )

    async def handle(self, request: AdapterRequest) -> AdapterResponse:
        """Route one REST request; business errors become JSON 4xx answers."""
        try:
            handler, params = find_route(self._routes, request)
            return await handler(request, *params)
        except BusinessError as error:
            return error_response(error)

    def describe(self) -> Sequence[ServiceDescription]:
        """The ``contracts`` REST service with its OpenAPI document."""
        return (
            ServiceDescription(
                SERVICE_CODE,
                "REST",
                "Labor contract notification system",
                json.dumps(openapi(), indent=2, ensure_ascii=False).encode(),
                "1.0.0",
            ),
        )

    # Handlers ---------------------------------------------------------------------------------------------------

    async def _register(self, request: AdapterRequest) -> AdapterResponse:
        new = NewContract.from_json(parse_json_object(request.body))
        if self._bus is not None:
            await self._check_employer_over_bus(new.employer_tin, request.header.user_id)
        contract = await asyncio.to_thread(self._insert, new)
        return json_answer(201, {"id": contract.id, "status": contract.status, "contract": contract.to_json()})

    async def _get(self, _request: AdapterRequest, contract_id: str) -> AdapterResponse:
        contract = await asyncio.to_thread(self._load, contract_id)
        return json_answer(200, contract.to_json())

    async def _modify(self, request: AdapterRequest, contract_id: str) -> AdapterResponse:
        data = parse_json_object(request.body)
        _no_unknown_fields(data, {"salary", "position", "end_date"})
        if not data:
            raise BusinessError(400, "invalid_request", "give at least one of salary, position, end_date")
        changes: dict[str, Any] = {}
        if "salary" in data:
            changes["salary"] = salary_field(data)
        if "position" in data:
            changes["position"] = text_field(data, "position")
        if "end_date" in data:
            # An explicit null makes a fixed-term contract open-ended.
            changes["end_date"] = date_field(data, "end_date", required=False)
        contract = await asyncio.to_thread(self._update, contract_id, changes)
        return json_answer(200, contract.to_json())

    async def _terminate(self, request: AdapterRequest, contract_id: str) -> AdapterResponse:
        data = parse_json_object(request.body)
        _no_unknown_fields(data, {"date", "reason"})
        day = date_field(data, "date")
        reason = text_field(data, "reason")
        assert day is not None and reason is not None
        contract = await asyncio.to_thread(self._end, contract_id, day, reason)
        return json_answer(200, contract.to_json())

    async def _employee_contracts(self, _request: AdapterRequest, pin: str) -> AdapterResponse:
        today = self._today()
        contracts = await asyncio.to_thread(self._of_employee, pin)
        current = [c for c in contracts if c.status == "active" and (c.end_date is None or c.end_date >= today)]
        return json_answer(200, {"pin": pin, "contracts": [c.to_json() for c in current]})

    async def _reference(self, _request: AdapterRequest, pin: str) -> AdapterResponse:
        today = self._today()
        contracts = await asyncio.to_thread(self._of_employee, pin)
        jobs = [c for c in contracts if c.status == "active" and c.in_force(today)]
        names = await asyncio.to_thread(self._employer_names, sorted({c.employer_tin for c in jobs}))
        body = {
            "pin": pin,
            "as_of": today.isoformat(),
            "employed": bool(jobs),
            "employments": [
                {
                    "contract_id": c.id,
                    "employer_tin": c.employer_tin,
                    "employer_name": names.get(c.employer_tin),
                    "position": c.position,
                    "monthly_salary": _money(c.salary),
                    "currency": c.currency,
                    "since": c.start_date.isoformat(),
                    "until": _iso(c.last_day),
                }
                for c in jobs
            ],
            "total_monthly_salary": _money(sum((c.salary for c in jobs), Decimal("0"))),
            "currency": CURRENCY,
        }
        return json_answer(200, body)

    async def _employer_contracts(self, request: AdapterRequest, tin: str) -> AdapterResponse:
        status = parse_qs(request.query).get("status", ["active"])[0]
        if status not in ("active", "terminated", "all"):
            raise BusinessError(400, "invalid_request", "status must be active, terminated or all")
        contracts = await asyncio.to_thread(self._of_employer, tin)
        if status != "all":
            contracts = [c for c in contracts if c.status == status]
        return json_answer(200, {"tin": tin, "status": status, "contracts": [c.to_json() for c in contracts]})

    # Checks -----------------------------------------------------------------------------------------------------

    async def _check_employer_over_bus(self, tin: str, user_id: str | None) -> None:
        """Ask the tax service whether ``tin`` is an active legal entity (``employer_check: bus``)."""
        assert self._bus is not None and self._tax_service is not None
        try:
            answer = await self._bus.rest(self._tax_service, "GET", f"/taxpayers/{tin}", user_id=user_id)
        except Exception as exc:  # any failure of the bus means "cannot check now"
            raise BusinessError(
                503, "registry_unavailable", f"the tax service cannot be reached ({exc.__class__.__name__})"
            ) from None
        if answer.status == 404 and answer.error is None:
            raise BusinessError(422, "employer_not_registered", f"{tin} is not a registered taxpayer")
        if answer.status != 200 or answer.error is not None:
            raise BusinessError(
                503, "registry_unavailable", f"the tax service answered {answer.error or answer.status}"
            )
        try:
            taxpayer = answer.json()
            kind, status = taxpayer.get("type"), taxpayer.get("status", "active")
        except (ValueError, AttributeError):
            raise BusinessError(503, "registry_unavailable", "the tax service's answer could not be read") from None
        self._check_employer(tin, kind, status)

    @staticmethod
    def _check_employer(tin: str, kind: Any, status: Any) -> None:
        if kind != "legal_entity":
            raise BusinessError(422, "employer_not_legal_entity", f"{tin} is not a legal entity")
        if status != "active":
            raise BusinessError(422, "employer_not_active", f"taxpayer {tin} is {status}")

    def _check_employer_in_db(self, tx: Transaction, tin: str) -> None:
        rows = tx.query("SELECT type, status FROM taxpayers WHERE tin = ?", (tin,))
        if not rows:
            raise BusinessError(422, "employer_not_registered", f"{tin} is not a registered taxpayer")
        self._check_employer(tin, rows[0][0], rows[0][1])

    @staticmethod
    def _check_person(tx: Transaction, pin: str) -> None:
        if not tx.query("SELECT 1 FROM persons WHERE pin = ?", (pin,)):
            raise BusinessError(422, "unknown_employee", f"no person with PIN {pin} in the population register")

    @staticmethod
    def _check_no_duplicate(
        tx: Transaction, contract_id: str | None, tin: str, pin: str, position: str, start: dt.date, end: dt.date | None
    ) -> None:
        rows = tx.query(
            _SELECT + " WHERE employer_tin = ? AND employee_pin = ? AND lower(position) = lower(?)",
            (tin, pin, position),
        )
        for row in rows:
            other = Contract.from_row(row)
            if other.id != contract_id and other.overlaps(start, end):
                raise BusinessError(
                    409,
                    "duplicate_contract",
                    f"contract {other.id} already employs {pin} at {tin} as {position} in that period",
                )

    # Blocking database work (worker threads) ---------------------------------------------------------------------

    def _insert(self, new: NewContract) -> Contract:
        with write_transaction(self._db) as tx:
            tx.lock("korpu.labor_contracts")
            if self._bus is None:
                self._check_employer_in_db(tx, new.employer_tin)
            self._check_person(tx, new.employee_pin)
            self._check_no_duplicate(
                tx, None, new.employer_tin, new.employee_pin, new.position, new.start_date, new.end_date
            )
            # Random (scrambled) numbers, as the registry's: they say nothing about how many contracts exist.
            contract = Contract(
                id=f"LC-{secrets.token_hex(6).upper()}",
                employer_tin=new.employer_tin,
                employee_pin=new.employee_pin,
                position=new.position,
                salary=new.salary,
                currency=CURRENCY,
                start_date=new.start_date,
                end_date=new.end_date,
                status="active",
            )
            tx.execute(
                "INSERT INTO labor_contracts (id, employer_tin, employee_pin, position, salary, currency, start_date,"
                " end_date, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    contract.id,
                    contract.employer_tin,
                    contract.employee_pin,
                    contract.position,
                    str(contract.salary),
                    contract.currency,
                    contract.start_date.isoformat(),
                    _iso(contract.end_date),
                    contract.status,
                ),
            )
            return contract

    def _select(self, tx: Transaction, contract_id: str) -> Contract:
        rows = tx.query(_SELECT + " WHERE id = ?", (contract_id,)) if _CONTRACT_ID.match(contract_id) else []
        if not rows:
            raise BusinessError(404, "contract_not_found", f"no contract {contract_id}")
        return Contract.from_row(rows[0])

    def _load(self, contract_id: str) -> Contract:
        row = self._reader.one(_SELECT + " WHERE id = ?", (contract_id,)) if _CONTRACT_ID.match(contract_id) else None
        if row is None:
            raise BusinessError(404, "contract_not_found", f"no contract {contract_id}")
        return Contract.from_row(row)

    def _update(self, contract_id: str, changes: Mapping[str, Any]) -> Contract:
        with write_transaction(self._db) as tx:
            tx.lock("korpu.labor_contracts")
            current = self._select(tx, contract_id)
            if current.status == "terminated":
                raise BusinessError(409, "contract_terminated", f"contract {contract_id} is terminated")
            position = changes.get("position", current.position)
            end = changes.get("end_date", current.end_date)
            salary = changes.get("salary", current.salary)
            if end is not None and end < current.start_date:
                raise BusinessError(400, "invalid_dates", "end_date is before the contract's start_date")
            self._check_no_duplicate(
                tx, contract_id, current.employer_tin, current.employee_pin, position, current.start_date, end
            )
            tx.execute(
                "UPDATE labor_contracts SET position = ?, salary = ?, end_date = ? WHERE id = ?",
                (position, str(salary), _iso(end), contract_id),
            )
            return self._select(tx, contract_id)

    def _end(self, contract_id: str, day: dt.date, reason: str) -> Contract:
        with write_transaction(self._db) as tx:
            tx.lock("korpu.labor_contracts")
            current = self._select(tx, contract_id)
            if current.status == "terminated":
                raise BusinessError(
                    409, "already_terminated", f"contract {contract_id} was terminated on {_iso(current.terminated_on)}"
                )
            if day < current.start_date:
                raise BusinessError(400, "invalid_dates", "the termination date is before the contract's start_date")
            if current.end_date is not None and day > current.end_date:
                raise BusinessError(400, "invalid_dates", "the termination date is after the contract's end_date")
            tx.execute(
                "UPDATE labor_contracts SET status = 'terminated', terminated_on = ?, termination_reason = ?"
                " WHERE id = ? AND status = 'active'",
                (day.isoformat(), reason, contract_id),
            )
            return self._select(tx, contract_id)

    def _of_employee(self, pin: str) -> list[Contract]:
        if self._reader.one("SELECT 1 FROM persons WHERE pin = ?", (pin,)) is None:
            raise BusinessError(404, "person_not_found", f"no person with PIN {pin}")
        rows = self._reader.query(_SELECT + " WHERE employee_pin = ? ORDER BY start_date, id", (pin,))
        return [Contract.from_row(r) for r in rows]

    def _of_employer(self, tin: str) -> list[Contract]:
        if self._reader.one("SELECT 1 FROM taxpayers WHERE tin = ?", (tin,)) is None:
            raise BusinessError(404, "taxpayer_not_found", f"no taxpayer with TIN {tin}")
        rows = self._reader.query(_SELECT + " WHERE employer_tin = ? ORDER BY start_date, id", (tin,))
        return [Contract.from_row(r) for r in rows]

    def _employer_names(self, tins: Sequence[str]) -> dict[str, str]:
        names: dict[str, str] = {}
        for tin in tins:
            row = self._reader.one("SELECT name FROM taxpayers WHERE tin = ?", (tin,))
            if row is not None:
                names[tin] = str(row[0])
        return names


def openapi() -> dict[str, Any]:
    """The OpenAPI 3 document of the ``contracts`` service."""
    error = {"$ref": "#/components/responses/Error"}
    contract_ref = {"$ref": "#/components/schemas/Contract"}

    def ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    def body(schema: dict[str, Any]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    def param(name: str, where: str = "path", description: str = "") -> dict[str, Any]:
        return {
            "name": name,
            "in": where,
            "required": where == "path",
            "schema": {"type": "string"},
            "description": description,
        }

    date = {"type": "string", "format": "date"}
    money = {"type": "number", "multipleOf": 0.01, "minimum": float(MINIMUM_MONTHLY_WAGE_AZN)}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Labor contract notification system",
            "version": "1.0.0",
            "description": (
                "Employers register, modify and terminate employment contracts; banks and agencies read an "
                f"employee's contracts and employment reference. Salaries are monthly, in AZN, at least "
                f"{MINIMUM_MONTHLY_WAGE_AZN} AZN (the national minimum wage)."
            ),
        },
        "paths": {
            "/contracts": {
                "post": {
                    "operationId": "registerContract",
                    "requestBody": body({"$ref": "#/components/schemas/NewContract"}),
                    "responses": {
                        "201": ok(
                            {
                                "type": "object",
                                "required": ["id", "status"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "status": {"type": "string"},
                                    "contract": contract_ref,
                                },
                            },
                            "Registered",
                        ),
                        "400": error,
                        "409": error,
                        "422": error,
                        "503": error,
                    },
                }
            },
            "/contracts/{id}": {
                "parameters": [param("id")],
                "get": {"operationId": "getContract", "responses": {"200": ok(contract_ref), "404": error}},
                "put": {
                    "operationId": "modifyContract",
                    "requestBody": body(
                        {
                            "type": "object",
                            "minProperties": 1,
                            "additionalProperties": False,
                            "properties": {
                                "salary": money,
                                "position": {"type": "string"},
                                "end_date": {**date, "nullable": True},
                            },
                        }
                    ),
                    "responses": {"200": ok(contract_ref), "400": error, "404": error, "409": error, "422": error},
                },
            },
            "/contracts/{id}/terminate": {
                "parameters": [param("id")],
                "post": {
                    "operationId": "terminateContract",
                    "requestBody": body(
                        {
                            "type": "object",
                            "required": ["date", "reason"],
                            "properties": {"date": date, "reason": {"type": "string"}},
                        }
                    ),
                    "responses": {"200": ok(contract_ref), "400": error, "404": error, "409": error},
                },
            },
            "/employees/{pin}/contracts": {
                "parameters": [param("pin", description="The employee's personal identification number")],
                "get": {
                    "operationId": "employeeContracts",
                    "responses": {
                        "200": ok(
                            {
                                "type": "object",
                                "properties": {
                                    "pin": {"type": "string"},
                                    "contracts": {"type": "array", "items": contract_ref},
                                },
                            }
                        ),
                        "404": error,
                    },
                },
            },
            "/employees/{pin}/reference": {
                "parameters": [param("pin", description="The employee's personal identification number")],
                "get": {
                    "operationId": "employmentReference",
                    "responses": {"200": ok({"$ref": "#/components/schemas/Reference"}), "404": error},
                },
            },
            "/employers/{tin}/contracts": {
                "parameters": [
                    param("tin", description="The employer's taxpayer identification number"),
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "string",
                            "enum": ["active", "terminated", "all"],
                            "default": "active",
                        },
                    },
                ],
                "get": {
                    "operationId": "employerContracts",
                    "responses": {
                        "200": ok(
                            {
                                "type": "object",
                                "properties": {
                                    "tin": {"type": "string"},
                                    "status": {"type": "string"},
                                    "contracts": {"type": "array", "items": contract_ref},
                                },
                            }
                        ),
                        "400": error,
                        "404": error,
                    },
                },
            },
        },
        "components": {
            "schemas": {
                "NewContract": {
                    "type": "object",
                    "required": ["employer_tin", "employee_pin", "position", "salary", "start_date"],
                    "additionalProperties": False,
                    "properties": {
                        "employer_tin": {"type": "string"},
                        "employee_pin": {"type": "string"},
                        "position": {"type": "string", "maxLength": _MAX_TEXT},
                        "salary": money,
                        "currency": {"type": "string", "enum": [CURRENCY], "default": CURRENCY},
                        "start_date": date,
                        "end_date": date,
                    },
                },
                "Contract": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "employer_tin": {"type": "string"},
                        "employee_pin": {"type": "string"},
                        "position": {"type": "string"},
                        "salary": {"type": "number"},
                        "currency": {"type": "string"},
                        "start_date": date,
                        "end_date": {**date, "nullable": True},
                        "status": {"type": "string", "enum": ["active", "terminated"]},
                        "terminated_on": {**date, "nullable": True},
                        "termination_reason": {"type": "string", "nullable": True},
                    },
                },
                "Reference": {
                    "type": "object",
                    "properties": {
                        "pin": {"type": "string"},
                        "as_of": date,
                        "employed": {"type": "boolean"},
                        "employments": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "contract_id": {"type": "string"},
                                    "employer_tin": {"type": "string"},
                                    "employer_name": {"type": "string", "nullable": True},
                                    "position": {"type": "string"},
                                    "monthly_salary": {"type": "number"},
                                    "currency": {"type": "string"},
                                    "since": date,
                                    "until": {**date, "nullable": True},
                                },
                            },
                        },
                        "total_monthly_salary": {"type": "number"},
                        "currency": {"type": "string"},
                    },
                },
                "Error": error_schema(),
            },
            "responses": {
                "Error": {
                    "description": "A business error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
            },
        },
    }


def factory(context: AdapterContext) -> LaborRegistry:
    """Build the adapter from its options: ``database`` (required), ``employer_check``, ``tax_service``, ``today``."""
    db = database(context, "labor")
    check = context.options.get("employer_check", "database")
    if check not in ("database", "bus"):
        raise ConfigError("adapter labor: option employer_check must be database or bus")
    bus = None
    if check == "bus":
        if context.bus is None:
            raise ConfigError("adapter labor: employer_check bus needs option bus_client")
        bus = context.bus
    return LaborRegistry(
        db,
        bus=bus,
        tax_service=context.options.get("tax_service", TAX_SERVICE),
        today=clock(context, "labor"),
    )


register("labor", factory)
