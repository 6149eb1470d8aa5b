"""A running two-agency federation shared by the exchange tests of one module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from security_server.sandbox import AgencySpec, Federation, ServiceSpec, start_federation

BANK_CLIENT = "SUBSYSTEM:AZ/COM/9900001111/loans"
AGENCIES = (
    AgencySpec(
        "AZ/COM/9900001111/ss-a",
        "Kapital Bank",
        clients=("loans", "marketing"),
    ),
    AgencySpec(
        "AZ/GOV/1400057421/ss-b",
        "Ministry of Digital Development",
        clients=("population",),
        services=(
            ServiceSpec("population", "hello", grants=((BANK_CLIENT, None, None),)),
            ServiceSpec("population", "echo", grants=((BANK_CLIENT, "POST", "/echo"),)),
            ServiceSpec("population", "helloService", type="SOAP", grants=((BANK_CLIENT, None, None),)),
        ),
    ),
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def federation(tmp_path_factory: object) -> AsyncIterator[Federation]:
    """Central server plus ss-a (a bank, client) and ss-b (a ministry, provider) on loopback."""
    state: Path = tmp_path_factory.mktemp("federation")  # type: ignore[attr-defined]
    fed = await start_federation(state, AGENCIES)
    try:
        yield fed
    finally:
        await fed.stop()
