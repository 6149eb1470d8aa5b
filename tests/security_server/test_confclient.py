"""Global-configuration client against a real aiohttp server serving the publisher's handler.

Time is passed explicitly (``now=``) everywhere; nothing sleeps.  The server binds 127.0.0.1 on a port chosen by
the OS and is stopped by its fixture.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.anchor import AnchorSource, ConfigurationAnchor
from bridge.errors import (
    GlobalConfError,
    GlobalConfExpired,
    GlobalConfSignatureInvalid,
    GlobalConfUnavailable,
    UpstreamUnavailable,
)
from catalog.publisher import GlobalConfPublisher
from security_server.confclient import CACHE_FILE, GlobalConfClient
from tests.catalog.test_publisher import make_publisher
from tests.support.globalconf import NOW, make_signer

SIGNER = make_signer()
EXPIRY = dt.timedelta(seconds=600)


@dataclass
class Central:
    """A running central-server stand-in: the publisher's handler, with a switch to serve other bytes instead."""

    publisher: GlobalConfPublisher
    url: str
    override: bytes | None = None

    def anchor(self, *extra_urls: str) -> ConfigurationAnchor:
        sources = tuple(AnchorSource(u, (SIGNER.cert,)) for u in (*extra_urls, self.url))
        return ConfigurationAnchor("AZ", sources)


@pytest.fixture
async def central() -> AsyncIterator[Central]:
    publisher = make_publisher(signer=SIGNER)
    state = Central(publisher, "")

    async def globalconf(request: web.Request) -> web.StreamResponse:
        if state.override is not None:
            return web.Response(body=state.override, content_type="application/xml")
        return await publisher.handle(request)

    app = web.Application()
    app.router.add_get("/globalconf", globalconf)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        state.url = str(server.make_url("/globalconf"))
        yield state
    finally:
        await server.close()


def _flip(data: bytes, needle: bytes) -> bytes:
    pos = data.index(needle)
    return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :]


async def test_full_lifecycle_tamper_update_rollback_restart_expiry(central: Central, tmp_path: Path) -> None:
    """The whole life of a client: adopt, refuse tampering, update, refuse rollback, restart, expire.

    The client adopts v1 and caches it, keeps v1 on a tampered download, adopts v2, refuses a replayed v1,
    a new client object restores v2 from the cache, and after v2's expiry current() raises OutdatedGlobalConf.
    """
    client = GlobalConfClient(central.anchor(), tmp_path)
    with pytest.raises(GlobalConfUnavailable):
        client.current(NOW)

    # First download: adopted and cached byte for byte.
    v1 = await central.publisher.regenerate()
    conf = await client.refresh(now=NOW)
    assert conf.version == 1
    assert client.current(NOW).version == 1
    assert (tmp_path / CACHE_FILE).read_bytes() == v1.data
    assert client.status(NOW)["last_error"] is None
    assert client.status(NOW)["source_url"] == central.url

    # A tampered document is refused; v1 stays, the error is reported.
    central.override = _flip(v1.data, b"Bank")
    with pytest.raises(GlobalConfSignatureInvalid):
        await client.refresh(now=NOW)
    assert client.current(NOW).version == 1
    status = client.status(NOW)
    assert status["version"] == 1
    assert status["last_error"]["code"] == "Server.InvalidGlobalConfSignature"
    assert (tmp_path / CACHE_FILE).read_bytes() == v1.data

    # A fresh valid version is adopted.
    central.override = None
    v2 = await central.publisher.regenerate()
    assert (await client.refresh(now=NOW)).version == 2
    assert client.current(NOW).version == 2
    assert client.status(NOW)["last_error"] is None
    assert (tmp_path / CACHE_FILE).read_bytes() == v2.data

    # Rollback: the (validly signed) v1 replayed is refused.
    central.override = v1.data
    with pytest.raises(GlobalConfError) as info:
        await client.refresh(now=NOW)
    assert info.value.fault_code == "Server.GlobalConfError"
    assert info.value.message == f"refused version 1 from {central.url}: older than the held version 2"
    assert client.current(NOW).version == 2
    assert (tmp_path / CACHE_FILE).read_bytes() == v2.data

    # Restart: a new client object loads v2 from the cache.
    restarted = GlobalConfClient(central.anchor(), tmp_path)
    loaded = restarted.load_cached(now=NOW)
    assert loaded is not None
    assert loaded.version == 2
    assert restarted.current(NOW).version == 2
    assert restarted.status(NOW)["source_url"] is None

    # After the last good copy's expiry: OutdatedGlobalConf (and the central server is no help: it replays v1).
    expired_at = NOW + EXPIRY
    with pytest.raises(GlobalConfExpired) as expired:
        restarted.current(expired_at)
    assert expired.value.fault_code == "Server.OutdatedGlobalConf"
    assert restarted.status(expired_at)["expired"] is True


