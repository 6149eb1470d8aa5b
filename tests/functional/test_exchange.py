"""Message exchange end to end: two real security servers on loopback, each with its own TLS identity.

The federation (tests/functional/conftest.py) is a bank's server ss-a with client subsystems ``loans`` (granted
access) and ``marketing`` (no grants), and a ministry's server ss-b providing REST ``hello``/``echo`` and SOAP
``helloService`` through the built-in test service.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from bridge.globalconf import GlobalConf
from bridge.transport import HEADER_MANIFEST_LENGTH, index_bytes
from security_server.runtime import ServerRuntime
from security_server.sandbox import Federation
from tests.support.relay import Relay, flip_last_byte

pytestmark = [pytest.mark.functional, pytest.mark.asyncio(loop_scope="module")]

LOANS = "AZ/COM/9900001111/loans"
MARKETING = "AZ/COM/9900001111/marketing"
SERVICE = "/r1/AZ/GOV/1400057421/population"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "xroad"
XROAD_XSD = Path(__file__).resolve().parents[2] / "schemas" / "xroad"
SOAP_XSD = Path(__file__).resolve().parents[2] / "schemas" / "soap" / "soap-envelope-1.1.xsd"


def client_url(fed: Federation, path: str = "") -> str:
    return fed.server("ss-a").urls["client_http"] + path


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# Passing exchanges ---------------------------------------------------------------------------------------------


async def test_rest_get_passes_end_to_end(federation: Federation, http: aiohttp.ClientSession) -> None:
    """A REST GET from the bank's client subsystem reaches the ministry's service and its answer comes back."""
    headers = {"X-Road-Client": LOANS, "X-Road-UserId": "AZ1234567", "X-Road-Id": "msg-1"}
    async with http.get(client_url(federation, f"{SERVICE}/hello/hello?name=Aysel"), headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"message": "Hello, Aysel!", "client": LOANS, "userId": "AZ1234567"}
        # pr-rest §4.3: the response carries the X-Road headers.
        assert resp.headers["X-Road-Client"] == LOANS
        assert resp.headers["X-Road-Service"] == "AZ/GOV/1400057421/population/hello"
        assert resp.headers["X-Road-Id"] == "msg-1"
        assert len(resp.headers["X-Road-Request-Id"]) >= 16
        assert len(base64.b64decode(resp.headers["X-Road-Request-Hash"])) == 64  # base64 SHA-512


async def test_rest_post_passes_with_body(federation: Federation, http: aiohttp.ClientSession) -> None:
    """A REST POST body goes through both servers byte for byte, and the request hash covers headers and body."""
    payload = bytes(range(256)) * 100
    headers = {"X-Road-Client": LOANS, "Content-Type": "application/octet-stream"}
    async with http.post(client_url(federation, f"{SERVICE}/echo/echo"), data=payload, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert await resp.read() == payload
        assert resp.headers["Content-Type"] == "application/octet-stream"


async def test_soap_request_with_attachment(federation: Federation, http: aiohttp.ClientSession) -> None:
    """An SwA SOAP request with an attachment passes; the answer echoes the headers in order plus requestHash."""
    envelope = soap_request("helloService")
    boundary = "korpu-test-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: text/xml; charset=UTF-8\r\nContent-ID: <root>\r\n\r\n".encode()
        + envelope
        + f"\r\n--{boundary}\r\nContent-Type: application/pdf\r\nContent-ID: <doc1>\r\n\r\n".encode()
        + b"%PDF-1.4 test attachment"
        + f"\r\n--{boundary}--\r\n".encode()
    )
    content_type = f'multipart/related; type="text/xml"; start="<root>"; boundary="{boundary}"'
    async with http.post(client_url(federation, "/"), data=body, headers={"Content-Type": content_type}) as resp:
        answer = await resp.read()
        assert resp.status == 200, answer.decode()
    doc = etree.fromstring(answer)
    header = doc.find("{http://schemas.xmlsoap.org/soap/envelope/}Header")
    assert header is not None
    names = [etree.QName(child).localname for child in header]
    assert names == ["client", "service", "id", "userId", "issue", "protocolVersion", "requestHash"]
    expected_hash = base64.b64encode(hashlib.sha512(envelope).digest()).decode()
    request_hash = header.find("{http://x-road.eu/xsd/xroad.xsd}requestHash")
    assert request_hash is not None
    assert "".join((request_hash.text or "").split()) == expected_hash
    assert doc.findtext(".//attachments") == "1"
    validate_headers(header)


async def test_reference_soap_example_passes(federation: Federation, http: aiohttp.ClientSession) -> None:
    """X-Road's own example request (pr-mess Annex E.1), identifiers adapted to this federation, passes."""
    envelope = soap_request("helloService")
    headers = {"Content-Type": "text/xml; charset=UTF-8"}
    async with http.post(client_url(federation, "/"), data=envelope, headers=headers) as resp:
        answer = await resp.read()
        assert resp.status == 200, answer
    header = etree.fromstring(answer).find("{http://schemas.xmlsoap.org/soap/envelope/}Header")
    assert header is not None
    validate_headers(header)


