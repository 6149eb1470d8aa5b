"""``make bench``: Körpü against a bare proxy chain, plus the message log, big bodies and memory over time.

Every server runs in its own process (see :mod:`benchmarks.harness`); the load generator too
(:mod:`benchmarks.loadgen`).  Steps, in order:

1. message-log append rate (``benchmarks/logappend.py``; SQLite, and PostgreSQL with ``--pg``/``$KORPU_BENCH_PG``);
2. 100 MB REST bodies through both security servers (``benchmarks/bodies.py``, its own federation);
3. person query over 10 M log records (``benchmarks/personquery.py``) — only with ``--personquery`` or when its
   generated database is already cached (it takes ~24 GB and ~17 minutes to generate on 2 vCPUs), else a "not run" row;
4. the bed: state built in-process, then central server, ss-a, ss-b, the information system and the baseline's
   two proxies each as a process;
5. closed loop, REST and SOAP, Körpü and baseline (``--concurrency`` for ``--warmup`` + ``--duration`` s);
6. open loop at half of Körpü's measured REST maximum, through Körpü and through the baseline (same rate):
   the p99 Körpü adds;
7. profile of ss-a and ss-b under the closed REST load with py-spy (if installed);
8. soak: ``--soak-requests`` exchanges while sampling both security servers' RSS every second.

Prints the table, writes ``bench-results/<timestamp>.json`` and draws ``bench-results/<timestamp>.png``.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fsyncprobe import probe as fsync_probe
from harness import CLIENT, REST_PATH, ROOT, SOAP_ENVELOPE, Bed, build_state, cpu_seconds, proc_status

PY = sys.executable
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGETS = {"rest_ratio": 0.6, "added_p99_ms": 10.0, "append_sqlite": 20_000, "append_pg": 10_000,
           "body_mb": 50.0, "person_ms": 100.0, "soak_flat": 0.10}  # fmt: skip


def log(msg: str) -> None:
    """Progress line."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# Load ------------------------------------------------------------------------------------------------------------


def machine_busy() -> tuple[float, float, float]:
    """(busy, total, stolen) CPU seconds of the whole machine so far, from /proc/stat.

    Stolen time — the hypervisor running something else while a virtual CPU wanted to run — is neither busy nor
    idle here: on a shared virtual machine it is capacity the benchmark did not get.
    """
    with open("/proc/stat", encoding="ascii") as f:
        # user nice system idle iowait irq softirq steal (guest time is already counted in user and nice)
        values = [int(v) for v in f.readline().split()[1:9]]
    idle, steal = values[3] + values[4], values[7] if len(values) > 7 else 0
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle - steal) / ticks, sum(values) / ticks, steal / ticks


def loadgen(url: str, *extra: str, watch: dict[str, int] | None = None) -> dict[str, Any]:
    """Run the load generator as a process; add each watched process's CPU ms per request and the machine's load.

    ``machine_util`` is the share of all cores busy during the run, ``foreign_util`` the part of it (in cores)
    used by processes outside this benchmark (other jobs on a shared machine), ``steal_util`` the share of all CPU
    time the hypervisor gave to other virtual machines: non-zero means the numbers are noisy.
    """
    m0 = machine_busy()
    argv = [PY, str(ROOT / "benchmarks" / "loadgen.py"), "--url", url, "-H", f"X-Road-Client: {CLIENT}", *extra]
    watch = watch or {}
    cpu0 = {name: cpu_seconds(pid) for name, pid in watch.items()}
    # The main thread is the event loop's: the rest of a server's CPU is its log writer and worker threads.
    loop0 = {name: cpu_seconds(pid, main_thread=True) for name, pid in watch.items()}
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603 - our own argv
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    m1 = machine_busy()
    busy_cores = (m1[0] - m0[0]) / wall
    # CPU over the whole run (warm-up included) divided by every request the run sent.
    total = result["sent"]
    used = {name: cpu_seconds(pid) - cpu0[name] for name, pid in watch.items()}
    loop_used = {name: cpu_seconds(pid, main_thread=True) - loop0[name] for name, pid in watch.items()}
    result["cpu"] = {
        name: {
            "util": round(used[name] / wall, 3),
            "ms_per_req": round(used[name] * 1000 / max(total, 1), 3),
            "loop_ms_per_req": round(loop_used[name] * 1000 / max(total, 1), 3),
        }
        for name in watch
    }
    ours = sum(c["util"] for c in result["cpu"].values()) + result["client_cpu_util"]
    result["machine_util"] = round((m1[0] - m0[0]) / max(m1[1] - m0[1], 1e-9), 3)
    result["steal_util"] = round((m1[2] - m0[2]) / max(m1[1] - m0[1], 1e-9), 3)
    result["foreign_util"] = round(max(0.0, busy_cores - ours), 2)
    return result


