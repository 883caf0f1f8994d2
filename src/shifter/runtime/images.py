"""Find the image to run: ``[type:]tag`` -> :class:`ImageInfo`, from the site and per-user stores.

* ``docker:<ref>`` (or a bare ``<ref>``): the tag file ``tags/docker/<quoted ref>`` in the caller's
  per-user store (``userImagePath``), then in the site store (``imagePath``): a user's own pull
  of a tag wins for that user (``store.layout.search_roots``).
* ``id:<hex>``: a full 64-digit id, or a unique prefix of at least 12 hex digits.
* ``local:/path``: a directory used as the root, only where ``allowLocalChroot`` is set.

An image is usable only when READY (``docs/internals.md``) and, when its ACL is private, only by
the uids/gids it lists (and root).  A docker image that no store has raises
:class:`ImageNotInStoreError`: the CLI may pull it (``autoPull``) and try again.

Stdlib only (plus ``store.layout`` and ``oci.reference``, both light): on the launch path.
"""

from __future__ import annotations

import os

from shifter.config.site import SiteConfig, expand_user_dir
from shifter.errors import (
    AccessDeniedError,
    ImageNotFoundError,
    ImageNotReadyError,
    ImageReferenceError,
    StoreError,
)
from shifter.oci.reference import ImageRef, parse_image_arg
from shifter.runtime.asuser import AsUser
from shifter.runtime.spec import Identity, ImageInfo
from shifter.store.layout import READY, ImageStore, exists, is_dir, is_file, pure_path

TYPE_CHECKING = False  # no typing/pathlib here: this module is on the launch path
if TYPE_CHECKING:
    from collections.abc import Sequence


class ImageNotInStoreError(ImageNotFoundError):
    """A docker image that is in no store.  ``request`` is what ``shifterimg pull`` needs.

    The CLI catches this to pull automatically when the site's ``autoPull`` is on, then calls
    :func:`shifter.runtime.request.build_spec` again.
    """

    pullable = True

    def __init__(self, message: str, hint: str = "", *, request: str = "",
                 identity: Identity | None = None) -> None:
        super().__init__(message, hint)
        self.request = request
        self.identity = identity  # who the container runs as: the pull acts for them


def image_stores(config: SiteConfig, identity: Identity, *,
                 as_user: bool = False) -> list[tuple[ImageStore, bool]]:
    """The existing stores searched, in order, as ``(store, is_user_store)``: the per-user store
    of ``identity`` first, then the site store (the order of ``store.layout.search_roots``).

    An image from the per-user store is marked: privileged mode serves it with squashfuse as the
    user, never with the kernel's squashfs driver.  ``as_user``: root acting for ``identity``;
    the per-user store is then looked at with the user's rights (:class:`AsUser`), and one the
    user cannot reach counts as absent.
    """
    roots: list[tuple[ImageStore, bool]] = []
    user_dir = expand_user_dir(config.user_image_path, identity.home) if config.user_image_path else ""
    if user_dir.startswith("/"):  # a relative per-user path would depend on the caller's cwd: ignore it
        user_dir = pure_path(user_dir)
        try:
            with AsUser(identity, as_user):
                found = is_dir(user_dir)
        except OSError:
            found = False
        if found:
            roots.append((ImageStore(user_dir), True))
    site = pure_path(config.image_path)
    if is_dir(site) and site not in (store.root_dir for store, _ in roots):
        roots.append((ImageStore(site), False))
    return roots


def resolve_image(text: str, config: SiteConfig, identity: Identity, *,
                  default_type: str | None = None, as_user: bool = False) -> ImageInfo:
    """Resolve an ``--image`` argument for ``identity`` (the user the container runs as).

    ``as_user``: the process is root acting for ``identity`` (``shifter --user``); everything
    in the per-user store (a directory the user controls: its tag files and metadata may be
    links to root's files, FIFOs or huge) is then read with the user's rights.
    """
    image_type, value = parse_image_arg(text.strip(), default_type or config.default_image_type)
    if image_type == "local":
        return _resolve_local(str(value), config)
    stores = image_stores(config, identity, as_user=as_user)
    if image_type == "id":
        return _resolve_id(str(value), stores, identity, as_user)
    assert isinstance(value, ImageRef)
    if config.image_gateway:
        return _resolve_via_gateway(value, config, identity)
    return _resolve_docker(value, stores, identity, as_user)


