"""Management API tests against a real aiohttp server on loopback (SQLite; one lifecycle also on PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization

from catalog.api import API_PREFIX, MAX_SUBMISSION_BODY, ROUTES, add_management_routes, create_app, load_openapi
from catalog.certregistry import CertKind
from catalog.store import CatalogStore, RegistrationService, RequestState, Role
from tests.catalog.test_store import FakeCA, csr_pem, self_signed

SERVER = "AZ/GOV/1400057421/ss1"


@dataclass
class Api:
    client: TestClient[web.Request, web.Application]
    store: CatalogStore
    ca: FakeCA
    keys: dict[Role, str]

    async def call(self, method: str, path: str, role: Role | None = None, **kwargs: Any) -> tuple[int, Any]:
        headers = kwargs.pop("headers", {})
        if role is not None:
            headers["X-API-Key"] = self.keys[role]
        resp = await self.client.request(method, path, headers=headers, **kwargs)
        body = await resp.json() if resp.status != 204 else None
        return resp.status, body


async def _start(url: str, auto_approve: bool = False) -> AsyncIterator[Api]:
    store = CatalogStore.open(url, instance="AZ")
    ca = FakeCA()
    keys = {role: store.create_api_key([role], role.value)[1] for role in Role}
    client = TestClient(TestServer(create_app(store, RegistrationService(store, ca, auto_approve=auto_approve))))
    await client.start_server()
    try:
        yield Api(client, store, ca, keys)
    finally:
        await client.close()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    """The API over a fresh SQLite catalog, with one API key per role."""
    async for value in _start(f"sqlite:///{tmp_path / 'api.db'}"):
        yield value


@pytest.fixture
async def api_any(db_url: str) -> AsyncIterator[Api]:
    """The API over a fresh catalog on each backend."""
    async for value in _start(db_url):
        yield value


def submission(server: str = SERVER, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "server",
        "server_id": server,
        "owner_name": "Dövlət Agentliyi",
        "address": "ss1.gov.az:5500",
        "clients": ["population"],
        "auth_csr": csr_pem(),
        "sign_csr": csr_pem(),
    }
    body.update(overrides)
    return body


async def test_registration_lifecycle(api_any: Api) -> None:
    """Submit (open) → poll (open) → approve (officer) → poll returns certificates; the server is registered."""
    api = api_any
    status, submitted = await api.call("POST", "/api/v1/registration-requests", json=submission())
    assert (status, submitted["state"], submitted["auth_certificate"]) == (201, "submitted", None)
    rid = submitted["id"]

    status, polled = await api.call("GET", f"/api/v1/registration-requests/{rid}")
    assert (status, polled["state"]) == (200, "submitted")

    status, approved = await api.call(
        "POST", f"/api/v1/registration-requests/{rid}/approve", Role.REGISTRATION_OFFICER, json={"comment": "ok"}
    )
    assert (status, approved["state"], approved["comment"]) == (200, "approved", "ok")

    status, polled = await api.call("GET", f"/api/v1/registration-requests/{rid}")
    auth, sign = api.ca.issued
    assert polled["auth_certificate"] == auth.public_bytes(serialization.Encoding.PEM).decode()
    assert polled["sign_certificate"].startswith("-----BEGIN CERTIFICATE-----")

    status, server = await api.call("GET", f"/api/v1/security-servers/{SERVER}", Role.OBSERVER)
    assert (status, server["address"], server["clients"]) == (
        200,
        "ss1.gov.az:5500",
        ["AZ/GOV/1400057421", "AZ/GOV/1400057421/population"],
    )
    status, certs = await api.call("GET", "/api/v1/certificates?kind=auth", Role.SECURITY_OFFICER)
    assert [c["serial"] for c in certs["items"]] == [str(auth.serial_number)]
    status, summary = await api.call("GET", "/api/v1/status", Role.OBSERVER)
    assert (summary["servers"], summary["pending_requests"]) == (1, 0)
    assert sign.serial_number != auth.serial_number


async def test_duplicates_and_double_approval(api: Api) -> None:
    """A second submission for the same server is 409 DuplicateRegistration; approving twice is 409 InvalidState."""
    _, first = await api.call("POST", "/api/v1/registration-requests", json=submission())
    status, dup = await api.call("POST", "/api/v1/registration-requests", json=submission())
    assert (status, dup["type"]) == (409, "Client.DuplicateRegistration")
    path = f"/api/v1/registration-requests/{first['id']}/approve"
    assert (await api.call("POST", path, Role.SYSTEM_ADMINISTRATOR, json={}))[0] == 200
    status, again = await api.call("POST", path, Role.SYSTEM_ADMINISTRATOR, json={})
    assert (status, again["type"]) == (409, "Client.InvalidState")
    status, reject = await api.call("POST", path.replace("approve", "reject"), Role.REGISTRATION_OFFICER, json={})
    assert (status, reject["type"]) == (409, "Client.InvalidState")


async def test_auth_errors(api: Api) -> None:
    """No key is 401 MissingApiKey, an unknown key 401 InvalidApiKey, Bearer works like X-API-Key."""
    status, body = await api.call("GET", "/api/v1/members")
    assert (status, body["type"]) == (401, "Client.MissingApiKey")
    status, body = await api.call("GET", "/api/v1/members", headers={"X-API-Key": "kdeadbeef.nope"})
    assert (status, body["type"]) == (401, "Client.InvalidApiKey")
    status, body = await api.call(
        "GET", "/api/v1/members", headers={"Authorization": f"Bearer {api.keys[Role.OBSERVER]}"}
    )
    assert (status, body) == (200, {"items": []})


@pytest.mark.parametrize(
    ("method", "path", "allowed", "denied"),
    [
        ("POST", "/api/v1/members", Role.REGISTRATION_OFFICER, Role.SECURITY_OFFICER),
        ("POST", "/api/v1/members", Role.SYSTEM_ADMINISTRATOR, Role.OBSERVER),
        ("POST", "/api/v1/certificates/{serial}/revoke", Role.SECURITY_OFFICER, Role.REGISTRATION_OFFICER),
        ("POST", "/api/v1/api-keys", Role.SYSTEM_ADMINISTRATOR, Role.SECURITY_OFFICER),
        ("GET", "/api/v1/api-keys", Role.SYSTEM_ADMINISTRATOR, Role.OBSERVER),
        ("GET", "/api/v1/registration-requests", Role.OBSERVER, None),
    ],
)
async def test_role_boundaries(api: Api, method: str, path: str, allowed: Role, denied: Role | None) -> None:
    """Each role reaches exactly its operations; others get 403 InsufficientRole and change nothing."""
    serial = api.store.record_certificate(CertKind.TLS, self_signed()).serial
    path = path.format(serial=serial)
    bodies = {
        "/api/v1/members": {"id": "AZ/GOV/123", "name": "Agency"},
        f"/api/v1/certificates/{serial}/revoke": {"reason": "superseded"},
        "/api/v1/api-keys": {"roles": ["observer"], "label": "x"},
    }
    body = bodies.get(path) if method == "POST" else None
    if denied is not None:
        status, err = await api.call(method, path, denied, json=body)
        assert (status, err["type"]) == (403, "Client.InsufficientRole")
        assert api.store.members() == []
        record = api.store.certificate(serial)
        assert record is not None
        assert record.revoked is False
    status, _ = await api.call(method, path, allowed, json=body)
    assert status in (200, 201)


async def test_observer_cannot_write_anything(api: Api) -> None:
    """An observer key is refused on every non-GET keyed route."""
    for route in ROUTES:
        if route.method == "GET" or route.roles is None:
            continue
        assert Role.OBSERVER not in route.roles, route.path


async def test_bad_requests(api: Api) -> None:
    """Bad JSON, wrong types and unknown fields are 400 InvalidRequest naming the problem; bad ids InvalidIdentifier."""
    officer = Role.REGISTRATION_OFFICER
    status, body = await api.call("POST", "/api/v1/members", officer, data=b"{not json")
    assert (status, body["type"]) == (400, "Client.InvalidRequest")
    status, body = await api.call("POST", "/api/v1/members", officer, json={"id": "AZ/GOV/1", "name": 5})
    assert (status, body["type"], body["message"]) == (400, "Client.InvalidRequest", "name must be a string")
    status, body = await api.call("POST", "/api/v1/members", officer, json={"id": "AZ/GOV/1", "name": "x", "nme": 1})
    assert (status, body["message"]) == (400, "unknown field nme")
    status, body = await api.call("POST", "/api/v1/members", officer, json=["x"])
    assert (status, body["type"]) == (400, "Client.InvalidRequest")
    status, body = await api.call("POST", "/api/v1/members", officer, json={"id": "AZ/GOV", "name": "x"})
    assert (status, body["type"]) == (400, "Client.InvalidIdentifier")
    assert body["message"].startswith("id: ")
    status, body = await api.call("POST", "/api/v1/registration-requests", json=submission(server="AZ/GOV/1/s s"))
    assert (status, body["type"]) == (400, "Client.InvalidIdentifier")
    status, body = await api.call("GET", "/api/v1/nothing-here", officer)
    assert (status, body["type"]) == (404, "Client.NotFound")
    status, body = await api.call("PATCH", "/api/v1/members", officer, json={})
    assert (status, body["type"]) == (405, "Client.MethodNotAllowed")
    status, body = await api.call("POST", "/api/v1/registration-requests", data=b"x" * (MAX_SUBMISSION_BODY + 1))
    assert (status, body["type"]) == (413, "Client.PayloadTooLarge")
    assert api.store.members() == []


async def test_malformed_csr_is_400_and_nothing_recorded(api: Api) -> None:
    """A CSR that does not parse is 400 Client.InvalidCsr and no request is stored."""
    status, body = await api.call("POST", "/api/v1/registration-requests", json=submission(auth_csr="garbage"))
    assert (status, body["type"]) == (400, "Client.InvalidCsr")
    assert api.store.registration_requests() == []


async def test_failed_approval_leaves_nothing_half_written(api: Api) -> None:
    """An approval failing on its last insert answers 409 and leaves the request submitted and no server."""
    _, submitted = await api.call("POST", "/api/v1/registration-requests", json=submission())
    api.store.record_certificate(CertKind.TLS, self_signed(777))
    api.ca.forced_serial = 777
    status, body = await api.call(
        "POST", f"/api/v1/registration-requests/{submitted['id']}/approve", Role.REGISTRATION_OFFICER, json={}
    )
    assert (status, body["type"]) == (409, "Client.Conflict")
    request = api.store.registration_request(submitted["id"])
    assert request is not None
    assert request.state is RequestState.SUBMITTED
    assert (api.store.servers(), api.store.members(), len(api.store.certificates())) == ([], [], 1)


async def test_unexpected_error_is_500_with_correlation_id(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception is a 500 Server.InternalError with a correlation id and no internals."""

    def boom() -> dict[str, int]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(api.store, "status", boom)
    status, body = await api.call("GET", "/api/v1/status", Role.OBSERVER)
    assert (status, body["type"], body["message"]) == (500, "Server.InternalError", "internal error")
    assert len(body["detail"]) == 32
    assert "secret" not in str(body)


