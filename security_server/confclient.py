"""The security server's global-configuration client: download, verify, cache and serve the current snapshot.

* :meth:`GlobalConfClient.refresh` downloads from the anchor's sources in order, verifies the document with
  :func:`bridge.globalconf_xml.verify_and_parse`, refuses versions lower than the one held (rollback protection),
  swaps the snapshot in a single assignment and writes the signed bytes to ``cache_dir/globalconf.xml``
  atomically.  On failure the last good copy stays and the error is recorded for :meth:`status`.
* :meth:`GlobalConfClient.load_cached` verifies the cached file at start-up with the same function, so a node can
  work (until expiry) while the central server is unreachable.
* :meth:`GlobalConfClient.current` is what the message path calls per message: an attribute read and a time
  comparison, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from bridge.aio import running_task
from bridge.anchor import ConfigurationAnchor
from bridge.errors import (
    GlobalConfError,
    GlobalConfExpired,
    GlobalConfUnavailable,
    KorpuError,
    UpstreamUnavailable,
)
from bridge.fsutil import write_atomic
from bridge.globalconf import GlobalConf
from bridge.globalconf_xml import MAX_GLOBALCONF_BYTES, verify_and_parse

__all__ = ["CACHE_FILE", "GlobalConfClient"]

log = structlog.get_logger(__name__)

#: Name of the cached signed document inside ``cache_dir``.
CACHE_FILE = "globalconf.xml"


@dataclass(frozen=True)
class _Snapshot:
    conf: GlobalConf
    data: bytes
    source_url: str | None  # None when loaded from the cache


class GlobalConfClient:
    """Keeps a verified global configuration for one security server.

    ``timeout_s`` bounds each download as a whole; ``max_bytes`` caps the body (checked while reading, so a
    server that lies about or omits Content-Length cannot make the client buffer more).  ``clock`` is for tests.
    """

    def __init__(
        self,
        anchor: ConfigurationAnchor,
        cache_dir: Path,
        *,
        refresh_interval_s: float = 60,
        timeout_s: float = 30,
        max_bytes: int = MAX_GLOBALCONF_BYTES,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        if refresh_interval_s <= 0 or timeout_s <= 0:
            raise ValueError("refresh_interval_s and timeout_s must be positive")
        self._anchor = anchor
        self._cache_path = Path(cache_dir) / CACHE_FILE
        self._interval = refresh_interval_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_bytes = max_bytes
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._snapshot: _Snapshot | None = None
        self._lock = asyncio.Lock()
        self._last_success: dt.datetime | None = None
        self._last_error: KorpuError | None = None
        self._last_error_at: dt.datetime | None = None

    @property
    def cache_path(self) -> Path:
        """Where the last good signed document is cached."""
        return self._cache_path

    # The hot path ------------------------------------------------------------------------------------------------

    def current(self, now: dt.datetime | None = None) -> GlobalConf:
        """The newest verified configuration, or raise.

        Raises :class:`GlobalConfUnavailable` if none was ever obtained and :class:`GlobalConfExpired`
        (``Server.OutdatedGlobalConf``) if the newest one has expired.  O(1): no I/O, no parsing.
        """
        snapshot = self._snapshot  # read once: refresh() may swap it concurrently
        if snapshot is None:
            raise GlobalConfUnavailable("no valid global configuration has been obtained yet")
        conf = snapshot.conf
        if conf.is_expired(now or self._clock()):
            raise GlobalConfExpired(f"global configuration version {conf.version} expired at {_iso(conf.expires_at)}")
        return conf

    # Loading and refreshing --------------------------------------------------------------------------------------

    def load_cached(self, now: dt.datetime | None = None) -> GlobalConf | None:
        """Verify and adopt the cached document, if there is one; return it (expired copies are adopted too).

        Synchronous because it runs once at start-up, before the event loop serves anything.  Returns ``None``
        when there is no cache or it fails verification; a bad cache is recorded as the last error and logged,
        not raised, because the next refresh replaces it and start-up should not fail on it.
        """
        now = now or self._clock()
        try:
            data = _read_capped(self._cache_path, self._max_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._record_error(GlobalConfUnavailable(f"cannot read cached global configuration: {exc.strerror}"), now)
            return None
        try:
            # Expired copies load (status shows what the node last had); current() refuses them.
            conf = verify_and_parse(data, anchor=self._anchor, now=now, allow_expired=True)
        except GlobalConfError as exc:
            self._record_error(exc, now)
            return None
        held = self._snapshot
        if held is None or conf.version > held.conf.version:
            self._snapshot = _Snapshot(conf, data, None)
        log.info("globalconf.cache_loaded", version=conf.version, expired=conf.is_expired(now))
        return conf

    async def refresh(self, now: dt.datetime | None = None) -> GlobalConf:
        """Download, verify and adopt a fresh configuration from the anchor's sources, trying them in order.

        Returns the configuration now held (the same one when the server still serves the current version).
        Raises the error of the last source tried when none succeeds; the snapshot held before stays in place.
        """
        now = now or self._clock()
        async with self._lock:
            error: KorpuError = UpstreamUnavailable("the anchor lists no configuration source")
            for source in self._anchor.sources:
                url = source.download_url
                try:
                    return await self._refresh_from(url, now)
                except KorpuError as exc:
                    error = exc
                except Exception as exc:
                    error = GlobalConfUnavailable(f"unexpected error refreshing from {url}: {type(exc).__name__}")
                log.warning("globalconf.refresh_failed", source=url, code=error.fault_code, error=error.message)
            self._record_error(error, now)
            raise error

    async def _refresh_from(self, url: str, now: dt.datetime) -> GlobalConf:
        data = await self._download(url)
        conf = await asyncio.to_thread(verify_and_parse, data, anchor=self._anchor, now=now)
        held = self._snapshot
        if held is not None:
            if conf.version < held.conf.version:
                # A lower version can be an old document replayed by someone in the path; it verifies, but
                # adopting it would undo revocations and removals published since.
                raise GlobalConfError(
                    f"refused version {conf.version} from {url}: older than the held version {held.conf.version}"
                )
            if conf.version == held.conf.version:
                self._record_success(now)
                return held.conf
        # Cache first, then swap: if the write fails the node keeps the old snapshot and the old cache, which
        # agree; a snapshot newer than the cache would be lost on restart without anyone noticing.
        try:
            await asyncio.to_thread(write_atomic, self._cache_path, data)
        except OSError as exc:
            raise GlobalConfUnavailable(f"cannot write global configuration cache: {exc.strerror}") from None
        self._snapshot = _Snapshot(conf, data, url)  # the atomic swap
        self._record_success(now)
        log.info("globalconf.updated", version=conf.version, source=url, expires_at=_iso(conf.expires_at))
        return conf

    async def _download(self, url: str) -> bytes:
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.get(url, allow_redirects=False) as resp,
            ):
                if resp.status != 200:
                    raise UpstreamUnavailable(f"{url} answered HTTP {resp.status}")
                if resp.content_length is not None and resp.content_length > self._max_bytes:
                    raise UpstreamUnavailable(f"{url} sent {resp.content_length} bytes, over {self._max_bytes}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > self._max_bytes:
                        raise UpstreamUnavailable(f"{url} sent more than {self._max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(
                f"cannot download global configuration from {url}: {type(exc).__name__}"
            ) from None

    def _record_success(self, now: dt.datetime) -> None:
        self._last_success = now
        self._last_error = None
        self._last_error_at = None

    def _record_error(self, error: KorpuError, now: dt.datetime) -> None:
        self._last_error = error
        self._last_error_at = now
        log.warning("globalconf.error", code=error.fault_code, error=error.message)

    # Background loop and status ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Refresh now and then every ``refresh_interval_s`` until cancelled; errors are recorded, not raised."""
        while True:
            with contextlib.suppress(KorpuError):
                await self.refresh()
            await asyncio.sleep(self._interval)

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """Aiohttp ``cleanup_ctx`` entry: load the cache, run the loop while the app runs, cancel on shutdown."""
        self.load_cached()
        async with running_task(self.run(), "globalconf-client"):
            yield

    def status(self, now: dt.datetime | None = None) -> dict[str, Any]:
        """A JSON-ready summary for the admin API and health checks."""
        now = now or self._clock()
        snapshot = self._snapshot
        conf = None if snapshot is None else snapshot.conf
        error = self._last_error
        return {
            "instance": self._anchor.instance,
            "anchor_sha256": self._anchor.sha256,
            "version": None if conf is None else conf.version,
            "generated_at": None if conf is None else _iso(conf.generated_at),
            "expires_at": None if conf is None else _iso(conf.expires_at),
            "expired": None if conf is None else conf.is_expired(now),
            "source_url": None if snapshot is None else snapshot.source_url,
            "last_success": None if self._last_success is None else _iso(self._last_success),
            "last_error": None
            if error is None
            else {
                "code": error.fault_code,
                "message": error.message,
                "at": None if self._last_error_at is None else _iso(self._last_error_at),
            },
        }


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _read_capped(path: Path, max_bytes: int) -> bytes:
    with open(path, "rb") as f:
        # One byte over the cap is enough for verify_and_parse to refuse an oversized file.
        return f.read(max_bytes + 1)
