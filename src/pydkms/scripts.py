"""The dkms.conf script directives (spec/dkms-conf.md §8)."""

from __future__ import annotations

import glob
import os
import shlex
from pathlib import Path
from typing import Dict, List, Optional

from . import runner
from .errors import DkmsError
from .output import Console

BUILD_SCRIPTS = ("pre_build", "post_build")


def _split_value(value: str, base: Path) -> List[str]:
    """Split on whitespace without quote handling; expand globs like an unquoted shell word."""
    words: List[str] = []
    for word in value.split():
        if any(c in word for c in "*?["):
            pattern = word if os.path.isabs(word) else str(base / word)
            matches = sorted(glob.glob(pattern))
            if matches:
                words.extend(m if os.path.isabs(word) else os.path.relpath(m, base) for m in matches)
                continue
        words.append(word)
    return words


def logged_step(
    console: Console, description: str, command: str, *, log: Path, cwd: Path, env: Dict[str, str]
) -> int:
    """Run a shell command whose output belongs in ``log``, showing one progress line for it."""
    with console.step(description, command) as step:
        status = runner.run_logged(command, description=description, log=log, cwd=cwd, env=env)
        if status:
            step.fail(status, command)
    return status


def script_path(value: str, base: Path) -> Path:
    return base / value.split()[0]


def is_runnable(value: str, base: Path) -> bool:
    path = script_path(value, base)
    return path.is_file() and os.access(path, os.X_OK)


def run_script(
    kind: str,
    value: str,
    base: Path,
    console: Console,
    env: Dict[str, str],
    log: Optional[Path] = None,
) -> int:
    """Run one script directive; returns its exit status (0 when skipped).

    ``kind`` is one of pre_build, post_build, pre_install, post_install, post_add, post_remove.
    Build scripts run as ``cd <base> && <base>/<value>`` through bash, logged to ``log``; the
    others are executed directly with their output shown.
    """
    if not value.strip():
        return 0
    if not is_runnable(value, base):
        console.info("")
        console.warn(f"The {kind} script {script_path(value, base)} is not executable; it is skipped.")
        return 0
    if kind in BUILD_SCRIPTS and log is not None:
        return logged_step(
            console,
            f"Running the {kind} script",
            f"cd {shlex.quote(f'{base}/')} && {shlex.quote(str(base))}/{value}",
            log=log,
            cwd=base,
            env=env,
        )
    console.info(f"Running the {kind} script:")
    env = {**env, "PWD": str(base)}  # the logical directory, as after upstream's `cd`
    argv = _split_value(value, base)
    argv[0] = str(base / argv[0])
    try:
        proc = runner.run(argv, cwd=base, env=env, capture=False)
    except DkmsError as exc:
        console.warn(f"The {kind} script could not be started: {exc.message}")
        return 1
    return proc.returncode
