"""Evaluation of dkms.conf, its /etc/dkms overrides and framework files.

Upstream dkms *sources* these files with bash (spec/dkms-conf.md §2.1). pydkms evaluates the
declarative subset itself (:mod:`.data`), never executing anything, and only falls back to a bash
subprocess that reproduces upstream's protocol exactly (:mod:`.bash`) for files outside that subset.
:func:`evaluate` chooses between them per spec/dkms-conf.md §2.3.

Values are returned as sparse bash-style arrays: ``{"MAKE": {0: "make ..."}, ...}``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, FrozenSet, Optional, Tuple

#: name -> {index: value}; a plain ``X=v`` is element 0.
Arrays = Dict[str, Dict[int, str]]


class EvalMode(enum.Enum):
    """The framework.conf ``conf_evaluation`` setting."""

    AUTO = "auto"
    DATA = "data"
    BASH = "bash"


@dataclass(frozen=True)
class Construct:
    """A place in a file that is outside the data subset."""

    file: Path
    line: int
    text: str  # short description of the construct, e.g. "command substitution $(...)"
    #: nested too deep to be read at all: refused in every mode but ``bash``, never handed to bash
    too_deep: bool = False

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


@dataclass(frozen=True)
class EvalRequest:
    """One evaluation: a chain of files sourced one after another (conf, then overrides)."""

    files: Tuple[Path, ...]
    whitelist: Tuple[str, ...]
    #: shell variables visible while evaluating (kernelver, arch, kernel_source_dir, ...); not exported.
    context: Mapping[str, str]
    #: the process environment the evaluation sees (names not in context/whitelist come from here).
    environ: Mapping[str, str]
    #: DKMS_DIRECTIVE* injections (name, raw value), already filtered to whitelisted names;
    #: applied after every file as ``NAME="VALUE"`` (one expansion, element 0).
    injections: Tuple[Tuple[str, str], ...] = ()
    mode: EvalMode = EvalMode.AUTO
    #: only matters in DATA mode: strict -> OutsideSubsetError; non-strict -> skip with warnings.
    strict: bool = True
    #: seconds one bash process may take (None: ``bash.DEFAULT_TIMEOUT``, 60 s); then
    #: :class:`BashTimeoutError` is raised.
    timeout: Optional[float] = None
    #: values whitelisted names hold before the first file (framework files start from the
    #: built-in defaults); empty for dkms.conf, whose names are all unset first.
    initial: Mapping[str, Mapping[int, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalResult:
    values: Mapping[str, Mapping[int, str]]
    #: "data" or "bash": which evaluator produced ``values``.
    evaluator: str
    #: first construct outside the subset (why bash was used, or what lenient data mode skipped).
    outside: Optional[Construct] = None
    #: human-readable warnings (skipped statements, unknown variables); callers decide to print.
    warnings: Tuple[str, ...] = ()
    #: stderr written by the files when evaluated by bash (callers decide to show it).
    stderr: str = ""
    #: names of context/environment variables the data evaluator read; None when bash was used.
    dependencies: Optional[FrozenSet[str]] = field(default=None)
    #: the (file, line) of the assignment that gave each element its value (name -> index ->
    #: (file, line)), so validation errors can name it; bash names only the file (line 0): the
    #: last file of the chain that changed the element.
    origins: Optional[Mapping[str, Mapping[int, Tuple[Path, int]]]] = field(default=None)


class OutsideSubsetError(Exception):
    """Raised in DATA mode (strict) for a file outside the subset."""

    def __init__(self, construct: Construct) -> None:
        super().__init__(str(construct))
        self.construct = construct


class RefusedConfError(OutsideSubsetError):
    """Raised in every mode for plain settings that neither evaluator may read.

    Upstream's protocol re-reads the values after pathname expansion as shell code, so file names
    that a glob in a value matches could run as code. The data evaluator expands them itself and
    refuses when the result would be code or cannot be reproduced exactly; bash is not used instead.
    """


class TooDeepError(OutsideSubsetError):
    """A file nests quotes and expansions too deep to be read (in every mode but ``bash``)."""


class BashEvaluationError(Exception):
    """bash could not be run, or did not complete the protocol."""


class BashTimeoutError(BashEvaluationError):
    """The files did not finish within the time limit (the process group was killed)."""


from .protocol import DKMS_CONF_WHITELIST, FRAMEWORK_KEYS, evaluate, evaluate_many  # noqa: E402

__all__ = [
    "DKMS_CONF_WHITELIST",
    "FRAMEWORK_KEYS",
    "Arrays",
    "BashEvaluationError",
    "BashTimeoutError",
    "Construct",
    "EvalMode",
    "EvalRequest",
    "EvalResult",
    "OutsideSubsetError",
    "RefusedConfError",
    "TooDeepError",
    "evaluate",
    "evaluate_many",
]
