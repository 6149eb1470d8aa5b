"""The server proxy: where other security servers deliver requests for the services this server provides.

``POST /korpu/v1/exchange`` over mutual TLS (docs/protocol.md).  An exchange runs :func:`server_stages` in order:

1. ``CheckGlobalConf``   a valid global configuration
2. ``CheckLog``          the message log can take records
3. ``IdentifyPeer``      the TLS client certificate is a registered security server's (hash binding)
4. ``ReadMessage``       manifest and parts into spools, hashing as they arrive
5. ``VerifyPeerCert``    the peer's authentication certificate: approved CA, good per its stapled OCSP response
6. ``VerifySignature``   the signature over exactly the parts received, fresh and new; the signer's certificate
7. ``ParseMessage``      the SOAP envelope or REST descriptor, now that it is known to be authentic
8. ``BindClient``        the signer is the client's member, and the peer server hosts that client
9. ``Authorize``         the service is provided here; the policy engine's decision (deny by default)
10. ``LogRequest``       the verified request and the decision, durable before anything acts on it
11. ``Enforce``          a denied request ends here (its attempt is in the log)
12. ``CallService``      the backend (or a metaservice), with its timeout
13. ``SignResponse``     the response parts, bound to the request by its hash, signed and stapled
14. ``LogResponse``      the signed response, durable before it is sent

Nothing acts on the message before step 6 has verified it.  Faults go back unsigned as X-Road's JSON error with
``X-Road-Error``; the consumer's security server relays them with their ``Server.ServerProxy`` origin.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import parse_qs

from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding

from bridge import metaservices, rest, soap
from bridge.errors import (
    AccessDenied,
    InvalidRequest,
    InvalidTransportMessage,
    KorpuError,
    NotFound,
    SslAuthenticationFailed,
)
from bridge.logsetup import get_logger
from bridge.message import Protocol
from bridge.spool import Spool
from bridge.transport import Manifest, iter_message, message_headers, parse_message_headers, read_message
from policies import decide
from policies.engine import allowed_services
from security_server.backends import BackendRequest, BackendResponse, ServiceFailed
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
from security_server.runtime import AUTH, ServerRuntime, utcnow
from security_server.tls import peer_certificate

__all__ = ["UnknownService", "server_proxy_app", "server_stages"]

log = get_logger(__name__)

ORIGIN = "Server.ServerProxy"
SIDE = "provider"
SOAP_META = frozenset({"listMethods", "allowedMethods", "getWsdl"})
REST_META = frozenset({"listMethods", "allowedMethods", "getOpenAPI"})


class UnknownService(KorpuError):
    """The requested service is not provided by this security server (X-Road: UnknownService)."""

    code = "UnknownService"


# Stages --------------------------------------------------------------------------------------------------------


class CheckGlobalConf:
    """Refuse traffic without a valid global configuration."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, ex: Exchange) -> None:
        ex.conf = self.runtime.conf()


class IdentifyPeer:
    """The TLS client certificate must be the registered authentication certificate of a security server."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, ex: Exchange) -> None:
        assert ex.conf is not None
        request: web.Request = ex.extra["request"]
        if request.transport is None:
            raise SslAuthenticationFailed("the connection closed")
        der = peer_certificate(request.transport)
        ex.extra["peer_der"] = der
        ex.peer_server = self.runtime.binding.identify_client_server(ex.conf, der)


class ReadMessage:
    """Read the manifest and every part into spools (hashing as they arrive); nothing is trusted yet."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, ex: Exchange) -> None:
        request: web.Request = ex.extra["request"]
        limits = self.runtime.config.limits
        cap = limits.max_body_bytes or 1 << 62
        content_length, manifest_length = parse_message_headers(request.headers, max_message_bytes=cap)
        reader = IdleTimeoutReader(
            request.content, limits.body_idle_timeout_seconds, InvalidTransportMessage, "the message body stalled"
        )
        manifest, _raw, spools = await read_message(
            reader,
            content_length=content_length,
            manifest_length=manifest_length,
            memory_limit=limits.memory_spool_bytes,
            max_part_bytes=cap,
        )
        ex.extra["manifest"] = manifest
        # The consumer's id for this exchange (signed through the index part): both logs record it.
        ex.extra["request_id"] = manifest.meta.get("requestId") or ex.correlation_id
        ex.request_parts = spools
        ex.request_signature = manifest.signature
        ex.request_ocsp = manifest.ocsp
        for info in manifest.parts:
            ex.request_content_types[info.name] = info.content_type
            ex.request_part_headers[info.name] = info.headers


