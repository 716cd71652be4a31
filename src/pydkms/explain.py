"""Why did a build fail? The diagnosis behind ``dkms explain``.

:func:`diagnose` reads what a failed or refused build left behind (its make.log, the dkms.conf
values that refused it, the kernel's headers and ``.config``) and names the most likely cause,
with the evidence and the command to run next. It only reads: it never changes the tree, the
headers or anything else.

The classifier is a table (:data:`RULES`): one row per cause, each with the patterns it looks
for, an extractor that checks the match against the real world (is that header in the kernel
headers? is that function declared only under a CONFIG option the kernel lacks?) and collects
the facts, a one-line summary template, advice, and the next command. Rows are tried in order:

1. refusals and missing inputs (BUILD_EXCLUSIVE, BUILD_DEPENDS, headers not installed, no make.log);
2. causes that explain a whole log wherever they appear (disk full, out of memory, a patch that
   does not apply, the compiler missing or not the kernel's, incomplete headers, a failing
   configure script);
3. causes read from the compiler's errors, the first real error first (a kernel option the module
   needs, a kernel API change, a missing userspace header);
4. weak evidence (a compiler-version warning, a nearly full disk), then ``unknown`` with the
   first error line.

``Diagnosis.as_json()`` gives the same as data. Its keys are stable:

``cause``
    one of :data:`CAUSES`.
``summary``
    one line: what went wrong, in words.
``advice``
    one sentence: what to do about it.
``next_command``
    a command line to run next, or ``""`` when there is none to suggest.
``module``, ``version``, ``kernel``, ``arch``
    what was being built.
``step``
    the build step that failed: ``prepare``, ``patch``, ``pre_build``, ``make``, ``post_build``,
    ``build_exclusive``, ``build_depends`` or ``""`` when unknown.
``exit_code``
    dkms' exit code for it, or null.
``make_log``
    the path of the make.log read, or null.
``evidence``
    a list of ``{"text", "make_log_line", "file", "line"}``: the log line (typographic quotes
    made plain: ``'`` and ``"``; ``make_log_line`` is
    its 1-based number in make.log, 0 for evidence that is not from the log) and the source
    file and line it names (``""``/0 when it names none). The first entry is the first real
    error, not the last line of make.
``details``
    cause-specific facts as strings, e.g. ``symbol`` (a CONFIG option), ``function``,
    ``header``, ``patch``, ``compiler``, ``kernel_version``, ``directive``, ``package``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from . import distro as _distro
from .errors import DkmsError

#: Every cause :func:`diagnose` can name.
CAUSES = (
    "headers-missing",
    "compiler-mismatch",
    "compiler-missing",
    "kernel-config-missing",
    "kernel-api-change",
    "userspace-dependency-missing",
    "build-exclusive",
    "build-depends-missing",
    "patch-failed",
    "out-of-disk",
    "out-of-memory",
    "no-log",
    "unknown",
)

#: With less free space than this (and no other cause found), the disk is the suspect.
LOW_DISK_BYTES = 1 << 20


@dataclass(frozen=True)
class FailureInputs:
    """What a failed or refused build leaves behind, as plain values.

    ``headers_dir`` defaults to ``/lib/modules/<kernel>/build`` and ``kernel_config`` to its
    ``.config``. ``exclusion`` holds the reasons dkms gave for a BUILD_EXCLUSIVE refusal and
    ``build_exclusive`` the directives that are set (name -> value). ``missing_depends`` maps each
    BUILD_DEPENDS module that is not installed to a version of it the tree knows (or ``""``).
    ``reference_headers`` are other kernels' headers, used to find which kernel module exports a
    symbol this kernel lacks. ``distro_family`` is the os-release family (``""``: read it).
    ``package`` names the distribution package that ships the module source, if known.
    """

    module: str
    version: str
    kernel: str
    arch: str = ""
    make_log: Optional[Path] = None
    headers_dir: Optional[Path] = None
    kernel_config: Optional[Path] = None
    step: str = ""
    exit_code: Optional[int] = None
    build_exclusive: Mapping[str, str] = field(default_factory=dict)
    exclusion: Tuple[str, ...] = ()
    build_depends: Tuple[str, ...] = ()
    missing_depends: Mapping[str, str] = field(default_factory=dict)
    patches: Tuple[str, ...] = ()
    free_disk_bytes: Optional[int] = None
    reference_headers: Tuple[Path, ...] = ()
    distro_family: str = ""
    package: str = ""


@dataclass(frozen=True)
class Evidence:
    """One line that supports a diagnosis: its text, where it is in make.log, what it points at."""

    text: str
    make_log_line: int = 0
    file: str = ""
    line: int = 0

    def as_json(self) -> Dict[str, object]:
        """The evidence as data (keys: text, make_log_line, file, line)."""
        return {"text": self.text, "make_log_line": self.make_log_line, "file": self.file, "line": self.line}


@dataclass(frozen=True)
class Diagnosis:
    """The most likely cause of a failed build, why we think so, and what to do."""

    cause: str
    summary: str
    advice: str
    next_command: str
    module: str
    version: str
    kernel: str
    arch: str
    step: str
    exit_code: Optional[int]
    make_log: Optional[Path]
    evidence: Tuple[Evidence, ...] = ()
    details: Mapping[str, str] = field(default_factory=dict)

    def as_json(self) -> Dict[str, object]:
        """The diagnosis as data; the keys are documented in this module's docstring."""
        return {
            "cause": self.cause,
            "summary": self.summary,
            "advice": self.advice,
            "next_command": self.next_command,
            "module": self.module,
            "version": self.version,
            "kernel": self.kernel,
            "arch": self.arch,
            "step": self.step,
            "exit_code": self.exit_code,
            "make_log": str(self.make_log) if self.make_log is not None else None,
            "evidence": [e.as_json() for e in self.evidence],
            "details": dict(sorted(self.details.items())),
        }


# --------------------------------------------------------------------------------------------
# make.log


@dataclass(frozen=True)
class _Block:
    """One step of a pydkms make.log: description, command, output and exit code."""

    description: str
    command: str
    start: int  # index into the log's lines of the first output line
    end: int  # index after the last output line
    exit_code: Optional[int]  # None: the step never finished (or an upstream log without blocks)


_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_EXIT_CODE = re.compile(r"^# exit code: (-?\d+)$")
_LOG_HEADER = re.compile(r"make\.log for (?P<m>\S+?)/(?P<v>\S+) for kernel (?P<k>\S+) \((?P<a>[^)]*)\)")


def _read_log(path: Path) -> List[str]:
    with open(path, "rb") as fh:
        data = fh.read()
    return data.decode("utf-8", errors="replace").translate(_QUOTES).splitlines()


def _blocks(lines: Sequence[str]) -> List[_Block]:
    """The steps recorded in a pydkms make.log; one block for a log without them."""
    blocks: List[_Block] = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("# command: "):
            description = lines[i - 1].strip() if i > 0 else ""
            start = i + 1
            j = start
            code: Optional[int] = None
            while j < len(lines):
                m = _EXIT_CODE.match(lines[j])
                if m:
                    code = int(m.group(1))
                    break
                if lines[j].startswith("# command: "):
                    break
                j += 1
            blocks.append(_Block(description, lines[i][len("# command: ") :], start, j, code))
            i = j + 1
            continue
        i += 1
    if not blocks:
        if lines and lines[0].startswith("DKMS ("):
            # pydkms' own log without a step: nothing ran yet (only its two header lines)
            blocks.append(_Block("", "", len(lines), len(lines), None))
        else:
            # upstream's log: the header and date, then the output of every step
            start = 2 if lines and lines[0].startswith("DKMS") else 0
            blocks.append(_Block("", "", min(start, len(lines)), len(lines), None))
    return blocks


def _step_of(description: str) -> Tuple[str, str]:
    """(step, patch name) for a block description."""
    if description.startswith("Applying patch "):
        return "patch", description[len("Applying patch ") :].strip()
    for step in ("pre_build", "post_build"):
        if step in description:
            return step, ""
    if description.startswith("Building module"):
        return "make", ""
    if description.startswith("Cleaning"):
        return "clean", ""
    return "", ""


# --------------------------------------------------------------------------------------------
# compiler, linker and modpost errors