def _resolve_via_gateway(ref: ImageRef, config: SiteConfig, identity: Identity) -> ImageInfo:
    """``imageGateway`` set: the gateway names the image, the system's shared imagePath holds it."""
    from shifter.runtime.gateway_lookup import lookup_id  # noqa: PLC0415  (only with a gateway)

    request = f"docker:{ref}"
    image_id = lookup_id(config, str(ref))
    if image_id is None:
        raise ImageNotInStoreError(f"the image gateway has no READY image {request} for you",
                                   hint=f"pull it with 'shifterimg pull {request}'", request=request,
                                   identity=identity)
    store = ImageStore(pure_path(config.image_path))
    return _load(store, False, image_id, request, identity, kind="docker")


def _resolve_docker(ref: ImageRef, stores: Sequence[tuple[ImageStore, bool]],
                    identity: Identity, as_user: bool = False) -> ImageInfo:
    request = f"docker:{ref}"
    for index, (store, is_user) in enumerate(stores):
        with AsUser(identity, as_user and is_user):
            image_id = _read_tag(store, str(ref))
            if image_id is None and ref.digest:
                candidate = ref.digest.partition(":")[2]
                image_id = candidate if _has_image(store, candidate) else None
            if image_id is not None and (not is_user or _has_image(store, image_id)):
                return _load(store, is_user, image_id, request, identity, kind="docker")
        if image_id is not None:  # a per-user tag pointing at a site image (shifterimg shares it)
            return _load_shared(image_id, stores[index + 1:], request, identity)
    raise ImageNotInStoreError(f"image {request} is not in the image store",
                               hint=f"pull it with 'shifterimg pull {request}'", request=request,
                               identity=identity)


def _load_shared(image_id: str, later: Sequence[tuple[ImageStore, bool]], request: str,
                 identity: Identity) -> ImageInfo:
    """The per-user tag of ``request`` names a site image: load it from the site store (READY,
    and the caller may use it); gone from there, the user must pull again."""
    for store, is_user in later:
        if not is_user and _has_image(store, image_id):
            return _load(store, False, image_id, request, identity, kind="docker")
    raise ImageNotInStoreError(f"image {request} pointed at image {image_id[:12]} of the site store, "
                               "which the site store no longer has",
                               hint=f"pull it again with 'shifterimg pull {request}'", request=request)


def _resolve_id(prefix: str, stores: Sequence[tuple[ImageStore, bool]], identity: Identity,
                as_user: bool = False) -> ImageInfo:
    if len(prefix) == 64:
        return _resolve_full_id(prefix, stores, identity, as_user)
    matches: list[tuple[ImageStore, bool, str]] = []
    seen: set[str] = set()
    for store, is_user in stores:
        with AsUser(identity, as_user and is_user):
            ids = [prefix] if len(prefix) == 64 and _has_image(store, prefix) else \
                [i for i in _list_ids(store) if i.startswith(prefix)]
        for image_id in ids:
            if image_id not in seen:
                seen.add(image_id)
                matches.append((store, is_user, image_id))
    if not matches:
        raise ImageNotFoundError(f"no image with id {prefix} in the image store",
                                 hint="list images with 'shifterimg images'")
    if len(matches) > 1:
        raise ImageReferenceError(f"image id prefix {prefix} is ambiguous: "
                                  + ", ".join(m[2][:16] for m in matches[:5]),
                                  hint="give more hex digits of the id")
    store, is_user, image_id = matches[0]
    with AsUser(identity, as_user and is_user):
        return _load(store, is_user, image_id, f"id:{image_id}", identity, kind="id")


def _resolve_full_id(image_id: str, stores: Sequence[tuple[ImageStore, bool]], identity: Identity,
                     as_user: bool) -> ImageInfo:
    """A full id: the first store holding it, loaded straight away (no ``_has_image`` first: a
    Slurm job's nodes all resolve the job's pinned id at once, and every stat of the shared store
    is a request to its metadata server)."""
    for store, is_user in stores:
        with AsUser(identity, as_user and is_user):
            try:
                return _load(store, is_user, image_id, f"id:{image_id}", identity, kind="id")
            except ImageNotFoundError:  # neither its metadata nor its squashfs is in this store
                continue
    raise ImageNotFoundError(f"no image with id {image_id} in the image store",
                             hint="list images with 'shifterimg images'")


