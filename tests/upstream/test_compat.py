"""pydkms and upstream dkms side by side on twin trees: same exit codes, same layout, same status.

Two upstreams are compared, both Debian packages extracted privately (never installed):

* ``bookworm``: dkms 3.0.10 (``apt-get download dkms`` on this Debian 12 machine);
* ``trixie``: dkms 3.2.2, the compatibility level of the spec (downloaded from Debian's mirror).

3.0.10 predates several behaviours the spec fixes on 3.2.x (stricter validation, CRLF, zero-module
packages, script exit codes, BUILD_DEPENDS checks, original-module archiving on Debian), so each
scenario names the upstreams it applies to. Status lines are compared after mapping 3.0.10's old
suffix wording to the current one (status.md §4). Module *contents* differ on purpose (upstream
signs modules; pydkms' signing is a separate stage), so trees are compared by layout: names,
kinds and symlink targets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from tests.conftest import ARCH, EXAMPLES, MODULES, SRC, cloud_kernels, generic_kernels
from tests.support.upstream import (
    DEFAULT_SNAPSHOT_IGNORE,
    ScratchTrees,
    extract_deb,
    fetch_trixie_deb,
    format_snapshot,
    isolation_unavailable,
    run_isolated,
    snapshot_tree,
    upstream_dkms,
)

pytestmark = [pytest.mark.upstream, pytest.mark.integration]

OLD_SUFFIXES = {
    " (original_module exists)": " (Original modules exist)",
    " (WARNING! Diff between built and installed module!)": " (Differences between built and installed modules)",
    " (WARNING! Missing some built modules!)": " (Built modules are missing in the kernel modules folder)",
}
IGNORE = (*DEFAULT_SNAPSHOT_IGNORE, "make.log")


def _fail_or_skip(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session", params=["bookworm", "trixie"])
def upstream(request: pytest.FixtureRequest) -> Tuple[str, Path]:
    reason = isolation_unavailable()
    if reason:
        _fail_or_skip(f"cannot isolate upstream dkms: {reason}")
    try:
        if request.param == "bookworm":
            return "bookworm", upstream_dkms()
        return "trixie", extract_deb(fetch_trixie_deb())
    except Exception as exc:  # network or apt failure
        _fail_or_skip(f"cannot fetch upstream dkms ({request.param}): {exc}")
        raise


def normalise(lines: Sequence[str]) -> List[str]:
    out = []
    for line in lines:
        for old, new in OLD_SUFFIXES.items():
            line = line.replace(old, new)
        out.append(line)
    return out


class Twin:
    """The same command sequence on two scratch trees: one run by upstream, one by pydkms."""

    def __init__(self, root: Path, upstream: Tuple[str, Path], kernels: Sequence[str]) -> None:
        self.name, self.script = upstream
        self.kernels = list(kernels)
        self.trees = {
            "upstream": ScratchTrees.create(root / "upstream", self.kernels),
            "pydkms": ScratchTrees.create(root / "pydkms", self.kernels),
        }
        for t in self.trees.values():
            for k in self.kernels:
                # upstream 3.2 and pydkms find headers through $install_tree/K/build (3.0.10 ignores it)
                (t.install_tree / k / "build").symlink_to(f"/lib/modules/{k}/build")
        self.var_lib = root / "var-lib-dkms"  # keeps upstream's MOK key across calls
        self.var_lib.mkdir()

    @property
    def old(self) -> bool:
        return self.name == "bookworm"

    def argv(self, who: str, args: Sequence[str]) -> List[str]:
        trees = self.trees[who].args()
        if who == "upstream":
            return ["bash", str(self.script), *args, *trees]
        return [sys.executable, "-m", "pydkms", *args, *trees]

    def run_one(
        self, who: str, args: Sequence[str], env: Optional[Dict[str, str]] = None
    ) -> subprocess.CompletedProcess[str]:
        pythonpath = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
        full_env: Dict[str, Optional[str]] = {"PYTHONPATH": pythonpath, "PYDKMS_SYSCONFDIR": None}
        full_env.update(env or {})
        return run_isolated(
            self.argv(who, args), env=full_env, var_lib_dkms=self.var_lib, cwd=self.trees[who].root
        )

    def run(self, *args: str, rc: Optional[int] = None, env: Optional[Dict[str, str]] = None) -> int:
        """Run in both trees; exit codes must agree (and equal ``rc`` if given); layouts must agree."""
        u = self.run_one("upstream", args, env)
        p = self.run_one("pydkms", args, env)
        detail = (
            f"dkms {' '.join(args)}\n--- upstream {self.name} exit {u.returncode}\n{u.stdout}{u.stderr}"
            f"--- pydkms exit {p.returncode}\n{p.stdout}{p.stderr}"
        )
        assert u.returncode == p.returncode, detail
        if rc is not None:
            assert p.returncode == rc, detail
        self.assert_same_layout(detail)
        return p.returncode

    def status(self, *args: str) -> List[str]:
        u = self.run_one("upstream", ["status", *args])
        p = self.run_one("pydkms", ["status", *args])
        assert u.returncode == p.returncode == 0
        assert normalise(u.stdout.splitlines()) == p.stdout.splitlines(), f"{u.stdout}\n---\n{p.stdout}"
        return p.stdout.splitlines()

    def snapshot(self, who: str) -> Dict[str, str]:
        t = self.trees[who]
        # 3.0.10 does not keep Module.symvers next to the built modules (3.2 does)
        ignore = (*IGNORE, "module/Module.symvers") if self.old else IGNORE
        return snapshot_tree(t.root, t.replacements(), ignore)

    def assert_same_layout(self, context: str = "") -> None:
        u, p = self.snapshot("upstream"), self.snapshot("pydkms")
        if u != p:
            only_u = {k: v for k, v in u.items() if p.get(k) != v}
            only_p = {k: v for k, v in p.items() if u.get(k) != v}
            pytest.fail(
                f"layouts differ after {context.splitlines()[0] if context else 'setup'}\n"
                f"upstream only:\n{format_snapshot(only_u)}\npydkms only:\n{format_snapshot(only_p)}\n\n{context}"
            )

    def add_source(self, fixture: str, version: str = "1.0", name: Optional[str] = None) -> None:
        src = (
            EXAMPLES / "hello"
            if fixture == "hello"
            else (MODULES / fixture if (MODULES / fixture).is_dir() else Path(fixture))
        )
        for t in self.trees.values():
            dest = t.source_tree / f"{name or fixture}-{version}"
            shutil.copytree(src, dest, symlinks=True)


@pytest.fixture
def k12() -> Tuple[str, str]:
    ks = list(reversed(generic_kernels()))
    if len(ks) < 2:
        pytest.fail("needs two kernels with headers")
    return ks[0], ks[1]


@pytest.fixture
def twin(tmp_path: Path, upstream: Tuple[str, Path], k12: Tuple[str, str]) -> Twin:
    kernels = [*k12, *cloud_kernels()[-1:]]
    return Twin(tmp_path, upstream, kernels)


def test_hello_lifecycle(twin: Twin, k12: Tuple[str, str]) -> None:
    k1, k2 = k12
    twin.add_source("hello")
    twin.run("add", "hello/1.0", rc=0)
    assert twin.status() == ["hello/1.0: added"]
    twin.run("add", "hello/1.0", rc=3)
    twin.run("build", "hello/1.0", "-k", k1, rc=0)
    assert twin.status() == [f"hello/1.0, {k1}, {ARCH}: built"]
    assert twin.status("-k", k2) == ["hello/1.0: added"]
    twin.run("build", "hello/1.0", "-k", k1, rc=0)  # already built: skipped
    twin.run("install", "hello/1.0", "-k", k1, "-k", k2, rc=0)
    lines = twin.status()
    assert lines == [f"hello/1.0, {k}, {ARCH}: installed" for k in sorted([k1, k2])]
    assert twin.status("hello/1.0", "-k", k2) == [f"hello/1.0, {k2}, {ARCH}: installed"]
    twin.run("install", "hello/1.0", "-k", k1, rc=0)  # already installed: skipped
    twin.run("uninstall", "hello/1.0", "-k", k2, rc=0)
    twin.run("uninstall", "hello/1.0", "-k", k2, rc=0)  # not installed: skipped
    twin.status()
    twin.run("unbuild", "hello/1.0", "-k", k1, rc=0)  # uninstalls first
    twin.status()
    twin.run("remove", "hello/1.0", "--all", rc=0)
    assert twin.status() == []
    twin.run("remove", "hello/1.0", "--all", rc=3)


def test_argument_errors(twin: Twin, k12: Tuple[str, str]) -> None:
    k1, _ = k12
    twin.run("add", "nothere/1.0", rc=2)  # no $source_tree/m-v
    twin.run("build", "-k", k1, rc=1)  # no module
    twin.run("remove", "nothere/1.0", "--all", rc=3)
    twin.run("install", "nothere/1.0", "--all", rc=5)
    twin.run("build", "--bogus", rc=2)
    twin.run("build", "nothere/1.0", "-k", k1, "--all", rc=2)
    twin.run("build", "nothere/1.0", "--all", rc=5)
    twin.run("remove", "nothere/1.0", "-k", k1, "--all", rc=2)
    twin.run("remove", "nothere/1.0", "-a", ARCH, "--all", rc=3)
    twin.run("build", "nothere/1.0", "-k", k1, "-a", "x", "-a", "y", rc=1)


def test_multi_module_package(twin: Twin, k12: Tuple[str, str]) -> None:
    k1, _ = k12
    twin.add_source("multi", "2.0")
    twin.run("install", "multi/2.0", "-k", k1, rc=0)
    assert twin.status() == [f"multi/2.0, {k1}, {ARCH}: installed"]
    twin.run("remove", "multi/2.0", "--all", rc=0)


def test_patches(twin: Twin, k12: Tuple[str, str]) -> None:
    twin.add_source("patched")
    twin.run("build", "patched/1.0", "-k", k12[0], "-k", k12[1], rc=0)
    twin.status()


def test_failing_build(twin: Twin, k12: Tuple[str, str]) -> None:
    twin.add_source("failing")
    twin.run("build", "failing/1.0", "-k", k12[0], rc=10)
    assert twin.status() == ["failing/1.0: added"]


def test_build_exclusive(twin: Twin, k12: Tuple[str, str]) -> None:
    cloud = cloud_kernels()
    if not cloud:
        pytest.fail("needs a cloud kernel with headers")
    twin.add_source("exclusive")
    twin.run("build", "exclusive/1.0", "-k", cloud[-1], rc=77)
    twin.run("build", "exclusive/1.0", "-k", k12[0], rc=0)
    twin.status()


def test_unversioned_module(twin: Twin, k12: Tuple[str, str]) -> None:
    twin.add_source("noversion")
    twin.run("install", "noversion/1.0", "-k", k12[0], rc=0)
    twin.status()
    twin.run("uninstall", "noversion/1.0", "-k", k12[0], rc=0)
    twin.status()


def test_status_suffixes(twin: Twin, k12: Tuple[str, str]) -> None:
    k1, _ = k12
    twin.add_source("hello")
    twin.run("install", "hello/1.0", "-k", k1, rc=0)
    for t in twin.trees.values():
        f = t.install_tree / k1 / "updates" / "dkms" / "hello.ko"
        f.write_bytes(f.read_bytes() + b"\0")
    assert twin.status() == [
        f"hello/1.0, {k1}, {ARCH}: installed (Differences between built and installed modules)"
    ]
    if twin.old:
        return  # 3.0.10 calls a module whose files are missing "added", 3.2 keeps it built with a suffix
    for t in twin.trees.values():
        (t.dkms_tree / "hello" / "1.0" / k1 / ARCH / "module" / "hello.ko").unlink()
    assert twin.status() == [
        f"hello/1.0, {k1}, {ARCH}: installed (Built modules are missing in the kernel modules folder)"
    ]


INVALID_BOTH = [
    "package_name_empty",
    "package_version_empty",
    "built_module_name_dot_o",
    "built_module_name_dot_ko",
    "built_module_name_empty",
    "dest_module_name_dot_ko",
    "dest_module_location_empty",
    "dest_module_location_bad_prefix",
    "several_errors",
]
INVALID_322 = [
    "autoinstall_maybe",
    "build_depends_rebuild_sometimes",
    "no_weak_modules_perhaps",
    "duplicate_built_module",
    "duplicate_dest_module",
    "sparse_records",
]


@pytest.mark.parametrize("case", INVALID_BOTH + INVALID_322)
def test_invalid_conf_is_rejected(twin: Twin, case: str) -> None:
    if twin.old and case in INVALID_322:
        pytest.skip("3.0.10 accepts this file (spec follows 3.2.x)")
    twin.add_source(str(Path(__file__).parents[1] / "fixtures" / "invalid" / case), name="invalid")
    twin.run("add", "invalid/1.0", rc=8)
    assert twin.status() == []


def test_zero_modules_crlf_and_scripts_322(twin: Twin, k12: Tuple[str, str], tmp_path: Path) -> None:
    if twin.old:
        pytest.skip("3.0.10 rejects zero-module packages, mis-parses CRLF and ignores build script failures")
    k1, _ = k12
    twin.add_source("zeromod")
    twin.run("install", "zeromod/1.0", "-k", k1, rc=0)
    twin.add_source("crlf")
    twin.run("install", "crlf/1.0", "-k", k1, rc=0)
    twin.add_source("hooks")
    twin.run("build", "hooks/1.0", "-k", k1, rc=3, env={"HOOKS_FAIL_PRE_BUILD": "1"})
    twin.run("install", "hooks/1.0", "-k", k1, rc=101, env={"HOOKS_FAIL_PRE_INSTALL": "1"})
    twin.run("install", "hooks/1.0", "-k", k1, rc=0)
    twin.status()


def test_build_depends_322(twin: Twin, k12: Tuple[str, str]) -> None:
    if twin.old:
        pytest.skip("3.0.10 does not check BUILD_DEPENDS and does not keep Module.symvers")
    k1, _ = k12
    twin.add_source("depbase")
    twin.add_source("depuser")
    twin.run("build", "depuser/1.0", "-k", k1, rc=13)
    twin.run("install", "depbase/1.0", "-k", k1, rc=0)
    twin.run("install", "depuser/1.0", "-k", k1, rc=0)
    twin.status()


def test_broken_module_322(twin: Twin, k12: Tuple[str, str]) -> None:
    if twin.old:
        pytest.skip("3.0.10 has no 'broken' state")
    twin.add_source("hello")
    twin.run("add", "hello/1.0", rc=0)
    for t in twin.trees.values():
        (t.dkms_tree / "hello" / "1.0" / "source").unlink()
    assert twin.status() == ["hello/1.0: broken"]
    twin.run("build", "hello/1.0", "-k", k12[0], rc=4)
    twin.run("remove", "hello/1.0", "--all", rc=4)
    twin.run("add", "hello/1.0", rc=0)
    assert twin.status() == ["hello/1.0: added"]


# ---- each implementation reads and changes what the other wrote ---------------------------------
@pytest.mark.parametrize("writer", ["upstream", "pydkms"])
def test_trees_are_interchangeable(twin: Twin, k12: Tuple[str, str], writer: str) -> None:
    k1, k2 = k12
    reader = "pydkms" if writer == "upstream" else "upstream"
    t = twin.trees[writer]
    shutil.copytree(EXAMPLES / "hello", t.source_tree / "hello-1.0")
    shutil.copytree(MODULES / "multi", t.source_tree / "multi-2.0")
    for args in (["install", "hello/1.0", "-k", k1, "-k", k2], ["build", "multi/2.0", "-k", k1]):
        r = twin.run_one(writer, args)
        assert r.returncode == 0, r.stdout + r.stderr
    twin.trees[reader] = t  # both now work on the writer's tree

    def status(who: str) -> List[str]:
        r = twin.run_one(who, ["status"])
        assert r.returncode == 0
        return normalise(r.stdout.splitlines())

    expected = [f"hello/1.0, {k}, {ARCH}: installed" for k in sorted([k1, k2])] + [
        f"multi/2.0, {k1}, {ARCH}: built"
    ]
    assert status(writer) == expected
    assert status(reader) == expected
    for args in (["uninstall", "hello/1.0", "-k", k2], ["install", "multi/2.0", "-k", k1]):
        r = twin.run_one(reader, args)
        assert r.returncode == 0, r.stdout + r.stderr
    expected = [
        *sorted(
            [f"hello/1.0, {k1}, {ARCH}: installed", f"hello/1.0, {k2}, {ARCH}: built"],
            key=lambda x: x.encode(),
        ),
        f"multi/2.0, {k1}, {ARCH}: installed",
    ]
    assert status(writer) == expected
    assert status(reader) == expected
    for args in (["remove", "hello/1.0", "--all"], ["remove", "multi/2.0", "--all"]):
        r = twin.run_one(writer, args)
        assert r.returncode == 0, r.stdout + r.stderr
    assert status(reader) == []
    leftovers = {
        k: v for k, v in snapshot_tree(t.install_tree, ignore=IGNORE).items() if not k.endswith("/build")
    }
    assert leftovers == {k: "dir" for k in twin.kernels}


# ---- real Debian *-dkms packages (fetched at test time) -----------------------------------------
REAL_PACKAGES = ["acpi-call-dkms", "v4l2loopback-dkms", "evdi-dkms", "jool-dkms"]


@pytest.fixture(scope="session")
def real_sources() -> Dict[str, Path]:
    from tests.support.debian_packages import Unavailable, dkms_sources

    try:
        return {s.package: s.source_dir for s in dkms_sources(REAL_PACKAGES)}
    except (Unavailable, OSError, subprocess.SubprocessError) as exc:
        _fail_or_skip(f"cannot fetch Debian packages: {exc}")
        raise


@pytest.mark.slow
@pytest.mark.parametrize("package", REAL_PACKAGES)
def test_real_debian_package(
    twin: Twin, k12: Tuple[str, str], real_sources: Dict[str, Path], package: str
) -> None:
    from tests.support.debian_packages import split_module_version

    src = real_sources[package]
    m, v = split_module_version(src.name)
    for t in twin.trees.values():
        shutil.copytree(src, t.source_tree / src.name, symlinks=True)
    k1, _ = k12
    twin.run("add", f"{m}/{v}", rc=0)
    twin.run("build", f"{m}/{v}", "-k", k1, rc=0)
    twin.run("install", f"{m}/{v}", "-k", k1, rc=0)
    assert twin.status() == [f"{m}/{v}, {k1}, {ARCH}: installed"]
    cloud = cloud_kernels()
    if cloud and package in ("v4l2loopback-dkms", "evdi-dkms"):
        twin.run("build", f"{m}/{v}", "-k", cloud[-1], rc=77)  # the cloud config lacks VIDEO_DEV / DRM
    twin.run("remove", f"{m}/{v}", "--all", rc=0)
    assert twin.status() == []
