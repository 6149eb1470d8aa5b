"""The benchmark bed: a federation's state on disk, then every server in a process of its own.

``build_state`` runs :func:`security_server.sandbox.start_federation` once (central server, a bank's consumer
security server ``ss-a`` and a ministry's provider ``ss-b``) with the provider's services pointing at a small
aiohttp information system (:func:`service_app`) through URL backends, then stops the in-process servers.
:class:`Bed` starts from that state, each as its own OS process:

* ``korpu central serve`` (global configuration, OCSP, TSA),
* ``korpu ss serve`` for ss-a and for ss-b,
* the information system (``python benchmarks/harness.py service``),
* the baseline's two reverse proxies (``benchmarks/baseline.py``), using ss-a's and ss-b's own authentication
  certificates and keys for the same mutual TLS.

Everything listens on 127.0.0.1.  Every process is stopped by :meth:`Bed.stop`, also when a benchmark fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONSUMER = "AZ/COM/9900001111/ss-a"
PROVIDER = "AZ/GOV/1400057421/ss-b"
CLIENT = "AZ/COM/9900001111/loans"
CLIENT_SUBJECT = f"SUBSYSTEM:{CLIENT}"
REST_PATH = "/r1/AZ/GOV/1400057421/population/hello/hello"

#: pr-mess Annex E.1's request (tests/fixtures/xroad/soap_request.xml) with this bed's identifiers; ``{ID}`` is
#: replaced by a fresh message id per request.
SOAP_ENVELOPE = """<?xml version="1.0" encoding="UTF-8"?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/" xmlns:ns1="http://producer.x-road.eu"
  xmlns:xrd="http://x-road.eu/xsd/xroad.xsd" xmlns:id="http://x-road.eu/xsd/identifiers">
  <SOAP-ENV:Header>
    <xrd:client id:objectType="SUBSYSTEM"><id:xRoadInstance>AZ</id:xRoadInstance><id:memberClass>COM</id:memberClass>
      <id:memberCode>9900001111</id:memberCode><id:subsystemCode>loans</id:subsystemCode></xrd:client>
    <xrd:service id:objectType="SERVICE"><id:xRoadInstance>AZ</id:xRoadInstance><id:memberClass>GOV</id:memberClass>
      <id:memberCode>1400057421</id:memberCode><id:subsystemCode>population</id:subsystemCode>
      <id:serviceCode>echoService</id:serviceCode><id:serviceVersion>v1</id:serviceVersion></xrd:service>
    <xrd:id>{ID}</xrd:id>
    <xrd:userId>AZ12345678901</xrd:userId>
    <xrd:protocolVersion>4.0</xrd:protocolVersion>
  </SOAP-ENV:Header>
  <SOAP-ENV:Body><ns1:echoService><exampleInput>foo</exampleInput></ns1:echoService></SOAP-ENV:Body>
</SOAP-ENV:Envelope>
"""


# The information system -----------------------------------------------------------------------------------------


def service_app() -> Any:
    """The provider's information system: ``GET /hello`` (small JSON) and ``POST /soap`` (echo)."""
    from aiohttp import web

    hello = json.dumps({"message": "Hello, world!", "n": 42}).encode()

    async def get_hello(_request: web.Request) -> web.Response:
        return web.Response(body=hello, content_type="application/json")

    async def post_soap(request: web.Request) -> web.Response:
        # The response echoes the request's X-Road headers unchanged (as the protocol requires) and the operation,
        # wrapped in <…Response>.  Plain byte surgery: the benchmark measures the bridge, not this service.
        data = await request.read()
        start = data.index(b"<ns1:echoService>")
        end = data.index(b"</ns1:echoService>") + len(b"</ns1:echoService>")
        body = b"<ns1:echoServiceResponse>" + data[start:end] + b"</ns1:echoServiceResponse>"
        return web.Response(body=data[:start] + body + data[end:], content_type="text/xml", charset="utf-8")

    app = web.Application(client_max_size=1 << 40)
    app.router.add_get("/hello", get_hello)
    app.router.add_post("/soap", post_soap)
    return app