# Faults --------------------------------------------------------------------------------------------------------


async def test_client_without_grant_is_denied(federation: Federation, http: aiohttp.ClientSession) -> None:
    """A registered client with no access right gets the provider's AccessDenied fault."""
    async with http.get(client_url(federation, f"{SERVICE}/hello/hello"), headers={"X-Road-Client": MARKETING}) as resp:
        assert resp.status == 500
        assert resp.headers["X-Road-Error"] == "Server.ServerProxy.AccessDenied"
        body = await resp.json()
        assert body["type"] == "Server.ServerProxy.AccessDenied"
        assert "Traceback" not in body["message"]


async def test_rest_grant_narrowed_by_method(federation: Federation, http: aiohttp.ClientSession) -> None:
    """The echo grant is for POST /echo only: a GET of the same path is denied."""
    async with http.get(client_url(federation, f"{SERVICE}/echo/echo"), headers={"X-Road-Client": LOANS}) as resp:
        assert resp.headers.get("X-Road-Error") == "Server.ServerProxy.AccessDenied"


async def test_unknown_client_is_refused(federation: Federation, http: aiohttp.ClientSession) -> None:
    """A client subsystem that is not registered on this security server is refused before anything is sent."""
    headers = {"X-Road-Client": "AZ/COM/9900001111/nobody"}
    async with http.get(client_url(federation, f"{SERVICE}/hello/hello"), headers=headers) as resp:
        assert resp.status == 403
        assert resp.headers["X-Road-Error"] == "Client.InvalidClient"
    headers = {"X-Road-Client": "AZ/GOV/1400057421/population"}  # another member's subsystem
    async with http.get(client_url(federation, f"{SERVICE}/hello/hello"), headers=headers) as resp:
        assert resp.headers["X-Road-Error"] == "Client.InvalidClient"


async def test_unknown_provider_is_refused(federation: Federation, http: aiohttp.ClientSession) -> None:
    """A service of a member with no security server in global configuration gets UnknownMember."""
    async with http.get(
        client_url(federation, "/r1/AZ/GOV/9999/nothing/hello"), headers={"X-Road-Client": LOANS}
    ) as resp:
        assert resp.headers["X-Road-Error"] == "Server.ClientProxy.UnknownMember"


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/hello/%2e%2e%2fadmin", "Client.InvalidPath"),
        ("/hello/a%2fb", "Client.InvalidPath"),
        ("/hello/..%2Fsecret", "Client.InvalidPath"),
        ("/hello/%2E%2E/x", "Client.InvalidPath"),
    ],
)
async def test_encoded_traversal_is_refused(
    federation: Federation, http: aiohttp.ClientSession, path: str, code: str
) -> None:
    """Encoded traversal and encoded slashes in REST paths are refused before any access decision."""
    url = client_url(federation, SERVICE + path)
    async with http.get(yarl_raw(url), headers={"X-Road-Client": LOANS}) as resp:
        assert resp.status == 400
        assert resp.headers["X-Road-Error"] == code


async def test_duplicate_client_header_is_refused(federation: Federation, http: aiohttp.ClientSession) -> None:
    """Two X-Road-Client headers are ambiguous and refused."""
    headers = [("X-Road-Client", LOANS), ("X-Road-Client", MARKETING)]
    async with http.get(client_url(federation, f"{SERVICE}/hello/hello"), headers=headers) as resp:
        assert resp.status == 400
        assert resp.headers["X-Road-Error"] == "Client.DuplicateHeaderField"


