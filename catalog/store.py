"""The central server's catalog store and the registration service that drives it.

The catalog holds members, subsystems, security servers, registration requests, certificate records, global
groups, the services catalog with public-service metadata, access rights and management API keys.

:class:`CatalogStore` is synchronous and backend-neutral (SQLite or PostgreSQL, see :mod:`catalog.db`).  Every
public method is one transaction: it either happens completely or not at all.  Identifiers are stored in their
path form (unambiguous per column, because codes cannot contain ``/``) and clients, whose kind varies, in their
encoded form (``SUBSYSTEM:AZ/GOV/1/bank``).  Ordering for output is done in Python on the identifier
dataclasses, because the two backends collate text differently.

A catalog belongs to one X-Road instance, recorded in ``catalog_meta`` (see :meth:`CatalogStore.open` and
:meth:`CatalogStore.create`); every identifier written to it must be of that instance, so another instance's
members can never be certified by this CA or listed in this instance's global configuration.

:class:`RegistrationService` orchestrates a registration: validate the CSRs at submission, and at approval have
the CA issue the certificates and record everything the approval implies in one store transaction.  The
management API and the ``korpu central`` CLI both go through it.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import json
import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bridge.errors import (
    ConfigError,
    Conflict,
    DuplicateRegistration,
    InvalidApiKey,
    InvalidCsr,
    InvalidIdentifier,
    InvalidRequest,
    InvalidState,
    NotFound,
)
from bridge.globalconf import (
    AccessRight,
    GlobalGroup,
    MemberInfo,
    SecurityServerInfo,
    ServiceInfo,
    ServiceType,
)
from bridge.identifiers import (
    ClientId,
    GlobalGroupId,
    MemberId,
    SecurityServerId,
    ServiceId,
    SubsystemId,
    check_code,
    parse_encoded,
)
from catalog.certregistry import CertKind, CertRecord
from catalog.db import Database, Migration, Transaction, utcnow

__all__ = [
    "MIGRATIONS",
    "REVOCATION_REASONS",
    "AccessRightRecord",
    "ApiKey",
    "CatalogContent",
    "CatalogService",
    "CatalogStore",
    "CertificateAuthority",
    "ClientRegistration",
    "Fee",
    "InstanceScoped",
    "Member",
    "PublicServiceMetadata",
    "RegistrationRequest",
    "RegistrationService",
    "RequestKind",
    "RequestState",
    "Role",
    "SecurityServer",
    "ServerRegistration",
    "ServiceSpec",
    "parse_client_encoded",
    "parse_subject",
]

# Schema -----------------------------------------------------------------------------------------------------

#: The catalog schema, as ordered migrations.  Never edit a released migration; append a new one.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial catalog",
        (
            """CREATE TABLE members (
                id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at TEXT NOT NULL)""",
            """CREATE TABLE subsystems (
                id TEXT PRIMARY KEY, member_id TEXT NOT NULL REFERENCES members(id), code TEXT NOT NULL,
                created_at TEXT NOT NULL)""",
            """CREATE TABLE servers (
                id TEXT PRIMARY KEY, owner_id TEXT NOT NULL REFERENCES members(id), address TEXT NOT NULL,
                created_at TEXT NOT NULL)""",
            """CREATE TABLE server_auth_certs (
                server_id TEXT NOT NULL REFERENCES servers(id) ON DELETE CASCADE, cert_hash TEXT NOT NULL UNIQUE,
                serial TEXT, PRIMARY KEY (server_id, cert_hash))""",
            # member_id / subsystem_id give the polymorphic client column real foreign keys, so a member or
            # subsystem that is still a server's client cannot be deleted.
            """CREATE TABLE server_clients (
                server_id TEXT NOT NULL REFERENCES servers(id) ON DELETE CASCADE, client_id TEXT NOT NULL,
                member_id TEXT NOT NULL REFERENCES members(id), subsystem_id TEXT REFERENCES subsystems(id),
                PRIMARY KEY (server_id, client_id))""",
            # pending_key is set only while a request is submitted; its UNIQUE constraint is what makes a second
            # pending request for the same server or client impossible, even under concurrent submissions.
            """CREATE TABLE registration_requests (
                id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, server_id TEXT NOT NULL,
                owner_name TEXT, address TEXT, auth_csr TEXT, sign_csr TEXT, client_codes TEXT NOT NULL,
                client_id TEXT, member_name TEXT, submitted_at TEXT NOT NULL, decided_at TEXT, decided_by TEXT,
                comment TEXT, auth_cert {blob}, sign_cert {blob}, pending_key TEXT UNIQUE)""",
            """CREATE TABLE certificates (
                serial TEXT PRIMARY KEY, kind TEXT NOT NULL, subject TEXT NOT NULL, der {blob} NOT NULL,
                not_after TEXT NOT NULL, issued_at TEXT NOT NULL, server_id TEXT, revoked_at TEXT,
                revocation_reason TEXT)""",
            """CREATE TABLE global_groups (
                id TEXT PRIMARY KEY, description TEXT NOT NULL, created_at TEXT NOT NULL)""",
            """CREATE TABLE global_group_members (
                group_id TEXT NOT NULL REFERENCES global_groups(id) ON DELETE CASCADE, client_id TEXT NOT NULL,
                member_id TEXT NOT NULL REFERENCES members(id), subsystem_id TEXT REFERENCES subsystems(id),
                PRIMARY KEY (group_id, client_id))""",
            """CREATE TABLE services (
                id TEXT PRIMARY KEY, provider_id TEXT NOT NULL REFERENCES subsystems(id), type TEXT NOT NULL,
                title TEXT NOT NULL, description TEXT NOT NULL, description_doc TEXT, description_url TEXT,
                legal_basis TEXT NOT NULL, required_documents TEXT NOT NULL, fee_amount TEXT, fee_currency TEXT,
                duration_text TEXT, duration_days INTEGER, channels TEXT NOT NULL, is_e_service INTEGER NOT NULL,
                responsible_id TEXT NOT NULL REFERENCES members(id), search_text TEXT NOT NULL,
                created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
            # '' rather than NULL for "any method / any path", so the UNIQUE constraint deduplicates them.
            """CREATE TABLE access_rights (
                id {serial_pk}, subject TEXT NOT NULL, service_id TEXT NOT NULL REFERENCES services(id),
                method TEXT NOT NULL, path TEXT NOT NULL, created_at TEXT NOT NULL,
                UNIQUE (subject, service_id, method, path))""",
            """CREATE TABLE api_keys (
                id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, roles TEXT NOT NULL, label TEXT NOT NULL,
                created_at TEXT NOT NULL, revoked_at TEXT)""",
            """CREATE TABLE counters (name TEXT PRIMARY KEY, value {bigint} NOT NULL)""",
            "INSERT INTO counters (name, value) VALUES ('globalconf_version', 0)",
            "CREATE INDEX idx_requests_state ON registration_requests (state)",
            "CREATE INDEX idx_certificates_server ON certificates (server_id)",
        ),
    ),
    # The catalog's identity: which X-Road instance it governs (name 'instance').  Recorded when a catalog is
    # created or first opened after this migration, and checked at every open, so a central server cannot be
    # pointed at another instance's database by mistake.
    Migration(
        2,
        "catalog identity",
        ("CREATE TABLE catalog_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",),
    ),
)

# Vocabulary ----------------------------------------------------------------------------------------------------


class Role(enum.StrEnum):
    """Management roles, after X-Road's central server user roles."""

    REGISTRATION_OFFICER = "registration-officer"
    SECURITY_OFFICER = "security-officer"
    SYSTEM_ADMINISTRATOR = "system-administrator"
    OBSERVER = "observer"


class RequestKind(enum.StrEnum):
    """What a registration request registers."""

    SERVER = "server"
    CLIENT = "client"


class RequestState(enum.StrEnum):
    """A registration request's life: ``submitted → approved | rejected``."""

    SUBMITTED = "submitted"
    APPROVED = "approved"
    REJECTED = "rejected"


_SERVICE_TYPES: tuple[ServiceType, ...] = ("REST", "SOAP", "OPENAPI3")
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
_HOST_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
_MAX_TEXT = 10_000
_MAX_NAME = 255
_MAX_DOC = 512 * 1024


