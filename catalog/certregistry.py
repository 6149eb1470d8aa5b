"""What the federation CA knows about the certificates it issued: the record the OCSP responder answers from.

The CA itself (:mod:`catalog.ca`) is a pure issuer; the catalog store keeps these records in the same transaction
as the registration they belong to, so an approval either records its certificates and the server, or neither.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["CertKind", "CertRecord", "StatusLookup"]


class CertKind(enum.StrEnum):
    """What a certificate is for, per the certificate profile in ``docs/pki.md``."""

    ROOT_CA = "root-ca"
    ISSUING_CA = "issuing-ca"
    AUTH = "auth"
    SIGN = "sign"
    OCSP = "ocsp"
    TSA = "tsa"
    CONF = "conf"
    TLS = "tls"


@dataclass(frozen=True, slots=True)
class CertRecord:
    """One issued certificate and its revocation state.

    ``revocation_reason`` is the name of an RFC 5280 CRLReason (``keyCompromise``, …) as used by
    ``cryptography.x509.ReasonFlags``.
    """

    serial: int
    kind: CertKind
    subject: str
    der: bytes
    not_after: dt.datetime
    revoked_at: dt.datetime | None = None
    revocation_reason: str | None = None

    @property
    def revoked(self) -> bool:
        """Whether the certificate has been revoked."""
        return self.revoked_at is not None


#: How the OCSP responder asks the store for a certificate's record (``None``: never issued by this CA).
StatusLookup = Callable[[int], Awaitable[CertRecord | None]]
