"""The client proxy: where local information systems send X-Road SOAP 4.0 and REST r1 requests.

Routes (as X-Road's client proxy): ``POST /`` SOAP; ``/r1/{serviceId}[/path]`` REST, any method;
``GET /listClients`` the metaservice.  An exchange runs the stages of :func:`client_stages` in order:

1. ``ParseRequest``      the protocol's header fields (body not yet read)
2. ``CheckGlobalConf``   a valid global configuration (``OutdatedGlobalConf`` once expired)
3. ``CheckLog``          the message log can take records (``TimestampingFailed`` once overdue)
4. ``AuthenticateClient`` the client subsystem is registered here and connected the way its settings allow
5. ``ReadBody``          the body into spools, hashing as it arrives
6. ``ResolveProvider``   the provider's security servers from global configuration
7. ``SignRequest``       one signature over the digests of all parts; OCSP staples for our certificates
8. ``LogRequest``        the signed request's record, durable before a byte is sent (``LoggingFailed``)
9. ``Forward``           mutual TLS to the first reachable provider server; failover only before sending
10. ``VerifyResponse``   the provider's TLS certificate and signature, their OCSP staples, the request hash
11. ``LogResponse``      the verified response's record, durable before the information system gets it

and the answer goes back in the protocol's response shape (or as its fault shape).
"""

from __future__ import annotations

import dataclasses
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding

from bridge import metaservices, rest, soap
from bridge.errors import (
    AccessDenied,
    ClientError,
    InconsistentResponse,
    InvalidRequest,
    KorpuError,
    MethodNotAllowed,
    PayloadTooLarge,
)
from bridge.globalconf import SecurityServerInfo
from bridge.identifiers import MemberId, SubsystemId
from bridge.logsetup import get_logger
from bridge.message import Protocol
from bridge.spool import Spool
from bridge.transport import Manifest, iter_message, message_headers, parse_message_headers, read_message
from security_server.exchange import (
    Exchange,
    IdleTimeoutReader,
    Stage,
    part_infos,
    run_stages,
    sign_message,
    verify_message,
)
from security_server.logstages import CheckLog, LogRequest, LogResponse, log_failure
from security_server.peers import PinningConnector, fault_from_peer, send_to_first
from security_server.runtime import AUTH, ServerRuntime, utcnow

__all__ = ["UnknownMember", "client_proxy_app", "client_stages"]

log = get_logger(__name__)

ORIGIN = "Server.ClientProxy"
SIDE = "consumer"
EXCHANGE_PATH = "/korpu/v1/exchange"
_RAW_PEER = "peer_cert_der"


class UnknownMember(KorpuError):
    """Global configuration lists no security server for the service's provider (X-Road: UnknownMember)."""

    code = "UnknownMember"


class ClientNotRegistered(ClientError):
    """The calling subsystem is not a registered client of this security server, or connected the wrong way."""

    code = "InvalidClient"
    http_status = 403


RUNTIME: web.AppKey[ServerRuntime] = web.AppKey("runtime", ServerRuntime)


@dataclass
class ClientRequestContext:
    """The information system's HTTP request, as the stages need it."""

    request: web.Request
    protocol: Protocol


# Stages --------------------------------------------------------------------------------------------------------


class ParseRequest:
    """Parse the X-Road header fields; SOAP needs the envelope, so a SOAP body is read here (capped)."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, ex: Exchange) -> None:
        ctx: ClientRequestContext = ex.extra["ctx"]
        req = ctx.request
        limits = self.runtime.config.limits
        if len(req.headers) > limits.max_headers:
            raise InvalidRequest(f"more than {limits.max_headers} headers")
        if ctx.protocol is Protocol.REST:
            raw_path, _, _query = req.raw_path.partition("?")
            ex.rest = rest.RestRequest.from_http(
                req.method, raw_path, req.query_string, list(req.headers.items()), generate_id=_new_id
            )
            ex.header = ex.rest.header
        else:
            if req.method != "POST":
                raise MethodNotAllowed("SOAP requests must be POSTed")
            cap = limits.max_soap_envelope_bytes + limits.max_soap_attachments_bytes
            if req.content_length is not None and req.content_length > cap:
                raise PayloadTooLarge(f"the SOAP message is larger than {cap} bytes")
            # SOAP is parsed in memory and the client is known only after parsing: bound how many such bodies
            # are held at once, and how long each may stall.
            async with self.runtime.soap_reads:
                body = await _read_capped(req, cap, limits.body_idle_timeout_seconds)
                ex.soap = soap.parse_soap(
                    req.headers.get("Content-Type", ""),
                    body,
                    max_envelope_bytes=limits.max_soap_envelope_bytes,
                    max_depth=limits.max_xml_depth,
                    max_attachment_bytes=limits.max_soap_attachments_bytes,
                )
            ex.header = ex.soap.header


class CheckGlobalConf:
    """Refuse traffic without a valid global configuration (the copy is checked in O(1), no I/O)."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, ex: Exchange) -> None:
        ex.conf = self.runtime.conf()


