"""The data evaluator: reads the declarative subset of bash (spec/dkms-conf.md §2.4) without a shell.

It reproduces upstream's ``safe_source`` protocol (spec §2.1) exactly for files inside the subset:

1. every whitelisted name is unset, then the context variables are set;
2. per file, in a "subshell" (a copy of the current values), the file's statements run;
3. for every whitelisted name (whitelist order) and every set index (ascending), upstream prints
   ``NAME[i]="<value minus one trailing CR>"`` with an *unquoted* expansion, i.e. after word splitting
   on blanks and pathname expansion; the parent then sources those lines, which expands each value a
   second time as a double-quoted string, in the parent's scope (context + whitelisted values assigned
   so far, in whitelist order);
4. the DKMS_DIRECTIVE injections are applied in the parent as ``NAME="VALUE"``.

Everything that cannot be reproduced exactly is reported as a :class:`Construct` ("outside the
subset"), never guessed. Nothing here executes code or starts a process.

Details verified against bash 5.2 (and exercised by the differential tests):

* the echo step splits ``NAME[i]="<value>"`` as a whole, so leading/trailing blanks of a value
  collapse to ONE space (``" a  b "`` -> ``" a b "``, ``"   "`` -> ``" "``), they are not dropped;
* the parent only assigns the printed elements: an override file doing ``X=(z)`` or ``unset X``
  leaves the elements X[1].. (resp. all of X) of the earlier files in place (spec §2.1 says
  ``X=(…)`` replaces the whole array: bash does not);
* every field, the first (``NAME[i]="...``) and the last (``..."``) included, takes part in
  pathname expansion; the file names it gives are spliced into the printed line, which the parent
  then reads as bash would: when that is not plain assignments (a file name like
  ``q" ; id > x ; y="``) the file is refused (:class:`RefusedConfError`), never handed to bash,
  which would run it; once file names are in a printed line, nothing falls back to bash either;
* ``export A=1 B=$A`` expands every argument before assigning (B gets the old A), while
  ``A=1 B=$A`` assigns left to right.
"""

from __future__ import annotations

import os
import re
import threading
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Set, Tuple, Union

from . import Construct, EvalResult
from . import glob as _glob

# --------------------------------------------------------------------------------------------
# Names

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

#: Variables upstream's protocol (and pydkms' bash driver) use while a file is sourced or re-read.
PROTOCOL_NAMES = frozenset(
    {
        "CR",
        "_export_env",
        "_i",
        "export_envs",
        "to_source_file",
        "tmpfile",
        "directive",
        "directive_name",
        "directive_value",
        # locals of upstream's read_conf() that are visible while the file is sourced
        "read_conf_file",
        "_conf_file",
        "return_value",
    }
)
_PROTOCOL_PREFIXES = ("_pydkms",)

#: Variables bash sets, computes or interprets itself (bash 5.x), never plain data.
BASH_NAMES = frozenset(
    [
        "BASH",
        "BASHOPTS",
        "BASHPID",
        "CDPATH",
        "CHILD_MAX",
        "COLUMNS",
        "COMPREPLY",
        "COPROC",
        "DIRSTACK",
        "EMACS",
        "ENV",
        "EPOCHREALTIME",
        "EPOCHSECONDS",
        "EUID",
        "EXECIGNORE",
        "FCEDIT",
        "FIGNORE",
        "FUNCNAME",
        "FUNCNEST",
        "GLOBIGNORE",
        "GLOBSORT",
        "GROUPS",
        "HISTCMD",
        "HISTCONTROL",
        "HISTFILE",
        "HISTFILESIZE",
        "HISTIGNORE",
        "HISTSIZE",
        "HISTTIMEFORMAT",
        "HOSTFILE",
        "HOSTTYPE",
        "IFS",
        "IGNOREEOF",
        "INPUTRC",
        "INSIDE_EMACS",
        "LINENO",
        "LINES",
        "MACHTYPE",
        "MAIL",
        "MAILCHECK",
        "MAILPATH",
        "MAPFILE",
        "OLDPWD",
        "OPTARG",
        "OPTERR",
        "OPTIND",
        "OSTYPE",
        "PIPESTATUS",
        "POSIXLY_CORRECT",
        "PPID",
        "PROMPT_COMMAND",
        "PROMPT_DIRTRIM",
        "PS0",
        "PS1",
        "PS2",
        "PS3",
        "PS4",
        "PWD",
        "RANDOM",
        "REPLY",
        "SECONDS",
        "SHELLOPTS",
        "SHLVL",
        "SRANDOM",
        "TIMEFORMAT",
        "TMOUT",
        "UID",
        "auto_resume",
        "histchars",
    ]
)
_BASH_PREFIXES = ("BASH_", "COMP_", "READLINE_")

#: Set by bash at start-up only when absent from the environment.
COND_BASH_NAMES = frozenset({"PATH", "SHELL", "TERM", "HOSTNAME"})


def is_reserved(name: str) -> bool:
    """Names a file in the subset may neither read nor assign."""
    return (
        name in PROTOCOL_NAMES
        or name in BASH_NAMES
        or name.startswith(_PROTOCOL_PREFIXES)
        or name.startswith(_BASH_PREFIXES)
    )


def _no_assign(name: str) -> bool:
    return is_reserved(name) or name in ("LANG", "LANGUAGE") or name.startswith("LC_")


def valid_name(name: str) -> bool:
    return _NAME_RE.match(name) is not None


# --------------------------------------------------------------------------------------------
# Reading files


def normalize_crlf(data: bytes) -> bytes:
    """Drop every CR immediately before LF or at the end of the file (spec §2.4)."""
    if b"\r" not in data:
        return data
    return re.sub(rb"\r(?=\n|\Z)", b"", data)


def decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------------------------
# Syntax tree


class Lit(NamedTuple):
    text: str
    quoted: bool


class Param(NamedTuple):
    name: str
    idx: int
    op: str  # '' ':-' '-' ':+' '+' '#' '##' '%' '%%'
    arg: Optional[Tuple[Union[Lit, Param], ...]]
    dq: bool  # inside double quotes
    pos: int


Part = Union[Lit, Param]
Word = Tuple[Part, ...]


class Assign(NamedTuple):
    name: str
    idx: int
    append: bool
    value: Word


class ArrayAssign(NamedTuple):
    name: str
    append: bool
    elems: Tuple[Tuple[Optional[int], Word], ...]


class Simple(NamedTuple):
    """One command made only of assignments (``A=1 B[2]=x C=(...)``), performed left to right."""

    assigns: Tuple[Union[Assign, ArrayAssign], ...]
    pos: int
    end: int


class Export(NamedTuple):
    """``export A=1 B``: every value is expanded before the first assignment is made."""

    assigns: Tuple[Assign, ...]
    pos: int
    end: int


class UnsetTarget(NamedTuple):
    name: str
    idx: Optional[int]
    globbed: bool  # unquoted NAME[N]: bash applies pathname expansion to it
    text: str


class Unset(NamedTuple):
    targets: Tuple[UnsetTarget, ...]
    pos: int
    end: int


class Skipped(NamedTuple):
    """A statement outside the subset: ``text`` at ``pos``; the statement spans ``start``..``end``."""

    pos: int
    text: str
    start: int
    end: int
    #: nested deeper than :data:`MAX_NESTING`: refused, not handed to bash
    too_deep: bool = False


