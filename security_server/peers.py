"""Talking to other security servers: pooled mutual-TLS connections, peer binding, routing and failover.

* **Binding before the first byte.**  :class:`PinningConnector` checks, right after the TLS handshake and before
  the request is written, that the peer's authentication certificate is one that global configuration registers
  for a security server at that address.  (OpenSSL has already checked the chain to an approved CA.)  A peer that
  fails the check never receives a byte of the message.
* **Routing.**  A provider may be served by several security servers.  :class:`Router` orders them: servers whose
  recent attempts failed go last, the rest by a moving average of their response time.
* **Failover without double delivery.**  Only failures that happen before any request byte was sent — connection
  refused, TLS or binding failure, connect timeout — move on to the next server.  Anything after that is final:
  the provider may already have acted on the request.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler

from bridge.errors import ClientError, KorpuError, SslAuthenticationFailed, UpstreamUnavailable
from bridge.globalconf import GlobalConf, SecurityServerInfo
from bridge.logsetup import get_logger
from bridge.pki.keys import cert_sha256_hex

__all__ = ["PeerRejected", "PinningConnector", "Router", "send_to_first"]

log = get_logger(__name__)


class PeerRejected(aiohttp.ClientConnectionError):
    """The TLS peer is not a security server global configuration registers at that address."""


class PinningConnector(aiohttp.TCPConnector):
    """A TCP connector that binds every new TLS connection to global configuration before it is used.

    ``conf_provider`` returns the current global configuration (raising if there is none valid).  The check is
    made once per connection; pooled connections are reused only for the same host and port.
    """

    def __init__(self, conf_provider: Callable[[], GlobalConf], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._conf_provider = conf_provider
        self._peer_certs: dict[str, bytes] = {}

    def peer_certificate(self, address: str) -> bytes:
        """DER of the certificate the peer at ``address`` presented on the last connection made to it."""
        return self._peer_certs.get(address, b"")

    async def _create_connection(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Any],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature, which we override
    ) -> ResponseHandler:
        proto = await super()._create_connection(req, traces, timeout)
        try:
            self._check_peer(proto, f"{req.url.host}:{req.url.port}")
        except BaseException:
            proto.close()
            raise
        return proto

    def _check_peer(self, proto: ResponseHandler, address: str) -> None:
        transport = proto.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if not isinstance(ssl_object, ssl.SSLObject):
            raise PeerRejected(f"connection to {address} is not TLS")
        der = ssl_object.getpeercert(binary_form=True)
        if not der:
            raise PeerRejected(f"{address} presented no certificate")
        digest = cert_sha256_hex(der)
        conf = self._conf_provider()
        for server in conf.servers:
            if server.address == address and digest in server.auth_cert_hashes:
                self._peer_certs[address] = der
                return
        raise PeerRejected(f"the certificate presented by {address} is not registered for a security server there")


@dataclass
class _Health:
    ewma_s: float = 0.05
    failures: int = 0
    last_failure: float = 0.0


@dataclass
class Router:
    """Orders candidate security servers: recently failing ones last, then by moving-average response time."""

    retry_after_s: float = 30.0
    _health: dict[str, _Health] = field(default_factory=dict)

    def order(self, servers: Sequence[SecurityServerInfo]) -> list[SecurityServerInfo]:
        """The servers in the order to try them."""
        now = time.monotonic()

        def key(server: SecurityServerInfo) -> tuple[bool, float]:
            health = self._health.get(server.address)
            if health is None:
                return (False, 0.0)
            failing = health.failures > 0 and now - health.last_failure < self.retry_after_s
            return (failing, health.ewma_s)

        return sorted(servers, key=key)

    def success(self, server: SecurityServerInfo, elapsed_s: float) -> None:
        """Record a successful exchange and its duration."""
        health = self._health.setdefault(server.address, _Health(ewma_s=elapsed_s))
        health.ewma_s = 0.8 * health.ewma_s + 0.2 * elapsed_s
        health.failures = 0

    def failure(self, server: SecurityServerInfo) -> None:
        """Record a connection failure."""
        health = self._health.setdefault(server.address, _Health())
        health.failures += 1
        health.last_failure = time.monotonic()

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Per-address health for status pages."""
        return {a: {"ewma_ms": h.ewma_s * 1000, "failures": h.failures} for a, h in self._health.items()}


