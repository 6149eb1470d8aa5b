"""Pure checks of peer certificates against global configuration: who a TLS peer is, and whether a cert is good.

* :class:`PeerBinding` answers *which registered security server* a TLS peer is, by the SHA-256 hash of its
  authentication certificate among the ``auth_cert_hashes`` global configuration lists (X-Road's binding: the
  central server registers exact certificates, not names).
* :class:`CertificateChecker` answers *whether a certificate may be relied on now*: profile, chain to an approved
  CA, validity, and a GOOD, fresh OCSP response that the peer sent along ("stapled"), so the receiving side never
  calls an OCSP responder on the message path.  Positive results are cached until the earliest moment any input
  to them could turn bad, so a known peer costs a dict lookup per message.

Both raise or return an identifier; neither returns a boolean, and both fail closed: an unexpected exception
inside a check becomes :class:`CertificateInvalid`.  No I/O happens here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from bridge.errors import CertificateInvalid, KorpuError, SslAuthenticationFailed
from bridge.globalconf import ApprovedCA, GlobalConf, SecurityServerInfo
from bridge.identifiers import ClientId, MemberId, SecurityServerId
from bridge.pki.ocsp import require_good
from bridge.pki.profile import CertPurpose, member_from_sign_cert, server_from_auth_cert, verify_chain

__all__ = ["DEFAULT_CACHE_SIZE", "CertificateChecker", "PeerBinding"]

#: Most positive results :class:`CertificateChecker` keeps (a federation has far fewer live certificates).
DEFAULT_CACHE_SIZE = 10_000


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class _ServerIndex:
    conf: GlobalConf
    by_hash: dict[str, SecurityServerInfo]
    ambiguous: frozenset[str]


class PeerBinding:
    """Binds TLS peers to the security servers global configuration registers for their certificates.

    The hash-to-server index is built once per configuration object and reused while the same object is passed
    (the global-configuration client hands out one object per version).
    """

    def __init__(self) -> None:
        self._indexed: _ServerIndex | None = None

    def _index(self, conf: GlobalConf) -> _ServerIndex:
        held = self._indexed  # read once: a concurrent caller may swap in another configuration's index
        if held is not None and held.conf is conf:
            return held
        by_hash: dict[str, SecurityServerInfo] = {}
        ambiguous: set[str] = set()
        for server in conf.servers:
            for cert_hash in server.auth_cert_hashes:
                key = cert_hash.lower()
                if key in by_hash and by_hash[key].id != server.id:
                    ambiguous.add(key)
                by_hash[key] = server
        # A certificate registered for two servers would make the caller's identity ambiguous.  The central server
        # must never publish that; if it does, the certificate identifies neither server.
        for key in ambiguous:
            del by_hash[key]
        index = _ServerIndex(conf, by_hash, frozenset(ambiguous))
        self._indexed = index
        return index

    def check_server(self, conf: GlobalConf, peer_cert_der: bytes, expected: SecurityServerId) -> None:
        """Client side: raise :class:`SslAuthenticationFailed` unless the peer is the server ``expected``.

        (1) ``expected`` is registered in ``conf``; (2) the SHA-256 of the peer's certificate is one of its
        registered authentication certificate hashes.
        """
        server = conf.server(expected)
        if server is None:
            raise SslAuthenticationFailed(f"security server {expected} is not registered in global configuration")
        cert_hash = _sha256_hex(peer_cert_der)
        if cert_hash not in {h.lower() for h in server.auth_cert_hashes}:
            raise SslAuthenticationFailed(
                f"the TLS peer's certificate (sha256 {cert_hash}) is not registered for security server {expected}"
            )

    def identify_client_server(self, conf: GlobalConf, peer_cert_der: bytes) -> SecurityServerInfo:
        """Server side: the registered security server whose authentication certificate the calling peer used.

        Raises :class:`SslAuthenticationFailed` if no server (or more than one) registers that certificate.
        """
        cert_hash = _sha256_hex(peer_cert_der)
        index = self._index(conf)
        server = index.by_hash.get(cert_hash)
        if server is None:
            if cert_hash in index.ambiguous:
                raise SslAuthenticationFailed(
                    f"the TLS peer's certificate (sha256 {cert_hash}) is registered for more than one security server"
                )
            raise SslAuthenticationFailed(
                f"the TLS peer's certificate (sha256 {cert_hash}) is not registered for any security server"
            )
        return server

    def check_hosts_client(self, conf: GlobalConf, server: SecurityServerInfo, client: ClientId) -> None:
        """Raise :class:`SslAuthenticationFailed` unless ``client`` is registered on ``server``.

        The server proxy calls this with the result of :meth:`identify_client_server` and the request's client, so
        a security server can only send requests on behalf of clients registered on it.  The exact client must be
        registered there (a subsystem is not covered by its member's registration), as in X-Road.
        """
        if not any(s.id == server.id for s in conf.servers_for(client)):
            raise SslAuthenticationFailed(f"client {client} is not registered on security server {server.id}")


@dataclass(frozen=True, slots=True)
class _Ca:
    """An approved CA with its certificates parsed once per configuration."""

    info: ApprovedCA
    top: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]
    responders: tuple[x509.Certificate, ...]
    #: Every certificate of this CA that may have issued an end-entity certificate, by subject.
    issuers: dict[x509.Name, tuple[x509.Certificate, ...]]


@dataclass(frozen=True, slots=True)
class _Trust:
    conf: GlobalConf
    cas: tuple[_Ca, ...]


@dataclass(frozen=True, slots=True)
class _Verdict:
    ident: MemberId | SecurityServerId
    checked_at: dt.datetime
    valid_until: dt.datetime


def _parse_trust(conf: GlobalConf) -> _Trust:
    cas = []
    for ca in conf.cas:
        try:
            top = x509.load_der_x509_certificate(ca.top_cert)
            intermediates = tuple(x509.load_der_x509_certificate(d) for d in ca.intermediate_certs)
            responders = tuple(x509.load_der_x509_certificate(d) for d in ca.ocsp_responder_certs)
        except ValueError:
            # One broken CA entry must not disable the others; certificates under it simply do not chain.
            continue
        issuers: dict[x509.Name, list[x509.Certificate]] = {}
        for cert in (*intermediates, top):
            issuers.setdefault(cert.subject, []).append(cert)
        cas.append(_Ca(ca, top, intermediates, responders, {k: tuple(v) for k, v in issuers.items()}))
    return _Trust(conf, tuple(cas))


class CertificateChecker:
    """Checks authentication and signing certificates with stapled OCSP responses, caching positive results.

    ``conf_provider`` returns the global configuration to check against (typically
    :meth:`security_server.confclient.GlobalConfClient.current`, which raises when the configuration has expired,
    so the check fails closed then too).  A result is cached under (certificate hash, OCSP response hash,
    configuration version) until the earliest of: the OCSP response's nextUpdate, thisUpdate plus
    ``ocsp_freshness_s``, and the notAfter of every certificate in the chain.  A new configuration version or a
    new OCSP response therefore always gets a full check.
    """

    def __init__(self, conf_provider: Callable[[], GlobalConf], *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._conf_provider = conf_provider
        self._cache_size = cache_size
        self._cache: dict[tuple[str, str, str, int, CertPurpose], _Verdict] = {}
        self._trust: _Trust | None = None
        #: Full (uncached) verifications performed; for status and tests.
        self.verifications = 0

    def check_auth_cert(self, der: bytes, ocsp_der: bytes | None, now: dt.datetime) -> SecurityServerId:
        """Check an authentication certificate and return the security server it names; raise otherwise.

        Raises :class:`CertificateRevoked` if the stapled OCSP response says so, and :class:`CertificateInvalid`
        for everything else (bad profile or chain, not valid at ``now``, OCSP response missing, stale, unknown or
        not verifiable).
        """
        ident = self._check(der, ocsp_der, now, CertPurpose.AUTH)
        assert isinstance(ident, SecurityServerId)  # the AUTH profile guarantees it
        return ident

    def check_sign_cert(self, der: bytes, ocsp_der: bytes | None, now: dt.datetime) -> MemberId:
        """Check a signing certificate and return the member it names; raises like :meth:`check_auth_cert`."""
        ident = self._check(der, ocsp_der, now, CertPurpose.SIGN)
        assert isinstance(ident, MemberId)  # the SIGN profile guarantees it
        return ident

    def _check(
        self, der: bytes, ocsp_der: bytes | None, now: dt.datetime, purpose: CertPurpose
    ) -> MemberId | SecurityServerId:
        if now.tzinfo is None:
            raise CertificateInvalid("verification time must be timezone-aware")
        conf = self._conf_provider()
        # (0) The hot path: a positive result for exactly these bytes under this configuration, still in force.
        ocsp_hash = "" if ocsp_der is None else _sha256_hex(ocsp_der)
        key = (_sha256_hex(der), ocsp_hash, conf.instance, conf.version, purpose)
        verdict = self._cache.get(key)
        if verdict is not None and verdict.checked_at <= now < verdict.valid_until:
            return verdict.ident
        try:
            verdict = self._verify(conf, der, ocsp_der, now, purpose)
        except KorpuError:
            raise
        except Exception as exc:
            # Fail closed: whatever went wrong, the certificate is not accepted.
            raise CertificateInvalid(f"the certificate cannot be checked: {type(exc).__name__}") from None
        self._remember(key, verdict, now)
        return verdict.ident

    def _trust_for(self, conf: GlobalConf) -> _Trust:
        trust = self._trust
        # Keyed by object identity: the configuration client hands out one object per version.
        if trust is None or trust.conf is not conf:
            trust = _parse_trust(conf)
            self._trust = trust
        return trust

    def _verify(
        self, conf: GlobalConf, der: bytes, ocsp_der: bytes | None, now: dt.datetime, purpose: CertPurpose
    ) -> _Verdict:
        self.verifications += 1
        # (1) The certificate parses.
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            raise CertificateInvalid("the certificate does not parse") from None
        # (2) It chains to an approved CA at ``now`` (signatures, validity of every certificate, CA constraints)
        #     and fits the profile for ``purpose`` (verify_chain runs bridge.pki.profile.check_auth_cert /
        #     check_sign_cert last).  The CA is chosen by the issuer name, then proven by the signature.
        ca, issuer = self._issuing_ca(self._trust_for(conf), cert)
        verify_chain(cert, ca.intermediates, [ca.top], now, purpose)
        # (3) A stapled OCSP response is required: without one we cannot know the certificate is not revoked.
        if ocsp_der is None:
            raise CertificateInvalid("no OCSP response was sent with the certificate")
        # (4) The response is from a responder the CA authorises, about this certificate, fresh within the
        #     federation's limit, and says GOOD (revoked raises CertificateRevoked, unknown CertificateInvalid).
        max_age = dt.timedelta(seconds=conf.params.ocsp_freshness_s)
        status = require_good(ocsp_der, cert, issuer, trusted_responder_certs=ca.responders, now=now, max_age=max_age)
        # (5) The identifier the certificate names (already validated by the profile check).
        ident: MemberId | SecurityServerId = (
            server_from_auth_cert(cert) if purpose is CertPurpose.AUTH else member_from_sign_cert(cert)
        )
        # (6) How long this verdict holds: until the first of its inputs could be stale or expired.
        limits = [status.this_update + max_age, cert.not_valid_after_utc, ca.top.not_valid_after_utc]
        limits += [c.not_valid_after_utc for c in ca.intermediates]
        if status.next_update is not None:
            limits.append(status.next_update)
        return _Verdict(ident, now, min(limits))

    @staticmethod
    def _issuing_ca(trust: _Trust, cert: x509.Certificate) -> tuple[_Ca, x509.Certificate]:
        for ca in trust.cas:
            for candidate in ca.issuers.get(cert.issuer, ()):
                try:
                    cert.verify_directly_issued_by(candidate)
                except (ValueError, TypeError, InvalidSignature):
                    continue
                return ca, candidate
        raise CertificateInvalid(
            f"certificate {cert.subject.rfc4514_string()} was not issued by an approved certification authority"
        )

    def _remember(self, key: tuple[str, str, str, int, CertPurpose], verdict: _Verdict, now: dt.datetime) -> None:
        if len(self._cache) >= self._cache_size:
            # Drop what has run out first; if everything is live, drop the oldest entries (insertion order).
            self._cache = {k: v for k, v in self._cache.items() if v.valid_until > now}
            while len(self._cache) >= self._cache_size:
                del self._cache[next(iter(self._cache))]
        self._cache[key] = verdict

    def cache_size(self) -> int:
        """How many positive results are cached."""
        return len(self._cache)
