"""One invocation's settings, tree, caches and output, shared by every action."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Mapping, Optional, Set, Tuple

from . import distro as distro_mod
from .framework import Settings
from .kernel import Kernel
from .moduleconf import ConfReader, ModuleConf
from .output import Console
from .tree import Tree

if TYPE_CHECKING:
    from .postprocess import PostProcessor

#: variables removed from the environment at start-up (build-install.md §2.2)
SCRUBBED_ENV = ("CC", "CXX", "CFLAGS", "CXXFLAGS", "LDFLAGS")


@dataclass(frozen=True)
class Options:
    """Per-invocation options that change how actions behave."""

    force: bool = False
    force_version_override: bool = False
    no_depmod: bool = False
    rpm_safe_upgrade: bool = False
    kernel_source_dir: Optional[Path] = None
    kernel_config: Optional[Path] = None
    conf: Optional[Path] = None
    directives: Tuple[Tuple[str, str], ...] = ()
    #: kernel_prerm/kernel_preinst: write depmod-pending markers instead of running depmod
    delayed_depmod: bool = False


@dataclass
class Session:
    """Everything an action needs: settings, the tree, the distro family, output, caches."""

    settings: Settings
    options: Options = field(default_factory=Options)
    console: Console = field(default_factory=Console)
    distro: Optional[distro_mod.Distro] = None
    #: strip -> sign -> compress; built from the settings when not given
    postprocessor: Optional[PostProcessor] = None
    #: build in $dkms_tree/m/v/.build-K-A instead of the shared build/ (concurrent builds of one m/v)
    private_build: bool = False
    #: where deferred depmod requests go (the planner runs depmod once per kernel at the end)
    depmod_sink: Optional[Callable[[str, str], None]] = None
    _kernels: Dict[Tuple[str, str], Kernel] = field(default_factory=dict)
    _prepared: Set[Tuple[str, str]] = field(default_factory=set)
    _confs: Optional[ConfReader] = None
    _announced_directives: bool = False
    #: the skipped invalid names already reported (shared by the copies the planner makes)
    _reported_names: Set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.distro is None:
            self.distro = distro_mod.detect()

    @property
    def pipeline(self) -> PostProcessor:
        """strip -> sign -> compress, built on first use (status never needs it)."""
        if self.postprocessor is None:
            from .postprocess import PostProcessor

            self.postprocessor = PostProcessor.default(self.settings, self.family)
        return self.postprocessor

    @property
    def family(self) -> distro_mod.Distro:
        assert self.distro is not None
        return self.distro

    @property
    def tree(self) -> Tree:
        s = self.settings
        return Tree(s.dkms_tree, s.source_tree, s.install_tree, report=self.report_skipped)

    def report_skipped(self, text: str) -> None:
        """A directory of the trees skipped because its name is invalid: one warning per invocation."""
        if text not in self._reported_names:
            self._reported_names.add(text)
            self.console.warn(text)

    @property
    def addon_modules_dir(self) -> str:
        return os.environ.get("ADDON_MODULES_DIR", "")

    @property
    def confs(self) -> ConfReader:
        if self._confs is None:
            s = self.settings
            self._confs = ConfReader(
                etc_dir=s.etc_dir,
                mode=s.conf_evaluation,
                distro=self.family,
                base_context={
                    "dkms_tree": str(s.dkms_tree),
                    "source_tree": str(s.source_tree),
                    "install_tree": str(s.install_tree),
                    "tmp_location": str(s.tmp_location),
                },
                directives=self.options.directives,
                conf_override=self.options.conf,
                addon_modules_dir=self.addon_modules_dir,
            )
        return self._confs

    def kernel(self, release: str, arch: str) -> Kernel:
        key = (release, arch)
        k = self._kernels.get(key)
        if k is None:
            k = Kernel.resolve(
                release,
                arch,
                self.settings.install_tree,
                self.options.kernel_source_dir,
                self.options.kernel_config,
            )
            self._kernels[key] = k
        return k

    def conf_file(self, m: str, v: str) -> Path:
        """The dkms.conf used for every evaluation of m/v (``-c`` wins)."""
        return self.confs.conf_path(self.tree.source_link(m, v))

    def read_conf(
        self, m: str, v: str, kernel: Kernel, *, strict: bool, conf: Optional[Path] = None
    ) -> ModuleConf:
        self.announce_directives()
        return self.confs.read(
            m,
            v,
            kernel,
            conf if conf is not None else self.conf_file(m, v),
            strict=strict,
            report=self.console,
        )

    def announce_directives(self) -> None:
        """``--directive`` values are announced once per invocation on stdout."""
        if self._announced_directives:
            return
        self._announced_directives = True
        for name, value in self.options.directives:
            self.console.info(f'DIRECTIVE: {name}="{value}"')

    def command_env(self, extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
        """Environment of commands dkms starts: its own plus exported ``--directive`` values."""
        env = dict(os.environ)
        for name, value in self.options.directives:
            env[name] = value
        if extra:
            env.update(extra)
        return env

    def is_prepared(self, release: str, arch: str) -> bool:
        """Whether (K, A) was prepared (headers checked, signing set up) in this process."""
        return (release, arch) in self._prepared

    def mark_prepared(self, release: str, arch: str) -> None:
        self._prepared.add((release, arch))
