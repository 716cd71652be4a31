"""POSIX extended regular expressions as bash's ``[[ s =~ re ]]`` uses them (unanchored search).

bash hands the pattern to glibc's ``regcomp(REG_EXTENDED)``; this module reads the same syntax and
rejects what glibc rejects, then matches with the linear-time automaton of :mod:`pydkms.nfa`, so that
no pattern in a dkms.conf can stall dkms (Python's ``re`` backtracks exponentially on patterns like
``^((a|a)*)*b$``). What glibc accepts:

* literals, ``.`` (any character, newline included), bracket expressions (``[a-z]``, ``[^...]``,
  ``]`` first is literal, ``[:class:]``, ``[=c=]`` and ``[.c.]`` for single characters; a backslash
  in brackets is literal), groups ``(...)`` (also empty), alternation (empty branches allowed);
* ``* + ? {m} {m,} {,n} {m,n}`` (at most 32767), also stacked (``a+?`` is ``(a+)?``, there is no
  lazy matching); a repetition at the start of an expression or after an anchor is an error; a
  ``)`` that closes nothing and a ``}`` are literal;
* the anchors ``^`` and ``$`` anywhere, and the GNU escapes ``\\< \\> \\b \\B \\` \\'`` (assertions) and
  ``\\w \\W \\s \\S`` (classes); any other escaped character is literal; a trailing backslash is an
  error.

``^`` and ``$`` hold at the start and the end of the text only (POSIX without REG_NEWLINE). glibc
also lets them hold next to a newline in some patterns and not in others, depending on its
internals (``b$\\n`` matches "b\\n", ``(b)$\\n`` does not); texts with a newline are not reproduced.
The texts dkms matches, kernel releases and architectures, have none.

Backreferences (``\\1``..``\\9``, which glibc accepts in EREs) make matching NP-hard and cannot be
kept linear: a pattern using one is refused like an invalid pattern (no dkms.conf is known to use
them). So is a pattern whose counted repetitions expand beyond :data:`pydkms.nfa.MAX_STATES`.

Characters are compared as Python code points and the classes are the ASCII ones of the C locale;
kernel releases and architectures, the texts dkms matches, are ASCII. Only the match and the span of
the whole match (``BASH_REMATCH[0]``, leftmost-longest as glibc) are computed, not the groups: no
caller uses them.
"""

from __future__ import annotations

import functools
import string
from typing import Dict, FrozenSet, List, Optional, Tuple

from .nfa import (
    ANY,
    BOL,
    EOL,
    NOT_WORD_BOUNDARY,
    WORD_BOUNDARY,
    WORD_END,
    WORD_START,
    Alt,
    Assert,
    Cat,
    Chars,
    CharSet,
    Node,
    Program,
    Repeat,
    TooLarge,
    reverse,
)

_ASCII = [chr(x) for x in range(128)]

#: The POSIX bracket classes of the C locale (the bash glob emulation adds ``ascii`` and ``word``).
CLASS_CHARS: Dict[str, FrozenSet[str]] = {
    "alnum": frozenset(string.ascii_letters + string.digits),
    "alpha": frozenset(string.ascii_letters),
    "blank": frozenset(" \t"),
    "cntrl": frozenset([chr(x) for x in range(32)] + ["\x7f"]),
    "digit": frozenset(string.digits),
    "graph": frozenset(chr(x) for x in range(33, 127)),
    "lower": frozenset(string.ascii_lowercase),
    "print": frozenset(chr(x) for x in range(32, 127)),
    "punct": frozenset(c for c in _ASCII if 33 <= ord(c) < 127 and not c.isalnum()),
    "space": frozenset(" \t\n\v\f\r"),
    "upper": frozenset(string.ascii_uppercase),
    "xdigit": frozenset(string.hexdigits),
}

#: glibc's RE_DUP_MAX
DUP_MAX = 0x7FFF
#: deepest group nesting accepted (the parser and the automaton builder recurse per level)
MAX_NESTING = 100

_WORD = CharSet(CLASS_CHARS["alnum"] | {"_"})
_NOT_WORD = CharSet(_WORD.chars, negated=True)
_SPACE = CharSet(CLASS_CHARS["space"])
_NOT_SPACE = CharSet(_SPACE.chars, negated=True)
_ESCAPE_ASSERTS = {
    "<": WORD_START,
    ">": WORD_END,
    "b": WORD_BOUNDARY,
    "B": NOT_WORD_BOUNDARY,
    "`": BOL,
    "'": EOL,
}
_ESCAPE_CLASSES = {"w": _WORD, "W": _NOT_WORD, "s": _SPACE, "S": _NOT_SPACE}


