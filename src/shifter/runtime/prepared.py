"""Prepared containers: the record ``shifter-setup`` leaves next to the tree it built.

The tree lives at ``udiMount`` in the host mount namespace; the record is
``<udiMount>.json``, written by root.  A later ``shifter`` with the same image, user, volumes
and modules enters the tree instead of building its own.  A record is trusted only if it is
a regular root-owned file that nobody else can write and ``udiMount`` really is a mount
point; anything else is ignored (the caller then gets a private container).

Stdlib only: this module is on the launch path.
"""

from __future__ import annotations

import os
import stat

from shifter._fastjson import loads as _json_loads
from shifter.config.site import SiteConfig
from shifter.runtime.spec import ContainerSpec

TYPE_CHECKING = False  # typing, collections: not on the launch path
if TYPE_CHECKING:
    from typing import Any

RECORD_VERSION = 1


def record_path(config: SiteConfig) -> str:
    """``<udiMount>.json``."""
    return config.udi_mount.rstrip("/") + ".json"


def describe(spec: ContainerSpec) -> dict[str, Any]:
    """What identifies a prepared container: the fields a request must match."""
    return {
        "image_id": spec.image.image_id or spec.image.local_root,
        "uid": spec.identity.uid,
        "gid": spec.identity.gid,
        "volumes": [[v.source, v.target, v.read_only, v.origin, v.recursive, v.per_node_cache, v.slave]
                    for v in spec.volumes],
        "modules": list(spec.modules),
    }


def make_record(spec: ContainerSpec, config: SiteConfig, loop_device: str = "") -> dict[str, Any]:
    """The record written after a successful setup."""
    return {"version": RECORD_VERSION, **describe(spec), "image": spec.image.ref,
            "squashfs": spec.image.squashfs, "user": spec.identity.user, "udi_mount": config.udi_mount,
            "loop_mount": config.loop_mount, "loop_device": loop_device}


def read_record(config: SiteConfig) -> dict[str, Any] | None:
    """The trusted record, or ``None`` when there is none (or it cannot be trusted)."""
    try:
        fd = os.open(record_path(config), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None
        try:
            data = _json_loads(handle.read(1024 * 1024))
        except ValueError:
            return None
    if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
        return None
    return data


def is_mountpoint(path: str) -> bool:
    """True if ``path`` is the root of a mount (its device differs from its parent's)."""
    try:
        here = os.stat(path, follow_symlinks=False)
        parent = os.stat(os.path.join(path, ".."), follow_symlinks=False)
    except OSError:
        return False
    return here.st_dev != parent.st_dev or here.st_ino == parent.st_ino


def matching_record(spec: ContainerSpec, config: SiteConfig) -> dict[str, Any] | None:
    """The prepared container this request may enter, if any."""
    record = read_record(config)
    if record is None or record.get("udi_mount") != config.udi_mount:
        return None
    wanted = describe(spec)
    if any(record.get(key) != value for key, value in wanted.items()):
        return None
    return record if is_mountpoint(config.udi_mount) else None


def write_record(config: SiteConfig, record: dict[str, Any]) -> None:
    """Write the record atomically (temp file + rename), mode 0644."""
    path = record_path(config)
    tmp = f"{path}.tmp.{os.getpid()}"
    import json  # noqa: PLC0415  (shifter-setup only)

    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(tmp, path)


def remove_record(config: SiteConfig) -> None:
    """Delete the record (no error if it is gone)."""
    import contextlib  # noqa: PLC0415  (shifter-teardown only)

    with contextlib.suppress(FileNotFoundError):
        os.unlink(record_path(config))


__all__ = ["describe", "is_mountpoint", "make_record", "matching_record", "read_record", "record_path",
           "remove_record", "write_record"]