async def test_catalog_endpoints(api: Api) -> None:
    """Groups, services (with ?q= search) and access rights work end to end through the API."""
    admin = Role.SYSTEM_ADMINISTRATOR
    assert (await api.call("POST", "/api/v1/members", admin, json={"id": "AZ/GOV/1", "name": "Tax"}))[0] == 201
    assert (await api.call("POST", "/api/v1/subsystems", admin, json={"id": "AZ/GOV/1/tax"}))[0] == 201
    status, group = await api.call("POST", "/api/v1/global-groups", admin, json={"id": "AZ/banks"})
    assert (status, group) == (201, {"id": "AZ/banks", "description": "", "members": []})
    status, group = await api.call(
        "POST", "/api/v1/global-groups/AZ/banks/members", admin, json={"client": "AZ/GOV/1/tax"}
    )
    assert (status, group["members"]) == (200, ["AZ/GOV/1/tax"])
    service = {
        "id": "AZ/GOV/1/tax/getDebt/v1",
        "type": "REST",
        "title": "Tax debt",
        "description_document": "openapi: 3.0.0",
        "metadata": {
            "legal_basis": "Tax Code art. 5",
            "required_documents": ["TIN"],
            "fee": {"amount": "0.50", "currency": "AZN"},
            "channels": ["online"],
            "is_e_service": True,
            "duration_days": 0,
        },
    }
    status, created = await api.call("POST", "/api/v1/services", admin, json=service)
    assert (status, created["metadata"]["fee"], created["metadata"]["responsible_agency"]) == (
        201,
        {"amount": "0.50", "currency": "AZN"},
        "AZ/GOV/1",
    )
    status, found = await api.call("GET", "/api/v1/services?q=tax+code", Role.OBSERVER)
    assert [s["id"] for s in found["items"]] == ["AZ/GOV/1/tax/getDebt/v1"]
    status, found = await api.call("GET", "/api/v1/services?q=passport", Role.OBSERVER)
    assert found["items"] == []
    status, got = await api.call("GET", "/api/v1/services/AZ/GOV/1/tax/getDebt/v1", Role.OBSERVER)
    assert (status, got["description_document"]) == (200, "openapi: 3.0.0")
    bad_meta = dict(service, metadata={"fee": {"amount": "x", "currency": "AZN"}})
    status, body = await api.call("PUT", "/api/v1/services/AZ/GOV/1/tax/getDebt/v1", admin, json=bad_meta)
    assert (status, body["type"]) == (400, "Client.InvalidRequest")
    right = {"subject": "GLOBALGROUP:AZ/banks", "service": "AZ/GOV/1/tax/getDebt/v1", "method": "GET"}
    status, granted = await api.call("POST", "/api/v1/access-rights", admin, json=right)
    assert (status, granted["subject"], granted["method"], granted["path"]) == (
        201,
        "GLOBALGROUP:AZ/banks",
        "GET",
        None,
    )
    status, body = await api.call("POST", "/api/v1/access-rights", admin, json=dict(right, subject="AZ/banks"))
    assert (status, body["type"]) == (400, "Client.InvalidIdentifier")
    status, _ = await api.call("DELETE", f"/api/v1/access-rights/{granted['id']}", admin)
    assert status == 204
    assert api.store.access_rights() == []


