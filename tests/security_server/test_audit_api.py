"""The admin API's roles, the auditor's message log endpoints, and the admin API's OpenAPI document.

Pins: which role opens which endpoint (admin everything; auditor the audit endpoints only; observer status only;
missing, wrong and revoked keys refused); record queries filter and page exactly; bad parameters are
``400 Client.InvalidRequest``; a person query appends its own audit record *before* it reads, and fails closed
when that append fails; the evidence endpoint hands the store, request id and federation certificates to the
archive's exporter; every route of the admin app is in the OpenAPI document and vice versa.

Runs on the real admin application (``create_admin_app``) on 127.0.0.1, with the runtime's message log and store
replaced by the in-memory fakes below.
"""

from __future__ import annotations

import sys
import types
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import MultiDict

from bridge.errors import InvalidRequest, LoggingFailed, TimestampingFailed
from bridge.evidence import EvidenceCerts
from bridge.globalconf_xml import sign
from bridge.identifiers import SecurityServerId
from bridge.messagelog import GENESIS_HASH, LogRecord, verify_chain
from bridge.pki.token import SoftwareToken
from bridge.spool import Spool
from policies.local import LocalPolicy
from security_server.adminkeys import AdminKeys, hash_secret
from security_server.app import create_admin_app
from security_server.audit_api import (
    AUDIT_SOURCE,
    EVIDENCE_CONTENT_TYPE,
    PERSON_QUERY_SERVICE,
    load_admin_openapi,
    parse_query,
)
from security_server.confclient import GlobalConfClient
from security_server.config import ServerConfig
from security_server.messagelog import LogQuery
from security_server.messagelog.store import SqlLogStore
from security_server.messagelog.writer import MessageLog
from security_server.registration import RegistrationState
from security_server.runtime import ServerRuntime
from tests.support.globalconf import NOW, make_anchor, make_signer, sample_conf

PIN = "test-pin-1234"
SERVER = SecurityServerId.parse("AZ/GOV/1400057421/ss1")
ADMIN_KEY = "admin-secret-from-ss-init"
LOANS = "SUBSYSTEM:AZ/COM/9900001/loans"
BANK = "MEMBER:AZ/COM/9900001"
PERSONS_SVC = "SERVICE:AZ/GOV/1400057421/population/person"
INCOME_SVC = "SERVICE:AZ/GOV/1400057421/tax/income"


# Fakes ---------------------------------------------------------------------------------------------------------


class FakeStore:
    """The part of LogStore the audit API uses (``find``), over a list, matching as the contract says."""

    def __init__(self) -> None:
        self.records: list[LogRecord] = []
        self.queries: list[LogQuery] = []
        self.closed = False

    def head(self) -> tuple[int, bytes]:
        if not self.records:
            return 0, GENESIS_HASH
        return self.records[-1].seq, bytes.fromhex(self.records[-1].hash)

    def append(self, records: Sequence[LogRecord], bodies: Mapping[str, Spool]) -> None:
        self.records.extend(records)

    def find(self, query: LogQuery) -> list[LogRecord]:
        self.queries.append(query)
        out = []
        for r in self.records:
            wanted = (
                (query.message_id, r.message_id),
                (query.request_id, r.request_id),
                (query.client, r.client),
                (query.service, r.service),
            )
            if r.seq <= query.after_seq or any(w is not None and w != have for w, have in wanted):
                continue
            if query.person is not None and query.person != r.user_id and query.person not in r.persons:
                continue
            if (query.since is not None and r.at < query.since) or (query.until is not None and r.at >= query.until):
                continue
            out.append(r)
        return out[: query.limit]

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeLog:
    """A MessageLogWriter that seals records into the fake store, or fails with ``fail``."""

    store: FakeStore
    fail: Exception | None = None
    appended: list[LogRecord] = field(default_factory=list)

    def check(self) -> None:
        if self.fail is not None:
            raise self.fail

    async def append(self, record: LogRecord, bodies: Mapping[str, Spool]) -> LogRecord:
        # Audit records are kept apart from the fake store so the query tests see only the records they seeded
        # (the real log, where they land in the same chain, is exercised by test_person_query_on_real_log).
        self.check()
        sealed = record.sealed(1_000_000 + len(self.appended), bytes(32))
        self.appended.append(sealed)
        return sealed


