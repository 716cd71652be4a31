"""Bash pattern matching, emulated for the data evaluator (never starts a process).

Two uses, both with ``shopt -s extglob`` as in upstream dkms:

* ``${NAME#pattern}``-style removal (:func:`remove_match`);
* pathname expansion of unquoted words in upstream's echo step (:func:`expand_pathname`).

Patterns are strings in bash's *escaped* form: a backslash makes the next character literal (quoted
characters of the source are backslash-escaped by the caller). Everything this module cannot
reproduce exactly raises :class:`Unsupported` so that the caller can fall back to bash.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import List, Optional, Sequence, Tuple, Union

from ..posixre import POSIX_CLASSES


class Unsupported(Exception):
    """The pattern (or its subject) uses something this emulation does not reproduce exactly."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


#: bash also knows [:ascii:] and [:word:] in patterns
_CLASSES = {**POSIX_CLASSES, "ascii": "\\x00-\\x7f", "word": "0-9A-Za-z_"}

_EXT_OPS = "?*+@!"


def has_magic(pat: str, extglob: bool = True) -> bool:
    """Whether bash would attempt pathname expansion on ``pat`` (bash's ``unquoted_glob_pattern_p``)."""
    open_bracket = False
    i, n = 0, len(pat)
    while i < n:
        c = pat[i]
        if c == "\\":
            i += 2
            continue
        if c in "*?":
            return True
        if c == "[":
            open_bracket = True
        elif c == "]":
            if open_bracket:
                return True
        elif c == "/":
            open_bracket = False
        elif extglob and c in "+@!" and i + 1 < n and pat[i + 1] == "(":
            return True
        i += 1
    return False


# A parsed pattern element:
#   ("lit", char) | ("star",) | ("any",) | ("set", regex_class_text, members_or_None, negated)
#   | ("ext", op, [alternatives...])  where each alternative is a list of elements
Element = Tuple[object, ...]


class _PatternParser:
    def __init__(self, pat: str) -> None:
        self.p = pat
        self.n = len(pat)

    def parse(self) -> List[Element]:
        elems, i = self._seq(0, top=True)
        assert i == self.n
        return elems

    def _seq(self, i: int, top: bool) -> Tuple[List[Element], int]:
        p, n = self.p, self.n
        out: List[Element] = []
        while i < n:
            c = p[i]
            if not top and c in "|)":
                return out, i
            if c == "\\":
                if i + 1 >= n:
                    raise Unsupported("pattern ending in a backslash")
                out.append(("lit", p[i + 1]))
                i += 2
                continue
            if c in _EXT_OPS and i + 1 < n and p[i + 1] == "(":
                if c == "!":
                    raise Unsupported("extglob !(...) pattern")
                alts: List[List[Element]] = []
                j = i + 2
                while True:
                    alt, j = self._seq(j, top=False)
                    alts.append(alt)
                    if j >= n:
                        raise Unsupported("unterminated extglob pattern")
                    if p[j] == ")":
                        j += 1
                        break
                    j += 1  # '|'
                out.append(("ext", c, alts))
                i = j
                continue
            if c == "*":
                out.append(("star",))
                i += 1
                continue
            if c == "?":
                out.append(("any",))
                i += 1
                continue
            if c == "[":
                res = self._bracket(i)
                if res is None:
                    out.append(("lit", "["))
                    i += 1
                else:
                    elem, i = res
                    out.append(elem)
                continue
            out.append(("lit", c))
            i += 1
        return out, i

    def _bracket(self, i: int) -> Optional[Tuple[Element, int]]:
        """Parse ``[...]`` at ``i``; None when there is no closing bracket (then '[' is literal)."""
        p, n = self.p, self.n
        j = i + 1
        negated = False
        if j < n and p[j] in "!^":
            negated = True
            j += 1
        items: List[Tuple[str, str]] = []  # ("c", char) | ("class", name)
        first = True
        while True:
            if j >= n:
                return None
            c = p[j]
            if c == "]" and not first:
                j += 1
                break
            first = False
            if c == "[" and j + 1 < n and p[j + 1] in ":=.":
                kind = p[j + 1]
                end = p.find(kind + "]", j + 2)
                if end < 0:
                    items.append(("c", "["))
                    j += 1
                    continue
                if kind != ":":
                    raise Unsupported("equivalence class or collating symbol in a bracket expression")
                name = p[j + 2 : end]
                if name not in _CLASSES:
                    raise Unsupported(f"character class [:{name}:]")
                items.append(("class", name))
                j = end + 2
                continue
            if c == "\\":
                if j + 1 >= n:
                    return None
                items.append(("e", p[j + 1]))
                j += 2
                continue
            items.append(("c", c))
            j += 1
        # ranges
        parts: List[str] = []
        members: Optional[List[str]] = []
        k = 0
        while k < len(items):
            kind, val = items[k]
            if kind == "class":
                parts.append(_CLASSES[val])
                members = None
                k += 1
                continue
            if k + 2 < len(items) and items[k + 1] == ("c", "-") and items[k + 2][0] in ("c", "e"):
                lo, hi = val, items[k + 2][1]
                if ord(lo) > 127 or ord(hi) > 127:
                    raise Unsupported("non-ASCII range in a bracket expression")
                if ord(lo) > ord(hi):
                    raise Unsupported("reversed range in a bracket expression")
                parts.append(re.escape(lo) + "-" + re.escape(hi))
                if members is not None:
                    if ord(hi) - ord(lo) > 16:
                        members = None
                    else:
                        members.extend(chr(x) for x in range(ord(lo), ord(hi) + 1))
                k += 3
                continue
            if ord(val) > 127:
                raise Unsupported("non-ASCII character in a bracket expression")
            parts.append(re.escape(val))
            if members is not None:
                members.append(val)
            k += 1
        cls = "".join(parts)
        if not cls:
            raise Unsupported("empty bracket expression")
        mem: Optional[Tuple[str, ...]] = None
        if members is not None and not negated:
            mem = tuple(sorted(set(members)))
        return ("set", cls, mem, negated), j


