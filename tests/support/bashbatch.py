"""Ask one real bash process many pattern questions at once (differential tests of the matchers).

Each question is (kind, pattern, subject); the answers come back in order:

* ``E``: ``[[ $subject =~ $pattern ]]`` -> (status, ``BASH_REMATCH[0]``);
* ``G``: ``[[ $subject == $pattern ]]`` -> (status,);
* ``R``: ``${subject#pattern}``, ``##``, ``%``, ``%%`` -> the four results;
* ``P``: pathname expansion of the unquoted ``$pattern`` (no word splitting) -> the words.

bash runs with ``shopt -s extglob`` (as upstream dkms does) in the given locale.
:data:`TRICKY_NAMES` are file names for such tests: each is shell syntax somewhere.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import List, Sequence, Tuple

SCRIPT = r"""
shopt -s extglob
while IFS= read -r -d '' kind && IFS= read -r -d '' p && IFS= read -r -d '' s; do
    case $kind in
        E) [[ $s =~ $p ]]; rc=$?; printf '%s\0%s\0' "$rc" "${BASH_REMATCH[0]}" ;;
        G) [[ $s == $p ]]; printf '%s\0' "$?" ;;
        R) printf '%s\0%s\0%s\0%s\0' "${s#$p}" "${s##$p}" "${s%$p}" "${s%%$p}" ;;
        P) IFS=; set -- $p; unset IFS; printf '%s\0' "$#" "$@" ;;
    esac
done <"$1"
"""

Question = Tuple[str, str, str]

#: file names that are shell syntax once pasted into a command line or a double-quoted string
TRICKY_NAMES = [
    b"plain", b"a b", b'a"b', b'q"', b"$HOME", b"${HOME}", b"$(touch pwn)", b"`touch pwn`", b"*", b"-x",
    b".hidden", b"..dots", b"new\nline", b"\xff\xfe", b"it's", b"a\\b", b"x;y", "\u00e9".encode(),
    b'q" ; touch pwn ; x=""', b"[ab]", b"?", b"a*b", b"tab\there", b" lead", b"trail ", b"B", b"b",
]  # fmt: skip


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _dec(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def bash_answers(questions: Sequence[Question], workdir: Path, locale: str = "C") -> List[Tuple[str, ...]]:
    """The answers of one ``bash`` process to ``questions`` (see the module docstring)."""
    bash = shutil.which("bash")
    assert bash is not None
    infile = workdir / "bash-questions"
    infile.write_bytes(b"".join(_enc(x) + b"\0" for q in questions for x in q))
    proc = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", SCRIPT, "bash", str(infile)],
        env={"PATH": "/usr/bin:/bin", "LC_ALL": locale},
        cwd=workdir,
        capture_output=True,
        timeout=120,
        check=True,
    )
    fields = [_dec(x) for x in proc.stdout.split(b"\0")[:-1]]
    answers: List[Tuple[str, ...]] = []
    k = 0
    for kind, _, _ in questions:
        if kind == "P":
            n = int(fields[k])
            answers.append(tuple(fields[k + 1 : k + 1 + n]))
            k += 1 + n
        else:
            width = {"E": 2, "G": 1, "R": 4}[kind]
            answers.append(tuple(fields[k : k + width]))
            k += width
    assert k == len(fields), "bash answered a different number of questions"
    return answers