_COMPILER_MSG = re.compile(
    r"^(?P<file>[^\s:][^:]*):(?P<line>\d+):(?:(?P<col>\d+):)? (?P<kind>fatal error|error|warning|note): (?P<msg>.*)$"
)
_DRIVER_ERROR = re.compile(r"^(?P<prog>[\w.+/-]+): (?P<kind>fatal error|error): (?P<msg>.*)$")
_OTHER_ERROR = re.compile(
    r"^(?:ERROR: modpost: .*|(?:\S*/)?ld(?:\.\w+)?: (?:error|cannot find|.*undefined).*|.*: undefined reference to .*|"
    r"make(?:\[\d+\])?: \*\*\* No rule to make target .*|configure: error: .*|Error: .*)$"
)


@dataclass(frozen=True)
class _Error:
    """A real error line (not make's 'Error 1' recipe lines) with what it points at."""

    index: int  # into the log's lines
    number: int
    text: str
    file: str
    line: int
    msg: str


def _errors(lines: Sequence[str], start: int, end: int) -> List[_Error]:
    found: List[_Error] = []
    for i in range(start, end):
        text = lines[i].rstrip()
        m = _COMPILER_MSG.match(text)
        if m:
            if m.group("kind") in ("error", "fatal error"):
                found.append(_Error(i, i + 1, text, m.group("file"), int(m.group("line")), m.group("msg")))
            continue
        m = _DRIVER_ERROR.match(text)
        if m and not text.startswith("make"):
            found.append(_Error(i, i + 1, text, "", 0, m.group("msg")))
            continue
        if _OTHER_ERROR.match(text):
            found.append(_Error(i, i + 1, text, "", 0, text))
    return found


# --------------------------------------------------------------------------------------------
# the kernel: headers, configuration, exported symbols

_ARCH_DIRS = (
    (("x86_64", "i386", "i486", "i586", "i686", "x86"), "x86"),
    (("aarch64", "arm64"), "arm64"),
    (("ppc64", "ppc64le", "powerpc"), "powerpc"),
    (("s390x", "s390"), "s390"),
    (("riscv64", "riscv"), "riscv"),
    (("loongarch64", "loongarch"), "loongarch"),
)

#: first path components of headers the kernel provides (a missing one is the kernel's business)
_KERNEL_HEADER_DIRS = frozenset(
    [
        "linux",
        "asm",
        "asm-generic",
        "uapi",
        "net",
        "drm",
        "media",
        "sound",
        "scsi",
        "crypto",
        "keys",
        "trace",
        "video",
        "xen",
        "acpi",
        "clocksource",
        "dt-bindings",
        "kvm",
        "misc",
        "pcmcia",
        "ras",
        "rdma",
        "soc",
        "target",
        "vdso",
        "math-emu",
        "memory",
        "kunit",
    ]
)


def _arch_dir(arch: str) -> str:
    for names, d in _ARCH_DIRS:
        if arch in names or arch.startswith(names):
            return d
    if arch.startswith("arm"):
        return "arm"
    if arch.startswith("mips"):
        return "mips"
    return arch


