"""The container request: everything the runtime needs, as plain data.

``shifter.cli.shifter`` turns argv + environment + site config into a :class:`ContainerSpec`
(pure, unit-tested); ``shifter.runtime.plan`` turns a spec into a mount plan (pure); the
privileged edge in ``shifter.runtime.linux`` executes the plan.  Stdlib only: this module is
on the launch path.
"""

from __future__ import annotations

from shifter._record import Record, field


class Identity(Record):
    """Who the container runs as."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    user: str
    home: str
    shell: str = ""  # the passwd login shell ("" when unknown: SHELL is then not set)


class VolumeSpec(Record):
    """One bind mount into the container (user ``--volume`` or site ``siteFs``)."""

    source: str  # absolute host path (symlinks resolved safely before use)
    target: str  # absolute path inside the container
    read_only: bool = False
    per_node_cache: str = ""  # "size=...[,fs=xfs]" for perNodeCache, else ""
    origin: str = "user"  # "user", "site" or "module:<name>"
    recursive: bool = False  # site "rec" flag
    slave: bool = False  # site "slave" propagation flag


class ExtraBind(Record):
    """A host file or directory a module plugin or a CDI device puts into the container
    (``shifter.runtime.plugins``, ``shifter.runtime.cdi``): site-trusted sources.  ``device``: a
    device node, the only kind of bind that gets no ``nodev``.  A target under ``/opt/udiImage``
    is created in the modules' own tmpfs; any other missing target is created in an exploded
    copy of its directory, never in a host tree (e.g. the host's ``/dev``)."""

    source: str
    target: str
    device: bool = False
    read_only: bool = True
    origin: str = ""  # "module:<name>" or "cdi:<device>", for messages


class ImageInfo(Record):
    """The image to run, as found in a store."""

    kind: str  # "docker", "id" or "local"
    ref: str  # what the user asked for, normalised
    image_id: str  # hex id; "" for local chroots
    squashfs: str  # path to the squashfs file ("" for local)
    local_root: str  # path of a local chroot ("" for images)
    metadata: dict[str, object] = field(default_factory=dict)
    store: str = ""  # root of the store it was found in ("" for local)
    # True when found in the caller's per-user store: the user wrote that squashfs, so the
    # privileged edge must not hand it to the kernel's squashfs driver as root (use squashfuse
    # as the user, or refuse), and must open it with the user's rights.
    user_store: bool = False


class ContainerSpec(Record):
    """A complete, validated request to run one command in one container."""

    image: ImageInfo
    identity: Identity
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # final environment, in order
    cwd: str  # caller's working directory (used if it exists inside)
    workdir: str  # --workdir or the image's WorkingDir ("" if none)
    volumes: tuple[VolumeSpec, ...]  # site + module + user, in mount order
    modules: tuple[str, ...] = ()
    privileged: bool = False  # caller is real root (loop mount) vs user namespace + squashfuse
    run_as_root: bool = False  # root without --user: container as root, no capabilities
    # Directories to chdir to inside the container, first that exists wins; "/" (with a
    # warning) if none does.  Without --workdir: (cwd, image WorkingDir); with --workdir=P: (P,).
    chdir_candidates: tuple[str, ...] = ()
    # Names in ``env`` that steer the dynamic loader or the Python launcher (LD_PRELOAD,
    # LD_LIBRARY_PATH, GLIBC_TUNABLES, PYTHON*, ...).  They go into the container for the final
    # execve only; no privileged step may ever run with ``env``: privileged helpers run with
    # shifter.runtime.environment.PRIVILEGED_ENV.
    unsafe_env: tuple[str, ...] = ()
    dropped_env: tuple[str, ...] = ()  # invalid names dropped from the caller's env / image ENV
    extra_binds: tuple[ExtraBind, ...] = ()  # module plugins', then CDI devices', in order
    devices: tuple[str, ...] = ()  # --device=vendor/class=name, as asked
    cdi_hooks: tuple[tuple[str, ...], ...] = ()  # CDI createContainer hooks (argv), run like roothooks
    writable_tmpfs: bool = False  # --writable-tmpfs: an overlay with a tmpfs upper layer over the image
    abi_checks: tuple[tuple[str, str], ...] = ()  # (module, host MPI library): checked against the image
    warnings: tuple[str, ...] = ()  # said to the user at launch (e.g. a plugin that found nothing to do)
