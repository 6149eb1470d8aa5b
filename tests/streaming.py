"""The streaming information system used by the large-body tests and ``benchmarks/bodies.py``.

``POST /upload`` hashes the body as it streams in and answers its size and SHA-512; ``GET /download?mib=N``
streams N MiB of a fixed byte.  Neither holds a body in memory, so any growth measured is the security servers'.
"""

from __future__ import annotations

import hashlib

from aiohttp import web

__all__ = ["CHUNK", "streaming_app"]

CHUNK = b"\x5a" * (1 << 20)


async def _upload(request: web.Request) -> web.Response:
    """Hash the upload as it streams in; answer its size and SHA-512."""
    digest, size = hashlib.sha512(), 0
    async for chunk in request.content.iter_chunked(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"size": size, "sha512": digest.hexdigest()})


async def _download(request: web.Request) -> web.StreamResponse:
    """Stream ``mib`` MiB of a fixed byte without holding them."""
    mib = int(request.query.get("mib", "1"))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = mib * len(CHUNK)
    await response.prepare(request)
    for _ in range(mib):
        await response.write(CHUNK)
    await response.write_eof()
    return response


def streaming_app() -> web.Application:
    """The application: no body size cap, since the security servers in front apply theirs."""
    app = web.Application(client_max_size=1 << 40)
    app.router.add_post("/upload", _upload)
    app.router.add_get("/download", _download)
    return app
