"""The exchange's paths beyond the happy case: the hot path's cost, routing and failover, and 100 MB bodies."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import resource
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

import security_server.exchange as exchange
from bridge.globalconf import GlobalConf
from bridge.identifiers import SecurityServerId
from bridge.signature import MessageSigner
from security_server.runtime import ServerRuntime
from security_server.sandbox import Federation, free_port
from tests.streaming import CHUNK
from tests.support.relay import Relay

pytestmark = [pytest.mark.functional, pytest.mark.asyncio(loop_scope="module")]

LOANS = "AZ/COM/9900001111/loans"
SERVICE = "/r1/AZ/GOV/1400057421/population"


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        yield session


def url(fed: Federation, path: str) -> str:
    return fed.server("ss-a").urls["client_http"] + path


async def hello(fed: Federation, http: aiohttp.ClientSession) -> aiohttp.ClientResponse:
    async with http.get(url(fed, f"{SERVICE}/hello/hello"), headers={"X-Road-Client": LOANS}) as resp:
        await resp.read()
        return resp


async def test_hot_path_calls_no_central_service_and_signs_once_per_side(
    federation: Federation, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per exchange: no request to the central server (conf, OCSP, TSA); one signature and one verification per side."""
    assert (await hello(federation, http)).status == 200  # warm: OCSP staples fetched, connections pooled
    calls: Counter[str] = Counter()
    real_sign = MessageSigner.sign

    def counting_sign(self: MessageSigner, *args: Any, **kwargs: Any) -> bytes:
        calls["sign"] += 1
        return real_sign(self, *args, **kwargs)

    def counting(name: str, real: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(MessageSigner, "sign", counting_sign)
    monkeypatch.setattr(exchange, "verify_signature_details", counting("verify", exchange.verify_signature_details))
    before = Counter(federation.central.requests_served)
    exchanges = 20
    for _ in range(exchanges):
        assert (await hello(federation, http)).status == 200
    assert Counter(federation.central.requests_served) - before == Counter()
    # Each exchange: the consumer signs the request, the provider verifies it, signs the response, and the
    # consumer verifies that.
    assert calls == Counter({"sign": 2 * exchanges, "verify": 2 * exchanges})


def with_decoy(monkeypatch: pytest.MonkeyPatch, runtime: ServerRuntime, provider: str, address: str) -> str:
    """Make ``runtime`` see a second server of ``provider``'s member at ``address``, listed before the real one."""
    real = runtime.confclient.current

    def patched(now: object = None) -> GlobalConf:
        conf = real()
        original = next(s for s in conf.servers if s.id.server_code == provider)
        decoy = dataclasses.replace(
            original, id=SecurityServerId(original.id.owner, f"{provider}-decoy"), address=address
        )
        return dataclasses.replace(conf, servers=(decoy, *conf.servers))

    monkeypatch.setattr(runtime.confclient, "current", patched)
    return address


async def test_failover_to_the_next_server_when_one_is_down(
    federation: Federation, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a provider server that refuses connections, the exchange goes to the next one, which is then preferred."""
    runtime = federation.server("ss-a").runtime
    dead = with_decoy(monkeypatch, runtime, "ss-b", f"127.0.0.1:{free_port()}")
    assert (await hello(federation, http)).status == 200
    assert runtime.router.snapshot()[dead]["failures"] == 1
    assert (await hello(federation, http)).status == 200
    assert runtime.router.snapshot()[dead]["failures"] == 1  # the failing server was not tried again


async def test_no_second_delivery_after_the_request_was_sent(
    federation: Federation, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If a provider server fails after receiving the request, the exchange fails; it is never sent twice.

    The first candidate is a relay that delivers the request to ss-b and then drops the connection; the second
    candidate is ss-b itself.  The service must have been called exactly once.
    """
    ss_a, ss_b = federation.server("ss-a").runtime, federation.server("ss-b").runtime
    provided = next(p for p in ss_b.services.values() if p.id.service_code == "hello")
    calls: list[str] = []
    real_call = provided.backend.call

    async def counting_call(*args: Any, **kwargs: Any) -> Any:
        calls.append("hello")
        return await real_call(*args, **kwargs)

    monkeypatch.setattr(provided.backend, "call", counting_call)
    relay = Relay(ss_b.server_ssl(), ss_a.client_ssl(), ss_b.config.address, drop_response=True)
    try:
        with_decoy(monkeypatch, ss_a, "ss-b", await relay.start())
        async with http.get(url(federation, f"{SERVICE}/hello/hello"), headers={"X-Road-Client": LOANS}) as resp:
            body = await resp.read()
            assert resp.status == 500, body
            assert json.loads(body)["type"] == "Server.ClientProxy.NetworkError"
        assert len(relay.captured) == 1
        assert calls == ["hello"]
    finally:
        await relay.stop()


async def test_100_mb_upload_passes_without_holding_it(federation: Federation, http: aiohttp.ClientSession) -> None:
    """A 100 MB REST body goes through both servers intact; bodies are spooled to disk, not held in memory."""
    size = 100 * len(CHUNK)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield CHUNK

    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    headers = {"X-Road-Client": LOANS, "Content-Type": "application/octet-stream", "Content-Length": str(size)}
    async with http.post(url(federation, f"{SERVICE}/stream/upload"), data=body(), headers=headers) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
    peak_growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert answer == {"size": size, "sha512": hashlib.sha512(CHUNK * 100).hexdigest()}
    # Client, both security servers and the backend share this process: all of them together stay well under
    # the body's size (a copy in memory anywhere would add at least 100 MiB).
    assert peak_growth_mib < 60


async def test_100_mb_download_passes(federation: Federation, http: aiohttp.ClientSession) -> None:
    """A 100 MB response streams back through both servers and arrives intact."""
    digest, size = hashlib.sha512(), 0
    async with http.get(
        url(federation, f"{SERVICE}/stream/download?mib=100"), headers={"X-Road-Client": LOANS}
    ) as resp:
        assert resp.status == 200
        async for chunk in resp.content.iter_chunked(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    assert size == 100 * len(CHUNK)
    assert digest.hexdigest() == hashlib.sha512(CHUNK * 100).hexdigest()
