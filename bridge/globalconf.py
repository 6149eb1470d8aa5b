"""Global configuration: the signed, versioned catalogue every security server acts on.

This module holds the in-memory model, frozen dataclasses that the rest of the code trusts once a document has
been verified and parsed.  Serialisation to XML (``schemas/globalconf.xsd``), signing and verification live in
:mod:`bridge.globalconf_xml`; the central server builds a :class:`GlobalConf` from its catalog and the security
server obtains one through :mod:`security_server.confclient`.

Lookups that the exchange path needs (is this certificate hash a registered auth cert of that member's server?
which servers host this client?) are indexed once when the object is built, never per message.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

from bridge.identifiers import ClientId, GlobalGroupId, MemberId, SecurityServerId, ServiceId, SubsystemId

__all__ = [
    "AccessRight",
    "ApprovedCA",
    "GlobalConf",
    "GlobalConfParams",
    "GlobalGroup",
    "MemberInfo",
    "SecurityServerInfo",
    "ServiceInfo",
    "TimestampingService",
]

ServiceType = Literal["REST", "SOAP", "OPENAPI3"]


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """A member, its display name and the codes of its registered subsystems."""

    id: MemberId
    name: str
    subsystems: tuple[str, ...] = ()

    def subsystem_ids(self) -> tuple[SubsystemId, ...]:
        """The member's subsystems as identifiers."""
        return tuple(self.id.subsystem(code) for code in self.subsystems)


@dataclass(frozen=True, slots=True)
class SecurityServerInfo:
    """A registered security server.

    ``address`` is ``host:port`` of its server proxy (the port other security servers connect to with mutual
    TLS).  ``auth_cert_hashes`` are lowercase hex SHA-256 digests of the DER of its registered authentication
    certificates; a TLS peer is this server only if its certificate hashes to one of them.  ``clients`` are the
    members and subsystems registered as clients of this server (its owner member is always one).
    """

    id: SecurityServerId
    address: str
    auth_cert_hashes: tuple[str, ...]
    clients: tuple[ClientId, ...] = ()


@dataclass(frozen=True, slots=True)
class ApprovedCA:
    """A certification authority whose certificates members' and servers' certificates must chain to.

    ``top_cert`` is the DER of the trust anchor; ``intermediate_certs`` the DER of issuing CA certificates under
    it; ``ocsp_urls`` where revocation status is asked; ``ocsp_responder_certs`` the DER of certificates allowed
    to sign OCSP responses in addition to the CAs themselves (delegated responders).
    """

    name: str
    top_cert: bytes
    intermediate_certs: tuple[bytes, ...] = ()
    ocsp_urls: tuple[str, ...] = ()
    ocsp_responder_certs: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class TimestampingService:
    """An RFC 3161 timestamp authority: its URL and the DER of its signing certificate."""

    name: str
    url: str
    cert: bytes


@dataclass(frozen=True, slots=True)
class GlobalGroup:
    """A federation-wide group of clients (members or subsystems) that access rights can name."""

    id: GlobalGroupId
    description: str
    members: tuple[ClientId, ...] = ()


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """A service in the catalog: its identifier, type and where its description (OpenAPI/WSDL) can be read."""

    id: ServiceId
    type: ServiceType
    title: str = ""
    description_url: str | None = None


@dataclass(frozen=True, slots=True)
class AccessRight:
    """Permission for a client or global group to call a service.

    For REST services ``method`` (``GET``, …, or ``None`` for any) and ``path`` (a pattern such as
    ``/persons/*``, or ``None`` for any) narrow the grant.  Access rights from the central server are the
    federation's baseline; a provider may narrow them locally.
    """

    subject: ClientId | GlobalGroupId
    service: ServiceId
    method: str | None = None
    path: str | None = None


@dataclass(frozen=True, slots=True)
class GlobalConfParams:
    """Federation-wide parameters security servers follow."""

    timestamping_interval_s: int = 60
    refresh_interval_s: int = 60
    ocsp_freshness_s: int = 3600


@dataclass(frozen=True)
class GlobalConf:
    """One verified version of global configuration.

    ``version`` increases with every published document; ``expires_at`` is when a security server must stop
    relying on it (see :meth:`is_expired`).
    """

    instance: str
    version: int
    generated_at: dt.datetime
    expires_at: dt.datetime
    central_server_url: str
    params: GlobalConfParams = field(default_factory=GlobalConfParams)
    members: tuple[MemberInfo, ...] = ()
    servers: tuple[SecurityServerInfo, ...] = ()
    cas: tuple[ApprovedCA, ...] = ()
    tsas: tuple[TimestampingService, ...] = ()
    groups: tuple[GlobalGroup, ...] = ()
    services: tuple[ServiceInfo, ...] = ()
    access_rights: tuple[AccessRight, ...] = ()

    def __post_init__(self) -> None:
        # Indexes for the exchange path, built once per document.
        object.__setattr__(self, "_members", {m.id: m for m in self.members})
        object.__setattr__(self, "_servers", {s.id: s for s in self.servers})
        by_client: dict[ClientId, list[SecurityServerInfo]] = {}
        for server in self.servers:
            for client in server.clients:
                by_client.setdefault(client, []).append(server)
        object.__setattr__(self, "_servers_by_client", {k: tuple(v) for k, v in by_client.items()})
        object.__setattr__(self, "_services", {s.id: s for s in self.services})

    def is_expired(self, now: dt.datetime | None = None) -> bool:
        """Whether this configuration may no longer be used at ``now`` (UTC, default: the current time)."""
        now = now or dt.datetime.now(dt.UTC)
        return now >= self.expires_at

    def member(self, member_id: MemberId) -> MemberInfo | None:
        """The member with that identifier, if registered."""
        members: dict[MemberId, MemberInfo] = self._members  # type: ignore[attr-defined]
        return members.get(member_id)

    def server(self, server_id: SecurityServerId) -> SecurityServerInfo | None:
        """The security server with that identifier, if registered."""
        servers: dict[SecurityServerId, SecurityServerInfo] = self._servers  # type: ignore[attr-defined]
        return servers.get(server_id)

    def servers_for(self, client: ClientId) -> tuple[SecurityServerInfo, ...]:
        """The security servers on which ``client`` is registered (empty if none)."""
        index: dict[ClientId, tuple[SecurityServerInfo, ...]] = self._servers_by_client  # type: ignore[attr-defined]
        return index.get(client, ())

    def service(self, service_id: ServiceId) -> ServiceInfo | None:
        """The catalog entry of a service, if registered."""
        services: dict[ServiceId, ServiceInfo] = self._services  # type: ignore[attr-defined]
        return services.get(service_id)

    def is_client_registered(self, client: ClientId) -> bool:
        """Whether ``client`` is a registered member, or a registered subsystem of one."""
        info = self.member(client.member)
        if info is None:
            return False
        if isinstance(client, SubsystemId):
            return client.subsystem_code in info.subsystems
        return True