def _config_values(path: Optional[Path]) -> Optional[Dict[str, str]]:
    """NAME -> value of a kernel .config (``n`` for 'is not set'); None when it cannot be read."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    values: Dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_"):
            name, _, value = line.partition("=")
            values[name] = value.strip('"')
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            values[line[2:-11]] = "n"
    return values


def _enabled(config: Mapping[str, str], name: str) -> bool:
    if name.endswith("_MODULE") and name not in config:
        name = name[: -len("_MODULE")]
    return config.get(name, "n") in ("y", "m")


_COND_CONFIG = re.compile(
    r"(!?)\s*(?:(?:IS_ENABLED|IS_BUILTIN|IS_MODULE|IS_REACHABLE|defined)\s*\(\s*)?(CONFIG_\w+)"
)


@dataclass(frozen=True)
class _Site:
    """Where a name is declared in the kernel headers, and the CONFIG options that branch needs."""

    path: Path
    line: int
    requires: Tuple[str, ...]


class _Headers:
    """The kernel headers of one kernel: include directories, declarations, exports."""

    def __init__(self, build_dir: Path, arch: str) -> None:
        self.build_dir = build_dir
        self.roots = self._roots(build_dir)
        ad = _arch_dir(arch)
        dirs: List[Path] = []
        for root in self.roots:
            for rel in (
                f"arch/{ad}/include/generated/uapi",
                f"arch/{ad}/include/generated",
                f"arch/{ad}/include/uapi",
                f"arch/{ad}/include",
                "include/generated/uapi",
                "include/generated",
                "include/uapi",
                "include",
            ):
                d = root / rel
                if d.is_dir() and d not in dirs:
                    dirs.append(d)
        self.include_dirs = tuple(dirs)
        self.arch_dir = ad
        self._files: Optional[List[Path]] = None
        self._declared: Dict[Tuple[str, str], List[_Site]] = {}
        self._symvers: Optional[Dict[str, str]] = None

    @staticmethod
    def _roots(build_dir: Path) -> Tuple[Path, ...]:
        """The build directory and the source directory its Makefile includes (Debian's -common)."""
        roots = [build_dir]
        try:
            text = (build_dir / "Makefile").read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        for m in re.finditer(r"^\s*include\s+(\S+)/Makefile\s*$", text, re.M):
            roots.append(Path(m.group(1)))
        source = build_dir.parent / "source"
        if source.is_dir():
            roots.append(source)
        unique: List[Path] = []
        seen = set()
        for r in roots:
            key = os.path.realpath(r)
            if key not in seen and r.is_dir():
                seen.add(key)
                unique.append(r)
        return tuple(unique)

    def is_kernel_path(self, path: str) -> bool:
        """Whether a path printed in the log lies in these headers."""
        real = os.path.realpath(path) if os.path.isabs(path) else path
        for root in self.roots:
            r = os.path.realpath(root)
            if real.startswith(r + os.sep) or path.startswith(str(root) + os.sep):
                return True
        return False

    def relative(self, path: str) -> str:
        """A header path relative to its headers root (``include/linux/bio.h``)."""
        for root in self.roots:
            for base in (str(root), os.path.realpath(root)):
                if path.startswith(base + os.sep):
                    return path[len(base) + 1 :]
        return path

    def find_header(self, name: str) -> Optional[Path]:
        """The file an ``#include <name>`` would find in these headers."""
        for d in self.include_dirs:
            p = d / name
            if p.is_file():
                return p
        return None

    def has_header_dir(self, name: str) -> bool:
        first = name.split("/", 1)[0]
        return "/" in name and any((d / first).is_dir() for d in self.include_dirs)

    def _all_files(self) -> List[Path]:
        """Every header once: the include trees of each root (the include dirs overlap)."""
        if self._files is None:
            files: List[Path] = []
            seen = set()
            for root in self.roots:
                for sub in ("include", f"arch/{self.arch_dir}/include"):
                    top = root / sub
                    key = os.path.realpath(top)
                    if key in seen or not top.is_dir():
                        continue
                    seen.add(key)
                    for dirpath, _dirnames, filenames in os.walk(top):
                        files.extend(Path(dirpath) / f for f in filenames if f.endswith(".h"))
            self._files = files
        return self._files

    def _text(self, path: Path) -> bytes:
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except OSError:
            return b""

    def declarations(self, name: str, kind: str) -> List[_Site]:
        """Where ``name`` is declared: kind ``function``, ``struct`` or ``identifier``."""
        cached = self._declared.get((name, kind))
        if cached is None:
            cached = self._declared[(name, kind)] = self._find(name, kind)
        return cached

    def _find(self, name: str, kind: str) -> List[_Site]:
        word = re.escape(name)
        if kind == "function":
            pattern = re.compile(
                rf"^[ \t]*(?:#[ \t]*define[ \t]+{word}[ \t]*\(|[A-Za-z_][\w \t\*]*[ \t\*]{word}[ \t]*\()",
                re.M,
            )
        elif kind == "struct":
            pattern = re.compile(
                rf"^[ \t]*(?:typedef[ \t]+)?(?:struct|union|enum)[ \t]+{word}[ \t]*\{{", re.M
            )
        else:
            pattern = re.compile(
                rf"^[ \t]*(?:#[ \t]*define[ \t]+{word}\b|{word}[ \t]*(?:=[^=]|,|$)|typedef\b.*\b{word}[ \t]*;)",
                re.M,
            )
        needle = name.encode()
        sites: List[_Site] = []
        for path in self._all_files():
            data = self._text(path)
            if needle not in data:
                continue
            text = data.decode("utf-8", errors="replace")
            for m in pattern.finditer(text):
                head = m.group(0).lstrip()
                if kind == "function" and head.startswith(("return", "if", "while", "else")):
                    continue
                line = text.count("\n", 0, m.start()) + 1
                sites.append(_Site(path, line, _guards(text, line)))
        return sites

    def symvers(self) -> Dict[str, str]:
        """Exported symbol -> the kernel module that exports it (``vmlinux`` for the core)."""
        if self._symvers is None:
            table: Dict[str, str] = {}
            try:
                text = (self.build_dir / "Module.symvers").read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = ""
            for line in text.splitlines():
                parts = line.split("\t")
                if len(parts) >= 3:
                    table[parts[1]] = parts[2]
            self._symvers = table
        return self._symvers


def _guards(text: str, line: int) -> Tuple[str, ...]:
    """The CONFIG options the preprocessor branch around ``line`` requires to be enabled."""
    stack: List[Tuple[str, bool]] = []  # (condition, in the #else part)
    for n, raw in enumerate(text.splitlines(), 1):
        if n >= line:
            break
        s = raw.strip()
        if not s.startswith("#"):
            continue
        directive = s[1:].lstrip()
        word = directive.split(None, 1)[0] if directive else ""
        rest = directive[len(word) :].strip()
        if word in ("if", "ifdef", "ifndef"):
            cond = {"ifdef": rest, "ifndef": "!" + rest}.get(word, rest)
            stack.append((cond, False))
        elif word == "elif" and stack:
            stack[-1] = (rest, False)
        elif word == "else" and stack:
            stack[-1] = (stack[-1][0], True)
        elif word == "endif" and stack:
            stack.pop()
    required: List[str] = []
    for cond, in_else in stack:
        for m in _COND_CONFIG.finditer(cond):
            negated = m.group(1) == "!"
            if negated == in_else and m.group(2) not in required:
                required.append(m.group(2))
    return tuple(required)


def _kernel_version(headers: Optional[_Headers], release: str) -> str:
    """The Linux version of the headers (6.1.192), from kernel.release or the Makefile."""
    if headers is not None:
        try:
            text = (headers.build_dir / "include" / "config" / "kernel.release").read_text().strip()
            if text:
                return text
        except OSError:
            pass
        for root in headers.roots:
            try:
                mk = (root / "Makefile").read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            parts = [re.search(rf"^{k}\s*=\s*(\d+)", mk, re.M) for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL")]
            if all(parts):
                return ".".join(p.group(1) for p in parts if p)
    m = re.match(r"\d+\.\d+(?:\.\d+)?", release)
    return m.group(0) if m else release


# --------------------------------------------------------------------------------------------
# distribution packages


def _family(inputs: FailureInputs) -> _distro.Distro:
    if inputs.distro_family:
        return _distro.Distro(inputs.distro_family)
    try:
        return _distro.detect()
    except DkmsError:
        return _distro.Distro("")


@dataclass(frozen=True)
class _Packaging:
    """How one distribution family installs packages and finds which package ships a file."""

    families: Tuple[str, ...]
    install: str  # "{}" is the package
    file_search: str  # "{}" is the file name; "" when the family has no such command
    headers: Callable[[str], str]  # kernel release -> the package of its headers


def _arch_headers(kernel: str) -> str:
    for variant in ("lts", "zen", "hardened", "rt"):
        if kernel.endswith(f"-{variant}"):
            return f"linux-{variant}-headers"
    return "linux-headers"


def _suse_headers(kernel: str) -> str:
    version, _, flavour = kernel.rpartition("-")
    return f"kernel-{flavour}-devel-{version}" if version else "kernel-default-devel"


_PACKAGING = (
    _Packaging(
        ("debian*", "ubuntu*"), "apt-get install {}", "apt-file search /{}", lambda k: f"linux-headers-{k}"
    ),
    _Packaging(
        ("fedora*", "rhel*", "centos*", "*fedora*", "ovm*", "amzn*", "mageia*"),
        "dnf install {}",
        "dnf provides '*/{}'",
        lambda k: f"kernel-devel-{k}",
    ),
    _Packaging(("sles*", "suse*", "opensuse*"), "zypper install {}", "", _suse_headers),
    _Packaging(("arch*",), "pacman -S {}", "pacman -F {}", _arch_headers),
    _Packaging(("alpine*",), "apk add {}", "", lambda k: f"linux-{k.rpartition('-')[2] or 'lts'}-dev"),
)


def _packaging(family: _distro.Distro) -> Optional[_Packaging]:
    for row in _PACKAGING:
        if family.matches(*row.families):
            return row
    return None


def headers_package_command(family: _distro.Distro, kernel: str) -> str:
    """The command that installs the headers of ``kernel`` on this distribution family ("" if unknown)."""
    row = _packaging(family)
    return row.install.format(row.headers(kernel)) if row else ""


def _install_command(family: _distro.Distro, package: str) -> str:
    row = _packaging(family)
    return row.install.format(package) if row else ""


def _file_search_command(family: _distro.Distro, name: str) -> str:
    """The command that finds which package ships a file (a header, a program)."""
    row = _packaging(family)
    return row.file_search.format(name) if row and row.file_search else ""


def _compiler_package(family: _distro.Distro, compiler: str) -> str:
    """The package of a compiler: gcc-12 on Debian and Ubuntu (also for x86_64-linux-gnu-gcc-12), gcc elsewhere."""
    compiler = re.sub(r"^\w+-linux-gnu\w*-", "", compiler)
    if family.matches("debian*", "ubuntu*"):
        return compiler
    return re.sub(r"-\d+(\.\d+)*$", "", compiler)


def _compiler_from_version_text(text: str) -> str:
    """``gcc-12 (Debian 12.2.0-14) 12.2.0`` -> gcc-12; ``Debian clang version 14.0.6`` -> clang-14."""
    m = re.search(r"clang version (\d+)", text)
    if m:
        return f"clang-{m.group(1)}"
    first = text.split(" ", 1)[0].strip('"')
    if first.startswith(("gcc", "cc", "x86_64-linux-gnu-gcc")):
        return first
    m = re.search(r"\b(\d+)\.\d+\.\d+\s*$", text)
    return f"gcc-{m.group(1)}" if m and "gcc" in text.lower() else first


_COMPILER_NAMES = re.compile(
    r"^(?:[\w.-]+-)?(?:gcc|g\+\+|cc|c\+\+|clang|ld|ld\.lld|ld\.bfd|as|cc1)(?:-[\d.]+)?$"
)


# --------------------------------------------------------------------------------------------
# the classifier


@dataclass
class _Context:
    """Everything the rules look at; the expensive parts (headers, config) are read lazily."""

    inputs: FailureInputs
    lines: List[str]
    log_problem: str  # "" or why the make.log cannot be used
    block: _Block
    step: str
    patch: str
    errors: List[_Error]
    _headers: Optional[_Headers] = None
    _config: Optional[Dict[str, str]] = None
    _config_read: bool = False
    _family: Optional[_distro.Distro] = None
    _references: Optional[List[Tuple[_Headers, Optional[Dict[str, str]]]]] = None

    @property
    def headers_dir(self) -> Path:
        return self.inputs.headers_dir or Path("/lib/modules") / self.inputs.kernel / "build"

    @property
    def headers(self) -> _Headers:
        if self._headers is None:
            self._headers = _Headers(self.headers_dir, self.inputs.arch or os.uname().machine)
        return self._headers

    @property
    def config(self) -> Optional[Dict[str, str]]:
        if not self._config_read:
            self._config = _config_values(self.inputs.kernel_config or self.headers_dir / ".config")
            self._config_read = True
        return self._config

    @property
    def family(self) -> _distro.Distro:
        if self._family is None:
            self._family = _family(self.inputs)
        return self._family

    @property
    def references(self) -> List[Tuple[_Headers, Optional[Dict[str, str]]]]:
        if self._references is None:
            arch = self.inputs.arch or os.uname().machine
            self._references = [
                (_Headers(d, arch), _config_values(d / ".config"))
                for d in self.inputs.reference_headers
                if os.path.realpath(d) != os.path.realpath(self.headers_dir)
            ]
        return self._references

    def output(self) -> Iterator[Tuple[int, str]]:
        """(index, line) of the failed step's output (nothing when the log cannot be used)."""
        if self.log_problem:
            return
        for i in range(self.block.start, min(self.block.end, len(self.lines))):
            yield i, self.lines[i]

    def evidence_at(self, index: int) -> Evidence:
        text = self.lines[index].rstrip()
        m = _COMPILER_MSG.match(text)
        if m:
            return Evidence(text, index + 1, m.group("file"), int(m.group("line")))
        return Evidence(text, index + 1)

    def disabled(self, names: Sequence[str]) -> List[str]:
        """The names the kernel config does not enable (none when the config cannot be read)."""
        config = self.config
        if config is None:
            return []
        return [n for n in names if not _enabled(config, n)]

    def notes_after(self, index: int, limit: int = 40) -> Iterator[Tuple[int, re.Match[str]]]:
        """Compiler notes that follow an error, up to the next error."""
        for i in range(index + 1, min(index + 1 + limit, len(self.lines))):
            m = _COMPILER_MSG.match(self.lines[i].rstrip())
            if m and m.group("kind") in ("error", "fatal error"):
                return
            if m and m.group("kind") == "note":
                yield i, m


Facts = Dict[str, str]


@dataclass(frozen=True)
class Found:
    """What an extractor found: the facts for the templates, and the evidence.

    ``lines`` are indices into make.log (the first is the main evidence); ``extra`` is evidence
    from elsewhere (the dkms.conf refusal, a declaration in the kernel headers).
    """

    facts: Facts
    lines: Tuple[int, ...] = ()
    extra: Tuple[Evidence, ...] = ()


#: An extractor gets the context and a hit (index into the log, or -1, and the regex match) and
#: returns what it found, or None when the hit does not fit its cause.
Extractor = Callable[[_Context, int, Optional["re.Match[str]"]], Optional[Found]]


@dataclass(frozen=True)
class Rule:
    """One row of the classifier: a cause, where it looks, what it looks for and what it says.

    ``scope`` is ``inputs`` (no patterns: the inputs alone), ``log`` (any line of the failed
    step) or ``error`` (each real error, the first one first). ``summary`` and ``advice`` are
    templates filled with the facts; ``next_command`` builds the command from them.
    """

    cause: str
    scope: str
    patterns: Tuple[re.Pattern[str], ...]
    extract: Extractor
    summary: str
    advice: str
    next_command: Callable[[_Context, Facts], str]


def _p(*patterns: str) -> Tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p) for p in patterns)


