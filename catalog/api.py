"""The central server's management API: JSON over HTTP under ``/api/v1``, described by ``/openapi.json``.

:func:`management_app` builds the API as a sub-application (with its own error middleware) to mount at
``/api/v1``; :func:`add_management_routes` mounts it on an existing application and also serves the OpenAPI
document at ``/openapi.json``; :func:`create_app` is a stand-alone application doing both.

Every route is declared once in :data:`ROUTES` with the roles it needs (``None``: open).  Two routes are open
on purpose: submitting a registration request (a new security server has no key yet; approval is the gate)
and reading one request by its UUID (so the server can poll for its certificates, which are public).

The store is synchronous; every call runs in a worker thread (``asyncio.to_thread``) so the event loop never
blocks on the database.  Errors are :class:`~bridge.errors.KorpuError` rendered by
:func:`~bridge.errors.render_json`; unexpected exceptions become ``Server.InternalError`` with a correlation id
that is also in the diagnostic log next to the traceback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import structlog
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import schemas
from bridge.errors import (
    InvalidIdentifier,
    InvalidRequest,
    KorpuError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    render_json,
)
from bridge.globalconf import AccessRight, GlobalGroup
from bridge.identifiers import (
    ClientId,
    GlobalGroupId,
    MemberId,
    SecurityServerId,
    ServiceId,
    SubsystemId,
    parse_client,
)
from catalog.auth import ADMIN, ANY_ROLE, REGISTRATION, SECURITY, authenticate
from catalog.certregistry import CertKind, CertRecord
from catalog.store import (
    AccessRightRecord,
    ApiKey,
    CatalogService,
    CatalogStore,
    ClientRegistration,
    Fee,
    InstanceScoped,
    Member,
    PublicServiceMetadata,
    RegistrationRequest,
    RegistrationService,
    RequestKind,
    RequestState,
    Role,
    SecurityServer,
    ServerRegistration,
    ServiceSpec,
    parse_subject,
)

__all__ = [
    "API_PREFIX",
    "MAX_BODY",
    "MAX_SUBMISSION_BODY",
    "OPENAPI_FILE",
    "REGISTRATION_KEY",
    "ROUTES",
    "STORE_KEY",
    "add_management_routes",
    "create_app",
    "error_middleware",
    "load_openapi",
    "management_app",
    "read_capped",
]

log = structlog.get_logger(__name__)

#: Largest request body any management endpoint reads.
MAX_BODY = 1024 * 1024
#: Largest body of the open registration endpoint: two CSRs and a few codes fit in far less.
MAX_SUBMISSION_BODY = 128 * 1024
OPENAPI_FILE = "central-api.openapi.yaml"
#: Where :func:`management_app` is mounted.
API_PREFIX = "/api/v1"

STORE_KEY = web.AppKey("catalog_store", CatalogStore)
REGISTRATION_KEY = web.AppKey("catalog_registration", RegistrationService)
_OPENAPI_KEY = web.AppKey("catalog_openapi", dict)

T = TypeVar("T")
#: An identifier that names its instance (every kind the catalog stores).
Ident = TypeVar("Ident", bound=InstanceScoped)

# Identifier path segments: codes never contain "/", so each identifier kind is a fixed number of segments.
_SEG = "[^/]+"
_MEMBER = f"{_SEG}/{_SEG}/{_SEG}"
_SUBSYSTEM = f"{_MEMBER}/{_SEG}"
_SERVICE = f"{_SUBSYSTEM}/{_SEG}(?:/{_SEG})?"
_GROUP = f"{_SEG}/{_SEG}"
_CLIENT = f"{_MEMBER}(?:/{_SEG})?"


# Plumbing ------------------------------------------------------------------------------------------------------


def _error_response(error: KorpuError, correlation_id: str | None = None) -> web.Response:
    # X-Road-Error carries the fault code so a caller can branch on it without parsing the body (docs/errors.md).
    return web.Response(
        body=render_json(error, correlation_id),
        status=error.http_status,
        content_type="application/json",
        headers={"X-Road-Error": error.fault_code},
    )


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn every failure into a JSON error body; never let a traceback reach the caller."""
    try:
        return await handler(request)
    except KorpuError as exc:
        correlation_id = None
        if exc.http_status >= 500:
            correlation_id = uuid.uuid4().hex
            log.error("management API error", fault=exc.fault_code, correlation_id=correlation_id, path=request.path)
        return _error_response(exc, correlation_id)
    except web.HTTPNotFound:
        return _error_response(NotFound(f"no endpoint at {request.path}"))
    except web.HTTPMethodNotAllowed:
        return _error_response(MethodNotAllowed(f"{request.method} is not allowed on {request.path}"))
    except web.HTTPRequestEntityTooLarge:
        return _error_response(PayloadTooLarge(f"the request body exceeds {MAX_BODY} bytes"))
    except web.HTTPException:
        raise
    except asyncio.CancelledError:
        raise
    except Exception:
        correlation_id = uuid.uuid4().hex
        log.exception("unhandled management API error", correlation_id=correlation_id, path=request.path)
        return _error_response(KorpuError("internal error"), correlation_id)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=functools.partial(json.dumps, ensure_ascii=False))


