#!/usr/bin/env python3
"""Benchmark: writing and loading the DKMS archive of a large module, against GNU tar.

    .venv/bin/python bench/archive_bench.py [--size MIB] [--runs N] [--compression gz,zst,xz]

A staging directory like mktarball's (``dkms_main_tree/<K>/<A>/module/big.ko`` of ``--size`` MiB,
its make.log, and a small ``dkms_source_tree/``) is archived by pydkms (``packaging.archive.write``)
and by GNU tar (``tar -C staging -c<z> ./dkms_main_tree ./dkms_source_tree``, what upstream's
mktarball runs); GNU tar's archive is then loaded by pydkms (``extract``) and by ``tar -x``
(upstream's ldtarball), and pydkms's archive is checked to load in GNU tar. Two module contents:
random bytes (incompressible) and a compressible one.

Every operation runs in a child process; its peak RSS is the ``ru_maxrss`` that ``wait4`` reports
for it (which includes the zstd/xz programs it ran). The target (issue 11) is that pydkms stays
under 64 MiB, whatever the size: the data streams. (Python's xz encoder at GNU tar's default level
needs about 94 MiB by itself, as ``xz -6`` does for GNU tar; loading xz stays small.) The
side-by-side with upstream dkms itself comes when the actions are wired. Nothing is asserted: the
benchmark measures and prints, and checks that every run did its job.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "LC_ALL": "C"}
KERNEL = "1.2.3-bench-amd64"
LIMIT_MIB = 64
SUFFIX = {"gz": ".tar.gz", "zst": ".tar.zst", "xz": ".tar.xz", "none": ".tar"}
TAR_FLAGS = {"gz": ["-z"], "zst": ["--zstd"], "xz": ["-J"], "none": []}

# the pydkms children print their own peak (VmHWM): ru_maxrss starts at this process's peak
_CHILD = """
import sys
from pathlib import Path
from pydkms.packaging.archive import extract, write
(write if sys.argv[1] == "write" else extract)(Path(sys.argv[2]), Path(sys.argv[3]))
status = Path("/proc/self/status").read_text()
print(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
"""


def make_staging(root: Path, size_mib: int, compressible: bool) -> Path:
    """The staging dir, written in 1 MiB pieces (this process must stay small: see measure())."""
    staging = root / "staging"
    module = staging / "dkms_main_tree" / KERNEL / "x86_64" / "module"
    module.mkdir(parents=True)
    (module.parent / "log").mkdir()
    (module.parent / "log" / "make.log").write_text("CC [M] big.o\n" * 200)
    block = b"".join(b"symbol_%08d: .quad 0x%016x\n" % (i, i * 2654435761) for i in range(30_000))
    with open(module / "big.ko", "wb") as fh:
        for _ in range(size_mib):
            fh.write(os.urandom(1 << 20) if not compressible else block[: 1 << 20])
    source = staging / "dkms_source_tree"
    source.mkdir()
    (source / "dkms.conf").write_text(
        'PACKAGE_NAME="big"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="big"\n'
    )
    (source / "big.c").write_text("int big;\n" * 1000)
    (source / "Makefile").write_text("obj-m := big.o\n")
    return staging


def measure(argv: Sequence[str]) -> Tuple[float, float, float]:
    """Wall time (s), peak RSS (MiB: ru_maxrss from wait4, with the programs it waited for) and
    the process's own peak (MiB, if it prints its VmHWM in KiB) of one child."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read().decode() if proc.stdout else ""
    if proc.returncode != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv)}\n{err}")
    own = int(out) / 1024 if out.strip().isdigit() else 0.0
    return elapsed, usage.ru_maxrss / 1024, own


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir()
    return path


def same_tree(a: Path, b: Path) -> bool:
    r = subprocess.run(["diff", "-r", "--no-dereference", str(a), str(b)], capture_output=True)
    return r.returncode == 0


