"""Shared fixtures: installed kernels, scratch trees, and a runner for the real ``dkms`` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
FIXTURES = REPO / "tests" / "fixtures"
MODULES = FIXTURES / "modules"
EXAMPLES = REPO / "examples"
ARCH = os.uname().machine

if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))


def _version_key(k: str) -> List[object]:
    from pydkms.version import version_sort_key

    return version_sort_key(k)  # type: ignore[return-value]


def installed_kernels() -> List[str]:
    """Kernel releases with headers (``/lib/modules/K/build/include``), oldest first."""
    base = Path("/lib/modules")
    found = [p.name for p in base.iterdir() if (p / "build" / "include").is_dir()] if base.is_dir() else []
    return sorted(found, key=_version_key)


def generic_kernels() -> List[str]:
    """Kernels of the generic flavour (not cloud/rt), oldest first."""
    return [k for k in installed_kernels() if not any(f in k for f in ("-cloud-", "-rt-"))]


def cloud_kernels() -> List[str]:
    return [k for k in installed_kernels() if "-cloud-" in k]


@pytest.fixture(scope="session")
def kernels() -> List[str]:
    """At least two generic kernels with headers (newest first); the suite's set-up installs them."""
    ks = generic_kernels()
    if len(ks) < 2:
        pytest.fail(
            f"need headers for two kernels, found {ks}; run ./tools/test (it installs linux-headers packages)"
        )
    return list(reversed(ks))


@pytest.fixture(scope="session")
def kernel(kernels: List[str]) -> str:
    return kernels[0]


@pytest.fixture(scope="session")
def cloud_kernel() -> str:
    ks = cloud_kernels()
    if not ks:
        pytest.fail("need headers for a cloud-amd64 kernel; run ./tools/test")
    return ks[-1]


@dataclass
class Result:
    argv: Sequence[str]
    rc: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"$ {' '.join(self.argv)}\n[exit {self.rc}]\n--- stdout\n{self.out}--- stderr\n{self.err}"

    @property
    def lines(self) -> List[str]:
        return self.out.splitlines()


@dataclass
class Scratch:
    """A private dkms tree, source tree, install tree and /etc/dkms for one test."""

    root: Path
    extra_env: Dict[str, str] = field(default_factory=dict)

    @property
    def dkms_tree(self) -> Path:
        return self.root / "var" / "lib" / "dkms"

    @property
    def source_tree(self) -> Path:
        return self.root / "usr" / "src"

    @property
    def install_tree(self) -> Path:
        return self.root / "lib" / "modules"

    @property
    def etc(self) -> Path:
        return self.root / "etc" / "dkms"

    def tree_args(self) -> List[str]:
        return [
            "--dkmstree", str(self.dkms_tree),
            "--sourcetree", str(self.source_tree),
            "--installtree", str(self.install_tree),
        ]  # fmt: skip

    def env(self, extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYDKMS_SYSCONFDIR"] = str(self.etc)
        env["LC_ALL"] = "C"
        env.update(self.extra_env)
        if extra:
            env.update(extra)
        return env

    def dkms(
        self,
        *args: str,
        env: Optional[Mapping[str, str]] = None,
        trees: bool = True,
        cwd: Optional[Path] = None,
        timeout: float = 600,
    ) -> Result:
        argv = self.dkms_argv(*args, trees=trees)
        proc = subprocess.run(
            argv,
            env=self.env(env),
            cwd=cwd or self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return Result(["dkms", *args], proc.returncode, proc.stdout, proc.stderr)

    def dkms_argv(self, *args: str, trees: bool = True) -> List[str]:
        return [sys.executable, "-m", "pydkms", *args, *(self.tree_args() if trees else [])]

    def ok(self, *args: str, **kw: object) -> Result:
        r = self.dkms(*args, **kw)  # type: ignore[arg-type]
        assert r.rc == 0, str(r)
        return r

    def add_source(self, fixture: str, version: str = "1.0", name: Optional[str] = None) -> Path:
        """Copy a fixture module (or ``examples/hello``) to ``$source_tree/<name>-<version>``."""
        src = EXAMPLES / "hello" if fixture == "hello" else MODULES / fixture
        dest = self.source_tree / f"{name or fixture}-{version}"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(src, dest, symlinks=True)
        return dest

    def prepare_kernel(self, k: str, depmod: bool = True) -> Path:
        """``$install_tree/K`` with the ``build`` link, and (``depmod``) an initial modules.dep."""
        kdir = self.install_tree / k
        kdir.mkdir(parents=True, exist_ok=True)
        build = kdir / "build"
        if not build.is_symlink():
            build.symlink_to(f"/lib/modules/{k}/build")
        if depmod:
            subprocess.run(["depmod", "-b", str(self.root), k], check=True, capture_output=True)
        return kdir

    def status(self, *args: str) -> List[str]:
        return self.ok("status", *args).lines


@pytest.fixture
def scratch(tmp_path: Path, kernels: List[str]) -> Scratch:
    s = Scratch(tmp_path / "root")
    for d in (s.dkms_tree, s.source_tree, s.install_tree, s.etc):
        d.mkdir(parents=True)
    for k in kernels[:2]:
        s.prepare_kernel(k)
    return s


@pytest.fixture
def bare_scratch(tmp_path: Path) -> Scratch:
    """A scratch tree without kernels (for tests that need no headers)."""
    s = Scratch(tmp_path / "root")
    for d in (s.dkms_tree, s.source_tree, s.install_tree, s.etc):
        d.mkdir(parents=True)
    return s
