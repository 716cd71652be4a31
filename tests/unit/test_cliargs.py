"""Unit tests for pydkms.cliargs (spec/cli.md §1–§5)."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Optional

import pytest

from pydkms.cliargs import (
    ACTIONS,
    ALL_KERNELS_ACTIONS,
    OPTIONS,
    CommandLineError,
    Invocation,
    Notice,
    help_text,
    match_option,
    normalise_value,
    options_of,
    pair_kernels_arches,
    parse_args,
    prescan_framework_files,
    resolve_targets,
    split_first_slash,
    usage,
)
from pydkms.errors import DkmsError, UsageError


def err(argv: list[str]) -> CommandLineError:
    with pytest.raises(CommandLineError) as info:
        parse_args(argv)
    return info.value


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test with cwd = an empty tmp dir (bare tokens are classified relative to cwd)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ------------------------------------------------------------------------------------------
# Actions


def test_actions_list_is_complete() -> None:
    expected = {
        "add",
        "build",
        "install",
        "uninstall",
        "unbuild",
        "remove",
        "status",
        "match",
        "autoinstall",
        "kernel_preinst",
        "kernel_postinst",
        "kernel_prerm",
        "mktarball",
        "ldtarball",
        "generate_mok",
        "sign",
        "mkdeb",
        "mkdsc",
        "mkbmdeb",
        "mkrpm",
        "mkkmp",
        "mkdriverdisk",
    }
    assert set(ACTIONS) == expected
    assert len(ACTIONS) == len(expected)


@pytest.mark.parametrize("action", ACTIONS)
def test_every_action_is_recognised(action: str, in_tmp: Path) -> None:
    argv = [action, "-k", "6.1"] if action.startswith("kernel_") else [action]
    assert parse_args(argv).action == action


def test_action_anywhere_on_the_line(in_tmp: Path) -> None:
    inv = parse_args(["-m", "foo", "-v", "1", "build", "-k", "6.1"])
    assert inv.action == "build"
    assert (inv.module, inv.version, inv.kernels) == ("foo", "1", ("6.1",))


@pytest.mark.parametrize("token", ["Add", "ADD", "add ", "adds", "kernel_post", "mk"])
def test_non_exact_action_names_are_not_actions(token: str, in_tmp: Path) -> None:
    inv = parse_args(["status", token])
    assert inv.action == "status"
    assert inv.module == token


def test_second_action_exits_4(in_tmp: Path) -> None:
    e = err(["add", "foo/1", "build"])
    assert e.code == 4
    assert "add" in e.message and "build" in e.message
    assert not e.show_usage


def test_second_action_raised_when_reached_before_unknown_option(in_tmp: Path) -> None:
    assert err(["add", "build", "--bogus"]).code == 4
    assert err(["add", "--bogus", "build"]).code == 2


def test_same_action_twice_is_an_error(in_tmp: Path) -> None:
    assert err(["status", "status"]).code == 4


def test_action_wins_over_existing_file(in_tmp: Path) -> None:
    (in_tmp / "build").write_text("x")
    inv = parse_args(["build", "foo/1"])
    assert inv.action == "build"
    assert inv.archive is None


@pytest.mark.parametrize("argv", [[], ["-m", "foo"], ["foo/1.0"], ["--force", "-k", "6.1"]])
def test_no_action_exits_4_with_usage(argv: list[str], in_tmp: Path) -> None:
    e = err(argv)
    assert e.code == 4
    assert e.show_usage


def test_no_action_is_reported_after_the_option_conflict_checks(in_tmp: Path) -> None:
    # Upstream order: the §5.1 checks run before the action dispatch.
    assert err(["--binaries-only", "--source-only"]).code == 8
    assert err(["--all", "-k", "6.1"]).code == 2


# ------------------------------------------------------------------------------------------
# Help and version


@pytest.mark.parametrize(
    ("argv", "help_", "version"),
    [
        (["--version"], False, True),
        (["-V"], False, True),
        (["--help"], True, False),
        (["-h"], True, False),
        (["--version", "--bogus"], False, True),
        (["-V", "add", "build"], False, True),
        (["-h", "--all", "-k", "6.1"], True, False),
        (["--binaries-only", "--source-only", "-V"], False, True),
        (["add", "--all", "--help"], True, False),
        (["-V", "-h"], False, True),
        (["-h", "-V"], True, False),
        (["-V", "--dkmsframework", "/nonexistent/fw.conf"], False, True),
    ],
)
def test_help_and_version_short_circuit(argv: list[str], help_: bool, version: bool, in_tmp: Path) -> None:
    inv = parse_args(argv)
    assert inv.show_help is help_
    assert inv.show_version is version


def test_tokens_after_version_are_not_examined(in_tmp: Path) -> None:
    inv = parse_args(["status", "-V", "-k", "6.1", "--force"])
    assert inv.action == "status"
    assert inv.kernels == ()
    assert not inv.force


def test_errors_before_help_still_win(in_tmp: Path) -> None:
    assert err(["--bogus", "--help"]).code == 2
    assert err(["add", "build", "-V"]).code == 4


def test_version_flag_needs_exact_match(in_tmp: Path) -> None:
    assert err(["--version=1"]).code == 2
    assert err(["--versions"]).code == 2


def test_version_under_quiet_keeps_quiet(in_tmp: Path) -> None:
    inv = parse_args(["-q", "--version"])
    assert inv.show_version and inv.quiet


# ------------------------------------------------------------------------------------------
# Option syntax


FLAGS: list[tuple[str, str]] = [
    ("--force", "force"),
    ("--force-version-override", "force_version_override"),
    ("--binaries-only", "binaries_only"),
    ("--source-only", "source_only"),
    ("--rpm_safe_upgrade", "rpm_safe_upgrade"),
    ("--symlink-modules", "symlink_modules"),
    ("--no-depmod", "no_depmod"),
    ("--modprobe-on-install", "modprobe_on_install"),
    ("--verbose", "verbose"),
    ("--debug", "debug"),
    ("--quiet", "quiet"),
    ("-q", "quiet"),
    ("--json", "json"),
    ("--all", "all"),
]


@pytest.mark.parametrize(("flag", "attr"), FLAGS)
def test_flags_set_their_field(flag: str, attr: str, in_tmp: Path) -> None:
    assert getattr(parse_args(["status"]), attr) is False
    assert getattr(parse_args(["status", flag]), attr) is True


@pytest.mark.parametrize(("flag", "attr"), FLAGS)
def test_flags_must_match_exactly(flag: str, attr: str, in_tmp: Path) -> None:
    for bad in (flag + "=yes", flag + "x"):
        e = err(["status", bad])
        assert e.code == 2
        assert bad in e.message
        assert e.show_usage


# (option spelling, field, raw value, expected field value)
VALUE_OPTIONS: list[tuple[str, str, str, Any]] = [
    ("--templatekernel", "template_kernel", "6.1.0-1", "6.1.0-1"),
    ("-c", "conf", "/etc/foo.conf", Path("/etc/foo.conf")),
    ("--config", "kernel_config", "/boot/config-6.1", Path("/boot/config-6.1")),
    ("--archive", "archive", "/tmp/a.tar.gz", Path("/tmp/a.tar.gz")),
    ("--kernelsourcedir", "kernel_source_dir", "/usr/src/linux", Path("/usr/src/linux")),
    ("--dkmstree", "dkms_tree", "/x/dkms", Path("/x/dkms")),
    ("--sourcetree", "source_tree", "/x/src", Path("/x/src")),
    ("--installtree", "install_tree", "/x/mod", Path("/x/mod")),
    ("-j", "jobs", "4", "4"),
    ("-d", "distro", "suse", "suse"),
    ("--distro", "distro", "redhat3", "redhat3"),
    ("-r", "release", "9.1", "9.1"),
    ("--release", "release", "sles9", "sles9"),
    ("--size", "size", "2880", "2880"),
    ("--media", "media", "iso", "iso"),
    ("--spec", "spec", "my.spec", "my.spec"),
    ("--legacy-postinst", "legacy_postinst", "0", "0"),
    ("-v", "version", "1.0", "1.0"),
    ("-m", "module", "foo", "foo"),
    ("--module", "module", "foo", "foo"),
]


@pytest.mark.parametrize(("opt", "attr", "raw", "expected"), VALUE_OPTIONS)
def test_value_option_separate_token(opt: str, attr: str, raw: str, expected: Any, in_tmp: Path) -> None:
    assert getattr(parse_args(["status", opt, raw]), attr) == expected


@pytest.mark.parametrize(
    ("opt", "attr", "raw", "expected"), [o for o in VALUE_OPTIONS if o[0].startswith("--")]
)
def test_long_value_option_with_equals(opt: str, attr: str, raw: str, expected: Any, in_tmp: Path) -> None:
    assert getattr(parse_args(["status", f"{opt}={raw}"]), attr) == expected


@pytest.mark.parametrize(
    ("opt", "attr", "raw", "expected"), [o for o in VALUE_OPTIONS if o[0].startswith("--")]
)
def test_long_value_option_prefix_match(opt: str, attr: str, raw: str, expected: Any, in_tmp: Path) -> None:
    assert getattr(parse_args(["status", f"{opt}XYZ={raw}"]), attr) == expected
    assert getattr(parse_args(["status", f"{opt}XYZ", raw]), attr) == expected


@pytest.mark.parametrize(
    ("argv", "attr", "expected"),
    [
        (["--kernelversion=6.1"], "kernels", ("6.1",)),
        (["--kernelver=6.1"], "kernels", ("6.1",)),
        (["--kernelverX", "6.1"], "kernels", ("6.1",)),
        (["--archive=a.tgz"], "archive", Path("a.tgz")),
        (["--archives", "a.tgz"], "archive", Path("a.tgz")),
        (["--arch=x86_64"], "arches", ("x86_64",)),
        (["--architecture", "x86_64"], "arches", ("x86_64",)),
        (["--archiv=x"], "arches", ("x",)),  # not "--archive": falls through to --arch
        (["--configfile=/c"], "kernel_config", Path("/c")),
        (["--directives=A=b"], "directives", (("A", "b"),)),
        # Upstream quirk kept: --module-version is a --module prefix match.
        (["--module-version=2.0"], "module", "2.0"),
        (["--dkmstreeX=/t"], "dkms_tree", Path("/t")),
    ],
)
def test_prefix_matching(argv: list[str], attr: str, expected: Any, in_tmp: Path) -> None:
    assert getattr(parse_args(["status", *argv]), attr) == expected


@pytest.mark.parametrize(
    "token",
    ["--kernel=6.1", "--kernelve", "--arc=x", "--mod=foo", "--dkms", "--templ=x", "--con=x", "--j=2"],
)
def test_shorter_than_the_option_name_is_unknown(token: str, in_tmp: Path) -> None:
    assert err(["status", token]).code == 2


def test_value_after_first_equals(in_tmp: Path) -> None:
    inv = parse_args(["status", "--templatekernel=a=b=c", "--directive=X=y=z"])
    assert inv.template_kernel == "a=b=c"
    assert inv.directives == (("X", "y=z"),)


def test_equals_with_empty_value_does_not_consume_next(in_tmp: Path) -> None:
    inv = parse_args(["status", "--templatekernel=", "foo/1"])
    assert inv.template_kernel == ""
    assert (inv.module, inv.version) == ("foo", "1")


@pytest.mark.parametrize(
    "argv",
    [
        ["--kernelver", "-q"],
        ["-k", "--all"],
        ["-k", "--dkmstree", "/x"],
        ["-m", "--force"],
        ["--module", "-x/1.0"],
        ["-v", "-V"],
        ["-a", "--help"],
        ["--arch", "-"],
        ["--templatekernel", "--kernelver"],
        ["--directive", "-X=1"],
        ["--distro", "-q"],
        ["--release", "-r"],
        ["--size", "-1"],
        ["--media", "--iso"],
        ["--spec", "-"],
        ["--legacy-postinst", "-1"],
        ["-k", " --all \nx"],  # normalised first, as every value is
    ],
)
def test_value_that_starts_with_a_dash_exits_2(argv: list[str], in_tmp: Path) -> None:
    """The next token is still taken as the value, but one that starts with '-' is refused.

    Upstream takes it unconditionally: `-k --dkmstree DIR` made --dkmstree the kernel and left DIR
    over, and the command ran against the real /var/lib/dkms.
    """
    e = err(["build", "foo/1", *argv])
    assert e.code == 2
    assert f"{argv[0]} needs a value, but the argument after it is '{normalise_value(argv[1])}'" in e.message
    assert e.hint is None


@pytest.mark.parametrize(
    "opt",
    [
        "-c",
        "--config",
        "--archive",
        "--kernelsourcedir",
        "--dkmstree",
        "--sourcetree",
        "--installtree",
        "--dkmsframework",
    ],
)
def test_path_value_that_starts_with_a_dash_says_how_to_write_it(opt: str, in_tmp: Path) -> None:
    e = err(["status", opt, "-dir"])
    assert e.code == 2 and opt in e.message and "'-dir'" in e.message
    assert e.hint == "A path that starts with '-' can be written as ./-name."
    if opt != "--dkmsframework":  # (that one must exist; the others are not looked at here)
        assert parse_args(["status", opt, "./-dir"]).action == "status"


@pytest.mark.parametrize("token", ["--kernelver=-1", "--module=-m", "--dkmstree=--x", "--directive=-A=b"])
def test_inline_value_that_starts_with_a_dash_exits_2(token: str, in_tmp: Path) -> None:
    e = err(["status", token])
    name, _, value = token.partition("=")
    assert (e.code, e.message) == (2, f"The value of {name} cannot start with '-': '{value}'.")


def test_dash_value_is_refused_when_reached(in_tmp: Path) -> None:
    assert err(["status", "-k", "--all", "--bogus"]).code == 2
    assert "needs a value" in err(["status", "-k", "--all", "--bogus"]).message
    assert "Unknown option" in err(["status", "--bogus", "-k", "--all"]).message
    # after -q, like every command-line error: nothing is printed
    assert err(["-q", "status", "-k", "-x"]).quiet
    assert not err(["status", "-k", "-x", "-q"]).quiet


@pytest.mark.parametrize("value", ["0", "1", "16", "0016", ""])
def test_job_counts(value: str, in_tmp: Path) -> None:
    assert parse_args(["build", "foo/1", "-j", value]).jobs == value


@pytest.mark.parametrize("value", ["abc", "-3", "-1", "+2", "1.5", "2x", "٣", " 4 2", "0x10"])
def test_job_count_that_is_no_number_exits_2(value: str, in_tmp: Path) -> None:
    e = err(["build", "foo/1", "-j", value])
    assert e.code == 2
    shown = normalise_value(value)
    assert e.message == f"-j '{shown}' is not a number of make jobs: use a whole number (0 for no limit)."


@pytest.mark.parametrize(
    ("opt", "attr", "expected"),
    [
        ("-k", "kernels", ("",)),
        ("--kernelver", "kernels", ("",)),
        ("-a", "arches", ("",)),
        ("-v", "version", ""),
        ("-m", "module", ""),
        ("--templatekernel", "template_kernel", ""),
        ("-j", "jobs", ""),
        ("-c", "conf", None),
        ("--archive", "archive", None),
        ("--dkmstree", "dkms_tree", None),
    ],
)
def test_missing_value_at_end_is_empty(opt: str, attr: str, expected: Any, in_tmp: Path) -> None:
    assert getattr(parse_args(["status", opt]), attr) == expected


@pytest.mark.parametrize(
    "token",
    [
        "-k=6.1",
        "-k6.1",
        "-m=foo",
        "-mfoo",
        "-qV",
        "-Vq",
        "-hq",
        "-x",
        "-",
        "--",
        "---",
        "--bogus",
        "-vq",
        "-K",
    ],
)
def test_unknown_options_exit_2(token: str, in_tmp: Path) -> None:
    e = err(["status", token])
    assert e.code == 2
    assert token in e.message
    assert e.show_usage


def test_unknown_option_raised_when_reached(in_tmp: Path) -> None:
    e = err(["--no-initrd", "--bogus", "add", "build"])
    assert e.code == 2
    assert e.notices == (Notice("Deprecated feature: --no-initrd", True),)


def test_no_flag_is_shadowed_by_a_value_prefix() -> None:
    for opt in OPTIONS:
        for name in (opt.long, opt.short):
            if name is not None:
                assert match_option(name) is opt, name


def test_archive_before_arch() -> None:
    archive = match_option("--archive")
    arch = match_option("--arch")
    assert archive is not None and archive.dest == "archive"
    assert arch is not None and arch.dest == "arch"


# ------------------------------------------------------------------------------------------
# Value normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("6.1", "6.1"),
        ("  6.1  ", "6.1"),
        ("\t6.1\t", "6.1"),
        ("6.1\nsecond line", "6.1"),
        ("  6.1 \n second", "6.1"),
        ("\nsecond", ""),
        ("a b", "a b"),
        ("a\\b", "a\\b"),
        ("", ""),
        ("6.1\r", "6.1\r"),
    ],
)
def test_normalise_value(raw: str, expected: str) -> None:
    assert normalise_value(raw) == expected


@pytest.mark.parametrize(
    ("argv", "attr", "expected"),
    [
        (["-k", " 6.1 \nfoo"], "kernels", ("6.1",)),
        (["--kernelver= 6.1/x86_64 \nfoo"], "kernels", ("6.1",)),
        (["-m", " foo/1.0 \nbar"], "module", "foo"),
        (["-m", " foo/1.0 \nbar"], "version", "1.0"),
        (["-a", "\tx86_64\n"], "arches", ("x86_64",)),
        (["--dkmstree", " /t \n/u"], "dkms_tree", Path("/t")),
        (["--directive", " A=b \nC=d"], "directives", (("A", "b"),)),
    ],
)
def test_values_are_normalised(argv: list[str], attr: str, expected: Any, in_tmp: Path) -> None:
    assert getattr(parse_args(["status", *argv]), attr) == expected


def test_bare_tokens_are_not_normalised(in_tmp: Path) -> None:
    inv = parse_args(["status", " foo/1 "])
    assert (inv.module, inv.version) == (" foo", "1 ")


# ------------------------------------------------------------------------------------------
# Scalars and repeatables


@pytest.mark.parametrize(
    ("argv", "attr", "expected"),
    [
        (["-c", "a", "-c", "b"], "conf", Path("b")),
        (["--config", "a", "--config=b"], "kernel_config", Path("b")),
        (["--archive", "a", "--archive", "b"], "archive", Path("b")),
        (["-j", "1", "-j", "8"], "jobs", "8"),
        (["-v", "1", "-v", "2"], "version", "2"),
        (["-m", "a", "-m", "b"], "module", "b"),
        (["--templatekernel", "a", "--templatekernel", "b"], "template_kernel", "b"),
        (["--dkmstree", "/a", "--dkmstree", "/b"], "dkms_tree", Path("/b")),
        (["--dkmstree", "/a", "--dkmstree", ""], "dkms_tree", None),
        (["--media", "iso", "--media", "tar"], "media", "tar"),
    ],
)
def test_scalar_last_wins(argv: list[str], attr: str, expected: Any, in_tmp: Path) -> None:
    assert getattr(parse_args(["status", *argv]), attr) == expected


def test_repeatable_options_keep_order(in_tmp: Path) -> None:
    inv = parse_args(
        ["status", "-k", "b", "-k", "a", "-a", "y", "-a", "x", "--directive", "B=1", "--directive=A=2"]
    )
    assert inv.kernels == ("b", "a")
    assert inv.arches == ("y", "x")
    assert inv.directives == (("B", "1"), ("A", "2"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("NAME=value", ("NAME", "value")),
        ("NAME=", ("NAME", "")),
        ("NAME=a=b", ("NAME", "a=b")),
        ("MAKE[0]=make -j1", ("MAKE[0]", "make -j1")),
    ],
)
def test_directive_split_at_first_equals(value: str, expected: tuple[str, str], in_tmp: Path) -> None:
    inv = parse_args(["status", "--directive", value])
    assert inv.directives == (expected,)
    assert inv.notices == ()


@pytest.mark.parametrize("value", ["NOEQUALS", "=value", ""])
def test_malformed_directive_is_ignored_with_a_warning(value: str, in_tmp: Path) -> None:
    inv = parse_args(["status", "--directive", value])
    assert inv.directives == ()
    assert len(inv.notices) == 1
    assert inv.notices[0].text.startswith("Warning: ")
    assert "--directive" in inv.notices[0].text


def test_empty_path_values_are_none(in_tmp: Path) -> None:
    inv = parse_args(
        ["status", "-c", "", "--config=", "--kernelsourcedir", "", "--sourcetree=", "--installtree", ""]
    )
    assert inv.conf is None and inv.kernel_config is None and inv.kernel_source_dir is None
    assert inv.source_tree is None and inv.install_tree is None


def test_defaults_of_an_empty_invocation(in_tmp: Path) -> None:
    inv = parse_args(["status"])
    assert inv == Invocation(action="status")


def test_invocation_is_frozen(in_tmp: Path) -> None:
    inv = parse_args(["status"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        inv.action = "add"  # type: ignore[misc]


# ------------------------------------------------------------------------------------------
# Module and version


@pytest.mark.parametrize(
    ("argv", "module", "version"),
    [
        (["foo/1.0"], "foo", "1.0"),
        (["foo"], "foo", None),
        (["foo/1.0/rc1"], "foo", "1.0/rc1"),
        (["foo/"], "foo", ""),
        (["/1.0"], "", "1.0"),
        (["-m", "foo/1.0/rc1"], "foo", "1.0/rc1"),
        (["--module=foo/a/b/c"], "foo", "a/b/c"),
        (["-m", "foo", "-v", "1.0"], "foo", "1.0"),
        (["-v", "1.0", "-m", "foo"], "foo", "1.0"),  # -m without '/' leaves the version alone
        (["-v", "1.0", "-m", "foo/2.0"], "foo", "2.0"),
        (["-m", "foo/2.0", "-v", "3.0"], "foo", "3.0"),
        (["-m", "foo/2.0", "-m", "bar"], "bar", "2.0"),
        (["-v", "1", "bar"], "bar", "1"),
        (["bar", "-m", "foo"], "foo", None),
        (["bar/1", "-m", "foo"], "foo", "1"),
        (["-m", "", "bar/2"], "bar", "2"),  # empty module counts as unset
        (["", "bar/2"], "bar", "2"),
    ],
)
def test_module_version(argv: list[str], module: Optional[str], version: Optional[str], in_tmp: Path) -> None:
    inv = parse_args(["status", *argv])
    assert (inv.module, inv.version) == (module, version)


def test_second_bare_module_is_not_understood(in_tmp: Path) -> None:
    inv = parse_args(["status", "foo/1", "bar/2"])
    assert (inv.module, inv.version) == ("foo", "1")
    assert len(inv.notices) == 1
    assert "bar/2" in inv.notices[0].text
    assert inv.notices[0].text.startswith("Warning: ")
    assert inv.notices[0].before_quiet


@pytest.mark.parametrize(
    ("token", "problem", "module", "version"),
    [
        ("/nonexistent/dir", "'/nonexistent/dir' does not exist", "", "nonexistent/dir"),
        ("./foo", "'./foo' does not exist", ".", "foo"),
        ("empty", "'empty' is a directory but has no file dkms.conf", "empty", None),
        ("dangling", "'dangling' is not a regular file or directory", "dangling", None),
    ],
)
def test_bare_path_that_is_no_source_is_explained(
    in_tmp: Path, token: str, problem: str, module: str, version: Optional[str]
) -> None:
    (in_tmp / "empty").mkdir()
    (in_tmp / "dangling").symlink_to("nowhere")
    inv = parse_args(["add", token])
    # still read as MODULE[/VERSION] (cli.md §2 rule 5), with the reason it is not a source
    assert (inv.module, inv.version, inv.source_path) == (module, version, None)
    assert [n.text for n in inv.notices] == [f"Warning: {problem}, so it is read as <module>/<version>."]


def test_existing_directory_named_like_module_version_is_not_flagged(in_tmp: Path) -> None:
    # e.g. `dkms install hello/1.0` run from inside /var/lib/dkms
    (in_tmp / "hello" / "1.0").mkdir(parents=True)
    inv = parse_args(["install", "hello/1.0"])
    assert (inv.module, inv.version, inv.notices) == ("hello", "1.0", ())


def test_bare_token_after_dash_m_is_not_understood(in_tmp: Path) -> None:
    inv = parse_args(["status", "-m", "foo", "bar"])
    assert inv.module == "foo"
    assert [n.text for n in inv.notices if "bar" in n.text]


@pytest.mark.parametrize(
    ("argv", "module"),
    [
        (["build", "foo/1", "bar/2"], "foo"),
        (["remove", "-m", "foo", "-v", "1", "/tmp/nonexistent-dir"], "foo"),
        (["foo/1", "add", "extra"], "foo"),
        (["autoinstall", "-k", "6.1", "foo", "bar"], "foo"),
        (["kernel_prerm", "-k", "6.1", "x", "y"], "x"),
        (["generate_mok", "a", "b"], "a"),
    ],
)
def test_stray_argument_of_an_action_that_changes_things_exits_2(
    argv: list[str], module: str, in_tmp: Path
) -> None:
    """The token nothing uses is an error, not a warning, for every action but status."""
    e = err(["--no-initrd", *argv])
    assert e.code == 2
    assert e.message == (
        f"'{argv[-1]}' is not understood: it is not an action, a source directory, a dkms.conf file or "
        f"an archive, and the module is already set ('{module}')."
    )
    # the warning status would give is not printed as well; earlier notices are
    assert [n.text for n in e.notices] == ["Deprecated feature: --no-initrd"]


def test_stray_argument_error_comes_after_the_other_checks(in_tmp: Path) -> None:
    assert err(["build", "foo/1", "bar/2", "--all"]).code == 5
    assert err(["foo/1", "bar/2"]).code == 4  # no action: that is said first
    assert err(["-q", "build", "foo/1", "bar/2"]).quiet


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["biuld", "hello/1.0"], "Unknown action 'biuld' (did you mean build?)."),
        (["hello/1.0", "instal"], "Unknown action 'instal' (did you mean install?)."),
        (["-m", "hello", "-v", "1", "Remove"], "Unknown action 'Remove' (did you mean remove?)."),
        (["stauts"], "Unknown action 'stauts' (did you mean status?)."),
        (["kernel_postint", "-k", "6.1"], "Unknown action 'kernel_postint' (did you mean kernel_postinst?)."),
        (["frobnicate"], "Unknown action 'frobnicate'."),
    ],
)
def test_unknown_action_exits_2(argv: list[str], message: str, in_tmp: Path) -> None:
    e = err(argv)
    assert (e.code, e.message) == (2, message)
    assert e.show_usage is message.endswith("'.")  # the list of actions when there is no guess
    assert e.notices == ()  # a mistyped action is not also "not understood"


@pytest.mark.parametrize("argv", [["hello/1.0"], ["-m", "hello"], ["./biuld"], ["existing"], [""]])
def test_no_action_when_no_bare_word_can_be_one(argv: list[str], in_tmp: Path) -> None:
    """m/v, paths and existing files are what upstream's bare-token rules make of them, not actions."""
    (in_tmp / "existing").mkdir()
    e = err(argv)
    assert (e.code, e.message) == (4, "No action specified.")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("a/b", ("a", "b")), ("a/b/c", ("a", "b/c")), ("a", ("a", None)), ("/", ("", "")), ("", ("", None))],
)
def test_split_first_slash(text: str, expected: tuple[str, Optional[str]]) -> None:
    assert split_first_slash(text) == expected


