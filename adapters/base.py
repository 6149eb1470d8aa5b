"""The adapter protocol: an in-process service backend behind a security server.

A provider's security server forwards a request either to the provider information system's URL or to an
*adapter*: a Python object implementing :class:`Adapter`, registered by name (``register``) or installed by a
third-party package through the ``korpu.adapters`` entry-point group.  The server proxy has already verified the
caller, the signature and the access decision when an adapter is called; the adapter only answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Protocol

from bridge.errors import ConfigError
from bridge.message import MessageHeader
from bridge.message import Protocol as MessageProtocol

__all__ = [
    "ENTRY_POINT_GROUP",
    "Adapter",
    "AdapterRequest",
    "AdapterResponse",
    "available",
    "create",
    "register",
]

ENTRY_POINT_GROUP = "korpu.adapters"


@dataclass(frozen=True, slots=True)
class AdapterRequest:
    """A verified, permitted request.

    For REST, ``method``, ``path`` (normalised, as access was decided on it), ``query`` and ``body`` are the
    information system's request; for SOAP, ``body`` is the SOAP envelope and ``attachments`` the SwA parts.
    """

    protocol: MessageProtocol
    header: MessageHeader
    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    content_type: str | None = None
    attachments: tuple[tuple[str | None, str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class AdapterResponse:
    """The adapter's answer: for SOAP, ``body`` is the response envelope (with the request's headers echoed)."""

    status: int = 200
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: tuple[tuple[str, str], ...] = field(default=())


class Adapter(Protocol):
    """An in-process service backend."""

    async def handle(self, request: AdapterRequest) -> AdapterResponse:
        """Answer one request."""
        ...


AdapterFactory = Callable[[], Adapter]
_REGISTRY: dict[str, AdapterFactory] = {}


def register(name: str, factory: AdapterFactory) -> None:
    """Make an adapter available under ``name`` (what ``services[].adapter`` in server.yaml refers to)."""
    _REGISTRY[name] = factory


def available() -> list[str]:
    """Names of every registered or installed adapter."""
    names = set(_REGISTRY)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def create(name: str) -> Adapter:
    """Instantiate the adapter ``name`` (registered in-process first, else from the entry-point group)."""
    factory = _REGISTRY.get(name)
    if factory is None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == name:
                factory = ep.load()
                break
    if factory is None:
        raise ConfigError(f"no adapter named {name!r} (available: {', '.join(available()) or 'none'})")
    return factory()
