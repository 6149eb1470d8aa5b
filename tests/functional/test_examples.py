"""The client programs in examples/ run, as subprocesses, against a federation of the registries.

The federation is started here: the registries' security servers (population ``AZ/GOV/1100000011``, tax
``AZ/GOV/1300000013``, labor ``AZ/GOV/1400000014``) with their adapters over one generated registries database,
a bank's server (client ``loans``, and ``hr`` as the bank is also an employer) and the Ministry of Foreign
Affairs' server (client ``evisa``).  Each example gets only ``--proxy`` and ``--client`` (or a sandbox.json), as
an agency developer would.  Nothing is mocked: every answer crossed two security servers.

A registry whose adapter is not installed is left out of the federation, and the examples that need it are
skipped with its name, so this module says exactly what is missing.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from adapters.base import available
from security_server.sandbox import AgencySpec, Federation, ServiceSpec, start_federation, write_sandbox_json

pytestmark = [pytest.mark.functional, pytest.mark.asyncio(loop_scope="module")]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BANK = "AZ/COM/9900001111"
MFA = "AZ/GOV/1500000015"
LOANS, HR, EVISA = f"{BANK}/loans", f"{BANK}/hr", f"{MFA}/evisa"
# Adapter name → module that registers it (colleagues' registries; imported when present).
REGISTRIES = {
    "population": "adapters.registries.population",
    "tax": "adapters.registries.tax",
    "labor": "adapters.registries.labor",
}


def installed_registries() -> set[str]:
    """Import the registry modules that exist; the adapter names now available."""
    for module in REGISTRIES.values():
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    return set(REGISTRIES) & set(available())


def needs(*names: str) -> None:
    """Skip the calling test, naming the registries whose adapters are missing."""
    missing = sorted(set(names) - installed_registries())
    if missing:
        pytest.skip(
            f"registry adapters not installed yet: {', '.join(missing)} ({', '.join(REGISTRIES[m] for m in missing)})"
        )


def agencies(database: str, present: set[str]) -> tuple[AgencySpec, ...]:
    """The federation: the registries that are present, the bank and the ministry."""

    def grant(*subjects: str) -> tuple[tuple[str, str | None, str | None], ...]:
        return tuple((f"SUBSYSTEM:{s}", None, None) for s in subjects)

    options = {"database": database}
    specs = [
        AgencySpec(f"{BANK}/ss-bank", "Kapital Bank", clients=("loans", "hr")),
        AgencySpec(f"{MFA}/ss-mfa", "Ministry of Foreign Affairs", clients=("evisa",)),
    ]
    if "population" in present:
        specs.append(
            AgencySpec(
                "AZ/GOV/1100000011/ss-population",
                "State Population Register",
                clients=("population",),
                services=(
                    ServiceSpec("population", "persons", adapter="population", options=options, grants=grant(LOANS)),
                    ServiceSpec(
                        "population",
                        "getPerson",
                        type="SOAP",
                        adapter="population",
                        options=options,
                        grants=grant(EVISA),
                    ),
                ),
            )
        )
    if "tax" in present:
        specs.append(
            AgencySpec(
                "AZ/GOV/1300000013/ss-tax",
                "State Tax Service",
                clients=("etax",),
                services=(ServiceSpec("etax", "taxpayers", adapter="tax", options=options, grants=grant(LOANS)),),
            )
        )
    if "labor" in present:
        specs.append(
            AgencySpec(
                "AZ/GOV/1400000014/ss-labor",
                "Ministry of Labour and Social Protection",
                clients=("contracts",),
                services=(
                    ServiceSpec("contracts", "contracts", adapter="labor", options=options, grants=grant(LOANS, HR)),
                ),
            )
        )
    return tuple(specs)


@dataclass
class World:
    """The running federation, its sandbox.json and the registries database."""

    federation: Federation
    sandbox: Path
    database: Path

    def proxy(self, server: str) -> str:
        return self.federation.server(server).urls["client_http"]

    def one(self, sql: str) -> str:
        """One value from the generated data (to pick inputs; answers always come through the exchange)."""
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True) as conn:
            row = conn.execute(sql).fetchone()
        assert row is not None, sql
        return str(row[0])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """Generate the registries database (small scale), start the federation, write sandbox.json."""
    from adapters.registries.data import generate

    state = tmp_path_factory.mktemp("examples")
    database = state / "registries.db"
    await asyncio.to_thread(generate, f"sqlite:///{database}", scale="small")
    federation = await start_federation(state, agencies(f"sqlite:///{database}", installed_registries()))
    try:
        yield World(federation, write_sandbox_json(federation), database)
    finally:
        await federation.stop()


async def run(script: str, *args: str) -> tuple[int, str, str]:
    """Run ``examples/<script>`` with this interpreter; (exit status, stdout, stderr).  Killed after 120 s."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / script),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_bank_loan_check(world: World) -> None:
    """bank_loan_check.py checks an employed applicant through the bank's server and reports what it found."""
    needs("population", "tax", "labor")
    pin = world.one(
        "SELECT employee_pin FROM labor_contracts WHERE status = 'active' AND end_date IS NULL ORDER BY id LIMIT 1"
    )
    code, out, err = await run(
        "bank_loan_check.py", "--proxy", world.proxy("ss-bank"), "--client", LOANS, "--json", pin
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["pin"] == pin
    assert result["employment"]["pin"] == pin
    assert result["employment"]["employed"] is True
    assert isinstance(result["approved"], bool)
    # The same through sandbox.json: the bank's server and its first client (loans).
    code, out, err = await run("bank_loan_check.py", "--sandbox", str(world.sandbox), "--server", "ss-bank", pin)
    assert code == 0, err
    assert out.startswith(f"{pin}: ")


async def test_bank_loan_check_unknown_person(world: World) -> None:
    """A PIN the population register does not know is a declined application, not a failure."""
    needs("population", "tax", "labor")
    code, out, err = await run(
        "bank_loan_check.py", "--proxy", world.proxy("ss-bank"), "--client", LOANS, "--json", "0000000"
    )
    assert code == 0, err
    assert json.loads(out)["approved"] is False


async def test_evisa_person_check(world: World) -> None:
    """evisa_person_check.py fetches getPerson's WSDL with getWsdl and calls it with zeep through ss-mfa."""
    needs("population")
    pin = world.one("SELECT pin FROM persons ORDER BY pin LIMIT 1")
    code, out, err = await run("evisa_person_check.py", "--proxy", world.proxy("ss-mfa"), "--client", EVISA, pin)
    assert code == 0, err
    assert pin in out


async def test_labor_contract_registration(world: World) -> None:
    """labor_contract_registration.py registers a contract; the registry then serves it back over the exchange."""
    needs("labor")
    employer = world.one(
        "SELECT e.tin FROM employers e JOIN taxpayers t ON t.tin = e.tin WHERE t.status = 'active' ORDER BY e.tin"
    )
    employee = world.one("SELECT pin FROM persons ORDER BY pin LIMIT 1 OFFSET 7")
    position = f"Example position {uuid.uuid4().hex[:8]}"
    args = ["--proxy", world.proxy("ss-bank"), "--client", HR, "--employer", employer, "--employee", employee]
    args += ["--position", position, "--salary", "1200.00", "--start", "2026-05-01"]
    code, out, err = await run("labor_contract_registration.py", *args)
    assert code == 0, err
    registered = json.loads(out)
    assert registered["status"] == "active"
    assert registered["contract"]["employee_pin"] == employee
    # Registering the same contract again is a business error (409 duplicate_contract), exit status 3.
    code, _out, err = await run("labor_contract_registration.py", *args)
    assert (code, "duplicate_contract" in err) == (3, True), err
