"""Every dkms.conf of Debian's ``*-dkms`` packages × every installed kernel: AUTO == BASH.

Packages are downloaded at test time (tests/support/debian_packages.py). Without apt or network
the test is skipped, or fails when ``CI`` is set.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from pydkms.confeval import (
    DKMS_CONF_WHITELIST,
    EvalMode,
    EvalRequest,
    OutsideSubsetError,
    evaluate,
    evaluate_many,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support import debian_packages

pytestmark = pytest.mark.integration


def _kernels() -> List[str]:
    base = Path("/lib/modules")
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "build").exists())


@pytest.fixture(scope="module")
def sources() -> List[debian_packages.DkmsSource]:
    try:
        return debian_packages.dkms_sources()
    except debian_packages.Unavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"cannot get Debian's *-dkms packages: {exc}")
        pytest.skip(f"cannot get Debian's *-dkms packages: {exc}")


def _context(kernel: str, module: str, version: str) -> Dict[str, str]:
    ksrc = f"/lib/modules/{kernel}/build"
    config = f"{ksrc}/include/config/auto.conf"
    if not os.path.exists(config):
        config = f"{ksrc}/.config"
    return {
        "kernelver": kernel,
        "arch": "x86_64",
        "kernel_source_dir": ksrc,
        "kernel_config": config,
        "dkms_tree": "/var/lib/dkms",
        "source_tree": "/usr/src",
        "install_tree": "/lib/modules",
        "tmp_location": "/tmp",
        "module": module,
        "module_version": version,
        "running_distribution": "debian",
    }


def _plain(values: object) -> Dict[str, Dict[int, str]]:
    assert isinstance(values, dict) or hasattr(values, "items")
    return {k: dict(v) for k, v in values.items()}  # type: ignore[attr-defined]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is needed")
def test_debian_confs_auto_equals_bash(
    sources: List[debian_packages.DkmsSource],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kernels = _kernels()
    if not kernels:
        pytest.skip("no kernel headers installed (/lib/modules/*/build)")
    environ = dict(os.environ)
    accepted: List[str] = []
    rejected: List[str] = []
    evaluations = 0
    for src in sources:
        module, version = debian_packages.split_module_version(src.source_dir.name)
        contexts = [_context(k, module, version) for k in kernels]
        # the source directory as cwd: pathname expansion in the echo step sees real files
        monkeypatch.chdir(src.source_dir)
        files = (src.conf,)
        auto = evaluate_many(
            EvalRequest(files, DKMS_CONF_WHITELIST, {}, environ, mode=EvalMode.AUTO), contexts
        )
        bash = evaluate_many(
            EvalRequest(files, DKMS_CONF_WHITELIST, {}, environ, mode=EvalMode.BASH), contexts
        )
        for k, a, b in zip(kernels, auto, bash):
            assert _plain(a.values) == _plain(b.values), f"{src.conf} ({k}): AUTO differs from BASH"
            evaluations += 1
        try:
            data = evaluate_many(
                EvalRequest(files, DKMS_CONF_WHITELIST, {}, environ, mode=EvalMode.DATA), contexts
            )
        except OutsideSubsetError as exc:
            rejected.append(f"{src.package}: {exc.construct.line}: {exc.construct.text}")
            assert all(a.evaluator == "bash" and a.outside is not None for a in auto)
            continue
        accepted.append(src.package)
        for k, d, b in zip(kernels, data, bash):
            assert d.evaluator == "data"
            assert _plain(d.values) == _plain(b.values), f"{src.conf} ({k}): DATA differs from BASH"
        assert all(a.evaluator == "data" for a in auto)
        # and the single-context entry point agrees
        one = evaluate(EvalRequest(files, DKMS_CONF_WHITELIST, contexts[0], environ, mode=EvalMode.AUTO))
        assert _plain(one.values) == _plain(bash[0].values)
    with capsys.disabled():
        print(
            f"\n[confeval] {len(sources)} Debian dkms.conf files x {len(kernels)} kernels "
            f"({evaluations} evaluations): data evaluator accepts {len(accepted)}, "
            f"bash fallback for {len(rejected)}"
        )
        for line in rejected:
            print(f"[confeval]   bash: {line}")
    assert len(sources) >= 20
    assert len(accepted) >= len(sources) // 2
