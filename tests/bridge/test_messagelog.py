"""The message log's evidence format: hash chain and Merkle proofs."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.messagelog import (
    GENESIS_HASH,
    LogPart,
    LogRecord,
    LogVerificationFailed,
    MerkleProof,
    canonical,
    merkle_proof,
    merkle_root,
    verify_chain,
    verify_proof,
)


def record(n: int) -> LogRecord:
    return LogRecord(
        at=f"2030-01-01T00:00:{n:02d}.000000Z",
        server="AZ/GOV/1/ss",
        side="consumer",
        direction="request",
        request_id=f"r{n}",
        message_id=f"m{n}",
        protocol="REST",
        client="SUBSYSTEM:AZ/COM/2/loans",
        service="SERVICE:AZ/GOV/1/pop/hello",
        parts=(LogPart("message", "application/json", 10, "ab" * 64),),
        persons=("AZ1234567",),
    )


def chain(n: int) -> list[LogRecord]:
    out, prev = [], GENESIS_HASH
    for i in range(1, n + 1):
        sealed = record(i).sealed(i, prev)
        out.append(sealed)
        prev = bytes.fromhex(sealed.hash)
    return out


def test_chain_verifies_and_round_trips_through_json() -> None:
    """A sealed chain verifies; records survive JSON and back unchanged."""
    records = chain(5)
    head = verify_chain(records)
    assert head.hex() == records[-1].hash
    assert [LogRecord.from_json(r.to_json()) for r in records] == records


@pytest.mark.parametrize(
    "tamper",
    [
        lambda rs: rs.__setitem__(2, dataclasses.replace(rs[2], client="SUBSYSTEM:AZ/COM/2/other")),
        lambda rs: rs.pop(2),
        lambda rs: rs.insert(1, rs[3]),
        lambda rs: rs.__setitem__(4, dataclasses.replace(rs[4], hash="00" * 32)),
    ],
    ids=["changed", "removed", "reordered", "rehashed"],
)
def test_any_change_breaks_the_chain_naming_the_record(tamper: object) -> None:
    """Changing, removing, reordering or re-hashing a record is detected and the failing record is named."""
    records = chain(6)
    tamper(records)  # type: ignore[operator]
    with pytest.raises(LogVerificationFailed, match=r"record \d"):
        verify_chain(records)


@given(st.integers(min_value=1, max_value=40), st.data())
def test_every_record_has_a_proof_to_the_root(size: int, data: st.DataObject) -> None:
    """For any batch size, each record's audit path leads to the batch's root, and only its own hash does."""
    hashes = [hashlib.sha256(str(i).encode()).digest() for i in range(size)]
    root = merkle_root(hashes)
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    proof = merkle_proof(hashes, index)
    assert proof.root == root.hex()
    assert verify_proof(hashes[index], MerkleProof.from_json(proof.to_json())) == root
    if size > 1:
        with pytest.raises(LogVerificationFailed):
            verify_proof(hashes[(index + 1) % size], proof)


def test_root_of_one_record_is_its_leaf_hash() -> None:
    """A batch of one: the root is SHA-256(0x00 || record hash), the proof path is empty."""
    h = hashlib.sha256(b"x").digest()
    assert merkle_root([h]) == hashlib.sha256(b"\x00" + h).digest()
    assert merkle_proof([h], 0).path == ()


def _asdict_body(rec: LogRecord) -> dict[str, object]:
    """What LogRecord.body() was defined as before it stopped deep-copying: the oracle for its JSON."""
    data = dataclasses.asdict(rec)
    data.pop("hash")
    data["parts"] = [dataclasses.asdict(p) for p in rec.parts]
    data["ocsp"] = list(rec.ocsp)
    data["persons"] = list(rec.persons)
    data["decision"] = dict(rec.decision) if rec.decision is not None else None
    data["timings_ms"] = dict(rec.timings_ms)
    return data


_text = st.text(max_size=12)
_json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _text
_json = st.recursive(_json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3))
_parts = st.builds(LogPart, _text, _text, st.integers(0, 2**40), _text, st.booleans())


@given(
    strings=st.lists(_text, min_size=9, max_size=9),
    optional=st.lists(st.none() | _text, min_size=5, max_size=5),
    parts=st.lists(_parts, max_size=3),
    ocsp=st.lists(_text, max_size=2),
    persons=st.lists(_text, max_size=3),
    decision=st.none() | st.dictionaries(_text, _json, max_size=4),
    timings=st.dictionaries(_text, st.floats(allow_nan=False, allow_infinity=False), max_size=3),
    seq=st.integers(0, 2**40),
)
def test_body_is_the_json_asdict_gave(
    strings: list[str],
    optional: list[str | None],
    parts: list[LogPart],
    ocsp: list[str],
    persons: list[str],
    decision: dict[str, object] | None,
    timings: dict[str, float],
    seq: int,
) -> None:
    """body() walks the record shallowly; its canonical JSON (what hashes cover) is what the asdict form gave."""
    rec = LogRecord(
        *strings,
        user_id=optional[0],
        issue=optional[1],
        represented_party=optional[2],
        peer=optional[3],
        request_hash=optional[4],
        parts=tuple(parts),
        signature=optional[0],
        ocsp=tuple(ocsp),
        persons=tuple(persons),
        decision=decision,
        timings_ms=timings,
        seq=seq,
        prev_hash="ab" * 32,
        hash="cd" * 32,
    )
    assert rec.body() == _asdict_body(rec)
    assert canonical(rec.body()) == canonical(_asdict_body(rec))
    assert rec.with_seal(seq + 1, "ef" * 32, "01" * 32) == dataclasses.replace(
        rec, seq=seq + 1, prev_hash="ef" * 32, hash="01" * 32
    )


def test_body_refuses_a_part_that_is_not_a_log_part() -> None:
    """A part given as a plain dict is refused, as dataclasses.asdict refused it, not encoded as whatever it is."""
    rec = dataclasses.replace(record(1), parts=({"name": "message"},))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="LogPart"):
        rec.body()


def test_body_refuses_an_attribute_that_is_not_a_field() -> None:
    """Only fields are hashed: an attribute set on a record behind the dataclass's back is an error, not evidence."""
    rec = record(1)
    object.__setattr__(rec, "note", "set on the side")
    with pytest.raises(TypeError, match="not its fields"):
        rec.body()
