"""Read side of the image store: where files live and what counts as READY.

Imported on the ``shifter`` launch path, so it uses the standard library only.  See
``docs/internals.md`` ("The image store") for the layout:

    <root>/<id>.squashfs  <root>/<id>.json  <root>/tags/<type>/<quoted ref>
    <root>/.tmp/  <root>/.locks/  <root>/shifter.db  <root>/cache/

An image id is the 64-hex-digit manifest digest; every path built here validates it
first, so a hostile id can never escape the store root.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from shifter.errors import StoreError

_ID = re.compile(r"^[0-9a-f]{64}$")
_TYPE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
READY = "READY"


def check_id(image_id: str) -> str:
    """Return ``image_id`` if it is a 64-hex-digit image id, else raise :class:`StoreError`."""
    if not _ID.match(image_id):
        raise StoreError(f"invalid image id {image_id!r}", hint="an image id is 64 lowercase hex digits")
    return image_id


def check_type(image_type: str) -> str:
    """Return ``image_type`` if it is a plausible image type name (``docker``...)."""
    if not _TYPE.match(image_type):
        raise StoreError(f"invalid image type {image_type!r}", hint="use e.g. 'docker'")
    return image_type


def quote_ref(ref: str) -> str:
    """The tag file name of a normalised reference (no ``/``, never ``.`` or ``..``)."""
    name = urllib.parse.quote(ref, safe="")
    if not ref or name.startswith(".") or len(name) > 255:
        raise StoreError(f"cannot store a tag for reference {ref!r}", hint="use a shorter, normal image name")
    return name


class ImageStore:
    """One image store directory (the site ``imagePath`` or a per-user store)."""

    def __init__(self, root: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root)
        self.cache_dir = Path(cache_dir) if cache_dir else self.root / "cache"

    def __repr__(self) -> str:
        return f"ImageStore({str(self.root)!r})"

    # --- paths -------------------------------------------------------------------------
    @property
    def tmp_dir(self) -> Path:
        return self.root / ".tmp"

    @property
    def locks_dir(self) -> Path:
        return self.root / ".locks"

    @property
    def tags_dir(self) -> Path:
        return self.root / "tags"

    @property
    def database_path(self) -> Path:
        return self.root / "shifter.db"

    def squashfs_path(self, image_id: str) -> Path:
        """``<root>/<id>.squashfs``."""
        return self.root / f"{check_id(image_id)}.squashfs"

    def metadata_path(self, image_id: str) -> Path:
        """``<root>/<id>.json``."""
        return self.root / f"{check_id(image_id)}.json"

    def tag_path(self, image_type: str, ref: str) -> Path:
        """``<root>/tags/<type>/<quoted ref>``."""
        return self.tags_dir / check_type(image_type) / quote_ref(ref)

    # --- reads -------------------------------------------------------------------------
    def read_metadata(self, image_id: str) -> dict[str, object]:
        """The parsed ``<id>.json``; :class:`StoreError` when missing or unreadable."""
        path = self.metadata_path(image_id)
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            raise StoreError(f"image {image_id[:12]} has no metadata in {self.root}",
                             hint="pull the image again") from None
        except (OSError, ValueError) as err:
            raise StoreError(f"cannot read {path}: {err}", hint="pull the image again") from None
        if not isinstance(data, dict):
            raise StoreError(f"{path} is not a JSON object", hint="pull the image again")
        return data

    def is_ready(self, image_id: str) -> bool:
        """True iff both files exist and the json says READY (the runtime's only test)."""
        try:
            if not self.squashfs_path(image_id).is_file():
                return False
            return self.read_metadata(image_id).get("status") == READY
        except StoreError:
            return False

    def resolve_tag(self, image_type: str, ref: str) -> str | None:
        """The image id a tag points to, or None when the tag does not exist."""
        try:
            text = self.tag_path(image_type, ref).read_text(encoding="ascii").strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError) as err:
            raise StoreError(f"cannot read tag {image_type}:{ref} in {self.root}: {err}") from None
        return text if _ID.match(text) else None

    def tags(self) -> Iterator[tuple[str, str, str]]:
        """Every tag as ``(type, ref, id)``; unreadable or malformed tag files are skipped."""
        if not self.tags_dir.is_dir():
            return
        for type_dir in sorted(self.tags_dir.iterdir()):
            if not (type_dir.is_dir() and _TYPE.match(type_dir.name)):
                continue
            for entry in sorted(type_dir.iterdir()):
                if entry.name.startswith("."):
                    continue
                ref = urllib.parse.unquote(entry.name)
                image_id = self.resolve_tag(type_dir.name, ref)
                if image_id:
                    yield type_dir.name, ref, image_id

    def image_ids(self) -> list[str]:
        """Ids that have a metadata file (READY or not)."""
        if not self.root.is_dir():
            return []
        ids = (p.name[:-5] for p in self.root.iterdir() if p.name.endswith(".json"))
        return sorted(i for i in ids if _ID.match(i))


def search_roots(image_path: str, user_image_path: str, home: str | None = None) -> list[Path]:
    """The stores the runtime searches, in order: the caller's per-user store, then the site store.

    The per-user store comes first so that ``shifterimg pull X`` followed by ``shifter --image=X``
    uses what the user just pulled; it only ever holds images the user pulled themselves.
    Stores that do not exist are left out.
    """
    roots: list[Path] = []
    if user_image_path:
        base = home if home is not None else os.path.expanduser("~")
        user = Path(base + user_image_path[1:]) if user_image_path.startswith("~") else Path(user_image_path)
        if user.is_dir():
            roots.append(user)
    site = Path(image_path)
    if site.is_dir() and site not in roots:
        roots.append(site)
    return roots


__all__ = ["READY", "ImageStore", "check_id", "check_type", "quote_ref", "search_roots"]
