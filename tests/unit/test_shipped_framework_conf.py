"""dist/etc/framework.conf, installed as /etc/dkms/framework.conf (framework-conf.md §10).

Every key is present as a commented-out line at its default, so neither the file as shipped nor
any one of its lines uncommented changes what dkms does.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Dict, List

import pytest

from pydkms import framework
from pydkms.confeval.protocol import FRAMEWORK_KEYS

SHIPPED = Path(__file__).resolve().parents[2] / "dist" / "etc" / "framework.conf"
SETTING = re.compile(r'^# ([a-z_]+)="([^"]*)"$')
#: keys read lazily (signing) and by the shell hooks: not fields of Settings
LAZY_DEFAULTS = {"sign_file": "", "mok_signing_key": "", "mok_certificate": "", "try_sign_modules": "true"}
COMPARED = [
    f.name for f in dataclasses.fields(framework.Settings) if f.name not in ("etc_dir", "files", "raw")
]


def setting_lines() -> Dict[str, str]:
    """key -> the commented-out line that sets it."""
    lines: Dict[str, str] = {}
    for line in SHIPPED.read_text().splitlines():
        m = SETTING.match(line)
        if m:
            assert m.group(1) not in lines, f"{m.group(1)} is set twice"
            lines[m.group(1)] = line
    return lines


def load_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> framework.Settings:
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "framework.conf").write_text(text)
    monkeypatch.setenv("PYDKMS_SYSCONFDIR", str(etc))
    return framework.load(environ={})


def effective(settings: framework.Settings) -> List[object]:
    return [getattr(settings, name) for name in COMPARED]


def test_every_key_is_there_and_only_comments() -> None:
    assert sorted(setting_lines()) == sorted(FRAMEWORK_KEYS)
    for line in SHIPPED.read_text().splitlines():
        assert line == "" or line.startswith("#"), line


def test_the_file_as_shipped_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYDKMS_SYSCONFDIR", str(tmp_path / "none"))
    default = framework.load(environ={})
    assert default.files == ()
    shipped = load_with(tmp_path, monkeypatch, SHIPPED.read_text())
    assert len(shipped.files) == 1
    assert effective(shipped) == effective(default)


@pytest.mark.parametrize("key", sorted(FRAMEWORK_KEYS))
def test_each_line_uncommented_shows_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    monkeypatch.setenv("PYDKMS_SYSCONFDIR", str(tmp_path / "none"))
    default = framework.load(environ={})
    line = setting_lines()[key]
    settings = load_with(tmp_path, monkeypatch, line[2:] + "\n")
    assert effective(settings) == effective(default), line
    if key in LAZY_DEFAULTS:
        value = settings.reread([key], "6.1.0-1-amd64", "x86_64")[key]
        assert (value or LAZY_DEFAULTS[key]) == LAZY_DEFAULTS[key], line