# ------------------------------------------------------------------------------------------
# Bare tokens and the filesystem


def test_dkms_conf_file_gives_its_directory(in_tmp: Path) -> None:
    (in_tmp / "src").mkdir()
    (in_tmp / "src" / "dkms.conf").write_text("PACKAGE_NAME=x\n")
    inv = parse_args(["add", "src/dkms.conf"])
    assert inv.source_path == Path("src")
    assert inv.module is None and inv.archive is None


def test_dkms_conf_in_cwd_gives_dot(in_tmp: Path) -> None:
    (in_tmp / "dkms.conf").write_text("")
    assert parse_args(["add", "dkms.conf"]).source_path == Path(".")


def test_file_ending_in_dkms_conf(in_tmp: Path) -> None:
    (in_tmp / "d").mkdir()
    (in_tmp / "d" / "my-dkms.conf").write_text("")
    assert parse_args(["add", "d/my-dkms.conf"]).source_path == Path("d")


def test_absolute_dkms_conf_path(tmp_path: Path) -> None:
    conf = tmp_path / "dkms.conf"
    conf.write_text("")
    assert parse_args(["add", str(conf)]).source_path == tmp_path


def test_directory_with_dkms_conf(in_tmp: Path) -> None:
    (in_tmp / "src").mkdir()
    (in_tmp / "src" / "dkms.conf").write_text("")
    assert parse_args(["add", "src"]).source_path == Path("src")
    assert parse_args(["add", "src/"]).source_path == Path("src/")


