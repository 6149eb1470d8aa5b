"""REST r1 (pr-rest): request parsing, path normalisation, descriptors, request hash and error rendering."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import (
    DuplicateHeaderField,
    InvalidIdentifier,
    InvalidPath,
    InvalidProtocolVersion,
    InvalidRequest,
    KorpuError,
    MethodNotAllowed,
    MissingHeaderField,
    NotFound,
    UpstreamUnavailable,
)
from bridge.identifiers import MemberId, SecurityServerId, ServiceId, SubsystemId
from bridge.message import Protocol, RepresentedParty
from bridge.rest import (
    RestRequest,
    RestResponse,
    descriptor,
    normalize_path,
    parse_descriptor,
    parse_response_descriptor,
    render_rest_error,
    request_hash,
    response_descriptor,
    response_headers,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "xroad"
CLIENT = ("X-Road-Client", "INSTANCE/CLASS1/MEMBER1/SUBSYSTEM1")
SERVICE_PATH = "/r1/INSTANCE/CLASS2/MEMBER2/SUBSYSTEM2/BARSERVICE"


def make(
    raw_path: str = SERVICE_PATH, headers: list[tuple[str, str]] | None = None, method: str = "GET"
) -> RestRequest:
    return RestRequest.from_http(
        method, raw_path, "", [CLIENT] if headers is None else headers, generate_id=lambda: "gen-1"
    )


def test_reference_example_request() -> None:
    """pr-rest §4.1's example splits into serviceId, path and query, with the client from X-Road-Client."""
    lines = [ln for ln in (FIXTURES / "rest_request_example.http").read_text().splitlines() if not ln.startswith("#")]
    method, target = lines[0].split(" ", 1)
    raw_path, _, query = target.partition("?")
    name, _, value = lines[1].partition(": ")
    req = RestRequest.from_http(method, raw_path, query, [(name, value)], generate_id=lambda: "gen-1")
    assert req.header.service == ServiceId(SubsystemId("INSTANCE", "CLASS2", "MEMBER2", "SUBSYSTEM2"), "BARSERVICE")
    assert req.header.client == SubsystemId("INSTANCE", "CLASS1", "MEMBER1", "SUBSYSTEM1")
    assert (req.method, req.path, req.query, req.header.message_id) == ("GET", "/v1/bar/zyggy", "quu=1", "gen-1")
    assert (req.header.protocol, req.header.protocol_version) == (Protocol.REST, "r1")


def test_optional_headers_and_forwarding() -> None:
    """Optional X-Road headers are read (pr-rest §4.3 values); X-Road-*, hop-by-hop, Host and friends are dropped."""
    headers = [
        ("x-road-client", "INSTANCE/CLASS1/MEMBER1"),
        ("X-Road-Id", "fa2e18a5-c2cb-4d09-b994-f57727f7c3fb"),
        ("X-Road-UserId", "EE12345678901"),
        ("X-Road-Issue", "MT324223MSD"),
        ("X-Road-Security-Server", "INSTANCE/MEMBERCLASS/MEMBERCODE/SERVERCODE"),
        ("X-Road-Represented-Party", "MEMBERCLASS/MEMBERCODE"),
        ("X-Road-Request-Hash", "smuggled"),
        ("Host", "ss.example"),
        ("Content-Length", "3"),
        ("Connection", "keep-alive, X-Secret"),
        ("X-Secret", "hop"),
        ("Proxy-Authorization", "x"),
        ("Transfer-Encoding", "chunked"),
        ("Accept", "application/json"),
        ("Content-Type", "application/json"),
    ]
    req = make(SERVICE_PATH + "/v1/pets", headers, "POST")
    h = req.header
    assert h.client == MemberId("INSTANCE", "CLASS1", "MEMBER1")
    assert (h.message_id, h.user_id, h.issue) == (
        "fa2e18a5-c2cb-4d09-b994-f57727f7c3fb",
        "EE12345678901",
        "MT324223MSD",
    )
    assert h.security_server == SecurityServerId(MemberId("INSTANCE", "MEMBERCLASS", "MEMBERCODE"), "SERVERCODE")
    assert h.represented_party == RepresentedParty("MEMBERCODE", "MEMBERCLASS")
    assert req.headers == (("accept", "application/json"), ("content-type", "application/json"))
    assert req.content_type == "application/json"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", ""),
        ("/", "/"),
        ("/v1/bar/zyggy", "/v1/bar/zyggy"),
        ("/v1/pets/", "/v1/pets/"),
        ("/%7Euser/a%20b", "/~user/a%20b"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a+b;c=d:e@f", "/a+b;c=d:e@f"),
        ("/%252e%252e/etc", "/%252e%252e/etc"),  # decoded once: literal "%2e%2e", re-encoded, never ".."
        ("/...x/.hidden", "/...x/.hidden"),
    ],
)
def test_normalize_path_canonical_forms(raw: str, expected: str) -> None:
    """Paths are decoded once and re-encoded canonically; double encoding stays encoded for the provider."""
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "/%2e%2e%2fetc/passwd",
        "/a/%2f/b",
        "/a%2Fb",
        "/..",
        "/a/../b",
        "/%2E%2E",
        "/%2e%2E/x",
        "/./a",
        "/a/.",
        "/%2e",
        "/%5c",
        "/a\\b",
        "/a%00b",
        "/a%0d%0aX:1",
        "//a",
        "/a//b",
        "/..;/admin",
        "/.. ",
        "/%2e%2e%20",
        "/a%2",
        "/a%zz",
        "/%ff",
        "/a b",
        "/a#b",
        "a/b",
        "/" + "a" * 5000,
    ],
)
def test_normalize_path_refuses_traversal_tricks(raw: str) -> None:
    """Encoded slashes/backslashes, dot segments in every spelling, NUL/CRLF, empty segments and bad escapes fail."""
    with pytest.raises(InvalidPath):
        normalize_path(raw)


