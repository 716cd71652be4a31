"""The explain classifier on make.log snippets (in addition to the real failures of
tests/integration/test_explain.py).

The snippets are lines in the exact format gcc, kbuild, modpost, ld and patch print. Causes that
look at the kernel read the real installed headers (``kernel``/``cloud_kernel`` fixtures).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pydkms.distro import Distro
from pydkms.explain import (
    CAUSES,
    RULES,
    Diagnosis,
    FailureInputs,
    diagnose,
    headers_package_command,
    render_text,
)

BUILD = "/var/lib/dkms/m/1.0/build"


def pydkms_log(
    kernel: str, body: Sequence[str], *, description: str = "Building module(s)", code: int = 2
) -> str:
    """A make.log laid out as pydkms writes it (one failed step)."""
    return "\n".join(
        [
            f"DKMS (dkms-3.2.2) make.log for m/1.0 for kernel {kernel} (x86_64)",
            "Tue Dec  1 22:06:03 UTC 2026",
            "",
            description,
            f"# command: make -j2 KERNELRELEASE={kernel} -C /lib/modules/{kernel}/build M={BUILD}",
            *body,
            "",
            f"# exit code: {code}",
            "# elapsed time: 00:00:01",
            "-" * 64,
            "",
        ]
    )


def explain(
    tmp_path: Path,
    kernel: str,
    text: Optional[str] = None,
    body: Sequence[str] = (),
    **kw: object,
) -> Diagnosis:
    log = tmp_path / "make.log"
    log.write_text(text if text is not None else pydkms_log(kernel, body))
    inputs = FailureInputs(
        "m",
        "1.0",
        kernel,
        "x86_64",
        log,
        Path(f"/lib/modules/{kernel}/build"),
        distro_family="debian",
        **kw,  # type: ignore[arg-type]
    )
    return diagnose(inputs)


def test_the_table_has_a_row_for_every_cause_but_unknown() -> None:
    assert {r.cause for r in RULES} == set(CAUSES) - {"unknown"}
    for rule in RULES:
        assert rule.scope in ("inputs", "log", "error")
        assert (rule.scope == "inputs") == (not rule.patterns), rule.cause


@pytest.mark.parametrize(
    "line",
    [
        "gcc-12: fatal error: Killed signal terminated program cc1",
        "cc1: out of memory allocating 65536 bytes after a total of 123456 bytes",
        "virtual memory exhausted: Cannot allocate memory",
    ],
)
def test_out_of_memory(tmp_path: Path, kernel: str, line: str) -> None:
    diag = explain(tmp_path, kernel, body=[f"  CC [M]  {BUILD}/m.o", line, "compilation terminated."])
    assert diag.cause == "out-of-memory" and diag.evidence[0].text == line
    assert diag.evidence[0].make_log_line == 7


def test_first_real_error_not_the_last_line_of_make(tmp_path: Path, kernel: str) -> None:
    body = [
        f"  CC [M]  {BUILD}/m.o",
        f"{BUILD}/m.c: In function 'm_init':",
        f"{BUILD}/m.c:20:9: warning: unused variable 'x' [-Wunused-variable]",
        f"{BUILD}/m.c:31:2: error: implicit declaration of function 'do_gettimeofday' [-Werror=implicit-function-declaration]",
        f"{BUILD}/m.c:40:5: error: 'foo' undeclared (first use in this function)",
        "cc1: some warnings being treated as errors",
        f"make[1]: *** [/usr/src/linux-headers-common/scripts/Makefile.build:255: {BUILD}/m.o] Error 1",
        f"make: *** [/usr/src/linux-headers-common/Makefile:2065: {BUILD}] Error 2",
    ]
    diag = explain(tmp_path, kernel, body=body)
    assert diag.cause == "kernel-api-change", diag
    assert (diag.evidence[0].file, diag.evidence[0].line) == (f"{BUILD}/m.c", 31)
    assert diag.details["function"] == "do_gettimeofday"
    assert "no longer has do_gettimeofday()" in diag.summary


def test_struct_member_that_is_gone(tmp_path: Path, kernel: str) -> None:
    line = (
        f"{BUILD}/m.c:12:22: error: 'struct task_struct' has no member named 'state'; did you mean '__state'?"
    )
    diag = explain(tmp_path, kernel, body=[line])
    assert diag.cause == "kernel-api-change" and diag.details["struct"] == "task_struct"
    assert "include/linux/sched.h" in diag.summary


def test_kernel_header_that_is_gone(tmp_path: Path, kernel: str) -> None:
    line = f"{BUILD}/m.c:5:10: fatal error: linux/pci-aspm.h: No such file or directory"
    diag = explain(tmp_path, kernel, body=[line, "compilation terminated."])
    assert diag.cause == "kernel-api-change" and diag.details["header"] == "linux/pci-aspm.h"


def test_header_outside_the_kernel(tmp_path: Path, kernel: str) -> None:
    line = f"{BUILD}/m.c:5:10: fatal error: libnl3/netlink/netlink.h: No such file or directory"
    diag = explain(tmp_path, kernel, body=[line, "compilation terminated."])
    assert diag.cause == "userspace-dependency-missing"
    assert diag.next_command == "apt-file search /libnl3/netlink/netlink.h"


def test_present_kernel_header_is_not_a_missing_dependency(tmp_path: Path, kernel: str) -> None:
    """linux/module.h exists in the headers: its 'not found' is a broken include path, not a package."""
    line = f"{BUILD}/m.c:5:10: fatal error: linux/module.h: No such file or directory"
    assert explain(tmp_path, kernel, body=[line]).cause == "unknown"


@pytest.mark.parametrize(
    ("line", "name", "command"),
    [
        ("/bin/sh: 1: bc: not found", "bin/bc", "apt-file search /bin/bc"),
        ("Package libnl-3.0 was not found in the pkg-config search path.", "libnl-3.0.pc", None),
        ("/usr/bin/ld: cannot find -lelf: No such file or directory", "libelf.so", None),
    ],
)
def test_userspace_tools_and_libraries(
    tmp_path: Path, kernel: str, line: str, name: str, command: str
) -> None:
    diag = explain(tmp_path, kernel, body=[line, "make: *** [Makefile:3: all] Error 1"])
    assert diag.cause == "userspace-dependency-missing" and diag.details["name"] == name, diag
    assert diag.next_command == (command or f"apt-file search /{name}")


def test_error_directive_naming_a_missing_option(tmp_path: Path, cloud_kernel: str) -> None:
    line = f'{BUILD}/m.c:4:2: error: #error "this driver needs CONFIG_DRM"'
    diag = explain(tmp_path, cloud_kernel, body=[line])
    assert diag.cause == "kernel-config-missing" and diag.details["symbol"] == "CONFIG_DRM"


def test_error_directive_naming_an_option_the_kernel_has(tmp_path: Path, kernel: str) -> None:
    """CONFIG_MODULES is set: the #error is the module's own business."""
    line = f'{BUILD}/m.c:4:2: error: #error "CONFIG_MODULES is required"'
    assert explain(tmp_path, kernel, body=[line]).cause == "unknown"