def test_directory_whose_dkms_conf_is_a_symlink(in_tmp: Path) -> None:
    (in_tmp / "real.conf").write_text("")
    (in_tmp / "src").mkdir()
    (in_tmp / "src" / "dkms.conf").symlink_to(in_tmp / "real.conf")
    assert parse_args(["add", "src"]).source_path == Path("src")


def test_directory_without_dkms_conf_is_a_module(in_tmp: Path) -> None:
    (in_tmp / "foo").mkdir()
    inv = parse_args(["add", "foo"])
    assert inv.source_path is None and inv.module == "foo"


def test_directory_whose_dkms_conf_is_a_directory_is_a_module(in_tmp: Path) -> None:
    (in_tmp / "foo" / "dkms.conf").mkdir(parents=True)
    inv = parse_args(["add", "foo"])
    assert inv.source_path is None and inv.module == "foo"


def test_directory_named_dkms_conf_is_not_a_conf(in_tmp: Path) -> None:
    (in_tmp / "x" / "dkms.conf").mkdir(parents=True)
    inv = parse_args(["add", "x/dkms.conf"])
    assert inv.source_path is None
    assert (inv.module, inv.version) == ("x", "dkms.conf")


def test_other_regular_file_is_an_archive(in_tmp: Path) -> None:
    (in_tmp / "foo-1.0.dkms.tar.gz").write_bytes(b"")
    inv = parse_args(["ldtarball", "foo-1.0.dkms.tar.gz"])
    assert inv.archive == Path("foo-1.0.dkms.tar.gz")
    assert inv.module is None