# Errors that prove no request byte reached the peer: the connection was never usable.  A read timeout
# (SocketTimeoutError) or a plain TimeoutError is NOT among them: the peer may have received the request.
_BEFORE_SEND = (aiohttp.ClientConnectorError, PeerRejected, aiohttp.ConnectionTimeoutError)


@dataclass
class PeerResponse:
    """An answer from a peer security server, still to be read."""

    server: SecurityServerInfo
    response: aiohttp.ClientResponse
    started: float


async def send_to_first(
    session: aiohttp.ClientSession,
    router: Router,
    servers: Sequence[SecurityServerInfo],
    *,
    path: str,
    headers: dict[str, str],
    body: Callable[[], AsyncIterator[bytes]],
    ssl_context: ssl.SSLContext,
    connect_timeout_s: float,
    total_timeout_s: float,
) -> PeerResponse:
    """POST to the first server that accepts the connection; fail over only on pre-send failures.

    ``body`` is called afresh for each attempt (a failed attempt never consumed it, but generators are one-shot).
    Raises :class:`UpstreamUnavailable` (``NetworkError``) when every server failed before sending, or for a
    failure after sending.
    """
    errors: list[str] = []
    rejected = 0
    for server in router.order(servers):
        started = time.perf_counter()
        timeout = aiohttp.ClientTimeout(
            total=total_timeout_s, sock_connect=connect_timeout_s, connect=connect_timeout_s
        )
        try:
            response = await session.post(
                f"https://{server.address}{path}", data=body(), headers=headers, ssl=ssl_context, timeout=timeout
            )
        except _BEFORE_SEND as exc:
            router.failure(server)
            rejected += isinstance(exc, PeerRejected)
            errors.append(f"{server.id.path()} at {server.address}: {_describe(exc)}")
            log.warning("peer unavailable, trying the next", server=server.id.path(), error=_describe(exc))
            continue
        except (aiohttp.ClientError, TimeoutError) as exc:
            router.failure(server)
            raise UpstreamUnavailable(
                f"security server {server.id.path()} failed during the exchange: {_describe(exc)}"
            ) from None
        return PeerResponse(server, response, started)
    if rejected == len(errors):
        # Every candidate answered, but with a certificate global configuration does not register there.
        raise SslAuthenticationFailed(
            "no provider security server presented its registered certificate: " + "; ".join(errors)
        )
    raise UpstreamUnavailable("no security server of the provider could be reached: " + "; ".join(errors))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connection timed out"
    if isinstance(exc, PeerRejected):
        return str(exc)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error.__class__.__name__})"
    return exc.__class__.__name__


def fault_from_peer(status: int, data: dict[str, Any]) -> KorpuError:
    """Rebuild a fault the peer reported (JSON ``{type, message, detail}``) keeping its code and origin.

    A ``Client.*`` fault stays a client fault with the status the provider gave it (4xx), so the information
    system learns it sent something wrong; anything else is a server fault (500 to the information system).
    """
    fault_type = str(data.get("type") or "Server.ServerProxy.InternalError")[:200]
    origin, _, code = fault_type.rpartition(".")
    message = str(data.get("message") or "error at the provider's security server")[:2000]
    error: _PeerFault | _PeerClientFault
    if origin == "Client" and 400 <= status < 500:
        error = _CLIENT_FAULTS.get(status, _PeerClientFault)(message, origin="Client")
    else:
        error = _PeerFault(message, origin=origin or "Server")
    error.peer_code = code or "InternalError"
    error.detail = str(data["detail"])[:200] if data.get("detail") else None
    return error


class _PeerFault(KorpuError):
    """A server-side fault reported by the provider's security server, relayed unchanged."""

    peer_code = "InternalError"

    @property
    def fault_code(self) -> str:
        return f"{self.origin}.{self.peer_code}"


class _PeerClientFault(ClientError):
    """A client fault the provider's security server reported (the request was wrong), relayed unchanged."""

    peer_code = "BadRequest"

    @property
    def fault_code(self) -> str:
        return f"{self.origin}.{self.peer_code}"


def _client_fault(status: int) -> type[_PeerClientFault]:
    return type(f"_PeerClientFault{status}", (_PeerClientFault,), {"http_status": status})


_CLIENT_FAULTS = {status: _client_fault(status) for status in (401, 403, 404, 405, 409, 413)}
