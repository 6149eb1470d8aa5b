"""CSR admission (bridge.pki.csr.load_csr): only well-formed, self-signed CSRs with strong keys get in."""

from __future__ import annotations

import pytest
from asn1crypto import csr as a_csr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from bridge.errors import InvalidCsr
from bridge.pki.csr import MAX_CSR_SIZE, load_csr, make_csr
from bridge.pki.keys import KeyAlgorithm, generate_private_key

SUBJECT = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ss1")])


def test_pem_der_and_str_are_accepted() -> None:
    """A CSR made by make_csr loads from PEM bytes, PEM text and DER, with its SAN URIs intact."""
    key = generate_private_key()
    csr = make_csr(key, SUBJECT, ["urn:x-road:SERVER:AZ/GOV/1/ss1"])
    pem = csr.public_bytes(serialization.Encoding.PEM)
    der = csr.public_bytes(serialization.Encoding.DER)
    for data in (pem, pem.decode(), der):
        loaded = load_csr(data)
        assert loaded.public_key() == key.public_key()
        san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:x-road:SERVER:AZ/GOV/1/ss1"]


def test_rsa_csr_is_accepted() -> None:
    """RSA-2048 CSRs are accepted."""
    key = generate_private_key(KeyAlgorithm.RSA_2048)
    assert load_csr(make_csr(key, SUBJECT).public_bytes(serialization.Encoding.DER)).public_key() == key.public_key()


def _der(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = x509.CertificateSigningRequestBuilder().subject_name(SUBJECT).sign(key, algorithm)
    return csr.public_bytes(serialization.Encoding.DER)


def test_garbage_and_truncated() -> None:
    """Random bytes, an empty body, a truncated CSR and a broken PEM are InvalidCsr (Client.InvalidCsr)."""
    der = _der(generate_private_key())
    pem = x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)
    for data in (b"garbage", b"", der[: len(der) // 2], pem[:-40], "-----BEGIN CERTIFICATE REQUEST-----\nAAAA"):
        with pytest.raises(InvalidCsr) as info:
            load_csr(data)
        assert info.value.fault_code == "Client.InvalidCsr"


def test_tampered_signature() -> None:
    """A CSR whose self-signature no longer matches (one signature byte flipped) is refused."""
    der = bytearray(_der(generate_private_key()))
    der[-3] ^= 0x01
    with pytest.raises(InvalidCsr, match="self-signature does not verify"):
        load_csr(bytes(der))


def test_tampered_subject() -> None:
    """A CSR whose signed content was changed after signing (subject CN altered) is refused."""
    der = _der(generate_private_key())
    tampered = der.replace(b"ss1", b"ss2")
    assert tampered != der
    with pytest.raises(InvalidCsr, match="self-signature"):
        load_csr(tampered)


def test_weak_keys() -> None:
    """RSA-1024, curves other than P-256/P-384 (here P-224) and Ed25519 are refused, naming the problem."""
    with pytest.raises(InvalidCsr, match="1024 bits is too weak"):
        load_csr(_der(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    with pytest.raises(InvalidCsr, match="secp224r1 is not allowed"):
        load_csr(_der(ec.generate_private_key(ec.SECP224R1())))
    with pytest.raises(InvalidCsr, match="not allowed"):
        load_csr(_der(ed25519.Ed25519PrivateKey.generate()))


def test_oversized() -> None:
    """Input above the size cap is refused before parsing."""
    with pytest.raises(InvalidCsr, match="larger than"):
        load_csr(b"0" * (MAX_CSR_SIZE + 1))


def test_a_signature_algorithm_cryptography_cannot_read_is_invalid_csr() -> None:
    """RSASSA-PSS without its parameters: cryptography raises ValueError, which must be InvalidCsr (a 400)."""
    key = generate_private_key(KeyAlgorithm.RSA_2048)
    request = a_csr.CertificationRequest.load(make_csr(key, SUBJECT).public_bytes(serialization.Encoding.DER))
    request["signature_algorithm"] = {"algorithm": "rsassa_pss"}
    with pytest.raises(InvalidCsr, match="signature algorithm is not supported"):
        load_csr(request.dump())