def _serve_service(port: int) -> None:
    from aiohttp import web

    async def main() -> None:
        runner = web.AppRunner(service_app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        print(f"service running on http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# State on disk ---------------------------------------------------------------------------------------------------


def _agencies(service_url: str) -> tuple[Any, ...]:
    from security_server.sandbox import AgencySpec, ServiceSpec

    grant = ((CLIENT_SUBJECT, None, None),)
    return (
        AgencySpec(CONSUMER, "Kapital Bank", clients=("loans",)),
        AgencySpec(
            PROVIDER,
            "Ministry of Digital Development",
            clients=("population",),
            services=(
                ServiceSpec("population", "hello", adapter=None, url=service_url, grants=grant),
                ServiceSpec(
                    "population", "echoService", type="SOAP", adapter=None, url=f"{service_url}/soap", grants=grant
                ),
            ),
        ),
    )


async def _build_state(state: Path, pin: str, service_port: int) -> dict[str, Any]:
    from cryptography.hazmat.primitives.serialization import Encoding

    from security_server.sandbox import start_federation

    federation = await start_federation(
        state, _agencies(f"http://127.0.0.1:{service_port}"), pin=pin, expiry_seconds=3600
    )
    try:
        root = federation.central.ca.root_cert.public_bytes(Encoding.PEM)
        (state / "ca-root.pem").write_bytes(root)
        info = {
            "central_url": federation.central_url,
            "service_port": service_port,
            "servers": {code: str(r.runtime.state_dir) for code, r in federation.servers.items()},
        }
    finally:
        await federation.stop()
    return info


def build_state(state: Path) -> dict[str, Any]:
    """Initialise the federation under ``state`` (must not exist or be empty); returns and writes ``bed.json``."""
    from security_server.sandbox import free_port

    pin = secrets.token_urlsafe(12)
    info = asyncio.run(_build_state(state, pin, free_port()))
    info["pin"] = pin
    (state / "bed.json").write_text(json.dumps(info, indent=2))
    os.chmod(state / "bed.json", 0o600)
    return info


# Processes -------------------------------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (kB) of a process, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int, *, main_thread: bool = False) -> float:
    """User + system CPU seconds a process (or only its main thread) has used, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


@dataclass
class Proc:
    """One server process: started, ready once ``marker`` appears on its stdout, output kept in ``log``."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    def start(self, marker: bytes, timeout: float = 90) -> None:
        """Start and wait (bounded) until the process prints ``marker``."""
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        logf: IO[bytes] = open(self.log, "wb")  # noqa: SIM115 - kept open by the drain thread
        self.popen = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=logf, env=env, cwd=ROOT)  # noqa: S603 - our own argv
        ready = threading.Event()

        def drain() -> None:
            assert self.popen is not None and self.popen.stdout is not None
            for line in self.popen.stdout:
                logf.write(line)
                logf.flush()
                if marker in line:
                    ready.set()
            logf.close()

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.1):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start; see {self.log}")

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.popen is not None
        return self.popen.pid

    def stop(self) -> None:
        """Terminate, and kill if it does not exit within 10 s."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@dataclass
class Bed:
    """The processes of one benchmark run and their URLs."""

    state: Path
    info: dict[str, Any]
    procs: dict[str, Proc] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)

    def _proc(self, name: str, argv: list[str], marker: bytes, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, self.state / f"{name}.log", env or {})
        proc.start(marker)
        self.procs[name] = proc
        return proc

    def start(self, *, baseline: bool = True) -> None:
        """Start the information system, central server, both security servers and (optionally) the baseline."""
        py = sys.executable
        pin_env = {"KORPU_PIN": self.info["pin"], "KORPU_LOG_FORMAT": "json", "KORPU_LOG_LEVEL": "WARNING"}
        port = self.info["service_port"]
        self._proc("service", [py, str(ROOT / "benchmarks" / "harness.py"), "service", "--port", str(port)], b"running")
        self.urls["service"] = f"http://127.0.0.1:{port}"
        central = str(self.state / "central")
        self._proc("central", [py, "-m", "bridge.cli", "central", "serve", "--dir", central], b"listening", pin_env)
        for code in ("ss-b", "ss-a"):  # the provider first: the consumer may reach it as soon as it runs
            ss_dir = self.info["servers"][code]
            self._proc(code, [py, "-m", "bridge.cli", "ss", "serve", "--dir", ss_dir], b"running", pin_env)
            runtime = json.loads((Path(ss_dir) / "runtime.json").read_text())
            self.urls[code] = runtime["client_http"]
        if baseline:
            self.start_baseline()

    def start_baseline(self) -> None:
        """The baseline: proxy B (mTLS in, with ss-b's identity) and proxy A (HTTP in, mTLS out, ss-a's identity)."""
        from security_server.sandbox import free_port

        py, script = sys.executable, str(ROOT / "benchmarks" / "baseline.py")
        env = {"KORPU_PIN": self.info["pin"]}
        ca = str(self.state / "ca-root.pem")
        port_b, port_a = free_port(), free_port()

        def tls_args(code: str) -> list[str]:
            ss_dir = Path(self.info["servers"][code])
            return ["--chain", str(ss_dir / "tls" / "auth.chain.pem"), "--key", str(ss_dir / "token" / "auth.key.pem")]

        self._proc(
            "proxy-b",
            [py, script, "proxy-b", "--port", str(port_b), "--upstream", self.urls["service"], "--ca", ca,
             *tls_args("ss-b")],
            b"running", env,
        )  # fmt: skip
        self._proc(
            "proxy-a",
            [py, script, "proxy-a", "--port", str(port_a), "--upstream", f"https://127.0.0.1:{port_b}", "--ca", ca,
             *tls_args("ss-a")],
            b"running", env,
        )  # fmt: skip
        self.urls["proxy-a"] = f"http://127.0.0.1:{port_a}"

    def pid(self, name: str) -> int:
        """The process id of ``name``."""
        return self.procs[name].pid

    def stop(self) -> None:
        """Stop every process, in reverse start order."""
        for proc in reversed(list(self.procs.values())):
            proc.stop()


def main() -> None:
    """``service``: run the information system; ``state``: build a bed and keep it running."""
    parser = argparse.ArgumentParser(description="benchmark bed: the information system, or build state")
    sub = parser.add_subparsers(dest="cmd", required=True)
    svc = sub.add_parser("service", help="run the benchmark's information system")
    svc.add_argument("--port", type=int, required=True)
    st = sub.add_parser("state", help="build a federation's state directory and start it until Ctrl-C")
    st.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    if args.cmd == "service":
        _serve_service(args.port)
    else:
        bed = Bed(args.dir, build_state(args.dir))
        try:
            bed.start()
            print(json.dumps(bed.urls, indent=2), flush=True)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            bed.stop()


if __name__ == "__main__":
    main()
