"""Writing dkms.conf texts to files for the evaluator tests."""

from __future__ import annotations

from pathlib import Path
from typing import List, Union


def write_confs(tmp_path: Path, *texts: Union[str, bytes]) -> List[Path]:
    """``f0.conf``, ``f1.conf``, ... holding the given texts (bytes kept exactly)."""
    files = []
    for k, t in enumerate(texts):
        p = tmp_path / f"f{k}.conf"
        p.write_bytes(t.encode() if isinstance(t, str) else t)
        files.append(p)
    return files
