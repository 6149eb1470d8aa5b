"""``korpu ss …``: initialise, run and inspect a security server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bridge.anchor import ConfigurationAnchor
from bridge.cli import read_pin
from bridge.config import build, dump
from bridge.errors import ConfigError, InvalidRequest, KorpuError
from bridge.fsutil import write_atomic
from bridge.identifiers import SecurityServerId
from bridge.logsetup import get_logger
from bridge.pki.csr import make_csr
from bridge.pki.keys import KeyAlgorithm
from bridge.pki.profile import auth_cert_subject, sign_cert_subject
from bridge.pki.token import SoftwareToken
from security_server.adminkeys import register_api_key_commands
from security_server.app import ADMIN_KEY_FILE, hash_admin_key, start_server
from security_server.confclient import GlobalConfClient
from security_server.config import (
    CONFIG_NAME,
    ClientConfig,
    Endpoint,
    Listeners,
    ServerConfig,
    load_server_config,
)
from security_server.registration import RegistrationState, poll_once, submit_request
from security_server.runtime import ServerRuntime

__all__ = ["init_server", "register"]

log = get_logger(__name__)


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``ss`` subcommands to ``parser``."""
    sub = parser.add_subparsers(dest="ss_command", required=True, metavar="SUBCOMMAND")

    init = sub.add_parser("init", help="create keys, download global configuration, submit registration")
    init.add_argument("--dir", type=Path, required=True, help="state directory to create")
    init.add_argument("--anchor", type=Path, required=True, help="configuration anchor file from the central server")
    init.add_argument("--server-id", required=True, help="INSTANCE/CLASS/MEMBER/SERVERCODE")
    init.add_argument("--owner-name", required=True, help="display name of the owner member")
    init.add_argument("--address", required=True, help="host:port where other security servers reach this one")
    init.add_argument("--client", action="append", default=[], help="subsystem code to register (repeatable)")
    init.add_argument("--admin-port", type=int, default=0, help="admin API port on loopback (0: any free port)")
    init.add_argument("--algorithm", default=KeyAlgorithm.EC_P256.value, choices=[a.value for a in KeyAlgorithm])
    init.add_argument("--pin-file", type=Path, help="file holding the token PIN (else $KORPU_PIN or a prompt)")
    init.add_argument("--api-key-file", type=Path, help="also write the admin API key to this file (mode 0600)")
    init.set_defaults(handler=_cmd_init)

    serve = sub.add_parser("serve", help="run the security server")
    serve.add_argument("--dir", type=Path, required=True, help="state directory")
    serve.add_argument("--pin-file", type=Path, help="file holding the token PIN (else $KORPU_PIN or a prompt)")
    serve.set_defaults(handler=_cmd_serve)

    status = sub.add_parser("status", help="registration, certificates and global configuration")
    status.add_argument("--dir", type=Path, required=True, help="state directory")
    status.add_argument("--pin-file", type=Path, help="with a PIN, approved certificates are installed")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_cmd_status)

    register_api_key_commands(sub)


def _pem(csr: x509.CertificateSigningRequest) -> str:
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _prepare(
    state_dir: Path, config: ServerConfig, anchor_file: Path, pin: str, algorithm: KeyAlgorithm, admin_key: str
) -> tuple[Path, SoftwareToken, ConfigurationAnchor]:
    """Blocking part of init: checks, and a scratch directory with configuration, anchor, keyed token, key hash."""
    if state_dir.exists() and any(state_dir.iterdir()):
        raise ConfigError(f"{state_dir}: already exists and is not empty; refusing to overwrite a security server")
    anchor = ConfigurationAnchor.load(anchor_file)
    if anchor.instance != config.id.instance:
        raise ConfigError(f"{anchor_file}: the anchor is for instance {anchor.instance}, not {config.id.instance}")
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{state_dir.name}.init-", dir=state_dir.parent))
    try:
        write_atomic(work / CONFIG_NAME, dump(config, header="Körpü security server").encode())
        anchor.save(work / config.anchor)
        write_atomic(work / ADMIN_KEY_FILE, hash_admin_key(admin_key).encode(), 0o600)
        token = SoftwareToken.init(work / "token", pin)
        token.generate_key("auth", algorithm)
        token.generate_key("sign", algorithm)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return work, token, anchor


def _commit(work: Path, state_dir: Path) -> None:
    if state_dir.exists():
        state_dir.rmdir()  # it is empty (checked in _prepare)
    work.rename(state_dir)


def _check_owner_name(name: str) -> str:
    if not name.strip() or len(name) > 255 or any(ord(ch) < 0x20 for ch in name):
        raise InvalidRequest("--owner-name must be 1 to 255 printable characters")
    return name