Statement = Union[Simple, Export, Unset]
Item = Union[Simple, Export, Unset, Skipped]


class _Outside(Exception):
    def __init__(self, pos: int, text: str) -> None:
        super().__init__(text)
        self.pos = pos
        self.text = text


#: How deep quotes and expansions (``"…"``, ``${…}``, ``$(…)``, backticks) may nest in one
#: statement. Real dkms.conf files nest two or three levels; the limit keeps every recursive step
#: of reading a file far from Python's recursion limit, whatever the input.
MAX_NESTING = 32


def too_deep_text(depth: int) -> str:
    """The description of a construct nested ``depth`` levels deep (beyond the limit)."""
    return f"quotes and expansions nested {depth} levels deep; the limit is {MAX_NESTING}"


class _TooDeep(_Outside):
    """Nesting beyond :data:`MAX_NESTING`; the text is completed by whoever measures the depth."""

    def __init__(self, pos: int, depth: int = MAX_NESTING + 1) -> None:
        super().__init__(pos, too_deep_text(depth))
        self.depth = depth


# --------------------------------------------------------------------------------------------
# Parser

_ASSIGN_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[([^\]\n]*)\])?(\+?)=")
_INDEX_RE = re.compile(r"(?:0|[1-9][0-9]{0,8})\Z")
_ELEM_INDEX_RE = re.compile(r"\[(0|[1-9][0-9]{0,8})\]=")
_UNSET_ARG_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(0|[1-9][0-9]{0,8})\])?\Z")
_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_0123456789")
_WORD_END = frozenset(" \t\n;&|<>()")
_META = frozenset("&|<>()")

_RESERVED_WORDS = frozenset(
    [
        "if",
        "then",
        "else",
        "elif",
        "fi",
        "case",
        "esac",
        "for",
        "select",
        "while",
        "until",
        "do",
        "done",
        "in",
        "function",
        "time",
        "{",
        "}",
        "!",
        "[[",
        "]]",
        "coproc",
    ]
)

# word contexts
_ASSIGN = 0  # value of NAME=...: no splitting, no globbing; tilde at start or after ':'
_ELEM = 1  # plain element of NAME=( ... ): splitting, globbing, brace and tilde expansion
_ELEM_ASSIGN = 2  # [N]=value element: like _ASSIGN, but brace expansion applies
_BRACE = 3  # word of ${NAME:-word} outside double quotes, and every pattern: ends at '}'
_DQ_BRACE = 4  # word of ${NAME:-word} inside double quotes


