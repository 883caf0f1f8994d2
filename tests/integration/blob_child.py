"""A pull in a child process that logs its progress events, for the shared-layer test.

Run as ``python -m tests.integration.blob_child REF`` (a pull) or ``... --import ARCHIVE REF``.
Environment: ``SHIFTER_CONFIG``, ``EVENTS`` (a file: one line per progress event), and
optionally ``HOLD_DIGEST`` (``*``: any) + ``GO``: on its first progress report for that blob
the child logs ``hold`` and blocks (still downloading, so still holding the blob's lock)
until the file ``GO`` exists.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from shifter.config.site import load_config
from shifter.gateway.service import ImageService
from shifter.gateway.stores import Caller


class LoggingSink:
    def __init__(self, log: Path, hold: str, go: Path | None) -> None:
        self.log, self.hold, self.go = log, hold, go
        self.lock = threading.Lock()
        self.held = False

    def _write(self, line: str) -> None:
        with self.lock, open(self.log, "a") as handle:
            handle.write(line + "\n")

    def phase(self, name: str, message: str) -> None:
        self._write(f"phase {name} {message}")

    def layer_start(self, digest: str, total: int) -> None:
        self._write(f"start {digest} {total}")

    def layer_advance(self, digest: str, nbytes: int) -> None:
        self._write(f"advance {digest} {nbytes}")
        if self.hold in (digest, "*") and not self.held and self.go is not None:
            self.held = True
            self._write("hold")
            deadline = time.monotonic() + 120
            while not self.go.exists() and time.monotonic() < deadline:
                time.sleep(0.02)

    def layer_done(self, digest: str) -> None:
        self._write(f"done {digest}")


def main() -> int:
    go = os.environ.get("GO")
    sink = LoggingSink(Path(os.environ["EVENTS"]), os.environ.get("HOLD_DIGEST", ""), Path(go) if go else None)
    service = ImageService.embedded(load_config())
    if sys.argv[1] == "--import":
        record = service.import_archive(sys.argv[2], sys.argv[3], Caller.current(), sink)
    else:
        record = service.pull(sys.argv[1], Caller.current(), sink)
    print(record.id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
