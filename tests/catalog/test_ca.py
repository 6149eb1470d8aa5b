"""The federation CA: certificates it issues chain for openssl and for us, and follow the profile."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from bridge.errors import InvalidCsr, TokenError
from bridge.pki import profile
from bridge.pki.keys import KeyAlgorithm, generate_private_key
from bridge.pki.token import SoftwareToken
from catalog.ca import ISSUING_LABEL, ROOT_LABEL, CertificateAuthority
from tests.support.pki import MEMBER, MEMBER_NAME, PIN, SERVER, Pki, build_pki, csr_for

OPENSSL = "/usr/bin/openssl"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(tmp_path_factory.mktemp("ca"))


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OPENSSL, *map(str, args)], capture_output=True, text=True, timeout=30, check=False)


def test_openssl_verify_accepts_auth_and_sign_certs(pki: Pki) -> None:
    """OpenSSL's own path validation accepts issued auth and sign certificates via the issuing CA to the root."""
    root = pki.pem("root.pem", pki.ca.root_cert)
    issuing = pki.pem("issuing.pem", pki.ca.issuing_cert)
    auth = pki.pem("auth.pem", pki.auth_cert)
    sign = pki.pem("sign.pem", pki.sign_cert)
    result = openssl("verify", "-CAfile", root, "-untrusted", issuing, auth, sign)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{auth}: OK", f"{sign}: OK"]


def test_openssl_verify_with_purpose(pki: Pki) -> None:
    """OpenSSL accepts the auth cert for both TLS client and server use (its EKU and KU fit mutual TLS)."""
    root = pki.pem("root.pem", pki.ca.root_cert)
    issuing = pki.pem("issuing.pem", pki.ca.issuing_cert)
    auth = pki.pem("auth.pem", pki.auth_cert)
    for purpose in ("sslclient", "sslserver"):
        result = openssl("verify", "-purpose", purpose, "-CAfile", root, "-untrusted", issuing, auth)
        assert (result.returncode, result.stdout.strip()) == (0, f"{auth}: OK"), result.stderr


def test_openssl_text_shows_identifiers(pki: Pki) -> None:
    """`openssl x509 -text` shows the identifier URI and the serialNumber path of auth and sign certificates."""
    auth_text = openssl("x509", "-noout", "-text", "-in", pki.pem("auth.pem", pki.auth_cert)).stdout
    sign_text = openssl("x509", "-noout", "-text", "-in", pki.pem("sign.pem", pki.sign_cert)).stdout
    assert "URI:urn:x-road:SERVER:AZ/GOV/1400057421/ss1" in auth_text
    assert "serialNumber = AZ/GOV/1400057421/ss1, O = Ministry of Taxes, CN = ss1" in auth_text
    assert "URI:urn:x-road:MEMBER:AZ/GOV/1400057421" in sign_text
    assert "serialNumber = AZ/GOV/1400057421, O = Ministry of Taxes, CN = 1400057421" in sign_text
    assert "Non Repudiation" in sign_text
    assert "OCSP - URI:http://127.0.0.1/ocsp" in sign_text


def test_issued_certs_pass_our_chain_and_profile_checks(pki: Pki) -> None:
    """verify_chain accepts each service certificate for its own purpose and extracts the right identifiers."""
    now = dt.datetime.now(dt.UTC)
    chain = [pki.ca.issuing_cert]
    roots = [pki.ca.root_cert]
    profile.verify_chain(pki.auth_cert, chain, roots, now, "auth")
    profile.verify_chain(pki.sign_cert, chain, roots, now, "sign")
    profile.verify_chain(pki.ocsp_cert, chain, roots, now, "ocsp")
    profile.verify_chain(pki.tsa_cert, chain, roots, now, "tsa")
    assert profile.server_from_auth_cert(pki.auth_cert) == SERVER
    assert profile.member_from_sign_cert(pki.sign_cert) == MEMBER


def test_csr_subject_and_extensions_are_ignored(pki: Pki) -> None:
    """The CA writes the profile subject for the approved identifier, whatever the CSR asked for."""
    key = generate_private_key()
    other = x509.UniformResourceIdentifier("urn:x-road:MEMBER:AZ/GOV/someone-else")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root of everything")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([other]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert = pki.ca.issue_sign_cert(csr, MEMBER, MEMBER_NAME)
    assert cert.subject == profile.sign_cert_subject(MEMBER, MEMBER_NAME)
    assert cert.public_key() == key.public_key()
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert profile.member_from_sign_cert(cert) == MEMBER


def test_serials_are_random_positive_and_bounded(pki: Pki) -> None:
    """Serials are positive, below 2**159 and at least 64 bits long, and differ between certificates."""
    certs = [pki.ca.issue_ocsp_cert(generate_private_key().public_key()) for _ in range(5)]
    serials = [c.serial_number for c in certs]
    assert len(set(serials)) == 5
    for s in serials:
        assert 2**64 < s < 2**159


def test_ski_aki_and_aia(pki: Pki) -> None:
    """Leaves carry an AKI equal to the issuing CA's SKI and an AIA pointing at the configured OCSP URL."""
    issuing_ski = pki.ca.issuing_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    aki = pki.auth_cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki == issuing_ski
    aia = pki.auth_cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [(d.access_method, d.access_location.value) for d in aia] == [
        (AuthorityInformationAccessOID.OCSP, "http://127.0.0.1/ocsp")
    ]


