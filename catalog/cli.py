"""``korpu central …``: initialise, run and administer the central server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bridge.cli import read_pin
from bridge.config import build, dump
from bridge.errors import ConfigError, InvalidRequest, MissingApiKey, UpstreamUnavailable
from bridge.fsutil import write_atomic
from bridge.logsetup import get_logger
from catalog.config import CONFIG_NAME, CentralConfig, GlobalConfOptions, Listen, load_central_config

__all__ = ["init_central", "register"]

log = get_logger(__name__)

ANCHOR_NAME = "anchor.xml"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``central`` subcommands to ``parser``."""
    sub = parser.add_subparsers(dest="central_command", required=True, metavar="SUBCOMMAND")

    init = sub.add_parser("init", help="create the central server: CA, keys, database, anchor, admin API key")
    init.add_argument("--dir", type=Path, required=True, help="state directory to create")
    init.add_argument("--instance", required=True, help="X-Road instance code, e.g. AZ")
    init.add_argument("--public-url", help="URL security servers use to reach this server (default from --port)")
    init.add_argument("--host", default="127.0.0.1", help="address to listen on")
    init.add_argument("--port", type=int, default=4000, help="port to listen on")
    init.add_argument("--database", default="sqlite:///central.db", help="sqlite:///FILE or postgresql://…")
    init.add_argument("--auto-approve", action="store_true", help="approve registration requests on submission")
    init.add_argument("--expiry", type=int, default=600, help="global configuration validity in seconds")
    init.add_argument("--regenerate", type=int, default=60, help="regenerate global configuration every N seconds")
    init.add_argument("--algorithm", default="ec-p256", help="key algorithm: ec-p256, rsa-2048 or rsa-3072")
    init.add_argument("--pin-file", type=Path, help="file holding the token PIN (else $KORPU_PIN or a prompt)")
    init.add_argument(
        "--api-key-file", type=Path, help="write the admin API key to this file (mode 0600) instead of printing it"
    )
    init.set_defaults(handler=_cmd_init)

    serve = sub.add_parser("serve", help="run the central server")
    serve.add_argument("--dir", type=Path, required=True, help="state directory")
    serve.add_argument("--pin-file", type=Path, help="file holding the token PIN (else $KORPU_PIN or a prompt)")
    serve.set_defaults(handler=_cmd_serve)

    for name, verb in (("approve", "approve"), ("reject", "reject")):
        cmd = sub.add_parser(name, help=f"{verb} a registration request (through the management API)")
        cmd.add_argument("request_id", help="the request's id (a UUID), as printed by `korpu ss init`")
        cmd.add_argument("--comment", default="", help="a note recorded with the decision")
        _api_args(cmd)
        cmd.set_defaults(handler=_cmd_decide, decision=name, usage_error=cmd.error)

    status = sub.add_parser("status", help="catalog summary and pending registration requests")
    status.add_argument("--dir", type=Path, required=True, help="state directory")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_cmd_status)


def _api_args(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--dir", type=Path, help=f"state directory, to find the server's URL (default: here, if it has {CONFIG_NAME})"
    )
    cmd.add_argument("--url", help="central server base URL (default: public_url from --dir)")
    cmd.add_argument("--api-key", help="management API key (else $KORPU_API_KEY or --api-key-file)")
    cmd.add_argument("--api-key-file", type=Path, help="file holding the management API key")


# init ----------------------------------------------------------------------------------------------------------


