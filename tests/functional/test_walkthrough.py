"""The README walkthrough through the real ``korpu`` command.

Central init → two security servers init and register → approval → both download and verify global
configuration listing both.

Each step is a separate process, as an operator would run it; the central server runs as ``korpu central serve``
in the background and is stopped by the fixture also when the test fails.  The walkthrough runs once with the
catalog in SQLite and once in the live PostgreSQL.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from bridge.anchor import ConfigurationAnchor
from bridge.globalconf_xml import verify_and_parse
from bridge.identifiers import SecurityServerId
from bridge.pki.keys import cert_sha256_hex
from security_server.sandbox import free_port

pytestmark = pytest.mark.functional

KORPU = [sys.executable, "-m", "bridge.cli"]
PIN = "walkthrough-pin"
SERVERS = {
    "ss-a": ("AZ/GOV/1400057421/ss-a", "Ministry of Digital Development", "population"),
    "ss-b": ("AZ/COM/9900001111/ss-b", "Kapital Bank", "loans"),
}


def korpu(*args: str | Path, expect: int = 0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run one korpu command; fail with its output if the exit code is not ``expect``."""
    run_env = {**os.environ, "KORPU_PIN": PIN, "KORPU_LOG_FORMAT": "json", **(env or {})}
    proc = subprocess.run(
        [*KORPU, *map(str, args)], capture_output=True, text=True, env=run_env, timeout=120, check=False
    )
    assert proc.returncode == expect, f"korpu {' '.join(map(str, args))}\n{proc.stdout}\n{proc.stderr}"
    return proc