def _no_command(_ctx: _Context, _facts: Facts) -> str:
    return ""


# ---- refusals and missing inputs


def _x_build_exclusive(ctx: _Context, _i: int, _m: Optional[re.Match[str]]) -> Optional[Found]:
    inp = ctx.inputs
    if not (inp.exclusion or inp.step == "build_exclusive" or inp.exit_code == 77):
        return None
    reasons = list(inp.exclusion)
    directives = dict(inp.build_exclusive)
    if not reasons:
        value = directives.get("BUILD_EXCLUSIVE_CONFIG", "")
        for token in value.split():
            name = token.lstrip("!")
            on = ctx.config is not None and _enabled(ctx.config, name)
            if token.startswith("!") and on:
                reasons.append(f"the kernel config has {name}")
            elif not token.startswith("!") and not on:
                reasons.append(f"the kernel config lacks {name}")
    directive = ""
    for reason in reasons:
        m = re.search(r"\b(BUILD_EXCLUSIVE_\w+|OBSOLETE_BY|build_exclude)\b", reason)
        directive = m.group(1) if m else "BUILD_EXCLUSIVE_CONFIG" if "kernel config" in reason else ""
        if directive:
            break
    if not directive and directives:
        directive = sorted(directives)[0]
    value = directives.get(directive, "")
    said = f'{directive}="{value}"' if directive and value else directive or "a BUILD_EXCLUSIVE directive"
    why = "; ".join(reasons) or "it does not match this kernel"
    facts = {"directive": directive, "value": value, "said": said, "why": why}
    return Found(facts, extra=tuple(Evidence(r) for r in reasons))


def _x_build_depends(ctx: _Context, _i: int, _m: Optional[re.Match[str]]) -> Optional[Found]:
    inp = ctx.inputs
    if not (inp.missing_depends or inp.step == "build_depends" or inp.exit_code == 13):
        return None
    missing = list(inp.missing_depends) or list(inp.build_depends)
    return Found(
        {
            "depends": " ".join(missing),
            "first": missing[0] if missing else "",
            "first_version": inp.missing_depends.get(missing[0], "") if missing else "",
        }
    )


def _next_build_depends(ctx: _Context, facts: Facts) -> str:
    first, version = facts["first"], facts["first_version"]
    return f"dkms install {first}/{version} -k {ctx.inputs.kernel}" if first and version else ""


def _headers_problem(ctx: _Context) -> str:
    d = ctx.headers_dir
    if not d.exists():
        return f"{d} does not exist"
    if not (d / "include").is_dir():
        return f"{d} has no include/ directory"
    if not (d / "Makefile").exists():
        return f"{d} has no Makefile"
    for rel in ("include/generated/autoconf.h", "include/config/auto.conf"):
        if not (d / rel).exists():
            return f"{d} has no {rel}"
    return ""


_HEADERS_LOG = _p(
    r"No rule to make target '(?:modules|modules_prepare)'",
    r"No targets specified and no makefile found",
    r"Kernel configuration is invalid",
    r"include/generated/autoconf\.h or include/config/auto\.conf are missing",
    r"^make(?:\[\d+\])?: \*\*\* (?P<path>/\S+): No such file or directory",
)


def _x_headers_dir(ctx: _Context, _i: int, _m: Optional[re.Match[str]]) -> Optional[Found]:
    problem = _headers_problem(ctx)
    if not problem:
        return None
    evidence = [i for i, text in ctx.output() if any(p.search(text) for p in _HEADERS_LOG)][:1]
    return Found({"problem": problem, "headers_dir": str(ctx.headers_dir)}, (*evidence,))


def _next_headers(ctx: _Context, _facts: Facts) -> str:
    return headers_package_command(ctx.family, ctx.inputs.kernel)


def _x_no_log(ctx: _Context, _i: int, _m: Optional[re.Match[str]]) -> Optional[Found]:
    if not ctx.log_problem:
        return None
    return Found({"problem": ctx.log_problem})


def _next_no_log(ctx: _Context, _facts: Facts) -> str:
    inp = ctx.inputs
    return f"dkms build {inp.module}/{inp.version} -k {inp.kernel}" + (f" -a {inp.arch}" if inp.arch else "")


# ---- whole-log causes


def _x_first_hit(ctx: _Context, i: int, m: Optional[re.Match[str]]) -> Optional[Found]:
    return Found({"line": ctx.lines[i].strip()}, (i,)) if i >= 0 else None


def _x_out_of_disk(ctx: _Context, i: int, m: Optional[re.Match[str]]) -> Optional[Found]:
    text = ctx.lines[i]
    paths = re.findall(r"(/[^\s:'\"]+)", text)
    where = (
        os.path.dirname(paths[-1])
        if paths
        else str(ctx.inputs.make_log.parent if ctx.inputs.make_log else "")
    )
    free = ctx.inputs.free_disk_bytes
    return Found(
        {
            "where": where,
            "free": f" ({free // (1 << 20)} MiB free now)" if free is not None else "",
            "line": text.strip(),
        },
        (i,),
    )


def _next_df(_ctx: _Context, facts: Facts) -> str:
    return f"df -h {facts['where']}" if facts.get("where") else "df -h"


def _next_fewer_jobs(ctx: _Context, _facts: Facts) -> str:
    inp = ctx.inputs
    return f"dkms build {inp.module}/{inp.version} -k {inp.kernel} -j 1"


def _x_patch(ctx: _Context, i: int, m: Optional[re.Match[str]]) -> Optional[Found]:
    """A patch that does not apply (also one that a pre_build script applies: then it has no name)."""
    patch = ctx.patch
    shown = f"Patch {patch}" if patch else "A patch"
    if i < 0:
        if ctx.step != "patch":
            return None
        lines = [j for j, text in ctx.output() if text.strip()]
        if not lines:
            return Found({"patch": patch, "patch_shown": shown, "line": "the patch step failed"})
        i = lines[-1]
    return Found({"patch": patch, "patch_shown": shown, "line": ctx.lines[i].strip()}, (i,))


