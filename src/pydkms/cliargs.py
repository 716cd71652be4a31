"""Command-line parsing: tokens in, one frozen :class:`Invocation` out (spec/cli.md §1–§5).

The parser mirrors upstream dkms 3.2.2's ``while (($# > 0)); do case $1 in …`` loop: tokens are
processed strictly left to right, long value options are recognised by *prefix* in upstream's
order (so ``--archive…`` wins over ``--arch…``), flags must match exactly, short options take
their value from the next token only, and every value is cut to its first line and stripped of
surrounding blanks (upstream's ``read -r``).

Parsing is pure apart from the filesystem tests that classify bare tokens (cli.md §2) and the
readability test of ``--dkmsframework`` files. Nothing is printed: messages the CLI must show
are returned as :class:`Notice` objects (or carried by the :class:`CommandLineError`), so the
CLI decides what ``-q`` hides.

Defaults (``uname -r``, the default architecture, ``--all``) are applied separately by
:func:`resolve_targets`, because they need the tree and the host; ``status`` never calls it.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .errors import DkmsError, UsageError
from .names import check_kernel_name

# --------------------------------------------------------------------------------------------
# Actions

#: Every action name (cli.md §1.1). A bare token is an action iff it equals one of these.
ACTIONS: tuple[str, ...] = (
    "add",
    "build",
    "install",
    "uninstall",
    "unbuild",
    "remove",
    "status",
    "match",
    "autoinstall",
    "kernel_preinst",
    "kernel_postinst",
    "kernel_prerm",
    "mktarball",
    "ldtarball",
    "generate_mok",
    "sign",
    "mkdeb",
    "mkdsc",
    "mkbmdeb",
    "mkrpm",
    "mkkmp",
    "mkdriverdisk",
)

#: The kernel package hook actions: exactly one explicit ``-k`` (cli.md §5.1, autoinstall-hooks.md §2).
KERNEL_HOOK_ACTIONS: tuple[str, ...] = ("kernel_preinst", "kernel_postinst", "kernel_prerm")

#: Actions that reject ``--all`` with exit 5, checked before anything else (cli.md §6).
ALL_BANNED_ACTIONS: tuple[str, ...] = (
    "add",
    "build",
    "install",
    "autoinstall",
    "match",
    *KERNEL_HOOK_ACTIONS,
)


#: Actions that accept ``--all-kernels`` (every installed kernel with headers; our extension).
ALL_KERNELS_ACTIONS: tuple[str, ...] = ("build", "install", "autoinstall", "sign")


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Notice:
    """A message the CLI prints on stderr (warning, deprecation notice).

    ``text`` is the complete line, prefix included (``Warning: …``, ``Deprecated feature: …``).
    ``before_quiet`` is True if the notice arose before ``-q``/``--quiet`` was parsed; such
    notices stay visible under ``-q`` (cli.md §3), later ones are discarded.
    """

    text: str
    before_quiet: bool


@dataclass(frozen=True)
class Invocation:
    """Everything the command line says, as parsed, before any defaulting.

    ``None`` means "option not given". String values are kept verbatim after normalisation, so
    an explicitly empty value (``-v ''``) is ``""``; like upstream, callers treat an empty string
    as unset. Path-valued options given an empty value are ``None`` (a ``Path`` cannot be empty).
    """

    action: Optional[str] = None
    module: Optional[str] = None
    version: Optional[str] = None
    kernels: tuple[str, ...] = ()
    arches: tuple[str, ...] = ()
    all: bool = False
    #: ``--all-kernels``: every kernel under the install tree that has headers (our extension)
    all_kernels: bool = False
    source_path: Optional[Path] = None
    archive: Optional[Path] = None
    conf: Optional[Path] = None
    kernel_config: Optional[Path] = None
    kernel_source_dir: Optional[Path] = None
    template_kernel: Optional[str] = None
    directives: tuple[tuple[str, str], ...] = ()
    force: bool = False
    force_version_override: bool = False
    binaries_only: bool = False
    source_only: bool = False
    rpm_safe_upgrade: bool = False
    symlink_modules: bool = False
    no_depmod: bool = False
    modprobe_on_install: bool = False
    jobs: Optional[str] = None
    verbose: bool = False
    debug: bool = False
    quiet: bool = False
    json: bool = False
    dkms_tree: Optional[Path] = None
    source_tree: Optional[Path] = None
    install_tree: Optional[Path] = None
    framework_files: tuple[Path, ...] = ()
    distro: Optional[str] = None
    release: Optional[str] = None
    size: Optional[str] = None
    media: Optional[str] = None
    spec: Optional[str] = None
    legacy_postinst: Optional[str] = None
    show_help: bool = False
    show_version: bool = False
    notices: tuple[Notice, ...] = ()


class CommandLineError(UsageError):
    """A command-line error found by :func:`parse_args` / :func:`prescan_framework_files`.

    Besides the exit code and message it carries what the CLI needs to report it like upstream:
    the notices emitted before the error (print them first), whether ``-q`` was already in
    effect when the error was raised (then upstream prints nothing at all), and whether the
    usage text should follow the message (unknown option, no action).
    """

    def __init__(
        self,
        code: int,
        message: str,
        *,
        notices: tuple[Notice, ...] = (),
        quiet: bool = False,
        show_usage: bool = False,
        hint: Optional[str] = None,
    ) -> None:
        super().__init__(code, message, hint)
        self.notices = notices
        self.quiet = quiet
        self.show_usage = show_usage


# --------------------------------------------------------------------------------------------
# The option table (one row per option; drives parsing and the usage text)


@dataclass(frozen=True)
class Option:
    """One command-line option.

    ``long`` is matched as a prefix when ``takes_value`` (upstream ``--opt*)``), exactly
    otherwise; ``short`` is always matched exactly. ``dest`` names the parser slot it feeds.
    ``help`` and ``actions`` (empty: every action) feed ``dkms --help`` and ``dkms ACTION --help``.
    """

    long: Optional[str]
    short: Optional[str]
    takes_value: bool
    dest: str
    metavar: str = ""
    seed: bool = False
    #: the value is a file or directory (a name starting with ``-`` can be written ``./-name``)
    path: bool = False
    help: str = ""
    actions: tuple[str, ...] = ()


#: groups of actions, for the option table below
_MV = ("add", "build", "install", "uninstall", "unbuild", "remove")
_BUILDS = ("build", "install", "autoinstall", "kernel_postinst", "match")
_CONFS = (*_MV, "status", "autoinstall", *KERNEL_HOOK_ACTIONS, "match", "sign", "mktarball")
_PACKAGERS = ("mktarball", "mkdeb", "mkdsc", "mkbmdeb", "mkrpm", "mkkmp", "mkdriverdisk")
_KERNELS = (*_MV, "status", "match", "autoinstall", *KERNEL_HOOK_ACTIONS, "sign", "generate_mok", *_PACKAGERS)
_DEPMOD = ("install", "uninstall", "unbuild", "remove", "autoinstall", *KERNEL_HOOK_ACTIONS, "match", "sign")

#: In upstream's ``case`` order; the order matters only for prefix matching (``--archive`` first).
OPTIONS: tuple[Option, ...] = (
    Option(
        "--module", "-m", True, "module", "module[/version]",
        help="the module (and its version after the first '/'); for status a pattern",
        actions=(*_MV, "status", "match", "sign", *_PACKAGERS),
    ),
    Option(
        None, "-v", True, "version", "module-version",
        help="the module's version; for status a pattern", actions=(*_MV, "status", "sign", *_PACKAGERS),
    ),
    Option(
        "--kernelver", "-k", True, "kernel", "kernel-version[/arch]",
        help="a kernel (repeatable; default: the running one, but status shows every kernel); '/arch' also gives its architecture",
        actions=_KERNELS,
    ),
    Option(
        "--templatekernel", None, True, "template_kernel", "kernel",
        help="the kernel whose installed modules match installs", actions=("match",),
    ),
    Option(
        None, "-c", True, "conf", "dkms.conf-location", path=True,
        help="read this file instead of the module's dkms.conf", actions=_CONFS,
    ),
    Option("--quiet", "-q", False, "quiet", help="print nothing (status --json still prints the document)"),
    Option("--version", "-V", False, "show_version", help="print the version and stop"),
    Option("--no-initrd", None, False, "deprecated"),
    Option("--no-clean-kernel", None, False, "deprecated"),
    Option("--no-prepare-kernel", None, False, "deprecated"),
    Option(
        "--binaries-only", None, False, "binaries_only",
        help="no source in the archive or package", actions=("mktarball", "mkdeb", "mkrpm"),
    ),
    Option(
        "--source-only", None, False, "source_only",
        help="no built modules in the archive or package", actions=("mktarball", "mkdeb", "mkrpm"),
    ),
    Option(
        "--force", None, False, "force",
        help="do it again: re-add over the source, rebuild, reinstall; skip the version check",
        actions=("add", "build", "install", "ldtarball", *_PACKAGERS),
    ),
    Option(
        "--force-version-override", None, False, "force_version_override",
        help="install even over a newer installed version", actions=("install",),
    ),
    Option(
        "--all", None, False, "all",
        help="every kernel and architecture the module is built for",
        actions=("uninstall", "unbuild", "remove", "sign", *_PACKAGERS),
    ),
    Option("--verbose", None, False, "verbose", help="print the commands run instead of the steps, and their output"),
    Option(
        "--rpm_safe_upgrade", None, False, "rpm_safe_upgrade",
        help="the lock protocol of RPM package upgrades", actions=("add", "remove", "install"),
    ),
    Option("--dkmstree", None, True, "dkms_tree", "path", path=True, help="the DKMS tree (default /var/lib/dkms)"),
    Option("--sourcetree", None, True, "source_tree", "path", path=True, help="the source tree (default /usr/src)"),
    Option(
        "--installtree", None, True, "install_tree", "path", path=True,
        help="the kernels' module tree (default /lib/modules)",
    ),
    Option(
        "--symlink-modules", None, False, "symlink_modules",
        help="install symbolic links into the DKMS tree instead of copies", actions=("install", *_BUILDS[2:]),
    ),
    Option(
        "--config", None, True, "kernel_config", "kernel-config-location", path=True,
        help="the kernel configuration to build against", actions=_BUILDS,
    ),
    Option(
        "--archive", None, True, "archive", "tarball-location", path=True,
        help="the archive to write (mktarball) or read", actions=("add", "build", "install", "mktarball", "ldtarball"),
    ),
    Option(
        "--arch", "-a", True, "arch", "arch",
        help="an architecture (repeatable, paired with the -k in order; default: the machine's)",
        actions=_KERNELS,
    ),
    Option(
        "--kernelsourcedir", None, True, "kernel_source_dir", "source-location", path=True,
        help="the kernel build directory (default $install_tree/<kernel>/build)", actions=_BUILDS,
    ),
    Option(
        "--directive", None, True, "directive", "NAME=value",
        help="set a dkms.conf variable after the file is read (repeatable)", actions=_CONFS,
    ),
    Option(
        "--no-depmod", None, False, "no_depmod",
        help="never run depmod", actions=_DEPMOD,
    ),
    Option(
        "--modprobe-on-install", None, False, "modprobe_on_install",
        help="load the installed modules into the running kernel", actions=("install", "autoinstall"),
    ),
    Option("--debug", None, False, "debug", help="trace what dkms does, and tracebacks of internal errors"),
    Option(
        None, "-j", True, "jobs", "number",
        help=(
            "make jobs for all the builds of this command together (a whole number, 0: no limit; "
            "default: parallel_jobs in framework.conf, else the number of CPUs)"
        ),
        actions=_BUILDS,
    ),
    Option("--help", "-h", False, "show_help", help="this help ('dkms ACTION --help': one action's)"),
    # Seed-era options (restored) and our extension; none is a prefix of an option above.
    Option(
        "--dkmsframework", None, True, "framework_file", "file", seed=True, path=True,
        help="one more framework file, read after /etc/dkms/framework.conf.d (repeatable)",
    ),
    Option("--distro", "-d", True, "distro", "distro", seed=True, help="the distribution", actions=("mkdriverdisk",)),
    Option(
        "--release", "-r", True, "release", "release", seed=True,
        help="the distribution's release", actions=("mkdriverdisk",),
    ),
    Option("--size", None, True, "size", "KiB", seed=True, help="the image size", actions=("mkdriverdisk",)),
    Option("--media", None, True, "media", "floppy|iso|tar", seed=True, help="the image type", actions=("mkdriverdisk",)),
    Option(
        "--spec", None, True, "spec", "file", seed=True,
        help="the spec file, in the module source", actions=("mkkmp", "mkdriverdisk"),
    ),
    Option(
        "--legacy-postinst", None, True, "legacy_postinst", "0|1", seed=True,
        help="embed a copy of common.postinst in the package", actions=("mkdeb", "mkdsc", "mkrpm"),
    ),
    Option(
        "--json", None, False, "json", seed=True,
        help="print one JSON document instead of lines (also under -q; see the README)", actions=("status",),
    ),
    Option(
        "--all-kernels", None, False, "all_kernels", seed=True,
        help="every kernel under the install tree whose headers are installed, instead of -k",
        actions=ALL_KERNELS_ACTIONS,
    ),
)  # fmt: skip

#: what each action takes and does, for ``dkms --help`` and ``dkms ACTION --help``
ACTION_HELP: dict[str, tuple[str, str]] = {
    "add": (
        "module/version | source-dir | path/dkms.conf",
        "register a module source: $source_tree/<module>-<version>, or a directory copied there",
    ),
    "build": (
        "module/version [-k kernel]...",
        "build the module for the kernels (adding it first if needed)",
    ),
    "install": (
        "module/version [-k kernel]...",
        "install the built module into the kernels' module trees (building it first if needed)",
    ),
    "uninstall": ("module/version [-k kernel]... | --all", "take the installed module out; it stays built"),
    "unbuild": ("module/version [-k kernel]... | --all", "uninstall if needed, then delete the build"),
    "remove": (
        "module/version [-k kernel]... | --all",
        "uninstall and unbuild (default: on every kernel it is built for), then unregister it",
    ),
    "status": ("[module[/version]] [-k kernel]...", "list the modules and their state, one line each"),
    "match": (
        "--templatekernel=kernel [-k kernel] [module]",
        "install on a kernel what is installed on the template kernel",
    ),
    "autoinstall": (
        "[-k kernel | --all-kernels]",
        "build and install the latest version of every AUTOINSTALL module for the kernel",
    ),
    "kernel_preinst": ("-k kernel", "before a kernel package is installed: remove its AUTOINSTALL modules"),
    "kernel_postinst": ("-k kernel", "after a kernel package is installed: autoinstall for it"),
    "kernel_prerm": (
        "-k kernel",
        "before a kernel is removed: uninstall and unbuild everything built for it",
    ),
    "mktarball": ("module/version", "write a DKMS archive (not implemented yet)"),
    "ldtarball": ("archive", "load a DKMS archive (not implemented yet)"),
    "generate_mok": ("", "create the module signing key and certificate if they do not exist"),
    "sign": (
        "[module/version] [-k kernel]...",
        "sign the built modules again with the current key, and their installed copies",
    ),
    "mkdeb": ("module/version", "build a Debian package (not implemented yet)"),
    "mkdsc": ("module/version", "build a Debian source package (not implemented yet)"),
    "mkbmdeb": ("module/version", "build a binary-module Debian package (not implemented yet)"),
    "mkrpm": ("module/version", "build an RPM package (not implemented yet)"),
    "mkkmp": ("module/version", "build a kernel module package (not implemented yet)"),
    "mkdriverdisk": ("module/version", "build a driver disk (not implemented yet)"),
}


def options_of(action: Optional[str]) -> list[Option]:
    """The documented options of an action (None: all of them), in table order."""
    return [
        o
        for o in OPTIONS
        if o.dest != "deprecated" and (action is None or not o.actions or action in o.actions)
    ]


_HELP_COLUMN = 28


def _option_lines(options: Sequence[Option], with_actions: bool) -> list[str]:
    """One entry per option: names and value, then what it does (wrapped, in a column)."""
    lines: list[str] = []
    for o in options:
        names = ", ".join(n for n in (o.short, o.long) if n)
        head = f"  {names} {o.metavar}" if o.takes_value else f"  {names}"
        text = o.help
        if with_actions and o.actions and len(o.actions) <= 5:
            text += f" [{', '.join(o.actions)}]"
        if len(head) + 2 > _HELP_COLUMN:
            lines.append(head)
            head = ""
        lines.extend(_wrap_text(head.ljust(_HELP_COLUMN), text))
    return lines


def _wrap_text(head: str, text: str, width: int = 100) -> list[str]:
    """``text`` after ``head``, wrapped at ``width``; continuation lines indented like the text."""
    lines: list[str] = []
    line = head
    for word in text.split():
        if len(line) + len(word) > width and line.strip():
            lines.append(line.rstrip())
            line = " " * len(head)
        line += word + " "
    lines.append(line.rstrip())
    return lines


def help_text(action: Optional[str] = None, prog: str = "dkms") -> str:
    """``dkms --help`` (every action and option), or ``dkms ACTION --help`` (that action's)."""
    if action is None or action not in ACTION_HELP:
        lines = [
            f"Usage: {prog} ACTION [options] [module[/version]] [source-dir | path/dkms.conf] [archive]",
            "",
            "Actions:",
        ]
        width = max(len(a) for a in ACTIONS) + 4
        for a in ACTIONS:
            lines.extend(_wrap_text(f"  {a}".ljust(width), ACTION_HELP[a][1]))
        lines += ["", "Options (the actions that use them in brackets, when they are few):"]
        lines += _option_lines(options_of(None), with_actions=True)
        lines += ["", f"'{prog} ACTION --help' shows one action's arguments and options."]
        return "\n".join(lines)
    args, what = ACTION_HELP[action]
    lines = [
        f"Usage: {prog} {action} [options] {args}".rstrip(),
        *_wrap_text("", f"{what[0].upper()}{what[1:]}."),
    ]
    lines += ["", "Options:", *_option_lines(options_of(action), with_actions=False)]
    return "\n".join(lines)


def match_option(token: str) -> Optional[Option]:
    """Return the option a token that starts with ``-`` stands for, or None if unknown."""
    for opt in OPTIONS:
        if token == opt.short:
            return opt
        if opt.long is not None and (token.startswith(opt.long) if opt.takes_value else token == opt.long):
            return opt
    return None


def _wrap(head: str, parts: Sequence[str], width: int = 100) -> list[str]:
    lines: list[str] = []
    line = head
    for part in parts:
        if len(line) + 1 + len(part) > width and line != head:
            lines.append(line)
            line = " " * len(head)
        line += " " + part
    lines.append(line)
    return lines


def usage(prog: str = "dkms") -> str:
    """The usage text (without trailing newline), generated from :data:`ACTIONS` and :data:`OPTIONS`."""
    options: list[str] = []
    for opt in OPTIONS:
        if opt.dest == "deprecated":
            continue
        names = " | ".join(n for n in (opt.short, opt.long) if n)
        options.append(f"[{names} {opt.metavar}]" if opt.takes_value else f"[{names}]")
    return "\n".join(
        [
            f"Usage: {prog} ACTION [options] [module[/version]] [source-dir | path/dkms.conf] [archive]",
            *_wrap("  ACTION  = {", [*(f"{a} |" for a in ACTIONS[:-1]), f"{ACTIONS[-1]} }}"]),
            *_wrap("  options =", options),
        ]
    )


# --------------------------------------------------------------------------------------------
# Parsing


def normalise_value(value: str) -> str:
    """Upstream's ``read -r var <<< "$value"``: first line only, blanks stripped at both ends."""
    return value.split("\n", 1)[0].strip(" \t")


_JOBS = re.compile(r"[0-9]+")


def jobs_problem(value: str) -> Optional[str]:
    """Why a make job count (``-j``, ``parallel_jobs``) is not one, or None if it is.

    A count is a whole number; ``0`` means no limit (``make -j``) and empty means "not set".
    """
    if not value or _JOBS.fullmatch(value):
        return None
    return f"'{value}' is not a number of make jobs: use a whole number (0 for no limit)."


def split_first_slash(text: str) -> tuple[str, Optional[str]]:
    """``a/b/c`` → (``a``, ``b/c``); no ``/`` → (text, None). Upstream's ``mv_re='^([^/]*)/(.*)$'``."""
    head, sep, tail = text.partition("/")
    return (head, tail) if sep else (text, None)


_PATH_PREFIXES = ("/", "./", "../", "~")


def _not_a_source(token: str) -> Optional[str]:
    """Why a token that looks like a path is not a source directory, dkms.conf or archive (§2)."""
    if os.path.isdir(token):
        return f"'{token}' is a directory but has no file dkms.conf"
    if os.path.lexists(token):
        return f"'{token}' is not a regular file or directory"
    if token.startswith(_PATH_PREFIXES):
        return f"'{token}' does not exist"
    return None


def _path(value: str) -> Optional[Path]:
    return Path(value) if value else None


def _framework_file_error(value: str) -> Optional[str]:
    """Why a ``--dkmsframework`` file cannot be used, or None if it can."""
    if not value or not os.path.exists(value):
        return f"The framework file given with --dkmsframework does not exist: '{value}'."
    if os.path.isdir(value) or not os.access(value, os.R_OK):
        return f"The framework file given with --dkmsframework is not a readable file: '{value}'."
    return None


@dataclass
class _Parser:
    """Mutable state of one left-to-right pass over the tokens."""

    action: Optional[str] = None
    module: Optional[str] = None
    version: Optional[str] = None
    kernels: list[str] = field(default_factory=list)
    arches: list[str] = field(default_factory=list)
    directives: list[tuple[str, str]] = field(default_factory=list)
    framework_files: list[Path] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    flags: set[str] = field(default_factory=set)
    values: dict[str, str] = field(default_factory=dict)
    source_path: Optional[Path] = None
    archive: Optional[Path] = None
    stopped_at: Optional[str] = None  # "show_help" / "show_version" once reached
    #: bare tokens read as m/v or not understood, in order (a mistyped action is among them)
    bare_words: list[str] = field(default_factory=list)
    #: the tokens not understood: the error's text and the warning given for status
    strays: list[tuple[str, Notice]] = field(default_factory=list)

    @property
    def quiet(self) -> bool:
        return "quiet" in self.flags

    def notice(self, text: str) -> None:
        self.notices.append(Notice(text, before_quiet=not self.quiet))

    def error(self, code: int, message: str, *, show_usage: bool = False) -> CommandLineError:
        return CommandLineError(
            code, message, notices=tuple(self.notices), quiet=self.quiet, show_usage=show_usage
        )

    def set_module_version(self, text: str) -> None:
        """Upstream ``parse_moduleversion``: ``m/v`` sets both, a plain ``m`` leaves v alone."""
        module, version = split_first_slash(text)
        self.module = module
        if version is not None:
            self.version = version

    def run(self, argv: Sequence[str]) -> None:
        i = 0
        while i < len(argv):
            token = argv[i]
            i += 1
            if token.startswith("-"):
                opt = match_option(token)
                if opt is None:
                    raise self.error(2, f"Unknown option: {token}", show_usage=True)
                if opt.takes_value:
                    name, inline, raw = token.partition("=")  # only a long option can hold one
                    if not inline and i < len(argv):
                        raw = argv[i]
                        i += 1
                    value = normalise_value(raw)
                    self.check_value(opt, name, value, separate=not inline)
                    self.take_value(opt, value)
                elif opt.dest in ("show_help", "show_version"):
                    self.stopped_at = opt.dest
                    return
                elif opt.dest == "deprecated":
                    self.notice(f"Deprecated feature: {token}")
                else:
                    self.flags.add(opt.dest)
            else:
                self.take_bare(token)

    def check_value(self, opt: Option, name: str, value: str, *, separate: bool) -> None:
        """Refuse a value no option can have: one starting with ``-``, a job count that is not one.

        Taking the next token unconditionally, as upstream does, turns ``-k --dkmstree DIR`` into
        the kernel ``--dkmstree`` and runs the command on the real trees; no kernel, module,
        version, arch, path or other value of dkms starts with ``-``.
        """
        if opt.dest == "jobs":
            problem = jobs_problem(value)
            if problem is not None:
                raise self.error(2, f"{name} {problem}")
            return
        if not value.startswith("-"):
            return
        if separate:
            message = (
                f"{name} needs a value, but the argument after it is '{value}', which starts with '-' "
                "like an option: no value of a dkms option does."
            )
        else:
            message = f"The value of {name} cannot start with '-': '{value}'."
        hint = "A path that starts with '-' can be written as ./-name." if opt.path else None
        raise CommandLineError(2, message, notices=tuple(self.notices), quiet=self.quiet, hint=hint)

    def take_value(self, opt: Option, value: str) -> None:
        dest = opt.dest
        if dest == "module":
            self.set_module_version(value)
        elif dest == "version":
            self.version = value
        elif dest == "kernel":
            kernel, arch = split_first_slash(value)
            self.kernels.append(kernel)
            if arch is not None:
                self.arches.append(arch)
        elif dest == "arch":
            self.arches.append(value)
        elif dest == "archive":
            self.archive = _path(value)
        elif dest == "directive":
            name, sep, directive_value = value.partition("=")
            if sep and name:
                self.directives.append((name, directive_value))
            else:
                self.notice(f"Warning: ignoring --directive '{value}': expected NAME=value.")
        elif dest == "framework_file":
            problem = _framework_file_error(value)
            if problem is not None:
                raise self.error(2, problem)
            self.framework_files.append(Path(value))
        else:
            self.values[dest] = value

    def take_bare(self, token: str) -> None:
        """Classify a non-option token (cli.md §2); the first rule that applies wins."""
        if token in ACTIONS:
            if self.action is not None:
                raise self.error(4, f"Cannot specify more than one action ('{self.action}' and '{token}').")
            self.action = token
        elif token.endswith("dkms.conf") and os.path.isfile(token):
            self.source_path = Path(token).parent
        elif os.path.isdir(token) and os.path.isfile(os.path.join(token, "dkms.conf")):
            self.source_path = Path(token)
        elif os.path.isfile(token):
            self.archive = Path(token)
        elif not self.module:
            self.bare_words.append(token)
            self.set_module_version(token)
            problem = _not_a_source(token)
            if problem and (token.startswith(_PATH_PREFIXES) or not self.module or self.version is None):
                self.notice(f"Warning: {problem}, so it is read as <module>/<version>.")
        else:
            self.bare_words.append(token)
            text = (
                f"'{token}' is not understood: it is not an action, a source directory, a dkms.conf "
                f"file or an archive, and the module is already set ('{self.module}')"
            )
            self.notice(f"Warning: {text}; ignored.")
            self.strays.append((text, self.notices[-1]))

    def drop_stray_warnings(self) -> None:
        """The warnings of :attr:`strays`, when an error says more (they would only repeat it)."""
        warnings = {id(n) for _t, n in self.strays}
        self.notices = [n for n in self.notices if id(n) not in warnings]

    def unknown_action(self) -> Optional[CommandLineError]:
        """Without an action: the first bare word that is no m/v and no path is a mistyped action."""
        for word in self.bare_words:
            if not word or "/" in word or os.path.lexists(word):
                continue
            self.drop_stray_warnings()
            close = difflib.get_close_matches(word.lower(), ACTIONS, n=1, cutoff=0.6)
            if close:
                return self.error(2, f"Unknown action '{word}' (did you mean {close[0]}?).")
            return self.error(2, f"Unknown action '{word}'.", show_usage=True)
        return None

    def check_strays(self) -> None:
        """A bare token nothing could use is an error, except for status (upstream warns and goes on).

        An action that changes the system must not go on with part of its command line ignored:
        the token may be the value of an option whose value went elsewhere.
        """
        if not self.strays or self.action == "status":
            return
        self.drop_stray_warnings()
        raise self.error(2, f"{self.strays[0][0]}.")

    def invocation(self) -> Invocation:
        values = self.values
        return Invocation(
            action=self.action,
            module=self.module,
            version=self.version,
            kernels=tuple(self.kernels),
            arches=tuple(self.arches),
            all="all" in self.flags,
            all_kernels="all_kernels" in self.flags,
            source_path=self.source_path,
            archive=self.archive,
            conf=_path(values["conf"]) if "conf" in values else None,
            kernel_config=_path(values["kernel_config"]) if "kernel_config" in values else None,
            kernel_source_dir=(_path(values["kernel_source_dir"]) if "kernel_source_dir" in values else None),
            template_kernel=values.get("template_kernel"),
            directives=tuple(self.directives),
            force="force" in self.flags,
            force_version_override="force_version_override" in self.flags,
            binaries_only="binaries_only" in self.flags,
            source_only="source_only" in self.flags,
            rpm_safe_upgrade="rpm_safe_upgrade" in self.flags,
            symlink_modules="symlink_modules" in self.flags,
            no_depmod="no_depmod" in self.flags,
            modprobe_on_install="modprobe_on_install" in self.flags,
            jobs=values.get("jobs"),
            verbose="verbose" in self.flags,
            debug="debug" in self.flags,
            quiet=self.quiet,
            json="json" in self.flags,
            dkms_tree=_path(values["dkms_tree"]) if "dkms_tree" in values else None,
            source_tree=_path(values["source_tree"]) if "source_tree" in values else None,
            install_tree=_path(values["install_tree"]) if "install_tree" in values else None,
            framework_files=tuple(self.framework_files),
            distro=values.get("distro"),
            release=values.get("release"),
            size=values.get("size"),
            media=values.get("media"),
            spec=values.get("spec"),
            legacy_postinst=values.get("legacy_postinst"),
            show_help=self.stopped_at == "show_help",
            show_version=self.stopped_at == "show_version",
            notices=tuple(self.notices),
        )


def _check_arch_count(kernels: Sequence[str], arches: Sequence[str]) -> Optional[str]:
    if len(arches) > 1 and len(arches) != len(kernels):
        return (
            f"{len(arches)} architectures but {len(kernels)} kernel versions were given: if more "
            "than one arch is specified, there must be exactly one per kernel version (1:1)."
        )
    return None


def _post_parse_checks(p: _Parser) -> None:
    """The checks of cli.md §5.1, then the --all ban of §6, in upstream 3.2's order.

    The global checks (8, 1, 2, 3) come first; the ban of ``--all`` (5) is the first check of the
    actions that reject it, before kernel_*'s "exactly one -k" (4).
    """
    all_ = "all" in p.flags
    if "binaries_only" in p.flags and "source_only" in p.flags:
        raise p.error(8, "You have specified both --binaries-only and --source-only; use at most one.")
    problem = _check_arch_count(p.kernels, p.arches)
    if problem is not None:
        raise p.error(1, problem)
    if all_ and p.kernels:
        raise p.error(2, "You cannot specify a kernel version and also --all.")
    if all_ and p.arches:
        raise p.error(3, "You cannot specify an arch and also --all.")
    if all_ and p.action in ALL_BANNED_ACTIONS:
        raise p.error(5, f"The action {p.action} does not support the --all parameter.")
    if "all_kernels" in p.flags and p.kernels:
        raise p.error(2, "You cannot specify a kernel version and also --all-kernels.")
    if "all_kernels" in p.flags and all_:
        raise p.error(2, "--all (every kernel the module is built for) and --all-kernels cannot be combined.")
    if "all_kernels" in p.flags and p.action not in ALL_KERNELS_ACTIONS:
        raise p.error(5, f"The action {p.action} does not support the --all-kernels parameter.")
    if p.action in KERNEL_HOOK_ACTIONS and len(p.kernels) != 1:
        raise p.error(
            4,
            f"The action {p.action} requires exactly one kernel version (-k) on the command line "
            f"({len(p.kernels)} given).",
        )


def prescan_framework_files(argv: Sequence[str]) -> tuple[Path, ...]:
    """The ``--dkmsframework`` files of the command line, in order (framework-conf.md §1).

    Runs the same left-to-right pass as :func:`parse_args` (so a value such as ``-m
    --dkmsframework`` is not mistaken for the option) and stops where it stops (``-h``/``-V``).
    Each file is checked when reached: missing or unreadable → :class:`CommandLineError` exit 2.
    Errors the pass finds before that point (unknown option → 2, second action → 4) are raised
    here too, exactly as :func:`parse_args` would raise them; the post-parse checks are not run.
    """
    parser = _Parser()
    parser.run(argv)
    return tuple(parser.framework_files)


def parse_args(argv: Sequence[str]) -> Invocation:
    """Parse the command line (without the program name) into an :class:`Invocation`.

    Raises :class:`CommandLineError` (a :class:`~pydkms.errors.UsageError`) with the exit code of
    the spec: unknown option 2, second action 4, an option value that starts with ``-`` or a
    ``-j`` that is no job count 2, missing ``--dkmsframework`` file 2 (all when reached); then,
    unless ``-h``/``-V`` stopped the pass: ``--all`` banned 5 (add, build, install, autoinstall,
    match, kernel_*), ``--binaries-only``+``--source-only`` 8, arch count 1, ``--all``+kernel 2,
    ``--all``+arch 3, kernel_* without exactly one ``-k`` 4, then no action: an unknown action 2
    (a bare word that is no m/v and no path) or else 4; last, for every action but status, an
    argument nothing uses 2.
    """
    parser = _Parser()
    parser.run(argv)
    if parser.stopped_at is not None:
        return parser.invocation()
    _post_parse_checks(parser)
    if parser.action is None:
        raise parser.unknown_action() or parser.error(4, "No action specified.", show_usage=True)
    parser.check_strays()
    if "json" in parser.flags and parser.action != "status":
        parser.notice(f"Warning: --json is only supported by the status action; ignored by {parser.action}.")
    return parser.invocation()


# --------------------------------------------------------------------------------------------
# Kernel/arch targets


def pair_kernels_arches(kernels: Sequence[str], arches: Sequence[str]) -> list[tuple[str, Optional[str]]]:
    """Pair kernels with arches by ordinal (cli.md §5.1), without defaults.

    One arch applies to every kernel; no arch gives ``None``; more than one arch whose count
    differs from the kernel count raises exit 1. This is the pairing ``status`` uses for its
    passes (status.md §3); :func:`resolve_targets` uses it after applying defaults.
    """
    problem = _check_arch_count(kernels, arches)
    if problem is not None:
        raise UsageError(1, problem)
    if not arches:
        return [(k, None) for k in kernels]
    if len(arches) == 1:
        return [(k, arches[0]) for k in kernels]
    return list(zip(kernels, arches))


def resolve_targets(
    inv: Invocation,
    *,
    default_kernel: Callable[[], str],
    default_arch: Callable[[str], str],
    built_targets: Optional[Callable[[], list[tuple[str, str]]]] = None,
) -> list[tuple[str, str]]:
    """The (kernel, arch) pairs an action works on (cli.md §5.2–5.3); not for ``status``.

    ``--all`` → ``built_targets()`` (already ordered by the caller; may be empty). No ``-k`` →
    ``[default_kernel()]``. No arch → ``default_arch(first kernel)``, broadcast to every kernel
    (an empty result → exit 12). Then any empty kernel or arch entry → exit 16. A kernel or arch
    that cannot be a directory name of the trees (:mod:`pydkms.names`) → exit 2; kernels are
    checked before the default arch is looked up under ``$install_tree/<first kernel>``.
    """
    if inv.action == "status":
        raise ValueError("status performs no kernel/arch defaulting; use pair_kernels_arches()")
    kernels = list(inv.kernels)
    arches = list(inv.arches)
    if inv.all:
        if built_targets is None:
            raise ValueError("--all needs built_targets")
        targets = built_targets()
        kernels = [k for k, _ in targets]
        arches = [a for _, a in targets]
        if not targets:
            return []
    if not kernels:
        kernels = [default_kernel()]
    for kernel in kernels:
        if kernel:
            check_kernel_name(kernel, "kernel version")
    if not arches:
        arch = default_arch(kernels[0])
        if not arch:
            raise DkmsError(12, f"Could not determine the architecture for kernel {kernels[0]}.")
        arches = [arch]
    for index, kernel in enumerate(kernels):
        if not kernel:
            raise UsageError(16, f"Empty kernel version (entry {index + 1} of the kernel list).")
    for index, arch in enumerate(arches):
        if not arch:
            raise UsageError(16, f"Empty architecture (entry {index + 1} of the arch list).")
        check_kernel_name(arch, "architecture")
    return [(k, a) for k, a in pair_kernels_arches(kernels, arches) if a is not None]
