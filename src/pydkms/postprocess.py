"""Post-processing of each built module before it is staged: strip -> sign -> compress.

The pipeline runs on the staged copy of every module (build-install.md §1 step 14). Stripping
is implemented here. Signing and compression are the next stages of the same pipeline: they plug
in as :class:`Stage` objects (see :meth:`PostProcessor.stages`) and are delivered separately.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import List, Protocol

from . import runner
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


class PostProcessor:
    """The ordered stages. Later issues append signing and compression stages."""

    def __init__(self) -> None:
        self._stages: List[Stage] = [StripStage()]

    @classmethod
    def default(cls, settings: Settings, distro: Distro) -> PostProcessor:
        """The pipeline every build uses, configured from framework.conf and the distro family."""
        return cls()

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
