"""The auditor's side of the message log: evidence export, linked archives, and whole-log verification.

* :func:`export_exchange` packs one exchange (its request and response records on this server) into an evidence
  container (:mod:`bridge.evidence`) with Merkle proofs into their timestamped batches.
* :func:`rotate` moves whole timestamped batches of old records into an **archive**: a ZIP with the same ASiC-E
  layout as an evidence container, holding::

      records.jsonl        the records, one canonical JSON object (bridge.messagelog.canonical) per line
      bodies/<sha512 hex>  every stored part the records reference, once each
      batches.jsonl        the batches (id, first_seq, last_seq, merkle_root, stamped_at, tsa_url), one per line
      batches/<id>.tsr     each batch's RFC 3161 token over its Merkle root
      certs/…              ca-root.pem, ca-issuing.pem, tsa.pem (as in an evidence container)
      link.json            the range, the last record's hash and time, and the previous archive's name and
                           SHA-256 plus the hash of the record before this archive
      README.txt

  Archives are linked: each names the SHA-256 of the previous archive file and continues its hash chain, so a
  missing, replaced or reordered archive is detected by :func:`verify_archives`.  With ``delete=True`` the
  archived records and the bodies no remaining record uses are then removed from the live store (which needs
  :meth:`PrunableLogStore.delete_through`).
* :func:`verify_archives` and :func:`verify_log` check archives and the live log: hash chain, every batch root
  recomputed (which is what every Merkle proof of the batch reduces to) and its token verified, links.
* :func:`cleanup` applies retention: archives whose newest record is older than ``keep_days`` are deleted
  (never the newest archive, which the next rotation links to) and listed in ``pruned.jsonl``.

Every verification raises :class:`~bridge.errors.LogVerificationFailed` naming the archive (or record) and the
numbered check, or returns a report; nothing returns ``False``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

from cryptography import x509

from bridge.errors import InvalidState, LogVerificationFailed, NotFound
from bridge.evidence import (
    MEDIA_JSON,
    MEDIA_JSONL,
    MEDIA_OCTETS,
    MEDIA_PEM,
    MEDIA_TEXT,
    MEDIA_TOKEN,
    AsicReader,
    AsicWriter,
    BatchRef,
    EvidenceCerts,
    RecordEvidence,
    build_container,
    check_cert_files,
    check_timestamp,
    dump_json,
    load_json,
    parse_pem_certs,
    pem,
    verification_step,
    verify_container,
)
from bridge.messagelog import GENESIS_HASH, LogRecord, canonical, chain_hash, merkle_proof, merkle_root
from security_server.messagelog import Batch, LogQuery, LogStore

__all__ = [
    "ARCHIVE_FORMAT",
    "ArchiveReport",
    "LogReport",
    "PrunableLogStore",
    "cleanup",
    "export_exchange",
    "rotate",
    "verify_archives",
    "verify_log",
]

#: ``format`` of ``link.json``.
ARCHIVE_FORMAT = "korpu-log-archive/1"
#: Archive files are named ``messagelog-<first seq>-<last seq>.zip`` (12 digits each), so names sort in log order.
ARCHIVE_RE = re.compile(r"messagelog-(\d{12})-(\d{12})\.zip")
PRUNED_LEDGER = "pruned.jsonl"
_PAGE = 1000
_MAX_ARCHIVE_ENTRIES = 10_000_000
_LINK_KEYS = {
    "format",
    "server",
    "first_seq",
    "last_seq",
    "prev_hash",
    "last_hash",
    "last_at",
    "prev_archive",
}
_BATCH_KEYS = {"id", "first_seq", "last_seq", "merkle_root", "stamped_at", "tsa_url"}

ARCHIVE_README = b"""K\xc3\xb6rp\xc3\xbc message log archive
==========================

Records first_seq..last_seq of one security server's message log (link.json), in whole timestamped batches.

  records.jsonl        one record per line (canonical JSON; see bridge/messagelog.py and docs/audit.md)
  bodies/<sha512 hex>  the stored message parts the records reference
  batches.jsonl        the batches; batches/<id>.tsr is each batch's RFC 3161 token over its Merkle root
  certs/               the federation CA (ca-root.pem, ca-issuing.pem) and TSA certificate(s) (tsa.pem)
  link.json            this archive's range and last hash, and the previous archive's name and SHA-256

