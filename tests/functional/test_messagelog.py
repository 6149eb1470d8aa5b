"""The message log end to end: person queries, evidence export verified independently, TSA outage.

Uses the shared two-agency federation (tests/functional/conftest.py).  The ministry's ``hello`` service declares
its ``?name=`` query parameter as a person identifier.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import os
import subprocess
import sys
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from security_server.runtime import ServerRuntime
from security_server.sandbox import Federation, free_port

pytestmark = [pytest.mark.functional, pytest.mark.asyncio(loop_scope="module")]

LOANS = "AZ/COM/9900001111/loans"
SERVICE = "/r1/AZ/GOV/1400057421/population"


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    fed: Federation, http: aiohttp.ClientSession, path: str, *, user: str | None = None, data: bytes | None = None
) -> aiohttp.ClientResponse:
    headers = {"X-Road-Client": LOANS, "X-Road-Id": f"m-{uuid.uuid4()}"}
    if user is not None:
        headers["X-Road-UserId"] = user
    method = "POST" if data is not None else "GET"
    async with http.request(
        method, fed.server("ss-a").urls["client_http"] + SERVICE + path, headers=headers, data=data
    ) as resp:
        await resp.read()
        return resp


async def audit(fed: Federation, http: aiohttp.ClientSession, server: str, **params: str) -> dict[str, Any]:
    url = fed.server(server).urls["admin"] + "/api/v1/audit/records"
    async with http.get(url, params=params, headers={"X-API-Key": fed.admin_keys[server]}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return dict(body)


async def test_person_query_returns_exactly_that_persons_exchanges(
    federation: Federation, http: aiohttp.ClientSession
) -> None:
    """Who accessed person P: every exchange carrying P (as ?name= or as userId), and nothing else."""
    p, q = f"AZ{uuid.uuid4().hex[:8]}", f"AZ{uuid.uuid4().hex[:8]}"
    expected: set[str] = set()
    for path, user in ((f"/hello/hello?name={p}", None), (f"/hello/hello?name={p}", None), ("/hello/hello", p)):
        resp = await call(federation, http, path, user=user)
        assert resp.status == 200
        expected.add(resp.headers["X-Road-Id"])
    for path in (f"/hello/hello?name={q}", "/hello/hello?name=somebody"):
        assert (await call(federation, http, path)).status == 200

    found = await audit(federation, http, "ss-b", person=p)
    records = [r for r in found["items"] if r["direction"] in ("request", "response")]
    assert {r["message_id"] for r in records} == expected
    assert sorted(r["direction"] for r in records) == ["request"] * 3 + ["response"] * 3
    assert all(p in r["persons"] or r["user_id"] == p for r in records)
    # The queries themselves are evidence: each one left an audit record naming the person (this one included).
    logged = await audit(federation, http, "ss-b", person=p)
    audits = [r for r in logged["items"] if r["direction"] == "audit"]
    assert [r["service"] for r in audits] == ["audit:person-query"] * 2
    assert all(r["persons"] == [p] for r in audits)


async def test_exported_evidence_verifies_with_standard_tools(
    federation: Federation, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """An exchange exported from the provider's log verifies with korpu audit verify, xmlsec1 and openssl ts.

    One flipped byte in the container makes korpu audit verify fail and name the record.
    """
    resp = await call(federation, http, "/echo/echo", data=b"evidence, please")
    assert resp.status == 200
    request_id = resp.headers["X-Road-Request-Id"]
    for running in federation.servers.values():
        await running.runtime.timestamper.stamp_once()
    url = federation.server("ss-b").urls["admin"] + f"/api/v1/audit/exchanges/{request_id}/evidence"
    async with http.get(url, headers={"X-API-Key": federation.admin_keys["ss-b"]}) as got:
        container = await got.read()
        assert got.status == 200, container[:500]
    path = tmp_path / "evidence.asice"
    path.write_bytes(container)

    ok = korpu("audit", "verify", str(path))
    assert ok.returncode == 0, ok.stdout + ok.stderr

    # Independent tools, exactly as the container's README.txt says.
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(io.BytesIO(container)).extractall(unpacked)
    commands = [line.strip() for line in (unpacked / "README.txt").read_text().splitlines()]
    xmlsec = next(c for c in commands if c.startswith("(cd request && xmlsec1"))
    ts = next(c for c in commands if c.startswith("openssl ts -verify") and "request/" in c)
    for command in (xmlsec, ts):
        result = subprocess.run(command, shell=True, cwd=unpacked, capture_output=True, text=True, check=False)
        assert result.returncode == 0, (command, result.stdout, result.stderr)

    # One byte changed in the request body: verification fails and names the record.
    with zipfile.ZipFile(io.BytesIO(container)) as zin:
        entries = [(i, zin.read(i.filename)) for i in zin.infolist()]
    tampered = io.BytesIO()
    with zipfile.ZipFile(tampered, "w") as zout:
        for info, data in entries:
            if info.filename == "request/body":
                data = data[:-1] + bytes([data[-1] ^ 1])
            zout.writestr(info, data)
    (tmp_path / "tampered.asice").write_bytes(tampered.getvalue())
    bad = korpu("audit", "verify", str(tmp_path / "tampered.asice"))
    assert bad.returncode == 1
    assert "request record" in bad.stdout + bad.stderr


def korpu(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KORPU_LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


@dataclasses.dataclass
class Clock:
    now: dt.datetime

    def __call__(self) -> dt.datetime:
        return self.now


async def test_tsa_outage_grace_refusal_and_recovery(
    federation: Federation, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TSA down: exchanges continue within the grace period, are refused after it, and resume once it is back.

    Every record ends up timestamped exactly once.
    """
    runtime: ServerRuntime = federation.server("ss-a").runtime
    stamper = runtime.timestamper
    await stamper.stamp_once()  # start from a fully timestamped log
    real_tsas = stamper._tsa_provider
    cert = real_tsas()[0][1]
    monkeypatch.setattr(stamper, "_tsa_provider", lambda: [(f"http://127.0.0.1:{free_port()}/tsa", cert)])
    clock = Clock(dt.datetime.now(dt.UTC))
    monkeypatch.setattr(stamper, "_clock", clock)
    monkeypatch.setattr(stamper, "grace_s", 300.0)

    # (1) TSA unreachable, within the grace period: traffic continues, records wait.
    assert (await call(federation, http, "/hello/hello")).status == 200
    assert await stamper.stamp_once() == []  # nothing could be stamped
    # (2) Past the grace period: refused with the specific fault.
    clock.now += dt.timedelta(seconds=301)
    refused = await call(federation, http, "/hello/hello")
    assert (refused.status, refused.headers.get("X-Road-Error")) == (500, "Server.ClientProxy.TimestampingFailed")
    # (3) TSA back: the backlog is stamped and traffic resumes on its own.
    monkeypatch.setattr(stamper, "_tsa_provider", real_tsas)
    assert await stamper.stamp_once() != []
    assert (await call(federation, http, "/hello/hello")).status == 200
    await stamper.stamp_once()
    # (4) Every record is in exactly one batch: batches tile 1..head without overlap or gap.
    last, _ = runtime.log_store.head()
    seq, covered = 1, 0
    while seq <= last:
        batch = runtime.log_store.batch_of(seq)
        assert batch is not None, f"record {seq} was never timestamped"
        assert batch.first_seq == seq
        covered += batch.last_seq - batch.first_seq + 1
        seq = batch.last_seq + 1
    assert covered == last