class AuthenticateClient:
    """The client must be one of this server's registered client subsystems, connected as its settings allow."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, ex: Exchange) -> None:
        assert ex.header is not None and ex.conf is not None
        client = ex.header.client
        own = self.runtime.config.id
        if not isinstance(client, SubsystemId) or client.member != own.owner:
            raise ClientNotRegistered(f"{client.encoded()} is not a client of this security server")
        settings = self.runtime.config.client(client.subsystem_code)
        server = ex.conf.server(own)
        if settings is None or server is None or client not in server.clients:
            raise ClientNotRegistered(f"{client.encoded()} is not a registered client of this security server")
        ctx: ClientRequestContext = ex.extra["ctx"]
        transport = ctx.request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if settings.connection != "http" and ssl_object is None:
            raise ClientNotRegistered(f"{client.encoded()} must connect over HTTPS")
        if settings.connection == "https-cert":
            presented = ssl_object.getpeercert(binary_form=True) if isinstance(ssl_object, ssl.SSLObject) else None
            if not presented or presented not in self.runtime.client_is_certs(client.subsystem_code):
                raise ClientNotRegistered(f"{client.encoded()} must present its registered TLS certificate")


class ReadBody:
    """Spool the request body (REST) or the envelope and attachments (SOAP) as the parts to sign."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, ex: Exchange) -> None:
        limits = self.runtime.config.limits
        if ex.rest is not None:
            ctx: ClientRequestContext = ex.extra["ctx"]
            ex.request_parts["message"] = Spool.from_bytes(rest.descriptor(ex.rest))
            ex.request_content_types["message"] = "application/json"
            body = Spool(limits.memory_spool_bytes)
            ex.request_parts["body"] = body
            reader = IdleTimeoutReader(
                ctx.request.content, limits.body_idle_timeout_seconds, InvalidRequest, "the request body stalled"
            )
            try:
                async for chunk in reader.chunks():
                    if limits.max_body_bytes is not None and body.size + len(chunk) > limits.max_body_bytes:
                        raise PayloadTooLarge(f"the body is larger than {limits.max_body_bytes} bytes")
                    await body.awrite(chunk)
            finally:
                body.finish()
            if body.size == 0:
                del ex.request_parts["body"]  # pr-rest: with no body, the hash covers the headers only
                body.close()
            else:
                ex.request_content_types["body"] = ex.rest.content_type or "application/octet-stream"
            digest = ex.request_parts["body"].digest if "body" in ex.request_parts else None
            ex.request_hash = rest.request_hash(ex.request_parts["message"].digest, digest)
        else:
            assert ex.soap is not None
            ex.request_parts["message"] = Spool.from_bytes(ex.soap.envelope)
            ex.request_content_types["message"] = ex.soap.content_type
            for n, att in enumerate(ex.soap.attachments, start=1):
                name = f"attachment-{n}"
                ex.request_parts[name] = Spool.from_bytes(att.data)
                ex.request_content_types[name] = att.content_type
                headers = list(att.headers)
                if att.content_id is not None:
                    headers.insert(0, ("Content-ID", f"<{att.content_id}>"))
                ex.request_part_headers[name] = tuple(headers)
            ex.request_hash = soap.request_hash(ex.soap.envelope)


