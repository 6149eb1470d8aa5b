"""Mutual TLS between security servers: this server's identity and the SSL contexts built from global configuration.

Security servers authenticate each other with their *authentication* certificates.  The handshake (OpenSSL)
proves that the peer holds the key of a certificate chaining to an approved CA; which security server that
certificate belongs to, and whether it is still good, is decided after the handshake by the pure checks in
:mod:`security_server.certcheck` (hash binding to global configuration, stapled OCSP).

Policy of every context built here (``docs/`` transport spec, DESIGN decision 2):

* TLS 1.2 or 1.3; OpenSSL negotiates the highest version both sides support, so 1.3 is preferred.
* TLS 1.2 cipher suites only with ECDHE key exchange (forward secrecy) and AEAD encryption (AES-GCM,
  ChaCha20-Poly1305); TLS 1.3 suites are all AEAD with (EC)DHE by definition.
* Both sides present a certificate and require one from the peer (``CERT_REQUIRED``), trusting exactly the
  top certificates of the approved CAs in global configuration, never the system store.
* No compression (CRIME), no renegotiation (a renegotiated session could change the peer identity after our
  checks ran).

Python's :mod:`ssl` loads keys only from files.  The private key file is the token's own encrypted PKCS#8 file,
decrypted inside OpenSSL with the PIN passed as ``password``, so no plaintext key is ever written to disk; only
the public certificate chain is written, under the state directory.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding

from bridge.errors import CertificateInvalid, KeyNotFound, SslAuthenticationFailed, TokenError, WrongPin
from bridge.fsutil import write_atomic
from bridge.globalconf import GlobalConf
from bridge.pki.token import SoftwareToken

__all__ = [
    "TLS12_CIPHERS",
    "TlsContexts",
    "TlsIdentity",
    "ca_set_digest",
    "client_context",
    "peer_certificate",
    "server_context",
]

#: OpenSSL cipher string for TLS 1.2: ECDHE key exchange with AES-GCM or ChaCha20-Poly1305 only.  ``set_ciphers``
#: does not touch TLS 1.3 suites, whose defaults (AES-GCM, ChaCha20-Poly1305) are all AEAD already.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!PSK:!SRP:!DSS"

#: Subdirectory of the state directory holding the public certificate chain files.
CHAIN_DIR = "tls"


class _HasExtraInfo(Protocol):
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


@dataclass(frozen=True)
class TlsIdentity:
    """Our security server's authentication certificate, the chain sent after it, and access to its private key.

    ``chain_file`` is the PEM of the leaf followed by its issuing CA certificate(s) (public data);
    ``key_file`` the token's encrypted PKCS#8 key file; ``password`` returns the PIN that decrypts it.  Build
    with :meth:`from_token`.
    """

    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    chain_file: Path
    key_file: Path
    password: Callable[[], bytes] = field(repr=False)

    @classmethod
    def from_token(
        cls,
        token: SoftwareToken,
        label: str,
        pin: str,
        state_dir: Path,
        chain: Sequence[x509.Certificate] = (),
    ) -> TlsIdentity:
        """The identity of key ``label`` in ``token``: its stored certificate plus ``chain`` (issuing CA first).

        Writes the public chain file to ``state_dir/tls/<label>.chain.pem``.  Raises :class:`KeyNotFound` if the
        token has no such key or no certificate for it, :class:`TokenError` if the key file is not encrypted or
        does not belong to the certificate, and :class:`WrongPin` if ``pin`` does not decrypt it.
        """
        # (1) The key and its certificate exist in the token.
        if not token.has_key(label):
            raise KeyNotFound(f"no key labelled {label!r} in the token")
        cert = token.certificate(label)
        if cert is None:
            raise KeyNotFound(f"the key labelled {label!r} has no certificate yet")
        # (2) The key file, at the place the token's documented layout gives it, is encrypted.  OpenSSL would
        #     happily load a plaintext key and ignore the password, so a tampered token must be caught here.
        key_file = Path(token.directory) / f"{label}.key.pem"
        try:
            pem = key_file.read_bytes()
        except OSError as exc:
            raise TokenError(f"cannot read the key file of {label!r}: {exc.strerror}") from None
        if not pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----"):
            raise TokenError(f"the key file of {label!r} is not an encrypted PKCS#8 file")
        # (3) The PIN opens it and the key is the certificate's.  Checked here, once, because OpenSSL reports a
        #     wrong password only as an anonymous "PEM lib" error when the context is built.
        try:
            key = serialization.load_pem_private_key(pem, password=pin.encode())
        except (ValueError, TypeError):
            raise WrongPin(f"the PIN does not decrypt the key labelled {label!r}") from None
        if key.public_key() != cert.public_key():
            raise TokenError(f"the key labelled {label!r} does not belong to its certificate")
        # (4) Write the public chain (leaf first, as TLS sends it) atomically, so a concurrent context build never
        #     reads half a file.
        chain = tuple(chain)
        chain_file = Path(state_dir) / CHAIN_DIR / f"{label}.chain.pem"
        write_atomic(chain_file, b"".join(c.public_bytes(Encoding.PEM) for c in (cert, *chain)), mode=0o644)
        secret = pin.encode()
        return cls(cert, chain, chain_file, key_file, lambda: secret)

    @property
    def cert_der(self) -> bytes:
        """DER of the authentication certificate."""
        return self.cert.public_bytes(Encoding.DER)

    def load_into(self, context: ssl.SSLContext) -> None:
        """Load the chain and key into ``context``; raises :class:`TokenError` if OpenSSL cannot."""
        try:
            context.load_cert_chain(self.chain_file, self.key_file, password=self.password)
        except ssl.SSLError as exc:
            # from_token() checked PIN and key; reaching this means a file changed since (a rotated or tampered key).
            raise TokenError(f"cannot load the TLS key and certificate: {exc.reason or exc}") from None
        except OSError as exc:
            raise TokenError(f"cannot read the TLS key or certificate file: {exc.strerror}") from None


def _ders(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(Encoding.DER) for c in certs)


def _harden(
    context: ssl.SSLContext,
    identity: TlsIdentity,
    trust_anchors: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
) -> ssl.SSLContext:
    """Apply the policy shared by both ends (see the module docstring) and load identity and trust."""
    if not trust_anchors:
        # An empty trust store would make every handshake fail with an obscure message; say why instead.
        raise CertificateInvalid("global configuration lists no approved CA: no peer can be authenticated")
    # (1) Versions: TLS 1.2 minimum; no maximum, so TLS 1.3 wins whenever the peer has it.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # (2) TLS 1.2 suites: ECDHE + AEAD only.
    context.set_ciphers(TLS12_CIPHERS)
    # (3) No compression, no renegotiation.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # (4) Peer certificate required, chained to an approved CA.  Intermediates go into the same store only to help
    #     path building for peers that send just their leaf.  That does not make them trust anchors: without
    #     X509_V_FLAG_PARTIAL_CHAIN (cleared explicitly; Python 3.13 turns it on in create_default_context),
    #     OpenSSL accepts a chain only if it ends in a self-signed certificate of the store, i.e. a top cert.
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags &= ~ssl.VERIFY_X509_PARTIAL_CHAIN
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.load_verify_locations(cadata=_ders([*trust_anchors, *intermediates]))
    # (5) Our own certificate, chain and key.
    identity.load_into(context)
    return context


def server_context(
    identity: TlsIdentity,
    trust_anchors: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
) -> ssl.SSLContext:
    """The server proxy's context: mutual TLS with the policy above, trusting ``trust_anchors`` (CA top certs)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # Our cipher order, not the client's, decides among the (all acceptable) TLS 1.2 suites.
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return _harden(context, identity, trust_anchors, intermediates)


