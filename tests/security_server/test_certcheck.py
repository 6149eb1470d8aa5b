"""Peer binding to global configuration and certificate checks with stapled OCSP (security_server.certcheck).

Everything here is pure: certificates come from a throwaway federation CA (tests.support.pki), OCSP responses are
built with the responder's pure function, and GlobalConf objects are built directly from the dataclasses.  The
:class:`Federation` helper is shared with test_tls and test_ocsp_cache.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

import security_server.certcheck as certcheck
from bridge.errors import CertificateInvalid, CertificateRevoked, SslAuthenticationFailed
from bridge.globalconf import ApprovedCA, GlobalConf, GlobalConfParams, MemberInfo, SecurityServerInfo
from bridge.identifiers import MemberId, SecurityServerId
from bridge.pki import profile
from bridge.pki.keys import PrivateKey, cert_sha256_hex, generate_private_key
from bridge.pki.ocsp import make_ocsp_request
from catalog.certregistry import CertKind, CertRecord
from catalog.ocsp import build_ocsp_response
from security_server.certcheck import CertificateChecker, PeerBinding
from tests.support.pki import MEMBER, MEMBER_NAME, SERVER, Pki, build_pki, csr_for, custom_leaf

MEMBER2 = MemberId("AZ", "COM", "9900001")
SERVER2 = SecurityServerId(MEMBER2, "ss2")
FRESHNESS_S = 600


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


@dataclass
class Federation:
    """Two CAs: ``pki`` (approved) with ss1's and ss2's auth certs, and ``other`` (not approved)."""

    pki: Pki
    other: Pki
    ss2_key: PrivateKey
    ss2_cert: x509.Certificate
    #: A valid auth certificate of ss1 from the approved CA that global configuration does not register.
    unregistered_key: PrivateKey
    unregistered_cert: x509.Certificate
    now: dt.datetime

    def approved_ca(self, ocsp_url: str = "http://127.0.0.1:9/ocsp") -> ApprovedCA:
        return ApprovedCA(
            "Körpü Test Authority",
            der(self.pki.ca.root_cert),
            (der(self.pki.ca.issuing_cert),),
            (ocsp_url,),
            (der(self.pki.ocsp_cert),),
        )

    def conf(
        self, version: int = 1, *, cas: tuple[ApprovedCA, ...] | None = None, freshness_s: int = FRESHNESS_S
    ) -> GlobalConf:
        """A configuration registering ss1 (hosting MEMBER and its population subsystem) and ss2 (MEMBER2)."""
        return GlobalConf(
            instance="AZ",
            version=version,
            generated_at=self.now,
            expires_at=self.now + dt.timedelta(days=1),
            central_server_url="https://127.0.0.1:1",
            params=GlobalConfParams(ocsp_freshness_s=freshness_s),
            members=(MemberInfo(MEMBER, MEMBER_NAME, ("population",)), MemberInfo(MEMBER2, "Bank")),
            servers=(
                SecurityServerInfo(
                    SERVER,
                    "127.0.0.1:1",
                    (cert_sha256_hex(der(self.pki.auth_cert)),),
                    (MEMBER, MEMBER.subsystem("population")),
                ),
                SecurityServerInfo(SERVER2, "127.0.0.1:2", (cert_sha256_hex(der(self.ss2_cert)),), (MEMBER2,)),
            ),
            cas=(self.approved_ca(),) if cas is None else cas,
        )

    def ocsp(
        self,
        cert: x509.Certificate,
        *,
        at: dt.datetime | None = None,
        revoked: bool = False,
        unknown: bool = False,
        pki: Pki | None = None,
        validity: dt.timedelta = dt.timedelta(hours=1),
    ) -> bytes:
        """A response from ``pki``'s (default: the approved CA's) delegated responder about ``cert``."""
        pki = pki or self.pki
        at = at or self.now
        record = CertRecord(
            serial=cert.serial_number,
            kind=CertKind.AUTH,
            subject=cert.subject.rfc4514_string(),
            der=der(cert),
            not_after=cert.not_valid_after_utc,
            revoked_at=at - dt.timedelta(minutes=1) if revoked else None,
            revocation_reason="keyCompromise" if revoked else None,
        )
        return build_ocsp_response(
            make_ocsp_request(cert, pki.ca.issuing_cert),
            issuer_cert=pki.ca.issuing_cert,
            responder_cert=pki.ocsp_cert,
            responder_key=pki.ocsp_key,
            lookup_result=None if unknown else record,
            now=at,
            validity=validity,
        )


def build_federation(directory: Path) -> Federation:
    """Issue everything :class:`Federation` holds under ``directory``."""
    pki = build_pki(directory / "approved")
    other = build_pki(directory / "other")
    ss2_key = generate_private_key()
    ss2_cert = pki.ca.issue_auth_cert(csr_for(ss2_key), SERVER2, "Bank")
    unregistered_key = generate_private_key()
    unregistered_cert = pki.ca.issue_auth_cert(csr_for(unregistered_key), SERVER, MEMBER_NAME)
    # Microseconds dropped: the OCSP responder truncates thisUpdate to whole seconds.
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return Federation(pki, other, ss2_key, ss2_cert, unregistered_key, unregistered_cert, now)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    return build_federation(tmp_path_factory.mktemp("certcheck"))


# PeerBinding -------------------------------------------------------------------------------------------------------


def test_check_server_accepts_the_registered_certificate(fed: Federation) -> None:
    """The client side accepts a peer whose certificate hash is registered for the server it chose."""
    PeerBinding().check_server(fed.conf(), der(fed.pki.auth_cert), SERVER)  # raises if refused


def test_check_server_refuses_a_valid_but_unregistered_certificate(fed: Federation) -> None:
    """A certificate from the approved CA naming ss1, but not registered for ss1, is refused."""
    with pytest.raises(SslAuthenticationFailed) as exc:
        PeerBinding().check_server(fed.conf(), der(fed.unregistered_cert), SERVER)
    assert exc.value.fault_code == "Server.SslAuthenticationFailed"


def test_check_server_refuses_another_registered_server(fed: Federation) -> None:
    """Connecting to ss1 but meeting ss2 (also registered) is refused: the peer must be the server we chose."""
    with pytest.raises(SslAuthenticationFailed):
        PeerBinding().check_server(fed.conf(), der(fed.ss2_cert), SERVER)


def test_check_server_refuses_an_unregistered_server_id(fed: Federation) -> None:
    """A server identifier global configuration does not list cannot be authenticated at all."""
    with pytest.raises(SslAuthenticationFailed, match="not registered"):
        PeerBinding().check_server(fed.conf(), der(fed.pki.auth_cert), SecurityServerId(MEMBER, "nope"))


def test_identify_client_server_finds_the_calling_server(fed: Federation) -> None:
    """The server side learns which registered security server is calling from its certificate hash alone."""
    binding = PeerBinding()
    conf = fed.conf()
    assert binding.identify_client_server(conf, der(fed.ss2_cert)).id == SERVER2
    assert binding.identify_client_server(conf, der(fed.pki.auth_cert)).id == SERVER


def test_identify_client_server_refuses_an_unregistered_certificate(fed: Federation) -> None:
    """A caller whose certificate no server registers is refused with SslAuthenticationFailed."""
    with pytest.raises(SslAuthenticationFailed, match="not registered for any"):
        PeerBinding().identify_client_server(fed.conf(), der(fed.unregistered_cert))


def test_identify_client_server_uses_the_new_configuration(fed: Federation) -> None:
    """The hash index follows the configuration object: a server removed in a new version is no longer found."""
    binding = PeerBinding()
    conf1 = fed.conf(1)
    assert binding.identify_client_server(conf1, der(fed.ss2_cert)).id == SERVER2
    conf2 = replace(conf1, version=2, servers=conf1.servers[:1])
    with pytest.raises(SslAuthenticationFailed):
        binding.identify_client_server(conf2, der(fed.ss2_cert))


def test_a_certificate_registered_twice_identifies_neither_server(fed: Federation) -> None:
    """If global configuration registers one certificate for two servers, the caller is not identified."""
    base = fed.conf()
    shared = cert_sha256_hex(der(fed.ss2_cert))
    twin = SecurityServerInfo(SecurityServerId(MEMBER, "ss9"), "127.0.0.1:3", (shared,))
    conf = replace(base, servers=(*base.servers, twin))
    with pytest.raises(SslAuthenticationFailed, match="more than one"):
        PeerBinding().identify_client_server(conf, der(fed.ss2_cert))


def test_check_hosts_client(fed: Federation) -> None:
    """A server may act only for clients registered on it: ss1 hosts MEMBER, ss2 does not."""
    binding = PeerBinding()
    conf = fed.conf()
    ss1, ss2 = conf.servers
    binding.check_hosts_client(conf, ss1, MEMBER.subsystem("population"))  # raises if refused
    with pytest.raises(SslAuthenticationFailed, match="not registered on security server"):
        binding.check_hosts_client(conf, ss2, MEMBER)


# CertificateChecker --------------------------------------------------------------------------------------------------


def checker_for(conf: GlobalConf) -> CertificateChecker:
    return CertificateChecker(lambda: conf)


def counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Wrap ``certcheck.<name>`` so each call appends to the returned list."""
    calls: list[int] = []
    original: Callable[..., Any] = getattr(certcheck, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(certcheck, name, wrapper)
    return calls


def test_good_auth_cert_is_accepted_and_cached(fed: Federation, monkeypatch: pytest.MonkeyPatch) -> None:
    """A good auth cert returns its server id; the second check is a cache hit (no chain or OCSP verification)."""
    chain_calls = counting(monkeypatch, "verify_chain")
    ocsp_calls = counting(monkeypatch, "require_good")
    checker = checker_for(fed.conf())
    cert, ocsp_der = der(fed.pki.auth_cert), fed.ocsp(fed.pki.auth_cert)
    assert checker.check_auth_cert(cert, ocsp_der, fed.now) == SERVER
    assert checker.check_auth_cert(cert, ocsp_der, fed.now + dt.timedelta(seconds=30)) == SERVER
    assert (len(chain_calls), len(ocsp_calls), checker.verifications) == (1, 1, 1)


def test_cache_is_keyed_by_ocsp_response_and_conf_version(fed: Federation) -> None:
    """A different stapled response or a new configuration version gets a full check again."""
    conf = fed.conf(1)
    checker = CertificateChecker(lambda: conf)
    cert = der(fed.pki.auth_cert)
    checker.check_auth_cert(cert, fed.ocsp(fed.pki.auth_cert), fed.now)
    checker.check_auth_cert(cert, fed.ocsp(fed.pki.auth_cert, at=fed.now - dt.timedelta(seconds=5)), fed.now)
    conf = fed.conf(2)
    checker.check_auth_cert(cert, fed.ocsp(fed.pki.auth_cert), fed.now)
    assert checker.verifications == 3


def test_cached_result_ends_with_ocsp_freshness(fed: Federation) -> None:
    """A cached GOOD verdict is not reused past thisUpdate + ocsp_freshness_s: the response is then stale."""
    checker = checker_for(fed.conf())
    cert, ocsp_der = der(fed.pki.auth_cert), fed.ocsp(fed.pki.auth_cert)
    checker.check_auth_cert(cert, ocsp_der, fed.now)
    with pytest.raises(CertificateInvalid, match="older than the allowed maximum age"):
        checker.check_auth_cert(cert, ocsp_der, fed.now + dt.timedelta(seconds=FRESHNESS_S + 1))
    assert checker.verifications == 2


def test_cached_result_ends_with_next_update(fed: Federation) -> None:
    """A response whose nextUpdate comes before the freshness limit bounds the cached verdict by nextUpdate."""
    checker = checker_for(fed.conf())
    cert = der(fed.pki.auth_cert)
    ocsp_der = fed.ocsp(fed.pki.auth_cert, validity=dt.timedelta(seconds=60))
    checker.check_auth_cert(cert, ocsp_der, fed.now)
    checker.check_auth_cert(cert, ocsp_der, fed.now + dt.timedelta(seconds=59))
    checker.check_auth_cert(cert, ocsp_der, fed.now + dt.timedelta(seconds=61))  # within clock skew: re-verified
    assert checker.verifications == 2


def test_revoked_cert_raises_certificate_revoked(fed: Federation) -> None:
    """A stapled REVOKED response raises CertificateRevoked (Server.CertificateRevoked)."""
    with pytest.raises(CertificateRevoked) as exc:
        checker_for(fed.conf()).check_auth_cert(
            der(fed.pki.auth_cert), fed.ocsp(fed.pki.auth_cert, revoked=True), fed.now
        )
    assert exc.value.fault_code == "Server.CertificateRevoked"


def test_stale_ocsp_is_invalid(fed: Federation) -> None:
    """A response older than ocsp_freshness_s is refused even though its nextUpdate has not passed."""
    old = fed.ocsp(
        fed.pki.auth_cert, at=fed.now - dt.timedelta(seconds=FRESHNESS_S + 10), validity=dt.timedelta(days=1)
    )
    with pytest.raises(CertificateInvalid) as exc:
        checker_for(fed.conf()).check_auth_cert(der(fed.pki.auth_cert), old, fed.now)
    assert exc.value.fault_code == "Server.InvalidCertificate"


def test_missing_ocsp_is_invalid(fed: Federation) -> None:
    """No stapled response means the status is unknown: fail closed with InvalidCertificate."""
    with pytest.raises(CertificateInvalid, match="no OCSP response"):
        checker_for(fed.conf()).check_auth_cert(der(fed.pki.auth_cert), None, fed.now)


def test_unknown_ocsp_status_is_invalid(fed: Federation) -> None:
    """An OCSP "unknown" answer is not good enough."""
    with pytest.raises(CertificateInvalid, match="does not know"):
        checker_for(fed.conf()).check_auth_cert(
            der(fed.pki.auth_cert), fed.ocsp(fed.pki.auth_cert, unknown=True), fed.now
        )


def test_ocsp_about_another_certificate_is_invalid(fed: Federation) -> None:
    """A GOOD response about ss2's certificate cannot vouch for ss1's."""
    with pytest.raises(CertificateInvalid, match="another certificate"):
        checker_for(fed.conf()).check_auth_cert(der(fed.pki.auth_cert), fed.ocsp(fed.ss2_cert), fed.now)


def test_cert_from_unapproved_ca_is_invalid(fed: Federation) -> None:
    """A well-formed auth cert with a GOOD response from its own (unapproved) CA is refused."""
    with pytest.raises(CertificateInvalid, match="approved certification authority"):
        checker_for(fed.conf()).check_auth_cert(
            der(fed.other.auth_cert), fed.ocsp(fed.other.auth_cert, pki=fed.other), fed.now
        )


def test_ca_removed_from_conf_makes_cached_cert_invalid(fed: Federation) -> None:
    """A new configuration version without the CA refuses a certificate that was cached as good."""
    conf = fed.conf(1)
    checker = CertificateChecker(lambda: conf)
    cert, ocsp_der = der(fed.pki.auth_cert), fed.ocsp(fed.pki.auth_cert)
    checker.check_auth_cert(cert, ocsp_der, fed.now)
    conf = fed.conf(2, cas=(ApprovedCA("Other", der(fed.other.ca.root_cert), (der(fed.other.ca.issuing_cert),)),))
    with pytest.raises(CertificateInvalid):
        checker.check_auth_cert(cert, ocsp_der, fed.now)


def test_expired_cert_is_invalid(fed: Federation) -> None:
    """A certificate outside its validity at ``now`` is refused even with a GOOD response."""
    key = generate_private_key()
    expired = custom_leaf(
        fed.pki,
        profile.auth_cert_extensions(SERVER, key.public_key()),
        subject=profile.auth_cert_subject(SERVER, MEMBER_NAME),
        not_before=fed.now - dt.timedelta(days=2),
        not_after=fed.now - dt.timedelta(days=1),
        key=key,
    )
    with pytest.raises(CertificateInvalid, match="does not chain"):
        checker_for(fed.conf()).check_auth_cert(der(expired), fed.ocsp(expired), fed.now)


def test_sign_cert_returns_member(fed: Federation) -> None:
    """check_sign_cert returns the member the signing certificate names."""
    checker = checker_for(fed.conf())
    assert checker.check_sign_cert(der(fed.pki.sign_cert), fed.ocsp(fed.pki.sign_cert), fed.now) == MEMBER


def test_auth_cert_is_not_a_sign_cert(fed: Federation) -> None:
    """The profile check applies: an authentication certificate is refused as a signing certificate."""
    with pytest.raises(CertificateInvalid, match="signing certificate"):
        checker_for(fed.conf()).check_sign_cert(der(fed.pki.auth_cert), fed.ocsp(fed.pki.auth_cert), fed.now)


def test_garbage_is_invalid(fed: Federation) -> None:
    """Bytes that are not a certificate are refused as InvalidCertificate, not a crash."""
    with pytest.raises(CertificateInvalid, match="does not parse"):
        checker_for(fed.conf()).check_auth_cert(b"\x30\x03\x02\x01\x01", b"", fed.now)


def test_naive_time_is_refused(fed: Federation) -> None:
    """A timezone-naive ``now`` is a caller bug and is refused rather than guessed."""
    with pytest.raises(CertificateInvalid, match="timezone-aware"):
        checker_for(fed.conf()).check_auth_cert(der(fed.pki.auth_cert), None, fed.now.replace(tzinfo=None))


def test_cold_and_warm_cost(fed: Federation) -> None:
    """The warm (cached) check is at least 50 times cheaper than the cold one; prints both for the report."""
    cert, ocsp_der = der(fed.pki.auth_cert), fed.ocsp(fed.pki.auth_cert)
    rounds = 20
    start = time.perf_counter()
    for i in range(rounds):
        checker_for(fed.conf(i + 1)).check_auth_cert(cert, ocsp_der, fed.now)
    cold = (time.perf_counter() - start) / rounds
    checker = checker_for(fed.conf())
    checker.check_auth_cert(cert, ocsp_der, fed.now)
    start = time.perf_counter()
    for _ in range(2000):
        checker.check_auth_cert(cert, ocsp_der, fed.now)
    warm = (time.perf_counter() - start) / 2000
    print(f"CertificateChecker cold {cold * 1e6:.0f} µs, warm {warm * 1e6:.1f} µs")
    assert checker.verifications == 1
    assert warm * 50 < cold
