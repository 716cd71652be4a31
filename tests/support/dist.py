"""Run the distribution integration files of ``dist/`` at their real paths, in a private system.

:class:`DistSystem` wraps :func:`tests.support.upstream.run_isolated`: every call runs in a fresh
private mount namespace where

* ``make install-integration FAMILY=<family>`` (the documented install command) has put the files
  in place: ``/usr/lib/dkms``, ``/etc/kernel/*.d``, ``/usr/lib/kernel/install.d``, ``/usr/sbin/dkms``
  (a wrapper running this interpreter's ``-m pydkms``) … — ``/usr/lib``, ``/usr/sbin`` and
  ``/etc/kernel`` are overlays whose writes vanish with the namespace;
* ``/lib/modules``, ``/var/lib/dkms``, ``/etc/dkms``, ``/boot`` and ``/usr/src`` (an overlay of the
  host's, so kernel headers stay visible) are directories under :attr:`DistSystem.root`, kept across
  calls. ``/lib/modules`` holds only the kernels given to :meth:`DistSystem.add_kernel`, so a test
  decides which kernels "are installed", and when;
* ``PATH`` starts with :attr:`DistSystem.fake_bin`, where :meth:`DistSystem.fake_dkms`,
  :meth:`DistSystem.fake_uname` and :meth:`DistSystem.fake_depmod` put stand-ins that record their
  calls in :attr:`DistSystem.calls_file` (``dkms ARGS`` / ``depmod ARGS`` lines). Without a fake,
  ``dkms`` is ``/usr/sbin/dkms``, i.e. this checkout's pydkms.

Needs root and ``unshare`` (see :func:`~tests.support.upstream.isolation_unavailable`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tests.conftest import REPO, SRC, Result
from tests.support.upstream import run_isolated

#: A ``dkms`` stand-in for testing the scripts' logic without building anything. It appends
#: ``dkms ARGS`` to ``$FAKE_STATE/calls`` and exits with the number in the first existing file of
#: ``rc-ACTION-M-K``, ``rc-ACTION-K``, ``rc-ACTION-M``, ``rc-ACTION`` in ``$FAKE_STATE`` (else 0).
#: State: ``add``/``ldtarball`` register ``/var/lib/dkms/M/V/source`` (a link to ``/usr/src/M-V``;
#: a directory for ldtarball when ``$FAKE_STATE/binaries-only`` exists), ``build``/``install``
#: write the ``dkms status`` line of (M, K) to ``status-M-K``, which ``status -m M -k K`` prints;
#: ``remove`` forgets them. ``install`` fails with 13 while a module named in ``deps-M`` has no
#: installed status line for K (BUILD_DEPENDS).
FAKE_DKMS = r"""#!/bin/sh
state=$FAKE_STATE
echo "dkms $*" >>"$state/calls"
action=$1
shift
m= v= k= archive=
while [ "$#" -gt 0 ]; do
    case $1 in
        -m) m=$2; shift ;;
        -v) v=$2; shift ;;
        -k | --kernelver) k=$2; shift ;;
        --archive) archive=$2; shift ;;
    esac
    shift
done
rc=0
for f in "$state/rc-$action-$m-$k" "$state/rc-$action-$k" "$state/rc-$action-$m" "$state/rc-$action"; do
    if [ -f "$f" ]; then rc=$(cat "$f"); break; fi
done
case $action in
    status)
        cat "$state/status-$m-$k" 2>/dev/null
        exit 0
        ;;
    ldtarball)
        base=${archive##*/}
        base=${base%.dkms.tar.gz}
        m=${base%-*}
        v=${base##*-}
        if [ "$rc" -eq 0 ]; then
            mkdir -p "/var/lib/dkms/$m/$v"
            if [ -f "$state/binaries-only" ]; then
                mkdir -p "/var/lib/dkms/$m/$v/source"
                echo 'AUTOINSTALL="yes"' >"/var/lib/dkms/$m/$v/source/dkms.conf"
            else
                ln -sfn "/usr/src/$m-$v" "/var/lib/dkms/$m/$v/source"
            fi
        fi
        ;;
    add)
        if [ "$rc" -eq 0 ]; then
            mkdir -p "/var/lib/dkms/$m/$v"
            ln -sfn "/usr/src/$m-$v" "/var/lib/dkms/$m/$v/source"
        fi
        ;;
    remove)
        if [ "$rc" -eq 0 ] && [ -n "$k" ]; then
            rm -f "$state/status-$m-$k"
        elif [ "$rc" -eq 0 ]; then
            rm -rf "/var/lib/dkms/$m/$v"
            rm -f "$state/status-$m-"*
        fi
        ;;
    build)
        if [ "$rc" -eq 0 ]; then echo "$m/$v, $k, x86_64: built" >"$state/status-$m-$k"; fi
        ;;
    install)
        for dep in $(cat "$state/deps-$m" 2>/dev/null); do
            if [ "$rc" -eq 0 ] && ! grep -qs ': installed' "$state/status-$dep-$k"; then rc=13; fi
        done
        if [ "$rc" -eq 0 ]; then echo "$m/$v, $k, x86_64: installed" >"$state/status-$m-$k"; fi
        ;;
