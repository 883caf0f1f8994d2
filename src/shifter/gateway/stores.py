"""Who is asking, and which image store serves them.

The site store (``imagePath``) is used when the caller can write it (root, or the
gateway's service account).  Anyone else gets a per-user store (``userImagePath``,
default ``~/.local/share/shifter/images`` under the caller's home), so a laptop or a
login node works without an admin.  The runtime searches the per-user store first, then
the site store (:func:`shifter.store.layout.search_roots`).

The database: ``databaseUrl`` (default ``sqlite:///<site store>/shifter.db``) belongs to
the site store; a per-user store always keeps its own ``sqlite:///<user store>/shifter.db``.
The blob cache: ``cacheDir`` (default ``<store>/cache``) for the site store, ``<user
store>/cache`` for a per-user store.
"""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

from shifter._record import Record
from shifter.config.site import SiteConfig, expand_user_path
from shifter.store.layout import ImageStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from shifter.store.blobcache import BlobCache


class Caller(Record):
    """The user on whose behalf the service acts (the CLI's own process, or a munge-authenticated client)."""

    uid: int
    gid: int
    username: str
    home: str
    groups: tuple[int, ...] = ()

    @classmethod
    def current(cls) -> Caller:
        """The user running this process."""
        uid = os.getuid()
        try:
            entry = pwd.getpwuid(uid)
            name, home = entry.pw_name, entry.pw_dir
        except KeyError:
            name, home = str(uid), os.environ.get("HOME", "/")
        return cls(uid, os.getgid(), name, os.environ.get("HOME") or home, tuple(os.getgroups()))

    @classmethod
    def for_uid(cls, uid: int) -> Caller:
        """A caller looked up by uid (the REST service, after munge authentication)."""
        entry = pwd.getpwuid(uid)
        groups = tuple(g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem)
        return cls(uid, entry.pw_gid, entry.pw_name, entry.pw_dir, (entry.pw_gid, *groups))

    def is_admin(self, config: SiteConfig) -> bool:
        """Listed in ``gatewayAdmins`` by name (or uid 0 when ``root`` is listed)."""
        return self.username in config.gateway_admins or (self.uid == 0 and "root" in config.gateway_admins)


class StoreChoice(Record):
    """The store a caller works in, with its database URL and blob cache."""

    store: ImageStore
    kind: str  # "site" or "user"
    database_url: str
    cache_dir: str
    cache_max_size: int
    also_search: tuple[ImageStore, ...] = ()  # read-only stores shown by images/lookup

    @property
    def cache(self) -> BlobCache:
        """The store's blob cache (made on use: ``lookup``/``images`` never import it)."""
        from shifter.store.blobcache import BlobCache  # noqa: PLC0415

        return BlobCache(self.cache_dir, self.cache_max_size)


def can_write(path: Path) -> bool:
    """True when this process could create files in ``path`` (or create ``path`` itself)."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def user_store_root(config: SiteConfig, caller: Caller) -> Path:
    return expand_user_path(config.user_image_path, home=caller.home)


def choose_store(config: SiteConfig, caller: Caller, *, site_writable: bool | None = None) -> StoreChoice:
    """The site store if the caller can write it, else the caller's per-user store.

    ``site_writable`` overrides the access check (the REST service always uses the site store).
    """
    site_root = Path(config.image_path)
    writable = can_write(site_root) if site_writable is None else site_writable
    if writable:
        store = ImageStore(site_root, config.cache_dir or None)
        url = config.database_url or f"sqlite:///{store.database_path}"
        return StoreChoice(store, "site", url, str(store.cache_dir), config.cache_max_size)
    store = ImageStore(user_store_root(config, caller))
    url = f"sqlite:///{store.database_path}"
    return StoreChoice(store, "user", url, str(store.cache_dir), config.cache_max_size,
                       also_search=(ImageStore(site_root),))


__all__ = ["Caller", "StoreChoice", "can_write", "choose_store", "user_store_root"]