def _x_patch_missing(ctx: _Context, _i: int, _m: Optional[re.Match[str]]) -> Optional[Found]:
    """A PATCH[] entry whose file is not in the source's patches/ directory (dkms exits 5)."""
    inp = ctx.inputs
    if not (ctx.step == "patch" or inp.exit_code == 5) or inp.make_log is None or not inp.patches:
        return None
    patches = inp.make_log.parent / "patches"
    for patch in inp.patches:
        if not (patches / patch).is_file():
            return Found({"patch": patch, "where": str(patches)})
    return None


def _next_patch(ctx: _Context, facts: Facts) -> str:
    if not ctx.inputs.make_log or not facts["patch"]:
        return ""
    return f"cd {ctx.inputs.make_log.parent} && patch -p1 --dry-run < ./patches/{facts['patch']}"


def _x_compiler_missing(ctx: _Context, i: int, m: Optional[re.Match[str]]) -> Optional[Found]:
    assert m is not None
    prog = m.group("prog")
    if not _COMPILER_NAMES.match(os.path.basename(prog)):
        return None
    config = ctx.config or {}
    built_by = config.get("CONFIG_CC_VERSION_TEXT", "")
    compiler = os.path.basename(prog)
    if compiler in ("cc1", "collect2", "cc1plus"):  # the compiler driver is there, its parts are not
        compiler = _compiler_from_version_text(built_by) if built_by else "gcc"
    return Found(
        {
            "compiler": compiler,
            "package": _BINUTILS.get(compiler, ""),
            "built_by": built_by,
            "built_by_note": f" (the kernel was built by {built_by})" if built_by else "",
            "line": ctx.lines[i].strip(),
        },
        (i,),
    )


#: tools of the build that are not compilers, and the package that has them
_BINUTILS = {"as": "binutils", "ld": "binutils", "ld.bfd": "binutils", "ld.lld": "lld"}


def _next_compiler(ctx: _Context, facts: Facts) -> str:
    package = facts.get("package") or _compiler_package(ctx.family, facts["compiler"])
    return _install_command(ctx.family, package)


def _x_compiler_mismatch(ctx: _Context, i: int, m: Optional[re.Match[str]]) -> Optional[Found]:
    assert m is not None
    config = ctx.config or {}
    built_by = config.get("CONFIG_CC_VERSION_TEXT", "")
    using = ""
    for _j, text in ctx.output():
        if "The kernel was built by:" in text:
            built_by = text.split(":", 1)[1].strip() or built_by
        elif "You are using:" in text:
            using = text.split(":", 1)[1].strip()
    prog = m.groupdict().get("prog") or ""
    if not using:
        using = os.path.basename(prog) if prog else "another compiler"
    if not built_by:
        return None
    wanted = _compiler_from_version_text(built_by)
    used = _compiler_from_version_text(using) if " " in using else using
    if wanted == used and "differs" not in m.group(0):
        return None
    return Found(
        {
            "built_by": built_by,
            "using": using,
            "compiler": wanted,
            "line": ctx.lines[i].strip(),
        },
        (i,),
    )


def _x_headers_log(ctx: _Context, i: int, m: Optional[re.Match[str]]) -> Optional[Found]:
    return Found(
        {
            "problem": ctx.lines[i].strip(),
            "headers_dir": str(ctx.headers_dir),
        },
        (i,),
    )


#: lines before a configure script's error that name what it did not find
_CONFIGURE_MISSING = (
    re.compile(r"^checking (?:for |whether )?(?P<name>\S+?)(?:\s.*)?\.\.\. no$"),
    re.compile(r"\bno (?P<program>[\w.+-]+) (?:binary|program) found"),
    re.compile(r"\bno (?P<name>[\w.+-]+) (?:library|headers?) found"),
    re.compile(r"\b(?:can ?not|cannot|could not|couldn't) find (?P<name>[\w./+-]+)", re.I),
    re.compile(r"^(?:.*: )?(?P<program>[\w.+-]+): (?:command )?not found$"),
)


def _x_configure(ctx: _Context, i: int, m: Optional[re.Match[str]]) -> Optional[Found]:
    """A configure script that fails: its error line, and what it last looked for in vain."""
    assert m is not None
    if not m.group(0).startswith("configure: ") and "configure" not in ctx.block.command:
        return None
    evidence = [i]
    name = ""
    h = re.search(r"([\w./+-]+\.h)\b", m.group("msg"))
    if h:
        name = h.group(1)
    for j in [*range(i - 1, max(ctx.block.start, i - 10) - 1, -1), i]:
        if name:
            break
        for pattern in _CONFIGURE_MISSING:
            c = pattern.search(ctx.lines[j].strip())
            if c:
                program = c.groupdict().get("program")
                name = f"bin/{program}" if program else c.group("name")
                if j != i:
                    evidence.append(j)
                break
    return Found(
        {
            "msg": m.group("msg").strip(),
            "name": name,
            "what": name.replace("bin/", "the program ", 1)
            if name
            else "what the configure script looks for",
        },
        (*evidence,),
    )


def _x_userspace_library(ctx: _Context, i: int, m: Optional[re.Match[str]]) -> Optional[Found]:
    assert m is not None
    lib, pkg = m.groupdict().get("lib"), m.groupdict().get("pkg")
    if lib:
        return Found({"what": f"the library -l{lib}", "name": f"lib{lib}.so"}, (i,))
    return Found({"what": f"the pkg-config package {pkg}", "name": f"{pkg}.pc"}, (i,))


def _next_file_search(ctx: _Context, facts: Facts) -> str:
    name = facts.get("name", "")
    return _file_search_command(ctx.family, name) if name else ""


def _x_tool_missing(ctx: _Context, i: int, m: Optional[re.Match[str]]) -> Optional[Found]:
    assert m is not None
    prog = os.path.basename(m.group("prog"))
    if _COMPILER_NAMES.match(prog) or prog in ("bash", "sh"):
        return None
    return Found({"what": f"the program {prog}", "name": f"bin/{prog}"}, (i,))


# ---- causes read from the errors


def _x_config_error(ctx: _Context, i: int, m: Optional[re.Match[str]]) -> Optional[Found]:
    """``#error`` naming a CONFIG option the kernel lacks."""
    assert m is not None
    names = re.findall(r"CONFIG_\w+", m.group(0))
    off = ctx.disabled(names)
    if not off:
        return None
    return _config_found({"symbol": off[0], "why": f"its source says: {m.group('msg').strip()}"}, (i,))


def _config_found(facts: Facts, lines: Tuple[int, ...], extra: Tuple[Evidence, ...] = ()) -> Found:
    """The facts of a missing kernel option, with the wording for when it could not be named."""
    option = facts["symbol"]
    facts["option_shown"] = option or "an option"
    facts["exclusive_hint"] = (
        f', or add BUILD_EXCLUSIVE_CONFIG="{option}" to the module\'s dkms.conf so that dkms skips such kernels'
        if option
        else ""
    )
    return Found(facts, lines, extra)


def _guarded_site(ctx: _Context, name: str, kind: str) -> Optional[Tuple[_Site, str]]:
    """(site, option) when every declaration of ``name`` is under an option the kernel lacks."""
    if ctx.config is None:
        return None
    sites = ctx.headers.declarations(name, kind)
    if not sites:
        return None
    found: Optional[Tuple[_Site, str]] = None
    for site in sites:
        off = ctx.disabled(site.requires)
        if not off:
            return None
        if found is None:
            found = (site, off[0])
    return found


def _x_config_declaration(ctx: _Context, i: int, m: Optional[re.Match[str]]) -> Optional[Found]:
    """An implicit declaration, unknown type or undeclared name that the headers have under an option."""
    assert m is not None
    groups = m.groupdict()
    name = groups.get("function") or groups.get("struct") or groups.get("name") or ""
    if not name:
        return None
    kind = "function" if groups.get("function") else "struct" if groups.get("struct") else "identifier"
    hit = _guarded_site(ctx, name, kind)
    if hit is None:
        return None
    site, option = hit
    shown = f"{name}()" if kind == "function" else f"struct {name}" if kind == "struct" else name
    rel = ctx.headers.relative(str(site.path))
    return _config_found(
        {
            "symbol": option,
            "name": name,
            "why": f"{rel} declares {shown} only when {option} is set",
            "header": rel,
        },
        (i,),
        (Evidence(f"{rel}:{site.line}: declared only when {option} is set", 0, str(site.path), site.line),),
    )


