"""A man in the middle between two security servers, for tests: it captures or tampers with what passes.

It terminates TLS with one security server's identity and connects onward with another's, so both sides' TLS
checks pass and only the message-level checks (signatures) stand between a tampered message and the provider.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from bridge.transport import HEADER_MANIFEST_LENGTH, Manifest


@dataclass
class Captured:
    """One request that passed through, split into its manifest and parts."""

    headers: dict[str, str]
    body: bytes

    @property
    def manifest(self) -> Manifest:
        length = int(self.headers[HEADER_MANIFEST_LENGTH])
        return Manifest.decode(self.body[:length])

    def parts(self) -> dict[str, bytes]:
        length = int(self.headers[HEADER_MANIFEST_LENGTH])
        offset = length
        out = {}
        for info in self.manifest.parts:
            out[info.name] = self.body[offset : offset + info.length]
            offset += info.length
        return out


@dataclass
class Relay:
    """Forwards ``POST /korpu/v1/exchange`` to ``target`` after ``mutate`` (if any) changed the body."""

    server_context: ssl.SSLContext
    client_context: ssl.SSLContext
    target: str
    mutate: Callable[[bytes], bytes] | None = None
    drop_response: bool = False
    captured: list[Captured] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    address: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        self.captured.append(Captured(dict(request.headers), body))
        if self.mutate is not None:
            body = self.mutate(body)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"https://{self.target}{request.path}", data=body, headers=headers, ssl=self.client_context
            ) as resp,
        ):
            answer = await resp.read()
            dropped = ("content-length", "transfer-encoding", "date", "server")
            keep = {k: v for k, v in resp.headers.items() if k.lower() not in dropped}
        if self.drop_response and request.transport is not None:
            # The request was delivered and answered; the answer never reaches the caller.
            request.transport.abort()
            raise ConnectionResetError("relay dropped the connection after delivering the request")
        return web.Response(status=resp.status, body=answer, headers=keep)

    async def start(self) -> str:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_post("/korpu/v1/exchange", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.server_context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def flip_last_byte(body: bytes) -> bytes:
    """Flip one bit of the last byte (inside the last part, never in the manifest)."""
    return body[:-1] + bytes([body[-1] ^ 0x01])
