"""The gateway's service layer: pull, import, lookup, list, inspect and remove images.

No HTTP and no SQL here: ``shifterimg`` drives it in-process (the embedded gateway) and
the REST service will drive the same class.  Seams (constructor arguments) for tests:
the repository (database), the registry client, and the conversion seams (flattener, squashfs
builder, streamed builder) passed on to ``gateway.conversion.Converter``.

Pull pipeline (see ``docs/internals.md``)::

    parse ref -> resolve manifest digest (one registry request)
      -> READY in the store?  point the tag, done (no download, no conversion)
      -> take the per-image flock (a concurrent pull of the same image waits here, then
         finds it READY) -> clean stale work of a dead puller -> PULLING: blobs into the
         cache -> CONVERTING: the layers streamed as one tar into tar2sqfs, writing
         .tmp/<id>.squashfs.partial (squashfsBuilder=auto|tar2sqfs; no tree on disk), or
         flatten into .tmp/<id>.tree, mksquashfs, delete the tree (mksquashfs, or auto
         without tar2sqfs) -> publish squashfs, then json
         -> tag file -> READY
    any failure: FAILED with the message, work files removed, tags untouched, re-raised.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from shifter.config.site import SiteConfig
from shifter.convert.metadata import ImageContent, LayerBlob, build_metadata
from shifter.errors import (
    AccessDeniedError,
    ImageNotFoundError,
    ImageNotReadyError,
    ShifterError,
    StoreError,
    UsageError,
)
from shifter.gateway.acl import PUBLIC, ImageAcl
from shifter.gateway.conversion import Converter, Flattener, SquashfsBuilder, StreamBuilder, layers_text
from shifter.gateway.listing import primary_rows, store_rows
from shifter.gateway.models import ImageRecord, Status
from shifter.gateway.progress import NullProgress, ProgressSink
from shifter.gateway.repository import ImageRepository
from shifter.gateway.stores import Caller, StoreChoice, choose_store
from shifter.oci.reference import ImageRef, parse_image_arg
from shifter.store import publish
from shifter.store.blobcache import BlobCache, PrivateBlobCache
from shifter.store.layout import ImageStore
from shifter.store.locks import FileLock

#: ``<store>/.tmp/`` directories of private imports in progress (removed by :meth:`ImageService.recover`).
PRIVATE_IMPORT_PREFIX = "import-"


class Registry(Protocol):
    """What the service needs from :class:`shifter.registry.RegistryClient`."""

    def resolve(self, ref: ImageRef, platform: Any = None) -> Any: ...

    def fetch_blobs(self, ref: ImageRef, descriptors: Sequence[Any], cache: Any,
                    progress: ProgressSink) -> list[Path]: ...


class ImageService:
    """Image operations on one store (plus read-only views of other stores for lookups)."""

    def __init__(self, config: SiteConfig, choice: StoreChoice, repository: ImageRepository, *,
                 registry: Registry | Callable[[], Registry] | None = None,
                 flatten: Flattener | None = None, build: SquashfsBuilder | None = None,
                 stream: StreamBuilder | None = None) -> None:
        self.config = config
        self.choice = choice
        self.store: ImageStore = choice.store
        self.cache: BlobCache = choice.cache
        self.repo = repository
        self._registry_arg = registry
        self._registry: Registry | None = None
        self.converter = Converter(config, self.store, flatten=flatten, build=build, stream=stream)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    @classmethod
    def embedded(cls, config: SiteConfig, caller: Caller | None = None, **seams: Any) -> ImageService:
        """The in-process gateway: the caller's store (site if writable, else per-user) and its DB."""
        choice = choose_store(config, caller or Caller.current())
        publish.ensure_layout(choice.store)
        return cls(config, choice, ImageRepository.from_url(choice.database_url), **seams)

    # --- pull --------------------------------------------------------------------------
    def pull(self, ref_text: str, caller: Caller, progress: ProgressSink | None = None, *,
             acl: ImageAcl | None = None) -> ImageRecord:
        """Pull ``ref_text`` until READY (or raise); returns the image record.

        ``acl``: what the caller asked for: a private list (``shifterimg pull -u/-g``), ``PUBLIC``
        (``--public``), or None.  A new image gets it; with None, a pull that sent the caller's
        registry credentials makes the image private to the caller, any other public.  An
        existing image's list changes only on an explicit request by its owner or an admin
        (:meth:`_settle_acl`).
        """
        progress = progress or NullProgress()
        image_type, ref = self._docker_ref(ref_text, "pull")
        self.recover()
        progress.phase("resolve", f"resolving {ref}")
        registry = self.registry()
        record = self._unchanged(registry, image_type, ref, caller, progress, acl=acl)
        if record is not None:
            return record
        resolved = registry.resolve(ref, self._platform())
        image_id = _resolved_digest(resolved).split(":", 1)[1]
        top = getattr(resolved, "top_digest", None)
        record = self._point_tag_if_ready(image_type, str(ref), image_id, caller, progress, top=top, acl=acl)
        if record is None:
            record = self._share_site_image(image_type, str(ref), image_id, caller, progress, acl=acl)
        if record is not None:
            return record
        new_acl = self._new_image_acl(registry, ref, caller, acl, progress)
        with self._image_lock(image_id, progress):
            record = self._point_tag_if_ready(image_type, str(ref), image_id, caller, progress, top=top,
                                              acl=acl)
            if record is not None:
                return record
            return self._pull_locked(registry, ref, resolved, image_type=image_type, caller=caller,
                                     progress=progress, acl=new_acl)

    def _new_image_acl(self, registry: Registry, ref: ImageRef, caller: Caller, requested: ImageAcl | None,
                       progress: ProgressSink) -> ImageAcl:
        """The ACL of an image this pull creates (see :meth:`pull`)."""
        if requested is not None:
            return requested
        used = getattr(registry, "used_credentials", None)
        if used is None or not used(ref):
            return PUBLIC
        acl = ImageAcl(True, (caller.uid,) if caller.uid else (), ())
        progress.phase("acl", f"your credentials for {ref.registry} were used: the image will be private "
                              f"to {caller.username} (pull with --public, or -u/-g, to share it)")
        return acl

    def _pull_locked(self, registry: Registry, ref: ImageRef, resolved: Any, *, image_type: str,
                     caller: Caller, progress: ProgressSink, acl: ImageAcl = PUBLIC) -> ImageRecord:
        descriptors = list(_resolved_layers(resolved))
        image_id = _resolved_digest(resolved).split(":", 1)[1]
        with self._failure_guard(image_id):
            self._start(image_id, _resolved_digest(resolved), image_type=image_type, source=str(ref),
                        caller=caller, progress=progress)
            total = sum(int(d.size) for d in descriptors)
            message = f"downloading {layers_text(len(descriptors))} ({_mb(total)}) of {ref}"
            self.repo.set_status(image_id, Status.PULLING, message, compressed_size=total)
            progress.phase("pulling", message)
            cache = self._private_cache(image_id) if acl.private else self.cache
            paths = registry.fetch_blobs(ref, descriptors, cache, progress)
            cache.touch(paths)
            content = _content_from_resolved(resolved, paths)
            return self._convert_and_publish(content, image_type, str(ref), caller, progress,
                                             top_digest=getattr(resolved, "top_digest", None), acl=acl)

    def _private_cache(self, image_id: str) -> PrivateBlobCache:
        """Where a private image's blobs go: its own owner-only work directory (never the shared cache)."""
        return PrivateBlobCache(publish.work_path(self.store, image_id, ".blobs"), self.cache)

    # --- import ------------------------------------------------------------------------
    def import_image(self, content: ImageContent, ref_text: str, caller: Caller,
                     progress: ProgressSink | None = None, *, acl: ImageAcl | None = None) -> ImageRecord:
        """Convert an image whose layer blobs are already local (``shifterimg import``).

        ``content.layers[i].path`` must name each blob (e.g. from ``self.cache.ingest``);
        ``content.digest`` is the manifest digest (or, for a docker-archive, any stable
        sha256 the importer derives).  Tagging and states work as for :meth:`pull`.
        """
        progress = progress or NullProgress()
        image_type, ref = self._docker_ref(ref_text, "import")
        image_id = content.image_id
        if any(layer.path is None or not Path(layer.path).is_file() for layer in content.layers):
            raise UsageError("import: every layer needs a local blob file",
                             hint="ingest the layers with ImageService.cache.ingest() first")
        record = self._point_tag_if_ready(image_type, str(ref), image_id, caller, progress, acl=acl)
        if record is not None:
            return record
        with self._image_lock(image_id, progress):
            record = self._point_tag_if_ready(image_type, str(ref), image_id, caller, progress, acl=acl)
            if record is not None:
                return record
            with self._failure_guard(image_id):
                self._start(image_id, content.digest, image_type=image_type, source=str(ref), caller=caller,
                            progress=progress)
                return self._convert_and_publish(content, image_type, str(ref), caller, progress, acl=acl)

    def import_archive(self, path: str | os.PathLike[str], ref_text: str, caller: Caller,
                       progress: ProgressSink | None = None, *, acl: ImageAcl | None = None) -> ImageRecord:
        """Import a docker-archive or OCI-layout tarball as ``ref_text`` (``shifterimg import``).

        The archive's blobs are verified into the blob cache (its temporary files stay under
        the cache's shared imports lock, so :meth:`recover` only removes those of dead imports),
        then :meth:`import_image` converts it.
        """
        from shifter.convert.archive import read_archive  # noqa: PLC0415  (import only)
        progress = progress or NullProgress()
        self._docker_ref(ref_text, "import")
        self.recover()  # as a pull does: also removes the temp files of imports that were killed
        progress.phase("reading", f"verifying {path} into the blob cache")
        names = archive_names(ref_text, self.config.default_image_type)
        with self.cache.importing() as tmp_dir:
            if acl is not None and acl.private:
                # A private image's layers stay out of the shared cache: they go into an owner-only
                # directory that lives (under the imports lock) until the image is converted.
                publish.ensure_layout(self.store)
                private = PrivateBlobCache(Path(tempfile.mkdtemp(prefix=PRIVATE_IMPORT_PREFIX,
                                                                 dir=self.store.tmp_dir)), self.cache)
                try:
                    image = read_archive(path, private, private.root, platform=self._platform(),
                                         progress=progress, names=names, max_bytes=self.config.max_image_size)
                    return self.import_image(image.to_content(), ref_text, caller, progress, acl=acl)
                finally:
                    publish.remove_path(private.root)
            image = read_archive(path, self.cache, tmp_dir, platform=self._platform(), progress=progress,
                                 names=names, max_bytes=self.config.max_image_size)
        return self.import_image(image.to_content(), ref_text, caller, progress, acl=acl)

    # --- the common back half ----------------------------------------------------------
    def _start(self, image_id: str, digest: str, *, image_type: str, source: str, caller: Caller,
               progress: ProgressSink) -> None:
        """Under the image lock: clean what a dead puller left, and record PENDING."""
        existing = self.repo.get(image_id)
        if existing is not None and existing.status.busy:
            progress.phase("recover", f"cleaning up an interrupted pull of {image_id[:12]} "
                                      f"(was {existing.status.value} by {existing.worker or 'unknown'})")
        publish.clean_work(self.store, image_id)
        owner = existing.owner if existing is not None and existing.owner else caller.username
        self.repo.set_status(image_id, Status.PENDING, f"queued by {caller.username}", digest=digest,
                             type=image_type, source=source, owner=owner, worker=self.worker)

    def _unchanged(self, registry: Registry, image_type: str, ref: ImageRef, caller: Caller,
                   progress: ProgressSink, *, acl: ImageAcl | None = None) -> ImageRecord | None:
        """Re-pull of an unchanged tag: one HEAD request shows the registry still has what we have."""
        head = getattr(registry, "head_digest", None)
        found = self.repo.find_tag(image_type, str(ref))
        if head is None or found is None or not found.top_digest:
            return None
        if self.store.resolve_tag(image_type, str(ref)) != found.image_id:
            return None
        if not self.store.is_ready(found.image_id) or head(ref) != found.top_digest:
            return None
        return self._point_tag_if_ready(image_type, str(ref), found.image_id, caller, progress,
                                        top=found.top_digest, acl=acl)

    def _convert_and_publish(self, content: ImageContent, image_type: str, tag: str, caller: Caller,
                             progress: ProgressSink, *, top_digest: str | None = None,
                             acl: ImageAcl | None = None) -> ImageRecord:
        image_id = content.image_id
        partial = publish.work_path(self.store, image_id, ".squashfs.partial")
        layers = [Path(layer.path) for layer in content.layers if layer.path is not None]

        def report(message: str) -> None:
            self.repo.set_status(image_id, Status.CONVERTING, message)
            progress.phase("converting", message)

        size = self.converter.convert(image_id, layers, partial, report)
        progress.phase("publish", f"publishing image {image_id[:12]}")
        metadata = build_metadata(content, image_type=image_type, source=tag, squashfs_size=size,
                                  compression=self.config.squashfs_compression, acl=(acl or PUBLIC).to_json())
        if not publish.publish_image(self.store, image_id, partial, metadata):
            progress.phase("warning", _NO_POSIX_ACL.format(store=self.store.root))
        publish.clean_work(self.store, image_id)  # a private image's blobs go now
        self._tag(image_type, tag, image_id, caller, top_digest)
        record = self.repo.set_status(image_id, Status.READY, "ready", size=size,
                                      created=str(metadata["created"]), pulled_at=_utcnow(),
                                      acl=metadata["acl"])
        self.cache.prune()
        progress.phase("done", f"image {image_id[:12]} is READY as {image_type}:{tag}")
        return record

    def _point_tag_if_ready(self, image_type: str, tag: str, image_id: str, caller: Caller,
                            progress: ProgressSink, *, top: str | None = None,
                            acl: ImageAcl | None = None) -> ImageRecord | None:
        """The fast path: the image is already READY; (re)point the tag and return its record."""
        if not self.store.is_ready(image_id):
            return None
        with publish.tags_lock(self.store):
            if not self.store.is_ready(image_id):  # removed meanwhile
                return None
            record = self.repo.get(image_id)
            if record is None or record.status is not Status.READY:
                self._adopt(image_id, caller)
            self._settle_acl(image_id, caller, acl, progress)  # may refuse: then the tag stays as it was
            publish.set_tag(self.store, image_type, tag, image_id)
            self.repo.set_tag(image_type, tag, image_id, caller.username, top)
        record = self.repo.get(image_id)
        assert record is not None
        progress.phase("done", f"image {image_id[:12]} is READY as {image_type}:{tag}")
        return record

    def _share_site_image(self, image_type: str, tag: str, image_id: str, caller: Caller,
                          progress: ProgressSink, *, acl: ImageAcl | None = None) -> ImageRecord | None:
        """A per-user pull of an image the site store has READY (and the caller may run): point the
        user's tag at the site's image instead of keeping a second copy (docs/internals.md).  The
        runtime, ``lookup`` and ``images`` follow such a tag into the site store; if the site removes
        the image, they say to pull again.  A private pull (``-u``/``-g``) keeps its own copy."""
        if self.choice.kind != "user" or acl is not None:
            return None
        for site in self.choice.also_search:
            if not site.is_ready(image_id):
                continue
            try:
                meta = site.read_metadata(image_id)
            except AccessDeniedError:  # a private image whose files are closed to this user
                continue
            if not ImageAcl.from_json(meta.get("acl")).allows(caller.uid, caller.gid, caller.groups):
                continue
            with publish.tags_lock(self.store):
                publish.set_tag(self.store, image_type, tag, image_id)
                self.repo.remove_tag(image_type, tag)  # the database only knows this store's images
            progress.phase("done", f"image {image_id[:12]} is READY in the site store {site.root}; "
                                   f"{image_type}:{tag} now points at it (no copy made)")
            return ImageRecord(id=image_id, digest=str(meta.get("digest", f"sha256:{image_id}")),
                               type=str(meta.get("type", image_type)), status=Status.READY,
                               status_message=f"in the site store {site.root}", source=str(meta.get("source", "")),
                               size=int(str(meta.get("size", 0))), acl=_acl(meta.get("acl")))
        return None

    def _settle_acl(self, image_id: str, caller: Caller, requested: ImageAcl | None,
                    progress: ProgressSink) -> None:
        """Apply the ACL rules (:mod:`shifter.gateway.acl`) to a READY image; tags lock held.

        Only an explicit request (``requested``: ``-u``/``-g``, or ``--public``) changes the list,
        and only from the image's owner, an admin acting for themself, or in the caller's own
        per-user store; anyone else asking is refused.  A pull that asks nothing leaves the
        list as it is (a second tag of the same digest never makes a private image public).
        """
        current = ImageAcl.from_json(self.store.read_metadata(image_id).get("acl"))
        record = self.repo.get(image_id)
        owner = record.owner if record is not None and record.owner else "unknown"
        if requested is None:
            if current.private and not current.allows(caller.uid, caller.gid, caller.groups):
                progress.phase("warning", f"image {image_id[:12]} is {current.describe()} (owner: {owner}); "
                                          f"{caller.username} is not on its list and cannot run it")
            return
        if requested.same_as(current):
            return
        if self.choice.kind == "user" or owner == caller.username or caller.is_admin(self.config):
            metadata = publish.update_metadata(self.store, image_id, acl=requested.to_json())
            self.repo.set_status(image_id, Status.READY, record.status_message if record else "ready",
                                 acl=requested.to_json())
            if requested.private:
                self._evict_private_layers(metadata)
            progress.phase("acl", f"image {image_id[:12]} is now {requested.describe()}")
            return
        raise AccessDeniedError(f"{caller.username} may not change who can use image {image_id[:12]} "
                                f"(it is {current.describe()}, owner: {owner})",
                                hint="only the image's owner or a gateway admin (gatewayAdmins) can")

    def _evict_private_layers(self, metadata: dict[str, object]) -> None:
        """An image made private: its layers leave the shared blob cache, unless a public image of
        this store has them too (their bytes are readable there anyway).  Tags lock held."""
        layers = _layer_digests(metadata)
        for other in self.store.image_ids():
            if not layers:
                return
            with contextlib.suppress(ShifterError):
                meta = self.store.read_metadata(other)
                if not ImageAcl.from_json(meta.get("acl")).private:
                    layers -= _layer_digests(meta)
        for digest in layers:
            with contextlib.suppress(ShifterError, OSError):
                self.cache.remove(digest)

    def _adopt(self, image_id: str, caller: Caller) -> ImageRecord:
        """Record a READY image the database does not know (e.g. after the DB was lost)."""
        meta = self.store.read_metadata(image_id)
        existing = self.repo.get(image_id)
        owner = existing.owner if existing is not None and existing.owner else caller.username
        return self.repo.set_status(
            image_id, Status.READY, "ready", digest=str(meta.get("digest", f"sha256:{image_id}")),
            type=str(meta.get("type", "docker")), source=str(meta.get("source", "")), owner=owner,
            size=int(str(meta.get("size", 0))), created=str(meta.get("created", "")),
            acl=_acl(meta.get("acl")))

    def _tag(self, image_type: str, tag: str, image_id: str, caller: Caller,
             top_digest: str | None = None) -> None:
        with publish.tags_lock(self.store):
            publish.set_tag(self.store, image_type, tag, image_id)
            self.repo.set_tag(image_type, tag, image_id, caller.username, top_digest)

    def _image_lock(self, image_id: str, progress: ProgressSink) -> _Held:
        """The per-image lock, taken; says so on the progress sink when it has to wait."""
        publish.ensure_layout(self.store)
        lock = publish.image_lock(self.store, image_id)
        if not lock.acquire(blocking=False):
            progress.phase("wait", f"image {image_id[:12]} is being pulled by another process "
                                   f"({lock.holder() or 'unknown'}); waiting for it")
            lock.acquire()
        return _Held(lock)

    def _failure_guard(self, image_id: str) -> _FailureGuard:
        return _FailureGuard(self, image_id)

    def recover(self, *, partials: bool = False) -> list[str]:
        """Clean the work files of pulls whose process died; mark them FAILED.  Returns their ids.

        ``partials``: also delete the blob cache's partial downloads that no process is writing
        (``shifter-gateway recover``; a pull keeps them, to resume them).
        """
        cleaned = publish.recover_stale_work(self.store)
        with contextlib.suppress(StoreError, OSError):  # best effort: a read-only cache is not an error
            self.cache.clean_stale_imports()
            self._clean_stale_private_imports()
            if partials:
                self.cache.clean_partials()
        for record in self.repo.list_images():
            if record.status.busy and self._fail_if_dead(record.id) and record.id not in cleaned:
                cleaned.append(record.id)
        return cleaned

    def _clean_stale_private_imports(self) -> None:
        """Remove the private blob directories of imports that died (no import holds the lock)."""
        if not self.store.tmp_dir.is_dir():
            return
        stale = [e for e in self.store.tmp_dir.iterdir() if e.name.startswith(PRIVATE_IMPORT_PREFIX)]
        if not stale:
            return
        lock = self.cache.imports_lock(shared=False)
        if not lock.acquire(blocking=False):
            return
        try:
            for entry in stale:
                publish.remove_path(entry)
        finally:
            lock.release()

    def settle_dead_pullers(self) -> None:
        """Mark FAILED, at once, the pulls whose process is gone (``kill -9``, a reboot, Ctrl-C on an
        auto-pull), so that ``lookup``/``images``/``inspect`` never tell users to wait for a dead one."""
        for record in self.repo.list_images():
            if record.status.busy:
                self._fail_if_dead(record.id)

    def _fail_if_dead(self, image_id: str) -> bool:
        """Under the image's lock (free: its puller is dead, the kernel dropped the lock), a record
        still PULLING/CONVERTING becomes FAILED and the pull's work files go.  True if it did."""
        lock = publish.image_lock(self.store, image_id)
        if not lock.acquire(blocking=False):
            return False  # a live puller holds it
        try:
            stale = self.repo.get(image_id)
            if stale is None or not stale.status.busy:
                return False
            publish.clean_work(self.store, image_id)
            self.repo.set_status(image_id, Status.FAILED, f"interrupted: the pulling process "
                                                          f"({stale.worker or 'unknown'}) died; pull again")
            return True
        finally:
            lock.release()

    # --- queries -----------------------------------------------------------------------
    def lookup(self, ref_text: str) -> str:
        """The id of a READY image (searching this store, then the read-only ones)."""
        self.settle_dead_pullers()
        store, image_id = self._find(ref_text)
        if store.is_ready(image_id):
            return image_id
        raise self._not_ready(ref_text, image_id)

    def images(self) -> list[dict[str, Any]]:
        """One JSON-able row per tag (and per untagged image) in every store this service sees."""
        self.settle_dead_pullers()
        rows = primary_rows(self.repo.list_images(), self.store, self.choice.kind, self.config.system,
                            elsewhere=self.choice.also_search)
        for other in self.choice.also_search:
            rows += store_rows(other, "site", self.config.system)
        return rows

    def inspect(self, ref_text: str) -> dict[str, Any]:
        """Metadata, tags and status of one image (READY or not)."""
        self.settle_dead_pullers()
        store, image_id = self._find(ref_text, allow_busy=True)
        record = self.repo.get(image_id) if store is self.store else None
        info: dict[str, Any] = {}
        if store.is_ready(image_id) or record is None:  # no record: the files are all there is
            info.update(store.read_metadata(image_id))
        else:
            info.update(record.to_json())
        info["tags"] = sorted(f"{t}:{r}" for t, r, i in store.tags() if i == image_id)
        info["status"] = record.status.value if record is not None else info.get("status", "READY")
        info["status_message"] = record.status_message if record is not None else ""
        info["store"] = str(store.root)
        return info

    # --- remove ------------------------------------------------------------------------
    def remove(self, ref_text: str, caller: Caller) -> list[str]:
        """Drop a tag (``docker:x``) or a whole image (``id:<hex>``); returns what was removed.

        Allowed for the tag's owner, the image's owner and ``gatewayAdmins``.  When the last
        tag of an image goes, its files go too.
        """
        image_type, value = parse_image_arg(ref_text, self.config.default_image_type)
        try:
            return self._remove(image_type, str(value), caller)
        except ImageNotFoundError:
            self._refuse_if_in_other_store(ref_text)
            raise

    def _refuse_if_in_other_store(self, ref_text: str) -> None:
        """A tag ``images`` shows from a store this caller cannot write (the site store, seen from a
        per-user store): say so, instead of "not found"."""
        for other in self.choice.also_search:
            with contextlib.suppress(ImageNotFoundError):
                self._find_in(other, ref_text)
                raise AccessDeniedError(f"image {ref_text} is in the site store {other.root}, which you cannot "
                                        "change", hint="ask a site admin (gatewayAdmins) to remove it")

    def _find_in(self, store: ImageStore, ref_text: str) -> str:
        image_type, value = parse_image_arg(ref_text, self.config.default_image_type)
        image_id = (self._full_id(str(value), store) if image_type == "id"
                    else store.resolve_tag(image_type, str(value)))
        if not image_id:
            raise ImageNotFoundError(f"image {ref_text} is not in {store.root}")
        return image_id

    def _remove(self, image_type: str, value: str, caller: Caller) -> list[str]:
        with publish.tags_lock(self.store):
            if image_type == "id":
                image_id = self._full_id(value, self.store)
                self._check_owner(caller, image_id, tag_owner=None)
                tags = [(t, r) for t, r, i in self.store.tags() if i == image_id]
            else:
                tag = value
                image_id = self._tag_target(image_type, tag)
                found = self.repo.find_tag(image_type, tag)
                self._check_owner(caller, image_id, tag_owner=found.owner if found else None)
                tags = [(image_type, tag)]
            last = image_type == "id" or not any(i == image_id and (t, r) not in tags
                                                 for t, r, i in self.store.tags())
            if not last:
                return [self._drop_tag(t, r) for t, r in tags]
            # Check before touching anything: a refused removal must not have dropped the tags.
            with self._removal_lock(image_id):
                removed = [self._drop_tag(t, r) for t, r in tags]
                self._drop_image(image_id)
                removed.append(f"id:{image_id}")
        return removed

    def _drop_tag(self, image_type: str, ref: str) -> str:
        publish.remove_tag(self.store, image_type, ref)
        self.repo.remove_tag(image_type, ref)
        return f"{image_type}:{ref}"

    def _removal_lock(self, image_id: str) -> _Held:
        """The image lock, taken without waiting: an image being pulled cannot be removed."""
        lock = publish.image_lock(self.store, image_id)
        if not lock.acquire(blocking=False):
            raise ImageNotReadyError(f"image {image_id[:12]} is being pulled right now",
                                     hint="wait for the pull to finish, then remove it")
        return _Held(lock)

    def _drop_image(self, image_id: str) -> None:
        """Delete an image's files and record (image lock held).  A container that already
        mounted the squashfs keeps running: its mount holds the unlinked file (docs/internals.md)."""
        publish.remove_image(self.store, image_id)
        publish.clean_work(self.store, image_id)
        self.repo.delete_image(image_id)

    def _check_owner(self, caller: Caller, image_id: str, tag_owner: str | None) -> None:
        if caller.is_admin(self.config) or self.choice.kind == "user":
            return
        record = self.repo.get(image_id)
        owners = {tag_owner, record.owner if record else None} - {None, ""}
        if caller.username not in owners:
            raise AccessDeniedError(f"{caller.username} may not remove this image (owner: "
                                    f"{', '.join(sorted(o for o in owners if o)) or 'unknown'})",
                                    hint="ask its owner or a gateway admin (gatewayAdmins)")

    # --- helpers -----------------------------------------------------------------------
    def registry(self) -> Registry:
        """The registry client (created on first use: lookups never load httpx)."""
        if self._registry is None:
            arg = self._registry_arg
            if arg is None:
                self._registry = _default_registry(self.config)
            elif callable(arg) and not hasattr(arg, "resolve"):
                self._registry = arg()
            else:
                self._registry = arg  # type: ignore[assignment]
        assert self._registry is not None
        return self._registry

    def _platform(self) -> Any:
        if not self.config.platform:
            return None
        from shifter.oci.platform import Platform  # noqa: PLC0415  (only when configured)
        return Platform.parse(self.config.platform)

    def _docker_ref(self, ref_text: str, verb: str) -> tuple[str, ImageRef]:
        image_type, value = parse_image_arg(ref_text, self.config.default_image_type)
        if image_type != "docker" or not isinstance(value, ImageRef):
            raise UsageError(f"cannot {verb} {ref_text!r}: only docker images can be {verb}ed",
                             hint="write e.g. docker:ubuntu:22.04")
        return image_type, value

    def _stores(self) -> list[ImageStore]:
        return [self.store, *self.choice.also_search]

    def _find(self, ref_text: str, allow_busy: bool = False) -> tuple[ImageStore, str]:
        image_type, value = parse_image_arg(ref_text, self.config.default_image_type)
        for store in self._stores():
            if image_type == "id":
                image_id = self._full_id(str(value), store, missing_ok=True)
            else:
                image_id = store.resolve_tag(image_type, str(value)) or ""
            if image_id:
                return self._holder(store, image_id), image_id
        busy = self._busy_for(image_type, str(value)) if image_type != "id" else None
        if busy is not None:
            if allow_busy:
                return self.store, busy.id
            raise self._not_ready(ref_text, busy.id)
        raise ImageNotFoundError(f"image {ref_text} is not in the image store",
                                 hint=f"pull it first: shifterimg pull {ref_text}")

    def _holder(self, store: ImageStore, image_id: str) -> ImageStore:
        """The store that holds ``image_id``'s files: ``store``, or for a per-user tag that points at
        a site image (:meth:`_share_site_image`), the site store (``store`` if none has them)."""
        if store.image_files_exist(image_id) or self.repo.get(image_id) is not None:
            return store
        return next((other for other in self._stores() if other.image_files_exist(image_id)), store)

    def _busy_for(self, image_type: str, source: str) -> ImageRecord | None:
        matches = [r for r in self.repo.list_images() if r.type == image_type and r.source == source
                   and r.status is not Status.READY]
        return matches[0] if matches else None

    def _not_ready(self, ref_text: str, image_id: str) -> ImageNotReadyError:
        record = self.repo.get(image_id)
        status = f"{record.status.value}: {record.status_message}" if record else "files incomplete"
        hint = ("wait, or run 'shifterimg lookup' again" if record and record.status.busy
                else f"pull it again: shifterimg pull {ref_text}")
        return ImageNotReadyError(f"image {ref_text} is not ready (status {status})", hint=hint)

    def _full_id(self, prefix: str, store: ImageStore, missing_ok: bool = False) -> str:
        known = set(store.image_ids())
        if store is self.store:
            known |= {r.id for r in self.repo.list_images()}
        matches = sorted(i for i in known if i.startswith(prefix))
        if len(matches) > 1:
            raise ImageNotFoundError(f"image id {prefix} is ambiguous", hint="give more hex digits")
        if not matches:
            if missing_ok:
                return ""
            raise ImageNotFoundError(f"no image with id {prefix}", hint="see 'shifterimg images'")
        return matches[0]

    def _tag_target(self, image_type: str, tag: str) -> str:
        image_id = self.store.resolve_tag(image_type, tag)
        found = self.repo.find_tag(image_type, tag)
        if image_id is None and found is not None:
            image_id = found.image_id
        if image_id is None:
            raise ImageNotFoundError(f"image {image_type}:{tag} is not in {self.store.root}",
                                     hint="see 'shifterimg images'")
        return image_id