def _text(value: object, field_name: str, *, max_len: int = _MAX_TEXT, required: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{field_name} must be a string")
    if required and not value.strip():
        raise InvalidRequest(f"{field_name} must not be empty")
    if len(value) > max_len:
        raise InvalidRequest(f"{field_name} is longer than {max_len} characters")
    if any(ord(ch) < 0x20 and ch not in "\t\r\n" for ch in value):
        raise InvalidRequest(f"{field_name} contains control characters")
    return value


def _check_address(address: object) -> str:
    """``host:port`` of a server proxy: a DNS name or IPv4 address, then a port from 1 to 65535."""
    if not isinstance(address, str):
        raise InvalidRequest("address must be a string")
    host, sep, port = address.rpartition(":")
    if not sep or not _HOST_RE.match(host) or len(host) > 253 or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRequest(f"address {address!r} must be host:port with a port from 1 to 65535")
    return address


def parse_client_encoded(text: str) -> ClientId:
    """Parse a client in encoded form (``MEMBER:…`` or ``SUBSYSTEM:…``)."""
    ident = parse_encoded(text)
    if not isinstance(ident, MemberId | SubsystemId):
        raise InvalidIdentifier(f"{text!r} is not a member or subsystem identifier")
    return ident


def parse_subject(text: str) -> ClientId | GlobalGroupId:
    """Parse an access-right subject in encoded form: a member, a subsystem or a global group."""
    ident = parse_encoded(text)
    if not isinstance(ident, MemberId | SubsystemId | GlobalGroupId):
        raise InvalidIdentifier(f"{text!r} is not a member, subsystem or global group identifier")
    return ident


def _ts(value: str | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(value)


def _cert_hash(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# Rows and inputs -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    """A registered member and the codes of its subsystems."""

    id: MemberId
    name: str
    subsystems: tuple[str, ...]
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class SecurityServer:
    """A registered security server: address, auth certificate hashes (hex SHA-256 of DER) and clients."""

    id: SecurityServerId
    address: str
    auth_cert_hashes: tuple[str, ...]
    clients: tuple[ClientId, ...]
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ServerRegistration:
    """A request to register a new security server; validated on construction."""

    server_id: SecurityServerId
    owner_name: str
    address: str
    auth_csr_pem: str
    sign_csr_pem: str
    client_codes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Field names in messages are the management API's JSON names, which is where these values come from.
        _text(self.owner_name, "owner_name", max_len=_MAX_NAME, required=True)
        _check_address(self.address)
        _text(self.auth_csr_pem, "auth_csr", max_len=64 * 1024, required=True)
        _text(self.sign_csr_pem, "sign_csr", max_len=64 * 1024, required=True)
        for code in self.client_codes:
            check_code(code, "clients[]")
        if len(set(self.client_codes)) != len(self.client_codes):
            raise InvalidRequest("clients must not repeat a code")


@dataclass(frozen=True, slots=True)
class ClientRegistration:
    """A request to register a subsystem as a client of an existing security server.

    ``member_name`` is needed only when the subsystem's member is not yet registered.
    """

    server_id: SecurityServerId
    client: SubsystemId
    member_name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.client, SubsystemId):
            raise InvalidIdentifier("client must be a subsystem")
        if self.member_name is not None:
            _text(self.member_name, "member_name", max_len=_MAX_NAME, required=True)


@dataclass(frozen=True, slots=True)
class RegistrationRequest:
    """A registration request and, once approved, the certificates issued for it (DER)."""

    id: str
    kind: RequestKind
    state: RequestState
    server_id: SecurityServerId
    submitted_at: dt.datetime
    owner_name: str | None = None
    address: str | None = None
    auth_csr_pem: str | None = None
    sign_csr_pem: str | None = None
    client_codes: tuple[str, ...] = ()
    client: SubsystemId | None = None
    member_name: str | None = None
    decided_at: dt.datetime | None = None
    decided_by: str | None = None
    comment: str | None = None
    auth_cert_der: bytes | None = None
    sign_cert_der: bytes | None = None


@dataclass(frozen=True, slots=True)
class Fee:
    """A service fee: a non-negative decimal amount in an ISO 4217 currency."""

    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        if not isinstance(self.amount, Decimal) or not self.amount.is_finite() or self.amount < 0:
            raise InvalidRequest("metadata.fee.amount must be a non-negative decimal number")
        if not isinstance(self.currency, str) or not _CURRENCY_RE.match(self.currency):
            raise InvalidRequest("metadata.fee.currency must be a three-letter ISO 4217 code such as AZN")


@dataclass(frozen=True, slots=True)
class PublicServiceMetadata:
    """What the Electronic Registry of Public Services records about a service.

    ``fee`` ``None`` means free of charge; ``responsible_agency`` ``None`` means the provider's member.
    """

    legal_basis: str = ""
    required_documents: tuple[str, ...] = ()
    fee: Fee | None = None
    duration_text: str | None = None
    duration_days: int | None = None
    channels: tuple[str, ...] = ()
    is_e_service: bool = False
    responsible_agency: MemberId | None = None

    def __post_init__(self) -> None:
        _text(self.legal_basis, "metadata.legal_basis")
        for doc in self.required_documents:
            _text(doc, "metadata.required_documents[]", max_len=_MAX_NAME, required=True)
        for channel in self.channels:
            _text(channel, "metadata.channels[]", max_len=64, required=True)
        if self.duration_text is not None:
            _text(self.duration_text, "metadata.duration_text", max_len=_MAX_NAME)
        if self.duration_days is not None and (
            isinstance(self.duration_days, bool) or not isinstance(self.duration_days, int) or self.duration_days < 0
        ):
            raise InvalidRequest("metadata.duration_days must be a non-negative integer")
        if not isinstance(self.is_e_service, bool):
            raise InvalidRequest("metadata.is_e_service must be a boolean")


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A service as its maintainer describes it: identity, type, texts, description document and metadata."""

    id: ServiceId
    type: ServiceType
    title: str
    description: str = ""
    description_doc: str | None = None
    description_url: str | None = None
    metadata: PublicServiceMetadata = field(default_factory=PublicServiceMetadata)

    def __post_init__(self) -> None:
        if self.type not in _SERVICE_TYPES:
            raise InvalidRequest(f"type must be one of {', '.join(_SERVICE_TYPES)}")
        _text(self.title, "title", max_len=_MAX_NAME, required=True)
        _text(self.description, "description")
        if self.description_doc is not None:
            _text(self.description_doc, "description_document", max_len=_MAX_DOC)
        if self.description_url is not None:
            _text(self.description_url, "description_url", max_len=2048, required=True)
            if not self.description_url.startswith(("https://", "http://")):
                raise InvalidRequest("description_url must be an http(s) URL")

    def search_text(self) -> str:
        """The case-folded text that ``?q=`` searches: codes, title, description and the metadata."""
        meta = self.metadata
        parts = [
            self.id.service_code,
            self.title,
            self.description,
            meta.legal_basis,
            *meta.required_documents,
            *meta.channels,
            meta.duration_text or "",
            "e-service" if meta.is_e_service else "",
            "free" if meta.fee is None else f"{meta.fee.amount} {meta.fee.currency}",
        ]
        return _fold("\n".join(p for p in parts if p))


@dataclass(frozen=True, slots=True)
class CatalogService:
    """A service in the catalog, with when it was created and last updated."""

    spec: ServiceSpec
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def id(self) -> ServiceId:
        """The service identifier."""
        return self.spec.id


@dataclass(frozen=True, slots=True)
class AccessRightRecord:
    """A stored access right and its identifier (for revocation)."""

    id: int
    right: AccessRight
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A management API key (never its secret)."""

    key_id: str
    roles: frozenset[Role]
    label: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class CatalogContent:
    """The catalog part of global configuration, in a deterministic order."""

    members: tuple[MemberInfo, ...]
    servers: tuple[SecurityServerInfo, ...]
    groups: tuple[GlobalGroup, ...]
    services: tuple[ServiceInfo, ...]
    access_rights: tuple[AccessRight, ...]


class InstanceScoped(Protocol):
    """Any identifier that names its X-Road instance (members, subsystems, servers, groups, services)."""

    @property
    def instance(self) -> str:
        """The X-Road instance code."""
        ...

    def path(self) -> str:
        """The identifier in path form."""
        ...


# The store -----------------------------------------------------------------------------------------------------

_REQUEST_COLUMNS = (
    "id, kind, state, server_id, owner_name, address, auth_csr, sign_csr, client_codes, client_id, member_name,"
    " submitted_at, decided_at, decided_by, comment, auth_cert, sign_cert"
)
_SERVICE_COLUMNS = (
    "id, type, title, description, description_doc, description_url, legal_basis, required_documents, fee_amount,"
    " fee_currency, duration_text, duration_days, channels, is_e_service, responsible_id, created_at, updated_at"
)
_CERT_COLUMNS = "serial, kind, subject, der, not_after, revoked_at, revocation_reason"


class CatalogStore:
    """The catalog of one X-Road instance.  Get one with :meth:`create` (a new catalog) or :meth:`open`.

    Every identifier entering the catalog must belong to :attr:`instance`; others are
    :class:`~bridge.errors.InvalidIdentifier`.
    """

    def __init__(self, db: Database, instance: str) -> None:
        self._db = db
        self._instance = instance

    @classmethod
    def open(cls, url: str, *, instance: str) -> CatalogStore:
        """Open the catalog of ``instance`` at ``url`` (``sqlite:///…`` or ``postgresql://…``), migrating its schema.

        An empty database becomes a catalog of ``instance``; a catalog records its instance in ``catalog_meta``
        and any later open with another instance is a :class:`~bridge.errors.ConfigError`.
        """
        check_code(instance, "instance")
        db = Database(url)
        with db.transaction() as tx:
            db.apply_migrations(tx, MIGRATIONS)
            _claim_instance(tx, instance)
        return cls(db, instance)

    @classmethod
    def create(
        cls,
        url: str,
        *,
        instance: str,
        certificates: Iterable[tuple[CertKind, x509.Certificate]] = (),
        admin_label: str = "initial administrator",
    ) -> tuple[CatalogStore, str]:
        """Create the catalog of ``instance`` in a database that holds none; return it and an administrator key.

        Steps, all in one transaction so that a failure anywhere leaves the database exactly as it was (both
        backends have transactional DDL): (1) refuse a database that already holds a catalog — ours or another
        instance's — with :class:`~bridge.errors.ConfigError`; (2) create the schema; (3) record the instance;
        (4) record ``certificates`` (the CA's own); (5) create a system-administrator API key, whose secret is
        returned here only.
        """
        check_code(instance, "instance")
        _check_label(admin_label)
        db = Database(url)
        with db.transaction() as tx:
            # (1) Under the schema lock, so two concurrent inits cannot both see an empty database.
            db.lock_schema(tx)
            if tx.table_exists("catalog_meta"):
                recorded = tx.scalar("SELECT value FROM catalog_meta WHERE name = 'instance'")
                raise ConfigError(
                    f"the database already holds a catalog for instance {recorded}; refusing to initialise over it"
                )
            if tx.table_exists("schema_migrations"):
                raise ConfigError("the database already holds a catalog; refusing to initialise over it")
            # (2) and (3)
            db.apply_migrations(tx, MIGRATIONS)
            _claim_instance(tx, instance)
            # (4)
            for kind, cert in certificates:
                cls._insert_certificate(tx, CertKind(kind), cert, None)
            # (5)
            secret = _insert_api_key(tx, frozenset({Role.SYSTEM_ADMINISTRATOR}), admin_label)
        return cls(db, instance), secret

    @property
    def db(self) -> Database:
        """The underlying database (for tools and tests)."""
        return self._db

    @property
    def instance(self) -> str:
        """Code of the X-Road instance this catalog governs."""
        return self._instance

    def check_instance(self, ident: InstanceScoped, what: str) -> None:
        """Raise :class:`~bridge.errors.InvalidIdentifier` unless ``ident`` belongs to this catalog's instance.

        ``what`` names the identifier in the message (``member``, or a JSON field such as ``server_id``).
        """
        if ident.instance != self._instance:
            raise InvalidIdentifier(
                f"{what} {ident.path()} belongs to X-Road instance {ident.instance}, "
                f"but this catalog governs instance {self._instance}"
            )

    def close(self) -> None:
        """Release resources (nothing today: connections are per transaction; kept for explicit lifetimes)."""

    def schema_version(self) -> int:
        """The highest applied migration."""
        with self._db.transaction(write=False) as tx:
            return int(tx.scalar("SELECT MAX(version) FROM schema_migrations") or 0)

    # Members and subsystems ----------------------------------------------------------------------------------

    def create_member(self, member_id: MemberId, name: str) -> Member:
        """Register a member; :class:`DuplicateRegistration` if it already is."""
        self.check_instance(member_id, "member")
        _text(name, "name", max_len=_MAX_NAME, required=True)
        with self._db.transaction() as tx:
            if self._member_exists(tx, member_id):
                raise DuplicateRegistration(f"member {member_id.path()} is already registered")
            self._insert_member(tx, member_id, name, utcnow())
            return self._member(tx, member_id)

    def member(self, member_id: MemberId) -> Member | None:
        """The member, or ``None``."""
        with self._db.transaction(write=False) as tx:
            if not self._member_exists(tx, member_id):
                return None
            return self._member(tx, member_id)

    def members(self) -> list[Member]:
        """All members, ordered by identifier."""
        with self._db.transaction(write=False) as tx:
            subs: dict[str, list[str]] = {}
            for member_id, code in tx.query("SELECT member_id, code FROM subsystems"):
                subs.setdefault(member_id, []).append(code)
            rows = tx.query("SELECT id, name, created_at FROM members")
        members = [
            Member(MemberId.parse(mid), name, tuple(sorted(subs.get(mid, []))), dt.datetime.fromisoformat(created))
            for mid, name, created in rows
        ]
        return sorted(members, key=lambda m: m.id)

    def delete_member(self, member_id: MemberId) -> None:
        """Delete a member that nothing uses any more (no subsystems, servers, clients, groups or services)."""
        with self._db.transaction() as tx:
            if not self._member_exists(tx, member_id):
                raise NotFound(f"member {member_id.path()} is not registered")
            key = member_id.path()
            uses = {
                "subsystems": "SELECT COUNT(*) FROM subsystems WHERE member_id = ?",
                "security servers": "SELECT COUNT(*) FROM servers WHERE owner_id = ?",
                "server client registrations": "SELECT COUNT(*) FROM server_clients WHERE member_id = ?",
                "global groups": "SELECT COUNT(*) FROM global_group_members WHERE member_id = ?",
                "services": "SELECT COUNT(*) FROM services WHERE responsible_id = ?",
            }
            used = [what for what, sql in uses.items() if int(tx.scalar(sql, (key,))) > 0]
            if int(tx.scalar("SELECT COUNT(*) FROM access_rights WHERE subject = ?", (member_id.encoded(),))) > 0:
                used.append("access rights")
            if used:
                raise Conflict(f"member {key} is still used by {', '.join(used)}")
            tx.execute("DELETE FROM members WHERE id = ?", (key,), conflict=Conflict(f"member {key} is in use"))

    def create_subsystem(self, subsystem_id: SubsystemId) -> SubsystemId:
        """Register a subsystem of a registered member."""
        self.check_instance(subsystem_id, "subsystem")
        with self._db.transaction() as tx:
            if not self._member_exists(tx, subsystem_id.member):
                raise NotFound(f"member {subsystem_id.member.path()} is not registered")
            if self._subsystem_exists(tx, subsystem_id):
                raise DuplicateRegistration(f"subsystem {subsystem_id.path()} is already registered")
            self._insert_subsystem(tx, subsystem_id, utcnow())
        return subsystem_id

    def subsystems(self, member_id: MemberId | None = None) -> list[SubsystemId]:
        """All subsystems (of one member, if given), ordered by identifier."""
        with self._db.transaction(write=False) as tx:
            if member_id is None:
                rows = tx.query("SELECT id FROM subsystems")
            else:
                rows = tx.query("SELECT id FROM subsystems WHERE member_id = ?", (member_id.path(),))
        return sorted(SubsystemId.parse(r[0]) for r in rows)

    def delete_subsystem(self, subsystem_id: SubsystemId) -> None:
        """Delete a subsystem that provides no services and is no server's client, group member or subject."""
        key = subsystem_id.path()
        with self._db.transaction() as tx:
            if not self._subsystem_exists(tx, subsystem_id):
                raise NotFound(f"subsystem {key} is not registered")
            uses = {
                "services": "SELECT COUNT(*) FROM services WHERE provider_id = ?",
                "server client registrations": "SELECT COUNT(*) FROM server_clients WHERE subsystem_id = ?",
                "global groups": "SELECT COUNT(*) FROM global_group_members WHERE subsystem_id = ?",
            }
            used = [what for what, sql in uses.items() if int(tx.scalar(sql, (key,))) > 0]
            if int(tx.scalar("SELECT COUNT(*) FROM access_rights WHERE subject = ?", (subsystem_id.encoded(),))) > 0:
                used.append("access rights")
            if used:
                raise Conflict(f"subsystem {key} is still used by {', '.join(used)}")
            tx.execute("DELETE FROM subsystems WHERE id = ?", (key,), conflict=Conflict(f"subsystem {key} is in use"))

    # Security servers ----------------------------------------------------------------------------------------

    def server(self, server_id: SecurityServerId) -> SecurityServer | None:
        """The registered security server, or ``None``."""
        with self._db.transaction(write=False) as tx:
            servers = self._servers(tx, server_id)
        return servers[0] if servers else None

    def servers(self) -> list[SecurityServer]:
        """All registered security servers, ordered by identifier."""
        with self._db.transaction(write=False) as tx:
            return self._servers(tx, None)

    def revoke_server(self, server_id: SecurityServerId, reason: str = "cessationOfOperation") -> list[CertRecord]:
        """Remove a server from the catalog (and so from global configuration) and revoke its certificates.

        Returns the certificate records revoked by this call.  The member, its subsystems and the history of
        registration requests and certificates stay.
        """
        reason = _check_reason(reason)
        key = server_id.path()
        with self._db.transaction() as tx:
            if tx.one("SELECT 1 FROM servers WHERE id = ?", (key,)) is None:
                raise NotFound(f"security server {key} is not registered")
            now = utcnow()
            serials = [r[0] for r in tx.query("SELECT serial FROM certificates WHERE server_id = ?", (key,))]
            serials += [
                r[0] for r in tx.query("SELECT serial FROM server_auth_certs WHERE server_id = ?", (key,)) if r[0]
            ]
            revoked: list[CertRecord] = []
            for serial in sorted(set(serials), key=int):
                if tx.execute(
                    "UPDATE certificates SET revoked_at = ?, revocation_reason = ?"
                    " WHERE serial = ? AND revoked_at IS NULL",
                    (now, reason, serial),
                ):
                    record = self._certificate(tx, int(serial))
                    assert record is not None  # it was just updated in this transaction
                    revoked.append(record)
            tx.execute("DELETE FROM server_clients WHERE server_id = ?", (key,))
            tx.execute("DELETE FROM server_auth_certs WHERE server_id = ?", (key,))
            tx.execute("DELETE FROM servers WHERE id = ?", (key,))
        return revoked

    # Registration requests -----------------------------------------------------------------------------------

    def submit_registration(self, registration: ServerRegistration | ClientRegistration) -> RegistrationRequest:
        """Record a new registration request in state ``submitted``.

        :class:`DuplicateRegistration` if the server (or the client on that server) is already registered or a
        submitted request for it is pending.
        """
        self.check_instance(registration.server_id, "security server")
        if isinstance(registration, ClientRegistration):
            self.check_instance(registration.client, "client")
        request_id = str(uuid.uuid4())
        now = utcnow()
        with self._db.transaction() as tx:
            server_key = registration.server_id.path()
            server_exists = tx.one("SELECT 1 FROM servers WHERE id = ?", (server_key,)) is not None
            if isinstance(registration, ServerRegistration):
                if server_exists:
                    raise DuplicateRegistration(f"security server {server_key} is already registered")
                pending_key = f"server:{server_key}"
                duplicate = DuplicateRegistration(f"a registration request for {server_key} is already pending")
                values: tuple[Any, ...] = (
                    request_id,
                    RequestKind.SERVER.value,
                    RequestState.SUBMITTED.value,
                    server_key,
                    registration.owner_name,
                    registration.address,
                    registration.auth_csr_pem,
                    registration.sign_csr_pem,
                    json.dumps(list(registration.client_codes)),
                    None,
                    None,
                    now,
                    pending_key,
                )
            else:
                client = registration.client
                if not server_exists:
                    raise NotFound(f"security server {server_key} is not registered")
                if tx.one(
                    "SELECT 1 FROM server_clients WHERE server_id = ? AND client_id = ?", (server_key, client.encoded())
                ):
                    raise DuplicateRegistration(f"{client.path()} is already a client of {server_key}")
                if registration.member_name is None and not self._member_exists(tx, client.member):
                    raise InvalidRequest(f"member_name is required: member {client.member.path()} is not registered")
                pending_key = f"client:{server_key}|{client.encoded()}"
                duplicate = DuplicateRegistration(
                    f"a registration request for {client.path()} on {server_key} is already pending"
                )
                values = (
                    request_id,
                    RequestKind.CLIENT.value,
                    RequestState.SUBMITTED.value,
                    server_key,
                    None,
                    None,
                    None,
                    None,
                    "[]",
                    client.encoded(),
                    registration.member_name,
                    now,
                    pending_key,
                )
            if tx.one("SELECT 1 FROM registration_requests WHERE pending_key = ?", (pending_key,)):
                raise duplicate
            tx.execute(
                "INSERT INTO registration_requests (id, kind, state, server_id, owner_name, address, auth_csr,"
                " sign_csr, client_codes, client_id, member_name, submitted_at, pending_key)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
                conflict=duplicate,
            )
            return self._request(tx, request_id)

    def registration_request(self, request_id: str) -> RegistrationRequest | None:
        """The registration request with that id, or ``None``."""
        if not _is_uuid(request_id):
            return None
        with self._db.transaction(write=False) as tx:
            row = tx.one(f"SELECT {_REQUEST_COLUMNS} FROM registration_requests WHERE id = ?", (request_id,))  # noqa: S608
        return None if row is None else _request_from_row(row)

    def registration_requests(self, state: RequestState | None = None) -> list[RegistrationRequest]:
        """Registration requests (in one state, if given), oldest first."""
        with self._db.transaction(write=False) as tx:
            if state is None:
                rows = tx.query(f"SELECT {_REQUEST_COLUMNS} FROM registration_requests")  # noqa: S608
            else:
                rows = tx.query(
                    f"SELECT {_REQUEST_COLUMNS} FROM registration_requests WHERE state = ?",  # noqa: S608
                    (RequestState(state).value,),
                )
        return sorted((_request_from_row(r) for r in rows), key=lambda r: (r.submitted_at, r.id))

    def list_registration_requests(self, state: RequestState | str | None = None) -> list[RegistrationRequest]:
        """Same as :meth:`registration_requests`, accepting the state as text (``"submitted"``)."""
        return self.registration_requests(None if state is None else RequestState(state))

    def approve_registration(
        self,
        request_id: str,
        *,
        decided_by: str,
        comment: str = "",
        auth_cert: x509.Certificate | None = None,
        sign_cert: x509.Certificate | None = None,
    ) -> RegistrationRequest:
        """Approve a submitted request, recording everything it implies in one transaction.

        For a ``server`` request, ``auth_cert`` and ``sign_cert`` are the certificates the CA has already
        issued; the transaction records the request's new state, the member (created with the request's name if
        absent), the owner's subsystems, the server, its auth certificate hash, its clients and both certificate
        records.  For a ``client`` request it records the member and subsystem if absent and the client
        registration.  Anything failing leaves the catalog exactly as it was.
        """
        _text(comment, "comment")
        with self._db.transaction() as tx:
            request = self._request(tx, request_id)
            if request.state is not RequestState.SUBMITTED:
                raise InvalidState(f"registration request {request_id} is {request.state}, not submitted")
            # Requests recorded before identifiers were checked at submission could name another instance.
            self._check_request_instance(request)
            if request.kind is RequestKind.SERVER and (auth_cert is None or sign_cert is None):
                raise InvalidRequest("approving a server registration needs its issued auth and sign certificates")
            now = utcnow()
            auth_der = None if auth_cert is None else _der(auth_cert)
            sign_der = None if sign_cert is None else _der(sign_cert)
            # The state condition makes a concurrent second approval update nothing, so it fails below instead of
            # recording a second server.
            changed = tx.execute(
                "UPDATE registration_requests SET state = ?, pending_key = NULL, decided_at = ?, decided_by = ?,"
                " comment = ?, auth_cert = ?, sign_cert = ? WHERE id = ? AND state = ?",
                (
                    RequestState.APPROVED.value,
                    now,
                    decided_by,
                    comment,
                    auth_der,
                    sign_der,
                    request_id,
                    RequestState.SUBMITTED.value,
                ),
            )
            if changed != 1:
                raise InvalidState(f"registration request {request_id} was decided concurrently")
            if request.kind is RequestKind.SERVER:
                assert auth_cert is not None  # checked above
                assert sign_cert is not None
                self._register_server(tx, request, auth_cert, sign_cert, now)
            else:
                self._register_client(tx, request, now)
            return self._request(tx, request_id)

    def reject_registration(self, request_id: str, *, decided_by: str, comment: str = "") -> RegistrationRequest:
        """Reject a submitted request (:class:`InvalidState` if it is already decided)."""
        _text(comment, "comment")
        with self._db.transaction() as tx:
            request = self._request(tx, request_id)
            if request.state is not RequestState.SUBMITTED:
                raise InvalidState(f"registration request {request_id} is {request.state}, not submitted")
            changed = tx.execute(
                "UPDATE registration_requests SET state = ?, pending_key = NULL, decided_at = ?, decided_by = ?,"
                " comment = ? WHERE id = ? AND state = ?",
                (RequestState.REJECTED.value, utcnow(), decided_by, comment, request_id, RequestState.SUBMITTED.value),
            )
            if changed != 1:
                raise InvalidState(f"registration request {request_id} was decided concurrently")
            return self._request(tx, request_id)

    # Certificates --------------------------------------------------------------------------------------------

    def record_certificate(
        self, kind: CertKind, cert: x509.Certificate, *, server_id: SecurityServerId | None = None
    ) -> CertRecord:
        """Record a certificate the CA issued (:class:`Conflict` if its serial is already recorded)."""
        with self._db.transaction() as tx:
            self._insert_certificate(tx, CertKind(kind), cert, None if server_id is None else server_id.path())
            record = self._certificate(tx, cert.serial_number)
        assert record is not None  # inserted in this transaction
        return record

    def certificate(self, serial: int) -> CertRecord | None:
        """The record of the certificate with that serial number, or ``None`` if this CA never issued it."""
        with self._db.transaction(write=False) as tx:
            return self._certificate(tx, serial)

    def certificates(self, kind: CertKind | None = None) -> list[CertRecord]:
        """All certificate records (of one kind, if given), by serial number."""
        with self._db.transaction(write=False) as tx:
            if kind is None:
                rows = tx.query(f"SELECT {_CERT_COLUMNS} FROM certificates")  # noqa: S608
            else:
                rows = tx.query(
                    f"SELECT {_CERT_COLUMNS} FROM certificates WHERE kind = ?",  # noqa: S608
                    (CertKind(kind).value,),
                )
        return sorted((_cert_from_row(r) for r in rows), key=lambda c: c.serial)

    def revoke_certificate(self, serial: int, reason: str) -> CertRecord:
        """Mark a certificate revoked now for ``reason`` (an RFC 5280 CRLReason name such as ``keyCompromise``).

        :class:`NotFound` if never issued, :class:`InvalidState` if already revoked.
        """
        reason = _check_reason(reason)
        with self._db.transaction() as tx:
            record = self._certificate(tx, serial)
            if record is None:
                raise NotFound(f"no certificate with serial number {serial} was issued")
            if record.revoked:
                raise InvalidState(f"certificate {serial} is already revoked")
            tx.execute(
                "UPDATE certificates SET revoked_at = ?, revocation_reason = ? WHERE serial = ?",
                (utcnow(), reason, str(serial)),
            )
            updated = self._certificate(tx, serial)
        assert updated is not None
        return updated

    # Global groups -------------------------------------------------------------------------------------------

    def create_group(self, group_id: GlobalGroupId, description: str) -> GlobalGroup:
        """Create an empty global group (:class:`Conflict` if it exists)."""
        self.check_instance(group_id, "global group")
        _text(description, "description", max_len=_MAX_NAME)
        with self._db.transaction() as tx:
            if tx.one("SELECT 1 FROM global_groups WHERE id = ?", (group_id.path(),)):
                raise Conflict(f"global group {group_id.path()} already exists")
            tx.execute(
                "INSERT INTO global_groups (id, description, created_at) VALUES (?, ?, ?)",
                (group_id.path(), description, utcnow()),
                conflict=Conflict(f"global group {group_id.path()} already exists"),
            )
            return self._group(tx, group_id)

    def update_group(self, group_id: GlobalGroupId, description: str) -> GlobalGroup:
        """Change a global group's description."""
        _text(description, "description", max_len=_MAX_NAME)
        with self._db.transaction() as tx:
            if not tx.execute("UPDATE global_groups SET description = ? WHERE id = ?", (description, group_id.path())):
                raise NotFound(f"global group {group_id.path()} does not exist")
            return self._group(tx, group_id)

    def delete_group(self, group_id: GlobalGroupId) -> None:
        """Delete a global group that no access right names."""
        with self._db.transaction() as tx:
            if tx.one("SELECT 1 FROM global_groups WHERE id = ?", (group_id.path(),)) is None:
                raise NotFound(f"global group {group_id.path()} does not exist")
            if int(tx.scalar("SELECT COUNT(*) FROM access_rights WHERE subject = ?", (group_id.encoded(),))) > 0:
                raise Conflict(f"global group {group_id.path()} is still named by access rights")
            tx.execute("DELETE FROM global_groups WHERE id = ?", (group_id.path(),))

    def group(self, group_id: GlobalGroupId) -> GlobalGroup | None:
        """The global group, or ``None``."""
        with self._db.transaction(write=False) as tx:
            if tx.one("SELECT 1 FROM global_groups WHERE id = ?", (group_id.path(),)) is None:
                return None
            return self._group(tx, group_id)

    def groups(self) -> list[GlobalGroup]:
        """All global groups with their members, ordered by identifier."""
        with self._db.transaction(write=False) as tx:
            return self._groups(tx)

    def add_group_member(self, group_id: GlobalGroupId, client: ClientId) -> GlobalGroup:
        """Add a registered member or subsystem to a group (:class:`Conflict` if it is already in it)."""
        self.check_instance(group_id, "global group")
        self.check_instance(client, "client")
        with self._db.transaction() as tx:
            if tx.one("SELECT 1 FROM global_groups WHERE id = ?", (group_id.path(),)) is None:
                raise NotFound(f"global group {group_id.path()} does not exist")
            self._require_client(tx, client)
            if tx.one(
                "SELECT 1 FROM global_group_members WHERE group_id = ? AND client_id = ?",
                (group_id.path(), client.encoded()),
            ):
                raise Conflict(f"{client.path()} is already a member of {group_id.path()}")
            tx.execute(
                "INSERT INTO global_group_members (group_id, client_id, member_id, subsystem_id) VALUES (?, ?, ?, ?)",
                (group_id.path(), client.encoded(), client.member.path(), _subsystem_key(client)),
                conflict=Conflict(f"{client.path()} is already a member of {group_id.path()}"),
            )
            return self._group(tx, group_id)

    def remove_group_member(self, group_id: GlobalGroupId, client: ClientId) -> GlobalGroup:
        """Remove a client from a group (:class:`NotFound` if it is not in it)."""
        with self._db.transaction() as tx:
            if not tx.execute(
                "DELETE FROM global_group_members WHERE group_id = ? AND client_id = ?",
                (group_id.path(), client.encoded()),
            ):
                raise NotFound(f"{client.path()} is not a member of global group {group_id.path()}")
            return self._group(tx, group_id)

    # Services ------------------------------------------------------------------------------------------------

    def create_service(self, spec: ServiceSpec) -> CatalogService:
        """Add a service to the catalog; its provider subsystem must be registered."""
        self._check_spec_instance(spec)
        with self._db.transaction() as tx:
            if tx.one("SELECT 1 FROM services WHERE id = ?", (spec.id.path(),)):
                raise Conflict(f"service {spec.id.path()} is already in the catalog")
            self._check_service_refs(tx, spec)
            now = utcnow()
            tx.execute(
                f"INSERT INTO services ({_SERVICE_COLUMNS}, provider_id, search_text)"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*_service_values(spec), now, now, spec.id.provider.path(), spec.search_text()),
                conflict=Conflict(f"service {spec.id.path()} is already in the catalog"),
            )
            return self._service(tx, spec.id)

    def update_service(self, spec: ServiceSpec) -> CatalogService:
        """Replace a catalogued service's type, texts, description document and metadata."""
        self._check_spec_instance(spec)
        with self._db.transaction() as tx:
            if tx.one("SELECT 1 FROM services WHERE id = ?", (spec.id.path(),)) is None:
                raise NotFound(f"service {spec.id.path()} is not in the catalog")
            self._check_service_refs(tx, spec)
            values = _service_values(spec)
            tx.execute(
                "UPDATE services SET type = ?, title = ?, description = ?, description_doc = ?, description_url = ?,"
                " legal_basis = ?, required_documents = ?, fee_amount = ?, fee_currency = ?, duration_text = ?,"
                " duration_days = ?, channels = ?, is_e_service = ?, responsible_id = ?, search_text = ?,"
                " updated_at = ? WHERE id = ?",
                (*values[1:], spec.search_text(), utcnow(), spec.id.path()),
            )
            return self._service(tx, spec.id)

    def delete_service(self, service_id: ServiceId) -> None:
        """Remove a service and the access rights granted to it."""
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM access_rights WHERE service_id = ?", (service_id.path(),))
            if not tx.execute("DELETE FROM services WHERE id = ?", (service_id.path(),)):
                raise NotFound(f"service {service_id.path()} is not in the catalog")

    def service(self, service_id: ServiceId) -> CatalogService | None:
        """The catalogued service, or ``None``."""
        with self._db.transaction(write=False) as tx:
            if tx.one("SELECT 1 FROM services WHERE id = ?", (service_id.path(),)) is None:
                return None
            return self._service(tx, service_id)

    def services(self, query: str | None = None, *, provider: SubsystemId | None = None) -> list[CatalogService]:
        """Catalogued services, by identifier; ``query`` keeps those whose text contains every word of it.

        The search is case-insensitive over the service code, title, description and public-service metadata.
        """
        sql = f"SELECT {_SERVICE_COLUMNS} FROM services WHERE 1 = 1"  # noqa: S608
        params: list[Any] = []
        if provider is not None:
            sql += " AND provider_id = ?"
            params.append(provider.path())
        for word in _fold(query or "").split()[:10]:
            # LIKE wildcards in the user's words are escaped so they match literally.
            escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            sql += " AND search_text LIKE ? ESCAPE '\\'"
            params.append(f"%{escaped}%")
        with self._db.transaction(write=False) as tx:
            rows = tx.query(sql, params)
        return sorted((_service_from_row(r) for r in rows), key=lambda s: s.id)

    # Access rights -------------------------------------------------------------------------------------------

    def grant_access(self, right: AccessRight) -> AccessRightRecord:
        """Grant an access right; granting an existing one again returns the existing record."""
        self.check_instance(right.subject, "subject")
        self.check_instance(right.service, "service")
        method = "" if right.method is None else right.method
        path = "" if right.path is None else right.path
        if method and method not in _HTTP_METHODS:
            raise InvalidRequest(f"method must be one of {', '.join(sorted(_HTTP_METHODS))}")
        if path and (not path.startswith("/") or len(path) > 1024 or any(c.isspace() for c in path)):
            raise InvalidRequest("path must start with '/', contain no whitespace and be at most 1024 characters")
        with self._db.transaction() as tx:
            service_type = tx.scalar("SELECT type FROM services WHERE id = ?", (right.service.path(),))
            if service_type is None:
                raise NotFound(f"service {right.service.path()} is not in the catalog")
            if service_type == "SOAP" and (method or path):
                raise InvalidRequest("method and path apply only to REST services")
            if isinstance(right.subject, GlobalGroupId):
                if tx.one("SELECT 1 FROM global_groups WHERE id = ?", (right.subject.path(),)) is None:
                    raise NotFound(f"global group {right.subject.path()} does not exist")
            else:
                self._require_client(tx, right.subject)
            key = (right.subject.encoded(), right.service.path(), method, path)
            where = "subject = ? AND service_id = ? AND method = ? AND path = ?"
            existing = tx.one(f"SELECT id, created_at FROM access_rights WHERE {where}", key)  # noqa: S608
            if existing is None:
                tx.execute(
                    "INSERT INTO access_rights (subject, service_id, method, path, created_at) VALUES (?, ?, ?, ?, ?)",
                    (*key, utcnow()),
                    conflict=Conflict("the access right was granted concurrently"),
                )
                existing = tx.one(f"SELECT id, created_at FROM access_rights WHERE {where}", key)  # noqa: S608
            assert existing is not None
        stored = AccessRight(right.subject, right.service, method or None, path or None)
        return AccessRightRecord(int(existing[0]), stored, dt.datetime.fromisoformat(existing[1]))

    def access_rights(
        self, *, service: ServiceId | None = None, subject: ClientId | GlobalGroupId | None = None
    ) -> list[AccessRightRecord]:
        """Access rights, optionally for one service and/or one subject, by id."""
        sql = "SELECT id, subject, service_id, method, path, created_at FROM access_rights WHERE 1 = 1"
        params: list[Any] = []
        if service is not None:
            sql += " AND service_id = ?"
            params.append(service.path())
        if subject is not None:
            sql += " AND subject = ?"
            params.append(subject.encoded())
        with self._db.transaction(write=False) as tx:
            rows = tx.query(sql, params)
        return sorted((_access_from_row(r) for r in rows), key=lambda a: a.id)

    def revoke_access(self, right_id: int) -> None:
        """Remove the access right with that id."""
        with self._db.transaction() as tx:
            if not tx.execute("DELETE FROM access_rights WHERE id = ?", (right_id,)):
                raise NotFound(f"access right {right_id} does not exist")

    # API keys ------------------------------------------------------------------------------------------------

    def create_api_key(self, roles: Iterable[Role | str], label: str = "") -> tuple[str, str]:
        """Create an API key with ``roles``; return ``(key_id, secret)``.

        The secret is ``<key_id>.<random token>``; only its SHA-256 is stored, so it is shown once, here.
        """
        try:
            role_set = frozenset(Role(r) for r in roles)
        except ValueError:
            raise InvalidRequest(f"roles must be among {', '.join(r.value for r in Role)}") from None
        if not role_set:
            raise InvalidRequest("an API key needs at least one role")
        _check_label(label)
        with self._db.transaction() as tx:
            secret = _insert_api_key(tx, role_set, label)
        return secret.partition(".")[0], secret

    def authenticate(self, secret: str) -> ApiKey:
        """The active API key whose secret this is; :class:`InvalidApiKey` otherwise."""
        # Secrets are printable ASCII; anything else (non-UTF-8 header bytes arrive as surrogates) is no key, and
        # refusing it here keeps it away from the hash, which would fail to encode it.
        if not secret.isascii() or not secret.isprintable():
            raise InvalidApiKey("the API key is not valid")
        key_id, dot, _ = secret.partition(".")
        if not dot or not key_id:
            raise InvalidApiKey("the API key is not valid")
        with self._db.transaction(write=False) as tx:
            row = tx.one(
                "SELECT id, roles, label, created_at, revoked_at, secret_hash FROM api_keys WHERE id = ?", (key_id,)
            )
        # Compare digests in constant time, and compare even when the id is unknown, so timing says nothing about
        # which ids exist.
        stored_hash = row[5] if row is not None else "0" * 64
        matches = hmac.compare_digest(_secret_hash(secret), stored_hash)
        if row is None or not matches or row[4] is not None:
            raise InvalidApiKey("the API key is not valid")
        return _api_key_from_row(row[:5])

    def api_keys(self) -> list[ApiKey]:
        """All API keys (active and revoked), oldest first."""
        with self._db.transaction(write=False) as tx:
            rows = tx.query("SELECT id, roles, label, created_at, revoked_at FROM api_keys")
        return sorted((_api_key_from_row(r) for r in rows), key=lambda k: (k.created_at, k.key_id))

    def revoke_api_key(self, key_id: str) -> ApiKey:
        """Revoke an API key; it stops authenticating at once."""
        with self._db.transaction() as tx:
            row = tx.one("SELECT id, roles, label, created_at, revoked_at FROM api_keys WHERE id = ?", (key_id,))
            if row is None:
                raise NotFound(f"API key {key_id} does not exist")
            if row[4] is not None:
                raise InvalidState(f"API key {key_id} is already revoked")
            tx.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (utcnow(), key_id))
            row = tx.one("SELECT id, roles, label, created_at, revoked_at FROM api_keys WHERE id = ?", (key_id,))
        assert row is not None
        return _api_key_from_row(row)

    # Global configuration ------------------------------------------------------------------------------------

    def next_globalconf_version(self) -> int:
        """Reserve and return the next global configuration version (persisted, strictly increasing)."""
        with self._db.transaction() as tx:
            # The UPDATE takes the row lock (PostgreSQL) or the write lock (SQLite), so concurrent callers get
            # distinct, increasing numbers.
            tx.execute("UPDATE counters SET value = value + 1 WHERE name = 'globalconf_version'")
            return int(tx.scalar("SELECT value FROM counters WHERE name = 'globalconf_version'"))

    def globalconf_content(self) -> CatalogContent:
        """The catalog part of global configuration, read in one consistent transaction."""
        with self._db.transaction(write=False) as tx:
            subs: dict[str, list[str]] = {}
            for member_id, code in tx.query("SELECT member_id, code FROM subsystems"):
                subs.setdefault(member_id, []).append(code)
            members = sorted(
                (
                    MemberInfo(MemberId.parse(mid), name, tuple(sorted(subs.get(mid, []))))
                    for mid, name in tx.query("SELECT id, name FROM members")
                ),
                key=lambda m: m.id,
            )
            servers = tuple(
                SecurityServerInfo(s.id, s.address, s.auth_cert_hashes, s.clients) for s in self._servers(tx, None)
            )
            groups = tuple(self._groups(tx))
            services = sorted(
                (
                    ServiceInfo(ServiceId.parse(sid), stype, title, url)
                    for sid, stype, title, url in tx.query("SELECT id, type, title, description_url FROM services")
                ),
                key=lambda s: s.id,
            )
            rights = [
                _access_from_row(r).right
                for r in tx.query("SELECT id, subject, service_id, method, path, created_at FROM access_rights")
            ]
        rights.sort(key=lambda a: (a.subject.encoded(), a.service, a.method or "", a.path or ""))
        return CatalogContent(tuple(members), servers, groups, tuple(services), tuple(rights))

    def status(self) -> dict[str, int]:
        """Counts of what the catalog holds, as a flat JSON-ready mapping (the API's and CLI's status page)."""
        queries: dict[str, tuple[str, tuple[Any, ...]]] = {
            "schema_version": ("SELECT MAX(version) FROM schema_migrations", ()),
            "globalconf_version": ("SELECT value FROM counters WHERE name = 'globalconf_version'", ()),
            "members": ("SELECT COUNT(*) FROM members", ()),
            "subsystems": ("SELECT COUNT(*) FROM subsystems", ()),
            "servers": ("SELECT COUNT(*) FROM servers", ()),
            "pending_requests": (
                "SELECT COUNT(*) FROM registration_requests WHERE state = ?",
                (RequestState.SUBMITTED.value,),
            ),
            "groups": ("SELECT COUNT(*) FROM global_groups", ()),
            "services": ("SELECT COUNT(*) FROM services", ()),
            "access_rights": ("SELECT COUNT(*) FROM access_rights", ()),
            "certificates": ("SELECT COUNT(*) FROM certificates", ()),
            "revoked_certificates": ("SELECT COUNT(*) FROM certificates WHERE revoked_at IS NOT NULL", ()),
            "active_api_keys": ("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL", ()),
        }
        with self._db.transaction(write=False) as tx:
            return {name: int(tx.scalar(sql, params) or 0) for name, (sql, params) in queries.items()}

    # Internals -----------------------------------------------------------------------------------------------

    def _check_spec_instance(self, spec: ServiceSpec) -> None:
        self.check_instance(spec.id, "service")
        if spec.metadata.responsible_agency is not None:
            self.check_instance(spec.metadata.responsible_agency, "responsible agency")

    def _check_request_instance(self, request: RegistrationRequest) -> None:
        self.check_instance(request.server_id, "security server")
        if request.client is not None:
            self.check_instance(request.client, "client")

    @staticmethod
    def _member_exists(tx: Transaction, member_id: MemberId) -> bool:
        return tx.one("SELECT 1 FROM members WHERE id = ?", (member_id.path(),)) is not None

    @staticmethod
    def _subsystem_exists(tx: Transaction, subsystem_id: SubsystemId) -> bool:
        return tx.one("SELECT 1 FROM subsystems WHERE id = ?", (subsystem_id.path(),)) is not None

    @staticmethod
    def _insert_member(tx: Transaction, member_id: MemberId, name: str, now: str) -> None:
        tx.execute(
            "INSERT INTO members (id, name, created_at) VALUES (?, ?, ?)",
            (member_id.path(), name, now),
            conflict=DuplicateRegistration(f"member {member_id.path()} is already registered"),
        )

    @staticmethod
    def _insert_subsystem(tx: Transaction, subsystem_id: SubsystemId, now: str) -> None:
        tx.execute(
            "INSERT INTO subsystems (id, member_id, code, created_at) VALUES (?, ?, ?, ?)",
            (subsystem_id.path(), subsystem_id.member.path(), subsystem_id.subsystem_code, now),
            conflict=DuplicateRegistration(f"subsystem {subsystem_id.path()} is already registered"),
        )

    def _require_client(self, tx: Transaction, client: ClientId) -> None:
        if isinstance(client, SubsystemId):
            if not self._subsystem_exists(tx, client):
                raise NotFound(f"subsystem {client.path()} is not registered")
        elif not self._member_exists(tx, client):
            raise NotFound(f"member {client.path()} is not registered")

    def _member(self, tx: Transaction, member_id: MemberId) -> Member:
        row = tx.one("SELECT name, created_at FROM members WHERE id = ?", (member_id.path(),))
        if row is None:
            raise NotFound(f"member {member_id.path()} is not registered")
        codes = sorted(r[0] for r in tx.query("SELECT code FROM subsystems WHERE member_id = ?", (member_id.path(),)))
        return Member(member_id, row[0], tuple(codes), dt.datetime.fromisoformat(row[1]))

    def _servers(self, tx: Transaction, only: SecurityServerId | None) -> list[SecurityServer]:
        where, params = ("", ()) if only is None else (" WHERE id = ?", (only.path(),))
        rows = tx.query(f"SELECT id, address, created_at FROM servers{where}", params)  # noqa: S608
        hashes: dict[str, list[str]] = {}
        clients: dict[str, list[ClientId]] = {}
        cwhere = "" if only is None else " WHERE server_id = ?"
        for sid, cert_hash in tx.query(f"SELECT server_id, cert_hash FROM server_auth_certs{cwhere}", params):  # noqa: S608
            hashes.setdefault(sid, []).append(cert_hash)
        for sid, client in tx.query(f"SELECT server_id, client_id FROM server_clients{cwhere}", params):  # noqa: S608
            clients.setdefault(sid, []).append(parse_client_encoded(client))
        servers = [
            SecurityServer(
                SecurityServerId.parse(sid),
                address,
                tuple(sorted(hashes.get(sid, []))),
                tuple(sorted(clients.get(sid, []), key=lambda c: c.encoded())),
                dt.datetime.fromisoformat(created),
            )
            for sid, address, created in rows
        ]
        return sorted(servers, key=lambda s: s.id)

    def _request(self, tx: Transaction, request_id: str) -> RegistrationRequest:
        row = None
        if _is_uuid(request_id):
            row = tx.one(f"SELECT {_REQUEST_COLUMNS} FROM registration_requests WHERE id = ?", (request_id,))  # noqa: S608
        if row is None:
            raise NotFound(f"registration request {request_id} does not exist")
        return _request_from_row(row)

    def _register_server(
        self,
        tx: Transaction,
        request: RegistrationRequest,
        auth_cert: x509.Certificate,
        sign_cert: x509.Certificate,
        now: str,
    ) -> None:
        server_id = request.server_id
        owner = server_id.owner
        key = server_id.path()
        # (1) The owner member, created with the request's name if this is its first server.
        if not self._member_exists(tx, owner):
            self._insert_member(tx, owner, request.owner_name or owner.member_code, now)
        # (2) The server itself; registered meanwhile by another route means this approval is a duplicate.
        if tx.one("SELECT 1 FROM servers WHERE id = ?", (key,)):
            raise DuplicateRegistration(f"security server {key} is already registered")
        tx.execute(
            "INSERT INTO servers (id, owner_id, address, created_at) VALUES (?, ?, ?, ?)",
            (key, owner.path(), request.address, now),
            conflict=DuplicateRegistration(f"security server {key} is already registered"),
        )
        # (3) Its clients: the owner member always, and the owner's subsystems named in the request.
        clients: list[ClientId] = [owner]
        for code in request.client_codes:
            subsystem = owner.subsystem(code)
            if not self._subsystem_exists(tx, subsystem):
                self._insert_subsystem(tx, subsystem, now)
            clients.append(subsystem)
        for client in clients:
            self._insert_server_client(tx, key, client)
        # (4) The auth certificate's hash, by which peers recognise the server in TLS.
        auth_der = _der(auth_cert)
        tx.execute(
            "INSERT INTO server_auth_certs (server_id, cert_hash, serial) VALUES (?, ?, ?)",
            (key, _cert_hash(auth_der), str(auth_cert.serial_number)),
            conflict=DuplicateRegistration("the authentication certificate is already registered to a server"),
        )
        # (5) The CA's records of both certificates, which the OCSP responder answers from.
        self._insert_certificate(tx, CertKind.AUTH, auth_cert, key)
        self._insert_certificate(tx, CertKind.SIGN, sign_cert, key)

    def _register_client(self, tx: Transaction, request: RegistrationRequest, now: str) -> None:
        client = request.client
        assert client is not None  # client requests always carry one
        key = request.server_id.path()
        if tx.one("SELECT 1 FROM servers WHERE id = ?", (key,)) is None:
            raise InvalidState(f"security server {key} is no longer registered")
        if not self._member_exists(tx, client.member):
            self._insert_member(tx, client.member, request.member_name or client.member_code, now)
        if not self._subsystem_exists(tx, client):
            self._insert_subsystem(tx, client, now)
        self._insert_server_client(tx, key, client)

    @staticmethod
    def _insert_server_client(tx: Transaction, server_key: str, client: ClientId) -> None:
        tx.execute(
            "INSERT INTO server_clients (server_id, client_id, member_id, subsystem_id) VALUES (?, ?, ?, ?)",
            (server_key, client.encoded(), client.member.path(), _subsystem_key(client)),
            conflict=DuplicateRegistration(f"{client.path()} is already a client of {server_key}"),
        )

    @staticmethod
    def _insert_certificate(tx: Transaction, kind: CertKind, cert: x509.Certificate, server_key: str | None) -> None:
        serial = cert.serial_number
        tx.execute(
            "INSERT INTO certificates (serial, kind, subject, der, not_after, issued_at, server_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                str(serial),
                kind.value,
                cert.subject.rfc4514_string(),
                _der(cert),
                cert.not_valid_after_utc.isoformat(),
                utcnow(),
                server_key,
            ),
            conflict=Conflict(f"a certificate with serial number {serial} is already recorded"),
        )

    @staticmethod
    def _certificate(tx: Transaction, serial: int) -> CertRecord | None:
        row = tx.one(f"SELECT {_CERT_COLUMNS} FROM certificates WHERE serial = ?", (str(serial),))  # noqa: S608
        return None if row is None else _cert_from_row(row)

    def _groups(self, tx: Transaction) -> list[GlobalGroup]:
        members: dict[str, list[ClientId]] = {}
        for gid, client in tx.query("SELECT group_id, client_id FROM global_group_members"):
            members.setdefault(gid, []).append(parse_client_encoded(client))
        groups = [
            GlobalGroup(GlobalGroupId.parse(gid), desc, tuple(sorted(members.get(gid, []), key=lambda c: c.encoded())))
            for gid, desc in tx.query("SELECT id, description FROM global_groups")
        ]
        return sorted(groups, key=lambda g: g.id)

    def _group(self, tx: Transaction, group_id: GlobalGroupId) -> GlobalGroup:
        desc = tx.scalar("SELECT description FROM global_groups WHERE id = ?", (group_id.path(),))
        if desc is None:
            raise NotFound(f"global group {group_id.path()} does not exist")
        rows = tx.query("SELECT client_id FROM global_group_members WHERE group_id = ?", (group_id.path(),))
        clients = sorted((parse_client_encoded(r[0]) for r in rows), key=lambda c: c.encoded())
        return GlobalGroup(group_id, desc, tuple(clients))

    def _check_service_refs(self, tx: Transaction, spec: ServiceSpec) -> None:
        if not self._subsystem_exists(tx, spec.id.provider):
            raise NotFound(f"provider subsystem {spec.id.provider.path()} is not registered")
        agency = spec.metadata.responsible_agency
        if agency is not None and not self._member_exists(tx, agency):
            raise NotFound(f"responsible agency {agency.path()} is not a registered member")

    def _service(self, tx: Transaction, service_id: ServiceId) -> CatalogService:
        row = tx.one(f"SELECT {_SERVICE_COLUMNS} FROM services WHERE id = ?", (service_id.path(),))  # noqa: S608
        if row is None:
            raise NotFound(f"service {service_id.path()} is not in the catalog")
        return _service_from_row(row)


