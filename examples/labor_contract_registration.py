"""An employer's HR system registers a labor contract with the labor contract notification system.

One REST call, ``POST /contracts`` of ``AZ/GOV/1400000014/contracts/contracts``, through the employer's own
security server.  The registry checks the employee against the population register and the employer against the
tax register, the minimum wage and overlapping contracts; a refusal is a business error (4xx with
``{"error": code, "message": text}``), printed as such.

Usage (see examples/README.md)::

    python examples/labor_contract_registration.py --proxy http://127.0.0.1:8080 --client AZ/COM/1700000017/hr \\
        --employer 1700000171 --employee 5ZK7P2M --position "Mühasib" --salary 1200 --start 2026-01-15

Standard library only.  Exit status: 0 registered, 3 refused by the registry, 1 failure, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

LABOR = "AZ/GOV/1400000014/contracts/contracts"


def register_contract(proxy: str, client: str, contract: dict[str, Any], *, user_id: str) -> tuple[int, Any]:
    """POST the contract; returns (status, JSON answer).  Faults of the exchange itself raise RuntimeError."""
    request = urllib.request.Request(
        f"{proxy.rstrip('/')}/r1/{LABOR}/contracts",
        data=json.dumps(contract).encode(),
        method="POST",
        headers={
            "X-Road-Client": client,
            "X-Road-Id": str(uuid.uuid4()),
            "X-Road-UserId": user_id,
            "Content-Type": "application/json",
            "Accept": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        body = err.read()
        if err.headers.get("X-Road-Error"):
            raise RuntimeError(f"{err.headers['X-Road-Error']}: {body.decode(errors='replace')[:300]}") from None
        return err.code, json.loads(body)


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
    parser.add_argument("--proxy", help="the employer's client proxy, e.g. http://127.0.0.1:8080")
    parser.add_argument("--client", help="the employer's client subsystem")
    parser.add_argument("--sandbox", help="read --proxy and --client from this sandbox.json instead")
    parser.add_argument("--server", help="with --sandbox: the security server code (default: the first)")
    parser.add_argument("--employer", required=True, help="the employer's TIN (VÖEN)")
    parser.add_argument("--employee", required=True, help="the employee's PIN (FİN)")
    parser.add_argument("--position", required=True)
    parser.add_argument("--salary", required=True, help="monthly gross salary in AZN, e.g. 1200.00")
    parser.add_argument("--start", required=True, help="start date, YYYY-MM-DD")
    parser.add_argument("--end", help="end date of a fixed-term contract, YYYY-MM-DD")
    parser.add_argument("--user", default="hr-officer-1", help="X-Road-UserId: who registers it")
    args = parser.parse_args(argv)
    proxy, client = endpoint(args)
    contract = {
        "employer_tin": args.employer,
        "employee_pin": args.employee,
        "position": args.position,
        "salary": args.salary,
        "currency": "AZN",
        "start_date": args.start,
    }
    if args.end:
        contract["end_date"] = args.end
    try:
        status, answer = register_contract(proxy, client, contract, user_id=args.user)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"registration failed: {exc}", file=sys.stderr)
        return 1
    if status == 201:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
        return 0
    print(f"refused ({status}): {answer.get('error')}: {answer.get('message')}", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