class VerifyPeerCert:
    """The peer's authentication certificate chains to an approved CA and is good per its stapled OCSP response."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, ex: Exchange) -> None:
        staple = ex.request_ocsp[1] if len(ex.request_ocsp) > 1 else None
        self.runtime.checker.check_auth_cert(ex.extra["peer_der"], staple, utcnow())


class VerifySignature:
    """The signature covers exactly the parts received; the signer's certificate is good and from an approved CA."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, ex: Exchange) -> None:
        assert ex.request_signature is not None
        now = utcnow()
        # (1) the signature covers every part and the manifest's index (so no descriptive field was changed)
        verified = verify_message(ex.extra["manifest"], ex.request_parts)
        # (2) it is fresh and has not been seen before, nor its request id from this peer
        self.runtime.replay.check(ex.request_signature, verified.signing_time, now)
        peer = ex.peer_server.id.encoded() if ex.peer_server is not None else ""
        pair = f"{peer}|{ex.extra.get('request_id', '')}".encode()
        self.runtime.request_ids.check(pair, verified.signing_time, now)
        # (3) the signer's certificate is good (stapled OCSP) and from an approved CA
        staple = ex.request_ocsp[0] if ex.request_ocsp else None
        ex.extra["signer"] = self.runtime.checker.check_sign_cert(verified.cert.public_bytes(Encoding.DER), staple, now)


class ParseMessage:
    """Parse the now-authentic message part into the protocol's request, and recompute the request hash."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, ex: Exchange) -> None:
        manifest: Manifest = ex.extra["manifest"]
        message = ex.request_parts.get("message")
        if message is None:
            raise InvalidRequest("the message has no 'message' part")
        protocol = manifest.meta.get("protocol")
        if protocol == Protocol.REST:
            if set(ex.request_parts) - {"message", "body"}:
                raise InvalidTransportMessage("a REST message has only 'message' and 'body' parts")
            ex.rest = rest.parse_descriptor(message.getvalue())
            ex.header = ex.rest.header
            body = ex.request_parts.get("body")
            ex.request_hash = rest.request_hash(message.digest, body.digest if body is not None else None)
        elif protocol == Protocol.SOAP:
            if any(name != "message" and not name.startswith("attachment-") for name in ex.request_parts):
                raise InvalidTransportMessage("a SOAP message has only 'message' and 'attachment-N' parts")
            limits = self.runtime.config.limits
            ex.soap = soap.parse_soap(
                ex.request_content_types.get("message", "text/xml"),
                message.getvalue(),
                max_envelope_bytes=limits.max_soap_envelope_bytes,
                max_depth=limits.max_xml_depth,
            )
            ex.header = ex.soap.header
            ex.request_hash = soap.request_hash(ex.soap.envelope)
        else:
            raise InvalidRequest("the manifest names no known protocol")


class BindClient:
    """The signer must be the client's member, and the peer server must host the client."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, ex: Exchange) -> None:
        assert ex.header is not None and ex.conf is not None and ex.peer_server is not None
        signer = ex.extra["signer"]
        if signer != ex.header.client.member:
            raise AccessDenied(f"the request is signed by {signer.encoded()}, not by the client's member")
        self.runtime.binding.check_hosts_client(ex.conf, ex.peer_server, ex.header.client)


