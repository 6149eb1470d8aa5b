"""``korpu demo``: a whole federation's trust plane on loopback, narrated.

It runs, in one process and on SQLite, exactly what the README's walkthrough does by hand: a central server is
initialised and served; two agencies' security servers are initialised, verify global configuration against the
anchor and submit registration requests; the registration officer approves them through the management API;
the security servers install their certificates and see both servers in the next global configuration; the
federation CA's OCSP responder vouches for their certificates.  It ends with exit code 0 only if every step
holds.  (Message exchange joins the demo with the client and server proxies.)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import aiohttp
from aiohttp import web
from cryptography import x509

from bridge.anchor import ConfigurationAnchor
from bridge.errors import KorpuError
from bridge.identifiers import SecurityServerId
from bridge.pki.ocsp import make_ocsp_request, verify_ocsp_response
from bridge.pki.token import SoftwareToken
from catalog.app import CentralServer
from catalog.cli import api_call, init_central
from catalog.config import GlobalConfOptions, Listen, load_central_config
from security_server.cli import init_server
from security_server.confclient import GlobalConfClient
from security_server.registration import RegistrationState, poll_once

__all__ = ["free_port", "run_demo"]

T = TypeVar("T")

AGENCIES = (
    ("AZ/GOV/1400057421/ss-population", "Ministry of Digital Development", ("population",)),
    ("AZ/COM/9900001111/ss-bank", "Kapital Bank", ("loans",)),
)


class DemoFailed(Exception):
    """A step of the demo did not show what it should."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for URLs that must be known before the server starts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _say(text: str) -> None:
    print(text, flush=True)


async def _step(title: str, action: Callable[[], Awaitable[T]]) -> T:
    started = time.perf_counter()
    result = await action()
    _say(f"  ✓ {title} ({(time.perf_counter() - started) * 1000:.0f} ms)")
    return result


async def _demo(state: Path) -> None:
    pin = secrets.token_urlsafe(12)
    port = free_port()
    central_dir = state / "central"

    _say("1. Central server")
    admin_key = await _step(
        "initialised: federation CA, OCSP responder, TSA, catalog (SQLite), configuration anchor",
        lambda: asyncio.to_thread(
            init_central,
            central_dir,
            instance="AZ",
            public_url=f"http://127.0.0.1:{port}",
            pin=pin,
            listen=Listen(port=port),
            globalconf=GlobalConfOptions(expiry_seconds=600, regenerate_seconds=60),
        ),
    )
    config = load_central_config(central_dir)
    server = CentralServer.open(central_dir, config, pin)
    runner = web.AppRunner(server.create_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    anchor_file = central_dir / "anchor.xml"
    _say(f"  ✓ serving on {config.base_url}; anchor SHA-256 {ConfigurationAnchor.load(anchor_file).sha256[:16]}…")
    try:
        _say("2. Security servers register")
        regs = [await _register(state, anchor_file, pin, *agency) for agency in AGENCIES]

        _say("3. Registration officer approves")
        for _dir, server_id, reg in regs:
            path = f"/api/v1/registration-requests/{reg.request_id}/approve"
            await _step(
                f"approved {reg.request_id[:8]}… for {server_id.server_code}: CA issued auth + signing certificates",
                partial(api_call, config.base_url, admin_key, "POST", path, {}),
            )

        # The publisher regenerates on every catalog change in the background; wait for that version here.
        published = await server.publisher.regenerate()
        _say(f"  ✓ global configuration v{published.version} signed and published")

        _say("4. Security servers pick up certificates and the new global configuration")
        for ss_dir, server_id, reg in regs:
            await _pick_up(ss_dir, server_id, reg, pin, config.effective_ocsp_url, server.ca.issuing_cert)
    finally:
        await runner.cleanup()
    _say("Done: the trust plane works end to end. Message exchange between the servers comes with the proxies.")


async def _register(
    state: Path, anchor_file: Path, pin: str, sid: str, name: str, clients: tuple[str, ...]
) -> tuple[Path, SecurityServerId, RegistrationState]:
    server_id = SecurityServerId.parse(sid)
    ss_dir = state / server_id.server_code
    reg, _admin_key = await _step(
        f"{server_id.path()} ({name}): keys, verified global conf, request submitted",
        partial(
            init_server,
            ss_dir,
            anchor_file=anchor_file,
            server_id=server_id,
            owner_name=name,
            address=f"127.0.0.1:{free_port()}",
            clients=list(clients),
            pin=pin,
        ),
    )
    return ss_dir, server_id, reg


async def _pick_up(
    ss_dir: Path, server_id: SecurityServerId, reg: RegistrationState, pin: str, ocsp_url: str, issuer: x509.Certificate
) -> None:
    token = await asyncio.to_thread(SoftwareToken.open, ss_dir / "token", pin)
    anchor = await asyncio.to_thread(ConfigurationAnchor.load, ss_dir / "anchor.xml")
    conf = await GlobalConfClient(anchor, ss_dir / "cache").refresh()
    await _step(
        f"{server_id.server_code}: certificates checked (keys, identity, approved CA) and installed",
        partial(poll_once, ss_dir, token, reg, conf),
    )
    listed = sorted(s.id.server_code for s in conf.servers)
    if conf.server(server_id) is None or len(listed) != len(AGENCIES):
        raise DemoFailed(f"global configuration v{conf.version} lists {listed}, expected both servers")
    expires = (conf.expires_at - dt.datetime.now(dt.UTC)).total_seconds()
    _say(f"  ✓ global configuration v{conf.version} verified: servers {', '.join(listed)}; expires in {expires:.0f} s")
    cert = token.certificate("auth")
    if cert is None:
        raise DemoFailed("no authentication certificate was installed")
    await _check_ocsp(ocsp_url, cert, issuer, server_id)


async def _check_ocsp(url: str, cert: x509.Certificate, issuer: x509.Certificate, server_id: SecurityServerId) -> None:
    request = make_ocsp_request(cert, issuer)
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=request, headers={"Content-Type": "application/ocsp-request"}) as resp,
    ):
        der = await resp.read()
    status = verify_ocsp_response(
        der, cert, issuer, trusted_responder_certs=(), now=dt.datetime.now(dt.UTC), max_age=dt.timedelta(hours=1)
    )
    _say(f"  ✓ OCSP responder: {server_id.server_code}'s authentication certificate is {status.status.name.lower()}")


def run_demo(state: Path | None) -> int:
    """Run the demo in ``state`` (default: a temporary directory); returns the process exit code."""
    started = time.perf_counter()
    try:
        if state is None:
            with tempfile.TemporaryDirectory(prefix="korpu-demo-") as tmp:
                asyncio.run(_demo(Path(tmp)))
        else:
            asyncio.run(_demo(state))
    except KorpuError as exc:
        _say(f"  ✗ {exc.fault_code}: {exc.message}")
        return 1
    except DemoFailed as exc:
        _say(f"  ✗ {exc}")
        return 1
    _say(f"({time.perf_counter() - started:.1f} s)")
    return 0
