"""IdleTimeoutReader: a peer or client that stops sending mid-body gets a fault, not a connection held for ever."""

from __future__ import annotations

import asyncio

import pytest

from bridge.errors import InvalidRequest
from security_server.exchange import IdleTimeoutReader

IDLE_S = 0.05


def stalled(data: bytes) -> asyncio.StreamReader:
    """A stream that has delivered ``data`` and then goes quiet (no EOF)."""
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    return stream


def reader(stream: asyncio.StreamReader) -> IdleTimeoutReader:
    return IdleTimeoutReader(stream, IDLE_S, InvalidRequest, "the body stopped arriving")


async def test_buffered_data_is_returned_without_waiting() -> None:
    """What the buffer holds comes back at once from every kind of read."""
    r = reader(stalled(b"0123456789"))
    assert await r.readexactly(4) == b"0123"
    assert await r.read(3) == b"456"
    stream = stalled(b"abc")
    stream.feed_eof()
    assert [c async for c in reader(stream).chunks(2)] == [b"ab", b"c"]


async def read_all_chunks(r: IdleTimeoutReader) -> list[bytes]:
    return [c async for c in r.chunks(1)]


async def read_past_the_buffer(r: IdleTimeoutReader) -> bytes:
    await r.read(2)  # the buffered bytes
    return await r.read(2)  # nothing more comes


async def test_a_stalled_stream_raises_the_given_fault() -> None:
    """Each read must make progress within the idle time; a stalled one raises the configured error."""
    with pytest.raises(InvalidRequest, match="stopped arriving"):
        await reader(stalled(b"12")).readexactly(10)
    with pytest.raises(InvalidRequest, match="stopped arriving"):
        await read_past_the_buffer(reader(stalled(b"12")))
    with pytest.raises(InvalidRequest, match="stopped arriving"):
        await read_all_chunks(reader(stalled(b"12")))


async def test_progress_resets_the_idle_clock() -> None:
    """A slow but steady sender is not cut off: the limit is per read, not for the whole body."""
    stream = asyncio.StreamReader()

    async def trickle() -> None:
        for piece in (b"a", b"b", b"c"):
            await asyncio.sleep(IDLE_S / 2)
            stream.feed_data(piece)
        stream.feed_eof()

    sender = asyncio.create_task(trickle())
    assert [c async for c in reader(stream).chunks()] == [b"a", b"b", b"c"]
    await sender
