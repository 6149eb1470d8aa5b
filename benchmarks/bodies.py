"""100 MB REST bodies through two security servers, each in its own process: memory growth and throughput.

Usage::

    .venv/bin/python benchmarks/bodies.py [--mib 100] [--json FILE]

Set-up (all on 127.0.0.1): the central server runs in this process; the provider's information system (a streaming
HTTP backend that hashes uploads and streams downloads without holding them) runs in a child process; the
federation is initialised with :func:`security_server.sandbox.start_federation`, then both security servers are
stopped and started again as ``korpu ss serve --dir <state>`` processes (as in ``tests/functional/test_crash.py``).
The client (aiohttp, in this process) uploads ``--mib`` MiB to ``population/stream/upload`` through ss-a → ss-b
→ backend, and downloads as much from ``population/stream/download``; both are checked by size and SHA-512.

For each security server process the benchmark reads ``/proc/<pid>/status`` before and after each transfer:
``VmRSS`` (resident now) and ``VmHWM`` (peak resident), after resetting the peak with ``/proc/<pid>/clear_refs``
(``5``) where the kernel allows it, so the peak belongs to that transfer.  Growth = peak during the transfer −
resident before it.  One small warm-up exchange runs first, so connection pools, TLS sessions, OCSP staples and
lazy imports are not counted.  Target: < 50 MB growth per server.

``run() -> dict`` is the entry point for the benchmark harness.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from security_server.sandbox import AgencySpec, ServiceSpec, free_port, start_federation
from tests.streaming import CHUNK, streaming_app

LOANS = "AZ/COM/9900001111/loans"
BANK_CLIENT = "SUBSYSTEM:AZ/COM/9900001111/loans"
STREAM = "/r1/AZ/GOV/1400057421/population/stream"
TARGET_MB = 50.0
SERVERS = ("ss-b", "ss-a")  # provider first: the consumer's first exchange needs it listening


def agencies(stream_url: str) -> tuple[AgencySpec, ...]:
    """A bank (ss-a, client ``loans``) and a ministry (ss-b) providing ``stream`` from ``stream_url``."""
    return (
        AgencySpec("AZ/COM/9900001111/ss-a", "Kapital Bank", clients=("loans",)),
        AgencySpec(
            "AZ/GOV/1400057421/ss-b",
            "Ministry of Digital Development",
            clients=("population",),
            services=(
                ServiceSpec("population", "stream", adapter=None, url=stream_url, grants=((BANK_CLIENT, None, None),)),
            ),
        ),
    )


# The backend (child process) ------------------------------------------------------------------------------------------


def serve_backend(port: int) -> None:
    """The provider's streaming information system on 127.0.0.1:``port`` (runs until terminated)."""
    web.run_app(streaming_app(), host="127.0.0.1", port=port, access_log=None, print=None)


# Processes ------------------------------------------------------------------------------------------------------------


async def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            writer.close()
            return


class Serve:
    """``korpu ss serve --dir state_dir`` as a child process."""

    def __init__(self, state_dir: Path, pin: str) -> None:
        self.state_dir = state_dir
        self.pin = pin
        self.proc: asyncio.subprocess.Process | None = None
        self.urls: dict[str, str] = {}

    @property
    def pid(self) -> int:
        """The process id (once started)."""
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        """Start the process and wait until it reports its listeners."""
        env = {**os.environ, "KORPU_PIN": self.pin, "KORPU_LOG_FORMAT": "json", "KORPU_LOG_LEVEL": "WARNING"}
        (self.state_dir / "runtime.json").unlink(missing_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge.cli", "ss", "serve", "--dir", str(self.state_dir),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env,
        )  # fmt: skip
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout=60)
            if not line:
                raise RuntimeError(f"korpu ss serve --dir {self.state_dir} exited before it was ready")
            if b"running" in line:
                break
        self.urls = json.loads((self.state_dir / "runtime.json").read_text())

    async def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after 15 s)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def memory(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# The transfers --------------------------------------------------------------------------------------------------------


@functools.cache
def _expected_digest(mib: int) -> str:
    """SHA-512 of ``mib`` MiB of :data:`CHUNK` (computed before the clock starts, see :func:`run_async`)."""
    digest = hashlib.sha512()
    for _ in range(mib):
        digest.update(CHUNK)
    return digest.hexdigest()


async def _upload_through(http: aiohttp.ClientSession, client_url: str, mib: int) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(mib):
            yield CHUNK

    headers = {"X-Road-Client": LOANS, "Content-Type": "application/octet-stream", "Content-Length": str(mib << 20)}
    async with http.post(f"{client_url}{STREAM}/upload", data=body(), headers=headers) as resp:
        answer = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"upload failed: {resp.status} {answer}")
    if answer != {"size": mib << 20, "sha512": _expected_digest(mib)}:
        raise RuntimeError(f"upload arrived damaged: {answer}")