def test_archive_and_module_both_set(in_tmp: Path) -> None:
    (in_tmp / "a.tgz").write_bytes(b"")
    inv = parse_args(["add", "foo/1", "a.tgz"])
    assert inv.archive == Path("a.tgz")
    assert (inv.module, inv.version) == ("foo", "1")


def test_archive_option_and_bare_archive_last_wins(in_tmp: Path) -> None:
    (in_tmp / "a.tgz").write_bytes(b"")
    assert parse_args(["add", "--archive", "b.tgz", "a.tgz"]).archive == Path("a.tgz")
    assert parse_args(["add", "a.tgz", "--archive", "b.tgz"]).archive == Path("b.tgz")


def test_nonexistent_path_is_a_module(in_tmp: Path) -> None:
    inv = parse_args(["add", "nonexistent/dkms.conf"])
    assert (inv.module, inv.version) == ("nonexistent", "dkms.conf")


def test_empty_token_is_never_a_path(in_tmp: Path) -> None:
    (in_tmp / "dkms.conf").write_text("")  # "" must not be read as "." (which holds a dkms.conf)
    inv = parse_args(["add", ""])
    assert inv.source_path is None
    assert inv.module == ""


def test_path_rules_apply_after_module_is_set(in_tmp: Path) -> None:
    (in_tmp / "src").mkdir()
    (in_tmp / "src" / "dkms.conf").write_text("")
    inv = parse_args(["add", "foo/1", "src"])
    assert inv.source_path == Path("src")
    assert inv.notices == ()


