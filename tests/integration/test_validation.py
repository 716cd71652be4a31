"""dkms.conf validation (dkms-conf.md §5) and adding from a path (cli.md §8.1), through the real CLI.

No kernel headers are needed: a conf is rejected before anything is built.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import pytest

from tests.conftest import FIXTURES, Scratch

INVALID = FIXTURES / "invalid"


def line_of(conf: Path, text: str) -> int:
    for n, line in enumerate(conf.read_text().splitlines(), 1):
        if line.startswith(text):
            return n
    raise AssertionError(f"{text!r} not in {conf}")


def expected_errors(case: str, conf: Path) -> List[str]:
    def at(text: str, message: str) -> str:
        return f"Error! {conf}:{line_of(conf, text)}: {message}"

    table = {
        "package_name_empty": lambda: [at('PACKAGE_NAME=""', "PACKAGE_NAME is not set or empty.")],
        "package_version_empty": lambda: [at('PACKAGE_VERSION=""', "PACKAGE_VERSION is not set or empty.")],
        "built_module_name_dot_o": lambda: [
            at(
                "BUILT_MODULE_NAME[0]",
                "record #0: BUILT_MODULE_NAME[0]='invalid.o' must be the name without '.o' or '.ko'.",
            ),
            at(
                "BUILT_MODULE_NAME[0]",
                "record #0: DEST_MODULE_NAME[0]='invalid.o' must be the name without '.o' or '.ko'.",
            ),
        ],
        "built_module_name_dot_ko": lambda: [
            at(
                "BUILT_MODULE_NAME[0]",
                "record #0: BUILT_MODULE_NAME[0]='invalid.ko' must be the name without '.o' or '.ko'.",
            ),
            at(
                "BUILT_MODULE_NAME[0]",
                "record #0: DEST_MODULE_NAME[0]='invalid.ko' must be the name without '.o' or '.ko'.",
            ),
        ],
        "built_module_name_empty": lambda: [
            at("BUILT_MODULE_NAME[1]", "record #1: BUILT_MODULE_NAME[1] is not set or empty.")
        ],
        "dest_module_name_dot_ko": lambda: [
            at(
                "DEST_MODULE_NAME[0]",
                "record #0: DEST_MODULE_NAME[0]='renamed.ko' must be the name without '.o' or '.ko'.",
            )
        ],
        "dest_module_location_empty": lambda: [
            at("DEST_MODULE_LOCATION[0]", "record #0: DEST_MODULE_LOCATION[0] is not set or empty.")
        ],
        "dest_module_location_bad_prefix": lambda: [
            at(
                "DEST_MODULE_LOCATION[0]",
                "record #0: DEST_MODULE_LOCATION[0]='/misc/drivers' must begin with /kernel, /updates or /extra.",
            )
        ],
        "autoinstall_maybe": lambda: [
            at("AUTOINSTALL", "AUTOINSTALL='maybe' is not allowed: use yes, no or leave it empty.")
        ],
        "build_depends_rebuild_sometimes": lambda: [
            at(
                "BUILD_DEPENDS_REBUILD",
                "BUILD_DEPENDS_REBUILD='sometimes' is not allowed: use yes, no or leave it empty.",
            )
        ],
        "no_weak_modules_perhaps": lambda: [
            at("NO_WEAK_MODULES", "NO_WEAK_MODULES='perhaps' is not allowed: use yes, no or leave it empty.")
        ],
        "sparse_records": lambda: [
            f"Error! {conf}: record #0: BUILT_MODULE_NAME[0] is not set or empty.",
            f"Error! {conf}: record #0: DEST_MODULE_LOCATION[0] is not set or empty.",
            f"Error! {conf}: record #2: BUILT_MODULE_NAME[2] is not set or empty.",
            f"Error! {conf}: record #2: DEST_MODULE_LOCATION[2] is not set or empty.",
        ],
        "module_index_too_large": lambda: [
            at(
                "BUILT_MODULE_NAME[5000]",
                "BUILT_MODULE_NAME[5000]: module index too large (records #0 to #1023 are supported).",
            )
        ],
        "package_name_escapes": lambda: [
            at(
                "PACKAGE_NAME",
                "PACKAGE_NAME='../../precious' cannot name a directory of the trees: it contains '/'.",
            )
        ],
        "dest_module_name_path": lambda: [
            at(
                "DEST_MODULE_NAME[0]",
                "record #0: DEST_MODULE_NAME[0]='../../../../kernel/fs/victim' must be a file name: "
                "it contains '/'.",
            )
        ],
        "built_module_location_outside": lambda: [
            at(
                "BUILT_MODULE_LOCATION[0]",
                "record #0: BUILT_MODULE_LOCATION[0]='../../../' must be a path inside the build directory: "
                "relative, without '..'.",
            )
        ],
        "dest_module_location_dotdot": lambda: [
            at(
                "DEST_MODULE_LOCATION[0]",
                "record #0: DEST_MODULE_LOCATION[0]='/updates/../../../../escaped' must not contain '..'.",
            )
        ],
        "duplicate_built_module": lambda: [
            at("BUILT_MODULE_NAME[1]", "record #1: module 'src/invalid' is already built by record #0.")
        ],
        "duplicate_dest_module": lambda: [
            at("DEST_MODULE_NAME[1]", "record #1: DEST_MODULE_NAME 'same' is already used by record #0.")
        ],
        "several_errors": lambda: [
            at('PACKAGE_VERSION=""', "PACKAGE_VERSION is not set or empty."),
            at(
                "BUILT_MODULE_NAME[0]",
                "record #0: BUILT_MODULE_NAME[0]='invalid.ko' must be the name without '.o' or '.ko'.",
            ),
            at(
                "BUILT_MODULE_NAME[0]",
                "record #0: DEST_MODULE_NAME[0]='invalid.ko' must be the name without '.o' or '.ko'.",
            ),
            at(
                "DEST_MODULE_LOCATION[1]",
                "record #1: DEST_MODULE_LOCATION[1]='/usr/lib/modules' must begin with /kernel, /updates or /extra.",
            ),
            at("AUTOINSTALL", "AUTOINSTALL='maybe' is not allowed: use yes, no or leave it empty."),
        ],
    }
    return table[case]()


CASES = sorted(p.name for p in INVALID.iterdir() if p.is_dir())


def test_every_invalid_fixture_has_an_expectation() -> None:
    for case in CASES:
        expected_errors(case, INVALID / case / "dkms.conf")


@pytest.mark.parametrize("case", CASES)
def test_invalid_conf_exact_errors(bare_scratch: Scratch, case: str) -> None:
    src = bare_scratch.source_tree / "invalid-1.0"
    import shutil

    shutil.copytree(INVALID / case, src)
    conf = src / "dkms.conf"
    r = bare_scratch.dkms("add", "invalid/1.0")
    assert r.rc == 8, r
    assert r.out == ""
    errors = expected_errors(case, conf)
    n = len(errors)
    assert r.err.splitlines() == [
        *errors,
        f"Error! {conf} is not a valid dkms.conf ({n} problem{'s' if n > 1 else ''}).",
    ], r
    assert not (bare_scratch.dkms_tree / "invalid").exists()


def test_add_from_path_validates_before_copying(bare_scratch: Scratch, tmp_path: Path) -> None:
    """[fix D-12] a rejected conf leaves nothing behind in the source tree."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(INVALID / "dest_module_location_bad_prefix", bad)
    r = bare_scratch.dkms("add", str(bad))
    assert r.rc == 8, r
    assert list(bare_scratch.source_tree.iterdir()) == []
    r = bare_scratch.dkms("add", str(bad / "dkms.conf"))  # the dkms.conf form
    assert r.rc == 8, r
    assert list(bare_scratch.source_tree.iterdir()) == []
    r = bare_scratch.dkms("add", str(tmp_path))  # no dkms.conf in it: a warning, then no module -> 1
    assert r.rc != 0