def _provider_option(ctx: _Context, symbol: str) -> Tuple[str, str]:
    """(module that exports ``symbol`` in another kernel, the option that builds it) or ('', '')."""
    config = ctx.config or {}
    for ref, ref_config in ctx.references:
        provider = ref.symvers().get(symbol)
        if not provider:
            continue
        if ref_config is None or provider == "vmlinux":
            return provider, ""
        parts = provider.split("/")
        candidates = [parts[-1]]
        if len(parts) >= 3:
            candidates.append(f"{parts[-3]}_{parts[-2]}")
        candidates.extend(reversed(parts[:-1]))
        off = {n for n, v in ref_config.items() if v in ("y", "m") and not _enabled(config, n)}
        squashed = {n[len("CONFIG_") :].replace("_", ""): n for n in sorted(off, key=len)}
        for cand in candidates:
            key = re.sub(r"[-_]", "", cand).upper()
            if key in squashed:
                return provider, squashed[key]
        return provider, ""
    return "", ""


def _x_config_modpost(ctx: _Context, i: int, m: Optional[re.Match[str]]) -> Optional[Found]:
    """modpost: a symbol the kernel headers declare but this kernel does not export."""
    assert m is not None
    symbol = m.group("symbol")
    if symbol in ctx.headers.symvers():
        return None
    provider, option = _provider_option(ctx, symbol)
    sites = ctx.headers.declarations(symbol, "function") or ctx.headers.declarations(symbol, "identifier")
    if not option:
        for site in sites:
            off = ctx.disabled(site.requires)
            if off:
                option = off[0]
                break
    if not sites and not provider:
        return None
    others = []
    for _j, text in ctx.output():
        o = re.match(r'^ERROR: modpost: "([^"]+)" .* undefined!', text)
        if o and o.group(1) != symbol:
            others.append(o.group(1))
    where = f"exported by {provider} in other kernels" if provider else "declared in the kernel headers"
    return _config_found(
        {
            "symbol": option,
            "name": symbol,
            "why": f"{symbol} is {where} but this kernel does not export it"
            + (f" (nor {', '.join(others[:3])})" if others else ""),
            "provider": provider,
        },
        (i,),
    )


def _next_config(ctx: _Context, facts: Facts) -> str:
    """On Debian, the generic flavour of a cloud kernel has the drivers the cloud one leaves out."""
    k = ctx.inputs.kernel
    if ctx.family.matches("debian*", "ubuntu*") and "-cloud-" in k:
        generic = k.replace("-cloud-", "-")
        return f"apt-get install linux-image-{generic} linux-headers-{generic}"
    return ""


def _in_kernel_note(ctx: _Context, i: int) -> Optional[Tuple[int, str]]:
    """(index, header) of a note after error ``i`` that points into the kernel headers."""
    for j, note in ctx.notes_after(i):
        if ctx.headers.is_kernel_path(note.group("file")):
            return j, ctx.headers.relative(note.group("file"))
    return None


def _api_change(ctx: _Context, i: int, what: str, more: Sequence[int] = (), **facts: str) -> Found:
    return Found(
        {"what": what, "kernel_version": _kernel_version(ctx.headers, ctx.inputs.kernel), **facts},
        (i, *more),
    )


def _x_api_implicit(ctx: _Context, i: int, m: Optional[re.Match[str]]) -> Optional[Found]:
    assert m is not None
    name = m.group("function")
    sites = ctx.headers.declarations(name, "function")
    if sites:
        rel = ctx.headers.relative(str(sites[0].path))
        what = f"{name}() is no longer declared where the module expects it (it is in {rel} now)"
    else:
        what = f"the kernel no longer has {name}()"
    return _api_change(ctx, i, what, function=name)


def _x_api_arguments(ctx: _Context, i: int, m: Optional[re.Match[str]]) -> Optional[Found]:
    assert m is not None
    name = m.group("function")
    note = _in_kernel_note(ctx, i)
    if note is None and not ctx.headers.declarations(name, "function"):
        return None
    where = f" (see {note[1]})" if note else ""
    much = m.group("much")
    if much:
        what = (
            f"{name}() takes {'fewer' if much == 'many' else 'more'} arguments than the module passes{where}"
        )
    else:
        what = f"the kernel's {name}() macro takes another number of arguments now{where}"
    return _api_change(ctx, i, what, [note[0]] if note else [], function=name)


def _x_api_pointer(ctx: _Context, i: int, m: Optional[re.Match[str]]) -> Optional[Found]:
    assert m is not None
    groups = m.groupdict()
    note = _in_kernel_note(ctx, i)
    function = groups.get("function") or ""
    in_kernel = note is not None or bool(function and ctx.headers.declarations(function, "function"))
    initialization = m.group(0).startswith(("initialization", "assignment"))
    if not in_kernel and not initialization:
        return None
    if groups.get("arg"):
        what = f"{function}() takes another type of argument {groups['arg']} now"
    elif function:
        what = f"the kernel declares {function}() differently now"
    else:
        member = ""
        for _j, n in ctx.notes_after(i, 3):
            near = re.search(r"near initialization for '(?:[\w.]+\.)?(\w+)'", n.group("msg"))
            if near:
                member = near.group(1)
        expected = groups.get("expected") or ""
        what = f"the callback {member or 'it sets'} has another type in this kernel" + (
            f" ({expected})" if expected else ""
        )
    what += f", see {note[1]}" if note else ""
    return _api_change(ctx, i, what, [note[0]] if note else [], function=function)


def _x_api_member(ctx: _Context, i: int, m: Optional[re.Match[str]]) -> Optional[Found]:
    assert m is not None
    struct, member = m.group("struct"), m.group("member")
    sites = ctx.headers.declarations(struct, "struct")
    if not sites:
        return None
    rel = ctx.headers.relative(str(sites[0].path))
    return _api_change(ctx, i, f"struct {struct} ({rel}) has no member {member} any more", struct=struct)


def _x_api_gpl(ctx: _Context, i: int, m: Optional[re.Match[str]]) -> Optional[Found]:
    assert m is not None
    return _api_change(ctx, i, f"the kernel exports {m.group('symbol')} to GPL modules only now")


def _x_api_header(ctx: _Context, i: int, m: Optional[re.Match[str]]) -> Optional[Found]:
    """A kernel header (linux/..., asm/...) that these headers do not have."""
    assert m is not None
    header = m.group("header")
    first = header.split("/", 1)[0]
    if ctx.headers.find_header(header) is not None or first not in _KERNEL_HEADER_DIRS:
        return None
    return _api_change(ctx, i, f"the kernel no longer has the header <{header}>", header=header)


def _x_userspace_header(ctx: _Context, i: int, m: Optional[re.Match[str]]) -> Optional[Found]:
    assert m is not None
    header = m.group("header")
    if ctx.headers.find_header(header) is not None:
        return None
    if header.split("/", 1)[0] in _KERNEL_HEADER_DIRS and ctx.headers.has_header_dir(header):
        return None
    return Found({"what": f"the header <{header}>", "name": header, "header": header}, (i,))


def _next_upgrade(ctx: _Context, _facts: Facts) -> str:
    package = ctx.inputs.package
    if package:
        cmd = _install_command(ctx.family, package)
        if ctx.family.matches("debian*", "ubuntu*") and cmd:
            return f"apt-get install --only-upgrade {package}"
        return cmd
    return ""


def _x_low_disk(ctx: _Context, _i: int, _m: Optional[re.Match[str]]) -> Optional[Found]:
    free = ctx.inputs.free_disk_bytes
    if free is None or free >= LOW_DISK_BYTES:
        return None
    where = str(ctx.inputs.make_log.parent) if ctx.inputs.make_log else ""
    return Found({"where": where, "free": f" ({free // 1024} KiB free now)"})


_SUMMARY_CONFIG = "{module}/{version} needs {option_shown}, which kernel {kernel} was built without: {why}."
_ADVICE_CONFIG = "Use a kernel built with {option_shown}{exclusive_hint}."
_SUMMARY_API = "{module}/{version} is too old for kernel {kernel} (Linux {kernel_version}): {what}."
_ADVICE_API = (
    "Install a release of {module} newer than {version} that supports Linux {kernel_version} "
    "(or a patch for it); this version cannot be built for this kernel."
)
_ADVICE_USERSPACE = "Install the package that provides {name_or_what}, then build again."

