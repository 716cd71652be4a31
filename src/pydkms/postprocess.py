"""Post-processing of each built module before it is staged: strip -> sign -> compress.

The pipeline runs on the staged copy of every module (build-install.md §1 step 14). Each step is
a :class:`Stage`: ``prepare`` once per (K, A) per process (signing prints its summary there),
``apply`` per module. Signing is :mod:`pydkms.signing`, compression :mod:`pydkms.compress`.
"""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Protocol, Sequence, Tuple

from . import compress, runner, signing
from .distro import Distro
from .framework import Settings
from .kernel import Kernel
from .moduleconf import ModuleRecord
from .output import Console


@dataclass(frozen=True)
class StageInput:
    module: Path  # the staged file, modified in place or replaced
    record: ModuleRecord
    kernel: Kernel
    #: compression suffix of the target kernel ('', '.gz', '.xz', '.zst')
    suffix: str
    #: environment of the build (CC etc.), to pick the right tools
    build_env: dict[str, str]


class Stage(Protocol):
    name: str

    def prepare(self, kernel: Kernel, console: Console) -> None:
        """Once per (K, A) per process, before the first build for it."""

    def apply(self, item: StageInput, console: Console) -> Path:
        """Process the file; return the path of the result (may differ, e.g. ``.ko.xz``)."""


class StripStage:
    """``strip -g`` (``llvm-strip -g`` when CC is clang) unless STRIP[i] says no. Failure is ignored."""

    name = "strip"

    def prepare(self, kernel: Kernel, console: Console) -> None:
        return None

    def apply(self, item: StageInput, console: Console) -> Path:
        if item.record.strip:
            tool = "llvm-strip" if item.build_env.get("CC") == "clang" else "strip"
            try:
                runner.run(
                    [tool, "-g", str(item.module)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            except Exception:  # a missing strip never fails a build
                pass
        return item.module


class SignStage:
    """Sign with the (K, A)'s plan (build-install.md §3.4); a failing tool leaves the module unsigned."""

    name = "sign"

    def __init__(self, settings: Settings, distro: Distro) -> None:
        self.settings = settings
        self.distro = distro
        self._plans: Dict[Tuple[str, str], signing.SigningPlan] = {}
        self._lock = threading.Lock()

    def prepare(self, kernel: Kernel, console: Console) -> None:
        with self._lock:
            if (kernel.release, kernel.arch) in self._plans:
                return
            plan = signing.plan_for(self.settings, self.distro, kernel, console)
            signing.report_off(plan, console)
            self._plans[(kernel.release, kernel.arch)] = plan

    def plan(self, kernel: Kernel) -> Optional[signing.SigningPlan]:
        return self._plans.get((kernel.release, kernel.arch))

    def apply(self, item: StageInput, console: Console) -> Path:
        plan = self.plan(item.kernel)
        if plan is None:
            self.prepare(item.kernel, console)
            plan = self.plan(item.kernel)
        if plan is None or not plan.enabled:
            return item.module
        name = f"{item.record.built_path}.ko"
        console.info(f"Signing module {name}")
        problem = signing.sign_module(plan, item.module)
        if problem:
            console.warn(f"Failed to sign module '{name}'! It stays unsigned.")
            console.notice(problem)
        return item.module


class CompressStage:
    """Compress to the kernel's suffix (build-install.md §6); a failing tool leaves the ``.ko``."""

    name = "compress"

    def __init__(self, settings: Settings) -> None:
        self.compressor = compress.Compressor(settings)

    def prepare(self, kernel: Kernel, console: Console) -> None:
        return None

    def apply(self, item: StageInput, console: Console) -> Path:
        if not item.suffix:
            return item.module
        result = self.compressor.compress(item.module, item.suffix, console.warn)
        if result.error:
            console.warn(f"Compressing {item.module.name} failed ({result.error}); staging it uncompressed.")
        return result.path


class PostProcessor:
    """The ordered stages: strip, sign, compress."""

    def __init__(self, stages: Optional[Sequence[Stage]] = None) -> None:
        self._stages: List[Stage] = list(stages) if stages is not None else [StripStage()]

    @classmethod
    def default(cls, settings: Settings, distro: Distro) -> PostProcessor:
        """The pipeline every build uses, configured from framework.conf and the distro family."""
        return cls([StripStage(), SignStage(settings, distro), CompressStage(settings)])

    def stages(self) -> List[Stage]:
        return list(self._stages)

    def add_stage(self, stage: Stage) -> None:
        self._stages.append(stage)

    def prepare(self, kernel: Kernel, console: Console) -> None:
        for stage in self._stages:
            stage.prepare(kernel, console)

    def process(self, item: StageInput, console: Console) -> Path:
        path = item.module
        for stage in self._stages:
            path = stage.apply(
                StageInput(path, item.record, item.kernel, item.suffix, item.build_env), console
            )
        return path
