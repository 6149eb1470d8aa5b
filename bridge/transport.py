"""The wire format between security servers: a signed manifest, then the parts' raw bytes (sans-I/O + helpers).

Specified in ``docs/protocol.md`` ("Transport").  A message (request or response) is one HTTP/1.1 body::

    <manifest: UTF-8 JSON, X-Korpu-Manifest-Length bytes><part 1 bytes><part 2 bytes>…

The manifest names every part with its content type and exact length, and carries the message signature
(:mod:`bridge.signature`), stapled OCSP responses and a little metadata, so a receiver knows everything it needs
to verify the message before the first part byte arrives, and streams each part straight into a
:class:`~bridge.spool.Spool` (which hashes it on the way) without any framing to scan for.

This module holds no sockets: :class:`Manifest` encodes and decodes strictly, :func:`read_parts` and
:func:`read_message` consume any reader with ``async readexactly(n)`` (``asyncio.StreamReader``, aiohttp's
``StreamReader``), and :func:`iter_message` yields a body for aiohttp to stream out.  Every malformed input becomes
:class:`~bridge.errors.InvalidTransportMessage`; nothing else escapes from decoding.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from bridge.errors import InvalidTransportMessage
from bridge.signature import PART_NAME_RE
from bridge.spool import CHUNK_SIZE, Spool

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_MAX_MANIFEST_BYTES",
    "DEFAULT_MAX_PARTS",
    "EXCHANGE_PATH",
    "HEADER_MANIFEST_LENGTH",
    "HEADER_PROTOCOL",
    "INDEX_PART",
    "PROTOCOL_VERSION",
    "AsyncReader",
    "Manifest",
    "PartInfo",
    "index_bytes",
    "iter_message",
    "message_headers",
    "message_length",
    "parse_message_headers",
    "read_message",
    "read_parts",
]

#: The one endpoint of the server proxy.
EXCHANGE_PATH = "/korpu/v1/exchange"
#: Protocol version header and its only value.
HEADER_PROTOCOL = "X-Korpu-Protocol"
PROTOCOL_VERSION = "1"
#: Header with the manifest's length in bytes.
HEADER_MANIFEST_LENGTH = "X-Korpu-Manifest-Length"
#: Name of the signed part that is not sent but derived from the manifest (see :func:`index_bytes`).
INDEX_PART = "index"
#: Content type of every message body.
CONTENT_TYPE = "application/vnd.korpu.message+v1"
#: Default cap on the manifest (a signature with a certificate chain and a few OCSP responses is under 16 KiB).
DEFAULT_MAX_MANIFEST_BYTES = 256 * 1024
#: Default cap on the number of parts (a SOAP message with attachments is one part per attachment).
DEFAULT_MAX_PARTS = 100

# Per-field caps.  They bound the work a hostile manifest can cause; real messages stay far below them.
_MAX_OCSP = 8
_MAX_META = 32
_MAX_HEADERS = 64
_MAX_TEXT = 1024
_MAX_LENGTH = 2**53 - 1  # the largest integer every JSON implementation represents exactly
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")  # an HTTP header field name (RFC 9110 token)
_META_KEY_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters except TAB: no header injection
_TOP_KEYS = frozenset({"parts", "signature", "ocsp", "meta"})
_PART_KEYS = frozenset({"name", "content_type", "length", "headers"})
_PART_REQUIRED = frozenset({"name", "content_type", "length"})


class AsyncReader(Protocol):
    """What :func:`read_parts` needs from a stream: ``asyncio.StreamReader`` and aiohttp's ``StreamReader`` fit."""

    async def readexactly(self, n: int) -> bytes:
        """Read exactly ``n`` bytes; raise :class:`EOFError` (``asyncio.IncompleteReadError``) on early EOF."""
        ...

    async def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes; ``b""`` at end of stream."""
        ...


def _fail(message: str) -> InvalidTransportMessage:
    return InvalidTransportMessage(message)


def _text(value: object, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _fail(f"{what} must be a string")
    if (not value and not allow_empty) or len(value) > _MAX_TEXT or _CONTROL_RE.search(value):
        raise _fail(f"{what} must be 1-{_MAX_TEXT} characters without control characters")
    return value


def _strict_b64(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise _fail(f"{what} must be a non-empty base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _fail(f"{what} is not valid base64") from None
    # One encoding per value: the manifest is logged as evidence, so it must not be malleable in transit.
    if base64.b64encode(raw).decode("ascii") != value:
        raise _fail(f"{what} is not canonical base64")
    return raw


@dataclass(frozen=True)
class PartInfo:
    """One part as the manifest lists it: name, content type, exact length, and optional HTTP-style headers."""

    name: str
    content_type: str
    length: int
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or PART_NAME_RE.fullmatch(self.name) is None:
            raise _fail("part name must match [a-z0-9-]{1,32}")
        _text(self.content_type, f"part {self.name!r} content_type")
        if type(self.length) is not int or not 0 <= self.length <= _MAX_LENGTH:
            raise _fail(f"part {self.name!r} length must be a non-negative integer")
        if not isinstance(self.headers, tuple) or len(self.headers) > _MAX_HEADERS:
            raise _fail(f"part {self.name!r} headers must be a list of at most {_MAX_HEADERS} pairs")
        for pair in self.headers:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise _fail(f"part {self.name!r} headers must be [name, value] pairs")
            key, value = pair
            if not isinstance(key, str) or _TOKEN_RE.fullmatch(key) is None:
                raise _fail(f"part {self.name!r} has a header name that is not an HTTP token")
            _text(value, f"part {self.name!r} header {key}", allow_empty=True)

    def to_json(self) -> dict[str, Any]:
        """The part as its manifest JSON object (``headers`` only when there are any)."""
        obj: dict[str, Any] = {"name": self.name, "content_type": self.content_type, "length": self.length}
        if self.headers:
            obj["headers"] = [list(pair) for pair in self.headers]
        return obj


@dataclass(frozen=True)
class Manifest:
    """The head of a transport message: its parts in order, the signature over them, OCSP staples and metadata.

    Construction validates every field (the same rules as :meth:`decode`, except the caller-chosen caps), so a
    ``Manifest`` always encodes to something a peer accepts.  ``meta`` is copied into a read-only mapping.
    """

    parts: tuple[PartInfo, ...]
    signature: bytes
    ocsp: tuple[bytes, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.parts, tuple) or not all(isinstance(p, PartInfo) for p in self.parts):
            raise _fail("parts must be a tuple of PartInfo")
        names = [p.name for p in self.parts]
        if len(set(names)) != len(names):
            raise _fail("part names must be unique")
        if not isinstance(self.signature, bytes) or not self.signature:
            raise _fail("signature must be non-empty bytes")
        if not isinstance(self.ocsp, tuple) or len(self.ocsp) > _MAX_OCSP:
            raise _fail(f"ocsp must be a list of at most {_MAX_OCSP} responses")
        if not all(isinstance(o, bytes) and o for o in self.ocsp):
            raise _fail("each OCSP response must be non-empty bytes")
        if not isinstance(self.meta, Mapping) or len(self.meta) > _MAX_META:
            raise _fail(f"meta must be an object with at most {_MAX_META} entries")
        for key, value in self.meta.items():
            if not isinstance(key, str) or _META_KEY_RE.fullmatch(key) is None:
                raise _fail("meta keys must match [A-Za-z0-9_.-]{1,64}")
            _text(value, f"meta {key}", allow_empty=True)
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    @property
    def parts_length(self) -> int:
        """Sum of the parts' lengths: the body bytes that follow the manifest."""
        return sum(p.length for p in self.parts)

    def part(self, name: str) -> PartInfo:
        """The part called ``name``; :class:`KeyError` if there is none."""
        for info in self.parts:
            if info.name == name:
                return info
        raise KeyError(name)

    def encode(self) -> bytes:
        """The manifest's wire form: compact UTF-8 JSON, keys in a fixed order, so encoding is deterministic."""
        return self._encoded

    @functools.cached_property
    def _encoded(self) -> bytes:
        # Cached: the proxies need the bytes twice (Content-Length and the body) and the object is immutable.
        obj = {
            "parts": [p.to_json() for p in self.parts],
            "signature": base64.b64encode(self.signature).decode("ascii"),
            "ocsp": [base64.b64encode(o).decode("ascii") for o in self.ocsp],
            "meta": dict(sorted(self.meta.items())),
        }
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")

    @classmethod
    def decode(
        cls,
        data: bytes,
        *,
        max_parts: int = DEFAULT_MAX_PARTS,
        max_bytes: int = DEFAULT_MAX_MANIFEST_BYTES,
    ) -> Manifest:
        """Parse a manifest strictly; raise :class:`InvalidTransportMessage` for anything not in the spec.

        Refused: more than ``max_bytes`` bytes (checked before parsing), invalid UTF-8 or JSON, duplicate or
        unknown keys, missing keys, wrong types, NaN/Infinity, more than ``max_parts`` parts, repeated or malformed
        part names, negative or non-integer lengths, non-canonical base64.
        """
        try:
            return _decode(data, max_parts=max_parts, max_bytes=max_bytes)
        except InvalidTransportMessage:
            raise
        except Exception as exc:
            # Fail closed: any other failure (recursion depth on nested arrays, say) is a malformed manifest.
            raise _fail(f"manifest cannot be parsed ({type(exc).__name__})") from None


