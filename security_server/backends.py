"""Service backends on the provider side: the provider information system's URL, or an in-process adapter.

The server proxy calls a backend only after the caller, the signature and the access decision have been checked.
Bodies travel as :class:`~bridge.spool.Spool` objects both ways, so a 100 MB request or answer is streamed from
and into temporary files, never held whole in memory.  Every call has a timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from adapters.base import Adapter, AdapterRequest
from bridge.errors import KorpuError, UpstreamUnavailable
from bridge.identifiers import ServiceId
from bridge.message import MessageHeader
from bridge.message import Protocol as MessageProtocol
from bridge.soap import SoapAttachment, build_multipart
from bridge.spool import Spool

__all__ = ["AdapterBackend", "Backend", "BackendRequest", "BackendResponse", "HttpBackend", "ServiceFailed"]

# Headers never passed between the provider information system and the exchange (hop-by-hop, or ours).
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
     "transfer-encoding", "upgrade", "host", "content-length", "server", "date"}
)  # fmt: skip


class ServiceFailed(KorpuError):
    """The provider's backend did not answer properly (timeout, refused connection, unreadable answer)."""

    code = "ServiceFailed"


@dataclass(frozen=True)
class BackendRequest:
    """A verified, permitted request for a backend."""

    protocol: MessageProtocol
    header: MessageHeader
    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    content_type: str | None
    body: Spool
    request_hash: str
    attachments: tuple[tuple[str | None, str, Spool], ...] = ()


@dataclass
class BackendResponse:
    """A backend's answer; ``body`` is owned by the caller, who closes it."""

    status: int
    headers: tuple[tuple[str, str], ...]
    content_type: str | None
    body: Spool


class Backend(Protocol):
    """Something that answers a service's requests."""

    async def call(self, request: BackendRequest, *, memory_limit: int) -> BackendResponse:
        """Answer ``request``."""
        ...


def _xroad_headers(header: MessageHeader, request_hash: str) -> list[tuple[str, str]]:
    # What an X-Road provider information system sees from its security server (pr-rest §4.3).
    headers = [
        ("X-Road-Client", header.client.path()),
        ("X-Road-Service", _rest_service(header.service)),
        ("X-Road-Id", header.message_id),
        ("X-Road-Request-Hash", request_hash),
    ]
    if header.user_id is not None:
        headers.append(("X-Road-UserId", header.user_id))
    if header.issue is not None:
        headers.append(("X-Road-Issue", header.issue))
    if header.represented_party is not None:
        headers.append(("X-Road-Represented-Party", header.represented_party.path()))
    return headers


def _rest_service(service: ServiceId) -> str:
    return "/".join((*service.provider.parts(), service.service_code))


class HttpBackend:
    """The provider information system, reached over HTTP(S) at ``url``."""

    def __init__(self, url: str, session: aiohttp.ClientSession, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def call(self, request: BackendRequest, *, memory_limit: int) -> BackendResponse:
        """Forward the request; spool the answer."""
        if request.protocol is MessageProtocol.REST:
            url = self.url + request.path + (f"?{request.query}" if request.query else "")
            method = request.method
            headers = [(k, v) for k, v in request.headers if k.lower() not in _HOP_BY_HOP]
            headers += _xroad_headers(request.header, request.request_hash)
        else:
            url, method = self.url, "POST"
            headers = [("SOAPAction", '""')]
        body, content_type = request.body, request.content_type
        if request.protocol is MessageProtocol.SOAP and request.attachments:
            # The provider information system gets the SwA message as the client sent it.
            content_type, data = build_multipart(
                request.body.getvalue(),
                [SoapAttachment(cid, ctype, (), spool.getvalue()) for cid, ctype, spool in request.attachments],
            )
            body = Spool.from_bytes(data)
        if content_type:
            headers.append(("Content-Type", content_type))
        headers.append(("Content-Length", str(body.size)))
        try:
            async with self._session.request(
                method, url, data=_stream(body), headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                body = Spool(memory_limit)
                try:
                    async for chunk in resp.content.iter_chunked(256 * 1024):
                        await body.awrite(chunk)
                    body.finish()
                except BaseException:
                    body.close()
                    raise
                kept = tuple(
                    (k, v)
                    for k, v in resp.headers.items()
                    if k.lower() not in _HOP_BY_HOP and k.lower() != "content-type"
                )
                return BackendResponse(resp.status, kept, resp.headers.get("Content-Type"), body)
        except TimeoutError:
            raise ServiceFailed(f"the service's backend did not answer within {self._timeout.total:.0f} s") from None
        except aiohttp.ClientConnectorError as exc:
            raise ServiceFailed(f"cannot connect to the service's backend ({exc.os_error.strerror})") from None
        except aiohttp.ClientError as exc:
            raise ServiceFailed(f"the service's backend failed: {exc.__class__.__name__}") from None


async def _stream(spool: Spool) -> AsyncIterator[bytes]:
    async for chunk in spool.chunks():
        yield chunk


class AdapterBackend:
    """An in-process adapter (``services[].adapter`` in server.yaml)."""

    def __init__(self, adapter: Adapter, timeout_s: float) -> None:
        self._adapter = adapter
        self._timeout_s = timeout_s

    async def call(self, request: BackendRequest, *, memory_limit: int) -> BackendResponse:
        """Hand the request to the adapter, with the service's timeout."""
        adapter_request = AdapterRequest(
            protocol=request.protocol,
            header=request.header,
            method=request.method,
            path=request.path,
            query=request.query,
            headers=request.headers,
            body=request.body.getvalue(),
            content_type=request.content_type,
            attachments=tuple((cid, ctype, data.getvalue()) for cid, ctype, data in request.attachments),
            request_hash=request.request_hash,
        )
        try:
            answer = await asyncio.wait_for(self._adapter.handle(adapter_request), self._timeout_s)
        except TimeoutError:
            raise ServiceFailed(f"the service did not answer within {self._timeout_s:.0f} s") from None
        except KorpuError:
            raise
        except Exception as exc:
            raise ServiceFailed(f"the service failed: {exc.__class__.__name__}") from None
        body = Spool(memory_limit)
        body.write(answer.body)
        body.finish()
        return BackendResponse(answer.status, answer.headers, answer.content_type, body)


def unavailable(service: ServiceId) -> UpstreamUnavailable:
    """The fault for a service this server does not provide."""
    return UpstreamUnavailable(f"this security server does not provide {service.encoded()}")
