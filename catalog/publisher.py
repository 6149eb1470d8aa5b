"""The central server's global-configuration publisher: build, sign and serve ``GET /globalconf``.

The publisher owns no catalog data.  The central server app hands it an async ``content_source`` that returns the
current catalog part (:class:`CatalogContent`) and an async ``next_version`` backed by the store's persisted
counter, so versions keep increasing across restarts.  Static parts (approved CAs, TSAs, parameters) are given at
construction.  Every ``regenerate_interval_s`` (and as soon as :meth:`GlobalConfPublisher.notify_changed` is
called, e.g. after an approval) a new version is built and signed, and the published bytes are swapped in one
assignment; a failed regeneration keeps the previous document and is logged.

Wiring in an aiohttp app::

    publisher = GlobalConfPublisher(...)
    app.cleanup_ctx.append(publisher.cleanup_ctx)
    app.router.add_get("/globalconf", publisher.handle)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import structlog
from aiohttp import web
from cryptography import x509

from bridge.aio import running_task
from bridge.errors import GlobalConfUnavailable, KorpuError, render_json
from bridge.globalconf import (
    AccessRight,
    ApprovedCA,
    GlobalConf,
    GlobalConfParams,
    GlobalGroup,
    MemberInfo,
    SecurityServerInfo,
    ServiceInfo,
    TimestampingService,
)
from bridge.globalconf_xml import SigningKey, sign

__all__ = ["VERSION_HEADER", "CatalogContent", "GlobalConfPublisher", "PublishedConf"]

log = structlog.get_logger(__name__)

#: Response header carrying the published version (also in the ETag).
VERSION_HEADER = "X-Korpu-Globalconf-Version"


class CatalogPart(Protocol):
    """What ``content_source`` returns: the catalog part of global configuration.

    Any object with these five attributes will do (the store's own ``catalog.store.CatalogContent`` does);
    :class:`CatalogContent` is a ready-made implementation.
    """

    @property
    def members(self) -> tuple[MemberInfo, ...]: ...
    @property
    def servers(self) -> tuple[SecurityServerInfo, ...]: ...
    @property
    def groups(self) -> tuple[GlobalGroup, ...]: ...
    @property
    def services(self) -> tuple[ServiceInfo, ...]: ...
    @property
    def access_rights(self) -> tuple[AccessRight, ...]: ...


class CatalogContent(NamedTuple):
    """The catalog part of global configuration, as a plain value (implements :class:`CatalogPart`)."""

    members: tuple[MemberInfo, ...] = ()
    servers: tuple[SecurityServerInfo, ...] = ()
    groups: tuple[GlobalGroup, ...] = ()
    services: tuple[ServiceInfo, ...] = ()
    access_rights: tuple[AccessRight, ...] = ()


@dataclass(frozen=True)
class PublishedConf:
    """One published document: the configuration, its signed bytes and the ETag derived from them."""

    conf: GlobalConf
    data: bytes
    etag: str

    @property
    def version(self) -> int:
        """The document's version."""
        return self.conf.version


class GlobalConfPublisher:
    """Builds, signs and serves versions of global configuration.

    ``on_published`` is called after each successful swap (metrics, event bus, tests waiting for a version);
    ``clock`` (default: the current UTC time) exists for tests; ``expiry_s`` is how long a published version may
    be relied on after it is generated, so it must comfortably exceed ``regenerate_interval_s`` plus the security
    servers' refresh interval.
    """

    def __init__(
        self,
        *,
        instance: str,
        central_server_url: str,
        signing_key: SigningKey,
        signing_cert: x509.Certificate,
        content_source: Callable[[], Awaitable[CatalogPart]],
        next_version: Callable[[], Awaitable[int]],
        cas: tuple[ApprovedCA, ...] = (),
        tsas: tuple[TimestampingService, ...] = (),
        params: GlobalConfParams | None = None,
        expiry_s: float = 600,
        regenerate_interval_s: float = 60,
        clock: Callable[[], dt.datetime] | None = None,
        on_published: Callable[[PublishedConf], None] | None = None,
    ) -> None:
        if expiry_s <= 0 or regenerate_interval_s <= 0:
            raise ValueError("expiry_s and regenerate_interval_s must be positive")
        self._instance = instance
        self._central_server_url = central_server_url
        self._key = signing_key
        self._cert = signing_cert
        self._content_source = content_source
        self._next_version = next_version
        self._cas = cas
        self._tsas = tsas
        self._params = params or GlobalConfParams()
        self._expiry = dt.timedelta(seconds=expiry_s)
        self._interval = regenerate_interval_s
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._on_published = on_published
        self._published: PublishedConf | None = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self.last_error: str | None = None

    @property
    def published(self) -> PublishedConf | None:
        """The document currently served, or ``None`` before the first successful regeneration."""
        return self._published

    def notify_changed(self) -> None:
        """Ask the background loop to regenerate now (call after approvals and other catalog changes)."""
        self._changed.set()

    async def regenerate(self) -> PublishedConf:
        """Build, sign and publish a new version; return it.

        On failure the previously published document stays in place, the error is logged and recorded in
        :attr:`last_error`, and the exception propagates to the caller.
        """
        # One regeneration at a time: two concurrent ones could finish out of order and publish a lower version
        # after a higher one, which security servers would (rightly) refuse as a rollback.
        async with self._lock:
            try:
                content = await self._content_source()
                version = await self._next_version()
                now = self._clock()
                conf = GlobalConf(
                    instance=self._instance,
                    version=version,
                    generated_at=now,
                    expires_at=now + self._expiry,
                    central_server_url=self._central_server_url,
                    params=self._params,
                    members=tuple(content.members),
                    servers=tuple(content.servers),
                    cas=self._cas,
                    tsas=self._tsas,
                    groups=tuple(content.groups),
                    services=tuple(content.services),
                    access_rights=tuple(content.access_rights),
                )
                previous = self._published
                if previous is not None and version <= previous.version:
                    raise RuntimeError(f"next_version returned {version}, not above published {previous.version}")
                # Signing takes milliseconds, but a large catalog's serialisation is CPU work; keep the loop free.
                data = await asyncio.to_thread(sign, conf, self._key, self._cert)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("globalconf.regenerate_failed", kept_version=self._version_or_none())
                raise
            published = PublishedConf(conf, data, f'"{version}-{hashlib.sha256(data).hexdigest()[:32]}"')
            self._published = published  # the atomic swap
            self.last_error = None
            log.info("globalconf.published", version=version, size=len(data), expires_at=conf.expires_at.isoformat())
            if self._on_published is not None:
                self._on_published(published)
            return published

    def _version_or_none(self) -> int | None:
        return None if self._published is None else self._published.version

    async def run(self) -> None:
        """Regenerate now, then every ``regenerate_interval_s`` or on :meth:`notify_changed`, until cancelled."""
        while True:
            self._changed.clear()
            with contextlib.suppress(Exception):  # already logged by regenerate(); try again next round
                await self.regenerate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=self._interval)

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """Aiohttp ``cleanup_ctx`` entry: run the loop while the app runs, cancel it on shutdown.

        The first version is generated before the application starts serving, so no client ever sees the 503 of
        a server that is up but has nothing to publish yet (if that first attempt fails, the loop keeps trying).
        """
        with contextlib.suppress(Exception):  # logged by regenerate(); the loop retries
            await self.regenerate()
        async with running_task(self.run(), "globalconf-publisher"):
            yield

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /globalconf``: the signed document (``application/xml``), or 503 before the first one exists."""
        published = self._published
        if published is None:
            return _error_response(GlobalConfUnavailable("global configuration has not been generated yet"), 503)
        headers = {
            "ETag": published.etag,
            VERSION_HEADER: str(published.version),
            # Security servers poll; intermediaries must revalidate instead of serving a stale version.
            "Cache-Control": "no-cache",
        }
        if published.etag in _etags(request.headers.get("If-None-Match", "")):
            return web.Response(status=304, headers=headers)
        return web.Response(body=published.data, content_type="application/xml", headers=headers)


def _etags(header: str) -> list[str]:
    return [part.strip().removeprefix("W/") for part in header.split(",") if part.strip()]


def _error_response(error: KorpuError, status: int) -> web.Response:
    return web.Response(
        body=render_json(error),
        status=status,
        content_type="application/json",
        headers={"X-Road-Error": error.fault_code},
    )
