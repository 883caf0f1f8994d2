"""Media types of the Docker image format (schema 2) and the OCI image spec."""

from __future__ import annotations

from enum import StrEnum

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"

DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"  # seen in the wild, not in the spec
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_NONDIST_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

MANIFEST_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
CONFIG_TYPES = frozenset({DOCKER_CONFIG, OCI_CONFIG})

# Sent on every manifest request: the registry answers 404 to an OCI manifest without it.
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST])


class Compression(StrEnum):
    """How a layer blob is compressed (the flattener also sniffs magic bytes)."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


LAYER_TYPES: dict[str, Compression] = {
    DOCKER_LAYER_GZIP: Compression.GZIP,
    DOCKER_LAYER_TAR: Compression.NONE,
    DOCKER_FOREIGN_LAYER: Compression.GZIP,
    OCI_LAYER_TAR: Compression.NONE,
    OCI_LAYER_GZIP: Compression.GZIP,
    OCI_LAYER_ZSTD: Compression.ZSTD,
    OCI_NONDIST_TAR: Compression.NONE,
    OCI_NONDIST_GZIP: Compression.GZIP,
    OCI_NONDIST_ZSTD: Compression.ZSTD,
}
FOREIGN_LAYER_TYPES = frozenset({DOCKER_FOREIGN_LAYER, OCI_NONDIST_TAR, OCI_NONDIST_GZIP, OCI_NONDIST_ZSTD})


def layer_compression(media_type: str) -> Compression | None:
    """The compression of a layer media type, or ``None`` if it is not a layer type."""
    return LAYER_TYPES.get(media_type)


def is_foreign_layer(media_type: str) -> bool:
    """Foreign / non-distributable layers may live outside the registry (descriptor ``urls``)."""
    return media_type in FOREIGN_LAYER_TYPES


