"""Unit tests of the pure pieces: VER(), version sort, POSIX ERE, distro family, status line grammar."""

from __future__ import annotations

from pathlib import Path

import pytest

from pydkms.api import aggregate
from pydkms.distro import Distro, detect
from pydkms.errors import DkmsError
from pydkms.posixre import ere_search
from pydkms.status import StatusEntry, passes_for
from pydkms.version import obsolete_key, ver, ver_greater, version_sort_key


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("6.1.0-13-amd64", "006.001.000-013-amd064"),
        ("2.6.9-1cvs200409091247", "002.006.009-001cvs200409091247"),
        ("5.10", "005.010"),
        ("a b", "ab"),
        ("", ""),
        ("123", "123"),
        ("1234.5", "1234.005"),
    ],
)
def test_ver(text: str, expected: str) -> None:
    assert ver(text) == expected


def test_ver_quirk_four_digits_kept() -> None:
    # P-11: runs of four or more digits compare wrongly, on purpose
    assert ver_greater("999.1", "1000.1")


def test_obsolete_key_drops_dashes() -> None:
    assert obsolete_key("6.1.0-13-amd64") == "006.001.000013amd064"
    assert obsolete_key("6.2").encode() > obsolete_key("6.1.0-13-amd64").encode()


def test_version_sort() -> None:
    items = ["1.10", "1.9", "1.9~rc1", "2.0", "1.9a", "10"]
    assert sorted(items, key=version_sort_key) == ["1.9~rc1", "1.9", "1.9a", "1.10", "2.0", "10"]


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("^6\\.(8|9)\\.", "6.8.0-1", True),
        ("^6\\.(8|9)\\.", "6.1.0-1", False),
        ("-56-", "6.1.0-56-amd64", True),
        ("[[:digit:]]+-cloud", "6.1.0-56-cloud-amd64", True),
        ("^x86_64$", "x86_64", True),
        ("^(5\\.[6-9]\\.|5\\.[1-9][0-9]\\.|[6-9]\\.)", "6.1.0", True),
        ("^(5\\.[6-9]\\.|5\\.[1-9][0-9]\\.|[6-9]\\.)", "5.4.0", False),
        ("REQUIRES CONFIG_VIDEO_DEV", "6.1.0-56-amd64", False),
        ("[", "x", None),
        ("a{2}", "caab", True),
    ],
)
def test_ere_search(pattern: str, text: str, expected: object) -> None:
    assert ere_search(pattern, text) is expected


@pytest.mark.parametrize(
    ("content", "family"),
    [
        ('ID=debian\nVERSION_ID="12"\n', "debian"),
        ("ID=ubuntu\nID_LIKE=debian\n", "ubuntu"),
        ('ID=linuxmint\nID_LIKE="ubuntu debian"\n', "ubuntu debian"),
        ('ID="rocky"\nID_LIKE="rhel centos fedora"\n', "rhel centos fedora"),
        ('ID="rhel"\nID_LIKE="fedora"\n', "fedora"),
        ("ID=alpine\n", "alpine"),
        ("ID=weird\nID_LIKE=\n", ""),
    ],
)
def test_distro_family(tmp_path: Path, content: str, family: str) -> None:
    f = tmp_path / "os-release"
    f.write_text(content)
    assert detect(f).family == family


def test_distro_missing_os_release(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYDKMS_OS_RELEASE", str(tmp_path / "nope"))
    with pytest.raises(DkmsError) as exc:
        detect()
    assert exc.value.code == 4


@pytest.mark.parametrize(
    ("family", "raw", "dest", "uname_arch"),
    [
        ("debian", "/kernel/drivers/acpi", "/updates/dkms", True),
        ("ubuntu", "/extra", "/updates/dkms", True),
        ("arch", "/extra", "/updates/dkms", True),
        ("rhel centos fedora", "/kernel/x", "/extra", False),
        ("fedora", "/updates", "/extra", False),
        ("opensuse suse", "/extra", "/updates", False),
        ("gentoo", "/kernel/x", "/kernel/x", True),
        ("alpine", "/extra/y", "/extra/y", False),
    ],
)
def test_distro_destination(family: str, raw: str, dest: str, uname_arch: bool) -> None:
    d = Distro(family)
    assert d.dest_dir(raw) == dest
    assert d.dest_dir(raw, "weak-updates/x") == "/weak-updates/x"
    assert d.uses_uname_arch is uname_arch


@pytest.mark.parametrize(
    ("entry", "line"),
    [
        (StatusEntry("zfs", "2.2.4", None, None, "added"), "zfs/2.2.4: added"),
        (StatusEntry("baz", "0.9", None, None, "broken"), "baz/0.9: broken"),
        (StatusEntry("nvidia", "550.54.14", "6.8.0-31-generic", "x86_64", "installed"),
         "nvidia/550.54.14, 6.8.0-31-generic, x86_64: installed"),
        (StatusEntry("foo", "1.0", "6.1.0-13-amd64", "x86_64", "built", built_modules_missing=True),
         "foo/1.0, 6.1.0-13-amd64, x86_64: built (Built modules are missing in the kernel modules folder)"),
        (StatusEntry("bar", "2.0", "6.1.0-13-amd64", "x86_64", "installed", original_modules=True,
                     differs_from_installed=True),
         "bar/2.0, 6.1.0-13-amd64, x86_64: installed (Original modules exist) "
         "(Differences between built and installed modules)"),
        (StatusEntry("bar", "2.0", "K", "A", "installed", built_modules_missing=True, differs_from_installed=True),
         "bar/2.0, K, A: installed (Built modules are missing in the kernel modules folder)"),
    ],
)  # fmt: skip
def test_status_line_grammar(entry: StatusEntry, line: str) -> None:
    assert entry.line() == line
    assert not line.endswith(" ")


def test_status_passes() -> None:
    assert passes_for((), ()) == [(None, None)]
    assert passes_for((), ("x86_64", "i686")) == [(None, "x86_64")]
    assert passes_for(("k1", "k2"), ("x86_64",)) == [("k1", "x86_64"), ("k2", "x86_64")]


@pytest.mark.parametrize(
    ("codes", "result"),
    [([], 0), ([0, 0], 0), ([77, 77], 77), ([77, 0], 0), ([0, 10, 21], 10), ([77, 21, 10], 21), ([13], 13)],
)
def test_multi_kernel_aggregation(codes: list, result: int) -> None:
    assert aggregate(codes) == result
