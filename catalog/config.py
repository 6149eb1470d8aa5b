"""The central server's configuration file (``central.yaml`` in its state directory)."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from bridge.config import load, option
from bridge.identifiers import check_code

__all__ = ["CONFIG_NAME", "CentralConfig", "GlobalConfOptions", "Listen", "load_central_config"]

CONFIG_NAME = "central.yaml"


@dataclass(frozen=True)
class Listen:
    """Where the central server's HTTP interface listens."""

    host: str = option("127.0.0.1", help="Address to bind (use 0.0.0.0 to listen on all interfaces).")
    port: int = option(4000, help="TCP port; 0 picks a free one (the chosen port is written to server.json).")

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")


@dataclass(frozen=True)
class GlobalConfOptions:
    """How global configuration is generated and how long it stays valid."""

    expiry_seconds: int = option(600, help="A published global configuration expires this long after generation.")
    regenerate_seconds: int = option(60, help="Regenerate and re-sign global configuration this often.")
    refresh_seconds: int = option(60, help="Security servers download global configuration this often.")
    timestamping_interval_seconds: int = option(60, help="Security servers timestamp their message log this often.")
    ocsp_freshness_seconds: int = option(3600, help="OCSP responses older than this are not accepted.")

    def __post_init__(self) -> None:
        for name in (
            "expiry_seconds",
            "regenerate_seconds",
            "refresh_seconds",
            "timestamping_interval_seconds",
            "ocsp_freshness_seconds",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.expiry_seconds <= self.regenerate_seconds:
            raise ValueError("expiry_seconds must be longer than regenerate_seconds, or every copy would expire")


@dataclass(frozen=True)
class CentralConfig:
    """The central server's options; relative paths are relative to the state directory."""

    instance: str = option(help="Code of the X-Road instance this central server governs, e.g. AZ.")
    public_url: str = option(
        help="Base URL under which security servers reach this central server (written into the anchor)."
    )
    database: str = option("sqlite:///central.db", help="Catalog database: sqlite:///FILE or postgresql://...")
    listen: Listen = option(Listen(), help="HTTP listener.")
    globalconf: GlobalConfOptions = option(GlobalConfOptions(), help="Global configuration generation.")
    auto_approve: bool = option(False, help="Approve registration requests as soon as they are submitted.")
    ocsp_url: str | None = option(None, help="External OCSP responder URL; empty: the built-in one at /ocsp.")
    tsa_url: str | None = option(None, help="External RFC 3161 TSA URL; empty: the built-in one at /tsa.")
    tsa_certificate: str | None = option(None, help="PEM file of the external TSA's certificate (with tsa_url).")
    cert_validity_days: int = option(730, help="Validity of issued authentication and signing certificates.")

    def __post_init__(self) -> None:
        check_code(self.instance, "instance")
        _check_http_url(self.public_url, "public_url")
        if self.ocsp_url is not None:
            _check_http_url(self.ocsp_url, "ocsp_url")
        if self.tsa_url is not None:
            _check_http_url(self.tsa_url, "tsa_url")
        if (self.tsa_url is None) != (self.tsa_certificate is None):
            raise ValueError("tsa_url and tsa_certificate must be given together")
        if self.cert_validity_days <= 0:
            raise ValueError("cert_validity_days must be positive")

    @property
    def base_url(self) -> str:
        """``public_url`` without a trailing slash."""
        return self.public_url.rstrip("/")

    @property
    def effective_ocsp_url(self) -> str:
        """Where relying parties ask for certificate status."""
        return self.ocsp_url or f"{self.base_url}/ocsp"

    @property
    def effective_tsa_url(self) -> str:
        """Where security servers timestamp their logs."""
        return self.tsa_url or f"{self.base_url}/tsa"

    def database_url(self, state_dir: Path) -> str:
        """The database URL with a relative SQLite path resolved against ``state_dir``."""
        prefix = "sqlite:///"
        if self.database.startswith(prefix):
            file = Path(self.database[len(prefix) :])
            if not file.is_absolute():
                return f"{prefix}{(state_dir / file).resolve()}"
        return self.database


def _check_http_url(url: str, name: str) -> None:
    """``url`` must be an absolute http(s) URL with a host: it is written into global configuration and the anchor."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - evaluated for its validation: a malformed port raises ValueError
    except ValueError:
        raise ValueError(f"{name} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http:// or https:// URL with a host, e.g. https://central.example.az")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise ValueError(f"{name} must not contain whitespace or control characters")


def load_central_config(state_dir: Path) -> CentralConfig:
    """Load and validate ``central.yaml`` from ``state_dir``."""
    return load(state_dir / CONFIG_NAME, CentralConfig)
