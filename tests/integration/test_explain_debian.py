"""``dkms explain`` on real Debian ``*-dkms`` packages that do not build on bookworm's kernels.

Found by building every ``*-dkms`` package of bookworm against the installed 6.1 headers
(tests/support/debian_packages.py downloads and caches them); of 31 packages, these fail:

- openrazer-driver-dkms 3.5.1: calls hid_report_raw_event() with the arguments it had before
  6.1.y gained one (too few arguments);
- librem-ec-acpi-dkms 0.9.1: its battery hook callbacks miss the new acpi_battery_hook argument
  (incompatible pointer type in an initialization);
- iptables-netflow-dkms 2.6: its ./configure (PRE_BUILD) needs the iptables program and
  development files, which the machine does not have;
- lttng-modules-dkms 2.13.9 also fails (conflicting types for trace_hrtimer_start), but takes
  about 20 s to get there, so it is left out here.
"""

from __future__ import annotations

import os
import shutil
from typing import Dict, List

import pytest

from tests.conftest import Scratch
from tests.support import debian_packages
from tests.support.explain import diagnose_build

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: package -> (cause, a detail that must be named, a text the first evidence line must contain)
EXPECTED: Dict[str, tuple[str, Dict[str, str], str]] = {
    "openrazer-driver-dkms": (
        "kernel-api-change",
        {"function": "hid_report_raw_event"},
        "too few arguments to function 'hid_report_raw_event'",
    ),
    "librem-ec-acpi-dkms": (
        "kernel-api-change",
        {},
        "from incompatible pointer type",
    ),
    # (what it names depends on which of iptables and libxtables-dev the machine lacks)
    "iptables-netflow-dkms": ("userspace-dependency-missing", {"step": "pre_build"}, "Error: "),
}


@pytest.fixture(scope="module")
def sources() -> List[debian_packages.DkmsSource]:
    try:
        return debian_packages.dkms_sources(sorted(EXPECTED))
    except debian_packages.Unavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"cannot get Debian's *-dkms packages: {exc}")
        pytest.skip(f"cannot get Debian's *-dkms packages: {exc}")


@pytest.mark.parametrize("package", sorted(EXPECTED))
def test_failing_debian_package(
    package: str, sources: List[debian_packages.DkmsSource], scratch: Scratch, kernel: str
) -> None:
    found = [s for s in sources if s.package == package]
    if not found:
        pytest.fail(f"{package} was not downloaded")
    src = found[0]
    module, version = debian_packages.split_module_version(src.source_dir.name)
    shutil.copytree(src.source_dir, scratch.source_tree / src.source_dir.name, symlinks=True)
    result = scratch.dkms("build", f"{module}/{version}", "-k", kernel, timeout=900)
    if result.rc == 0:
        pytest.skip(f"{package} ({src.deb.name}) builds on {kernel} now: find another failing package")
    diag = diagnose_build(scratch, module, kernel, result, version=version)
    cause, details, first = EXPECTED[package]
    assert diag.cause == cause, diag
    for key, value in details.items():
        assert getattr(diag, key, None) == value or diag.details.get(key) == value, diag
    assert first in diag.evidence[0].text, diag
    if cause == "kernel-api-change":
        assert diag.evidence[0].file and diag.evidence[0].line > 0
        assert f"{module}/{version} is too old for kernel {kernel}" in diag.summary
