"""The security server's admin app and registration follow-up.

Pins: ``/healthz`` answers from the last good global configuration and fails closed with
``Server.OutdatedGlobalConf`` once it expired; the admin API needs the admin key; certificates from the central
server are installed only when they carry this server's keys and identity.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bridge.errors import CertificateInvalid, InvalidRequest
from bridge.globalconf import ApprovedCA, GlobalConf
from bridge.globalconf_xml import sign
from bridge.identifiers import SecurityServerId
from bridge.pki.csr import load_csr, make_csr
from bridge.pki.profile import auth_cert_subject, sign_cert_subject
from bridge.pki.token import SoftwareToken
from catalog.ca import CertificateAuthority
from policies.local import LocalPolicy
from security_server import registration
from security_server.app import create_admin_app, hash_admin_key
from security_server.confclient import GlobalConfClient
from security_server.config import ServerConfig
from security_server.registration import RegistrationState, follow_registration, install_certificates
from security_server.runtime import ServerRuntime
from tests.support.globalconf import NOW, make_anchor, make_signer, sample_conf

PIN = "test-pin-1234"
SERVER = SecurityServerId.parse("AZ/GOV/1400057421/ss1")
ADMIN_KEY = "admin-secret"


@dataclass
class Clock:
    now: dt.datetime

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def token(tmp_path: Path) -> SoftwareToken:
    tok = SoftwareToken.init(tmp_path / "token", PIN)
    tok.generate_key("auth")
    tok.generate_key("sign")
    return tok


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
async def client(tmp_path: Path, token: SoftwareToken, clock: Clock) -> AsyncIterator[TestClient]:
    """An admin app whose cached global configuration (v1, sample_conf lists SERVER) is valid at NOW + 0."""
    signer = make_signer()
    anchor = make_anchor(signer)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "globalconf.xml").write_bytes(sign(sample_conf(1, now=NOW), signer.key, signer.cert))
    confclient = GlobalConfClient(anchor, tmp_path / "cache", clock=clock, refresh_interval_s=3600)
    assert confclient.load_cached() is not None
    config = ServerConfig(server_id=SERVER.path(), owner_name="Tax", address="127.0.0.1:5500")
    reg = RegistrationState("r1", "http://127.0.0.1:1", SERVER.path(), state="approved", certificates_installed=True)
    runtime = ServerRuntime(
        state_dir=tmp_path,
        config=config,
        token=token,
        pin=PIN,
        confclient=confclient,
        registration=reg,
        admin_key_hash=hash_admin_key(ADMIN_KEY),
        local_policy=LocalPolicy(),
    )
    async with TestClient(TestServer(create_admin_app(runtime))) as test_client:
        yield test_client


async def test_healthz_while_valid_then_outdated_after_expiry(client: TestClient, clock: Clock) -> None:
    """/healthz is 200 with the version while the copy is valid, and the exchange's fault once it expired."""
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok", "globalconf_version": 1}

    clock.now = NOW + dt.timedelta(minutes=10)  # sample_conf expires ten minutes after NOW
    resp = await client.get("/healthz")
    assert resp.status == 500
    assert resp.headers["X-Road-Error"] == "Server.OutdatedGlobalConf"
    body = await resp.json()
    assert body["type"] == "Server.OutdatedGlobalConf"
    assert "Traceback" not in body["message"]