class Background:
    """A ``korpu … serve`` process whose readiness line we wait for (no sleeping)."""

    def __init__(self, args: list[str], ready: str) -> None:
        env = {**os.environ, "KORPU_PIN": PIN, "KORPU_LOG_FORMAT": "json"}
        self.proc = subprocess.Popen(
            [*KORPU, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.ready = threading.Event()
        self.lines: list[str] = []

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                if ready in line:
                    self.ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not self.ready.wait(timeout=30):
            self.stop()
            stderr = self.proc.stderr.read() if self.proc.stderr is not None else ""
            raise AssertionError(f"server did not become ready: {self.lines} {stderr}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database(request: pytest.FixtureRequest) -> str:
    """The catalog database for this run of the walkthrough."""
    if request.param == "sqlite":
        return "sqlite:///central.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def central(tmp_path: Path, database: str) -> Iterator[tuple[Path, str]]:
    """An initialised and running central server; yields its state dir and admin API key file."""
    port = free_port()
    key_file = tmp_path / "admin.key"
    out = korpu(
        "central", "init", "--dir", tmp_path / "central", "--instance", "AZ", "--port", str(port),
        "--database", database, "--api-key-file", key_file,
    )  # fmt: skip
    assert "administrator API key" in out.stdout
    server = Background(["central", "serve", "--dir", str(tmp_path / "central")], ready="listening on")
    try:
        yield tmp_path / "central", str(key_file)
    finally:
        server.stop()


def test_walkthrough(tmp_path: Path, central: tuple[Path, str]) -> None:
    """Central init → two servers init and register → approval → both see a verified conf listing both."""
    central_dir, key_file = central
    anchor = central_dir / "anchor.xml"

    # Two security servers submit registration requests.
    request_ids = {}
    for name, (sid, owner, client) in SERVERS.items():
        out = korpu(
            "ss", "init", "--dir", tmp_path / name, "--anchor", anchor, "--server-id", sid,
            "--owner-name", owner, "--address", f"127.0.0.1:{free_port()}", "--client", client,
            "--api-key-file", tmp_path / f"{name}.key",
        )  # fmt: skip
        match = re.search(r"registration request (\S+): submitted", out.stdout)
        assert match is not None, out.stdout
        request_ids[name] = match.group(1)

    # The central server lists both as pending; without a key nothing can be approved.
    status = json.loads(korpu("central", "status", "--dir", central_dir, "--json").stdout)
    assert sorted(r["id"] for r in status["pending_requests"]) == sorted(request_ids.values())
    assert status["running"] is True
    denied = korpu("central", "approve", request_ids["ss-a"], "--dir", central_dir, expect=1, env={"KORPU_API_KEY": ""})
    assert "Client.MissingApiKey" in denied.stderr
    wrong = korpu("central", "approve", request_ids["ss-a"], "--dir", central_dir, "--api-key", "k1.nope", expect=1)
    assert "Client.InvalidApiKey" in wrong.stderr

    # The registration officer approves both.
    for request_id in request_ids.values():
        out = korpu("central", "approve", request_id, "--dir", central_dir, "--api-key-file", key_file)
        assert f"registration request {request_id}: approved" in out.stdout
    again = korpu("central", "approve", request_ids["ss-a"], "--dir", central_dir, "--api-key-file", key_file, expect=1)
    assert "Client.InvalidState" in again.stderr

    # Each server installs its certificates and sees both servers in verified global configuration.
    for name, (sid, _owner, _client) in SERVERS.items():
        report = json.loads(korpu("ss", "status", "--dir", tmp_path / name, "--json").stdout)
        assert report["problem"] is None
        assert report["registration"]["state"] == "approved"
        assert report["registration"]["certificates_installed"] is True
        assert report["listed_in_globalconf"] is True
        cached = (tmp_path / name / "cache" / "globalconf.xml").read_bytes()
        conf = verify_and_parse(cached, anchor=ConfigurationAnchor.load(tmp_path / name / "anchor.xml"))
        assert sorted(s.id.path() for s in conf.servers) == sorted(s[0] for s in SERVERS.values())
        # The installed authentication certificate is the one global configuration lists for this server.
        cert = x509.load_pem_x509_certificate((tmp_path / name / "token" / "auth.cert.pem").read_bytes())
        info = conf.server(SecurityServerId.parse(sid))
        assert info is not None
        assert cert_sha256_hex(cert.public_bytes(Encoding.DER)) in info.auth_cert_hashes

    # `korpu ss serve` runs the admin API: healthy on the fresh configuration, status behind the admin key.
    served = Background(["ss", "serve", "--dir", str(tmp_path / "ss-a")], ready="admin API")
    try:
        admin_url = json.loads((tmp_path / "ss-a" / "runtime.json").read_text())["admin"]
        health = json.loads(urllib.request.urlopen(f"{admin_url}/healthz", timeout=10).read())
        assert health["status"] == "ok"
        with pytest.raises(urllib.error.HTTPError) as denied_status:
            urllib.request.urlopen(f"{admin_url}/api/v1/status", timeout=10)
        assert denied_status.value.code == 401
        key = (tmp_path / "ss-a.key").read_text()
        request = urllib.request.Request(f"{admin_url}/api/v1/status", headers={"X-API-Key": key})
        report = json.loads(urllib.request.urlopen(request, timeout=10).read())
        assert report["listed_in_globalconf"] is True
        assert report["certificates"]["auth"]["subject"].startswith("CN=ss-a,")
    finally:
        served.stop()


def test_init_refuses_bad_input_and_leaves_nothing(tmp_path: Path, central: tuple[Path, str]) -> None:
    """Bad identifiers, a wrong anchor and a duplicate registration exit non-zero and leave no state behind."""
    central_dir, _key_file = central
    anchor = central_dir / "anchor.xml"
    base = ["--anchor", str(anchor), "--owner-name", "X", "--address", "127.0.0.1:5999"]

    bad_id = korpu("ss", "init", "--dir", tmp_path / "bad", "--server-id", "AZ/GOV/1", *base, expect=1)
    assert "Client.InvalidIdentifier" in bad_id.stderr
    wrong_instance = korpu("ss", "init", "--dir", tmp_path / "bad", "--server-id", "EE/GOV/1/ss", *base, expect=1)
    assert "Server.InvalidConfiguration" in wrong_instance.stderr
    assert not (tmp_path / "bad").exists()

    korpu("ss", "init", "--dir", tmp_path / "first", "--server-id", "AZ/GOV/1/ss", *base)
    dup = korpu("ss", "init", "--dir", tmp_path / "second", "--server-id", "AZ/GOV/1/ss", *base, expect=1)
    assert "Client.DuplicateRegistration" in dup.stderr
    assert not (tmp_path / "second").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".second")] == []

    again = korpu("central", "init", "--dir", central_dir, "--instance", "AZ", expect=1)
    assert "already exists" in again.stderr


def test_wrong_pin_is_refused(tmp_path: Path, central: tuple[Path, str]) -> None:
    """The central server's token does not open with a wrong PIN: serve exits non-zero with Server.WrongPin."""
    central_dir, _ = central
    out = korpu("central", "serve", "--dir", central_dir, expect=1, env={"KORPU_PIN": "not-the-pin"})
    assert "Server.WrongPin" in out.stderr


def test_init_refuses_a_database_that_holds_a_catalog(tmp_path: Path, central: tuple[Path, str], database: str) -> None:
    """`korpu central init` pointed at the running AZ central server's database refuses it and leaves no state."""
    central_dir, _key_file = central
    url = f"sqlite:///{central_dir / 'central.db'}" if database.startswith("sqlite") else database
    out = korpu("central", "init", "--dir", tmp_path / "ee", "--instance", "EE", "--database", url, expect=1)
    assert "Server.InvalidConfiguration" in out.stderr
    assert "already holds a catalog for instance AZ" in out.stderr
    assert not (tmp_path / "ee").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ee")] == []
    status = json.loads(korpu("central", "status", "--dir", central_dir, "--json").stdout)
    assert status["catalog"]["active_api_keys"] == 1