def seed(store: FakeStore, count: int = 1, **fields: Any) -> list[LogRecord]:
    """Append ``count`` sealed records with ``fields`` over sensible defaults."""
    out = []
    for _ in range(count):
        seq, prev = store.head()
        values: dict[str, Any] = {
            "at": f"2025-01-01T10:00:{seq % 60:02d}.000000Z",
            "server": SERVER.path(),
            "side": "provider",
            "direction": "request",
            "request_id": f"req-{seq + 1}",
            "message_id": f"msg-{seq + 1}",
            "protocol": "REST",
            "client": LOANS,
            "service": PERSONS_SVC,
            **fields,
        }
        record = LogRecord(**values).sealed(seq + 1, prev)
        store.append([record], {})
        out.append(record)
    return out


# Fixtures ------------------------------------------------------------------------------------------------------


@dataclass
class Env:
    client: TestClient[web.Request, web.Application]
    app: web.Application
    store: FakeStore
    log: FakeLog
    keys: dict[str, str]
    state_dir: Path

    def auth(self, who: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[who]}

    async def records(self, who: str = "auditor", **params: str) -> tuple[int, dict[str, Any]]:
        resp = await self.client.get("/api/v1/audit/records", params=params, headers=self.auth(who))
        body = await resp.json()
        if resp.status != 200:
            assert resp.headers["X-Road-Error"] == body["type"]
        return resp.status, body


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    """The admin app on 127.0.0.1 with keys of every role and the fake message log; stopped after the test."""
    # The runtime's __post_init__ opens the real message log (SQLite store, writer, timestamper); the audit API is
    # exercised against fakes with known content instead, so that part is skipped and the fakes put in its place.
    monkeypatch.setattr(ServerRuntime, "__post_init__", lambda self: None)
    token = SoftwareToken.init(tmp_path / "token", PIN)
    signer = make_signer()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "globalconf.xml").write_bytes(sign(sample_conf(1, now=NOW), signer.key, signer.cert))
    confclient = GlobalConfClient(make_anchor(signer), tmp_path / "cache", clock=lambda: NOW, refresh_interval_s=3600)
    assert confclient.load_cached() is not None
    runtime = ServerRuntime(
        state_dir=tmp_path,
        config=ServerConfig(server_id=SERVER.path(), owner_name="Tax", address="127.0.0.1:5500"),
        token=token,
        pin=PIN,
        confclient=confclient,
        registration=RegistrationState(
            "r1", "http://127.0.0.1:1", SERVER.path(), state="approved", certificates_installed=True
        ),
        admin_key_hash=hash_secret(ADMIN_KEY),
        local_policy=LocalPolicy(),
    )
    store = FakeStore()
    log = FakeLog(store)
    object.__setattr__(runtime, "log_store", store)
    object.__setattr__(runtime, "message_log", log)
    manage = AdminKeys(tmp_path)
    keys = {"admin": ADMIN_KEY}
    for role in ("auditor", "observer"):
        keys[role] = manage.create([role], f"{role} key")[1]
    revoked_id, keys["revoked"] = manage.create(["auditor"], "gone")
    manage.revoke(revoked_id)
    app = create_admin_app(runtime)
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        yield Env(client, app, store, log, keys, tmp_path)