def test_gpl_only_symbol(tmp_path: Path, kernel: str) -> None:
    line = "ERROR: modpost: GPL-incompatible module m.ko uses GPL-only symbol 'ktime_get_mono_fast_ns'"
    diag = explain(tmp_path, kernel, body=[line])
    assert diag.cause == "kernel-api-change" and "GPL modules only" in diag.summary


def test_kbuild_without_modules_target(tmp_path: Path, kernel: str) -> None:
    line = "make: *** No rule to make target 'modules'.  Stop."
    diag = explain(tmp_path, kernel, body=[line])
    assert diag.cause == "headers-missing" and diag.evidence[0].text == line
    assert diag.next_command == f"apt-get install linux-headers-{kernel}"


def test_compiler_version_warning_alone_is_weak_evidence(tmp_path: Path, kernel: str) -> None:
    """Ubuntu's headers print the warning on every small version change: a real error wins."""
    warning = [
        "warning: the compiler differs from the one used to build the kernel",
        "  The kernel was built by: x86_64-linux-gnu-gcc-12 (Ubuntu 12.3.0-1ubuntu1~22.04) 12.3.0",
        "  You are using:           gcc-12 (Ubuntu 12.3.0-1ubuntu1~22.04) 12.3.0",
    ]
    api = f"{BUILD}/m.c:9:5: error: too many arguments to function 'access_ok'"
    assert explain(tmp_path, kernel, body=[*warning, api]).cause == "kernel-api-change"
    other = f"{BUILD}/m.c:9:5: error: expected ';' before '}}' token"
    diag = explain(tmp_path, kernel, body=[*warning, other])
    assert diag.cause == "compiler-mismatch", diag
    assert diag.details["built_by"].startswith("x86_64-linux-gnu-gcc-12")
    assert diag.next_command == "apt-get install gcc-12"


