"""Mutual TLS between security servers (security_server.tls), with real handshakes on 127.0.0.1.

The success path runs the stack the proxies use: an aiohttp server with the server context and an aiohttp client
with the client context.  Refusals run against a small blocking TLS server in a thread that records *why* its
handshake failed (OpenSSL's reason): asyncio's TLS server closes without sending the alert, so a client alone
could not tell a refused certificate from a refused protocol version.  Every server is stopped by its fixture.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import socket
import ssl
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509

from bridge.errors import SslAuthenticationFailed, TokenError, WrongPin
from bridge.globalconf import ApprovedCA, GlobalConf
from bridge.pki.keys import PrivateKey
from bridge.pki.token import SoftwareToken
from security_server.certcheck import PeerBinding
from security_server.tls import TlsContexts, TlsIdentity, client_context, peer_certificate, server_context
from tests.security_server.test_certcheck import SERVER2, Federation, build_federation, der
from tests.support.pki import PIN, SERVER

TIMEOUT = 5.0


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    return build_federation(tmp_path_factory.mktemp("tls"))


def make_identity(
    directory: Path, key: PrivateKey, cert: x509.Certificate, chain: list[x509.Certificate]
) -> TlsIdentity:
    """A token in ``directory`` holding ``key`` and ``cert`` as "auth", and the identity built from it."""
    token = SoftwareToken.init(directory / "token", PIN)
    token.import_key("auth", key, usage="auth")
    token.store_certificate("auth", cert)
    return TlsIdentity.from_token(token, "auth", PIN, directory / "state", chain)


@dataclasses.dataclass(frozen=True)
class Identities:
    ss1: TlsIdentity  # the server in these tests
    ss2: TlsIdentity  # a registered client server
    foreign: TlsIdentity  # an auth cert from the unapproved CA


@pytest.fixture(scope="module")
def ids(fed: Federation, tmp_path_factory: pytest.TempPathFactory) -> Identities:
    base = tmp_path_factory.mktemp("identities")
    return Identities(
        make_identity(base / "ss1", fed.pki.auth_key, fed.pki.auth_cert, [fed.pki.ca.issuing_cert]),
        make_identity(base / "ss2", fed.ss2_key, fed.ss2_cert, [fed.pki.ca.issuing_cert]),
        make_identity(base / "foreign", fed.other.auth_key, fed.other.auth_cert, [fed.other.ca.issuing_cert]),
    )


def anchors(fed: Federation) -> list[x509.Certificate]:
    return [fed.pki.ca.root_cert]


# A blocking TLS server that reports handshake outcomes ---------------------------------------------------------------


class ProbeServer:
    """Accepts TLS connections in a thread and records how each handshake ended.

    Each outcome (the peer's certificate DER, or OpenSSL's error reason) goes on ``outcomes``; a successful
    connection is answered with ``b"ok"``.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.outcomes: queue.Queue[bytes | str] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tls-probe", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(TIMEOUT)
                try:
                    with self.context.wrap_socket(conn, server_side=True) as tls:
                        self.outcomes.put(tls.getpeercert(binary_form=True) or b"")
                        tls.sendall(b"ok")
                except ssl.SSLError as exc:
                    self.outcomes.put(str(exc.reason))
                except OSError as exc:
                    self.outcomes.put(type(exc).__name__)

    def outcome(self) -> bytes | str:
        """The next handshake outcome, waiting at most TIMEOUT seconds."""
        return self.outcomes.get(timeout=TIMEOUT)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(TIMEOUT)


@pytest.fixture
def probe() -> Iterator[Callable[[ssl.SSLContext], ProbeServer]]:
    """A factory of ProbeServers; every server it made is stopped afterwards, also when the test fails."""
    servers: list[ProbeServer] = []

    def start(context: ssl.SSLContext) -> ProbeServer:
        server = ProbeServer(context)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.close()


@dataclasses.dataclass(frozen=True)
class ClientResult:
    answer: bytes | None
    error: str | None
    version: str | None = None
    cipher: str | None = None