# Roles ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "who", "status", "fault"),
    [
        ("/api/v1/status", "admin", 200, None),
        ("/api/v1/status", "observer", 200, None),
        ("/api/v1/status", "auditor", 403, "Client.InsufficientRole"),
        ("/api/v1/audit/records", "admin", 200, None),
        ("/api/v1/audit/records", "auditor", 200, None),
        ("/api/v1/audit/records", "observer", 403, "Client.InsufficientRole"),
        ("/api/v1/audit/records", "revoked", 401, "Client.InvalidApiKey"),
        ("/api/v1/audit/records", "wrong", 401, "Client.InvalidApiKey"),
        ("/api/v1/audit/records", None, 401, "Client.MissingApiKey"),
        ("/api/v1/status", None, 401, "Client.MissingApiKey"),
        ("/api/v1/audit/exchanges/req-1/evidence", "observer", 403, "Client.InsufficientRole"),
        ("/api/v1/audit/exchanges/req-1/evidence", None, 401, "Client.MissingApiKey"),
        ("/healthz", None, 200, None),
        ("/openapi.json", None, 200, None),
    ],
)
async def test_role_boundaries(env: Env, path: str, who: str | None, status: int, fault: str | None) -> None:
    """An admin key opens everything, auditor only the audit endpoints, observer only status; bad keys get 401."""
    keys = {**env.keys, "wrong": "k123.not-a-key"}
    headers = {} if who is None else {"X-API-Key": keys[who]}
    resp = await env.client.get(path, headers=headers)
    assert resp.status == status
    if fault is not None:
        assert (resp.headers["X-Road-Error"], (await resp.json())["type"]) == (fault, fault)


async def test_bearer_header_works_for_role_keys(env: Env) -> None:
    """Authorization: Bearer carries role keys as well as X-API-Key does."""
    resp = await env.client.get("/api/v1/audit/records", headers={"Authorization": f"Bearer {env.keys['auditor']}"})
    assert resp.status == 200


# Queries -------------------------------------------------------------------------------------------------------


async def test_items_are_the_records_json(env: Env) -> None:
    """Each item is LogRecord.to_json(): digests and sizes of parts, hash chain fields, no part bytes."""
    (record,) = seed(env.store, persons=("AZE1",), user_id="AZE9")
    status, body = await env.records()
    assert status == 200
    assert body == {"items": [record.to_json()], "next": None}


@pytest.mark.parametrize(
    ("params", "expected_seqs"),
    [
        ({"client": LOANS}, [1, 2]),
        ({"client": "AZ/COM/9900001/loans"}, [1, 2]),  # path form accepted, normalised to encoded
        ({"client": BANK}, [3]),
        ({"service": INCOME_SVC}, [2]),
        ({"service": "AZ/GOV/1400057421/tax/income"}, [2]),
        ({"message_id": "m-3"}, [3]),
        ({"request_id": "r-1"}, [1]),
        ({"since": "2025-01-02T00:00:00Z"}, [2, 3]),
        ({"until": "2025-01-02T00:00:00Z"}, [1]),
        ({"since": "2025-01-02T00:00:00Z", "until": "2025-01-03T00:00:00Z"}, [2]),
        ({"since": "2025-01-02T04:00:00+04:00"}, [2, 3]),  # offsets are converted to UTC
        ({"client": LOANS, "service": PERSONS_SVC}, [1]),
        ({"client": BANK, "service": PERSONS_SVC}, [3]),
        ({"client": BANK, "service": INCOME_SVC}, []),
    ],
)
async def test_query_filters(env: Env, params: dict[str, str], expected_seqs: list[int]) -> None:
    """Every given filter narrows the result; identifiers and times reach the store in canonical form."""
    seed(env.store, at="2025-01-01T10:00:00.000000Z", request_id="r-1", message_id="m-1")
    seed(env.store, at="2025-01-02T10:00:00.000000Z", service=INCOME_SVC, request_id="r-2", message_id="m-2")
    seed(env.store, at="2025-01-03T10:00:00.000000Z", client=BANK, request_id="r-3", message_id="m-3")
    status, body = await env.records(**params)
    assert status == 200
    assert [item["seq"] for item in body["items"]] == expected_seqs


