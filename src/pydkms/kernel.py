"""Facts about a target kernel: headers, configuration, compiler, module suffix, depmod."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

from . import runner
from .names import check_target, kernel_name_problem, printable
from .version import version_sort_key

_COMPRESSED_SUFFIXES = (".gz", ".xz", ".zst")
#: endings of a module file: plain or compressed
MODULE_FILE_SUFFIXES = (".ko", *(".ko" + s for s in _COMPRESSED_SUFFIXES))


@dataclass(frozen=True)
class Kernel:
    """One target (kernel release, arch) with its build directory and configuration file."""

    release: str
    arch: str
    source_dir: Path  # <ksrc>
    config: Path  # kernel config used for detection and BUILD_EXCLUSIVE_CONFIG
    _config_cache: Dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def resolve(
        cls,
        release: str,
        arch: str,
        install_tree: Path,
        kernel_source_dir: Optional[Path] = None,
        kernel_config: Optional[Path] = None,
    ) -> Kernel:
        """Apply the defaults of spec/build-install.md §2.1; an invalid release or arch raises DkmsError(2)."""
        check_target(release, arch)
        ksrc = kernel_source_dir if kernel_source_dir is not None else install_tree / release / "build"
        if kernel_config is None:
            auto = ksrc / "include" / "config" / "auto.conf"
            kernel_config = auto if auto.exists() else ksrc / ".config"
        return cls(release, arch, ksrc, kernel_config)

    def headers_present(self) -> bool:
        return (self.source_dir / "include").exists()

    def _config_text(self) -> str:
        cached = self._config_cache.get("text")
        if cached is None:
            try:
                with open(self.config, encoding="utf-8", errors="surrogateescape") as fh:
                    cached = fh.read()
            except OSError:
                cached = ""
            self._config_cache["text"] = cached
        return cached

    def _config_line(self, prefix: str) -> Optional[str]:
        """The rest of the first config line that starts with ``prefix`` (``grep ^prefix``)."""
        text = self._config_text()
        i = 0 if text.startswith(prefix) else text.find("\n" + prefix) + 1
        if i == 0 and not text.startswith(prefix):
            return None
        start = i + len(prefix)
        end = text.find("\n", start)
        return text[start:] if end < 0 else text[start:end]

    def config_value(self, name: str) -> Optional[str]:
        """The raw value of ``NAME=`` in the kernel config, or None."""
        return self._config_line(f"{name}=")

    def has_config(self) -> bool:
        return self.config.exists()

    def config_enabled(self, name: str) -> bool:
        """True if the config has ``NAME=y`` or ``NAME=m`` (upstream's ``grep ^NAME=[ym]``)."""
        return self._config_line(f"{name}=y") is not None or self._config_line(f"{name}=m") is not None

    def detect_compiler(self) -> Dict[str, str]:
        """Environment for the build: CC/KERNEL_CC/LD/KERNEL_LD (build-install.md §2.2)."""
        env: Dict[str, str] = {}
        cc_from_config = ""
        if self.has_config():
            text = self.config_value("CONFIG_CC_VERSION_TEXT") or ""
            m = re.match(r'^"*([^" ]*) ', text)
            if m and m.group(1) and runner.which(m.group(1)):
                cc_from_config = m.group(1)
        kvars = self.source_dir / ".kernelvariables"
        # .kernelvariables sets CC first, but a usable compiler named by the config overrides it:
        # only ask make when that is not the case.
        if not cc_from_config and kvars.is_file():
            makefile = f"show-%:\n\t@echo $($*)\ninclude {kvars}\n"
            proc = runner.run(["make", "-s", "-f", "-", "show-CC"], input=makefile.encode())
            cc = proc.stdout.decode(errors="replace").strip()
            if proc.returncode == 0 and cc:
                env["CC"] = cc
        if cc_from_config:
            env["CC"] = env["KERNEL_CC"] = cc_from_config
        if self.has_config():
            if self.config_value("CONFIG_CC_IS_CLANG") == "y" and runner.which("clang"):
                env["CC"] = env["KERNEL_CC"] = "clang"
            if self.config_value("CONFIG_LD_IS_LLD") == "y" and runner.which("ld.lld"):
                env["LD"] = env["KERNEL_LD"] = "ld.lld"
        return env

    def needs_llvm(self) -> bool:
        """Append ``LLVM=1`` to the make command (dkms-conf.md §7 step 4)."""
        vmlinux = self.source_dir / "vmlinux"
        if vmlinux.exists():
            proc = runner.run(["readelf", "-p", ".comment", str(vmlinux)])
            return b"clang" in proc.stdout
        return self.config_value("CONFIG_CC_IS_CLANG") == "y"


def installed_releases(install_tree: Path, report: Optional[Callable[[str], None]] = None) -> List[str]:
    """The kernel directories under the install tree, in version order (``--all-kernels``).

    A directory whose name cannot be a kernel version (``6.1.0;id``, ``..``) is skipped and
    reported through ``report``; hidden ones are skipped silently.
    """
    try:
        names = os.listdir(install_tree)
    except OSError:
        return []
    out: List[str] = []
    for name in names:
        if name.startswith(".") or not (install_tree / name).is_dir():
            continue
        problem = kernel_name_problem(name)
        if problem is not None:
            if report is not None:
                report(
                    f"{printable(str(install_tree / name))}: skipped, not a valid kernel version ({problem})."
                )
            continue
        out.append(name)
    return sorted(out, key=version_sort_key)


_suffix_cache: Dict[Tuple[str, str], str] = {}


def module_suffix(install_tree: Path, release: str, *, refresh: bool = False) -> str:
    """Compression suffix of kernel K from its installed modules (tree.md §6.3): '', .gz, .xz or .zst.

    Recomputed per kernel [fix D-19]; cached per process unless ``refresh``.
    """
    key = (str(install_tree), release)
    if not refresh and key in _suffix_cache:
        return _suffix_cache[key]
    found = set()
    for _dirpath, _dirnames, filenames in os.walk(install_tree / release):
        for name in filenames:
            for sfx in _COMPRESSED_SUFFIXES:
                if name.endswith(".ko" + sfx):
                    found.add(sfx)
        if ".zst" in found:
            break
    suffix = ""
    for sfx in _COMPRESSED_SUFFIXES:
        if sfx in found:
            suffix = sfx
    _suffix_cache[key] = suffix
    return suffix


def find_module_files(root: Path, name: str, suffix: str) -> Iterator[Path]:
    """Regular files ``name.ko`` / ``name.ko<suffix>`` under ``root``, in ``find`` order.

    Symlinks are neither returned nor followed; readdir order, pre-order, like ``find``.
    """
    wanted = {f"{name}.ko", f"{name}.ko{suffix}"} if suffix else {f"{name}.ko"}
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for e in entries:
        try:
            if e.name in wanted and e.is_file(follow_symlinks=False):
                yield Path(e.path)
            if e.is_dir(follow_symlinks=False):
                yield from find_module_files(Path(e.path), name, suffix)
        except OSError:
            continue


def built_module_files(module_dir: Path) -> List[Path]:
    """The module files (``.ko``, ``.ko.gz``, …) of a build, by name."""
    try:
        names = sorted(os.listdir(module_dir))
    except OSError:
        return []
    return [module_dir / n for n in names if n.endswith(MODULE_FILE_SUFFIXES)]


def compressed_or_uncompressed(directory: Path, name: str, suffix: str) -> Optional[Path]:
    """``dir/name.ko`` if it exists, else ``dir/name.ko<suffix>``, else None (upstream helper)."""
    plain = directory / f"{name}.ko"
    if os.path.lexists(plain):
        return plain
    if suffix:
        comp = directory / f"{name}.ko{suffix}"
        if os.path.lexists(comp):
            return comp
    return None


@dataclass(frozen=True)
class DepmodResult:
    returncode: int
    output: str


def depmod_plan(install_tree: Path, release: str) -> Union[List[str], str]:
    """The depmod command for K (tree.md §11), or the reason it is skipped [fix D-11]."""
    kdir = install_tree / release
    if not (kdir / "modules.dep").exists():
        return f"Skipping depmod because '{kdir}/modules.dep' is missing."
    tree = os.path.normpath(str(install_tree))
    base: Optional[str] = None
    if tree != "/lib/modules":
        for tail in ("/usr/lib/modules", "/lib/modules"):
            if tree.endswith(tail):
                base = tree[: -len(tail)] or "/"
                break
        if base is None:
            return (
                f"Skipping depmod: the install tree {install_tree} does not end in /lib/modules, "
                "so depmod cannot be pointed at it."
            )
    argv: List[str] = ["depmod"]
    if base is not None:
        argv += ["-b", base]
    argv += ["-a", release]
    system_map = Path(base or "/") / "boot" / f"System.map-{release}"
    if system_map.exists():
        argv += ["-F", str(system_map)]
    return argv


def depmod(install_tree: Path, release: str, argv: List[str]) -> DepmodResult:
    """Run ``argv`` (from :func:`depmod_plan`); then drop the empty output of a kernel whose last module went."""
    kdir = install_tree / release
    proc = runner.run(argv, stderr=subprocess.STDOUT)
    output = proc.stdout.decode(errors="replace")
    dep = kdir / "modules.dep"
    try:
        empty = dep.exists() and dep.stat().st_size == 0
    except OSError:
        empty = False
    if empty:
        for name in ("alias", "dep", "devname", "softdep", "symbols", "weakdep"):
            try:
                (kdir / f"modules.{name}").unlink()
            except OSError:
                pass
        for p in kdir.glob("modules.*.bin"):
            try:
                p.unlink()
            except OSError:
                pass
        try:
            kdir.rmdir()
        except OSError:
            pass
    return DepmodResult(proc.returncode, output)