def test_upstream_make_log_without_steps(tmp_path: Path, kernel: str) -> None:
    """A make.log of upstream dkms: a header, then make's output, no '# command' blocks."""
    text = "\n".join(
        [
            f"DKMS make.log for m-1.0 for kernel {kernel} (x86_64)",
            "Tue Dec  1 22:06:03 UTC 2026",
            f"make -j2 KERNELRELEASE={kernel} -C /lib/modules/{kernel}/build M={BUILD}",
            f"{BUILD}/m.c:31:2: error: too few arguments to function \u2018bio_alloc\u2019",
            "make: *** [Makefile:2065: x] Error 2",
        ]
    )
    diag = explain(tmp_path, kernel, text=text, step="make", exit_code=10)
    assert diag.cause == "kernel-api-change" and diag.details["function"] == "bio_alloc"
    assert diag.step == "make"


def test_interrupted_step(tmp_path: Path, kernel: str) -> None:
    """A step without '# exit code' (dkms was killed) is still the failed one."""
    text = pydkms_log(kernel, []).split("Building module(s)")[0] + "\n".join(
        [
            "Building module(s)",
            "# command: make",
            "gcc-12: fatal error: Killed signal terminated program cc1",
            "",
        ]
    )
    assert explain(tmp_path, kernel, text=text).cause == "out-of-memory"


def test_patch_step_without_a_known_message(tmp_path: Path, kernel: str) -> None:
    log = tmp_path / "make.log"
    log.write_text(
        pydkms_log(
            kernel, ["patching file m.c", "some other problem"], description="Applying patch x.patch", code=1
        )
    )
    diag = diagnose(FailureInputs("m", "1.0", kernel, "x86_64", log, Path(f"/lib/modules/{kernel}/build")))
    assert diag.cause == "patch-failed" and diag.details["patch"] == "x.patch"
    assert diag.evidence[0].text == "some other problem"


def test_build_exclusive_with_the_reasons_dkms_gave(tmp_path: Path, kernel: str) -> None:
    reason = f"kernel {kernel} does not match BUILD_EXCLUSIVE_KERNEL '^5\\.'"
    diag = diagnose(
        FailureInputs(
            "m", "1.0", kernel, "x86_64", None, Path(f"/lib/modules/{kernel}/build"),
            exit_code=77, exclusion=(reason,), build_exclusive={"BUILD_EXCLUSIVE_KERNEL": "^5\\."},
        )
    )  # fmt: skip
    assert diag.cause == "build-exclusive" and diag.details["directive"] == "BUILD_EXCLUSIVE_KERNEL"
    assert 'BUILD_EXCLUSIVE_KERNEL="^5\\."' in diag.summary and reason in diag.summary
    assert diag.evidence[0].text == reason and diag.evidence[0].make_log_line == 0


def test_build_depends_with_unknown_version(tmp_path: Path, kernel: str) -> None:
    diag = diagnose(FailureInputs("m", "1.0", kernel, exit_code=13, missing_depends={"base": ""}))
    assert diag.cause == "build-depends-missing" and diag.next_command == ""
    assert "base" in diag.summary and "base" in diag.advice


def test_nearly_full_disk_explains_an_unexplained_failure(tmp_path: Path, kernel: str) -> None:
    body = [f"{BUILD}/m.c:9:5: error: expected ';' before '}}' token"]
    assert explain(tmp_path, kernel, body=body, free_disk_bytes=4096).cause == "out-of-disk"
    assert explain(tmp_path, kernel, body=body, free_disk_bytes=10 << 30).cause == "unknown"


