"""A security server's configuration file (``server.yaml`` in its state directory).

Besides identity and addresses it says which local information systems may connect and how (``clients``),
which services this server provides and where their backends are (``services``), the provider's local access
rules (``local_groups``, ``grants``, ``denies``), the listeners and the limits.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bridge.config import load, option
from bridge.identifiers import SecurityServerId, check_code

__all__ = [
    "CONFIG_NAME",
    "AccessRule",
    "ClientConfig",
    "Endpoint",
    "Limits",
    "Listeners",
    "LocalGroup",
    "MessageLogConfig",
    "PersonField",
    "ServerConfig",
    "ServiceConfig",
    "load_server_config",
]

CONFIG_NAME = "server.yaml"

ConnectionType = Literal["http", "https", "https-cert"]


@dataclass(frozen=True)
class Endpoint:
    """A listening socket."""

    host: str = option("127.0.0.1", help="Address to bind.")
    port: int = option(0, help="TCP port; 0 picks a free one (the chosen port is written to runtime.json).")

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")


@dataclass(frozen=True)
class ClientConfig:
    """A subsystem of the owner registered as a client of this server, and how its information system connects."""

    code: str = option(help="Subsystem code.")
    connection: ConnectionType = option(
        "http",
        help="http: plain HTTP allowed; https: TLS required; https-cert: TLS with one of is_certificates.",
    )
    is_certificates: tuple[str, ...] = option(
        (), help="PEM files of the information system's TLS client certificates (for https-cert)."
    )

    def __post_init__(self) -> None:
        check_code(self.code, "clients.code")
        if self.connection == "https-cert" and not self.is_certificates:
            raise ValueError(f"client {self.code}: https-cert needs at least one is_certificates file")


@dataclass(frozen=True)
class PersonField:
    """Where a service's requests carry a person identifier (for "who accessed this person's data").

    ``source`` is ``query`` (parameter ``name``), ``header`` (header ``name``), ``path`` (``name`` is a pattern such
    as ``/persons/{pin}``; the ``{…}`` segment is the identifier), ``json`` (``name`` is a JSON pointer into the
    request body, e.g. ``/applicant/pin``) or ``xml`` (``name`` is an element's local name in the SOAP Body).
    The end user's ``userId`` is always recorded as well.
    """

    source: Literal["query", "header", "path", "json", "xml"] = option(help="Where the identifier is.")
    name: str = option(help="Parameter, header, path pattern, JSON pointer or XML element name.")


@dataclass(frozen=True)
class ServiceConfig:
    """A service this server provides, and its backend: an information system's URL or an in-process adapter."""

    subsystem: str = option(help="Code of the owner's subsystem that provides the service.")
    code: str = option(help="Service code.")
    type: Literal["REST", "SOAP"] = option("REST", help="Message protocol of the service.")
    url: str | None = option(None, help="Backend base URL (http:// or https://); for REST the path is appended.")
    adapter: str | None = option(None, help="Name of an in-process adapter instead of a URL.")
    version: str | None = option(None, help="Service version (SOAP), if any.")
    timeout_seconds: float = option(30.0, help="Timeout for the backend's answer.")
    description: str | None = option(None, help="OpenAPI (REST) or WSDL (SOAP) file describing the service.")
    body_logging: Literal["full", "metadata"] = option(
        "full", help="full: the message log keeps every part's bytes; metadata: only their digests and sizes."
    )
    person_fields: tuple[PersonField, ...] = option((), help="Where requests carry person identifiers.")
    options: dict[str, str] | None = option(None, help="Options for the adapter (adapter-specific).")

    def __post_init__(self) -> None:
        check_code(self.subsystem, "services.subsystem")
        check_code(self.code, "services.code")
        if self.version is not None:
            check_code(self.version, "services.version")
        if (self.url is None) == (self.adapter is None):
            raise ValueError(f"service {self.code}: give exactly one of url and adapter")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"service {self.code}: url must start with http:// or https://")
        if self.timeout_seconds <= 0:
            raise ValueError(f"service {self.code}: timeout_seconds must be positive")


@dataclass(frozen=True)
class LocalGroup:
    """A group of clients defined on this server, usable in local access rules."""

    code: str = option(help="Local group code.")
    members: tuple[str, ...] = option((), help="Members in encoded form, e.g. SUBSYSTEM:AZ/COM/123/loans.")


@dataclass(frozen=True)
class AccessRule:
    """A local grant or deny: who may (or may not) call which service, optionally narrowed for REST."""

    subject: str = option(help="SUBSYSTEM:…, MEMBER:…, GLOBALGROUP:INSTANCE/CODE or LOCALGROUP:CODE.")
    service: str = option(help="Service in path form INSTANCE/CLASS/MEMBER/SUBSYSTEM/CODE[/VERSION].")
    method: str | None = option(None, help="REST method (any if empty).")
    path: str | None = option(None, help="REST path pattern: literal segments, * (one segment), ** (any rest).")


