"""Where a security server's time goes by component: Python code against the native libraries doing the work.

Usage (a bed from ``harness.py state`` under load from ``loadgen.py``)::

    .venv/bin/python benchmarks/nativesplit.py --pid PID [--seconds 12] [--rate 200] [--raw out.txt]
    .venv/bin/python benchmarks/nativesplit.py --raw out.txt   # a profile recorded with --native --threads

Records ``py-spy record --native --threads`` of the process (py-spy then pauses it for each sample, so the load's
figures during the recording are not the server's) and sorts each sample by where its thread was:

* waiting — for the GIL (CPython 3.11's GIL is the only user of ``pthread_cond_wait``/``timedwait`` here: its
  own frames are not in py-spy's stacks, so the condition-variable call under another frame is the sign), for a
  queue or lock (``PyThread_acquire_lock``), for the disk (``fdatasync``) or for events (``epoll_wait``);
* Python — a Python line is the innermost frame: the interpreter running it, including the allocations and
  dict, list and str operations it makes (py-spy folds CPython's internals into the line that called them);
  counted for whose code it is (ours, aiohttp's, asyncio's, the rest);
* a native library — the innermost frame is in cryptography, lxml, ``_json``, SQLite, TLS or sockets, hashing or
  base64, aiohttp's C parts; a ``libc`` frame or an inlined header counts for the nearest caller that is neither;
* CPython's C functions py-spy keeps (the collector, str, regex and datetime functions, asyncio's C, releasing a
  lock to wake another thread), and other native code.

The report gives each thread's shares of all its samples and of those not waiting (its work).  The shares are of
wall-clock samples, not of CPU: on a busy machine a thread waiting for a core is sampled where it stopped.

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

WAITING = "waiting: "
#: Frames that stand for their caller: the C library, the loader, the vDSO, and header files inlined into a module.
_PASS_THROUGH = re.compile(r"\((libc\.so|libpthread|ld-linux)[^()]*\)$|\[vdso\]|\(\w+\.h(:\d+)?\)$")
_GIL_WAIT = re.compile(r"^pthread_cond_(timed)?wait ")
_DISK_WAIT = re.compile(r"^f(data)?sync ")
_EPOLL_WAIT = re.compile(r"^epoll_wait ")
_LOCK_WAIT = re.compile(r"PyThread_acquire_lock")
#: (component, pattern on the innermost remaining frame: its C file or shared object); first match wins.
COMPONENTS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("cryptography (sign, verify, X.509)", r"\(cryptography/"),
        ("lxml (XML parse, c14n, serialise)", r"\((lxml/|libxml2|libxslt|libexslt)"),
        ("json", r"\(_json"),
        ("SQLite", r"\((libsqlite3|_sqlite3)|\((connection|cursor|statement|blob|row|module|util)\.c:"),
        ("TLS and sockets", r"\((socketmodule\.c|_ssl|libssl|libcrypto)"),
        ("hashing and base64", r"\((_hashopenssl|_hashlib|sha\d|binascii)"),
        (
            "aiohttp, multidict, yarl (C parts)",
            r"\((aiohttp/|_http_parser|_http_writer|llhttp|_find_header|_helpers_c|_?multidict|yarl|propcache)",
        ),
    )
)
_PYTHON_LINE = re.compile(r"\.py:\d+\)$|\(<")
_CPYTHON = re.compile(r"\(libpython|\((\w+module|\w+object|ceval|unicodedata)\.c(\.h)?:")


def component(frames: list[str]) -> str:
    """The component a sample belongs to, from its frames (outermost first, the thread's name not included)."""
    kept = [i for i, f in enumerate(frames) if not _PASS_THROUGH.search(f)]
    if not kept:
        return "other native"
    leaf = frames[kept[-1]]
    # The C library call it made, if any (past any inlined header frames).
    below = next((f for f in frames[kept[-1] + 1 :] if "(libc.so" in f), "")
    if _GIL_WAIT.search(below):
        return WAITING + "GIL"
    if _LOCK_WAIT.search(leaf):
        return WAITING + "queue or lock"
    if _DISK_WAIT.search(below):
        return WAITING + "disk (fsync)"
    if _EPOLL_WAIT.search(below):
        return WAITING + "epoll"
    if _PYTHON_LINE.search(leaf):
        # Generated code (a dataclass's __init__) and frozen modules count for the code that called them.
        owner = next((frames[i] for i in reversed(kept) if ".py:" in frames[i]), leaf)
        return f"Python: {_python_owner(owner)}"
    for name, pattern in COMPONENTS:
        if pattern.search(leaf):
            return name
    if _CPYTHON.search(leaf):
        return "CPython's C functions (gc, str, regex, datetime, asyncio, thread wake-ups)"
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
    """Samples per component per thread (by name) in py-spy's raw output; ``ValueError`` if it has none."""
    out: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        thread, *frames = stack.split(";")
        if not thread.startswith("thread ("):
            raise ValueError("the profile has no thread frames: record it with py-spy record --native --threads")
        name = thread.split(":", 1)[1].strip() if ":" in thread else thread
        out[name][component(frames)] += int(count)
    if not out:
        raise ValueError("no samples in py-spy's raw format")
    return out


def report(by_thread: dict[str, collections.Counter[str]]) -> str:
    """Each thread's shares per component, of all samples and of those not waiting; busiest thread first."""
    lines = []
    for thread, counts in sorted(by_thread.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(counts.values())
        working = sum(n for name, n in counts.items() if not name.startswith(WAITING))
        lines.append(f"{thread}: {total} samples, {working} not waiting   (share of all / of those not waiting)")
        for name, n in counts.most_common():
            of_work = "" if name.startswith(WAITING) or not working else f"{100 * n / working:6.1f}%"
            lines.append(f"  {100 * n / total:5.1f}%  {of_work:>7}  {name}")
    return "\n".join(lines)


def record(pid: int, seconds: int, rate: int, raw: Path) -> None:
    """``py-spy record --native --threads`` of ``pid`` into ``raw``; exits with py-spy's error if it fails."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        sys.exit("py-spy is not installed (make .venv/.bench-stamp, or pip install py-spy)")
    cmd = [pyspy, "record", "--native", "--threads", "-r", str(rate), "-d", str(seconds), "--format", "raw",
           "-o", str(raw), "--pid", str(pid)]  # fmt: skip
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)  # noqa: S603 - our own argv
    if done.returncode != 0 or not raw.exists():
        # py-spy's own message is the "Error: …" line and its causes, before any backtrace.
        lines = done.stderr.decode(errors="replace").splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("Error")), 0)
        message = "\n".join(line for line in lines[start : start + 4] if line.strip())
        sys.exit(f"py-spy failed: {message or f'exit status {done.returncode}'}")


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
        try:
            by_thread = split(raw)
        except OSError as exc:
            sys.exit(f"cannot read {raw}: {exc.strerror}")
        except ValueError as exc:
            sys.exit(f"{raw}: {exc}")
        print(report(by_thread))


if __name__ == "__main__":
    main()