def _resolve_local(path: str, config: SiteConfig) -> ImageInfo:
    if not config.allow_local_chroot:
        raise AccessDeniedError("local images (local:/path) are not allowed on this system",
                                hint="the site must set allowLocalChroot=1 in udiRoot.conf")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts or "\0" in path:
        raise ImageReferenceError(f"local image path {path!r} must not contain '..'",
                                  hint="write local:/absolute/path/to/root")
    root = "/" + "/".join(parts)
    if root == "/":
        raise ImageReferenceError("local:/ would use the host's root as the image",
                                  hint="point local: at a directory that holds an unpacked image")
    if not os.path.isdir(root):
        raise ImageNotFoundError(f"local image {root} is not a directory",
                                 hint="unpack the image there first")
    return ImageInfo(kind="local", ref=f"local:{root}", image_id="", squashfs="", local_root=root)


def _read_tag(store: ImageStore, ref: str) -> str | None:
    try:
        return store.resolve_tag("docker", ref)
    except StoreError:
        return None  # an unreadable tag file in one store must not hide the other store


def _list_ids(store: ImageStore) -> list[str]:
    try:
        return store.image_ids()
    except OSError:
        return []


def _has_image(store: ImageStore, image_id: str) -> bool:
    try:
        return exists(store.metadata_file(image_id)) or exists(store.squashfs_file(image_id))
    except (StoreError, OSError):
        return False


def _load(store: ImageStore, is_user: bool, image_id: str, request: str, identity: Identity,
          *, kind: str) -> ImageInfo:
    """Read one image's metadata and check it is READY and allowed for ``identity``."""
    try:
        return _load_files(store, is_user, image_id, request, identity, kind=kind)
    except OSError as err:  # e.g. a per-user store file that links where the user may not go
        raise StoreError(f"cannot read image {image_id[:12]} in {store.root_dir}: {err.strerror or err}",
                         hint=f"pull it again with 'shifterimg pull {request}'") from None


def _load_files(store: ImageStore, is_user: bool, image_id: str, request: str, identity: Identity,
                *, kind: str) -> ImageInfo:
    squashfs = store.squashfs_file(image_id)
    try:  # read first, look why only if that fails: each stat is a request to a shared store's server
        metadata = store.read_metadata(image_id)
    except StoreError:
        if exists(store.metadata_file(image_id)):
            raise
        if exists(squashfs):
            raise ImageNotReadyError(f"image {request} is not ready (its metadata is missing)",
                                     hint=f"pull it again with 'shifterimg pull {request}'") from None
        if kind == "docker":
            raise ImageNotInStoreError(f"image {request} is not in the image store (stale tag)",
                                       hint=f"pull it with 'shifterimg pull {request}'", request=request,
                                       identity=identity) from None
        raise ImageNotFoundError(f"no image with id {image_id} in the image store") from None
    status = metadata.get("status")
    if status != READY:
        raise ImageNotReadyError(f"image {request} is not ready (status {status})",
                                 hint=f"wait, or run 'shifterimg lookup {request}'")
    if not is_file(squashfs):
        raise ImageNotReadyError(f"image {request} is not ready (its squashfs file is missing)",
                                 hint=f"pull it again with 'shifterimg pull {request}'")
    if metadata.get("id", image_id) != image_id:
        raise StoreError(f"metadata of image {image_id[:12]} in {store.root_dir} names another id",
                         hint="the store is damaged; pull the image again")
    check_access(metadata, identity, request)
    return ImageInfo(kind=kind, ref=request, image_id=image_id, squashfs=squashfs, local_root="",
                     metadata=metadata, store=store.root_dir, user_store=is_user)


def check_access(metadata: dict[str, object], identity: Identity, request: str = "this image") -> None:
    """Enforce the image ACL: a private image is for root and the listed uids/gids only.

    A malformed ``acl`` fails closed (treated as private with nobody listed).
    """
    acl = metadata.get("acl")
    if acl is None:
        return
    if not isinstance(acl, dict):
        acl = {"private": True}
    private = acl.get("private", False)
    if private is False or identity.uid == 0:
        return
    users = _int_set(acl.get("users"))
    groups = _int_set(acl.get("groups"))
    if identity.uid in users or identity.gid in groups or groups.intersection(identity.groups):
        return
    raise AccessDeniedError(f"image {request} is private and {identity.user or identity.uid} may not use it",
                            hint="ask the image's owner to grant you access")


def _int_set(value: object) -> set[int]:
    if not isinstance(value, list):
        return set()
    return {v for v in value if isinstance(v, int) and not isinstance(v, bool)}


__all__ = ["ImageNotInStoreError", "check_access", "image_stores", "resolve_image"]