# Row conversion ------------------------------------------------------------------------------------------------


def _fold(text: str) -> str:
    """Case-fold for search, treating Azerbaijani/Turkish dotted and dotless i as plain i.

    ``"İ".casefold()`` is ``"i̇"`` (with a combining dot) and ``"ı"`` has no upper/lower partner in other
    languages, so without this "ŞƏXSİYYƏT" would not find "şəxsiyyət".
    """
    return text.casefold().replace("\u0307", "").replace("ı", "i")


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, TypeError, AttributeError):
        return False


def _subsystem_key(client: ClientId) -> str | None:
    return client.path() if isinstance(client, SubsystemId) else None


def _secret_hash(secret: str) -> str:
    # surrogateescape: a caller-supplied secret that is not valid text must hash (to a value no key has), never
    # raise; authenticate() refuses such secrets before hashing anyway.
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def _check_label(label: str) -> None:
    _text(label, "label", max_len=_MAX_NAME)


def _insert_api_key(tx: Transaction, roles: frozenset[Role], label: str) -> str:
    """Insert a new API key with ``roles`` and return its secret, ``<key_id>.<random token>``."""
    key_id = f"k{secrets.token_hex(8)}"
    secret = f"{key_id}.{secrets.token_urlsafe(32)}"
    tx.execute(
        "INSERT INTO api_keys (id, secret_hash, roles, label, created_at) VALUES (?, ?, ?, ?, ?)",
        (key_id, _secret_hash(secret), ",".join(sorted(roles)), label, utcnow()),
    )
    return secret