class ResolveProvider:
    """Find the provider's security servers in global configuration (optionally the one the client named)."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, ex: Exchange) -> None:
        assert ex.header is not None and ex.conf is not None
        provider = ex.header.service.provider
        servers = ex.conf.servers_for(provider)
        if ex.header.security_server is not None:
            servers = tuple(s for s in servers if s.id == ex.header.security_server)
        if not servers:
            raise UnknownMember(f"global configuration lists no security server for {provider.encoded()}")
        ex.extra["targets"] = servers


class SignRequest:
    """Sign all parts, the manifest's index and the signing time with the client member's key; staple OCSP."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, ex: Exchange) -> None:
        assert ex.header is not None
        creds = self.runtime.credentials()
        infos = part_infos(ex.request_parts, ex.request_content_types, ex.request_part_headers)
        meta = {
            "protocol": str(ex.header.protocol),
            "id": ex.header.message_id,
            "requestId": ex.correlation_id,
            "requestHash": ex.request_hash or "",
        }
        ex.extra["request_manifest"] = (infos, meta)
        ex.request_signature = sign_message(creds.signer, infos, meta, ex.request_parts)
        # Staples: [0] the signing certificate's OCSP response, [1] the authentication certificate's.
        ex.request_ocsp = (creds.ocsp.response_for("sign"), creds.ocsp.response_for(AUTH))


class Forward:
    """Send to the first reachable provider security server over mutual TLS and read its signed answer."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, ex: Exchange) -> None:
        assert ex.header is not None and ex.request_signature is not None
        runtime = self.runtime
        limits = runtime.config.limits
        infos, meta = ex.extra["request_manifest"]
        manifest = Manifest(parts=infos, signature=ex.request_signature, ocsp=ex.request_ocsp, meta=meta)
        manifest_bytes = manifest.encode()
        targets: tuple[SecurityServerInfo, ...] = ex.extra["targets"]
        assert runtime.peer_session is not None
        ex.mark("request_out")
        sent = await send_to_first(
            runtime.peer_session,
            runtime.router,
            targets,
            path=EXCHANGE_PATH,
            headers=message_headers(manifest_bytes, manifest),
            body=lambda: iter_message(manifest, ex.request_parts),
            ssl_context=runtime.client_ssl(),
            connect_timeout_s=limits.connect_timeout_seconds,
            total_timeout_s=limits.peer_timeout_seconds,
        )
        ex.peer_server = sent.server
        async with sent.response as resp:
            ex.mark("response_in")
            # The connector bound this address's certificate to global configuration when it connected.
            connector = runtime.peer_session.connector
            assert isinstance(connector, PinningConnector)
            ex.extra[_RAW_PEER] = connector.peer_certificate(sent.server.address)
            if resp.headers.get("Content-Type", "").startswith("application/json"):
                # The provider's security server refused: relay its fault (origin and code kept).
                data = await resp.json(content_type=None)
                raise fault_from_peer(resp.status, data if isinstance(data, dict) else {})
            try:
                content_length, manifest_length = parse_message_headers(
                    resp.headers, max_message_bytes=limits.max_body_bytes or 1 << 62
                )
                response_manifest, _raw, spools = await read_message(
                    resp.content,
                    content_length=content_length,
                    manifest_length=manifest_length,
                    memory_limit=limits.memory_spool_bytes,
                    max_part_bytes=limits.max_body_bytes or 1 << 62,
                )
            except KorpuError as exc:
                exc.origin = ORIGIN
                raise
        runtime.router.success(sent.server, time.perf_counter() - ex.timings["request_out"])
        ex.response_parts = spools
        ex.extra["response_manifest"] = response_manifest
        ex.response_signature = response_manifest.signature
        ex.response_ocsp = response_manifest.ocsp
        for info in response_manifest.parts:
            ex.response_content_types[info.name] = info.content_type
            ex.response_part_headers[info.name] = info.headers


class VerifyResponse:
    """Check the provider's TLS certificate, its signature over the response, and the binding to our request."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, ex: Exchange) -> None:
        assert ex.header is not None and ex.conf is not None and ex.peer_server is not None
        now = utcnow()
        staples = ex.response_ocsp
        # (1) the peer is the server we chose, with a good authentication certificate per its stapled response
        peer_der: bytes = ex.extra.get(_RAW_PEER, b"")
        self.runtime.binding.check_server(ex.conf, peer_der, ex.peer_server.id)
        self.runtime.checker.check_auth_cert(peer_der, staples[1] if len(staples) > 1 else None, now)
        # (2) the signature covers exactly the parts received and the manifest's index, and is fresh and new
        verified = verify_message(ex.extra["response_manifest"], ex.response_parts)
        self.runtime.replay.check(ex.response_signature or b"", verified.signing_time, now)
        # (3) the signer is the provider member, with a good certificate from an approved CA
        member = self.runtime.checker.check_sign_cert(
            verified.cert.public_bytes(Encoding.DER), staples[0] if staples else None, now
        )
        if member != ex.header.service.member:
            provider = ex.header.service.member.encoded()
            raise AccessDenied(f"the response is signed by {member.encoded()}, not by the provider {provider}")
        # (4) the response answers our request
        message = ex.response_parts.get("message")
        if message is None:
            raise InconsistentResponse("the response has no message part")
        if ex.rest is not None:
            try:
                ex.rest_response, echoed_hash = rest.parse_response_descriptor(message.getvalue())
            except KorpuError as exc:
                raise InconsistentResponse(f"the response descriptor is not valid: {exc.message}") from None
            if echoed_hash != ex.request_hash:
                raise InconsistentResponse("the response's request hash does not match the request")
        else:
            assert ex.soap is not None
            response = soap.parse_soap_response(
                ex.response_content_types.get("message", "text/xml"), message.getvalue(), origin=ORIGIN
            )
            if response.is_fault and response.header is None:
                # A technical fault carries no X-Road header to hold requestHash; the signed part does.
                bound = ex.response_parts.get("request-hash")
                if bound is None or bound.getvalue().decode("ascii", "replace") != ex.request_hash:
                    raise InconsistentResponse("the provider's fault is not bound to this request")
            else:
                soap.check_response(ex.soap, response, origin=ORIGIN, verify_request_hash=True)
            # The envelope and each attachment travel as separate signed parts; put the attachments back so the
            # information system gets the SwA response the provider sent (getWsdl's WSDL is such an attachment).
            attachments = tuple(
                _response_attachment(
                    ex.response_content_types.get(name, "application/octet-stream"),
                    ex.response_part_headers.get(name, ()),
                    spool.getvalue(),
                )
                for name, spool in ex.response_parts.items()
                if name.startswith("attachment-")
            )
            ex.extra["soap_response"] = dataclasses.replace(response, attachments=attachments)