def client_context(
    identity: TlsIdentity,
    trust_anchors: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
) -> ssl.SSLContext:
    """The client proxy's context: mutual TLS with the policy above, no host-name check.

    The caller must bind the peer to the security server it chose with
    :meth:`security_server.certcheck.PeerBinding.check_server` before sending anything that matters over the
    connection.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Host names are not checked, by design.  We do not choose a peer by DNS name but by security-server
    # identifier, and global configuration (signed by the central server) gives both its address and the SHA-256
    # hashes of its registered authentication certificates.  After the handshake the peer's certificate must hash
    # to one of those (PeerBinding.check_server).  That pins the exact certificate the central server registered
    # for that server, which is stronger than a host-name check: a host-name check accepts *any* certificate an
    # approved CA issued for the name (including one obtained by someone else, or for a hijacked DNS entry),
    # whereas the hash accepts only the registered one.  The chain to an approved CA is still verified here.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    return _harden(context, identity, trust_anchors, intermediates)


def peer_certificate(source: ssl.SSLObject | ssl.SSLSocket | _HasExtraInfo) -> bytes:
    """The DER of the peer's leaf certificate on a TLS connection.

    ``source`` is an :class:`ssl.SSLObject` / :class:`ssl.SSLSocket`, or an asyncio transport (or anything with
    ``get_extra_info``, such as ``request.transport`` in aiohttp).  Raises :class:`SslAuthenticationFailed` if
    the connection is not TLS or the peer presented no certificate.
    """
    is_ssl = isinstance(source, ssl.SSLObject | ssl.SSLSocket)
    ssl_object: Any = source if is_ssl else source.get_extra_info("ssl_object")  # type: ignore[union-attr]
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        raise SslAuthenticationFailed("the connection is not protected by TLS")
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise SslAuthenticationFailed("the peer presented no certificate")
    return der


def ca_set_digest(conf: GlobalConf) -> str:
    """A SHA-256 over the approved CAs' top and intermediate certificates, independent of their order.

    Two configurations with the same digest trust exactly the same certificates, so contexts built for one serve
    the other.
    """
    tops = sorted(ca.top_cert for ca in conf.cas)
    intermediates = sorted({der for ca in conf.cas for der in ca.intermediate_certs})
    digest = hashlib.sha256()
    # Length-prefixed, and the two lists separated, so no concatenation of one set can collide with another.
    for group in (tops, intermediates):
        digest.update(len(group).to_bytes(4, "big"))
        for der in group:
            digest.update(len(der).to_bytes(4, "big") + der)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Built:
    instance: str
    version: int
    ca_digest: str
    server: ssl.SSLContext
    client: ssl.SSLContext


class TlsContexts:
    """Server and client contexts for :class:`TlsIdentity`, rebuilt only when the approved CA set changes.

    Building a context decrypts the key (a PBKDF2 run) and parses every CA certificate, so it is done once per CA
    set, not per configuration version: a new version with the same CAs returns the very same context objects,
    which keeps aiohttp's pooled connections (keyed by context) usable.
    """

    def __init__(self, identity: TlsIdentity) -> None:
        self.identity = identity
        self._built: _Built | None = None
        #: How many times contexts were built (for status and tests).
        self.builds = 0

    def for_conf(self, conf: GlobalConf) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """``(server_context, client_context)`` trusting the approved CAs of ``conf``.

        O(1) for the version already seen; one digest over the CA certificates for a new version.  Raises
        :class:`CertificateInvalid` if a CA certificate in ``conf`` does not parse or none is listed.
        """
        built = self._built  # read once: a concurrent rebuild swaps the whole tuple
        if built is not None and built.version == conf.version and built.instance == conf.instance:
            return built.server, built.client
        digest = ca_set_digest(conf)
        if built is not None and built.ca_digest == digest:
            self._built = _Built(conf.instance, conf.version, digest, built.server, built.client)
            return built.server, built.client
        anchors, intermediates = _parse_cas(conf)
        server = server_context(self.identity, anchors, intermediates)
        client = client_context(self.identity, anchors, intermediates)
        self._built = _Built(conf.instance, conf.version, digest, server, client)
        self.builds += 1
        return server, client


def _parse_cas(conf: GlobalConf) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    try:
        anchors = [x509.load_der_x509_certificate(ca.top_cert) for ca in conf.cas]
        intermediates = [x509.load_der_x509_certificate(der) for ca in conf.cas for der in ca.intermediate_certs]
    except ValueError as exc:
        raise CertificateInvalid(f"an approved CA certificate in global configuration does not parse: {exc}") from None
    return anchors, intermediates


def self_signed_internal_cert(key: Any, server_code: str, *, days: int = 3650) -> x509.Certificate:
    """A self-signed TLS server certificate for the client proxy's HTTPS listener (what X-Road calls internal).

    Information systems pin it (it is not issued by the federation CA: it faces the agency's own network).
    """
    import datetime as dt
    import ipaddress

    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{server_code} client proxy")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
