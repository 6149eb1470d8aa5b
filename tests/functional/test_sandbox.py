"""``korpu up``: the sandbox federation writes sandbox.json with everything a newcomer needs, and its examples work."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import aiohttp
import pytest

from security_server.sandbox import Federation, run_sandbox

pytestmark = [pytest.mark.functional]


async def test_up_writes_sandbox_json_and_serves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """sandbox.json names every URL, path, identifier and key; the printed hello example answers; it stops cleanly."""
    stop, ready = asyncio.Event(), asyncio.Event()
    started: list[Federation] = []

    def on_ready(federation: Federation) -> None:
        started.append(federation)
        ready.set()

    task = asyncio.create_task(run_sandbox(tmp_path, stop, ready=on_ready))
    try:
        # Wait for readiness; if the sandbox fails first, its task finishes and result() raises the failure.
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiter}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        assert started, "the sandbox did not become ready within 60 s"
        info = json.loads((tmp_path / "sandbox.json").read_text())
        assert stat.S_IMODE((tmp_path / "sandbox.json").stat().st_mode) == 0o600  # it holds API keys
        for key in ("central_server", "ocsp_responder", "timestamp_authority", "anchor", "ca_certificate"):
            assert info[key], key
        assert Path(info["anchor"]).is_file()
        assert Path(info["ca_certificate"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
        servers = info["security_servers"]
        assert sorted(servers) == ["ss-bank", "ss-labor", "ss-licensing", "ss-population", "ss-portal", "ss-tax"]
        assert servers["ss-bank"]["clients"] == ["AZ/COM/9900001111/loans", "AZ/COM/9900001111/marketing"]
        assert "AZ/GOV/1100000011/population/persons" in servers["ss-population"]["services"]
        assert all(s["admin_api_key"] for s in servers.values())
        printed = capsys.readouterr().out
        examples = [line.strip() for line in printed.splitlines() if line.strip().startswith("curl ")]
        assert len(examples) == 8
        # The first printed example (the bank reads a person) answers with that person.
        url = examples[0].rsplit(" ", 1)[1].strip("'")
        pin = url.rsplit("/", 1)[1]
        async with (
            aiohttp.ClientSession() as http,
            http.get(url, headers={"X-Road-Client": "AZ/COM/9900001111/loans"}) as resp,
        ):
            assert resp.status == 200
            assert (await resp.json())["pin"] == pin
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
