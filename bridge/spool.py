"""Message parts held while they are hashed, verified and logged: in memory when small, on disk when large.

Every hop spools what it receives before acting on it, because a message may only move on once its signature
has been verified (receiving side) or made (sending side) and it has been logged.  A :class:`Spool` computes its
SHA-512 digest while the bytes arrive, so nothing is read twice, and keeps at most ``memory_limit`` bytes in
memory: a 100 MB body costs a temporary file, not 100 MB of RAM.

File I/O on a spool that has rolled over to disk happens in a worker thread, so the event loop never blocks on
the disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from typing import IO

__all__ = ["CHUNK_SIZE", "DEFAULT_MEMORY_LIMIT", "Spool"]

#: Default size above which a spool moves to a temporary file.
DEFAULT_MEMORY_LIMIT = 1024 * 1024
#: Read size when streaming a spool out.
CHUNK_SIZE = 256 * 1024


class Spool:
    """An append-then-read buffer that knows its length and SHA-512 digest.

    Write with :meth:`write` / :meth:`awrite`, then call :meth:`finish`; afterwards read with :meth:`getvalue`
    (small spools), :meth:`chunks` (any size) or :meth:`open` (a file object positioned at the start).  Call
    :meth:`close` when done (a file-backed spool deletes its file).
    """

    __slots__ = ("_buffer", "_digest", "_file", "_finished", "_hasher", "_limit", "_size")

    def __init__(self, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> None:
        self._limit = memory_limit
        self._buffer: bytearray | None = bytearray()
        self._file: IO[bytes] | None = None
        self._hasher = hashlib.sha512()
        self._size = 0
        self._finished = False
        self._digest = b""

    @classmethod
    def from_bytes(cls, data: bytes) -> Spool:
        """A finished spool holding ``data``."""
        spool = cls(memory_limit=max(len(data), 1))
        spool.write(data)
        spool.finish()
        return spool

    # Writing -----------------------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Append ``data`` (blocking if the spool is on disk; use :meth:`awrite` in async code)."""
        if self._finished:
            raise RuntimeError("spool already finished")
        self._hasher.update(data)
        self._size += len(data)
        if self._buffer is not None:
            if len(self._buffer) + len(data) <= self._limit:
                self._buffer += data
                return
            self._rollover()
        assert self._file is not None
        self._file.write(data)

    async def awrite(self, data: bytes) -> None:
        """Append ``data`` without blocking the event loop on disk writes."""
        if self._buffer is not None and len(self._buffer) + len(data) <= self._limit:
            self.write(data)  # memory only: no I/O
        else:
            await asyncio.to_thread(self.write, data)

    def _rollover(self) -> None:
        fd, path = tempfile.mkstemp(prefix="korpu-spool-")
        os.unlink(path)  # anonymous: the file disappears when closed, also after a crash
        self._file = os.fdopen(fd, "w+b")
        assert self._buffer is not None
        self._file.write(self._buffer)
        self._buffer = None

    def finish(self) -> None:
        """Mark the end of the data; the digest is final from here on."""
        if not self._finished:
            self._finished = True
            self._digest = self._hasher.digest()
            if self._file is not None:
                self._file.flush()

    # Reading -----------------------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of bytes written."""
        return self._size

    @property
    def digest(self) -> bytes:
        """SHA-512 of the whole content (after :meth:`finish`)."""
        if not self._finished:
            raise RuntimeError("spool not finished")
        return self._digest

    @property
    def in_memory(self) -> bool:
        """Whether the content is held in memory (no temporary file)."""
        return self._buffer is not None

    def getvalue(self) -> bytes:
        """The whole content; for small, in-memory spools (a file-backed spool is read in full)."""
        if self._buffer is not None:
            return bytes(self._buffer)
        assert self._file is not None
        self._file.seek(0)
        return self._file.read()

    async def chunks(self, size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        """The content in chunks of at most ``size`` bytes, reading from disk in a worker thread."""
        if self._buffer is not None:
            view = memoryview(self._buffer)
            for start in range(0, len(view), size):
                yield bytes(view[start : start + size])
            return
        assert self._file is not None
        offset = 0
        while offset < self._size:
            chunk = await asyncio.to_thread(self._read_at, offset, size)
            if not chunk:
                break
            offset += len(chunk)
            yield chunk

    def _read_at(self, offset: int, size: int) -> bytes:
        assert self._file is not None
        return os.pread(self._file.fileno(), size, offset)

    def close(self) -> None:
        """Release memory or the temporary file."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._buffer = bytearray() if self._buffer is not None else None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