Verify this archive together with the ones before it, in order:

  korpu audit verify messagelog-000000000001-....zip messagelog-....zip ...

Each batch's token can be checked with openssl (root: the batch's merkle_root from batches.jsonl):

  openssl ts -verify -digest <merkle_root> -in batches/<id>.tsr -token_in \\
      -CAfile certs/ca-root.pem -untrusted certs/tsa.pem
"""


@runtime_checkable
class PrunableLogStore(LogStore, Protocol):
    """A log store that can drop archived records (what ``rotate(..., delete=True)`` needs)."""

    def delete_through(self, last_seq: int) -> None:
        """Delete records up to ``last_seq`` (a batch's end), their batches and unreferenced bodies, atomically."""
        ...


# Export ------------------------------------------------------------------------------------------------------------


def _batch_ref(batch: Batch) -> BatchRef:
    return BatchRef(batch.id, batch.first_seq, batch.last_seq, batch.merkle_root.hex(), batch.stamped_at, batch.tsa_url)


def _batch_hashes(store: LogStore, batch: Batch) -> list[bytes]:
    records = store.records(batch.first_seq, batch.last_seq)
    if [r.seq for r in records] != list(range(batch.first_seq, batch.last_seq + 1)):
        raise LogVerificationFailed(f"batch {batch.id}: records {batch.first_seq}..{batch.last_seq} are incomplete")
    hashes = [bytes.fromhex(r.hash) for r in records]
    if merkle_root(hashes) != batch.merkle_root:
        raise LogVerificationFailed(f"batch {batch.id}: its records do not give its Merkle root (the log was changed)")
    return hashes


def _evidence(store: LogStore, record: LogRecord, role: str) -> RecordEvidence:
    batch = store.batch_of(record.seq)
    if batch is None:
        raise InvalidState(
            f"the {role} record {record.seq} is not timestamped yet: evidence can be exported once its batch is "
            "timestamped (within the timestamping interval, unless the TSA is unreachable); try again shortly"
        )
    proof = merkle_proof(_batch_hashes(store, batch), record.seq - batch.first_seq)
    parts: dict[str, bytes] = {}
    for part in record.parts:
        if not part.stored:
            continue
        data = store.body(part.sha512, record.seq)
        if data is None:
            raise InvalidState(
                f"the {role} record {record.seq}: part {part.name!r} is no longer in the live log (archived away)"
            )
        parts[part.name] = data
    return RecordEvidence(record, parts, proof, _batch_ref(batch), batch.token)


def export_exchange(
    store: LogStore, request_id: str, certs: EvidenceCerts, *, side: str | None = None, seq: int | None = None
) -> bytes:
    """The evidence container of exchange ``request_id`` as this server logged it.

    ``side`` (``consumer`` or ``provider``) is needed only when this server logged both sides of the exchange (a
    member calling its own service through one server).  ``seq`` picks the request record when the same request
    id was logged more than once (a misbehaving consumer may reuse ids; each exchange stays exportable).  Raises
    :class:`NotFound` if there is no such request, :class:`InvalidState` if a record is not timestamped yet or its
    bodies were archived away, and :class:`LogVerificationFailed` if the log does not verify: evidence that does
    not verify is never handed out.
    """
    found = store.find(LogQuery(request_id=request_id, limit=100))
    found = [r for r in found if r.request_id == request_id and (side is None or r.side == side)]
    sides = sorted({r.side for r in found})
    if len(sides) > 1:
        raise InvalidState(f"this server logged exchange {request_id} on both sides ({', '.join(sides)}): give a side")
    requests = [r for r in found if r.direction == "request"]
    if not requests:
        raise NotFound(f"no request with request id {request_id!r} in this server's message log")
    if seq is not None:
        requests = [r for r in requests if r.seq == seq]
        if not requests:
            raise NotFound(f"record {seq} is not a request of exchange {request_id!r}")
    elif len(requests) > 1:
        seqs = ", ".join(str(r.seq) for r in requests)
        raise InvalidState(f"request id {request_id} was logged {len(requests)} times (records {seqs}): give seq")
    chosen = requests[0]
    # Its response: the first response record with the same id after it, before any later request with that id.
    later_requests = [r.seq for r in found if r.direction == "request" and r.seq > chosen.seq]
    bound = min(later_requests) if later_requests else None
    responses = [
        r for r in found if r.direction == "response" and r.seq > chosen.seq and (bound is None or r.seq < bound)
    ]
    request = _evidence(store, chosen, "request")
    response = _evidence(store, responses[0], "response") if responses else None
    data = build_container(request, response, certs)
    verify_container(data, trust_roots=certs.ca_roots)  # fail closed: refuse to hand out broken evidence
    return data


# Archives: writing -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tail:
    """What the next archive links to: the newest archive's name, SHA-256, last seq and last hash."""

    name: str
    sha256: str
    last_seq: int
    last_hash: str


def _sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            hasher.update(chunk)
    return hasher.hexdigest()


def _archives(archive_dir: Path) -> list[Path]:
    return sorted(p for p in archive_dir.iterdir() if ARCHIVE_RE.fullmatch(p.name)) if archive_dir.exists() else []


def _read_link(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        reader = AsicReader(fh, f"archive {path.name}", max_entries=_MAX_ARCHIVE_ENTRIES)
        link = _load_link(reader)
        reader.close()
    return link


def _load_link(reader: AsicReader) -> dict[str, Any]:
    link = load_json(reader.read("link.json"), "link.json")
    if not isinstance(link, dict) or set(link) != _LINK_KEYS or link["format"] != ARCHIVE_FORMAT:
        raise LogVerificationFailed(f"link.json must be a {ARCHIVE_FORMAT} object with keys {sorted(_LINK_KEYS)}")
    prev = link["prev_archive"]
    if prev is not None and (not isinstance(prev, dict) or set(prev) != {"name", "sha256"}):
        raise LogVerificationFailed("link.json prev_archive must be null or {name, sha256}")
    for key in ("first_seq", "last_seq"):
        if type(link[key]) is not int or link[key] < 1:
            raise LogVerificationFailed(f"link.json {key} must be a positive integer")
    return link


def _tail(archive_dir: Path) -> _Tail | None:
    archives = _archives(archive_dir)
    if not archives:
        return None
    newest = archives[-1]
    link = _read_link(newest)
    return _Tail(newest.name, _sha256_file(newest), int(link["last_seq"]), str(link["last_hash"]))


def _first_present(store: LogStore) -> LogRecord | None:
    found = store.find(LogQuery(after_seq=0, limit=1))
    return found[0] if found else None


def _utc(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"time without zone: {text!r}")
    return value.astimezone(dt.UTC)


def _select_batches(
    store: LogStore, first_seq: int, before_seq: int | None, older_than: dt.datetime | None
) -> list[Batch]:
    batches: list[Batch] = []
    seq = first_seq
    while True:
        batch = store.batch_of(seq)
        if batch is None:
            break  # not timestamped yet (or the end of the log): archives hold whole timestamped batches only
        if batch.first_seq != seq:
            raise LogVerificationFailed(f"record {seq} is inside batch {batch.id}, not at its start")
        if before_seq is not None and batch.last_seq >= before_seq:
            break
        if older_than is not None:
            last = store.records(batch.last_seq, batch.last_seq)
            if not last or _utc(last[0].at) >= older_than:
                break
        batches.append(batch)
        seq = batch.last_seq + 1
    return batches


def rotate(
    store: LogStore,
    archive_dir: Path,
    *,
    certs: EvidenceCerts,
    before_seq: int | None = None,
    older_than: dt.datetime | None = None,
    delete: bool = False,
) -> Path:
    """Archive the next whole timestamped batches (after the newest archive) into ``archive_dir``; return the file.

    Exactly one of ``before_seq`` (archive records with a lower seq) and ``older_than`` (records written before
    that time) chooses how far.  Only whole batches go in.  The archive is written to a temporary file, flushed
    and renamed, so a crash never leaves a partial archive under an archive name.  With ``delete`` the records are
    then removed from the live store (needs :class:`PrunableLogStore`).  Raises :class:`InvalidState` when there
    is nothing to archive and :class:`LogVerificationFailed` when the live log does not continue the last archive.
    """
    if (before_seq is None) == (older_than is None):
        raise ValueError("give exactly one of before_seq and older_than")
    if delete and not isinstance(store, PrunableLogStore):
        raise InvalidState("this log store cannot delete archived records (it lacks delete_through)")
    archive_dir.mkdir(parents=True, exist_ok=True)
    tail = _tail(archive_dir)
    first_seq = tail.last_seq + 1 if tail is not None else 1
    prev_hash = tail.last_hash if tail is not None else GENESIS_HASH.hex()
    present = _first_present(store)
    if present is None or present.seq > first_seq:
        raise LogVerificationFailed(
            f"the live log does not hold record {first_seq}, which the next archive must start with "
            "(records missing between the newest archive and the live log)"
        )
    batches = _select_batches(store, first_seq, before_seq, older_than)
    if not batches:
        raise InvalidState("nothing to archive: no whole timestamped batch is in the requested range")
    last_seq = batches[-1].last_seq
    fd, tmp_name = tempfile.mkstemp(prefix=".archive-", suffix=".tmp", dir=archive_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as fh:
            last = _write_archive(fh, store, batches, first_seq, prev_hash, tail, certs)
            fh.flush()
            os.fsync(fh.fileno())
        target = archive_dir / f"messagelog-{first_seq:012d}-{last_seq:012d}.zip"
        os.replace(tmp, target)
        _fsync_dir(archive_dir)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if delete:
        assert isinstance(store, PrunableLogStore)
        store.delete_through(last.seq)
    return target


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pages(store: LogStore, first_seq: int, last_seq: int) -> Iterator[LogRecord]:
    for start in range(first_seq, last_seq + 1, _PAGE):
        yield from store.records(start, min(start + _PAGE - 1, last_seq))


def _write_archive(
    fh: BinaryIO,
    store: LogStore,
    batches: Sequence[Batch],
    first_seq: int,
    prev_hash: str,
    tail: _Tail | None,
    certs: EvidenceCerts,
) -> LogRecord:
    writer = AsicWriter(fh)
    last_seq = batches[-1].last_seq
    digests: dict[str, int] = {}  # each stored body and a record naming it (a store may keep bodies per record)
    head = bytes.fromhex(prev_hash)
    expected = first_seq
    last: LogRecord | None = None
    # (1) The records, checked as they are copied: an archive never freezes a broken chain.
    with writer.open_entry("records.jsonl", MEDIA_JSONL) as out:
        for record in _pages(store, first_seq, last_seq):
            if (
                record.seq != expected
                or record.prev_hash != head.hex()
                or chain_hash(head, record).hex() != record.hash
            ):
                raise LogVerificationFailed(f"record {record.seq} of the live log does not fit the chain")
            out.write(canonical(record.to_json()) + b"\n")
            digests.update((p.sha512, record.seq) for p in record.parts if p.stored)
            head, expected, last = bytes.fromhex(record.hash), expected + 1, record
    if last is None or last.seq != last_seq:
        raise LogVerificationFailed(f"the live log lacks records up to {last_seq}")
    # (2) The bodies, once each.
    for digest in sorted(digests):
        data = store.body(digest, digests[digest])
        if data is None:
            raise InvalidState(f"the body {digest[:16]}… of an archived record is missing from the live log")
        writer.add(f"bodies/{digest}", data, MEDIA_OCTETS)
    # (3) The batches and their tokens.
    lines = b"".join(canonical(_batch_ref(b).to_json()) + b"\n" for b in batches)
    writer.add("batches.jsonl", lines, MEDIA_JSONL)
    for batch in batches:
        writer.add(f"batches/{batch.id}.tsr", batch.token, MEDIA_TOKEN)
    writer.add("certs/ca-root.pem", pem(certs.ca_roots), MEDIA_PEM)
    writer.add("certs/ca-issuing.pem", pem(certs.ca_intermediates), MEDIA_PEM)
    writer.add("certs/tsa.pem", pem((*certs.tsas, *certs.ca_intermediates)), MEDIA_PEM)
    # (4) The link to the previous archive.
    link = {
        "format": ARCHIVE_FORMAT,
        "server": last.server,
        "first_seq": first_seq,
        "last_seq": last_seq,
        "prev_hash": prev_hash,
        "last_hash": last.hash,
        "last_at": last.at,
        "prev_archive": {"name": tail.name, "sha256": tail.sha256} if tail is not None else None,
    }
    writer.add("link.json", dump_json(link), MEDIA_JSON)
    writer.add("README.txt", ARCHIVE_README, MEDIA_TEXT)
    writer.close()
    return last


# Archives: verifying ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveSummary:
    """One verified archive."""

    name: str
    sha256: str
    first_seq: int
    last_seq: int
    last_hash: str
    batches: int
    first_gen_time: dt.datetime
    last_gen_time: dt.datetime


@dataclass(frozen=True)
class ArchiveReport:
    """The result of :func:`verify_archives`: every archive verified, in order, and linked."""

    archives: tuple[ArchiveSummary, ...]
    starts_after: str | None  # the pruned predecessor the first archive links to, if it does not start the log

    def summary(self) -> str:
        """A few lines for people."""
        first, last = self.archives[0], self.archives[-1]
        lines = [f"{len(self.archives)} archive(s), records {first.first_seq}..{last.last_seq}: OK"]
        lines += [
            f"  {a.name}: records {a.first_seq}..{a.last_seq}, {a.batches} batch(es) timestamped "
            f"{a.first_gen_time.isoformat()} .. {a.last_gen_time.isoformat()}"
            for a in self.archives
        ]
        if self.starts_after is not None:
            lines.append(f"  note: the first archive follows {self.starts_after}, not given (pruned): not checked")
        return "\n".join(lines)


def _trust(
    reader: AsicReader, trust_roots: Sequence[x509.Certificate] | None
) -> tuple[list[x509.Certificate], list[x509.Certificate], list[x509.Certificate]]:
    roots = parse_pem_certs(reader.read("certs/ca-root.pem"), "certs/ca-root.pem")
    issuing_data = reader.read("certs/ca-issuing.pem")
    issuing = parse_pem_certs(issuing_data, "certs/ca-issuing.pem") if issuing_data else []
    tsas = parse_pem_certs(reader.read("certs/tsa.pem"), "certs/tsa.pem")
    check_cert_files(roots, issuing, tsas)
    if trust_roots is not None:
        for root in roots:
            if root not in trust_roots:
                raise LogVerificationFailed(f"certs/ca-root.pem holds {root.subject.rfc4514_string()}, not trusted")
        roots = list(trust_roots)
    return roots, issuing, tsas


def _verify_archive(
    path: Path, trust_roots: Sequence[x509.Certificate] | None
) -> tuple[ArchiveSummary, dict[str, Any]]:
    where = f"archive {path.name}"
    with path.open("rb") as fh:
        # (1) Layout, link.json, certificates.
        reader = AsicReader(fh, where, max_entries=_MAX_ARCHIVE_ENTRIES)
        with verification_step(where, 1, "layout"):
            link = _load_link(reader)
            roots, issuing, tsas = _trust(reader, trust_roots)
            if reader.read("README.txt") != ARCHIVE_README:
                raise LogVerificationFailed("README.txt is not the one archives carry")
            batch_lines = list(reader.lines("batches.jsonl"))
            batches = []
            for line in batch_lines:
                raw = load_json_line(line, "batches.jsonl")
                batches.append(BatchRef.from_json(raw))
        # (2) The records form a chain from link.prev_hash, numbered link.first_seq..link.last_seq.
        hashes: list[bytes] = []
        digests: set[str] = set()
        head = bytes.fromhex(str(link["prev_hash"]))
        seq = int(link["first_seq"])
        last: LogRecord | None = None
        for line in reader.lines("records.jsonl"):
            with verification_step(f"{where}, record {seq}", 2, "record chain"):
                record = LogRecord.from_json(load_json_line(line, "records.jsonl"))
                if record.seq != seq:
                    raise LogVerificationFailed(f"expected record {seq}, found {record.seq} (gap or reorder)")
                if record.prev_hash != head.hex():
                    raise LogVerificationFailed("prev_hash is not the previous record's hash")
                if chain_hash(head, record).hex() != record.hash:
                    raise LogVerificationFailed("content does not match its hash (the record was changed)")
                head, seq, last = bytes.fromhex(record.hash), seq + 1, record
                hashes.append(head)
                digests.update(p.sha512 for p in record.parts if p.stored)
        with verification_step(where, 2, "record chain"):
            if (
                last is None
                or last.seq != link["last_seq"]
                or last.hash != link["last_hash"]
                or last.at != link["last_at"]
            ):
                raise LogVerificationFailed("the records do not end where link.json says")
        # (3) Exactly the bodies the records reference, each matching its digest.
        with verification_step(where, 3, "bodies"):
            expected_files = {f"bodies/{d}" for d in digests}
            expected_files |= {f"batches/{b.id}.tsr" for b in batches}
            expected_files |= {"records.jsonl", "batches.jsonl", "link.json", "README.txt"}
            expected_files |= {"certs/ca-root.pem", "certs/ca-issuing.pem", "certs/tsa.pem"}
            if set(reader.names) != expected_files:
                missing = sorted(expected_files - set(reader.names))[:5]
                extra = sorted(set(reader.names) - expected_files)[:5]
                raise LogVerificationFailed(f"files differ from the records: missing {missing}, unexpected {extra}")
            for digest in sorted(digests):
                if reader.sha512(f"bodies/{digest}") != digest:
                    raise LogVerificationFailed(f"body {digest[:16]}… does not match its digest (changed)")
        # (4) The batches cover the range contiguously; each root is recomputed and its token verified.
        gen_times = []
        expect = int(link["first_seq"])
        first = expect
        for batch in batches:
            with verification_step(f"{where}, batch {batch.id}", 4, "batch timestamp"):
                if batch.first_seq != expect or batch.last_seq < batch.first_seq:
                    raise LogVerificationFailed(f"batch {batch.id} does not start at record {expect}")
                if batch.last_seq - first >= len(hashes):
                    raise LogVerificationFailed(f"batch {batch.id} ends after the archive's last record")
                root = merkle_root(hashes[batch.first_seq - first : batch.last_seq - first + 1])
                if root.hex() != batch.merkle_root:
                    raise LogVerificationFailed("the batch's records do not give its Merkle root")
                token = reader.read(f"batches/{batch.id}.tsr")
                gen_time, _ = check_timestamp(token, root, roots, [*issuing, *tsas], tsas)
                if gen_time != _utc(batch.stamped_at):
                    raise LogVerificationFailed("the token's genTime is not the batch's stamped_at")
                gen_times.append(gen_time)
                expect = batch.last_seq + 1
        with verification_step(where, 4, "batch timestamp"):
            if expect != int(link["last_seq"]) + 1:
                raise LogVerificationFailed("the batches do not cover every record")
        reader.close()
    return ArchiveSummary(
        path.name,
        _sha256_file(path),
        int(link["first_seq"]),
        int(link["last_seq"]),
        str(link["last_hash"]),
        len(batches),
        gen_times[0],
        gen_times[-1],
    ), link


def load_json_line(line: bytes, what: str) -> Any:
    """One line of a ``.jsonl`` file: canonical JSON (bridge.messagelog.canonical) and a newline, strictly."""
    if not line.endswith(b"\n"):
        raise LogVerificationFailed(f"{what}: the last line lacks its newline")
    try:
        obj = json.loads(line[:-1].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise LogVerificationFailed(f"{what}: a line is not JSON") from None
    if canonical(obj) + b"\n" != line:
        raise LogVerificationFailed(f"{what}: a line is not in canonical form (changed)")
    return obj


def verify_archives(
    paths: Sequence[Path],
    *,
    trust_roots: Sequence[x509.Certificate] | None = None,
    allow_pruned_start: bool = False,
) -> ArchiveReport:
    """Verify archives given in log order, and the links between consecutive ones; raise naming the first failure.

    Steps per archive: (1) layout, link.json and certificates; (2) the record chain; (3) the bodies; (4) each
    batch's Merkle root and timestamp token.  Then (5) links: the first archive must start the log (seq 1 after
    the genesis hash, no predecessor) unless ``allow_pruned_start`` (retention deleted older archives; the
    predecessor is then reported, not checked); each later one must name the SHA-256 of the archive before it
    and continue its chain.
    """
    if not paths:
        raise LogVerificationFailed("no archives given")
    summaries: list[ArchiveSummary] = []
    starts_after: str | None = None
    for i, path in enumerate(paths):
        where = f"archive {Path(path).name}"
        with verification_step(where, 1, "layout"):
            summary, link = _verify_archive(Path(path), trust_roots)
        # (5) Links between consecutive archives.
        with verification_step(where, 5, "archive link"):
            prev = link["prev_archive"]
            if i == 0:
                if prev is None:
                    if link["first_seq"] != 1 or link["prev_hash"] != GENESIS_HASH.hex():
                        raise LogVerificationFailed("names no predecessor but does not start the log")
                elif allow_pruned_start:
                    starts_after = f"{prev['name']} (sha256 {prev['sha256']})"
                else:
                    raise LogVerificationFailed(
                        f"follows archive {prev['name']} (sha256 {prev['sha256'][:16]}…), which was not given: "
                        "an archive is missing or the order is wrong"
                    )
            else:
                before = summaries[-1]
                if prev is None or prev["sha256"] != before.sha256:
                    raise LogVerificationFailed(
                        f"does not follow {before.name}: an archive is missing, replaced or out of order"
                    )
                if link["first_seq"] != before.last_seq + 1 or link["prev_hash"] != before.last_hash:
                    raise LogVerificationFailed(f"does not continue the chain of {before.name}")
        summaries.append(summary)
    return ArchiveReport(tuple(summaries), starts_after)


# The live log ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogReport:
    """The result of :func:`verify_log`."""

    first_seq: int
    last_seq: int
    head_hash: str
    batches: int
    unstamped: int
    oldest_unstamped_at: str | None
    starts_after_archive: bool

    def summary(self) -> str:
        """A few lines for people."""
        if self.last_seq == 0:
            return "the message log is empty: OK"
        lines = [
            f"message log records {self.first_seq}..{self.last_seq}: chain OK, {self.batches} batch(es) verified",
            f"  head hash {self.head_hash}",
        ]
        if self.unstamped:
            lines.append(f"  {self.unstamped} record(s) not timestamped yet (oldest {self.oldest_unstamped_at})")
        if self.starts_after_archive:
            lines.append(
                f"  note: records before {self.first_seq} were archived; the link to them is checked by "
                "verifying the archives and the live log together"
            )
        return "\n".join(lines)


def verify_log(
    store: LogStore,
    certs: EvidenceCerts,
    *,
    trust_roots: Sequence[x509.Certificate] | None = None,
    after_archive: Path | None = None,
) -> LogReport:
    """Verify the whole live log: (1) the chain, record by record; (2) every batch's root and token.

    If older records were archived and deleted, the live log starts after them; with ``after_archive`` (the newest
    archive) its first record must continue that archive's chain, otherwise the start is reported, not checked.
    Checking each batch's recomputed Merkle root is what checking the Merkle proof of each of its records amounts to.
    """
    roots = list(trust_roots) if trust_roots is not None else list(certs.ca_roots)
    intermediates = [*certs.ca_intermediates, *certs.tsas]
    last_seq, head_hash = store.head()
    present = _first_present(store)
    if present is None or last_seq == 0:
        return LogReport(0, 0, GENESIS_HASH.hex(), 0, 0, None, False)
    first_seq = present.seq
    with verification_step(f"record {first_seq}", 1, "record chain"):  # a tampered prev_hash may not be hex
        prev = GENESIS_HASH if first_seq == 1 else bytes.fromhex(present.prev_hash)
    if after_archive is not None:
        link = _read_link(after_archive)
        with verification_step(f"record {first_seq}", 1, "record chain"):
            if link["last_seq"] + 1 != first_seq or link["last_hash"] != present.prev_hash:
                raise LogVerificationFailed(f"the live log does not continue archive {after_archive.name}")
    elif first_seq != 1:
        pass  # reported in the summary
    # (1) The chain, and each batch as its last record goes by.
    hashes: list[bytes] = []
    batch: Batch | None = None
    batches = 0
    expected = first_seq
    unstamped = 0
    oldest_unstamped: str | None = None
    for record in _pages(store, first_seq, last_seq):
        where = f"record {record.seq}"
        with verification_step(where, 1, "record chain"):
            if record.seq != expected:
                raise LogVerificationFailed(f"expected record {expected} (gap or reorder)")
            if record.prev_hash != prev.hex() or chain_hash(prev, record).hex() != record.hash:
                raise LogVerificationFailed("the record does not fit the chain (changed, inserted or removed)")
        prev, expected = bytes.fromhex(record.hash), expected + 1
        if batch is None or record.seq > batch.last_seq:
            batch, hashes = store.batch_of(record.seq), []
        if batch is None:
            unstamped += 1
            oldest_unstamped = oldest_unstamped or record.at
            continue
        hashes.append(prev)
        if record.seq == batch.last_seq:
            # (2) The batch's root from its records, and its token over that root.
            with verification_step(f"batch {batch.id}", 2, "batch timestamp"):
                if len(hashes) != batch.last_seq - batch.first_seq + 1:
                    raise LogVerificationFailed("the batch's records are not all in the live log")
                root = merkle_root(hashes)
                if root != batch.merkle_root:
                    raise LogVerificationFailed("the batch's records do not give its Merkle root")
                gen_time, _ = check_timestamp(batch.token, root, roots, intermediates, certs.tsas)
                if gen_time != _utc(batch.stamped_at):
                    raise LogVerificationFailed("the token's genTime is not the batch's stamped_at")
            batches += 1
    with verification_step("log head", 1, "record chain"):
        if expected != last_seq + 1 or prev != head_hash:
            raise LogVerificationFailed("the records do not end at the log's head")
    return LogReport(first_seq, last_seq, head_hash.hex(), batches, unstamped, oldest_unstamped, first_seq != 1)


# Retention ---------------------------------------------------------------------------------------------------------


def cleanup(archive_dir: Path, keep_days: int, *, now: dt.datetime | None = None) -> list[Path]:
    """Delete archives whose newest record is older than ``keep_days``; return them.

    The newest archive is always kept (the next rotation links to it).  Each deleted archive is listed in
    ``pruned.jsonl`` (name, SHA-256, range, last hash and time, when) so that the first remaining archive's link
    can be explained; verify the remaining ones with ``allow_pruned_start``.
    """
    if keep_days < 0:
        raise ValueError("keep_days must not be negative")
    now = now or dt.datetime.now(dt.UTC)
    cutoff = now - dt.timedelta(days=keep_days)
    archives = _archives(archive_dir)
    deleted: list[Path] = []
    for path in archives[:-1]:
        link = _read_link(path)
        if _utc(str(link["last_at"])) >= cutoff:
            break  # archives are in log order: later ones are newer
        entry = {
            "name": path.name,
            "sha256": _sha256_file(path),
            "first_seq": link["first_seq"],
            "last_seq": link["last_seq"],
            "last_hash": link["last_hash"],
            "last_at": link["last_at"],
            "pruned_at": now.isoformat(),
        }
        with (archive_dir / PRUNED_LEDGER).open("ab") as ledger:
            ledger.write(canonical(entry) + b"\n")
            ledger.flush()
            os.fsync(ledger.fileno())
        path.unlink()
        deleted.append(path)
    return deleted
