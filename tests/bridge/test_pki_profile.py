"""The certificate profile (bridge.pki.profile): identifier URIs, subjects, per-purpose checks and chains."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from bridge.errors import CertificateInvalid
from bridge.identifiers import MemberId, SecurityServerId
from bridge.pki import profile
from tests.support.pki import MEMBER, SERVER, Pki, build_pki, custom_leaf


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(tmp_path_factory.mktemp("profile"))


def test_identifier_uris_round_trip() -> None:
    """Member and server URIs have the documented form and parse back, also for non-ASCII codes."""
    assert profile.identifier_uri(MEMBER) == "urn:x-road:MEMBER:AZ/GOV/1400057421"
    assert profile.identifier_uri(SERVER) == "urn:x-road:SERVER:AZ/GOV/1400057421/ss1"
    odd = SecurityServerId(MemberId("AZ", "COM", "Şəki_#1"), "node~1")
    uri = profile.identifier_uri(odd)
    assert uri == "urn:x-road:SERVER:AZ/COM/%C5%9E%C9%99ki_%231/node~1"
    assert profile.parse_identifier_uri(uri) == odd
    assert profile.conf_signer_uri("AZ") == "urn:x-road:GLOBALCONF:AZ"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("urn:x-road:MEMBER:AZ/GOV/%31", "not canonically encoded"),
        ("urn:x-road:MEMBER:AZ/GOV", "not a MEMBER or SERVER"),
        ("urn:x-road:SUBSYSTEM:AZ/GOV/1/sub", "not a MEMBER or SERVER"),
        ("urn:x-road:MEMBER:AZ/GOV/%3A", "malformed"),
        ("urn:x-road:MEMBER:AZ/GOV/%FF", "malformed"),
        ("https://example/MEMBER:AZ/GOV/1", "is not a urn:x-road: URI"),
    ],
)
def test_bad_identifier_uris(uri: str, message: str) -> None:
    """Non-canonical, wrong-type, forbidden-character and foreign URIs are refused with a precise message."""
    with pytest.raises(CertificateInvalid, match=message):
        profile.parse_identifier_uri(uri)


def test_subjects() -> None:
    """Subjects put the path form in serialNumber, the name in O and the last code in CN."""
    assert profile.sign_cert_subject(MEMBER, "Tax").rfc4514_string() == "CN=1400057421,O=Tax,2.5.4.5=AZ/GOV/1400057421"
    assert profile.auth_cert_subject(SERVER, "Tax").rfc4514_string() == "CN=ss1,O=Tax,2.5.4.5=AZ/GOV/1400057421/ss1"


def _ku(**kwargs: bool) -> x509.KeyUsage:
    flags = dict.fromkeys(
        [
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
        ],
        False,
    )
    flags.update(kwargs)
    return x509.KeyUsage(**flags, encipher_only=False, decipher_only=False)


def _san(*uris: str) -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris])


MEMBER_URI = "urn:x-road:MEMBER:AZ/GOV/1400057421"
SIGN_KU = _ku(digital_signature=True, content_commitment=True)
SAN = (_san(MEMBER_URI), False)
EKU_CLIENT = (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
CA_BC = (x509.BasicConstraints(ca=True, path_length=None), True)
CA_KU = (_ku(digital_signature=True, content_commitment=True, key_cert_sign=True), True)


@pytest.mark.parametrize(
    ("extensions", "message"),
    [
        ([(SIGN_KU, False), (_san(MEMBER_URI), False)], "KeyUsage must be critical"),
        ([(_ku(digital_signature=True), True), (_san(MEMBER_URI), False)], "lacks contentCommitment"),
        (
            [
                (SIGN_KU, True),
                (_san(MEMBER_URI), False),
                (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
            ],
            "must not have an ExtendedKeyUsage",
        ),
        ([(SIGN_KU, True)], "lacks the SubjectAlternativeName"),
        ([(SIGN_KU, True), (_san(MEMBER_URI, "urn:x-road:MEMBER:AZ/GOV/2"), False)], "exactly one"),
        ([(SIGN_KU, True), (_san("urn:x-road:MEMBER:AZ/GOV/999"), False)], "serialNumber does not match"),
        (
            [(SIGN_KU, True), (_san(MEMBER_URI), False), (x509.BasicConstraints(ca=True, path_length=None), True)],
            "is a CA",
        ),
        (
            [
                (_ku(digital_signature=True, content_commitment=True, key_cert_sign=True), True),
                (_san(MEMBER_URI), False),
            ],
            "keyCertSign",
        ),
    ],
)
def test_sign_cert_defects(pki: Pki, extensions: list[tuple[x509.ExtensionType, bool]], message: str) -> None:
    """Each way a signing certificate can deviate from the profile is reported precisely."""
    with pytest.raises(CertificateInvalid, match=message):
        profile.check_sign_cert(custom_leaf(pki, extensions))


def test_auth_cert_defects(pki: Pki) -> None:
    """An auth cert without clientAuth, or naming a member instead of a server, is refused."""
    subject = profile.auth_cert_subject(SERVER, "Tax")
    server_only = custom_leaf(
        pki,
        [
            (_ku(digital_signature=True), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (_san(profile.identifier_uri(SERVER)), False),
        ],
        subject=subject,
    )
    with pytest.raises(CertificateInvalid, match="lacks clientAuth"):
        profile.check_auth_cert(server_only)
    with pytest.raises(CertificateInvalid, match="not a security server"):
        profile.server_from_auth_cert(pki.sign_cert)
    with pytest.raises(CertificateInvalid, match="not a member"):
        profile.member_from_sign_cert(pki.auth_cert)
    # The sign cert is not an auth cert and vice versa.
    with pytest.raises(CertificateInvalid, match="ExtendedKeyUsage"):
        profile.check_auth_cert(pki.sign_cert)
    with pytest.raises(CertificateInvalid, match="lacks contentCommitment"):
        profile.check_sign_cert(pki.auth_cert)


def test_verify_chain_rejects_wrong_root_expired_and_missing_intermediate(pki: Pki, tmp_path: Path) -> None:
    """Chains fail for another CA's root, outside validity, and without the issuing CA; all as CertificateInvalid."""
    now = dt.datetime.now(dt.UTC)
    other = build_pki(tmp_path / "other")
    chain, roots = [pki.ca.issuing_cert], [pki.ca.root_cert]
    with pytest.raises(CertificateInvalid, match="does not chain"):
        profile.verify_chain(pki.auth_cert, chain, [other.ca.root_cert], now, "auth")
    with pytest.raises(CertificateInvalid, match="does not chain"):
        profile.verify_chain(pki.auth_cert, chain, roots, now + dt.timedelta(days=3 * 365), "auth")
    with pytest.raises(CertificateInvalid, match="does not chain"):
        profile.verify_chain(pki.auth_cert, [], roots, now, "auth")
    with pytest.raises(CertificateInvalid, match="no trusted root"):
        profile.verify_chain(pki.auth_cert, chain, [], now, "auth")
    with pytest.raises(CertificateInvalid, match="timezone-aware"):
        profile.verify_chain(pki.auth_cert, chain, roots, now.replace(tzinfo=None), "auth")


