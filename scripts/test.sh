#!/usr/bin/env bash
# The whole test suite: lint (ruff), types (mypy), unit + integration tests (pytest).
# Run as root on a machine prepared by scripts/install.sh (integration tests use real mounts,
# a real docker-registry on 127.0.0.1, real mksquashfs/squashfuse and an unprivileged test user).
set -euo pipefail
cd "$(dirname "$0")/.."
# Some tests run steps as unprivileged users (e.g. `python -m tests.integration.pull_child` as uid
# 4242), so the checkout must be readable by them.  A checkout under a private directory (e.g.
# /root) is copied to a readable place first and the suite runs from there.
if [ -z "${SHIFTER_TEST_COPY:-}" ] && ! runuser -u nobody -- test -r "$PWD/tests/conftest.py" 2>/dev/null; then
  copy=/var/tmp/shifter-test-src
  rm -rf "$copy" && mkdir -p "$copy" && cp -a . "$copy/" && chmod -R a+rX "$copy"
  echo "== checkout not readable by other users: running from a copy in $copy"
  SHIFTER_TEST_COPY=1 exec bash "$copy/scripts/test.sh" "$@"
fi
V=${SHIFTER_PREFIX:-/opt/shifter}/venv/bin
[ -e /dev/fuse ] && chmod 666 /dev/fuse
echo "== ruff"; "$V/ruff" check src tests bench
echo "== mypy"; "$V/mypy"
echo "== pytest"; "$V/pytest" -q -p no:cacheprovider "$@"
