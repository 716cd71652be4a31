"""POSIX extended regular expressions as bash's ``[[ s =~ re ]]`` uses them (unanchored search).

Python's ``re`` agrees with POSIX ERE for the patterns dkms.conf files use, except for bracket
character classes (``[[:digit:]]``), GNU word anchors and a few escapes; those are translated here.
"""

from __future__ import annotations

import functools
import re
from typing import Optional, Pattern

#: the POSIX bracket classes as Python character-set bodies (the bash glob emulation adds its own)
POSIX_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "blank": " \\t",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": " \\t\\n\\v\\f\\r",
    "upper": "A-Z",
    "xdigit": "0-9A-Fa-f",
}


def _translate(pattern: str) -> str:
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "[":
            j = i + 1
            body = []
            if j < n and pattern[j] == "^":
                body.append("^")
                j += 1
            if j < n and pattern[j] == "]":
                body.append("\\]")
                j += 1
            closed = False
            while j < n:
                ch = pattern[j]
                if ch == "[" and j + 1 < n and pattern[j + 1] in ":.=":
                    kind = pattern[j + 1]
                    end = pattern.find(kind + "]", j + 2)
                    if end < 0:
                        raise ValueError("unterminated bracket class")
                    name = pattern[j + 2 : end]
                    if kind == ":":
                        if name not in POSIX_CLASSES:
                            raise ValueError(f"unknown class [:{name}:]")
                        body.append(POSIX_CLASSES[name])
                    else:
                        body.append(re.escape(name))
                    j = end + 2
                    continue
                if ch == "]":
                    closed = True
                    break
                if ch == "\\":
                    body.append("\\\\")
                elif ch == "[":
                    body.append("\\[")
                else:
                    body.append(ch)
                j += 1
            if not closed:
                raise ValueError("unterminated bracket expression")
            out.append("[" + "".join(body) + "]")
            i = j + 1
            continue
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if nxt == "<":
                out.append(r"\b(?=\w)")
            elif nxt == ">":
                out.append(r"\b(?<=\w)")
            elif nxt.isalnum() and nxt not in "bBwWsS" and not nxt.isdigit():
                out.append(re.escape(nxt))
            else:
                out.append(c + nxt)
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=512)
def compile_ere(pattern: str) -> Optional[Pattern[str]]:
    """Compile a POSIX ERE; None if it is invalid."""
    try:
        return re.compile(_translate(pattern))
    except (ValueError, re.error):
        return None


def ere_search(pattern: str, text: str) -> Optional[bool]:
    """True/False like bash ``=~``; None for an invalid pattern."""
    rx = compile_ere(pattern)
    if rx is None:
        return None
    return rx.search(text) is not None