async def test_status_needs_the_admin_key(client: TestClient) -> None:
    """Without a key → 401 MissingApiKey; a wrong key → 401 InvalidApiKey; the right key → the status report."""
    resp = await client.get("/api/v1/status")
    assert (resp.status, (await resp.json())["type"]) == (401, "Client.MissingApiKey")
    resp = await client.get("/api/v1/status", headers={"X-API-Key": "wrong"})
    assert (resp.status, (await resp.json())["type"]) == (401, "Client.InvalidApiKey")
    resp = await client.get("/api/v1/status", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert resp.status == 200
    report = await resp.json()
    assert report["server_id"] == SERVER.path()
    assert report["globalconf"]["version"] == 1
    assert report["listed_in_globalconf"] is True  # sample_conf lists AZ/GOV/1400057421/ss1


async def test_unknown_route_is_a_json_404(client: TestClient) -> None:
    """Unknown paths get X-Road's JSON error shape, not aiohttp's HTML page."""
    resp = await client.get("/nope")
    assert resp.status == 404
    assert (await resp.json())["type"] == "Client.NotFound"


# Installing certificates ---------------------------------------------------------------------------------------


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(SoftwareToken.init(tmp_path / "ca-token", PIN), "AZ", "Test CA")


def _issue(ca: CertificateAuthority, token: SoftwareToken, server: SecurityServerId) -> dict[str, str]:
    auth_csr = load_csr(
        make_csr(token.private_key("auth"), auth_cert_subject(server, "Tax")).public_bytes(serialization.Encoding.PEM)
    )
    sign_csr = load_csr(
        make_csr(token.private_key("sign"), sign_cert_subject(server.owner, "Tax")).public_bytes(
            serialization.Encoding.PEM
        )
    )
    auth = ca.issue_auth_cert(auth_csr, server, "Tax")
    sign_cert = ca.issue_sign_cert(sign_csr, server.owner, "Tax")
    pem = serialization.Encoding.PEM
    return {
        "auth_certificate": auth.public_bytes(pem).decode(),
        "sign_certificate": sign_cert.public_bytes(pem).decode(),
    }


def _conf_approving(*cas: CertificateAuthority) -> GlobalConf:
    der = serialization.Encoding.DER
    approved = tuple(
        ApprovedCA("test", ca.root_cert.public_bytes(der), (ca.issuing_cert.public_bytes(der),)) for ca in cas
    )
    return replace(sample_conf(1), cas=approved)


def test_install_accepts_certificates_for_our_keys(ca: CertificateAuthority, token: SoftwareToken) -> None:
    """Certificates carrying our keys, naming this server and its owner, from an approved CA are installed."""
    answer = _issue(ca, token, SERVER)
    install_certificates(token, SERVER, answer, _conf_approving(ca))
    installed = token.certificate("auth")
    assert installed is not None
    assert installed == x509.load_pem_x509_certificate(answer["auth_certificate"].encode())


def test_install_refuses_certificates_for_other_keys(
    ca: CertificateAuthority, token: SoftwareToken, tmp_path: Path
) -> None:
    """A certificate for someone else's key is refused and nothing is stored."""
    other = SoftwareToken.init(tmp_path / "other", PIN)
    other.generate_key("auth")
    other.generate_key("sign")
    with pytest.raises(CertificateInvalid, match="public key"):
        install_certificates(token, SERVER, _issue(ca, other, SERVER), _conf_approving(ca))
    assert token.certificate("auth") is None
    assert token.certificate("sign") is None


def test_install_refuses_certificates_naming_another_server(ca: CertificateAuthority, token: SoftwareToken) -> None:
    """A certificate for our key but another server's identity is refused."""
    answer = _issue(ca, token, SecurityServerId.parse("AZ/GOV/1400057421/other"))
    with pytest.raises(CertificateInvalid, match="another server"):
        install_certificates(token, SERVER, answer, _conf_approving(ca))
    assert token.certificate("auth") is None


def test_install_refuses_certificates_from_an_unapproved_ca(
    ca: CertificateAuthority, token: SoftwareToken, tmp_path: Path
) -> None:
    """Certificates for our keys and identity, but issued by a CA global configuration does not approve, are refused."""
    evil = CertificateAuthority.create(SoftwareToken.init(tmp_path / "evil", PIN), "AZ", "Evil CA")
    with pytest.raises(CertificateInvalid, match="does not chain to a CA approved"):
        install_certificates(token, SERVER, _issue(evil, token, SERVER), _conf_approving(ca))
    assert token.certificate("auth") is None
    assert token.certificate("sign") is None


def test_install_refuses_answers_without_certificates(token: SoftwareToken) -> None:
    """An approved answer lacking parseable certificates is an InvalidRequest, not a crash."""
    with pytest.raises(InvalidRequest):
        install_certificates(token, SERVER, {"auth_certificate": "garbage"}, sample_conf(1))


def test_install_refuses_a_certificate_whose_key_does_not_parse(ca: CertificateAuthority, token: SoftwareToken) -> None:
    """A key cryptography cannot read (an unknown algorithm OID) is refused as not ours, not raised as a crash."""
    answer = _issue(ca, token, SERVER)
    der = x509.load_pem_x509_certificate(answer["auth_certificate"].encode()).public_bytes(serialization.Encoding.DER)
    ec_public_key = bytes.fromhex("2a8648ce3d0201")  # id-ecPublicKey
    assert der.count(ec_public_key) == 1
    unknown = x509.load_der_x509_certificate(der.replace(ec_public_key, bytes.fromhex("2a8648ce3d0209")))
    answer["auth_certificate"] = unknown.public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(CertificateInvalid, match="public key"):
        install_certificates(token, SERVER, answer, _conf_approving(ca))
    assert token.certificate("auth") is None


async def test_registration_follow_up_outlives_an_unexpected_error(
    token: SoftwareToken, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error nothing foresaw is logged and the next poll comes: the task does not end with the request pending."""
    polls: list[int] = []

    async def poll_once(*args: object) -> bool:
        polls.append(len(polls))
        if len(polls) == 1:
            raise RuntimeError("a bug, or an answer nothing foresaw")
        return True

    class Conf:
        def current(self) -> None:
            return None

    monkeypatch.setattr(registration, "poll_once", poll_once)
    reg = RegistrationState("r1", "http://127.0.0.1:9", str(SERVER))
    await follow_registration(tmp_path, token, reg, Conf(), interval_s=0.01)
    assert polls == [0, 1]
