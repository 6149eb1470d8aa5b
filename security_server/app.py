"""The security server process: admin API, client proxy, server proxy, and their background tasks.

One :class:`~security_server.runtime.ServerRuntime` is shared by three kinds of listener:

* the **client proxy** for local information systems: plain HTTP and/or HTTPS (X-Road's 8080/8443);
* the **server proxy** for other security servers: HTTPS with mutual TLS on authentication certificates;
* the **admin API** on loopback: ``/healthz`` and ``/openapi.json`` (open), ``/api/v1/status`` (an ``observer``
  or ``admin`` key) and the auditor's ``/api/v1/audit/…`` (:mod:`security_server.audit_api`); keys and roles are
  :mod:`security_server.adminkeys`.

Background tasks — global configuration refresh, registration follow-up, own OCSP responses — start and stop with
the admin application's cleanup context; the HTTP client sessions with the runtime's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from bridge.errors import KorpuError, NotFound, render_json
from bridge.fsutil import write_atomic
from bridge.logsetup import get_logger
from security_server.adminkeys import ADMIN_KEYS, LEGACY_KEY_FILE, AdminKeys, AdminRole, require
from security_server.adminkeys import hash_secret as hash_admin_key
from security_server.audit_api import add_audit_routes, add_openapi_route
from security_server.clientproxy import client_proxy_app
from security_server.config import Endpoint
from security_server.registration import follow_registration
from security_server.runtime import ServerRuntime
from security_server.serverproxy import server_proxy_app

__all__ = ["ADMIN_KEY_FILE", "RunningServer", "create_admin_app", "hash_admin_key", "start_server"]

log = get_logger(__name__)

# The key `korpu ss init` makes; adminkeys treats it as key "init" with role admin, beside admin-keys.json.
ADMIN_KEY_FILE = LEGACY_KEY_FILE


def status_report(runtime: ServerRuntime) -> dict[str, Any]:
    """A JSON-ready summary for operators."""
    conf_status = runtime.confclient.status()
    listed = False
    with contextlib.suppress(KorpuError):
        listed = runtime.conf().server(runtime.config.id) is not None
    certificates = {}
    for label in ("auth", "sign"):
        cert = runtime.token.certificate(label)
        certificates[label] = (
            None
            if cert is None
            else {
                "serial": format(cert.serial_number, "x"),
                "subject": cert.subject.rfc4514_string(),
                "not_after": cert.not_valid_after_utc.isoformat(),
            }
        )
    ocsp: dict[str, Any] | None = None
    creds = runtime._credentials
    if creds is not None:
        ocsp = creds.ocsp.status()
    return {
        "server_id": runtime.config.server_id,
        "registration": runtime.registration.to_dict(),
        "certificates": certificates,
        "ocsp": ocsp,
        "globalconf": conf_status,
        "listed_in_globalconf": listed,
        "peers": runtime.router.snapshot(),
        "services": [p.id.encoded() for p in runtime.services.values()],
    }


RUNTIME: web.AppKey[ServerRuntime] = web.AppKey("admin_runtime", ServerRuntime)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every fault as X-Road's JSON error; never let a traceback reach the caller."""
    try:
        return await handler(request)
    except KorpuError as exc:
        return _error_response(exc)
    except web.HTTPNotFound:
        return _error_response(NotFound(f"no such resource: {request.path[:100]}"))
    except web.HTTPException:
        raise
    except Exception:
        correlation = uuid.uuid4().hex[:12]
        log.exception("admin API failure", correlation_id=correlation, path=request.path)
        body = {"type": "Server.InternalError", "message": "internal error", "detail": correlation}
        return web.json_response(body, status=500)


def _error_response(exc: KorpuError) -> web.Response:
    return web.Response(
        body=render_json(exc),
        status=exc.http_status,
        content_type="application/json",
        headers={"X-Road-Error": exc.fault_code},
    )


async def healthz(request: web.Request) -> web.Response:
    """Readiness: 200 while global configuration is valid, else the fault that traffic would get."""
    runtime = request.app[RUNTIME]
    # The same O(1) check every exchange makes: raises OutdatedGlobalConf / GlobalConfUnavailable.
    conf = runtime.conf()
    return web.json_response({"status": "ok", "globalconf_version": conf.version})


async def status(request: web.Request) -> web.Response:
    """Operator status: registration, certificates, OCSP, global configuration, peers, services."""
    # Observers (monitoring) and admins; not auditors, whose keys open the message log and nothing else.
    require(request, AdminRole.OBSERVER)
    return web.json_response(status_report(request.app[RUNTIME]))


