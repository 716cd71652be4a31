"""framework.conf: files, precedence, lazy re-reads, DKMS_DIRECTIVE (framework-conf.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pydkms import framework
from pydkms.confeval import EvalMode
from pydkms.errors import DkmsError


@pytest.fixture
def etc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "etc"
    (d / "framework.conf.d").mkdir(parents=True)
    monkeypatch.setenv("PYDKMS_SYSCONFDIR", str(d))
    for var in ("parallel_jobs", "post_transaction", "mok_signing_key", "TMPDIR"):
        monkeypatch.delenv(var, raising=False)
    return d


def test_defaults(etc: Path) -> None:
    s = framework.load()
    assert s.dkms_tree == Path("/var/lib/dkms")
    assert s.source_tree == Path("/usr/src")
    assert s.install_tree == Path("/lib/modules")
    assert s.tmp_location == Path("/tmp")
    assert s.compress_xz_opts == "--check=crc32 --lzma2=dict=1MiB"
    assert s.compress_zstd_opts == "-q --rm -T0"
    assert s.conf_evaluation is EvalMode.AUTO
    assert s.parallel_jobs.isdigit()
    assert s.files == ()


def test_precedence_env_file_dropins_extra_cli(
    etc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("parallel_jobs", "2")
    monkeypatch.setenv("verbose", "yes")  # not honoured from the environment
    assert framework.load().parallel_jobs == "2"
    assert framework.load().verbose is False
    (etc / "framework.conf").write_text(
        'parallel_jobs="3"\ndkms_tree=/srv/dkms\nsource_tree="$dkms_tree/src"\n'
    )
    s = framework.load()
    assert s.parallel_jobs == "3"
    assert s.dkms_tree == Path("/srv/dkms")
    assert s.source_tree == Path("/srv/dkms/src")  # later assignments see earlier ones
    (etc / "framework.conf.d" / "20-b.conf").write_text("parallel_jobs=5\n")
    (etc / "framework.conf.d" / "10-a.conf").write_text("parallel_jobs=4\nverbose=1\n")
    (etc / "framework.conf.d" / "99-ignored.txt").write_text("parallel_jobs=9\n")
    s = framework.load()
    assert s.parallel_jobs == "5" and s.verbose is True  # byte order of file names; .conf only
    extra = tmp_path / "extra.conf"
    extra.write_text("parallel_jobs=6\n")
    assert framework.load([extra]).parallel_jobs == "6"
    s = framework.with_cli(framework.load([extra]), jobs="7", dkms_tree=Path("/x"))
    assert s.parallel_jobs == "7" and s.dkms_tree == Path("/x")
    with pytest.raises(DkmsError) as exc:
        framework.load([tmp_path / "missing.conf"])
    assert exc.value.code == 2


def test_only_whitelisted_keys_are_taken(etc: Path) -> None:
    (etc / "framework.conf").write_text("PATH=/evil\nmodule=evil\nverbose=\nsymlink_modules=no\n")
    s = framework.load()
    assert s.verbose is False
    assert s.symlink_modules is True  # any non-empty value enables (upstream semantics)
    assert "PATH" not in s.raw and "module" not in s.raw


def test_lazy_keys_see_the_kernel(etc: Path) -> None:
    (etc / "framework.conf").write_text(
        "mok_signing_key='/etc/keys/$kernelver.key'\npost_transaction='update-initramfs -u -k $kernelver'\n"
    )
    s = framework.load()
    assert s.raw["mok_signing_key"] == "/etc/keys/.key"  # start-up read: kernelver is empty
    lazy = s.reread(["mok_signing_key", "post_transaction"], "6.1.0-1-amd64", "x86_64")
    assert lazy == {
        "mok_signing_key": "/etc/keys/6.1.0-1-amd64.key",
        "post_transaction": "update-initramfs -u -k 6.1.0-1-amd64",
    }


def test_conf_evaluation_key(etc: Path) -> None:
    (etc / "framework.conf").write_text('conf_evaluation="data"\n')
    assert framework.load().conf_evaluation is EvalMode.DATA
    (etc / "framework.conf.d" / "x.conf").write_text("conf_evaluation=bash\n")
    assert framework.load().conf_evaluation is EvalMode.BASH
    (etc / "framework.conf.d" / "x.conf").write_text("conf_evaluation=sometimes\n")
    assert framework.load().conf_evaluation is EvalMode.AUTO


def test_shell_framework_file_in_data_mode_is_skipped(etc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (etc / "framework.conf").write_text('conf_evaluation="data"\nparallel_jobs=3\n')
    (etc / "framework.conf.d" / "x.conf").write_text("parallel_jobs=$(nproc)\n")
    assert framework.load().parallel_jobs == "3"
    assert "x.conf" in capsys.readouterr().err


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_framework_file_that_bash_cannot_parse_is_skipped_whole(
    etc: Path, capsys: pytest.CaptureFixture[str], newline: str
) -> None:
    conf = etc / "framework.conf"
    # bash would run line 1 before it reaches the error; the spec skips the whole file
    conf.write_bytes(newline.join(["parallel_jobs=5", "post_transaction=$(echo hi)", "if then", ""]).encode())
    (etc / "framework.conf.d" / "a.conf").write_text("verbose=1\nmodprobe_on_install=$(echo y)\n")
    s = framework.load()
    err = capsys.readouterr().err
    assert f"Warning: {conf}: skipped, bash cannot parse it: line 3: syntax error" in err
    assert s.parallel_jobs != "5" and s.post_transaction == ""
    assert s.verbose is True and s.modprobe_on_install is True  # the next file still counts
    assert str(etc / "framework.conf.d" / "a.conf") not in err
    # the lazy re-reads (signing keys, post_transaction) use only the files taken at start-up
    assert s.files == (etc / "framework.conf.d" / "a.conf",)
    assert s.reread(["post_transaction"], "6.1.0-1-amd64", "x86_64") == {"post_transaction": ""}
    assert capsys.readouterr().err == ""


def test_framework_file_whose_last_command_fails_is_not_skipped(
    etc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (etc / "framework.conf").write_text('parallel_jobs=$(nproc)\n[ -n "" ] && verbose=1\n')
    s = framework.load()
    assert capsys.readouterr().err == ""
    assert s.parallel_jobs.isdigit() and s.verbose is False


def test_directive_injections(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"DKMS_DIRECTIVE_A": "MAKE=make -j1=x", "DKMS_DIRECTIVE_B": "PATH=/evil", "OTHER": "MAKE=no"}
    assert framework.directive_injections(env, ("MAKE",)) == (("MAKE", "make -j1"),)
    assert "PATH" in capsys.readouterr().err  # not whitelisted: ignored with a warning [fix D-16]


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        (
            "framework.conf",
            'dkms_tree=/srv/dkms\nverbose="x\n',
            "bash cannot parse it: line 2: unexpected EOF",
        ),
        ("framework.conf.d/a.conf", "if then\n", "bash cannot parse it: line 1: syntax error"),
    ],
)
def test_strict_load_refuses_a_file_it_would_skip(
    etc: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, problem: str
) -> None:
    (etc / name).write_text(text)
    with pytest.raises(framework.FrameworkError) as info:
        framework.load(strict=True)
    assert info.value.code == 1 and info.value.path == etc / name
    assert str(info.value).startswith(f"{etc / name}: {problem}")
    assert capsys.readouterr().err == ""  # no warning as well: the error says it
    framework.load()  # not strict: skipped with the warning
    assert capsys.readouterr().err.startswith(f"Warning: {etc / name}: skipped, {problem}")


def test_strict_load_refuses_a_shell_file_in_data_mode(etc: Path) -> None:
    (etc / "framework.conf").write_text('conf_evaluation="data"\nparallel_jobs=$(nproc)\n')
    with pytest.raises(framework.FrameworkError) as info:
        framework.load(strict=True)
    assert info.value.problem == "it is not plain settings (command substitution `$(...)`, line 2)."


@pytest.mark.parametrize("value", ["-5", "abc", "2.5", " 3"])
def test_parallel_jobs_that_is_no_count_falls_back_to_the_default(
    etc: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    default = framework.load().parallel_jobs
    (etc / "framework.conf").write_text(f"parallel_jobs='{value}'\n")
    assert framework.load().parallel_jobs == default
    assert capsys.readouterr().err == ""  # status: not its business
    assert framework.load(strict=True).parallel_jobs == default
    assert capsys.readouterr().err == (
        f"Warning: {etc / 'framework.conf'}: parallel_jobs='{value}' is not a number of make jobs: "
        f"use a whole number (0 for no limit). Using {default}.\n"
    )
    (etc / "framework.conf").unlink()
    monkeypatch.setenv("parallel_jobs", value)
    assert framework.load(strict=True).parallel_jobs == default
    assert capsys.readouterr().err.startswith(
        f"Warning: the environment variable parallel_jobs='{value}' is not a number of make jobs"
    )
    monkeypatch.setenv("parallel_jobs", "0")
    assert framework.load(strict=True).parallel_jobs == "0"  # 0: no limit (make -j)
