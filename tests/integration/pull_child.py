"""A pull in a child process, for the crash and concurrency tests.

Run as ``python -m tests.integration.pull_child REF``.

Environment: ``SHIFTER_CONFIG`` (the site config), ``PULL_LOG`` (a file: one line per
squashfs build, and ``converting`` just before it), ``PULL_PAUSE`` (seconds to sleep
before building: the window in which a test kills this process).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from shifter.config.site import load_config
from shifter.convert.squashfs import SquashfsOptions, build_squashfs
from shifter.gateway.service import ImageService
from shifter.gateway.stores import Caller


def main() -> int:
    config = load_config()
    log = Path(os.environ["PULL_LOG"])
    pause = float(os.environ.get("PULL_PAUSE", "0"))

    def build(tree: Path, dest: Path) -> int:
        with open(log, "a") as handle:
            handle.write(f"converting {os.getpid()}\n")
        time.sleep(pause)
        size = build_squashfs(tree, dest, SquashfsOptions(config.squashfs_compression,
                                                          config.squashfs_compression_level))
        with open(log, "a") as handle:
            handle.write(f"built {os.getpid()}\n")
        return size

    service = ImageService.embedded(config, Caller.current(), build=build)
    record = service.pull(sys.argv[1], Caller.current())
    print(record.id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
