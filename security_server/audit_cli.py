"""``korpu audit …``: export, verify and query a security server's message log (the auditor's commands).

* ``korpu audit export --dir SS_DIR --request-id ID --out FILE`` writes the evidence container of one exchange;
* ``korpu audit verify FILE [FILE…]`` verifies evidence containers and archives offline (``--ca`` names the
  trust root); ``korpu audit verify --log SS_DIR`` verifies a server's whole live log;
* ``korpu audit query --dir SS_DIR [filters] [--json]`` lists matching records;
* ``korpu audit archive --dir SS_DIR [--older-than-days N] [--no-delete]`` runs one archiving rotation now.

None of them needs the token PIN: the message log and global configuration are read, never the keys.  Exit
status 0 with a summary, or 1 with the failing record (or archive) and the numbered check.

How a server's log is found (see :func:`open_log_store`): as the running server finds it, from ``message_log`` in
``server.yaml`` — ``database`` (default ``sqlite:///messagelog.db``, relative to the state directory) and
``bodies`` (default ``messagelog-bodies`` in the state directory); the CA and TSA certificates come from the
server's cached, verified global configuration (``cache/globalconf.xml`` checked against its anchor; an expired
copy is accepted, since evidence is about the past).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from cryptography import x509

from bridge.errors import ConfigError, LogVerificationFailed
from bridge.evidence import EvidenceCerts, verify_container
from security_server.config import load_server_config
from security_server.messagelog import LogQuery, LogStore
from security_server.messagelog.archive import export_exchange, rotate, verify_archives, verify_log

__all__ = ["load_certs", "open_log_store", "register"]

_MAX_QUERY = 1000


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``audit`` subcommands to ``parser``."""
    sub = parser.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")

    export = sub.add_parser("export", help="write the evidence container of one exchange")
    export.add_argument("--dir", type=Path, required=True, help="security server state directory")
    export.add_argument("--request-id", required=True, help="the exchange's request id")
    export.add_argument("--out", type=Path, required=True, help="container file to write")
    export.add_argument("--side", choices=["consumer", "provider"], help="only if the server logged both sides")
    export.add_argument("--seq", type=int, help="the request record, if the request id was logged more than once")
    export.set_defaults(handler=_cmd_export)

    verify = sub.add_parser("verify", help="verify evidence containers or archives offline, or a live log")
    verify.add_argument("files", nargs="*", type=Path, help="containers, or archives in log order")
    verify.add_argument("--ca", type=Path, help="PEM file with the trusted root CA certificate(s)")
    verify.add_argument("--log", type=Path, metavar="SS_DIR", help="verify this server's whole live log instead")
    verify.add_argument("--after-archive", type=Path, help="with --log: the newest archive the live log continues")
    verify.add_argument("--pruned-start", action="store_true", help="archives: the first follows a pruned one")
    verify.add_argument("--json", action="store_true", help="machine-readable report")
    verify.set_defaults(handler=_cmd_verify)

    query = sub.add_parser("query", help="list message log records")
    query.add_argument("--dir", type=Path, required=True, help="security server state directory")
    query.add_argument("--message-id")
    query.add_argument("--request-id")
    query.add_argument("--client", help="encoded client, e.g. SUBSYSTEM:AZ/COM/9900001111/loans")
    query.add_argument("--service", help="encoded service, e.g. SERVICE:AZ/GOV/1400057421/population/hello")
    query.add_argument("--person", help="person identifier (userId or a declared person)")
    query.add_argument("--since", help="ISO 8601 UTC, inclusive")
    query.add_argument("--until", help="ISO 8601 UTC, exclusive")
    query.add_argument("--after-seq", type=int, default=0, help="page: records after this seq")
    query.add_argument("--limit", type=int, default=100, help=f"at most this many records (max {_MAX_QUERY})")
    query.add_argument("--json", action="store_true", help="one JSON record per line")
    query.set_defaults(handler=_cmd_query)

    archive = sub.add_parser("archive", help="archive old timestamped batches now (and delete them from the log)")
    archive.add_argument("--dir", type=Path, required=True, help="security server state directory")
    archive.add_argument(
        "--older-than-days",
        type=int,
        help="archive batches whose last record is older than this (default: message_log.archive_after_days)",
    )
    archive.add_argument("--no-delete", action="store_true", help="keep the archived records in the live log")
    archive.set_defaults(handler=_cmd_archive)


# Opening a server's log -----------------------------------------------------------------------------------------


def _log_settings(state_dir: Path) -> tuple[str, Path]:
    """``(database URL, body directory)`` exactly as the running server opens them (``ServerRuntime``)."""
    settings = load_server_config(state_dir).message_log
    url = settings.database_url(state_dir)
    if url.lower().startswith("sqlite:///"):
        path = Path(urllib.parse.unquote(url[len("sqlite:///") :].partition("?")[0]))
        if not path.is_file():
            # Never create an empty log where evidence was expected.
            raise ConfigError(f"no message log database at {path}")
    return url, state_dir / settings.bodies


def open_log_store(state_dir: Path) -> LogStore:
    """Open a security server's message log store from its state directory (no PIN needed).

    Assumes ``security_server.messagelog.store.SqlLogStore``, opened by ``SqlLogStore.open(url, body_dir)`` when
    the class has it, else by its constructor ``SqlLogStore(url, body_dir)``.
    """
    url, body_dir = _log_settings(state_dir)
    try:
        from security_server.messagelog import store as store_module
    except ImportError as exc:
        raise ConfigError(f"the message log store is not available ({exc})") from None
    cls: Any = getattr(store_module, "SqlLogStore", None)
    if cls is None:
        raise ConfigError("the message log store is not available (no SqlLogStore)")
    opener = getattr(cls, "open", None)
    store: LogStore = opener(url, body_dir) if callable(opener) else cls(url, body_dir)
    return store


