"""Hostile command lines against a tree with a real module (issue 9, "Also").

Hypothesis generates argv: actions (and words that are not), options with values, flags and bare
tokens, where every value is drawn from hostile names (``..``, ``/``, ``x/../../victim``, shell
metacharacters, control bytes, leading ``-``, very long names, bytes that are not UTF-8) and from
the real names of the tree; the reproductions of the issue and the commands that really change
the tree come first, as explicit examples. The seed is fixed (``derandomize``). Each run gets a
fresh copy of scratch trees in which ``hello/1.0`` is really built for two kernels and installed
for one, ``hello/2.0`` is added, and invalid names lie on disk (a kernel with headers named
``K;touch PWNED;#`` in the install tree, a build under that name, a version with a line break).
The trees are built once per session; a build in a copy only copies the prebuilt .ko, so no run
compiles. Every dkms run happens in its own private mount namespace (``run_isolated``) where the
real ``/lib/modules``, ``/var/lib/dkms``, ``/etc/dkms`` and ``/usr/src`` are read-only.

After each run: nothing beside the trees changed (victim directories shaped like tree entries at
every level a ``..`` can reach, and the whole scratch root outside the trees); nothing tried to
write to the real system; no traceback or internal error; no run took more than 5 s (a run that
times out is tried once more on a fresh copy, as the machine may just be busy: a hang hangs
twice); no command that a name smuggled in ran (``PWNED``); and the
installed state is consistent (every kernel link resolves to a build and its module is in the
install tree; every installed module has its link).

Options that legitimately point dkms elsewhere (``--dkmstree`` & co., ``--dkmsframework``,
``--directive``: a user's MAKE is the user's code) and ``--debug`` (it prints tracebacks on
purpose) and ``--modprobe-on-install`` (it would load into the running kernel) are not generated.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pydkms.cliargs import ACTIONS
from tests.conftest import ARCH, Scratch, generic_kernels
from tests.support.upstream import isolation_unavailable, run_isolated

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: a run that takes longer counts as a hang
RUN_TIMEOUT = 5.0
EXAMPLES = int(os.environ.get("PYDKMS_FUZZ_EXAMPLES", "40"))

#: everything under the work root that dkms may change: the three trees, /etc/dkms, its tmp
TREE_DIRS = ("var/lib/dkms", "usr/src", "lib/modules", "etc/dkms", "tmp")
#: directories shaped like an added and built m/v, where a '..' from each tree can land
VICTIMS = ("victim", "var/victim", "var/lib/victim", "usr/victim", "lib/victim", "canary/victim")


@dataclass(frozen=True)
class Template:
    """The scratch trees of the session, and a pristine copy to restore before each run."""

    work: Scratch
    pristine: Path
    kernels: Tuple[str, str]


def _victim(root: Path, rel: str, source: Path, kernel: str) -> None:
    v = root / rel
    (v / kernel / ARCH / "module").mkdir(parents=True)
    (v / "f").write_text("precious\n")
    (v / kernel / ARCH / "module" / "hello.ko").write_text("not a module\n")
    (v / "source").symlink_to(source)
    (v.parent / f"kernel-{kernel}-{ARCH}").symlink_to(f"victim/{kernel}/{ARCH}")


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    reason = isolation_unavailable()
    if reason:
        pytest.skip(reason)
    ks = list(reversed(generic_kernels()))
    if len(ks) < 2:
        pytest.fail(f"need headers for two kernels, found {ks}; run ./tools/test")
    k0, k1 = ks[0], ks[1]
    base = tmp_path_factory.mktemp("fuzz")
    work = Scratch(base / "work")
    for d in (work.dkms_tree, work.source_tree, work.install_tree, work.etc, work.root / "tmp"):
        d.mkdir(parents=True)
    for k in (k0, k1):
        work.prepare_kernel(k)
    work.extra_env.update(
        mok_signing_key=str(work.dkms_tree / "mok.key"),
        mok_certificate=str(work.dkms_tree / "mok.pub"),
        TMPDIR=str(work.root / "tmp"),
    )
    src = work.add_source("hello")
    work.ok("install", "hello/1.0", "-k", k0)
    work.ok("build", "hello/1.0", "-k", k1)
    src2 = work.add_source("hello", "2.0")
    work.ok("add", "hello/2.0")
    # from now on a build copies the module built above: no compiler in the runs
    for s in (src, src2):
        shutil.copy2(work.dkms_tree / "hello/1.0" / k0 / ARCH / "module/hello.ko", s / "hello.ko.prebuilt")
        conf = s / "dkms.conf"
        conf.write_text(conf.read_text() + 'MAKE[0]="cp -f hello.ko.prebuilt hello.ko"\n')
    for rel in VICTIMS:
        _victim(work.root, rel, src, k0)
    # names on disk that are not valid: a kernel with headers, a build, a version
    hostile = work.install_tree / f"{k1};touch PWNED;#"
    hostile.mkdir()
    (hostile / "build").symlink_to(f"/lib/modules/{k1}/build")
    vdir = work.dkms_tree / "hello" / "1.0"
    shutil.copytree(vdir / k1, vdir / f"{k1};touch PWNED;#", symlinks=True)
    shutil.copytree(vdir, work.dkms_tree / "hello" / "3.0\n", symlinks=True)
    (work.root / "cwd").mkdir()
    pristine = base / "pristine"
    shutil.copytree(work.root, pristine, symlinks=True)
    return Template(work, pristine, (k0, k1))


def _restore(t: Template) -> None:
    shutil.rmtree(t.work.root)
    shutil.copytree(t.pristine, t.work.root, symlinks=True)


def _snapshot_outside(root: Path) -> Dict[str, Tuple[str, int, int, str]]:
    skip = {str(root / d) for d in TREE_DIRS}
    out: Dict[str, Tuple[str, int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for name in [*dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            st_ = os.lstat(p)
            link = os.readlink(p) if os.path.islink(p) else ""
            kind = "l" if link else "d" if os.path.isdir(p) else "f"
            out[os.path.relpath(p, root)] = (kind, st_.st_size, st_.st_mtime_ns, link)
    st_ = os.lstat(root)
    out["."] = ("d", 0, st_.st_mtime_ns, "")
    return out


def _beside(base: Path) -> Dict[str, int]:
    """The entries beside the work root (and their mtimes), which nothing may change."""
    return {e.name: e.stat(follow_symlinks=False).st_mtime_ns for e in os.scandir(base) if e.name != "work"}


def _inconsistencies(s: Scratch) -> List[str]:
    """Kernel links that lead nowhere or to a missing module file, and module files without a link."""
    problems: List[str] = []
    linked = set()
    for mdir in sorted(s.dkms_tree.iterdir()):
        if not mdir.is_dir() or mdir.is_symlink():
            continue
        for link in sorted(mdir.glob("kernel-*")):
            target = link.resolve()
            if not (target / "module").is_dir():
                problems.append(f"dangling kernel link {link}")
                continue
            kernel = target.parent.name
            for ko in sorted((target / "module").glob("*.ko*")):
                installed = s.install_tree / kernel / "updates" / "dkms" / ko.name
                linked.add(installed)
                if not installed.exists():
                    problems.append(f"{link} is installed, but {installed} is missing")
    for ko in sorted(s.install_tree.glob("*/updates/dkms/*.ko*")):
        if ko not in linked:
            problems.append(f"{ko} is left without a kernel link")
    return problems


# ---- the strategies -------------------------------------------------------------------------------
def _names(kernels: Sequence[str]) -> st.SearchStrategy[str]:
    k0, k1 = kernels
    fixed = [
        "hello", "1.0", "2.0", "hello/1.0", "hello/2.0", "hello/*", "*", "?", "[", "[!h]*",
        "", " ", ".", "..", "/", "//", "../..", "./", "~", "~root", "-", "--", "-k", "--all", "-1", "0",
        "victim", "../victim", "../../victim", "x/../../victim", "bar_hello/../../victim",
        "../hello/1.0", "hello/../../victim", "hello/1.0/..", "../../../../lib/victim",
        "$(touch PWNED)", "`touch PWNED`", ";touch PWNED;#", "a b", "'", '"', "\\", "&", "|", ">x",
        k0, k1, f"{k0}/{ARCH}", f"{k1}/..", f"../{k0}", f"{k0};touch PWNED;#", f"{k0} ", ARCH, "x86_64/..",
        "a" * 300, "é", "b\udce9d", "\udcff", "\x1b[2J", "\t", "x\ny", "x\ry",
    ]  # fmt: skip
    bytes_names = st.binary(max_size=12).filter(lambda b: b"\0" not in b)
    hostile = st.sampled_from(fixed)
    return st.one_of(
        hostile,
        hostile,  # weights: mostly the names that matter
        hostile,
        st.text(st.characters(exclude_characters="\0"), max_size=12),
        bytes_names.map(lambda b: b.decode("utf-8", "surrogateescape")),
    )


VALUE_OPTIONS = (
    "-m", "--module", "-v", "-k", "--kernelver", "-a", "--arch", "-j", "--templatekernel", "-c",
    "--config", "--kernelsourcedir", "--archive", "-d", "-r", "--size", "--media", "--spec",
    "--legacy-postinst",
)  # fmt: skip
FLAGS = (
    "--all", "--all-kernels", "--force", "--force-version-override", "--json", "-q", "--verbose",
    "--binaries-only", "--source-only", "--no-depmod", "--symlink-modules", "--rpm_safe_upgrade",
    "--no-initrd", "-V", "--help", "-h",
)  # fmt: skip
WORDS = (*ACTIONS, "biuld", "frobnicate", "Status", "")


def _argv(kernels: Sequence[str]) -> st.SearchStrategy[List[str]]:
    names = _names(kernels)
    with_value = st.tuples(st.sampled_from(VALUE_OPTIONS), names).map(
        lambda ov: [f"{ov[0]}={ov[1]}"] if ov[0].startswith("--") and ov[1][:1] == "." else list(ov)
    )
    token = st.one_of(
        with_value,
        st.sampled_from(FLAGS).map(lambda f: [f]),
        names.map(lambda n: [n]),
    )
    free = st.tuples(st.sampled_from(WORDS), st.lists(token, max_size=5)).map(
        lambda at: [at[0], *(x for t in at[1] for x in t)]
    )
    # the usual shape: action, m/v, -k K: most runs reach deep into the actions
    k0, k1 = kernels
    mv = st.one_of(st.sampled_from(["hello/1.0", "hello/1.0", "hello/2.0", "hello"]), names)
    kernel = st.one_of(st.sampled_from([k0, k1, f"{k0}/{ARCH}", f"{k1}/{ARCH}"]), names)
    other = st.one_of(st.sampled_from(["hello", "1.0", "2.0", k0, k1, ARCH]), names)
    option = st.one_of(
        st.tuples(st.just("-k"), kernel),
        st.tuples(st.sampled_from(("-a", "-m", "-v", "--templatekernel")), other),
    )
    typical = st.tuples(
        st.sampled_from((*ACTIONS[:12], "sign")),
        mv,
        st.lists(option, max_size=2),
        st.lists(st.sampled_from(FLAGS[:6]), max_size=2),
    ).map(lambda t: [t[0], t[1], *(x for kv in t[2] for x in kv), *t[3]])
    return st.one_of(typical, typical, typical, free)


# ---- the test -------------------------------------------------------------------------------------
def _run(t: Template, argv: List[str]) -> Optional[subprocess.CompletedProcess[str]]:
    s = t.work
    cmd = [sys.executable, "-m", "pydkms", *s.tree_args(), *argv]
    try:
        return run_isolated(
            cmd, env=dict(s.env()), cwd=s.root / "cwd", timeout=RUN_TIMEOUT, read_only_system=True
        )
    except subprocess.TimeoutExpired:
        return None


def _reproductions(kernels: Sequence[str]) -> List[List[str]]:
    """The reproductions of the issue, and the commands that really change the tree."""
    k0, k1 = kernels
    return [
        ["remove", "bar_hello/../../victim", "--all"],
        ["remove", "hello/../../victim", "-k", k0],
        ["remove", "-m", "hello", "-v", "../../victim", "--all"],
        ["remove", "-m", "bar_hello", "-v", "../hello/1.0", "--all"],
        ["install", "hello/1.0", "-k", ".."],
        ["install", "hello/1.0", "-k", f"../{k0}"],
        ["status", "-a", "."],
        ["remove", "hello/1.0", "-a", "."],
        ["install", "hello/1.0", "-k", f"{k0};touch PWNED;#"],
        ["autoinstall", "--all-kernels"],
        ["build", "hello/2.0", "--all-kernels"],
        ["install", "hello/2.0", "-k", k1],
        ["build", "hello/1.0", "-k", k1, "--force"],
        ["uninstall", "hello/1.0", "--all"],
        ["unbuild", "hello/1.0", "-k", k0],
        ["remove", "hello/1.0", "--all"],
        ["remove", "hello/1.0"],
        ["kernel_prerm", "-k", k0],
        ["kernel_postinst", "-k", k1],
        ["match", "--templatekernel", k0, "-k", k1],
        ["sign", "-k", k0],
        ["status", "--json"],
    ]


def test_hostile_command_lines_stay_inside_the_trees(template: Template) -> None:
    base = template.work.root.parent

    def check(argv: List[str]) -> None:
        _restore(template)
        before, beside = _snapshot_outside(template.work.root), _beside(base)
        proc = _run(template, argv)
        if proc is None:  # a busy machine, or a hang: a hang hangs again
            _restore(template)
            proc = _run(template, argv)
        shown = f"dkms {argv!r}"
        assert proc is not None, f"{shown}: no answer within {RUN_TIMEOUT} s"
        output = proc.stdout + proc.stderr
        assert "Traceback" not in output and "internal error:" not in output, f"{shown}:\n{output}"
        assert "Read-only file system" not in output, f"{shown} tried to write the real system:\n{output}"
        assert _snapshot_outside(template.work.root) == before, f"{shown} changed files beside the trees"
        assert _beside(base) == beside, f"{shown} changed the directory of the scratch root"
        assert list(template.work.root.rglob("PWNED")) == [], f"{shown} ran a command"
        assert _inconsistencies(template.work) == [], f"{shown}:\n{output}"

    one = given(argv=_argv(template.kernels))(check)
    for argv in _reproductions(template.kernels):
        one = example(argv=argv)(one)
    settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )(one)()