def _claim_instance(tx: Transaction, instance: str) -> None:
    """Record ``instance`` as the catalog's, or check it against the recorded one (:class:`ConfigError`)."""
    recorded = tx.scalar("SELECT value FROM catalog_meta WHERE name = 'instance'")
    if recorded is None:
        # A catalog made before its instance was recorded takes it now, unless its members say otherwise.
        foreign = sorted(mid for (mid,) in tx.query("SELECT id FROM members") if not mid.startswith(f"{instance}/"))
        if foreign:
            raise ConfigError(
                f"the catalog database holds members of another instance (such as {foreign[0]}), not of {instance}"
            )
        tx.execute("INSERT INTO catalog_meta (name, value) VALUES ('instance', ?)", (instance,))
    elif recorded != instance:
        raise ConfigError(f"the database holds the catalog for instance {recorded}, not {instance}")


#: Reasons a certificate may be revoked with (RFC 5280 §5.3.1).  certificateHold is left out because revocation
#: here is final (there is no un-hold), and removeFromCRL because it only has meaning in delta CRLs.
REVOCATION_REASONS: tuple[str, ...] = tuple(
    r.value for r in x509.ReasonFlags if r not in (x509.ReasonFlags.certificate_hold, x509.ReasonFlags.remove_from_crl)
)