@given(st.text(alphabet="/.%2eEfF5cC0aAb;:+ ~", max_size=30))
def test_normalize_path_properties(suffix: str) -> None:
    """Output never holds a dot segment or an encoded slash/backslash, and normalising again changes nothing."""
    try:
        out = normalize_path("/" + suffix)
    except InvalidPath:
        return
    segments = out.split("/")[1:]
    assert [s for s in segments if s in (".", "..")] == []
    assert re.search(r"%(2f|5c|00)", out, re.IGNORECASE) is None
    assert normalize_path(out) == out


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"headers": []}, MissingHeaderField),
        ({"headers": [CLIENT, CLIENT]}, DuplicateHeaderField),
        ({"headers": [CLIENT, ("x-road-client", "INSTANCE/CLASS1/OTHER")]}, DuplicateHeaderField),
        ({"headers": [CLIENT, ("X-Road-Id", "1"), ("x-road-id", "2")]}, DuplicateHeaderField),
        ({"headers": [("X-Road-Client", "INSTANCE/CLASS1/MEM:BER1")]}, InvalidIdentifier),
        ({"headers": [("X-Road-Client", "INSTANCE/CLASS1")]}, InvalidIdentifier),
        ({"headers": [CLIENT, ("X-Road-Security-Server", "A/B/C")]}, InvalidIdentifier),
        ({"headers": [CLIENT, ("X-Road-UserId", "a\x01b")]}, InvalidRequest),
        ({"headers": [CLIENT, ("Bad Name", "x")]}, InvalidRequest),
        ({"headers": [CLIENT, ("X-Evil", "a\r\nb")]}, InvalidRequest),
        ({"headers": [CLIENT] + [("X-H", "v")] * 100}, InvalidRequest),
        ({"headers": [CLIENT, ("X-Big", "v" * 40000)]}, InvalidRequest),
        ({"raw_path": "/r1/INSTANCE/CLASS2/MEMBER2/SUBSYSTEM2"}, InvalidIdentifier),
        ({"raw_path": "/r1/INSTANCE/CLASS2/MEMBER2/SUB%2FX/SVC"}, InvalidIdentifier),
        ({"raw_path": "/r1/INSTANCE/CLASS2/MEMBER2/SUBSYSTEM2/.."}, InvalidIdentifier),
        ({"raw_path": "/r2" + SERVICE_PATH[3:]}, InvalidProtocolVersion),
        ({"raw_path": SERVICE_PATH + "/%2e%2e/admin"}, InvalidPath),
        ({"method": "TRACE"}, MethodNotAllowed),
        ({"method": "get"}, MethodNotAllowed),
        ({"method": "CONNECT"}, MethodNotAllowed),
    ],
)
def test_from_http_refusals(kwargs: dict[str, object], error: type[KorpuError]) -> None:
    """Missing/duplicate X-Road-Client, bad identifiers, 4-part service ids, bad methods and header caps fail."""
    with pytest.raises(error):
        make(**kwargs)  # type: ignore[arg-type]