async def test_api_keys_endpoint(api: Api) -> None:
    """An administrator creates a key whose secret works at once and stops working when revoked."""
    admin = Role.SYSTEM_ADMINISTRATOR
    status, created = await api.call("POST", "/api/v1/api-keys", admin, json={"roles": ["observer"], "label": "ro"})
    assert (status, created["roles"]) == (201, ["observer"])
    headers = {"X-API-Key": created["secret"]}
    assert (await api.call("GET", "/api/v1/status", headers=headers))[0] == 200
    status, listed = await api.call("GET", "/api/v1/api-keys", admin)
    assert "secret" not in str(listed)
    assert (await api.call("DELETE", f"/api/v1/api-keys/{created['key_id']}", admin))[0] == 200
    status, body = await api.call("GET", "/api/v1/status", headers=headers)
    assert (status, body["type"]) == (401, "Client.InvalidApiKey")


async def test_auto_approve(tmp_path: Path) -> None:
    """With auto-approve, the open submission answers with the approved request and its certificates."""
    async for api in _start(f"sqlite:///{tmp_path / 'auto.db'}", auto_approve=True):
        status, body = await api.call("POST", "/api/v1/registration-requests", json=submission())
        assert (status, body["state"], body["decided_by"]) == (201, "approved", "auto-approve")
        assert body["auth_certificate"].startswith("-----BEGIN CERTIFICATE-----")