async def test_pagination_with_cursor(env: Env) -> None:
    """Pages of `limit` records; `next` is the cursor for the following page and null on the last one."""
    seed(env.store, 7)
    pages, after = [], None
    for _ in range(5):
        params = {"limit": "3"} | ({"after": after} if after is not None else {})
        status, body = await env.records(**params)
        assert status == 200
        pages.append([item["seq"] for item in body["items"]])
        after = body["next"]
        if after is None:
            break
    assert pages == [[1, 2, 3], [4, 5, 6], [7]]


async def test_last_full_page_has_no_next(env: Env) -> None:
    """When the records end exactly at a page boundary, that page says so (no empty page to fetch)."""
    seed(env.store, 6)
    _, first = await env.records(limit="3")
    _, second = await env.records(limit="3", after=first["next"])
    assert (first["next"], [i["seq"] for i in second["items"]], second["next"]) == ("3", [4, 5, 6], None)


async def test_default_and_maximum_limit(env: Env) -> None:
    """Without limit the page holds 100; limit=1000 is accepted; the store is asked for one more than the page."""
    seed(env.store, 101)
    _, body = await env.records()
    assert (len(body["items"]), body["next"]) == (100, "100")
    status, body = await env.records(limit="1000")
    assert (status, len(body["items"]), body["next"]) == (200, 101, None)
    assert env.store.queries[-1].limit == 1001


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"limit": "+5"},
        {"limit": "٣"},  # a non-ASCII digit
        {"after": "-1"},
        {"after": "99999999999999999999"},
        {"since": "yesterday"},
        {"since": "2025-01-01T10:00:00"},  # no offset: ambiguous
        {"since": "2025-01-02T00:00:00Z", "until": "2025-01-01T00:00:00Z"},
        {"since": "2025-01-01T00:00:00Z", "until": "2025-01-01T00:00:00Z"},
        {"client": "nonsense"},
        {"client": PERSONS_SVC},  # a service is no client
        {"client": "SUBSYSTEM:AZ/COM/9900001/lo%ans"},
        {"service": LOANS},
        {"service": "AZ/GOV/1400057421"},
        {"person": " AZE1"},
        {"person": "A" * 129},
        {"person": ""},
        {"message_id": "m" * 256},
        {"request_id": "bad\u0007bell"},
        {"persons": "AZE1"},  # a typo must not widen the query to everyone
        {"issue": ""},
    ],
)
async def test_bad_parameters_are_invalid_request(env: Env, params: dict[str, str]) -> None:
    """Every malformed parameter is 400 Client.InvalidRequest, and the store is never asked."""
    status, body = await env.records(**params)
    assert (status, body["type"]) == (400, "Client.InvalidRequest")
    assert env.store.queries == []
    assert env.log.appended == []


async def test_repeated_parameter_is_invalid_request(env: Env) -> None:
    """A parameter given twice is refused rather than one value silently winning."""
    resp = await env.client.get(
        "/api/v1/audit/records", params=[("person", "AZE1"), ("person", "AZE2")], headers=env.auth("auditor")
    )
    assert (resp.status, (await resp.json())["type"]) == (400, "Client.InvalidRequest")


def test_parse_query_canonical_forms() -> None:
    """parse_query turns path-form identifiers into encoded ones and times into the records' UTC format."""
    query, issue = parse_query(
        MultiDict(
            {
                "client": "AZ/COM/9900001",
                "service": "AZ/GOV/1400057421/tax/income/v2",
                "since": "2025-01-02T04:00:00.5+04:00",
                "after": "17",
                "issue": "case 42",
            }
        )
    )
    assert query == LogQuery(
        client=BANK,
        service=INCOME_SVC + "/v2",
        since="2025-01-02T00:00:00.500000Z",
        after_seq=17,
        limit=100,
    )
    assert issue == "case 42"
    with pytest.raises(InvalidRequest, match="limit"):
        parse_query(MultiDict({"limit": "0"}))