def test_ca_path_lengths(pki: Pki) -> None:
    """The root allows one CA below it and the issuing CA none."""
    root_bc = pki.ca.root_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    issuing_bc = pki.ca.issuing_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (root_bc.ca, root_bc.path_length) == (True, 1)
    assert (issuing_bc.ca, issuing_bc.path_length) == (True, 0)
    assert pki.ca.chain == (pki.ca.issuing_cert, pki.ca.root_cert)


def test_load_from_token_issues_chaining_certs(pki: Pki) -> None:
    """A CA reloaded from its token (reopened with the PIN) issues certificates that chain to the same root."""
    token = SoftwareToken.open(pki.token.directory, PIN)
    ca = CertificateAuthority.load(token)
    assert ca.root_cert == pki.ca.root_cert
    assert set(token.labels()) >= {ROOT_LABEL, ISSUING_LABEL}
    cert = ca.issue_auth_cert(csr_for(generate_private_key()), SERVER, MEMBER_NAME)
    profile.verify_chain(cert, [ca.issuing_cert], [pki.ca.root_cert], dt.datetime.now(dt.UTC), "auth")


def test_create_refuses_a_token_with_ca_keys(pki: Pki) -> None:
    """Creating a CA twice in one token would orphan the first root; it is refused."""
    with pytest.raises(TokenError, match="already holds CA keys"):
        CertificateAuthority.create(pki.token, "AZ", "Again")


def test_rsa_auth_cert_chains_and_has_key_encipherment(pki: Pki, tmp_path: Path) -> None:
    """An RSA-2048 key gets an auth certificate with keyEncipherment that openssl and verify_chain accept."""
    key = generate_private_key(KeyAlgorithm.RSA_2048)
    cert = pki.ca.issue_auth_cert(csr_for(key), SERVER, MEMBER_NAME, ip_addresses=["127.0.0.1"])
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (ku.digital_signature, ku.key_encipherment) == (True, True)
    profile.verify_chain(cert, [pki.ca.issuing_cert], [pki.ca.root_cert], dt.datetime.now(dt.UTC), "auth")
    leaf = pki.pem("rsa-auth.pem", cert)
    result = openssl(
        "verify",
        "-CAfile",
        pki.pem("root.pem", pki.ca.root_cert),
        "-untrusted",
        pki.pem("issuing.pem", pki.ca.issuing_cert),
        leaf,
    )
    assert (result.returncode, result.stdout.strip()) == (0, f"{leaf}: OK"), result.stderr


def test_rsa_ca(tmp_path: Path) -> None:
    """A CA created with RSA-2048 keys issues an EC auth certificate that chains."""
    token = SoftwareToken.init(tmp_path / "token", PIN)
    ca = CertificateAuthority.create(token, "AZ", "RSA Authority", KeyAlgorithm.RSA_2048)
    cert = ca.issue_auth_cert(csr_for(generate_private_key()), SERVER, MEMBER_NAME)
    profile.verify_chain(cert, [ca.issuing_cert], [ca.root_cert], dt.datetime.now(dt.UTC), "auth")
    assert token.key_info(ROOT_LABEL)["algorithm"] == "rsa-2048"


def test_leaf_never_outlives_the_issuing_ca(pki: Pki) -> None:
    """A validity longer than the issuing CA's remaining life is cut to the issuing CA's notAfter."""
    cert = pki.ca.issue_sign_cert(csr_for(generate_private_key()), MEMBER, MEMBER_NAME, validity_days=100 * 365)
    assert cert.not_valid_after_utc == pki.ca.issuing_cert.not_valid_after_utc


def test_tampered_csr_is_refused(pki: Pki) -> None:
    """The CA re-checks the CSR's self-signature even if the caller skipped load_csr."""
    from cryptography.hazmat.primitives import serialization

    der = bytearray(csr_for(generate_private_key()).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01
    csr = x509.load_der_x509_csr(bytes(der))
    with pytest.raises(InvalidCsr):
        pki.ca.issue_sign_cert(csr, MEMBER, MEMBER_NAME)


def test_service_cert_profiles(pki: Pki) -> None:
    """TSA, OCSP, configuration-signing and TLS certificates carry the EKUs and markers the profile specifies."""
    tsa_eku = pki.tsa_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert (list(tsa_eku.value), tsa_eku.critical) == ([ExtendedKeyUsageOID.TIME_STAMPING], True)
    ocsp_eku = pki.ocsp_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(ocsp_eku) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    assert isinstance(pki.ocsp_cert.extensions.get_extension_for_class(x509.OCSPNoCheck).value, x509.OCSPNoCheck)
    conf = pki.ca.issue_conf_signing_cert(generate_private_key().public_key(), "AZ")
    profile.check_conf_cert(conf)
    assert profile.instance_from_conf_cert(conf) == "AZ"
    tls = pki.ca.issue_tls_server_cert(generate_private_key().public_key(), ["central.example", "127.0.0.1"])
    profile.verify_chain(tls, [pki.ca.issuing_cert], [pki.ca.root_cert], dt.datetime.now(dt.UTC), "tls")
    san = tls.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["central.example"]
