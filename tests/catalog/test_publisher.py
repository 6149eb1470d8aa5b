"""Global-configuration publisher: building and signing versions, keeping the last good one, serving it."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bridge.globalconf import GlobalConfParams
from bridge.globalconf_xml import verify_and_parse
from catalog.publisher import VERSION_HEADER, CatalogContent, GlobalConfPublisher, PublishedConf
from tests.support.globalconf import NOW, Signer, make_anchor, make_signer, sample_conf

SIGNER = make_signer()


def _content() -> CatalogContent:
    conf = sample_conf()
    return CatalogContent(conf.members, conf.servers, conf.groups, conf.services, conf.access_rights)


def make_publisher(
    *,
    signer: Signer = SIGNER,
    content: Callable[[], CatalogContent] = _content,
    clock: Callable[[], dt.datetime] = lambda: NOW,
    on_published: Callable[[PublishedConf], None] | None = None,
    regenerate_interval_s: float = 3600,
) -> GlobalConfPublisher:
    """A publisher over a static catalog with an in-memory version counter starting at 1."""
    counter = itertools.count(1)
    conf = sample_conf()

    async def content_source() -> CatalogContent:
        return content()

    async def next_version() -> int:
        return next(counter)

    return GlobalConfPublisher(
        instance="AZ",
        central_server_url="https://central.example.az",
        signing_key=signer.key,
        signing_cert=signer.cert,
        content_source=content_source,
        next_version=next_version,
        cas=conf.cas,
        tsas=conf.tsas,
        params=conf.params,
        expiry_s=600,
        regenerate_interval_s=regenerate_interval_s,
        clock=clock,
        on_published=on_published,
    )


async def test_regenerate_publishes_a_signed_conf_that_verifies() -> None:
    """regenerate() signs the catalog, statics and counter version; the bytes verify against the anchor."""
    publisher = make_publisher()
    published = await publisher.regenerate()
    conf = verify_and_parse(published.data, anchor=make_anchor(SIGNER), now=NOW)
    assert conf == sample_conf(1)
    assert conf.expires_at - conf.generated_at == dt.timedelta(seconds=600)
    assert publisher.published == published
    assert (await publisher.regenerate()).version == 2


async def test_failed_regeneration_keeps_the_previous_document() -> None:
    """If the content source fails, the previous bytes stay published and the error is recorded and raised."""
    fail = False

    def content() -> CatalogContent:
        if fail:
            raise RuntimeError("store is down")
        return _content()

    publisher = make_publisher(content=content)
    first = await publisher.regenerate()
    fail = True
    with pytest.raises(RuntimeError, match="store is down"):
        await publisher.regenerate()
    assert publisher.published == first
    assert publisher.last_error == "RuntimeError: store is down"


async def test_run_regenerates_at_start_and_on_notify_changed() -> None:
    """The background loop publishes immediately and again as soon as notify_changed() is called."""
    versions: asyncio.Queue[int] = asyncio.Queue()
    publisher = make_publisher(on_published=lambda p: versions.put_nowait(p.version))
    task = asyncio.create_task(publisher.run())
    try:
        assert await asyncio.wait_for(versions.get(), timeout=10) == 1
        publisher.notify_changed()
        assert await asyncio.wait_for(versions.get(), timeout=10) == 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.fixture
async def served() -> AsyncIterator[tuple[GlobalConfPublisher, TestClient[web.Request, web.Application]]]:
    """A publisher's handler on a real aiohttp server bound to 127.0.0.1, port chosen by the OS."""
    publisher = make_publisher()
    app = web.Application()
    app.router.add_get("/globalconf", publisher.handle)
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        yield publisher, client


async def test_handle_answers_503_json_before_the_first_version(served: tuple[GlobalConfPublisher, TestClient]) -> None:  # type: ignore[type-arg]
    """Before anything is generated GET /globalconf is 503 with X-Road's JSON error body."""
    _, client = served
    resp = await client.get("/globalconf")
    assert resp.status == 503
    assert resp.headers["X-Road-Error"] == "Server.GlobalConfUnavailable"
    assert await resp.json() == {
        "type": "Server.GlobalConfUnavailable",
        "message": "global configuration has not been generated yet",
        "detail": None,
    }


async def test_handle_serves_the_signed_bytes_with_version_and_etag(
    served: tuple[GlobalConfPublisher, TestClient],  # type: ignore[type-arg]
) -> None:
    """GET /globalconf returns exactly the published bytes as application/xml, with version header and ETag."""
    publisher, client = served
    published = await publisher.regenerate()
    resp = await client.get("/globalconf")
    assert resp.status == 200
    assert resp.content_type == "application/xml"
    assert await resp.read() == published.data
    assert resp.headers[VERSION_HEADER] == "1"
    assert resp.headers["ETag"] == published.etag
    cached = await client.get("/globalconf", headers={"If-None-Match": published.etag})
    assert cached.status == 304


def test_publisher_refuses_non_positive_intervals() -> None:
    """A zero expiry would publish documents that are expired on arrival; the constructor refuses it."""
    with pytest.raises(ValueError, match="must be positive"):
        GlobalConfPublisher(
            instance="AZ",
            central_server_url="https://c",
            signing_key=SIGNER.key,
            signing_cert=SIGNER.cert,
            content_source=lambda: asyncio.sleep(0, CatalogContent()),
            next_version=lambda: asyncio.sleep(0, 1),
            params=GlobalConfParams(),
            expiry_s=0,
        )