def create_admin_app(runtime: ServerRuntime) -> web.Application:
    """The admin API application; global configuration and registration follow-up run with it."""
    app = web.Application(middlewares=[_errors], client_max_size=64 * 1024)
    app[RUNTIME] = runtime
    app[ADMIN_KEYS] = AdminKeys(runtime.state_dir, legacy_hash=runtime.admin_key_hash)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/v1/status", status)
    add_audit_routes(app, runtime)
    add_openapi_route(app)
    app.cleanup_ctx.append(_background)
    return app


async def _background(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    tasks = [asyncio.create_task(runtime.confclient.run(), name="globalconf-refresh")]
    if not runtime.registration.complete:
        tasks.append(
            asyncio.create_task(
                follow_registration(runtime.state_dir, runtime.token, runtime.registration, runtime.confclient),
                name="registration-follow-up",
            )
        )
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


# The process ---------------------------------------------------------------------------------------------------


@dataclass
class RunningServer:
    """The listeners of a started security server and the URLs they got."""

    runtime: ServerRuntime
    runners: list[web.AppRunner]
    urls: dict[str, str]

    async def stop(self) -> None:
        """Stop every listener (background tasks end with them); calling it again does nothing."""
        runners, self.runners = self.runners, []
        for runner in reversed(runners):
            await runner.cleanup()


async def _listen(
    app: web.Application, endpoint: Endpoint, ssl_context: ssl.SSLContext | None, **runner_args: Any
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, **runner_args)
    await runner.setup()
    site = web.TCPSite(runner, endpoint.host, endpoint.port, ssl_context=ssl_context, backlog=1024)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    return runner, int(sockets[0].getsockname()[1]) if sockets else endpoint.port


class _LiveServerContext:
    """An SSLContext stand-in whose ``wrap_bio`` uses the runtime's current server context.

    The server proxy's trust store is the set of approved CAs in global configuration, which can change while the
    listener runs; asyncio calls ``wrap_bio`` per connection, so delegating there picks up a new CA set for new
    connections without restarting the listener.
    """

    def __init__(self, runtime: ServerRuntime) -> None:
        self._runtime = runtime

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        return self._runtime.server_ssl().wrap_bio(*args, **kwargs)


async def start_server(runtime: ServerRuntime, state_dir: Path) -> RunningServer:
    """Start the admin API, client proxy and server proxy listeners; write ``runtime.json``."""
    listen = runtime.config.listen
    limits = runtime.config.limits
    header_caps = {"max_line_size": limits.max_header_bytes, "max_field_size": limits.max_header_bytes}
    runners: list[web.AppRunner] = []
    urls: dict[str, str] = {}
    try:
        admin = create_admin_app(runtime)
        admin.cleanup_ctx.append(runtime.sessions)
        runner, port = await _listen(admin, listen.admin, None)
        runners.append(runner)
        urls["admin"] = f"http://{listen.admin.host}:{port}"
        await runtime.warm_up()

        proxy = server_proxy_app(runtime)
        live = _LiveServerContext(runtime)
        runner, port = await _listen(proxy, listen.server_proxy, live, **header_caps)  # type: ignore[arg-type]
        runners.append(runner)
        urls["server_proxy"] = f"https://{listen.server_proxy.host}:{port}"

        if listen.client_http is not None:
            runner, port = await _listen(client_proxy_app(runtime), listen.client_http, None, **header_caps)
            runners.append(runner)
            urls["client_http"] = f"http://{listen.client_http.host}:{port}"
            runtime.client_proxy_url = urls["client_http"]
        if listen.client_https is not None:
            context = runtime.internal_tls_context()
            runner, port = await _listen(client_proxy_app(runtime), listen.client_https, context, **header_caps)
            runners.append(runner)
            urls["client_https"] = f"https://{listen.client_https.host}:{port}"
    except BaseException:
        for runner in reversed(runners):
            await runner.cleanup()
        raise
    write_atomic(state_dir / "runtime.json", json.dumps(urls, indent=2).encode())
    return RunningServer(runtime, runners, urls)


def internal_cert_pem(runtime: ServerRuntime) -> bytes:
    """The client proxy's HTTPS certificate (PEM), for information systems to trust."""
    cert = runtime.token.certificate("internal")
    return b"" if cert is None else cert.public_bytes(serialization.Encoding.PEM)
