"""The transport wire format: strict manifests, exact-length parts streamed into spools, and its HTTP headers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bridge.transport as transport
from bridge.errors import InvalidTransportMessage
from bridge.spool import CHUNK_SIZE, Spool
from bridge.transport import (
    CONTENT_TYPE,
    HEADER_MANIFEST_LENGTH,
    HEADER_PROTOCOL,
    Manifest,
    PartInfo,
    iter_message,
    message_headers,
    message_length,
    parse_message_headers,
    read_message,
    read_parts,
)

MEMORY_LIMIT = 1024
SIGNATURE = b"<ds:Signature>not checked here</ds:Signature>"


def manifest_for(parts: Mapping[str, bytes], **kwargs: Any) -> Manifest:
    infos = tuple(PartInfo(name, "application/octet-stream", len(data)) for name, data in parts.items())
    return Manifest(parts=infos, signature=SIGNATURE, **kwargs)


def stream(data: bytes, *, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


async def body_of(manifest: Manifest, parts: Mapping[str, bytes]) -> bytes:
    spools = {name: Spool.from_bytes(data) for name, data in parts.items()}
    return b"".join([chunk async for chunk in iter_message(manifest, spools)])


async def receive(body: bytes, manifest_length: int, **kwargs: Any) -> tuple[Manifest, bytes, dict[str, Spool]]:
    options: dict[str, Any] = {"memory_limit": MEMORY_LIMIT, "max_part_bytes": 1 << 30}
    options.update(kwargs)
    return await read_message(stream(body), content_length=len(body), manifest_length=manifest_length, **options)


def assert_fault(exc: pytest.ExceptionInfo[InvalidTransportMessage], fragment: str) -> None:
    assert exc.value.fault_code == "Server.InvalidMessage"
    assert fragment in exc.value.message


# Round trips -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "parts",
    [
        {},
        {"message": b"GET /r1/AZ/GOV/1/tax/debts"},
        {
            "message": b"<soap/>",
            "body": b"",
            "attachment-1": bytes(range(256)) * 40,  # 10 KiB > MEMORY_LIMIT: spills to disk
            "attachment-2": b"tail",
        },
    ],
    ids=["no-parts", "one-part", "several-parts"],
)
async def test_round_trip(parts: dict[str, bytes]) -> None:
    """A message with 0, 1 or several parts reads back with the same manifest, bytes and SHA-512 digests."""
    manifest = manifest_for(parts, ocsp=(b"\x30\x03\x0a\x01\x00",), meta={"protocol": "REST", "id": "m-1"})
    encoded = manifest.encode()
    body = await body_of(manifest, parts)
    assert len(body) == message_length(encoded, manifest)
    got_manifest, got_bytes, spools = await receive(body, len(encoded))
    assert (got_manifest, got_bytes) == (manifest, encoded)
    assert {n: s.getvalue() for n, s in spools.items()} == parts
    assert {n: s.digest for n, s in spools.items()} == {n: hashlib.sha512(d).digest() for n, d in parts.items()}
    assert {n: s.in_memory for n, s in spools.items()} == {n: len(d) <= MEMORY_LIMIT for n, d in parts.items()}
    for spool in spools.values():
        spool.close()


async def test_large_part_is_streamed_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A part larger than one chunk is read in bounded chunks straight into a file-backed spool."""
    data = hashlib.sha512(b"seed").digest() * 20_000  # 1.28 MB
    sizes: list[int] = []
    reader = stream(data)
    original = reader.readexactly

    async def recording(n: int) -> bytes:
        sizes.append(n)
        return await original(n)

    monkeypatch.setattr(reader, "readexactly", recording)
    manifest = manifest_for({"body": data})
    spools = await read_parts(reader, manifest, memory_limit=MEMORY_LIMIT, max_part_bytes=len(data))
    assert (spools["body"].in_memory, spools["body"].digest) == (False, hashlib.sha512(data).digest())
    assert max(sizes) == CHUNK_SIZE
    assert sum(sizes) == len(data)
    spools["body"].close()


