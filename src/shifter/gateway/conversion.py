"""Layers to one squashfs file, the way the site's ``squashfsBuilder`` says.

* streamed (default where ``tar2sqfs`` is installed): the layers' final tree is computed from
  their headers and written as one tar straight into ``tar2sqfs`` — no tree on disk;
* tree: flatten into ``.tmp/<id>.tree``, ``mksquashfs`` it, delete the tree (``mksquashfs``, or
  ``auto`` without tar2sqfs, or an image with a directory too big for tar2sqfs).

The seams (``flatten``, ``build``, ``stream``) let tests substitute either half.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from shifter.config.site import SiteConfig
from shifter.convert.squashfs import SquashfsOptions, build_squashfs
from shifter.store import publish
from shifter.store.layout import ImageStore

if TYPE_CHECKING:
    from shifter.unpack.policy import FlattenPolicy

#: ``flatten(layer_paths, dest_dir)``: build the image tree in the empty directory ``dest_dir``.
Flattener = Callable[[Sequence[Path], Path], object]
#: ``build(tree, dest_file) -> size``: write the squashfs.
SquashfsBuilder = Callable[[Path, Path], int]
#: ``stream(layer_paths, dest_file) -> size``: write the squashfs straight from the layers, no
#: tree on disk; None when this image must take the tree path (flatten + build) instead.
StreamBuilder = Callable[[Sequence[Path], Path], "int | None"]
#: ``report(message)``: tell the user (and the database) what conversion is doing now.
Reporter = Callable[[str], None]


def flatten_policy(config: SiteConfig) -> FlattenPolicy:
    """The site's flattening policy (setuid bits, image size and entry limits)."""
    from shifter.unpack.policy import FlattenPolicy  # noqa: PLC0415  (heavy, pull only)
    return FlattenPolicy(keep_setuid=config.keep_setuid, max_image_bytes=config.max_image_size,
                         max_image_entries=config.max_image_entries)


class Converter:
    """Builds ``<store>/.tmp/<id>.squashfs.partial`` from an image's layer blobs."""

    def __init__(self, config: SiteConfig, store: ImageStore, *, flatten: Flattener | None = None,
                 build: SquashfsBuilder | None = None, stream: StreamBuilder | None = None) -> None:
        self.config = config
        self.store = store
        self._flatten = flatten or self._default_flatten
        self._build = build or self._default_build
        # Injected tree seams (tests) mean the tree path; else squashfsBuilder decides.
        self._stream: StreamBuilder | None = stream or (
            self._default_stream if flatten is None and build is None else None)

    def convert(self, image_id: str, layers: Sequence[Path], partial: Path, report: Reporter) -> int:
        """Write the squashfs to ``partial``; returns its size."""
        size = None
        if self._stream is not None:
            report(f"flattening {layers_text(len(layers))} straight into squashfs ({self.config.squashfs_compression})")
            size = self._stream(layers, partial)
        if size is None:
            size = self._via_tree(image_id, layers, partial, report)
        return size

    def _via_tree(self, image_id: str, layers: Sequence[Path], partial: Path, report: Reporter) -> int:
        tree = publish.work_path(self.store, image_id, ".tree")
        report(f"flattening {layers_text(len(layers))}")
        with publish.writing(f"creating {tree}"):
            tree.mkdir(mode=0o700)
        self._flatten(layers, tree)
        report(f"building squashfs ({self.config.squashfs_compression})")
        size = self._build(tree, partial)
        publish.remove_path(tree)
        return size

    def _options(self) -> SquashfsOptions:
        return SquashfsOptions(compression=self.config.squashfs_compression,
                               level=self.config.squashfs_compression_level)

    def _default_flatten(self, layers: Sequence[Path], dest: Path) -> object:
        from shifter.unpack import flatten  # noqa: PLC0415  (heavy, pull only)
        return flatten(layers, dest, flatten_policy(self.config))

    def _default_build(self, tree: Path, dest: Path) -> int:
        return build_squashfs(tree, dest, self._options())

    def _default_stream(self, layers: Sequence[Path], dest: Path) -> int | None:
        """tar2sqfs fed straight from the layers; ``auto``: when tar2sqfs is installed and no
        directory is too big for it.  None: take the tree + mksquashfs path."""
        from shifter.convert import tar2sqfs  # noqa: PLC0415  (heavy, pull only)
        from shifter.unpack.stream import plan_stream, write_tar  # noqa: PLC0415
        builder = self.config.squashfs_builder
        if builder == "mksquashfs" or (builder == "auto" and not tar2sqfs.tar2sqfs_available()):
            return None
        plan = plan_stream(layers, flatten_policy(self.config))
        if builder == "auto" and plan.max_dir_entries > tar2sqfs.MAX_DIR_ENTRIES:
            return None
        return tar2sqfs.build_from_tar(lambda sink: write_tar(plan, layers, sink), dest, self._options())


def layers_text(count: int) -> str:
    """``1 layer``, ``3 layers``."""
    return f"{count} layer" if count == 1 else f"{count} layers"
