"""The ``korpu`` command.

``korpu central …`` runs and administers the central server, ``korpu ss …`` a security server, ``korpu demo`` a
whole federation on loopback.  Each component keeps its own commands (``catalog.cli``, ``security_server.cli``);
this module only assembles the parser and turns every :class:`~bridge.errors.KorpuError` into one line on stderr
and a non-zero exit code — never a traceback.

Exit codes: 0 success, 1 a Körpü fault (bad input, refused operation), 2 usage error (argparse), 70 an
unexpected internal error (details in the diagnostic log).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from bridge import __version__
from bridge.errors import ConfigError, KorpuError
from bridge.logsetup import configure_logging, get_logger

__all__ = ["main", "read_pin"]

log = get_logger(__name__)

Handler = Callable[[argparse.Namespace], int]


def read_pin(args: argparse.Namespace, *, confirm: bool = False) -> str:
    """The token PIN: from ``--pin-file``, else ``$KORPU_PIN``, else asked on the terminal."""
    pin_file: Path | None = getattr(args, "pin_file", None)
    if pin_file is not None:
        try:
            return pin_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{pin_file}: cannot read PIN file ({exc.strerror})") from None
    env = os.environ.get("KORPU_PIN")
    if env:
        return env
    if not sys.stdin.isatty():
        raise ConfigError("no PIN given: use --pin-file, set KORPU_PIN, or run on a terminal")
    pin = getpass.getpass("Token PIN: ")
    if confirm and getpass.getpass("Repeat PIN: ") != pin:
        raise ConfigError("the PINs do not match")
    return pin


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    from adapters.registries import cli as registries_cli
    from catalog import cli as central_cli
    from security_server import audit_cli
    from security_server import cli as ss_cli

    parser = argparse.ArgumentParser(prog="korpu", description="Körpü data exchange layer")
    parser.add_argument("--version", action="version", version=f"korpu {__version__}")
    parser.add_argument("--log-level", default=None, help="diagnostic log level (default INFO, or $KORPU_LOG_LEVEL)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    central_cli.register(commands.add_parser("central", help="run and administer the central server"))
    ss_cli.register(commands.add_parser("ss", help="run and administer a security server"))
    audit_cli.register(commands.add_parser("audit", help="query, export and verify message-log evidence"))
    registries_cli.register(commands.add_parser("registries", help="synthetic data for the built-in registries"))
    demo = commands.add_parser("demo", help="run a whole federation on loopback and narrate it")
    demo.add_argument("--state", type=Path, default=None, help="state directory (default: a temporary one)")
    demo.set_defaults(handler=_demo)
    up = commands.add_parser("up", help="run a sandbox federation on loopback until interrupted")
    up.add_argument("--state", type=Path, required=True, help="state directory (must be new or empty)")
    up.set_defaults(handler=_up)
    return parser


def _up(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib

    from security_server.sandbox import run_sandbox

    state: Path = args.state
    if state.exists() and any(state.iterdir()):
        raise ConfigError(f"{state}: not empty; give a new directory (each run creates a fresh federation)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_sandbox(state))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from security_server.demo import run_demo

    return int(run_demo(args.state))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``korpu`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Long-running servers log their activity; one-shot commands and the demo say what matters on stdout, so
    # their diagnostic log shows only warnings unless asked for more.
    serving = getattr(args, "central_command", None) == "serve" or getattr(args, "ss_command", None) == "serve"
    configure_logging(args.log_level or (None if serving else "WARNING"))
    handler: Handler = args.handler
    try:
        return handler(args)
    except KorpuError as exc:
        print(f"korpu: {exc.fault_code}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141  # stdout closed early (e.g. piped into head): not a failure of ours
    except Exception:
        correlation = uuid.uuid4().hex[:12]
        log.exception("internal error", correlation_id=correlation)
        print(f"korpu: Server.InternalError: unexpected failure (correlation id {correlation})", file=sys.stderr)
        return 70


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
