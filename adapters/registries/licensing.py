"""E-license and permits: licence applications decided by asking other registries over the bus.

The Ministry of Economy's registry (member ``AZ/GOV/1500000015``, subsystem ``licensing``) as an adapter, offering
one REST service, ``licenses``:

=======  ==================================  ==================================================================
method   path                                what
=======  ==================================  ==================================================================
POST     ``/applications``                   ``{tin, pin, activity}`` → 201 ``{id, status, reasons,
                                             license_number?}`` (503 when the answer must wait, see below)
GET      ``/applications/{id}``              one application and its decision
POST     ``/applications/{id}/retry``        decide a ``pending`` application again
GET      ``/licenses?tin=``                  the licences of a taxpayer
GET      ``/licenses/{number}/verify``       ``{valid, holder_tin, activity, expires, …}``
=======  ==================================  ==================================================================

A service composed over the bus
    The adapter decides an application by asking two other agencies *through its own security server*, as the
    client subsystem named by option ``bus_client`` (so the calls are signed, permission-checked and logged, and
    the providers' logs show the licensing subsystem as the client):

    * Tax (option ``tax_service``, default :data:`TAX_SERVICE`): ``GET /taxpayers/{tin}/debt`` →
      ``{"has_debt": …}``; a debt rejects (``tax_debt``), an unknown TIN rejects (``taxpayer_not_found``);
    * Population (option ``population_service``, default :data:`POPULATION_SERVICE`): ``GET /persons/{pin}``; an
      unknown PIN rejects (``person_not_found``), an applicant without a valid identity document on the day
      rejects (``id_document_expired``).

    Both calls carry the applicant's PIN as the X-Road ``userId`` and the application id as ``issue``, so the
    providers' message logs tie each lookup to the person and the case it was made for.  They run concurrently.

Decision
    Any rejection reason → ``rejected`` (a registry's own 4xx business error, e.g. ``invalid_pin``, is one, with
    that registry's code).  Otherwise, when a registry could not answer (the bus refused the call —
    ``AccessDenied``, an unreachable provider, a timeout, a 5xx — or answered something unreadable) → ``pending``:
    the application is stored with the reasons and the answer is **503** ``{"error": "registry_unavailable", id,
    status: "pending", reasons}`` with ``Retry-After``; the client retries with ``POST /applications/{id}/retry``.
    Else → ``approved``: a licence numbered ``LIC-YYYY-XXXXXXXX`` (random hex, as the generator numbers them,
    so numbers cannot be enumerated through ``verify``), valid for :data:`LICENSE_YEARS` years, is issued in the
    same transaction that stores the application.  ``activity`` must be one of the licensed activities
    (:data:`adapters.registries.data.LICENSE_ACTIVITIES`), else 422 ``unknown_activity`` before anything is asked.

Storage
    Applications live in ``license_applications`` (created by this adapter; the generator has no such table),
    licences in the generator's ``licenses`` table (``application_id`` naming the application), both in the
    registries database named by option ``database``.  The bus is never called inside a database transaction.
    Option ``today`` (an ISO date) fixes the day used for issue dates, expiry and identity-document checks;
    default the real date.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from adapters.base import (
    AdapterContext,
    AdapterRequest,
    AdapterResponse,
    BusClient,
    BusResponse,
    ServiceDescription,
    register,
)
from adapters.registries import clock, database, error_schema, json_answer
from adapters.registries.data import LICENSE_ACTIVITIES, LICENSE_YEARS
from adapters.registries.db import RegistryDb
from adapters.registries.labor import (
    BusinessError,
    Route,
    Transaction,
    check_identifiers,
    error_response,
    find_route,
    parse_json_object,
    text_field,
    write_transaction,
)
from bridge.errors import ConfigError

__all__ = [
    "LICENSE_YEARS",
    "POPULATION_SERVICE",
    "SERVICE_CODE",
    "TAX_SERVICE",
    "Decision",
    "LicensingRegistry",
    "decide",
    "factory",
    "openapi",
]

#: The REST service code this adapter answers.
SERVICE_CODE = "licenses"
#: Where taxpayers' debts are asked (``GET /taxpayers/{tin}/debt``).
TAX_SERVICE = "AZ/GOV/1300000013/etax/taxpayers"
#: Where persons are asked (``GET /persons/{pin}``).
POPULATION_SERVICE = "AZ/GOV/1100000011/population/persons"
#: Serialises the writers of applications and licences (PostgreSQL advisory lock; SQLite's is the database's).
_LOCK = "korpu.licenses"
#: Seconds a client is asked to wait before retrying a pending application.
RETRY_AFTER_S = 60

_APPLICATION_ID = re.compile(r"^APP-[0-9A-F]{12}$")
_LICENSE_NUMBER = re.compile(r"^LIC-\d{4}-[0-9A-F]{8}$")
_APPLICATION_COLUMNS = "id, tin, pin, activity, status, reasons, license_number, submitted_at, decided_at"
_LICENSE_COLUMNS = "number, holder_tin, activity, issued_on, expires_on, status"
_SELECT_APPLICATION = f"SELECT {_APPLICATION_COLUMNS} FROM license_applications WHERE id = ?"  # noqa: S608
_SELECT_LICENSE = f"SELECT {_LICENSE_COLUMNS} FROM licenses WHERE number = ?"  # noqa: S608
_SELECT_LICENSES_OF = f"SELECT {_LICENSE_COLUMNS} FROM licenses WHERE holder_tin = ? ORDER BY issued_on, number"  # noqa: S608
#: The applications table; licences themselves are in the generator's ``licenses`` table.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS license_applications ("
    " id TEXT PRIMARY KEY, tin TEXT NOT NULL, pin TEXT NOT NULL, activity TEXT NOT NULL,"
    " status TEXT NOT NULL, reasons TEXT NOT NULL, license_number TEXT,"
    " submitted_at TEXT NOT NULL, decided_at TEXT)",
    "CREATE INDEX IF NOT EXISTS license_applications_tin ON license_applications (tin)",
)


@dataclass(frozen=True)
class Reason:
    """Why an application was rejected or is pending."""

    code: str
    message: str
    #: ``True`` when the reason is that a registry could not answer (the decision must wait).
    transient: bool = False

    def to_json(self) -> dict[str, str]:
        """The reason as the API shows it."""
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class Decision:
    """The outcome of asking tax and population: ``approved``, ``rejected`` or ``pending``, with reasons."""

    status: str
    reasons: tuple[Reason, ...] = field(default=())


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def _refusal(registry: str, answer: BusResponse) -> Reason:
    """A registry's own business refusal (a 4xx that is not the bus's): definite, with the registry's code."""
    try:
        body = answer.json()
        code, message = str(body["error"]), str(body.get("message", ""))
    except (ValueError, KeyError, TypeError):
        code, message = f"{registry}_refused", f"the {registry} registry answered {answer.status}"
    return Reason(code, message or f"the {registry} registry refused the request")


