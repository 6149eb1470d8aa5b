"""The bus as an adapter sees it: calls to other agencies' services through this security server.

An adapter that composes services (the licensing registry asks tax and population) calls them exactly as any
information system would: over X-Road REST r1 to its own security server's client proxy, as one of the server's
registered client subsystems (``options.bus_client`` in server.yaml).  So those calls are signed, permission-checked
and logged like every other exchange, and the provider sees who asked.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from adapters.base import BusResponse
from bridge.errors import ConfigError, UpstreamUnavailable
from bridge.identifiers import ServiceId

__all__ = ["LocalBus"]


class LocalBus:
    """A :class:`~adapters.base.BusClient` over HTTP to this server's own client proxy."""

    def __init__(self, client: str, client_proxy_url: Callable[[], str | None], timeout_s: float = 30.0) -> None:
        self._client = client
        self._url = client_proxy_url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def rest(
        self,
        service: str,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        json_body: Any = None,
        user_id: str | None = None,
        issue: str | None = None,
    ) -> BusResponse:
        """Call a REST service through the client proxy; faults come back as ``error`` with their status."""
        base = self._url()
        if base is None:
            raise ConfigError("the client proxy is not listening on plain HTTP; adapters cannot call the bus")
        ServiceId.parse(service)  # refuse malformed identifiers before anything is sent
        url = f"{base}/r1/{service}/{quote(path.lstrip('/'), safe='/')}"
        if query:
            url += "?" + urlencode(query)
        headers = {"X-Road-Client": self._client, "X-Road-Id": str(uuid.uuid4())}
        if user_id is not None:
            headers["X-Road-UserId"] = user_id
        if issue is not None:
            headers["X-Road-Issue"] = issue
        data = None
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.request(method, url, headers=headers, data=data) as resp:
                return BusResponse(resp.status, await resp.read(), resp.headers.get("X-Road-Error"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"cannot reach this server's client proxy: {exc.__class__.__name__}") from None

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