class Authorize:
    """The service must be provided here and the policy engine must allow the client (deny by default)."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, ex: Exchange) -> None:
        assert ex.header is not None and ex.conf is not None
        service = ex.header.service
        own = self.runtime.config.id
        if own not in {s.id for s in ex.conf.servers_for(service.provider)}:
            raise UnknownService(f"this security server does not serve {service.provider.encoded()}")
        meta = REST_META if ex.rest is not None else SOAP_META
        if service.service_code in meta:
            ex.extra["metaservice"] = service.service_code
            return  # metaservices answer every registered client, as in X-Road
        if self.runtime.service(service) is None:
            raise UnknownService(f"this security server does not provide {service.encoded()}")
        decision = decide(
            ex.conf,
            self.runtime.local_policy,
            ex.header.client,
            service,
            method=ex.rest.method if ex.rest is not None else None,
            path=(ex.rest.path or "/") if ex.rest is not None else None,
        )
        ex.decision = decision
        if not decision.allowed:
            # Logged first (LogRequest), then refused (Enforce): a denied attempt is evidence too.
            ex.extra["denied"] = AccessDenied(f"Request is not allowed: {service.encoded()}", origin=ORIGIN)


class Enforce:
    """End the exchange if the access decision was a denial (after the attempt was logged)."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, ex: Exchange) -> None:
        denied: KorpuError | None = ex.extra.get("denied")
        if denied is not None:
            decision = ex.decision
            log.info("access denied", rule=getattr(decision, "rule", None), correlation_id=ex.correlation_id)
            raise denied


