"""The single entry point for running external programs.

Every subprocess pydkms starts goes through :func:`run` (or :func:`run_logged` for steps whose
output belongs in make.log). It never raises for a non-zero exit by default; it turns "program not
found" into a :class:`~pydkms.errors.DkmsError` with a readable hint, and with ``--debug`` it traces
every command line on stderr.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Optional, Union

from .errors import DkmsError

StrPath = Union[str, "os.PathLike[str]"]

#: Set by the CLI from ``--debug``: trace every command on stderr.
DEBUG = False


#: process groups of the logged commands running now (make and what it starts)
_running: set[int] = set()
_running_lock = threading.Lock()


def kill_running() -> None:
    """Kill every logged command still running, with all it started: dkms is being interrupted.

    Logged commands run in their own process group, so a make (and its compilers) never outlives
    the dkms that holds the tree lock for it, also when a build thread of the planner started it.
    """
    with _running_lock:
        groups = list(_running)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


def _trace(argv: Sequence[str], cwd: Optional[StrPath]) -> None:
    if DEBUG:
        where = f" (in {cwd})" if cwd else ""
        print(f"+ {shlex.join(argv)}{where}", file=sys.stderr)


def which(program: str, path: Optional[str] = None) -> Optional[str]:
    """Return the full path of ``program`` on ``PATH`` (or ``path``), or None."""
    return shutil.which(program, path=path)


def run(
    argv: Sequence[StrPath],
    *,
    cwd: Optional[StrPath] = None,
    env: Optional[Mapping[str, str]] = None,
    input: Optional[bytes] = None,
    capture: bool = True,
    stdout: Optional[Union[int, IO[bytes]]] = None,
    stderr: Optional[Union[int, IO[bytes]]] = None,
    check: bool = False,
    timeout: Optional[float] = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` and return the completed process.

    ``capture`` collects stdout and stderr (bytes) unless ``stdout``/``stderr`` are given.
    A missing program raises DkmsError(1) naming it; ``check`` raises DkmsError(1) with the
    command line and its exit status on failure.
    """
    args = [os.fspath(a) for a in argv]
    _trace(args, cwd)
    out: Optional[Union[int, IO[bytes]]] = stdout
    err: Optional[Union[int, IO[bytes]]] = stderr
    if capture:
        out = subprocess.PIPE if stdout is None else stdout
        err = subprocess.PIPE if stderr is None else stderr
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            input=input,
            stdout=out,
            stderr=err,
            stdin=None if input is not None else subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        if cwd is not None and not Path(cwd).is_dir():
            raise DkmsError(15, f"Cannot change into directory {cwd}.") from exc
        raise DkmsError(
            1,
            f"Program '{args[0]}' was not found.",
            hint="Install the package that provides it (see the README's set-up command).",
        ) from exc
    except OSError as exc:  # not executable, not a program (ENOEXEC), …
        raise DkmsError(1, f"Program '{args[0]}' cannot be executed: {exc.strerror or exc}.") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or b"").decode(errors="replace").strip() if capture else ""
        raise DkmsError(
            1,
            f"Command failed with exit status {proc.returncode}: {shlex.join(args)}"
            + (f"\n{detail}" if detail else ""),
        )
    return proc


def run_logged(
    command: str,
    *,
    description: str,
    log: Path,
    cwd: StrPath,
    env: Optional[Mapping[str, str]] = None,
) -> int:
    """Run a shell command line with ``bash -c``, appending a block to ``log`` (spec/tree.md §7.2).

    The block is: empty line, description, ``# command: ...``, combined output, empty line,
    ``# exit code: N``, ``# elapsed time: HH:MM:SS``, and a line of 64 dashes.
    Returns the exit status. A working directory that cannot be entered gives DkmsError(15).
    """
    if not Path(cwd).is_dir():
        raise DkmsError(15, f"Cannot change into directory {cwd}.")
    _trace(["bash", "-c", command], cwd)
    with open(log, "ab") as fh:
        fh.write(f"\n{description}\n# command: {command}\n".encode("utf-8", "surrogateescape"))
        fh.flush()
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                ["bash", "-c", command],
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise DkmsError(
                1,
                f"Program 'bash' cannot be started: {exc.strerror or exc}.",
                hint="Install the package that provides it (see the README's set-up command).",
            ) from exc
        with _running_lock:
            _running.add(proc.pid)
        try:
            proc.wait()
        except BaseException:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
            raise
        finally:
            with _running_lock:
                _running.discard(proc.pid)
        elapsed = int(time.monotonic() - start)
        fh.write(
            f"\n# exit code: {proc.returncode}\n"
            f"# elapsed time: {elapsed // 3600:02d}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}\n"
            f"{'-' * 64}\n".encode()
        )
    return proc.returncode


def start(
    argv: Sequence[StrPath],
    *,
    stdin: Union[int, IO[bytes]],
    stdout: Union[int, IO[bytes]],
    stderr: Union[int, IO[bytes]],
) -> subprocess.Popen[bytes]:
    """Start ``argv`` without waiting for it, for a filter that data streams through.

    A decompressor reading an archive into a pipe, or a compressor writing one from a pipe: the
    caller reads or writes the pipes and must ``wait()`` for the process (and kill it when it gives
    up early). A missing program raises DkmsError(1) naming it, like :func:`run`.
    """
    args = [os.fspath(a) for a in argv]
    _trace(args, None)
    try:
        return subprocess.Popen(args, stdin=stdin, stdout=stdout, stderr=stderr)
    except FileNotFoundError as exc:
        raise DkmsError(
            1,
            f"Program '{args[0]}' was not found.",
            hint="Install the package that provides it (see the README's set-up command).",
        ) from exc
    except OSError as exc:
        raise DkmsError(1, f"Program '{args[0]}' cannot be executed: {exc.strerror or exc}.") from exc
