"""Revocation reaches the exchange: a revoked certificate stops traffic with its specific fault.

Revocation is permanent, so this module builds its own federation instead of sharing the exchange tests' one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from security_server.sandbox import Federation, start_federation
from tests.functional.conftest import agencies

pytestmark = [pytest.mark.functional, pytest.mark.asyncio(loop_scope="module")]

LOANS = "AZ/COM/9900001111/loans"
HELLO = "/r1/AZ/GOV/1400057421/population/hello/hello"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def federation(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Federation]:
    state: Path = tmp_path_factory.mktemp("revocation")
    fed = await start_federation(state, agencies("http://127.0.0.1:9"))
    try:
        yield fed
    finally:
        await fed.stop()


async def call(fed: Federation) -> tuple[int, str | None]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(fed.server("ss-a").urls["client_http"] + HELLO, headers={"X-Road-Client": LOANS}) as resp,
    ):
        await resp.read()
        return resp.status, resp.headers.get("X-Road-Error")


async def test_revoked_signing_certificate_stops_the_consumer(federation: Federation) -> None:
    """After the CA revokes the bank's signing certificate, its server refuses to send with CertificateRevoked."""
    assert await call(federation) == (200, None)
    ss_a = federation.server("ss-a").runtime
    sign_cert = ss_a.token.certificate("sign")
    assert sign_cert is not None
    await federation.api("POST", f"/api/v1/certificates/{sign_cert.serial_number}/revoke", {"reason": "keyCompromise"})
    # The server's own OCSP refresh (normally ahead of expiry, here forced) learns the CA's verdict.
    ocsp = ss_a.credentials().ocsp
    assert "sign" not in await ocsp.refresh(force=True)
    assert ocsp.status()["sign"]["last_error"]["code"] == "Server.CertificateRevoked"
    assert await call(federation) == (500, "Server.ClientProxy.CertificateRevoked")