def test_classification_table(in_tmp: Path) -> None:
    (in_tmp / "tree").mkdir()
    (in_tmp / "tree" / "dkms.conf").write_text("")
    (in_tmp / "blob").write_bytes(b"")
    (in_tmp / "emptydir").mkdir()
    inv = parse_args(["tree", "blob", "emptydir/x", "status", "leftover"])
    assert inv.action == "status"
    assert inv.source_path == Path("tree")
    assert inv.archive == Path("blob")
    assert (inv.module, inv.version) == ("emptydir", "x")
    assert len(inv.notices) == 1 and "leftover" in inv.notices[0].text


# ------------------------------------------------------------------------------------------
# Kernels and arches


@pytest.mark.parametrize(
    ("argv", "kernels", "arches"),
    [
        (["-k", "k1"], ("k1",), ()),
        (["-k", "k1/x86_64"], ("k1",), ("x86_64",)),
        (["-k", "k1/a/b"], ("k1",), ("a/b",)),
        (["-k", "k1/"], ("k1",), ("",)),
        (["-k", "/x86_64"], ("",), ("x86_64",)),
        (["-k", "k1", "-k", "k2/x86_64"], ("k1", "k2"), ("x86_64",)),
        (["-a", "i386", "-k", "k0", "-k", "k1/x86_64"], ("k0", "k1"), ("i386", "x86_64")),
        (
            ["-k", "k1", "-k", "k2", "-a", "i386", "-k", "k3", "-a", "i686", "-a", "x86_64"],
            ("k1", "k2", "k3"),
            ("i386", "i686", "x86_64"),
        ),
        (["--arch", "x86_64", "--arch=i386", "-k", "a", "-k", "b"], ("a", "b"), ("x86_64", "i386")),
    ],
)
def test_kernel_and_arch_lists(
    argv: list[str], kernels: tuple[str, ...], arches: tuple[str, ...], in_tmp: Path
) -> None:
    inv = parse_args(["status", *argv])
    assert inv.kernels == kernels
    assert inv.arches == arches


