"""The federation certificate authority: a root and an issuing CA whose keys live in a software token.

Issuing is pure: every ``issue_*`` method returns a certificate and persists nothing.  The catalog store records
the certificate (as a :class:`catalog.certregistry.CertRecord`) in the same database transaction as the
registration it belongs to, so an approval either yields a recorded certificate or nothing at all.

Only a CSR's public key is used.  The subject, extensions and SubjectAltNames a requester asks for are ignored and
replaced by the profile's (:mod:`bridge.pki.profile`) for the identifier the central server approved: a requester
must never be able to choose the identity or the powers written into its certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from collections.abc import Sequence

from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from bridge.errors import CertificateInvalid, InvalidCsr, TokenError
from bridge.identifiers import MemberId, SecurityServerId, check_code
from bridge.pki import profile
from bridge.pki.csr import check_public_key_strength
from bridge.pki.keys import KeyAlgorithm, PrivateKey, PublicKey, as_public_key, signature_hash
from bridge.pki.token import SoftwareToken

__all__ = ["ISSUING_LABEL", "ROOT_LABEL", "CertificateAuthority", "random_serial"]

#: Token label of the root CA key and certificate.
ROOT_LABEL = "ca-root"
#: Token label of the issuing (intermediate) CA key and certificate.
ISSUING_LABEL = "ca-issuing"

ROOT_VALIDITY = dt.timedelta(days=20 * 365)
ISSUING_VALIDITY = dt.timedelta(days=10 * 365)
#: Certificates are back-dated this much so a peer whose clock runs slightly behind still accepts them.
BACKDATE = dt.timedelta(minutes=5)


def random_serial() -> int:
    """A random, positive certificate serial of 152 bits: < 2**159 and far above the 64 bits CA/B asks for."""
    # The top bit is forced so every serial has the same length, and the value stays under 20 octets in DER.
    return secrets.randbits(151) | (1 << 151)


def _now(now: dt.datetime | None) -> dt.datetime:
    return (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)


class CertificateAuthority:
    """The federation CA.  Build with :meth:`create` (first start) or :meth:`load` (every later start)."""

    def __init__(
        self,
        root_cert: x509.Certificate,
        issuing_cert: x509.Certificate,
        issuing_key: PrivateKey,
        *,
        ocsp_url: str | None = None,
    ) -> None:
        if issuing_cert.public_key() != issuing_key.public_key():
            raise TokenError("the issuing CA key does not match the issuing CA certificate")
        self._root = root_cert
        self._issuing = issuing_cert
        self._key = issuing_key
        #: OCSP URL written into issued certificates' AuthorityInformationAccess (none if ``None``).
        self.ocsp_url = ocsp_url

    @classmethod
    def create(
        cls,
        token: SoftwareToken,
        instance: str,
        name: str,
        algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256,
        *,
        ocsp_url: str | None = None,
        now: dt.datetime | None = None,
    ) -> CertificateAuthority:
        """Generate the root (pathLen 1) and issuing CA (pathLen 0) keys in ``token`` and certify them.

        ``instance`` is the X-Road instance the CA serves and ``name`` the authority's name; both go into the CA
        subjects.  Raises :class:`TokenError` if the token already holds CA keys.
        """
        check_code(instance, "xRoadInstance")
        if token.has_key(ROOT_LABEL) or token.has_key(ISSUING_LABEL):
            raise TokenError("the token already holds CA keys; use CertificateAuthority.load")
        start = _now(now) - BACKDATE
        token.generate_key(ROOT_LABEL, algorithm, usage="ca")
        token.generate_key(ISSUING_LABEL, algorithm, usage="ca")
        root_key = token.private_key(ROOT_LABEL)
        issuing_key = token.private_key(ISSUING_LABEL)

        def subject(cn: str) -> x509.Name:
            return x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, instance),
                    x509.NameAttribute(NameOID.COMMON_NAME, cn),
                ]
            )

        root_name = subject(f"{name} Root CA")
        root_builder = (
            x509.CertificateBuilder()
            .subject_name(root_name)
            .issuer_name(root_name)
            .public_key(root_key.public_key())
            .serial_number(random_serial())
            .not_valid_before(start)
            .not_valid_after(start + ROOT_VALIDITY)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        )
        for ext, critical in profile.ca_extensions(path_length=1):
            root_builder = root_builder.add_extension(ext, critical)
        root_cert = root_builder.sign(root_key, signature_hash(root_key))

        issuing_builder = (
            x509.CertificateBuilder()
            .subject_name(subject(f"{name} Issuing CA"))
            .issuer_name(root_name)
            .public_key(issuing_key.public_key())
            .serial_number(random_serial())
            .not_valid_before(start)
            .not_valid_after(start + ISSUING_VALIDITY)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(issuing_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        )
        for ext, critical in profile.ca_extensions(path_length=0):
            issuing_builder = issuing_builder.add_extension(ext, critical)
        issuing_cert = issuing_builder.sign(root_key, signature_hash(root_key))

        token.store_certificate(ROOT_LABEL, root_cert)
        token.store_certificate(ISSUING_LABEL, issuing_cert)
        return cls(root_cert, issuing_cert, issuing_key, ocsp_url=ocsp_url)

    @classmethod
    def load(cls, token: SoftwareToken, *, ocsp_url: str | None = None) -> CertificateAuthority:
        """Load the CA made earlier by :meth:`create` from ``token``."""
        root_cert = token.certificate(ROOT_LABEL)
        issuing_cert = token.certificate(ISSUING_LABEL)
        if root_cert is None or issuing_cert is None:
            raise TokenError("the token holds no CA certificates; create the CA first")
        return cls(root_cert, issuing_cert, token.private_key(ISSUING_LABEL), ocsp_url=ocsp_url)

    # Properties ------------------------------------------------------------------------------------------------

    @property
    def root_cert(self) -> x509.Certificate:
        """The self-signed root certificate: the trust anchor security servers get in global configuration."""
        return self._root

    @property
    def issuing_cert(self) -> x509.Certificate:
        """The issuing CA certificate that signs every end-entity certificate."""
        return self._issuing

    @property
    def chain(self) -> tuple[x509.Certificate, x509.Certificate]:
        """``(issuing, root)``: what to send after a leaf so a verifier can build the path."""
        return (self._issuing, self._root)

    # Issuing ---------------------------------------------------------------------------------------------------

    def issue_auth_cert(
        self,
        csr: x509.CertificateSigningRequest,
        server: SecurityServerId,
        owner_name: str,
        *,
        validity_days: int = 730,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """Issue the authentication certificate of ``server`` for the key in ``csr`` (its subject is ignored)."""
        key = self._csr_key(csr)
        return self._issue(
            key,
            profile.auth_cert_subject(server, owner_name),
            profile.auth_cert_extensions(server, key, dns_names, ip_addresses),
            validity_days,
            now,
        )

    def issue_sign_cert(
        self,
        csr: x509.CertificateSigningRequest,
        member: MemberId,
        member_name: str,
        *,
        validity_days: int = 730,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """Issue the signing certificate of ``member`` for the key in ``csr`` (its subject is ignored)."""
        return self._issue(
            self._csr_key(csr),
            profile.sign_cert_subject(member, member_name),
            profile.sign_cert_extensions(member),
            validity_days,
            now,
        )

    def issue_ocsp_cert(
        self, public_key: PublicKey, *, validity_days: int = 365, now: dt.datetime | None = None
    ) -> x509.Certificate:
        """Issue the delegated OCSP responder certificate (EKU OCSPSigning, ocsp-nocheck)."""
        return self._issue(
            self._checked_key(public_key),
            self._service_subject("OCSP Responder"),
            profile.ocsp_cert_extensions(),
            validity_days,
            now,
            with_aia=False,  # ocsp-nocheck: nobody asks the responder about its own certificate
        )

    def issue_tsa_cert(
        self, public_key: PublicKey, *, validity_days: int = 1825, now: dt.datetime | None = None
    ) -> x509.Certificate:
        """Issue the timestamp authority's certificate (EKU timeStamping, critical)."""
        return self._issue(
            self._checked_key(public_key),
            self._service_subject("Timestamp Authority"),
            profile.tsa_cert_extensions(),
            validity_days,
            now,
        )

    def issue_conf_signing_cert(
        self, public_key: PublicKey, instance: str, *, validity_days: int = 1825, now: dt.datetime | None = None
    ) -> x509.Certificate:
        """Issue a global-configuration signing certificate for ``instance``."""
        return self._issue(
            self._checked_key(public_key),
            self._service_subject(f"Configuration Signer {instance}"),
            profile.conf_cert_extensions(instance),
            validity_days,
            now,
        )

    def issue_tls_server_cert(
        self,
        public_key: PublicKey,
        hostnames: Sequence[str],
        *,
        validity_days: int = 397,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """Issue the TLS server certificate of the central server's HTTPS endpoints for ``hostnames``."""
        return self._issue(
            self._checked_key(public_key),
            self._service_subject(hostnames[0] if hostnames else "?"),
            profile.tls_server_cert_extensions(hostnames),
            validity_days,
            now,
        )

    # Internals -------------------------------------------------------------------------------------------------

    def _service_subject(self, cn: str) -> x509.Name:
        # Service certificates carry the authority's organisation and unit so they read as the CA's own.
        keep = [a for a in self._issuing.subject if a.oid != NameOID.COMMON_NAME]
        return x509.Name([*keep, x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    @staticmethod
    def _checked_key(public_key: object) -> PublicKey:
        try:
            check_public_key_strength(public_key)
        except InvalidCsr as exc:
            raise CertificateInvalid(exc.message) from exc
        return as_public_key(public_key)

    @staticmethod
    def _csr_key(csr: x509.CertificateSigningRequest) -> PublicKey:
        # load_csr already checked the CSR on the way in; re-check here because the CA is the last line.
        if not csr.is_signature_valid:
            raise InvalidCsr("the CSR's self-signature does not verify")
        key = csr.public_key()
        check_public_key_strength(key)
        return as_public_key(key)

    def _issue(
        self,
        public_key: PublicKey,
        subject: x509.Name,
        extensions: profile.Extensions,
        validity_days: int,
        now: dt.datetime | None,
        *,
        with_aia: bool = True,
    ) -> x509.Certificate:
        if validity_days <= 0:
            raise CertificateInvalid("validity_days must be positive")
        start = _now(now) - BACKDATE
        # A leaf must not outlive its issuer: verifiers would reject it after the issuer expires anyway, and a
        # certificate that claims validity it cannot have misleads whoever reads it.
        end = min(start + dt.timedelta(days=validity_days), self._issuing.not_valid_after_utc)
        if end <= start:
            raise CertificateInvalid("the issuing CA certificate has expired")
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._issuing.subject)
            .public_key(public_key)
            .serial_number(random_serial())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        if with_aia and self.ocsp_url:
            builder = builder.add_extension(
                x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(
                            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(self.ocsp_url)
                        )
                    ]
                ),
                critical=False,
            )
        for ext, critical in extensions:
            builder = builder.add_extension(ext, critical)
        return builder.sign(self._key, signature_hash(self._key))
