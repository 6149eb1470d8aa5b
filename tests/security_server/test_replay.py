"""Replay guard: the signing-time window and the once-only rule, with bounded memory."""

from __future__ import annotations

import datetime as dt

import pytest

from bridge.errors import ReplayedMessage
from security_server.replay import ReplayGuard

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


class Tick:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_same_signature_is_accepted_once() -> None:
    """A signature seen before is refused as a replay; a different one passes."""
    guard = ReplayGuard(120)
    guard.check(b"sig-1", NOW, NOW)
    with pytest.raises(ReplayedMessage, match="already received"):
        guard.check(b"sig-1", NOW, NOW)
    guard.check(b"sig-2", NOW, NOW)


@pytest.mark.parametrize("offset", [-121, 121, -3600])
def test_signing_time_outside_the_window_is_refused(offset: int) -> None:
    """Stale and future-dated signatures are refused; missing signing time too."""
    guard = ReplayGuard(120)
    with pytest.raises(ReplayedMessage, match="outside"):
        guard.check(b"s", NOW + dt.timedelta(seconds=offset), NOW)
    with pytest.raises(ReplayedMessage, match="no signing time"):
        guard.check(b"s", None, NOW)


def test_memory_is_bounded_by_two_windows() -> None:
    """Entries older than two windows are forgotten (the time check refuses them anyway)."""
    tick = Tick()
    guard = ReplayGuard(120, clock=tick)
    guard.check(b"old", NOW, NOW)
    tick.t = 121  # rotation: "old" moves to the previous generation and is still refused
    with pytest.raises(ReplayedMessage):
        guard.check(b"old", NOW, NOW + dt.timedelta(seconds=60))
    tick.t = 242  # second rotation: forgotten; by then its signing time is far outside the window
    guard.check(b"new", NOW + dt.timedelta(seconds=242), NOW + dt.timedelta(seconds=242))
    assert len(guard) == 1
    with pytest.raises(ReplayedMessage, match="outside"):
        guard.check(b"old", NOW, NOW + dt.timedelta(seconds=242))
