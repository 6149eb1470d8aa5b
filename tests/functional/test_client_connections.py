"""How information systems may connect to the client proxy: per client, HTTP, HTTPS, or HTTPS with a certificate."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from security_server.clientproxy import client_proxy_app
from security_server.config import ClientConfig
from security_server.runtime import ServerRuntime
from security_server.sandbox import Federation

pytestmark = [pytest.mark.functional, pytest.mark.asyncio(loop_scope="module")]

LOANS = "AZ/COM/9900001111/loans"
HELLO = "/r1/AZ/GOV/1400057421/population/hello/hello"


def is_identity(tmp_path: Path, name: str) -> tuple[Path, Path, bytes]:
    """A throwaway TLS client certificate for an information system: (cert file, key file, cert DER)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file, cert.public_bytes(serialization.Encoding.DER)


StartHttps = Callable[[], Awaitable[str]]


@pytest_asyncio.fixture(loop_scope="module")
async def https_proxy(federation: Federation) -> AsyncIterator[tuple[ServerRuntime, StartHttps]]:
    """ss-a's runtime and a function that starts its client proxy on an HTTPS listener (after config changes)."""
    runtime = federation.server("ss-a").runtime
    runners: list[web.AppRunner] = []

    async def start() -> str:
        runner = web.AppRunner(client_proxy_app(runtime), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=runtime.internal_tls_context())
        await site.start()
        runners.append(runner)
        return f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    yield runtime, start
    for runner in runners:
        await runner.cleanup()


def with_client(monkeypatch: pytest.MonkeyPatch, runtime: ServerRuntime, settings: ClientConfig) -> None:
    clients = tuple(settings if c.code == settings.code else c for c in runtime.config.clients)
    monkeypatch.setattr(runtime, "config", dataclasses.replace(runtime.config, clients=clients))
    monkeypatch.setattr(runtime, "_is_certs", {})


def trust_proxy(runtime: ServerRuntime) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(runtime.state_dir / "tls" / "internal.pem"))
    context.check_hostname = False  # the proxy's self-signed certificate names 127.0.0.1 as an IP SAN
    return context


async def get(url: str, ssl_context: ssl.SSLContext | bool) -> tuple[int, str | None]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(url + HELLO, headers={"X-Road-Client": LOANS}, ssl=ssl_context) as resp,
    ):
        await resp.read()
        return resp.status, resp.headers.get("X-Road-Error")


async def test_https_client_must_not_use_plain_http(
    federation: Federation, https_proxy: tuple[ServerRuntime, StartHttps], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client set to https is refused over plain HTTP and served over HTTPS."""
    runtime, start = https_proxy
    with_client(monkeypatch, runtime, ClientConfig("loans", connection="https"))
    url = await start()
    assert await get(federation.server("ss-a").urls["client_http"], False) == (403, "Client.InvalidClient")
    assert await get(url, trust_proxy(runtime)) == (200, None)


async def test_https_cert_client_must_present_its_certificate(
    federation: Federation,
    https_proxy: tuple[ServerRuntime, StartHttps],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A client set to https-cert is served only when its information system presents the registered certificate."""
    runtime, start = https_proxy
    cert_file, key_file, _der = is_identity(runtime.state_dir, "loans-is")
    other_cert, other_key, _ = is_identity(tmp_path, "someone-else")
    with_client(monkeypatch, runtime, ClientConfig("loans", connection="https-cert", is_certificates=(cert_file.name,)))
    url = await start()
    anonymous = trust_proxy(runtime)
    assert await get(url, anonymous) == (403, "Client.InvalidClient")
    registered = trust_proxy(runtime)
    registered.load_cert_chain(cert_file, key_file)
    assert await get(url, registered) == (200, None)
    stranger = trust_proxy(runtime)
    stranger.load_cert_chain(other_cert, other_key)
    with pytest.raises(aiohttp.ClientError):  # an untrusted certificate is refused in the TLS handshake
        await get(url, stranger)
