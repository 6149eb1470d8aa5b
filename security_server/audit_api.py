"""The auditor's API on the admin application: query the message log, export an exchange's evidence.

Routes (all need an admin API key with role ``auditor`` or ``admin``, see :mod:`security_server.adminkeys`):

``GET /api/v1/audit/records``
    records matching the query parameters ``message_id``, ``request_id``, ``client``, ``service``, ``person``,
    ``since``, ``until`` (every given one narrows), paged with ``after`` and ``limit`` (at most
    :data:`MAX_LIMIT`).  Answers ``{"items": [record, …], "next": cursor | null}``: each item is the record's
    JSON (:meth:`~bridge.messagelog.LogRecord.to_json`: part digests and sizes, never part bytes), and ``next``
    is the ``after`` value for the next page, ``null`` on the last one.  ``issue`` (optional) says why the auditor
    asks — a case number, a data subject's request — and goes into the audit record;
``GET /api/v1/audit/exchanges/{request_id}/evidence[?side=consumer|provider]``
    the exchange's evidence container (ASiC-E, ``application/vnd.etsi.asic-e+zip``) for offline verification,
    as :func:`security_server.messagelog.archive.export_exchange` builds and verifies it; ``side`` is needed only
    when this server logged both sides of the exchange (a member calling its own service).

**Person queries are evidence too.**  A query with ``person=`` first appends a record to the message log
(``direction = "audit"``, ``client = "auditor:<key id>"``, ``service = "audit:person-query"``, ``persons = (the
person,)``, the query's other filters in ``decision``) and only then reads; if that record cannot be written the
query fails with the log's fault (fail closed), so no one looks a person up without leaving a trace.

Parameters are validated strictly and every defect is ``400 Client.InvalidRequest`` naming the parameter:
unknown or repeated parameters (a typo such as ``persons=`` would otherwise silently widen the query to
everyone), malformed identifiers (encoded ``SUBSYSTEM:…``/``MEMBER:…``/``SERVICE:…`` or path form), times that are
not ISO 8601 with a UTC offset, ``since`` not before ``until``, ``limit`` outside 1…1000, ``after`` not a
non-negative integer.

The log store blocks, so every store call runs in a worker thread.  The admin application's error middleware
renders faults; this module only raises them.  It also serves the admin API's OpenAPI document
(``GET /openapi.json``, open: it describes the API, it reveals no data).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

import yaml
from aiohttp import web
from cryptography import x509
from multidict import MultiMapping

import schemas
from bridge.errors import GlobalConfError, InvalidRequest, KorpuError, LoggingFailed, TimestampingFailed
from bridge.evidence import EvidenceCerts
from bridge.globalconf import GlobalConf
from bridge.identifiers import MemberId, ServiceId, SubsystemId, parse_client, parse_encoded
from bridge.logsetup import get_logger
from bridge.messagelog import Direction, LogRecord, utc_now_text
from security_server.adminkeys import AdminKey, AdminRole, require
from security_server.config import ServerConfig
from security_server.messagelog import LogQuery, LogStore, MessageLogWriter
from security_server.persons import clean_person

__all__ = [
    "AUDIT_PREFIX",
    "AUDIT_SOURCE",
    "DEFAULT_LIMIT",
    "EVIDENCE_CONTENT_TYPE",
    "MAX_LIMIT",
    "OPENAPI_FILE",
    "PERSON_QUERY_SERVICE",
    "AuditSource",
    "add_audit_routes",
    "add_openapi_route",
    "evidence_certificates",
    "load_admin_openapi",
    "parse_query",
]

log = get_logger(__name__)

AUDIT_PREFIX = "/api/v1/audit"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
OPENAPI_FILE = "ss-admin.openapi.yaml"
EVIDENCE_CONTENT_TYPE = "application/vnd.etsi.asic-e+zip"
#: ``service`` of the audit record a person query writes.
PERSON_QUERY_SERVICE = "audit:person-query"
RECORDS_QUERY_SERVICE = "audit:records-query"
EXPORT_SERVICE = "audit:evidence-export"
#: ``side`` and ``protocol`` of audit records: neither proxy carried the query, the admin API's JSON did.
AUDIT_SIDE = "admin"
AUDIT_PROTOCOL = "REST"

_TEXT_MAX = 255
_PARAMS = frozenset(
    {"message_id", "request_id", "client", "service", "person", "since", "until", "after", "limit", "issue"}
)
_MAX_CURSOR = 2**63 - 1  # seq is a signed 64-bit column in PostgreSQL
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
_SIDES = ("consumer", "provider")


class AuditSource(Protocol):
    """What the audit routes need of the server runtime (:class:`~security_server.runtime.ServerRuntime`)."""

    @property
    def config(self) -> ServerConfig:
        """The server's configuration (its id goes into audit records)."""
        ...

    @property
    def message_log(self) -> MessageLogWriter:
        """Where audit records are appended."""
        ...

    @property
    def log_store(self) -> LogStore:
        """What queries and exports read."""
        ...

    def conf(self) -> GlobalConf:
        """The current global configuration (trust material for evidence)."""
        ...


