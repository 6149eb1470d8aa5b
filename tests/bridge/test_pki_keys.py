"""Key generation and the signature conventions in bridge.pki.keys."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.errors import PkiError
from bridge.pki.keys import (
    KeyAlgorithm,
    algorithm_of,
    cert_sha256_hex,
    generate_private_key,
    sign,
    signature_hash,
    verify_signature,
)


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
def test_generate_sign_verify(algorithm: KeyAlgorithm) -> None:
    """Each algorithm generates a key that signs and verifies with SHA-256, and rejects a changed message."""
    key = generate_private_key(algorithm)
    assert algorithm_of(key) is algorithm
    assert isinstance(signature_hash(key), hashes.SHA256)
    signature = sign(key, b"payload")
    verify_signature(key.public_key(), signature, b"payload")
    with pytest.raises(InvalidSignature):
        verify_signature(key.public_key(), signature, b"payload!")


def test_algorithm_values() -> None:
    """The StrEnum values are the strings written in token indexes and configuration."""
    assert [str(a) for a in KeyAlgorithm] == ["ec-p256", "rsa-2048", "rsa-3072"]


def test_p384_uses_sha384_and_is_not_generated() -> None:
    """P-384 keys (from external CAs) verify with SHA-384 but are not a KeyAlgorithm."""
    key = ec.generate_private_key(ec.SECP384R1())
    assert isinstance(signature_hash(key), hashes.SHA384)
    with pytest.raises(PkiError, match="unsupported curve"):
        algorithm_of(key)


def test_cert_sha256_hex() -> None:
    """The fingerprint is lowercase hex SHA-256 of the DER bytes."""
    assert cert_sha256_hex(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert cert_sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