@pytest.mark.parametrize(
    ("family", "kernel", "command"),
    [
        ("debian", "6.1.0-57-amd64", "apt-get install linux-headers-6.1.0-57-amd64"),
        ("ubuntu", "6.8.0-45-generic", "apt-get install linux-headers-6.8.0-45-generic"),
        ("fedora", "6.5.6-300.fc39.x86_64", "dnf install kernel-devel-6.5.6-300.fc39.x86_64"),
        ("rhel centos fedora", "5.14.0-362.el9.x86_64", "dnf install kernel-devel-5.14.0-362.el9.x86_64"),
        (
            "suse opensuse",
            "5.14.21-150500.55.39-default",
            "zypper install kernel-default-devel-5.14.21-150500.55.39",
        ),
        ("arch", "6.6.1-arch1-1", "pacman -S linux-headers"),
        ("arch", "6.1.62-1-lts", "pacman -S linux-lts-headers"),
        ("alpine", "6.6.8-0-lts", "apk add linux-lts-dev"),
        ("plan9", "1.0", ""),
    ],
)
def test_headers_package_per_distribution(family: str, kernel: str, command: str) -> None:
    assert headers_package_command(Distro(family), kernel) == command


def test_json_keys_are_stable(tmp_path: Path, kernel: str) -> None:
    diag = explain(tmp_path, kernel, body=["gcc-12: fatal error: Killed signal terminated program cc1"])
    data = json.loads(json.dumps(diag.as_json()))
    assert list(data) == [
        "cause", "summary", "advice", "next_command", "module", "version", "kernel", "arch",
        "step", "exit_code", "make_log", "evidence", "details",
    ]  # fmt: skip
    assert list(data["evidence"][0]) == ["text", "make_log_line", "file", "line"]
    assert data["cause"] in CAUSES and data["make_log"] == str(tmp_path / "make.log")
    assert data["exit_code"] is None and isinstance(data["details"], dict)


def test_short_text_has_two_to_four_lines(tmp_path: Path, kernel: str) -> None:
    for body in (["gcc-12: fatal error: Killed signal terminated program cc1"], ["nothing useful"], []):
        diag = explain(tmp_path, kernel, body=body)
        short = render_text(diag, short=True).splitlines()
        assert 2 <= len(short) <= 4, short
        assert short[-1] == f"  Details: dkms explain m/1.0 -k {kernel}"


_SNIPPETS = [
    "gcc-12: fatal error: Killed signal terminated program cc1",
    f"{BUILD}/m.c:1:1: error: implicit declaration of function 'i2c_transfer'",
    'ERROR: modpost: "usb_register_driver" [m.ko] undefined!',
    "Hunk #1 FAILED at 7.",
    "configure: error: no",
    "/bin/sh: 1: gcc-12: not found",
    "# exit code: 2",
    "# command: make",
    "make: *** No rule to make target 'modules'.  Stop.",
    f"{BUILD}/m.c:3:3: note: declared here",
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=st.binary(max_size=400),
    lines=st.lists(st.one_of(st.sampled_from(_SNIPPETS), st.text(max_size=60)), max_size=12),
)
def test_any_make_log_gives_a_diagnosis(kernel: str, raw: bytes, lines: Sequence[str]) -> None:
    """Garbage or shuffled real lines: always one of the causes, never an exception."""
    with tempfile.TemporaryDirectory() as d:
        log = Path(d) / "make.log"
        log.write_bytes(raw + "\n".join(lines).encode("utf-8", "surrogatepass"))
        diag = diagnose(
            FailureInputs("m", "1.0", kernel, "x86_64", log, Path(f"/lib/modules/{kernel}/build"))
        )
        assert diag.cause in CAUSES
        assert diag.summary and "\n" not in diag.summary
        json.dumps(diag.as_json())
        render_text(diag)
        render_text(diag, short=True)


def test_pydkms_log_without_steps_is_not_evidence(tmp_path: Path, kernel: str) -> None:
    """A refused patch step before any command ran: the log's header lines are not quoted."""
    text = (
        f"DKMS (dkms-3.2.2) make.log for m/1.0 for kernel {kernel} (x86_64)\nTue Dec  1 22:06:03 UTC 2026\n"
    )
    diag = explain(tmp_path, kernel, text=text, step="patch", exit_code=5)
    assert diag.cause == "patch-failed" and diag.evidence == ()
    diag = explain(tmp_path, kernel, text=text, step="make", exit_code=10)
    assert diag.cause == "unknown" and diag.evidence == () and "names no error" in diag.summary
