"""Certificate signing requests: making them on a security server, and admitting them on the central server.

:func:`load_csr` is the gate through which an untrusted CSR enters the CA: it caps the size, parses PEM or DER,
checks the self-signature (proof that the requester holds the private key) and refuses weak keys.  The CA then
uses only the CSR's public key; see :mod:`catalog.ca` for why the requested subject is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bridge.errors import InvalidCsr
from bridge.pki.keys import PrivateKey, signature_hash

__all__ = ["MAX_CSR_SIZE", "check_public_key_strength", "load_csr", "make_csr"]

#: Largest CSR (PEM or DER) :func:`load_csr` reads; real ones are 0.5-2 KiB.
MAX_CSR_SIZE = 64 * 1024

_MIN_RSA_BITS = 2048
_ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)
_ALLOWED_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)


def make_csr(
    private_key: PrivateKey, subject: x509.Name, san_uris: Sequence[str] = ()
) -> x509.CertificateSigningRequest:
    """Build a CSR for ``private_key`` with ``subject`` and optional SubjectAltName URIs, self-signed."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if san_uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in san_uris]), critical=False
        )
    return builder.sign(private_key, signature_hash(private_key))


def check_public_key_strength(key: object) -> None:
    """Raise :class:`InvalidCsr` unless ``key`` is RSA ≥ 2048 bits or EC on P-256/P-384."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise InvalidCsr(f"RSA key of {key.key_size} bits is too weak; at least {_MIN_RSA_BITS} are required")
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _ALLOWED_CURVES):
            raise InvalidCsr(f"elliptic curve {key.curve.name} is not allowed; use P-256 or P-384")
        return
    raise InvalidCsr(f"key type {type(key).__name__} is not allowed; use EC P-256/P-384 or RSA")


def load_csr(data: bytes | str) -> x509.CertificateSigningRequest:
    """Parse and check an untrusted CSR (PEM or DER); raise :class:`InvalidCsr` if it cannot be used."""
    # (1) Cap the size before parsing anything.
    raw = data.encode("ascii", "replace") if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_CSR_SIZE:
        raise InvalidCsr(f"the CSR is larger than {MAX_CSR_SIZE} bytes")
    # (2) Parse: PEM if it has a PEM header, DER otherwise.
    try:
        is_pem = raw.lstrip().startswith(b"-----BEGIN")
        csr = x509.load_pem_x509_csr(raw) if is_pem else x509.load_der_x509_csr(raw)
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidCsr("the CSR does not parse as PKCS#10 (PEM or DER)") from exc
    # (3) Refuse weak keys before spending time on the signature.
    check_public_key_strength(public_key)
    # (4) The self-signature proves possession of the private key; it must use a current hash.
    try:
        hash_algorithm = csr.signature_hash_algorithm
    except (UnsupportedAlgorithm, ValueError) as exc:  # ValueError: e.g. RSASSA-PSS without its parameters
        raise InvalidCsr("the CSR's signature algorithm is not supported") from exc
    if not isinstance(hash_algorithm, _ALLOWED_HASHES):
        raise InvalidCsr("the CSR must be signed with SHA-256, SHA-384 or SHA-512")
    try:
        signature_valid = csr.is_signature_valid
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise InvalidCsr("the CSR's self-signature cannot be checked") from exc
    if not signature_valid:
        raise InvalidCsr("the CSR's self-signature does not verify")
    # (5) Touch the extensions so that a malformed one fails here, not later inside the CA.
    try:
        _ = list(csr.extensions)
    except ValueError as exc:
        raise InvalidCsr("the CSR has a malformed extension") from exc
    return csr