async def read_capped(request: web.Request, limit: int) -> bytes | None:
    """The whole request body, or ``None`` as soon as it proves longer than ``limit`` bytes.

    Reads until end of stream, so a chunked body arrives whole; ``StreamReader.read(n)`` would return only what
    happens to be buffered.  The cap holds with or without a Content-Length.
    """
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _refuse_constant(name: str) -> Any:
    raise InvalidRequest(f"the request body is not valid JSON ({name} is not a JSON number)")


async def _read_json(request: web.Request, limit: int = MAX_BODY) -> _Body:
    """Read at most ``limit`` bytes of JSON object body and parse it strictly.

    Refused as 400 InvalidRequest: malformed JSON or UTF-8, ``NaN``/``Infinity`` (not JSON, though Python's parser
    takes them), and nesting deep enough to exhaust the parser's recursion (the body is open to anyone on the
    registration endpoint, so that must be a clean refusal, not a 500).
    """
    raw = await read_capped(request, limit)
    if raw is None:
        raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
    try:
        data = json.loads(raw, parse_constant=_refuse_constant) if raw else None
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("the request body is not valid JSON") from None
    except RecursionError:
        raise InvalidRequest("the request body is nested too deeply") from None
    return _Body(data, instance=_get_store(request).instance)


class _Body:
    """A JSON object body read field by field; whatever is left unread at :meth:`done` is an unknown field.

    Identifiers read with :meth:`ident` must belong to ``instance``, the catalog's: nothing of another X-Road
    instance enters the catalog.
    """

    def __init__(self, data: object, prefix: str = "", *, instance: str) -> None:
        if not isinstance(data, dict):
            raise InvalidRequest(f"{prefix.rstrip('.') or 'the request body'} must be a JSON object")
        self._data: dict[str, Any] = data
        self._seen: set[str] = set()
        self._prefix = prefix
        self._instance = instance

    def _get(self, name: str, required: bool) -> Any:
        self._seen.add(name)
        value = self._data.get(name)
        if value is None and required:
            raise InvalidRequest(f"{self._prefix}{name} is required")
        return value

    def text(self, name: str) -> str:
        """A required string field."""
        value = self._get(name, True)
        if not isinstance(value, str):
            raise InvalidRequest(f"{self._prefix}{name} must be a string")
        return value

    def opt_str(self, name: str, default: str | None = None) -> str | None:
        """An optional string field (``null`` or absent: ``default``)."""
        value = self._get(name, False)
        if value is None:
            return default
        if not isinstance(value, str):
            raise InvalidRequest(f"{self._prefix}{name} must be a string")
        return value

    def str_list(self, name: str, *, max_items: int = 100) -> tuple[str, ...]:
        """An optional list of strings (absent: empty)."""
        value = self._get(name, False)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidRequest(f"{self._prefix}{name} must be a list of strings")
        if len(value) > max_items:
            raise InvalidRequest(f"{self._prefix}{name} has more than {max_items} items")
        return tuple(value)

    def flag(self, name: str, default: bool = False) -> bool:
        """An optional boolean."""
        value = self._get(name, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise InvalidRequest(f"{self._prefix}{name} must be true or false")
        return value

    def opt_int(self, name: str) -> int | None:
        """An optional integer (booleans are not integers here)."""
        value = self._get(name, False)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidRequest(f"{self._prefix}{name} must be an integer")
        return value

    def obj(self, name: str) -> _Body | None:
        """An optional nested object."""
        value = self._get(name, False)
        return None if value is None else _Body(value, f"{self._prefix}{name}.", instance=self._instance)

    def ident(self, name: str, parse: Callable[[str], Ident]) -> Ident:
        """A required identifier field of the catalog's instance; a malformed or foreign one is InvalidIdentifier."""
        return self._local(name, _ident(self.text(name), parse, f"{self._prefix}{name}"))

    def opt_ident(self, name: str, parse: Callable[[str], Ident]) -> Ident | None:
        """An optional identifier field (``null`` or absent: ``None``), checked like :meth:`ident`."""
        text = self.opt_str(name)
        return None if text is None else self._local(name, _ident(text, parse, f"{self._prefix}{name}"))

    def _local(self, name: str, ident: Ident) -> Ident:
        if ident.instance != self._instance:
            raise InvalidIdentifier(
                f"{self._prefix}{name}: {ident.path()} belongs to X-Road instance {ident.instance}, "
                f"but this central server governs instance {self._instance}"
            )
        return ident

    def done(self) -> None:
        """Refuse fields the endpoint does not know (a typo must not be silently ignored)."""
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            raise InvalidRequest(f"unknown field {self._prefix}{unknown[0]}")


def _ident(text: str, parse: Callable[[str], T], field: str) -> T:
    try:
        return parse(text)
    except InvalidIdentifier as exc:
        raise InvalidIdentifier(f"{field}: {exc.message}") from None


def _path_ident(request: web.Request, name: str, parse: Callable[[str], T]) -> T:
    return _ident(request.match_info[name], parse, name)


def _get_store(request: web.Request) -> CatalogStore:
    return request.app[STORE_KEY]


def _who(key: ApiKey | None) -> str:
    return "anonymous" if key is None else f"api-key:{key.key_id}"


async def _run(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking store call in a worker thread."""
    return await asyncio.to_thread(func, *args, **kwargs)


# JSON views ----------------------------------------------------------------------------------------------------


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _pem(der: bytes | None) -> str | None:
    if der is None:
        return None
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()


def _member_view(m: Member) -> dict[str, Any]:
    return {"id": m.id.path(), "name": m.name, "subsystems": list(m.subsystems), "created_at": _iso(m.created_at)}


def _server_view(s: SecurityServer) -> dict[str, Any]:
    return {
        "id": s.id.path(),
        "owner": s.id.owner.path(),
        "address": s.address,
        "auth_cert_hashes": list(s.auth_cert_hashes),
        "clients": [c.path() for c in s.clients],
        "created_at": _iso(s.created_at),
    }


def _request_view(r: RegistrationRequest) -> dict[str, Any]:
    # CSRs are not echoed: they are only input to the CA.  Certificates are public, so the open GET may show them.
    return {
        "id": r.id,
        "kind": r.kind.value,
        "state": r.state.value,
        "server_id": r.server_id.path(),
        "owner_name": r.owner_name,
        "address": r.address,
        "clients": list(r.client_codes),
        "client": None if r.client is None else r.client.path(),
        "member_name": r.member_name,
        "submitted_at": _iso(r.submitted_at),
        "decided_at": _iso(r.decided_at),
        "decided_by": r.decided_by,
        "comment": r.comment,
        "auth_certificate": _pem(r.auth_cert_der),
        "sign_certificate": _pem(r.sign_cert_der),
    }


def _group_view(g: GlobalGroup) -> dict[str, Any]:
    return {"id": g.id.path(), "description": g.description, "members": [c.path() for c in g.members]}


def _service_view(s: CatalogService) -> dict[str, Any]:
    spec, meta = s.spec, s.spec.metadata
    return {
        "id": spec.id.path(),
        "type": spec.type,
        "title": spec.title,
        "description": spec.description,
        "description_document": spec.description_doc,
        "description_url": spec.description_url,
        "metadata": {
            "legal_basis": meta.legal_basis,
            "required_documents": list(meta.required_documents),
            "fee": None if meta.fee is None else {"amount": str(meta.fee.amount), "currency": meta.fee.currency},
            "duration_text": meta.duration_text,
            "duration_days": meta.duration_days,
            "channels": list(meta.channels),
            "is_e_service": meta.is_e_service,
            "responsible_agency": (meta.responsible_agency or spec.id.member).path(),
        },
        "created_at": _iso(s.created_at),
        "updated_at": _iso(s.updated_at),
    }


def _right_view(a: AccessRightRecord) -> dict[str, Any]:
    return {
        "id": a.id,
        "subject": a.right.subject.encoded(),
        "service": a.right.service.path(),
        "method": a.right.method,
        "path": a.right.path,
        "created_at": _iso(a.created_at),
    }


def _cert_view(c: CertRecord) -> dict[str, Any]:
    return {
        # A string: serials are up to 159 bits, beyond what JSON numbers carry safely.
        "serial": str(c.serial),
        "kind": c.kind.value,
        "subject": c.subject,
        "not_after": _iso(c.not_after),
        "revoked_at": _iso(c.revoked_at),
        "revocation_reason": c.revocation_reason,
        "pem": _pem(c.der),
    }


def _key_view(k: ApiKey) -> dict[str, Any]:
    return {
        "key_id": k.key_id,
        "roles": sorted(r.value for r in k.roles),
        "label": k.label,
        "created_at": _iso(k.created_at),
        "revoked_at": _iso(k.revoked_at),
    }


def _items(views: list[dict[str, Any]]) -> web.Response:
    return _json({"items": views})


# Handlers ------------------------------------------------------------------------------------------------------

Handler = Callable[[web.Request, ApiKey | None], Awaitable[web.StreamResponse]]


async def get_openapi(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """The OpenAPI document of this API."""
    return _json(request.app[_OPENAPI_KEY])


async def get_status(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Catalog counts."""
    return _json(await _run(_get_store(request).status))


async def list_members(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """All members."""
    return _items([_member_view(m) for m in await _run(_get_store(request).members)])


async def create_member(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Register a member."""
    body = await _read_json(request)
    member_id, name = body.ident("id", MemberId.parse), body.text("name")
    body.done()
    return _json(_member_view(await _run(_get_store(request).create_member, member_id, name)), 201)


async def get_member(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """One member."""
    member_id = _path_ident(request, "member_id", MemberId.parse)
    member = await _run(_get_store(request).member, member_id)
    if member is None:
        raise NotFound(f"member {member_id.path()} is not registered")
    return _json(_member_view(member))


async def delete_member(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Delete an unused member."""
    await _run(_get_store(request).delete_member, _path_ident(request, "member_id", MemberId.parse))
    return web.Response(status=204)


async def list_subsystems(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """All subsystems (``?member=`` filters by member)."""
    member = request.query.get("member")
    member_id = None if member is None else _ident(member, MemberId.parse, "member")
    subsystems = await _run(_get_store(request).subsystems, member_id)
    return _items([{"id": s.path()} for s in subsystems])


async def create_subsystem(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Register a subsystem of a registered member."""
    body = await _read_json(request)
    subsystem_id = body.ident("id", SubsystemId.parse)
    body.done()
    await _run(_get_store(request).create_subsystem, subsystem_id)
    return _json({"id": subsystem_id.path()}, 201)


async def delete_subsystem(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Delete an unused subsystem."""
    await _run(_get_store(request).delete_subsystem, _path_ident(request, "subsystem_id", SubsystemId.parse))
    return web.Response(status=204)


async def list_servers(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """All registered security servers."""
    return _items([_server_view(s) for s in await _run(_get_store(request).servers)])


async def get_server(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """One security server."""
    server_id = _path_ident(request, "server_id", SecurityServerId.parse)
    server = await _run(_get_store(request).server, server_id)
    if server is None:
        raise NotFound(f"security server {server_id.path()} is not registered")
    return _json(_server_view(server))


async def revoke_server(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Remove a security server from the catalog and revoke its certificates."""
    server_id = _path_ident(request, "server_id", SecurityServerId.parse)
    body = await _read_json(request)
    reason = body.opt_str("reason", "cessationOfOperation")
    body.done()
    assert reason is not None  # a default was given
    revoked = await _run(_get_store(request).revoke_server, server_id, reason)
    log.info("security server revoked", server=server_id.path(), by=_who(key))
    return _json({"id": server_id.path(), "revoked_certificates": [_cert_view(c) for c in revoked]})


async def submit_registration(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Submit a registration request (open: approval is the gate)."""
    body = await _read_json(request, MAX_SUBMISSION_BODY)
    kind = body.opt_str("kind", RequestKind.SERVER.value)
    server_id = body.ident("server_id", SecurityServerId.parse)
    registration: ServerRegistration | ClientRegistration
    if kind == RequestKind.SERVER:
        registration = ServerRegistration(
            server_id=server_id,
            owner_name=body.text("owner_name"),
            address=body.text("address"),
            auth_csr_pem=body.text("auth_csr"),
            sign_csr_pem=body.text("sign_csr"),
            client_codes=body.str_list("clients"),
        )
    elif kind == RequestKind.CLIENT:
        registration = ClientRegistration(
            server_id=server_id, client=body.ident("client", SubsystemId.parse), member_name=body.opt_str("member_name")
        )
    else:
        raise InvalidRequest("kind must be 'server' or 'client'")
    body.done()
    submitted = await _run(request.app[REGISTRATION_KEY].submit, registration)
    log.info("registration request submitted", request_id=submitted.id, server=server_id.path(), kind=kind)
    return _json(_request_view(submitted), 201)


async def list_registrations(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Registration requests, optionally ``?state=submitted|approved|rejected``."""
    state_text = request.query.get("state")
    try:
        state = None if state_text is None else RequestState(state_text)
    except ValueError:
        raise InvalidRequest("state must be submitted, approved or rejected") from None
    return _items([_request_view(r) for r in await _run(_get_store(request).registration_requests, state)])


async def get_registration(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """One registration request by its UUID (open, so the security server can poll)."""
    request_id = request.match_info["request_id"]
    found = await _run(_get_store(request).registration_request, request_id)
    if found is None:
        raise NotFound(f"registration request {request_id} does not exist")
    return _json(_request_view(found))


async def _decide(request: web.Request, key: ApiKey | None, approve: bool) -> web.StreamResponse:
    request_id = request.match_info["request_id"]
    body = await _read_json(request)
    comment = body.opt_str("comment", "") or ""
    body.done()
    service = request.app[REGISTRATION_KEY]
    decide = service.approve if approve else service.reject
    decided = await _run(decide, request_id, decided_by=_who(key), comment=comment)
    log.info("registration request decided", request_id=request_id, state=decided.state.value, by=_who(key))
    return _json(_request_view(decided))


async def approve_registration(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Approve a submitted request; certificates are issued for a server registration."""
    return await _decide(request, key, True)


async def reject_registration(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Reject a submitted request."""
    return await _decide(request, key, False)


async def list_groups(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """All global groups."""
    return _items([_group_view(g) for g in await _run(_get_store(request).groups)])


async def create_group(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Create a global group."""
    body = await _read_json(request)
    group_id, description = body.ident("id", GlobalGroupId.parse), body.opt_str("description", "") or ""
    body.done()
    return _json(_group_view(await _run(_get_store(request).create_group, group_id, description)), 201)


async def get_group(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """One global group."""
    group_id = _path_ident(request, "group_id", GlobalGroupId.parse)
    group = await _run(_get_store(request).group, group_id)
    if group is None:
        raise NotFound(f"global group {group_id.path()} does not exist")
    return _json(_group_view(group))


async def update_group(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Change a global group's description."""
    group_id = _path_ident(request, "group_id", GlobalGroupId.parse)
    body = await _read_json(request)
    description = body.text("description")
    body.done()
    return _json(_group_view(await _run(_get_store(request).update_group, group_id, description)))


async def delete_group(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Delete a global group no access right names."""
    await _run(_get_store(request).delete_group, _path_ident(request, "group_id", GlobalGroupId.parse))
    return web.Response(status=204)


async def add_group_member(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Add a member or subsystem to a global group."""
    group_id = _path_ident(request, "group_id", GlobalGroupId.parse)
    body = await _read_json(request)
    client: ClientId = body.ident("client", parse_client)
    body.done()
    return _json(_group_view(await _run(_get_store(request).add_group_member, group_id, client)))


async def remove_group_member(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Remove a member or subsystem from a global group."""
    group_id = _path_ident(request, "group_id", GlobalGroupId.parse)
    client: ClientId = _path_ident(request, "client_id", parse_client)
    return _json(_group_view(await _run(_get_store(request).remove_group_member, group_id, client)))


def _service_spec(service_id: ServiceId, body: _Body) -> ServiceSpec:
    meta_body = body.obj("metadata")
    metadata = PublicServiceMetadata()
    if meta_body is not None:
        fee_body = meta_body.obj("fee")
        fee = None
        if fee_body is not None:
            try:
                amount = Decimal(fee_body.text("amount"))
            except InvalidOperation:
                raise InvalidRequest('metadata.fee.amount must be a decimal number such as "2.50"') from None
            fee = Fee(amount, fee_body.text("currency"))
            fee_body.done()
        agency = meta_body.opt_ident("responsible_agency", MemberId.parse)
        metadata = PublicServiceMetadata(
            legal_basis=meta_body.opt_str("legal_basis", "") or "",
            required_documents=meta_body.str_list("required_documents"),
            fee=fee,
            duration_text=meta_body.opt_str("duration_text"),
            duration_days=meta_body.opt_int("duration_days"),
            channels=meta_body.str_list("channels"),
            is_e_service=meta_body.flag("is_e_service"),
            responsible_agency=agency,
        )
        meta_body.done()
    stype = body.text("type")
    spec = ServiceSpec(
        id=service_id,
        type=stype,  # type: ignore[arg-type]  # ServiceSpec checks it against the allowed values
        title=body.text("title"),
        description=body.opt_str("description", "") or "",
        description_doc=body.opt_str("description_document"),
        description_url=body.opt_str("description_url"),
        metadata=metadata,
    )
    body.done()
    return spec


async def list_services(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Services, optionally searched with ``?q=`` and filtered by ``?provider=``."""
    provider_text = request.query.get("provider")
    provider = None if provider_text is None else _ident(provider_text, SubsystemId.parse, "provider")
    query = request.query.get("q")
    if query is not None and len(query) > 200:
        raise InvalidRequest("q is longer than 200 characters")
    services = await _run(_get_store(request).services, query, provider=provider)
    return _items([_service_view(s) for s in services])


async def create_service(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Add a service to the catalog."""
    body = await _read_json(request)
    spec = _service_spec(body.ident("id", ServiceId.parse), body)
    return _json(_service_view(await _run(_get_store(request).create_service, spec)), 201)


async def get_service(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """One catalogued service with its description document and metadata."""
    service_id = _path_ident(request, "service_id", ServiceId.parse)
    found = await _run(_get_store(request).service, service_id)
    if found is None:
        raise NotFound(f"service {service_id.path()} is not in the catalog")
    return _json(_service_view(found))


async def update_service(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Replace a service's type, texts, description document and metadata."""
    service_id = _path_ident(request, "service_id", ServiceId.parse)
    body = await _read_json(request)
    body.opt_str("id")  # allowed for symmetry with create; the path names the service
    spec = _service_spec(service_id, body)
    return _json(_service_view(await _run(_get_store(request).update_service, spec)))


async def delete_service(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Remove a service and its access rights."""
    await _run(_get_store(request).delete_service, _path_ident(request, "service_id", ServiceId.parse))
    return web.Response(status=204)


async def list_access_rights(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Access rights, optionally ``?service=`` (path form) and ``?subject=`` (encoded form)."""
    service_text, subject_text = request.query.get("service"), request.query.get("subject")
    service = None if service_text is None else _ident(service_text, ServiceId.parse, "service")
    subject = None if subject_text is None else _ident(subject_text, parse_subject, "subject")
    rights = await _run(_get_store(request).access_rights, service=service, subject=subject)
    return _items([_right_view(r) for r in rights])


async def grant_access_right(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Grant a subject access to a service (idempotent)."""
    body = await _read_json(request)
    right = AccessRight(
        subject=body.ident("subject", parse_subject),
        service=body.ident("service", ServiceId.parse),
        method=body.opt_str("method"),
        path=body.opt_str("path"),
    )
    body.done()
    return _json(_right_view(await _run(_get_store(request).grant_access, right)), 201)


async def revoke_access_right(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Remove an access right by id."""
    await _run(_get_store(request).revoke_access, int(request.match_info["right_id"]))
    return web.Response(status=204)


async def list_certificates(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Certificate records, optionally ``?kind=auth|sign|…``."""
    kind_text = request.query.get("kind")
    try:
        kind = None if kind_text is None else CertKind(kind_text)
    except ValueError:
        raise InvalidRequest(f"kind must be one of {', '.join(k.value for k in CertKind)}") from None
    return _items([_cert_view(c) for c in await _run(_get_store(request).certificates, kind)])


async def get_certificate(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """One certificate record by decimal serial number."""
    serial = int(request.match_info["serial"])
    record = await _run(_get_store(request).certificate, serial)
    if record is None:
        raise NotFound(f"no certificate with serial number {serial} was issued")
    return _json(_cert_view(record))


async def revoke_certificate(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Revoke a certificate with an RFC 5280 reason."""
    serial = int(request.match_info["serial"])
    body = await _read_json(request)
    reason = body.text("reason")
    body.done()
    record = await _run(_get_store(request).revoke_certificate, serial, reason)
    log.info("certificate revoked", serial=serial, reason=reason, by=_who(key))
    return _json(_cert_view(record))


async def list_api_keys(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """All API keys (never their secrets)."""
    return _items([_key_view(k) for k in await _run(_get_store(request).api_keys)])


async def create_api_key(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Create an API key; the secret is in this answer only."""
    body = await _read_json(request)
    roles, label = body.str_list("roles", max_items=len(Role)), body.opt_str("label", "") or ""
    body.done()
    key_id, secret = await _run(_get_store(request).create_api_key, roles, label)
    log.info("API key created", key_id=key_id, roles=sorted(roles), by=_who(key))
    return _json({"key_id": key_id, "secret": secret, "roles": sorted(set(roles)), "label": label}, 201)


async def revoke_api_key(request: web.Request, key: ApiKey | None) -> web.StreamResponse:
    """Revoke an API key."""
    revoked = await _run(_get_store(request).revoke_api_key, request.match_info["key_id"])
    log.info("API key revoked", key_id=revoked.key_id, by=_who(key))
    return _json(_key_view(revoked))


# Routes --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint: method, aiohttp path pattern, handler and the roles it needs (``None``: open)."""

    method: str
    path: str
    handler: Handler
    roles: frozenset[Role] | None


#: Paths are relative to :data:`API_PREFIX`, where :func:`management_app` is mounted.
ROUTES: tuple[Route, ...] = (
    Route("GET", "/openapi.json", get_openapi, None),
    Route("GET", "/status", get_status, ANY_ROLE),
    Route("GET", "/members", list_members, ANY_ROLE),
    Route("POST", "/members", create_member, REGISTRATION),
    Route("GET", f"/members/{{member_id:{_MEMBER}}}", get_member, ANY_ROLE),
    Route("DELETE", f"/members/{{member_id:{_MEMBER}}}", delete_member, REGISTRATION),
    Route("GET", "/subsystems", list_subsystems, ANY_ROLE),
    Route("POST", "/subsystems", create_subsystem, REGISTRATION),
    Route("DELETE", f"/subsystems/{{subsystem_id:{_SUBSYSTEM}}}", delete_subsystem, REGISTRATION),
    Route("GET", "/security-servers", list_servers, ANY_ROLE),
    Route("GET", f"/security-servers/{{server_id:{_SUBSYSTEM}}}", get_server, ANY_ROLE),
    Route("POST", f"/security-servers/{{server_id:{_SUBSYSTEM}}}/revoke", revoke_server, SECURITY),
    Route("POST", "/registration-requests", submit_registration, None),
    Route("GET", "/registration-requests", list_registrations, ANY_ROLE),
    Route("GET", "/registration-requests/{request_id}", get_registration, None),
    Route("POST", "/registration-requests/{request_id}/approve", approve_registration, REGISTRATION),
    Route("POST", "/registration-requests/{request_id}/reject", reject_registration, REGISTRATION),
    Route("GET", "/global-groups", list_groups, ANY_ROLE),
    Route("POST", "/global-groups", create_group, REGISTRATION),
    Route("GET", f"/global-groups/{{group_id:{_GROUP}}}", get_group, ANY_ROLE),
    Route("PUT", f"/global-groups/{{group_id:{_GROUP}}}", update_group, REGISTRATION),
    Route("DELETE", f"/global-groups/{{group_id:{_GROUP}}}", delete_group, REGISTRATION),
    Route("POST", f"/global-groups/{{group_id:{_GROUP}}}/members", add_group_member, REGISTRATION),
    Route(
        "DELETE",
        f"/global-groups/{{group_id:{_GROUP}}}/members/{{client_id:{_CLIENT}}}",
        remove_group_member,
        REGISTRATION,
    ),
    Route("GET", "/services", list_services, ANY_ROLE),
    Route("POST", "/services", create_service, REGISTRATION),
    Route("GET", f"/services/{{service_id:{_SERVICE}}}", get_service, ANY_ROLE),
    Route("PUT", f"/services/{{service_id:{_SERVICE}}}", update_service, REGISTRATION),
    Route("DELETE", f"/services/{{service_id:{_SERVICE}}}", delete_service, REGISTRATION),
    Route("GET", "/access-rights", list_access_rights, ANY_ROLE),
    Route("POST", "/access-rights", grant_access_right, REGISTRATION),
    Route("DELETE", "/access-rights/{right_id:[0-9]{1,18}}", revoke_access_right, REGISTRATION),
    Route("GET", "/certificates", list_certificates, ANY_ROLE),
    Route("GET", "/certificates/{serial:[0-9]{1,60}}", get_certificate, ANY_ROLE),
    Route("POST", "/certificates/{serial:[0-9]{1,60}}/revoke", revoke_certificate, SECURITY),
    Route("GET", "/api-keys", list_api_keys, ADMIN),
    Route("POST", "/api-keys", create_api_key, ADMIN),
    Route("DELETE", "/api-keys/{key_id}", revoke_api_key, ADMIN),
)


def _guarded(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap a handler with its authentication and role check (open routes get ``None`` as the key)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        key = None
        if route.roles is not None:
            key = await authenticate(request.app[STORE_KEY], request.headers, route.roles)
            structlog.contextvars.bind_contextvars(api_key=key.key_id)
        return await route.handler(request, key)

    handle.__name__ = route.handler.__name__
    handle.__doc__ = route.handler.__doc__
    return handle


def load_openapi() -> dict[str, Any]:
    """The OpenAPI document shipped in :mod:`schemas`, parsed."""
    with schemas.path(OPENAPI_FILE).open(encoding="utf-8") as fh:
        document = yaml.safe_load(fh)
    if not isinstance(document, dict):  # pragma: no cover - the file is part of the package
        raise TypeError(f"{OPENAPI_FILE} is not a mapping")
    return document


def management_app(store: CatalogStore, registration: RegistrationService) -> web.Application:
    """The management API as a sub-application to mount at :data:`API_PREFIX` (``/api/v1``).

    It carries its own :func:`error_middleware`, so every answer under the prefix, unknown routes included, is
    a JSON error body whatever the parent application does.
    """
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY)
    app[STORE_KEY] = store
    app[REGISTRATION_KEY] = registration
    app[_OPENAPI_KEY] = load_openapi()
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _guarded(route))
    return app


def add_management_routes(app: web.Application, store: CatalogStore, registration: RegistrationService) -> None:
    """Mount the management API on ``app`` at :data:`API_PREFIX` and serve its OpenAPI document at ``/openapi.json``."""
    document = load_openapi()

    async def root_openapi(request: web.Request) -> web.StreamResponse:
        return _json(document)

    app.add_subapp(API_PREFIX, management_app(store, registration))
    app.router.add_get("/openapi.json", root_openapi)


def create_app(store: CatalogStore, registration: RegistrationService) -> web.Application:
    """A stand-alone management API application (what tests and a minimal central server run)."""
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY)
    add_management_routes(app, store, registration)
    return app