async def test_every_route_is_in_the_openapi_document(api: Api) -> None:
    """Registered routes and OpenAPI paths/methods are the same set, and the document looks like OpenAPI 3."""
    document = load_openapi()
    assert str(document["openapi"]).startswith("3.")
    assert set(document["components"]["securitySchemes"]) == {"apiKey", "bearer"}
    registered = set()
    for resource in api.client.app.router.resources():
        if isinstance(resource, web.PrefixedSubAppResource):
            # Routes of the mounted management sub-application (aiohttp has put the mount prefix in front).
            for route in resource:
                assert route.resource is not None
                registered.add((route.method.lower(), route.resource.canonical))
        else:
            registered.update(
                (route.method.lower(), resource.canonical) for route in resource if route.method != "HEAD"
            )
    documented = {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "put", "delete", "patch"}
    }
    assert registered == documented
    for path, item in document["paths"].items():
        open_ops = {m for m, op in item.items() if isinstance(op, dict) and op.get("security") == []}
        expected = {r.method.lower() for r in ROUTES if r.roles is None and API_PREFIX + _canonical(r.path) == path}
        if path == "/openapi.json":
            expected = {"get"}
        assert open_ops == expected, path
    for url in ("/openapi.json", "/api/v1/openapi.json"):
        status, served = await api.call("GET", url)
        assert (status, served) == (200, document)


