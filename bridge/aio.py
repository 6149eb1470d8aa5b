"""Small asyncio helpers shared by the servers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

__all__ = ["running_task"]


@contextlib.asynccontextmanager
async def running_task(coro: Coroutine[Any, Any, Any], name: str) -> AsyncIterator[asyncio.Task[Any]]:
    """Run ``coro`` as a task for the duration of the ``async with`` block, then cancel it and wait for it.

    The background loops (configuration client, publisher, OCSP refresh, timestamper) run this way for an aiohttp
    application's lifetime, from its ``cleanup_ctx``: shutdown must not leave a task running or its error unseen.
    """
    task = asyncio.create_task(coro, name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
