"""The message-log stages both proxies run: nothing is passed on before its record is durable.

* the consumer's security server logs the signed request before sending it, and the verified response before
  answering its information system;
* the provider's security server logs the verified request (with the access decision, also when it is a denial)
  before calling the service, and the signed response before sending it back.

A record that cannot be written ends the exchange with ``LoggingFailed``; a log whose records have waited too long
for a timestamp refuses new exchanges with ``TimestampingFailed`` (checked first, in O(1)).  If an exchange fails
after its request was logged, the failure is logged too (outcome = the fault code), so the log never shows a
request without its end.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping

from bridge.errors import KorpuError, LoggingFailed
from bridge.logsetup import get_logger
from bridge.messagelog import Direction, LogPart, LogRecord, utc_now_text
from bridge.spool import Spool
from bridge.transport import INDEX_PART, Manifest, PartInfo, index_bytes
from security_server.exchange import Exchange
from security_server.persons import extract_persons
from security_server.runtime import ServerRuntime

__all__ = ["CheckLog", "LogRequest", "LogResponse", "log_failure"]

log = get_logger(__name__)


def _parts(
    infos: tuple[PartInfo, ...], meta: Mapping[str, str], spools: Mapping[str, Spool], stored: bool
) -> tuple[tuple[LogPart, ...], dict[str, Spool]]:
    """The record's part list and the bodies to store; the derived ``index`` part is logged like any other."""
    index = Spool.from_bytes(index_bytes(infos, meta))
    parts, bodies = [], {}
    for name, spool, content_type in (
        *((i.name, spools[i.name], i.content_type) for i in infos),
        (INDEX_PART, index, "application/json"),
    ):
        digest = spool.digest.hex()
        # The message and index parts are always kept: without them no signature can be checked.
        keep = stored or name in ("message", INDEX_PART)
        parts.append(LogPart(name, content_type, spool.size, digest, keep))
        if keep:
            bodies[digest] = spool
    return tuple(parts), bodies


def _record(ex: Exchange, runtime: ServerRuntime, side: str, direction: Direction, **fields: object) -> LogRecord:
    assert ex.header is not None
    header = ex.header
    timings = {k: round((v - ex.timings["request_in"]) * 1000, 3) for k, v in ex.timings.items()}
    return LogRecord(
        at=utc_now_text(),
        server=runtime.config.server_id,
        side=side,
        direction=str(direction),
        request_id=str(ex.extra.get("request_id", ex.correlation_id)),
        message_id=header.message_id,
        protocol=str(header.protocol),
        client=header.client.encoded(),
        service=header.service.encoded(),
        user_id=header.user_id,
        issue=header.issue,
        represented_party=header.represented_party.path() if header.represented_party else None,
        peer=ex.peer_server.id.encoded() if ex.peer_server is not None else None,
        request_hash=ex.request_hash,
        timings_ms=timings,
        **fields,  # type: ignore[arg-type]
    )


def _signed_fields(signature: bytes | None, ocsp: tuple[bytes, ...]) -> dict[str, object]:
    return {
        "signature": base64.b64encode(signature).decode() if signature is not None else None,
        "ocsp": tuple(base64.b64encode(o).decode() for o in ocsp),
    }


def _body_logging(ex: Exchange, runtime: ServerRuntime) -> bool:
    if ex.header is None:
        return True
    provided = runtime.service(ex.header.service)
    return provided is None or provided.config.body_logging == "full"


def _persons(ex: Exchange, runtime: ServerRuntime) -> tuple[str, ...]:
    assert ex.header is not None
    found: set[str] = {ex.header.user_id} if ex.header.user_id else set()
    provided = runtime.service(ex.header.service)
    if provided is not None and provided.config.person_fields:
        body = ex.request_parts.get("body")
        found.update(
            extract_persons(
                provided.config.person_fields,
                rest=ex.rest,
                rest_body=body.getvalue() if body is not None and body.size <= 1 << 20 else None,
                soap=ex.soap,
            )
        )
    return tuple(sorted(found))


class CheckLog:
    """Refuse the exchange at once if the log cannot take records (timestamping overdue, writer broken)."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, ex: Exchange) -> None:
        """Raise if the log cannot take records now."""
        self.runtime.message_log.check()


class LogRequest:
    """Write the request's record (durably) before the request moves on."""

    def __init__(self, runtime: ServerRuntime, side: str) -> None:
        self.runtime = runtime
        self.side = side

    async def __call__(self, ex: Exchange) -> None:
        """Append the request record and wait until it is durable."""
        infos, meta = _manifest_fields(ex, "request_manifest", "manifest")
        parts, bodies = _parts(infos, meta, ex.request_parts, _body_logging(ex, self.runtime))
        decision = ex.decision.as_dict() if ex.decision is not None else None
        denied: KorpuError | None = ex.extra.get("denied")
        record = _record(
            ex,
            self.runtime,
            self.side,
            Direction.REQUEST,
            parts=parts,
            persons=_persons(ex, self.runtime),
            decision=decision,
            outcome=denied.fault_code if denied is not None else "ok",
            **_signed_fields(ex.request_signature, ex.request_ocsp),
        )
        try:
            ex.extra["request_record"] = await self.runtime.message_log.append(record, bodies)
        except LoggingFailed:
            raise
        except KorpuError as exc:
            raise LoggingFailed(f"the request could not be logged: {exc.message}") from None
        ex.timings["logged_request"] = time.perf_counter()


class LogResponse:
    """Write the response's record (durably) before the response moves on."""

    def __init__(self, runtime: ServerRuntime, side: str) -> None:
        self.runtime = runtime
        self.side = side

    async def __call__(self, ex: Exchange) -> None:
        """Append the response record and wait until it is durable."""
        infos, meta = _manifest_fields(ex, "response_manifest", "response_manifest")
        parts, bodies = _parts(infos, meta, ex.response_parts, _body_logging(ex, self.runtime))
        record = _record(
            ex,
            self.runtime,
            self.side,
            Direction.RESPONSE,
            parts=parts,
            persons=_persons(ex, self.runtime),
            **_signed_fields(ex.response_signature, ex.response_ocsp),
        )
        try:
            ex.extra["response_record"] = await self.runtime.message_log.append(record, bodies)
        except LoggingFailed:
            raise
        except KorpuError as exc:
            raise LoggingFailed(f"the response could not be logged: {exc.message}") from None


def _manifest_fields(ex: Exchange, own_key: str, received_key: str) -> tuple[tuple[PartInfo, ...], Mapping[str, str]]:
    """The part list and meta the signature covered: built here (``own_key``) or received (``received_key``)."""
    value = ex.extra.get(own_key)
    if isinstance(value, tuple):
        return value
    received = ex.extra.get(received_key)
    if isinstance(received, Manifest):
        return received.parts, received.meta
    raise LoggingFailed("internal: no manifest fields to log")


async def log_failure(ex: Exchange, runtime: ServerRuntime, side: str) -> None:
    """After a fault: if the request was logged but no response, log the fault as the exchange's end (best effort)."""
    if ex.fault is None or ex.header is None or "request_record" not in ex.extra or "response_record" in ex.extra:
        return
    record = _record(ex, runtime, side, Direction.RESPONSE, outcome=ex.fault.fault_code)
    try:
        await runtime.message_log.append(record, {})
    except KorpuError as exc:
        # The client already gets the fault; the missing end record is itself worth an operator's attention.
        log.error("could not log an exchange's failure", fault=exc.fault_code, correlation_id=ex.correlation_id)
