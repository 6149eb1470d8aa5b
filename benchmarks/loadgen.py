"""HTTP load generator: closed loop at a fixed concurrency, or open loop at a fixed rate; prints one JSON line.

Closed loop (default): ``--concurrency`` workers each send a request as soon as their previous one is answered,
for ``--warmup`` + ``--duration`` seconds (or until ``--requests`` have been sent); only requests that start after
the warm-up and finish before the end count.  Reports req/s, latency percentiles and errors.

Open loop (``--rate R``): requests start on a fixed schedule of R per second whatever the answers do; latency is
measured from the *scheduled* start, so a stalled server shows up as latency instead of a slower schedule
(no coordinated omission).

One aiohttp session with keep-alive.  The JSON also gives the generator's own CPU seconds, so a run can tell
whether the client itself was the bottleneck (``client_cpu_util`` near 1.0 = one core saturated).

    python benchmarks/loadgen.py --url http://127.0.0.1:P/r1/… -H 'X-Road-Client: AZ/COM/9900001111/loans'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import sys
import time
import uuid
from typing import Any

import aiohttp


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) of already sorted values, nearest-rank; None for no values."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


class Recorder:
    """Latencies (ms) and errors of the requests inside the measured window."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end
        self.latencies: list[float] = []
        self.errors = 0
        self.statuses: dict[str, int] = {}
        self.first_error: str | None = None
        self.sent = 0

    def add(self, begun: float, done: float, status: int | None, error: str | None) -> None:
        """Count one request if it lies inside the window."""
        if begun < self.start or done > self.end:
            return
        key = str(status) if status is not None else "exception"
        self.statuses[key] = self.statuses.get(key, 0) + 1
        if error is not None or status is None or status >= 400:
            self.errors += 1
            self.first_error = self.first_error or error or f"HTTP {status}"
        else:
            self.latencies.append((done - begun) * 1000)


async def one(
    session: aiohttp.ClientSession, args: argparse.Namespace, body: bytes | None
) -> tuple[int | None, str | None]:
    """Send one request; the status, or an error description."""
    data = body.replace(b"{ID}", uuid.uuid4().hex.encode()) if body is not None else None
    try:
        async with session.request(args.method, args.url, data=data, headers=args.headers) as resp:
            payload = await resp.read()
            if resp.status >= 400:
                return resp.status, f"HTTP {resp.status}: {payload[:200]!r}"
            return resp.status, None
    except (aiohttp.ClientError, TimeoutError) as exc:
        return None, f"{exc.__class__.__name__}: {exc}"


async def closed(session: aiohttp.ClientSession, args: argparse.Namespace, body: bytes | None) -> Recorder:
    """Closed loop: ``concurrency`` workers, each sending as soon as its last answer arrived."""
    t0 = time.perf_counter()
    end = t0 + args.warmup + args.duration if args.requests is None else float("inf")
    rec = Recorder(t0 + args.warmup, end)
    budget = [args.requests if args.requests is not None else -1]

    async def worker() -> None:
        while time.perf_counter() < end:
            if budget[0] == 0:
                return
            budget[0] -= 1
            begun = time.perf_counter()
            status, error = await one(session, args, body)
            rec.add(begun, time.perf_counter(), status, error)
            rec.sent += 1

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    if args.requests is not None:
        rec.end = time.perf_counter()
    return rec


async def open_loop(session: aiohttp.ClientSession, args: argparse.Namespace, body: bytes | None) -> Recorder:
    """Open loop: ``rate`` requests per second on a fixed schedule."""
    t0 = time.perf_counter()
    end = t0 + args.warmup + args.duration
    rec = Recorder(t0 + args.warmup, end + 30)  # late answers to scheduled requests still count (as latency)
    interval = 1.0 / args.rate
    tasks: set[asyncio.Task[None]] = set()

    async def fire(scheduled: float) -> None:
        status, error = await one(session, args, body)
        rec.add(scheduled, time.perf_counter(), status, error)

    i = 0
    while True:
        scheduled = t0 + i * interval
        if scheduled >= end:
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(fire(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        rec.sent += 1
        i += 1
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    rec.end = end
    return rec


async def run(args: argparse.Namespace, body: bytes | None) -> dict[str, Any]:
    """Run the load; the result as a JSON-ready dict."""
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        rec = await (open_loop(session, args, body) if args.rate else closed(session, args, body))
    wall = time.perf_counter() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    lat = sorted(rec.latencies)
    window = max(1e-9, rec.end - rec.start)
    return {
        "mode": "open" if args.rate else "closed",
        "url": args.url,
        "method": args.method,
        "concurrency": None if args.rate else args.concurrency,
        "rate": args.rate,
        "duration_s": round(window, 3),
        "ok": len(lat),
        "sent": rec.sent,
        "errors": rec.errors,
        "statuses": rec.statuses,
        "first_error": rec.first_error,
        "rps": round(len(lat) / window, 1),
        "p50_ms": percentile(lat, 0.50),
        "p90_ms": percentile(lat, 0.90),
        "p99_ms": percentile(lat, 0.99),
        "max_ms": lat[-1] if lat else None,
        "mean_ms": sum(lat) / len(lat) if lat else None,
        "client_cpu_s": round(cpu, 2),
        "client_cpu_util": round(cpu / wall, 3),
    }


def main() -> None:
    """Parse arguments, run, print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value' (repeatable)")
    parser.add_argument("--body-file", help="request body; every {ID} in it is replaced by a fresh id per request")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds (default 15)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first (default 3)")
    parser.add_argument("--rate", type=float, help="open loop at this many requests/s")
    parser.add_argument("--requests", type=int, help="closed loop: stop after this many requests (no time limit)")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    if args.requests is not None:
        args.warmup = 0.0
    args.headers = dict(h.split(":", 1) for h in args.header)
    args.headers = {k.strip(): v.strip() for k, v in args.headers.items()}
    body = None
    if args.body_file:
        with open(args.body_file, "rb") as f:
            body = f.read()
    result = asyncio.run(run(args, body))
    json.dump(result, sys.stdout)
    print(flush=True)


if __name__ == "__main__":
    main()
