"""The message log's background archiver: old batches into linked archives, old archives out by retention.

Every ``interval_s`` one round runs in a worker thread:

1. rotate the timestamped batches whose last record is older than ``archive_after_s`` into one archive and delete
   them from the live log (:func:`~security_server.messagelog.archive.rotate` with ``delete=True``);
2. delete archives older than ``retention_days`` (:func:`~security_server.messagelog.archive.cleanup`).

A round that fails is logged and tried again next round; nothing here raises into the exchange path.  If a round
wrote its archive but could not delete the records, they stay in the live log until the next round's delete,
which covers everything up to its own archive's end.  Rounds, and ``korpu audit archive``, hold
:func:`archive_lock`, so two rotations never write into one archive directory at once.  Archiving
takes the log's write lock only for the delete (see ``SqlLogStore.delete_through``), so traffic waits for one
short transaction per round, never for the archive being written.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import InvalidState, KorpuError
from bridge.evidence import EvidenceCerts
from bridge.logsetup import get_logger
from security_server.messagelog import LogQuery, LogStore
from security_server.messagelog.archive import ARCHIVE_RE, PrunableLogStore, cleanup, rotate

__all__ = ["Archiver", "RoundResult", "archive_lock", "archive_range"]

log = get_logger(__name__)


@contextlib.contextmanager
def archive_lock(archive_dir: Path) -> Iterator[None]:
    """Hold the archive directory's lock (``.lock``, an advisory ``flock``) or raise :class:`InvalidState`.

    Two rotations at once would both link to the same newest archive and fork the archive chain.
    """
    archive_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(archive_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InvalidState("another archiving run holds the archive directory; try again later") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def archive_range(archive: Path) -> tuple[int, int]:
    """``(first seq, last seq)`` of an archive, from its name (``messagelog-<first>-<last>.zip``)."""
    match = ARCHIVE_RE.fullmatch(archive.name)
    if match is None:
        raise ValueError(f"{archive.name} is not an archive name")
    return int(match[1]), int(match[2])


@dataclass(frozen=True)
class RoundResult:
    """What one round did: the archive it wrote (``None`` if nothing was due) and the archives it deleted."""

    archive: Path | None
    first_seq: int | None
    last_seq: int | None
    removed: tuple[Path, ...]


class Archiver:
    """Archives timestamped batches older than ``archive_after_s`` and applies ``retention_days`` to archives.

    ``archive_after_s`` of 0 turns automatic archiving off (retention still applies to archives written with
    ``korpu audit archive``).  ``certs_provider`` returns the CA and TSA certificates archives carry, read when a
    round runs so that a refreshed global configuration is used.
    """

    def __init__(
        self,
        store: LogStore,
        archive_dir: Path,
        certs_provider: Callable[[], EvidenceCerts],
        *,
        archive_after_s: float,
        retention_days: int,
        interval_s: float,
    ) -> None:
        if not isinstance(store, PrunableLogStore):
            raise TypeError("the archiver needs a log store that can delete archived records (delete_through)")
        if archive_after_s < 0 or retention_days < 0 or interval_s <= 0:
            raise ValueError("archive_after_s and retention_days must not be negative, interval_s must be positive")
        self.store: PrunableLogStore = store
        self.archive_dir = archive_dir
        self.certs_provider = certs_provider
        self.archive_after_s = archive_after_s
        self.retention_days = retention_days
        self.interval_s = interval_s

    async def run(self) -> None:
        """Run a round now and then every ``interval_s`` until cancelled; a failed round is logged, not raised."""
        while True:
            current = asyncio.ensure_future(asyncio.to_thread(self.run_once))
            try:
                await asyncio.shield(current)
            except asyncio.CancelledError:
                # A thread cannot be interrupted: let the round end before the caller closes the store under it.
                with contextlib.suppress(Exception):
                    await current
                raise
            except Exception as exc:
                # Fail soft: the live log keeps working without archiving; the next round tries again.  Korpü's
                # errors carry messages without personal data; other exceptions are logged by type only.
                message = exc.message if isinstance(exc, KorpuError) else None
                log.error("message log archiving failed", error=type(exc).__name__, detail=message)
            await asyncio.sleep(self.interval_s)

    def run_once(self, *, now: dt.datetime | None = None) -> RoundResult:
        """One round (blocking): finish an interrupted delete, archive what is due, apply retention."""
        now = now or dt.datetime.now(dt.UTC)
        archive: Path | None = None
        first_seq = last_seq = None
        with archive_lock(self.archive_dir):
            # (1) Archive the batches that are due, if any, and delete them from the live log.
            if self.archive_after_s > 0:
                cutoff = now - dt.timedelta(seconds=self.archive_after_s)
                if self._due(cutoff):
                    archive = rotate(
                        self.store, self.archive_dir, certs=self.certs_provider(), older_than=cutoff, delete=True
                    )
                    first_seq, last_seq = archive_range(archive)
                    log.info("message log archived", archive=archive.name, first_seq=first_seq, last_seq=last_seq)
            # (2) Retention.
            removed = tuple(cleanup(self.archive_dir, self.retention_days, now=now))
        for path in removed:
            log.info("message log archive removed by retention", archive=path.name)
        return RoundResult(archive, first_seq, last_seq, removed)

    def _due(self, cutoff: dt.datetime) -> bool:
        """Whether the oldest live batch is complete and its last record older than ``cutoff``."""
        first = self.store.find(LogQuery(after_seq=0, limit=1))
        if not first:
            return False
        batch = self.store.batch_of(first[0].seq)
        if batch is None:
            return False
        last = self.store.records(batch.last_seq, batch.last_seq)
        return bool(last) and dt.datetime.fromisoformat(last[0].at) < cutoff