def _check_reason(reason: str) -> str:
    if reason not in REVOCATION_REASONS:
        raise InvalidRequest(f"reason must be one of {', '.join(REVOCATION_REASONS)}")
    return reason


def _request_from_row(row: tuple[Any, ...]) -> RegistrationRequest:
    (rid, kind, state, server_id, owner_name, address, auth_csr, sign_csr, codes, client_id, member_name,
     submitted, decided, decided_by, comment, auth_cert, sign_cert) = row  # fmt: skip
    client = None if client_id is None else parse_client_encoded(client_id)
    return RegistrationRequest(
        id=rid,
        kind=RequestKind(kind),
        state=RequestState(state),
        server_id=SecurityServerId.parse(server_id),
        submitted_at=dt.datetime.fromisoformat(submitted),
        owner_name=owner_name,
        address=address,
        auth_csr_pem=auth_csr,
        sign_csr_pem=sign_csr,
        client_codes=tuple(json.loads(codes)),
        client=client if isinstance(client, SubsystemId) else None,
        member_name=member_name,
        decided_at=_ts(decided),
        decided_by=decided_by,
        comment=comment,
        auth_cert_der=None if auth_cert is None else bytes(auth_cert),
        sign_cert_der=None if sign_cert is None else bytes(sign_cert),
    )


