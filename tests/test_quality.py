"""The code-quality gates run inside the suite, so CI enforces them: ruff (lint + format) and mypy --strict."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (it is a dev dependency: pip install -e .[dev])")
    return found


def _run(argv: list) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True)


def test_ruff_check() -> None:
    r = _run([_tool("ruff"), "check", "src", "tests", "bench"])
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format() -> None:
    r = _run([_tool("ruff"), "format", "--check", "src", "tests", "bench"])
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict() -> None:
    r = _run([sys.executable, "-m", "mypy", "--strict", "src/pydkms"])
    assert r.returncode == 0, r.stdout + r.stderr


def test_runs_on_python_3_9(tmp_path: Path) -> None:
    """dkms runs from kernel hooks on minimal systems: the oldest supported Python must work."""
    candidates = [
        shutil.which("python3.9"),
        *sorted(map(str, Path.home().glob(".pyenv/versions/3.9*/bin/python3.9"))),
    ]
    working = [
        c for c in candidates if c and subprocess.run([c, "-c", "pass"], capture_output=True).returncode == 0
    ]
    if not working:
        pytest.skip("no python3.9 interpreter on this machine")
    py39 = working[0]
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    r = subprocess.run([py39, "-m", "pydkms", "--version"], capture_output=True, text=True, env=env)
    assert (r.returncode, r.stdout) == (0, "dkms-3.2.2\n"), r.stderr
    conf = tmp_path / "src" / "m-1.0"
    conf.mkdir(parents=True)
    (conf / "dkms.conf").write_text(
        "PACKAGE_NAME=m\nPACKAGE_VERSION=1.0\nBUILT_MODULE_NAME[0]=m\nDEST_MODULE_LOCATION[0]=/extra\n"
    )
    (conf / "m.c").write_text("")
    trees = [
        "--dkmstree",
        str(tmp_path / "dkms"),
        "--sourcetree",
        str(tmp_path / "src"),
        "--installtree",
        str(tmp_path / "lib/modules"),
    ]
    env["PYDKMS_SYSCONFDIR"] = str(tmp_path / "etc")
    r = subprocess.run(
        [py39, "-m", "pydkms", "add", "m/1.0", "-k", "6.1.0-1-amd64", *trees],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(
        [py39, "-m", "pydkms", "status", "--json", *trees], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0 and '"state": "added"' in r.stdout, r.stdout + r.stderr