class CallService:
    """Call the backend (or answer a metaservice); the answer is spooled."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, ex: Exchange) -> None:
        assert ex.header is not None and ex.request_hash is not None
        ex.mark("request_out")
        meta = ex.extra.get("metaservice")
        answer = self._metaservice(ex, meta) if meta is not None else await self._backend(ex)
        ex.mark("response_in")
        ex.extra["answer"] = answer

    async def _backend(self, ex: Exchange) -> BackendResponse:
        assert ex.header is not None and ex.request_hash is not None
        provided = self.runtime.service(ex.header.service)
        assert provided is not None
        body = ex.request_parts.get("body") or ex.request_parts["message"]
        attachments = tuple(
            (_content_id(ex.request_part_headers.get(name, ())), ex.request_content_types[name], spool)
            for name, spool in ex.request_parts.items()
            if name.startswith("attachment-")
        )
        request = BackendRequest(
            protocol=ex.header.protocol,
            header=ex.header,
            method=ex.rest.method if ex.rest is not None else "POST",
            path=ex.rest.path if ex.rest is not None else "",
            query=ex.rest.query if ex.rest is not None else "",
            headers=ex.rest.headers if ex.rest is not None else (),
            content_type=(ex.rest.content_type if ex.rest is not None else ex.request_content_types["message"])
            if "body" in ex.request_parts or ex.rest is None
            else None,
            body=body if (ex.rest is None or "body" in ex.request_parts) else Spool.from_bytes(b""),
            request_hash=ex.request_hash,
            attachments=attachments,
        )
        return await provided.backend.call(request, memory_limit=self.runtime.config.limits.memory_spool_bytes)

    def _metaservice(self, ex: Exchange, name: str) -> BackendResponse:
        assert ex.header is not None and ex.conf is not None
        provider = ex.header.service.provider
        provided = self.runtime.services_of(provider)
        if name == "allowedMethods":
            allowed = set(allowed_services(ex.conf, self.runtime.local_policy, ex.header.client, provider))
            provided = [p for p in provided if p.id in allowed or p.id.without_version() in allowed]
        if ex.soap is not None:
            if name == "getWsdl":
                wanted = metaservices.parse_get_wsdl_request(ex.soap)
                match = self.runtime.service(wanted)
                # A REST service's description is an OpenAPI document, never a WSDL.
                if match is None or match.description is None or match.config.type != "SOAP":
                    raise NotFound(f"no WSDL is published for {wanted.encoded()}")
                content_type, data = metaservices.render_get_wsdl_response(ex.soap, match.description)
                return BackendResponse(200, (), content_type, Spool.from_bytes(data))
            services = [p.id for p in provided if p.config.type == "SOAP"]
            render = metaservices.render_list_methods if name == "listMethods" else metaservices.render_allowed_methods
            return BackendResponse(200, (), "text/xml; charset=UTF-8", Spool.from_bytes(render(ex.soap, services)))
        assert ex.rest is not None
        if name == "getOpenAPI":
            code = (parse_qs(ex.rest.query).get("serviceCode") or [""])[0]
            # A SOAP service's description is a WSDL, never an OpenAPI document.
            match = next((p for p in provided if p.id.service_code == code and p.config.type == "REST"), None)
            if match is None or match.description is None:
                raise NotFound(f"no OpenAPI description is published for service {code!r}")
            content_type = "application/json" if match.description.lstrip().startswith(b"{") else "text/yaml"
            return BackendResponse(200, (), content_type, Spool.from_bytes(match.description))
        infos = [
            metaservices.RestServiceInfo(p.id, "OPENAPI" if p.description is not None else "REST")
            for p in provided
            if p.config.type == "REST"
        ]
        return BackendResponse(
            200, (), "application/json", Spool.from_bytes(metaservices.render_rest_methods_json(infos))
        )


def _content_id(headers: Sequence[tuple[str, str]]) -> str | None:
    for name, value in headers:
        if name.lower() == "content-id":
            return value.strip().strip("<>")
    return None


class SignResponse:
    """Turn the answer into response parts bound to the request by its hash, sign them and staple OCSP."""

    def __init__(self, runtime: ServerRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, ex: Exchange) -> None:
        assert ex.header is not None and ex.request_hash is not None
        answer: BackendResponse = ex.extra["answer"]
        if ex.rest is not None:
            headers = list(answer.headers)
            if answer.content_type is not None:
                headers.append(("Content-Type", answer.content_type))
            try:
                response = rest.RestResponse.from_http(answer.status, headers)
            except KorpuError as exc:
                answer.body.close()
                raise ServiceFailed(f"the service's answer is not acceptable: {exc.message}") from None
            ex.rest_response = response
            ex.response_parts["message"] = Spool.from_bytes(rest.response_descriptor(response, ex.request_hash))
            ex.response_content_types["message"] = "application/json"
            if answer.body.size:
                ex.response_parts["body"] = answer.body
                ex.response_content_types["body"] = answer.content_type or "application/octet-stream"
            else:
                answer.body.close()
        else:
            assert ex.soap is not None
            data = answer.body.getvalue()
            answer.body.close()
            if not 200 <= answer.status < 300 and answer.status != 500:
                raise ServiceFailed(f"the service answered HTTP {answer.status}")
            response_msg = soap.parse_soap_response(answer.content_type or "", data, origin=ORIGIN)
            if response_msg.is_fault and response_msg.header is None:
                # A technical fault has no X-Road header to carry requestHash: bind it with a signed part instead.
                envelope = response_msg.envelope
                ex.response_parts["request-hash"] = Spool.from_bytes(ex.request_hash.encode("ascii"))
                ex.response_content_types["request-hash"] = "text/plain"
            else:
                soap.check_response(ex.soap, response_msg, origin=ORIGIN)
                envelope = soap.add_request_hash(response_msg.envelope, ex.request_hash)
            ex.response_parts["message"] = Spool.from_bytes(envelope)
            ex.response_content_types["message"] = "text/xml; charset=UTF-8"
            for n, att in enumerate(response_msg.attachments, start=1):
                name = f"attachment-{n}"
                ex.response_parts[name] = Spool.from_bytes(att.data)
                ex.response_content_types[name] = att.content_type
                part_headers = list(att.headers)
                if att.content_id is not None:
                    part_headers.insert(0, ("Content-ID", f"<{att.content_id}>"))
                ex.response_part_headers[name] = tuple(part_headers)
        if "request-hash" in ex.response_parts:
            ex.response_parts["request-hash"] = ex.response_parts.pop("request-hash")  # last, after attachments
        creds = self.runtime.credentials()
        infos = part_infos(ex.response_parts, ex.response_content_types, ex.response_part_headers)
        meta = {"protocol": str(ex.header.protocol), "requestHash": ex.request_hash}
        ex.extra["response_manifest"] = (infos, meta)
        ex.response_signature = sign_message(creds.signer, infos, meta, ex.response_parts)
        ex.response_ocsp = (creds.ocsp.response_for("sign"), creds.ocsp.response_for(AUTH))


def server_stages(runtime: ServerRuntime) -> list[Stage]:
    """The server proxy's side of an exchange, in order."""
    return [
        CheckGlobalConf(runtime),
        CheckLog(runtime),
        IdentifyPeer(runtime),
        ReadMessage(runtime),
        VerifyPeerCert(runtime),
        VerifySignature(runtime),
        ParseMessage(runtime),
        BindClient(runtime),
        Authorize(runtime),
        LogRequest(runtime, SIDE),
        Enforce(runtime),
        CallService(runtime),
        SignResponse(runtime),
        LogResponse(runtime, SIDE),
    ]