def test_k_slash_a_appends_at_end_of_arch_list(in_tmp: Path) -> None:
    # -k k1/A appends A at the *end* of the arch list, so it pairs with whatever is there.
    inv = parse_args(["build", "foo/1", "-a", "a0", "-k", "k0", "-k", "k1/a1"])
    assert inv.arches == ("a0", "a1")
    targets = resolve_targets(inv, default_kernel=lambda: "X", default_arch=lambda k: "Y")
    assert targets == [("k0", "a0"), ("k1", "a1")]
    inv = parse_args(["build", "foo/1", "-k", "k0/a0", "-k", "k1", "-a", "a1"])
    assert resolve_targets(inv, default_kernel=lambda: "X", default_arch=lambda k: "Y") == [
        ("k0", "a0"),
        ("k1", "a1"),
    ]


# ------------------------------------------------------------------------------------------
# Post-parse checks and their order


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        # --binaries-only + --source-only: 8, for any action
        (["mktarball", "foo/1", "--binaries-only", "--source-only"], 8),
        (["status", "--source-only", "--binaries-only"], 8),
        # arch count
        (["build", "foo/1", "-a", "a", "-a", "b"], 1),
        (["build", "foo/1", "-k", "k1", "-a", "a", "-a", "b"], 1),
        (["build", "foo/1", "-k", "k1", "-k", "k2", "-k", "k3", "-a", "a", "-a", "b"], 1),
        (["status", "-k", "k1/a", "-a", "b", "-a", "c"], 1),
        # --all with kernels / arches
        (["remove", "foo/1", "--all", "-k", "k1"], 2),
        (["remove", "foo/1", "--all", "-k", "k1/x86_64"], 2),
        (["remove", "foo/1", "--all", "-a", "x86_64"], 3),
        (["status", "--all", "-k", "k1"], 2),
        (["status", "--all", "-a", "x"], 3),
        # kernel hooks need exactly one -k
        (["kernel_preinst"], 4),
        (["kernel_postinst"], 4),
        (["kernel_prerm"], 4),
        (["kernel_prerm", "-k", "a", "-k", "b"], 4),
        (["kernel_postinst", "-a", "x86_64"], 4),
        # --all banned, checked first for these actions
        (["add", "foo/1", "--all"], 5),
        (["build", "foo/1", "--all"], 5),
        (["install", "foo/1", "--all"], 5),
        (["autoinstall", "--all"], 5),
        (["match", "--all", "--templatekernel", "t"], 5),
        (["kernel_preinst", "--all"], 5),
        # the global checks come first (upstream 3.2 order): -k with --all is 2, arches 1, flags 8
        (["kernel_postinst", "--all", "-k", "k1"], 2),
        (["kernel_prerm", "--all", "-k", "k1", "-k", "k2"], 2),
        (["build", "foo/1", "--all", "--binaries-only", "--source-only"], 8),
        (["install", "foo/1", "--all", "-a", "a", "-a", "b"], 1),
        (["install", "foo/1", "--all", "-a", "a"], 3),
        # order: 8 before 1 before 2 before 3 before 4
        (["remove", "--all", "-k", "k", "-a", "a", "-a", "b", "--binaries-only", "--source-only"], 8),
        (["remove", "--all", "-k", "k", "-a", "a", "-a", "b"], 1),
        (["remove", "--all", "-k", "k", "-a", "a"], 2),
        (["remove", "--all", "-a", "a"], 3),
        (["kernel_prerm", "-a", "a", "-a", "b"], 1),
        (["kernel_prerm", "--binaries-only", "--source-only"], 8),
    ],
)
def test_post_parse_checks(argv: list[str], code: int, in_tmp: Path) -> None:
    e = err(argv)
    assert e.code == code
    assert isinstance(e, UsageError) and isinstance(e, DkmsError)
    assert e.message


@pytest.mark.parametrize(
    "argv",
    [
        ["remove", "foo/1", "--all"],
        ["uninstall", "foo/1", "--all"],
        ["unbuild", "foo/1", "--all"],
        ["mktarball", "foo/1", "--all"],
        ["mkdeb", "foo/1", "--all"],
        ["status", "--all"],
        ["kernel_prerm", "-k", "k1"],
        ["kernel_preinst", "--kernelver=k1/x86_64"],
        ["build", "foo/1", "-k", "k1", "-k", "k2", "-a", "a1", "-a", "a2"],
        ["build", "foo/1", "-k", "k1", "-k", "k2", "-a", "a"],
        ["build", "foo/1", "-a", "a"],
        ["mktarball", "foo/1", "--binaries-only"],
        ["autoinstall", "-k", "a", "-k", "b"],  # several -k: the action's own check, not the parser's
    ],
)
def test_post_parse_checks_pass(argv: list[str], in_tmp: Path) -> None:
    parse_args(argv)


def test_status_keeps_all_flag_and_raw_lists(in_tmp: Path) -> None:
    inv = parse_args(["status", "--all", "-m", "x"])
    assert inv.all
    assert inv.kernels == () and inv.arches == ()


def test_post_parse_error_carries_quiet_and_notices(in_tmp: Path) -> None:
    e = err(["--no-clean-kernel", "remove", "-q", "--all", "-k", "x", "--no-initrd"])
    assert e.code == 2
    assert e.quiet
    assert e.notices == (
        Notice("Deprecated feature: --no-clean-kernel", True),
        Notice("Deprecated feature: --no-initrd", False),
    )


# ------------------------------------------------------------------------------------------
# Notices and -q


def test_deprecated_flags_give_one_notice_each(in_tmp: Path) -> None:
    inv = parse_args(["status", "--no-initrd", "--no-clean-kernel", "--no-prepare-kernel", "--no-initrd"])
    assert [n.text for n in inv.notices] == [
        "Deprecated feature: --no-initrd",
        "Deprecated feature: --no-clean-kernel",
        "Deprecated feature: --no-prepare-kernel",
        "Deprecated feature: --no-initrd",
    ]
    assert all(n.before_quiet for n in inv.notices)


@pytest.mark.parametrize("flag", ["--no-initrd=1", "--no-initrdX"])
def test_deprecated_flags_match_exactly(flag: str, in_tmp: Path) -> None:
    assert err(["status", flag]).code == 2


@pytest.mark.parametrize("quiet", ["-q", "--quiet"])
def test_notices_before_and_after_quiet(quiet: str, in_tmp: Path) -> None:
    inv = parse_args(["status", "--no-initrd", "a/1", "b/2", quiet, "--no-prepare-kernel", "c/3"])
    assert inv.quiet
    assert [n.before_quiet for n in inv.notices] == [True, True, False, False]
    assert "b/2" in inv.notices[1].text
    assert "c/3" in inv.notices[3].text


