"""``korpu demo`` (what ``make demo`` runs) completes with exit code 0 and narrates every step of the scenario."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.functional]


def test_demo_runs_the_whole_scenario() -> None:
    """The demo exits 0, shows each numbered step, a refused client, the auditor's view and verified logs."""
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "demo"], capture_output=True, text=True, timeout=120, check=False
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for heading in (
        "1. Registries and the federation",
        "2. Kapital Bank checks a loan applicant",
        "3. An employer registers a labor contract",
        "4. An entrepreneur applies for a license",
        "5. A bank subsystem without access rights is refused",
        "6. The auditor's view",
        "7. Every log timestamped",
    ):
        assert heading in out
    assert "Server.ServerProxy.AccessDenied" in out
    assert "✗" not in out
    assert out.count("batch timestamp(s) verify") == 6
    assert "Traceback" not in proc.stderr