def _to_regex(elems: Sequence[Element]) -> str:
    out: List[str] = []
    for e in elems:
        kind = e[0]
        if kind == "lit":
            out.append(re.escape(str(e[1])))
        elif kind == "star":
            out.append(".*")
        elif kind == "any":
            out.append(".")
        elif kind == "set":
            out.append(("[^" if e[3] else "[") + str(e[1]) + "]")
        else:  # ext
            alts = e[2]
            assert isinstance(alts, list)
            body = "|".join(_to_regex(a) for a in alts)
            suffix = {"?": "?", "*": "*", "+": "+", "@": ""}[str(e[1])]
            out.append("(?:" + body + ")" + suffix)
    return "".join(out)


def _has_wild_single(elems: Sequence[Element]) -> bool:
    """Whether the pattern has ``?`` or a bracket expression (locale-dependent on non-ASCII text)."""
    for e in elems:
        if e[0] in ("any", "set"):
            return True
        if e[0] == "ext":
            alts = e[2]
            assert isinstance(alts, list)
            if any(_has_wild_single(a) for a in alts):
                return True
    return False


class Compiled:
    __slots__ = ("elems", "has_ext", "literal_prefix", "regex", "wild_single")

    def __init__(self, pat: str) -> None:
        self.elems = _PatternParser(pat).parse()
        self.regex = re.compile(_to_regex(self.elems), re.DOTALL)
        self.wild_single = _has_wild_single(self.elems)
        prefix = []
        for e in self.elems:
            if e[0] != "lit":
                break
            prefix.append(str(e[1]))
        self.literal_prefix = "".join(prefix)
        self.has_ext = any(e[0] == "ext" for e in self.elems)

    def check_subject(self, subject: str) -> None:
        if self.wild_single and not subject.isascii():
            raise Unsupported("pattern matching on non-ASCII text")

    def fullmatch(self, subject: str, start: int = 0, end: Optional[int] = None) -> bool:
        if end is None:
            end = len(subject)
        return self.regex.fullmatch(subject, start, end) is not None


@functools.lru_cache(maxsize=2048)
def compile_pattern(pat: str) -> Compiled:
    return Compiled(pat)


def remove_match(value: str, pattern: str, op: str) -> str:
    """``${value<op>pattern}`` for op in ``# ## % %%``."""
    if not pattern:
        return value
    cp = compile_pattern(pattern)
    cp.check_subject(value)
    n = len(value)
    rx = cp.regex
    if op == "#":
        for i in range(0, n + 1):
            if rx.fullmatch(value, 0, i):
                return value[i:]
    elif op == "##":
        for i in range(n, -1, -1):
            if rx.fullmatch(value, 0, i):
                return value[i:]
    elif op == "%":
        for i in range(n, -1, -1):
            if rx.fullmatch(value, i, n):
                return value[:i]
    elif op == "%%":
        for i in range(0, n + 1):
            if rx.fullmatch(value, i, n):
                return value[:i]
    else:  # pragma: no cover - caller guarantees op
        raise ValueError(op)
    return value


