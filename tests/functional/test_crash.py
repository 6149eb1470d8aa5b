"""Nothing the client saw succeed is missing from the logs, even when a security server is killed with SIGKILL.

The central server and the provider (ss-b) run in this process; the consumer (ss-a) runs as a real
``korpu ss serve`` process.  A burst of exchanges goes through ss-a; ss-a is killed with SIGKILL in the middle of
it and started again.  Every exchange whose 200 the client received must then have its request and response
records in both servers' logs, and both logs' hash chains must verify.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from bridge.messagelog import verify_chain
from security_server.messagelog import LogQuery
from security_server.messagelog.store import SqlLogStore
from security_server.sandbox import Federation, start_federation
from tests.functional.conftest import agencies

pytestmark = [pytest.mark.functional, pytest.mark.asyncio(loop_scope="module")]

LOANS = "AZ/COM/9900001111/loans"
HELLO = "/r1/AZ/GOV/1400057421/population/hello/hello"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def federation(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Federation]:
    state: Path = tmp_path_factory.mktemp("crash")
    fed = await start_federation(state, agencies("http://127.0.0.1:9"))
    try:
        yield fed
    finally:
        await fed.stop()


class ServeProcess:
    """``korpu ss serve`` for a state directory; ``client_url`` once it reported its listeners."""

    def __init__(self, state_dir: Path, pin: str) -> None:
        self.state_dir = state_dir
        self.pin = pin
        self.proc: asyncio.subprocess.Process | None = None
        self.client_url = ""

    async def start(self) -> None:
        env = {**os.environ, "KORPU_PIN": self.pin, "KORPU_LOG_FORMAT": "json", "KORPU_LOG_LEVEL": "WARNING"}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge.cli", "ss", "serve", "--dir", str(self.state_dir),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env,
        )  # fmt: skip
        assert self.proc.stdout is not None
        # The process prints its listeners when it is ready; wait for that line (bounded).
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout=60)
            if not line:
                raise AssertionError("korpu ss serve exited before it was ready")
            if b"running" in line:
                break
        urls = json.loads((self.state_dir / "runtime.json").read_text())
        self.client_url = urls["client_http"]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def test_sigkill_during_a_burst_loses_nothing_the_client_saw(federation: Federation) -> None:
    """After SIGKILL and restart, every exchange that returned 200 is logged on both sides; both chains verify."""
    ss_a_dir = federation.server("ss-a").runtime.state_dir
    await federation.server("ss-a").stop()  # the consumer continues as a separate process
    serve = ServeProcess(ss_a_dir, federation.pin)
    await serve.start()
    succeeded: list[str] = []
    killed = asyncio.Event()

    async def one(http: aiohttp.ClientSession, n: int) -> None:
        message_id = f"crash-{n}"
        headers = {"X-Road-Client": LOANS, "X-Road-Id": message_id}
        try:
            async with http.get(serve.client_url + HELLO, headers=headers) as resp:
                await resp.read()
                if resp.status == 200:
                    succeeded.append(message_id)
        except aiohttp.ClientError:
            pass  # in flight when the process died: the client did not see it succeed
        if len(succeeded) == 40 and not killed.is_set():
            killed.set()
            serve.kill()

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            for start in range(0, 200, 20):
                await asyncio.gather(*(one(http, n) for n in range(start, start + 20)))
                if killed.is_set():
                    break
        assert killed.is_set(), "the burst ended before the kill"
        assert serve.proc is not None
        await serve.proc.wait()
        assert len(succeeded) >= 40

        # Restart: the log opens after the crash and keeps serving.
        serve = ServeProcess(ss_a_dir, federation.pin)
        await serve.start()
        async with (
            aiohttp.ClientSession() as http,
            http.get(serve.client_url + HELLO, headers={"X-Road-Client": LOANS, "X-Road-Id": "after-restart"}) as resp,
        ):
            assert resp.status == 200
    finally:
        await serve.stop()

    consumer = SqlLogStore(
        federation.server("ss-a").runtime.config.message_log.database_url(ss_a_dir),
        ss_a_dir / "messagelog-bodies",
    )
    provider = federation.server("ss-b").runtime.log_store
    try:
        for store in (consumer, provider):
            last, _ = store.head()
            verify_chain(store.records(1, last))
            for message_id in [*succeeded, "after-restart"]:
                kinds = sorted(r.direction for r in store.find(LogQuery(message_id=message_id)))
                assert kinds == ["request", "response"], (message_id, kinds)
    finally:
        consumer.close()