def connect(port: int, context: ssl.SSLContext) -> ClientResult:
    """Handshake with ``context`` and read the server's answer, reporting an SSL error's reason instead."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, context.wrap_socket(raw) as tls:
            version, cipher = tls.version(), tls.cipher()
            return ClientResult(tls.recv(16), None, version, None if cipher is None else cipher[0])
    except ssl.SSLError as exc:
        return ClientResult(None, str(exc.reason))


def bare_client(*, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client context that trusts anything and presents no certificate (callers add what they test)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        context.maximum_version = max_version
    return context


# The success path over aiohttp ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class AiohttpServer:
    url: str
    seen: list[bytes]
    #: The handler sends its headers, then waits for this before the body, so the client can look at the live
    #: connection (aiohttp releases ``resp.connection`` as soon as a body is complete).
    release: asyncio.Event


@pytest.fixture
async def aiohttp_tls_server(fed: Federation, ids: Identities) -> AsyncIterator[AiohttpServer]:
    """ss1's server proxy stand-in: an aiohttp app on 127.0.0.1 with the server context; records peer certs."""
    server_ctx, _ = TlsContexts(ids.ss1).for_conf(fed.conf())
    seen: list[bytes] = []
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        seen.append(peer_certificate(request.transport))
        response = web.StreamResponse()
        await response.prepare(request)
        await asyncio.wait_for(release.wait(), TIMEOUT)
        await response.write(b"ok")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
        await site.start()
        port = runner.addresses[0][1]
        yield AiohttpServer(f"https://127.0.0.1:{port}/", seen, release)
    finally:
        release.set()
        await runner.cleanup()


async def test_mutual_tls_handshake_and_peer_binding(
    aiohttp_tls_server: AiohttpServer, fed: Federation, ids: Identities
) -> None:
    """ss2 calls ss1 over TLS 1.3: each side sees the other's auth cert, and PeerBinding identifies both."""
    conf = fed.conf()
    _, client_ctx = TlsContexts(ids.ss2).for_conf(conf)
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_ctx), timeout=aiohttp.ClientTimeout(total=TIMEOUT)
        ) as session,
        session.get(aiohttp_tls_server.url) as resp,
    ):
        assert resp.connection is not None
        transport = resp.connection.transport
        assert transport is not None
        server_cert = peer_certificate(transport)
        version = transport.get_extra_info("ssl_object").version()
        aiohttp_tls_server.release.set()
        body = await resp.text()
    assert (resp.status, body, version) == (200, "ok", "TLSv1.3")
    assert server_cert == der(fed.pki.auth_cert)
    assert aiohttp_tls_server.seen == [der(fed.ss2_cert)]
    binding = PeerBinding()
    binding.check_server(conf, server_cert, SERVER)  # raises if refused
    assert binding.identify_client_server(conf, aiohttp_tls_server.seen[0]).id == SERVER2


async def test_aiohttp_client_without_certificate_is_refused(aiohttp_tls_server: AiohttpServer) -> None:
    """Through aiohttp too, a client that presents no certificate gets no answer and the handler never runs."""
    context = bare_client()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context), timeout=aiohttp.ClientTimeout(total=TIMEOUT)
    ) as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(aiohttp_tls_server.url) as resp:
                await resp.read()
    assert aiohttp_tls_server.seen == []


# Refusals, with the server's reason ---------------------------------------------------------------------------------


def test_tls12_with_ecdhe_aead_is_accepted(
    fed: Federation, ids: Identities, probe: Callable[[ssl.SSLContext], ProbeServer]
) -> None:
    """A TLS 1.2-only peer still connects, on an ECDHE + AES-GCM/ChaCha20 suite."""
    server = probe(server_context(ids.ss1, anchors(fed)))
    context = client_context(ids.ss2, anchors(fed))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    result = connect(server.port, context)
    assert (result.answer, result.version) == (b"ok", "TLSv1.2")
    assert result.cipher is not None
    assert result.cipher in {
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    }
    assert server.outcome() == der(fed.ss2_cert)


