"""``POST /api/doimport``: a squashfs file already on the gateway host becomes an image (NERSC's
import, for ``import_users``).

The gateway runs as root, so the file is opened without following a final symlink and must be a
regular file *owned by the caller* (an admin may import any): a user cannot make the gateway read
someone else's file (a hard link keeps its owner).  It must start with the squashfs magic.  It is
copied into the store's private work directory while hashed; the image id is the sha256 of its
bytes.  Then it is published like a pulled image (squashfs, metadata json, tag, database record).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from shifter.errors import AccessDeniedError, UsageError
from shifter.gateway.stores import Caller
from shifter.store import publish
from shifter.store.layout import ImageStore

SQUASHFS_MAGIC = b"hsqs"
_CHUNK = 1 << 20


def open_import_file(path: object, caller: Caller, admin: bool) -> int:
    """An fd of the caller's regular squashfs file (raises 400/403-typed errors otherwise)."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise UsageError("filepath must be an absolute path", hint='send {"filepath": "/path/image.squashfs", '
                                                                   '"format": "squashfs"}')
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise UsageError(f"cannot open {path}: {err.strerror}", hint="give a regular file you own") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{path} is not a regular file", hint="give a squashfs file")
        if info.st_uid != caller.uid and not admin:
            raise AccessDeniedError(f"{path} is not owned by {caller.username}",
                                    hint="import a file you own (or ask an admin)")
        if os.pread(fd, 4, 0) != SQUASHFS_MAGIC:
            raise UsageError(f"{path} is not a squashfs file", hint="build it with mksquashfs")
    except BaseException:
        os.close(fd)
        raise
    return fd


def copy_into_store(fd: int, store: ImageStore) -> tuple[str, Path, int]:
    """Copy the file into ``<store>/.tmp`` while hashing: (image id, work file, size)."""
    publish.ensure_layout(store)
    digest = hashlib.sha256()
    tmp = store.tmp_dir / f".import-{os.getpid()}-{fd}.squashfs.partial"
    size = 0
    try:
        with os.fdopen(fd, "rb") as source, open(tmp, "wb") as target:
            os.fchmod(target.fileno(), 0o600)
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                target.write(chunk)
                size += len(chunk)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    image_id = digest.hexdigest()
    final = publish.work_path(store, image_id, ".squashfs.partial")
    tmp.replace(final)
    return image_id, final, size


def import_metadata(image_id: str, ref: str, size: int, acl: dict[str, Any]) -> dict[str, Any]:
    from shifter.convert.metadata import ImageContent, build_metadata  # noqa: PLC0415

    content = ImageContent(f"sha256:{image_id}", {}, "", [])
    return build_metadata(content, image_type="docker", source=ref, squashfs_size=size, compression="imported",
                          acl=acl)


__all__ = ["copy_into_store", "import_metadata", "open_import_file"]
