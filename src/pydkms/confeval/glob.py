"""Bash pattern matching, emulated for the data evaluator (never starts a process).

Two uses, both with ``shopt -s extglob`` as in upstream dkms:

* ``${NAME#pattern}``-style removal (:func:`remove_match`);
* pathname expansion of unquoted words in upstream's echo step (:func:`expand_pathname`).

Patterns are strings in bash's *escaped* form: a backslash makes the next character literal (quoted
characters of the source are backslash-escaped by the caller). Everything this module cannot
reproduce exactly raises :class:`Unsupported`.

Matching runs on the linear-time automaton of :mod:`pydkms.nfa` (a pattern like
``*a*a*a*a*a*a*a*a*a*a*b`` would make a backtracking matcher exponential in the name's length), and
the prefix and suffix removals take one pass over the value (suffixes: the reversed pattern over the
reversed value).

In the C locale bash matches bytes (``?`` is one byte of a UTF-8 character): with ``bytes_mode``
pattern and text are compared byte by byte. In other locales ``?`` and brackets are one character,
which is exact for ASCII text only; they raise :class:`Unsupported` on other text.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import List, Optional, Sequence, Tuple

from ..nfa import ANY, Alt, Cat, Chars, CharSet, Node, Program, Repeat, TooLarge, reverse
from ..posixre import CLASS_CHARS


class Unsupported(Exception):
    """The pattern (or its subject) uses something this emulation does not reproduce exactly."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


#: bash also knows [:ascii:] and [:word:] in patterns
_CLASSES = {
    **CLASS_CHARS,
    "ascii": frozenset(chr(x) for x in range(128)),
    "word": CLASS_CHARS["alnum"] | {"_"},
}

_EXT_OPS = "?*+@!"

#: deepest nesting of extglob groups accepted (parsing and compiling recurse per level)
MAX_NESTING = 100


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


def to_bytes_text(text: str) -> str:
    """``text`` as one character per byte of its UTF-8 (surrogateescape) encoding."""
    return text if text.isascii() else text.encode("utf-8", "surrogateescape").decode("latin-1")


def from_bytes_text(text: str) -> str:
    """The inverse of :func:`to_bytes_text`."""
    return text if text.isascii() else text.encode("latin-1").decode("utf-8", "surrogateescape")


# A parsed pattern element:
#   ("lit", char) | ("star",) | ("any",) | ("set", CharSet, members_or_None)
#   | ("ext", op, [alternatives...])  where each alternative is a list of elements
Element = Tuple[object, ...]


class _PatternParser:
    def __init__(self, pat: str, bytes_mode: bool) -> None:
        self.p = pat
        self.n = len(pat)
        self.bytes_mode = bytes_mode
        self.depth = 0

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
                if self.depth >= MAX_NESTING:
                    raise Unsupported(f"extglob patterns nested deeper than {MAX_NESTING}")
                self.depth += 1
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
                self.depth -= 1
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
        items: List[Tuple[str, str]] = []  # ("c", char) | ("e", escaped char) | ("class", name)
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
        chars: List[str] = []
        ranges: List[Tuple[str, str]] = []
        members: Optional[List[str]] = []
        k = 0
        while k < len(items):
            kind, val = items[k]
            if kind == "class":
                chars.extend(_CLASSES[val])
                members = None
                k += 1
                continue
            if k + 2 < len(items) and items[k + 1] == ("c", "-") and items[k + 2][0] in ("c", "e"):
                lo, hi = val, items[k + 2][1]
                if not self.bytes_mode and (ord(lo) > 127 or ord(hi) > 127):
                    raise Unsupported("non-ASCII range in a bracket expression")
                if ord(lo) > ord(hi):
                    raise Unsupported("reversed range in a bracket expression")
                ranges.append((lo, hi))
                if members is not None:
                    if ord(hi) - ord(lo) > 16:
                        members = None
                    else:
                        members.extend(chr(x) for x in range(ord(lo), ord(hi) + 1))
                k += 3
                continue
            if not self.bytes_mode and ord(val) > 127:
                raise Unsupported("non-ASCII character in a bracket expression")
            chars.append(val)
            if members is not None:
                members.append(val)
            k += 1
        if not chars and not ranges:
            raise Unsupported("empty bracket expression")
        mem: Optional[Tuple[str, ...]] = None
        if members is not None and not negated:
            mem = tuple(sorted(set(members)))
        return ("set", CharSet(chars, ranges, negated), mem), j


