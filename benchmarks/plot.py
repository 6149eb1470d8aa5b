"""Draw a benchmark result (``bench-results/<timestamp>.json``) as ``bench-results/<timestamp>.png``.

Three panels: throughput Körpü vs baseline (REST, SOAP); latency percentiles of every load; security servers'
resident memory during the soak.  ``python benchmarks/plot.py RESULT.json``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _not_run(ax: Any, title: str) -> None:
    # A step left out (--only) gets a labelled empty panel, not axes drawn around nothing.
    ax.set_title(title)
    ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def plot(result_json: Path) -> Path:
    """Write the PNG beside ``result_json``; returns its path."""
    res: dict[str, Any] = json.loads(Path(result_json).read_text())
    load = res.get("load", {})
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))

    ax = axes[0]
    kinds = [k for k in ("rest", "soap") if f"korpu_{k}" in load and f"base_{k}" in load]
    if not kinds:
        _not_run(ax, "Throughput")
    xs = range(len(kinds))
    if kinds:
        ax.bar([x - 0.2 for x in xs], [load[f"korpu_{k}"]["rps"] for k in kinds], 0.4, label="Körpü")
        ax.bar(
            [x + 0.2 for x in xs], [load[f"base_{k}"]["rps"] for k in kinds], 0.4, label="baseline (2 proxies, mTLS)"
        )
        ax.set_xticks(list(xs), [k.upper() for k in kinds])
        ax.set_ylabel("requests/s (closed loop)")
        ax.set_title(f"Throughput, {res.get('cpus')} CPUs")
        ax.legend()

    ax = axes[1]
    names = [n for n in ("korpu_rest", "base_rest", "korpu_soap", "base_soap", "korpu_half", "base_half") if n in load]
    if not names:
        _not_run(ax, "Latency")
    else:
        for q, marker in (("p50_ms", "o"), ("p90_ms", "s"), ("p99_ms", "^")):
            ax.plot(names, [load[n][q] for n in names], marker=marker, linestyle="", label=q[:3])
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms)")
        ax.set_title("Latency (half = open loop at 50 % of Körpü max)")
        ax.tick_params(axis="x", rotation=30)
        ax.legend()

    ax = axes[2]
    samples = res.get("soak", {}).get("samples_kib", [])
    if not samples:
        _not_run(ax, "Soak RSS")
    else:
        for code in ("ss-a", "ss-b"):
            ax.plot([s["t"] for s in samples], [s[code] / 1024 for s in samples], label=code)
        ax.set_xlabel("seconds")
        ax.set_ylabel("RSS (MiB)")
        ax.legend()
        ax.set_title(f"Soak RSS ({res.get('soak', {}).get('requests', 0):,} requests)")

    fig.tight_layout()
    out = Path(result_json).with_suffix(".png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(plot(Path(sys.argv[1])))
