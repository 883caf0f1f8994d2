"""Read side of the image store: where files live and what counts as READY.

Imported on the ``shifter`` launch path, so it uses the standard library only, and not even
``json``, ``re``, ``urllib`` or ``pathlib`` at import time (the runtime uses the ``str`` methods:
``root_dir``, ``squashfs_file``...; the ``Path`` API stays for everyone else).  See
``docs/internals.md`` ("The image store") for the layout:

    <root>/<id>.squashfs  <root>/<id>.json  <root>/tags/<type>/<quoted ref>
    <root>/.tmp/  <root>/.locks/  <root>/shifter.db  <root>/cache/

An image id is the 64-hex-digit manifest digest; every path built here validates it
first, so a hostile id can never escape the store root.
"""

from __future__ import annotations

import errno
import os
import stat

from shifter._fastjson import loads as _json_loads
from shifter.errors import AccessDeniedError, StoreError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

READY = "READY"
_HEX = frozenset("0123456789abcdef")
_TYPE_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz")
_TYPE_CHARS = _TYPE_FIRST | frozenset("0123456789_-")
# quote(ref, safe=""): these bytes stay, every other byte of the UTF-8 encoding becomes %XX.
_QUOTE_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


#: Upper bounds for the small files the runtime reads (a store may be the user's: hostile).
MAX_METADATA_BYTES = 16 * 1024 * 1024
MAX_TAG_BYTES = 4096


def read_regular(path: str, limit: int) -> bytes:
    """The content of the regular file ``path``, at most ``limit`` bytes.

    A store's files may have been planted by a user (the per-user store, read by root in
    privileged mode): a FIFO must not block us (``O_NONBLOCK``, then only regular files are
    read), a device such as ``/dev/zero`` or a huge file must not exhaust memory (the limit).
    Raises ``OSError`` (``FileNotFoundError`` when missing, ``EINVAL`` for a non-regular file,
    ``EFBIG`` when larger than ``limit``).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", path)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _is_id(text: str) -> bool:
    """``re.match(r"^[0-9a-f]{64}$", text)`` (``$`` also matches before a final newline)."""
    return (len(text) == 64 or (len(text) == 65 and text[64] == "\n")) and _HEX.issuperset(text[:64])


def _is_type(text: str) -> bool:
    """``re.match(r"^[a-z][a-z0-9_-]{0,31}$", text)``."""
    name = text[:-1] if text.endswith("\n") else text
    return 1 <= len(name) <= 32 and name[0] in _TYPE_FIRST and _TYPE_CHARS.issuperset(name)


def _quote(text: str) -> str:
    """``urllib.parse.quote(text, safe="")``."""
    return "".join(chr(byte) if byte in _QUOTE_SAFE else f"%{byte:02X}" for byte in text.encode("utf-8"))


def pure_path(path: str) -> str:
    """``str(pathlib.PurePosixPath(path))``: ``//`` and ``.`` components collapsed, no trailing ``/``."""
    rest = path.lstrip("/")
    slashes = len(path) - len(rest)
    root = "//" if slashes == 2 else "/" if slashes else ""
    return (root + "/".join(part for part in rest.split("/") if part and part != ".")) or "."


def _join(directory: str, name: str) -> str:
    """``str(Path(directory) / name)`` for a normalised ``directory`` and a plain ``name``."""
    if directory == ".":
        return name
    return directory + name if directory.endswith("/") else f"{directory}/{name}"


def check_id(image_id: str) -> str:
    """Return ``image_id`` if it is a 64-hex-digit image id, else raise :class:`StoreError`."""
    if not _is_id(image_id):
        raise StoreError(f"invalid image id {image_id!r}", hint="an image id is 64 lowercase hex digits")
    return image_id


def check_type(image_type: str) -> str:
    """Return ``image_type`` if it is a plausible image type name (``docker``...)."""
    if not _is_type(image_type):
        raise StoreError(f"invalid image type {image_type!r}", hint="use e.g. 'docker'")
    return image_type


