"""What flattening changes on purpose (see docs/layer-policy.md).

Everything that makes the flattened tree differ from a plain ``umoci unpack`` lives
here, as data, so the planner and the docs describe the same rules.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from shifter.errors import LayerError

#: Site limits ``maxImageSize`` / ``maxImageEntries`` (0: unlimited): generous defaults.
DEFAULT_MAX_IMAGE_BYTES = 64 * 1024**3
DEFAULT_MAX_IMAGE_ENTRIES = 5_000_000

#: Setuid and setgid: dropped unless the site keeps them (``keepSetuid``).
SUID_SGID = stat.S_ISUID | stat.S_ISGID
#: Group/world write: a shared read-only image never needs them; dropping them means no
#: writable overlay or bind mount can ever turn the image into a shared scratch space.
GROUP_WORLD_WRITE = stat.S_IWGRP | stat.S_IWOTH


@dataclass(frozen=True)
class FlattenPolicy:
    """Knobs of the flattening policy.

    ``keep_setuid`` keeps setuid/setgid bits (site setting ``keepSetuid``).
    ``world_readable`` makes every directory a+rx and every file a+r (a+x when u+x), so
    any user can read what the image meant to be readable by its owner.
    ``max_depth`` / ``max_path_bytes`` bound how deep a tree a layer may build (hostile
    layers otherwise exhaust recursion, file descriptors or PATH_MAX downstream).
    ``max_image_bytes`` / ``max_image_entries`` bound the whole image, all layers together:
    the sum of the member sizes declared in the tar headers (uncompressed bytes) and the
    number of tar members (site settings ``maxImageSize`` / ``maxImageEntries``; 0 means no
    limit).  A decompression bomb otherwise fills the disk, and the planner's model (a few
    hundred bytes per path) the memory.
    """

    keep_setuid: bool = False
    world_readable: bool = True
    max_depth: int = 256
    max_path_bytes: int = 3840
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_entries: int = DEFAULT_MAX_IMAGE_ENTRIES

    def file_mode(self, mode: int) -> tuple[int, bool]:
        """Final permission bits of a regular file, and whether setuid/setgid was stripped."""
        perm, stripped = self._common(mode)
        if self.world_readable:
            perm |= 0o444
            if perm & stat.S_IXUSR:
                perm |= 0o111
        return perm, stripped

    def dir_mode(self, mode: int) -> tuple[int, bool]:
        """Final permission bits of a directory, and whether setuid/setgid was stripped."""
        perm, stripped = self._common(mode)
        if self.world_readable:
            perm |= 0o555
        return perm, stripped

    def _common(self, mode: int) -> tuple[int, bool]:
        perm = mode & 0o7777 & ~GROUP_WORLD_WRITE
        stripped = False
        if not self.keep_setuid and perm & SUID_SGID:
            perm &= ~SUID_SGID
            stripped = True
        return perm, stripped


class ImageBudget:
    """Counts the members and declared bytes of an image's layers against the policy's limits.

    :meth:`admit` is called with each member's *header*, before its data is read or anything
    is written: a member whose declared size exceeds what is left is refused from the header
    alone.
    """

    def __init__(self, policy: FlattenPolicy) -> None:
        self.max_bytes = policy.max_image_bytes
        self.max_entries = policy.max_image_entries
        self.bytes = 0
        self.entries = 0

    def admit(self, label: str, name: str, size: int) -> None:
        """Count one member of ``size`` declared bytes; LayerError when a limit is passed."""
        self.entries += 1
        if self.max_entries and self.entries > self.max_entries:
            raise LayerError(f"{label}: the image has more than {self.max_entries} entries, the site's "
                             "limit (maxImageEntries)",
                             hint="the image is too large for this site (or a decompression bomb); an admin "
                                  "can raise maxImageEntries in udiRoot.conf (0: no limit)")
        size = max(0, size)
        if self.max_bytes and size > self.max_bytes - self.bytes:
            raise LayerError(f"{label}: member '{name}' declares {size} bytes, which takes the image past "
                             f"{self.max_bytes} bytes uncompressed, the site's limit (maxImageSize)",
                             hint="the image is too large for this site (or a decompression bomb); an admin "
                                  "can raise maxImageSize in udiRoot.conf (0: no limit)")
        self.bytes += size