@pytest.mark.parametrize(
    ("client", "code"),
    [("AZ/COM/99;00/loans", "Client.InvalidIdentifier"), ("AZ/COM", "Client.InvalidIdentifier")],
)
async def test_invalid_identifiers_are_refused(
    federation: Federation, http: aiohttp.ClientSession, client: str, code: str
) -> None:
    """Malformed client identifiers are refused with InvalidIdentifier."""
    async with http.get(client_url(federation, f"{SERVICE}/hello/hello"), headers={"X-Road-Client": client}) as resp:
        assert resp.status == 400
        assert resp.headers["X-Road-Error"] == code


@pytest.mark.parametrize(
    "envelope",
    [
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><l>&b;</l>',
        b"<a>" * 5000 + b"</a>" * 5000,
    ],
    ids=["xxe", "entity-expansion", "deep-nesting"],
)
async def test_hostile_soap_gets_a_fault(federation: Federation, http: aiohttp.ClientSession, envelope: bytes) -> None:
    """XXE, entity expansion and deep nesting get a SOAP Fault with a Client code, and the server stays up."""
    async with http.post(client_url(federation, "/"), data=envelope, headers={"Content-Type": "text/xml"}) as resp:
        assert resp.status == 500
        fault = etree.fromstring(await resp.read())
        code = fault.findtext(".//faultcode")
        assert code is not None
        assert code.startswith("Client.")
    await test_rest_get_passes_end_to_end(federation, http)  # still serving


async def test_oversized_soap_envelope_is_refused(federation: Federation, http: aiohttp.ClientSession) -> None:
    """A SOAP envelope over the configured cap (8 MiB) is refused with a client fault, not parsed."""
    envelope = soap_request("helloService").replace(b"</exampleInput>", b"x" * (9 << 20) + b"</exampleInput>", 1)
    async with http.post(client_url(federation, "/"), data=envelope, headers={"Content-Type": "text/xml"}) as resp:
        assert resp.status == 500
        code = etree.fromstring(await resp.read()).findtext(".//faultcode")
        assert code is not None
        assert code.startswith("Client.")


async def test_oversized_header_is_refused(federation: Federation, http: aiohttp.ClientSession) -> None:
    """A header line longer than the configured cap is refused with a 4xx, not served."""
    headers = {"X-Road-Client": LOANS, "X-Big": "x" * 20000}
    async with http.get(client_url(federation, f"{SERVICE}/hello/hello"), headers=headers) as resp:
        assert 400 <= resp.status < 500