def _cert_from_row(row: tuple[Any, ...]) -> CertRecord:
    serial, kind, subject, der, not_after, revoked_at, reason = row
    return CertRecord(
        serial=int(serial),
        kind=CertKind(kind),
        subject=subject,
        der=bytes(der),
        not_after=dt.datetime.fromisoformat(not_after),
        revoked_at=_ts(revoked_at),
        revocation_reason=reason,
    )


def _service_values(spec: ServiceSpec) -> tuple[Any, ...]:
    """Values for ``_SERVICE_COLUMNS`` up to (not including) the timestamps."""
    meta = spec.metadata
    responsible = meta.responsible_agency or spec.id.member
    return (
        spec.id.path(),
        spec.type,
        spec.title,
        spec.description,
        spec.description_doc,
        spec.description_url,
        meta.legal_basis,
        json.dumps(list(meta.required_documents), ensure_ascii=False),
        None if meta.fee is None else str(meta.fee.amount),
        None if meta.fee is None else meta.fee.currency,
        meta.duration_text,
        meta.duration_days,
        json.dumps(list(meta.channels), ensure_ascii=False),
        1 if meta.is_e_service else 0,
        responsible.path(),
    )


def _service_from_row(row: tuple[Any, ...]) -> CatalogService:
    (sid, stype, title, description, doc, url, legal, docs, fee_amount, fee_currency, duration_text, duration_days,
     channels, is_e, responsible, created, updated) = row  # fmt: skip
    service_id = ServiceId.parse(sid)
    responsible_id = MemberId.parse(responsible)
    try:
        fee = None if fee_amount is None else Fee(Decimal(fee_amount), fee_currency)
    except InvalidOperation:  # pragma: no cover - only valid decimals are ever written
        fee = None
    meta = PublicServiceMetadata(
        legal_basis=legal,
        required_documents=tuple(json.loads(docs)),
        fee=fee,
        duration_text=duration_text,
        duration_days=None if duration_days is None else int(duration_days),
        channels=tuple(json.loads(channels)),
        is_e_service=bool(is_e),
        # The provider's member is the default and is stored explicitly; report it back as "not overridden".
        responsible_agency=None if responsible_id == service_id.member else responsible_id,
    )
    spec = ServiceSpec(service_id, stype, title, description, doc, url, meta)
    return CatalogService(spec, dt.datetime.fromisoformat(created), dt.datetime.fromisoformat(updated))