def quote_ref(ref: str) -> str:
    """The tag file name of a normalised reference (no ``/``, never ``.`` or ``..``)."""
    name = _quote(ref)
    if not ref or name.startswith(".") or len(name) > 255:
        raise StoreError(f"cannot store a tag for reference {ref!r}", hint="use a shorter, normal image name")
    return name


_UNREADABLE_HINT = "the image store {root} must be readable by its users (directories mode 0755): ask the site admin"


class ImageStore:
    """One image store directory (the site ``imagePath`` or a per-user store)."""

    def __init__(self, root: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> None:
        #: The store directory as a string (``str(self.root)``).
        self.root_dir = pure_path(os.fspath(root))
        self._cache_dir = pure_path(os.fspath(cache_dir)) if cache_dir else _join(self.root_dir, "cache")

    def __repr__(self) -> str:
        return f"ImageStore({self.root_dir!r})"

    @property
    def root(self) -> Path:
        """The store directory."""
        from pathlib import Path  # noqa: PLC0415  (not on the launch path)

        return Path(self.root_dir)

    @property
    def cache_dir(self) -> Path:
        """The blob cache (default ``<root>/cache``)."""
        from pathlib import Path  # noqa: PLC0415

        return Path(self._cache_dir)

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

    # --- the same paths as strings (the launch path) ---------------------------------------
    def squashfs_file(self, image_id: str) -> str:
        """``str(self.squashfs_path(image_id))``."""
        return _join(self.root_dir, f"{check_id(image_id)}.squashfs")

    def metadata_file(self, image_id: str) -> str:
        """``str(self.metadata_path(image_id))``."""
        return _join(self.root_dir, f"{check_id(image_id)}.json")

    def tag_file(self, image_type: str, ref: str) -> str:
        """``str(self.tag_path(image_type, ref))``."""
        return _join(self.root_dir, f"tags/{check_type(image_type)}/{quote_ref(ref)}")

    # --- reads -------------------------------------------------------------------------
    def read_metadata(self, image_id: str) -> dict[str, object]:
        """The parsed ``<id>.json``; :class:`StoreError` when missing or unreadable,
        :class:`AccessDeniedError` when its private image is closed to this user."""
        path = self.metadata_file(image_id)
        try:
            data = _json_loads(read_regular(path, MAX_METADATA_BYTES).decode("utf-8"))
        except FileNotFoundError:
            raise StoreError(f"image {image_id[:12]} has no metadata in {self.root}",
                             hint="pull the image again") from None
        except UnicodeDecodeError:  # its message would quote a byte of the file
            raise StoreError(f"cannot read {path}: not UTF-8", hint="pull the image again") from None
        except PermissionError:  # a private image's files are closed to users not on its list
            raise AccessDeniedError(f"image {image_id[:12]} in {self.root} is private and you may not read it",
                                    hint="ask the image's owner to grant you access") from None
        except OSError as err:
            raise StoreError(f"cannot read {path}: {err.strerror or err}", hint="pull the image again") from None
        except ValueError as err:
            raise StoreError(f"cannot read {path}: {err}", hint="pull the image again") from None
        if not isinstance(data, dict):
            raise StoreError(f"{path} is not a JSON object", hint="pull the image again")
        return data

    def image_files_exist(self, image_id: str) -> bool:
        """Does this store hold any file of ``image_id`` (its metadata or its squashfs)?"""
        return exists(self.metadata_file(image_id)) or exists(self.squashfs_file(image_id))

    def is_ready(self, image_id: str) -> bool:
        """True iff both files exist and the json says READY (the runtime's only test)."""
        try:
            if not is_file(self.squashfs_file(image_id)):
                return False
            return self.read_metadata(image_id).get("status") == READY
        except AccessDeniedError:  # private: the json is only ever written READY (store.publish)
            return True
        except StoreError:
            return False

    def resolve_tag(self, image_type: str, ref: str) -> str | None:
        """The image id a tag points to, or None when the tag does not exist."""
        try:
            data = read_regular(self.tag_file(image_type, ref), MAX_TAG_BYTES)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as err:
            raise StoreError(f"cannot read tag {image_type}:{ref} in {self.root}: {err.strerror or err}") from None
        text = data.decode("ascii", "replace").strip()
        return text if _is_id(text) else None

    def tags(self) -> Iterator[tuple[str, str, str]]:
        """Every tag as ``(type, ref, id)``; unreadable or malformed tag files are skipped."""
        import urllib.parse  # noqa: PLC0415  (not on the launch path)

        for type_dir in self._listing(self.tags_dir):
            if not (_is_type(type_dir.name) and self._is_dir(type_dir)):
                continue
            for entry in self._listing(type_dir):
                if entry.name.startswith("."):
                    continue
                ref = urllib.parse.unquote(entry.name)
                image_id = self.resolve_tag(type_dir.name, ref)
                if image_id:
                    yield type_dir.name, ref, image_id

    def _is_dir(self, path: Path) -> bool:
        try:
            return stat.S_ISDIR(path.stat().st_mode)
        except FileNotFoundError:
            return False
        except OSError as err:
            raise StoreError(f"cannot read {path}: {err.strerror or err}",
                             hint=_UNREADABLE_HINT.format(root=self.root_dir)) from None

    def image_ids(self) -> list[str]:
        """Ids that have a metadata file (READY or not)."""
        if not is_dir(self.root_dir):
            return []
        try:
            names = os.listdir(self.root_dir)
        except OSError as err:
            raise StoreError(f"cannot list {self.root_dir}: {err.strerror or err}",
                             hint=_UNREADABLE_HINT.format(root=self.root_dir)) from None
        ids = (name[:-5] for name in names if name.endswith(".json"))
        return sorted(i for i in ids if _is_id(i))

    def _listing(self, directory: Path) -> list[Path]:
        """The sorted entries of a directory of this store (none if it does not exist, or is no
        directory); :class:`StoreError` if it cannot be read."""
        try:
            return sorted(directory.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as err:
            raise StoreError(f"cannot list {directory}: {err.strerror or err}",
                             hint=_UNREADABLE_HINT.format(root=self.root_dir)) from None


def search_roots(image_path: str, user_image_path: str, home: str | None = None) -> list[Path]:
    """The stores the runtime searches, in order: the caller's per-user store, then the site store.

    The per-user store comes first so that ``shifterimg pull X`` followed by ``shifter --image=X``
    uses what the user just pulled; it only ever holds images the user pulled themselves.
    Stores that do not exist are left out.
    """
    from pathlib import Path  # noqa: PLC0415  (the launch path uses search_dirs)

    return [Path(root) for root in search_dirs(image_path, user_image_path, home)]


def search_dirs(image_path: str, user_image_path: str, home: str | None = None) -> list[str]:
    """:func:`search_roots` as normalised strings (``str(path)`` of each)."""
    roots: list[str] = []
    if user_image_path:
        base = home if home is not None else os.path.expanduser("~")
        user = pure_path(base + user_image_path[1:] if user_image_path.startswith("~") else user_image_path)
        if is_dir(user):
            roots.append(user)
    site = pure_path(image_path)
    if is_dir(site) and site not in roots:
        roots.append(site)
    return roots


# ``Path.exists()`` / ``is_file()`` / ``is_dir()`` for strings: missing paths (and the errnos
# pathlib ignores) are False, any other error (EACCES...) is raised, as pathlib does.
_IGNORED_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


def _mode(path: str) -> int | None:
    try:
        return os.stat(path).st_mode
    except OSError as err:
        if err.errno not in _IGNORED_ERRNOS:
            raise
        return None
    except ValueError:  # a NUL byte in the path
        return None


def exists(path: str) -> bool:
    """``Path(path).exists()``."""
    return _mode(path) is not None


def is_file(path: str) -> bool:
    """``Path(path).is_file()``."""
    mode = _mode(path)
    return mode is not None and stat.S_ISREG(mode)


def is_dir(path: str) -> bool:
    """``Path(path).is_dir()``."""
    mode = _mode(path)
    return mode is not None and stat.S_ISDIR(mode)


__all__ = ["MAX_METADATA_BYTES", "MAX_TAG_BYTES", "READY", "ImageStore", "check_id", "check_type", "exists",
           "is_dir", "is_file", "pure_path", "quote_ref", "read_regular", "search_dirs", "search_roots"]