def series(runs: int, make: List[str], reset: Optional[Path] = None) -> Tuple[float, float, float]:
    """Median time, largest ru_maxrss and largest own peak of ``runs`` runs."""
    results = []
    for _ in range(runs):
        if reset is not None:
            fresh(reset)
        results.append(measure(make))
    return statistics.median(r[0] for r in results), max(r[1] for r in results), max(r[2] for r in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100, help="module size in MiB (default 100)")
    parser.add_argument("--runs", type=int, default=3, help="runs per measure (median time, max RSS)")
    parser.add_argument("--compression", default="gz,zst", help="comma-separated: gz, zst, xz, none")
    args = parser.parse_args()
    py = sys.executable
    rows: List[Dict[str, str]] = []
    over: List[str] = []
    with tempfile.TemporaryDirectory(prefix="pydkms-archive-bench-", dir=os.environ.get("TMPDIR")) as tmp:
        root = Path(tmp)
        for compressible in (False, True):
            variant = "compressible" if compressible else "random"
            work = fresh(root / variant)
            staging = make_staging(work, args.size, compressible)
            for comp in args.compression.split(","):
                ours = work / f"pydkms{SUFFIX[comp]}"
                theirs = work / f"gnutar{SUFFIX[comp]}"
                out = work / "out"
                w_ours = series(args.runs, [py, "-c", _CHILD, "write", str(ours), str(staging)])
                w_tar = series(args.runs, ["tar", "-C", str(staging), *TAR_FLAGS[comp], "-cf", str(theirs),
                                           "./dkms_main_tree", "./dkms_source_tree"])  # fmt: skip
                l_ours = series(args.runs, [py, "-c", _CHILD, "extract", str(theirs), str(out)], reset=out)
                if not same_tree(out, staging):
                    raise SystemExit(f"pydkms extracted {theirs} wrongly")
                l_tar = series(args.runs, ["tar", "-C", str(out), "-xf", str(theirs)], reset=out)
                measure(["tar", "-C", str(fresh(out)), "-xf", str(ours)])  # ours loads in GNU tar
                if not same_tree(out, staging):
                    raise SystemExit(f"GNU tar extracted {ours} wrongly")
                size = f"{ours.stat().st_size / (1 << 20):.1f}/{theirs.stat().st_size / (1 << 20):.1f}"
                for op, mine, tar in (("write", w_ours, w_tar), ("load", l_ours, l_tar)):
                    rows.append({
                        "module": f"{args.size} MiB {variant}", "archive": comp, "op": op,
                        "MiB ours/tar": size,
                        "pydkms s": f"{mine[0]:.2f}", "GNU tar s": f"{tar[0]:.2f}",
                        "ratio": f"{mine[0] / tar[0]:.2f}" if tar[0] else "-",
                        "pydkms RSS MiB": f"{mine[1]:.1f}", "(own)": f"{mine[2]:.1f}",
                        "GNU tar RSS MiB": f"{tar[1]:.1f}",
                    })  # fmt: skip
                    if mine[1] >= LIMIT_MIB:
                        over.append(f"{op} {comp} {variant}: {mine[1]:.1f} MiB")
                for p in (ours, theirs, out):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            shutil.rmtree(work)
        floor = measure(["true"])[1]
    headers = list(rows[0])
    widths = {h: max(len(h), *(len(r[h]) for r in rows)) for h in headers}
    print("  ".join(h.ljust(widths[h]) for h in headers))
    for r in rows:
        print("  ".join(r[h].ljust(widths[h]) for h in headers))
    print(f"\ntimes: median of {args.runs} runs. RSS: the largest peak, as wait4's ru_maxrss of the child")
    print(f"(with the zstd/xz programs it ran); a child starts at this benchmark's own peak, {floor:.1f} MiB")
    print("(what `true` shows), so small numbers are that floor. (own): the pydkms process's VmHWM.")
    print(f"pydkms peak RSS under {LIMIT_MIB} MiB: " + ("yes" if not over else "NO: " + "; ".join(over)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