_STAR = Repeat(Chars(ANY), 0, None)
#: the set of every literal '.' of a pattern: a file name's leading dot must be read by one of them
_DOT = CharSet(".")


def _to_node(elems: Sequence[Element]) -> Node:
    """The syntax tree of a sequence of elements.

    bash's ``*`` absorbs the ``*`` and ``?`` after it and then tries the rest of the pattern at the
    positions before the end of the text only, with special cases for some extglob groups: an
    extglob group right after such a run does not always match as a regular expression would
    (``*@(|a)`` does not match "x", ``*?(a)@(|a)`` matches "" but not "x"), so it is declined.
    """
    items: List[Node] = []
    run_has_star = False
    for e in elems:
        if e[0] == "ext" and run_has_star:
            raise Unsupported("extglob group right after `*` (bash matches it in its own way)")
        run_has_star = e[0] == "star" or (e[0] == "any" and run_has_star)
        items.append(_element_node(e))
    return Cat(tuple(items))


def _element_node(e: Element) -> Node:
    kind = e[0]
    if kind == "lit":
        return Chars(_DOT if e[1] == "." else CharSet(str(e[1])))
    if kind == "star":
        return _STAR
    if kind == "any":
        return Chars(ANY)
    if kind == "set":
        cs = e[1]
        assert isinstance(cs, CharSet)
        return Chars(cs)
    assert kind == "ext"
    alts = e[2]
    assert isinstance(alts, list)
    body = Alt(tuple(_to_node(a) for a in alts))
    lo, hi = {"?": (0, 1), "*": (0, None), "+": (1, None), "@": (1, 1)}[str(e[1])]
    return body if (lo, hi) == (1, 1) else Repeat(body, lo, hi)


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
    """A parsed glob pattern and its automata (built on first use)."""

    __slots__ = ("_backward", "_forward", "elems", "literal_prefix", "wild_single")

    def __init__(self, pat: str, bytes_mode: bool = False) -> None:
        self.elems = _PatternParser(pat, bytes_mode).parse()
        self.wild_single = _has_wild_single(self.elems)
        prefix = []
        for e in self.elems:
            if e[0] != "lit":
                break
            prefix.append(str(e[1]))
        self.literal_prefix = "".join(prefix)
        self._forward: Optional[Program] = None
        self._backward: Optional[Program] = None

    def _program(self, backward: bool) -> Program:
        """The automaton (of the reversed pattern for ``backward``); :class:`Unsupported` if declined."""
        try:
            if backward:
                if self._backward is None:
                    self._backward = Program(reverse(_to_node(self.elems)))
                return self._backward
            if self._forward is None:
                self._forward = Program(_to_node(self.elems))
            return self._forward
        except TooLarge as exc:
            raise Unsupported(str(exc)) from None

    def check_subject(self, subject: str) -> None:
        """Raise :class:`Unsupported` when the locale decides how ``subject`` matches (see the module)."""
        if self.wild_single and not subject.isascii():
            raise Unsupported("pattern matching on non-ASCII text")

    def fullmatch(self, subject: str, file_name: bool = False) -> bool:
        """Whether the pattern matches all of ``subject`` (no locale check: see :meth:`check_subject`).

        A ``file_name`` that starts with a dot matches only if a literal dot of the pattern reads it.
        """
        first_by = _DOT if file_name and subject.startswith(".") else None
        return self._program(False).fullmatch(subject, first_by)

    def prefix_end(self, subject: str, longest: bool) -> Optional[int]:
        """Length of the shortest or longest prefix of ``subject`` the pattern matches (None: none)."""
        return self._program(False).prefix_end(subject, longest)

    def suffix_start(self, subject: str, longest: bool) -> Optional[int]:
        """Start of the shortest or longest suffix of ``subject`` the pattern matches (None: none)."""
        k = self._program(True).prefix_end(subject[::-1], longest)
        return None if k is None else len(subject) - k


