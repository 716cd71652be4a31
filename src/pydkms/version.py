"""Version comparisons used by dkms.

:func:`ver` is upstream's padded comparison key (spec/dkms-conf.md §9), kept bug-for-bug: runs of
four or more digits compare wrongly (defects.md P-11). :func:`version_sort_key` is GNU
``sort -V``-style ordering, used where upstream pipes through ``sort -V``.
"""

from __future__ import annotations

import re
from typing import List, Tuple, Union

_RUNS = re.compile(r"\d+|\D+")


def ver(s: str) -> str:
    """Upstream's VER(): pad every run of 1 or 2 digits to 3 digits, drop spaces.

    >>> ver("6.1.0-13-amd64")
    '006.001.000-013-amd064'
    """
    out = []
    for word in s.split(" "):  # a blank separates digit runs, then disappears
        for run in _RUNS.findall(word):
            if run[0].isdigit() and len(run) < 3:
                run = run.rjust(3, "0")
            out.append(run)
    return "".join(out)


def obsolete_key(s: str) -> str:
    """OBSOLETE_BY comparison key: VER() where every '-' acts only as a separator and is dropped."""
    return ver(s.replace("-", " ")).replace(" ", "")


def ver_greater(a: str, b: str) -> bool:
    """True if VER(a) > VER(b) bytewise."""
    return ver(a).encode() > ver(b).encode()


_Part = Tuple[int, Union[int, str]]


def _char_order(c: str) -> int:
    # dpkg/sort -V ordering of non-digit characters: '~' sorts before everything, letters before others.
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def version_sort_key(s: str) -> List[_Part]:
    """A key that orders strings like ``sort -V`` (natural version order)."""
    key: List[_Part] = []
    for run in _RUNS.findall(s):
        if run.isdigit():
            key.append((1, int(run)))
        else:
            key.extend((0, _char_order(c)) for c in run)
            key.append((0, 0))
    key.append((0, 0))  # end of string sorts after '~' and before everything else
    return key
