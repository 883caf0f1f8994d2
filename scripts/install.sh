#!/usr/bin/env bash
# Install Shifter and everything it needs on Debian 12 (run as root).
#   - Debian packages: squashfs tools, squashfuse/FUSE, the registry and image tools used by tests
#     and benchmarks, munge, MPICH (mpiexec) and debootstrap for the MPI tests.
#   - a virtual environment made from the *system* /usr/bin/python3 at $SHIFTER_PREFIX (default
#     /opt/shifter), so ordinary users can run `shifter` and `shifterimg`.
#   - links to the commands in $SHIFTER_BIN_DIR (default /usr/local/bin).
set -euo pipefail
PREFIX=${SHIFTER_PREFIX:-/opt/shifter}
SRC=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive
if [ "${SHIFTER_SKIP_APT:-0}" != 1 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    python3 python3-venv python3-pip squashfs-tools squashfs-tools-ng squashfuse fuse3 util-linux \
    docker-registry skopeo umoci apache2-utils busybox-static zstd hyperfine charliecloud-runtime \
    munge xfsprogs podman runc ca-certificates postgresql mpich libmpich-dev gcc libc6-dev slurm-wlm \
    libslurm-dev python3-fusepy debootstrap rsync \
    openssh-client >/dev/null
fi
if [ ! -x "$PREFIX/venv/bin/python" ]; then
  mkdir -p "$PREFIX"
  /usr/bin/python3 -m venv "$PREFIX/venv"
fi
"$PREFIX/venv/bin/pip" install -q --upgrade pip
# Editable install when ordinary users can read the checkout (development); a copy otherwise.
if runuser -u nobody -- test -r "$SRC/pyproject.toml" 2>/dev/null; then
  "$PREFIX/venv/bin/pip" install -q -e "$SRC[dev]"
else
  "$PREFIX/venv/bin/pip" install -q "$SRC[dev]"
fi
# Replace pip's console scripts of the runtime commands by launchers that start under
# `python -I -S` (several ms faster per container, and immune to the caller's PYTHON* variables),
# and byte-compile the package (ordinary users cannot write __pycache__); see
# src/shifter/cli/launchers.py.
"$PREFIX/venv/bin/python" -m shifter.cli.launchers "$PREFIX/venv/bin" >/dev/null
# The Slurm SPANK plugin (plugstack.conf: see docs/slurm.md), when Slurm's headers are here.
if [ -f /usr/include/slurm/spank.h ] && command -v gcc >/dev/null; then
  mkdir -p "$PREFIX/lib"
  gcc -O2 -Wall -shared -fPIC -o "$PREFIX/lib/spank_shifter.so" "$SRC/src/shifter/wlm/slurm/spank_shifter.c"
fi
chmod -R a+rX "$PREFIX"
BIN=${SHIFTER_BIN_DIR:-/usr/local/bin}
mkdir -p "$BIN"
for cmd in shifter shifterimg shifter-gateway shifter-setup shifter-teardown; do
  ln -sf "$PREFIX/venv/bin/$cmd" "$BIN/$cmd"
done
# Rootless squashfuse needs /dev/fuse usable by users (the normal mode on clusters).
[ -e /dev/fuse ] && chmod 666 /dev/fuse
mkdir -p /etc/shifter
[ -f /etc/shifter/udiRoot.conf ] || install -m 0644 "$SRC/etc/udiRoot.conf.example" /etc/shifter/udiRoot.conf
# The directories the configuration names (imagePath, udiMount, loopMount), root-owned, world-readable.
for key in imagePath udiMount loopMount; do
  dir=$(sed -n "s/^[[:space:]]*$key[[:space:]]*=[[:space:]]*//p" /etc/shifter/udiRoot.conf | tail -n 1)
  [ -n "$dir" ] && install -d -m 0755 "$dir"
done
# The shipped plugin modules (docs/modules.md), configured only where the host has what they need
# and the site has not configured them already: mpich (an MPICH-ABI library in the linker cache)
# and gpu (an NVIDIA driver: libcuda or libnvidia-ml in the linker cache).
add_module() {  # name plugin
  grep -q "^[[:space:]]*module_$1_" /etc/shifter/udiRoot.conf || printf 'module_%s_plugin=%s\n' "$1" "$2" \
    >> /etc/shifter/udiRoot.conf
}
if ldconfig -p | grep -qE '^[[:space:]]*lib(mpi|mpich)\.so\.12 '; then add_module mpich mpich; fi
if ldconfig -p | grep -qE '^[[:space:]]*lib(cuda|nvidia-ml)\.so\.1 '; then add_module gpu gpu; fi
echo "shifter installed in $PREFIX"
