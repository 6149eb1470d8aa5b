"""Configuration loading: declared options, validation errors naming file and key, commented dump."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import dump, load
from bridge.errors import ConfigError
from catalog.config import CentralConfig
from security_server.config import AccessRule, ClientConfig, ServerConfig, ServiceConfig


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "central.yaml"
    path.write_text(text)
    return path


def test_minimal_file_takes_defaults(tmp_path: Path) -> None:
    """Only required options need to be given; the rest take their declared defaults."""
    cfg = load(write(tmp_path, "instance: AZ\npublic_url: http://127.0.0.1:4000\n"), CentralConfig)
    assert cfg.instance == "AZ"
    assert cfg.globalconf.expiry_seconds == 600
    assert cfg.listen.port == 4000
    assert cfg.effective_ocsp_url == "http://127.0.0.1:4000/ocsp"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("instance: AZ\n", "public_url: required option is missing"),
        ("instance: AZ\npublic_url: http://x\nbogus: 1\n", "unknown option 'bogus'"),
        ("instance: AZ\npublic_url: http://x\nlisten: {port: eighty}\n", "listen.port: expected an integer"),
        ("instance: AZ\npublic_url: http://x\nglobalconf: {expiry_seconds: 10}\n", "expiry_seconds must be longer"),
        ("instance: AZ\npublic_url: http://x\nauto_approve: 'yes'\n", "auto_approve: expected true or false"),
        ("instance: 'A/Z'\npublic_url: http://x\n", "forbidden character"),
        ("instance: AZ\npublic_url: ftp://x\n", "public_url must be an http:// or https:// URL"),
        ("instance: [AZ\n", "not valid YAML at line"),
        ("- a list\n", "expected a mapping"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    """Every invalid file is refused with a ConfigError that names the file and, where one is at fault, the key."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path, CentralConfig)
    assert str(path) in info.value.message
    assert message in info.value.message
    assert info.value.fault_code == "Server.InvalidConfiguration"


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError, not a traceback."""
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "nope.yaml", CentralConfig)


def test_dump_round_trips_with_comments(tmp_path: Path) -> None:
    """dump() writes YAML with help comments that load() reads back to an equal configuration."""
    cfg = ServerConfig(
        server_id="AZ/GOV/1/ss1",
        owner_name="Nazirlik",
        address="127.0.0.1:5500",
        clients=(ClientConfig("a"), ClientConfig("b", connection="https")),
        services=(ServiceConfig(subsystem="a", code="getPerson", url="http://127.0.0.1:9000/"),),
        grants=(AccessRule(subject="LOCALGROUP:officers", service="AZ/GOV/1/a/getPerson", method="GET"),),
    )
    text = dump(cfg, header="test")
    assert "# Display name of the member that owns this server." in text
    path = tmp_path / "server.yaml"
    path.write_text(text)
    assert load(path, ServerConfig) == cfg


def test_server_config_checks_identifiers(tmp_path: Path) -> None:
    """A malformed server id or address in server.yaml is refused with the key named."""
    path = tmp_path / "server.yaml"
    path.write_text("server_id: AZ/GOV/1\nowner_name: x\naddress: 127.0.0.1:5500\n")
    with pytest.raises(ConfigError, match="must have 4 parts"):
        load(path, ServerConfig)
    path.write_text("server_id: AZ/GOV/1/ss\nowner_name: x\naddress: nohost\n")
    with pytest.raises(ConfigError, match="address must be host:port"):
        load(path, ServerConfig)


def test_service_needs_exactly_one_backend(tmp_path: Path) -> None:
    """A service with both or neither of url and adapter is refused, naming the service."""
    path = tmp_path / "server.yaml"
    path.write_text(
        "server_id: AZ/GOV/1/ss\nowner_name: x\naddress: 127.0.0.1:5500\n"
        "services: [{subsystem: a, code: s1, url: 'http://x', adapter: echo}]\n"
    )
    with pytest.raises(ConfigError, match="service s1: give exactly one of url and adapter"):
        load(path, ServerConfig)
    path.write_text(
        "server_id: AZ/GOV/1/ss\nowner_name: x\naddress: 127.0.0.1:5500\nclients: [{code: a, connection: telnet}]\n"
    )
    with pytest.raises(ConfigError, match=r"clients\[0\]\.connection: expected one of http, https, https-cert"):
        load(path, ServerConfig)
