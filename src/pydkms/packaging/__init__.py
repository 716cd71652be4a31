"""Archives and packages of DKMS modules.

:mod:`.archive` reads and writes DKMS archives (mktarball, ldtarball, ``add FILE``) safely and in
one streaming pass; :mod:`.compression` recognises and streams their compressions. Both use
nothing of pydkms but :mod:`pydkms.errors` and :mod:`pydkms.runner`.
"""

from __future__ import annotations

from .archive import (
    DEFAULT_LIMITS,
    ArchiveWriter,
    ExtractedArchive,
    KernelBuild,
    Layout,
    Limits,
    extract,
    write,
)
from .compression import Compression

__all__ = [
    "DEFAULT_LIMITS",
    "ArchiveWriter",
    "Compression",
    "ExtractedArchive",
    "KernelBuild",
    "Layout",
    "Limits",
    "extract",
    "write",
]
