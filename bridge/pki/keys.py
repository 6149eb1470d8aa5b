"""Key generation and the signature conventions every Körpü signer and verifier shares.

Körpü signs with exactly two schemes, chosen by the key type: ECDSA with SHA-256 for P-256 keys (the default,
small and fast) and RSASSA-PKCS1-v1_5 with SHA-256 for RSA keys (for federations whose auditors or HSMs expect
RSA).  Keeping the choice in one place means a certificate, an OCSP response and a timestamp signed by the same
key always use the same algorithm.
"""

from __future__ import annotations

import enum
import hashlib
from typing import TypeAlias

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes, PublicKeyTypes

from bridge.errors import PkiError

__all__ = [
    "KeyAlgorithm",
    "PrivateKey",
    "PublicKey",
    "algorithm_of",
    "as_private_key",
    "as_public_key",
    "cert_sha256_hex",
    "generate_private_key",
    "sign",
    "signature_hash",
    "verify_signature",
]

#: The private key types Körpü generates and signs with.
PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
#: The matching public key types.
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class KeyAlgorithm(enum.StrEnum):
    """The key algorithms a token can generate; the value is what the token index and configuration files hold."""

    EC_P256 = "ec-p256"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"


def generate_private_key(algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256) -> PrivateKey:
    """Generate a fresh private key of ``algorithm``."""
    algorithm = KeyAlgorithm(algorithm)
    if algorithm is KeyAlgorithm.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    bits = 2048 if algorithm is KeyAlgorithm.RSA_2048 else 3072
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def as_private_key(key: object) -> PrivateKey:
    """Return ``key`` narrowed to :data:`PrivateKey`, or raise :class:`PkiError` for any other key type."""
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        return key
    raise PkiError(f"unsupported private key type {type(key).__name__}")


def as_public_key(key: PublicKeyTypes | object) -> PublicKey:
    """Return ``key`` narrowed to :data:`PublicKey`, or raise :class:`PkiError` for any other key type."""
    if isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return key
    raise PkiError(f"unsupported public key type {type(key).__name__}")


def algorithm_of(key: PrivateKey | PublicKey) -> KeyAlgorithm:
    """The :class:`KeyAlgorithm` of ``key``; raises :class:`PkiError` for curves or sizes Körpü does not generate."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return KeyAlgorithm.EC_P256
        raise PkiError(f"unsupported curve {key.curve.name}")
    if key.key_size == 2048:
        return KeyAlgorithm.RSA_2048
    if key.key_size == 3072:
        return KeyAlgorithm.RSA_3072
    raise PkiError(f"unsupported RSA key size {key.key_size}")


def signature_hash(key: PrivateKey | PublicKey | CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | hashes.SHA384:
    """The hash Körpü signs with for ``key``: SHA-256 for P-256 and RSA, SHA-384 for P-384 keys."""
    # P-384 only appears in certificates from external CAs; matching the hash to the curve strength is what
    # RFC 5480 recommends and what other verifiers expect.
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1):
        return hashes.SHA384()
    return hashes.SHA256()


def sign(key: PrivateKey, data: bytes) -> bytes:
    """Sign ``data`` with ``key``: ECDSA-SHA256 (DER signature) or RSA PKCS#1 v1.5 SHA-256."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(signature_hash(key)))
    return key.sign(data, padding.PKCS1v15(), signature_hash(key))


def verify_signature(
    key: PublicKey, signature: bytes, data: bytes, hash_algorithm: hashes.HashAlgorithm | None = None
) -> None:
    """Verify ``signature`` over ``data``; raises :class:`cryptography.exceptions.InvalidSignature` if it fails.

    ``hash_algorithm`` defaults to :func:`signature_hash` of the key; pass the one a signed structure names.
    """
    algorithm = hash_algorithm if hash_algorithm is not None else signature_hash(key)
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(algorithm))
    else:
        key.verify(signature, data, padding.PKCS1v15(), algorithm)


def cert_sha256_hex(der: bytes) -> str:
    """SHA-256 fingerprint of a certificate's DER encoding, as lowercase hex (how Körpü names certificates)."""
    return hashlib.sha256(der).hexdigest()
