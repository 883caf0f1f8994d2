"""Who may read an image's bytes on the host: the file side of an image ACL.

A private image (``{"private": true, "users": [...], "groups": [...]}``) is for root and the
listed uids and gids only, and the runtime enforces that.  But the runtime is not the only way
to an image's bytes: anyone who can read ``<id>.squashfs`` can ``unsquashfs`` it, or copy it into
their own store and run it.  So the files themselves carry the list:

* a public image's squashfs and metadata are ``0644``;
* a private image's are ``0600`` (only the store's owner: root for the site store) plus one POSIX
  ACL entry ``user:UID:r--`` / ``group:GID:r--`` per listed id (mask ``r--``), so ``squashfuse``
  run by a listed user (unprivileged mode) can still open the image, and nobody else can.

The ACL is written as the ``system.posix_acl_access`` extended attribute (the kernel's binary
format, ``linux/posix_acl_xattr.h``), on an open fd where we have one, before the file is
renamed into place: a private image is never readable by others, not even for a moment.

A file system without POSIX ACLs (``EOPNOTSUPP``: some NFS exports) keeps the file ``0600``:
the image stays private, listed users can run it through privileged launches (Slurm, ``shifter
--user``) only; :func:`apply_access` returns False so the caller can say so.

Stdlib only: the runtime's executor uses :func:`acl_xattr` for prepared trees.
"""

from __future__ import annotations

import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

# linux/posix_acl_xattr.h: version 2, then (tag u16, perm u16, id u32) entries sorted by tag, then id.
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
NO_ID = 0xFFFFFFFF
XATTR = "system.posix_acl_access"
PUBLIC_MODE = 0o644
PRIVATE_MODE = 0o600
_READ = 4


def acl_xattr(entries: Iterable[tuple[int, int, int]]) -> bytes:
    """The xattr value for ``(tag, perm, id)`` entries (sorted here, as the kernel requires)."""
    return (2).to_bytes(4, "little") + b"".join(
        tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + ident.to_bytes(4, "little")
        for tag, perm, ident in sorted(entries))


def private_entries(users: Iterable[int], groups: Iterable[int], owner_perm: int = 6) -> list[tuple[int, int, int]]:
    """ACL entries of a private image file: the owner ``owner_perm``, each listed uid/gid read."""
    entries = [(ACL_USER_OBJ, owner_perm, NO_ID), (ACL_GROUP_OBJ, 0, NO_ID), (ACL_OTHER, 0, NO_ID)]
    named = [(ACL_USER, _READ, uid) for uid in sorted(set(users))] + \
            [(ACL_GROUP, _READ, gid) for gid in sorted(set(groups))]
    if named:
        entries += [*named, (ACL_MASK, _READ, NO_ID)]
    return entries


def _ids(value: object) -> list[int]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < NO_ID]


def is_private(acl: object) -> bool:
    """The runtime's reading of a stored ACL: a malformed one counts as private (fail closed)."""
    if acl is None:
        return False
    if not isinstance(acl, dict):
        return True
    return acl.get("private", False) is not False


def apply_access(target: int | str, acl: Mapping[str, object] | None) -> bool:
    """Give the file ``target`` (an fd or a path) the modes and ACL of an image ``acl``.

    Returns False when the file system cannot store the ACL of a private image with listed ids
    (the file is then ``0600``: closed to the listed users too); True otherwise.
    """
    if not is_private(acl):
        os.chmod(target, PUBLIC_MODE)
        _remove_acl(target)
        return True
    os.chmod(target, PRIVATE_MODE)
    listed = acl if isinstance(acl, dict) else {}
    users, groups = _ids(listed.get("users")), _ids(listed.get("groups"))
    if not users and not groups:
        _remove_acl(target)
        return True
    try:
        os.setxattr(target, XATTR, acl_xattr(private_entries(users, groups)))
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
            return False
        raise
    return True


def _remove_acl(target: int | str) -> None:
    try:
        os.removexattr(target, XATTR)
    except OSError as err:
        if err.errno not in (errno.ENODATA, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise


__all__ = ["ACL_GROUP", "ACL_GROUP_OBJ", "ACL_MASK", "ACL_OTHER", "ACL_USER", "ACL_USER_OBJ", "NO_ID", "XATTR",
           "acl_xattr", "apply_access", "is_private", "private_entries"]
