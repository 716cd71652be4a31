"""Pattern automata that answer in time linear in the text, for bash's regular expressions and globs.

Python's ``re`` backtracks: a pattern like ``^((a|a)*)*b$`` takes exponential time on a string of
``a``s, and a dkms.conf can hold any pattern. Here a pattern is compiled to a Thompson NFA and run
as a set of states, one step per character of the text, so a match costs O(len(text) × states)
whatever the pattern is. Sets of states already seen are remembered (a lazily built DFA), which makes
the common case a dictionary look-up per character.

Only what bash needs is answered: does the pattern match the whole text (globs), where the matches
that start at a given position end (``${v#pat}``; with the reversed pattern over the reversed text,
``${v%pat}`` and the leftmost start of POSIX's leftmost-longest match), and does it occur anywhere
(``=~``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Dict, FrozenSet, List, NamedTuple, Optional, Set, Tuple, Union

#: The largest automaton built: counted repetitions are expanded into copies, and nested ones
#: multiply (``((a{100}){100}){100}``); beyond this the pattern is refused as too large.
MAX_STATES = 1_000

#: Remembered transitions per automaton before the memo is emptied (bounds the memory).
_MEMO_LIMIT = 20_000


class TooLarge(ValueError):
    """The pattern would need more than :data:`MAX_STATES` states."""


class CharSet:
    """A set of characters: some characters and inclusive code-point ranges, possibly negated."""

    __slots__ = ("chars", "negated", "ranges")

    def __init__(
        self, chars: Iterable[str] = (), ranges: Iterable[Tuple[str, str]] = (), negated: bool = False
    ) -> None:
        small = set(chars)
        wide: List[Tuple[str, str]] = []
        for lo, hi in ranges:
            if ord(hi) - ord(lo) < 256:
                small.update(chr(x) for x in range(ord(lo), ord(hi) + 1))
            else:
                wide.append((lo, hi))
        self.chars: FrozenSet[str] = frozenset(small)
        self.ranges: Tuple[Tuple[str, str], ...] = tuple(wide)
        self.negated = negated

    def __contains__(self, c: object) -> bool:
        hit = c in self.chars or any(lo <= c <= hi for lo, hi in self.ranges)  # type: ignore[operator]
        return hit != self.negated

    def __repr__(self) -> str:
        return f"CharSet({''.join(sorted(self.chars))!r}, {self.ranges!r}, negated={self.negated})"


#: any character (bash strings hold no NUL)
ANY = CharSet(negated=True)

# Assertions (zero-width): where they hold depends on the position only.
BOL = 1  # start of the text
EOL = 2  # end of the text
WORD_BOUNDARY = 3
NOT_WORD_BOUNDARY = 4
WORD_START = 5
WORD_END = 6

_MIRROR = {BOL: EOL, EOL: BOL, WORD_START: WORD_END, WORD_END: WORD_START}


class Chars(NamedTuple):
    """One character out of a set."""

    cs: CharSet


class Cat(NamedTuple):
    """A sequence (the empty sequence matches the empty string)."""

    items: Tuple[Node, ...]


class Alt(NamedTuple):
    """Alternatives."""

    items: Tuple[Node, ...]


class Repeat(NamedTuple):
    """``node`` at least ``lo`` and at most ``hi`` times (None: no upper limit)."""

    node: Node
    lo: int
    hi: Optional[int]


class Assert(NamedTuple):
    """A zero-width assertion (:data:`BOL`, :data:`EOL`, word boundaries)."""

    kind: int


Node = Union[Chars, Cat, Alt, Repeat, Assert]


def reverse(node: Node) -> Node:
    """The pattern that matches the reversed strings of ``node``."""
    if isinstance(node, Cat):
        return Cat(tuple(reverse(n) for n in reversed(node.items)))
    if isinstance(node, Alt):
        return Alt(tuple(reverse(n) for n in node.items))
    if isinstance(node, Repeat):
        return Repeat(reverse(node.node), node.lo, node.hi)
    if isinstance(node, Assert):
        return Assert(_MIRROR.get(node.kind, node.kind))
    return node


def is_word_char(c: str) -> bool:
    """bash's (glibc's, C locale) word characters: ASCII letters, digits and ``_``."""
    return c == "_" or ("0" <= c <= "9") or ("a" <= c <= "z") or ("A" <= c <= "Z")


# state kinds
_CHAR = 0
_SPLIT = 1
_ASSERT = 2
_MATCH = 3

# context bits of a position, for the assertions
_AT_START = 1
_AT_END = 2
_PREV_WORD = 4
_NEXT_WORD = 8

States = FrozenSet[int]


def _holds(kind: int, ctx: int) -> bool:
    prev_word = bool(ctx & _PREV_WORD)
    next_word = bool(ctx & _NEXT_WORD)
    if kind == BOL:
        return bool(ctx & _AT_START)
    if kind == EOL:
        return bool(ctx & _AT_END)
    if kind == WORD_BOUNDARY:
        return prev_word != next_word
    if kind == NOT_WORD_BOUNDARY:
        return prev_word == next_word
    if kind == WORD_START:
        return not prev_word and next_word
    return prev_word and not next_word  # WORD_END


class _Dfa:
    """The state sets met so far, numbered, and the transitions between them (a lazily built DFA)."""

    __slots__ = ("final", "ids", "moves", "sets")

    def __init__(self) -> None:
        self.ids: Dict[States, int] = {}
        self.sets: List[States] = []
        self.final: List[bool] = []
        #: per state set: character -> next state set, where no assertion depends on the position
        self.moves: List[Dict[str, int]] = []


class Program:
    """A compiled pattern: a Thompson NFA and the memo of its state-set transitions."""

    def __init__(self, root: Node, search: bool = False) -> None:
        """Compile ``root``; with ``search``, the automaton may skip any prefix of the text."""
        self._kind: List[int] = []
        self._cs: List[Optional[CharSet]] = []
        self._arg: List[int] = []
        self._out: List[int] = []
        self._out2: List[int] = []
        self.match = self._add(_MATCH, None, 0, -1, -1)
        self.has_asserts = False
        self._word_asserts = False
        if search:
            root = Cat((Repeat(Chars(ANY), 0, None), root))
        self.start = self._compile(root, self.match)
        self._start_set: States = frozenset((self.start,))
        self._closures: Dict[Tuple[States, int], States] = {}
        self._steps: Dict[Tuple[States, str, int], States] = {}
        self._accept: Dict[str, States] = {}
        self._lock = threading.Lock()
        self._dfa = _Dfa()

    # -- construction (continuation style: each node is compiled in front of its successor)

    def _add(self, kind: int, cs: Optional[CharSet], arg: int, out: int, out2: int) -> int:
        if len(self._kind) >= MAX_STATES:
            raise TooLarge(f"the pattern needs more than {MAX_STATES} automaton states")
        self._kind.append(kind)
        self._cs.append(cs)
        self._arg.append(arg)
        self._out.append(out)
        self._out2.append(out2)
        return len(self._kind) - 1

    def _compile(self, node: Node, nxt: int) -> int:
        if isinstance(node, Chars):
            return self._add(_CHAR, node.cs, 0, nxt, -1)
        if isinstance(node, Cat):
            for item in reversed(node.items):
                nxt = self._compile(item, nxt)
            return nxt
        if isinstance(node, Alt):
            starts = [self._compile(item, nxt) for item in node.items]
            if not starts:
                return nxt
            first = starts[-1]
            for s in reversed(starts[:-1]):
                first = self._add(_SPLIT, None, 0, s, first)
            return first
        if isinstance(node, Assert):
            self.has_asserts = True
            self._word_asserts = self._word_asserts or node.kind not in (BOL, EOL)
            return self._add(_ASSERT, None, node.kind, nxt, -1)
        # Repeat
        tail = nxt
        if node.hi is None:
            loop = self._add(_SPLIT, None, 0, -1, nxt)
            self._out[loop] = self._compile(node.node, loop)
            tail = loop
        else:
            for _ in range(node.hi - node.lo):
                tail = self._add(_SPLIT, None, 0, self._compile(node.node, tail), nxt)
        for _ in range(node.lo):
            tail = self._compile(node.node, tail)
        return tail

    # -- simulation

    def _ctx(self, text: str, i: int) -> int:
        if not self.has_asserts:
            return 0
        n = len(text)
        if not self._word_asserts:
            return (_AT_START if i == 0 else 0) | (_AT_END if i == n else 0)
        ctx = 0
        if i == 0:
            ctx |= _AT_START
        elif is_word_char(text[i - 1]):
            ctx |= _PREV_WORD
        if i == n:
            ctx |= _AT_END
        elif is_word_char(text[i]):
            ctx |= _NEXT_WORD
        return ctx

    def _closure(self, seeds: States, ctx: int) -> States:
        """The character-consuming and final states reachable from ``seeds`` without input."""
        key = (seeds, ctx)
        hit = self._closures.get(key)
        if hit is not None:
            return hit
        kind, arg, out, out2 = self._kind, self._arg, self._out, self._out2
        seen: Set[int] = set()
        result = []
        stack = list(seeds)
        while stack:
            s = stack.pop()
            if s in seen:
                continue
            seen.add(s)
            k = kind[s]
            if k == _SPLIT:
                stack.append(out2[s])
                stack.append(out[s])
            elif k == _ASSERT:
                if _holds(arg[s], ctx):
                    stack.append(out[s])
            else:
                result.append(s)
        states = frozenset(result)
        if len(self._closures) >= _MEMO_LIMIT:
            self._closures.clear()
        self._closures[key] = states
        return states

    def _accepting(self, c: str) -> States:
        """The states that read ``c``."""
        hit = self._accept.get(c)
        if hit is None:
            hit = frozenset(s for s, cs in enumerate(self._cs) if cs is not None and c in cs)
            if len(self._accept) >= _MEMO_LIMIT:
                self._accept.clear()
            self._accept[c] = hit
        return hit

    def _step(self, states: States, c: str, ctx: int) -> States:
        """The states after reading ``c`` from ``states``; ``ctx`` is the context after ``c``."""
        key = (states, c, ctx)
        hit = self._steps.get(key)
        if hit is not None:
            return hit
        out = self._out
        nxt = self._closure(frozenset(out[s] for s in states & self._accepting(c)), ctx)
        if len(self._steps) >= _MEMO_LIMIT:
            self._steps.clear()
        self._steps[key] = nxt
        return nxt

    def _table(self) -> _Dfa:
        """The state-set table; a full one is replaced (a scan in progress keeps the one it uses)."""
        dfa = self._dfa
        if len(dfa.sets) >= _MEMO_LIMIT:
            dfa = self._dfa = _Dfa()
        return dfa

    def _number(self, dfa: _Dfa, states: States) -> int:
        sid = dfa.ids.get(states)
        if sid is None:
            with self._lock:
                sid = dfa.ids.get(states)
                if sid is None:
                    sid = len(dfa.sets)
                    dfa.sets.append(states)
                    dfa.final.append(self.match in states)
                    dfa.moves.append({})
                    dfa.ids[states] = sid
        return sid

    def match_ends(self, text: str, start: int = 0) -> Iterator[int]:
        """The positions ``e >= start`` (ascending) where ``text[start:e]`` is matched."""
        dfa = self._table()
        final, moves, sets = dfa.final, dfa.moves, dfa.sets
        sid = self._number(dfa, self._closure(self._start_set, self._ctx(text, start)))
        if final[sid]:
            yield start
        # the context matters at every position for word assertions, at the end for '$'
        word, last = self._word_asserts, (len(text) - 1 if self.has_asserts else -1)
        for i in range(start, len(text)):
            if not sets[sid]:
                return
            c = text[i]
            ctx = self._ctx(text, i + 1) if word or i == last else 0
            nxt = moves[sid].get(c) if ctx == 0 else None
            if nxt is None:
                nxt = self._number(dfa, self._step(sets[sid], c, ctx))
                if ctx == 0:
                    moves[sid][c] = nxt
            sid = nxt
            if final[sid]:
                yield i + 1

    def fullmatch(self, text: str, first_by: Optional[CharSet] = None) -> bool:
        """Whether the pattern matches all of ``text``.

        With ``first_by``, the first character must be read by a state of exactly that set (bash's
        rule that a leading dot of a file name is matched by a literal dot of the pattern only).
        """
        if first_by is None or not text:
            return max(self.match_ends(text), default=-1) == len(text)
        states = self._closure(self._start_set, self._ctx(text, 0))
        cs, out = self._cs, self._out
        seeds = frozenset(out[s] for s in states if cs[s] is first_by and text[0] in first_by)
        states = self._closure(seeds, self._ctx(text, 1))
        for i in range(1, len(text)):
            if not states:
                return False
            states = self._step(states, text[i], self._ctx(text, i + 1))
        return self.match in states

    def prefix_end(self, text: str, longest: bool, start: int = 0) -> Optional[int]:
        """The end of the shortest (or longest) match of ``text[start:...]``; None if there is none."""
        best: Optional[int] = None
        for end in self.match_ends(text, start):
            if not longest:
                return end
            best = end
        return best
