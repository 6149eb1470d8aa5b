"""``korpu registries …``: make the registries' synthetic database.

``korpu registries generate --db URL [--scale small|medium|national] [--seed 2026]`` (re)creates the database at
``URL`` (``sqlite:///FILE`` or ``postgresql://…``) and prints the rows per table and the time it took.  The lead
command wires this in with ``register(commands.add_parser("registries", help=...))``.
"""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``registries`` subcommands to ``parser``."""
    sub = parser.add_subparsers(dest="registries_command", required=True, metavar="SUBCOMMAND")
    generate = sub.add_parser("generate", help="create the registries' deterministic synthetic database")
    generate.add_argument("--db", required=True, help="sqlite:///FILE or postgresql://… (replaced if it exists)")
    generate.add_argument(
        "--scale", default="small", choices=("small", "medium", "national"), help="how much data (default small)"
    )
    generate.add_argument("--seed", type=int, default=2026, help="random seed: same seed, same data (default 2026)")
    generate.set_defaults(handler=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    from adapters.registries.data import generate

    report = generate(args.db, scale=args.scale, seed=args.seed)
    width = max(len(name) for name in report.counts)
    print(f"registries database {report.url} (scale {report.scale}, seed {report.seed})")
    for table, count in report.counts.items():
        print(f"  {table:<{width}}  {count:>10,}")
    print(f"generated in {report.seconds:.1f} s")
    return 0
