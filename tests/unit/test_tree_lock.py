"""The tree's state predicates and enumeration, the atomic file helpers and the tree lock."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from pydkms.errors import DkmsError
from pydkms.installer import atomic_copy, atomic_symlink
from pydkms.lock import ENV_LOCKED, TreeLock
from pydkms.tree import Target, Tree


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    t = Tree(tmp_path / "dkms", tmp_path / "src", tmp_path / "modules")
    for d in (t.dkms_tree, t.source_tree, t.install_tree):
        d.mkdir()
    return t


def add(t: Tree, m: str, v: str) -> None:
    (t.source_dir(m, v)).mkdir()
    t.build_dir(m, v).mkdir(parents=True)
    t.source_link(m, v).symlink_to(t.source_dir(m, v))


def build(t: Tree, m: str, v: str, k: str, a: str = "x86_64") -> None:
    t.built_module_dir(m, v, k, a).mkdir(parents=True)


def test_states(tree: Tree) -> None:
    assert not tree.is_added("m", "1")
    add(tree, "m", "1")
    assert tree.is_added("m", "1") and not tree.is_broken("m", "1")
    build(tree, "m", "1", "6.1.0-1-amd64")
    assert tree.is_built("m", "1", "6.1.0-1-amd64", "x86_64")
    assert not tree.is_installed("m", "1", "6.1.0-1-amd64", "x86_64")
    tree.kernel_link("m", "6.1.0-1-amd64", "x86_64").symlink_to("1/6.1.0-1-amd64/x86_64")
    assert tree.is_installed("m", "1", "6.1.0-1-amd64", "x86_64")
    assert tree.installed_version("m", "6.1.0-1-amd64", "x86_64") == "1"
    # a link that resolves elsewhere (e.g. written as an absolute path) still counts when it resolves right
    link = tree.kernel_link("m", "6.1.0-1-amd64", "x86_64")
    link.unlink()
    link.symlink_to(tree.target_dir("m", "1", "6.1.0-1-amd64", "x86_64"))
    assert tree.is_installed("m", "1", "6.1.0-1-amd64", "x86_64")
    # installed implies built
    os.rename(
        tree.built_module_dir("m", "1", "6.1.0-1-amd64", "x86_64"),
        tree.target_dir("m", "1", "6.1.0-1-amd64", "x86_64") / "gone",
    )
    assert not tree.is_installed("m", "1", "6.1.0-1-amd64", "x86_64")


def test_broken_and_invisible(tree: Tree) -> None:
    add(tree, "m", "1")
    tree.source_link("m", "1").unlink()
    assert tree.is_broken("m", "1") and not tree.is_added("m", "1")  # link gone, source still there
    tree.source_dir("m", "1").rmdir()
    assert not tree.is_broken("m", "1") and not tree.is_added("m", "1")  # invisible
    tree.source_link("m", "1").symlink_to(tree.source_tree / "missing")
    assert tree.is_broken("m", "1")  # dangling link


def test_enumeration_order_and_reserved_names(tree: Tree) -> None:
    for m, v in (("b", "1"), ("a", "2"), ("a", "10"), ("B", "1")):
        add(tree, m, v)
    (tree.module_dir("a") / "original_module").mkdir()
    tree.kernel_link("a", "K", "x86_64").symlink_to("2/K/x86_64")
    (tree.dkms_tree / "post_transaction.log").write_text("")
    assert list(tree.module_versions()) == [("B", "1"), ("a", "10"), ("a", "2"), ("b", "1")]
    assert list(tree.module_versions("a", "1*")) == [("a", "10")]
    for k in ("6.1.0-9-amd64", "6.1.0-10-amd64", "custom", "tarball", ".tmp_x86_64_abc"):
        build(tree, "a", "2", k)
    (tree.kernel_dir("a", "2", "6.1.0-9-amd64") / ".tmp_x86_64_zz").mkdir()
    (tree.kernel_dir("a", "2", "6.1.0-9-amd64") / "i686").mkdir()  # no module/: not built
    assert [t.kernel for t in tree.builds("a", "2")] == ["6.1.0-10-amd64", "6.1.0-9-amd64", "custom"]
    assert tree.builds("a", "2", "6.1.0-9*") == [Target("6.1.0-9-amd64", "x86_64")]


def test_all_targets_order(tree: Tree) -> None:
    add(tree, "m", "1")
    for k in ("6.1.0-10-amd64", "6.1.0-9-amd64", "6.1.0-2-amd64"):
        build(tree, "m", "1", k)
    tree.kernel_link("m", "6.1.0-2-amd64", "x86_64").symlink_to("1/6.1.0-2-amd64/x86_64")
    assert [t.kernel for t in tree.all_targets("m", "1")] == [
        "6.1.0-9-amd64",
        "6.1.0-10-amd64",
        "6.1.0-2-amd64",
    ]


def test_atomic_copy_and_symlink(tmp_path: Path) -> None:
    src = tmp_path / "src.ko"
    src.write_bytes(b"new")
    os.chmod(src, 0o600)
    dest = tmp_path / "dest.ko"
    dest.write_bytes(b"old")
    atomic_copy(src, dest)
    assert dest.read_bytes() == b"new" and (dest.stat().st_mode & 0o777) == 0o600
    with pytest.raises(FileNotFoundError):
        atomic_copy(tmp_path / "missing", dest)
    assert dest.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    link = tmp_path / "kernel-K-A"
    atomic_symlink("1/K/A", link)
    atomic_symlink("2/K/A", link)
    assert os.readlink(link) == "2/K/A"


@contextmanager
def lock_held_elsewhere(lock_file: Path) -> Iterator[None]:
    """Another process (pid written as 4242) holds the tree lock for the duration."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl,os,sys,time; fd=os.open(sys.argv[1], os.O_RDWR|os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX);"
         "os.write(fd, b'4242\\n'); print('locked', flush=True); time.sleep(30)",
         str(lock_file)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_lock_excludes_and_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_LOCKED, raising=False)
    tree_dir = tmp_path / "dkms"
    tree_dir.mkdir()
    with lock_held_elsewhere(tree_dir / ".lock"):
        messages: list = []
        lock = TreeLock(tree_dir, tree_dir / ".lock")
        start = time.monotonic()
        with pytest.raises(DkmsError) as exc:
            lock.acquire(messages.append, timeout=0.5)
        assert time.monotonic() - start >= 0.5
        assert exc.value.code == 1 and "4242" in exc.value.message
        assert messages and "Waiting" in messages[0] and "4242" in messages[0]
    lock = TreeLock(tree_dir, tree_dir / ".lock")
    assert lock.acquire(lambda _m: None, timeout=0.5)
    assert os.environ[ENV_LOCKED] == os.path.realpath(tree_dir)
    # a nested dkms (in this process or a child of it) sees the variable and does not lock again
    nested = TreeLock(tree_dir, tree_dir / ".lock")
    assert nested.acquire(lambda _m: None, timeout=0.1)
    lock.release()
    assert ENV_LOCKED not in os.environ
    fd = os.open(tree_dir / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released for real
    os.close(fd)


def test_inherited_lock_variable_is_not_a_free_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a process started by a locked dkms that outlives it (or any process with the variable set)
    # must take the lock for real when no ancestor holds it
    tree_dir = tmp_path / "dkms"
    tree_dir.mkdir()
    monkeypatch.setenv(ENV_LOCKED, os.path.realpath(tree_dir))
    with lock_held_elsewhere(tree_dir / ".lock"), pytest.raises(DkmsError):
        TreeLock(tree_dir, tree_dir / ".lock").acquire(lambda _m: None, timeout=0.3)


def test_bad_lock_timeout_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_LOCKED, raising=False)
    monkeypatch.setenv("PYDKMS_LOCK_TIMEOUT", "soon")
    messages: list = []
    lock = TreeLock(tmp_path, tmp_path / ".lock")
    assert lock.acquire(messages.append)
    lock.release()
    assert messages == [
        "Warning: ignoring PYDKMS_LOCK_TIMEOUT=soon: not a number of seconds; waiting as long as it takes."
    ]