@functools.lru_cache(maxsize=2048)
def compile_pattern(pat: str, bytes_mode: bool = False) -> Compiled:
    """The compiled pattern (cached); ``pat`` is in byte-text form (:func:`to_bytes_text`) in bytes mode."""
    return Compiled(pat, bytes_mode)


def remove_match(value: str, pattern: str, op: str, bytes_mode: bool = False) -> str:
    """``${value<op>pattern}`` for op in ``# ## % %%``; ``bytes_mode`` is the C locale."""
    if not pattern:
        return value
    if op not in ("#", "##", "%", "%%"):  # pragma: no cover - caller guarantees op
        raise ValueError(op)
    if bytes_mode:
        subject = to_bytes_text(value)
        cp = compile_pattern(to_bytes_text(pattern), True)
    else:
        subject = value
        cp = compile_pattern(pattern)
        cp.check_subject(value)
    longest = len(op) == 2
    if op[0] == "#":
        end = cp.prefix_end(subject, longest)
        if end is None:
            return value
        rest = subject[end:]
    else:
        start = cp.suffix_start(subject, longest)
        if start is None:
            return value
        rest = subject[:start]
    return from_bytes_text(rest) if bytes_mode else rest


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


def _match_component(comp: str, base: str, cache: DirCache, dirs_only: bool, bytes_mode: bool) -> List[str]:
    """The names in directory ``base`` that the pattern ``comp`` matches, in directory order.

    As bash 5.2 (``globskipdots`` on by default): '.' and '..' are never matched, and a name starting
    with a dot only when a literal dot of the pattern reads that dot (also inside extglob groups).
    """
    cp = compile_pattern(to_bytes_text(comp) if bytes_mode else comp, bytes_mode)
    cands = _candidates(cp.elems)
    if cands is not None:
        if bytes_mode:
            cands = [from_bytes_text(c) for c in cands]
        # Negative filter: nothing to read when none of the possible names exists.
        if not any(lexists((base or "") + c) for c in cands if c not in (".", "..")):
            return []
    entries = cache.entries(base)
    if entries is None:
        return []
    prefix = cp.literal_prefix
    out = []
    for name, is_dir in entries:
        if dirs_only and not is_dir:
            continue
        subject = to_bytes_text(name) if bytes_mode else name
        if prefix and not subject.startswith(prefix):
            continue
        if not bytes_mode:
            cp.check_subject(name)
        if cp.fullmatch(subject, file_name=True):
            out.append(name)
    return out


def expand_pathname(
    word: str, cache: DirCache, bytewise: bool, bytes_mode: bool = False
) -> Optional[List[str]]:
    """Pathname expansion of one field; None when nothing matches (bash keeps the word).

    ``bytewise``: the collation sorts by bytes (else several matches are :class:`Unsupported`);
    ``bytes_mode``: the C locale's character type (patterns match bytes).
    """
    if not has_magic(word):
        return None
    if "\\/" in word:
        raise Unsupported("pathname pattern with an escaped slash")
    if "\\ " in word or "\\\t" in word or "\\\n" in word:
        # bash matches no file name with an escaped blank in an expanded pattern
        raise Unsupported("pathname pattern with an escaped blank")
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
                for name in _match_component(comp, base, cache, trailing and is_last, bytes_mode):
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


def ctype_is_bytes(environ: Mapping[str, str]) -> bool:
    """Whether bash would match patterns byte by byte under ``environ`` (the C locale's LC_CTYPE)."""
    for name in ("LC_ALL", "LC_CTYPE", "LANG"):
        val = environ.get(name)
        if val:
            return val in ("C", "POSIX")
    return True
