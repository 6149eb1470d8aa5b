"""The registries' synthetic data generator: counts per scale, determinism, consistency across registries.

Pins that the same seed gives the same rows (digests of every table) on SQLite and on PostgreSQL, that another
seed gives other rows, that each scale has the numbers it promises, and that the four registries agree: every
contract's employer is a legal-entity taxpayer and its employee a person, family links go both ways, a person
has at most one active contract, identifiers have their formats.  The national scale is measured by
``benchmarks/generate_national.py``, not here; the medium scale is generated once.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from adapters.registries import DOCUMENT_PATTERN, PIN_PATTERN, TIN_PATTERN
from adapters.registries.cli import register
from adapters.registries.data import REFERENCE_DATE, SCALES, TABLES, digest, generate
from adapters.registries.db import RegistryDb
from bridge.errors import ConfigError


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small registries database generated with the default seed."""
    path = tmp_path_factory.mktemp("registries") / "small.db"
    generate(f"sqlite:///{path}", scale="small")
    return path


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def scalar(path: Path, sql: str) -> object:
    return rows(path, sql)[0][0]


def test_small_scale_counts(small: Path) -> None:
    """The small scale has exactly the persons, employers, contracts and licenses it promises."""
    scale = SCALES["small"]
    assert scalar(small, "SELECT count(*) FROM persons") == scale.persons == 2000
    assert scalar(small, "SELECT count(*) FROM employers") == scale.employers == 200
    assert scalar(small, "SELECT count(*) FROM labor_contracts") == scale.contracts == 3000
    assert scalar(small, "SELECT count(*) FROM licenses") == scale.licenses
    assert scalar(small, "SELECT count(*) FROM identity_documents WHERE type = 'id_card'") == scale.persons
    meta = dict(rows(small, "SELECT key, value FROM registry_meta"))
    assert meta == {
        "generator_version": "1",
        "reference_date": REFERENCE_DATE.isoformat(),
        "scale": "small",
        "seed": "2026",
    }


def test_same_seed_same_data(small: Path, tmp_path: Path) -> None:
    """Generating again with the same seed gives byte-identical tables; another seed gives other data."""
    again = tmp_path / "again.db"
    generate(f"sqlite:///{again}", scale="small", seed=2026)
    first = digest(f"sqlite:///{small}")
    assert digest(f"sqlite:///{again}") == first
    assert set(first) == set(TABLES)
    other = tmp_path / "other.db"
    generate(f"sqlite:///{other}", scale="small", seed=7)
    different = digest(f"sqlite:///{other}")
    assert [t for t in TABLES if different[t] == first[t]] == []


@pytest.mark.integration
def test_postgresql_holds_the_same_data(small: Path, pg_url: str) -> None:
    """PostgreSQL (loaded with COPY) holds exactly the rows SQLite holds for the same seed."""
    report = generate(pg_url, scale="small")
    assert report.counts["persons"] == 2000
    assert digest(pg_url) == digest(f"sqlite:///{small}")
    # Generating again replaces the tables rather than adding to them.
    generate(pg_url, scale="small")
    assert digest(pg_url) == digest(f"sqlite:///{small}")


def test_identifier_formats(small: Path) -> None:
    """PINs, TINs, document, contract and license numbers have their documented formats and are unique."""
    pins = [r[0] for r in rows(small, "SELECT pin FROM persons")]
    assert all(PIN_PATTERN.fullmatch(str(p)) for p in pins)
    assert not set("IO") & set("".join(map(str, pins)))
    tins = rows(small, "SELECT tin, type FROM taxpayers")
    assert all(TIN_PATTERN.fullmatch(str(t)) for t, _ in tins)
    assert {str(t)[-1] for t, kind in tins if kind == "legal_entity"} == {"1"}
    assert {str(t)[-1] for t, kind in tins if kind == "individual"} == {"2"}
    numbers = [str(r[0]) for r in rows(small, "SELECT number FROM identity_documents")]
    assert all(DOCUMENT_PATTERN.fullmatch(n) for n in numbers)
    assert len(set(numbers)) == len(numbers)
    assert all(re.fullmatch(r"LC-[0-9A-F]{12}", str(r[0])) for r in rows(small, "SELECT id FROM labor_contracts"))
    assert all(re.fullmatch(r"LIC-\d{4}-[0-9A-F]{8}", str(r[0])) for r in rows(small, "SELECT number FROM licenses"))


def test_registries_agree(small: Path) -> None:
    """Contracts point at legal-entity employers and existing persons; taxpayers' PINs and licenses' TINs exist."""
    assert (
        scalar(
            small,
            "SELECT count(*) FROM labor_contracts c LEFT JOIN employers e ON e.tin = c.employer_tin"
            " LEFT JOIN taxpayers t ON t.tin = c.employer_tin WHERE e.tin IS NULL OR t.type != 'legal_entity'",
        )
        == 0
    )
    assert (
        scalar(
            small,
            "SELECT count(*) FROM labor_contracts c LEFT JOIN persons p ON p.pin = c.employee_pin WHERE p.pin IS NULL",
        )
        == 0
    )
    assert (
        scalar(
            small,
            "SELECT count(*) FROM taxpayers t LEFT JOIN persons p ON p.pin = t.pin"
            " WHERE t.pin IS NOT NULL AND p.pin IS NULL",
        )
        == 0
    )
    assert (
        scalar(
            small, "SELECT count(*) FROM licenses l LEFT JOIN taxpayers t ON t.tin = l.holder_tin WHERE t.tin IS NULL"
        )
        == 0
    )
    assert scalar(small, "SELECT count(*) FROM employers e JOIN taxpayers t USING (tin) WHERE t.name != e.name") == 0
    # Adults only hold a TIN as individuals, and each person at most one.
    assert (
        scalar(small, "SELECT max(n) FROM (SELECT count(*) AS n FROM taxpayers WHERE pin IS NOT NULL GROUP BY pin)")
        == 1
    )


