"""Evidence containers: one exchange, as one security server logged it, packed so that it verifies offline.

An auditor asks a security server for the evidence of one exchange (``korpu audit export``) and gets a ZIP file
laid out like an ASiC-E container (ETSI EN 319 162): ``mimetype`` first and stored uncompressed, an ODF-style
``META-INF/manifest.xml`` listing every other file with its media type, and then::

    request/record.json        the log record (LogRecord.to_json), the chain hash inside
    request/signature.xml      the detached XML-DSig over the parts (absent for an unsigned fault)
    request/message            one file per *stored* part, named by part name = its Reference URI in
    request/body                 the signature, so xmlsec1 finds it; ``index`` is the derived part the
    request/index                signature also covers (bridge.transport.index_bytes), logged like any part
    request/ocsp-0.der         the stapled OCSP responses: [0] signing certificate, [1] authentication cert
    request/ocsp-1.der
    request/proof.json         the Merkle proof from the record hash to its batch root, and the batch's range
    request/timestamp.tsr      the batch's RFC 3161 TimeStampToken (DER CMS ContentInfo) over that root
    response/…                 the same for the response record, when there is one
    certs/ca-root.pem          the federation CA's root(s): the trust anchor
    certs/ca-issuing.pem       its issuing CA certificate(s)
    certs/tsa.pem              the TSA certificate(s), followed by the CA certificates that issued them
    certs/signer-request.pem   the request's signer certificate (the first KeyInfo certificate)
    certs/signer-response.pem  the response's
    README.txt                 the exact commands to check everything with xmlsec1, openssl and Python

The container is not itself signed: every file is evidence of its own (a record is fixed by the hash chain and
the timestamp, a part by the record's SHA-512, a signature by its signer), and :func:`verify_container` requires
every file to be exactly what the rest implies, so a single changed byte anywhere is detected.  The two fields
of ``proof.json`` that are locators rather than evidence (``batch.id`` and ``batch.tsa_url``, where to find the
batch on the server) are the only exception, and are labelled so in ``docs/audit.md``.

Verification (:func:`verify_container`), offline, in numbered steps; any failure raises
:class:`~bridge.errors.LogVerificationFailed` naming the record (``request record 12``) and the step:

1. layout: ZIP, ``mimetype`` first and stored, exactly the expected files, the manifest listing each with its
   media type, JSON and PEM files in the one form this module writes, README.txt as this module writes it;
2. each record's hash recomputed from its content and its ``prev_hash``;
3. each part file's SHA-512 and size equal the record's;
4. the signature: ``signature.xml`` is the record's, verifies over the record's part digests (``index``
   included), the derived ``index`` agrees with the record (parts, message id, request id, request hash), the
   signer certificate chains to the CA at the signing time, has the signing profile, names the client's member
   (request) or the service provider's member (response), equals ``certs/signer-<role>.pem``, and the stapled
   OCSP response verifies and says GOOD at the signing time;
5. the Merkle proof leads from the record hash to the batch root, at the record's place in the batch's range;
6. the timestamp token verifies over the root with a TSA certificate that chains to the CA, its genTime is the
   batch's ``stamped_at``, and it carries no certificates beyond those in ``certs/``;
7. the response binds to the request: same server, side and request id, and the same request hash, which is
   also recomputed from the request's signed part digests (§ Request hash in ``docs/protocol.md``);
8. the times agree: the signing time and the record time lie no more than a day before the batch's genTime (and
   not after it), so a signature backdated before its key's revocation cannot borrow an old "good" OCSP answer.

Pure code over bytes: no aiohttp, no store, no clock (verification times come from the evidence itself).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from bridge.errors import KorpuError, LogVerificationFailed, PkiError
from bridge.identifiers import MemberId, ServiceId, SubsystemId, parse_encoded
from bridge.messagelog import LogPart, LogRecord, MerkleProof, chain_hash, verify_proof
from bridge.pki.ocsp import RevocationStatus, verify_ocsp_response
from bridge.pki.profile import CertPurpose, check_tsa_cert, member_from_sign_cert, verify_chain
from bridge.pki.tsp import check_token_envelope, verify_timestamp_token
from bridge.signature import verify_signature_details
from bridge.transport import INDEX_PART, PartInfo, index_bytes
from bridge.xmlsafe import parse_xml

__all__ = [
    "CONTAINER_MIMETYPE",
    "DEFAULT_OCSP_MAX_AGE",
    "INDEX_CONTENT_TYPE",
    "AsicReader",
    "AsicWriter",
    "BatchRef",
    "EvidenceCerts",
    "RecordEvidence",
    "RecordReport",
    "VerificationReport",
    "build_container",
    "check_cert_files",
    "check_timestamp",
    "dump_json",
    "index_log_part",
    "index_part",
    "load_json",
    "named_failure",
    "parse_pem_certs",
    "pem",
    "recompute_request_hash",
    "verification_step",
    "verify_container",
]

#: The ``mimetype`` of an ASiC-E container.
CONTAINER_MIMETYPE = "application/vnd.etsi.asic-e+zip"
#: Content type the proxies log the derived ``index`` part with.
INDEX_CONTENT_TYPE = "application/json"
#: How old a stapled OCSP response may be at the signing time (global configuration's default freshness).
DEFAULT_OCSP_MAX_AGE = dt.timedelta(hours=1)

MANIFEST_PATH = "META-INF/manifest.xml"
_MANIFEST_NS = "urn:oasis:names:tc:opendocument:xmlns:manifest:1.0"
_ROLES = ("request", "response")
_MAX_ENTRIES = 10_000
_MAX_SMALL_FILE = 4 * 1024 * 1024  # JSON, XML, DER and PEM files; parts are capped by their logged size
_ENTRY_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}(?:/[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}){0,3}")
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # entries carry no real time: the same evidence gives the same bytes
_CHUNK = 1024 * 1024

MEDIA_JSON = "application/json"
MEDIA_XML = "application/xml"
MEDIA_OCSP = "application/ocsp-response"
MEDIA_TOKEN = "application/vnd.etsi.timestamp-token"  # noqa: S105 - a media type, not a secret
MEDIA_PEM = "application/x-pem-file"
MEDIA_TEXT = "text/plain"
MEDIA_JSONL = "application/jsonl"
MEDIA_OCTETS = "application/octet-stream"


# The derived index part, as the proxies log it ------------------------------------------------------------------


def index_part(parts: Sequence[PartInfo], meta: Mapping[str, str]) -> bytes:
    """The bytes of the derived ``index`` part, exactly as the signature covers them.

    The proxies call this when logging and store the result as a body like any other part, listed in the record
    as ``LogPart("index", INDEX_CONTENT_TYPE, len, sha512, stored=True)`` (:func:`index_log_part`), so that a
    record's signature verifies from its stored parts alone.
    """
    return index_bytes(parts, meta)


def index_log_part(data: bytes) -> LogPart:
    """The record's entry for the ``index`` bytes from :func:`index_part`."""
    return LogPart(INDEX_PART, INDEX_CONTENT_TYPE, len(data), hashlib.sha512(data).hexdigest(), True)


