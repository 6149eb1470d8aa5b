"""The message log's evidence format: records, their hash chain, and Merkle proofs for timestamped batches.

Every security server writes one :class:`LogRecord` for each message it carries (the request and the response, on
both sides of an exchange) *before* passing the message on.  This module is the format, pure and shared: the
security server writes records with it (``security_server.messagelog``), auditors verify them offline with it
(``korpu audit verify``) — or with nothing but a JSON parser and SHA-256, since every rule is written down here and
in ``docs/audit.md``.

Chain
    Records are numbered ``seq`` = 1, 2, … per security server.  Each record's ``hash`` is
    ``SHA-256(prev_hash || canonical(record without "hash"))`` where ``prev_hash`` is the previous record's hash
    (32 zero bytes for seq 1) and ``canonical`` is compact UTF-8 JSON with sorted keys.  Changing, removing,
    inserting or reordering any record breaks every later hash.

Batches and proofs
    Records are timestamped in batches: a batch is a run of consecutive records ``first_seq..last_seq``; its Merkle
    root (RFC 6962 style: leaf = ``SHA-256(0x00 || record hash)``, node = ``SHA-256(0x01 || left || right)``) is
    the digest sent to an RFC 3161 timestamp authority (hash algorithm SHA-256: the root *is* the message imprint).
    A :class:`MerkleProof` shows one record belongs to a batch without revealing the others; the timestamp token
    then dates the whole batch.  A record belongs to exactly one batch.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
import json
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from bridge.errors import LogVerificationFailed

__all__ = [
    "GENESIS_HASH",
    "Direction",
    "LogPart",
    "LogRecord",
    "LogVerificationFailed",
    "MerkleProof",
    "Side",
    "canonical",
    "chain_hash",
    "merkle_proof",
    "merkle_root",
    "verify_chain",
    "verify_proof",
]

#: ``prev_hash`` of the first record.
GENESIS_HASH = bytes(32)


class Side(enum.StrEnum):
    """Which proxy of the security server carried the message."""

    CONSUMER = "consumer"  # client proxy: the request goes out, the response comes back
    PROVIDER = "provider"  # server proxy: the request comes in, the response goes out


class Direction(enum.StrEnum):
    """Whether the record holds the request or the response (or an auditor's query, logged as evidence too)."""

    REQUEST = "request"
    RESPONSE = "response"
    AUDIT = "audit"


@dataclass(frozen=True, slots=True)
class LogPart:
    """One part of the logged message: name, content type, size, SHA-512 (hex), and whether its bytes are kept.

    ``stored`` is false when the service logs metadata only: the digest still proves what was sent.
    """

    name: str
    content_type: str
    size: int
    sha512: str
    stored: bool = True


@dataclass(frozen=True)
class LogRecord:
    """One logged message.  Field values are JSON types so that ``canonical`` is well defined.

    ``request_id`` is the consumer's id for the exchange; both security servers log it, which links their records.
    ``signature`` is the base64 of the message signature document (``None`` for an unsigned fault);
    ``ocsp`` the base64 OCSP responses stapled with it.  ``persons`` are the person identifiers the service
    declares in its requests (for "who accessed my data"), ``decision`` the policy decision on the provider side,
    ``outcome`` ``"ok"`` or the fault code.  ``seq``, ``prev_hash`` and ``hash`` are filled by the log writer.
    """

    at: str
    server: str
    side: str
    direction: str
    request_id: str
    message_id: str
    protocol: str
    client: str
    service: str
    outcome: str = "ok"
    user_id: str | None = None
    issue: str | None = None
    represented_party: str | None = None
    peer: str | None = None
    request_hash: str | None = None
    parts: tuple[LogPart, ...] = ()
    signature: str | None = None
    ocsp: tuple[str, ...] = ()
    persons: tuple[str, ...] = ()
    decision: Mapping[str, Any] | None = None
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    seq: int = 0
    prev_hash: str = ""
    hash: str = ""

    def body(self) -> dict[str, Any]:
        """The record as a JSON object, without ``hash`` (what the hash covers, with ``prev_hash`` inside)."""
        # A shallow walk, not dataclasses.asdict: asdict deep-copies every value (~180 us for a record of 8 KB,
        # the largest cost of sealing and of verifying a chain) to give the same JSON.  Field values are JSON
        # types (the class docstring), so copying the containers that are ours to convert is enough; the JSON
        # form is unchanged — tests/bridge/test_messagelog.py checks it against asdict.
        data = dict(self.__dict__)
        if len(data) != _RECORD_FIELD_COUNT:  # only fields are hashed, never an attribute set on the side
            raise TypeError("a LogRecord holds attributes that are not its fields")
        del data["hash"]
        data["parts"] = [_part_json(p) for p in self.parts]
        data["ocsp"] = list(self.ocsp)
        data["persons"] = list(self.persons)
        data["decision"] = dict(self.decision) if self.decision is not None else None
        data["timings_ms"] = dict(self.timings_ms)
        return data

    def to_json(self) -> dict[str, Any]:
        """The whole record as a JSON object."""
        return {**self.body(), "hash": self.hash}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LogRecord:
        """Rebuild a record from :meth:`to_json` output (strict about the field set)."""
        expected = {f for f in cls.__dataclass_fields__}
        if set(data) != expected:
            missing, extra = expected - set(data), set(data) - expected
            raise LogVerificationFailed(f"record fields differ: missing {sorted(missing)}, unexpected {sorted(extra)}")
        values = dict(data)
        values["parts"] = tuple(LogPart(**p) for p in data["parts"])
        values["ocsp"] = tuple(data["ocsp"])
        values["persons"] = tuple(data["persons"])
        return cls(**values)

    def signature_bytes(self) -> bytes | None:
        """The message signature document, decoded."""
        return base64.b64decode(self.signature) if self.signature is not None else None

    def sealed(self, seq: int, prev_hash: bytes) -> LogRecord:
        """The record numbered ``seq`` after a record whose hash is ``prev_hash``, with its own hash computed."""
        draft = self.with_seal(seq, prev_hash.hex(), "")
        return draft.with_seal(seq, draft.prev_hash, chain_hash(prev_hash, draft).hex())

    def with_seal(self, seq: int, prev_hash: str, hash: str) -> LogRecord:
        """A copy with ``seq``, ``prev_hash`` and ``hash`` (hex) set as given, not checked: the log writer's step.

        The same as ``dataclasses.replace(self, seq=…, prev_hash=…, hash=…)`` at about a seventh of the cost
        (2 against 15 us, per record on the log's hot path): the class has no ``__post_init__`` and keeps its
        fields in ``__dict__``, so copying that is what ``replace`` amounts to.
        """
        clone = object.__new__(type(self))
        values = clone.__dict__
        values.update(self.__dict__)
        values["seq"], values["prev_hash"], values["hash"] = seq, prev_hash, hash
        return clone


_RECORD_FIELD_COUNT = len(fields(LogRecord))
_PART_FIELDS = tuple(f.name for f in fields(LogPart))
_part_values = operator.attrgetter(*_PART_FIELDS)


def _part_json(part: LogPart) -> dict[str, Any]:
    if type(part) is not LogPart:  # a dict or a subclass with more fields would hash differently: refused
        raise TypeError(f"a record part must be a LogPart, not {type(part).__name__}")
    return dict(zip(_PART_FIELDS, _part_values(part), strict=True))


def canonical(obj: Any) -> bytes:
    """Compact UTF-8 JSON with sorted keys: the one byte form a record's hash is computed over."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()


def chain_hash(prev_hash: bytes, record: LogRecord) -> bytes:
    """``SHA-256(prev_hash || canonical(record without "hash"))``."""
    return hashlib.sha256(prev_hash + canonical(record.body())).digest()


def verify_chain(records: Sequence[LogRecord], prev_hash: bytes = GENESIS_HASH, first_seq: int = 1) -> bytes:
    """Check ``records`` form an unbroken chain starting after ``prev_hash`` at ``first_seq``; return the head hash.

    Raises :class:`LogVerificationFailed` naming the first record that does not fit.
    """
    expected_seq = first_seq
    for record in records:
        # (1) numbering without gaps
        if record.seq != expected_seq:
            raise LogVerificationFailed(f"record {record.seq}: expected record {expected_seq} (gap or reorder)")
        # (2) linked to the previous record
        if record.prev_hash != prev_hash.hex():
            raise LogVerificationFailed(f"record {record.seq}: prev_hash does not match the previous record's hash")
        # (3) its own hash covers exactly its content
        actual = chain_hash(prev_hash, record)
        if record.hash != actual.hex():
            raise LogVerificationFailed(f"record {record.seq}: content does not match its hash (changed)")
        prev_hash, expected_seq = actual, expected_seq + 1
    return prev_hash


# Merkle trees (RFC 6962 §2.1 shape) -----------------------------------------------------------------------------


def _leaf(record_hash: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + record_hash).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    # The largest power of two smaller than n (RFC 6962 §2.1).
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _root(leaves: Sequence[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return _node(_root(leaves[:k]), _root(leaves[k:]))


def merkle_root(record_hashes: Sequence[bytes]) -> bytes:
    """The Merkle root over a batch's record hashes, in seq order."""
    if not record_hashes:
        raise ValueError("a batch has at least one record")
    return _root([_leaf(h) for h in record_hashes])


@dataclass(frozen=True)
class MerkleProof:
    """That the record at ``index`` of a batch of ``size`` records belongs to the batch whose root is ``root``.

    ``path`` is the audit path (sibling hashes, hex, from the leaf up), as RFC 6962 §2.1.1 defines it.
    """

    index: int
    size: int
    path: tuple[str, ...]
    root: str

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"index": self.index, "size": self.size, "path": list(self.path), "root": self.root}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MerkleProof:
        """Rebuild from :meth:`to_json` output."""
        return cls(int(data["index"]), int(data["size"]), tuple(str(p) for p in data["path"]), str(data["root"]))