def _pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
    # json's object hook: duplicate keys would let two readers of one manifest see different values.
    obj = dict(items)
    if len(obj) != len(items):
        raise _fail("manifest has a duplicate key")
    return obj


def _no_constant(name: str) -> None:
    raise _fail(f"manifest contains {name}")


def _decode(data: bytes, *, max_parts: int, max_bytes: int) -> Manifest:
    # (1) Size cap before any parsing.
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _fail("manifest must be bytes")
    if len(data) > max_bytes:
        raise _fail(f"manifest is larger than {max_bytes} bytes")
    # (2) Strict UTF-8 JSON, no duplicate keys, no NaN/Infinity.
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise _fail("manifest is not UTF-8") from None
    try:
        obj = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise _fail(f"manifest is not JSON: {exc.msg} at offset {exc.pos}") from None
    # (3) Exactly the known top-level keys.
    if not isinstance(obj, dict) or obj.keys() != _TOP_KEYS:
        raise _fail(f"manifest must be an object with exactly the keys {', '.join(sorted(_TOP_KEYS))}")
    # (4) Parts, each with known keys only.
    raw_parts = obj["parts"]
    if not isinstance(raw_parts, list):
        raise _fail("manifest parts must be a list")
    if len(raw_parts) > max_parts:
        raise _fail(f"manifest lists more than {max_parts} parts")
    parts: list[PartInfo] = []
    for index, raw in enumerate(raw_parts):
        if not isinstance(raw, dict) or not _PART_REQUIRED <= raw.keys() <= _PART_KEYS:
            raise _fail(f"manifest part {index} must have name, content_type, length and optionally headers")
        raw_headers = raw.get("headers", [])
        if not isinstance(raw_headers, list) or not all(isinstance(h, list) and len(h) == 2 for h in raw_headers):
            raise _fail(f"manifest part {index} headers must be a list of [name, value] pairs")
        if "headers" in raw and not raw_headers:
            raise _fail(f"manifest part {index} headers must be omitted when empty")  # one encoding per manifest
        parts.append(
            PartInfo(
                name=raw["name"],
                content_type=raw["content_type"],
                length=raw["length"],
                headers=tuple((h[0], h[1]) for h in raw_headers),
            )
        )
    # (5) Signature and OCSP responses: canonical base64.
    signature = _strict_b64(obj["signature"], "manifest signature")
    raw_ocsp = obj["ocsp"]
    if not isinstance(raw_ocsp, list) or len(raw_ocsp) > _MAX_OCSP:
        raise _fail(f"manifest ocsp must be a list of at most {_MAX_OCSP} responses")
    ocsp = tuple(_strict_b64(o, "manifest OCSP response") for o in raw_ocsp)
    # (6) Metadata: string to string.  The dataclass checks names, values, uniqueness and counts.
    meta = obj["meta"]
    if not isinstance(meta, dict):
        raise _fail("manifest meta must be an object")
    return Manifest(parts=tuple(parts), signature=signature, ocsp=ocsp, meta=meta)