# Person queries are logged -------------------------------------------------------------------------------------


async def test_person_query_is_logged_before_it_reads(env: Env) -> None:
    """A person query appends its audit record before it reads; the record's content is pinned here.

    That the record lands in the same chain and shows up in results is pinned with the real log
    (test_person_query_with_the_real_message_log).
    """
    seed(env.store, persons=("AZE1",))
    seed(env.store, persons=("AZE2",))
    status, body = await env.records(person="AZE1", issue="DSAR 2025/17", since="2025-01-01T00:00:00Z")
    assert status == 200
    (audit,) = env.log.appended
    auditor_id = env.keys["auditor"].partition(".")[0]
    assert audit.direction == "audit"
    assert (audit.client, audit.service, audit.persons, audit.outcome) == (
        f"auditor:{auditor_id}",
        PERSON_QUERY_SERVICE,
        ("AZE1",),
        "ok",
    )
    assert audit.request_id == audit.message_id
    assert str(uuid.UUID(audit.request_id)) == audit.request_id
    assert (audit.server, audit.issue, audit.user_id) == (SERVER.path(), "DSAR 2025/17", None)
    assert audit.decision == {
        "granted": "auditor",
        "key_label": "auditor key",
        "filters": {"since": "2025-01-01T00:00:00.000000Z"},
    }
    assert [item["seq"] for item in body["items"]] == [1]


async def test_admin_person_query_is_logged_too(env: Env) -> None:
    """An admin key acting as auditor leaves the same trace, under its own key id."""
    status, _ = await env.records("admin", person="AZE1")
    assert status == 200
    assert [(r.client, r.persons) for r in env.log.appended] == [("auditor:init", ("AZE1",))]


async def test_queries_without_person_are_logged_too(env: Env) -> None:
    """Every query writes an audit record: records carry personal data even when no person was asked for."""
    seed(env.store)
    status, _ = await env.records(client=LOANS)
    assert status == 200
    assert [(r.service, r.persons) for r in env.log.appended] == [("audit:records-query", ())]


@pytest.mark.parametrize(
    ("failure", "fault"),
    [
        (LoggingFailed("disk full"), "Server.LoggingFailed"),
        (TimestampingFailed("TSA unreachable for too long"), "Server.TimestampingFailed"),
        (RuntimeError("writer crashed"), "Server.LoggingFailed"),
    ],
)
async def test_person_query_fails_closed_when_logging_fails(env: Env, failure: Exception, fault: str) -> None:
    """If the audit record cannot be written, the query returns no records and the store is not even read."""
    seed(env.store, persons=("AZE1",))
    env.log.fail = failure
    status, body = await env.records(person="AZE1")
    assert (status, body["type"]) == (500, fault)
    assert "items" not in body
    assert env.store.queries == []
    assert "crashed" not in body["message"]


async def test_person_query_with_the_real_message_log(env: Env) -> None:
    """With SqlLogStore and MessageLog, the audit record is sealed into the chain and found by the same query."""
    store = SqlLogStore(f"sqlite:///{env.state_dir / 'messagelog.db'}", env.state_dir / "bodies")
    writer = MessageLog(store, server_id=SERVER.path())
    await writer.start()
    runtime = env.app[AUDIT_SOURCE]
    object.__setattr__(runtime, "log_store", store)
    object.__setattr__(runtime, "message_log", writer)
    try:
        status, body = await env.records(person="AZE1")
        assert status == 200
        (item,) = body["items"]
        assert (item["seq"], item["direction"], item["persons"]) == (1, "audit", ["AZE1"])
        assert verify_chain([LogRecord.from_json(item)]) == bytes.fromhex(item["hash"])
    finally:
        await writer.stop()
        store.close()


