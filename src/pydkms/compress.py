"""Module compression the target kernel can load (spec/build-install.md §6).

The suffix comes from the kernel's installed modules (:func:`pydkms.kernel.module_suffix`); the
tools are ``gzip``, ``xz`` and ``zstd`` with the ``compress_*_opts`` of framework.conf, ``-f``
appended. The kernel's xz decoder accepts only CRC32 (or no) integrity checks, so xz options that
set no check, or another one, get ``--check=crc32`` appended [fix D-20].
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from . import runner
from .errors import DkmsError
from .framework import Settings

#: suffix -> program
TOOLS = {".gz": "gzip", ".xz": "xz", ".zst": "zstd"}
#: xz integrity checks the kernel's decoder accepts
_XZ_LOADABLE_CHECKS = ("crc32", "none")


@dataclass(frozen=True)
class CompressResult:
    """The file to stage: the compressed one, or the untouched ``.ko`` with the reason it failed."""

    path: Path
    error: Optional[str] = None


def suffix_of(path: Path) -> str:
    """'.gz', '.xz', '.zst' for a compressed module file name, else ''."""
    for sfx in TOOLS:
        if path.name.endswith(".ko" + sfx):
            return sfx
    return ""


def _xz_checks(words: List[str]) -> List[str]:
    """The values of every ``--check=X``, ``--check X``, ``-C X`` and ``-CX`` in ``words``."""
    found: List[str] = []
    for i, w in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if w.startswith("--check="):
            found.append(w[len("--check=") :])
        elif w in ("--check", "-C"):
            found.append(nxt)
        elif w.startswith("-C"):
            found.append(w[2:])
    return found


def xz_options(opts: str) -> Tuple[List[str], Optional[str]]:
    """The xz option words, with ``--check=crc32`` appended when needed, and why (or None)."""
    words = opts.split()
    checks = _xz_checks(words)
    if not checks:
        return [*words, "--check=crc32"], (
            f"compress_xz_opts ('{opts}') sets no integrity check; adding --check=crc32, the only one "
            "the kernel's xz decoder accepts."
        )
    if checks[-1] not in _XZ_LOADABLE_CHECKS:
        return [*words, "--check=crc32"], (
            f"compress_xz_opts ('{opts}') selects --check={checks[-1]}, which the kernel cannot load; "
            "using --check=crc32."
        )
    return words, None


def command(settings: Settings, suffix: str) -> Tuple[List[str], Optional[str]]:
    """``[tool, opts..., -f]`` for ``suffix`` (the file is appended by the caller), and a warning."""
    tool = TOOLS[suffix]
    warning: Optional[str] = None
    if suffix == ".gz":
        words = settings.compress_gzip_opts.split()
    elif suffix == ".xz":
        words, warning = xz_options(settings.compress_xz_opts)
    else:
        words = settings.compress_zstd_opts.split()
    return [tool, *words, "-f"], warning


def compress_file(path: Path, suffix: str, argv: List[str]) -> CompressResult:
    """Run ``argv + [path]``; the result is ``path<suffix>``. On failure ``path`` is kept as it was."""
    out = path.with_name(path.name + suffix)
    try:
        proc = runner.run([*argv, str(path)])
    except DkmsError as exc:
        return CompressResult(path, exc.message)
    if proc.returncode == 0 and out.is_file():
        if path.exists():
            path.unlink()  # zstd without --rm, gzip/xz with -k
        return CompressResult(out)
    detail = (proc.stderr or b"").decode(errors="replace").strip()
    if path.exists():
        try:
            out.unlink()
        except OSError:
            pass
    else:
        return CompressResult(out, f"{argv[0]} removed {path} but left no usable {out.name}")
    why = (
        f"{argv[0]} exited with status {proc.returncode}" if proc.returncode else f"{argv[0]} wrote no {out}"
    )
    return CompressResult(path, why + (f": {detail}" if detail else ""))


def decompress_to(path: Path, dest: Path) -> None:
    """Write the uncompressed contents of module file ``path`` to ``dest`` (tool -dc)."""
    sfx = suffix_of(path)
    if not sfx:
        raise ValueError(f"{path} is not compressed")
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as fh:
        proc = runner.run([TOOLS[sfx], "-dc", str(path)], stdout=fh)
    if proc.returncode != 0:
        detail = (proc.stderr or b"").decode(errors="replace").strip()
        raise DkmsError(
            1, f"Could not decompress {path}: {TOOLS[sfx]} exited with status {proc.returncode}. {detail}"
        )


class Compressor:
    """The compression commands of one invocation; an option warning is given once per suffix."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._argv: Dict[str, List[str]] = {}

    def argv(self, suffix: str, warn: Callable[[str], None]) -> List[str]:
        if suffix not in self._argv:
            argv, warning = command(self.settings, suffix)
            if warning:
                warn(warning)
            self._argv[suffix] = argv
        return self._argv[suffix]

    def compress(self, path: Path, suffix: str, warn: Callable[[str], None]) -> CompressResult:
        return compress_file(path, suffix, self.argv(suffix, warn))
