#!/usr/bin/env bash
# A first image, with no internet needed: build a small busybox image locally, serve it from Debian's
# docker-registry on 127.0.0.1, pull it with `shifterimg`, then run it with `shifter` as root and as an
# ordinary user.  Run as root after scripts/install.sh.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
V=${SHIFTER_PREFIX:-/opt/shifter}/venv/bin
WORK=$(mktemp -d /tmp/shifter-demo.XXXXXX)
trap '[ -n "${REG_PID:-}" ] && kill "$REG_PID" 2>/dev/null; rm -rf "$WORK"' EXIT
read -r PORT REG_PID < <(cd "$SRC" && "$V/python" - "$WORK" <<'PY'
import sys
from pathlib import Path
from tests.fixtures.images import OCILayout, busybox_entries, directory, file, layer_tar, push
from tests.fixtures.registry import start_registry
work = Path(sys.argv[1])
reg = start_registry(work / "registry")
layout = OCILayout(work / "layout")
layout.add_image("t", [layer_tar(busybox_entries()),
                       layer_tar([directory("demo"), file("demo/hello.txt", b"Hello from inside the image!\n")])],
                 config={"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin", "GREETING=hi"]})
push(layout.root, "t", f"{reg.host}/demo/busybox:latest")
print(reg.port, reg.proc.pid)
PY
)
IMG="docker:127.0.0.1:$PORT/demo/busybox:latest"
cd /
set -x
"$V/shifterimg" pull "$IMG"
"$V/shifterimg" images
"$V/shifter" --image="$IMG" cat /etc/os-release /demo/hello.txt
runuser -u nobody -- "$V/shifter" --image="$IMG" sh -c 'echo "I am $(id -un) ($(id -u)) in $(pwd)"; cat /demo/hello.txt'
