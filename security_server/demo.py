"""``korpu demo``: the national demo federation, a scenario through it, the auditor's view, the logs verified.

On loopback, on SQLite, in a temporary state directory: synthetic registries are generated; a central server and
six security servers start (population, tax, labor, licensing registries; a bank and the e-government portal),
registering and being approved as an operator would.  Then:

1. the bank checks a loan applicant: identity, tax number and tax debt, employment and salary;
2. an employer registers a labor contract through the portal;
3. an entrepreneur applies for a license, and the licensing registry itself asks tax and population;
4. a bank subsystem without access rights is refused;
5. the auditor's view: who accessed the applicant's data, when and for what purpose;
6. every security server's log is timestamped and verified, and one exchange's evidence is exported and verified.

Each exchange prints who called what, the outcome and the latency.  Exit code 0 only if every step shows what it
should.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

import adapters.registries.labor
import adapters.registries.licensing
import adapters.registries.population
import adapters.registries.tax  # noqa: F401 - the registries register their adapters on import
from adapters.registries.data import LICENSE_ACTIVITIES, REFERENCE_DATE, generate
from adapters.registries.db import RegistryDb
from adapters.registries.federation import BANK, LABOR, LICENSING, MARKETING, POPULATION, PORTAL, TAX, national_agencies
from bridge.errors import KorpuError
from security_server.audit_api import evidence_certificates
from security_server.messagelog import LogQuery
from security_server.messagelog.archive import export_exchange, verify_log
from security_server.sandbox import Federation, free_port, start_federation

__all__ = ["DemoFailed", "free_port", "run_demo"]


class DemoFailed(Exception):
    """A step of the demo did not show what it should."""


def _say(text: str) -> None:
    print(text, flush=True)


@dataclasses.dataclass(frozen=True)
class Cast:
    """The people and companies of the scenario, picked from the generated data."""

    applicant_pin: str
    employer_tin: str
    employee_pin: str
    entrepreneur_tin: str
    entrepreneur_pin: str


def _cast(url: str) -> Cast:
    reader = RegistryDb(url).reader()
    today = REFERENCE_DATE.isoformat()
    try:
        applicant = reader.one(
            "SELECT p.pin FROM persons p JOIN taxpayers t ON t.pin = p.pin AND t.type = 'individual'"
            " WHERE EXISTS (SELECT 1 FROM identity_documents i WHERE i.pin = p.pin AND i.expires >= ?)"
            " AND NOT EXISTS (SELECT 1 FROM tax_debts d WHERE d.tin = t.tin)"
            " AND EXISTS (SELECT 1 FROM labor_contracts c WHERE c.employee_pin = p.pin AND c.status = 'active')"
            " ORDER BY p.pin LIMIT 1",
            (today,),
        )
        employers = reader.query(
            "SELECT t.tin FROM taxpayers t JOIN employers e ON e.tin = t.tin WHERE t.type = 'legal_entity'"
            " AND t.status = 'active' AND NOT EXISTS (SELECT 1 FROM tax_debts d WHERE d.tin = t.tin)"
            " ORDER BY t.tin LIMIT 2"
        )
        people = reader.query(
            "SELECT p.pin FROM persons p WHERE p.birth_date < '2004-01-01'"
            " AND EXISTS (SELECT 1 FROM identity_documents i WHERE i.pin = p.pin AND i.expires >= ?)"
            " ORDER BY p.pin DESC LIMIT 2",
            (today,),
        )
    finally:
        reader.close()
    if applicant is None or len(employers) < 2 or len(people) < 2:
        raise DemoFailed("the generated data has no suitable applicant, employers or employees")
    return Cast(applicant[0], employers[0][0], people[0][0], employers[1][0], people[1][0])


async def _call(
    http: aiohttp.ClientSession,
    fed: Federation,
    server: str,
    client: str,
    title: str,
    method: str,
    service: str,
    path: str,
    *,
    expect: int,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Any:
    url = f"{fed.server(server).urls['client_http']}/r1/{service}{path}"
    sent = {"X-Road-Client": client, **(headers or {})}
    data = json.dumps(body).encode() if body is not None else None
    if data is not None:
        sent["Content-Type"] = "application/json"
    started = time.perf_counter()
    async with http.request(method, url, headers=sent, data=data) as resp:
        answer = await resp.read()
    took = (time.perf_counter() - started) * 1000
    outcome = resp.headers.get("X-Road-Error") or f"HTTP {resp.status}"
    caller = client.rsplit("/", 1)[-1]
    mark = "✓" if resp.status == expect else "✗"
    _say(f"  {mark} {caller} → {service.split('/')[-1]} {title}: {outcome} ({took:.1f} ms)")
    if resp.status != expect:
        raise DemoFailed(f"{title}: expected HTTP {expect}, got {resp.status}: {answer[:300]!r}")
    try:
        return json.loads(answer)
    except ValueError:
        return answer


async def _scenario(fed: Federation, cast: Cast) -> str:
    purpose = {"X-Road-UserId": cast.applicant_pin, "X-Road-Issue": "loan-application-2026-0042"}
    async with aiohttp.ClientSession() as http:
        _say("2. Kapital Bank checks a loan applicant (the applicant consented; their PIN is the userId)")
        person = await _call(
            http, fed, "ss-bank", BANK, "identity", "GET", f"{POPULATION}/persons", f"/persons/{cast.applicant_pin}",
            expect=200, headers=purpose,
        )  # fmt: skip
        _say(f"      {person['first_name']} {person['last_name']}, born {person['birth_date']}, ID valid")
        taxpayer = await _call(
            http, fed, "ss-bank", BANK, "tax number", "GET", f"{TAX}/taxpayers",
            f"/taxpayers?pin={cast.applicant_pin}", expect=200, headers=purpose,
        )  # fmt: skip
        tin = taxpayer["tin"] if isinstance(taxpayer, dict) else taxpayer[0]["tin"]
        debt = await _call(
            http, fed, "ss-bank", BANK, "no-debt reference", "GET", f"{TAX}/taxpayers", f"/taxpayers/{tin}/debt",
            expect=200, headers=purpose,
        )  # fmt: skip
        _say(f"      tax debt: {'yes' if debt['has_debt'] else 'none'} (reference {debt.get('reference')})")
        reference = await _call(
            http, fed, "ss-bank", BANK, "employment and salary", "GET", f"{LABOR}/contracts",
            f"/employees/{cast.applicant_pin}/reference", expect=200, headers=purpose,
        )  # fmt: skip
        _say(f"      employment reference: {json.dumps(reference, ensure_ascii=False)[:110]}…")

        _say("3. An employer registers a labor contract through the e-Gov portal")
        contract = {
            "employer_tin": cast.employer_tin,
            "employee_pin": cast.employee_pin,
            "position": "Software engineer",
            "salary": "2400.00",
            "currency": "AZN",
            "start_date": REFERENCE_DATE.isoformat(),
        }
        created = await _call(
            http, fed, "ss-portal", PORTAL, "register contract", "POST", f"{LABOR}/contracts", "/contracts",
            expect=201, body=contract, headers={"X-Road-UserId": cast.employee_pin},
        )  # fmt: skip
        _say(f"      contract {created['id']}: {created['status']}")
        await _call(
            http, fed, "ss-portal", PORTAL, "same contract again (refused by the registry's rules)", "POST",
            f"{LABOR}/contracts", "/contracts", expect=409, body=contract,
        )  # fmt: skip

        _say("4. An entrepreneur applies for a license; the licensing registry asks tax and population itself")
        application = {"tin": cast.entrepreneur_tin, "pin": cast.entrepreneur_pin, "activity": LICENSE_ACTIVITIES[0]}
        decided = await _call(
            http, fed, "ss-portal", PORTAL, "license application", "POST", f"{LICENSING}/licenses",
            "/applications", expect=201, body=application, headers={"X-Road-UserId": cast.entrepreneur_pin},
        )  # fmt: skip
        _say(f"      application {decided['id']}: {decided['status']} {decided.get('license_number') or ''}".rstrip())
        asked: list[str] = []
        for code in ("ss-tax", "ss-population"):
            records = fed.server(code).runtime.log_store.find(LogQuery(client=f"SUBSYSTEM:{LICENSING}"))
            asked.extend(f"{r.service.split('/')[-1]}" for r in records if r.direction == "request")
        if sorted(set(asked)) != ["persons", "taxpayers"]:
            raise DemoFailed(f"the licensing registry's own calls are not in the providers' logs: {asked}")
        _say("      the tax and population logs show licensing as the caller, with the application as purpose")

        _say("5. A bank subsystem without access rights is refused")
        await _call(
            http, fed, "ss-bank", MARKETING, "identity (no access right)", "GET", f"{POPULATION}/persons",
            f"/persons/{cast.applicant_pin}", expect=500,
        )  # fmt: skip
    return str(cast.applicant_pin)


async def _auditor(fed: Federation, pin: str) -> None:
    _say(f"6. The auditor's view: who accessed the data of {pin}")
    async with aiohttp.ClientSession() as http:
        for code in ("ss-population", "ss-tax", "ss-labor"):
            running = fed.server(code)
            url = running.urls["admin"] + "/api/v1/audit/records"
            params = {"person": pin, "issue": "citizen's data-tracker request"}
            async with http.get(url, params=params, headers={"X-API-Key": fed.admin_keys[code]}) as resp:
                found = await resp.json()
            if resp.status != 200:
                raise DemoFailed(f"audit query on {code}: {found}")
            for record in found["items"]:
                if record["direction"] != "request":
                    continue
                when = record["at"][11:19]
                who = record["client"].removeprefix("SUBSYSTEM:")
                what = record["service"].rsplit("/", 1)[-1]
                decision = "allowed" if record["outcome"] == "ok" else record["outcome"]
                purpose = record["issue"] or "-"
                _say(f"    {code:<14} {when}  {who:<34} {what:<10} purpose {purpose:<27} {decision}")
    _say("    (each of these queries is itself in the log: who asked about whom, and why)")


async def _verify_logs(fed: Federation) -> None:
    _say("7. Every log timestamped (one RFC 3161 request per batch) and verified")
    total = 0
    for code, running in fed.servers.items():
        runtime = running.runtime
        await runtime.timestamper.stamp_once()
        certs = evidence_certificates(runtime.conf())
        report = await asyncio.to_thread(verify_log, runtime.log_store, certs)
        records = report.last_seq - report.first_seq + 1
        total += records
        _say(f"  ✓ {code:<14} {records:>3} records: hash chain and {report.batches} batch timestamp(s) verify")
    bank = fed.server("ss-population").runtime
    request = next(r for r in bank.log_store.find(LogQuery(limit=1000)) if r.direction == "request")
    certs = evidence_certificates(bank.conf())
    container = await asyncio.to_thread(export_exchange, bank.log_store, request.request_id, certs)
    _say(f"  ✓ evidence of one exchange exported and verified offline ({len(container)} bytes, {total} records in all)")


async def _demo(state: Path) -> None:
    started = time.perf_counter()
    _say("1. Registries and the federation")
    url = f"sqlite:///{state / 'registries.db'}"
    report = await asyncio.to_thread(generate, url, scale="small")
    cast = await asyncio.to_thread(_cast, url)
    counts = ", ".join(f"{report.counts[t]} {t.replace('_', ' ')}" for t in ("persons", "employers", "labor_contracts"))
    _say(f"  ✓ synthetic registries generated: {counts} ({report.seconds:.1f} s)")
    fed = await start_federation(state / "federation", national_agencies(url, today=REFERENCE_DATE.isoformat()))
    try:
        _say(
            f"  ✓ central server and {len(fed.servers)} security servers up, registered and approved "
            f"({time.perf_counter() - started:.1f} s)"
        )
        pin = await _scenario(fed, cast)
        await _auditor(fed, pin)
        await _verify_logs(fed)
    finally:
        await fed.stop()
    _say("Done.")


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