def _access_from_row(row: tuple[Any, ...]) -> AccessRightRecord:
    rid, subject, service_id, method, path, created = row
    right = AccessRight(parse_subject(subject), ServiceId.parse(service_id), method or None, path or None)
    return AccessRightRecord(int(rid), right, dt.datetime.fromisoformat(created))


def _api_key_from_row(row: tuple[Any, ...]) -> ApiKey:
    key_id, roles, label, created, revoked = row
    return ApiKey(
        key_id,
        frozenset(Role(r) for r in roles.split(",") if r),
        label,
        dt.datetime.fromisoformat(created),
        _ts(revoked),
    )


# Registration orchestration ------------------------------------------------------------------------------------


class CertificateAuthority(Protocol):
    """What the registration service needs from the federation CA (:mod:`catalog.ca`)."""

    def issue_auth_cert(
        self, csr: x509.CertificateSigningRequest, server: SecurityServerId, owner_name: str, *, validity_days: int
    ) -> x509.Certificate:
        """Issue a security server's authentication certificate, valid for ``validity_days``."""
        ...

    def issue_sign_cert(
        self, csr: x509.CertificateSigningRequest, member: MemberId, member_name: str, *, validity_days: int
    ) -> x509.Certificate:
        """Issue a member's signing certificate, valid for ``validity_days``."""
        ...