def _tax_reasons(tin: str, answer: BusResponse | BaseException) -> list[Reason]:
    """Reasons from the tax service's answer to ``GET /taxpayers/{tin}/debt``."""
    if isinstance(answer, BaseException):
        return [Reason("tax_unavailable", f"the tax service cannot be reached ({answer.__class__.__name__})", True)]
    if answer.error is None and answer.status == 404:
        return [Reason("taxpayer_not_found", f"{tin} is not a registered taxpayer")]
    if answer.error is None and 400 <= answer.status < 500:
        return [_refusal("tax", answer)]
    if answer.error is not None or answer.status != 200:
        return [Reason("tax_unavailable", f"the tax service answered {answer.error or answer.status}", True)]
    try:
        body = answer.json()
        has_debt = body["has_debt"]
    except (ValueError, KeyError, TypeError):
        return [Reason("tax_unavailable", "the tax service's answer could not be read", True)]
    if has_debt is not False:
        amount = body.get("amount") or body.get("total")
        owed = f" ({amount} AZN)" if amount is not None else ""
        return [Reason("tax_debt", f"taxpayer {tin} has an outstanding tax debt{owed}")]
    return []


def _population_reasons(pin: str, answer: BusResponse | BaseException, today: dt.date) -> list[Reason]:
    """Reasons from the population register's answer to ``GET /persons/{pin}``."""
    if isinstance(answer, BaseException):
        return [
            Reason(
                "population_unavailable", f"the population register cannot be reached ({type(answer).__name__})", True
            )
        ]
    if answer.error is None and answer.status == 404:
        return [Reason("person_not_found", f"no person with PIN {pin} in the population register")]
    if answer.error is None and 400 <= answer.status < 500:
        return [_refusal("population", answer)]
    if answer.error is not None or answer.status != 200:
        return [
            Reason("population_unavailable", f"the population register answered {answer.error or answer.status}", True)
        ]
    try:
        person = answer.json()
        expiry = id_document_expiry(person)
    except (ValueError, KeyError, TypeError, AttributeError):
        return [Reason("population_unavailable", "the population register's answer could not be read", True)]
    if person.get("deceased") or person.get("date_of_death"):
        return [Reason("person_deceased", f"the person with PIN {pin} is deceased")]
    if expiry is None or expiry < today:
        when = f" (expired {expiry.isoformat()})" if expiry is not None else ""
        return [Reason("id_document_expired", f"the applicant has no valid identity document{when}")]
    return []


