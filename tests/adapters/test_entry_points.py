"""Adapters from installed packages: the ``korpu.adapters`` entry-point group.

Pins: a separately packaged adapter (tests/fixtures/thirdparty_adapter, its own setup.cfg declaring
``korpu.adapters = greeter = korpu_greeter:factory``) is listed by :func:`adapters.base.available` and made by
:func:`adapters.base.create` once the package is installed — found through its metadata only, never imported by
Körpü beforehand — and disappears again when it is uninstalled; Körpü's own setup.cfg declares the generic adapters
with factories that exist.

How the package is "installed": importlib.metadata sees an installed distribution as a ``NAME-VERSION.dist-info``
directory with ``METADATA`` and ``entry_points.txt`` next to the package's modules on ``sys.path``.  The test writes
exactly that into a temporary directory, with ``entry_points.txt`` taken from the fixture's setup.cfg.  It does not
run ``pip install --target``: building even a pure-Python sdist needs the build backend's wheel support, which an
offline venv may lack (this project's has setuptools 65 without ``wheel``: ``invalid command 'bdist_wheel'``),
and build isolation would fetch setuptools from the index.  :func:`test_pip_installed_package` does the real pip
install when the venv can build offline, and is skipped (saying why) when it cannot.
"""

from __future__ import annotations

import configparser
import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import adapters.generic
from adapters.base import ENTRY_POINT_GROUP, AdapterContext, available, create
from bridge.errors import ConfigError
from tests.adapters.test_generic import CLIENT, request

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "thirdparty_adapter"


def declared_entry_points(setup_cfg: Path) -> dict[str, str]:
    """The ``korpu.adapters`` entry points a setup.cfg declares (name → ``module:attr``)."""
    config = configparser.ConfigParser()
    config.read(setup_cfg, encoding="utf-8")
    raw = config.get("options.entry_points", ENTRY_POINT_GROUP, fallback="")
    pairs = (line.split("=", 1) for line in raw.splitlines() if line.strip())
    return {name.strip(): value.strip() for name, value in pairs}


def forget_greeter() -> None:
    """Drop every trace of the fixture package from the import system's caches."""
    sys.modules.pop("korpu_greeter", None)
    importlib.invalidate_caches()  # also clears importlib.metadata's per-directory lookup cache


@pytest.fixture
def on_sys_path(tmp_path: Path) -> Iterator[Path]:
    """A site directory on ``sys.path`` for the duration of the test; removed (with caches) afterwards."""
    site = tmp_path / "site"
    site.mkdir()
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        forget_greeter()


def install_as_dist_info(site: Path) -> None:
    """Lay the fixture package out in ``site`` as an installer would: module plus ``.dist-info`` metadata."""
    shutil.copy(FIXTURE / "korpu_greeter.py", site / "korpu_greeter.py")
    dist_info = site / "korpu_greeter-0.1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: korpu-greeter\nVersion: 0.1.0\n", "utf-8")
    lines = [f"[{ENTRY_POINT_GROUP}]"]
    lines += [f"{name} = {value}" for name, value in declared_entry_points(FIXTURE / "setup.cfg").items()]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n", "utf-8")
    (dist_info / "RECORD").write_text("", "utf-8")


async def assert_greeter_answers() -> None:
    """``greeter`` is available, is made from its entry point with its options, and answers a request."""
    assert "greeter" in available()
    adapter = create("greeter", AdapterContext(options={"greeting": "Xoş gəlmisiniz"}))
    assert type(adapter).__module__ == "korpu_greeter"
    answer = await adapter.handle(request("greet", path="/anything"))
    assert (answer.status, answer.content_type) == (200, "application/json")
    assert json.loads(answer.body) == {"message": f"Xoş gəlmisiniz, {CLIENT}!", "path": "/anything"}


def test_fixture_declares_the_greeter_entry_point() -> None:
    """The fixture package declares exactly one adapter, ``greeter``, in the ``korpu.adapters`` group."""
    assert declared_entry_points(FIXTURE / "setup.cfg") == {"greeter": "korpu_greeter:factory"}


async def test_installed_package_adapter_is_found_by_entry_point(on_sys_path: Path) -> None:
    """An adapter package that is merely installed becomes available by name; uninstalled, it is gone again."""
    forget_greeter()
    assert "greeter" not in available()
    with pytest.raises(ConfigError, match="no adapter named 'greeter'"):
        create("greeter")
    install_as_dist_info(on_sys_path)
    assert "korpu_greeter" not in sys.modules  # Körpü never imported it: only the metadata announced it
    await assert_greeter_answers()
    # Uninstall: remove the directory from sys.path (what the fixture's teardown does) and look again.
    sys.path.remove(str(on_sys_path))
    forget_greeter()
    try:
        assert "greeter" not in available()
    finally:
        sys.path.insert(0, str(on_sys_path))


def _can_build_offline() -> str | None:
    """Why pip cannot build the fixture without the network here, or None if it can."""
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools is not installed in this venv"
    import setuptools

    major, minor = (int(p) for p in setuptools.__version__.split(".")[:2])
    if (major, minor) < (70, 1) and importlib.util.find_spec("wheel") is None:
        return f"setuptools {setuptools.__version__} needs the 'wheel' package to build, and it is not installed"
    return None


async def test_pip_installed_package(on_sys_path: Path, tmp_path: Path) -> None:
    """The same, with the package really installed by ``pip install --no-deps --target`` (offline)."""
    reason = _can_build_offline()
    if reason is not None:
        pytest.skip(f"pip cannot build the fixture offline: {reason}")
    source = tmp_path / "src"
    shutil.copytree(FIXTURE, source)  # builds write into the source tree; keep the fixture clean
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation"]
    result = subprocess.run(
        [*command, "--target", str(on_sys_path), str(source)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    importlib.invalidate_caches()
    await assert_greeter_answers()


def test_korpu_declares_the_generic_adapters() -> None:
    """Körpü's setup.cfg declares the generic adapters, each resolving to the factory its module registers."""
    declared = declared_entry_points(ROOT / "setup.cfg")
    expected = {
        "http-upstream": adapters.generic.http.factory,
        "soap-upstream": adapters.generic.soap.factory,
        "sql": adapters.generic.sql.factory,
    }
    for name, factory in expected.items():
        assert EntryPoint(name, declared[name], ENTRY_POINT_GROUP).load() is factory