def unescape(pat: str) -> str:
    """Remove the escaping backslashes (bash's ``dequote_pathname``)."""
    if "\\" not in pat:
        return pat
    out = []
    i, n = 0, len(pat)
    while i < n:
        c = pat[i]
        if c == "\\" and i + 1 < n:
            out.append(pat[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def collation_is_bytewise(environ: Mapping[str, str]) -> bool:
    """Whether bash would sort pathname-expansion results in byte order under ``environ``."""
    for name in ("LC_ALL", "LC_COLLATE", "LANG"):
        val = environ.get(name)
        if val:
            return val in ("C", "POSIX") or val.startswith(("C.", "POSIX."))
    return True


def _candidates(elems: Sequence[Element], limit: int = 64) -> Optional[List[str]]:
    """All strings a pattern made of literals and small positive bracket sets can match (else None)."""
    results = [""]
    for e in elems:
        if e[0] == "lit":
            results = [r + str(e[1]) for r in results]
        elif e[0] == "set" and e[2] is not None:
            members = e[2]
            assert isinstance(members, tuple)
            results = [r + m for r in results for m in members]
            if len(results) > limit:
                return None
        else:
            return None
    return results


class DirCache:
    """Directory listings read during one evaluation (bash reads them afresh for every word)."""

    def __init__(self) -> None:
        self._lists: dict[str, Optional[List[Tuple[str, bool]]]] = {}
        self._cwd_names: Optional[frozenset[str]] = None
        self._probes = 0

    def cwd_has(self, name: str) -> bool:
        """Whether the current directory has an entry ``name`` (a few lstat() calls, then one listing)."""
        if self._cwd_names is None:
            if self._probes < 8:
                self._probes += 1
                return lexists(name)
            ents = self.entries("")
            self._cwd_names = frozenset(n for n, _ in ents) if ents is not None else frozenset()
        return name in self._cwd_names

    def entries(self, directory: str) -> Optional[List[Tuple[str, bool]]]:
        """(name, is_dir) of ``directory`` ('' = current directory); None when it cannot be read."""
        if directory in self._lists:
            return self._lists[directory]
        try:
            with os.scandir(directory or ".") as it:
                result: Optional[List[Tuple[str, bool]]] = []
                assert result is not None
                for entry in it:
                    try:
                        is_dir = entry.is_dir()
                    except OSError:
                        is_dir = False
                    result.append((entry.name, is_dir))
        except OSError:
            result = None
        self._lists[directory] = result
        return result


def lexists(path: str) -> bool:
    try:
        os.lstat(path)
    except (OSError, ValueError):
        return False
    return True


def _match_component(comp: str, base: str, cache: DirCache, dirs_only: bool) -> List[str]:
    cp = compile_pattern(comp)
    if cp.has_ext:
        raise Unsupported("extglob pattern in pathname expansion")
    allow_dot = bool(cp.elems) and cp.elems[0] == ("lit", ".")
    if allow_dot:
        # whether '.' and '..' match depends on the bash version (globskipdots, bash 5.2)
        raise Unsupported("pathname pattern matching dot files")
    cands = _candidates(cp.elems)
    # Negative filter: nothing to read when none of the possible names exists.
    if cands is not None and not any(lexists((base or "") + c) for c in cands if c not in (".", "..")):
        return []
    entries = cache.entries(base)
    if entries is None:
        return []
    prefix = cp.literal_prefix
    out = []
    for name, is_dir in entries:
        if prefix and not name.startswith(prefix):
            continue
        if name in (".", ".."):
            continue
        if name.startswith(".") and not allow_dot:
            continue
        if dirs_only and not is_dir:
            continue
        cp.check_subject(name)
        if cp.regex.fullmatch(name):
            out.append(name)
    return out


def expand_pathname(word: str, cache: DirCache, bytewise: bool) -> Optional[List[str]]:
    """Pathname expansion of one field; None when nothing matches (bash keeps the word)."""
    if not has_magic(word):
        return None
    if "\\/" in word or "//" in word:
        raise Unsupported("pathname pattern with an escaped or doubled slash")
    absolute = word.startswith("/")
    comps = word.split("/")
    if absolute:
        comps = comps[1:]
    trailing = bool(comps) and comps[-1] == ""
    if trailing:
        comps = comps[:-1]
    bases: List[str] = ["/" if absolute else ""]
    last = len(comps) - 1
    for idx, comp in enumerate(comps):
        is_last = idx == last
        new_bases: List[str] = []
        if has_magic(comp):
            for base in bases:
                for name in _match_component(comp, base, cache, dirs_only=trailing and is_last):
                    new_bases.append(base + name + ("" if is_last and not trailing else "/"))
        else:
            lit = unescape(comp)
            for base in bases:
                path = base + lit
                if is_last:
                    if trailing:
                        if os.path.isdir(path):
                            new_bases.append(path + "/")
                    elif lexists(path):
                        new_bases.append(path)
                else:
                    new_bases.append(path + "/")
        bases = new_bases
        if not bases:
            return None
    if len(bases) > 1:
        if not bytewise:
            raise Unsupported("several pathname-expansion matches sorted by a non-C locale")
        bases.sort(key=lambda s: s.encode("utf-8", "surrogateescape"))
    return bases


PatternArg = Union[str, Compiled]
