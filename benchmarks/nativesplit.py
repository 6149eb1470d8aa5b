"""Where a security server's time goes by component: Python code against the native libraries doing the work.

Usage (a bed from ``harness.py state`` under load from ``loadgen.py``)::

    .venv/bin/python benchmarks/nativesplit.py --pid PID [--seconds 12] [--rate 200] [--raw out.txt]
    .venv/bin/python benchmarks/nativesplit.py --raw out.txt        # classify a profile recorded before

Records ``py-spy record --native`` of the process (py-spy then pauses it for each sample, so the load's figures
during the recording are not the server's) and sorts each sample by its innermost frame: a Python line is the
interpreter running our code or a library's Python; a native frame is put with the library it is in (``libc``
frames count for the nearest caller that is not libc, so a ``memcpy`` from lxml is lxml's).  Prints each thread's
shares.  The shares are of wall-clock samples of threads that were not idle, not of CPU: on a saturated machine a
thread waiting for a core is sampled where it stopped.

Why: if a server's work is mostly Python, a faster design of our own code would pay; if the libraries that sign,
verify, parse and store are already most of it, only doing less of that work would.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: (component, pattern on the innermost frame's location: a C file or a shared object); first match wins.
COMPONENTS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("waiting: GIL, queue, lock", r"^(take_gil|PyThread_acquire_lock|_queue_SimpleQueue_get|PyCOND_)"),
        ("waiting: epoll", r"selectmodule\.c|select_epoll"),
        ("cryptography (sign, verify, X.509)", r"cryptography/"),
        ("lxml (XML parse, c14n, serialise)", r"lxml/|libxml2|libxslt|libexslt"),
        ("json", r"_json"),
        ("SQLite", r"libsqlite3|_sqlite|connection\.c|cursor\.c|statement\.c|blob\.c|row\.c"),
        ("TLS and sockets", r"socketmodule\.c|_ssl|libssl|libcrypto|sock_"),
        ("hashing and base64", r"_hashopenssl|_hashlib|sha\d|binascii"),
        ("aiohttp, multidict, yarl (C parts)", r"aiohttp/|_http_parser|llhttp|_find_header|_helpers_c|multidict|yarl"),
    )
)
PYTHON_LINE = re.compile(r"\.py:\d+\)$|\(<string>|\(<frozen ")


def component(frames: list[str]) -> str:
    """The component a sample belongs to, from its frames (outermost first)."""
    inner = [f for f in frames if "(libc" not in f and "(ld-linux" not in f and "[vdso]" not in f]
    if not inner:
        return "other native"
    leaf = inner[-1]
    for name, pattern in COMPONENTS[:2]:  # waits show as a libpython or module frame calling into libc
        if pattern.search(leaf):
            return name
    if PYTHON_LINE.search(leaf):
        # Generated code (a dataclass's __init__) and frozen modules count for the code that called them.
        owner = next((f for f in reversed(inner) if f.endswith(")") and ".py:" in f), leaf)
        return f"Python: {_python_owner(owner)}"
    for name, pattern in COMPONENTS[2:]:
        if pattern.search(leaf):
            return name
    if "libpython" in leaf or re.search(r"\(\w+\.h(:\d+)?\)$|object\.c|_asynciomodule|ceval", leaf):
        return "Python runtime (objects, memory, asyncio C)"
    return "other native"


def _python_owner(frame: str) -> str:
    """Whose Python a frame is: ours, the HTTP stack's, asyncio's or the rest of the standard library's."""
    where = frame.rsplit("(", 1)[-1]
    if where.startswith(("security_server/", "bridge/", "catalog/", "policies/", "adapters/")):
        return "Körpü's code"
    if "aiohttp/" in where or "multidict/" in where or "yarl/" in where:
        return "aiohttp"
    if where.startswith("asyncio/"):
        return "asyncio"
    return "standard library and others"


def split(raw: Path) -> dict[str, collections.Counter[str]]:
    """Samples per component per thread (by name) in py-spy's raw (collapsed-stack) output."""
    out: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0]
        name = thread.split(":", 1)[1].strip() if thread.startswith("thread ") and ":" in thread else thread
        out[name][component(frames[1:])] += int(count)
    return out


def report(by_thread: dict[str, collections.Counter[str]]) -> str:
    """Each thread's samples and shares per component, busiest thread first."""
    lines = []
    for thread, counts in sorted(by_thread.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(counts.values())
        lines.append(f"{thread}: {total} samples")
        lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in counts.most_common()]
    return "\n".join(lines)


def record(pid: int, seconds: int, rate: int, raw: Path) -> None:
    """``py-spy record --native`` of ``pid`` into ``raw``."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    cmd = [pyspy, "record", "--native", "--threads", "-r", str(rate), "-d", str(seconds), "--format", "raw",
           "-o", str(raw), "--pid", str(pid)]  # fmt: skip
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)  # noqa: S603 - our own argv
    if done.returncode != 0 or not raw.exists():
        sys.exit(f"py-spy failed: {done.stderr.decode(errors='replace').strip()[-500:]}")


def main() -> None:
    """Record (with --pid) or read (--raw) a native profile and print the split."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pid", type=int, help="record this process (else classify --raw)")
    parser.add_argument("--seconds", type=int, default=12)
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--raw", type=Path, help="py-spy raw output: written with --pid, read without")
    args = parser.parse_args()
    if args.pid is None and args.raw is None:
        parser.error("give --pid to record, or --raw to classify a recorded profile")
    with tempfile.TemporaryDirectory() as tmp:
        raw = args.raw or Path(tmp) / "native.txt"
        if args.pid is not None:
            record(args.pid, args.seconds, args.rate, raw)
        print(report(split(raw)))


if __name__ == "__main__":
    main()
