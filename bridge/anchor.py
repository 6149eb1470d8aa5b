"""The configuration anchor: where to download global configuration and which certificates may sign it.

The anchor file uses X-Road's format (``configurationAnchor`` in ``http://x-road.eu/xsd/xroad.xsd``, pr-gconf
Annex E, schema ``schemas/xroad/configuration-anchor.xsd``)::

    <tns:configurationAnchor xmlns:tns="http://x-road.eu/xsd/xroad.xsd">
        <generatedAt>2025-01-01T00:00:00Z</generatedAt>
        <instanceIdentifier>AZ</instanceIdentifier>
        <source>
            <downloadURL>https://central.example.az/globalconf</downloadURL>
            <verificationCert>MIIB…(base64 DER)</verificationCert>
        </source>
    </tns:configurationAnchor>

An operator receives the anchor out of band (from the federation authority) and compares its SHA-256
(:attr:`ConfigurationAnchor.sha256`) with the value the authority publishes through a second channel before
installing it: the anchor is the root of trust for everything a security server does.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

import schemas
from bridge.errors import AnchorInvalid, InvalidIdentifier
from bridge.fsutil import write_atomic
from bridge.identifiers import check_code
from bridge.xmlsafe import parse_xml, schema_error

__all__ = [
    "ANCHOR_NS",
    "MAX_ANCHOR_BYTES",
    "AnchorSource",
    "ConfigurationAnchor",
    "ConfigurationSource",
]

#: Namespace of X-Road's configuration anchor.
ANCHOR_NS = "http://x-road.eu/xsd/xroad.xsd"
#: Upper bound on an anchor file; real anchors are a few KiB.
MAX_ANCHOR_BYTES = 1024 * 1024

_ROOT = f"{{{ANCHOR_NS}}}configurationAnchor"


class AnchorSource(NamedTuple):
    """One configuration source: its download URL and the certificates allowed to sign what it serves."""

    download_url: str
    verification_certs: tuple[x509.Certificate, ...]


#: Alias: X-Road's schema calls a source ``ConfigurationSourceType``.
ConfigurationSource = AnchorSource


@functools.cache
def _schema() -> etree.XMLSchema:
    # Compiled once per process; the XSD is a local file with no imports, so nothing is fetched.
    return etree.XMLSchema(etree.parse(str(schemas.path("xroad/configuration-anchor.xsd"))))


@dataclass(frozen=True)
class ConfigurationAnchor:
    """A parsed configuration anchor.

    ``sources`` are tried in order when downloading.  ``source_bytes`` holds the exact file the anchor was read
    from (``None`` when built in code); :meth:`to_bytes` returns it unchanged so that :attr:`sha256` matches the
    hash of the distributed file.
    """

    instance: str
    sources: Sequence[AnchorSource]  # stored as a tuple
    generated_at: dt.datetime | None = None
    source_bytes: bytes | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Accept any iterable of sources (a list is natural when building one) but store a tuple, so the
        # anchor stays hashable and immutable.
        object.__setattr__(self, "sources", tuple(AnchorSource(s[0], tuple(s[1])) for s in self.sources))
        # Invariants hold for anchors built in code as well as parsed ones.
        try:
            check_code(self.instance, "instanceIdentifier")
        except InvalidIdentifier as exc:
            raise AnchorInvalid(f"anchor instanceIdentifier is invalid: {exc.message}") from None
        if not self.sources:
            raise AnchorInvalid("anchor has no configuration source")
        for source in self.sources:
            _check_url(source.download_url)
            if not source.verification_certs:
                raise AnchorInvalid(f"anchor source {source.download_url} has no verification certificate")
        if self.generated_at is not None and self.generated_at.tzinfo is None:
            raise AnchorInvalid("anchor generatedAt must carry a time zone")

    # Properties ----------------------------------------------------------------------------------------------

    @property
    def verification_certs(self) -> tuple[x509.Certificate, ...]:
        """Every verification certificate of every source, without duplicates, in file order."""
        seen: list[x509.Certificate] = []
        for source in self.sources:
            for cert in source.verification_certs:
                if cert not in seen:
                    seen.append(cert)
        return tuple(seen)

    @property
    def sha256(self) -> str:
        """Lowercase hex SHA-256 of the anchor file's bytes, for operators to compare out of band."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    # Building and reading ------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls, instance: str, sources: Sequence[AnchorSource], *, generated_at: dt.datetime | None = None
    ) -> ConfigurationAnchor:
        """A new anchor for the central server to hand out, stamped ``generatedAt`` now (whole seconds, UTC)."""
        stamp = generated_at or dt.datetime.now(dt.UTC).replace(microsecond=0)
        return cls(instance, tuple(sources), generated_at=stamp)

    # Reading -------------------------------------------------------------------------------------------------

    @classmethod
    def from_bytes(cls, data: bytes) -> ConfigurationAnchor:
        """Parse and validate an anchor file; raise :class:`AnchorInvalid` with a message saying what is wrong."""
        root = parse_xml(data, max_bytes=MAX_ANCHOR_BYTES, error=AnchorInvalid, what="configuration anchor")
        if root.tag != _ROOT:
            raise AnchorInvalid(f"anchor root element must be {{{ANCHOR_NS}}}configurationAnchor, not {root.tag!r}")
        if root.find("source") is None:
            raise AnchorInvalid("anchor has no configuration source")
        # Certificates are decoded before schema validation so that the common defects (a mangled paste, a PEM
        # block instead of base64 DER) get a message naming the source and certificate rather than a schema error.
        sources: list[AnchorSource] = []
        for index, elem in enumerate(root.findall("source"), start=1):
            url = (elem.findtext("downloadURL") or "").strip()
            certs = tuple(
                _load_cert(cert_elem.text or "", index, n)
                for n, cert_elem in enumerate(elem.findall("verificationCert"), start=1)
            )
            sources.append(AnchorSource(url, certs))
        schema = _schema()
        if not schema.validate(root):
            raise AnchorInvalid(f"anchor does not match configuration-anchor.xsd: {schema_error(schema)}")

        generated_at: dt.datetime | None = None
        generated = root.findtext("generatedAt")
        if generated is not None:
            try:
                generated_at = dt.datetime.fromisoformat(generated.strip())
            except ValueError:
                raise AnchorInvalid(f"anchor generatedAt {generated.strip()!r} is not a date and time") from None
            if generated_at.tzinfo is None:
                raise AnchorInvalid("anchor generatedAt must carry a time zone (use Z for UTC)")

        return cls(
            instance=(root.findtext("instanceIdentifier") or "").strip(),
            sources=tuple(sources),
            generated_at=generated_at,
            source_bytes=bytes(data),
        )

    @classmethod
    def load(cls, path: Path) -> ConfigurationAnchor:
        """Read and parse the anchor file at ``path``."""
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_ANCHOR_BYTES + 1)
        except OSError as exc:
            raise AnchorInvalid(f"cannot read anchor file {path}: {exc.strerror or exc}") from None
        return cls.from_bytes(data)

    # Writing -------------------------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The anchor file: the bytes it was parsed from, or a fresh serialisation for anchors built in code."""
        if self.source_bytes is not None:
            return self.source_bytes
        root = etree.Element(_ROOT, nsmap={"tns": ANCHOR_NS})
        if self.generated_at is not None:
            stamp = self.generated_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
            etree.SubElement(root, "generatedAt").text = stamp
        etree.SubElement(root, "instanceIdentifier").text = self.instance
        for source in self.sources:
            src = etree.SubElement(root, "source")
            etree.SubElement(src, "downloadURL").text = source.download_url
            for cert in source.verification_certs:
                der = cert.public_bytes(Encoding.DER)
                etree.SubElement(src, "verificationCert").text = base64.b64encode(der).decode("ascii")
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)

    def save(self, path: Path) -> None:
        """Write the anchor file to ``path`` atomically (a reader sees the old file or the new one, never half)."""
        write_atomic(path, self.to_bytes())


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AnchorInvalid(f"anchor downloadURL {url!r} must be an http or https URL")


def _load_cert(text: str, source_no: int, cert_no: int) -> x509.Certificate:
    where = f"source {source_no}, verificationCert {cert_no}"
    # The X-Road fixture wraps base64 across lines; whitespace is not part of the encoding.
    compact = "".join(text.split())
    try:
        der = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise AnchorInvalid(f"anchor {where} is not valid base64") from None
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise AnchorInvalid(f"anchor {where} is not a DER X.509 certificate") from None
