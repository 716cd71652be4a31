"""The Python API the CLI is a thin layer over: usable directly by other programs."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from pydkms import api
from pydkms.distro import Distro
from pydkms.framework import Settings
from pydkms.output import Console
from pydkms.session import Options, Session
from pydkms.status import StatusReader
from pydkms.tree import Target
from tests.conftest import ARCH, EXAMPLES

pytestmark = pytest.mark.integration


def test_add_build_install_status_through_the_api(tmp_path: Path, kernel: str) -> None:
    settings = Settings(
        dkms_tree=tmp_path / "dkms",
        source_tree=tmp_path / "src",
        install_tree=tmp_path / "lib" / "modules",
        etc_dir=tmp_path / "etc",
        parallel_jobs="2",
        # signing keys of this tree, not the host's /var/lib/dkms/mok.*
        raw={"mok_signing_key": str(tmp_path / "mok.key"), "mok_certificate": str(tmp_path / "mok.pub")},
    )
    (settings.install_tree / kernel).mkdir(parents=True)
    (settings.install_tree / kernel / "build").symlink_to(f"/lib/modules/{kernel}/build")
    shutil.copytree(EXAMPLES / "hello", settings.source_tree / "hello-1.0")
    out, err = io.StringIO(), io.StringIO()
    session = Session(
        settings=settings, options=Options(no_depmod=True), console=Console(out, err), distro=Distro("debian")
    )
    target = Target(kernel, ARCH)

    assert api.add(session, "hello", "1.0", target) == ("hello", "1.0")
    assert api.install(session, "hello", "1.0", [target]) == 0
    (entries,) = StatusReader(session).entries(None, None, [(None, None)])
    assert [e.line() for e in entries] == [f"hello/1.0, {kernel}, {ARCH}: installed"]
    assert (settings.install_tree / kernel / "updates/dkms/hello.ko").is_file()
    assert "Installing" in out.getvalue() and err.getvalue() == ""
    assert (tmp_path / "mok.key").is_file()  # signed with this tree's key
    assert api.remove(session, "hello", "1.0", [target]) == 0
    assert StatusReader(session).entries(None, None, [(None, None)]) == [[]]