def test_encoding_is_deterministic_and_spec_shaped() -> None:
    """The manifest encodes as compact JSON with the spec's keys; headers appear only when present."""
    manifest = Manifest(
        parts=(PartInfo("message", "application/json", 2, (("X-Road-Client", "AZ/GOV/1"),)), PartInfo("body", "t", 0)),
        signature=b"sig",
        ocsp=(b"o",),
        meta={"b": "2", "a": "1"},
    )
    assert json.loads(manifest.encode()) == {
        "parts": [
            {
                "name": "message",
                "content_type": "application/json",
                "length": 2,
                "headers": [["X-Road-Client", "AZ/GOV/1"]],
            },
            {"name": "body", "content_type": "t", "length": 0},
        ],
        "signature": "c2ln",
        "ocsp": ["bw=="],
        "meta": {"a": "1", "b": "2"},
    }
    assert Manifest.decode(manifest.encode()) == manifest


def test_headers_round_trip() -> None:
    """message_headers produces what parse_message_headers accepts, giving back both lengths."""
    manifest = manifest_for({"body": b"12345"})
    encoded = manifest.encode()
    headers = message_headers(encoded, manifest)
    assert headers[HEADER_PROTOCOL] == "1"
    assert headers["Content-Type"] == CONTENT_TYPE
    assert parse_message_headers(headers, max_message_bytes=1 << 20) == (len(encoded) + 5, len(encoded))


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({HEADER_PROTOCOL: "2"}, "X-Korpu-Protocol must be 1"),
        ({"Content-Type": "application/json"}, "Content-Type must be"),
        ({"Content-Length": "+5"}, "Content-Length must be a decimal"),
        ({HEADER_MANIFEST_LENGTH: "١٢"}, "X-Korpu-Manifest-Length must be a decimal"),
        ({"Content-Length": "10", HEADER_MANIFEST_LENGTH: "11"}, "exceeds Content-Length"),
        ({"Content-Length": str(1 << 21)}, "message is larger than"),
        ({HEADER_MANIFEST_LENGTH: str(1 << 20), "Content-Length": str(1 << 20)}, "manifest is larger than"),
    ],
)
def test_bad_headers(change: dict[str, str], fragment: str) -> None:
    """Wrong version or type, non-decimal or inconsistent lengths and oversize bodies are refused up front."""
    headers = {
        HEADER_PROTOCOL: "1",
        "Content-Type": CONTENT_TYPE,
        "Content-Length": "100",
        HEADER_MANIFEST_LENGTH: "50",
    }
    with pytest.raises(InvalidTransportMessage) as exc:
        parse_message_headers({**headers, **change}, max_message_bytes=1 << 20)
    assert_fault(exc, fragment)


# Broken bodies ---------------------------------------------------------------------------------------------------

PARTS = {"message": b"hello", "body": b"world" * 100}


async def test_truncated_body() -> None:
    """A body that ends inside a part is refused (the reader is told the full Content-Length)."""
    manifest = manifest_for(PARTS)
    body = await body_of(manifest, PARTS)
    reader = stream(body[:-1])
    with pytest.raises(InvalidTransportMessage) as exc:
        await read_message(
            reader,
            content_length=len(body),
            manifest_length=len(manifest.encode()),
            memory_limit=MEMORY_LIMIT,
            max_part_bytes=1 << 20,
        )
    assert_fault(exc, "message ends inside part 'body'")


async def test_truncated_manifest() -> None:
    """A body that ends inside the manifest is refused."""
    encoded = manifest_for(PARTS).encode()
    with pytest.raises(InvalidTransportMessage) as exc:
        await read_message(
            stream(encoded[:10]),
            content_length=len(encoded) + 505,
            manifest_length=len(encoded),
            memory_limit=MEMORY_LIMIT,
            max_part_bytes=1 << 20,
        )
    assert_fault(exc, "message ends inside the manifest")


async def test_trailing_bytes() -> None:
    """Bytes after the last part are refused, whether Content-Length counts them or not."""
    manifest = manifest_for(PARTS)
    body = await body_of(manifest, PARTS)
    with pytest.raises(InvalidTransportMessage) as exc:
        await receive(body + b"!", len(manifest.encode()))
    assert_fault(exc, "parts in the manifest total 505 bytes but the body has 506 after it")
    with pytest.raises(InvalidTransportMessage) as exc:
        await read_message(
            stream(body + b"!"),
            content_length=len(body),
            manifest_length=len(manifest.encode()),
            memory_limit=MEMORY_LIMIT,
            max_part_bytes=1 << 20,
        )
    assert_fault(exc, "bytes after its last part")


