"""A whole federation on loopback, in one process: what ``korpu up``, the demo and the functional tests run.

:func:`start_federation` initialises and starts a central server and any number of security servers with the same
code paths an operator uses (``init_central``, ``init_server``, the management API, ``ServerRuntime``), registers
their services and access rights in the catalog, and returns handles with every URL.  Everything binds to
127.0.0.1 with ports the OS picks (except the central server, whose URL must be known before it starts).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from bridge.config import dump
from bridge.fsutil import write_atomic
from bridge.identifiers import SecurityServerId, ServiceId
from catalog.app import CentralServer
from catalog.cli import api_call, init_central
from catalog.config import GlobalConfOptions, Listen, load_central_config
from security_server.app import RunningServer, start_server
from security_server.cli import init_server
from security_server.config import (
    CONFIG_NAME,
    ClientConfig,
    Endpoint,
    Listeners,
    PersonField,
    ServiceConfig,
    load_server_config,
)
from security_server.registration import RegistrationState, poll_once
from security_server.runtime import ServerRuntime

__all__ = ["AgencySpec", "Federation", "ServiceSpec", "free_port", "start_federation"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for URLs that must be known before the server starts).

    Chosen below the kernel's ephemeral range where there is one: a port from ``bind(0)`` comes from that range,
    which outgoing connections also draw from, so between this call and the server's own bind another
    connection could take it (seen in CI as "address already in use").
    """
    import random
    import socket

    low = _ephemeral_low()
    candidates = random.sample(range(20_000, low), min(64, low - 20_000)) if low > 20_000 else []
    for port in [*candidates, 0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free TCP port on 127.0.0.1")


def _ephemeral_low() -> int:
    """The first port of Linux's ephemeral range (32768 elsewhere, the common default)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


@dataclass(frozen=True)
class ServiceSpec:
    """A service an agency provides, and who may call it (encoded subjects, optional REST method/path)."""

    subsystem: str
    code: str
    type: str = "REST"
    adapter: str | None = "test-service"
    url: str | None = None
    title: str = ""
    grants: tuple[tuple[str, str | None, str | None], ...] = ()
    description: bytes | None = None
    person_fields: tuple[PersonField, ...] = ()
    #: Options for the adapter (``services[].options`` in server.yaml), e.g. ``{"database": "sqlite:///…"}``.
    options: dict[str, str] | None = None


@dataclass(frozen=True)
class AgencySpec:
    """One security server: identity, its client subsystems and the services it provides."""

    server_id: str
    name: str
    clients: tuple[str, ...] = ()
    services: tuple[ServiceSpec, ...] = ()


@dataclass
class Federation:
    """A running federation and what it takes to talk to it."""

    state: Path
    pin: str = field(repr=False)
    central: CentralServer
    central_runner: web.AppRunner
    central_url: str
    admin_key: str = field(repr=False)
    servers: dict[str, RunningServer] = field(default_factory=dict)
    admin_keys: dict[str, str] = field(default_factory=dict, repr=False)

    def server(self, code: str) -> RunningServer:
        """The running security server whose server code is ``code``."""
        return self.servers[code]

    async def api(self, method: str, path: str, payload: Any = None) -> dict[str, Any]:
        """Call the central server's management API as its administrator."""
        return await api_call(self.central_url, self.admin_key, method, path, payload)

    async def publish(self) -> int:
        """Regenerate global configuration now and have every security server download it; returns the version."""
        published = await self.central.publisher.regenerate()
        for running in self.servers.values():
            await running.runtime.confclient.refresh()
        return published.version

    async def stop(self) -> None:
        """Stop every security server, then the central server."""
        for running in self.servers.values():
            await running.stop()
        await self.central_runner.cleanup()


def _service_config(spec: ServiceSpec, state_dir: Path) -> ServiceConfig:
    description = None
    if spec.description is not None:
        description = f"descriptions/{spec.subsystem}.{spec.code}"
        write_atomic(state_dir / description, spec.description)
    return ServiceConfig(
        subsystem=spec.subsystem,
        code=spec.code,
        type=spec.type,  # type: ignore[arg-type]
        url=spec.url,
        adapter=spec.adapter if spec.url is None else None,
        description=description,
        person_fields=spec.person_fields,
        options=dict(spec.options) if spec.options is not None and spec.url is None else None,
    )


async def start_federation(
    state: Path,
    agencies: tuple[AgencySpec, ...],
    *,
    instance: str = "AZ",
    pin: str | None = None,
    expiry_seconds: int = 600,
) -> Federation:
    """Initialise and start a central server and the given security servers under ``state``."""
    pin = pin or secrets.token_urlsafe(12)
    port = free_port()
    central_dir = state / "central"
    admin_key = await asyncio.to_thread(
        init_central,
        central_dir,
        instance=instance,
        public_url=f"http://127.0.0.1:{port}",
        pin=pin,
        listen=Listen(port=port),
        globalconf=GlobalConfOptions(expiry_seconds=expiry_seconds, regenerate_seconds=60),
    )
    config = load_central_config(central_dir)
    central = await asyncio.to_thread(CentralServer.open, central_dir, config, pin)
    runner = web.AppRunner(central.create_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    federation = Federation(state, pin, central, runner, config.base_url, admin_key)
    try:
        await _add_agencies(federation, agencies)
    except BaseException:
        await federation.stop()
        raise
    return federation


async def _add_agencies(federation: Federation, agencies: tuple[AgencySpec, ...]) -> None:
    anchor = federation.state / "central" / "anchor.xml"
    registrations: list[tuple[Path, SecurityServerId, RegistrationState]] = []
    # (1) every server initialises and submits its registration request
    for agency in agencies:
        server_id = SecurityServerId.parse(agency.server_id)
        ss_dir = federation.state / server_id.server_code
        proxy_port = free_port()
        reg, key = await init_server(
            ss_dir,
            anchor_file=anchor,
            server_id=server_id,
            owner_name=agency.name,
            address=f"127.0.0.1:{proxy_port}",
            clients=list(agency.clients),
            pin=federation.pin,
        )
        federation.admin_keys[server_id.server_code] = key
        config = load_server_config(ss_dir)
        config = dataclasses.replace(
            config,
            clients=tuple(ClientConfig(code=c) for c in agency.clients),
            services=tuple(_service_config(s, ss_dir) for s in agency.services),
            listen=Listeners(
                client_http=Endpoint(port=0),
                server_proxy=Endpoint(port=proxy_port),
                admin=Endpoint(port=0),
            ),
        )
        write_atomic(ss_dir / CONFIG_NAME, dump(config, header="Körpü security server (sandbox)").encode())
        registrations.append((ss_dir, server_id, reg))
    # (2) the registration officer approves them; the catalog learns the services and access rights
    for _dir, _sid, reg in registrations:
        await federation.api("POST", f"/api/v1/registration-requests/{reg.request_id}/approve", {"comment": "sandbox"})
    for agency in agencies:
        owner = SecurityServerId.parse(agency.server_id).owner
        for spec in agency.services:
            service = ServiceId(owner.subsystem(spec.subsystem), spec.code)
            await federation.api(
                "POST",
                "/api/v1/services",
                {"id": service.path(), "type": spec.type, "title": spec.title or spec.code},
            )
            for subject, method, path in spec.grants:
                grant: dict[str, Any] = {"subject": subject, "service": service.path()}
                if method is not None:
                    grant["method"] = method
                if path is not None:
                    grant["path"] = path
                await federation.api("POST", "/api/v1/access-rights", grant)
    await federation.central.publisher.regenerate()
    # (3) each server installs its certificates, loads global configuration and starts listening
    for ss_dir, server_id, reg in registrations:
        config = load_server_config(ss_dir)
        runtime = await asyncio.to_thread(ServerRuntime.open, ss_dir, config, federation.pin)
        conf = await runtime.confclient.refresh()
        await poll_once(ss_dir, runtime.token, reg, conf)
        runtime.registration = reg
        federation.servers[server_id.server_code] = await start_server(runtime, ss_dir)


def sandbox_json(federation: Federation) -> dict[str, Any]:
    """What ``korpu up`` writes to ``sandbox.json``: every URL, path, identifier and key a newcomer needs."""
    central_dir = federation.state / "central"
    servers: dict[str, Any] = {}
    for code, running in federation.servers.items():
        runtime = running.runtime
        owner = runtime.config.id.owner
        servers[code] = {
            "server_id": runtime.config.server_id,
            "client_proxy": running.urls.get("client_http"),
            "server_proxy": running.urls.get("server_proxy"),
            "admin_api": running.urls.get("admin"),
            "admin_api_key": federation.admin_keys.get(code),
            "clients": [owner.subsystem(c.code).path() for c in runtime.config.clients],
            "services": [p.id.path() for p in runtime.services.values()],
            "state_dir": str(runtime.state_dir),
        }
    return {
        # A sandbox's throwaway token PIN, so its state can be reused with `korpu … serve` (file mode 0600).
        "token_pin": federation.pin,
        "central_server": federation.central_url,
        "management_api": f"{federation.central_url}/api/v1",
        "management_api_key": federation.admin_key,
        "ocsp_responder": federation.central.config.effective_ocsp_url,
        "timestamp_authority": federation.central.config.effective_tsa_url,
        "globalconf": f"{federation.central_url}/globalconf",
        "ca_certificate": str(central_dir / "ca-root.pem"),
        "anchor": str(central_dir / "anchor.xml"),
        "security_servers": servers,
    }


def write_sandbox_json(federation: Federation) -> Path:
    """Write ``sandbox.json`` (mode 0600: it holds the sandbox's API keys) and the CA certificate PEM."""
    from cryptography.hazmat.primitives.serialization import Encoding

    write_atomic(
        federation.state / "central" / "ca-root.pem", federation.central.ca.root_cert.public_bytes(Encoding.PEM)
    )
    path = federation.state / "sandbox.json"
    write_atomic(path, json.dumps(sandbox_json(federation), indent=2).encode(), mode=0o600)
    return path


# korpu up --------------------------------------------------------------------------------------------------------


def curl_examples(info: dict[str, Any], cast: dict[str, str]) -> list[str]:
    """Commands a newcomer can paste to talk to the sandbox (``cast``: a person and a company from the data)."""
    servers = info["security_servers"]
    bank, portal = servers["ss-bank"]["client_proxy"], servers["ss-portal"]["client_proxy"]
    pin, tin = cast["pin"], cast["tin"]
    loans, marketing, portal_client = (
        "AZ/COM/9900001111/loans",
        "AZ/COM/9900001111/marketing",
        "AZ/GOV/1000000001/portal",
    )
    population, tax, labor = "AZ/GOV/1100000011/population", "AZ/GOV/1300000013/etax", "AZ/GOV/1400000014/contracts"
    licensing = "AZ/GOV/1500000015/licensing"
    audit_key, audit_api = servers["ss-population"]["admin_api_key"], servers["ss-population"]["admin_api"]
    return [
        f"curl -s -H 'X-Road-Client: {loans}' -H 'X-Road-UserId: {pin}' '{bank}/r1/{population}/persons/persons/{pin}'",
        f"curl -s -H 'X-Road-Client: {loans}' '{bank}/r1/{tax}/taxpayers/taxpayers/{tin}/debt'",
        f"curl -s -H 'X-Road-Client: {loans}' '{bank}/r1/{labor}/contracts/employees/{pin}/reference'",
        f"curl -s -H 'X-Road-Client: {portal_client}' -H 'Content-Type: application/json' "
        f'--data \'{{"tin": "{tin}", "pin": "{pin}", "activity": "{cast["activity"]}"}}\' '
        f"'{portal}/r1/{licensing}/licenses/applications'",
        f"curl -s -i -H 'X-Road-Client: {marketing}' '{bank}/r1/{population}/persons/persons/{pin}'   # refused",
        f"curl -s -H 'Accept: application/json' '{bank}/listClients'",
        f"curl -s -H 'X-API-Key: {audit_key}' '{audit_api}/api/v1/audit/records?person={pin}'",
        f"curl -s -H 'X-API-Key: {info['management_api_key']}' '{info['management_api']}/status'",
    ]


async def run_sandbox(
    state: Path, stop: asyncio.Event | None = None, ready: Callable[[Federation], None] | None = None
) -> None:
    """``korpu up``: the demo's federation (generated registries, six security servers) kept running.

    Writes ``sandbox.json`` and prints how to use it; runs until ``stop`` is set (or the process is interrupted).
    """
    # The registries live in adapters/; imported here so a security server alone never loads them.
    from adapters.registries.data import LICENSE_ACTIVITIES, REFERENCE_DATE, generate
    from adapters.registries.db import RegistryDb
    from adapters.registries.federation import national_agencies

    url = f"sqlite:///{state / 'registries.db'}"
    await asyncio.to_thread(generate, url, scale="small")
    reader = RegistryDb(url).reader()
    try:
        row = reader.one(
            "SELECT p.pin, t.tin FROM persons p JOIN taxpayers t ON t.pin = p.pin"
            " WHERE EXISTS (SELECT 1 FROM labor_contracts c WHERE c.employee_pin = p.pin AND c.status = 'active')"
            " ORDER BY p.pin LIMIT 1"
        )
    finally:
        reader.close()
    cast = {"pin": str(row[0]) if row else "", "tin": str(row[1]) if row else "", "activity": LICENSE_ACTIVITIES[0]}
    federation = await start_federation(state, national_agencies(url, today=REFERENCE_DATE.isoformat()))
    try:
        path = write_sandbox_json(federation)
        info = sandbox_json(federation)
        print(f"Körpü sandbox running (state in {state}); everything is in {path}", flush=True)
        print(f"  central server   {info['central_server']}  (management API key in sandbox.json)")
        for code, server in info["security_servers"].items():
            clients = ", ".join(server["clients"]) or "-"
            print(f"  {code:<16} client proxy {server['client_proxy']}  clients {clients}")
        print("Try:")
        for line in curl_examples(info, cast):
            print(f"  {line}")
        print("Press Ctrl-C to stop.", flush=True)
        if ready is not None:
            ready(federation)
        await (stop or asyncio.Event()).wait()
    finally:
        await federation.stop()