async def test_expired_global_configuration_refuses_traffic(
    federation: Federation, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the consumer's copy of global configuration has expired, traffic is refused with OutdatedGlobalConf."""
    runtime = federation.server("ss-a").runtime
    conf = runtime.conf()
    real = runtime.confclient.current

    def expired(now: object = None) -> GlobalConf:
        return real(conf.expires_at)  # the moment it expires

    monkeypatch.setattr(runtime.confclient, "current", expired)
    async with http.get(client_url(federation, f"{SERVICE}/hello/hello"), headers={"X-Road-Client": LOANS}) as resp:
        assert resp.status == 500
        assert resp.headers["X-Road-Error"] == "Server.ClientProxy.OutdatedGlobalConf"


# Tampering and TLS binding -------------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module")
async def relay_factory(federation: Federation) -> AsyncIterator[list[Relay]]:
    relays: list[Relay] = []
    yield relays
    for relay in relays:
        await relay.stop()


def redirect(monkeypatch: pytest.MonkeyPatch, runtime: ServerRuntime, provider_code: str, address: str) -> None:
    """Make ``runtime`` see the provider server ``provider_code`` at ``address`` (the relay)."""
    real = runtime.confclient.current

    def patched(now: object = None) -> GlobalConf:
        conf = real()
        servers = tuple(
            dataclasses.replace(s, address=address) if s.id.server_code == provider_code else s for s in conf.servers
        )
        return dataclasses.replace(conf, servers=servers)

    monkeypatch.setattr(runtime.confclient, "current", patched)


async def test_flipped_byte_in_transit_is_rejected(
    federation: Federation, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch, relay_factory: list[Relay]
) -> None:
    """A relay holding both servers' TLS identities flips one body byte: the provider rejects the signature."""
    ss_a, ss_b = federation.server("ss-a").runtime, federation.server("ss-b").runtime
    relay = Relay(ss_b.server_ssl(), ss_a.client_ssl(), ss_b.config.address, mutate=flip_last_byte)
    relay_factory.append(relay)
    redirect(monkeypatch, ss_a, "ss-b", await relay.start())
    payload = b'{"amount": 100}'
    headers = {"X-Road-Client": LOANS, "Content-Type": "application/json"}
    async with http.post(client_url(federation, f"{SERVICE}/echo/echo"), data=payload, headers=headers) as resp:
        assert resp.status == 500
        assert resp.headers["X-Road-Error"] == "Server.ServerProxy.InvalidSignatureValue"
    assert len(relay.captured) == 1


async def test_peer_certificate_not_registered_for_the_provider(
    federation: Federation, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch, relay_factory: list[Relay]
) -> None:
    """A server answering at the provider's address with another (valid, CA-issued) certificate gets nothing."""
    ss_a = federation.server("ss-a").runtime
    ss_b = federation.server("ss-b").runtime
    # The impostor presents ss-a's own authentication certificate: approved CA, but not ss-b's.
    relay = Relay(ss_a.server_ssl(), ss_a.client_ssl(), ss_b.config.address)
    relay_factory.append(relay)
    redirect(monkeypatch, ss_a, "ss-b", await relay.start())
    async with http.get(client_url(federation, f"{SERVICE}/hello/hello"), headers={"X-Road-Client": LOANS}) as resp:
        assert resp.status == 500
        assert resp.headers["X-Road-Error"] == "Server.ClientProxy.SslAuthenticationFailed"
    assert relay.captured == []  # not one byte of the message reached the impostor


async def test_captured_signature_verifies_with_xmlsec1(
    federation: Federation,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    relay_factory: list[Relay],
    tmp_path: Path,
) -> None:
    """The signature of a real exchange, captured on the wire, verifies with xmlsec1 given its parts as files."""
    ss_a, ss_b = federation.server("ss-a").runtime, federation.server("ss-b").runtime
    relay = Relay(ss_b.server_ssl(), ss_a.client_ssl(), ss_b.config.address)
    relay_factory.append(relay)
    redirect(monkeypatch, ss_a, "ss-b", await relay.start())
    headers = {"X-Road-Client": LOANS, "Content-Type": "text/plain"}
    async with http.post(client_url(federation, f"{SERVICE}/echo/echo"), data=b"evidence", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
    captured = relay.captured[0]
    for name, data in captured.parts().items():
        (tmp_path / name).write_bytes(data)
    # The signed "index" part is not sent: the auditor derives it from the manifest (docs/protocol.md).
    manifest = captured.manifest
    (tmp_path / "index").write_bytes(index_bytes(manifest.parts, manifest.meta))
    (tmp_path / "signature.xml").write_bytes(captured.manifest.signature)
    (tmp_path / "ca.pem").write_bytes(federation.central.ca.root_cert.public_bytes(Encoding.PEM))
    ok = xmlsec1(tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout + ok.stderr
    (tmp_path / "body").write_bytes(b"evidencf")  # one byte changed
    assert xmlsec1(tmp_path).returncode != 0


def xmlsec1(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["xmlsec1", "--verify", "--trusted-pem", "ca.pem", "signature.xml"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# Helpers -------------------------------------------------------------------------------------------------------


def soap_request(operation: str) -> bytes:
    """pr-mess Annex E.1's request with this federation's identifiers and the given operation."""
    text = (FIXTURES / "soap_request.xml").read_text(encoding="utf-8")
    for old, new in (
        ("<id:xRoadInstance>EE</id:xRoadInstance>", "<id:xRoadInstance>AZ</id:xRoadInstance>"),
        ("<id:memberCode>MEMBER1</id:memberCode>", "<id:memberCode>9900001111</id:memberCode>"),
        ("<id:subsystemCode>SUBSYSTEM1</id:subsystemCode>", "<id:subsystemCode>loans</id:subsystemCode>"),
        ("<id:memberCode>MEMBER2</id:memberCode>", "<id:memberCode>1400057421</id:memberCode>"),
        ("<id:subsystemCode>SUBSYSTEM2</id:subsystemCode>", "<id:subsystemCode>population</id:subsystemCode>"),
        ("exampleService", operation),
    ):
        text = text.replace(old, new)
    text = text.replace("<id:memberClass>GOV</id:memberClass>", "<id:memberClass>COM</id:memberClass>", 1)
    return text.encode()


def validate_headers(header: etree._Element) -> None:
    """The envelope validates against the SOAP 1.1 envelope schema, each X-Road header against xroad.xsd."""
    envelope_schema = etree.XMLSchema(etree.parse(str(SOAP_XSD)))
    envelope_schema.assertValid(etree.ElementTree(etree.fromstring(etree.tostring(header.getroottree().getroot()))))
    schema = etree.XMLSchema(etree.parse(str(XROAD_XSD / "xroad.xsd")))
    for child in header:
        wrapper = etree.fromstring(etree.tostring(child))
        schema.assertValid(wrapper)


def yarl_raw(url: str) -> object:
    """A URL aiohttp sends exactly as written (no re-encoding or normalisation of %2e, %2f)."""
    import yarl

    return yarl.URL(url, encoded=True)


async def _capture_one(
    federation: Federation, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch, relays: list[Relay]
) -> tuple[Relay, ServerRuntime, ServerRuntime]:
    ss_a, ss_b = federation.server("ss-a").runtime, federation.server("ss-b").runtime
    relay = Relay(ss_b.server_ssl(), ss_a.client_ssl(), ss_b.config.address)
    relays.append(relay)
    redirect(monkeypatch, ss_a, "ss-b", await relay.start())
    headers = {"X-Road-Client": LOANS, "Content-Type": "text/plain"}
    async with http.post(client_url(federation, f"{SERVICE}/echo/echo"), data=b"once", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
    return relay, ss_a, ss_b


async def _post_as(runtime: ServerRuntime, address: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
    """POST a raw message to a server proxy with ``runtime``'s TLS identity (what a malicious peer could do)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"https://{address}/korpu/v1/exchange", data=body, headers=headers, ssl=runtime.client_ssl()
        ) as resp,
    ):
        await resp.read()
        return resp.status, resp.headers.get("X-Road-Error", "")


async def test_replayed_request_is_refused(
    federation: Federation, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch, relay_factory: list[Relay]
) -> None:
    """A captured request sent again, byte for byte, by the same peer is refused as a replay."""
    relay, ss_a, ss_b = await _capture_one(federation, http, monkeypatch, relay_factory)
    captured = relay.captured[0]
    headers = {k: v for k, v in captured.headers.items() if k.lower() not in ("host", "content-length")}
    status, error = await _post_as(ss_a, ss_b.config.address, headers, captured.body)
    assert (status, error) == (500, "Server.ServerProxy.ReplayedMessage")


async def test_changed_manifest_metadata_breaks_the_signature(
    federation: Federation, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch, relay_factory: list[Relay]
) -> None:
    """Changing a part's content type in the (unsigned) manifest is caught: the signed index no longer matches."""
    relay, ss_a, ss_b = await _capture_one(federation, http, monkeypatch, relay_factory)
    captured = relay.captured[0]
    manifest = captured.manifest
    parts = tuple(
        dataclasses.replace(p, content_type="application/x-evil") if p.name == "body" else p for p in manifest.parts
    )
    forged = dataclasses.replace(manifest, parts=parts)
    forged_bytes = forged.encode()
    body = forged_bytes + b"".join(captured.parts().values())
    headers = {k: v for k, v in captured.headers.items() if k.lower() not in ("host", "content-length")}
    headers[HEADER_MANIFEST_LENGTH] = str(len(forged_bytes))
    status, error = await _post_as(ss_a, ss_b.config.address, headers, body)
    assert (status, error) == (500, "Server.ServerProxy.InvalidSignatureValue")