def test_verify_chain_checks_purpose(pki: Pki) -> None:
    """A well-chained certificate presented for the wrong purpose is refused."""
    now = dt.datetime.now(dt.UTC)
    chain, roots = [pki.ca.issuing_cert], [pki.ca.root_cert]
    with pytest.raises(CertificateInvalid, match="signing certificate"):
        profile.verify_chain(pki.auth_cert, chain, roots, now, "sign")
    with pytest.raises(CertificateInvalid, match="timeStamping"):
        profile.verify_chain(pki.ocsp_cert, chain, roots, now, "tsa")
    with pytest.raises(CertificateInvalid, match="unknown certificate purpose"):
        profile.verify_chain(pki.auth_cert, chain, roots, now, "banana")


def test_verify_chain_rejects_leaf_signed_by_a_leaf(pki: Pki) -> None:
    """A certificate "issued" by an end-entity (the auth cert's key) does not chain: basicConstraints hold."""
    from cryptography.hazmat.primitives import hashes

    from bridge.pki.keys import generate_private_key

    key = generate_private_key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(profile.sign_cert_subject(MEMBER, "Tax"))
        .issuer_name(pki.auth_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    for ext, critical in profile.sign_cert_extensions(MEMBER):
        builder = builder.add_extension(ext, critical)
    forged = builder.sign(pki.auth_key, hashes.SHA256())
    with pytest.raises(CertificateInvalid, match="does not chain"):
        profile.verify_chain(forged, [pki.auth_cert, pki.ca.issuing_cert], [pki.ca.root_cert], now, "sign")
