#!/usr/bin/env python3
"""Benchmarks: pydkms against upstream dkms on twin trees, printing times and ratios.

    .venv/bin/python bench/bench.py [--runs N] [--upstream bookworm|trixie|both]
                                    [--only status|build|pipeline|autoinstall|multikernel]

1. ``status`` on 30 modules x 3 kernels (90 lines). The trees are populated from one real build
   per kernel copied under 30 names, so setting up takes seconds. pydkms is timed twice: on the
   tree upstream reads (no install fingerprints: the first status after switching from upstream)
   and on the same tree with the fingerprints ``dkms install`` writes.
2. ``build`` + ``install`` of one module for one kernel, against the bare ``make`` it runs
   (``make -jN KERNELRELEASE=K -C /lib/modules/K/build M=<copy> modules`` on a fresh copy).
   Reported as overhead = median(dkms) - median(make). Upstream runs in a private mount namespace
   (it would otherwise write /var/lib/dkms/mok.key and run depmod on the real /lib/modules); the
   namespace's own cost, measured with ``true``, is subtracted from upstream's times.
3. ``autoinstall -k K`` of 8 added modules (generated from examples/hello: a header and three .c
   files each, AUTOINSTALL=yes) for a kernel none of them is built for, as after a kernel upgrade.
   Upstream builds them one after the other; pydkms builds them at the same time under one -j
   budget. Every dkms gets ``-j nproc`` (which is also each one's default).
4. ``multikernel``: ``build hello/1.0 -k K1 -k K2 -k K3`` in one invocation.

Measures 3 and 4 take minutes, so they default to 3 runs (the others to 7). Every series of a
measure is timed on twin trees, run by run in turn, and reset untimed between runs (unbuild).

Targets (issue 2): status at least 30x faster than upstream; pydkms adds at most 50 ms to a
build + install beyond the make itself (upstream adds about 300 ms). The pipeline measure also
times a "floor": the external steps every dkms runs (copy the source, bash for MAKE, strip, copy,
depmod) from one shell with nothing around them, which bounds what any implementation can reach.
Target (issue 3): the 8-module autoinstall at least 1.6x faster than upstream on 2 cores.
Nothing here asserts a target: it measures and prints (and checks that every timed run did its job).
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from tests.support.upstream import (  # noqa: E402
    extract_deb,
    fetch_trixie_deb,
    isolation_unavailable,
    run_isolated,
    upstream_dkms,
)

ARCH = os.uname().machine
HELLO = REPO / "examples" / "hello"
ENV = {**os.environ, "LC_ALL": "C", "PYTHONPATH": str(REPO / "src")}
ENV.pop("PYDKMS_SYSCONFDIR", None)
# pydkms signs like upstream does, but with a key of its own (not the host's /var/lib/dkms/mok.*);
# upstream runs in a namespace where /var/lib/dkms is private
_MOK = Path(tempfile.gettempdir()) / f"pydkms-bench-mok-{os.getuid()}"
ENV.setdefault("mok_signing_key", str(_MOK / "mok.key"))
ENV.setdefault("mok_certificate", str(_MOK / "mok.pub"))


def kernels_with_headers() -> List[str]:
    from pydkms.version import version_sort_key

    base = Path("/lib/modules")
    ks = [p.name for p in base.iterdir() if (p / "build" / "include").is_dir()]
    return sorted(ks, key=version_sort_key, reverse=True)


_SCRIPT = Path(sys.executable).parent / "dkms"


def pydkms_cmd(*args: str) -> List[str]:
    """The installed ``dkms`` console script if this venv has one (what users run), else -m."""
    if _SCRIPT.is_file():
        return [str(_SCRIPT), *args]
    return [sys.executable, "-m", "pydkms", *args]


def time_runs(
    fn: Callable[[], object], runs: int, prepare: Optional[Callable[[], object]] = None
) -> List[float]:
    times = []
    for _ in range(runs):
        if prepare:
            prepare()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


def fmt(times: Sequence[float]) -> str:
    med = statistics.median(times)
    return f"median {med * 1000:8.1f} ms  (min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}, n={len(times)})"


def sign_file_for(kernel: str) -> Optional[str]:
    """The sign-file a floor measure uses for ``kernel`` (the one pydkms picks on Debian), or None."""
    candidates = [Path(f"/lib/modules/{kernel}/build/scripts/sign-file")]
    candidates += sorted(Path("/usr/lib").glob("linux-kbuild-*/scripts/sign-file"), reverse=True)
    for c in candidates:
        if os.access(c, os.X_OK):
            return str(c)
    return None


def anchor_kernel(trees: Trees, kernel: str, module: Path) -> None:
    """Give the scratch kernel dir a module of its own and a real modules.dep.

    Without it, removing the last dkms module empties modules.dep, pydkms drops the empty depmod
    output (fix D-11), and the next install skips depmod: the timing would leave depmod out.
    A real kernel always has its in-tree modules, so depmod runs on every install there.
    """
    anchor = trees.lib / kernel / "kernel" / "drivers" / "misc" / "pydkms_bench_anchor.ko"
    anchor.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(module, anchor)
    subprocess.run(["depmod", "-b", str(trees.root), kernel], check=True, capture_output=True)


class Trees:
    def __init__(self, root: Path, kernels: Sequence[str]) -> None:
        self.root = root
        self.dkms, self.src, self.lib = root / "dkms", root / "src", root / "lib" / "modules"
        for d in (self.dkms, self.src, self.lib):
            d.mkdir(parents=True, exist_ok=True)
        for k in kernels:
            (self.lib / k).mkdir(exist_ok=True)
            if not (self.lib / k / "build").exists():
                (self.lib / k / "build").symlink_to(f"/lib/modules/{k}/build")

    def args(self) -> List[str]:
        return ["--dkmstree", str(self.dkms), "--sourcetree", str(self.src), "--installtree", str(self.lib)]


# ---- 1. status ----------------------------------------------------------------------------------
def populate_status_tree(trees: Trees, template: Dict[str, Path], n: int, fingerprints: bool) -> None:
    from pydkms.installed import fingerprint_for, write_fingerprint
    from pydkms.moduleconf import ModuleRecord

    for i in range(n):
        name = f"hm{i:02d}"
        src = trees.src / f"{name}-1.0"
        src.mkdir()
        shutil.copy(HELLO / "hello.c", src / f"{name}.c")
        (src / "Kbuild").write_text(f"obj-m := {name}.o\n")
        (src / "dkms.conf").write_text(
            f'PACKAGE_NAME="{name}"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="{name}"\n'
            'DEST_MODULE_LOCATION[0]="/updates/dkms"\nAUTOINSTALL="yes"\n'
        )
        vdir = trees.dkms / name / "1.0"
        vdir.mkdir(parents=True)
        (vdir / "source").symlink_to(src)
        for k, ko in template.items():
            target = vdir / k / ARCH
            (target / "module").mkdir(parents=True)
            (target / "log").mkdir()
            shutil.copy(ko, target / "module" / f"{name}.ko")
            shutil.copy(ko.parent.parent / "log" / "make.log", target / "log" / "make.log")
            (trees.dkms / name / f"kernel-{k}-{ARCH}").symlink_to(f"1.0/{k}/{ARCH}")
            dest = trees.lib / k / "updates" / "dkms"
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(ko, dest / f"{name}.ko")
            if fingerprints:
                record = ModuleRecord(0, name, "", name, "/updates/dkms", "/updates/dkms", True)
                entry = fingerprint_for(record, target / "module" / f"{name}.ko", dest / f"{name}.ko")
                assert entry is not None
                write_fingerprint(target, [entry])


def bench_status(work: Path, upstreams: Dict[str, Path], kernels: Sequence[str], runs: int) -> None:
    print(f"\n== status: 30 modules x {len(kernels)} kernels ({30 * len(kernels)} lines)")
    tpl = Trees(work / "template", kernels)
    shutil.copytree(HELLO, tpl.src / "hello-1.0")
    run(pydkms_cmd("build", "hello/1.0", *[a for k in kernels for a in ("-k", k)], *tpl.args()))
    template = {k: tpl.dkms / "hello" / "1.0" / k / ARCH / "module" / "hello.ko" for k in kernels}

    plain = Trees(work / "status-plain", kernels)
    populate_status_tree(plain, template, 30, fingerprints=False)
    fp = Trees(work / "status-fingerprinted", kernels)
    populate_status_tree(fp, template, 30, fingerprints=True)

    expected = run(pydkms_cmd("status", *fp.args())).stdout
    assert expected.count("\n") == 30 * len(kernels), expected
    results: Dict[str, List[float]] = {}
    results["pydkms (fingerprints)"] = time_runs(lambda: run(pydkms_cmd("status", *fp.args())), runs)
    results["pydkms (tree from upstream)"] = time_runs(lambda: run(pydkms_cmd("status", *plain.args())), runs)
    for name, script in upstreams.items():
        argv = ["bash", str(script), "status", *plain.args()]
        same = "same lines" if run(argv).stdout == expected else "LINES DIFFER"
        results[f"upstream {name} ({same})"] = time_runs(functools.partial(run, argv), max(2, runs // 3))
    for label, times in results.items():
        print(f"  {label:40s} {fmt(times)}")
    for label, times in results.items():
        if label.startswith("upstream"):
            for mine in ("pydkms (fingerprints)", "pydkms (tree from upstream)"):
                ratio = statistics.median(times) / statistics.median(results[mine])
                print(f"  ratio {label.split(' (')[0]} / {mine}: {ratio:6.1f}x")


def upstream_runner(
    work: Path,
    tag: str,
    name: str,
    script: Path,
    kernels: Sequence[str],
    make_source: Callable[[Trees], object],
) -> Tuple[Trees, Callable[..., None]]:
    """Twin trees for upstream ``name`` and a function running it on them in a private namespace.

    The namespace keeps its own /var/lib/dkms across calls (``<tag>-varlib-<name>``), so
    upstream's MOK key is created by the first build only.
    """
    t = Trees(work / f"{tag}-upstream-{name}", kernels)
    make_source(t)
    var_lib = work / f"{tag}-varlib-{name}"
    var_lib.mkdir()

    def up(*args: str) -> None:
        p = run_isolated(["bash", str(script), *args, *t.args()], var_lib_dkms=var_lib, env={"LC_ALL": "C"})
        if p.returncode != 0:
            raise RuntimeError(f"upstream {' '.join(args)} failed:\n{p.stdout}{p.stderr}")

    return t, up


def upstream_series(
    work: Path,
    tag: str,
    name: str,
    script: Path,
    kernel: str,
    make_source: Callable[[Trees], object],
    mv: str,
) -> Tuple[str, Callable[[], object], Callable[[], object]]:
    """Set up twin trees for upstream ``name`` and return its timed install / reset steps.

    The first install (which creates upstream's MOK key) is done here, untimed.
    """
    _t, up = upstream_runner(work, tag, name, script, [kernel], make_source)
    up("add", mv)
    up("install", mv, "-k", kernel)
    up("unbuild", mv, "-k", kernel)
    return (
        f"upstream {name} build+install",
        lambda: up("install", mv, "-k", kernel),
        lambda: up("unbuild", mv, "-k", kernel),
    )


# ---- 2. build + install --------------------------------------------------------------------------
def bench_build(work: Path, upstreams: Dict[str, Path], kernel: str, runs: int) -> None:
    jobs = str(os.cpu_count() or 1)
    print(f"\n== build + install of one module for {kernel} (make -j{jobs})")
    raw = work / "raw"
    results: Dict[str, List[float]] = {}

    def fresh_copy() -> None:
        shutil.rmtree(raw, ignore_errors=True)
        shutil.copytree(HELLO, raw)

    def bare_make() -> None:
        run(
            [
                "make",
                f"-j{jobs}",
                f"KERNELRELEASE={kernel}",
                "-C",
                f"/lib/modules/{kernel}/build",
                f"M={raw}",
                "modules",
            ]
        )

    fresh_copy()
    bare_make()
    mine = Trees(work / "build-pydkms", [kernel])
    shutil.copytree(HELLO, mine.src / "hello-1.0")
    anchor_kernel(mine, kernel, raw / "hello.ko")
    run(pydkms_cmd("add", "hello/1.0", *mine.args()))

    def pydkms_install() -> None:
        run(pydkms_cmd("install", "hello/1.0", "-k", kernel, *mine.args()))

    def pydkms_reset() -> None:
        run(pydkms_cmd("unbuild", "hello/1.0", "-k", kernel, *mine.args()))

    pydkms_install()  # warm caches once
    pydkms_reset()
    series: List[Tuple[str, Callable[[], object], Callable[[], object]]] = [
        ("bare make", bare_make, fresh_copy),
        ("pydkms build+install", pydkms_install, pydkms_reset),
    ]

    iso_overhead = 0.0
    if upstreams:
        iso = time_runs(lambda: run_isolated(["true"]), 5)
        iso_overhead = statistics.median(iso)
        print(f"  (namespace overhead for upstream runs: {iso_overhead * 1000:.1f} ms, subtracted)")

    def upstream_source(trees: Trees) -> None:
        shutil.copytree(HELLO, trees.src / "hello-1.0")
        anchor_kernel(trees, kernel, raw / "hello.ko")

    for name, script in upstreams.items():
        series.append(upstream_series(work, "build", name, script, kernel, upstream_source, "hello/1.0"))
    for label, _fn, _prep in series:
        results[label] = []
    for _ in range(runs):  # interleaved, so drift hits every series alike
        for label, fn, prep in series:
            results[label].extend(time_runs(fn, 1, prep))
    for label in results:
        if label.startswith("upstream"):
            results[label] = [x - iso_overhead for x in results[label]]
        print(f"  {label:40s} {fmt(results[label])}")
    base = statistics.median(results["bare make"])
    for label, times in results.items():
        if label != "bare make":
            print(
                f"  overhead of {label:29s} {(statistics.median(times) - base) * 1000:+8.1f} ms over bare make"
            )
    print(
        "  (kbuild's own run-to-run spread is larger than the overhead; see the trivial-make measure below)"
    )


def bench_pipeline(work: Path, upstreams: Dict[str, Path], kernel: str, runs: int) -> None:
    """dkms' own cost with kbuild taken out: MAKE copies a prebuilt module (the 'make' costs ~1 ms)."""
    print(f"\n== build + install pipeline with a trivial MAKE (copies a prebuilt .ko), {kernel}")
    tpl = Trees(work / "pipeline-template", [kernel])
    shutil.copytree(HELLO, tpl.src / "hello-1.0")
    run(pydkms_cmd("build", "hello/1.0", "-k", kernel, "--directive", "STRIP=no", *tpl.args()))
    prebuilt = tpl.dkms / "hello" / "1.0" / kernel / ARCH / "module" / "hello.ko"

    def make_source(trees: Trees) -> None:
        src = trees.src / "fast-1.0"
        shutil.copytree(HELLO, src)
        shutil.copy(prebuilt, src / "prebuilt.bin")
        (src / "dkms.conf").write_text(
            'PACKAGE_NAME="fast"\nPACKAGE_VERSION="1.0"\nMAKE[0]="cp prebuilt.bin fast.ko"\n'
            'BUILT_MODULE_NAME[0]="fast"\nDEST_MODULE_LOCATION[0]="/updates/dkms"\n'
        )
        anchor_kernel(trees, kernel, prebuilt)

    mine = Trees(work / "pipeline-pydkms", [kernel])
    make_source(mine)
    run(pydkms_cmd("add", "fast/1.0", *mine.args()))
    series: List[Tuple[str, Callable[[], object], Callable[[], object]]] = [
        (
            "pydkms build+install",
            lambda: run(pydkms_cmd("install", "fast/1.0", "-k", kernel, *mine.args())),
            lambda: run(pydkms_cmd("unbuild", "fast/1.0", "-k", kernel, *mine.args())),
        ),
        ("bare 'make' (cp)", lambda: run(["cp", str(prebuilt), str(work / "x.ko")]), lambda: None),
    ]
    # The floor: the external steps any dkms must run, with nothing around them. From one shell,
    # and from a Python that imports only os, shutil and subprocess (any Python dkms starts an
    # interpreter and spawns these): the gap is what Python costs before any work is done.
    floor_dir = work / "floor"
    b, m = floor_dir / "b", floor_dir / "m"
    floor_ko = mine.lib / kernel / "updates" / "floor.ko"
    signer = sign_file_for(kernel)
    key, cert = ENV["mok_signing_key"], ENV["mok_certificate"]
    build = [
        ["cp", "-a", "--reflink=auto", f"{mine.src}/fast-1.0/.", str(b)],
        ["bash", "-c", f"cd {b} && cp prebuilt.bin fast.ko"],
    ]
    post = [
        ["strip", "-g", f"{m}/fast.ko"],
        *([[signer, "sha256", key, cert, f"{m}/fast.ko"]] if signer else []),
    ]
    depmod = ["depmod", "-b", str(mine.root), "-a", kernel]
    tools = "cp -a, bash, strip, " + ("sign-file, " if signer else "") + "cp, depmod"
    floor_script = "set -e; " + "; ".join(
        shlex.join(argv)
        for argv in [
            ["rm", "-rf", str(floor_dir)],
            ["mkdir", "-p", str(b), str(m), str(floor_ko.parent)],
            *build,
            ["cp", f"{b}/fast.ko", f"{m}/fast.ko"],
            *post,
            ["cp", f"{m}/fast.ko", str(floor_ko)],
            depmod,
            ["rm", "-f", str(floor_ko)],
        ]
    )
    # the Python floor does the file work itself and spawns only the tools
    py_floor = f"""import os, shutil, subprocess
shutil.rmtree({str(floor_dir)!r}, ignore_errors=True)
for d in {[str(b), str(m)]!r}:
    os.makedirs(d)
os.makedirs({str(floor_ko.parent)!r}, exist_ok=True)
for argv in {build!r}:
    subprocess.run(argv, check=True)
shutil.copyfile({f"{b}/fast.ko"!r}, {f"{m}/fast.ko"!r})
for argv in {post!r}:
    subprocess.run(argv, check=True)
shutil.copyfile({f"{m}/fast.ko"!r}, {str(floor_ko)!r})
subprocess.run({depmod!r}, check=True)
os.unlink({str(floor_ko)!r})
"""
    series += [
        (f"floor: {tools}", lambda: run(["sh", "-c", floor_script]), lambda: None),
        (
            "floor: the same tools spawned from python",
            lambda: run([sys.executable, "-c", py_floor]),
            lambda: None,
        ),
        ("python start alone (-c pass)", lambda: run([sys.executable, "-c", "pass"]), lambda: None),
    ]
    iso_overhead = statistics.median(time_runs(lambda: run_isolated(["true"]), 5)) if upstreams else 0.0
    for name, script in upstreams.items():
        series.append(upstream_series(work, "pipeline", name, script, kernel, make_source, "fast/1.0"))
    results: Dict[str, List[float]] = {label: [] for label, _f, _p in series}
    for _ in range(runs):
        for label, fn, prep in series:
            results[label].extend(time_runs(fn, 1, prep))
    if upstreams:
        print(f"  (namespace overhead for upstream runs: {iso_overhead * 1000:.1f} ms, subtracted)")
    base = statistics.median(results["bare 'make' (cp)"])
    for label, times in results.items():
        if label.startswith("upstream"):
            times = [x - iso_overhead for x in times]
        print(f"  {label:50s} {fmt(times)}   overhead {(statistics.median(times) - base) * 1000:+7.1f} ms")


# ---- 3. autoinstall and multi-kernel builds ------------------------------------------------------
AUTOINSTALL_MODULES = 8

_MODULE_FILES = {
    "{n}.h": """\
/* SPDX-License-Identifier: GPL-2.0 */
#ifndef {N}_H
#define {N}_H
#include <linux/types.h>

u32 {n}_checksum(unsigned int rounds);
int {n}_stats_init(u32 checksum);
void {n}_stats_exit(void);
#endif
""",
    "{n}_main.c": """\
// SPDX-License-Identifier: GPL-2.0
/* {n} - one of the autoinstall benchmark modules (bench/bench.py), derived from examples/hello. */
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include "{n}.h"

static unsigned int rounds = 4;
module_param(rounds, uint, 0444);
MODULE_PARM_DESC(rounds, "checksum rounds computed at load time");

static int __init {n}_init(void)
{{
	u32 sum = {n}_checksum(rounds);
	int err = {n}_stats_init(sum);

	if (err)
		return err;
	pr_info("{n}: loaded (version 1.0), checksum %08x\\n", sum);
	return 0;
}}

static void __exit {n}_exit(void)
{{
	{n}_stats_exit();
	pr_info("{n}: unloaded\\n");
}}

module_init({n}_init);
module_exit({n}_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("pydkms developers");
MODULE_DESCRIPTION("pydkms benchmark module {n}");
MODULE_VERSION("1.0");
""",
    "{n}_util.c": """\
// SPDX-License-Identifier: GPL-2.0
#include <linux/jhash.h>
#include <linux/slab.h>
#include <linux/string.h>
#include "{n}.h"

u32 {n}_checksum(unsigned int rounds)
{{
	u8 *buf = kmalloc(PAGE_SIZE, GFP_KERNEL);
	u32 sum = 0;
	unsigned int i;

	if (!buf)
		return 0;
	for (i = 0; i < PAGE_SIZE; i++)
		buf[i] = (u8)(i * 31 + {i});
	for (i = 0; i < rounds; i++)
		sum = jhash(buf, PAGE_SIZE, sum);
	kfree(buf);
	return sum;
}}
""",
    "{n}_stats.c": """\
// SPDX-License-Identifier: GPL-2.0
#include <linux/debugfs.h>
#include <linux/seq_file.h>
#include "{n}.h"

static struct dentry *{n}_dir;
static u32 {n}_sum;

static int checksum_show(struct seq_file *m, void *v)
{{
	seq_printf(m, "%08x\\n", {n}_sum);
	return 0;
}}
DEFINE_SHOW_ATTRIBUTE(checksum);

int {n}_stats_init(u32 checksum)
{{
	{n}_sum = checksum;
	{n}_dir = debugfs_create_dir("{n}", NULL);
	debugfs_create_file("checksum", 0444, {n}_dir, NULL, &checksum_fops);
	return 0;
}}

void {n}_stats_exit(void)
{{
	debugfs_remove_recursive({n}_dir);
}}
""",
    "Kbuild": "obj-m := {n}.o\n{n}-y := {n}_main.o {n}_util.o {n}_stats.o\n",
    "dkms.conf": (
        'PACKAGE_NAME="{n}"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="{n}"\n'
        'DEST_MODULE_LOCATION[0]="/updates/dkms"\nAUTOINSTALL="yes"\n'
    ),
}


def bench_module_names() -> List[str]:
    return [f"benchmod{i}" for i in range(AUTOINSTALL_MODULES)]


def write_bench_modules(trees: Trees) -> None:
    """The autoinstall modules' sources: examples/hello grown to a header, three .c files, a debugfs file."""
    for i, name in enumerate(bench_module_names()):
        src = trees.src / f"{name}-1.0"
        src.mkdir()
        for fname, text in _MODULE_FILES.items():
            (src / fname.format(n=name)).write_text(text.format(n=name, N=name.upper(), i=i))


@dataclass(frozen=True)
class Twin:
    """One implementation on its own trees: ``dkms(*args)`` runs it there (tree options appended)."""

    label: str
    trees: Trees
    dkms: Callable[..., None]
    #: runs in a private mount namespace, whose own cost is subtracted from its times
    isolated: bool


def pydkms_runner(trees: Trees) -> Callable[..., None]:
    def mine(*args: str) -> None:
        run(pydkms_cmd(*args, *trees.args()))

    return mine


def make_twins(
    work: Path,
    tag: str,
    upstreams: Dict[str, Path],
    kernels: Sequence[str],
    make_source: Callable[[Trees], object],
) -> List[Twin]:
    """pydkms and every upstream on identical trees; each install tree has modules.dep for ``kernels``."""
    mine = Trees(work / f"{tag}-pydkms", kernels)
    make_source(mine)
    twins = [Twin("pydkms", mine, pydkms_runner(mine), isolated=False)]
    for name, script in upstreams.items():
        t, up = upstream_runner(work, tag, name, script, kernels, make_source)
        twins.append(Twin(f"upstream {name}", t, up, isolated=True))
    for twin in twins:
        for k in kernels:
            subprocess.run(["depmod", "-b", str(twin.trees.root), k], check=True, capture_output=True)
    return twins


def time_twins(
    twins: Sequence[Twin], runs: int, action: Callable[[Twin], None], reset: Callable[[Twin], None]
) -> Dict[str, List[float]]:
    """Time ``action`` on every twin, interleaved run by run; ``reset`` (untimed) follows each run."""
    iso_overhead = 0.0
    if any(t.isolated for t in twins):
        iso_overhead = statistics.median(time_runs(lambda: run_isolated(["true"]), 5))
        print(f"  (namespace overhead for upstream runs: {iso_overhead * 1000:.1f} ms, subtracted)")
    results: Dict[str, List[float]] = {t.label: [] for t in twins}
    for _ in range(runs):
        for twin in twins:
            t0 = time.perf_counter()
            action(twin)
            results[twin.label].append(time.perf_counter() - t0 - (iso_overhead if twin.isolated else 0.0))
            reset(twin)
    return results


def report_ratios(results: Dict[str, List[float]], what: str, target: Optional[float] = None) -> None:
    for label, times in results.items():
        print(f"  {label + ' ' + what:40s} {fmt(times)}")
    mine = statistics.median(results["pydkms"])
    for label, times in results.items():
        if label != "pydkms":
            ratio = statistics.median(times) / mine
            verdict = f"  (target {target}x: {'met' if ratio >= target else 'NOT met'})" if target else ""
            print(f"  ratio {label} / pydkms: {ratio:5.2f}x{verdict}")


def loadavg() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_autoinstall(work: Path, upstreams: Dict[str, Path], kernel: str, runs: int) -> None:
    jobs = str(os.cpu_count() or 1)
    names = bench_module_names()
    print(
        f"\n== autoinstall of {len(names)} modules (3 .c files each) for a new kernel {kernel}; "
        f"-j {jobs} passed to every dkms (= nproc, both defaults); {loadavg()}"
    )
    twins = make_twins(work, "autoinstall", upstreams, [kernel], write_bench_modules)
    for twin in twins:
        for name in names:
            twin.dkms("add", f"{name}/1.0")

    def autoinstall(twin: Twin) -> None:
        twin.dkms("autoinstall", "-k", kernel, "-j", jobs)

    def reset(twin: Twin) -> None:
        dest = twin.trees.lib / kernel / "updates" / "dkms"
        found = sorted(p.name.split(".")[0] for p in dest.glob("*.ko*"))
        if found != names:
            raise RuntimeError(f"{twin.label}: autoinstall left {found} in {dest}, expected {names}")
        for name in names:
            twin.dkms("unbuild", f"{name}/1.0", "-k", kernel)

    # Untimed warm-up: page cache, and upstream's MOK key (created by its first build).
    for twin in twins:
        if twin.isolated:
            twin.dkms("install", f"{names[0]}/1.0", "-k", kernel)
            twin.dkms("unbuild", f"{names[0]}/1.0", "-k", kernel)
        else:
            autoinstall(twin)
            reset(twin)
    results = time_twins(twins, runs, autoinstall, reset)
    report_ratios(results, "autoinstall", target=1.6)
    print(f"  ({loadavg()} at the end)")


def bench_multikernel(work: Path, upstreams: Dict[str, Path], kernels: Sequence[str], runs: int) -> None:
    jobs = str(os.cpu_count() or 1)
    ks = [a for k in kernels for a in ("-k", k)]
    print(
        f"\n== build of one module (hello) for {len(kernels)} kernels in one invocation ({' '.join(kernels)}); "
        f"-j {jobs} passed to every dkms; {loadavg()}"
    )
    twins = make_twins(
        work, "multikernel", upstreams, kernels, lambda t: shutil.copytree(HELLO, t.src / "hello-1.0")
    )
    for twin in twins:
        twin.dkms("add", "hello/1.0")

    def build(twin: Twin) -> None:
        twin.dkms("build", "hello/1.0", *ks, "-j", jobs)

    def reset(twin: Twin) -> None:
        for k in kernels:
            built = list((twin.trees.dkms / "hello" / "1.0" / k / ARCH / "module").glob("hello.ko*"))
            if not built:
                raise RuntimeError(f"{twin.label}: hello/1.0 was not built for {k}")
        twin.dkms("unbuild", "hello/1.0", *ks)

    for twin in twins:  # untimed warm-up, as above
        if twin.isolated:
            twin.dkms("build", "hello/1.0", "-k", kernels[0])
            twin.dkms("unbuild", "hello/1.0", "-k", kernels[0])
        else:
            build(twin)
            reset(twin)
    results = time_twins(twins, runs, build, reset)
    report_ratios(results, "build")
    print(f"  ({loadavg()} at the end)")


def compile_bytecode() -> None:
    """Byte-compile pydkms as pip and dpkg do when they install it.

    With PYTHONDONTWRITEBYTECODE set (or a read-only tree), modules edited since the last compile
    would be compiled from source on every start, which is not what an installed dkms pays.
    """
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "src" / "pydkms")], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--runs", type=int, help="timed runs per series (default 7; 3 for autoinstall and multikernel)"
    )
    ap.add_argument("--upstream", choices=("bookworm", "trixie", "both", "none"), default="both")
    ap.add_argument("--only", choices=("status", "build", "pipeline", "autoinstall", "multikernel"))
    opts = ap.parse_args()
    kernels = kernels_with_headers()
    if not kernels:
        print("no kernel headers installed (run ./tools/test or ./tools/demo first)")
        return 1
    compile_bytecode()
    upstreams: Dict[str, Path] = {}
    if opts.upstream in ("bookworm", "both"):
        upstreams["3.0.10"] = upstream_dkms()
    if opts.upstream in ("trixie", "both"):
        upstreams["3.2.2"] = extract_deb(fetch_trixie_deb())
    reason = isolation_unavailable()
    if reason:
        print(f"cannot isolate upstream ({reason}); upstream build timings skipped")
    isolated = {} if reason else upstreams
    generic = [k for k in kernels if "-cloud-" not in k and "-rt-" not in k] or kernels
    with tempfile.TemporaryDirectory(prefix="pydkms-bench-") as tmp:
        work = Path(tmp)
        if opts.only in (None, "status"):
            bench_status(work, upstreams, kernels[:3], opts.runs or 7)
        if opts.only in (None, "build"):
            bench_build(work, isolated, generic[0], opts.runs or 7)
        if opts.only in (None, "build", "pipeline"):
            bench_pipeline(work, isolated, generic[0], opts.runs or 7)
        if opts.only in (None, "autoinstall"):
            bench_autoinstall(work, isolated, generic[0], opts.runs or 3)
        if opts.only in (None, "multikernel"):
            if len(kernels) < 3:
                print(f"\n== multikernel skipped: needs headers for 3 kernels, found {len(kernels)}")
            else:
                bench_multikernel(work, isolated, kernels[:3], opts.runs or 3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
