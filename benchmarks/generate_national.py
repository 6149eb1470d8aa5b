"""How long the registries' synthetic data takes at national scale (target: under 60 s on SQLite, 2 cores).

Usage::

    .venv/bin/python benchmarks/generate_national.py [--scale national] [--seed 2026] [--dir DIR] [--pg URL]

Generates about 1 000 000 persons, 1 500 000 labor contracts and 100 000 employers (plus documents, family links,
taxpayers, debts, income declarations and licenses) into a temporary SQLite file, then prints rows per table, the
wall-clock seconds, the rows per second and the file's size.  With ``--pg URL`` (an admin connection such as
``postgresql://postgres@127.0.0.1:5432/postgres``) it also loads PostgreSQL, in a database it creates and drops.
Kept out of the test run: the tests generate the small and medium scales.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.registries.data import GenerationReport, generate


def show(label: str, report: GenerationReport) -> None:
    """Print one run's figures."""
    rows = sum(report.counts.values())
    print(f"{label}: {rows:,} rows in {report.seconds:.1f} s ({rows / report.seconds:,.0f} rows/s)")
    for table, count in report.counts.items():
        print(f"  {table:<20} {count:>10,}")


def main() -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="national", choices=("small", "medium", "national"))
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--dir", type=Path, default=None, help="directory for the SQLite file (default: temporary)")
    parser.add_argument("--pg", default=None, help="PostgreSQL admin URL to also benchmark PostgreSQL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "registries.db"
        report = generate(f"sqlite:///{path}", scale=args.scale, seed=args.seed)
        show(f"SQLite ({args.scale})", report)
        print(f"  file size {path.stat().st_size / 1e6:,.0f} MB")
    if args.pg:
        name = f"korpu_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            show(
                f"PostgreSQL ({args.scale})",
                generate(f"{args.pg.rsplit('/', 1)[0]}/{name}", scale=args.scale, seed=args.seed),
            )
        finally:
            with psycopg.connect(args.pg, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