def targets(bed: Bed, soap_file: Path) -> dict[str, tuple[str, list[str], dict[str, int]]]:
    """URL, extra loadgen arguments and watched processes of each load."""
    soap = ["--method", "POST", "--body-file", str(soap_file), "-H", "Content-Type: text/xml; charset=utf-8"]
    korpu = {n: bed.pid(n) for n in ("ss-a", "ss-b", "service")}
    base = {n: bed.pid(n) for n in ("proxy-a", "proxy-b", "service")}
    return {
        "korpu_rest": (bed.urls["ss-a"] + REST_PATH, [], korpu),
        "base_rest": (bed.urls["proxy-a"] + "/hello", [], base),
        "korpu_soap": (bed.urls["ss-a"] + "/", soap, korpu),
        "base_soap": (bed.urls["proxy-a"] + "/soap", soap, base),
    }


# Profile ---------------------------------------------------------------------------------------------------------


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` → ``func (to/file.py)``: one entry per function, not per line."""
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    func, path = m.groups()
    parts = Path(path).parts
    for anchor in ("site-packages", "main", "lib"):
        if anchor in parts:
            parts = parts[len(parts) - parts[::-1].index(anchor) :]
            break
    return f"{func} ({'/'.join(parts[-3:])})"


def summarise_profile(raw: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares of busy samples per function, from py-spy's collapsed-stack output."""
    self_n: collections.Counter[str] = collections.Counter()
    incl_n: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        self_n[frames[-1]] += n
        for name in set(frames):
            incl_n[name] += n

    def table(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]

    # Inclusive costs worth reading are the project's own functions (security_server/, bridge/), not the event loop.
    own = collections.Counter({k: v for k, v in incl_n.items() if "security_server/" in k or "bridge/" in k})
    return {"samples": total, "self": table(self_n), "inclusive_own": table(own)}


Load = tuple[str, list[str], dict[str, int]]


def profile(bed: Bed, out_dir: Path, stem: str, load: Load, args: Any) -> dict[str, Any]:
    """py-spy on ss-a and ss-b (10 s, non-blocking) while the closed REST load runs."""
    pyspy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(pyspy).exists():
        return {"error": "py-spy not installed (pip install py-spy)"}
    url, extra, watch = load
    spies = {}
    for name in ("ss-a", "ss-b"):
        raw = out_dir / f"{stem}-profile-{name}.txt"
        cmd = [pyspy, "record", "--nonblocking", "-r", "100", "-d", str(args.profile_seconds), "--format", "raw",
               "-o", str(raw), "--pid", str(bed.pid(name))]  # fmt: skip
        spies[name] = (raw, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))  # noqa: S603 - our own argv
    dur = str(args.profile_seconds + 1)
    result = loadgen(url, *extra, "--concurrency", str(args.concurrency), "--duration", dur, "--warmup", "1",
                     watch=watch)  # fmt: skip
    out: dict[str, Any] = {"load": {k: result[k] for k in ("rps", "p50_ms", "p99_ms")}}
    for name, (raw, proc) in spies.items():
        _, err = proc.communicate(timeout=60)
        if proc.returncode != 0 or not raw.exists():
            out[name] = {"error": f"py-spy failed: {err.decode(errors='replace')[-500:]}"}
            continue
        out[name] = {"raw": str(raw), "cpu_ms_per_req": result["cpu"][name]["ms_per_req"],
                     "cpu_util": result["cpu"][name]["util"], **summarise_profile(raw)}  # fmt: skip
    return out


# Other measurements ----------------------------------------------------------------------------------------------


def log_append(args: Any) -> dict[str, Any]:
    """benchmarks/logappend.py on SQLite (and PostgreSQL if asked); records/s per backend."""
    cmd = [PY, str(ROOT / "benchmarks" / "logappend.py"), "-n", str(args.append_n)]
    if args.pg:
        cmd += ["--pg", args.pg]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603 - our own argv
    text = out.stdout
    result: dict[str, Any] = {"n": args.append_n, "output": text[-2000:], "stderr": out.stderr[-2000:]}
    for backend, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        # The backend's section starts with its heading line ("SQLite (WAL, …):", "PostgreSQL:"); log lines may name
        # it too, so only a heading counts.
        head = re.search(r"^" + label + r"\b[^\n]*:$", text, re.M)
        section = text[head.end() :] if head else ""
        m = re.search(r"= ([\d,]+) records/s", section)
        result[backend] = float(m.group(1).replace(",", "")) if m else None
        t = re.search(r"(\d+) TSA calls .*? for (\d+) batches", section)
        result[f"{backend}_tsa"] = {"calls": int(t.group(1)), "batches": int(t.group(2))} if t else None
        w = re.search(r"written to storage: ([\d.]+) KiB per record, (\d+) MB/s", section)
        result[f"{backend}_written"] = {"kib_per_record": float(w.group(1)), "mb_s": int(w.group(2))} if w else None
    return result


def optional_module(name: str) -> Any:
    """A colleague's benchmark module, imported lazily; None if it is not there."""
    if not (ROOT / "benchmarks" / f"{name}.py").exists():
        return None
    return importlib.import_module(name)


def bodies(args: Any) -> dict[str, Any]:
    """benchmarks/bodies.py's ``run(mib)``, if the module exists."""
    mod = optional_module("bodies")
    if mod is None:
        return {"not_run": "benchmarks/bodies.py does not exist"}
    try:
        return dict(mod.run(mib=args.body_mib))
    except Exception as exc:  # one failed step must not lose the others' results
        return {"error": f"{exc.__class__.__name__}: {exc}"}


def personquery(args: Any) -> dict[str, Any]:
    """benchmarks/personquery.py's ``run(records, pg_url)``, if the module exists and its log is wanted."""
    mod = optional_module("personquery")
    if mod is None:
        return {"not_run": "benchmarks/personquery.py does not exist"}
    records = args.person_records
    cached = (mod.CACHE_DIR / f"log-{records}-v{mod.VERSION}.json").exists()
    if not (args.personquery or cached):
        return {"not_run": f"{records:,}-record log not generated (~24 GB, ~17 min); use --personquery or bench-long"}
    try:
        return dict(mod.run(records=records, pg_url=args.pg))
    except Exception as exc:
        return {"error": f"{exc.__class__.__name__}: {exc}"}


def soak(bed: Bed, load: tuple[str, list[str], dict[str, int]], requests: int, args: Any) -> dict[str, Any]:
    """``requests`` closed-loop exchanges through Körpü; both security servers' RSS sampled every second.

    Flat means: the last sample is within ±10 % of the reference, taken once 10 % of the run has passed (so
    start-up growth — pools, caches, the first log batch — is not mistaken for a leak), and no sample exceeds
    the reference by more than 10 % either.
    """
    url, extra, _ = load
    argv = [PY, str(ROOT / "benchmarks" / "loadgen.py"), "--url", url, "-H", f"X-Road-Client: {CLIENT}", *extra,
            "--concurrency", str(args.concurrency), "--requests", str(requests)]  # fmt: skip
    pids = {n: bed.pid(n) for n in ("ss-a", "ss-b")}
    start = {n: proc_status(p)["VmRSS"] for n, p in pids.items()}
    samples: list[dict[str, float]] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # noqa: S603 - our own argv
    while proc.poll() is None:
        rss = {n: proc_status(p)["VmRSS"] for n, p in pids.items()}
        samples.append({"t": round(time.perf_counter() - t0, 1), **rss})
        time.sleep(1.0)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        return {"error": stderr[-1000:]}
    result: dict[str, Any] = {"requests": requests, "load": json.loads(stdout.strip().splitlines()[-1]),
                              "samples_kib": samples, "servers": {}}  # fmt: skip
    ref_i = max(0, len(samples) // 10)
    for n in pids:
        series = [s[n] for s in samples] or [start[n]]
        ref, end, peak = series[min(ref_i, len(series) - 1)], series[-1], max(series)
        flat = abs(end - ref) <= TARGETS["soak_flat"] * ref and peak <= (1 + TARGETS["soak_flat"]) * ref
        result["servers"][n] = {"start_kib": start[n], "ref_kib": ref, "end_kib": end, "max_kib": peak,
                                "drift": round((end - ref) / ref, 4), "flat": flat}  # fmt: skip
    return result


# The table -------------------------------------------------------------------------------------------------------


def _f(x: float | None, fmt: str = "{:,.0f}") -> str:
    return "—" if x is None else fmt.format(x)


def _cpu_row(load: dict[str, Any], korpu: str, base: str, when: str) -> list[tuple[str, str, str, str, str]]:
    """CPU per exchange of each server (Körpü) and each proxy (baseline), and how busy the machine was.

    Shown at both loads because it differs: at a lower rate each wake-up of an event loop handles fewer events (the
    baseline's proxies too) and each of a security server's group commits carries fewer records, so every exchange
    pays more of the fixed costs.
    """
    k, b = load.get(korpu), load.get(base)
    if not (k and b and k.get("cpu") and b.get("cpu")):
        return []

    def per(result: dict[str, Any], names: tuple[str, str]) -> str:
        return " / ".join(_f(result["cpu"].get(n, {}).get("ms_per_req"), "{:.2f}") for n in names)

    def split(name: str) -> str:
        c = k["cpu"][name]
        return f"{c['loop_ms_per_req']:.2f} + {c['ms_per_req'] - c['loop_ms_per_req']:.2f}"

    return [(f"CPU ms per REST exchange {when}: ss-a / ss-b; proxy-a / proxy-b", per(k, ("ss-a", "ss-b")),
             per(b, ("proxy-a", "proxy-b")), f"both cores {k.get('machine_util', 0):.0%} / "
             f"{b.get('machine_util', 0):.0%} busy", "info"),
            (f"  of which event loop + other threads (log writer…) {when}: ss-a / ss-b",
             f"{split('ss-a')} / {split('ss-b')}", "", "", "info")]  # fmt: skip


def rows(res: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(metric, Körpü, baseline, ratio/target, pass/fail) for every measurement."""
    out: list[tuple[str, str, str, str, str]] = []
    load = res.get("load", {})
    for kind in ("rest", "soap"):
        k, b = load.get(f"korpu_{kind}"), load.get(f"base_{kind}")
        if k and b:
            ratio = k["rps"] / b["rps"] if b["rps"] else 0.0
            verdict = ("PASS" if ratio >= TARGETS["rest_ratio"] else "FAIL") if kind == "rest" else "info"
            out.append((f"{kind.upper()} throughput (req/s, c={k['concurrency']})", _f(k["rps"]), _f(b["rps"]),
                        f"{ratio:.2f}x (target ≥ 0.6)" if kind == "rest" else f"{ratio:.2f}x", verdict))  # fmt: skip
            out.append((f"{kind.upper()} latency p50 / p99 (ms) at max", f"{k['p50_ms']:.1f} / {k['p99_ms']:.1f}",
                        f"{b['p50_ms']:.1f} / {b['p99_ms']:.1f}", "", "info"))  # fmt: skip
            out.append((f"{kind.upper()} errors", str(k["errors"]), str(b["errors"]), "",
                        "PASS" if k["errors"] == 0 else "FAIL"))  # fmt: skip
    out.extend(_cpu_row(load, "korpu_rest", "base_rest", "at max"))
    if "korpu_rest" in load:
        k = load["korpu_rest"]
        out.append(("load generator CPU / other jobs' CPU (cores) during REST", f"{k['client_cpu_util']:.2f} / "
                    f"{k['foreign_util']:.2f}", "", "client not the bottleneck if ≪ 1", "info"))  # fmt: skip
        out.append(("CPU time stolen by the hypervisor during REST (Körpü / baseline)",
                    f"{k.get('steal_util', 0.0):.1%}", f"{load.get('base_rest', {}).get('steal_util', 0.0):.1%}",
                    "noisy if not ≈ 0", "info"))  # fmt: skip
    hk, hb = load.get("korpu_half"), load.get("base_half")
    if hk and hb:
        added = hk["p99_ms"] - hb["p99_ms"]
        out.append((f"p99 at half load ({hk['rate']:.0f} req/s, open loop, ms)", f"{hk['p99_ms']:.1f}",
                    f"{hb['p99_ms']:.1f}", f"+{added:.1f} ms (target ≤ +10)",
                    "PASS" if added <= TARGETS["added_p99_ms"] else "FAIL"))  # fmt: skip
    out.extend(_cpu_row(load, "korpu_half", "base_half", "at half load"))
    fs = res.get("fsync")
    if fs and fs.get("n"):
        out.append(("fdatasync of 16 KiB on the logs' disk, idle: p50 / p99 / p99.9 / max (ms)",
                    f"{fs['p50_ms']:.2f} / {fs['p99_ms']:.2f} / {fs['p999_ms']:.2f} / {fs['max_ms']:.1f}", "",
                    "4 in a row per exchange", "info"))  # fmt: skip
    app = res.get("log_append", {})
    for backend, target in (("sqlite", "append_sqlite"), ("postgresql", "append_pg")):
        rate = app.get(backend)
        if rate is None:
            if "log_append" not in res:
                why = "not run (step skipped)"
            elif backend == "postgresql" and not res["args"]["pg"]:
                why = "not run (no --pg / KORPU_BENCH_PG)"
            else:
                why = "error (see log_append in the JSON)"
            out.append((f"log append {backend} (records/s)", why, "", f"≥ {TARGETS[target]:,}", "not run"))
        else:
            out.append((f"log append {backend} (records/s)", _f(rate), "", f"≥ {TARGETS[target]:,}",
                        "PASS" if rate >= TARGETS[target] else "FAIL"))  # fmt: skip
            tsa = app.get(f"{backend}_tsa")
            if tsa is not None:
                out.append((f"log append {backend}: TSA calls / batches", f"{tsa['calls']} / {tsa['batches']}", "",
                            "one call per batch", "PASS" if tsa["calls"] == tsa["batches"] else "FAIL"))  # fmt: skip
            written = app.get(f"{backend}_written")
            if written is not None:
                out.append((f"log append {backend}: written to storage per record (KiB), MB/s",
                            f"{written['kib_per_record']:.1f}, {written['mb_s']}", "", "", "info"))  # fmt: skip
    body = res.get("bodies", {})
    if "upload" in body:
        for code in ("ss-a", "ss-b"):
            up, down = body["upload"][code]["peak_growth_mb"], body["download"][code]["peak_growth_mb"]
            worst = max(up, down)
            out.append((f"{body['mib']} MiB body, {code} peak RSS growth (MB) up/down", f"{up:.1f} / {down:.1f}", "",
                        "< 50 MB", "PASS" if worst < TARGETS["body_mb"] else "FAIL"))  # fmt: skip
    else:
        out.append(("100 MB body RSS growth", body.get("not_run") or body.get("error", "not run"), "", "< 50 MB",
                    "not run"))  # fmt: skip
    pq = res.get("personquery", {})
    if pq.get("worst_p99_ms") is not None:
        out.append((f"person query p99 over {pq['records']:,} records (ms)", f"{pq['worst_p99_ms']:.1f}", "",
                    "< 100 ms", "PASS" if pq["ok"] else "FAIL"))  # fmt: skip
    else:
        out.append(("person query over 10 M records", pq.get("not_run") or pq.get("error", "not run"), "",
                    "< 100 ms", "not run"))  # fmt: skip
    sk = res.get("soak", {})
    if "servers" in sk:
        for code, s in sk["servers"].items():
            out.append((f"soak {sk['requests']:,} req, {code} RSS MiB start/ref/end/max",
                        f"{s['start_kib'] / 1024:.0f}/{s['ref_kib'] / 1024:.0f}/{s['end_kib'] / 1024:.0f}/"
                        f"{s['max_kib'] / 1024:.0f}", "", f"{100 * s['drift']:+.1f}% (flat ±10%)",
                        "PASS" if s["flat"] else "FAIL"))  # fmt: skip
    else:
        out.append(("soak RSS flat", sk.get("error", "not run"), "", "±10 %", "not run"))
    return out


def print_table(table: list[tuple[str, str, str, str, str]]) -> str:
    """The rows as an aligned text table."""
    head = ("metric", "Körpü", "baseline", "ratio/target", "pass/fail")
    widths = [max(len(r[i]) for r in [head, *table]) for i in range(5)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *table]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def profile_text(prof: dict[str, Any]) -> str:
    """The profile's top costs per request, per security server."""
    lines = []
    for name in ("ss-a", "ss-b"):
        p = prof.get(name)
        if not p or "error" in p:
            lines.append(f"{name}: {p.get('error') if p else 'not profiled'}")
            continue
        ms = p["cpu_ms_per_req"]
        lines.append(f"{name}: {ms:.2f} CPU ms/request, {100 * p['cpu_util']:.0f}% of a core, {p['samples']} samples")
        lines.append("  self time (share of busy samples → ≈ CPU ms/request):")
        lines += [f"    {pct:5.1f}%  {pct * ms / 100:6.3f} ms  {fn}" for fn, pct in p["self"][:12]]
        lines.append("  inclusive, Körpü's own functions:")
        lines += [f"    {pct:5.1f}%  {pct * ms / 100:6.3f} ms  {fn}" for fn, pct in p["inclusive_own"][:12]]
    return "\n".join(lines)


# Main ------------------------------------------------------------------------------------------------------------


def main() -> None:
    """Parse arguments, run the steps, print and save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per closed-loop run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--half-duration", type=float, default=10.0, help="measured seconds of the open-loop runs")
    parser.add_argument("--soak-requests", type=int, default=20_000, help="0 skips the soak")
    parser.add_argument("--append-n", type=int, default=100_000, help="records for the log-append benchmark")
    parser.add_argument("--body-mib", type=int, default=100)
    parser.add_argument("--person-records", type=int, default=10_000_000)
    parser.add_argument("--personquery", action="store_true", help="generate the person-query log if not cached")
    parser.add_argument("--profile-seconds", type=int, default=10, help="0 skips profiling")
    parser.add_argument("--pg", nargs="?", const=DEFAULT_PG, help=f"also PostgreSQL (default URL {DEFAULT_PG})")
    parser.add_argument("--only", help="comma list of steps: append,bodies,person,load,half,profile,soak")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--keep-state", action="store_true", help="keep the bed's state directory and logs")
    args = parser.parse_args()
    env_pg = os.environ.get("KORPU_BENCH_PG")
    if args.pg is None and env_pg:
        args.pg = env_pg if env_pg.startswith("postgresql://") else DEFAULT_PG
    steps = set((args.only or "append,bodies,person,load,half,profile,soak").split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    res: dict[str, Any] = {
        "started": stem,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "cpus": os.cpu_count(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "load": {},
    }
    t_start = time.perf_counter()

    # (1)-(3) what needs no bed, before it starts, so nothing else competes for the two cores.
    if "append" in steps:
        log(f"message-log append, {args.append_n:,} records{' (+ PostgreSQL)' if args.pg else ''} ...")
        res["log_append"] = log_append(args)
        log(f"  SQLite {res['log_append']['sqlite']} records/s, PostgreSQL {res['log_append']['postgresql']}")
    if "bodies" in steps:
        log(f"{args.body_mib} MiB bodies through two security server processes (benchmarks/bodies.py) ...")
        res["bodies"] = bodies(args)
    if "person" in steps:
        log("person query (benchmarks/personquery.py) ...")
        res["personquery"] = personquery(args)

    state = Path(tempfile.mkdtemp(prefix="korpu-bench-"))
    bed = None
    try:
        log(f"building the federation's state in {state} ...")
        bed = Bed(state, build_state(state))
        log("starting central, ss-b, ss-a, the information system and the baseline proxies as processes ...")
        bed.start()
        soap_file = state / "soap.xml"
        soap_file.write_text(SOAP_ENVELOPE)
        loads = targets(bed, soap_file)
        closed = [
            "--concurrency",
            str(args.concurrency),
            "--duration",
            str(args.duration),
            "--warmup",
            str(args.warmup),
        ]
        if steps & {"load", "half", "profile"}:
            for name in ("korpu_rest", "base_rest", "korpu_soap", "base_soap"):
                if "load" not in steps and name != "korpu_rest":
                    continue
                url, extra, watch = loads[name]
                log(f"closed loop {name} ...")
                r = res["load"][name] = loadgen(url, *extra, *closed, watch=watch)
                log(
                    f"  {r['rps']} req/s p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms errors {r['errors']}; "
                    f"client CPU {100 * r['client_cpu_util']:.0f}%; other jobs {r['foreign_util']} cores; {r['cpu']}"
                )
        if "half" in steps:
            rate = max(1.0, res["load"]["korpu_rest"]["rps"] / 2)
            opened = ["--rate", f"{rate:.1f}", "--duration", str(args.half_duration), "--warmup", "2"]
            # The disk's own commit latency, with the bed idle, on the file system of the servers' logs: each
            # exchange waits for four commits in a row, so this tail is a floor under the exchange's p99.
            log(f"fdatasync latency of the logs' file system, bed idle, {args.half_duration:.0f} s ...")
            res["fsync"] = fsync_probe(state, args.half_duration)
            for name, src in (("korpu_half", "korpu_rest"), ("base_half", "base_rest")):
                url, extra, watch = loads[src]
                log(f"open loop {name} at {rate:.0f} req/s ...")
                r = res["load"][name] = loadgen(url, *extra, *opened, watch=watch)
                log(f"  p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms errors {r['errors']}")
        if "profile" in steps and args.profile_seconds > 0:
            log(f"profiling ss-a and ss-b for {args.profile_seconds} s under the closed REST load ...")
            res["profile"] = profile(bed, args.out, stem, loads["korpu_rest"], args)
        if "soak" in steps and args.soak_requests > 0:
            log(f"soak: {args.soak_requests:,} exchanges ...")
            res["soak"] = soak(bed, loads["korpu_rest"], args.soak_requests, args)
    finally:
        if bed is not None:
            bed.stop()
        if args.keep_state:
            log(f"state and process logs kept in {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)

    res["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    table = rows(res)
    res["table"] = table
    text = print_table(table)
    json_path = args.out / f"{stem}.json"
    json_path.write_text(json.dumps(res, indent=2, default=str))
    print()
    print(text)
    if "profile" in res:
        print()
        print(profile_text(res["profile"]))
    print(f"\n{len(table)} rows in {res['elapsed_s']:.0f} s; results {json_path}")
    try:
        from plot import plot

        print(f"chart {plot(json_path)}")
    except ImportError as exc:
        print(f"no chart: {exc} (pip install '.[bench]')")


if __name__ == "__main__":
    main()