def merkle_proof(record_hashes: Sequence[bytes], index: int) -> MerkleProof:
    """The audit path for ``record_hashes[index]``."""
    if not 0 <= index < len(record_hashes):
        raise ValueError("index outside the batch")
    leaves = [_leaf(h) for h in record_hashes]

    def path(m: int, nodes: Sequence[bytes]) -> list[bytes]:
        if len(nodes) == 1:
            return []
        k = _split(len(nodes))
        if m < k:
            return [*path(m, nodes[:k]), _root(nodes[k:])]
        return [*path(m - k, nodes[k:]), _root(nodes[:k])]

    return MerkleProof(index, len(leaves), tuple(h.hex() for h in path(index, leaves)), _root(leaves).hex())


def verify_proof(record_hash: bytes, proof: MerkleProof) -> bytes:
    """Recompute the root from ``record_hash`` and ``proof``; raise unless it equals ``proof.root``; return it."""
    if not 0 <= proof.index < proof.size:
        raise LogVerificationFailed("Merkle proof index outside its batch")
    path = [bytes.fromhex(p) for p in proof.path]

    def climb(m: int, n: int, node: bytes, siblings: list[bytes]) -> bytes:
        if n == 1:
            if siblings:
                raise LogVerificationFailed("Merkle proof has extra hashes")
            return node
        if not siblings:
            raise LogVerificationFailed("Merkle proof is too short")
        k = _split(n)
        sibling = siblings.pop()
        if m < k:
            return _node(climb(m, k, node, siblings), sibling)
        return _node(sibling, climb(m - k, n - k, node, siblings))

    root = climb(proof.index, proof.size, _leaf(record_hash), path)
    if root.hex() != proof.root:
        raise LogVerificationFailed("Merkle proof does not lead to the batch's root")
    return root


def utc_now_text() -> str:
    """The current UTC time as records write it (ISO 8601 with microseconds and ``Z``)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