async def test_manifest_lying_about_lengths_reads_nothing() -> None:
    """A manifest whose lengths do not add up to the body is refused before any part byte is read."""
    manifest = manifest_for({"message": b"x" * 10})
    reader = stream(b"", eof=False)  # would block forever if read_parts tried to read
    with pytest.raises(InvalidTransportMessage) as exc:
        await asyncio.wait_for(
            read_parts(reader, manifest, memory_limit=MEMORY_LIMIT, max_part_bytes=100, expected_length=9), 5
        )
    assert_fault(exc, "total 10 bytes but the body has 9")


async def test_part_over_limit_reads_nothing() -> None:
    """A part longer than max_part_bytes is refused from the manifest alone."""
    manifest = manifest_for({"message": b"x" * 10})
    with pytest.raises(InvalidTransportMessage) as exc:
        await asyncio.wait_for(read_parts(stream(b"", eof=False), manifest, memory_limit=1, max_part_bytes=9), 5)
    assert_fault(exc, "part 'message' is larger than 9 bytes")


async def test_spools_closed_on_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the body ends early, every spool created so far (finished or not) is closed."""
    closed: list[int] = []

    class RecordingSpool(Spool):
        def close(self) -> None:
            closed.append(self.size)
            super().close()

    monkeypatch.setattr(transport, "Spool", RecordingSpool)
    manifest = manifest_for(PARTS)
    body = (await body_of(manifest, PARTS))[len(manifest.encode()) :]
    with pytest.raises(InvalidTransportMessage):
        await read_parts(stream(body[:100]), manifest, memory_limit=MEMORY_LIMIT, max_part_bytes=1 << 20)
    assert closed == [5, 0]


async def test_iter_message_refuses_mismatched_spools() -> None:
    """iter_message checks spools against the manifest before yielding anything."""
    manifest = manifest_for(PARTS)
    for spools, fragment in (
        ({"message": Spool.from_bytes(b"hello")}, "no spool for part 'body'"),
        ({"message": Spool.from_bytes(b"hell"), "body": Spool.from_bytes(PARTS["body"])}, "has 4 bytes"),
        ({**{n: Spool.from_bytes(d) for n, d in PARTS.items()}, "x": Spool.from_bytes(b"")}, "does not list"),
    ):
        with pytest.raises(ValueError, match=fragment):
            await anext(iter_message(manifest, spools))


async def test_iter_message_joins_small_pieces_and_streams_large_parts() -> None:
    """A small message is one piece (one write on the wire); large parts still come in bounded chunks."""
    small = {"message": b"<soap/>", "body": b"b" * 300, "attachment-1": b"a" * 5000}
    manifest = manifest_for(small)
    pieces = [c async for c in iter_message(manifest, {n: Spool.from_bytes(d) for n, d in small.items()})]
    assert pieces == [manifest.encode() + b"".join(small.values())]

    large = {"message": b"<soap/>", "attachment-1": bytes(range(256)) * (3 * CHUNK_SIZE // 256 + 7)}
    manifest = manifest_for(large)
    pieces = [c async for c in iter_message(manifest, {n: Spool.from_bytes(d) for n, d in large.items()})]
    assert b"".join(pieces) == manifest.encode() + b"".join(large.values())
    assert len(pieces) >= 4
    assert max(len(p) for p in pieces) <= CHUNK_SIZE


# Manifest decoding -----------------------------------------------------------------------------------------------


def good_manifest() -> dict[str, Any]:
    return {
        "parts": [{"name": "message", "content_type": "text/xml", "length": 5}],
        "signature": base64.b64encode(SIGNATURE).decode(),
        "ocsp": [],
        "meta": {"protocol": "SOAP"},
    }


def with_(path: tuple[Any, ...], value: Any) -> bytes:
    obj = good_manifest()
    target: Any = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[]", "must be an object with exactly the keys"),
        (json.dumps({**good_manifest(), "extra": 1}).encode(), "exactly the keys"),
        (b'{"parts":[],"parts":[],"signature":"eA==","ocsp":[],"meta":{}}', "duplicate key"),
        (with_(("parts",), [{"name": "a", "content_type": "t", "length": 1}] * 2), "part names must be unique"),
        (with_(("parts", 0, "name"), "Body"), "part name must match"),
        (with_(("parts", 0, "name"), "a" * 33), "part name must match"),
        (with_(("parts", 0, "length"), -1), "non-negative integer"),
        (with_(("parts", 0, "length"), 5.0), "non-negative integer"),
        (with_(("parts", 0, "length"), True), "non-negative integer"),
        (with_(("parts", 0, "length"), 2**64), "non-negative integer"),
        (with_(("parts", 0, "length"), "5"), "non-negative integer"),
        (with_(("parts", 0, "size"), 5), "must have name, content_type, length"),
        (with_(("parts", 0, "content_type"), "text/xml\r\nX-Evil: 1"), "without control characters"),
        (with_(("parts", 0, "headers"), [["X Bad", "v"]]), "not an HTTP token"),
        (with_(("parts", 0, "headers"), [["k", "v", "w"]]), "[name, value] pairs"),
        (with_(("parts", 0, "headers"), []), "omitted when empty"),
        (with_(("signature",), "!!!"), "not valid base64"),
        (with_(("signature",), "eB=="), "not canonical base64"),
        (with_(("signature",), ""), "non-empty base64"),
        (with_(("ocsp",), ["e A=="]), "not valid base64"),
        (with_(("ocsp",), ["eA=="] * 9), "at most 8 responses"),
        (with_(("meta",), {"id": 5}), "meta id must be a string"),
        (with_(("meta",), {"bad key": "v"}), "meta keys must match"),
        (with_(("meta",), []), "meta must be an object"),
        (b'{"parts":[],"signature":"eA==","ocsp":[],"meta":{"a":NaN}}', "contains NaN"),
        (b" " * (256 * 1024 + 1), "larger than 262144 bytes"),
    ],
)
def test_decode_refuses(data: bytes, fragment: str) -> None:
    """Each way a manifest can break the spec is refused with InvalidMessage and a message saying which."""
    with pytest.raises(InvalidTransportMessage) as exc:
        Manifest.decode(data)
    assert_fault(exc, fragment)


def test_decode_caps() -> None:
    """max_parts and max_bytes are enforced; deep nesting within the size cap is still only a fault."""
    assert Manifest.decode(with_(("parts",), []), max_parts=0).parts == ()
    with pytest.raises(InvalidTransportMessage) as exc:
        Manifest.decode(json.dumps(good_manifest()).encode(), max_parts=0)
    assert_fault(exc, "more than 0 parts")
    data = json.dumps(good_manifest()).encode()
    with pytest.raises(InvalidTransportMessage) as exc:
        Manifest.decode(data, max_bytes=len(data) - 1)
    assert_fault(exc, f"larger than {len(data) - 1} bytes")
    with pytest.raises(InvalidTransportMessage) as exc:
        Manifest.decode(b"[" * 200_000 + b"]" * 200_000, max_bytes=1 << 20)
    assert_fault(exc, "cannot be parsed (RecursionError)")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_decode_random_bytes(data: bytes) -> None:
    """Random bytes never make Manifest.decode raise anything but InvalidTransportMessage (a KorpuError)."""
    # Anything but InvalidTransportMessage escapes and fails the test.
    with contextlib.suppress(InvalidTransportMessage):
        Manifest.decode(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {"parts": json_values | st.lists(st.dictionaries(st.sampled_from(sorted(transport._PART_KEYS)), json_values))},
        optional={"signature": json_values, "ocsp": json_values, "meta": json_values},
    )
)
def test_fuzz_decode_structured(obj: dict[str, Any]) -> None:
    """Manifest-shaped JSON with random values either decodes to a Manifest that re-encodes, or is refused."""
    data = json.dumps(obj).encode()
    try:
        manifest = Manifest.decode(data)
    except InvalidTransportMessage:
        return  # refused cleanly; any other exception escapes and fails the test
    assert Manifest.decode(manifest.encode()) == manifest


# With signatures -------------------------------------------------------------------------------------------------


async def test_signed_message_end_to_end() -> None:
    """A signed message survives the wire: the receiver verifies the signature with the spools' digests."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from bridge.signature import MessageSigner, Part, verify_signature

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "member")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    parts = {"message": b"<soap/>", "attachment-1": b"a" * 5000}
    spools = {n: Spool.from_bytes(d) for n, d in parts.items()}
    signature = MessageSigner(key, cert).sign([Part(n, s.digest) for n, s in spools.items()])
    manifest = manifest_for(parts, meta={"protocol": "SOAP"}).__class__(
        parts=manifest_for(parts).parts, signature=signature, meta={"protocol": "SOAP"}
    )
    body = b"".join([c async for c in iter_message(manifest, spools)])
    received, _, got = await receive(body, len(manifest.encode()))
    assert verify_signature(received.signature, {n: s.digest for n, s in got.items()}) == cert