async def _download_through(http: aiohttp.ClientSession, client_url: str, mib: int) -> None:
    digest, size = hashlib.sha512(), 0
    async with http.get(f"{client_url}{STREAM}/download?mib={mib}", headers={"X-Road-Client": LOANS}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"download failed: {resp.status} {await resp.text()}")
        async for chunk in resp.content.iter_chunked(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    if size != mib << 20 or digest.hexdigest() != _expected_digest(mib):
        raise RuntimeError("download arrived damaged")


async def _measured(name: str, servers: dict[str, Serve], mib: int, transfer: Any) -> dict[str, Any]:
    before = {code: memory(s.pid) for code, s in servers.items()}
    cpu_before = {code: cpu_seconds(s.pid) for code, s in servers.items()}
    peak_reset = all(reset_peak(s.pid) for s in servers.values())
    started = time.perf_counter()
    await transfer
    elapsed = time.perf_counter() - started
    result: dict[str, Any] = {
        "mib": mib,
        "seconds": round(elapsed, 3),
        "mib_per_s": round(mib / elapsed, 1),
        "peak_reset": peak_reset,
    }
    for code, s in servers.items():
        after = memory(s.pid)
        result[code] = {
            "rss_before_kib": before[code]["VmRSS"],
            "rss_after_kib": after["VmRSS"],
            "hwm_kib": after["VmHWM"],
            "rss_growth_mb": round((after["VmRSS"] - before[code]["VmRSS"]) * 1024 / 1e6, 1),
            "peak_growth_mb": round((after["VmHWM"] - before[code]["VmRSS"]) * 1024 / 1e6, 1),
            "cpu_s": round(cpu_seconds(s.pid) - cpu_before[code], 2),
        }
    print(
        f"  {name}: {mib} MiB in {elapsed:.2f} s = {mib / elapsed:.1f} MiB/s; "
        + "; ".join(
            f"{c} RSS {result[c]['rss_before_kib'] / 1024:.0f} MiB before, peak {result[c]['peak_growth_mb']:+.1f} MB,"
            f" after {result[c]['rss_growth_mb']:+.1f} MB, CPU {result[c]['cpu_s']:.1f} s"
            for c in servers
        ),
        flush=True,
    )
    return result


async def run_async(mib: int = 100, state: Path | None = None) -> dict[str, Any]:
    """Build the federation, move ``mib`` MiB up and down, and return the figures."""
    with contextlib.ExitStack() as stack:
        if state is None:
            state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="korpu-bodies-")))
        _expected_digest(mib)  # not inside the timed transfers
        port = free_port()
        script = str(Path(__file__).resolve())  # noqa: ASYNC240 - once, at set-up
        backend = await asyncio.create_subprocess_exec(sys.executable, script, "--backend", str(port))
        servers: dict[str, Serve] = {}
        fed = None
        try:
            await _wait_port(port)
            fed = await start_federation(state, agencies(f"http://127.0.0.1:{port}"))
            for code in SERVERS:
                await fed.server(code).stop()  # each continues as its own process
            for code in SERVERS:
                servers[code] = Serve(fed.server(code).runtime.state_dir, fed.pin)
                await servers[code].start()
            client_url = servers["ss-a"].urls["client_http"]
            timeout = aiohttp.ClientTimeout(total=600)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                # Warm-up: pools, TLS, OCSP staples, lazy imports — not what a body costs.
                await _upload_through(http, client_url, 1)
                await _download_through(http, client_url, 1)
                baseline = {code: memory(s.pid) for code, s in servers.items()}
                up = await _measured("upload", servers, mib, _upload_through(http, client_url, mib))
                down = await _measured("download", servers, mib, _download_through(http, client_url, mib))
            worst = max(r[c]["peak_growth_mb"] for r in (up, down) for c in servers)
            return {
                "mib": mib,
                "baseline_kib": baseline,
                "pids": {code: s.pid for code, s in servers.items()},
                "upload": up,
                "download": down,
                "worst_peak_growth_mb": worst,
                "target_mb": TARGET_MB,
                "ok": worst < TARGET_MB,
            }
        finally:
            for s in servers.values():
                await s.stop()
            if fed is not None:
                await fed.central_runner.cleanup()
            if backend.returncode is None:
                backend.send_signal(signal.SIGTERM)
                await backend.wait()


def run(mib: int = 100) -> dict[str, Any]:
    """The harness's entry point: :func:`run_async` on a new event loop."""
    return asyncio.run(run_async(mib))


def main() -> None:
    """Parse arguments, run, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=100, help="body size in MiB (default 100)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--backend", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend is not None:
        serve_backend(args.backend)
        return
    # The in-process central server's info lines would bury the figures (the harness configures its own logging).
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    result = run(args.mib)
    print(
        f"worst peak growth {result['worst_peak_growth_mb']} MB per server "
        f"(target < {TARGET_MB:.0f} MB): {'OK' if result['ok'] else 'MISS'}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