esac
echo "fake dkms: $action exit $rc"
exit "$rc"
"""

FAKE_DEPMOD = """#!/bin/sh
echo "depmod $*" >>"$FAKE_STATE/calls"
"""


def _host_link(kernel: str, name: str) -> Optional[str]:
    link = Path("/lib/modules") / kernel / name
    return os.readlink(link) if link.is_symlink() else None


@dataclass(frozen=True)
class DistSystem:
    """Persistent state of a private system with the dist files installed (see the module doc)."""

    root: Path
    family: str = "debian"
    #: install /usr/sbin/dkms (the wrapper); False to test "dkms is not installed"
    wrapper: bool = True

    @property
    def lib_modules(self) -> Path:
        return self.root / "lib-modules"

    @property
    def var_lib_dkms(self) -> Path:
        return self.root / "var-lib-dkms"

    @property
    def etc_dkms(self) -> Path:
        return self.root / "etc-dkms"

    @property
    def boot(self) -> Path:
        return self.root / "boot"

    @property
    def usr_src_state(self) -> Path:
        """Overlay state of ``/usr/src`` (:func:`run_isolated`'s ``usr_src``)."""
        return self.root / "usr-src"

    @property
    def usr_src(self) -> Path:
        """Where files appear that the namespace sees under ``/usr/src``."""
        return self.usr_src_state / "upper"

    @property
    def fake_bin(self) -> Path:
        return self.root / "fake-bin"

    @property
    def fake_state(self) -> Path:
        return self.root / "fake-state"

    @property
    def calls_file(self) -> Path:
        return self.fake_state / "calls"

    @classmethod
    def create(
        cls, root: Path, kernels: Sequence[str] = (), family: str = "debian", wrapper: bool = True
    ) -> DistSystem:
        system = cls(root, family, wrapper)
        for d in (
            system.lib_modules,
            system.var_lib_dkms,
            system.etc_dkms,
            system.boot,
            system.usr_src,
            system.fake_bin,
            system.fake_state,
            root / "ns",
        ):
            d.mkdir(parents=True, exist_ok=True)
        for kernel in kernels:
            system.add_kernel(kernel)
        return system

    # ---- what the private system contains

    def add_kernel(self, kernel: str, headers: bool = True) -> Path:
        """Make ``kernel`` installed: ``/lib/modules/K/{kernel/,modules.dep}`` and, with ``headers``, the host's
        ``build``/``source`` links, or a ``build/include/`` dir for a kernel the host does not have."""
        kdir = self.lib_modules / kernel
        (kdir / "kernel").mkdir(parents=True, exist_ok=True)
        (kdir / "modules.dep").touch()  # a kernel package's (dkms runs depmod only where it exists)
        if headers:
            for name in ("build", "source"):
                target = _host_link(kernel, name)
                if target is not None and not (kdir / name).is_symlink():
                    (kdir / name).symlink_to(target)
            if not (kdir / "build").exists():
                (kdir / "build" / "include").mkdir(parents=True)
        return kdir

    def add_boot_config(self, kernel: str) -> None:
        (self.boot / f"config-{kernel}").write_text("# CONFIG_FOO is not set\n")

    def add_source(self, fixture: Path, name: str, version: str, conf_extra: str = "") -> Path:
        """Copy a module source to ``/usr/src/NAME-VERSION``, appending ``conf_extra`` to its dkms.conf."""
        dest = self.usr_src / f"{name}-{version}"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(fixture, dest, symlinks=True)
        if conf_extra:
            with open(dest / "dkms.conf", "a") as fh:
                fh.write("\n" + conf_extra + "\n")
        return dest

    def write_conf_source(self, name: str, version: str, conf: str) -> Path:
        """A ``/usr/src/NAME-VERSION`` holding only a dkms.conf (for the fake dkms)."""
        dest = self.usr_src / f"{name}-{version}"
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "dkms.conf").write_text(conf)
        return dest

    def framework(self, text: str, name: str = "framework.conf") -> None:
        """Write ``/etc/dkms/<name>`` (e.g. ``framework.conf.d/10-test.conf``)."""
        path = self.etc_dkms / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    # ---- stand-ins

    def _fake(self, name: str, text: str) -> None:
        path = self.fake_bin / name
        path.write_text(text)
        path.chmod(0o755)

    def fake_dkms(self, **exit_codes: int) -> None:
        """Put :data:`FAKE_DKMS` first in PATH; ``exit_codes`` maps actions to exit codes (``build=10``)."""
        self._fake("dkms", FAKE_DKMS)
        for action, code in exit_codes.items():
            self.set_rc(action, code)

    def set_rc(self, key: str, code: int) -> None:
        """The fake dkms exits with ``code`` for ``key``: ``ACTION[-M][-K]`` (e.g. ``build-hello-K``)."""
        (self.fake_state / f"rc-{key}").write_text(f"{code}\n")

    def fake_uname(self, release: str) -> None:
        """``uname -r`` prints ``release`` (other options go to the real uname)."""
        self._fake(
            "uname",
            f'#!/bin/sh\nif [ "$1" = -r ]; then echo {shlex.quote(release)}; else exec /usr/bin/uname "$@"; fi\n',
        )

    def fake_depmod(self) -> None:
        self._fake("depmod", FAKE_DEPMOD)

    def calls(self) -> list[str]:
        """The recorded ``dkms …`` / ``depmod …`` calls, in order."""
        return self.calls_file.read_text().splitlines() if self.calls_file.exists() else []

    # ---- running

    def _setup(self) -> str:
        q = shlex.quote
        ns = q(str(self.root / "ns"))
        lines = ["set -e", f"mount -t tmpfs pydkms-dist {ns}"]
        for tag, path in (("usr-lib", "/usr/lib"), ("usr-sbin", "/usr/sbin"), ("etc-kernel", "/etc/kernel")):
            if not Path(path).is_dir():
                # /etc/kernel on a system without kernel hooks: make it on an overlay of /etc
                tag, path = "etc", "/etc"
            lines.append(
                f"mkdir -p {ns}/{tag}/upper {ns}/{tag}/work && mount -t overlay pydkms-{tag} "
                f"-o lowerdir={path},upperdir={ns}/{tag}/upper,workdir={ns}/{tag}/work {path}"
            )
        # after the overlays, which hide what run_isolated mounted below them
        lines.append(f"mount --bind {q(str(self.lib_modules))} /usr/lib/modules")
        lines.append(f"mkdir -p /etc/dkms && mount --bind {q(str(self.etc_dkms))} /etc/dkms")
        lines.append(f"mount --bind {q(str(self.boot))} /boot")
        make = [
            "make",
            "-s",
            "-C",
            str(REPO),
            "install-integration",
            f"FAMILY={self.family}",
            "DESTDIR=",
            f"PYTHON={sys.executable}",
            f"WRAPPER={'yes' if self.wrapper else 'no'}",
        ]
        lines.append(" ".join(q(a) for a in make) + " >/dev/null")
        return "\n".join(lines)

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Optional[Mapping[str, Optional[str]]] = None,
        input: Optional[str] = None,
        timeout: float = 600,
    ) -> Result:
        """Run ``argv`` (e.g. ``["/etc/kernel/postinst.d/dkms", K]``) in the private system."""
        full_env: dict[str, Optional[str]] = {
            "PATH": f"{self.fake_bin}:/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONPATH": str(SRC),
            "FAKE_STATE": str(self.fake_state),
            "autoinstall_all_kernels": None,
            "PYDKMS_SYSCONFDIR": None,
        }
        full_env.update(env or {})
        proc = run_isolated(
            argv,
            env=full_env,
            input=input,
            timeout=timeout,
            var_lib_dkms=self.var_lib_dkms,
            etc_dkms=self.etc_dkms,
            usr_src=self.usr_src_state,
            setup=self._setup(),
            cwd="/",
        )
        return Result(list(argv), proc.returncode, proc.stdout, proc.stderr)

    def sh(self, script: str, **kw: object) -> Result:
        """Run a shell snippet in the private system."""
        return self.run(["sh", "-c", script], **kw)  # type: ignore[arg-type]
