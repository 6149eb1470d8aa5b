"""Check a loan applicant through the bank's own security server: person, employment reference, tax debt.

A bank's loan system asks three registries over X-Road REST r1, each call going to the *bank's* security server
(its client proxy), which signs it, sends it to the registry's security server and logs it on both sides:

1. population  ``GET /persons/{pin}``                  — does the person exist, and who are they?
2. labor       ``GET /employees/{pin}/reference``      — employed? monthly salary?
3. tax         ``GET /taxpayers?pin=…`` then ``GET /taxpayers/{tin}/debt`` — any outstanding tax debt?

Every call carries ``X-Road-UserId`` (the loan officer) and ``X-Road-Issue`` (the loan application), so the
registries' message logs say who looked at this person's data and why.

Usage (see examples/README.md)::

    python examples/bank_loan_check.py --proxy http://127.0.0.1:8080 --client AZ/COM/9900001111/loans 5ZK7P2M
    python examples/bank_loan_check.py --sandbox /tmp/korpu-sandbox/sandbox.json --server ss-bank 5ZK7P2M

Standard library only.  Exit status: 0 checked (approved or not), 1 a registry or the exchange failed, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

POPULATION = "AZ/GOV/1100000011/population/persons"
TAX = "AZ/GOV/1300000013/etax/taxpayers"
LABOR = "AZ/GOV/1400000014/contracts/contracts"


class Failed(Exception):
    """A call did not give a usable answer (refused by the exchange, or an unexpected status)."""


class Bus:
    """REST r1 calls through one security server's client proxy, as one client subsystem."""

    def __init__(self, proxy: str, client: str, user_id: str, issue: str, timeout: float = 30.0) -> None:
        self.proxy, self.client, self.user_id, self.issue, self.timeout = (
            proxy.rstrip("/"),
            client,
            user_id,
            issue,
            timeout,
        )

    def get(self, service: str, path: str, query: dict[str, str] | None = None) -> tuple[int, Any]:
        """GET ``path`` of ``service``; returns (status, parsed JSON).  Exchange faults raise :class:`Failed`."""
        url = f"{self.proxy}/r1/{service}{urllib.parse.quote(path)}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {
            "X-Road-Client": self.client,
            "X-Road-Id": str(uuid.uuid4()),
            "X-Road-UserId": self.user_id,
            "X-Road-Issue": self.issue,
            "Accept": "application/json",
        }
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as err:
            body = err.read()
            fault = err.headers.get("X-Road-Error")
            if fault:  # the exchange itself refused or failed (access denied, service unavailable, …)
                raise Failed(f"{service}{path}: {fault}: {body.decode(errors='replace')[:300]}") from None
            try:
                return err.code, json.loads(body)  # a business answer, e.g. 404 person_not_found
            except ValueError:
                raise Failed(f"{service}{path}: HTTP {err.code}") from None


def check(bus: Bus, pin: str, *, min_salary: float) -> dict[str, Any]:
    """Run the three checks and decide; the result says what was found and why."""
    reasons: list[str] = []
    status, person = bus.get(POPULATION, f"/persons/{pin}")
    if status == 404:
        return {"pin": pin, "approved": False, "reasons": ["no such person in the population register"]}
    if status != 200:
        raise Failed(f"population answered {status}: {person}")

    status, reference = bus.get(LABOR, f"/employees/{pin}/reference")
    if status != 200:
        raise Failed(f"labor answered {status}: {reference}")
    salary = float(reference.get("total_monthly_salary", 0))
    if not reference.get("employed"):
        reasons.append("not employed")
    elif salary < min_salary:
        reasons.append(f"monthly salary {salary:.2f} AZN is below {min_salary:.2f} AZN")

    status, taxpayer = bus.get(TAX, "/taxpayers", {"pin": pin})
    debt: Any = None
    if status == 200:
        tin = taxpayer["tin"]
        status, debt = bus.get(TAX, f"/taxpayers/{tin}/debt")
        if status != 200:
            raise Failed(f"tax answered {status}: {debt}")
        if float(debt.get("total", 0)) > 0:
            reasons.append(f"outstanding tax debt of {float(debt['total']):.2f} AZN")
    elif status != 404:  # 404: not a taxpayer, so no tax debt
        raise Failed(f"tax answered {status}: {taxpayer}")

    return {
        "pin": pin,
        "approved": not reasons,
        "reasons": reasons,
        "person": person,
        "employment": reference,
        "tax_debt": debt,
    }


def endpoint(args: argparse.Namespace) -> tuple[str, str]:
    """The client proxy URL and client id, from the command line or from a sandbox.json."""
    if args.sandbox is None:
        if not (args.proxy and args.client):
            sys.exit("give --proxy and --client, or --sandbox (see examples/README.md)")
        return args.proxy, args.client
    servers = json.loads(Path(args.sandbox).read_text(encoding="utf-8"))["security_servers"]
    server = servers[args.server] if args.server else next(s for s in servers.values() if s["clients"])
    return server["client_proxy"], args.client or server["clients"][0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pin", help="the applicant's PIN (FİN)")
    parser.add_argument("--proxy", help="the bank's client proxy, e.g. http://127.0.0.1:8080")
    parser.add_argument("--client", help="the bank's client subsystem, e.g. AZ/COM/9900001111/loans")
    parser.add_argument("--sandbox", help="read --proxy and --client from this sandbox.json instead")
    parser.add_argument("--server", help="with --sandbox: the bank's security server code (default: the first)")
    parser.add_argument("--officer", default="loan-officer-1", help="X-Road-UserId: who is asking")
    parser.add_argument("--application", default="loan-application-1", help="X-Road-Issue: why")
    parser.add_argument("--min-salary", type=float, default=500.0, help="minimum monthly salary in AZN")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    args = parser.parse_args(argv)
    proxy, client = endpoint(args)
    bus = Bus(proxy, client, args.officer, args.application)
    try:
        result = check(bus, args.pin, min_salary=args.min_salary)
    except (Failed, OSError, KeyError, ValueError) as exc:
        print(f"check failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        verdict = "APPROVED" if result["approved"] else "DECLINED"
        print(f"{args.pin}: {verdict}" + "".join(f"\n  - {r}" for r in result["reasons"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