def test_client_cert_from_another_ca_is_refused(
    fed: Federation, ids: Identities, probe: Callable[[ssl.SSLContext], ProbeServer]
) -> None:
    """A client certificate that does not chain to an approved CA fails the server's handshake."""
    server = probe(server_context(ids.ss1, anchors(fed)))
    result = connect(server.port, client_context(ids.foreign, anchors(fed)))
    assert server.outcome() == "CERTIFICATE_VERIFY_FAILED"
    assert result.answer != b"ok"


def test_client_without_certificate_is_refused(
    fed: Federation, ids: Identities, probe: Callable[[ssl.SSLContext], ProbeServer]
) -> None:
    """A client that presents no certificate fails the server's handshake (TLS 1.3 certificate_required)."""
    server = probe(server_context(ids.ss1, anchors(fed)))
    result = connect(server.port, bare_client())
    assert server.outcome() == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert result == ClientResult(None, "TLSV13_ALERT_CERTIFICATE_REQUIRED")


def test_tls11_is_refused(fed: Federation, ids: Identities, probe: Callable[[ssl.SSLContext], ProbeServer]) -> None:
    """A client limited to TLS 1.1 (with a certificate, security level lowered so it may try) is refused."""
    server = probe(server_context(ids.ss1, anchors(fed)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1 is deprecated, which is the point
        context = bare_client(max_version=ssl.TLSVersion.TLSv1_1)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    ids.ss2.load_into(context)
    result = connect(server.port, context)
    assert server.outcome() == "UNSUPPORTED_PROTOCOL"
    assert result.answer is None


def test_non_aead_tls12_cipher_is_refused(
    fed: Federation, ids: Identities, probe: Callable[[ssl.SSLContext], ProbeServer]
) -> None:
    """A TLS 1.2 client offering only CBC suites (ECDHE, but not AEAD) finds no shared cipher."""
    server = probe(server_context(ids.ss1, anchors(fed)))
    context = bare_client(max_version=ssl.TLSVersion.TLSv1_2)
    context.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA")
    ids.ss2.load_into(context)
    result = connect(server.port, context)
    assert server.outcome() == "NO_SHARED_CIPHER"
    assert result.answer is None


def test_an_intermediate_alone_is_not_a_trust_anchor(
    fed: Federation, ids: Identities, probe: Callable[[ssl.SSLContext], ProbeServer]
) -> None:
    """Intermediates in the verify store help path building but never end a chain (no partial-chain trust)."""
    server = probe(server_context(ids.ss1, [fed.pki.ca.issuing_cert]))
    connect(server.port, client_context(ids.ss2, anchors(fed)))
    assert server.outcome() == "CERTIFICATE_VERIFY_FAILED"


def test_peer_sending_only_its_leaf_is_accepted_with_configured_intermediates(
    fed: Federation, ids: Identities, tmp_path: Path, probe: Callable[[ssl.SSLContext], ProbeServer]
) -> None:
    """A peer whose chain file lacks the issuing CA still verifies when the intermediates come from global conf."""
    leaf_only = make_identity(tmp_path, fed.ss2_key, fed.ss2_cert, [])
    server = probe(server_context(ids.ss1, anchors(fed), [fed.pki.ca.issuing_cert]))
    result = connect(server.port, client_context(leaf_only, anchors(fed)))
    assert (server.outcome(), result.answer) == (der(fed.ss2_cert), b"ok")


def test_client_refuses_a_server_from_another_ca(
    fed: Federation, ids: Identities, probe: Callable[[ssl.SSLContext], ProbeServer]
) -> None:
    """The client verifies the server's chain too: a server certificate from an unapproved CA is refused."""
    server = probe(server_context(ids.foreign, [fed.other.ca.root_cert, fed.pki.ca.root_cert]))
    result = connect(server.port, client_context(ids.ss2, anchors(fed)))
    assert result == ClientResult(None, "CERTIFICATE_VERIFY_FAILED")


# Context policy and caching -------------------------------------------------------------------------------------------


def test_context_policy(fed: Federation, ids: Identities) -> None:
    """Both contexts: TLS 1.2+, peer cert required, no compression/renegotiation, TLS 1.2 suites ECDHE + AEAD only."""
    for context in (server_context(ids.ss1, anchors(fed)), client_context(ids.ss1, anchors(fed))):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.options & (ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION) == (
            ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
        )
        assert context.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN == 0
        tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert tls12 != []
        assert {(c["kea"], c["aead"]) for c in tls12} == {("kx-ecdhe", True)}
    assert client_context(ids.ss1, anchors(fed)).check_hostname is False


def test_contexts_are_reused_while_the_ca_set_is_unchanged(fed: Federation, ids: Identities) -> None:
    """A new globalconf version with the same CAs returns the same context objects; a CA change rebuilds them."""
    contexts = TlsContexts(ids.ss1)
    first = contexts.for_conf(fed.conf(1))
    again = contexts.for_conf(fed.conf(2))
    assert (again[0] is first[0], again[1] is first[1], contexts.builds) == (True, True, 1)
    extra = ApprovedCA("Other", der(fed.other.ca.root_cert), (der(fed.other.ca.issuing_cert),))
    changed = contexts.for_conf(fed.conf(3, cas=(fed.approved_ca(), extra)))
    assert (changed[0] is first[0], contexts.builds) == (False, 2)


def test_context_build_cost(fed: Federation, ids: Identities) -> None:
    """Building both contexts takes well under a second (prints the cost for the report); a cached lookup is free."""
    contexts = TlsContexts(ids.ss1)
    start = time.perf_counter()
    contexts.for_conf(fed.conf(1))
    build = time.perf_counter() - start
    conf2 = fed.conf(2)
    start = time.perf_counter()
    for _ in range(1000):
        contexts.for_conf(conf2)
    cached = (time.perf_counter() - start) / 1000
    print(f"TlsContexts build {build * 1e3:.1f} ms, cached lookup {cached * 1e6:.2f} µs")
    assert build < 1.0
    assert contexts.builds == 1


def test_no_approved_ca_is_a_clear_error(fed: Federation, ids: Identities) -> None:
    """A configuration without approved CAs cannot authenticate anyone; that is reported, not a silent failure."""
    conf: GlobalConf = fed.conf(cas=())
    with pytest.raises(Exception, match="lists no approved CA"):
        TlsContexts(ids.ss1).for_conf(conf)


# Identity -------------------------------------------------------------------------------------------------------------


def test_identity_chain_file_is_public_data_only(fed: Federation, ids: Identities) -> None:
    """The file written for ssl holds the leaf then the issuing CA, and no private key material."""
    data = ids.ss1.chain_file.read_bytes()
    assert x509.load_pem_x509_certificates(data) == [fed.pki.auth_cert, fed.pki.ca.issuing_cert]
    assert b"PRIVATE KEY" not in data
    assert ids.ss1.key_file.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")


def test_identity_with_wrong_pin_fails_to_load(fed: Federation, tmp_path: Path) -> None:
    """A wrong PIN is reported as WrongPin when the identity is built, before any context."""
    token = SoftwareToken.init(tmp_path / "token", PIN)
    token.import_key("auth", fed.ss2_key)
    token.store_certificate("auth", fed.ss2_cert)
    with pytest.raises(WrongPin):
        TlsIdentity.from_token(token, "auth", "not the pin", tmp_path / "state", [fed.pki.ca.issuing_cert])


def test_identity_refuses_a_plaintext_key_file(fed: Federation, tmp_path: Path) -> None:
    """A key file that is not encrypted (a tampered token) is refused before OpenSSL could load it."""
    from cryptography.hazmat.primitives import serialization

    token = SoftwareToken.init(tmp_path / "token", PIN)
    token.import_key("auth", fed.ss2_key)
    token.store_certificate("auth", fed.ss2_cert)
    plain = fed.ss2_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "token" / "auth.key.pem").write_bytes(plain)
    with pytest.raises(TokenError, match="not an encrypted"):
        TlsIdentity.from_token(token, "auth", PIN, tmp_path / "state")


def test_peer_certificate_requires_tls() -> None:
    """A transport without TLS yields SslAuthenticationFailed, not None."""

    class PlainTransport:
        def get_extra_info(self, name: str, default: object = None) -> object:
            return default

    with pytest.raises(SslAuthenticationFailed, match="not protected by TLS"):
        peer_certificate(PlainTransport())
