"""``http-upstream``: forward REST requests to the provider information system's URL, as the ``url`` backend does.

Options (``services[].options`` in server.yaml):

``url``
    Base URL of the provider information system (``http://`` or ``https://``); the request's path is appended.
``timeout``
    Seconds to wait for its answer (default 30).

The adapter is built on :class:`security_server.backends.HttpBackend`, the security server's own URL backend, so
both send exactly the same request: the information system's method, path, query, body and headers (hop-by-hop
headers dropped) plus the X-Road headers of pr-rest §4.3 (``X-Road-Client``, ``X-Road-Service``, ``X-Road-Id``,
``X-Road-UserId``, ``X-Road-Issue``, ``X-Road-Represented-Party``, ``X-Road-Request-Hash``), and map failures to the
same ``ServiceFailed`` fault.  Wrapping it rather than extracting a helper keeps one implementation of the wire
behaviour; the only adaptation is converting between :class:`~adapters.base.AdapterRequest` (bytes) and
:class:`~security_server.backends.BackendRequest` (spools).  Because adapters receive whole bodies in memory,
``services[].url`` remains the right choice for very large (streamed) bodies; the adapter is for places that can
only name an adapter (compositions, sandboxes, packaged registries).

:class:`UpstreamAdapter` is shared with ``soap-upstream`` (:mod:`adapters.generic.soap`).
"""

from __future__ import annotations

from collections.abc import Mapping

# Adapters run at the I/O edge of the security server, like its proxies: this is where aiohttp belongs.
import aiohttp

from adapters.base import AdapterContext, AdapterRequest, AdapterResponse, register
from bridge.errors import ConfigError
from bridge.message import Protocol
from bridge.spool import DEFAULT_MEMORY_LIMIT, Spool
from security_server.backends import BackendRequest, HttpBackend

__all__ = ["DEFAULT_TIMEOUT_S", "HttpUpstream", "UpstreamAdapter", "factory", "parse_timeout", "parse_url"]

#: Seconds to wait for the upstream's answer when ``timeout`` is not given.
DEFAULT_TIMEOUT_S = 30.0


def parse_url(adapter: str, options: Mapping[str, str]) -> str:
    """The ``url`` option, checked: present and ``http://`` or ``https://``."""
    url = str(options.get("url", "")).strip()
    if not url:
        raise ConfigError(f"adapter {adapter}: option 'url' is required (the provider system's base URL)")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"adapter {adapter}: option 'url' must start with http:// or https:// (got {url!r})")
    return url


def parse_timeout(adapter: str, options: Mapping[str, str]) -> float:
    """The ``timeout`` option in seconds, checked: a positive number (default :data:`DEFAULT_TIMEOUT_S`)."""
    raw = options.get("timeout")
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        timeout = float(str(raw))
    except ValueError:
        raise ConfigError(f"adapter {adapter}: option 'timeout' must be a number of seconds (got {raw!r})") from None
    if not timeout > 0:
        raise ConfigError(f"adapter {adapter}: option 'timeout' must be positive (got {raw!r})")
    return timeout


class UpstreamAdapter:
    """An adapter that hands each request to an :class:`HttpBackend` for ``url`` and returns its answer.

    It accepts only requests of ``protocol``: a REST service mapped to ``soap-upstream`` (or the reverse) is a
    configuration mistake, reported as ``Server.InvalidConfiguration`` rather than sent somewhere it cannot work.
    The HTTP session is created on first use (it must belong to the running event loop) and closed by
    :meth:`close`, which the security server calls when it stops.
    """

    def __init__(self, name: str, protocol: Protocol, url: str, timeout_s: float) -> None:
        self.name = name
        self.protocol = protocol
        self.url = url
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._backend: HttpBackend | None = None

    def _http(self) -> HttpBackend:
        if self._backend is None or self._session is None or self._session.closed:
            # Same session settings as the security server's backend session: bodies pass through unchanged.
            self._session = aiohttp.ClientSession(auto_decompress=False)
            self._backend = HttpBackend(self.url, self._session, self.timeout_s)
        return self._backend

    async def handle(self, request: AdapterRequest) -> AdapterResponse:
        """Forward ``request`` upstream and return the answer (status, headers, content type and body)."""
        if request.protocol is not self.protocol:
            raise ConfigError(
                f"adapter {self.name} serves {self.protocol} services; "
                f"{request.header.service.service_code} is {request.protocol}"
            )
        # AdapterRequest has no request hash (adapters/base.py does not pass it on yet); an empty value is sent
        # until it does, and a later field of that name is picked up without a change here.
        request_hash = getattr(request, "request_hash", None) or ""
        backend_request = BackendRequest(
            protocol=request.protocol,
            header=request.header,
            method=request.method,
            path=request.path,
            query=request.query,
            headers=request.headers,
            content_type=request.content_type,
            body=Spool.from_bytes(request.body),
            request_hash=request_hash,
            attachments=tuple((cid, ctype, Spool.from_bytes(data)) for cid, ctype, data in request.attachments),
        )
        try:
            answer = await self._http().call(backend_request, memory_limit=DEFAULT_MEMORY_LIMIT)
        finally:
            backend_request.body.close()
            for _cid, _ctype, spool in backend_request.attachments:
                spool.close()
        try:
            body = answer.body.getvalue()
        finally:
            answer.body.close()
        return AdapterResponse(answer.status, body, answer.content_type, answer.headers)

    async def close(self) -> None:
        """Close the HTTP session (called by the security server on shutdown)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._backend = None


class HttpUpstream(UpstreamAdapter):
    """``http-upstream``: REST requests forwarded to the provider information system."""

    def __init__(self, url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__("http-upstream", Protocol.REST, url, timeout_s)


def factory(context: AdapterContext) -> HttpUpstream:
    """Make the ``http-upstream`` adapter from its options (``url``, ``timeout``)."""
    return HttpUpstream(parse_url("http-upstream", context.options), parse_timeout("http-upstream", context.options))


register("http-upstream", factory)