def init_central(
    state_dir: Path,
    *,
    instance: str,
    public_url: str,
    pin: str,
    listen: Listen | None = None,
    database: str = "sqlite:///central.db",
    auto_approve: bool = False,
    globalconf: GlobalConfOptions | None = None,
    algorithm: str = "ec-p256",
) -> str:
    """Create a central server's state directory and catalog; returns the administrator API key (shown once).

    A failure leaves nothing behind: the files are built in a temporary directory and moved into place, and then
    the catalog is created in the database in a single transaction (:meth:`CatalogStore.create`), which is the
    last step that can fail and which refuses a database that already holds a catalog.  If it fails, the state
    directory is removed again and the database is as it was.
    """
    from bridge.anchor import ConfigurationAnchor, ConfigurationSource
    from bridge.pki.keys import KeyAlgorithm
    from bridge.pki.token import SoftwareToken
    from catalog.ca import CertificateAuthority
    from catalog.certregistry import CertKind
    from catalog.store import CatalogStore

    if state_dir.exists() and any(state_dir.iterdir()):
        raise ConfigError(f"{state_dir}: already exists and is not empty; refusing to overwrite a central server")
    config = build(
        CentralConfig,
        "korpu central init",
        instance=instance,
        public_url=public_url,
        database=database,
        listen=listen or Listen(),
        globalconf=globalconf or GlobalConfOptions(),
        auto_approve=auto_approve,
    )
    try:
        key_algorithm = KeyAlgorithm(algorithm)
    except ValueError:
        names = ", ".join(a.value for a in KeyAlgorithm)
        raise ConfigError(f"korpu central init: algorithm must be one of {names}") from None
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{state_dir.name}.init-", dir=state_dir.parent))
    try:
        # (1) configuration file
        write_atomic(work / CONFIG_NAME, dump(config, header="Körpü central server").encode())
        # (2) token and the federation CA (root and issuing certificate)
        token = SoftwareToken.init(work / "token", pin)
        ca = CertificateAuthority.create(
            token,
            instance,
            f"{instance} Körpü federation CA",
            algorithm=key_algorithm,
            ocsp_url=config.effective_ocsp_url,
        )
        # (3) the central server's own service keys and certificates
        issued = []
        for label, issue in (
            ("ocsp", ca.issue_ocsp_cert),
            ("tsa", ca.issue_tsa_cert),
        ):
            cert = issue(token.generate_key(label, key_algorithm))
            token.store_certificate(label, cert)
            issued.append((CertKind(label), cert))
        conf_cert = ca.issue_conf_signing_cert(token.generate_key("conf-signing", key_algorithm), instance)
        token.store_certificate("conf-signing", conf_cert)
        issued.append((CertKind.CONF, conf_cert))
        # (4) the configuration anchor handed to security servers out of band
        anchor = ConfigurationAnchor.create(
            instance, [ConfigurationSource(f"{config.base_url}/globalconf", (conf_cert,))]
        )
        anchor.save(work / ANCHOR_NAME)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    # (5) Move the state directory into place (a relative SQLite catalog lives inside it), then create the catalog
    # in one transaction: schema, instance, the CA's certificate records and the first administrator key.
    existed = state_dir.exists()
    try:
        if existed:
            state_dir.rmdir()  # it is empty (checked above)
        work.rename(state_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    try:
        certificates = [(CertKind.ROOT_CA, ca.root_cert), (CertKind.ISSUING_CA, ca.issuing_cert), *issued]
        store, admin_key = CatalogStore.create(
            config.database_url(state_dir), instance=instance, certificates=certificates
        )
        store.close()
    except BaseException:
        shutil.rmtree(state_dir, ignore_errors=True)
        if existed:
            state_dir.mkdir(exist_ok=True)
        raise
    return admin_key


def _cmd_init(args: argparse.Namespace) -> int:
    from bridge.anchor import ConfigurationAnchor

    # Options are checked before the PIN is asked for, so a typo costs no prompt.
    listen = build(Listen, "korpu central init (--host/--port)", host=args.host, port=args.port)
    globalconf = build(
        GlobalConfOptions,
        "korpu central init (--expiry/--regenerate)",
        expiry_seconds=args.expiry,
        regenerate_seconds=args.regenerate,
    )
    key_file: Path | None = args.api_key_file
    if key_file is not None and not key_file.parent.is_dir():
        # Checked up front: once init has run, a key that cannot be written would be lost.
        raise ConfigError(f"{key_file}: the directory for the API key file does not exist")
    pin = read_pin(args, confirm=True)
    public_url = args.public_url or f"http://{args.host}:{args.port}"
    admin_key = init_central(
        args.dir,
        instance=args.instance,
        public_url=public_url,
        pin=pin,
        listen=listen,
        database=args.database,
        auto_approve=args.auto_approve,
        globalconf=globalconf,
        algorithm=args.algorithm,
    )
    anchor = ConfigurationAnchor.load(args.dir / ANCHOR_NAME)
    print(f"central server for instance {args.instance} initialised in {args.dir}")
    print(f"configuration anchor: {args.dir / ANCHOR_NAME}")
    print(f"  SHA-256 {anchor.sha256} (compare it with the copy security servers receive)")
    if key_file is None:
        print(f"administrator API key (shown once, keep it safe): {admin_key}")
        return 0
    try:
        write_atomic(key_file, admin_key.encode(), mode=0o600)
    except OSError as exc:
        # The key exists only in this process now: show it rather than lose the only administrator key.
        print(f"administrator API key (shown once, keep it safe): {admin_key}")
        raise ConfigError(f"{key_file}: cannot write the API key file ({exc.strerror})") from None
    print(f"administrator API key written to {key_file} (mode 0600; it is not shown)")
    return 0


# serve ---------------------------------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from catalog.app import CentralServer

    config = load_central_config(args.dir)
    server = CentralServer.open(args.dir, config, read_pin(args))

    async def main() -> None:
        runner = web.AppRunner(server.create_app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, config.listen.host, config.listen.port)
        await site.start()
        print(f"central server for {config.instance} listening on {config.base_url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0


# approve / reject ----------------------------------------------------------------------------------------------


def _api_key(args: argparse.Namespace) -> str:
    if args.api_key:
        return str(args.api_key)
    if args.api_key_file:
        try:
            return str(args.api_key_file.read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise ConfigError(f"{args.api_key_file}: cannot read API key file ({exc.strerror})") from None
    env = os.environ.get("KORPU_API_KEY")
    if env:
        return env
    raise MissingApiKey("give the management API key with --api-key, --api-key-file or $KORPU_API_KEY")


def _base_url(args: argparse.Namespace) -> str:
    """``--url``, else ``public_url`` from ``--dir``, else from the current directory if it is a state directory."""
    if args.url:
        return str(args.url).rstrip("/")
    if args.dir:
        return load_central_config(args.dir).base_url
    here = Path.cwd()
    if (here / CONFIG_NAME).is_file():
        return load_central_config(here).base_url
    # A usage mistake, not a server fault: argparse's error() prints the usage line and exits with 2.
    args.usage_error(f"give --url (or --dir) to say which central server to talk to; no {CONFIG_NAME} here")
    raise AssertionError("unreachable: usage_error exits")  # pragma: no cover


def _request_id(text: str) -> str:
    """The canonical form of a registration request id, which must be a UUID."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise InvalidRequest(f"request id {text!r} is not a UUID (as printed by `korpu ss init`)") from None


async def api_call(base_url: str, api_key: str, method: str, path: str, payload: Any = None) -> dict[str, Any]:
    """Call the management API; a fault it returns is raised with the server's own code and message."""
    from security_server.registration import RemoteError

    url = f"{base_url}{path}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.request(method, url, json=payload, headers={"X-API-Key": api_key}) as resp,
        ):
            data = await resp.json(content_type=None)
    except aiohttp.ClientError as exc:
        raise UpstreamUnavailable(f"cannot reach the central server at {url}: {exc.__class__.__name__}") from None
    except ValueError:
        raise UpstreamUnavailable(f"{url}: answered with a non-JSON body") from None
    if resp.status >= 400:
        raise RemoteError.from_answer(data, resp.status)
    if not isinstance(data, dict):
        raise UpstreamUnavailable(f"{url}: unexpected answer")
    return data


def _cmd_decide(args: argparse.Namespace) -> int:
    request_id = _request_id(args.request_id)
    base_url = _base_url(args)
    answer = asyncio.run(
        api_call(
            base_url,
            _api_key(args),
            "POST",
            f"/api/v1/registration-requests/{urllib.parse.quote(request_id, safe='')}/{args.decision}",
            {"comment": args.comment},
        )
    )
    print(f"registration request {request_id}: {answer.get('state')}")
    return 0


# status --------------------------------------------------------------------------------------------------------


def _cmd_status(args: argparse.Namespace) -> int:
    from bridge.anchor import ConfigurationAnchor
    from catalog.store import CatalogStore

    config = load_central_config(args.dir)
    store = CatalogStore.open(config.database_url(args.dir), instance=config.instance)
    try:
        summary = store.status()
        pending = [r for r in store.list_registration_requests(state="submitted")]
    finally:
        store.close()
    anchor = ConfigurationAnchor.load(args.dir / ANCHOR_NAME)
    reachable = asyncio.run(_reachable(config.base_url))
    report: dict[str, Any] = {
        "instance": config.instance,
        "public_url": config.base_url,
        "running": reachable,
        "anchor_sha256": anchor.sha256,
        "catalog": summary,
        "pending_requests": [_request_summary(r) for r in pending],
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        print()
        return 0
    print(f"instance:   {config.instance}")
    print(f"public URL: {config.base_url} ({'running' if reachable else 'not reachable'})")
    print(f"anchor:     SHA-256 {anchor.sha256}")
    for key, value in summary.items():
        print(f"{key + ':':<22}{value}")
    for req in report["pending_requests"]:
        print(f"pending: {req['id']}  {req['server_id']}  submitted {req['submitted_at']}")
    return 0


def _request_summary(req: Any) -> dict[str, Any]:
    return {"id": req.id, "server_id": str(req.server_id.path()), "submitted_at": str(req.submitted_at)}


async def _reachable(base_url: str) -> bool:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session,
            session.get(f"{base_url}/openapi.json") as resp,
        ):
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False