#: The classifier, in priority order (see the module docstring).
RULES: Tuple[Rule, ...] = (
    Rule(
        "build-exclusive", "inputs", (), _x_build_exclusive,
        "{module}/{version} is not built for kernel {kernel} ({arch}) on purpose: "
        "its dkms.conf says {said}, and {why}.",
        "Nothing failed. If the module should be built for this kernel, check {directive} in its dkms.conf.",
        _no_command,
    ),
    Rule(
        "build-depends-missing", "inputs", (), _x_build_depends,
        "{module}/{version} needs {depends} installed for kernel {kernel} first (BUILD_DEPENDS).",
        "Add and install {depends} for this kernel, then build {module}/{version} again.",
        _next_build_depends,
    ),
    Rule(
        "headers-missing", "inputs", (), _x_headers_dir,
        "The headers of kernel {kernel} are missing or incomplete: {problem}.",
        "Install the headers package of this kernel.",
        _next_headers,
    ),
    Rule(
        "no-log", "inputs", (), _x_no_log,
        "There is no make.log to read: {problem}.",
        "Build again to get a make.log: a failed build keeps it in the build directory.",
        _next_no_log,
    ),
    Rule(
        "out-of-disk", "log", _p(r"No space left on device", r"Disk quota exceeded"), _x_out_of_disk,
        "The disk ran full while building {module}/{version} for kernel {kernel}: {where}{free}.",
        "Free some space there (or point tmp_location/dkms_tree elsewhere), then build again.",
        _next_df,
    ),
    Rule(
        "out-of-memory", "log",
        _p(r"Killed signal terminated program", r"virtual memory exhausted", r"[Cc]annot allocate memory",
           r"out of memory allocating", r"internal compiler error: Killed", r"\bKilled\s*$"),
        _x_first_hit,
        "The compiler ran out of memory building {module}/{version} for kernel {kernel}: {line}.",
        "Build with fewer parallel jobs (or with more memory or swap).",
        _next_fewer_jobs,
    ),
    Rule(
        "patch-failed", "log",
        _p(r"^Hunk #\d+ FAILED", r"can't find file to patch", r"Reversed \(or previously applied\) patch detected",
           r"^patch: \*\*\*\* ", r"Only garbage was found in the patch input", r"^No file to patch\."),
        _x_patch,
        "{patch_shown} does not apply to {module}/{version}: {line}.",
        "The patch was made for another version of the source: update it or drop it from PATCH[] in dkms.conf.",
        _next_patch,
    ),
    Rule(
        "patch-failed", "inputs", (), _x_patch_missing,
        "Patch {patch} is listed in the dkms.conf of {module}/{version}, but {where} has no such file.",
        "Add the patch to the source's patches/ directory, or drop it from PATCH[] in dkms.conf.",
        _no_command,
    ),
    Rule(
        "patch-failed", "inputs", (), _x_patch,
        "{patch_shown} does not apply to {module}/{version}: {line}.",
        "The patch was made for another version of the source: update it or drop it from PATCH[] in dkms.conf.",
        _next_patch,
    ),
    Rule(
        "compiler-missing", "log",
        _p(r"(?:^|: )(?P<prog>[\w.+/-]+): (?:command )?not found$",
           r"^make(?:\[\d+\])?: (?P<prog>[\w.+/-]+): (?:No such file or directory|Command not found)",
           r"cannot execute '(?P<prog>cc1\w*|as|collect2)'"),
        _x_compiler_missing,
        "The compiler {compiler} is not installed (or not in PATH){built_by_note}.",
        "Install the compiler the kernel was built with.",
        _next_compiler,
    ),
    Rule(
        "compiler-mismatch", "log",
        _p(r"^(?P<prog>[\w.+/-]+): error: unrecognized command[- ]line option '(?P<opt>[^']+)'",
           r"^(?P<prog>[\w.+/-]+): error: unknown argument: '(?P<opt>[^']+)'",
           r"incompatible gcc/plugin versions", r"cannot load plugin"),
        _x_compiler_mismatch,
        "Kernel {kernel} was built by {built_by}, but the module was compiled with {using}, "
        "which does not accept the kernel's options: {line}.",
        "Build with the compiler the kernel was built with.",
        _next_compiler,
    ),
    Rule(
        "headers-missing", "log",
        _HEADERS_LOG,
        _x_headers_log,
        "The headers of kernel {kernel} at {headers_dir} are incomplete: {problem}",
        "Reinstall the headers package of this kernel.",
        _next_headers,
    ),
    Rule(
        "userspace-dependency-missing", "log",
        _p(r"^configure: error: (?P<msg>.*)", r"^(?:!\s*|\*+\s*)?(?:[Ee]rror|ERROR)!?:\s*(?P<msg>.+)"), _x_configure,
        "The configure script of {module}/{version} failed: {msg}",
        _ADVICE_USERSPACE,
        _next_file_search,
    ),
    Rule(
        "userspace-dependency-missing", "log",
        _p(r"Package '?(?P<pkg>[\w.+-]+)'?,? (?:was not found in the pkg-config search path)",
           r"cannot find -l(?P<lib>[\w.+-]+)"),
        _x_userspace_library,
        "{module}/{version} needs {what}, which is not installed.",
        _ADVICE_USERSPACE,
        _next_file_search,
    ),
    Rule(
        "userspace-dependency-missing", "log",
        _p(r"(?:^|: )(?P<prog>[\w.+/-]+): (?:command )?not found$",
           r"^make(?:\[\d+\])?: (?P<prog>[\w.+/-]+): (?:No such file or directory|Command not found)"),
        _x_tool_missing,
        "{module}/{version} needs {what}, which is not installed.",
        _ADVICE_USERSPACE,
        _next_file_search,
    ),
    Rule(
        "kernel-config-missing", "error", _p(r"error: #error (?P<msg>.*CONFIG_\w+.*)"), _x_config_error,
        _SUMMARY_CONFIG,
        _ADVICE_CONFIG,
        _next_config,
    ),
    Rule(
        "kernel-config-missing", "error",
        _p(r"implicit declaration of function '(?P<function>\w+)'", r"unknown type name '(?P<name>\w+)'",
           r"'(?P<name>\w+)' undeclared",
           r"(?:invalid use of undefined type|dereferencing pointer to incomplete type) 'struct (?P<struct>\w+)'"),
        _x_config_declaration,
        _SUMMARY_CONFIG,
        _ADVICE_CONFIG,
        _next_config,
    ),
    Rule(
        "kernel-config-missing", "error", _p(r'^ERROR: modpost: "(?P<symbol>[^"]+)" .* undefined!'),
        _x_config_modpost,
        _SUMMARY_CONFIG,
        _ADVICE_CONFIG,
        _next_config,
    ),
    Rule(
        "kernel-api-change", "error", _p(r"implicit declaration of function '(?P<function>\w+)'"),
        _x_api_implicit, _SUMMARY_API, _ADVICE_API, _next_upgrade,
    ),
    Rule(
        "kernel-api-change", "error",
        _p(r"too (?P<much>many|few) arguments to function '(?P<function>\w+)'",
           r"macro \"(?P<function>\w+)\" (?:requires|passed) \d+ arguments, but (?:only \d+ given|takes just \d+)(?P<much>)"),
        _x_api_arguments, _SUMMARY_API, _ADVICE_API, _next_upgrade,
    ),
    Rule(
        "kernel-api-change", "error",
        _p(r"passing argument (?P<arg>\d+) of '(?P<function>\w+)' from incompatible pointer type",
           r"(?:initialization|assignment) of '(?P<expected>.*)' from incompatible pointer type",
           r"conflicting types for '(?P<function>\w+)'"),
        _x_api_pointer, _SUMMARY_API, _ADVICE_API, _next_upgrade,
    ),
    Rule(
        "kernel-api-change", "error", _p(r"'(?:struct )?(?P<struct>\w+)'(?: \{aka '[^']*'\})? has no member named '(?P<member>\w+)'"),
        _x_api_member, _SUMMARY_API, _ADVICE_API, _next_upgrade,
    ),
    Rule(
        "kernel-api-change", "error", _p(r"GPL-incompatible module .* uses GPL-only symbol '(?P<symbol>\w+)'"),
        _x_api_gpl, _SUMMARY_API, _ADVICE_API, _next_upgrade,
    ),
    Rule(
        "kernel-api-change", "error", _p(r"fatal error: (?P<header>[\w./+-]+\.h): No such file or directory"),
        _x_api_header, _SUMMARY_API, _ADVICE_API, _next_upgrade,
    ),
    Rule(
        "userspace-dependency-missing", "error",
        _p(r"fatal error: (?P<header>[\w./+-]+\.h): No such file or directory"),
        _x_userspace_header,
        "{module}/{version} needs {what}, which is neither in the kernel headers nor installed.",
        _ADVICE_USERSPACE,
        _next_file_search,
    ),
    Rule(
        "compiler-mismatch", "log", _p(r"the compiler differs from the one used to build the kernel"),
        _x_compiler_mismatch,
        "Kernel {kernel} was built by {built_by}, but the module was compiled with {using}: {line}.",
        "Build with the compiler the kernel was built with.",
        _next_compiler,
    ),
    Rule(
        "out-of-disk", "inputs", (), _x_low_disk,
        "The disk is nearly full where {module}/{version} was built: {where}{free}.",
        "Free some space there (or point tmp_location/dkms_tree elsewhere), then build again.",
        _next_df,
    ),
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# diagnose


def _context(inputs: FailureInputs) -> _Context:
    lines: List[str] = []
    problem = ""
    path = inputs.make_log
    if path is None:
        problem = "no make.log was given"
    else:
        try:
            lines = _read_log(path)
        except FileNotFoundError:
            problem = f"{path} does not exist"
        except IsADirectoryError:
            problem = f"{path} is a directory"
        except OSError as exc:
            problem = f"{path} cannot be read ({exc.strerror or exc})"
        else:
            head = _LOG_HEADER.search(lines[0]) if lines else None
            if not lines:
                problem = f"{path} is empty"
            elif head and inputs.kernel and head.group("k") != inputs.kernel:
                problem = f"{path} is from a build for kernel {head.group('k')}, not {inputs.kernel}"
    blocks = _blocks(lines)
    failed = [b for b in blocks if b.exit_code != 0]
    block = failed[-1] if failed else blocks[-1]
    step, patch = _step_of(block.description) if not problem else ("", "")
    step = inputs.step or step
    errors = _errors(lines, block.start, block.end)
    return _Context(inputs, lines, problem, block, step, patch, errors)


def _hits(ctx: _Context, rule: Rule) -> Iterator[Tuple[int, Optional[re.Match[str]]]]:
    if rule.scope == "inputs":
        yield -1, None
        return
    if ctx.log_problem:
        return
    if rule.scope == "log":
        for i, text in ctx.output():
            for pattern in rule.patterns:
                m = pattern.search(text)
                if m:
                    yield i, m
                    break


#: facts that only shape a sentence; the others are the diagnosis' details
_TEMPLATE_ONLY = frozenset({"said", "free", "built_by_note", "patch_shown", "option_shown", "exclusive_hint"})


def _finish(ctx: _Context, rule: Rule, found: Found) -> Diagnosis:
    inp = ctx.inputs
    facts = found.facts
    values: Dict[str, str] = {
        "module": inp.module,
        "version": inp.version,
        "kernel": inp.kernel,
        "arch": inp.arch or os.uname().machine,
    }
    values.update(facts)
    for key in ("line", "msg", "problem"):
        if key in values:
            values[key] = values[key].rstrip(".")
    values.setdefault("name_or_what", facts.get("what") or facts.get("name") or "it")
    evidence = (*(ctx.evidence_at(i) for i in found.lines), *found.extra)
    details = {k: v for k, v in facts.items() if k not in _TEMPLATE_ONLY and v}
    return Diagnosis(
        cause=rule.cause,
        summary=rule.summary.format(**values),
        advice=rule.advice.format(**values),
        next_command=rule.next_command(ctx, facts),
        module=inp.module,
        version=inp.version,
        kernel=inp.kernel,
        arch=values["arch"],
        step=ctx.step,
        exit_code=inp.exit_code,
        make_log=inp.make_log,
        evidence=evidence,
        details=details,
    )


def diagnose(inputs: FailureInputs) -> Diagnosis:
    """Name the most likely cause of a failed (or refused) build, with evidence and a next command."""
    ctx = _context(inputs)
    errors_done = False
    for rule in RULES:
        if rule.scope == "error":
            # the rows read from the compiler's errors form one group: the first error decides
            if not errors_done:
                errors_done = True
                diag = _from_errors(ctx)
                if diag is not None:
                    return diag
            continue
        for i, m in _hits(ctx, rule):
            found = rule.extract(ctx, i, m)
            if found is not None:
                return _finish(ctx, rule, found)
    return _unknown(ctx)


def _from_errors(ctx: _Context) -> Optional[Diagnosis]:
    if ctx.log_problem:
        return None
    rules = [r for r in RULES if r.scope == "error"]
    for error in ctx.errors:
        for rule in rules:
            for pattern in rule.patterns:
                m = pattern.search(error.text)
                if m is None:
                    continue
                found = rule.extract(ctx, error.index, m)
                if found is not None:
                    return _finish(ctx, rule, found)
    return None


def _unknown(ctx: _Context) -> Diagnosis:
    inp = ctx.inputs
    evidence: Tuple[Evidence, ...] = ()
    if ctx.errors:
        first = ctx.errors[0]
        evidence = (ctx.evidence_at(first.index),)
        said = first.text
    else:
        said = ""
        for i, text in reversed(list(ctx.output())):
            if text.strip() and not text.startswith("make"):
                evidence = (ctx.evidence_at(i),)
                said = text.strip()
                break
    step = ctx.step or "the build"
    code = f" (exit code {inp.exit_code})" if inp.exit_code is not None else ""
    summary = f"{inp.module}/{inp.version} failed in {step} for kernel {inp.kernel}{code}" + (
        f"; the first error is: {said}" if said else "; make.log names no error"
    )
    command = ""
    if inp.make_log is not None and evidence and evidence[0].make_log_line:
        command = f"less +{evidence[0].make_log_line} {inp.make_log}"
    elif inp.make_log is not None:
        command = f"less {inp.make_log}"
    return Diagnosis(
        cause="unknown",
        summary=summary,
        advice="None of the known causes fits: read the first error in make.log.",
        next_command=command,
        module=inp.module,
        version=inp.version,
        kernel=inp.kernel,
        arch=inp.arch or os.uname().machine,
        step=ctx.step,
        exit_code=inp.exit_code,
        make_log=inp.make_log,
        evidence=evidence,
        details={},
    )


# --------------------------------------------------------------------------------------------
# text


def _short_path(path: str, build_dir: Optional[Path]) -> str:
    if build_dir is not None:
        base = str(build_dir) + os.sep
        if path.startswith(base):
            return path[len(base) :]
    m = re.search(r"/(?:linux-headers|kernels?)[^/]*/(.*)$", path)
    return m.group(1) if m else path


def _evidence_line(e: Evidence, build_dir: Optional[Path]) -> str:
    text = e.text
    if e.file:
        text = text.replace(e.file, _short_path(e.file, build_dir), 1)
    if build_dir is not None:
        text = text.replace(f"{build_dir}{os.sep}", "")
    where = f" (make.log line {e.make_log_line})" if e.make_log_line else ""
    return f"{text}{where}"


def render_text(diag: Diagnosis, short: bool = False) -> str:
    """The diagnosis for people: the full ``dkms explain`` text, or 2-4 lines after a failed build."""
    build_dir = diag.make_log.parent if diag.make_log is not None else None
    lines: List[str] = []
    if short:
        lines.append(f"Likely cause ({diag.cause}): {diag.summary}")
        if diag.evidence:
            lines.append(f"  {_evidence_line(diag.evidence[0], build_dir)}")
        lines.append(f"  Next: {diag.next_command}" if diag.next_command else f"  {diag.advice}")
        who = f"{diag.module}/{diag.version} -k {diag.kernel}"
        lines.append(f"  Details: dkms explain {who}")
        return "\n".join(lines) + "\n"
    lines.append(f"{diag.module}/{diag.version} for kernel {diag.kernel} ({diag.arch}): {diag.cause}")
    lines.append(f"  {diag.summary}")
    if diag.evidence:
        lines.append("Evidence:")
        lines.extend(f"  {_evidence_line(e, build_dir)}" for e in diag.evidence)
    if diag.make_log is not None and any(e.make_log_line for e in diag.evidence):
        lines.append(f"Log: {diag.make_log}")
    lines.append(f"What to do: {diag.advice}")
    if diag.next_command:
        lines.append(f"Next: {diag.next_command}")
    return "\n".join(lines) + "\n"