def test_unknown_option_after_quiet_is_quiet(in_tmp: Path) -> None:
    assert err(["-q", "--bogus"]).quiet
    assert not err(["--bogus", "-q"]).quiet


def test_second_action_after_quiet_is_quiet(in_tmp: Path) -> None:
    e = err(["add", "--no-initrd", "-q", "build"])
    assert e.code == 4 and e.quiet
    assert e.notices == (Notice("Deprecated feature: --no-initrd", True),)


def test_no_action_error_carries_notices(in_tmp: Path) -> None:
    e = err(["--no-initrd"])
    assert e.code == 4
    assert e.notices == (Notice("Deprecated feature: --no-initrd", True),)


def test_json_on_status_is_silent(in_tmp: Path) -> None:
    inv = parse_args(["status", "--json"])
    assert inv.json and inv.notices == ()


@pytest.mark.parametrize("action", ["add", "build", "remove", "autoinstall"])
def test_json_on_other_actions_warns(action: str, in_tmp: Path) -> None:
    inv = parse_args([action, "foo/1", "--json"])
    assert inv.json
    assert len(inv.notices) == 1
    assert inv.notices[0].text.startswith("Warning: ") and "--json" in inv.notices[0].text
    assert inv.notices[0].before_quiet
    inv = parse_args([action, "foo/1", "--json", "-q"])
    assert inv.notices[0].before_quiet is False


def test_json_warning_comes_after_parse_notices(in_tmp: Path) -> None:
    inv = parse_args(["--json", "build", "--no-initrd"])
    assert ["--no-initrd" in n.text for n in inv.notices] == [True, False]


# ------------------------------------------------------------------------------------------
# --dkmsframework


def test_framework_files_in_order(tmp_path: Path) -> None:
    a = tmp_path / "a.conf"
    b = tmp_path / "b.conf"
    a.write_text("")
    b.write_text("")
    argv = ["status", "--dkmsframework", str(b), f"--dkmsframework={a}", "--dkmsframework", str(b)]
    assert prescan_framework_files(argv) == (b, a, b)
    assert parse_args(argv).framework_files == (b, a, b)


def test_prescan_skips_option_values(tmp_path: Path) -> None:
    argv = ["status", "-m", "--dkmsframework", "/nonexistent"]
    # the value of -m is refused (it starts with '-'), not taken as the option
    for parse in (prescan_framework_files, parse_args):
        with pytest.raises(CommandLineError) as info:
            parse(argv)  # type: ignore[operator]
        assert info.value.code == 2 and "-m needs a value" in info.value.message


def test_prescan_without_framework_files(in_tmp: Path) -> None:
    assert prescan_framework_files(["build", "foo/1", "-k", "6.1"]) == ()
    assert prescan_framework_files([]) == ()


@pytest.mark.parametrize("value", ["/nonexistent/fw.conf", ""])
def test_missing_framework_file_exits_2(value: str, in_tmp: Path) -> None:
    for func in (prescan_framework_files, parse_args):
        with pytest.raises(CommandLineError) as info:
            func(["status", "--dkmsframework", value])
        assert info.value.code == 2
        assert not info.value.show_usage


def test_missing_framework_file_at_end_of_line(in_tmp: Path) -> None:
    assert err(["status", "--dkmsframework"]).code == 2


def test_framework_directory_exits_2(tmp_path: Path) -> None:
    assert err(["status", "--dkmsframework", str(tmp_path)]).code == 2


def test_unreadable_framework_file_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "fw.conf"
    f.write_text("")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(f) else real_access(p, mode))
    e = err(["status", "--dkmsframework", str(f)])
    assert e.code == 2
    assert str(f) in e.message


def test_prescan_stops_at_version_and_help(in_tmp: Path) -> None:
    assert prescan_framework_files(["-V", "--dkmsframework", "/nonexistent"]) == ()
    assert prescan_framework_files(["--help", "--dkmsframework", "/nonexistent"]) == ()


def test_prescan_reports_loop_errors_in_token_order(in_tmp: Path) -> None:
    with pytest.raises(CommandLineError) as info:
        prescan_framework_files(["add", "build", "--dkmsframework", "/nonexistent"])
    assert info.value.code == 4
    with pytest.raises(CommandLineError) as info:
        prescan_framework_files(["--dkmsframework", "/nonexistent", "add", "build"])
    assert info.value.code == 2


def test_prescan_does_not_run_post_parse_checks(tmp_path: Path) -> None:
    f = tmp_path / "fw.conf"
    f.write_text("")
    assert prescan_framework_files(["--all", "-k", "x", "--dkmsframework", str(f)]) == (f,)


# ------------------------------------------------------------------------------------------
# resolve_targets and pairing


def resolve(argv: list[str], **kwargs: Any) -> list[tuple[str, str]]:
    kwargs.setdefault("default_kernel", lambda: "6.1.0-running")
    kwargs.setdefault("default_arch", lambda kernel: "x86_64")
    return resolve_targets(parse_args(argv), **kwargs)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["build", "foo/1"], [("6.1.0-running", "x86_64")]),
        (["build", "foo/1", "-k", "k1"], [("k1", "x86_64")]),
        (["build", "foo/1", "-k", "k1", "-k", "k2"], [("k1", "x86_64"), ("k2", "x86_64")]),
        (["build", "foo/1", "-a", "i386"], [("6.1.0-running", "i386")]),
        (["build", "foo/1", "-k", "k1", "-k", "k2", "-a", "i386"], [("k1", "i386"), ("k2", "i386")]),
        (["build", "foo/1", "-k", "k1", "-k", "k2/aarch64"], [("k1", "aarch64"), ("k2", "aarch64")]),
        (
            [
                "build",
                "foo/1",
                "-k",
                "k1",
                "-k",
                "k2",
                "-a",
                "i386",
                "-k",
                "k3",
                "-a",
                "i686",
                "-a",
                "x86_64",
            ],
            [("k1", "i386"), ("k2", "i686"), ("k3", "x86_64")],
        ),
        (["build", "foo/1", "-k", "k1/a1", "-k", "k2/a2"], [("k1", "a1"), ("k2", "a2")]),
        (["remove", "foo/1"], [("6.1.0-running", "x86_64")]),
        (["add", "foo/1"], [("6.1.0-running", "x86_64")]),
    ],
)
def test_resolve_targets(argv: list[str], expected: list[tuple[str, str]], in_tmp: Path) -> None:
    assert resolve(argv) == expected


def test_default_arch_gets_first_kernel(in_tmp: Path) -> None:
    seen: list[str] = []

    def default_arch(kernel: str) -> str:
        seen.append(kernel)
        return "ppc64le"

    assert resolve(["build", "foo/1", "-k", "k1", "-k", "k2"], default_arch=default_arch) == [
        ("k1", "ppc64le"),
        ("k2", "ppc64le"),
    ]
    assert seen == ["k1"]


