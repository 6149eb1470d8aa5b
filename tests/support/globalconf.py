"""Global configuration test helpers: throwaway signers, anchors and a complete sample configuration.

The certificates are EC P-256 (or RSA) self-signed ones built with ``cryptography`` directly, so these helpers
do not depend on the federation CA.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from bridge.anchor import AnchorSource, ConfigurationAnchor
from bridge.globalconf import (
    AccessRight,
    ApprovedCA,
    GlobalConf,
    GlobalConfParams,
    GlobalGroup,
    MemberInfo,
    SecurityServerInfo,
    ServiceInfo,
    TimestampingService,
)
from bridge.globalconf_xml import SigningKey
from bridge.identifiers import GlobalGroupId, MemberId, SecurityServerId

NOW = dt.datetime(2030, 5, 1, 12, 0, tzinfo=dt.UTC)


# Helpers shared with other test modules ------------------------------------------------------------------------


@dataclass(frozen=True)
class Signer:
    """A throwaway signing key and its self-signed certificate."""

    key: SigningKey
    cert: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(Encoding.DER)


def make_signer(
    cn: str = "Körpü test globalconf signer",
    *,
    rsa_key: bool = False,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Signer:
    """A fresh EC P-256 (or RSA-2048) key with a self-signed certificate valid around both NOW and today."""
    key: SigningKey = rsa.generate_private_key(65537, 2048) if rsa_key else ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(not_after or dt.datetime(2040, 1, 1, tzinfo=dt.UTC))
        .sign(key, hashes.SHA256())
    )
    return Signer(key, cert)


def make_anchor(
    *signers: Signer, instance: str = "AZ", url: str = "http://127.0.0.1:1/globalconf"
) -> ConfigurationAnchor:
    """An anchor with one source trusting the given signers' certificates."""
    return ConfigurationAnchor(instance, (AnchorSource(url, tuple(s.cert for s in signers)),))


@functools.cache
def _test_ca_der() -> bytes:
    return make_signer("Test CA").der


def sample_conf(
    version: int = 1,
    *,
    now: dt.datetime = NOW,
    instance: str = "AZ",
    expiry: dt.timedelta = dt.timedelta(minutes=10),
    ca_der: bytes | None = None,
) -> GlobalConf:
    """A small but complete configuration: every collection has at least one entry."""
    der = ca_der or _test_ca_der()
    tax = MemberId(instance, "GOV", "1400057421")
    bank = MemberId(instance, "COM", "9900001")
    population = tax.subsystem("population")
    service = population.service("getPerson", "v1")
    return GlobalConf(
        instance=instance,
        version=version,
        generated_at=now,
        expires_at=now + expiry,
        central_server_url="https://central.example.az",
        params=GlobalConfParams(timestamping_interval_s=30, refresh_interval_s=60, ocsp_freshness_s=600),
        members=(MemberInfo(tax, "Vergilər Nazirliyi", ("population",)), MemberInfo(bank, "Bank", ("loans",))),
        servers=(SecurityServerInfo(SecurityServerId(tax, "ss1"), "ss1.tax.az:5500", ("ab" * 32,), (tax, population)),),
        cas=(ApprovedCA("Körpü CA", der, (der,), ("http://ocsp.example.az",), (der,)),),
        tsas=(TimestampingService("Körpü TSA", "http://tsa.example.az", der),),
        groups=(GlobalGroup(GlobalGroupId(instance, "banks"), "Licensed banks", (bank, bank.subsystem("loans"))),),
        services=(ServiceInfo(service, "REST", "Person lookup", "https://docs.example.az/openapi.yaml"),),
        access_rights=(
            AccessRight(GlobalGroupId(instance, "banks"), service, "GET", "/persons/*"),
            AccessRight(bank.subsystem("loans"), service.without_version()),
        ),
    )