class EreError(ValueError):
    """The pattern is not a valid ERE (``regcomp`` fails), or it is refused (backreference, size)."""


class _Parser:
    """Recursive descent over glibc's ERE grammar (``parse_reg_exp`` … ``parse_bracket_exp``)."""

    def __init__(self, pattern: str) -> None:
        self.p = pattern
        self.n = len(pattern)
        self.i = 0

    def parse(self) -> Node:
        node = self._alternation(0)
        assert self.i == self.n  # at nesting level 0 every character is consumed
        return node

    def _peek(self) -> str:
        return self.p[self.i] if self.i < self.n else ""

    def _alternation(self, nest: int) -> Node:
        branches = [self._branch(nest)]
        while self._peek() == "|":
            self.i += 1
            branches.append(self._branch(nest))
        return branches[0] if len(branches) == 1 else Alt(tuple(branches))

    def _branch(self, nest: int) -> Node:
        items: List[Node] = []
        while True:
            c = self._peek()
            if c == "" or c == "|" or (c == ")" and nest > 0):
                break
            node = self._expression(nest)
            if node is not None:
                items.append(node)
        return items[0] if len(items) == 1 else Cat(tuple(items))

    def _expression(self, nest: int) -> Optional[Node]:
        c = self.p[self.i]
        if c in "*+?{":
            raise EreError(f"repetition operator '{c}' with nothing to repeat")
        self.i += 1
        atom: Optional[Node]
        if c == "(":
            if nest + 1 > MAX_NESTING:
                raise EreError(f"groups nested deeper than {MAX_NESTING}")
            if self._peek() == ")":
                atom = Cat(())
            else:
                atom = self._alternation(nest + 1)
            if self._peek() != ")":
                raise EreError("unmatched '('")
            self.i += 1
        elif c == "[":
            atom = Chars(self._bracket())
        elif c == ".":
            atom = Chars(ANY)
        elif c == "^":
            return Assert(BOL)
        elif c == "$":
            return Assert(EOL)
        elif c == "\\":
            if self.i >= self.n:
                raise EreError("trailing backslash")
            e = self.p[self.i]
            self.i += 1
            if "1" <= e <= "9":
                raise EreError(f"backreference '\\{e}' (not supported: it cannot be matched in linear time)")
            if e in _ESCAPE_ASSERTS:
                return Assert(_ESCAPE_ASSERTS[e])
            atom = Chars(_ESCAPE_CLASSES[e]) if e in _ESCAPE_CLASSES else Chars(CharSet(e))
        else:
            atom = Chars(CharSet(c))  # also ')' closing nothing and '}'
        while True:
            c = self._peek()
            if c == "*":
                lo, hi = 0, None
                self.i += 1
            elif c == "+":
                lo, hi = 1, None
                self.i += 1
            elif c == "?":
                lo, hi = 0, 1
                self.i += 1
            elif c == "{":
                self.i += 1
                lo, hi = self._interval()
            else:
                return atom
            if atom is not None:
                atom = None if lo == 0 and hi == 0 else Repeat(atom, lo, hi)

    def _number(self) -> Tuple[int, str]:
        """glibc's ``fetch_number``: (-1 no digits | -2 invalid | value, the ',' or '}' that ended it)."""
        num = -1
        while True:
            if self.i >= self.n:
                return -2, ""
            c = self.p[self.i]
            self.i += 1
            if c in ",}":
                return num, c
            if c == "\\":
                # glibc reads an escaped character as that character: an escaped ',' separates
                escaped = self.p[self.i] if self.i < self.n else ""
                self.i = min(self.i + 1, self.n)
                if escaped == ",":
                    return num, ","
                num = -2
            elif "0" <= c <= "9" and num != -2:
                num = int(c) if num == -1 else min(DUP_MAX + 1, num * 10 + int(c))
            else:
                num = -2

    def _interval(self) -> Tuple[int, Optional[int]]:
        lo, term = self._number()
        if lo == -1:
            if term != ",":
                raise EreError("empty interval '{}'")
            lo = 0
        hi: Optional[int] = lo
        if lo != -2:
            if term == ",":
                hi_num, term = self._number()
                hi = None if hi_num == -1 else hi_num
                if hi_num == -2:
                    lo = -2
            elif term != "}":
                lo = -2
        if lo == -2:
            raise EreError(
                "unterminated interval '{'" if self.i >= self.n and term == "" else "invalid interval"
            )
        if term != "}" or (hi is not None and lo > hi):
            raise EreError("invalid interval")
        if (lo if hi is None else hi) > DUP_MAX:
            raise EreError(f"interval count above {DUP_MAX}")
        return lo, hi

    def _bracket(self) -> CharSet:
        """After '[': glibc's ``parse_bracket_exp``."""
        p, n = self.p, self.n
        negated = False
        if self._peek() == "^":
            negated = True
            self.i += 1
        chars: List[str] = []
        ranges: List[Tuple[str, str]] = []
        first = True
        while True:
            if self.i >= n:
                raise EreError("unmatched '['")
            if p[self.i] == "]" and not first:
                self.i += 1
                break
            kind, value = self._bracket_element(first)
            first = False
            if kind in ("char", "coll") and p.startswith("-", self.i) and not p.startswith("-]", self.i):
                if self.i + 1 >= n:
                    raise EreError("unmatched '['")
                self.i += 1
                end_kind, end = self._bracket_element(True)
                if end_kind not in ("char", "coll"):
                    raise EreError("invalid range end in a bracket expression")
                if ord(value) > ord(end):
                    raise EreError(f"invalid range '{value}-{end}'")
                ranges.append((value, end))
                continue
            if kind == "class":
                chars.extend(CLASS_CHARS[value])
            else:
                chars.append(value)
        return CharSet(chars, ranges, negated)

    def _bracket_element(self, accept_hyphen: bool) -> Tuple[str, str]:
        """One element: ("char"|"coll"|"equiv", character) or ("class", name)."""
        p, n = self.p, self.n
        c = p[self.i]
        if c == "[" and self.i + 1 < n and p[self.i + 1] in ".=:":
            delim = p[self.i + 1]
            end = p.find(delim + "]", self.i + 2)
            if end < 0:
                raise EreError("unmatched '['")
            name = p[self.i + 2 : end]
            self.i = end + 2
            if delim == ":":
                if name not in CLASS_CHARS:
                    raise EreError(f"unknown character class '[:{name}:]'")
                return "class", name
            if len(name) != 1:
                raise EreError(f"invalid collating element '[{delim}{name}{delim}]'")
            return ("coll" if delim == "." else "equiv"), name
        if c == "-" and not accept_hyphen and not p.startswith("-]", self.i):
            raise EreError("'-' in the middle of a bracket expression")
        self.i += 1
        return "char", c


