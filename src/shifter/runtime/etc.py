"""The container's identity files: ``/etc/passwd``, ``/etc/group`` and ``/etc/nsswitch.conf``.

Generation is pure (:func:`generate_etc_files`); the two lookups that touch the host
(:func:`group_names`, :func:`read_site_etc`) are separate so tests can feed plain values.
Rules (NERSC Shifter's ``populateEtcDynamically``/``etcPath``):

* ``passwd`` has ``root``, ``nobody`` and the user; ``group`` has ``root``, ``nogroup``
  and the user's groups;
* the user's group list is cut to ``maxGroupCount`` and never contains gid 0 (a caller
  must not gain the root group's file access inside the image);
* a file present in the site's ``etcPath`` replaces the generated one, except that the
  user is appended if the site file does not name their uid/gid.

Stdlib only: this module is on the launch path.
"""

from __future__ import annotations

import os

from shifter.runtime.spec import Identity

TYPE_CHECKING = False  # typing, collections: not on the launch path
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
ETC_FILES = ("passwd", "group", "nsswitch.conf")
_NOBODY = 65534


def filter_groups(primary: int, groups: Iterable[int], max_count: int) -> tuple[int, ...]:
    """The supplementary groups the container gets: deduplicated, in order, without gid 0,
    the primary group first, at most ``max_count`` entries."""
    result: list[int] = []
    for gid in (primary, *groups):
        if gid == 0 or gid in result or gid < 0:
            continue
        result.append(gid)
    return tuple(result[:max_count])


def _clean(text: str) -> str:
    """Field text safe for a colon-separated line (a hostile name cannot add fields or lines)."""
    return "".join(ch for ch in text if ch not in ":\n\r\0")


def passwd_text(identity: Identity, shell: str = "/bin/sh") -> str:
    """``/etc/passwd`` for ``root``, ``nobody`` and the user."""
    lines = ["root:x:0:0:root:/root:/bin/sh"]
    if identity.uid not in (0, _NOBODY):
        lines.append(f"{_clean(identity.user)}:x:{identity.uid}:{identity.gid}:{_clean(identity.user)}:"
                     f"{_clean(identity.home) or '/'}:{_clean(shell)}")
    lines.append(f"nobody:x:{_NOBODY}:{_NOBODY}:nobody:/nonexistent:/bin/false")
    return "\n".join(lines) + "\n"


def group_text(identity: Identity, groups: Iterable[int], names: Mapping[int, str]) -> str:
    """``/etc/group`` for ``root``, ``nogroup`` and ``groups`` (already filtered), the user a member."""
    lines = ["root:x:0:"]
    member = _clean(identity.user) if identity.uid != 0 else ""
    for gid in groups:
        if gid == _NOBODY:
            continue
        name = _clean(names.get(gid, "")) or f"group{gid}"
        lines.append(f"{name}:x:{gid}:{member}")
    lines.append(f"nogroup:x:{_NOBODY}:")
    return "\n".join(lines) + "\n"


def _merge_site(name: str, site: str, generated: str, identity: Identity) -> str:
    """A site-supplied file, with the user's line appended when the site file lacks it."""
    key = str(identity.uid if name == "passwd" else identity.gid)
    ids = {line.split(":")[2] for line in site.splitlines() if line.count(":") >= 3}
    if name == "nsswitch.conf" or key in ids:
        return site if site.endswith("\n") else site + "\n"
    extra = [line for line in generated.splitlines() if line.count(":") >= 3 and line.split(":")[2] == key]
    return (site if site.endswith("\n") or not site else site + "\n") + "".join(f"{line}\n" for line in extra)


def generate_etc_files(identity: Identity, groups: Iterable[int], names: Mapping[int, str],
                       site_files: Mapping[str, str] | None = None) -> dict[str, str]:
    """The contents of ``passwd``, ``group`` and ``nsswitch.conf`` for the container."""
    generated = {"passwd": passwd_text(identity), "group": group_text(identity, groups, names),
                 "nsswitch.conf": NSSWITCH}
    for name, text in (site_files or {}).items():
        if name in generated:
            generated[name] = _merge_site(name, text, generated[name], identity)
    return generated


def group_names(gids: Iterable[int]) -> dict[int, str]:
    """Host group names for ``gids`` (missing groups are left out)."""
    import grp  # noqa: PLC0415  (builtin module; imported late to keep the pure part pure)

    names: dict[int, str] = {}
    for gid in gids:
        try:
            names[gid] = grp.getgrgid(gid).gr_name
        except KeyError:
            continue
    return names


def read_site_etc(etc_path: str, limit: int = 4 * 1024 * 1024) -> dict[str, str]:
    """The ``passwd``/``group``/``nsswitch.conf`` files present in the site's ``etcPath``."""
    found: dict[str, str] = {}
    if not etc_path:
        return found
    for name in ETC_FILES:
        try:
            fd = os.open(os.path.join(etc_path, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as handle:
            found[name] = handle.read(limit).decode("utf-8", "replace")
    return found


__all__ = ["ETC_FILES", "NSSWITCH", "filter_groups", "generate_etc_files", "group_names", "group_text",
           "passwd_text", "read_site_etc"]