class _Held:
    """A context manager that releases an already acquired lock."""

    def __init__(self, lock: FileLock) -> None:
        self.lock = lock

    def __enter__(self) -> FileLock:
        return self.lock

    def __exit__(self, *_exc: object) -> None:
        self.lock.release()


class _FailureGuard:
    """On any exception: remove the image's work files, record FAILED, re-raise."""

    def __init__(self, service: ImageService, image_id: str) -> None:
        self.service = service
        self.image_id = image_id

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        if exc is None:
            return
        publish.clean_work(self.service.store, self.image_id)
        if isinstance(exc, ShifterError):
            message = exc.render()
        elif isinstance(exc, KeyboardInterrupt):
            message = "interrupted"
        else:
            message = f"{exc.__class__.__name__}: {exc}"
        with contextlib.suppress(StoreError):  # the original error matters more
            self.service.repo.set_status(self.image_id, Status.FAILED, message)


def archive_names(target: str, default_type: str) -> list[str]:
    """Names that may identify the wanted image inside a multi-image archive."""
    _type, ref = parse_image_arg(target, default_type)
    if not isinstance(ref, ImageRef):
        return [target]
    names = [str(ref), f"{ref.repository}:{ref.tag}", ref.tag or ""]
    if ref.registry == "docker.io":
        names.append(f"{ref.repository.removeprefix('library/')}:{ref.tag}")
    return [n for n in names if n]


