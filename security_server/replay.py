"""Replay protection for signed messages: a time window plus a record of the signatures seen within it.

Every message between security servers is signed with its signing time inside the signature.  A receiver accepts
a message only if that time is within ``window`` of its own clock, and only once: the digest of each accepted
signature is remembered for at least the window, in two generations (current and previous) that rotate every
``window`` seconds.  A message older than the window is refused by the time check, so nothing older needs to be
remembered, and memory stays bounded by twice the traffic of one window.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable

from bridge.errors import ReplayedMessage

__all__ = ["ReplayGuard"]


class ReplayGuard:
    """Refuses stale, future-dated and repeated signatures."""

    def __init__(self, window_s: float = 120.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = dt.timedelta(seconds=window_s)
        self._window_s = window_s
        self._clock = clock
        self._current: set[bytes] = set()
        self._previous: set[bytes] = set()
        self._rotate_at = clock() + window_s

    def check(self, signature: bytes, signing_time: dt.datetime | None, now: dt.datetime) -> None:
        """Accept ``signature`` once, if signed within the window of ``now``; raise :class:`ReplayedMessage` else."""
        # (1) The signing time must be present and close to ours (both directions: clocks differ a little).
        if signing_time is None:
            raise ReplayedMessage("the message signature carries no signing time")
        if abs(now - signing_time) > self.window:
            when = signing_time.isoformat()
            raise ReplayedMessage(f"the message was signed at {when}, outside ±{self._window_s:.0f} s of this clock")
        # (2) Never the same signature twice.  16 bytes of SHA-512 keep memory small with no practical collisions.
        key = hashlib.sha512(signature).digest()[:16]
        tick = self._clock()
        if tick >= self._rotate_at:
            self._previous, self._current = self._current, set()
            self._rotate_at = tick + self._window_s
        if key in self._current or key in self._previous:
            raise ReplayedMessage("this message was already received (replay)")
        self._current.add(key)

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)