def _response_attachment(content_type: str, headers: Sequence[tuple[str, str]], data: bytes) -> soap.SoapAttachment:
    """A SwA attachment from a response part: ``Content-ID`` back into its field, other headers forwarded."""
    content_id = next((value.strip().strip("<>") for name, value in headers if name.lower() == "content-id"), None)
    rest_headers = tuple((name, value) for name, value in headers if name.lower() != "content-id")
    return soap.SoapAttachment(content_id, content_type, rest_headers, data)


def client_stages(runtime: ServerRuntime) -> list[Stage]:
    """The client proxy's side of an exchange, in order."""
    return [
        ParseRequest(runtime),
        CheckGlobalConf(runtime),
        CheckLog(runtime),
        AuthenticateClient(runtime),
        ReadBody(runtime),
        ResolveProvider(runtime),
        SignRequest(runtime),
        LogRequest(runtime, SIDE),
        Forward(runtime),
        VerifyResponse(runtime),
        LogResponse(runtime, SIDE),
    ]


# HTTP edge -----------------------------------------------------------------------------------------------------


def _new_id() -> str:
    return str(uuid.uuid4())


async def _read_capped(request: web.Request, cap: int, idle_s: float) -> bytes:
    chunks = []
    size = 0
    reader = IdleTimeoutReader(request.content, idle_s, InvalidRequest, "the request body stalled")
    async for chunk in reader.chunks():
        size += len(chunk)
        if size > cap:
            raise PayloadTooLarge(f"the message is larger than {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _stream(spool: Spool) -> AsyncIterator[bytes]:
    async for chunk in spool.chunks():
        yield chunk


def _fault_response(ex: Exchange, protocol: Protocol) -> web.Response:
    error = ex.fault
    assert error is not None
    log.info("exchange failed", fault=error.fault_code, correlation_id=ex.correlation_id)
    if protocol is Protocol.REST:
        status, headers, body = rest.render_rest_error(error, ex.correlation_id)
        return web.Response(status=status, headers=headers, body=body)
    return web.Response(
        status=500,
        body=soap.render_soap_fault(error, ex.correlation_id),
        content_type="text/xml",
        charset="utf-8",
        headers={"X-Road-Error": error.fault_code},
    )


async def _respond(request: web.Request, ex: Exchange) -> web.StreamResponse:
    assert ex.header is not None
    if ex.rest is not None:
        assert ex.rest_response is not None and ex.request_hash is not None
        response = web.StreamResponse(status=ex.rest_response.status)
        for name, value in ex.rest_response.headers:
            if name not in ("content-length",):
                response.headers.add(name, value)
        for name, value in rest.response_headers(ex.header, ex.request_hash, ex.correlation_id):
            response.headers[name] = value
        body = ex.response_parts.get("body")
        response.content_length = body.size if body is not None else 0
        await response.prepare(request)
        if body is not None:
            async for chunk in body.chunks():
                await response.write(chunk)
        await response.write_eof()
        return response
    soap_response: soap.SoapResponse = ex.extra["soap_response"]
    if soap_response.attachments:
        content_type, data = soap.build_multipart(soap_response.envelope, soap_response.attachments)
        return web.Response(body=data, headers={"Content-Type": content_type})
    return web.Response(body=soap_response.envelope, headers={"Content-Type": soap_response.content_type})


async def _exchange(request: web.Request, protocol: Protocol) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    ex = Exchange(origin=ORIGIN)
    ex.extra["ctx"] = ClientRequestContext(request, protocol)
    try:
        await run_stages(request.app[STAGES], ex)
        if ex.fault is not None:
            await log_failure(ex, runtime, SIDE)
            return _fault_response(ex, protocol)
        try:
            return await _respond(request, ex)
        except KorpuError as exc:
            ex.fail(exc)
            return _fault_response(ex, protocol)
    finally:
        ex.mark("response_out")
        ex.close()


async def soap_handler(request: web.Request) -> web.StreamResponse:
    """``POST /``: an X-Road SOAP 4.0 request."""
    return await _exchange(request, Protocol.SOAP)


async def rest_handler(request: web.Request) -> web.StreamResponse:
    """``/r1/…``: an X-Road REST r1 request."""
    return await _exchange(request, Protocol.REST)


async def list_clients(request: web.Request) -> web.Response:
    """``GET /listClients``: the members and subsystems of this instance (XML, or JSON on ``Accept``)."""
    runtime = request.app[RUNTIME]
    try:
        conf = runtime.conf()
    except KorpuError as exc:
        exc.origin = ORIGIN
        ex = Exchange(origin=ORIGIN, fault=exc)
        return _fault_response(ex, Protocol.REST)
    entries: list[tuple[MemberId | SubsystemId, str]] = []
    for member in conf.members:
        entries.append((member.id, member.name))
        entries.extend((sub, member.name) for sub in member.subsystem_ids())
    if "application/json" in request.headers.get("Accept", ""):
        return web.Response(body=metaservices.render_list_clients_json(entries), content_type="application/json")
    return web.Response(body=metaservices.render_list_clients_xml(entries), content_type="text/xml", charset="utf-8")


STAGES: web.AppKey[Sequence[Stage]] = web.AppKey("stages")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _unexpected(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Last line of defence: nothing unexpected reaches an information system as a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 404:
            error: KorpuError = InvalidRequest(
                f"no such endpoint: {request.path[:100]} (use POST / for SOAP, /r1/… for REST)"
            )
            body = json.dumps(error.to_dict()).encode()
            return web.Response(status=404, body=body, content_type="application/json")
        raise
    except Exception:
        correlation = uuid.uuid4().hex[:16]
        log.exception("client proxy failure", correlation_id=correlation)
        failure = KorpuError("internal error", origin=ORIGIN, detail=correlation)
        status, headers, body = rest.render_rest_error(failure, correlation)
        return web.Response(status=status, headers=headers, body=body)


def client_proxy_app(runtime: ServerRuntime) -> web.Application:
    """The client proxy as an aiohttp application (mounted on the HTTP and HTTPS listeners)."""
    limits = runtime.config.limits
    # Header size caps are set on the runner (max_line_size / max_field_size); see security_server.app.
    app = web.Application(middlewares=[_unexpected], client_max_size=limits.max_body_bytes or 1 << 62)
    app[RUNTIME] = runtime
    app[STAGES] = client_stages(runtime)
    app.router.add_post("/", soap_handler)
    app.router.add_get("/listClients", list_clients)
    app.router.add_route("*", "/r1/{tail:.*}", rest_handler)
    return app
