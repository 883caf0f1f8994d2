"""Touch the user's files with the user's rights, also when root runs ``shifter --user=NAME``.

In privileged mode root reads files the user names or owns before anything is mounted: an
``--env-file``, and the per-user image store (tag files, metadata JSON, the store directory).
Read with root's rights, a symlink, a hard link or a path through a directory the user may
not search would lend root's access to the user (``--env-file=/root/.secret/env`` where only
``/root`` is closed; a tag file that is a link to a root-only file).  Checking modes by hand
misses directories, ACLs and races; so, as the kernel does for a setuid program, we switch
the *effective* ids (and groups) to the user's for the duration and let the kernel decide.
The saved uid stays 0, so root switches back afterwards.

Stdlib only (``os``): this module is on the launch path.
"""

from __future__ import annotations

import os

from shifter.runtime.spec import Identity


class AsUser:
    """``with AsUser(identity):`` the effective uid, gid and groups are ``identity``'s.

    Does nothing unless the process runs with euid 0 for a non-root ``identity`` (an
    unprivileged ``shifter`` already is the user; a root container stays root), or when
    ``enabled`` is false.  Not re-entrant; single-threaded callers only.
    """

    def __init__(self, identity: Identity, enabled: bool = True) -> None:
        self._identity = identity
        self._enabled = enabled
        self._saved: tuple[list[int], int] | None = None

    def __enter__(self) -> AsUser:
        ident = self._identity
        if not self._enabled or os.geteuid() != 0 or ident.uid == 0:
            return self
        self._saved = (os.getgroups(), os.getegid())
        # gid 0 never: the container does not get it either (runtime.etc.filter_groups).
        os.setgroups([g for g in dict.fromkeys((ident.gid, *ident.groups)) if g != 0])
        os.setresgid(-1, ident.gid, -1)
        os.setresuid(-1, ident.uid, -1)
        return self

    def __exit__(self, *exc: object) -> None:
        saved, self._saved = self._saved, None
        if saved is None:
            return
        # Any failure here raises: a process left with the user's ids only loses rights.
        os.setresuid(-1, 0, -1)
        os.setresgid(-1, saved[1], -1)
        os.setgroups(saved[0])


def acts_for_user(identity: Identity) -> bool:
    """True when this process is root working for another (non-root) user."""
    return os.geteuid() == 0 and identity.uid != 0


__all__ = ["AsUser", "acts_for_user"]