def _default_registry(config: SiteConfig) -> Registry:
    # Imported late: lookups and listings must not pay for httpx.
    from shifter.registry.client import RegistryClient  # noqa: PLC0415
    from shifter.registry.credentials import CredentialStore  # noqa: PLC0415
    return RegistryClient(config, CredentialStore())


def _resolved_digest(resolved: Any) -> str:
    for name in ("digest", "manifest_digest"):
        value = getattr(resolved, name, None)
        if isinstance(value, str) and value.startswith("sha256:") and len(value) == 71:
            return value
    raise StoreError("the registry client returned no sha256 manifest digest",
                     hint="this is a bug; please report it")


def _resolved_layers(resolved: Any) -> Sequence[Any]:
    layers = getattr(resolved, "layers", None)
    if layers is None:
        layers = resolved.manifest.layers
    return list(layers)


def _content_from_resolved(resolved: Any, paths: Sequence[Path]) -> ImageContent:
    config = getattr(resolved, "config", None)
    raw = getattr(config, "raw", config) or {}
    config_digest = getattr(resolved, "config_digest", None)
    if config_digest is None:
        config_digest = resolved.manifest.config.digest
    platform = getattr(resolved, "platform", None) or getattr(config, "platform", None)
    plat = ({"os": platform.os, "architecture": platform.architecture, "variant": platform.variant}
            if platform is not None else {})
    layers = [LayerBlob(d.digest, int(d.size), str(getattr(d, "media_type", "")), Path(p))
              for d, p in zip(_resolved_layers(resolved), paths, strict=True)]
    return ImageContent(_resolved_digest(resolved), raw, str(config_digest), layers, plat)


_NO_POSIX_ACL = ("the file system of {store} has no POSIX ACLs: the private image's files are readable by "
                 "their owner only, so listed users can run it only through privileged launches "
                 "(Slurm, shifter --user); see docs/runtime.md, 'Threat model'")


def _layer_digests(metadata: dict[str, object]) -> set[str]:
    layers = metadata.get("layers")
    if not isinstance(layers, list):
        return set()
    return {str(layer["digest"]) for layer in layers if isinstance(layer, dict) and "digest" in layer}


def _acl(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {"private": False, "users": [], "groups": []}


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


__all__ = ["Flattener", "ImageService", "Registry", "SquashfsBuilder", "StreamBuilder", "archive_names"]

