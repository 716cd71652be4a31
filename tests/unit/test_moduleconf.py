"""The dkms.conf model for one kernel: overrides, directives, derived values (dkms-conf.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import pytest

from pydkms.confeval import EvalMode
from pydkms.distro import Distro
from pydkms.errors import ConfError
from pydkms.kernel import Kernel
from pydkms.moduleconf import ConfReader, ModuleConf, override_files

K, A = "6.1.0-9-amd64", "x86_64"


class Sink:
    def __init__(self) -> None:
        self.warnings: list = []
        self.deprecations: list = []

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def deprecated(self, text: str) -> None:
        self.deprecations.append(text)

    def raw_err(self, text: str) -> None:
        self.warnings.append(text)


@pytest.fixture
def ksrc(tmp_path: Path) -> Path:
    d = tmp_path / "ksrc"
    (d / "include").mkdir(parents=True)
    (d / ".config").write_text(
        'CONFIG_PCI=y\nCONFIG_DRM=m\n# CONFIG_FOO is not set\nCONFIG_CC_VERSION_TEXT="nope-cc 1"\n'
    )
    return d


def reader(tmp_path: Path, family: str = "debian", directives: tuple = ()) -> ConfReader:
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    return ConfReader(
        etc_dir=etc,
        mode=EvalMode.AUTO,
        distro=Distro(family),
        base_context={"dkms_tree": "/var/lib/dkms", "source_tree": "/usr/src", "install_tree": "/lib/modules",
                      "tmp_location": "/tmp"},
        directives=directives,
    )  # fmt: skip


def read(tmp_path: Path, ksrc: Path, text: str, *, family: str = "debian", directives: tuple = (),
         kernel: str = K, sink: Optional[Sink] = None, strict: bool = True) -> ModuleConf:  # fmt: skip
    conf = tmp_path / "dkms.conf"
    conf.write_text(text)
    r = reader(tmp_path, family, directives)
    return r.read(
        "m", "1.0", Kernel(kernel, A, ksrc, ksrc / ".config"), conf, strict=strict, report=sink or Sink()
    )


BASE = 'PACKAGE_NAME=m\nPACKAGE_VERSION=1.0\nBUILT_MODULE_NAME[0]=m\nDEST_MODULE_LOCATION[0]="/extra"\n'


def test_override_files_order(tmp_path: Path, ksrc: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    names = [
        "m.conf",
        "m-1.0.conf",
        f"m-1.0-{K}.conf",
        f"m-1.0-{K}-{A}.conf",
        f"m--{K}.conf",
        f"m--{K}-{A}.conf",
    ]
    for n in reversed(names):
        (etc / n).write_text(f'MAKE[0]="${{MAKE[0]}} {n}"\n')
    (etc / "other.conf").write_text('MAKE[0]="wrong"\n')
    assert override_files(etc, "m", "1.0", K, A) == tuple(etc / n for n in names)
    conf = read(tmp_path, ksrc, BASE + 'MAKE[0]="make"\n')
    assert conf.make_command == "make " + " ".join(names)


def test_defaults_and_derived_values(tmp_path: Path, ksrc: Path) -> None:
    conf = read(
        tmp_path,
        ksrc,
        'PACKAGE_NAME="foo"\nPACKAGE_VERSION=1.2\nDEST_MODULE_LOCATION[0]=/kernel/drivers/x\n'
        'BUILT_MODULE_LOCATION[0]=src\nSTRIP[0]=No\nAUTOINSTALL=YES\nBUILD_DEPENDS=("a b" c)\n'
        'PATCH[0]=one.patch\nPATCH[1]=two.patch\nPATCH_MATCH[1]="^5\\\\."\n',
    )
    (r,) = conf.records
    assert (r.built_name, r.built_location, r.dest_name) == ("foo", "src/", "foo")  # single module defaults
    assert r.install_location == "/updates/dkms" and r.dest_location == "/kernel/drivers/x"
    assert r.strip is False
    assert conf.autoinstall is True
    assert conf.build_depends == ("a", "b", "c")  # split on blanks everywhere [fix D-24]
    assert conf.patches == ("one.patch",)  # PATCH_MATCH[1] does not match 6.1
    assert conf.make_command == f"make -C {ksrc} M=/var/lib/dkms/m/1.0/build"
    assert not conf.excluded


def test_make_match_last_match_wins_and_no_carry_over(tmp_path: Path, ksrc: Path) -> None:
    text = (
        BASE
        + 'MAKE[0]="make zero"\nMAKE[1]="make one"\nMAKE_MATCH[1]="^6"\nMAKE[2]="make two"\nMAKE_MATCH[2]="amd64$"\n'
    )
    assert read(tmp_path, ksrc, text).make_command == "make two"
    # MAKE_MATCH[0] set and nothing matches: the generic command [fix D-19]
    text = BASE + 'MAKE[0]="make zero"\nMAKE_MATCH[0]="^2\\\\."\n'
    assert read(tmp_path, ksrc, text).make_command.startswith(f"make -C {ksrc} M=")


@pytest.mark.parametrize(
    ("extra", "excluded"),
    [
        ('BUILD_EXCLUSIVE_CONFIG="CONFIG_PCI CONFIG_DRM"', False),
        ('BUILD_EXCLUSIVE_CONFIG="CONFIG_PCI !CONFIG_DRM"', True),
        ('BUILD_EXCLUSIVE_CONFIG="CONFIG_FOO"', True),
        ('BUILD_EXCLUSIVE_KERNEL="^6\\\\.1\\\\."', False),
        ('BUILD_EXCLUSIVE_KERNEL="["', False),  # invalid regex: warning, no exclusion
        ("BUILD_EXCLUSIVE_KERNEL_MIN=6.1.0-10", True),
        ("BUILD_EXCLUSIVE_KERNEL_MAX=6.1.0-9-amd64", False),
        ("OBSOLETE_BY=6.1", True),
    ],
)
def test_exclusion(tmp_path: Path, ksrc: Path, extra: str, excluded: bool) -> None:
    sink = Sink()
    conf = read(tmp_path, ksrc, BASE + extra + "\n", sink=sink)
    assert conf.excluded is excluded, conf.exclusion
    if extra.endswith('"["'):
        assert any("not a valid regular expression" in w for w in sink.warnings)


def test_directives_win_and_family_destinations(tmp_path: Path, ksrc: Path) -> None:
    conf = read(tmp_path, ksrc, BASE, directives=(("STRIP", "no"), ("NOT_WHITELISTED", "x")))
    assert conf.records[0].strip is False
    for family, dest in (
        ("rhel fedora", "/extra"),
        ("suse", "/updates"),
        ("gentoo", "/extra"),
        ("alpine", "/extra"),
    ):
        assert read(tmp_path, ksrc, BASE, family=family).records[0].install_location == dest


def test_strip_defaults_follow_record_zero(tmp_path: Path, ksrc: Path) -> None:
    text = (
        "PACKAGE_NAME=m\nPACKAGE_VERSION=1\n"
        + "".join(f"BUILT_MODULE_NAME[{i}]=m{i}\nDEST_MODULE_LOCATION[{i}]=/extra\n" for i in range(3))
        + "STRIP[0]=no\nSTRIP[2]=yes\n"
    )
    assert [r.strip for r in read(tmp_path, ksrc, text).records] == [False, False, True]


def test_strict_only_checks(tmp_path: Path, ksrc: Path) -> None:
    text = BASE + "BUILT_MODULE_NAME[1]=m\nDEST_MODULE_LOCATION[1]=/extra\n"
    read(tmp_path, ksrc, text, strict=False)  # duplicates are only refused by strict reads
    with pytest.raises(ConfError) as exc:
        read(tmp_path, ksrc, text)
    assert exc.value.code == 8
    assert any(
        "dkms.conf:5: record #1: module 'm' is already built by record #0." in e for e in exc.value.errors
    )
    sink = Sink()
    read(tmp_path, ksrc, "PACKAGE_NAME=m\nPACKAGE_VERSION=1\n", sink=sink)
    assert any("zero modules" in w for w in sink.warnings)


def test_bash_evaluated_conf_in_auto_mode_warns_once(tmp_path: Path, ksrc: Path) -> None:
    sink = Sink()
    r = reader(tmp_path)
    conf = tmp_path / "dkms.conf"
    conf.write_text(BASE + "if true; then AUTOINSTALL=yes; fi\n")
    kernel = Kernel(K, A, ksrc, ksrc / ".config")
    first = r.read("m", "1.0", kernel, conf, strict=True, report=sink)
    again = r.read("m", "1.0", kernel, conf, strict=True, report=sink)
    assert first.autoinstall and again.autoinstall and first.evaluator == "bash"
    bash_warnings = [w for w in sink.warnings if "evaluated by bash" in w]
    assert len(bash_warnings) == 1 and "line 5" in bash_warnings[0]


def test_conf_cache_reuses_kernel_independent_results(tmp_path: Path, ksrc: Path) -> None:
    r = reader(tmp_path)
    conf = tmp_path / "dkms.conf"
    conf.write_text(BASE)
    calls: Dict[str, int] = {}
    import pydkms.moduleconf as mc

    real = mc.evaluate

    def counting(req):  # type: ignore[no-untyped-def]
        calls["n"] = calls.get("n", 0) + 1
        return real(req)

    mc.evaluate = counting  # type: ignore[assignment]
    try:
        for k in ("6.1.0-1-amd64", "6.1.0-2-amd64", "6.1.0-3-amd64"):
            r.read("m", "1.0", Kernel(k, A, ksrc, ksrc / ".config"), conf, strict=False, records_only=True)
        assert calls["n"] == 1  # no kernel-dependent variable was read
        conf.write_text(BASE + 'MAKE[0]="make KVER=$kernelver"\n')
        calls.clear()
        for k in ("6.1.0-1-amd64", "6.1.0-2-amd64"):
            r.read("m", "1.0", Kernel(k, A, ksrc, ksrc / ".config"), conf, strict=False)
        assert calls["n"] == 2
    finally:
        mc.evaluate = real  # type: ignore[assignment]


@pytest.mark.parametrize("strict", [True, False])
def test_huge_module_index_is_refused_not_expanded(tmp_path: Path, ksrc: Path, strict: bool) -> None:
    # outside the data subset, so bash evaluates it; bash wraps the index to ~7.7e18, and every
    # index below the highest would be a record: refused with one error instead of running out of memory
    text = (
        BASE
        + 'BUILT_MODULE_NAME[99999999999999999999]=far\nDEST_MODULE_LOCATION[99999999999999999999]="/extra"\n'
    )
    with pytest.raises(ConfError) as exc:
        read(tmp_path, ksrc, text, strict=strict)
    assert "module index too large (records #0 to #1023 are supported)" in str(exc.value.errors)
    assert len(exc.value.errors) == 1
