"""What flattening changes on purpose (see docs/layer-policy.md).

Everything that makes the flattened tree differ from a plain ``umoci unpack`` lives
here, as data, so the planner and the docs describe the same rules.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

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
    """

    keep_setuid: bool = False
    world_readable: bool = True
    max_depth: int = 256
    max_path_bytes: int = 3840

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