def load_certs(state_dir: Path) -> EvidenceCerts:
    """The federation's CA and TSA certificates from the server's cached, verified global configuration."""
    import datetime as dt

    from bridge.anchor import ConfigurationAnchor
    from bridge.globalconf_xml import verify_and_parse
    from security_server.confclient import CACHE_FILE

    anchor = ConfigurationAnchor.load(load_server_config(state_dir).anchor_path(state_dir))
    cache = state_dir / "cache" / CACHE_FILE
    try:
        data = cache.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{cache}: no cached global configuration ({exc.strerror})") from None
    conf = verify_and_parse(data, anchor=anchor, now=dt.datetime.now(dt.UTC), allow_expired=True)
    roots = tuple(x509.load_der_x509_certificate(ca.top_cert) for ca in conf.cas)
    intermediates = tuple(x509.load_der_x509_certificate(d) for ca in conf.cas for d in ca.intermediate_certs)
    tsas = tuple(x509.load_der_x509_certificate(t.cert) for t in conf.tsas)
    if not roots or not tsas:
        raise ConfigError("global configuration lists no CA or no timestamp authority")
    return EvidenceCerts(roots, intermediates, tsas)


# Commands ---------------------------------------------------------------------------------------------------------


def _cmd_export(args: argparse.Namespace) -> int:
    certs = load_certs(args.dir)
    store = open_log_store(args.dir)
    try:
        data = export_exchange(store, args.request_id, certs, side=args.side, seq=args.seq)
    finally:
        store.close()
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data)} bytes): evidence of exchange {args.request_id}, verified")
    return 0


def _load_roots(path: Path | None) -> list[x509.Certificate] | None:
    if path is None:
        return None
    try:
        roots = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except ValueError:
        raise ConfigError(f"{path}: not a PEM certificate file") from None
    return roots


def _is_archive(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return "link.json" in zf.namelist()
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError):  # a name flagged UTF-8 that is not
        return False  # verify_container reports it properly


def _cmd_verify(args: argparse.Namespace) -> int:
    roots = _load_roots(args.ca)
    try:
        if args.log is not None:
            if args.files:
                raise ConfigError("give either --log or files, not both")
            certs = load_certs(args.log)
            store = open_log_store(args.log)
            try:
                log_report = verify_log(store, certs, trust_roots=roots, after_archive=args.after_archive)
            finally:
                store.close()
            _out(args, log_report.summary(), log_report.__dict__)
            return 0
        if not args.files:
            raise ConfigError("nothing to verify: give containers or archives, or --log SS_DIR")
        archives = [p for p in args.files if _is_archive(p)]
        containers = [p for p in args.files if p not in archives]
        for path in containers:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
            try:
                report = verify_container(data, trust_roots=roots)
            except LogVerificationFailed as exc:
                raise LogVerificationFailed(f"{path}: {exc.message}") from None
            _out(args, f"{path}: {report.summary()}", report.to_json())
        if archives:
            archive_report = verify_archives(archives, trust_roots=roots, allow_pruned_start=args.pruned_start)
            _out(args, archive_report.summary(), {"archives": [a.name for a in archive_report.archives]})
    except LogVerificationFailed as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": exc.message}))
        print(f"FAILED: {exc.message}", file=sys.stderr)
        return 1
    return 0


def _out(args: argparse.Namespace, text: str, data: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps({"ok": True, **data}, default=str, ensure_ascii=False))
    else:
        print(text)


def _cmd_query(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= _MAX_QUERY:
        raise ConfigError(f"--limit must be between 1 and {_MAX_QUERY}")
    query = LogQuery(
        message_id=args.message_id,
        request_id=args.request_id,
        client=args.client,
        service=args.service,
        person=args.person,
        since=args.since,
        until=args.until,
        after_seq=args.after_seq,
        limit=args.limit,
    )
    store = open_log_store(args.dir)
    try:
        records = store.find(query)
    finally:
        store.close()
    for r in records:
        if args.json:
            print(json.dumps(r.to_json(), ensure_ascii=False, sort_keys=True))
        else:
            print(
                f"{r.seq:>8} {r.at} {r.side:<8} {r.direction:<8} {r.outcome:<10} {r.request_id} "
                f"{r.client} -> {r.service}" + (f" user={r.user_id}" if r.user_id else "")
            )
    if not args.json:
        print(f"{len(records)} record(s)" + (f"; next page: --after-seq {records[-1].seq}" if records else ""))
    return 0


def _cmd_archive(args: argparse.Namespace) -> int:
    import datetime as dt

    from security_server.messagelog.archiver import archive_lock, archive_range

    settings = load_server_config(args.dir).message_log
    days = args.older_than_days if args.older_than_days is not None else settings.archive_after_days
    if args.older_than_days is None and days == 0:
        raise ConfigError("automatic archiving is off (message_log.archive_after_days: 0): give --older-than-days")
    if days < 0:
        raise ConfigError("--older-than-days must not be negative")
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    certs = load_certs(args.dir)
    archive_dir = args.dir / settings.archive_dir
    store = open_log_store(args.dir)
    try:
        # The same lock as the running server's archiver: two rotations at once would fork the archive chain.
        with archive_lock(archive_dir):
            path = rotate(store, archive_dir, certs=certs, older_than=cutoff, delete=not args.no_delete)
    finally:
        store.close()
    first, last = archive_range(path)
    kept = "kept in" if args.no_delete else "deleted from"
    print(f"wrote {path}: records {first}..{last} (older than {days} day(s)), {kept} the live log")
    return 0