def test_contracts_are_plausible(small: Path) -> None:
    """At most one active contract per person; terminated ones have a date and reason; salaries ≥ 400 AZN."""
    assert (
        scalar(
            small,
            "SELECT max(n) FROM (SELECT count(*) AS n FROM labor_contracts"
            " WHERE status = 'active' GROUP BY employee_pin)",
        )
        == 1
    )
    assert (
        scalar(
            small,
            "SELECT count(*) FROM labor_contracts WHERE (status = 'terminated') !="
            " (terminated_on IS NOT NULL AND termination_reason IS NOT NULL)",
        )
        == 0
    )
    assert scalar(small, "SELECT count(*) FROM labor_contracts WHERE terminated_on < start_date") == 0
    assert scalar(small, "SELECT min(CAST(salary AS REAL)) FROM labor_contracts") >= 400  # type: ignore[operator]
    statuses = Counter(r[0] for r in rows(small, "SELECT status FROM labor_contracts"))
    assert set(statuses) == {"active", "terminated"}


def test_family_links_are_symmetric(small: Path) -> None:
    """Every link has its inverse: spouse↔spouse, father/mother↔child."""
    links = set(rows(small, "SELECT pin, relation, related_pin FROM family_links"))
    inverse = {"spouse": {"spouse"}, "father": {"child"}, "mother": {"child"}, "child": {"father", "mother"}}
    for pin, relation, other in links:
        assert any((other, back, pin) in links for back in inverse[str(relation)]), (pin, relation, other)
    assert {r for _, r, _ in links} == {"spouse", "father", "mother", "child"}


def test_some_documents_are_expired(small: Path) -> None:
    """A few per cent of identity cards had expired by the reference date; most are valid."""
    expired = scalar(small, f"SELECT count(*) FROM identity_documents WHERE expires < '{REFERENCE_DATE}'")
    assert isinstance(expired, int)
    assert 40 <= expired <= 300


def test_names_are_azerbaijani(small: Path) -> None:
    """Patronymics end in oğlu (male) or qızı (female); women's -ov/-yev surnames take -a."""
    people = rows(small, "SELECT last_name, patronymic, gender FROM persons")
    for last, patronymic, gender in people:
        assert str(patronymic).endswith(" oğlu" if gender == "male" else " qızı")
        if gender == "female" and str(last).endswith(("ov", "ev")):
            pytest.fail(f"female surname in male form: {last}")


def test_medium_scale(tmp_path: Path) -> None:
    """The medium scale generates its 100 000 persons and 150 000 contracts, with the indexes the adapters use."""
    path = tmp_path / "medium.db"
    report = generate(f"sqlite:///{path}", scale="medium")
    assert report.counts["persons"] == 100_000
    assert report.counts["labor_contracts"] == 150_000
    assert report.counts["employers"] == 10_000
    assert report.seconds < 60
    indexes = {r[0] for r in rows(path, "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    assert {
        "identity_documents_pin",
        "taxpayers_pin",
        "labor_contracts_employee",
        "labor_contracts_employer",
    } <= indexes
    assert scalar(path, "PRAGMA journal_mode") == "delete"


def test_unknown_scale_and_url_are_refused(tmp_path: Path) -> None:
    """An unknown scale or URL scheme is a configuration error, not a traceback."""
    with pytest.raises(ConfigError, match="unknown scale"):
        generate(f"sqlite:///{tmp_path / 'x.db'}", scale="galactic")
    with pytest.raises(ConfigError, match="unsupported database URL"):
        generate("mysql://localhost/x")


def test_relative_sqlite_path_resolves_against_base(tmp_path: Path) -> None:
    """``sqlite:///reg.db`` with a base directory names ``base/reg.db`` (adapters pass their state directory)."""
    assert RegistryDb("sqlite:///reg.db", base=tmp_path).path == tmp_path / "reg.db"
    assert RegistryDb(f"sqlite:///{tmp_path}/abs.db", base=Path("/elsewhere")).path == tmp_path / "abs.db"


def test_reader_is_read_only(small: Path) -> None:
    """The adapters' reader cannot change the data."""
    reader = RegistryDb(f"sqlite:///{small}").reader()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.query("DELETE FROM persons")
    assert reader.one("SELECT count(*) FROM persons") == (2000,)
    reader.close()


def test_cli_generate_prints_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``korpu registries generate --db URL`` creates the database and prints rows per table and the time."""
    parser = argparse.ArgumentParser()
    register(parser)
    path = tmp_path / "cli.db"
    args = parser.parse_args(["generate", "--db", f"sqlite:///{path}", "--seed", "5"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "persons" in out
    assert "2,000" in out
    assert re.search(r"generated in \d+\.\d s", out)
    assert dict(rows(path, "SELECT key, value FROM registry_meta"))["seed"] == "5"
