"""``korpu central …`` in-process: init's all-or-nothing catalog creation, its output, and approve/reject's checks.

The catalog database runs on both backends through the ``db_url`` fixture; nothing listens except where a test
says so.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml
from cryptography import x509

import bridge.cli
from bridge.cli import main
from bridge.errors import ConfigError
from catalog import store as store_module
from catalog.app import CentralServer
from catalog.cli import init_central
from catalog.config import CONFIG_NAME, load_central_config
from catalog.db import Database
from catalog.store import CatalogStore
from tests.catalog.test_store import server_registration

PIN = "cli-test-pin"


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The PIN from the environment, no API key from it, and main() leaving the test run's logging alone.

    (configure_logging would bind structlog to capsys's stderr, which is closed after the test.)
    """
    monkeypatch.setenv("KORPU_PIN", PIN)
    monkeypatch.delenv("KORPU_API_KEY", raising=False)
    monkeypatch.setattr(bridge.cli, "configure_logging", lambda *args, **kwargs: None)


def _init(state_dir: Path, instance: str, database: str) -> str:
    return init_central(state_dir, instance=instance, public_url="http://127.0.0.1:4000", pin=PIN, database=database)


def test_init_refuses_a_database_that_holds_a_catalog(tmp_path: Path, db_url: str) -> None:
    """A second init on the same database (another instance's, here) fails and changes nothing anywhere."""
    states = tmp_path / "states"  # apart from the SQLite file db_url names, which is in tmp_path
    admin_key = _init(states / "az", "AZ", db_url)
    with pytest.raises(ConfigError) as info:
        _init(states / "ee", "EE", db_url)
    assert info.value.message == "the database already holds a catalog for instance AZ; refusing to initialise over it"
    assert sorted(p.name for p in states.iterdir()) == ["az"]
    store = CatalogStore.open(db_url, instance="AZ")
    assert [k.key_id for k in store.api_keys()] == [store.authenticate(admin_key).key_id]


def test_init_failing_in_the_catalog_leaves_nothing(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If creating the catalog fails half-way, neither the state directory nor any catalog table remains."""

    def fail(*args: object) -> str:
        raise RuntimeError("disk full")

    states = tmp_path / "states"  # apart from the SQLite file db_url names, which is in tmp_path
    monkeypatch.setattr(store_module, "_insert_api_key", fail)
    with pytest.raises(RuntimeError):
        _init(states / "az", "AZ", db_url)
    assert list(states.iterdir()) == []
    with Database(db_url).transaction(write=False) as tx:
        assert (tx.table_exists("schema_migrations"), tx.table_exists("certificates")) == (False, False)
    monkeypatch.undo()
    monkeypatch.setenv("KORPU_PIN", PIN)
    _init(states / "az", "AZ", db_url)  # and a retry starts clean


def test_central_server_uses_instance_and_cert_validity(tmp_path: Path) -> None:
    """CentralServer opens the catalog for its instance and issues certificates for cert_validity_days."""
    state = tmp_path / "central"
    _init(state, "AZ", "sqlite:///central.db")
    config_file = state / CONFIG_NAME
    data = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    config_file.write_text(yaml.safe_dump({**data, "cert_validity_days": 90}), encoding="utf-8")
    server = CentralServer.open(state, load_central_config(state), PIN)
    assert (server.store.instance, server.registration.cert_validity_days) == ("AZ", 90)
    request = server.registration.submit(server_registration())
    approved = server.registration.approve(request.id, decided_by="officer")
    assert approved.auth_cert_der is not None
    cert = x509.load_der_x509_certificate(approved.auth_cert_der)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 90

    config_file.write_text(yaml.safe_dump({**data, "instance": "EE"}), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        CentralServer.open(state, load_central_config(state), PIN)
    assert info.value.message == "the database holds the catalog for instance AZ, not EE"


def test_init_with_api_key_file_does_not_print_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With --api-key-file the key goes to that file (0600) and stdout says where, without the key itself."""
    key_file = tmp_path / "admin.key"
    assert (
        main(["central", "init", "--dir", str(tmp_path / "c"), "--instance", "AZ", "--api-key-file", str(key_file)])
        == 0
    )
    out = capsys.readouterr().out
    key = key_file.read_text(encoding="utf-8")
    assert key.startswith("k")
    assert key not in out
    assert f"administrator API key written to {key_file}" in out
    assert key_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--expiry", "-1"], "korpu central init (--expiry/--regenerate): expiry_seconds must be positive"),
        (["--port", "99999"], "korpu central init (--host/--port): port must be between 0 and 65535"),
        (["--algorithm", "dsa"], "korpu central init: algorithm must be one of"),
        (["--public-url", "ftp://x"], "public_url must be an http:// or https:// URL with a host"),
    ],
)
def test_init_bad_options_are_configuration_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str], message: str
) -> None:
    """Bad init options exit 1 with Server.InvalidConfiguration naming the option, not 70 with a traceback."""
    code = main(["central", "init", "--dir", str(tmp_path / "c"), "--instance", "AZ", *option])
    err = capsys.readouterr().err
    assert (code, err.startswith("korpu: Server.InvalidConfiguration: ")) == (1, True), err
    assert message in err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("request_id", ["../../members", "x?y=1", "1234"])
def test_decide_refuses_a_request_id_that_is_not_a_uuid(capsys: pytest.CaptureFixture[str], request_id: str) -> None:
    """approve/reject take a UUID only: anything else exits 1 with Client.InvalidRequest before any request."""
    code = main(["central", "approve", request_id, "--url", "http://127.0.0.1:1", "--api-key", "k.x"])
    err = capsys.readouterr().err
    assert (code, err.startswith("korpu: Client.InvalidRequest: request id")) == (1, True), err


def test_decide_without_url_or_state_dir_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --url or --dir, outside a state directory, approve prints usage and exits 2."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["central", "reject", str(uuid.uuid4()), "--api-key", "k.x"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "usage: " in err
    assert "give --url (or --dir) to say which central server to talk to" in err
    assert "Server.InvalidConfiguration" not in err


def test_decide_defaults_to_the_current_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In a state directory, approve talks to its public_url (here a closed loopback port: a network error)."""
    (tmp_path / CONFIG_NAME).write_text("instance: AZ\npublic_url: http://127.0.0.1:1\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    request_id = str(uuid.uuid4())
    assert main(["central", "approve", request_id.upper(), "--api-key", "k.x"]) == 1
    err = capsys.readouterr().err
    assert f"http://127.0.0.1:1/api/v1/registration-requests/{request_id}/approve" in err
    assert err.startswith("korpu: Server.NetworkError: ")
