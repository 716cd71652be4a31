"""Smoke test of the upstream-dkms harness: add/build/install/status of examples/hello in scratch trees."""

from __future__ import annotations

import fnmatch
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .upstream import (
    DEFAULT_SNAPSHOT_IGNORE,
    PrivateSystem,
    ScratchTrees,
    format_snapshot,
    isolation_unavailable,
    run_isolated,
    snapshot_tree,
    upstream_dkms,
)

pytestmark = [pytest.mark.upstream, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "hello"
KVER = "6.1.0-56-amd64"


@pytest.fixture(scope="module")
def dkms() -> Path:
    reason = isolation_unavailable()
    if reason:
        pytest.skip(reason)
    if not (Path("/lib/modules") / KVER / "build").exists():
        pytest.skip(f"no kernel headers for {KVER}")
    return upstream_dkms()


def run_ok(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = run_isolated(cmd, **kwargs)
    assert result.returncode == 0, f"{cmd} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def test_upstream_hello_lifecycle(dkms: Path, tmp_path: Path) -> None:
    trees = ScratchTrees.create(tmp_path / "scratch")
    up = [str(dkms)]
    run_ok([*up, "add", str(HELLO), *trees.args()])
    run_ok([*up, "build", "hello/1.0", "-k", KVER, *trees.args()])
    run_ok([*up, "install", "hello/1.0", "-k", KVER, *trees.args()])
    status = run_ok([*up, "status", *trees.args()])
    assert status.stdout.splitlines() == [f"hello/1.0, {KVER}, x86_64: installed"]

    snap = snapshot_tree(trees.root, trees.replacements(), ignore=DEFAULT_SNAPSHOT_IGNORE)
    print(format_snapshot(snap))
    assert snap["dkms/hello/1.0/source"] == "symlink -> <SOURCE_TREE>/hello-1.0"
    assert snap[f"dkms/hello/kernel-{KVER}-x86_64"] == f"symlink -> 1.0/{KVER}/x86_64"
    assert snap[f"dkms/hello/1.0/{KVER}/x86_64/module/hello.ko"] == "file"
    assert snap[f"modules/{KVER}/updates/dkms/hello.ko"] == "file"
    assert snap["src/hello-1.0/dkms.conf"] == "file"
    assert not any(fnmatch.fnmatchcase(p, "*/log/*") for p in snap)


def test_upstream_default_paths_in_private_system(dkms: Path, tmp_path: Path) -> None:
    """No tree options at all: /var/lib/dkms, /usr/src and /lib/modules are the private dirs."""
    system = PrivateSystem.create(tmp_path / "system")
    run_ok([str(dkms), "add", str(HELLO)], **system.isolation())
    run_ok([str(dkms), "install", "hello/1.0", "-k", KVER], **system.isolation())
    status = run_ok([str(dkms), "status"], **system.isolation())
    assert status.stdout.splitlines() == [f"hello/1.0, {KVER}, x86_64: installed"]
    assert (system.usr_src / "upper" / "hello-1.0" / "dkms.conf").is_file()
    assert not Path("/usr/src/hello-1.0").exists()
    dkms_snap = snapshot_tree(system.var_lib_dkms, ignore=DEFAULT_SNAPSHOT_IGNORE)
    assert dkms_snap["hello/1.0/source"] == "symlink -> /usr/src/hello-1.0"
    assert dkms_snap["mok.key"] == "file"
    # depmod ran on the private /lib/modules/K, which here is the install tree itself.
    assert (system.lib_modules / KVER / "modules.dep").read_text() == "updates/dkms/hello.ko:\n"


def test_isolation_hides_host_state(dkms: Path, tmp_path: Path) -> None:
    host_kdir = Path("/lib/modules") / KVER
    before = sorted(p.name for p in host_kdir.iterdir())
    for path in ("/var/lib/dkms", "/etc/dkms"):
        assert run_ok(["ls", "-A", path]).stdout == "", path
    assert run_ok(["ls", "-A", str(host_kdir)]).stdout.split() == ["build", "source"]
    # depmod writes inside the sandbox only; a bound lib_modules dir keeps its output for inspection.
    lib = tmp_path / "lib-modules"
    run_ok(["depmod", "-a", KVER], lib_modules=lib)
    assert (lib / KVER / "modules.dep").is_file()
    assert (lib / KVER / "build").is_symlink()
    # touch would leave EMPTY files on the host if the private mounts leaked.
    run_ok(["sh", "-c", f"depmod -a {KVER} && touch /var/lib/dkms/mok.key /etc/dkms/framework.conf"])
    assert sorted(p.name for p in host_kdir.iterdir()) == before
    assert not Path("/var/lib/dkms/mok.key").exists() or Path("/var/lib/dkms/mok.key").stat().st_size > 0
    assert (
        not Path("/etc/dkms/framework.conf").exists() or Path("/etc/dkms/framework.conf").stat().st_size > 0
    )


def test_snapshot_tree_replaces_and_ignores(tmp_path: Path) -> None:
    root = tmp_path / "t"
    (root / "m" / "1.0" / "K" / "A" / "log").mkdir(parents=True)
    (root / "m" / "1.0" / "K" / "A" / "log" / "make.log").write_text("x")
    (root / "m" / "1.0" / "K" / "A" / ".pydkms-install.json").write_text("{}")
    (root / "K").mkdir()
    (root / "K" / "modules.dep").write_text("")
    (root / "m" / "1.0" / "source").symlink_to(tmp_path / "src" / "m-1.0")
    snap = snapshot_tree(root, {str(tmp_path): "<ROOT>"}, ignore=DEFAULT_SNAPSHOT_IGNORE)
    assert snap == {
        "K": "dir",
        "m": "dir",
        "m/1.0": "dir",
        "m/1.0/K": "dir",
        "m/1.0/K/A": "dir",
        "m/1.0/K/A/log": "dir",
        "m/1.0/source": "symlink -> <ROOT>/src/m-1.0",
    }