def test_descriptor_round_trip_and_format() -> None:
    """The descriptor is sorted compact ASCII JSON of the request, and parse_descriptor rebuilds the same request."""
    headers = [CLIENT, ("X-Road-UserId", "EE1"), ("Accept", "application/json"), ("X-Name", "Körpü")]
    req = RestRequest.from_http("PUT", SERVICE_PATH + "/v1/a%20b", "x=1&y=%20", headers, generate_id=lambda: "id-1")
    data = descriptor(req)
    assert json.loads(data) == {
        "format": "korpu-rest-request/1",
        "method": "PUT",
        "path": "/v1/a%20b",
        "query": "x=1&y=%20",
        "headers": [["accept", "application/json"], ["x-name", "Körpü"]],
        "client": "SUBSYSTEM:INSTANCE/CLASS1/MEMBER1/SUBSYSTEM1",
        "service": "SERVICE:INSTANCE/CLASS2/MEMBER2/SUBSYSTEM2/BARSERVICE",
        "id": "id-1",
        "userId": "EE1",
        "issue": None,
        "representedParty": None,
        "securityServer": None,
    }
    assert data.isascii()
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()
    assert parse_descriptor(data) == req


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.replace(b'"GET"', b'"TRACE"'),
        lambda d: d.replace(b'"/v1"', b'"/v1/../x"'),
        lambda d: d.replace(b'"/v1"', b'"/V%2e"'),
        lambda d: d.replace(b'"headers":[]', b'"headers":[["host","x"]]'),
        lambda d: d.replace(b'"headers":[]', b'"headers":[["x-road-client","x"]]'),
        lambda d: d.replace(b"SUBSYSTEM:INSTANCE", b"SERVER:INSTANCE"),
        lambda d: d.replace(b'{"client"', b'{ "client"'),
        lambda d: d.replace(b'"userId":null', b'"userId":null,"userId":"x"'),
        lambda d: d.replace(b'"userId":null', b'"userId":null,"extra":1'),
        lambda d: d.replace(b'"userId":null', b'"userId":NaN'),
        lambda d: d[:-1],
        lambda d: b"[]",
    ],
)
def test_parse_descriptor_is_strict(mutate: object) -> None:
    """Non-canonical, extra/duplicate keys, bad types, forbidden headers, traversal or wrong ids are refused."""
    data = descriptor(make(SERVICE_PATH + "/v1"))
    bad = mutate(data)  # type: ignore[operator]
    assert bad != data
    with pytest.raises(KorpuError):
        parse_descriptor(bad)


def test_request_hash_per_pr_rest() -> None:
    """With a body: base64(SHA512(SHA512(headers)+SHA512(body))); without: base64(SHA512(headers))."""
    headers, body = b"descriptor", b"body"
    hd, bd = hashlib.sha512(headers).digest(), hashlib.sha512(body).digest()
    assert request_hash(hd, bd) == base64.b64encode(hashlib.sha512(hd + bd).digest()).decode()
    assert request_hash(hd, None) == base64.b64encode(hashlib.sha512(headers).digest()).decode()
    assert len(request_hash(hd, bd)) == 88
    with pytest.raises(ValueError, match="SHA-512"):
        request_hash(b"short", None)


def test_response_descriptor_and_headers() -> None:
    """Provider X-Road-* headers are dropped; the response descriptor round-trips; X-Road response headers are set."""
    resp = RestResponse.from_http(
        405, [("Content-Type", "application/json;charset=utf-8"), ("x-road-id", "forged"), ("Date", "Thu")]
    )
    assert resp.headers == (("content-type", "application/json;charset=utf-8"), ("date", "Thu"))
    data = response_descriptor(resp, "hash==")
    assert parse_response_descriptor(data) == (resp, "hash==")
    with pytest.raises(InvalidRequest):
        parse_response_descriptor(data.replace(b"405", b"99"))
    req = make(headers=[CLIENT, ("X-Road-Id", "5ea48ae9")])
    assert response_headers(req.header, "hash==", "req-1") == [
        ("X-Road-Client", "INSTANCE/CLASS1/MEMBER1/SUBSYSTEM1"),
        ("X-Road-Service", "INSTANCE/CLASS2/MEMBER2/SUBSYSTEM2/BARSERVICE"),
        ("X-Road-Id", "5ea48ae9"),
        ("X-Road-Request-Id", "req-1"),
        ("X-Road-Request-Hash", "hash=="),
    ]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (MissingHeaderField("X-Road-Client is missing"), 400),
        (InvalidPath("dot segment"), 400),
        (NotFound("no such service"), 404),
        (MethodNotAllowed("TRACE"), 405),
        (UpstreamUnavailable("timed out", origin="Server.ServerProxy"), 500),
        (InvalidRequest("bad response", origin="Server.ServerProxy"), 500),
    ],
)
def test_render_rest_error(error: KorpuError, status: int) -> None:
    """Client faults keep their 4xx, server faults are 500; X-Road-Error and the {type,message,detail} body are set."""
    got_status, headers, body = render_rest_error(error, "corr-1")
    assert got_status == status
    assert headers == [("Content-Type", "application/json;charset=utf-8"), ("X-Road-Error", error.fault_code)]
    assert json.loads(body) == {"type": error.fault_code, "message": error.message, "detail": "corr-1"}
