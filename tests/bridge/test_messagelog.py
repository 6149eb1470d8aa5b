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