def id_document_expiry(person: Mapping[str, Any]) -> dt.date | None:
    """The latest expiry date among the person's identity documents (``None``: no document)."""
    documents = person.get("documents")
    if documents is None and isinstance(person.get("id_document"), Mapping):
        documents = [person["id_document"]]
    expiries: list[dt.date] = []
    for document in documents or ():
        if document.get("status") in ("revoked", "lost", "invalid"):
            continue
        value = document.get("expires") or document.get("expiry_date") or document.get("valid_until")
        if value:
            expiries.append(dt.date.fromisoformat(str(value)[:10]))
    return max(expiries) if expiries else None


def decide(tax: list[Reason], population: list[Reason]) -> Decision:
    """Rejected on any definite reason; else pending while a registry could not answer; else approved."""
    reasons = tuple(tax + population)
    if any(not r.transient for r in reasons):
        return Decision("rejected", tuple(r for r in reasons if not r.transient))
    if reasons:
        return Decision("pending", reasons)
    return Decision("approved")


def _add_years(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February in a year that has none
        return day.replace(year=day.year + years, day=28)


class LicensingRegistry:
    """The ``licensing`` adapter: REST service ``licenses``, composed over the bus with tax and population."""

    def __init__(
        self,
        db: RegistryDb,
        bus: BusClient,
        *,
        tax_service: str = TAX_SERVICE,
        population_service: str = POPULATION_SERVICE,
        today: Callable[[], dt.date] = dt.date.today,
    ) -> None:
        """Applications and licences are kept in ``db``; ``bus`` reaches the other registries."""
        self._db = db
        self._reader = db.reader()
        self._bus = bus
        self._tax_service = tax_service
        self._population_service = population_service
        self._today = today
        self._schema_ready = False
        self._routes: tuple[Route, ...] = (
            ("POST", re.compile(r"^/applications$"), self._apply),
            ("GET", re.compile(r"^/applications/([^/]+)$"), self._get_application),
            ("POST", re.compile(r"^/applications/([^/]+)/retry$"), self._retry),
            ("GET", re.compile(r"^/licenses$"), self._licenses),
            ("GET", re.compile(r"^/licenses/([^/]+)/verify$"), self._verify),
        )

    async def handle(self, request: AdapterRequest) -> AdapterResponse:
        """Route one REST request; business errors become JSON 4xx answers."""
        try:
            handler, params = find_route(self._routes, request)
            if not self._schema_ready:
                await asyncio.to_thread(self._ensure_schema)
            return await handler(request, *params)
        except BusinessError as error:
            return error_response(error)

    def describe(self) -> Sequence[ServiceDescription]:
        """The ``licenses`` REST service with its OpenAPI document."""
        return (
            ServiceDescription(
                SERVICE_CODE,
                "REST",
                "E-license and permits",
                json.dumps(openapi(), indent=2, ensure_ascii=False).encode(),
                "1.0.0",
            ),
        )

    # Handlers ---------------------------------------------------------------------------------------------------

    async def _apply(self, request: AdapterRequest) -> AdapterResponse:
        data = parse_json_object(request.body)
        unknown = sorted(set(data) - {"tin", "pin", "activity"})
        if unknown:
            raise BusinessError(400, "invalid_request", f"unknown fields: {', '.join(unknown)}")
        tin, pin, activity = text_field(data, "tin"), text_field(data, "pin"), text_field(data, "activity")
        assert tin is not None and pin is not None and activity is not None
        check_identifiers(tin=tin, pin=pin)
        if activity not in LICENSE_ACTIVITIES:
            raise BusinessError(
                422, "unknown_activity", f"{activity} is not a licensed activity ({', '.join(LICENSE_ACTIVITIES)})"
            )
        application_id = f"APP-{secrets.token_hex(6).upper()}"
        decision = await self._ask(application_id, tin, pin)
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        application = await asyncio.to_thread(self._store_new, application_id, tin, pin, activity, decision, now)
        return self._decision_response(201, application)

    async def _retry(self, _request: AdapterRequest, application_id: str) -> AdapterResponse:
        application = await asyncio.to_thread(self._load_application, application_id)
        if application["status"] != "pending":
            raise BusinessError(
                409, "already_decided", f"application {application_id} is already {application['status']}"
            )
        decision = await self._ask(application_id, application["tin"], application["pin"])
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        application = await asyncio.to_thread(self._store_retry, application_id, decision, now)
        return self._decision_response(200, application)

    async def _get_application(self, _request: AdapterRequest, application_id: str) -> AdapterResponse:
        return json_answer(200, await asyncio.to_thread(self._load_application, application_id))

    async def _licenses(self, request: AdapterRequest) -> AdapterResponse:
        tin = parse_qs(request.query).get("tin", [""])[0].strip()
        if not tin:
            raise BusinessError(400, "invalid_request", "give the holder's TIN as ?tin=")
        rows = await asyncio.to_thread(
            self._reader.query,
            _SELECT_LICENSES_OF,
            (tin,),
        )
        return json_answer(200, {"tin": tin, "licenses": [self._license_json(r) for r in rows]})

    async def _verify(self, _request: AdapterRequest, number: str) -> AdapterResponse:
        row = None
        if _LICENSE_NUMBER.match(number):
            row = await asyncio.to_thread(
                self._reader.one,
                _SELECT_LICENSE,
                (number,),
            )
        if row is None:
            raise BusinessError(404, "license_not_found", f"no licence numbered {number}")
        license_ = self._license_json(row)
        return json_answer(200, {"valid": license_["valid"], **license_})

    # The decision -----------------------------------------------------------------------------------------------

    async def _ask(self, application_id: str, tin: str, pin: str) -> Decision:
        """Ask tax and population concurrently over the bus and decide."""
        tax, person = await asyncio.gather(
            self._bus.rest(self._tax_service, "GET", f"/taxpayers/{tin}/debt", user_id=pin, issue=application_id),
            self._bus.rest(self._population_service, "GET", f"/persons/{pin}", user_id=pin, issue=application_id),
            return_exceptions=True,
        )
        for answer in (tax, person):
            if isinstance(answer, BaseException) and not isinstance(answer, Exception):
                raise answer  # cancellation and the like are not "the registry is unavailable"
        return decide(_tax_reasons(tin, tax), _population_reasons(pin, person, self._today()))

    def _decision_response(self, status: int, application: dict[str, Any]) -> AdapterResponse:
        body = {
            "id": application["id"],
            "status": application["status"],
            "reasons": application["reasons"],
            "license_number": application["license_number"],
        }
        if application["status"] == "pending":
            body = {
                "error": "registry_unavailable",
                "message": "a registry could not answer; the application is pending, retry it later",
                **body,
            }
            return json_answer(503, body, (("Retry-After", str(RETRY_AFTER_S)),))
        return json_answer(status, body)

    # Blocking database work (worker threads) ---------------------------------------------------------------------

    def _ensure_schema(self) -> None:
        with write_transaction(self._db) as tx:
            for statement in _SCHEMA:
                tx.execute(statement)
        self._schema_ready = True

    def _issue(self, tx: Transaction, tin: str, activity: str, application_id: str) -> str:
        """Issue a licence for :data:`LICENSE_YEARS` years; its number is random, as the registry's are."""
        today = self._today()
        number = f"LIC-{today.year}-{secrets.token_hex(4).upper()}"
        expires = _add_years(today, LICENSE_YEARS) - dt.timedelta(days=1)
        tx.execute(
            "INSERT INTO licenses (number, holder_tin, activity, issued_on, expires_on, status, application_id)"
            " VALUES (?, ?, ?, ?, ?, 'active', ?)",
            (number, tin, activity, today.isoformat(), expires.isoformat(), application_id),
        )
        return number

    def _store_new(
        self, application_id: str, tin: str, pin: str, activity: str, decision: Decision, now: str
    ) -> dict[str, Any]:
        with write_transaction(self._db) as tx:
            tx.lock(_LOCK)
            number = self._issue(tx, tin, activity, application_id) if decision.status == "approved" else None
            tx.execute(
                f"INSERT INTO license_applications ({_APPLICATION_COLUMNS})"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    application_id,
                    tin,
                    pin,
                    activity,
                    decision.status,
                    json.dumps([r.to_json() for r in decision.reasons], ensure_ascii=False),
                    number,
                    now,
                    None if decision.status == "pending" else now,
                ),
            )
            return self._select_application(tx, application_id)

    def _store_retry(self, application_id: str, decision: Decision, now: str) -> dict[str, Any]:
        with write_transaction(self._db) as tx:
            tx.lock(_LOCK)
            current = self._select_application(tx, application_id)
            if current["status"] != "pending":  # decided by a concurrent retry meanwhile
                raise BusinessError(
                    409, "already_decided", f"application {application_id} is already {current['status']}"
                )
            number = None
            if decision.status == "approved":
                number = self._issue(tx, current["tin"], current["activity"], application_id)
            tx.execute(
                "UPDATE license_applications SET status = ?, reasons = ?, license_number = ?, decided_at = ?"
                " WHERE id = ?",
                (
                    decision.status,
                    json.dumps([r.to_json() for r in decision.reasons], ensure_ascii=False),
                    number,
                    None if decision.status == "pending" else now,
                    application_id,
                ),
            )
            return self._select_application(tx, application_id)

    @staticmethod
    def _application_json(row: Sequence[Any]) -> dict[str, Any]:
        return {
            "id": row[0],
            "tin": row[1],
            "pin": row[2],
            "activity": row[3],
            "status": row[4],
            "reasons": json.loads(row[5]),
            "license_number": row[6],
            "submitted_at": _iso(row[7]),
            "decided_at": _iso(row[8]),
        }

    def _select_application(self, tx: Transaction, application_id: str) -> dict[str, Any]:
        rows = tx.query(
            _SELECT_APPLICATION,
            (application_id,),
        )
        if not rows:
            raise BusinessError(404, "application_not_found", f"no application {application_id}")
        return self._application_json(rows[0])

    def _load_application(self, application_id: str) -> dict[str, Any]:
        row = None
        if _APPLICATION_ID.match(application_id):
            row = self._reader.one(
                _SELECT_APPLICATION,
                (application_id,),
            )
        if row is None:
            raise BusinessError(404, "application_not_found", f"no application {application_id}")
        return self._application_json(row)

    def _license_json(self, row: Sequence[Any]) -> dict[str, Any]:
        number, tin, activity, issued, expires, status = row
        expires_on = dt.date.fromisoformat(str(expires)) if expires is not None else None
        return {
            "number": number,
            "holder_tin": tin,
            "activity": activity,
            "issued": _iso(issued),
            "expires": _iso(expires_on),
            "status": status,
            "valid": status == "active" and (expires_on is None or expires_on >= self._today()),
        }


