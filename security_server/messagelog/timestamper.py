"""Batch timestamping of the message log: one RFC 3161 token per batch, over the batch's Merkle root.

:class:`Timestamper` takes the oldest unstamped records (at most ``max_batch``), computes the Merkle root over
their hashes (:func:`bridge.messagelog.merkle_root`), asks a timestamp authority for a token over that root,
verifies the token and stores the batch.  One TSA call per batch, never per message.

Schedule
    :meth:`Timestamper.run` stamps every ``interval_s``, and sooner when the writer reports ``size_trigger``
    records waiting.  After a failed attempt it retries after ``interval_s / 4`` (at least one second): records
    then already wait beyond the normal interval, so a TSA that comes back should end the backlog quickly; but
    never faster than that, and size-trigger wake-ups are ignored meanwhile, so heavy traffic does not hammer a TSA
    that is down (at most four attempts per interval, each trying every configured TSA once, in order).  Each
    attempt stamps the whole backlog it finds, in batches of ``max_batch``.

Grace period
    If the TSA stays unreachable, records stay unstamped and traffic continues — until the oldest unstamped record
    is older than ``grace_s``; then :meth:`check` raises ``TimestampingFailed`` and the proxies refuse exchanges.
    Once a later attempt stamps the backlog, :meth:`check` passes again by itself.  :meth:`check` is on every
    exchange's path, so it reads only in-memory state: the seq and time of the oldest unstamped record, kept up to
    date from the writer's notifications and after each batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from bridge.aio import running_task
from bridge.errors import KorpuError, LoggingFailed, PkiError, TimestampingFailed
from bridge.messagelog import merkle_root
from bridge.pki.tsp import (
    check_token_envelope,
    make_timestamp_request,
    parse_timestamp_response,
    timestamp_request_nonce,
    verify_timestamp_token,
)
from security_server.messagelog import Batch, LogStore

__all__ = ["TimestampStore", "Timestamper", "TimestamperStatus", "TsaProvider"]

log = structlog.get_logger(__name__)

#: The timestamp authorities to use, in order of preference: (URL, TSA certificate) from global configuration.
TsaProvider = Callable[[], Sequence[tuple[str, x509.Certificate]]]

CONTENT_TYPE_QUERY = "application/timestamp-query"
CONTENT_TYPE_REPLY = "application/timestamp-reply"
#: Largest TSA reply read (a token with a certificate chain is a few kilobytes).
MAX_REPLY_SIZE = 256 * 1024
#: Safety bound on batches per attempt, so a log growing faster than it is stamped cannot pin the loop.
MAX_BATCHES_PER_ATTEMPT = 1000


class TimestampStore(LogStore, Protocol):
    """What the timestamper needs beyond :class:`LogStore` (``SqlLogStore`` has it)."""

    def stamped_through(self) -> int:
        """The last timestamped seq (0 if none)."""
        ...

    def oldest_unstamped_at(self) -> str | None:
        """``at`` of the oldest unstamped record."""
        ...


@dataclass(frozen=True)
class TimestamperStatus:
    """What the admin API shows about timestamping."""

    last_success: str | None  # when the last batch was stored (local clock, ISO 8601 UTC)
    last_error: str | None  # why the last attempt failed (None after a success)
    last_error_at: str | None
    stamped_through: int
    unstamped: int  # estimate: records appended since the last batch
    oldest_unstamped_age_s: float | None
    grace_s: float
    grace_exceeded: bool

    def to_json(self) -> dict[str, Any]:
        """JSON form for the admin API."""
        return {
            "lastSuccess": self.last_success,
            "lastError": self.last_error,
            "lastErrorAt": self.last_error_at,
            "stampedThrough": self.stamped_through,
            "unstamped": self.unstamped,
            "oldestUnstampedAgeSeconds": self.oldest_unstamped_age_s,
            "graceSeconds": self.grace_s,
            "graceExceeded": self.grace_exceeded,
        }


def _parse_time(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _text(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Timestamper:
    """Stamps the message log in batches; see the module docstring for the schedule and the grace period."""

    def __init__(
        self,
        store: TimestampStore,
        tsa_provider: TsaProvider,
        *,
        interval_s: float = 60.0,
        size_trigger: int = 10_000,
        max_batch: int = 50_000,
        grace_s: float = 4 * 3600,
        clock: Callable[[], dt.datetime] | None = None,
        request_timeout_s: float = 10.0,
        ca_certs: Callable[[], Collection[bytes]] = frozenset,
    ) -> None:
        if interval_s <= 0 or size_trigger < 1 or max_batch < 1 or grace_s < 0:
            raise ValueError("interval, size trigger, batch size and grace must be positive")
        self._store = store
        self._tsa_provider = tsa_provider
        # The CA certificates (DER) an auditor will hold besides the TSA's: a TSA that sends its chain although
        # asked for no certificates (RFC 3161 says it must not) is still accepted when the chain is among them.
        self._ca_certs = ca_certs
        self.interval_s = interval_s
        self.retry_s = max(interval_s / 4, 1.0)
        self.size_trigger = size_trigger
        self.max_batch = max_batch
        self.grace_s = grace_s
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._loaded = False
        # In-memory state for the O(1) check: everything up to _stamped_through is stamped; _oldest is
        # (seq, time) of the oldest record after it (None: nothing waits); _head_seq the newest seq notified.
        self._stamped_through = 0
        self._head_seq = 0
        self._oldest: tuple[int, dt.datetime] | None = None
        self._failing = False
        self._last_success: dt.datetime | None = None
        self._last_error: str | None = None
        self._last_error_at: dt.datetime | None = None

    # State --------------------------------------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the stamped/unstamped state from the store (at start; the writer's start calls it)."""
        stamped, (head_seq, _), oldest_at = await asyncio.to_thread(self._read_state)
        self._stamped_through = max(self._stamped_through, stamped)
        self._head_seq = max(self._head_seq, head_seq)
        if oldest_at is not None and self._stamped_through == stamped:
            self._oldest = (stamped + 1, _parse_time(oldest_at))
        elif self._oldest is not None and self._oldest[0] <= self._stamped_through:
            self._oldest = None
        self._loaded = True

    def _read_state(self) -> tuple[int, tuple[int, bytes], str | None]:
        return self._store.stamped_through(), self._store.head(), self._store.oldest_unstamped_at()

    def records_appended(self, first_seq: int, last_seq: int, oldest_at: str) -> None:
        """The writer stored ``first_seq..last_seq``; the oldest of them has time ``oldest_at``.  O(1), no I/O."""
        self._head_seq = max(self._head_seq, last_seq)
        if last_seq > self._stamped_through and (self._oldest is None or self._oldest[0] <= self._stamped_through):
            # The first records waiting since the last batch.  A group straddling the batch boundary gives its
            # own oldest time: conservative by the few milliseconds a group spans.
            self._oldest = (max(first_seq, self._stamped_through + 1), _parse_time(oldest_at))
        if not self._failing and self._head_seq - self._stamped_through >= self.size_trigger:
            self._wake.set()

    def grace_exceeded(self, now: dt.datetime | None = None) -> bool:
        """Whether the oldest unstamped record has waited longer than the grace period."""
        oldest = self._oldest
        if oldest is None:
            return False
        return ((now or self._clock()) - oldest[1]).total_seconds() > self.grace_s

    def check(self) -> None:
        """Raise ``TimestampingFailed`` once records waited for a timestamp beyond the grace period (O(1))."""
        if self.grace_exceeded():
            raise TimestampingFailed("message log records have waited for a timestamp longer than the grace period")

    def status(self) -> TimestamperStatus:
        """The admin API's view (no I/O)."""
        now = self._clock()
        oldest = self._oldest
        return TimestamperStatus(
            last_success=_text(self._last_success) if self._last_success else None,
            last_error=self._last_error,
            last_error_at=_text(self._last_error_at) if self._last_error_at else None,
            stamped_through=self._stamped_through,
            unstamped=max(0, self._head_seq - self._stamped_through),
            oldest_unstamped_age_s=(now - oldest[1]).total_seconds() if oldest else None,
            grace_s=self.grace_s,
            grace_exceeded=self.grace_exceeded(now),
        )

    # Stamping -----------------------------------------------------------------------------------------------------

    async def stamp_once(self) -> list[Batch]:
        """Stamp the backlog found now, in batches of ``max_batch``; return the batches stored.

        A failure ends the attempt: the records not yet stamped stay unstamped for the next attempt, and the error
        is kept for :meth:`status`.  Never raises for a TSA or store failure.
        """
        async with self._lock:
            if not self._loaded:
                await self.load()
            batches: list[Batch] = []
            try:
                for _ in range(MAX_BATCHES_PER_ATTEMPT):
                    batch = await self._stamp_batch()
                    if batch is None:
                        break
                    batches.append(batch)
                    if batch.last_seq - batch.first_seq + 1 < self.max_batch:
                        break  # caught up with the log as it was read
            except Exception as exc:
                # Any failure, expected (TSA down, bad answer) or not (a bug), must leave the loop alive: a dead
                # timestamper would turn into TimestampingFailed for all traffic once the grace period ends.
                self._failing = True
                self._last_error = exc.message if isinstance(exc, KorpuError) else f"{type(exc).__name__}: {exc}"
                self._last_error_at = self._clock()
                expected = isinstance(exc, (KorpuError, aiohttp.ClientError, TimeoutError, OSError))
                (log.warning if expected else log.exception)(
                    "message log timestamping failed", error=self._last_error, stamped=len(batches)
                )
            else:
                self._failing = False
                self._last_error = None
            return batches

    async def _stamp_batch(self) -> Batch | None:
        # (1)-(2) in a worker thread: hashing a 50,000-record batch takes ~110 ms of CPU (10,000: ~22 ms), which on
        # the event loop would stall every exchange in flight for that long.
        found = await asyncio.to_thread(self._pending_root)
        if found is None:
            return None
        first_seq, last_seq, root = found
        # (3) One token for the whole batch, verified before it is stored.
        token, url, gen_time = await self._timestamp(root)
        # (4) Store the batch; the store refuses double stamping and gaps.
        batch = await asyncio.to_thread(self._store.add_batch, first_seq, last_seq, root, token, url, _text(gen_time))
        self._last_success = self._clock()
        await self._advance(last_seq)
        log.info("message log batch timestamped", first_seq=first_seq, last_seq=last_seq, tsa=url)
        return batch

    def _pending_root(self) -> tuple[int, int, bytes] | None:
        """``(first seq, last seq, Merkle root)`` of the oldest unstamped records, or None (worker thread)."""
        # (1) The oldest unstamped records, consecutive from the last batch.
        pending = self._store.unstamped(self.max_batch)
        if not pending:
            return None
        first_seq, last_seq = pending[0][0], pending[-1][0]
        if last_seq - first_seq + 1 != len(pending):
            raise LoggingFailed("the unstamped records are not consecutive")
        # (2) The batch's Merkle root over the records' hashes, in seq order: the digest the TSA stamps.
        return first_seq, last_seq, merkle_root([digest for _, digest, _ in pending])

    async def _timestamp(self, root: bytes) -> tuple[bytes, str, dt.datetime]:
        """A verified token over ``root`` from the first TSA that gives one: ``(token, url, genTime)``."""
        authorities = list(self._tsa_provider())
        ca_certs = frozenset(self._ca_certs())
        if not authorities:
            raise TimestampingFailed("no timestamp authority is configured")
        # Without certificates: the TSA's comes from global configuration, and a token carrying none has nothing
        # unsigned that could be changed on the way (check_token_envelope).
        request = make_timestamp_request(root, hash_alg="sha256", cert_req=False)
        nonce = timestamp_request_nonce(request)
        errors: list[str] = []
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            for url, cert in authorities:
                try:
                    reply = await self._post(session, url, request)
                    # In a worker thread: parsing, verifying and checking a token is a few ms of CPU, once per
                    # batch; off the event loop all the same, as asn1crypto is pure Python.  (Checking its DER
                    # once took ~0.3 s, which in a thread holding the GIL stalled the loop in ~5 ms steps; see
                    # bridge.pki.tsp._der_reencoding.)
                    token, gen_time = await asyncio.to_thread(_check_reply, reply, root, cert, nonce, ca_certs)
                except (PkiError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                    reason = exc.message if isinstance(exc, PkiError) else type(exc).__name__
                    errors.append(f"{url}: {reason}")
                    continue
                return token, url, gen_time
        raise TimestampingFailed("no timestamp authority answered: " + "; ".join(errors))

    @staticmethod
    async def _post(session: aiohttp.ClientSession, url: str, request: bytes) -> bytes:
        async with session.post(url, data=request, headers={"Content-Type": CONTENT_TYPE_QUERY}) as resp:
            if resp.status != 200:
                raise PkiError(f"HTTP status {resp.status}")
            if resp.content_type != CONTENT_TYPE_REPLY:
                raise PkiError(f"unexpected content type {resp.content_type}")
            body = await resp.content.read(MAX_REPLY_SIZE + 1)
            if len(body) > MAX_REPLY_SIZE:
                raise PkiError("the reply is too large")
            return body

    async def _advance(self, last_seq: int) -> None:
        """Records up to ``last_seq`` are stamped: find the new oldest unstamped record."""
        self._stamped_through = last_seq
        if self._oldest is not None and self._oldest[0] <= last_seq:
            self._oldest = None
        # Records the writer notifies while we read set _oldest themselves (records_appended); what the store
        # says wins when it has a record, because record last_seq + 1 is the oldest whatever arrived since.
        oldest_at = await asyncio.to_thread(self._store.oldest_unstamped_at)
        if oldest_at is not None:
            self._oldest = (last_seq + 1, _parse_time(oldest_at))

    # Running --------------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Stamp on schedule until cancelled (see the module docstring)."""
        if not self._loaded:
            await self.load()
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, next_at - loop.time()))
            self._wake.clear()
            if self._failing and loop.time() < next_at:
                continue  # a size-trigger wake-up while the TSA is failing: wait for the retry time instead
            await self.stamp_once()
            self._wake.clear()  # wake-ups during the attempt are served by it
            next_at = loop.time() + (self.retry_s if self._failing else self.interval_s)

    async def running(self, _app: object = None) -> AsyncIterator[None]:
        """An aiohttp ``cleanup_ctx``: run the loop for the application's lifetime, cancel it at shutdown."""
        async with running_task(self.run(), "korpu-timestamper"):
            yield


def _check_reply(
    reply: bytes, root: bytes, cert: x509.Certificate, nonce: int | None, ca_certs: Collection[bytes]
) -> tuple[bytes, dt.datetime]:
    """The token in a TSA's ``reply`` and its genTime, once it is over ``root``, from ``cert``, answering ``nonce``.

    The certificate itself comes from verified global configuration.  The token's unsigned parts are checked as an
    auditor will check them (:func:`check_token_envelope`), so no token is stored that an audit would refuse: it may
    carry no certificate but the TSA's own and ``ca_certs``.  Raises ``PkiError`` (then the next TSA is tried).
    """
    token = parse_timestamp_response(reply)
    gen_time = verify_timestamp_token(token, data_digest=root, tsa_cert=cert, nonce=nonce)
    check_token_envelope(token, {cert.public_bytes(Encoding.DER), *ca_certs})
    return token, gen_time