def test_add_from_path_and_already_added(bare_scratch: Scratch, tmp_path: Path) -> None:
    import shutil

    good = tmp_path / "pkg"
    shutil.copytree(Path(__file__).parents[2] / "examples" / "hello", good)
    os.chmod(good / "hello.c", 0o600)
    r = bare_scratch.dkms("add", str(good))
    assert r.rc == 0, r
    copy = bare_scratch.source_tree / "hello-1.0"
    assert (copy / "hello.c").read_bytes() == (good / "hello.c").read_bytes()
    assert (copy / "hello.c").stat().st_mode & 0o777 == 0o600  # modes preserved
    assert (copy / "hello.c").stat().st_mtime_ns == (good / "hello.c").stat().st_mtime_ns
    assert os.readlink(bare_scratch.dkms_tree / "hello/1.0/source") == str(copy)
    # adding again: refused (3) before anything is copied [fix D-12]
    (good / "NEW").write_text("x")
    r = bare_scratch.dkms("add", str(good))
    assert r.rc == 3, r
    assert not (copy / "NEW").exists()
    # with --force the source copy is replaced, and the add itself still fails with 3 (P-21)
    r = bare_scratch.dkms("add", str(good), "--force")
    assert r.rc == 3, r
    assert (copy / "NEW").exists()


def test_add_errors(bare_scratch: Scratch) -> None:
    assert bare_scratch.dkms("add", "missing/1.0").rc == 2  # no $source_tree/m-v
    assert bare_scratch.dkms("add").rc == 1  # no module given
    (bare_scratch.source_tree / "m-1.0").mkdir()
    r = bare_scratch.dkms("add", "m/1.0")
    assert r.rc == 4 and "dkms.conf" in r.err, r  # missing dkms.conf


def test_data_only_mode_refuses_shell_confs(bare_scratch: Scratch) -> None:
    src = bare_scratch.source_tree / "sh-1.0"
    src.mkdir()
    (src / "x.c").write_text("")
    (src / "dkms.conf").write_text(
        'PACKAGE_NAME="sh"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="sh"\n'
        'if [ -f /nonexistent ]; then\n  DEST_MODULE_LOCATION[0]="/kernel/x"\nelse\n'
        '  DEST_MODULE_LOCATION[0]="/extra"\nfi\n'
    )
    # auto (default): evaluated by bash, with one warning naming the file, line and construct
    r = bare_scratch.dkms("add", "sh/1.0")
    assert r.rc == 0, r
    warnings = [line for line in r.err.splitlines() if "evaluated by bash" in line]
    assert len(warnings) == 1 and f"{src}/dkms.conf" in warnings[0] and "line 4" in warnings[0], r.err
    # status never prints it
    r = bare_scratch.ok("status")
    assert r.err == "" and r.lines == ["sh/1.0: added"]
    # data: refused, naming the line and the construct
    bare_scratch.ok("remove", "sh/1.0", "--all")
    bare_scratch.etc.mkdir(parents=True, exist_ok=True)
    (bare_scratch.etc / "framework.conf").write_text('conf_evaluation="data"\n')
    r = bare_scratch.dkms("add", "sh/1.0")
    assert r.rc == 8, r
    assert f"{src}/dkms.conf:4:" in r.err and "if" in r.err and "conf_evaluation" in r.err, r.err