def _canonical(path: str) -> str:
    """Strip aiohttp regexes from a route pattern: ``{name:re}`` → ``{name}``."""
    out, depth, skipping = [], 0, False
    for ch in path:
        if ch == "{":
            depth += 1
            if depth == 1:
                out.append(ch)
                continue
        if ch == "}":
            depth -= 1
            if depth == 0:
                skipping = False
                out.append(ch)
                continue
        if depth == 1 and ch == ":" and not skipping:
            skipping = True
            continue
        if not skipping:
            out.append(ch)
    return "".join(out)


# Review fixes --------------------------------------------------------------------------------------------------


async def chunked(data: bytes, size: int = 10, *, started: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    """``data`` as an async generator of ``size``-byte pieces: aiohttp sends it with chunked transfer encoding.

    With ``started``, the rest of the body is held back after the first piece until the event is set (by
    :func:`handler_started`), so the handler is certainly reading while the body is still arriving.
    """
    for start in range(0, len(data), size):
        yield data[start : start + size]
        if started is not None and start == 0:
            await asyncio.wait_for(started.wait(), timeout=10)


def handler_started() -> tuple[Callable[..., Awaitable[web.StreamResponse]], asyncio.Event]:
    """A middleware that sets the returned event when a request reaches the application (headers are in)."""
    event = asyncio.Event()

    @web.middleware
    async def mark(request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        event.set()
        return await handler(request)

    return mark, event


async def raw_request(api: Api, head: bytes) -> tuple[int, dict[str, str], Any]:
    """Send raw request bytes (headers aiohttp's client would refuse to encode) and parse the answer."""
    server = api.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    header_block, _, body = rest.partition(b"\r\n\r\n")
    headers = {}
    for line in header_block.split(b"\r\n"):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, json.loads(body)


async def test_identifiers_of_another_instance_are_refused(api: Api) -> None:
    """Every identifier entering the catalog through the API must be of its instance (AZ).

    Others are 400 InvalidIdentifier naming the field as sent, and nothing is recorded.
    """
    admin = Role.SYSTEM_ADMINISTRATOR
    assert (await api.call("POST", "/api/v1/members", admin, json={"id": "AZ/GOV/1", "name": "Tax"}))[0] == 201
    assert (await api.call("POST", "/api/v1/subsystems", admin, json={"id": "AZ/GOV/1/tax"}))[0] == 201
    assert (await api.call("POST", "/api/v1/global-groups", admin, json={"id": "AZ/banks"}))[0] == 201
    service = {"id": "AZ/GOV/1/tax/getDebt", "type": "REST", "title": "Tax debt"}
    assert (await api.call("POST", "/api/v1/services", admin, json=service))[0] == 201
    foreign: list[tuple[str, str, dict[str, Any], str]] = [
        ("POST", "/api/v1/members", {"id": "XX/GOV/1235", "name": "Other"}, "id: XX/GOV/1235"),
        ("POST", "/api/v1/subsystems", {"id": "XX/GOV/1/tax"}, "id: XX/GOV/1/tax"),
        ("POST", "/api/v1/registration-requests", submission(server="XX/GOV/1/ss-x"), "server_id: XX/GOV/1/ss-x"),
        (
            "POST",
            "/api/v1/registration-requests",
            {"kind": "client", "server_id": SERVER, "client": "XX/GOV/1/sub", "member_name": "X"},
            "client: XX/GOV/1/sub",
        ),
        ("POST", "/api/v1/global-groups", {"id": "XX/banks"}, "id: XX/banks"),
        ("POST", "/api/v1/global-groups/AZ/banks/members", {"client": "XX/GOV/1"}, "client: XX/GOV/1"),
        ("POST", "/api/v1/services", dict(service, id="XX/GOV/1/tax/getDebt"), "id: XX/GOV/1/tax/getDebt"),
        (
            "POST",
            "/api/v1/services",
            dict(service, id="AZ/GOV/1/tax/other", metadata={"responsible_agency": "XX/GOV/9"}),
            "metadata.responsible_agency: XX/GOV/9",
        ),
        (
            "PUT",
            "/api/v1/services/AZ/GOV/1/tax/getDebt",
            dict(service, metadata={"responsible_agency": "XX/GOV/9"}),
            "metadata.responsible_agency: XX/GOV/9",
        ),
        (
            "POST",
            "/api/v1/access-rights",
            {"subject": "GLOBALGROUP:XX/banks", "service": "AZ/GOV/1/tax/getDebt"},
            "subject: XX/banks",
        ),
        (
            "POST",
            "/api/v1/access-rights",
            {"subject": "MEMBER:AZ/GOV/1", "service": "XX/GOV/1/tax/getDebt"},
            "service: XX/GOV/1/tax/getDebt",
        ),
    ]
    before = api.store.globalconf_content()
    for method, path, body, prefix in foreign:
        status, err = await api.call(method, path, admin, json=body)
        assert (status, err["type"]) == (400, "Client.InvalidIdentifier"), (path, err)
        assert err["message"] == f"{prefix} belongs to X-Road instance XX, but this central server governs instance AZ"
    assert api.store.globalconf_content() == before
    assert api.store.registration_requests() == []


async def test_chunked_bodies_are_read_whole(api: Api) -> None:
    """A JSON body sent chunked in 10-byte pieces is read to its end (201), and one over the cap is 413."""
    mark, started = handler_started()
    app = web.Application(middlewares=[mark])
    add_management_routes(app, api.store, RegistrationService(api.store, api.ca))
    async with TestClient(TestServer(app)) as client:
        body = json.dumps(submission()).encode()
        resp = await client.post(
            "/api/v1/registration-requests",
            data=chunked(body, started=started),
            headers={"Content-Type": "application/json"},
        )
        answer = await resp.json()
        assert (resp.status, answer["state"], answer["server_id"]) == (201, "submitted", SERVER)
        assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
        started.clear()
        oversized = b" " * MAX_SUBMISSION_BODY + b"{}"
        resp = await client.post("/api/v1/registration-requests", data=chunked(oversized, 4096, started=started))
        assert (resp.status, (await resp.json())["type"]) == (413, "Client.PayloadTooLarge")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 60_000 + b"]" * 60_000, "the request body is nested too deeply"),
        (b'{"kind": "server", "x": NaN}', "the request body is not valid JSON (NaN is not a JSON number)"),
        (b'{"x": -Infinity}', "the request body is not valid JSON (-Infinity is not a JSON number)"),
        (b'{"x": "\xff"}', "the request body is not valid JSON"),
    ],
)
async def test_hostile_json_is_400(api: Api, body: bytes, message: str) -> None:
    """Deep nesting, NaN/Infinity and bad UTF-8 on the open endpoint are 400 InvalidRequest, never a 500."""
    status, err = await api.call("POST", "/api/v1/registration-requests", data=body)
    assert (status, err["type"], err["message"]) == (400, "Client.InvalidRequest", message)