async def test_expired_cache_still_loads_for_status_but_current_refuses(central: Central, tmp_path: Path) -> None:
    """An expired cached copy is adopted (status shows it) while current() raises GlobalConfExpired."""
    await central.publisher.regenerate()
    await GlobalConfClient(central.anchor(), tmp_path).refresh(now=NOW)
    later = NOW + EXPIRY + dt.timedelta(hours=1)
    client = GlobalConfClient(central.anchor(), tmp_path)
    loaded = client.load_cached(now=later)
    assert loaded is not None
    assert loaded.version == 1
    assert client.status(later)["version"] == 1
    assert client.status(later)["expired"] is True
    with pytest.raises(GlobalConfExpired):
        client.current(later)


async def test_downloading_an_expired_document_is_refused(central: Central, tmp_path: Path) -> None:
    """refresh() does not adopt a document that is already expired at `now`."""
    await central.publisher.regenerate()
    client = GlobalConfClient(central.anchor(), tmp_path)
    with pytest.raises(GlobalConfExpired):
        await client.refresh(now=NOW + EXPIRY)
    with pytest.raises(GlobalConfUnavailable):
        client.current(NOW)


async def test_sources_are_tried_in_order(central: Central, tmp_path: Path) -> None:
    """An unreachable first source is skipped; the second one's document is adopted and its URL reported."""
    await central.publisher.regenerate()
    client = GlobalConfClient(central.anchor("http://127.0.0.1:1/globalconf"), tmp_path, timeout_s=5)
    assert (await client.refresh(now=NOW)).version == 1
    assert client.status(NOW)["source_url"] == central.url


async def test_not_yet_generated_is_upstream_unavailable(central: Central, tmp_path: Path) -> None:
    """A 503 from the central server is UpstreamUnavailable (Server.NetworkError) in status."""
    client = GlobalConfClient(central.anchor(), tmp_path)
    with pytest.raises(UpstreamUnavailable) as info:
        await client.refresh(now=NOW)
    assert info.value.message == f"{central.url} answered HTTP 503"
    assert client.status(NOW)["last_error"]["code"] == "Server.NetworkError"


async def test_oversized_download_is_refused(central: Central, tmp_path: Path) -> None:
    """A body over max_bytes is refused while reading."""
    central.override = b"<a>" + b" " * 5000 + b"</a>"
    client = GlobalConfClient(central.anchor(), tmp_path, max_bytes=1000)
    with pytest.raises(UpstreamUnavailable, match=r"over 1000|more than 1000"):
        await client.refresh(now=NOW)


def test_corrupted_cache_is_ignored_and_reported(tmp_path: Path) -> None:
    """A cache file that fails verification is not adopted; load_cached returns None and status names the error."""
    (tmp_path / CACHE_FILE).write_bytes(b"<not-signed/>")
    anchor = ConfigurationAnchor("AZ", (AnchorSource("http://127.0.0.1:1/globalconf", (SIGNER.cert,)),))
    client = GlobalConfClient(anchor, tmp_path)
    assert client.load_cached(now=NOW) is None
    assert client.status(NOW)["last_error"]["code"] == "Server.MalformedGlobalConf"
    with pytest.raises(GlobalConfUnavailable):
        client.current(NOW)


def test_missing_cache_is_not_an_error(tmp_path: Path) -> None:
    """No cache file at start-up: load_cached returns None and records nothing."""
    anchor = ConfigurationAnchor("AZ", (AnchorSource("http://127.0.0.1:1/globalconf", (SIGNER.cert,)),))
    client = GlobalConfClient(anchor, tmp_path)
    assert client.load_cached(now=NOW) is None
    assert client.status(NOW)["last_error"] is None
