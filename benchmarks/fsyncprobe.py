"""How long the disk takes to make a small write durable: the floor under every message-log commit.

Usage::

    .venv/bin/python benchmarks/fsyncprobe.py [--dir DIR] [--seconds 10]

Overwrites 16 KiB (about one exchange record with its WAL pages) in a preallocated 4 MiB file in ``DIR`` and
``fdatasync``s it, with 4 ms pauses, for ``--seconds``, and prints the latency distribution (nearest rank).  The
file is written in place, as SQLite reuses its WAL, so the probe does not also sync a growing file's size.  Each
REST exchange waits for four such commits in sequence (the request and the response, on each security server), so
the tail of this distribution is a floor under the exchange's tail latency that no saving of CPU removes.  On the
development VMs the tail came from the virtual disk: a lone probe on an idle machine saw single ``fdatasync`` calls
of 200 ms.

``probe(directory, seconds) -> dict`` is the entry point for the benchmark harness.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from loadgen import percentile

WRITE_BYTES = 16 * 1024
INTERVAL_S = 0.004
#: The probe overwrites a region of this size, written and synced before the clock starts.
REGION_BYTES = 4 * 1024 * 1024


def probe(directory: Path, seconds: float) -> dict[str, Any]:
    """``fdatasync`` latency (ms) of 16 KiB writes in ``directory`` for ``seconds``: n, p50, p99, p999, max."""
    block = os.urandom(WRITE_BYTES)
    latencies: list[float] = []
    fd, name = tempfile.mkstemp(prefix="fsyncprobe-", dir=directory)
    try:
        os.pwrite(fd, bytes(REGION_BYTES), 0)
        os.fsync(fd)
        offset = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            os.pwrite(fd, block, offset)
            offset = (offset + WRITE_BYTES) % REGION_BYTES
            started = time.perf_counter()
            os.fdatasync(fd)
            latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(INTERVAL_S)
    finally:
        os.close(fd)
        os.unlink(name)
    ordered = sorted(latencies)
    if not ordered:
        return {"n": 0}

    def at(q: float) -> float:
        return round(percentile(ordered, q) or 0.0, 2)

    return {
        "n": len(ordered),
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "p999_ms": at(0.999),
        "max_ms": round(ordered[-1], 1),
        "over_50ms": sum(1 for v in ordered if v > 50),
    }


def main() -> None:
    """Probe the directory given (default: the system's temporary directory) and print the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(probe(args.dir, args.seconds)))


if __name__ == "__main__":
    main()
