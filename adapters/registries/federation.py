"""The national demo federation: four registries, a bank and the e-government portal, with their access rights.

What ``make demo`` narrates and ``korpu up`` keeps running.  Each registry is its own agency (member, security
server, subsystem); the bank (as in ASAN Finance) and the portal are consumers; the licensing registry is both a
provider and, through its own security server, a consumer of tax and population.
"""

from __future__ import annotations

from security_server.config import PersonField
from security_server.sandbox import AgencySpec, ServiceSpec

__all__ = [
    "BANK",
    "LABOR",
    "LICENSING",
    "MARKETING",
    "POPULATION",
    "PORTAL",
    "TAX",
    "national_agencies",
]

POPULATION = "AZ/GOV/1100000011/population"
TAX = "AZ/GOV/1300000013/etax"
LABOR = "AZ/GOV/1400000014/contracts"
LICENSING = "AZ/GOV/1500000015/licensing"
BANK = "AZ/COM/9900001111/loans"
MARKETING = "AZ/COM/9900001111/marketing"
PORTAL = "AZ/GOV/1000000001/portal"


def _sub(path: str) -> str:
    return f"SUBSYSTEM:{path}"


def national_agencies(database: str, *, today: str | None = None) -> tuple[AgencySpec, ...]:
    """The six agencies over one generated registries ``database`` (URL); ``today`` fixes the registries' date."""
    data = {"database": database, **({"today": today} if today else {})}
    bank, portal, licensing = _sub(BANK), _sub(PORTAL), _sub(LICENSING)
    return (
        AgencySpec(
            "AZ/GOV/1100000011/ss-population",
            "State Registration Service",
            clients=("population",),
            services=(
                ServiceSpec(
                    "population",
                    "persons",
                    adapter="population",
                    options=data,
                    title="Person by PIN or identity document",
                    grants=((bank, "GET", "/persons/*"), (licensing, "GET", "/persons/*"), (portal, "GET", None)),
                    person_fields=(PersonField("path", "/persons/{pin}"),),
                ),
                ServiceSpec(
                    "population",
                    "getPerson",
                    type="SOAP",
                    adapter="population",
                    options=data,
                    title="Person by PIN (SOAP)",
                    grants=((portal, None, None), (bank, None, None)),
                    person_fields=(PersonField("xml", "pin"),),
                ),
            ),
        ),
        AgencySpec(
            "AZ/GOV/1300000013/ss-tax",
            "State Tax Service",
            clients=("etax",),
            services=(
                ServiceSpec(
                    "etax",
                    "taxpayers",
                    adapter="tax",
                    options=data,
                    title="Taxpayers, PIN to TIN, no-debt reference, declared income",
                    grants=(
                        (bank, "GET", "/taxpayers"),
                        (bank, "GET", "/taxpayers/*/debt"),
                        (licensing, "GET", "/taxpayers/*/debt"),
                    ),
                    person_fields=(PersonField("query", "pin"),),
                ),
            ),
        ),
        AgencySpec(
            "AZ/GOV/1400000014/ss-labor",
            "Ministry of Labour and Social Protection",
            clients=("contracts",),
            services=(
                ServiceSpec(
                    "contracts",
                    "contracts",
                    adapter="labor",
                    options=data,
                    title="Labor contract notification system",
                    grants=((portal, None, None), (bank, "GET", "/employees/*/reference")),
                    person_fields=(
                        PersonField("path", "/employees/{pin}/**"),
                        PersonField("json", "/employee_pin"),
                    ),
                ),
            ),
        ),
        AgencySpec(
            "AZ/GOV/1500000015/ss-licensing",
            "Ministry of Economy",
            clients=("licensing",),
            services=(
                ServiceSpec(
                    "licensing",
                    "licenses",
                    adapter="licensing",
                    options={**data, "bus_client": "licensing"},
                    title="E-license and permits",
                    grants=((portal, None, None),),
                    person_fields=(PersonField("json", "/pin"),),
                ),
            ),
        ),
        AgencySpec("AZ/COM/9900001111/ss-bank", "Kapital Bank", clients=("loans", "marketing")),
        AgencySpec("AZ/GOV/1000000001/ss-portal", "e-Gov Portal", clients=("portal",)),
    )