class Ere:
    """A compiled ERE."""

    __slots__ = ("_anchored", "_backward", "_root", "_search")

    def __init__(self, root: Node) -> None:
        self._root = root
        self._search = Program(root, search=True)
        self._backward: Optional[Program] = None
        self._anchored: Optional[Program] = None

    def search(self, text: str) -> bool:
        """Whether the pattern matches somewhere in ``text`` (bash's ``=~``)."""
        return next(self._search.match_ends(text), None) is not None

    def span(self, text: str) -> Optional[Tuple[int, int]]:
        """(start, end) of the leftmost-longest match (``BASH_REMATCH[0]``); None if there is none.

        A match starts at ``i`` when the reversed pattern matches a substring of the reversed text
        ending at ``len(text) - i``: one pass finds the leftmost start, a second the longest end.
        """
        if self._backward is None:
            self._backward = Program(reverse(self._root), search=True)
            self._anchored = Program(self._root)
        assert self._anchored is not None
        last = max(self._backward.match_ends(text[::-1]), default=None)
        if last is None:
            return None
        start = len(text) - last
        end = self._anchored.prefix_end(text, True, start)
        assert end is not None
        return start, end


def parse_ere(pattern: str) -> Node:
    """The pattern's syntax tree; :class:`EreError` for what regcomp rejects or what is refused."""
    return _Parser(pattern).parse()


@functools.lru_cache(maxsize=512)
def _compiled(pattern: str) -> Tuple[Optional[Ere], str]:
    try:
        return Ere(parse_ere(pattern)), ""
    except (EreError, TooLarge) as exc:
        return None, str(exc)


def compile_ere(pattern: str) -> Optional[Ere]:
    """Compile a POSIX ERE; None if it is invalid or refused (see :func:`ere_problem`)."""
    return _compiled(pattern)[0]


def ere_problem(pattern: str) -> Optional[str]:
    """Why ``pattern`` cannot be used (invalid, a backreference, too large); None if it can."""
    return _compiled(pattern)[1] or None


def ere_search(pattern: str, text: str) -> Optional[bool]:
    """True/False like bash ``=~``; None for an invalid or refused pattern."""
    rx = compile_ere(pattern)
    if rx is None:
        return None
    return rx.search(text)