async def init_server(
    state_dir: Path,
    *,
    anchor_file: Path,
    server_id: SecurityServerId,
    owner_name: str,
    address: str,
    clients: list[str],
    pin: str,
    admin_port: int = 0,
    algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256,
) -> tuple[RegistrationState, str]:
    """Create a security server's state directory and submit its registration request.

    Until the central server has accepted the request, everything is built in a scratch directory beside
    ``state_dir`` and a failure removes it.  From the moment the request is accepted the state (keys, request id)
    is committed to ``state_dir`` and kept whatever happens next: the central server now knows these keys, and
    deleting them would leave a request nobody can complete.  Returns the registration state and the admin API
    key (shown once, stored only as a hash).
    """
    config = build(
        ServerConfig,
        "command line",
        server_id=server_id.path(),
        owner_name=_check_owner_name(owner_name),
        address=address,
        clients=tuple(build(ClientConfig, "--client", code=code) for code in clients),
        listen=Listeners(admin=build(Endpoint, "--admin-port", port=admin_port)),
    )
    admin_key = secrets.token_urlsafe(32)
    # (1) configuration, anchor, admin key hash and token with the two keys (blocking: off the event loop)
    work, token, anchor = await asyncio.to_thread(_prepare, state_dir, config, anchor_file, pin, algorithm, admin_key)
    try:
        # (2) global configuration, verified against the anchor: proves the anchor and finds the central server
        confclient = GlobalConfClient(anchor, work / "cache")
        await confclient.refresh()
        conf = confclient.current()
        # (3) CSRs and the registration request
        auth_csr = make_csr(token.private_key("auth"), auth_cert_subject(server_id, owner_name))
        sign_csr = make_csr(token.private_key("sign"), sign_cert_subject(server_id.owner, owner_name))
        answer = await submit_request(
            conf.central_server_url,
            {
                "kind": "server",
                "server_id": server_id.path(),
                "owner_name": owner_name,
                "address": address,
                "clients": list(clients),
                "auth_csr": _pem(auth_csr),
                "sign_csr": _pem(sign_csr),
            },
        )
        reg = RegistrationState(
            request_id=str(answer["id"]),
            central_url=conf.central_server_url,
            server_id=server_id.path(),
            state=str(answer.get("state", "submitted")),
        )
        # (4) accepted: commit the state before anything else can fail
        await asyncio.to_thread(reg.save, work)
        await asyncio.to_thread(_commit, work, state_dir)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, work, True)
        raise
    if reg.state == "approved":
        # Auto-approved: install the certificates now; if that fails, `ss status`/`ss serve` retries later.
        try:
            await poll_once(state_dir, token, reg, conf)
        except KorpuError as exc:
            log.warning("certificates not installed yet", fault=exc.fault_code, error=exc.message)
    return reg, admin_key


def _cmd_init(args: argparse.Namespace) -> int:
    pin = read_pin(args, confirm=True)
    reg, admin_key = asyncio.run(
        init_server(
            args.dir,
            anchor_file=args.anchor,
            server_id=SecurityServerId.parse(args.server_id),
            owner_name=args.owner_name,
            address=args.address,
            clients=args.client,
            pin=pin,
            admin_port=args.admin_port,
            algorithm=KeyAlgorithm(args.algorithm),
        )
    )
    print(f"security server {args.server_id} initialised in {args.dir}")
    print(f"registration request {reg.request_id}: {reg.state}")
    if reg.state == "submitted":
        print("  a registration officer approves it on the central server:")
        print(f"  korpu central approve {reg.request_id} --dir CENTRAL_DIR --api-key-file KEY_FILE")
    _show_secret(admin_key, args.api_key_file, "admin API key")
    return 0


def _show_secret(secret: str, path: Path | None, what: str) -> None:
    """Write ``secret`` to ``path`` (mode 0600) or, without one or if writing fails, print it once."""
    if path is not None:
        try:
            write_atomic(path, secret.encode(), mode=0o600)
        except OSError as exc:
            print(f"could not write the {what} to {path} ({exc.strerror}); here it is instead:")
        else:
            print(f"{what} written to {path}")
            return
    print(f"{what} (shown once, keep it safe): {secret}")


def _cmd_serve(args: argparse.Namespace) -> int:
    config = load_server_config(args.dir)
    pin = read_pin(args)

    async def main() -> None:
        runtime = await asyncio.to_thread(ServerRuntime.open, args.dir, config, pin)
        running = await start_server(runtime, args.dir)
        listening = ", ".join(f"{name} {url}" for name, url in running.urls.items())
        print(f"security server {config.server_id} running; admin API {running.urls['admin']}", flush=True)
        print(f"listening: {listening}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await running.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    config = load_server_config(args.dir)
    reg = RegistrationState.load(args.dir)
    anchor = ConfigurationAnchor.load(config.anchor_path(args.dir))
    confclient = GlobalConfClient(anchor, args.dir / "cache")
    confclient.load_cached()
    have_pin = args.pin_file is not None or bool(os.environ.get("KORPU_PIN"))
    token = SoftwareToken.open(args.dir / "token", read_pin(args)) if have_pin else None

    async def refresh() -> str | None:
        problem = None
        try:
            await confclient.refresh()
        except KorpuError as exc:
            problem = f"global configuration refresh failed: {exc}"
        if not reg.complete:
            try:
                # Without the PIN the state is still brought up to date; certificates wait for the token.
                await poll_once(args.dir, token, reg, confclient.current())
            except KorpuError as exc:
                problem = f"registration check failed: {exc}"
        return problem

    problem = asyncio.run(refresh())
    listed = False
    with contextlib.suppress(KorpuError):
        listed = confclient.current().server(config.id) is not None
    report: dict[str, Any] = {
        "server_id": config.server_id,
        "registration": reg.to_dict(),
        "globalconf": confclient.status(),
        "listed_in_globalconf": listed,
        "problem": problem,
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        print()
    else:
        print(f"server:        {config.server_id}")
        print(f"registration:  {reg.state} (request {reg.request_id})", end="")
        print(", certificates installed" if reg.certificates_installed else "")
        conf = report["globalconf"]
        print(f"globalconf:    version {conf.get('version')} expires {conf.get('expires_at')}", end="")
        print(" (EXPIRED)" if conf.get("expired") else "")
        print(f"listed:        {'yes' if listed else 'no'}")
        if problem:
            print(f"problem:       {problem}")
        if reg.state == "approved" and not reg.certificates_installed and token is None:
            print("note: approved; give the PIN (--pin-file or KORPU_PIN) or run `korpu ss serve` to install")
    return 0