def test_default_kernel_not_called_with_explicit_kernel(in_tmp: Path) -> None:
    def boom() -> str:
        raise AssertionError("default_kernel must not be called")

    assert resolve(["build", "foo/1", "-k", "k1/a"], default_kernel=boom) == [("k1", "a")]


def test_default_arch_not_called_with_explicit_arch(in_tmp: Path) -> None:
    def boom(kernel: str) -> str:
        raise AssertionError("default_arch must not be called")

    assert resolve(["build", "foo/1", "-a", "a"], default_arch=boom) == [("6.1.0-running", "a")]


def test_all_uses_built_targets_in_given_order(in_tmp: Path) -> None:
    built = [("k2", "x86_64"), ("k1", "x86_64"), ("k1", "i386")]
    assert resolve(["remove", "foo/1", "--all"], built_targets=lambda: list(built)) == built


def test_all_with_nothing_built(in_tmp: Path) -> None:
    def boom() -> str:
        raise AssertionError("no default kernel with --all")

    assert resolve(["remove", "foo/1", "--all"], built_targets=list, default_kernel=boom) == []


def test_all_without_built_targets_callable(in_tmp: Path) -> None:
    with pytest.raises(ValueError, match="built_targets"):
        resolve(["remove", "foo/1", "--all"])


def test_resolve_targets_refuses_status(in_tmp: Path) -> None:
    with pytest.raises(ValueError, match="status"):
        resolve(["status"])


@pytest.mark.parametrize(
    "argv",
    [
        ["build", "foo/1", "-k", ""],
        ["build", "foo/1", "-k", "k1", "-k", ""],
        ["build", "foo/1", "-k", "/x86_64"],
        ["build", "foo/1", "-k", "k1/"],
        ["build", "foo/1", "-a", ""],
        ["build", "foo/1", "--kernelver="],
        ["build", "foo/1", "-k", "k1", "-k", "k2", "-a", "a", "-a", ""],
    ],
)
def test_empty_entries_exit_16(argv: list[str], in_tmp: Path) -> None:
    with pytest.raises(UsageError) as info:
        resolve(argv)
    assert info.value.code == 16


def test_empty_default_kernel_exits_16(in_tmp: Path) -> None:
    with pytest.raises(UsageError) as info:
        resolve(["build", "foo/1"], default_kernel=lambda: "")
    assert info.value.code == 16


def test_undeterminable_arch_exits_12(in_tmp: Path) -> None:
    with pytest.raises(DkmsError) as info:
        resolve(["build", "foo/1", "-k", "k1"], default_arch=lambda kernel: "")
    assert info.value.code == 12


def test_resolve_rechecks_arch_count() -> None:
    inv = Invocation(action="build", kernels=("a",), arches=("x", "y"))
    with pytest.raises(UsageError) as info:
        resolve_targets(inv, default_kernel=lambda: "k", default_arch=lambda kernel: "a")
    assert info.value.code == 1


@pytest.mark.parametrize(
    ("kernels", "arches", "expected"),
    [
        ((), (), []),
        (("k1",), (), [("k1", None)]),
        (("k1", "k2"), (), [("k1", None), ("k2", None)]),
        (("k1", "k2"), ("a",), [("k1", "a"), ("k2", "a")]),
        (("k1", "k2"), ("a", "b"), [("k1", "a"), ("k2", "b")]),
        ((), ("a",), []),
    ],
)
def test_pair_kernels_arches(
    kernels: tuple[str, ...], arches: tuple[str, ...], expected: list[tuple[str, Optional[str]]]
) -> None:
    assert pair_kernels_arches(kernels, arches) == expected


@pytest.mark.parametrize(
    ("kernels", "arches"), [((), ("a", "b")), (("k",), ("a", "b")), (("k",) * 3, ("a", "b"))]
)
def test_pair_kernels_arches_mismatch(kernels: tuple[str, ...], arches: tuple[str, ...]) -> None:
    with pytest.raises(UsageError) as info:
        pair_kernels_arches(kernels, arches)
    assert info.value.code == 1


# ------------------------------------------------------------------------------------------
# Usage text


def test_usage_mentions_every_action_and_option() -> None:
    text = usage("/usr/sbin/dkms")
    assert text.startswith("Usage: /usr/sbin/dkms ")
    for action in ACTIONS:
        assert action in text
    for opt in OPTIONS:
        if opt.dest != "deprecated":
            assert (opt.long or opt.short or "") in text
    assert "--no-initrd" not in text
    assert all(len(line) <= 110 for line in text.splitlines())


@pytest.mark.parametrize("action", ["build", "install", "autoinstall", "sign"])
def test_all_kernels_is_accepted_by_the_building_actions(action: str) -> None:
    assert parse_args([action, "m/1", "--all-kernels"]).all_kernels


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["build", "m/1", "--all-kernels", "-k", "6.1.0-1-amd64"], 2),
        (["remove", "m/1", "--all-kernels", "--all"], 2),
        (["remove", "m/1", "--all-kernels"], 5),
        (["status", "--all-kernels"], 5),
    ],
)
def test_all_kernels_conflicts(argv: list[str], code: int) -> None:
    with pytest.raises(CommandLineError) as info:
        parse_args(argv)
    assert info.value.code == code


def test_help_lists_every_action_and_option_with_what_it_does() -> None:
    text = help_text()
    for action in ACTIONS:
        assert re.search(rf"^  {action} +\S", text, re.M), action
    for opt in OPTIONS:
        if opt.dest != "deprecated":
            assert opt.help, opt
            names = ", ".join(n for n in (opt.short, opt.long) if n)
            assert re.search(rf"^  {re.escape(names)}( |$)", text, re.M), names
    assert "--no-initrd" not in text
    assert all(len(line) <= 100 for line in text.splitlines())
    flat = " ".join(text.split())
    assert (
        "-j number make jobs for all the builds of this command together (a whole number, 0: no limit;"
        in flat
    )
    assert "--json print one JSON document instead of lines (also under -q" in flat
    assert (
        "--all-kernels every kernel under the install tree whose headers are installed, instead of -k" in flat
    )


@pytest.mark.parametrize("action", ACTIONS)
def test_help_of_one_action_lists_its_options(action: str) -> None:
    text = help_text(action)
    assert text.startswith(f"Usage: dkms {action} [options]")
    listed = {line.split()[0].rstrip(",") for line in text.splitlines() if line.startswith("  -")}
    expected = {(o.short or o.long) for o in options_of(action)}
    assert listed == expected
    assert "--json" in listed if action == "status" else "--json" not in listed
    assert ("-j" in listed) is (action in ("build", "install", "autoinstall", "kernel_postinst", "match"))
    assert ("--all-kernels" in listed) is (action in ALL_KERNELS_ACTIONS)
    assert ("--templatekernel" in listed) is (action == "match")


def test_help_is_shown_for_the_action_before_it(in_tmp: Path) -> None:
    assert parse_args(["build", "--help"]).action == "build"
    assert parse_args(["--help", "build"]).action is None  # later tokens are not examined
