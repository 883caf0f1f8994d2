"""Write side of the image store: atomic publication, tags, removal, recovery.

Every file a reader may see is written under a temporary name in the same directory
(or ``<store>/.tmp``, same filesystem), flushed with ``fsync`` and renamed into place,
then the directory is fsynced.  Order of an image publication: ``<id>.squashfs`` first,
then ``<id>.json`` (whose ``"status": "READY"`` is what makes the image usable), then
the tag files.  A crash at any point leaves either the old state or the new one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from shifter.errors import DISK_FULL_HINT, DiskFullError, StoreError
from shifter.store.access import apply_access
from shifter.store.layout import ImageStore, check_id
from shifter.store.locks import FileLock

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def storage_error(err: OSError, what: str) -> StoreError:
    """Map an OSError while writing to :class:`DiskFullError` (ENOSPC/EDQUOT) or :class:`StoreError`."""
    if err.errno in _FULL:
        return DiskFullError(f"no space left while {what}",
                             hint=DISK_FULL_HINT)
    return StoreError(f"failed while {what}: {err.strerror or err}",
                      hint="check permissions and free space of the image store")


@contextlib.contextmanager
def writing(what: str) -> Iterator[None]:
    """Turn an OSError in the block into a typed store error about ``what``."""
    try:
        yield
    except OSError as err:
        raise storage_error(err, what) from None


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename in it survives a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644,
                       image_acl: Mapping[str, object] | bool | None = False) -> bool:
    """Write ``data`` to ``path`` via temp + fsync + rename (+ fsync of the directory).

    ``image_acl`` (an image's ACL, or None for public): the file is an image's and gets that ACL's
    modes (:func:`shifter.store.access.apply_access`) before it is renamed into place; the
    result is ``apply_access``'s.  Without it the file gets ``mode``.
    """
    applied = True
    with writing(f"writing {path}"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                if image_acl is False:
                    os.fchmod(handle.fileno(), mode)
                else:  # closed before the first byte is written
                    applied = apply_access(handle.fileno(), image_acl or None)  # type: ignore[arg-type]
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(path.parent)
    return applied


def atomic_write_json(path: Path, data: object, image_acl: Mapping[str, object] | bool | None = False) -> bool:
    return atomic_write_bytes(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8"),
                              image_acl=image_acl)


def ensure_layout(store: ImageStore) -> None:
    """Create the store's directories (``.tmp`` and ``.locks`` private to the owner)."""
    with writing(f"creating the image store {store.root}"):
        store.root.mkdir(parents=True, exist_ok=True)
        store.tags_dir.mkdir(exist_ok=True)
        store.tmp_dir.mkdir(mode=0o700, exist_ok=True)
        store.locks_dir.mkdir(mode=0o755, exist_ok=True)


def image_lock(store: ImageStore, image_id: str) -> FileLock:
    """The per-image lock: held for the whole download + conversion of ``image_id``."""
    return FileLock(store.locks_dir / f"{check_id(image_id)}.lock")


def tags_lock(store: ImageStore) -> FileLock:
    """A short store-wide lock that serialises tag changes and image removal."""
    return FileLock(store.locks_dir / "tags.lock")


def work_path(store: ImageStore, image_id: str, suffix: str) -> Path:
    """``<store>/.tmp/<id><suffix>``: the work files of one image (``.tree``, ``.squashfs.partial``)."""
    return store.tmp_dir / f"{check_id(image_id)}{suffix}"


def clean_work(store: ImageStore, image_id: str) -> None:
    """Remove every temporary file of ``image_id`` (call with its image lock held)."""
    check_id(image_id)
    if not store.tmp_dir.is_dir():
        return
    for entry in store.tmp_dir.iterdir():
        if entry.name.startswith(image_id):
            remove_path(entry)


def remove_path(path: Path) -> None:
    """Remove a file or a whole tree, also one with read-only directories (a flattened image)."""
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    try:
        shutil.rmtree(path)
        return
    except OSError:
        pass
    # Make every real directory writable (symlinks are never followed), then retry.
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    for dirpath, dirnames, _files in os.walk(path):
        for name in dirnames:
            child = os.path.join(dirpath, name)
            if not os.path.islink(child):
                with contextlib.suppress(OSError):
                    os.chmod(child, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def publish_image(store: ImageStore, image_id: str, squashfs_tmp: Path, metadata: dict[str, object]) -> bool:
    """Move a finished squashfs into place, then write its metadata json (READY).

    ``squashfs_tmp`` must be on the store's filesystem (in ``<store>/.tmp``, owner-only).  Both
    files get the modes and ACL of ``metadata["acl"]`` (:mod:`shifter.store.access`) before they
    are renamed into place.  The json is written last: the image becomes visible to the runtime
    only when both exist.  False when the store's file system could not take the POSIX ACL of
    a private image (its files are then owner-only).
    """
    final = store.squashfs_path(image_id)
    acl = _acl_of(metadata)
    with writing(f"publishing image {image_id[:12]}"):
        fsync_file(squashfs_tmp)
        applied = apply_access(str(squashfs_tmp), acl)
        os.replace(squashfs_tmp, final)
        fsync_dir(store.root)
    return atomic_write_json(store.metadata_path(image_id), metadata, image_acl=acl) and applied


def update_metadata(store: ImageStore, image_id: str, **fields: object) -> dict[str, object]:
    """Change fields of a READY image's ``<id>.json`` (e.g. its ``acl``); returns the new metadata.

    Temp + fsync + rename: a reader (the runtime) sees the old file or the new one, never a
    half-written one.  Call with :func:`tags_lock` held so two rewrites cannot interleave.  The
    squashfs and the json get the modes and ACL of the (new) ``acl``.
    """
    metadata = store.read_metadata(image_id)
    metadata.update(fields)
    acl = _acl_of(metadata)
    with writing(f"changing who may read image {image_id[:12]}"):
        apply_access(store.squashfs_file(image_id), acl)
    atomic_write_json(store.metadata_path(image_id), metadata, image_acl=acl)
    return metadata


def _acl_of(metadata: Mapping[str, object]) -> Mapping[str, object] | None:
    acl = metadata.get("acl")
    if acl is None or isinstance(acl, dict):
        return acl
    return {"private": True}  # malformed: fail closed


def set_tag(store: ImageStore, image_type: str, ref: str, image_id: str) -> None:
    """Point ``<type>:<ref>`` at ``image_id`` (atomically replaces an older tag file)."""
    atomic_write_bytes(store.tag_path(image_type, ref), f"{check_id(image_id)}\n".encode("ascii"))


def remove_tag(store: ImageStore, image_type: str, ref: str) -> None:
    path = store.tag_path(image_type, ref)
    with writing(f"removing tag {image_type}:{ref}"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if path.parent.is_dir():
            fsync_dir(path.parent)


def remove_image(store: ImageStore, image_id: str) -> None:
    """Delete an image's files: json first (it stops being READY), then the squashfs.

    A job that already mounted the squashfs keeps its open file; the space comes back when
    the last user unmounts it.
    """
    with writing(f"removing image {image_id[:12]}"):
        for path in (store.metadata_path(image_id), store.squashfs_path(image_id)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        fsync_dir(store.root)


def recover_stale_work(store: ImageStore) -> list[str]:
    """Remove work files of images whose lock is free (their writer died); return those ids.

    Safe to run at any time: work of a live pull is protected by its image lock.
    """
    if not store.tmp_dir.is_dir():
        return []
    ids = sorted({e.name[:64] for e in store.tmp_dir.iterdir() if len(e.name) > 64})
    cleaned: list[str] = []
    for image_id in ids:
        try:
            lock = image_lock(store, image_id)
        except StoreError:
            continue
        if lock.acquire(blocking=False):
            try:
                clean_work(store, image_id)
                cleaned.append(image_id)
            finally:
                lock.release()
    return cleaned


__all__ = ["atomic_write_bytes", "atomic_write_json", "clean_work", "ensure_layout", "fsync_dir",
           "fsync_file", "image_lock", "publish_image", "recover_stale_work", "remove_image", "remove_path",
           "remove_tag", "set_tag", "storage_error", "tags_lock", "update_metadata", "work_path", "writing"]
