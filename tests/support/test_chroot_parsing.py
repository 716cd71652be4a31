"""Fast checks of the chroot harness's pure parts (no debootstrap, no mount)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from tests.support import chroot

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main

Types: deb-src deb
URIs: http://mirror.example/debian http://second.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
Enabled: no
URIs: http://disabled.example/debian
Suites: bookworm
"""


def test_the_mirror_is_the_first_uri_of_the_stanza_for_the_suite_itself() -> None:
    assert chroot.mirror_from_deb822(DEB822) == "http://mirror.example/debian"
    assert chroot.mirror_from_deb822(DEB822, suite="trixie") is None
    disabled_first = DEB822.split("\n\n")[2] + "\n\n" + DEB822
    assert chroot.mirror_from_deb822(disabled_first) == "http://mirror.example/debian"


def test_the_mirror_from_a_one_line_sources_list() -> None:
    text = (
        "# deb http://commented.example/debian bookworm main\n"
        "deb http://security.example/debian-security bookworm-security main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib\n"
    )
    assert chroot.mirror_from_sources_list(text) == "http://mirror.example/debian"
    assert chroot.mirror_from_sources_list("deb-src http://x.example/debian bookworm main\n") is None


def test_header_packages_follow_the_kernel_release() -> None:
    assert chroot.header_packages(["6.1.0-57-amd64", "6.1.0-57-cloud-amd64"]) == [
        "linux-headers-6.1.0-57-amd64",
        "linux-headers-6.1.0-57-cloud-amd64",
    ]
    with pytest.raises(ValueError, match="not a kernel release"):
        chroot.header_packages(["6.1 amd64"])


MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
92 27 0:60 / /c/pydkms-chroot-1-x/root rw,relatime - overlay overlay rw,lowerdir=/b
93 92 0:21 / /c/pydkms-chroot-1-x/root/proc rw,relatime - proc proc rw
94 92 0:6 / /c/pydkms-chroot-1-x/root/with\\040space rw - devtmpfs devtmpfs rw
95 27 0:61 / /c/pydkms-chroot-1-x/root2 rw - tmpfs tmpfs rw
"""


def test_mounts_below_a_directory_in_mount_order_with_escapes_decoded() -> None:
    assert chroot.mounts_below(Path("/c/pydkms-chroot-1-x/root"), MOUNTINFO) == [
        "/c/pydkms-chroot-1-x/root",
        "/c/pydkms-chroot-1-x/root/proc",
        "/c/pydkms-chroot-1-x/root/with space",
    ]
    assert (
        chroot.mounts_below(Path("/c/pydkms-chroot-1-x/root/"), MOUNTINFO)[0] == "/c/pydkms-chroot-1-x/root"
    )
    assert chroot.mounts_below(Path("/elsewhere"), MOUNTINFO) == []


def _fake_build(calls: list[Path], fail: bool = False) -> Callable[[Path, Path], str]:
    def build(root: Path, log: Path) -> str:
        calls.append(root)
        root.mkdir()
        (root / "half-done").write_text("")
        if fail:
            raise chroot.ChrootUnavailable("debootstrap failed")
        (root / "etc").mkdir()
        return "http://mirror.example/debian"

    return build


def test_the_base_is_built_once_and_reused_from_the_cache(tmp_path: Path) -> None:
    calls: list[Path] = []
    first = chroot.ensure_base(tmp_path, _fake_build(calls))
    assert first.built_now and first.mirror == "http://mirror.example/debian"
    assert first.root == tmp_path / chroot.BASE_NAME and (first.root / "etc").is_dir()
    marker = json.loads((tmp_path / f"{chroot.BASE_NAME}.complete").read_text())
    assert marker["recipe"] == chroot.BASE_RECIPE and marker["mirror"] == first.mirror
    again = chroot.ensure_base(tmp_path, _fake_build(calls))
    assert not again.built_now and again.root == first.root and again.build_seconds == first.build_seconds
    assert len(calls) == 1


def test_an_interrupted_or_foreign_base_is_removed_and_built_again(tmp_path: Path) -> None:
    calls: list[Path] = []
    with pytest.raises(chroot.ChrootUnavailable):
        chroot.ensure_base(tmp_path, _fake_build(calls, fail=True))
    marker = tmp_path / f"{chroot.BASE_NAME}.complete"
    assert not marker.exists() and (tmp_path / chroot.BASE_NAME / "half-done").exists()
    rebuilt = chroot.ensure_base(tmp_path, _fake_build(calls))
    assert rebuilt.built_now and len(calls) == 2 and (rebuilt.root / "etc").is_dir()
    # a marker of another recipe (or garbage) does not count as complete
    for content in (json.dumps({"recipe": chroot.BASE_RECIPE + 1}), "not json"):
        marker.write_text(content)
        assert chroot.ensure_base(tmp_path, _fake_build(calls)).built_now
    assert len(calls) == 4
    # nor does a marker whose base directory is gone
    (rebuilt.root / "etc").rmdir()
    chroot.remove_tree(rebuilt.root)
    assert chroot.ensure_base(tmp_path, _fake_build(calls)).built_now


def test_copies_of_dead_pytest_processes_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{chroot.COPY_PREFIX}{dead.pid}-abc"
    live = tmp_path / f"{chroot.COPY_PREFIX}{os.getpid()}-def"
    other = tmp_path / "unrelated"
    for d in (stale / "root" / "etc", live / "root", other):
        d.mkdir(parents=True)
    assert chroot.sweep_stale_copies(tmp_path) == [stale]
    assert not stale.exists() and live.is_dir() and other.is_dir()