def index_bytes(parts: Sequence[PartInfo], meta: Mapping[str, str]) -> bytes:
    """The canonical bytes of the manifest's descriptive fields, signed as the derived part ``index``.

    The manifest carries the signature, so it cannot be covered by it directly; instead the sender signs this
    serialisation of everything in the manifest that a receiver acts on — ``meta`` and each part's name, content
    type, length and headers — and the receiver recomputes it from the manifest it got.  Any change to those
    fields in transit then breaks the signature.  Compact UTF-8 JSON with sorted keys.
    """
    doc = {
        "meta": dict(sorted(meta.items())),
        "parts": [[p.name, p.content_type, p.length, [list(h) for h in p.headers]] for p in parts],
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


# HTTP framing ----------------------------------------------------------------------------------------------------


def message_length(manifest_bytes: bytes, manifest: Manifest) -> int:
    """The body's Content-Length: the encoded manifest plus every part."""
    return len(manifest_bytes) + manifest.parts_length


def message_headers(manifest_bytes: bytes, manifest: Manifest) -> dict[str, str]:
    """The HTTP headers a message is sent with (protocol version, content type and both lengths)."""
    return {
        HEADER_PROTOCOL: PROTOCOL_VERSION,
        "Content-Type": CONTENT_TYPE,
        "Content-Length": str(message_length(manifest_bytes, manifest)),
        HEADER_MANIFEST_LENGTH: str(len(manifest_bytes)),
    }


def _length_header(headers: Mapping[str, str], name: str) -> int:
    value = headers.get(name)
    # Only plain decimal digits: int() would also accept "+5", " 5", "5_0" and non-ASCII digits.
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 16:
        raise _fail(f"header {name} must be a decimal byte count")
    return int(value)


def parse_message_headers(
    headers: Mapping[str, str],
    *,
    max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES,
    max_message_bytes: int,
) -> tuple[int, int]:
    """Check a message's HTTP headers; return ``(content_length, manifest_length)``.

    ``headers`` must look names up case-insensitively (aiohttp's ``CIMultiDictProxy`` does).  Raises
    :class:`InvalidTransportMessage` for another protocol version or content type, a missing or malformed length,
    a manifest longer than the body or than ``max_manifest_bytes``, or a body longer than ``max_message_bytes``.
    """
    if headers.get(HEADER_PROTOCOL) != PROTOCOL_VERSION:
        raise _fail(f"{HEADER_PROTOCOL} must be {PROTOCOL_VERSION}")
    content_type = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if content_type != CONTENT_TYPE:
        raise _fail(f"Content-Type must be {CONTENT_TYPE}")
    content_length = _length_header(headers, "Content-Length")
    manifest_length = _length_header(headers, HEADER_MANIFEST_LENGTH)
    if content_length > max_message_bytes:
        raise _fail(f"message is larger than {max_message_bytes} bytes")
    if manifest_length > max_manifest_bytes:
        raise _fail(f"manifest is larger than {max_manifest_bytes} bytes")
    if manifest_length > content_length:
        raise _fail(f"{HEADER_MANIFEST_LENGTH} exceeds Content-Length")
    return content_length, manifest_length


# Streams ---------------------------------------------------------------------------------------------------------


async def read_parts(
    reader: AsyncReader,
    manifest: Manifest,
    *,
    memory_limit: int,
    max_part_bytes: int,
    expected_length: int | None = None,
) -> dict[str, Spool]:
    """Read each part's bytes from ``reader`` into a finished :class:`Spool`, in manifest order.

    ``expected_length`` is the number of body bytes after the manifest (Content-Length minus the manifest length);
    when given, it must equal the sum of the parts' lengths, checked before anything is read, so a manifest that
    lies about its lengths is refused without reading a byte (also what refuses trailing bytes over HTTP).  Parts
    are read in chunks of at most :data:`~bridge.spool.CHUNK_SIZE`, so a large part never sits in memory whole.
    On any failure every spool created so far is closed.  Raises :class:`InvalidTransportMessage` for a part
    larger than ``max_part_bytes`` or an early end of stream; the reader's own I/O errors pass through.
    """
    # (1) Lengths first: all refusals that need no I/O happen before the first read.
    if expected_length is not None and manifest.parts_length != expected_length:
        raise _fail(
            f"parts in the manifest total {manifest.parts_length} bytes but the body has {expected_length} after it"
        )
    for info in manifest.parts:
        if info.length > max_part_bytes:
            raise _fail(f"part {info.name!r} is larger than {max_part_bytes} bytes")
    # (2) Stream each part into its spool.
    spools: dict[str, Spool] = {}
    try:
        for info in manifest.parts:
            spool = Spool(memory_limit=memory_limit)
            spools[info.name] = spool
            remaining = info.length
            while remaining:
                size = min(remaining, CHUNK_SIZE)
                try:
                    chunk = await reader.readexactly(size)
                except EOFError:  # asyncio.IncompleteReadError, also what aiohttp raises
                    raise _fail(f"message ends inside part {info.name!r}") from None
                await spool.awrite(chunk)
                remaining -= size
            spool.finish()
    except BaseException:
        for spool in spools.values():
            spool.close()
        raise
    return spools


async def read_message(
    reader: AsyncReader,
    *,
    content_length: int,
    manifest_length: int,
    memory_limit: int,
    max_part_bytes: int,
    max_parts: int = DEFAULT_MAX_PARTS,
    max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES,
    check_eof: bool = True,
) -> tuple[Manifest, bytes, dict[str, Spool]]:
    """Read a whole message body: the manifest (decoded), its exact bytes (for the message log) and the parts.

    ``content_length`` and ``manifest_length`` come from :func:`parse_message_headers`.  With ``check_eof`` the
    stream must end right after the last part (true for an HTTP body reader bounded by its Content-Length; turn it
    off for a stream that carries more after the message).
    """
    if manifest_length > max_manifest_bytes:
        raise _fail(f"manifest is larger than {max_manifest_bytes} bytes")
    if manifest_length > content_length:
        raise _fail(f"{HEADER_MANIFEST_LENGTH} exceeds Content-Length")
    try:
        manifest_bytes = await reader.readexactly(manifest_length)
    except EOFError:
        raise _fail("message ends inside the manifest") from None
    manifest = Manifest.decode(manifest_bytes, max_parts=max_parts, max_bytes=max_manifest_bytes)
    spools = await read_parts(
        reader,
        manifest,
        memory_limit=memory_limit,
        max_part_bytes=max_part_bytes,
        expected_length=content_length - manifest_length,
    )
    if check_eof and await reader.read(1):
        for spool in spools.values():
            spool.close()
        raise _fail("message has bytes after its last part")
    return manifest, manifest_bytes, spools


async def iter_message(manifest: Manifest, parts: Mapping[str, Spool]) -> AsyncIterator[bytes]:
    """Yield the message body: the encoded manifest, then each part's bytes in manifest order.

    ``parts`` must hold a finished spool for every part, of exactly the listed length; this is checked before
    the first byte is yielded (a mismatch is a bug in the sender, raised as :class:`ValueError`).
    """
    for info in manifest.parts:
        spool = parts.get(info.name)
        if spool is None:
            raise ValueError(f"no spool for part {info.name!r}")
        if spool.size != info.length:
            raise ValueError(f"part {info.name!r} has {spool.size} bytes, the manifest says {info.length}")
    if parts.keys() != {p.name for p in manifest.parts}:
        raise ValueError("spools given for parts the manifest does not list")
    # Small pieces are joined up to CHUNK_SIZE: each piece yielded becomes its own write (a TLS record and a
    # send(2)), and a small message would otherwise cost one per part; large parts still stream chunk by chunk.
    pending: list[bytes] = [manifest.encode()]
    size = len(pending[0])
    for info in manifest.parts:
        async for chunk in parts[info.name].chunks():
            if size + len(chunk) > CHUNK_SIZE and pending:
                yield pending[0] if len(pending) == 1 else b"".join(pending)
                pending, size = [], 0
            pending.append(chunk)
            size += len(chunk)
    if pending:
        yield pending[0] if len(pending) == 1 else b"".join(pending)