@dataclass(frozen=True)
class MessageLogConfig:
    """Where the message log lives and how it is timestamped and archived."""

    database: str = option(
        "sqlite:///messagelog.db", help="sqlite:///FILE (relative to the state dir) or postgresql://…"
    )
    bodies: str = option("messagelog-bodies", help="Directory of the content-addressed body store.")
    timestamping_interval_seconds: int | None = option(
        None, help="Timestamp a batch this often (default: what global configuration says, else 60)."
    )
    timestamping_batch_records: int = option(10000, help="Also timestamp as soon as this many records wait.")
    grace_seconds: int = option(4 * 3600, help="Refuse traffic once records waited this long for a timestamp.")
    archive_dir: str = option("messagelog-archive", help="Where archive files are written.")
    archive_after_days: int = option(
        30, help="Archive timestamped records this old and delete them from the live log; 0 never does it by itself."
    )
    retention_days: int = option(
        365, help="Delete archives whose newest record is older than this (never the newest archive)."
    )
    archive_interval_seconds: int = option(3600, help="How often the archiver checks for records and archives due.")

    def __post_init__(self) -> None:
        if self.grace_seconds <= 0 or self.timestamping_batch_records <= 0:
            raise ValueError("grace_seconds and timestamping_batch_records must be positive")
        if self.archive_after_days < 0 or self.archive_interval_seconds <= 0:
            raise ValueError("archive_after_days must not be negative and archive_interval_seconds must be positive")
        if self.retention_days < max(self.archive_after_days, 1):
            # Archives would be deleted as soon as they are written: surely not what the operator meant.
            raise ValueError("retention_days must be at least 1 and at least archive_after_days")

    def database_url(self, state_dir: Path) -> str:
        """The database URL with a relative SQLite path resolved against ``state_dir``."""
        prefix = "sqlite:///"
        if self.database.startswith(prefix) and not Path(self.database[len(prefix) :]).is_absolute():
            return f"{prefix}{(state_dir / self.database[len(prefix) :]).resolve()}"
        return self.database


@dataclass(frozen=True)
class Listeners:
    """The server's sockets."""

    client_http: Endpoint | None = option(Endpoint(), help="Client proxy, plain HTTP (X-Road's 8080).")
    client_https: Endpoint | None = option(None, help="Client proxy, HTTPS (X-Road's 8443).")
    server_proxy: Endpoint = option(
        Endpoint(host="127.0.0.1", port=0), help="Server proxy for other security servers (mutual TLS)."
    )
    admin: Endpoint = option(Endpoint(), help="Admin API (status, health); keep it on loopback.")


@dataclass(frozen=True)
class Limits:
    """Caps on what information systems and peers may send."""

    max_header_bytes: int = option(16 * 1024, help="Longest HTTP header line accepted.")
    max_headers: int = option(100, help="Most HTTP headers accepted on one request.")
    max_soap_envelope_bytes: int = option(8 * 1024 * 1024, help="Largest SOAP envelope (attachments excluded).")
    max_xml_depth: int = option(100, help="Deepest XML nesting accepted.")
    max_body_bytes: int | None = option(
        None, help="Largest REST body or message between servers; empty means no cap (bodies are spooled to disk)."
    )
    max_soap_attachments_bytes: int = option(
        64 * 1024 * 1024, help="Largest total of a SOAP message's attachments (SOAP messages are parsed in memory)."
    )
    max_concurrent_soap_reads: int = option(
        16, help="SOAP messages read into memory at once; more wait (bounds memory before clients are known)."
    )
    body_idle_timeout_seconds: float = option(
        30.0, help="A request body that sends nothing for this long is refused (no slow-loris)."
    )
    memory_spool_bytes: int = option(1024 * 1024, help="Bodies above this size are spooled to a temporary file.")
    peer_timeout_seconds: float = option(60.0, help="Timeout for another security server's answer.")
    connect_timeout_seconds: float = option(5.0, help="Timeout for connecting to another security server.")


@dataclass(frozen=True)
class ServerConfig:
    """A security server's options; relative paths are relative to the state directory."""

    server_id: str = option(help="This server's identifier, INSTANCE/CLASS/MEMBER/SERVERCODE.")
    owner_name: str = option(help="Display name of the member that owns this server.")
    address: str = option(help="host:port where other security servers reach this server's server proxy.")
    clients: tuple[ClientConfig, ...] = option((), help="The owner's subsystems registered as clients of this server.")
    services: tuple[ServiceConfig, ...] = option((), help="Services this server provides.")
    local_groups: tuple[LocalGroup, ...] = option((), help="Local groups for access rules.")
    grants: tuple[AccessRule, ...] = option((), help="Local access grants, in addition to the central catalog's.")
    denies: tuple[AccessRule, ...] = option((), help="Local denies; a matching deny wins over any grant.")
    anchor: str = option("anchor.xml", help="Configuration anchor file received from the central server.")
    listen: Listeners = option(Listeners(), help="Listening sockets.")
    limits: Limits = option(Limits(), help="Size and time limits.")
    message_log: MessageLogConfig = option(MessageLogConfig(), help="The message log (evidence of every message).")
    refresh_seconds: int | None = option(
        None, help="Override how often global configuration is downloaded (default: what it says itself)."
    )

    def __post_init__(self) -> None:
        SecurityServerId.parse(self.server_id)
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("address must be host:port")
        codes = [c.code for c in self.clients]
        if len(codes) != len(set(codes)):
            raise ValueError("clients: a subsystem code is listed twice")
        keys = [(s.subsystem, s.code, s.version) for s in self.services]
        if len(keys) != len(set(keys)):
            raise ValueError("services: a service is listed twice")

    @functools.cached_property
    def id(self) -> SecurityServerId:
        """The identifier of this server (parsed once: the proxies ask on every message)."""
        return SecurityServerId.parse(self.server_id)

    @property
    def admin(self) -> Endpoint:
        """The admin API endpoint."""
        return self.listen.admin

    def client(self, code: str) -> ClientConfig | None:
        """The local configuration of client subsystem ``code``, if registered here."""
        return next((c for c in self.clients if c.code == code), None)

    def anchor_path(self, state_dir: Path) -> Path:
        """The anchor file's path."""
        return state_dir / self.anchor


def load_server_config(state_dir: Path) -> ServerConfig:
    """Load and validate ``server.yaml`` from ``state_dir``."""
    return load(state_dir / CONFIG_NAME, ServerConfig)