# Inputs and outputs ---------------------------------------------------------------------------------------------


#: Longest accepted delay between a record's (or its signature's) time and its batch's timestamp: the log's grace
#: period is 4 h by default; a day leaves room for longer configured grace periods.
MAX_STAMP_DELAY = dt.timedelta(hours=24)
#: Clock difference tolerated between a security server and the TSA.
CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class BatchRef:
    """The timestamped batch a record belongs to: its range and root, and where it lives on the server."""

    id: int
    first_seq: int
    last_seq: int
    merkle_root: str  # hex
    stamped_at: str  # genTime, ISO 8601 UTC
    tsa_url: str

    def to_json(self) -> dict[str, Any]:
        """JSON form (inside ``proof.json``)."""
        return {
            "id": self.id,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "merkle_root": self.merkle_root,
            "stamped_at": self.stamped_at,
            "tsa_url": self.tsa_url,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BatchRef:
        """Rebuild from :meth:`to_json` output, strictly."""
        _exact_keys(data, {"id", "first_seq", "last_seq", "merkle_root", "stamped_at", "tsa_url"}, "batch")
        return cls(
            _int(data["id"], "batch.id"),
            _int(data["first_seq"], "batch.first_seq"),
            _int(data["last_seq"], "batch.last_seq"),
            _str(data["merkle_root"], "batch.merkle_root"),
            _str(data["stamped_at"], "batch.stamped_at"),
            _str(data["tsa_url"], "batch.tsa_url"),
        )


@dataclass(frozen=True)
class RecordEvidence:
    """One record and what proves it: its stored part bytes by name, its Merkle proof, its batch and token."""

    record: LogRecord
    parts: Mapping[str, bytes]
    proof: MerkleProof
    batch: BatchRef
    token: bytes  # DER TimeStampToken of the batch


@dataclass(frozen=True)
class EvidenceCerts:
    """The federation certificates an auditor needs: CA roots, issuing CAs, TSA certificates."""

    ca_roots: tuple[x509.Certificate, ...]
    ca_intermediates: tuple[x509.Certificate, ...] = ()
    tsas: tuple[x509.Certificate, ...] = ()

    def __post_init__(self) -> None:
        if not self.ca_roots:
            raise ValueError("evidence needs at least one CA root certificate")
        if not self.tsas:
            raise ValueError("evidence needs at least one TSA certificate")


@dataclass(frozen=True)
class RecordReport:
    """What step by step verification established about one record."""

    role: str
    seq: int
    hash: str
    at: str
    server: str
    side: str
    direction: str
    request_id: str
    message_id: str
    client: str
    service: str
    outcome: str
    signer: str | None  # the member the signing certificate names; None for an unsigned fault
    signer_subject: str | None
    signing_time: dt.datetime | None
    ocsp_this_update: dt.datetime | None
    batch_id: int
    batch_first_seq: int
    batch_last_seq: int
    merkle_root: str
    gen_time: dt.datetime
    tsa: str

    def to_json(self) -> dict[str, Any]:
        """JSON form (for ``korpu audit verify --json``)."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            out[key] = value.isoformat() if isinstance(value, dt.datetime) else value
        return out


@dataclass(frozen=True)
class VerificationReport:
    """The result of :func:`verify_container`: every step held for every record listed."""

    server: str
    request_id: str
    records: tuple[RecordReport, ...]
    trust_roots: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "server": self.server,
            "request_id": self.request_id,
            "records": [r.to_json() for r in self.records],
            "trust_roots": list(self.trust_roots),
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        """A few lines for people."""
        lines = [f"evidence of exchange {self.request_id} as logged by {self.server}: OK"]
        for r in self.records:
            who = f"signed by {r.signer} at {r.signing_time.isoformat()}" if r.signer and r.signing_time else "unsigned"
            lines.append(
                f"  {r.role} record {r.seq} ({r.outcome}): {who}; batch {r.batch_first_seq}..{r.batch_last_seq} "
                f"timestamped {r.gen_time.isoformat()} by {r.tsa}"
            )
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


# Small helpers shared with the archive ----------------------------------------------------------------------------


def dump_json(obj: Any) -> bytes:
    """The one byte form of every JSON file in a container: sorted keys, 2-space indent, UTF-8, final newline."""
    text = json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True, allow_nan=False)
    return (text + "\n").encode("utf-8")


def _pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(items)
    if len(obj) != len(items):
        raise ValueError("duplicate key")
    return obj


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def load_json(data: bytes, what: str) -> Any:
    """Parse ``data`` strictly and require it to be in :func:`dump_json` form; raise ``LogVerificationFailed``."""
    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=_pairs, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise LogVerificationFailed(f"{what} is not valid JSON ({exc})") from None
    if dump_json(obj) != data:
        raise LogVerificationFailed(f"{what} is not in the canonical form (changed after export)")
    return obj


def pem(certs: Sequence[x509.Certificate]) -> bytes:
    """Certificates as concatenated PEM."""
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


def parse_pem_certs(data: bytes, what: str) -> list[x509.Certificate]:
    """Certificates from a PEM file that must be exactly :func:`pem` of them; raise ``LogVerificationFailed``."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise LogVerificationFailed(f"{what} does not hold PEM certificates") from None
    if not certs or pem(certs) != data:
        raise LogVerificationFailed(f"{what} is not exactly a list of PEM certificates (changed after export)")
    return certs


def check_cert_files(
    roots: Sequence[x509.Certificate], issuing: Sequence[x509.Certificate], tsa_file: Sequence[x509.Certificate]
) -> None:
    """The ``certs/`` files hang together: roots self-signed, every other certificate issued by one of them.

    The checks proper build paths from whichever copy works; this makes sure no file an auditor's ``openssl``
    command reads was altered either.
    """
    for cert in roots:
        if not _issued_by_any(cert, [cert]):
            raise LogVerificationFailed(f"certs/ca-root.pem: {cert.subject.rfc4514_string()} is not self-signed")
    for name, certs in (("ca-issuing.pem", issuing), ("tsa.pem", tsa_file)):
        for cert in certs:
            if not _issued_by_any(cert, [c for c in (*roots, *issuing) if c != cert]):
                raise LogVerificationFailed(
                    f"certs/{name}: {cert.subject.rfc4514_string()} is not issued by the CA in certs/"
                )


def _issued_by_any(cert: x509.Certificate, issuers: Sequence[x509.Certificate]) -> bool:
    for issuer in issuers:
        if issuer.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def _exact_keys(data: Any, keys: set[str], what: str) -> None:
    if not isinstance(data, Mapping) or set(data) != keys:
        raise LogVerificationFailed(f"{what} must be an object with exactly the keys {', '.join(sorted(keys))}")


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise LogVerificationFailed(f"{what} must be an integer")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise LogVerificationFailed(f"{what} must be a string")
    return value


def _utc(text: str, what: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise LogVerificationFailed(f"{what} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise LogVerificationFailed(f"{what} has no time zone")
    return value.astimezone(dt.UTC)


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


# ASiC-E writing and reading -----------------------------------------------------------------------------------


def _manifest_xml(entries: Sequence[tuple[str, str]]) -> bytes:
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<manifest:manifest xmlns:manifest="{_MANIFEST_NS}" manifest:version="1.2">',
        f' <manifest:file-entry manifest:full-path="/" manifest:media-type="{CONTAINER_MIMETYPE}"/>',
    ]
    lines += [
        f' <manifest:file-entry manifest:full-path="{_escape(p)}" manifest:media-type="{_escape(m)}"/>'
        for p, m in entries
    ]
    lines.append("</manifest:manifest>")
    return ("\n".join(lines) + "\n").encode("utf-8")


class AsicWriter:
    """Writes an ASiC-E-shaped ZIP: ``mimetype`` first (stored), the files, then ``META-INF/manifest.xml``.

    Entries get a fixed date so that the same content always gives the same bytes.
    """

    def __init__(self, target: BinaryIO) -> None:
        self._zip = zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED)
        self._entries: list[tuple[str, str]] = []
        self._names: set[str] = set()
        self._put("mimetype", CONTAINER_MIMETYPE.encode("ascii"), zipfile.ZIP_STORED)

    def _put(self, path: str, data: bytes, compression: int) -> None:
        info = zipfile.ZipInfo(path, date_time=_FIXED_DATE)
        info.compress_type = compression
        info.external_attr = 0o644 << 16
        self._zip.writestr(info, data)

    def add(self, path: str, data: bytes, media_type: str) -> None:
        """Add one file; raise :class:`ValueError` for a repeated or unsafe path."""
        if path in self._names or _ENTRY_RE.fullmatch(path) is None or path in ("mimetype", MANIFEST_PATH):
            raise ValueError(f"invalid or repeated container path {path!r}")
        self._names.add(path)
        self._entries.append((path, media_type))
        self._put(path, data, zipfile.ZIP_DEFLATED)

    @contextlib.contextmanager
    def open_entry(self, path: str, media_type: str) -> Iterator[BinaryIO]:
        """Add one file written as a stream (for files too large to hold in memory)."""
        if path in self._names or _ENTRY_RE.fullmatch(path) is None or path in ("mimetype", MANIFEST_PATH):
            raise ValueError(f"invalid or repeated container path {path!r}")
        self._names.add(path)
        self._entries.append((path, media_type))
        info = zipfile.ZipInfo(path, date_time=_FIXED_DATE)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        with self._zip.open(info, "w", force_zip64=True) as stream:
            yield stream  # type: ignore[misc]  # ZipFile.open("w") returns IO[bytes]

    def close(self) -> None:
        """Write the manifest and finish the ZIP."""
        self._put(MANIFEST_PATH, _manifest_xml(self._entries), zipfile.ZIP_DEFLATED)
        self._zip.close()


class AsicReader:
    """Reads an ASiC-E-shaped ZIP written by :class:`AsicWriter`, checking its layout first (step 1).

    ``where`` names the container in errors.  Files are read with a size cap; large ones can be hashed as streams.
    """

    def __init__(self, source: bytes | BinaryIO, where: str = "container", *, max_entries: int = _MAX_ENTRIES) -> None:
        self.where = where
        try:
            self._zip = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise self._fail(f"not a ZIP file ({exc})") from None
        # (1a) A bounded number of entries, no repeats, only plain relative paths.
        if len(infos) > max_entries:
            raise self._fail(f"more than {max_entries} files")
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise self._fail("a file name occurs twice")
        for name in names:
            if name not in ("mimetype", MANIFEST_PATH) and _ENTRY_RE.fullmatch(name) is None:
                raise self._fail(f"unexpected file name {name[:80]!r}")
        self._infos = {i.filename: i for i in infos}
        # (1b) mimetype first, stored, without extra field, with the ASiC-E media type.
        first = infos[0] if infos else None
        if first is None or first.filename != "mimetype" or first.compress_type != zipfile.ZIP_STORED or first.extra:
            raise self._fail("the first file must be 'mimetype', stored uncompressed")
        if self.read("mimetype", 64) != CONTAINER_MIMETYPE.encode("ascii"):
            raise self._fail(f"mimetype must be {CONTAINER_MIMETYPE}")
        # (1c) The manifest lists every other file exactly once, with a media type, in the form AsicWriter writes.
        if MANIFEST_PATH not in self._infos:
            raise self._fail(f"{MANIFEST_PATH} is missing")
        raw = self.read(MANIFEST_PATH, _MAX_SMALL_FILE)
        try:
            root = parse_xml(raw, max_bytes=_MAX_SMALL_FILE, error=LogVerificationFailed, max_depth=3, what="manifest")
        except LogVerificationFailed as exc:
            raise self._fail(exc.message) from None
        entries: list[tuple[str, str]] = []
        for child in root:
            path = child.get(f"{{{_MANIFEST_NS}}}full-path")
            media = child.get(f"{{{_MANIFEST_NS}}}media-type")
            if path is None or media is None:
                raise self._fail("a manifest entry lacks full-path or media-type")
            if path != "/":
                entries.append((path, media))
        if _manifest_xml(entries) != raw:
            raise self._fail("META-INF/manifest.xml is not in the expected form (changed after export)")
        listed = [p for p, _ in entries]
        present = [n for n in names if n not in ("mimetype", MANIFEST_PATH)]
        if sorted(listed) != sorted(present):
            missing, extra = sorted(set(listed) - set(present)), sorted(set(present) - set(listed))
            raise self._fail(f"manifest and files differ: listed but absent {missing}, present but unlisted {extra}")
        self.media_types: dict[str, str] = dict(entries)

    def _fail(self, message: str) -> LogVerificationFailed:
        return named_failure(self.where, 1, "layout", message)

    @property
    def names(self) -> list[str]:
        """Every file the manifest lists, in container order."""
        return list(self.media_types)

    def size(self, path: str) -> int:
        """The uncompressed size of ``path``."""
        return self._infos[path].file_size

    def read(self, path: str, max_bytes: int = _MAX_SMALL_FILE) -> bytes:
        """The bytes of ``path`` (at most ``max_bytes``, checked before reading); raise if absent or corrupt."""
        info = self._infos.get(path)
        if info is None:
            raise self._fail(f"{path} is missing")
        if info.file_size > max_bytes:
            raise self._fail(f"{path} is larger than {max_bytes} bytes")
        try:
            return self._zip.read(info)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            raise self._fail(f"{path} cannot be read ({exc})") from None

    def lines(self, path: str, max_line: int = _MAX_SMALL_FILE) -> Iterator[bytes]:
        """The lines of ``path`` (each with its newline), read as a stream; raise for a line over ``max_line``."""
        info = self._infos.get(path)
        if info is None:
            raise self._fail(f"{path} is missing")
        try:
            with self._zip.open(info) as stream:
                while line := stream.readline(max_line + 1):
                    if len(line) > max_line:
                        raise self._fail(f"{path} has a line longer than {max_line} bytes")
                    yield line
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            raise self._fail(f"{path} cannot be read ({exc})") from None

    def sha512(self, path: str) -> str:
        """The SHA-512 (hex) of ``path``, read as a stream."""
        info = self._infos.get(path)
        if info is None:
            raise self._fail(f"{path} is missing")
        hasher = hashlib.sha512()
        try:
            with self._zip.open(info) as stream:
                while chunk := stream.read(_CHUNK):
                    hasher.update(chunk)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            raise self._fail(f"{path} cannot be read ({exc})") from None
        return hasher.hexdigest()

    def close(self) -> None:
        """Release the ZIP file."""
        self._zip.close()


# Failure naming ---------------------------------------------------------------------------------------------------

_STEP_NAMES = {
    1: "layout",
    2: "record hash",
    3: "part digests",
    4: "signature",
    5: "Merkle proof",
    6: "timestamp",
    7: "request binding",
    8: "times agree",
}


class _NamedFailure(LogVerificationFailed):
    """A failure already naming its record and step (so an enclosing step passes it on unchanged)."""


def named_failure(where: str, step: int, check: str, reason: str) -> LogVerificationFailed:
    """A ``LogVerificationFailed`` naming what failed (``where``: a record or archive) and the numbered check."""
    error = _NamedFailure(f"{where}: check ({step}) {check} failed: {reason}")
    error.detail = f"{where}; step {step}"
    return error


@contextlib.contextmanager
def verification_step(where: str, step: int, check: str) -> Iterator[None]:
    """Run one numbered check; any failure inside becomes a ``LogVerificationFailed`` naming ``where`` and the step.

    Fail closed: an unexpected exception is a failed check, never a pass.  A failure that already names its
    place and step (from a nested check) passes through unchanged.
    """
    try:
        yield
    except _NamedFailure:
        raise
    except KorpuError as exc:
        raise named_failure(where, step, check, exc.message) from None
    except Exception as exc:
        raise named_failure(where, step, check, f"cannot be checked ({type(exc).__name__}: {exc})") from None


def _step(where: str, step: int) -> contextlib.AbstractContextManager[None]:
    return verification_step(where, step, _STEP_NAMES[step])


# Request hash (docs/protocol.md § Request hash), from the record's signed part digests --------------------------


def recompute_request_hash(record: LogRecord) -> str:
    """The request hash of a request record, from its ``message`` (and ``body``) digests; raise if undefined."""
    digests = {p.name: bytes.fromhex(p.sha512) for p in record.parts}
    message = digests.get("message")
    if message is None:
        raise LogVerificationFailed("the request has no 'message' part")
    if record.protocol == "SOAP":
        return base64.b64encode(message).decode("ascii")
    if record.protocol == "REST":
        body = digests.get("body")
        combined = message if body is None else hashlib.sha512(message + body).digest()
        return base64.b64encode(combined).decode("ascii")
    raise LogVerificationFailed(f"unknown protocol {record.protocol!r}: the request hash cannot be recomputed")


# Building ---------------------------------------------------------------------------------------------------------


def _proof_json(evidence: RecordEvidence) -> dict[str, Any]:
    return {
        "seq": evidence.record.seq,
        "record_hash": evidence.record.hash,
        "batch": evidence.batch.to_json(),
        "proof": evidence.proof.to_json(),
    }


def _signer_cert(record: LogRecord) -> x509.Certificate | None:
    signature = record.signature_bytes()
    if signature is None:
        return None
    digests = {p.name: bytes.fromhex(p.sha512) for p in record.parts}
    return verify_signature_details(signature, digests).cert


def build_container(request: RecordEvidence, response: RecordEvidence | None, certs: EvidenceCerts) -> bytes:
    """The evidence container for one exchange: the request record and (if logged yet) the response record.

    ``parts`` must hold the bytes of every part the record lists as stored.  Raises :class:`ValueError` for
    inconsistent input and :class:`LogVerificationFailed` (via the signature) if a record's signature does not
    verify over its own part digests: the server refuses to export evidence that does not hold.
    """
    items = [("request", request)] + ([("response", response)] if response is not None else [])
    buffer = io.BytesIO()
    writer = AsicWriter(buffer)
    signers: list[tuple[str, x509.Certificate]] = []
    readme_facts: list[_ReadmeFacts] = []
    for role, ev in items:
        record = ev.record
        writer.add(f"{role}/record.json", dump_json(record.to_json()), MEDIA_JSON)
        signature = record.signature_bytes()
        if signature is not None:
            writer.add(f"{role}/signature.xml", signature, MEDIA_XML)
        for part in record.parts:
            if not part.stored:
                continue
            data = ev.parts.get(part.name)
            if data is None or hashlib.sha512(data).hexdigest() != part.sha512:
                raise ValueError(f"{role} record {record.seq}: bytes of part {part.name!r} missing or not matching")
            writer.add(f"{role}/{part.name}", data, part.content_type)
        for i, staple in enumerate(record.ocsp):
            writer.add(f"{role}/ocsp-{i}.der", base64.b64decode(staple), MEDIA_OCSP)
        writer.add(f"{role}/proof.json", dump_json(_proof_json(ev)), MEDIA_JSON)
        writer.add(f"{role}/timestamp.tsr", ev.token, MEDIA_TOKEN)
        cert = _signer_cert(record)
        if cert is not None:
            signers.append((role, cert))
        readme_facts.append(_facts(role, record, ev.batch, cert))
    writer.add("certs/ca-root.pem", pem(certs.ca_roots), MEDIA_PEM)
    writer.add("certs/ca-issuing.pem", pem(certs.ca_intermediates), MEDIA_PEM)
    writer.add("certs/tsa.pem", pem((*certs.tsas, *certs.ca_intermediates)), MEDIA_PEM)
    for role, cert in signers:
        writer.add(f"certs/signer-{role}.pem", pem([cert]), MEDIA_PEM)
    writer.add("README.txt", readme(request.record.server, request.record.request_id, readme_facts), MEDIA_TEXT)
    writer.close()
    return buffer.getvalue()


# README ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ReadmeFacts:
    role: str
    seq: int
    root_hex: str
    signed: bool
    signing_epoch: int | None
    all_stored: bool
    gen_epoch: int


def _facts(role: str, record: LogRecord, batch: BatchRef, cert: x509.Certificate | None) -> _ReadmeFacts:
    signing_epoch: int | None = None
    if cert is not None:
        signature = record.signature_bytes()
        assert signature is not None
        digests = {p.name: bytes.fromhex(p.sha512) for p in record.parts}
        when = verify_signature_details(signature, digests).signing_time or _utc(record.at, "record time")
        signing_epoch = int(when.timestamp())
    gen_epoch = int(_utc(batch.stamped_at, "batch.stamped_at").timestamp())
    all_stored = all(p.stored for p in record.parts)
    return _ReadmeFacts(role, record.seq, batch.merkle_root, cert is not None, signing_epoch, all_stored, gen_epoch)


def independent_commands(facts: _ReadmeFacts) -> list[str]:
    """The shell commands (run from the unzipped container's top directory) that check one record."""
    role = facts.role
    cmds: list[str] = []
    if facts.signed:
        assert facts.signing_epoch is not None
        gmt = dt.datetime.fromtimestamp(facts.signing_epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        cmds += [
            f"(cd {role} && xmlsec1 --verify --trusted-pem ../certs/ca-root.pem "
            f"--untrusted-pem ../certs/ca-issuing.pem --verification-gmt-time '{gmt}' signature.xml)",
            f"openssl verify -attime {facts.signing_epoch} -CAfile certs/ca-root.pem "
            f"-untrusted certs/ca-issuing.pem certs/signer-{role}.pem",
            f"openssl ocsp -respin {role}/ocsp-0.der -issuer certs/ca-issuing.pem -cert certs/signer-{role}.pem "
            f"-CAfile certs/ca-root.pem -verify_other certs/ca-issuing.pem -attime {facts.signing_epoch} -no_nonce",
        ]
    cmds.append(
        f"openssl ts -verify -digest {facts.root_hex} -in {role}/timestamp.tsr -token_in "
        f"-CAfile certs/ca-root.pem -untrusted certs/tsa.pem -attime {facts.gen_epoch}"
    )
    return cmds


#: The Python check of record hash, part digests and Merkle proof, using only the standard library.
PYTHON_CHECK = """\
import hashlib, json, sys

role = sys.argv[1]  # "request" or "response"
rec = json.load(open(f"{role}/record.json", encoding="utf-8"))
body = {k: v for k, v in rec.items() if k != "hash"}
canon = json.dumps(body, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
h = hashlib.sha256(bytes.fromhex(rec["prev_hash"]) + canon).digest()
assert h.hex() == rec["hash"], "record hash"
for p in rec["parts"]:
    if p["stored"]:
        assert hashlib.sha512(open(f"{role}/{p['name']}", "rb").read()).hexdigest() == p["sha512"], p["name"]
pf = json.load(open(f"{role}/proof.json", encoding="utf-8"))
leaf = lambda x: hashlib.sha256(b"\\x00" + x).digest()
node = lambda a, b: hashlib.sha256(b"\\x01" + a + b).digest()


def split(n):
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def climb(m, n, x, path):
    if n == 1:
        return x
    k, sib = split(n), bytes.fromhex(path.pop())
    return node(climb(m, k, x, path), sib) if m < k else node(sib, climb(m - k, n - k, x, path))


path = list(pf["proof"]["path"])
root = climb(pf["proof"]["index"], pf["proof"]["size"], leaf(h), path)
assert not path and root.hex() == pf["batch"]["merkle_root"] == pf["proof"]["root"], "Merkle proof"
print(role, rec["seq"], "record hash, parts and Merkle proof OK; batch root", root.hex())
"""


def readme(server: str, request_id: str, facts: Sequence[_ReadmeFacts]) -> bytes:
    """README.txt: what the container is and the exact commands that check it without Körpü."""
    lines = [
        "Körpü evidence container",
        "========================",
        "",
        f"One exchange (request id {request_id}) as logged by security server {server}.",
        "Layout and every rule: docs/audit.md in the Körpü sources.",
        "",
        "Check everything at once:   korpu audit verify <this file> [--ca <federation root CA PEM>]",
        "",
        "Or with standard tools: unzip the container, cd into it, and run the commands below.",
        "Each must succeed (exit status 0; xmlsec1 prints OK, openssl verify 'OK', openssl ts",
        "'Verification: OK', openssl ocsp 'Response verify OK' and 'good').",
        "Compare certs/ca-root.pem with the root CA you trust (global configuration) first.",
        "",
    ]
    for f in facts:
        lines.append(f"{f.role} (record {f.seq}):")
        lines.extend(f"  {c}" for c in independent_commands(f))
        lines.append(f"  python3 check.py {f.role}     # check.py: the Python program below")
        if f.signed and not f.all_stored:
            lines.append("  (parts logged as metadata only are absent; xmlsec1 then cannot check the signature)")
        lines.append("")
    lines += ["check.py (record hash, part digests, Merkle proof; standard library only):", ""]
    lines += [f"    {line}" if line else "" for line in PYTHON_CHECK.splitlines()]
    lines.append("")
    return "\n".join(lines).encode("utf-8")


# Verifying ---------------------------------------------------------------------------------------------------------


@dataclass
class _Loaded:
    role: str
    where: str
    record: LogRecord
    proof: MerkleProof
    batch: BatchRef
    token: bytes
    signer: x509.Certificate | None = None
    signing_time: dt.datetime | None = None


def verify_container(
    data: bytes,
    *,
    trust_roots: Sequence[x509.Certificate] | None = None,
    ocsp_max_age: dt.timedelta = DEFAULT_OCSP_MAX_AGE,
) -> VerificationReport:
    """Verify an evidence container offline; return what it proves, or raise ``LogVerificationFailed``.

    ``trust_roots`` are the CA roots to trust; without them the container's ``certs/ca-root.pem`` is trusted
    (then compare it with the federation's root yourself).  Given, the container's roots must be among them.
    """
    try:
        return _verify_container(data, trust_roots, ocsp_max_age)
    except LogVerificationFailed:
        raise
    except Exception as exc:
        # Fail closed: whatever went wrong outside a numbered step, the evidence is not accepted.
        raise named_failure("container", 1, "layout", f"cannot be checked ({type(exc).__name__})") from None


def _verify_container(
    data: bytes, trust_roots: Sequence[x509.Certificate] | None, ocsp_max_age: dt.timedelta
) -> VerificationReport:
    # (1) Layout: ZIP and manifest, then which records there are and the certificates.
    reader = AsicReader(data)
    roles = [r for r in _ROLES if f"{r}/record.json" in reader.media_types]
    if roles not in (["request"], ["request", "response"]):
        raise named_failure("container", 1, "layout", "needs request/record.json, and optionally response/record.json")
    with _step("container", 1):
        roots = parse_pem_certs(reader.read("certs/ca-root.pem"), "certs/ca-root.pem")
        issuing_data = reader.read("certs/ca-issuing.pem")
        issuing = parse_pem_certs(issuing_data, "certs/ca-issuing.pem") if issuing_data else []
        tsa_file = parse_pem_certs(reader.read("certs/tsa.pem"), "certs/tsa.pem")
        check_cert_files(roots, issuing, tsa_file)
        if trust_roots is not None:
            for root in roots:
                if root not in trust_roots:
                    raise LogVerificationFailed(
                        f"certs/ca-root.pem holds {root.subject.rfc4514_string()}, which is not a given trust root"
                    )
    anchors = list(trust_roots) if trust_roots is not None else roots
    loaded = [_load_record(reader, role) for role in roles]
    expected = _expected_files(loaded)
    with _step("container", 1):
        if set(reader.names) != expected:
            missing, extra = sorted(expected - set(reader.names)), sorted(set(reader.names) - expected)
            raise LogVerificationFailed(f"files differ from the records: missing {missing}, unexpected {extra}")
    reports = []
    for item in loaded:
        reports.append(_verify_record(reader, item, anchors, issuing, tsa_file, ocsp_max_age))
    # (7) The response binds to the request.
    if len(loaded) == 2:
        _verify_binding(loaded[0], loaded[1])
    # (1) README.txt is exactly what this content implies (it tells auditors which digests to check).
    facts = [
        _ReadmeFacts(
            i.role,
            i.record.seq,
            i.batch.merkle_root,
            i.signer is not None,
            int(i.signing_time.timestamp()) if i.signing_time is not None else None,
            all(p.stored for p in i.record.parts),
            int(_utc(i.batch.stamped_at, "batch.stamped_at").timestamp()),
        )
        for i in loaded
    ]
    first = loaded[0].record
    with _step("container", 1):
        if reader.read("README.txt") != readme(first.server, first.request_id, facts):
            raise LogVerificationFailed("README.txt is not the one this content implies (changed after export)")
    reader.close()
    notes = ["ocsp-1.der (the authentication certificate's staple) is carried but not checked: "
             "the record does not hold the authentication certificate"]  # fmt: skip
    if len(loaded) == 1:
        notes.append("no response record: the exchange has no logged response (or it was not exported)")
    return VerificationReport(
        server=first.server,
        request_id=first.request_id,
        records=tuple(reports),
        trust_roots=tuple(r.subject.rfc4514_string() for r in anchors),
        notes=tuple(notes),
    )


def _load_record(reader: AsicReader, role: str) -> _Loaded:
    where = f"{role} record"
    with _step(where, 1):
        raw = load_json(reader.read(f"{role}/record.json"), f"{role}/record.json")
        record = LogRecord.from_json(raw)
        if not isinstance(record.seq, int) or not isinstance(record.hash, str):
            raise LogVerificationFailed("seq and hash have the wrong types")
    where = f"{role} record {record.seq}"
    with _step(where, 1):
        pf = load_json(reader.read(f"{role}/proof.json"), f"{role}/proof.json")
        _exact_keys(pf, {"seq", "record_hash", "batch", "proof"}, f"{role}/proof.json")
        _exact_keys(pf["proof"], {"index", "size", "path", "root"}, f"{role}/proof.json proof")
        proof = MerkleProof.from_json(pf["proof"])
        batch = BatchRef.from_json(pf["batch"])
        if pf["seq"] != record.seq or pf["record_hash"] != record.hash:
            raise LogVerificationFailed("proof.json is about another record")
        token = reader.read(f"{role}/timestamp.tsr")
    return _Loaded(role, where, record, proof, batch, token)


def _expected_files(loaded: Sequence[_Loaded]) -> set[str]:
    files = {"certs/ca-root.pem", "certs/ca-issuing.pem", "certs/tsa.pem", "README.txt"}
    for item in loaded:
        role, record = item.role, item.record
        files |= {f"{role}/record.json", f"{role}/proof.json", f"{role}/timestamp.tsr"}
        files |= {f"{role}/{p.name}" for p in record.parts if p.stored}
        files |= {f"{role}/ocsp-{i}.der" for i in range(len(record.ocsp))}
        if record.signature is not None:
            files |= {f"{role}/signature.xml", f"certs/signer-{role}.pem"}
    return files


def _verify_record(
    reader: AsicReader,
    item: _Loaded,
    roots: Sequence[x509.Certificate],
    issuing: Sequence[x509.Certificate],
    tsa_file: Sequence[x509.Certificate],
    ocsp_max_age: dt.timedelta,
) -> RecordReport:
    role, where, record = item.role, item.where, item.record
    # (2) The record's hash covers its content and its predecessor's hash.
    with _step(where, 2):
        if chain_hash(bytes.fromhex(record.prev_hash), record).hex() != record.hash:
            raise LogVerificationFailed("content does not match its hash (the record was changed)")
        expected_direction = "request" if role == "request" else "response"
        if record.direction != expected_direction:
            raise LogVerificationFailed(f"the record in {role}/ is a {record.direction} record")
    # (3) Each stored part's file has the record's size, SHA-512 and media type.
    with _step(where, 3):
        for part in record.parts:
            if not part.stored:
                continue
            path = f"{role}/{part.name}"
            if reader.size(path) != part.size:
                raise LogVerificationFailed(f"{path} has {reader.size(path)} bytes, the record says {part.size}")
            if reader.media_types[path] != part.content_type:
                raise LogVerificationFailed(f"{path} is listed with another media type than the record's")
            if reader.sha512(path) != part.sha512:
                raise LogVerificationFailed(f"{path} does not match the record's SHA-512 (the part was changed)")
    # (4) Signature, signer certificate, member, OCSP.
    ocsp_this_update: dt.datetime | None = None
    if record.signature is not None:
        with _step(where, 4):
            ocsp_this_update = _verify_signature(reader, item, roots, issuing, ocsp_max_age)
    elif record.outcome == "ok":
        raise named_failure(where, 4, "signature", "a record with outcome 'ok' must be signed")
    # (5) The Merkle proof leads from the record's hash to the batch root, at the record's place in the batch.
    with _step(where, 5):
        batch, proof = item.batch, item.proof
        if not batch.first_seq <= record.seq <= batch.last_seq:
            raise LogVerificationFailed(f"record {record.seq} is outside batch {batch.first_seq}..{batch.last_seq}")
        if proof.index != record.seq - batch.first_seq or proof.size != batch.last_seq - batch.first_seq + 1:
            raise LogVerificationFailed("the proof's index or size does not fit the batch's range")
        if proof.root != batch.merkle_root:
            raise LogVerificationFailed("the proof's root is not the batch's root")
        root = verify_proof(bytes.fromhex(record.hash), proof)
    # (6) The timestamp token dates the root.
    with _step(where, 6):
        gen_time, tsa = check_timestamp(item.token, root, roots, [*issuing, *tsa_file], tsa_file)
        if gen_time != _utc(batch.stamped_at, "batch.stamped_at"):
            raise LogVerificationFailed("the token's genTime is not the batch's stamped_at")
    # (8) The times agree: what the signer and the log claim must lie shortly before the independent timestamp.
    #     Otherwise a signature backdated to before its key was revoked, with an old "good" OCSP response, would
    #     verify however late it was logged.  Records are stamped within the grace period (default 4 h), so a
    #     claim more than MAX_STAMP_DELAY before genTime, or after it, is refused.
    with _step(where, 8):
        for label, claimed in (("signing time", item.signing_time), ("record time", _utc(record.at, "record time"))):
            if claimed is None:
                continue
            if claimed > gen_time + CLOCK_SKEW:
                raise LogVerificationFailed(f"the {label} {claimed.isoformat()} is after the batch's timestamp")
            if gen_time - claimed > MAX_STAMP_DELAY:
                raise LogVerificationFailed(
                    f"the {label} {claimed.isoformat()} is more than {MAX_STAMP_DELAY} before the batch's timestamp"
                )
    return RecordReport(
        role=role,
        seq=record.seq,
        hash=record.hash,
        at=record.at,
        server=record.server,
        side=record.side,
        direction=record.direction,
        request_id=record.request_id,
        message_id=record.message_id,
        client=record.client,
        service=record.service,
        outcome=record.outcome,
        signer=str(member_from_sign_cert(item.signer)) if item.signer is not None else None,
        signer_subject=item.signer.subject.rfc4514_string() if item.signer is not None else None,
        signing_time=item.signing_time,
        ocsp_this_update=ocsp_this_update,
        batch_id=item.batch.id,
        batch_first_seq=item.batch.first_seq,
        batch_last_seq=item.batch.last_seq,
        merkle_root=item.batch.merkle_root,
        gen_time=gen_time,
        tsa=tsa.subject.rfc4514_string(),
    )


def _expected_member(record: LogRecord) -> MemberId:
    if record.direction == "request":
        client = parse_encoded(record.client)
        if not isinstance(client, MemberId | SubsystemId):
            raise LogVerificationFailed(f"the record's client {record.client!r} is not a member or subsystem")
        return client.member
    service = parse_encoded(record.service)
    if not isinstance(service, ServiceId):
        raise LogVerificationFailed(f"the record's service {record.service!r} is not a service")
    return service.member


def _verify_signature(
    reader: AsicReader,
    item: _Loaded,
    roots: Sequence[x509.Certificate],
    issuing: Sequence[x509.Certificate],
    ocsp_max_age: dt.timedelta,
) -> dt.datetime:
    role, record = item.role, item.record
    # (4a) signature.xml is the record's signature (which the record hash covers).
    signature = reader.read(f"{role}/signature.xml")
    if signature != record.signature_bytes():
        raise LogVerificationFailed("signature.xml is not the record's signature")
    # (4b) It verifies over the record's part digests, the derived index included.
    digests = {p.name: bytes.fromhex(p.sha512) for p in record.parts}
    index = next((p for p in record.parts if p.name == INDEX_PART), None)
    if index is None or not index.stored:
        raise LogVerificationFailed("the record lacks the stored 'index' part the signature covers")
    verified = verify_signature_details(signature, digests)
    # (4c) The signed index agrees with the record: its parts, and the message id, request id and request hash.
    _check_index(reader.read(f"{role}/{INDEX_PART}"), record)
    # (4d) The signer certificate chains to the CA at the signing time and is a signing certificate.
    cert = verified.cert
    when = verified.signing_time or _utc(record.at, "record time")
    intermediates = [*verified.chain, *issuing]
    verify_chain(cert, intermediates, roots, when, CertPurpose.SIGN)
    # (4e) …of the member that had to sign: the client's (request) or the service provider's (response).
    member = member_from_sign_cert(cert)
    if member != _expected_member(record):
        raise LogVerificationFailed(f"signed by {member}, but the {record.direction} must be signed by its member")
    if parse_pem_certs(reader.read(f"certs/signer-{role}.pem"), f"certs/signer-{role}.pem") != [cert]:
        raise LogVerificationFailed(f"certs/signer-{role}.pem is not the signature's certificate")
    # (4f) The stapled OCSP response for the signing certificate verifies and says GOOD at the signing time.
    if not record.ocsp:
        raise LogVerificationFailed("no OCSP response is stapled for the signing certificate")
    staple = reader.read(f"{role}/ocsp-0.der")
    for i, logged in enumerate(record.ocsp):
        if reader.read(f"{role}/ocsp-{i}.der") != base64.b64decode(logged, validate=True):
            raise LogVerificationFailed(f"ocsp-{i}.der is not the record's stapled OCSP response")
    issuer = _issuer_of(cert, [*intermediates, *roots])
    status = verify_ocsp_response(staple, cert, issuer, now=when, max_age=ocsp_max_age)
    if status.status is not RevocationStatus.GOOD:
        raise LogVerificationFailed(f"the signing certificate's OCSP status was {status.status} at the signing time")
    item.signer, item.signing_time = cert, when
    return status.this_update


def _issuer_of(cert: x509.Certificate, candidates: Sequence[x509.Certificate]) -> x509.Certificate:
    for candidate in candidates:
        if candidate.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return candidate
    raise LogVerificationFailed("the signing certificate's issuer is not in the container")


def _check_index(data: bytes, record: LogRecord) -> None:
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_pairs, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise LogVerificationFailed("the index part is not JSON") from None
    _exact_keys(doc, {"meta", "parts"}, "the index part")
    listed = [p for p in record.parts if p.name != INDEX_PART]
    described = doc["parts"]
    if not isinstance(described, list) or len(described) != len(listed):
        raise LogVerificationFailed("the index lists other parts than the record")
    for entry, part in zip(described, listed, strict=True):
        if not isinstance(entry, list) or len(entry) != 4 or entry[:3] != [part.name, part.content_type, part.size]:
            raise LogVerificationFailed(f"the index describes part {part.name!r} differently from the record")
    meta = doc["meta"]
    if not isinstance(meta, dict):
        raise LogVerificationFailed("the index meta is not an object")
    for key, value in (("id", record.message_id), ("requestId", record.request_id)):
        if key in meta and meta[key] != value:
            raise LogVerificationFailed(f"the signed meta {key} differs from the record's")
    if meta.get("requestHash") and meta["requestHash"] != record.request_hash:
        raise LogVerificationFailed("the signed meta requestHash differs from the record's request_hash")
    if "protocol" in meta and meta["protocol"] != record.protocol:
        raise LogVerificationFailed("the signed meta protocol differs from the record's")


def check_timestamp(
    token: bytes,
    root: bytes,
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
    candidates: Sequence[x509.Certificate],
) -> tuple[dt.datetime, x509.Certificate]:
    """Verify a batch token over ``root`` with one of the TSA ``candidates``; return (genTime, TSA certificate).

    The TSA certificate must chain to ``roots`` at genTime; the token may carry only certificates among
    ``candidates``, ``intermediates`` and ``roots`` (nothing unverified rides along).  Raises on failure.
    """
    tsas = []
    for cert in candidates:
        try:
            check_tsa_cert(cert)
        except KorpuError:
            continue
        tsas.append(cert)
    if not tsas:
        raise LogVerificationFailed("no TSA certificate is given")
    first_error: KorpuError | None = None
    for tsa in tsas:
        try:
            gen_time = verify_timestamp_token(token, data_digest=root, tsa_cert=tsa)
        except KorpuError as exc:
            # Prefer the reason from a certificate that is the token's signer over "not signed by this one".
            if first_error is None or "not signed by the given TSA" in first_error.message:
                first_error = exc
            continue
        verify_chain(tsa, intermediates, roots, gen_time, CertPurpose.TSA)
        known = {c.public_bytes(Encoding.DER) for c in (*candidates, *intermediates, *roots)}
        _check_token_envelope(token, known)
        return gen_time, tsa
    assert first_error is not None
    raise first_error


def _check_token_envelope(token: bytes, known: set[bytes]) -> None:
    """The unsigned parts of the token hold nothing unexpected: the fields verify_timestamp_token does not cover."""
    try:
        check_token_envelope(token, known)
    except PkiError as exc:
        raise LogVerificationFailed(exc.message) from None


def _verify_binding(request: _Loaded, response: _Loaded) -> None:
    where = f"{response.where} (with {request.where})"
    with _step(where, 7):
        req, resp = request.record, response.record
        for name in ("server", "side", "request_id", "client", "service"):
            if getattr(req, name) != getattr(resp, name):
                raise LogVerificationFailed(f"request and response records differ in {name}")
        if resp.seq <= req.seq:
            raise LogVerificationFailed("the response record precedes the request record in the log")
        if req.request_hash is None or req.request_hash != recompute_request_hash(req):
            raise LogVerificationFailed("the request record's request_hash is not the hash of its signed parts")
        # An unsigned fault response may carry no request hash; any other must carry the request's.
        if (resp.signature is not None or resp.request_hash is not None) and resp.request_hash != req.request_hash:
            raise LogVerificationFailed("the response's request hash is not the request's")
