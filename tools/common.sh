# Shared by tools/demo and tools/test: install what a fresh Debian 12 machine lacks.
# Sourced, not executed. Needs root (apt-get).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${PYDKMS_VENV:-$REPO/.venv}
export DEBIAN_FRONTEND=noninteractive

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "This command installs packages with apt-get: run it as root (sudo $0)." >&2
        exit 1
    fi
}

apt_updated=
apt_install() {
    # apt_install PKG... : install the packages that are not installed yet
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
    echo "Installing: ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Header packages for N distinct kernel ABIs of the archive (newest first), preferring the
# ABIs the test environment was written against. Prints package names.
pick_headers() {
    local want=$1 flavour=${2:-amd64}
    if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
    apt-cache search --names-only "^linux-headers-[0-9.]+-[0-9]+-${flavour}\$" | awk '{print $1}' \
        | sort -V -r | head -n "$want"
}

install_build_tools() {
    apt_install gcc make libc6-dev kmod openssl xz-utils zstd patch bc cpio dpkg-dev binutils
    # the archive tests cross compressed archives with GNU tar (bzip2 and lz4 are its helpers)
    apt_install bzip2 lz4
}

install_headers() {
    # install_headers N [FLAVOUR]: make sure N kernels of FLAVOUR have headers.
    local want=$1 flavour=${2:-amd64} have
    have=$(ls -d /lib/modules/*/build/include 2>/dev/null | grep -cE "^/lib/modules/[0-9.]+-[0-9]+-${flavour}/" || true)
    [ "$have" -ge "$want" ] && return 0
    # shellcheck disable=SC2046
    apt_install $(pick_headers "$want" "$flavour")
}

make_venv() {
    # make_venv [EXTRAS]: a virtualenv with pydkms installed (editable) from this checkout.
    local extras=${1:-}
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then apt_install python3-venv; fi
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e "$REPO${extras:+[$extras]}"
    # byte-compile now: this environment may set PYTHONDONTWRITEBYTECODE, and dkms starts often
    "$VENV/bin/python" -m compileall -q "$REPO/src/pydkms" >/dev/null
}