def openapi() -> dict[str, Any]:
    """The OpenAPI 3 document of the ``licenses`` service."""
    error = {"$ref": "#/components/responses/Error"}

    def ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    string = {"type": "string"}
    date = {"type": "string", "format": "date"}
    decision = {"$ref": "#/components/schemas/Decision"}
    license_ = {"$ref": "#/components/schemas/License"}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "E-license and permits",
            "version": "1.0.0",
            "description": (
                "Licence applications decided from the applicant's tax debt (E-Tax) and identity document "
                "(population register), both asked over the bus. A 503 answer means the application is stored as "
                "pending because a registry could not answer; retry it with POST /applications/{id}/retry."
            ),
        },
        "paths": {
            "/applications": {
                "post": {
                    "operationId": "apply",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["tin", "pin", "activity"],
                                    "additionalProperties": False,
                                    "properties": {"tin": string, "pin": string, "activity": string},
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": ok(decision, "Decided: approved (with a licence) or rejected (with reasons)"),
                        "400": error,
                        "503": ok(decision, "Pending: a registry could not answer"),
                    },
                }
            },
            "/applications/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": string}],
                "get": {
                    "operationId": "getApplication",
                    "responses": {"200": ok({"$ref": "#/components/schemas/Application"}), "404": error},
                },
            },
            "/applications/{id}/retry": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": string}],
                "post": {
                    "operationId": "retryApplication",
                    "responses": {
                        "200": ok(decision),
                        "404": error,
                        "409": error,
                        "503": ok(decision, "Still pending"),
                    },
                },
            },
            "/licenses": {
                "get": {
                    "operationId": "licensesOfHolder",
                    "parameters": [{"name": "tin", "in": "query", "required": True, "schema": string}],
                    "responses": {
                        "200": ok(
                            {
                                "type": "object",
                                "properties": {"tin": string, "licenses": {"type": "array", "items": license_}},
                            }
                        ),
                        "400": error,
                    },
                }
            },
            "/licenses/{number}/verify": {
                "parameters": [{"name": "number", "in": "path", "required": True, "schema": string}],
                "get": {"operationId": "verifyLicense", "responses": {"200": ok(license_), "404": error}},
            },
        },
        "components": {
            "schemas": {
                "Reason": {"type": "object", "properties": {"code": string, "message": string}},
                "Decision": {
                    "type": "object",
                    "required": ["id", "status", "reasons"],
                    "properties": {
                        "id": string,
                        "status": {"type": "string", "enum": ["approved", "rejected", "pending"]},
                        "reasons": {"type": "array", "items": {"$ref": "#/components/schemas/Reason"}},
                        "license_number": {"type": "string", "nullable": True},
                        "error": string,
                        "message": string,
                    },
                },
                "Application": {
                    "type": "object",
                    "properties": {
                        "id": string,
                        "tin": string,
                        "pin": string,
                        "activity": string,
                        "status": {"type": "string", "enum": ["approved", "rejected", "pending"]},
                        "reasons": {"type": "array", "items": {"$ref": "#/components/schemas/Reason"}},
                        "license_number": {"type": "string", "nullable": True},
                        "submitted_at": {"type": "string", "format": "date-time"},
                        "decided_at": {"type": "string", "format": "date-time", "nullable": True},
                    },
                },
                "License": {
                    "type": "object",
                    "properties": {
                        "valid": {"type": "boolean"},
                        "number": string,
                        "holder_tin": string,
                        "activity": string,
                        "issued": date,
                        "expires": date,
                        "status": string,
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


def factory(context: AdapterContext) -> LicensingRegistry:
    """Build the adapter from options ``database``, ``bus_client`` (both required) and the services it asks.

    ``tax_service`` and ``population_service`` override :data:`TAX_SERVICE` and :data:`POPULATION_SERVICE`.
    """
    db = database(context, "licensing")
    if context.bus is None:
        raise ConfigError(
            "adapter licensing: option bus_client (the client subsystem asking tax and population) is required"
        )
    return LicensingRegistry(
        db,
        context.bus,
        tax_service=context.options.get("tax_service", TAX_SERVICE),
        population_service=context.options.get("population_service", POPULATION_SERVICE),
        today=clock(context, "licensing"),
    )


register("licensing", factory)
