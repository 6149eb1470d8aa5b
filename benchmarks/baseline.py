"""The baseline: a bare two-hop aiohttp reverse-proxy chain over the same mutual TLS as the security servers.

``proxy-a`` takes plain HTTP from the load generator (like ss-a's client proxy) and forwards it over mutual TLS,
presenting ss-a's authentication certificate and key, to ``proxy-b``; ``proxy-b`` (ss-b's certificate and key,
client certificate required) forwards to the information system over plain HTTP.  TLS policy as in
:mod:`security_server.tls` (TLS 1.2+ so 1.3 in practice, ECDHE+AEAD, no compression or renegotiation, peer
certificate required and chained to the federation CA).  No signing, no logging, no policy: what is left is the
cost of two hops of aiohttp and TLS, which is what Körpü's numbers are divided by.

    python benchmarks/baseline.py proxy-b --port P --upstream http://127.0.0.1:S --ca ca.pem --chain … --key …
    python benchmarks/baseline.py proxy-a --port P --upstream https://127.0.0.1:PB --ca ca.pem --chain … --key …

The key files are the security servers' encrypted PKCS#8 token files; the PIN comes from ``$KORPU_PIN``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from security_server.tls import TLS12_CIPHERS

HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade", "host", "content-length")
)  # fmt: skip


def tls_context(server: bool, chain: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """A mutual-TLS context with the security servers' policy."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if server:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.check_hostname = False  # as ss-a: the peer is pinned by certificate, not host name
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(ca))
    pin = os.environ["KORPU_PIN"].encode()
    context.load_cert_chain(chain, key, password=lambda: pin)
    return context


def proxy_app(upstream: str, client_ssl: ssl.SSLContext | None) -> web.Application:
    """Forward every request to ``upstream`` (same method, path, query, headers, body); relay the answer."""
    app = web.Application(client_max_size=1 << 40)
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def session_ctx(app: web.Application) -> object:
        connector = aiohttp.TCPConnector(limit=0, ssl=client_ssl if client_ssl is not None else False)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            app[session_key] = session
            yield

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        body = await request.read() if request.can_read_body else None
        async with app[session_key].request(
            request.method, upstream + request.rel_url.raw_path_qs, headers=headers, data=body, allow_redirects=False
        ) as resp:
            data = await resp.read()
            out = [(k, v) for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP]
            response = web.Response(status=resp.status, body=data)
            for k, v in out:
                response.headers.add(k, v)
            return response

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    """Run one proxy until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=("proxy-a", "proxy-b"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--chain", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    args = parser.parse_args()
    if args.role == "proxy-a":
        app = proxy_app(args.upstream, tls_context(False, args.chain, args.key, args.ca))
        server_ssl = None
    else:
        app = proxy_app(args.upstream, None)
        server_ssl = tls_context(True, args.chain, args.key, args.ca)

    async def run() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port, ssl_context=server_ssl, backlog=1024).start()
        print(f"{args.role} running on 127.0.0.1:{args.port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