def _describe_command(word: str) -> str:
    if word in ("if", "case", "for", "while", "until", "select", "{", "[[", "function", "coproc"):
        return f"compound command `{word}`"
    if word in ("(", "(("):
        return "subshell or arithmetic command `(`"
    return f"command `{word}`"


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.n = len(text)
        self.i = 0
        self.depth = 0  # quotes and ${...} open around the current position

    def _nest(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise _TooDeep(pos)

    # -- character access (backslash-newline is removed outside single quotes and comments)

    def _c(self) -> str:
        s, i = self.s, self.i
        while s.startswith("\\\n", i):
            i += 2
        self.i = i
        return s[i] if i < self.n else ""

    def _after(self) -> str:
        """The character after the current one (skipping continuations)."""
        self._c()
        j = self.i + 1
        while self.s.startswith("\\\n", j):
            j += 2
        return self.s[j] if j < self.n else ""

    def _skip_blanks(self) -> None:
        while self._c() in (" ", "\t") and self.i < self.n:
            self.i += 1

    def _skip_comment(self) -> None:
        j = self.s.find("\n", self.i)
        self.i = self.n if j < 0 else j

    # -- file level

    def parse_file(self) -> List[Item]:
        items: List[Item] = []
        while True:
            # separators between statements
            while True:
                c = self._c()
                if c in (" ", "\t", "\n") and c:
                    self.i += 1
                elif c == "#":
                    self._skip_comment()
                else:
                    break
            if self.i >= self.n:
                return items
            start = self.i
            self.depth = 0
            try:
                items.append(self._statement())
            except _Outside as exc:
                skimmer = _Skimmer(self.s)
                end = skimmer.statement_end(start)
                if isinstance(exc, _TooDeep) or skimmer.too_deep_at is not None:
                    pos = exc.pos if isinstance(exc, _TooDeep) else skimmer.too_deep_at
                    assert pos is not None
                    depth = max(skimmer.deepest, MAX_NESTING + 1)
                    items.append(Skipped(pos, too_deep_text(depth), start, end, True))
                else:
                    items.append(Skipped(exc.pos, exc.text, start, end))
                self.i = end

    def _end_statement(self) -> None:
        """After the words of a statement: newline, ';', comment or end of file."""
        self._skip_blanks()
        c = self._c()
        if c == "" or c == "\n":
            return
        if c == "#":
            self._skip_comment()
            return
        if c == ";":
            if self._after() in (";", "&"):
                raise _Outside(self.i, "`;;` outside `case`")
            self.i += 1
            return
        if c == "&":
            if self._after() == "&":
                raise _Outside(self.i, "`&&` list")
            raise _Outside(self.i, "background command `&`")
        if c == "|":
            raise _Outside(self.i, "pipe or `||` list")
        if c in "<>":
            raise _Outside(self.i, "redirection")
        raise _Outside(self.i, f"syntax `{c}`")

    def _statement(self) -> Statement:
        start = self.i
        c = self._c()
        if c == ";":
            raise _Outside(self.i, "empty command before `;`")
        if c in _META:
            if c == "(":
                raise _Outside(self.i, "subshell or arithmetic command `(`")
            raise _Outside(self.i, f"syntax `{c}`")
        m = _ASSIGN_RE.match(self.s, self.i)
        if m is None:
            word = self._raw_word()
            end_ok = self._c() in ("", " ", "\t", "\n", ";")
            if word == "export" and end_ok:
                return self._export(start)
            if word == "unset" and end_ok:
                return self._unset(start)
            raise _Outside(start, _describe_command(word or c))
        assigns: List[Union[Assign, ArrayAssign]] = []
        while True:
            assigns.append(self._assignment())
            self._skip_blanks()
            c = self._c()
            if c in ("", "\n", ";", "#") or c in _META:
                break
            if _ASSIGN_RE.match(self.s, self.i) is None:
                pos = self.i
                word = self._raw_word()
                raise _Outside(pos, _describe_command(word))
        self._end_statement()
        return Simple(tuple(assigns), start, self.i)

    def _raw_word(self) -> str:
        """The raw text of the word at the current position (for messages), consuming it."""
        j = self.i
        while j < self.n and self.s[j] not in _WORD_END:
            if self.s[j] == "\\":
                j += 1
            j += 1
        word = self.s[self.i : j]
        self.i = j
        return word

    def _assignment(self) -> Union[Assign, ArrayAssign]:
        pos = self.i
        m = _ASSIGN_RE.match(self.s, self.i)
        assert m is not None
        name, sub, plus = m.group(1), m.group(2), m.group(3)
        if _no_assign(name):
            raise _Outside(pos, f"assignment to `{name}`")
        index = 0
        if sub is not None:
            if not _INDEX_RE.match(sub):
                raise _Outside(pos + len(name), f"array subscript `[{sub}]`")
            index = int(sub)
        self.i = m.end()
        if self.s.startswith("(", self.i):
            if sub is not None:
                raise _Outside(self.i, "compound assignment to an array element")
            self.i += 1
            return ArrayAssign(name, bool(plus), self._array_elems())
        value = self._word(_ASSIGN)
        return Assign(name, index, bool(plus), value)

    def _array_elems(self) -> Tuple[Tuple[Optional[int], Word], ...]:
        elems: List[Tuple[Optional[int], Word]] = []
        while True:
            c = self._c()
            if c in (" ", "\t", "\n") and c:
                self.i += 1
                continue
            if c == "#":
                self._skip_comment()
                continue
            if c == ")":
                self.i += 1
                break
            if c == "":
                raise _Outside(self.i, "unterminated `(`")
            if c in _META or c == ";":
                raise _Outside(self.i, f"`{c}` in an array assignment")
            if c == "[":
                m = _ELEM_INDEX_RE.match(self.s, self.i)
                if m is None:
                    raise _Outside(self.i, "array element starting with `[`")
                self.i = m.end()
                elems.append((int(m.group(1)), self._word(_ELEM_ASSIGN)))
            else:
                elems.append((None, self._word(_ELEM)))
        c = self._c()
        if c not in ("", " ", "\t", "\n", ";"):
            raise _Outside(self.i, f"`{c}` after an array assignment")
        return tuple(elems)

    def _export(self, start: int) -> Export:
        assigns: List[Assign] = []
        while True:
            self._skip_blanks()
            c = self._c()
            if c in ("", "\n", ";", "#") or c in _META:
                break
            pos = self.i
            m = _ASSIGN_RE.match(self.s, self.i)
            if m is not None:
                name = m.group(1)
                if m.group(2) is not None or m.group(3):
                    raise _Outside(pos, "`export` of an array element or with `+=`")
                if _no_assign(name):
                    raise _Outside(pos, f"assignment to `{name}`")
                self.i = m.end()
                if self.s.startswith("(", self.i):
                    raise _Outside(self.i, "`export` of an array")
                assigns.append(Assign(name, 0, False, self._word(_ASSIGN)))
                continue
            word = self._raw_word()
            if not valid_name(word) or is_reserved(word):
                raise _Outside(pos, f"`export {word}`")
            if self._c() not in ("", " ", "\t", "\n", ";"):
                raise _Outside(self.i, "`export` argument")
        self._end_statement()
        return Export(tuple(assigns), start, self.i)

    def _unset(self, start: int) -> Unset:
        targets: List[UnsetTarget] = []
        while True:
            self._skip_blanks()
            c = self._c()
            if c in ("", "\n", ";", "#") or c in _META:
                break
            pos = self.i
            quote = ""
            if c in ("'", '"'):
                quote = c
                end = self.s.find(c, self.i + 1)
                if end < 0:
                    raise _Outside(pos, "unterminated quote")
                text = self.s[self.i + 1 : end]
                self.i = end + 1
                if self._c() not in ("", " ", "\t", "\n", ";"):
                    raise _Outside(pos, "`unset` argument")
            else:
                text = self._raw_word()
            if not quote and text == "-v":
                continue
            m = _UNSET_ARG_RE.match(text)
            if m is None or (quote == '"' and ("$" in text or "\\" in text)):
                raise _Outside(pos, f"`unset {text}`")
            name = m.group(1)
            if _no_assign(name):
                raise _Outside(pos, f"`unset {name}`")
            idx = None if m.group(2) is None else int(m.group(2))
            targets.append(UnsetTarget(name, idx, not quote and idx is not None, text))
        self._end_statement()
        return Unset(tuple(targets), start, self.i)

    # -- words

    def _word(self, ctx: int) -> Word:
        """A word in an assignment or array context (ends at a blank or a metacharacter)."""
        parts: List[Part] = []
        buf: List[str] = []
        at_start = True
        after_colon = False

        def flush() -> None:
            if buf:
                parts.append(Lit("".join(buf), False))
                buf.clear()

        while True:
            c = self._c()
            if c == "" or c in _WORD_END:
                break
            pos = self.i
            if c == "\\":
                if self.i + 1 >= self.n:
                    raise _Outside(pos, "backslash at end of file")
                flush()
                parts.append(Lit(self.s[self.i + 1], True))
                self.i += 2
            elif c == "'":
                end = self.s.find("'", self.i + 1)
                if end < 0:
                    raise _Outside(pos, "unterminated single quote")
                flush()
                parts.append(Lit(self.s[self.i + 1 : end], True))
                self.i = end + 1
            elif c == '"':
                flush()
                self.i += 1
                parts.extend(self._dq_body(closing=True))
            elif c == "$":
                part = self._dollar(dq=False)
                if isinstance(part, Param):
                    if ctx == _ELEM:
                        raise _Outside(pos, "unquoted expansion in an array element (word splitting)")
                    flush()
                    parts.append(part)
                else:
                    buf.append("$")
            elif c == "`":
                raise _Outside(pos, "command substitution `...`")
            else:
                if c == "~" and (at_start or (after_colon and ctx != _ELEM)):
                    raise _Outside(pos, "tilde expansion `~`")
                if ctx == _ELEM and c in "*?[":
                    raise _Outside(pos, f"pattern character `{c}` in an array element (pathname expansion)")
                if ctx in (_ELEM, _ELEM_ASSIGN) and c == "{":
                    raise _Outside(pos, "`{` in an array element (brace expansion)")
                buf.append(c)
                self.i += 1
                at_start = False
                after_colon = c == ":"
                continue
            at_start = False
            after_colon = False
        flush()
        return tuple(parts)

    def _dq_body(self, closing: bool) -> List[Part]:
        """Contents of a double-quoted string; with ``closing`` up to and including the '"'."""
        opening = self.i - 1
        self._nest(max(opening, 0))
        try:
            return self._dq_parts(closing, opening)
        finally:
            self.depth -= 1

    def _dq_parts(self, closing: bool, opening: int) -> List[Part]:
        parts: List[Part] = []
        buf: List[str] = []

        def flush() -> None:
            if buf:
                parts.append(Lit("".join(buf), True))
                buf.clear()

        while True:
            c = self._c()
            pos = self.i
            if c == "":
                if closing:
                    raise _Outside(opening, "unterminated double quote")
                break
            if c == '"':
                if not closing:
                    raise _Outside(pos, 'double quote `"`')
                self.i += 1
                break
            if c == "\\":
                nxt = self.s[self.i + 1] if self.i + 1 < self.n else ""
                if nxt == "":
                    raise _Outside(pos, "backslash at end of a double-quoted string")
                if nxt in '$`"\\':
                    buf.append(nxt)
                    self.i += 2
                else:
                    buf.append("\\")
                    self.i += 1
            elif c == "$":
                part = self._dollar(dq=True)
                if isinstance(part, Param):
                    flush()
                    parts.append(part)
                else:
                    buf.append("$")
            elif c == "`":
                raise _Outside(pos, "command substitution `...`")
            else:
                buf.append(c)
                self.i += 1
        flush()
        return parts

    def _read_name(self) -> str:
        out = []
        while True:
            c = self._c()
            if c and c in _NAME_CHARS:
                out.append(c)
                self.i += 1
            else:
                return "".join(out)

    def _check_name(self, name: str, pos: int) -> None:
        if name == "_":
            raise _Outside(pos, "special parameter `$_`")
        if is_reserved(name):
            raise _Outside(pos, f"reference to `${name}`")

    def _dollar(self, dq: bool) -> Union[Param, str]:
        """At '$': an expansion, or '$' when it stays literal."""
        pos = self.i
        self.i += 1
        c = self._c()
        if c and c in _NAME_START:
            name = self._read_name()
            self._check_name(name, pos)
            return Param(name, 0, "", None, dq, pos)
        if c == "{":
            self.i += 1
            self._nest(pos)
            try:
                return self._brace(dq, pos)
            finally:
                self.depth -= 1
        if c == "(":
            if self._after() == "(":
                raise _Outside(pos, "arithmetic expansion `$((...))`")
            raise _Outside(pos, "command substitution `$(...)`")
        if c == "[":
            raise _Outside(pos, "arithmetic expansion `$[...]`")
        if c and (c.isdigit() or c in "@*#?-$!"):
            raise _Outside(pos, f"special parameter `${c}`")
        if not dq and c == "'":
            raise _Outside(pos, "ANSI-C quoting `$'...'`")
        if not dq and c == '"':
            raise _Outside(pos, 'locale quoting `$"..."`')
        return "$"

    def _brace(self, dq: bool, pos: int) -> Param:
        c = self._c()
        if c == "#":
            raise _Outside(pos, "length expansion `${#...}`")
        if c == "!":
            raise _Outside(pos, "indirect expansion `${!...}`")
        if not c or c not in _NAME_START:
            raise _Outside(pos, "special or invalid parameter expansion `${...}`")
        name = self._read_name()
        self._check_name(name, pos)
        index = 0
        c = self._c()
        if c == "[":
            end = self.s.find("]", self.i)
            sub = self.s[self.i + 1 : end] if end >= 0 else ""
            if end < 0 or not _INDEX_RE.match(sub):
                raise _Outside(pos, f"array subscript in `${{{name}[...]}}`")
            index = int(sub)
            self.i = end + 1
            c = self._c()
        if c == "}":
            self.i += 1
            return Param(name, index, "", None, dq, pos)
        op = ""
        if c == ":":
            nxt = self._after()
            if nxt in ("-", "+"):
                op = ":" + nxt
        elif c in ("-", "+"):
            op = c
        elif c in ("#", "%"):
            op = c + c if self._after() == c else c
        if not op:
            raise _Outside(pos, f"parameter expansion `${{{name}{c}...}}`")
        # consume the operator characters
        for _ in op:
            self._c()
            self.i += 1
        if op in ("#", "##", "%", "%%") or not dq:
            arg = self._brace_word(_BRACE)
        else:
            arg = self._brace_word(_DQ_BRACE)
        return Param(name, index, op, arg, dq, pos)

    def _brace_word(self, ctx: int) -> Word:
        """The word inside ``${NAME<op>...}`` up to the closing brace (consumed)."""
        parts: List[Part] = []
        buf: List[str] = []
        quoted = ctx == _DQ_BRACE

        def flush() -> None:
            if buf:
                parts.append(Lit("".join(buf), quoted))
                buf.clear()

        while True:
            c = self._c()
            pos = self.i
            if c == "":
                raise _Outside(pos, "unterminated `${`")
            if c == "}":
                self.i += 1
                break
            if c == "\\":
                nxt = self.s[self.i + 1] if self.i + 1 < self.n else ""
                if nxt == "":
                    raise _Outside(pos, "backslash at end of file")
                if ctx == _DQ_BRACE:
                    if nxt in '$`"\\}':
                        buf.append(nxt)
                        self.i += 2
                    elif nxt == "'":
                        raise _Outside(pos, "`\\'` inside `${...}` in double quotes")
                    else:
                        buf.append("\\")
                        self.i += 1
                else:
                    flush()
                    parts.append(Lit(nxt, True))
                    self.i += 2
            elif c == "'":
                if ctx == _DQ_BRACE:
                    raise _Outside(pos, "single quote inside `${...}` in double quotes")
                end = self.s.find("'", self.i + 1)
                if end < 0:
                    raise _Outside(pos, "unterminated single quote")
                flush()
                parts.append(Lit(self.s[self.i + 1 : end], True))
                self.i = end + 1
            elif c == '"':
                if ctx == _DQ_BRACE:
                    raise _Outside(pos, "double quotes nested inside `${...}` in double quotes")
                flush()
                self.i += 1
                for p in self._dq_body(closing=True):
                    parts.append(p)
            elif c == "$":
                part = self._dollar(dq=ctx == _DQ_BRACE)
                if isinstance(part, Param):
                    flush()
                    parts.append(part)
                else:
                    buf.append("$")
            elif c == "`":
                raise _Outside(pos, "command substitution `...`")
            else:
                if ctx == _BRACE and (c in "~{" or (c in _WORD_END and c not in " \t()|")):
                    raise _Outside(pos, "`{}` inside `${{...}}`".format("newline" if c == "\n" else c))
                if ctx == _DQ_BRACE and c == "{":
                    raise _Outside(pos, "`{` inside `${...}`")
                buf.append(c)
                self.i += 1
        flush()
        return tuple(parts)


def parse_dq_content(text: str) -> Word:
    """Parse ``text`` as the inside of a double-quoted string (upstream's second pass)."""
    p = _Parser(text)
    return tuple(p._dq_body(closing=False))


# --------------------------------------------------------------------------------------------
# Skimmer: finds where a statement outside the subset ends (whole compound commands)

_OPS = sorted(
    [
        ";;&",
        ";;",
        ";&",
        "&&",
        "||",
        "|&",
        "&>>",
        "&>",
        ">>",
        ">&",
        ">|",
        "<<<",
        "<<-",
        "<<",
        "<&",
        "<>",
        ";",
        "&",
        "|",
        "<",
        ">",
        "(",
        ")",
    ],
    key=len,
    reverse=True,
)


class _Skimmer:
    """A forgiving bash tokenizer that knows enough structure to skip whole commands.

    Nested quotes and expansions are followed with an explicit stack, not by recursion, so any
    depth is skimmed; the deepest nesting seen is recorded for the depth limit.
    """

    def __init__(self, text: str) -> None:
        self.s = text
        self.n = len(text)
        #: the deepest nesting of quotes and expansions seen so far
        self.deepest = 0
        #: where the nesting first went beyond :data:`MAX_NESTING`
        self.too_deep_at: Optional[int] = None
        self._uncounted = 0  # frames on the stack that are plain parentheses, not nesting

    def _push(self, stack: List[List[Union[str, int]]], frame: List[Union[str, int]], j: int) -> None:
        stack.append(frame)
        depth = len(stack) - self._uncounted
        if depth > self.deepest:
            self.deepest = depth
            if depth > MAX_NESTING and self.too_deep_at is None:
                self.too_deep_at = j

    def _open(self, stack: List[List[Union[str, int]]], j: int) -> int:
        """At a quote, backslash or ``$`` at j: skip what has no inner structure, or open a frame."""
        s, n = self.s, self.n
        c = s[j]
        if c == "'":
            k = s.find("'", j + 1)
            return n if k < 0 else k + 1
        if c == "\\":
            return min(j + 2, n)
        if c in '"`':
            self._push(stack, [c, 0], j)
            return j + 1
        if c == "$":
            nxt = s[j + 1] if j + 1 < n else ""
            if nxt in ("(", "{"):
                self._push(stack, [nxt, 1], j)
                return j + 2
            if nxt == "'":
                k = j + 2
                while k < n and s[k] != "'":
                    k += 2 if s[k] == "\\" else 1
                return min(k + 1, n)
            if nxt == '"':
                self._push(stack, ['"', 0], j)
                return j + 2
        return j + 1

    def _run(self, stack: List[List[Union[str, int]]], k: int) -> int:
        """Scan from k until every open frame is closed; returns the index after the last one."""
        s, n = self.s, self.n
        while stack:
            if k >= n:
                return n
            top = stack[-1]
            kind = top[0]
            c = s[k]
            if kind == "`":
                if c == "\\":
                    k += 2
                else:
                    if c == "`":
                        stack.pop()
                    k += 1
            elif kind == '"':
                if c == '"':
                    stack.pop()
                    k += 1
                elif c == "\\":
                    k += 2
                elif c in "$`":
                    k = self._open(stack, k)
                else:
                    k += 1
            elif c == kind:
                top[1] = int(top[1]) + 1
                k += 1
            elif c == (")" if kind == "(" else "}"):
                top[1] = int(top[1]) - 1
                k += 1
                if top[1] == 0:
                    stack.pop()
            elif c in "'\"`\\$":
                k = self._open(stack, k)
            else:
                k += 1
        return min(k, n)

    def _skip_quoted(self, j: int) -> int:
        """j at a quote/expansion start; returns the index after it."""
        stack: List[List[Union[str, int]]] = []
        return self._run(stack, self._open(stack, j))

    def _balanced(self, j: int) -> int:
        """j at a plain ``(`` (not counted as nesting); the index after its matching ``)``."""
        self._uncounted = 1
        try:
            return self._run([["(", 1]], j + 1)
        finally:
            self._uncounted = 0

    def token(self, j: int) -> Tuple[str, str, int]:
        """(kind, text, end) of the token at j; kind in EOF NL OP WORD."""
        s, n = self.s, self.n
        while True:
            while j < n and s[j] in " \t":
                j += 1
            if s.startswith("\\\n", j):
                j += 2
                continue
            break
        if j >= n:
            return "EOF", "", n
        c = s[j]
        if c == "\n":
            return "NL", "\n", j + 1
        if c == "#":
            k = s.find("\n", j)
            return self.token(n if k < 0 else k)
        if c in "<>" and j + 1 < n and s[j + 1] == "(":
            end = self._balanced(j + 1)
            return "WORD", s[j:end], end
        for op in _OPS:
            if s.startswith(op, j):
                return "OP", op, j + len(op)
        k = j
        while k < n:
            c = s[k]
            if c in " \t\n;&|<>()":
                if c == "(" and k > j:
                    prev = s[k - 1]
                    if prev in "?*+@!" or (
                        prev == "=" and re.match(r"[A-Za-z_][A-Za-z0-9_]*(\[[^\]]*\])?\+?=\Z", s[j:k])
                    ):
                        k = self._balanced(k)
                        continue
                break
            if c in "'\"`\\$":
                k = self._skip_quoted(k)
            else:
                k += 1
        return "WORD", s[j:k], k

    def _heredoc_end(self, j: int, delims: List[Tuple[str, bool]]) -> int:
        """Skip the here-document bodies that start at j (the line after the operator)."""
        s, n = self.s, self.n
        for delim, strip_tabs in delims:
            while j < n:
                k = s.find("\n", j)
                line = s[j : n if k < 0 else k]
                j = n if k < 0 else k + 1
                if strip_tabs:
                    line = line.lstrip("\t")
                if line == delim:
                    break
        return j

    def statement_end(self, start: int) -> int:
        """Index just after the complete command that starts at ``start``."""
        stack: List[List[str]] = []  # [closer, state]
        cmdpos = True
        cont = False
        need_body = False
        fn = 0  # 1: command word (function name?), 2: saw its '(', 3: after `function`
        heredocs: List[Tuple[str, bool]] = []
        pending: Optional[bool] = None
        skip_word = False
        j = start
        while True:
            kind, text, j = self.token(j)
            if kind == "EOF":
                return self.n
            if pending is not None:
                if kind == "WORD":
                    heredocs.append((re.sub(r"[\"'\\]", "", text), pending))
                    pending = None
                    continue
                pending = None
            top = stack[-1] if stack else None
            in_pat = top is not None and top[0] == "esac" and top[1] == "pat"
            if kind == "NL":
                if heredocs:
                    j = self._heredoc_end(j, heredocs)
                    heredocs = []
                fn = 0
                if not stack and not cont and not need_body:
                    return j
                if not in_pat:
                    cmdpos = True
                continue
            if kind == "OP":
                if text in ("<<", "<<-"):
                    pending = text == "<<-"
                    fn = 0
                    continue
                if in_pat:
                    if text == ")":
                        assert top is not None
                        top[1] = "body"
                        cmdpos = True
                    continue
                if fn == 1 and text == "(":
                    fn = 2
                    continue
                if fn == 2 and text == ")":
                    fn = 0
                    need_body = True
                    cmdpos = True
                    continue
                fn = 0
                if text in (";", "&"):
                    if not stack and not need_body:
                        return j
                    cmdpos = True
                    cont = False
                    continue
                if text in (";;", ";&", ";;&"):
                    for entry in reversed(stack):
                        if entry[0] == "esac":
                            entry[1] = "pat"
                            break
                    cmdpos = False
                    continue
                if text in ("&&", "||", "|", "|&"):
                    cont = True
                    cmdpos = True
                    continue
                if text == "(":
                    stack.append([")", ""])
                    cmdpos = True
                    need_body = False
                    continue
                if text == ")":
                    if top is not None and top[0] == ")":
                        stack.pop()
                    cmdpos = False
                    continue
                skip_word = True  # redirection: the next word is its target
                continue
            # WORD
            cont = False
            if skip_word:
                skip_word = False
                continue
            if in_pat:
                if text == "esac":
                    stack.pop()
                    cmdpos = False
                continue
            if top is not None and top[0] == "esac" and top[1] == "word":
                if text == "in":
                    top[1] = "pat"
                continue
            if fn == 3:
                fn = 1
                need_body = True
                cmdpos = True
                continue
            if cmdpos and text in _RESERVED_WORDS:
                fn = 0
                if text in ("fi", "esac", "done", "}"):
                    if top is not None and top[0] == text:
                        stack.pop()
                    cmdpos = False
                    continue
                need_body = False
                if text == "if":
                    stack.append(["fi", ""])
                elif text == "case":
                    stack.append(["esac", "word"])
                    cmdpos = False
                    continue
                elif text in ("for", "select"):
                    stack.append(["done", ""])
                    cmdpos = False
                    continue
                elif text in ("while", "until"):
                    stack.append(["done", ""])
                elif text == "{":
                    stack.append(["}", ""])
                elif text == "[[":
                    stack.append(["]]", ""])
                    cmdpos = False
                    continue
                elif text == "function":
                    fn = 3
                    cmdpos = False
                    continue
                cmdpos = True
                continue
            if text == "]]" and top is not None and top[0] == "]]":
                stack.pop()
                cmdpos = False
                continue
            if cmdpos and _ASSIGN_RE.match(text):
                continue
            fn = 1 if cmdpos else 0
            cmdpos = False


# --------------------------------------------------------------------------------------------
# Parsed files and their cache


class ParsedFile:
    __slots__ = ("items", "line_starts", "path")

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        if "\0" in text:
            self.items: List[Item] = [Skipped(text.index("\0"), "NUL byte", 0, len(text))]
        else:
            self.items = _Parser(text).parse_file()

    def line_of(self, pos: int) -> int:
        return bisect_right(self.line_starts, pos)

    def first_outside(self, too_deep: bool = False) -> Optional[Construct]:
        """The first statement outside the subset; with ``too_deep``, the first nested too deep."""
        for item in self.items:
            if isinstance(item, Skipped) and (item.too_deep or not too_deep):
                return self.construct(item)
        return None

    def construct(self, item: Skipped) -> Construct:
        return Construct(self.path, self.line_of(item.pos), item.text, item.too_deep)


_CACHE: Dict[Tuple[str, int, int, int, int], ParsedFile] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_MAX = 512


def parse_text(path: Path, data: bytes) -> ParsedFile:
    """Parse file contents (not cached)."""
    return ParsedFile(path, decode(normalize_crlf(data)))


def parse_file(path: Path) -> ParsedFile:
    """Parse ``path``, cached by (path, mtime_ns, size, inode, device)."""
    st = os.stat(path)
    key = (str(path), st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    with open(path, "rb") as fh:
        data = fh.read()
    parsed = parse_text(path, data)
    with _CACHE_LOCK:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        _CACHE[key] = parsed
    return parsed


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
    _DQ_CACHE.clear()


_DQ_CACHE: Dict[str, Union[Word, _Outside]] = {}


def _dq_depth(content: str) -> int:
    """How deep quotes and expansions nest in ``content`` read as a double-quoted string."""
    skimmer = _Skimmer(content)
    stack: List[List[Union[str, int]]] = []
    skimmer._push(stack, ['"', 0], 0)
    skimmer._run(stack, 0)
    return skimmer.deepest


def _parse_dq_cached(content: str) -> Word:
    hit = _DQ_CACHE.get(content)
    if hit is None:
        try:
            hit = parse_dq_content(content)
        except _TooDeep:
            hit = _TooDeep(0, max(_dq_depth(content), MAX_NESTING + 1))
        except _Outside as exc:
            hit = exc
        if len(_DQ_CACHE) > 4096:
            _DQ_CACHE.clear()
        _DQ_CACHE[content] = hit
    if isinstance(hit, _TooDeep):
        raise _TooDeep(0, hit.depth)
    if isinstance(hit, _Outside):
        raise _Outside(0, hit.text)
    return hit


# --------------------------------------------------------------------------------------------
# Evaluation

_IFS_SPLIT = re.compile(r"[ \t\n]+")
_SECOND_PASS_SPECIAL = re.compile(r'[$\\`"]')

Arr = Dict[int, str]


class _RuntimeOutside(Exception):
    """``refused``: bash must not be used instead (it would read file names as code)."""

    def __init__(self, construct: Construct, refused: bool = False) -> None:
        super().__init__(str(construct))
        self.construct = construct
        self.refused = refused


def _show_name(name: str) -> str:
    """A file name for a message: quoted, undecodable bytes and control characters escaped."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "'" + "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text) + "'"


#: characters of a file name that are syntax when upstream re-reads it inside double quotes
_DQ_SYNTAX = frozenset('"$`\\')


class _EchoLine(ParsedFile):
    """A line upstream's echo step printed, parsed as the parent shell reads it; it belongs to ``where``."""

    __slots__ = ("line",)

    def __init__(self, where: Tuple[Path, int], text: str) -> None:
        super().__init__(where[0], text)
        self.line = where[1]

    def line_of(self, pos: int) -> int:
        return self.line


def _esc(text: str) -> str:
    return "".join("\\" + ch for ch in text)


class Evaluation:
    """One evaluation of a chain of parsed files for one context."""

    def __init__(
        self,
        whitelist: Sequence[str],
        context: Mapping[str, str],
        environ: Mapping[str, str],
        injections: Sequence[Tuple[str, str]],
        lenient: bool,
        dircache: Optional[_glob.DirCache] = None,
        initial: Optional[Mapping[str, Mapping[int, str]]] = None,
    ) -> None:
        self.whitelist = tuple(whitelist)
        self.environ = environ
        self.injections = tuple(injections)
        self.lenient = lenient
        self.dircache = dircache if dircache is not None else _glob.DirCache()
        self.bytewise = _glob.collation_is_bytewise(environ)
        self.bytes_mode = _glob.ctype_is_bytes(environ)
        #: pathname expansion has put file names into an echoed line: bash must not redo this
        #: evaluation, since it would read those names (or new ones) as code
        self.spliced = False
        self.deps: Set[str] = set()
        self.warned: Set[str] = set()
        self.warnings: List[str] = []
        self.outside: Optional[Construct] = None
        self.ctx_objs: Dict[str, Arr] = {k: {0: v} for k, v in context.items()}
        self.parent: Dict[str, Arr] = {w: {} for w in self.whitelist}
        for name, arr in (initial or {}).items():
            self.parent[name] = {int(i): v for i, v in arr.items()}
        self.parent.update(self.ctx_objs)
        self.origins: Dict[str, Tuple[Path, int]] = {}
        #: where each whitelisted element got its value: name -> index -> (file, line)
        self.element_origins: Dict[str, Dict[int, Tuple[Path, int]]] = {}
        #: the assignments of the file being run; they count once the echo step prints the element
        #: (an element the file assigns and then unsets keeps the earlier file's value and origin)
        self._pending: Dict[str, Dict[int, Tuple[Path, int]]] = {}
        self._file: Optional[ParsedFile] = None
        self._where: str = "?"

    # -- variables

    def _lookup(self, scope: Dict[str, Arr], name: str, pos: int) -> Optional[Arr]:
        arr = scope.get(name)
        if arr is not None:
            if self.ctx_objs.get(name) is arr:
                self.deps.add(name)
            return arr
        self.deps.add(name)
        val = self.environ.get(name)
        if val is None:
            if name in COND_BASH_NAMES:
                raise _Outside(
                    pos, f"reference to `${name}` (bash sets it when it is not in the environment)"
                )
            return None
        return {0: val}

    def _warn_unset(self, name: str, pos: int) -> None:
        if name in self.warned:
            return
        self.warned.add(name)
        where = f"{self._file.path}:{self._file.line_of(pos)}" if self._file is not None else self._where
        self.warnings.append(f"{where}: uses ${name} which is not set")

    def _param(self, scope: Dict[str, Arr], p: Param) -> str:
        arr = self._lookup(scope, p.name, p.pos)
        val = arr.get(p.idx) if arr else None
        op = p.op
        if not op:
            if val is None:
                self._warn_unset(p.name, p.pos)
                return ""
            return val
        if op == ":-":
            return val if val else self._word(scope, p.arg or ())
        if op == "-":
            return val if val is not None else self._word(scope, p.arg or ())
        if op == ":+":
            return self._word(scope, p.arg or ()) if val else ""
        if op == "+":
            return self._word(scope, p.arg or ()) if val is not None else ""
        if val is None:
            self._warn_unset(p.name, p.pos)
            val = ""
        pattern = self._pattern(scope, p.arg or (), False)
        try:
            return _glob.remove_match(val, pattern, op, self.bytes_mode)
        except _glob.Unsupported as exc:
            raise _Outside(p.pos, exc.text) from None

    def _word(self, scope: Dict[str, Arr], word: Word) -> str:
        if len(word) == 1:
            p = word[0]
            return p.text if isinstance(p, Lit) else self._param(scope, p)
        return "".join(p.text if isinstance(p, Lit) else self._param(scope, p) for p in word)

    def _pattern(self, scope: Dict[str, Arr], word: Word, quoted: bool) -> str:
        out: List[str] = []
        for p in word:
            if isinstance(p, Lit):
                out.append(_esc(p.text) if (quoted or p.quoted) else p.text)
                continue
            q = quoted or p.dq
            if p.op in ("", "#", "##", "%", "%%"):
                v = self._param(scope, p)
                out.append(_esc(v) if q else v)
                continue
            arr = self._lookup(scope, p.name, p.pos)
            val = arr.get(p.idx) if arr else None
            if p.op == ":-":
                use_arg, res = (False, val) if val else (True, "")
            elif p.op == "-":
                use_arg, res = (False, val) if val is not None else (True, "")
            elif p.op == ":+":
                use_arg, res = (True, "") if val else (False, "")
            else:  # "+"
                use_arg, res = (True, "") if val is not None else (False, "")
            if use_arg:
                out.append(self._pattern(scope, p.arg or (), q))
            else:
                out.append(_esc(res or "") if q else (res or ""))
        return "".join(out)

    # -- subshell statements

    def _own(self, scope: Dict[str, Arr], owned: Set[str], name: str) -> Arr:
        """The subshell's own (writable) array for ``name``."""
        if name in owned:
            return scope[name]
        arr = scope.get(name)
        if arr is None:
            self.deps.add(name)
            env = self.environ.get(name)
            new: Arr = {} if env is None else {0: env}
        else:
            if self.ctx_objs.get(name) is arr:
                self.deps.add(name)
            new = dict(arr)
        scope[name] = new
        owned.add(name)
        return new

    def _exec(self, scope: Dict[str, Arr], owned: Set[str], st: Statement, pf: ParsedFile) -> None:
        line = pf.line_of(st.pos)
        if isinstance(st, Simple):
            for a in st.assigns:
                where = (pf.path, line)
                if isinstance(a, Assign):
                    value = self._word(scope, a.value)
                    arr = self._own(scope, owned, a.name)
                    arr[a.idx] = (arr.get(a.idx, "") + value) if a.append else value
                    self._pending.setdefault(a.name, {})[a.idx] = where
                else:
                    values = [(idx, self._word(scope, w)) for idx, w in a.elems]
                    if a.append:
                        arr = self._own(scope, owned, a.name)
                    else:
                        arr = {}
                        scope[a.name] = arr
                        owned.add(a.name)
                    nxt = (max(arr) + 1) if arr else 0
                    for idx, v in values:
                        i = nxt if idx is None else idx
                        arr[i] = v
                        self._pending.setdefault(a.name, {})[i] = where
                        nxt = i + 1
                self.origins[a.name] = where
        elif isinstance(st, Export):
            exported = [self._word(scope, a.value) for a in st.assigns]
            for a, v in zip(st.assigns, exported):
                self._own(scope, owned, a.name)[0] = v
                self.origins[a.name] = (pf.path, line)
                self._pending.setdefault(a.name, {})[0] = (pf.path, line)
        else:
            for t in st.targets:
                if t.name in self.ctx_objs:
                    raise _Outside(st.pos, f"`unset {t.name}` of a context variable")
                if t.globbed:
                    try:
                        m = _glob.expand_pathname(t.text, self.dircache, self.bytewise, self.bytes_mode)
                    except _glob.Unsupported as exc:
                        raise _Outside(st.pos, exc.text) from None
                    if m is not None:
                        # bash unsets the variables named like the files (NAME[N] matches NAMEd)
                        for matched in m:
                            if matched in self.ctx_objs or not valid_name(matched) or _no_assign(matched):
                                raise _Outside(
                                    st.pos, f"`unset {t.text}` matches the file {_show_name(matched)}"
                                )
                            scope[matched] = {}
                            owned.add(matched)
                        continue
                if t.idx is None:
                    scope[t.name] = {}
                    owned.add(t.name)
                else:
                    self._own(scope, owned, t.name).pop(t.idx, None)

    # -- the echo step and the parent's second pass

    def _expand(self, field: str) -> Optional[List[str]]:
        return _glob.expand_pathname(field, self.dircache, self.bytewise, self.bytes_mode)

    def _echo_line(self, name: str, index: int, value: str) -> Tuple[str, List[str]]:
        """The line upstream's ``eval echo`` prints for NAME[i], and the file names its pathname
        expansion put into it (the printed line is ``NAME[i]="<value>"`` when there are none).

        The whole ``NAME[i]="<value>"`` is split, so the first field starts with ``NAME[i]="`` (its
        bracket matches one digit of i) and the last ends with the closing quote.
        """
        if value.endswith("\r"):
            value = value[:-1]
        prefix = f'{name}[{index}]="'
        tokens = _IFS_SPLIT.split(value)
        if len(tokens) == 1:
            fields = [prefix + value + '"']
        else:
            fields = [prefix + tokens[0], *tokens[1:-1], tokens[-1] + '"']
        out: List[str] = []
        names: List[str] = []
        for k, field in enumerate(fields):
            m = None
            if k == 0:
                if self._first_field_may_match(name, index, field[len(prefix) :]):
                    m = self._expand(field)
            elif _glob.has_magic(field):
                m = self._expand(field)
            if m is None:
                out.append(field)
            else:
                out.extend(m)
                names.extend(m)
        return " ".join(out), names

    def _first_field_may_match(self, name: str, index: int, rest: str) -> bool:
        head = rest.split("/", 1)[0]
        # The bracket in NAME[i]=" matches one digit of i: nothing can match unless a
        # file or directory NAME<d>="<head> exists.
        return (
            _glob.has_magic(head)
            or "\\" in head
            or any(self.dircache.cwd_has(f'{name}{d}="{head}') for d in set(str(index)))
        )

    def _reread_line(
        self, line: str, names: Sequence[str], where: Tuple[Path, int], what: str, owned: Set[str]
    ) -> None:
        """The parent shell reads an echoed line that holds file names: as data, or refused.

        bash would run whatever the names make of the line (upstream's protocol re-reads it as
        code); here it must be plain assignments, or the evaluation is refused, never handed to bash.
        """
        unsafe = [n for n in names if _DQ_SYNTAX.intersection(n)]

        def refuse(detail: str) -> _RuntimeOutside:
            shown = _show_name((unsafe or list(names))[0])
            text = (
                f"{what}: pathname expansion gives the file name {shown}, which upstream's "
                f"re-reading of the value would run as code ({detail})"
            )
            return _RuntimeOutside(Construct(where[0], where[1], text), refused=True)

        pf = _EchoLine(where, line)
        for item in pf.items:
            if isinstance(item, Skipped):
                raise refuse(item.text)
        saved = self._file
        self._file = pf
        try:
            for item in pf.items:
                assert not isinstance(item, Skipped)
                self._exec(self.parent, owned, item, pf)
        except _Outside as exc:
            raise refuse(exc.text) from None
        finally:
            self._file = saved

    def _second_pass(self, content: str, where: Tuple[Path, int], what: str) -> str:
        if _SECOND_PASS_SPECIAL.search(content) is None:
            return content

        def outside(text: str) -> _RuntimeOutside:
            return _RuntimeOutside(Construct(where[0], where[1], f"{what} {text}"))

        if '"' in content:
            raise outside('contains `"` (upstream re-reads the value as code)')
        if "`" in content:
            raise outside("contains a backtick (upstream re-reads the value as code)")
        if "$(" in content:
            raise outside("contains `$(` (upstream re-reads the value as code)")
        stripped = content.rstrip("\\")
        if (len(content) - len(stripped)) % 2:
            raise outside("ends in a backslash (upstream re-reads the value as code)")
        saved = self._file
        self._file = None
        self._where = f"{where[0]}:{where[1]}"
        try:
            return self._word(self.parent, _parse_dq_cached(content))
        except _TooDeep as exc:
            text = f"{what} on re-reading: {exc.text}"
            raise _RuntimeOutside(Construct(where[0], where[1], text, too_deep=True)) from None
        except _Outside as exc:
            raise outside(f"on re-reading: {exc.text}") from None
        finally:
            self._file = saved

    def _parent_set(self, owned: Set[str], name: str, index: int, value: str) -> None:
        if name not in owned:
            self.parent[name] = dict(self.parent.get(name) or {})
            owned.add(name)
        self.parent[name][index] = value

    # -- driver

    def _skip(self, construct: Construct, what: str) -> None:
        if self.outside is None:
            self.outside = construct
        self.warnings.append(
            f"{construct.file}:{construct.line}: skipped {what} (outside the data subset: {construct.text})"
        )

    def _exec_lenient(self, scope: Dict[str, Arr], owned: Set[str], st: Statement, pf: ParsedFile) -> None:
        touched = _targets(st)
        saved = {n: (scope.get(n), n in owned) for n in touched}
        saved = {n: (dict(v) if (v is not None and o) else v, o) for n, (v, o) in saved.items()}
        saved_origins = {n: dict(self._pending.get(n, {})) for n in touched}
        try:
            self._exec(scope, owned, st, pf)
        except _Outside as exc:
            self._pending.update(saved_origins)
            for n, (v, was_owned) in saved.items():
                if v is None:
                    scope.pop(n, None)
                else:
                    scope[n] = v
                if was_owned:
                    owned.add(n)
                else:
                    owned.discard(n)
            self._skip(Construct(pf.path, pf.line_of(exc.pos), exc.text), "statement")

    def run_file(self, pf: ParsedFile) -> None:
        self._file = pf
        self._pending = {}
        scope: Dict[str, Arr] = dict(self.parent)
        owned: Set[str] = set()
        for item in pf.items:
            if isinstance(item, Skipped):
                c = pf.construct(item)
                if not self.lenient or c.too_deep:
                    raise _RuntimeOutside(c)
                self._skip(c, "statement")
            elif self.lenient:
                self._exec_lenient(scope, owned, item, pf)
            else:
                try:
                    self._exec(scope, owned, item, pf)
                except _Outside as exc:
                    raise _RuntimeOutside(Construct(pf.path, pf.line_of(exc.pos), exc.text)) from None
        self._file = None
        # upstream's echo loop (in the subshell: every line is printed first), then the
        # parent's re-reading, in whitelist order
        lines: List[Tuple[str, int, Tuple[Path, int], str, List[str]]] = []
        for name in self.whitelist:
            arr = scope.get(name)
            if not arr:
                continue
            if self.ctx_objs.get(name) is arr:
                self.deps.add(name)
            pending = self._pending.get(name, {})
            known = self.element_origins.get(name, {})
            fallback = self.origins.get(name, (pf.path, 0))
            for index in sorted(arr):
                where = pending.get(index) or known.get(index) or fallback
                try:
                    line, names = self._echo_line(name, index, arr[index])
                except _glob.Unsupported as exc:
                    text = (
                        f"{name}[{index}]: {exc.text} in upstream's echo step (pathname expansion); "
                        "bash is not used instead, as it could read matching file names as code"
                    )
                    construct = Construct(where[0], where[1], text)
                    if not self.lenient:
                        raise _RuntimeOutside(construct, refused=True) from None
                    self._skip(construct, f"{name}[{index}]")
                    continue
                self.spliced = self.spliced or bool(names)
                lines.append((name, index, where, line, names))
        parent_owned: Set[str] = set()
        for name, index, where, line, names in lines:
            what = f"{name}[{index}]"
            try:
                if names:
                    self._reread_line(line, names, where, what, parent_owned)
                    continue
                value = self._second_pass(line[len(f'{name}[{index}]="') : -1], where, what)
            except _RuntimeOutside as exc:
                if not self.lenient or exc.construct.too_deep:
                    raise
                self._skip(exc.construct, what)
                continue
            self._parent_set(parent_owned, name, index, value)
            origin = self._pending.get(name, {}).get(index)
            if origin is not None:
                self.element_origins.setdefault(name, {})[index] = origin
        for name, raw in self.injections:
            where = (pf.path, 0)
            try:
                value = self._second_pass(raw, where, f"DKMS_DIRECTIVE {name}")
            except _RuntimeOutside as exc:
                if not self.lenient or exc.construct.too_deep:
                    raise
                self._skip(exc.construct, f"DKMS_DIRECTIVE {name}")
                continue
            self._parent_set(parent_owned, name, 0, value)

    def result(self) -> EvalResult:
        values = {name: dict(self.parent[name]) for name in self.whitelist if self.parent.get(name)}
        origins = {n: dict(o) for n, o in self.element_origins.items() if n in values}
        return EvalResult(
            values=values,
            evaluator="data",
            outside=self.outside,
            warnings=tuple(self.warnings),
            dependencies=frozenset(self.deps),
            origins=origins,
        )


def _targets(st: Statement) -> Set[str]:
    if isinstance(st, Unset):
        return {t.name for t in st.targets}
    return {a.name for a in st.assigns}


class OutsideAt(Exception):
    """Raised by :func:`evaluate_parsed` in strict mode.

    ``refused``: the file must not be handed to bash either, because bash would read file names
    (found by pathname expansion) as code; the construct's text says why.
    """

    def __init__(self, construct: Construct, refused: bool = False) -> None:
        super().__init__(str(construct))
        self.construct = construct
        self.refused = refused


def evaluate_parsed(
    files: Sequence[ParsedFile],
    whitelist: Sequence[str],
    context: Mapping[str, str],
    environ: Mapping[str, str],
    injections: Sequence[Tuple[str, str]] = (),
    lenient: bool = False,
    dircache: Optional[_glob.DirCache] = None,
    initial: Optional[Mapping[str, Mapping[int, str]]] = None,
) -> EvalResult:
    """Evaluate already parsed files; strict mode raises :class:`OutsideAt`."""
    ev = Evaluation(whitelist, context, environ, injections, lenient, dircache, initial)
    try:
        for pf in files:
            ev.run_file(pf)
    except _RuntimeOutside as exc:
        c = exc.construct
        if exc.refused or not ev.spliced:
            raise OutsideAt(c, exc.refused) from None
        text = (
            f"{c.text}; bash is not used instead, because pathname expansion in upstream's echo step "
            "matched file names, which it could read as code"
        )
        raise OutsideAt(Construct(c.file, c.line, text), True) from None
    return ev.result()


def first_outside(files: Sequence[ParsedFile], too_deep: bool = False) -> Optional[Construct]:
    """The first statement outside the subset in the chain (parse level only).

    With ``too_deep``, the first one nested beyond :data:`MAX_NESTING`.
    """
    for pf in files:
        c = pf.first_outside(too_deep)
        if c is not None:
            return c
    return None
