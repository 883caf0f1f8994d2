"""Private images: who may run an image (its ACL), and how ``-u``/``-g`` names become ids.

The ACL is stored per image (per manifest digest) in the metadata JSON (``"acl"``), which is
what the runtime enforces (:func:`shifter.runtime.images.check_access`), and mirrored in the
database.  ``{"private": false}`` means everyone; a private image may be run by root, the
listed uids and members of the listed gids only.  Names are resolved here, on the gateway's
side, through the system's user and group databases (NSS), so the ids are the ones the
runtime compares with.

Rules (``docs/internals.md``, "Private images"):

* the first pull of an image sets its ACL: private when users or groups were given, else public;
* a later pull by the image's owner or an admin sets it again (the latest such pull wins:
  a plain pull by the owner makes a private image public again);
* anyone else's pull never changes it: a public pull of a private image only points the tag
  (the image stays private), and asking for a different private ACL is refused.
"""

from __future__ import annotations

import grp
import pwd
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shifter.errors import UsageError

_MAX_ID = 2**32 - 2  # (uid_t)-1 is "no id"


@dataclass(frozen=True)
class ImageAcl:
    """Who may run an image: everyone (not ``private``), or root plus ``users`` and ``groups``."""

    private: bool = False
    users: tuple[int, ...] = ()
    groups: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The metadata JSON / database form: ``{"private": ..., "users": [...], "groups": [...]}``."""
        return {"private": self.private, "users": sorted(set(self.users)), "groups": sorted(set(self.groups))}

    @classmethod
    def from_json(cls, value: object) -> ImageAcl:
        """Parse a stored ACL; a missing one is public, a malformed one private with nobody (fail closed)."""
        if value is None:
            return PUBLIC
        if not isinstance(value, Mapping):
            return cls(private=True)
        private = value.get("private", False)
        if private is False:
            return PUBLIC
        return cls(True, _ids(value.get("users")), _ids(value.get("groups")))

    def describe(self) -> str:
        """``public``, or ``private (uids 1001,1002; gids 100)``."""
        if not self.private:
            return "public"
        parts = [f"uids {','.join(map(str, sorted(set(self.users))))}" if self.users else "",
                 f"gids {','.join(map(str, sorted(set(self.groups))))}" if self.groups else ""]
        return f"private ({'; '.join(p for p in parts if p) or 'root only'})"

    def same_as(self, other: ImageAcl) -> bool:
        return self.to_json() == other.to_json()

    def allows(self, uid: int, gid: int, groups: Sequence[int] = ()) -> bool:
        """May this user run the image?  (The runtime's ``check_access``, for the gateway's use.)"""
        if not self.private or uid == 0 or uid in self.users or gid in self.groups:
            return True
        return bool(set(groups).intersection(self.groups))


PUBLIC = ImageAcl()


def _ids(value: object) -> tuple[int, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(sorted({v for v in value if isinstance(v, int) and not isinstance(v, bool)}))


def _uid_of(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def _gid_of(name: str) -> int:
    return grp.getgrnam(name).gr_gid


def _resolve(names: Sequence[str], kind: str, lookup: Callable[[str], int]) -> list[int]:
    """Numeric ids are taken as they are (sites with remote directories); names are looked up."""
    ids: list[int] = []
    for name in names:
        text = name.strip()
        if text.isdigit() and text.isascii():
            value = int(text)
            if value > _MAX_ID:
                raise UsageError(f"{kind} id {text} is out of range", hint=f"give a {kind} name or a valid id")
            ids.append(value)
            continue
        try:
            ids.append(lookup(text))
        except (KeyError, ValueError):
            flag = "-u/--user" if kind == "user" else "-g/--group"
            raise UsageError(f"unknown {kind} {text!r} in {flag}",
                             hint=f"check the name with 'getent {'passwd' if kind == 'user' else 'group'} "
                                  f"{text}', or give the numeric id") from None
    return ids


def resolve_acl(users: Sequence[str], groups: Sequence[str], *, requester_uid: int | None = None,
                uid_of: Callable[[str], int] = _uid_of, gid_of: Callable[[str], int] = _gid_of) -> ImageAcl | None:
    """The private ACL for ``-u USERS -g GROUPS``; None when both are empty (a public pull).

    ``requester_uid`` (the caller, unless root) is always added, so a private pull never locks
    its own puller out.  Unknown names raise :class:`UsageError`.
    """
    if not users and not groups:
        return None
    uids = _resolve(users, "user", uid_of)
    gids = _resolve(groups, "group", gid_of)
    if requester_uid:
        uids.append(requester_uid)
    return ImageAcl(True, tuple(sorted(set(uids))), tuple(sorted(set(gids))))


__all__ = ["PUBLIC", "ImageAcl", "resolve_acl"]
