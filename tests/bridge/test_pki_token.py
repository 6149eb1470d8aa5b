"""The software token: PIN protection, encrypted storage, atomic 0600 files, labels and certificates."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bridge.errors import KeyNotFound, TokenError, TokenNotInitialized, WrongPin
from bridge.pki.keys import KeyAlgorithm, sign, verify_signature
from bridge.pki.token import SoftwareToken
from tests.support.pki import build_pki

PIN = "s3cret-pin"


def test_open_with_right_pin_returns_the_same_keys(tmp_path: Path) -> None:
    """Keys generated in one session are found, with the same public key, after reopening with the PIN."""
    token = SoftwareToken.init(tmp_path / "t", PIN)
    public = token.generate_key("sign-1")
    reopened = SoftwareToken.open(tmp_path / "t", PIN)
    assert reopened.labels() == ["sign-1"]
    assert reopened.public_key("sign-1") == public
    assert reopened.key_info("sign-1")["algorithm"] == "ec-p256"
    signature = sign(reopened.private_key("sign-1"), b"data")
    verify_signature(public, signature, b"data")


def test_wrong_pin_is_refused_at_open(tmp_path: Path) -> None:
    """A wrong PIN raises WrongPin (code Server.WrongPin) when opening, before any key is asked for."""
    SoftwareToken.init(tmp_path / "t", PIN)
    with pytest.raises(WrongPin) as info:
        SoftwareToken.open(tmp_path / "t", PIN + "x")
    assert info.value.fault_code == "Server.WrongPin"


def test_open_uninitialised_directory(tmp_path: Path) -> None:
    """Opening a directory without a token raises TokenNotInitialized."""
    with pytest.raises(TokenNotInitialized):
        SoftwareToken.open(tmp_path / "missing", PIN)


def test_init_refuses_short_pin_and_reinitialisation(tmp_path: Path) -> None:
    """init() wants a PIN of at least 6 characters and never overwrites an existing token."""
    with pytest.raises(TokenError, match="at least 6 characters"):
        SoftwareToken.init(tmp_path / "t", "12345")
    SoftwareToken.init(tmp_path / "t", PIN)
    with pytest.raises(TokenError, match="already initialised"):
        SoftwareToken.init(tmp_path / "t", PIN)


def test_files_are_encrypted_and_private(tmp_path: Path) -> None:
    """Every key file holds only an ENCRYPTED PRIVATE KEY, files are 0600 and the directory 0700."""
    pki = build_pki(tmp_path / "pki")
    token = pki.token
    token.generate_key("auth-rsa", KeyAlgorithm.RSA_2048)
    files = sorted(token.directory.iterdir())
    assert [f.name for f in files if f.name.startswith(".tmp")] == []
    key_files = [f for f in files if f.name.endswith(".key.pem")]
    assert sorted(f.name for f in key_files) == [
        "auth-rsa.key.pem",
        "ca-issuing.key.pem",
        "ca-root.key.pem",
        "canary.key.pem",
    ]
    for f in files:
        content = f.read_bytes()
        assert b"BEGIN PRIVATE KEY" not in content
        assert b"BEGIN EC PRIVATE KEY" not in content
        assert b"BEGIN RSA PRIVATE KEY" not in content
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    for f in key_files:
        assert f.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert stat.S_IMODE(token.directory.stat().st_mode) == 0o700


def test_rsa_and_ec_generation(tmp_path: Path) -> None:
    """RSA-2048/3072 and EC P-256 keys can be generated and are recorded with their algorithm."""
    token = SoftwareToken.init(tmp_path / "t", PIN)
    ec_key = token.generate_key("a")
    rsa_key = token.generate_key("b", KeyAlgorithm.RSA_3072, usage="auth")
    assert isinstance(ec_key, ec.EllipticCurvePublicKey)
    assert isinstance(rsa_key, rsa.RSAPublicKey)
    assert rsa_key.key_size == 3072
    info = token.key_info("b")
    assert (info["algorithm"], info["usage"]) == ("rsa-3072", "auth")


def test_duplicate_and_bad_labels(tmp_path: Path) -> None:
    """A label is used once; labels that could escape the directory or collide with token files are refused."""
    token = SoftwareToken.init(tmp_path / "t", PIN)
    token.generate_key("sign")
    with pytest.raises(TokenError, match="already has a key labelled 'sign'"):
        token.generate_key("sign")
    for bad in ("../evil", "", "a/b", ".hidden", "canary.key.pem", "index.json", "x" * 65):
        with pytest.raises(TokenError, match="invalid key label"):
            token.generate_key(bad)


def test_missing_key(tmp_path: Path) -> None:
    """Asking for an unknown label raises KeyNotFound."""
    token = SoftwareToken.init(tmp_path / "t", PIN)
    assert token.has_key("nope") is False
    with pytest.raises(KeyNotFound):
        token.private_key("nope")


def test_certificates(tmp_path: Path) -> None:
    """A certificate is stored per label, survives reopening, and must match the label's key."""
    pki = build_pki(tmp_path / "pki")
    token = pki.token
    token.import_key("auth", pki.auth_key)
    assert token.certificate("auth") is None
    token.store_certificate("auth", pki.auth_cert)
    assert SoftwareToken.open(token.directory, "correct horse").certificate("auth") == pki.auth_cert
    with pytest.raises(TokenError, match="does not belong"):
        token.store_certificate("auth", pki.sign_cert)


def test_plaintext_key_in_token_is_refused(tmp_path: Path) -> None:
    """A key file swapped for an unencrypted key is treated as tampering, not silently used."""
    from cryptography.hazmat.primitives import serialization

    token = SoftwareToken.init(tmp_path / "t", PIN)
    token.generate_key("k")
    plain = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "t" / "k.key.pem").write_bytes(plain)
    with pytest.raises(TokenError, match="not encrypted"):
        SoftwareToken.open(tmp_path / "t", PIN).private_key("k")