# Evidence ------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_archive(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """An archive module whose export_exchange records its arguments (the route is tested apart from the format)."""
    calls: list[tuple[Any, ...]] = []

    def export_exchange(
        store: Any, request_id: str, certs: EvidenceCerts, *, side: str | None = None, seq: int | None = None
    ) -> bytes:
        calls.append((store, request_id, certs, side, seq))
        return b"PK\x03\x04 container"

    module = types.ModuleType("security_server.messagelog.archive")
    module.export_exchange = export_exchange  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "security_server.messagelog.archive", module)
    return calls


async def test_evidence_route_hands_over_store_id_and_certificates(env: Env, fake_archive: list[Any]) -> None:
    """The container comes back as an ASiC-E attachment; the exporter got the store, the id and the CA/TSA certs."""
    resp = await env.client.get("/api/v1/audit/exchanges/req-7/evidence", headers=env.auth("auditor"))
    assert resp.status == 200
    assert resp.content_type == EVIDENCE_CONTENT_TYPE
    assert resp.headers["Content-Disposition"] == 'attachment; filename="exchange-req-7.asice"'
    assert await resp.read() == b"PK\x03\x04 container"
    ((store, request_id, certs, side, seq),) = fake_archive
    assert (store, request_id, side, seq) == (env.store, "req-7", None, None)
    # The export is itself logged (it hands out message bodies) before the container is built.
    assert [(r.service, r.decision["request_id"]) for r in env.log.appended] == [("audit:evidence-export", "req-7")]
    assert (len(certs.ca_roots), len(certs.tsas)) == (1, 1)  # sample_conf: one CA, one TSA


async def test_evidence_filename_only_from_safe_ids(env: Env, fake_archive: list[Any]) -> None:
    """An id with characters unfit for a header parameter gives a neutral file name (no header injection)."""
    resp = await env.client.get('/api/v1/audit/exchanges/a"b;c/evidence', headers=env.auth("admin"))
    assert resp.status == 200
    assert resp.headers["Content-Disposition"] == 'attachment; filename="exchange.asice"'
    assert fake_archive[0][1] == 'a"b;c'


async def test_evidence_side_parameter(env: Env, fake_archive: list[Any]) -> None:
    """side=consumer|provider reaches the exporter; any other value or parameter is 400 Client.InvalidRequest."""
    resp = await env.client.get("/api/v1/audit/exchanges/r/evidence?side=provider", headers=env.auth("auditor"))
    assert (resp.status, fake_archive[0][3]) == (200, "provider")
    for query in ("side=both", "side=consumer&side=provider", "person=AZE1"):
        resp = await env.client.get(f"/api/v1/audit/exchanges/r/evidence?{query}", headers=env.auth("auditor"))
        assert (resp.status, (await resp.json())["type"]) == (400, "Client.InvalidRequest")
    assert len(fake_archive) == 1


async def test_evidence_with_the_real_archive(env: Env) -> None:
    """With security_server.messagelog.archive itself, an unknown exchange is 404 Client.NotFound, not a 500."""
    resp = await env.client.get("/api/v1/audit/exchanges/no-such-exchange/evidence", headers=env.auth("auditor"))
    assert (resp.status, (await resp.json())["type"]) == (404, "Client.NotFound")


# OpenAPI -------------------------------------------------------------------------------------------------------


async def test_openapi_document_covers_every_route(env: Env) -> None:
    """Every route of the admin app (but HEAD) is in the document, every documented operation is a route."""
    resp = await env.client.get("/openapi.json")
    assert resp.status == 200
    document = await resp.json()
    assert document == load_admin_openapi()
    routes = {
        (route.resource.canonical, route.method.lower())
        for route in env.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "put", "post", "delete", "patch"}
    }
    assert routes == documented


def test_openapi_document_shape() -> None:
    """The document is OpenAPI 3 with the X-API-Key scheme, and every $ref resolves."""
    document = load_admin_openapi()
    assert document["openapi"].startswith("3.")
    assert document["components"]["securitySchemes"]["apiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(document):
        target: Any = document
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        assert isinstance(target, dict)
