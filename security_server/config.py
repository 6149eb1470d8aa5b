"""A security server's configuration file (``server.yaml`` in its state directory)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bridge.config import load, option
from bridge.identifiers import SecurityServerId, check_code

__all__ = ["CONFIG_NAME", "Endpoint", "ServerConfig", "load_server_config"]

CONFIG_NAME = "server.yaml"


@dataclass(frozen=True)
class Endpoint:
    """A listening socket."""

    host: str = option("127.0.0.1", help="Address to bind.")
    port: int = option(0, help="TCP port; 0 picks a free one (the chosen port is written to runtime.json).")

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")


@dataclass(frozen=True)
class ServerConfig:
    """A security server's options; relative paths are relative to the state directory."""

    server_id: str = option(help="This server's identifier, INSTANCE/CLASS/MEMBER/SERVERCODE.")
    owner_name: str = option(help="Display name of the member that owns this server.")
    address: str = option(help="host:port where other security servers reach this server's server proxy.")
    clients: tuple[str, ...] = option((), help="Subsystem codes of the owner registered as clients of this server.")
    anchor: str = option("anchor.xml", help="Configuration anchor file received from the central server.")
    admin: Endpoint = option(Endpoint(port=0), help="Admin API (status, health); keep it on loopback.")
    refresh_seconds: int | None = option(
        None, help="Override how often global configuration is downloaded (default: what it says itself)."
    )

    def __post_init__(self) -> None:
        SecurityServerId.parse(self.server_id)
        for code in self.clients:
            check_code(code, "clients")
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("address must be host:port")

    @property
    def id(self) -> SecurityServerId:
        """The identifier of this server."""
        return SecurityServerId.parse(self.server_id)

    def anchor_path(self, state_dir: Path) -> Path:
        """The anchor file's path."""
        return state_dir / self.anchor


def load_server_config(state_dir: Path) -> ServerConfig:
    """Load and validate ``server.yaml`` from ``state_dir``."""
    return load(state_dir / CONFIG_NAME, ServerConfig)
