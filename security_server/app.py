"""The security server process: global-configuration client, registration follow-up and the admin API.

Runtime objects are created in ``cleanup_ctx`` and held under typed :class:`web.AppKey` keys.  The message
proxies (client proxy for local information systems, server proxy for other security servers) will be added here
as further listeners sharing the same :class:`ServerState`; every exchange will start with
``state.confclient.current()``, which refuses with ``OutdatedGlobalConf`` once the newest good copy expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from bridge.anchor import ConfigurationAnchor
from bridge.errors import InvalidApiKey, KorpuError, MissingApiKey, NotFound, render_json
from bridge.logsetup import get_logger
from bridge.pki.token import SoftwareToken
from security_server.confclient import GlobalConfClient
from security_server.config import ServerConfig
from security_server.registration import RegistrationState, follow_registration

__all__ = ["ADMIN_KEY_FILE", "ServerState", "create_admin_app", "hash_admin_key"]

log = get_logger(__name__)

ADMIN_KEY_FILE = "admin-api-key.sha256"


def hash_admin_key(secret: str) -> str:
    """The hex SHA-256 under which an admin API key is stored (the secret itself never is)."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class ServerState:
    """Everything a running security server holds."""

    state_dir: Path
    config: ServerConfig
    token: SoftwareToken
    confclient: GlobalConfClient
    registration: RegistrationState
    admin_key_hash: str

    def status(self) -> dict[str, Any]:
        """A JSON-ready summary for operators."""
        conf_status = self.confclient.status()
        listed = False
        try:
            conf = self.confclient.current()
            listed = conf.server(self.config.id) is not None
        except KorpuError:
            pass
        certificates = {}
        for label in ("auth", "sign"):
            cert = self.token.certificate(label)
            certificates[label] = (
                None
                if cert is None
                else {
                    "serial": format(cert.serial_number, "x"),
                    "subject": cert.subject.rfc4514_string(),
                    "not_after": cert.not_valid_after_utc.isoformat(),
                }
            )
        return {
            "server_id": self.config.server_id,
            "registration": self.registration.to_dict(),
            "certificates": certificates,
            "globalconf": conf_status,
            "listed_in_globalconf": listed,
        }


STATE: web.AppKey[ServerState] = web.AppKey("state", ServerState)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every fault as X-Road's JSON error; never let a traceback reach the caller."""
    try:
        return await handler(request)
    except KorpuError as exc:
        return _error_response(exc)
    except web.HTTPNotFound:
        return _error_response(NotFound(f"no such resource: {request.path}"))
    except web.HTTPException:
        raise
    except Exception:
        correlation = uuid.uuid4().hex[:12]
        log.exception("admin API failure", correlation_id=correlation, path=request.path)
        body = {"type": "Server.InternalError", "message": "internal error", "detail": correlation}
        return web.json_response(body, status=500)


def _error_response(exc: KorpuError) -> web.Response:
    return web.Response(
        body=render_json(exc), status=exc.http_status, content_type="application/json", headers=_error_headers(exc)
    )


def _error_headers(exc: KorpuError) -> dict[str, str]:
    return {"X-Road-Error": exc.fault_code}


def _require_admin(request: web.Request) -> None:
    state = request.app[STATE]
    secret = request.headers.get("X-API-Key")
    if secret is None:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            secret = auth[len("Bearer ") :]
    if not secret:
        raise MissingApiKey("this endpoint needs the admin API key (X-API-Key header)")
    if not hmac.compare_digest(hash_admin_key(secret), state.admin_key_hash):
        raise InvalidApiKey("the API key is not valid for this security server")


async def healthz(request: web.Request) -> web.Response:
    """Liveness and readiness: 200 while global configuration is valid, else the fault that traffic would get."""
    state = request.app[STATE]
    # The same O(1) check every exchange will make: raises OutdatedGlobalConf / GlobalConfUnavailable.
    conf = state.confclient.current()
    return web.json_response({"status": "ok", "globalconf_version": conf.version})


async def status(request: web.Request) -> web.Response:
    """Operator status: registration, certificates, global configuration."""
    _require_admin(request)
    return web.json_response(request.app[STATE].status())


def create_admin_app(state: ServerState) -> web.Application:
    """The admin API application for ``state`` (background tasks start with the app)."""
    app = web.Application(middlewares=[_errors], client_max_size=64 * 1024)
    app[STATE] = state
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/v1/status", status)
    app.cleanup_ctx.append(_background)
    return app


async def _background(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    tasks = [asyncio.create_task(state.confclient.run(), name="globalconf-refresh")]
    if not state.registration.complete:
        tasks.append(
            asyncio.create_task(
                follow_registration(state.state_dir, state.token, state.registration, state.confclient),
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


def load_state(state_dir: Path, config: ServerConfig, pin: str) -> ServerState:
    """Open a security server's state directory (token with ``pin``, anchor, cached configuration)."""
    token = SoftwareToken.open(state_dir / "token", pin)
    anchor = ConfigurationAnchor.load(config.anchor_path(state_dir))
    kwargs: dict[str, Any] = {}
    if config.refresh_seconds is not None:
        kwargs["refresh_interval_s"] = config.refresh_seconds
    confclient = GlobalConfClient(anchor, state_dir / "cache", **kwargs)
    confclient.load_cached()
    registration = RegistrationState.load(state_dir)
    admin_key_hash = (state_dir / ADMIN_KEY_FILE).read_text(encoding="utf-8").strip()
    return ServerState(state_dir, config, token, confclient, registration, admin_key_hash)


def write_runtime(state_dir: Path, admin_url: str) -> None:
    """Record where the running server listens (ports may have been chosen by the OS)."""
    from bridge.fsutil import write_atomic

    write_atomic(state_dir / "runtime.json", json.dumps({"admin_url": admin_url}, indent=2).encode())
