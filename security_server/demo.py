"""``korpu demo``: a whole federation on loopback exchanging messages, narrated.

It runs, in one process on SQLite, what an operator does by hand (README walkthrough): a central server is
initialised and served; a bank's and a ministry's security servers are initialised, register, are approved and
install their certificates; the catalog gets the ministry's services and the bank's access rights.  Then the bank's
information system calls the ministry through both security servers — REST and SOAP — and a client without a grant
is refused.  For each exchange it prints who called what, the outcome and the latency.  Exit code 0 only if every
step shows what it should.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
import time
from pathlib import Path

import aiohttp

from bridge.errors import KorpuError
from bridge.pki.ocsp import make_ocsp_request, verify_ocsp_response
from security_server.sandbox import AgencySpec, Federation, ServiceSpec, free_port, start_federation

__all__ = ["DemoFailed", "free_port", "run_demo"]

BANK = "AZ/COM/9900001111"
MINISTRY = "AZ/GOV/1400057421"
LOANS = f"SUBSYSTEM:{BANK}/loans"
AGENCIES = (
    AgencySpec(f"{BANK}/ss-bank", "Kapital Bank", clients=("loans", "marketing")),
    AgencySpec(
        f"{MINISTRY}/ss-population",
        "Ministry of Digital Development",
        clients=("population",),
        services=(
            ServiceSpec("population", "hello", title="Greeting", grants=((LOANS, "GET", "/hello"),)),
            ServiceSpec("population", "echo", title="Echo", grants=((LOANS, "POST", "/echo"),)),
            ServiceSpec(
                "population", "helloService", type="SOAP", title="Greeting (SOAP)", grants=((LOANS, None, None),)
            ),
        ),
    ),
)

SOAP_REQUEST = b"""<?xml version="1.0" encoding="UTF-8"?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/"
    xmlns:xrd="http://x-road.eu/xsd/xroad.xsd" xmlns:id="http://x-road.eu/xsd/identifiers"
    xmlns:ns1="http://population.korpu.example">
  <SOAP-ENV:Header>
    <xrd:client id:objectType="SUBSYSTEM"><id:xRoadInstance>AZ</id:xRoadInstance><id:memberClass>COM</id:memberClass>
      <id:memberCode>9900001111</id:memberCode><id:subsystemCode>loans</id:subsystemCode></xrd:client>
    <xrd:service id:objectType="SERVICE"><id:xRoadInstance>AZ</id:xRoadInstance><id:memberClass>GOV</id:memberClass>
      <id:memberCode>1400057421</id:memberCode><id:subsystemCode>population</id:subsystemCode>
      <id:serviceCode>helloService</id:serviceCode></xrd:service>
    <xrd:id>demo-soap-1</xrd:id>
    <xrd:userId>AZ1234567</xrd:userId>
    <xrd:protocolVersion>4.0</xrd:protocolVersion>
  </SOAP-ENV:Header>
  <SOAP-ENV:Body><ns1:helloService><name>Aysel</name></ns1:helloService></SOAP-ENV:Body>
</SOAP-ENV:Envelope>"""


class DemoFailed(Exception):
    """A step of the demo did not show what it should."""


def _say(text: str) -> None:
    print(text, flush=True)


async def _trust_plane(fed: Federation) -> None:
    conf = fed.server("ss-bank").runtime.conf()
    listed = sorted(s.id.server_code for s in conf.servers)
    if listed != ["ss-bank", "ss-population"]:
        raise DemoFailed(f"global configuration lists {listed}, expected both servers")
    expires = (conf.expires_at - dt.datetime.now(dt.UTC)).total_seconds()
    servers = ", ".join(listed)
    _say(f"  ✓ global configuration v{conf.version}, signed and verified: {servers}; expires in {expires:.0f} s")
    issuer = fed.central.ca.issuing_cert
    for code, running in fed.servers.items():
        cert = running.runtime.token.certificate("auth")
        if cert is None:
            raise DemoFailed(f"{code} has no authentication certificate")
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                fed.central.config.effective_ocsp_url,
                data=make_ocsp_request(cert, issuer),
                headers={"Content-Type": "application/ocsp-request"},
            ) as resp,
        ):
            der = await resp.read()
        status = verify_ocsp_response(
            der, cert, issuer, trusted_responder_certs=(), now=dt.datetime.now(dt.UTC), max_age=dt.timedelta(hours=1)
        )
        _say(f"  ✓ {code}: certificates from the federation CA installed; OCSP says {status.status.name.lower()}")


async def _exchange(
    http: aiohttp.ClientSession,
    title: str,
    method: str,
    url: str,
    headers: dict[str, str],
    data: bytes | None,
    expect: int,
) -> str:
    started = time.perf_counter()
    async with http.request(method, url, headers=headers, data=data) as resp:
        body = await resp.read()
    took = (time.perf_counter() - started) * 1000
    outcome = resp.headers.get("X-Road-Error") or f"HTTP {resp.status}"
    mark = "✓" if resp.status == expect else "✗"
    _say(f"  {mark} {title}: {outcome} in {took:.1f} ms")
    if resp.status != expect:
        raise DemoFailed(f"{title}: expected HTTP {expect}, got {resp.status}: {body[:300]!r}")
    return body.decode("utf-8", "replace")


async def _exchanges(fed: Federation) -> None:
    proxy = fed.server("ss-bank").urls["client_http"]
    service = f"{proxy}/r1/{MINISTRY}/population"
    loans = {"X-Road-Client": f"{BANK}/loans", "X-Road-UserId": "AZ1234567", "X-Road-Issue": "loan-2026-0042"}
    async with aiohttp.ClientSession() as http:
        body = await _exchange(
            http,
            "bank/loans → ministry/population hello (REST GET)",
            "GET",
            f"{service}/hello/hello?name=Aysel",
            loans,
            None,
            200,
        )
        _say(f"      answer: {body}")
        await _exchange(
            http,
            "bank/loans → ministry/population echo (REST POST)",
            "POST",
            f"{service}/echo/echo",
            {**loans, "Content-Type": "application/json"},
            b'{"applicant": "AZ1234567", "amount": 15000}',
            200,
        )
        await _exchange(
            http,
            "bank/loans → ministry/population helloService (SOAP 4.0)",
            "POST",
            f"{proxy}/",
            {"Content-Type": "text/xml; charset=UTF-8"},
            SOAP_REQUEST,
            200,
        )
        await _exchange(
            http,
            "bank/marketing → ministry/population hello (no access right: refused)",
            "GET",
            f"{service}/hello/hello",
            {"X-Road-Client": f"{BANK}/marketing"},
            None,
            500,
        )
        # Timings of a warm exchange, the figure that matters for throughput.
        started = time.perf_counter()
        for _ in range(50):
            async with http.get(f"{service}/hello/hello", headers=loans) as resp:
                await resp.read()
        _say(f"  ✓ 50 more signed, verified exchanges: {(time.perf_counter() - started) * 20:.1f} ms each on average")


async def _demo(state: Path) -> None:
    _say("1. Federation: central server, a bank's and a ministry's security servers")
    started = time.perf_counter()
    fed = await start_federation(state, AGENCIES)
    try:
        _say(
            "  ✓ CA, OCSP responder and TSA up; both servers initialised, registered, approved "
            f"({(time.perf_counter() - started) * 1000:.0f} ms)"
        )
        await _trust_plane(fed)
        _say("2. Exchanges through both security servers (signed, mutually authenticated, permission-checked)")
        await _exchanges(fed)
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