@pytest.mark.parametrize(
    "header",
    [
        b"X-API-Key: k0123456789abcdef.\xff\xfe\xfd",
        b"Authorization: Bearer k0123456789abcdef.\xc3\x28",
        "X-API-Key: kkey.ключ".encode(),
    ],
)
async def test_non_ascii_api_key_is_401(api: Api, header: bytes) -> None:
    """Non-ASCII or non-UTF-8 bytes in X-API-Key or a Bearer token are 401 InvalidApiKey, not a 500."""
    head = b"GET /api/v1/members HTTP/1.1\r\nHost: localhost\r\n" + header + b"\r\nConnection: close\r\n\r\n"
    status, headers, body = await raw_request(api, head)
    assert (status, body["type"], headers["x-road-error"]) == (401, "Client.InvalidApiKey", "Client.InvalidApiKey")


async def test_error_responses_carry_the_x_road_error_header(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every management API error answer has ``X-Road-Error: <fault code>`` equal to the body's type."""

    def boom() -> dict[str, int]:
        raise RuntimeError("boom")

    monkeypatch.setattr(api.store, "status", boom)
    cases = [
        ("GET", "/api/v1/members", None, 401),
        ("GET", "/api/v1/api-keys", Role.OBSERVER, 403),
        ("GET", "/api/v1/nothing-here", Role.OBSERVER, 404),
        ("PATCH", "/api/v1/members", Role.OBSERVER, 405),
        ("POST", "/api/v1/members", Role.REGISTRATION_OFFICER, 400),
        ("GET", "/api/v1/status", Role.OBSERVER, 500),
    ]
    for method, path, role, expected in cases:
        headers = {} if role is None else {"X-API-Key": api.keys[role]}
        resp = await api.client.request(method, path, headers=headers, data=b"{")
        body = await resp.json()
        assert (resp.status, resp.headers.get("X-Road-Error")) == (expected, body["type"]), path
    resp = await api.client.get("/api/v1/members", headers={"X-API-Key": api.keys[Role.OBSERVER]})
    assert (resp.status, resp.headers.get("X-Road-Error")) == (200, None)


async def test_same_key_for_auth_and_sign_is_refused(api: Api) -> None:
    """A registration whose auth and sign CSRs carry the same key is 400 InvalidCsr; nothing is recorded."""
    same = csr_pem()
    status, err = await api.call("POST", "/api/v1/registration-requests", json=submission(auth_csr=same, sign_csr=same))
    assert (status, err["type"], err["message"]) == (
        400,
        "Client.InvalidCsr",
        "auth_csr and sign_csr must be for different keys",
    )
    assert api.store.registration_requests() == []


@pytest.mark.parametrize("reason", ["certificateHold", "removeFromCRL", "nonsense"])
async def test_revocation_reason_must_be_final(api: Api, reason: str) -> None:
    """Revoking with certificateHold, removeFromCRL or an unknown name is 400 and revokes nothing."""
    serial = api.store.record_certificate(CertKind.TLS, self_signed()).serial
    status, err = await api.call(
        "POST", f"/api/v1/certificates/{serial}/revoke", Role.SECURITY_OFFICER, json={"reason": reason}
    )
    assert (status, err["type"]) == (400, "Client.InvalidRequest")
    assert err["message"].startswith("reason must be one of unspecified, keyCompromise")
    assert "certificateHold" not in err["message"]
    record = api.store.certificate(serial)
    assert record is not None
    assert record.revoked is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"owner_name": " "}, "owner_name must not be empty"),
        ({"clients": ["a", "a"]}, "clients must not repeat a code"),
        ({"auth_csr": ""}, "auth_csr must not be empty"),
        ({"kind": "client", "client": "AZ/GOV/1/x", "member_name": ""}, "member_name must not be empty"),
    ],
)
async def test_messages_name_fields_as_sent(api: Api, overrides: dict[str, Any], message: str) -> None:
    """Validation messages use the JSON field names the caller sent (snake_case), not internal names."""
    body = submission(**overrides)
    if overrides.get("kind") == "client":
        body = {k: body[k] for k in ("kind", "server_id", "client", "member_name")}
    status, err = await api.call("POST", "/api/v1/registration-requests", json=body)
    assert (status, err["message"]) == (400, message)


async def test_service_metadata_messages_name_fields_as_sent(api: Api) -> None:
    """Service metadata errors name ``metadata.<field>`` as sent."""
    admin = Role.SYSTEM_ADMINISTRATOR
    await api.call("POST", "/api/v1/members", admin, json={"id": "AZ/GOV/1", "name": "Tax"})
    await api.call("POST", "/api/v1/subsystems", admin, json={"id": "AZ/GOV/1/tax"})
    service = {"id": "AZ/GOV/1/tax/s", "type": "REST", "title": "T"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"metadata": {"duration_days": -1}}, "metadata.duration_days must be a non-negative integer"),
        (
            {"metadata": {"fee": {"amount": "1", "currency": "manat"}}},
            "metadata.fee.currency must be a three-letter ISO 4217 code such as AZN",
        ),
        ({"description_url": "ftp://x"}, "description_url must be an http(s) URL"),
    ]
    for extra, message in cases:
        status, err = await api.call("POST", "/api/v1/services", admin, json=dict(service, **extra))
        assert (status, err["message"]) == (400, message)