AUDIT_SOURCE: web.AppKey[AuditSource] = web.AppKey("audit_source")


def add_audit_routes(app: web.Application, source: AuditSource) -> None:
    """Mount the audit endpoints on the admin application ``app``, reading from ``source``."""
    app[AUDIT_SOURCE] = source
    app.router.add_get(f"{AUDIT_PREFIX}/records", list_records)
    app.router.add_get(f"{AUDIT_PREFIX}/exchanges/{{request_id}}/evidence", exchange_evidence)


# Parameters ----------------------------------------------------------------------------------------------------


def parse_query(params: MultiMapping[str]) -> tuple[LogQuery, str | None]:
    """Validate the records endpoint's parameters; return the store query and the ``issue`` text, if any.

    Raises :class:`~bridge.errors.InvalidRequest` naming the parameter.  Identifiers come back in encoded form,
    times in the records' own format (UTC, microseconds, ``Z``) so that the store compares like with like.
    """
    unknown = sorted(set(params) - _PARAMS)
    if unknown:
        raise InvalidRequest(f"unknown query parameter {unknown[0][:40]!r}; known: {', '.join(sorted(_PARAMS))}")
    single: dict[str, str] = {}
    for name in params:
        values = params.getall(name)
        if len(values) != 1:
            raise InvalidRequest(f"query parameter {name} is given more than once")
        single[name] = values[0]

    def text(name: str) -> str | None:
        value = single.get(name)
        return None if value is None else _text(name, value)

    person = single.get("person")
    if person is not None and clean_person(person) != person:
        raise InvalidRequest("person must be 1 to 128 printable characters without surrounding spaces")
    since, until = _time("since", single.get("since")), _time("until", single.get("until"))
    if since is not None and until is not None and since >= until:
        raise InvalidRequest("since must be before until")
    query = LogQuery(
        message_id=text("message_id"),
        request_id=text("request_id"),
        client=_client(single.get("client")),
        service=_service(single.get("service")),
        person=person,
        since=since,
        until=until,
        after_seq=_integer("after", single.get("after"), 0, _MAX_CURSOR, default=0),
        limit=_integer("limit", single.get("limit"), 1, MAX_LIMIT, default=DEFAULT_LIMIT),
    )
    return query, text("issue")


def _text(name: str, value: str) -> str:
    if not value or len(value) > _TEXT_MAX or not value.isprintable():
        raise InvalidRequest(f"{name} must be 1 to {_TEXT_MAX} printable characters")
    return value


