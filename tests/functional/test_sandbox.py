"""``korpu up``: the sandbox federation writes sandbox.json with everything a newcomer needs, and its examples work."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import aiohttp
import pytest

from security_server.sandbox import Federation, curl_examples, run_sandbox

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
        ss_a, ss_b = info["security_servers"]["ss-a"], info["security_servers"]["ss-b"]
        assert ss_a["clients"] == ["AZ/GOV/1000000001/client"]
        assert "AZ/GOV/1000000002/services/hello" in ss_b["services"]
        assert ss_a["admin_api_key"]
        printed = capsys.readouterr().out
        for example in curl_examples(info):
            assert example in printed
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{ss_a['client_proxy']}/r1/AZ/GOV/1000000002/services/hello/hello?name=Aysel",
                headers={"X-Road-Client": ss_a["clients"][0]},
            ) as resp,
        ):
            assert resp.status == 200
            assert (await resp.json())["message"] == "Hello, Aysel!"
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
