#!/usr/bin/env bash
# The whole test suite: lint (ruff), types (mypy), unit + integration tests (pytest).
# Run as root on a machine prepared by scripts/install.sh (integration tests use real mounts,
# a real docker-registry on 127.0.0.1, real mksquashfs/squashfuse and an unprivileged test user).
set -euo pipefail
cd "$(dirname "$0")/.."
V=${SHIFTER_PREFIX:-/opt/shifter}/venv/bin
[ -e /dev/fuse ] && chmod 666 /dev/fuse
echo "== ruff"; "$V/ruff" check src tests bench
echo "== mypy"; "$V/mypy"
echo "== pytest"; "$V/pytest" -q -p no:cacheprovider "$@"
