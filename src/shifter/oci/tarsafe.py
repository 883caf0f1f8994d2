"""Reading hostile tar streams (image layers, image archives) with bounded memory.

Python's ``tarfile`` reads a PAX extended header or a GNU long name/link record whole into
memory, trusting the size the header declares.  A layer that declares a 50 GB PAX header
would make us allocate 50 GB before any of our own checks (entry counts, image size limits)
see a member.  Real extended headers are a few hundred bytes; we refuse anything over
:data:`MAX_EXTENDED_HEADER` before reading it.
"""

from __future__ import annotations

import tarfile
from typing import Any

MAX_EXTENDED_HEADER = 1 << 20  # 1 MiB


class BoundedTarInfo(tarfile.TarInfo):
    """A ``TarInfo`` that refuses oversized PAX and GNU long-name records instead of reading them."""

    def _check_extended(self) -> None:
        if self.size > MAX_EXTENDED_HEADER:
            raise tarfile.HeaderError(
                f"extended header of {self.size} bytes (limit {MAX_EXTENDED_HEADER}): refusing to read it")

    def _proc_pax(self, tarfile: Any) -> Any:
        self._check_extended()
        return super()._proc_pax(tarfile)  # type: ignore[misc]

    def _proc_gnulong(self, tarfile: Any) -> Any:
        self._check_extended()
        return super()._proc_gnulong(tarfile)  # type: ignore[misc]
