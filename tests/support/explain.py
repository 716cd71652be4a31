"""Build a module with the real ``dkms build`` on a scratch tree, then diagnose what it left.

The inputs of :func:`pydkms.explain.diagnose` are taken from the tree the way ``dkms explain``
will take them: the make.log in the build directory, the kernel's headers directory in the
install tree, dkms' exit code, and the other installed kernels' headers as references.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Mapping, Optional, Tuple

from pydkms.explain import Diagnosis, FailureInputs, diagnose
from tests.conftest import ARCH, Result, Scratch, installed_kernels


def make_log(scratch: Scratch, module: str, version: str, kernel: str) -> Path:
    """The make.log a failed build leaves: build/ for one kernel, .build-K-A/ for concurrent ones."""
    base = scratch.dkms_tree / module / version
    private = base / f".build-{kernel}-{ARCH}" / "make.log"
    return private if private.exists() else base / "build" / "make.log"


def reference_headers(kernel: str) -> Tuple[Path, ...]:
    """The headers of every other installed kernel."""
    return tuple(Path("/lib/modules") / k / "build" for k in installed_kernels() if k != kernel)


def diagnose_build(
    scratch: Scratch,
    module: str,
    kernel: str,
    result: Result,
    *,
    version: str = "1.0",
    step: str = "",
    build_exclusive: Optional[Mapping[str, str]] = None,
    missing_depends: Optional[Mapping[str, str]] = None,
    patches: Tuple[str, ...] = (),
    free_disk_bytes: Optional[int] = None,
    references: bool = True,
) -> Diagnosis:
    """Diagnose the build of ``module/version`` for ``kernel`` that gave ``result``."""
    return diagnose(
        FailureInputs(
            module=module,
            version=version,
            kernel=kernel,
            arch=ARCH,
            make_log=make_log(scratch, module, version, kernel),
            headers_dir=scratch.install_tree / kernel / "build",
            step=step,
            exit_code=result.rc,
            build_exclusive=dict(build_exclusive or {}),
            missing_depends=dict(missing_depends or {}),
            patches=patches,
            free_disk_bytes=free_disk_bytes,
            reference_headers=reference_headers(kernel) if references else (),
            distro_family="debian",
        )
    )


def build_and_diagnose(
    scratch: Scratch, module: str, kernel: str, *, env: Optional[Mapping[str, str]] = None, **kw: object
) -> Tuple[Result, Diagnosis]:
    """``dkms build module/1.0 -k kernel`` (it must fail), then diagnose it."""
    result = scratch.dkms("build", f"{module}/1.0", "-k", kernel, env=env)
    assert result.rc != 0, f"the build was expected to fail:\n{result}"
    return result, diagnose_build(scratch, module, kernel, result, **kw)  # type: ignore[arg-type]


def copy_headers(kernel: str, dest: Path) -> Path:
    """A private, writable copy of ``/lib/modules/K/build`` (the arch part; -common stays shared).

    Its relative links (scripts, tools) are made absolute so that they still resolve.
    """
    real = Path(os.path.realpath(f"/lib/modules/{kernel}/build"))
    shutil.copytree(real, dest, symlinks=True)
    for entry in dest.iterdir():
        if entry.is_symlink() and not os.path.isabs(os.readlink(entry)):
            target = os.path.realpath(real / entry.name)
            entry.unlink()
            entry.symlink_to(target)
    return dest


def use_headers(scratch: Scratch, kernel: str, headers: Path) -> None:
    """Point ``$install_tree/K/build`` of the scratch tree at ``headers``."""
    kdir = scratch.install_tree / kernel
    kdir.mkdir(parents=True, exist_ok=True)
    link = kdir / "build"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(headers)


def path_without(programs: Tuple[str, ...], farm: Path) -> str:
    """A PATH with everything of /usr/bin and /usr/sbin except ``programs`` (prefix match)."""
    farm.mkdir(parents=True, exist_ok=True)
    for d in ("/usr/bin", "/usr/sbin"):
        for entry in os.scandir(d):
            target = farm / entry.name
            if entry.name.startswith(programs) or target.exists():
                continue
            target.symlink_to(entry.path)
    return str(farm)


def set_config(path: Path, values: Mapping[str, Optional[str]]) -> None:
    """Set (or, with None, remove) options of a copied .config or include/config/auto.conf.

    String values are given plain: .config gets them quoted, auto.conf (read by make) does not.
    """
    quoted = path.name == ".config"
    lines = [line for line in path.read_text().splitlines() if line.split("=", 1)[0] not in values]
    for name, value in values.items():
        if value is None:
            continue
        if quoted and not re.fullmatch(r"[ymn]|-?\d+|0x[0-9a-fA-F]+", value):
            value = f'"{value}"'
        lines.append(f"{name}={value}")
    path.write_text("\n".join(lines) + "\n")
