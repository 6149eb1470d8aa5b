"""The adapter SDK: in-process service backends behind a security server.

A provider's security server forwards a permitted request either to the provider information system's URL or to an
*adapter*: an object implementing :class:`Adapter`, made by a factory registered by name (:func:`register`) or
installed by a third-party package through the ``korpu.adapters`` entry-point group::

    [options.entry_points]
    korpu.adapters =
        my-registry = my_package.adapter:factory

``server.yaml`` names the adapter per service (``services[].adapter``) with free-form ``options``.  The factory
receives an :class:`AdapterContext`: those options, the state directory, and a :class:`BusClient` with which the
adapter may itself call other agencies' services *through its own security server* (services composed over the
bus, as the licensing registry does with tax and population).  An adapter may describe its services
(:meth:`Adapter.describe`) with an OpenAPI or WSDL document; the security server publishes those through the
metaservices (``getOpenAPI``, ``getWsdl``) and ``korpu`` can register them in the central catalog.

The server proxy has already verified the caller, the signature and the access decision when ``handle`` runs; the
adapter only answers.  Business errors are answers too: a 4xx with a JSON ``{"error": code, "message": text}`` for
REST, and for SOAP a normal response whose body carries X-Road's non-technical fault shape (pr-mess Annex D.2).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from bridge.errors import ConfigError
from bridge.message import MessageHeader
from bridge.message import Protocol as MessageProtocol

__all__ = [
    "ENTRY_POINT_GROUP",
    "Adapter",
    "AdapterContext",
    "AdapterRequest",
    "AdapterResponse",
    "BusClient",
    "BusResponse",
    "DescribedAdapter",
    "ServiceDescription",
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
    ``header.service.service_code`` says which of the adapter's services is called.
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
    request_hash: str | None = None


@dataclass(frozen=True, slots=True)
class AdapterResponse:
    """The adapter's answer: for SOAP, ``body`` is the response envelope (with the request's headers echoed)."""

    status: int = 200
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: tuple[tuple[str, str], ...] = field(default=())


@dataclass(frozen=True)
class ServiceDescription:
    """One service an adapter offers: its code, protocol, title, and OpenAPI (REST) or WSDL (SOAP) document."""

    code: str
    type: Literal["REST", "SOAP"]
    title: str
    document: bytes | None = None
    version: str | None = None


@dataclass(frozen=True)
class BusResponse:
    """What a call over the bus returned: status, X-Road error code (if the bus refused), body."""

    status: int
    body: bytes
    error: str | None = None

    def json(self) -> Any:
        """The body parsed as JSON."""
        import json

        return json.loads(self.body)


class BusClient(Protocol):
    """Calls other agencies' services through this security server's client proxy, as one of its clients."""

    async def rest(
        self,
        service: str,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        json_body: Any = None,
        user_id: str | None = None,
        issue: str | None = None,
    ) -> BusResponse:
        """Call REST service ``service`` (path form ``INSTANCE/CLASS/MEMBER/SUBSYSTEM/CODE``) at ``path``."""
        ...


@dataclass(frozen=True)
class AdapterContext:
    """What an adapter factory gets: its options from server.yaml, the state directory, and the bus."""

    options: Mapping[str, str] = field(default_factory=dict)
    state_dir: Path = Path(".")
    bus: BusClient | None = None


class Adapter(Protocol):
    """An in-process service backend."""

    async def handle(self, request: AdapterRequest) -> AdapterResponse:
        """Answer one request."""
        ...


@runtime_checkable
class DescribedAdapter(Protocol):
    """An adapter that can say which services it offers (and publish their descriptions)."""

    async def handle(self, request: AdapterRequest) -> AdapterResponse:
        """Answer one request."""
        ...

    def describe(self) -> Sequence[ServiceDescription]:
        """The services this adapter offers."""
        ...


AdapterFactory = Callable[[AdapterContext], Adapter]
_REGISTRY: dict[str, AdapterFactory] = {}


def register(name: str, factory: AdapterFactory) -> None:
    """Make an adapter available under ``name`` (what ``services[].adapter`` in server.yaml refers to)."""
    _REGISTRY[name] = factory


def available() -> list[str]:
    """Names of every registered or installed adapter."""
    names = set(_REGISTRY)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def create(name: str, context: AdapterContext | None = None) -> Adapter:
    """Instantiate the adapter ``name`` (registered in-process first, else from the entry-point group)."""
    factory = _REGISTRY.get(name)
    if factory is None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == name:
                factory = ep.load()
                break
    if factory is None:
        raise ConfigError(f"no adapter named {name!r} (available: {', '.join(available()) or 'none'})")
    return factory(context or AdapterContext())