def _load_csr(pem: str) -> x509.CertificateSigningRequest:
    """Parse and check an untrusted CSR (size cap, self-signature, key strength) via the shared PKI helper.

    Imported lazily so the store module does not pull in the PKI stack for callers that never approve anything.
    """
    from bridge.pki.csr import load_csr

    return load_csr(pem)


def _spki(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class RegistrationService:
    """Submit, approve and reject registrations: CSR checks, certificate issuance and the store, in order.

    With ``auto_approve`` a submitted request is approved at once (for development federations), by
    ``"auto-approve"``.  Issued certificates are valid for ``cert_validity_days`` (the CA caps that at its own
    validity).
    """

    def __init__(
        self,
        store: CatalogStore,
        ca: CertificateAuthority,
        *,
        auto_approve: bool = False,
        cert_validity_days: int = 730,
    ) -> None:
        if isinstance(cert_validity_days, bool) or not isinstance(cert_validity_days, int) or cert_validity_days <= 0:
            raise ConfigError("cert_validity_days must be a positive number of days")
        self.store = store
        self.ca = ca
        self.auto_approve = auto_approve
        self.cert_validity_days = cert_validity_days

    def submit(self, registration: ServerRegistration | ClientRegistration) -> RegistrationRequest:
        """Validate and record a request (and approve it if ``auto_approve``)."""
        if isinstance(registration, ServerRegistration):
            # Malformed CSRs are refused now, at the door, rather than when an officer tries to approve.
            auth_csr = _load_csr(registration.auth_csr_pem)
            sign_csr = _load_csr(registration.sign_csr_pem)
            # One key for both would let a TLS peer's key sign messages, collapsing the two roles X-Road keeps
            # apart (and the sign key is the member's, the auth key the server's).
            if _spki(auth_csr) == _spki(sign_csr):
                raise InvalidCsr("auth_csr and sign_csr must be for different keys")
        request = self.store.submit_registration(registration)
        if self.auto_approve:
            return self.approve(request.id, decided_by="auto-approve", comment="approved automatically")
        return request

    def approve(self, request_id: str, *, decided_by: str, comment: str = "") -> RegistrationRequest:
        """Approve a submitted request, issuing certificates for a server registration.

        Steps: (1) load and check the request's state; (2) have the CA issue the auth and sign certificates
        from the stored CSRs; (3) record the approval and everything it implies in one store transaction.  If
        (3) fails, the issued certificates were never recorded or handed out and are simply discarded.
        """
        # (1) Refuse early so the CA does not issue certificates for a decided request; the store checks again
        # inside its transaction, which is what actually guards against concurrent approvals.
        request = self.store.registration_request(request_id)
        if request is None:
            raise NotFound(f"registration request {request_id} does not exist")
        if request.state is not RequestState.SUBMITTED:
            raise InvalidState(f"registration request {request_id} is {request.state}, not submitted")
        # A request of another instance (recorded before submissions were checked) gets no certificates.
        self.store.check_instance(request.server_id, "security server")
        if request.client is not None:
            self.store.check_instance(request.client, "client")
        auth_cert = sign_cert = None
        if request.kind is RequestKind.SERVER:
            assert request.auth_csr_pem is not None  # server requests always carry both CSRs
            assert request.sign_csr_pem is not None
            owner_name = request.owner_name or request.server_id.owner.member_code
            # (2) Issue.  A member that already exists keeps its registered name in its certificates.
            existing = self.store.member(request.server_id.owner)
            member_name = existing.name if existing is not None else owner_name
            days = self.cert_validity_days
            auth_csr, sign_csr = _load_csr(request.auth_csr_pem), _load_csr(request.sign_csr_pem)
            auth_cert = self.ca.issue_auth_cert(auth_csr, request.server_id, member_name, validity_days=days)
            sign_cert = self.ca.issue_sign_cert(sign_csr, request.server_id.owner, member_name, validity_days=days)
        # (3) Record.
        return self.store.approve_registration(
            request_id, decided_by=decided_by, comment=comment, auth_cert=auth_cert, sign_cert=sign_cert
        )

    def reject(self, request_id: str, *, decided_by: str, comment: str = "") -> RegistrationRequest:
        """Reject a submitted request."""
        return self.store.reject_registration(request_id, decided_by=decided_by, comment=comment)