# HTTP edge -----------------------------------------------------------------------------------------------------

RUNTIME: web.AppKey[ServerRuntime] = web.AppKey("runtime", ServerRuntime)
STAGES: web.AppKey[Sequence[Stage]] = web.AppKey("stages")


def _fault_response(ex: Exchange) -> web.Response:
    error = ex.fault
    assert error is not None
    log.info("exchange refused", fault=error.fault_code, correlation_id=ex.correlation_id)
    status, headers, body = rest.render_rest_error(error, ex.correlation_id)
    return web.Response(status=status, headers=headers, body=body)


async def exchange_handler(request: web.Request) -> web.StreamResponse:
    """``POST /korpu/v1/exchange``: one request from another security server."""
    ex = Exchange(origin=ORIGIN)
    ex.extra["request"] = request
    try:
        await run_stages(request.app[STAGES], ex)
        if ex.fault is not None:
            await log_failure(ex, request.app[RUNTIME], SIDE)
            return _fault_response(ex)
        assert ex.response_signature is not None
        infos, meta = ex.extra["response_manifest"]
        manifest = Manifest(parts=infos, signature=ex.response_signature, ocsp=ex.response_ocsp, meta=meta)
        manifest_bytes = manifest.encode()
        response = web.StreamResponse(status=200, headers=message_headers(manifest_bytes, manifest))
        await response.prepare(request)
        async for chunk in iter_message(manifest, ex.response_parts):
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        ex.mark("response_out")
        ex.close()


async def ocsp_handler(request: web.Request) -> web.Response:
    """``GET /korpu/v1/ocsp``: this server's current OCSP response for its authentication certificate."""
    runtime = request.app[RUNTIME]
    try:
        der = runtime.credentials().ocsp.response_for(AUTH)
    except KorpuError as exc:
        exc.origin = ORIGIN
        status, headers, body = rest.render_rest_error(exc)
        return web.Response(status=status, headers=headers, body=body)
    return web.Response(body=der, content_type="application/ocsp-response")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _unexpected(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        error = NotFound(f"no such endpoint: {request.path[:100]}") if exc.status == 404 else None
        if error is None:
            raise
        error.origin = ORIGIN
        return web.Response(
            status=404,
            body=json.dumps(error.to_dict()).encode(),
            content_type="application/json",
            headers={"X-Road-Error": error.fault_code},
        )


def server_proxy_app(runtime: ServerRuntime) -> web.Application:
    """The server proxy as an aiohttp application (served over mutual TLS)."""
    app = web.Application(middlewares=[_unexpected], client_max_size=runtime.config.limits.max_body_bytes or 1 << 62)
    app[RUNTIME] = runtime
    app[STAGES] = server_stages(runtime)
    app.router.add_post("/korpu/v1/exchange", exchange_handler)
    app.router.add_get("/korpu/v1/ocsp", ocsp_handler)
    return app