def _client(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        ident = parse_encoded(value) if ":" in value else parse_client(value)
    except KorpuError:
        ident = None
    if not isinstance(ident, MemberId | SubsystemId):
        raise InvalidRequest("client must be a member or subsystem: MEMBER:…, SUBSYSTEM:… or INSTANCE/CLASS/CODE[/SUB]")
    return ident.encoded()


def _service(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        ident = parse_encoded(value) if ":" in value else ServiceId.parse(value)
    except KorpuError:
        ident = None
    if not isinstance(ident, ServiceId):
        raise InvalidRequest("service must be SERVICE:INSTANCE/CLASS/MEMBER/SUBSYSTEM/CODE[/VERSION] or its path form")
    return ident.encoded()


def _time(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    problem = f"{name} must be an ISO 8601 time with a UTC offset, such as 2025-01-31T12:00:00Z"
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(problem) from None
    if when.tzinfo is None:
        # A local time would mean different instants on the auditor's machine and the server.
        raise InvalidRequest(problem)
    return when.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _integer(name: str, value: str | None, low: int, high: int, *, default: int) -> int:
    if value is None:
        return default
    # Only plain decimal digits: int() would also take "+5", " 5", "5_0" and non-ASCII digits.
    if not value.isascii() or not value.isdigit() or len(value) > 19 or not low <= int(value) <= high:
        raise InvalidRequest(f"{name} must be an integer from {low} to {high}")
    return int(value)


# Handlers ------------------------------------------------------------------------------------------------------


async def list_records(request: web.Request) -> web.Response:
    """Records matching the query, one page; a person query is logged before it runs."""
    key = require(request, AdminRole.AUDITOR)
    query, issue = parse_query(request.query)
    source = request.config_dict[AUDIT_SOURCE]
    # (1) Every query leaves its trace first (records carry personal data even without person=); if it cannot,
    #     it does not run.  Person queries are marked as such, with the person, for "who looked at X".
    await _log_query(source, key, query, issue)
    # (2) One more than asked tells whether another page exists, so `next` is null exactly on the last page.
    store = source.log_store
    records = await asyncio.to_thread(store.find, dataclasses.replace(query, limit=query.limit + 1))
    page = records[: query.limit]
    more = len(records) > query.limit
    body = {"items": [record.to_json() for record in page], "next": str(page[-1].seq) if more and page else None}
    return _json(body)


async def _log_query(source: AuditSource, key: AdminKey, query: LogQuery, issue: str | None) -> None:
    """Append the audit record of a query; raise the log's fault if that fails (fail closed)."""
    filters = {
        name: value
        for name, value in dataclasses.asdict(query).items()
        if name not in ("person", "after_seq", "limit") and value is not None
    }
    service = PERSON_QUERY_SERVICE if query.person is not None else RECORDS_QUERY_SERVICE
    persons = (query.person,) if query.person is not None else ()
    await _log_audit(source, key, service, persons, {"filters": filters}, issue)


async def _log_audit(
    source: AuditSource,
    key: AdminKey,
    service: str,
    persons: tuple[str, ...],
    details: dict[str, Any],
    issue: str | None,
) -> None:
    """Append an audit record (who, what, about whom); raise the log's fault if that fails (fail closed)."""
    request_id = str(uuid.uuid4())
    record = LogRecord(
        at=utc_now_text(),
        server=source.config.server_id,
        side=AUDIT_SIDE,
        direction=str(Direction.AUDIT),
        request_id=request_id,
        message_id=request_id,
        protocol=AUDIT_PROTOCOL,
        client=f"auditor:{key.key_id}",
        service=service,
        outcome="ok",
        # Not the key's label as user_id: the store indexes user_id as a person, and a label is not one.
        user_id=None,
        issue=issue,
        persons=persons,
        # What was authorised: the key, the role it was granted under, and what was asked.
        decision={"granted": str(AdminRole.AUDITOR), "key_label": key.label, **details},
    )
    try:
        await source.message_log.append(record, {})
    except (LoggingFailed, TimestampingFailed):
        raise
    except Exception as exc:
        # Any failure of the log denies the query; the cause goes to the diagnostic log, not to the caller.
        log.error("audit access not logged", error_type=type(exc).__name__, auditor=key.key_id)
        raise LoggingFailed("the audit access could not be logged, so it was not carried out") from None


async def exchange_evidence(request: web.Request) -> web.StreamResponse:
    """The evidence container of the exchange ``request_id`` (both directions, proofs, timestamps, certificates).

    The trust material comes from the current global configuration, so a CA or TSA removed from it since the
    exchange was logged is missing from the container.
    """
    # Imported on first use: the archive module (container building and verification) is needed by nothing
    # else the admin API does, and is heavy to import.
    from security_server.messagelog.archive import export_exchange

    key = require(request, AdminRole.AUDITOR)
    request_id = _text("request_id", request.match_info["request_id"])
    unknown = sorted(set(request.query) - {"side", "seq"})
    if unknown:
        raise InvalidRequest(f"unknown query parameter {unknown[0][:40]!r}; known: side, seq")
    side = request.query.get("side")
    if side is not None and (side not in _SIDES or len(request.query.getall("side")) != 1):
        raise InvalidRequest(f"side must be one of {', '.join(_SIDES)}")
    seq_text = request.query.get("seq")
    if seq_text is not None and (not seq_text.isdigit() or len(seq_text) > 18):
        raise InvalidRequest("seq must be a record number")
    seq = int(seq_text) if seq_text is not None else None
    source = request.config_dict[AUDIT_SOURCE]
    certs = evidence_certificates(source.conf())
    # An export hands out message bodies: it is logged first, like a query.
    await _log_audit(source, key, EXPORT_SERVICE, (), {"request_id": request_id, "side": side, "seq": seq}, None)
    data = await asyncio.to_thread(export_exchange, source.log_store, request_id, certs, side=side, seq=seq)
    name = f"exchange-{request_id}.asice" if _SAFE_NAME.fullmatch(request_id) else "exchange.asice"
    return web.Response(
        body=data,
        content_type=EVIDENCE_CONTENT_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def evidence_certificates(conf: GlobalConf) -> EvidenceCerts:
    """The trust material an offline verifier needs, from global configuration: CA roots, issuing CAs, TSAs.

    Raises :class:`~bridge.errors.GlobalConfError` if the configuration names no CA or no TSA (no container made
    then could be verified).
    """

    def load(ders: list[bytes]) -> tuple[x509.Certificate, ...]:
        return tuple(x509.load_der_x509_certificate(der) for der in dict.fromkeys(ders))

    try:
        return EvidenceCerts(
            ca_roots=load([ca.top_cert for ca in conf.cas]),
            ca_intermediates=load([der for ca in conf.cas for der in ca.intermediate_certs]),
            tsas=load([tsa.cert for tsa in conf.tsas]),
        )
    except ValueError:
        raise GlobalConfError("global configuration names no CA or no timestamp authority to verify evidence") from None


# OpenAPI -------------------------------------------------------------------------------------------------------


def load_admin_openapi() -> dict[str, Any]:
    """The admin API's OpenAPI document shipped in :mod:`schemas`, parsed."""
    with schemas.path(OPENAPI_FILE).open(encoding="utf-8") as fh:
        document = yaml.safe_load(fh)
    if not isinstance(document, dict):  # pragma: no cover - the file is part of the package
        raise TypeError(f"{OPENAPI_FILE} is not a mapping")
    return document


def add_openapi_route(app: web.Application) -> None:
    """Serve the admin API's OpenAPI document at ``GET /openapi.json`` (no key needed)."""
    document = load_admin_openapi()

    async def openapi(request: web.Request) -> web.Response:
        """The admin API's OpenAPI document."""
        return _json(document)

    app.router.add_get("/openapi.json", openapi)


def _json(data: Mapping[str, Any]) -> web.Response:
    return web.json_response(data, dumps=functools.partial(json.dumps, ensure_ascii=False))
