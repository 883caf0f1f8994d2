"""The container as data: a :class:`ContainerSpec` becomes an ordered list of setup operations.

Pure (no system calls): unit tests check the whole plan.  ``shifter.runtime.linux.executor``
carries the operations out, one small function per kind, and re-checks every path at the
moment it acts.  The order is the fixed start sequence (``PHASES``)::

    namespace -> image -> root tree (tmpfs, image entries, /etc) -> /proc /sys /dev /tmp /var/tmp
    -> site and module mounts -> user volumes -> remount -> pivot_root -> drop privileges -> chdir -> exec

Host paths (``loopMount``, ``udiMount``, volume sources) and container paths (mount targets,
working directory) are kept apart: a field named ``target`` or ``path`` is a container path,
always absolute and normalised.
"""

from __future__ import annotations

from shifter._record import Record
from shifter.config.site import SiteConfig, paths_overlap
from shifter.errors import ContainerError, VolumeError
from shifter.runtime import etc
from shifter.runtime.spec import ContainerSpec, Identity, VolumeSpec

TYPE_CHECKING = False  # typing and collections cost launch time: annotations only
if TYPE_CHECKING:
    from collections.abc import Mapping

PHASES = ("namespace", "image", "root", "system", "site", "user", "remount", "enter", "drop", "chdir", "hook",
          "exec")

# Top-level image entries the root tree provides itself instead of binding them in.
ROOT_OWN_ENTRIES = ("etc", "proc", "sys", "dev", "tmp")
# /etc files taken from the host, not the image.
HOST_ETC_FILES = ("hosts", "resolv.conf")
# Mount flags of the bound trees (every mount in them, recursively; docs/runtime.md "Mount flags").
VOLUME_FLAGS = ("nosuid", "nodev")
KERNEL_FS_FLAGS = ("nosuid", "nodev", "noexec")
DEV_FLAGS = ("nosuid", "nodev", "noexec")  # but device nodes work on /dev itself and devpts (Bind.devices)
# Host trees every container sees, always bound recursively: (source, target, optional, flags, devices).
SYSTEM_BINDS = (("/proc", "/proc", False, KERNEL_FS_FLAGS, False), ("/sys", "/sys", False, KERNEL_FS_FLAGS, False),
                ("/dev", "/dev", False, DEV_FLAGS, True), ("/tmp", "/tmp", False, VOLUME_FLAGS, False),
                ("/var/tmp", "/var/tmp", True, VOLUME_FLAGS, False))
# Where modules' files go (NERSC's udiImage): a tmpfs of the container's own, read-only once built.
MODULES_ROOT = "/opt/udiImage"
MODULES_TMPFS_SIZE = "256m"


# Operations are frozen records (shifter._record), not typing.NamedTuple: typing and the
# namedtuple machinery cost milliseconds on every launch.
class EnterNamespaces(Record):
    """``unshare`` a mount namespace, and a user namespace that maps the caller's uid and gid to
    themselves when ``user_ns``.  ``fuse_helper``: fork the squashfuse helper first (it must
    live outside the container's mount namespace).  ``propagation``: ``private`` (nothing flows
    in or out), or ``slave`` when a site volume asks for host mount events (every other bind is
    then made private one by one)."""

    @property
    def phase(self) -> str:
        return "namespace"
    user_ns: bool
    uid: int
    gid: int
    fuse_helper: bool = False
    propagation: str = "private"


class MountImage(Record):
    """Mount the image at ``mountpoint`` (host path): ``loop`` (kernel squashfs on an autoclear
    loop device), ``squashfuse`` (a FUSE daemon outside the container's mount namespace) or
    ``bind`` (a local chroot directory).  Always read-only, nosuid, nodev."""

    @property
    def phase(self) -> str:
        return "image"
    method: str
    source: str
    mountpoint: str
    helper: str = "squashfuse"
    # squashfuse run by root as another user: the deadline on it (fuseTimeout) and that user's
    # name (for the error).
    timeout: float = 30.0
    owner: str = ""


class WritableOverlay(Record):
    """``--writable-tmpfs``: an overlay over the image at ``mountpoint`` (host path, the image's
    mount point) whose upper layer is a fresh tmpfs of at most ``size`` bytes: the container's
    tree is writable (as file modes allow) and every change is gone with the mount namespace."""

    @property
    def phase(self) -> str:
        return "image"
    mountpoint: str
    size: int


class MountRootTmpfs(Record):
    """A fresh tmpfs at ``root`` (host path) that becomes the container's ``/``.

    ``only_for``: a uid (>= 0) for a tree built in the *host* mount namespace (``shifter-setup``):
    the root is then closed to everyone but root and that user (``options`` give it mode 0700 and
    the executor adds a POSIX ACL entry granting the user r-x), since every path into the tree
    (volumes, perNodeCache, the image) goes through it."""

    @property
    def phase(self) -> str:
        return "root"
    root: str
    options: str = "mode=755,size=64m"
    only_for: int = -1


class PopulateRoot(Record):
    """Bind every top-level entry of ``image`` into ``root`` (symlinks are copied as links),
    except ``skip``."""

    @property
    def phase(self) -> str:
        return "root"
    image: str
    root: str
    skip: tuple[str, ...] = ROOT_OWN_ENTRIES


class BuildEtc(Record):
    """Copy ``image``'s ``/etc`` into ``root``'s, then write ``files`` (name -> text), copy
    ``host_files`` from the host's ``/etc`` and make ``/etc/mtab`` a link to ``/proc/mounts``."""

    @property
    def phase(self) -> str:
        return "root"
    image: str
    root: str
    files: tuple[tuple[str, str], ...]
    host_files: tuple[str, ...] = HOST_ETC_FILES


class Bind(Record):
    """Bind host ``source`` onto container path ``target``: always its whole tree (the mounts below
    it too: a bind without them would show files those mounts hide), every mount of it ``flags``
    (``nosuid``, ``nodev``, ``noexec``) and read-only when ``read_only``, set on the detached
    clone before it is attached.  ``devices``: ``nodev`` is then taken off again on the top mount
    and the ``devpts`` mounts below it, so that device nodes work there (``/dev``).

    ``as_user``: open the source with the user's identity (a privileged caller must not lend
    root's access).  ``check_target``: re-apply the user-volume target rules to the path the
    target actually resolves to.  ``create``: make a missing target (a directory or an empty
    file, like the source): on the root tmpfs directly, elsewhere with the user's rights, and
    where that is refused (the read-only image) the directory is first "exploded" into a tmpfs
    holding binds of its entries (see ``linux.targets``).
    ``optional``: skip quietly when the source or target does not exist.  ``slave``: receive
    host mount events (site flag); ``private``: make the bind private explicitly (needed when
    the namespace's root propagation is ``slave``).
    """

    phase: str
    source: str
    target: str
    read_only: bool = False
    as_user: bool = False
    check_target: bool = False
    create: bool = True
    optional: bool = False
    slave: bool = False
    private: bool = False
    flags: tuple[str, ...] = VOLUME_FLAGS
    devices: bool = False


class MountCache(Record):
    """A fresh per-node cache file system (``perNodeCache``) at container path ``target``,
    owned by ``uid``/``gid`` and gone with the container.

    ``method``: ``loop`` (privileged: a sparse backing file in host directory ``backing_dir``,
    unlinked at once, formatted ``fs`` and mounted from an autoclear loop device) or ``tmpfs``
    (unprivileged: a tmpfs of ``size`` bytes in the user's mount namespace).  ``fs``: ``xfs``,
    ``ext4`` or ``auto``.  ``check_target`` as for :class:`Bind`.
    """

    phase: str
    target: str
    size: int
    method: str
    fs: str = "auto"
    backing_dir: str = "/var/tmp"
    uid: int = 0
    gid: int = 0
    check_target: bool = True


class ModuleTmpfs(Record):
    """A fresh tmpfs at container path ``target`` (``/opt/udiImage``) for the modules' files
    (``copyPath`` copies, plugin binds); nosuid, nodev, read-only after the remount phase."""

    @property
    def phase(self) -> str:
        return "site"
    target: str = MODULES_ROOT
    size: str = MODULES_TMPFS_SIZE


class CopyTree(Record):
    """Copy host directory ``source`` (a module's ``copyPath``, site-trusted) to container path
    ``target`` in the :class:`ModuleTmpfs`: links as links, no special files, no set-id bits."""

    @property
    def phase(self) -> str:
        return "site"
    source: str
    target: str


class BindExtra(Record):
    """Bind a plugin's or a CDI device's host path (``spec.ExtraBind``) into the container."""

    @property
    def phase(self) -> str:
        return "site"
    source: str
    target: str
    device: bool = False
    read_only: bool = True
    origin: str = ""


class CheckMpiAbi(Record):
    """The mpich plugin's ABI check: the image's MPICH-ABI library (found in the container root's
    library directories) against ``host_library`` (``plugins.check_abi``)."""

    @property
    def phase(self) -> str:
        return "site"
    module: str
    host_library: str


class RootHook(Record):
    """A module's ``roothook`` (or a CDI hook): ``argv`` run as root while the container is built,
    not chrooted, with the working directory the container's root (the fd the tree was built
    through) and a fixed environment ``env``; never the user's.  Its output goes to stderr; a
    non-zero exit aborts the launch.  ``skip``: unprivileged mode, only say it is skipped."""

    @property
    def phase(self) -> str:
        return "site"
    what: str  # "module 'x' roothook"
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    skip: bool = False


class UserHook(Record):
    """A module's ``userhook``: ``argv`` run inside the container as the user (after the privilege
    drop, so with ``no_new_privs``: a set-id binary cannot give it root), in the command's working
    directory and environment plus ``SHIFTER_MODULE``, just before the command.  A non-zero exit
    aborts the launch with the last line the hook printed."""

    @property
    def phase(self) -> str:
        return "hook"
    what: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]


class Remount(Record):
    """After every mount is made: ``nosuid`` (and ``nodev``) again on every mount of the tree at
    container path ``target`` (what was mounted into it since included), read-only on its own
    mounts as asked (a writable volume nested in it stays writable).  ``bind=False`` (the root
    tmpfs): that one mount only.  Flags the kernel locked stay."""

    @property
    def phase(self) -> str:
        return "remount"
    target: str
    read_only: bool
    nodev: bool = True
    bind: bool = True


class EnterRoot(Record):
    """Make ``root`` the process's ``/``: ``pivot`` (pivot_root and detach the host tree) or
    ``chroot`` (for an already-built, shared tree)."""

    @property
    def phase(self) -> str:
        return "enter"
    root: str
    method: str = "pivot"


class DropPrivileges(Record):
    """Supplementary groups (when ``set_groups``), ``setresgid``, ``setresuid``, then empty the
    bounding, ambient, inheritable, permitted and effective capability sets and set
    ``PR_SET_NO_NEW_PRIVS``."""

    @property
    def phase(self) -> str:
        return "drop"
    uid: int
    gid: int
    groups: tuple[int, ...]
    set_groups: bool


class Chdir(Record):
    """Change to the first of ``candidates`` that is a directory; warn when falling back to ``/``
    although a preferred one was given."""

    @property
    def phase(self) -> str:
        return "chdir"
    candidates: tuple[str, ...]


class Exec(Record):
    """``execvpe`` the command, PATH looked up inside the container with the container's PATH."""

    @property
    def phase(self) -> str:
        return "exec"
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]


Op = (EnterNamespaces | MountImage | WritableOverlay | MountRootTmpfs | PopulateRoot | BuildEtc | Bind | MountCache
      | ModuleTmpfs | CopyTree | BindExtra | CheckMpiAbi | RootHook | Remount | EnterRoot | DropPrivileges | Chdir
      | UserHook | Exec)


class Plan(Record):
    """An ordered list of operations; ``build`` is the part shared with prepared containers."""

    ops: tuple[Op, ...]
    user: tuple[int, int, tuple[int, ...]] = (0, 0, ())  # uid, gid, groups of the container user

    def phases(self) -> list[str]:
        """The phase of each operation, in order (tests use it to check the sequence)."""
        return [op.phase for op in self.ops]


def container_groups(identity: Identity, config: SiteConfig) -> tuple[int, ...]:
    """The groups the container gets (see :func:`shifter.runtime.etc.filter_groups`)."""
    if identity.uid == 0:
        return ()
    return etc.filter_groups(identity.gid, identity.groups, config.max_group_count)


def image_ops(spec: ContainerSpec, config: SiteConfig) -> list[Op]:
    """How the image is mounted at ``loopMount`` in this mode."""
    image = spec.image
    if image.kind == "local":
        if not config.allow_local_chroot:
            raise ContainerError("local chroots are not allowed on this system",
                                 hint="ask your site to set allowLocalChroot=1, or use a docker image")
        return [MountImage("bind", image.local_root, config.loop_mount)]
    if not image.squashfs:
        raise ContainerError(f"image {image.ref} has no squashfs file",
                             hint="pull it again with 'shifterimg pull'")
    # A squashfs the user wrote (per-user store) never reaches the kernel's squashfs driver as
    # root: it is served by squashfuse, which the executor runs with the user's identity.
    kernel = spec.privileged and not image.user_store
    if kernel:
        return [MountImage("loop", image.squashfs, config.loop_mount)]
    return [MountImage("squashfuse", image.squashfs, config.loop_mount, timeout=config.fuse_timeout,
                       owner=spec.identity.user)]


def tree_ops(spec: ContainerSpec, config: SiteConfig, names: Mapping[int, str],
             site_etc: Mapping[str, str] | None = None, *, prepared: bool = False) -> list[Op]:
    """Image, root tree, system mounts, volumes and remounts: everything up to entering the root.

    Shared by private containers and by ``shifter-setup`` (``prepared``: it runs them in the host
    mount namespace and stops there; the root is then closed to other users).
    """
    ident = spec.identity
    files = etc.generate_etc_files(ident, container_groups(ident, config), names, site_etc)
    root = config.udi_mount
    ops: list[Op] = image_ops(spec, config)
    if spec.writable_tmpfs:
        ops.append(WritableOverlay(config.loop_mount, config.writable_tmpfs_size))
    root_op = MountRootTmpfs(root, "mode=700,size=64m", only_for=ident.uid) if prepared else MountRootTmpfs(root)
    ops += [root_op, PopulateRoot(config.loop_mount, root),
            BuildEtc(config.loop_mount, root, tuple(sorted(files.items())))]
    private = root_propagation(spec) == "slave"
    for source, target, optional, flags, devices in SYSTEM_BINDS:
        ops.append(Bind("system", source, target, optional=optional, private=private, flags=flags, devices=devices))
    remounts: list[Op] = []
    module_ops, hooks = module_tree_ops(spec, config)
    ops += module_ops
    remounts += [Remount(op.target, read_only=True) for op in module_ops if isinstance(op, ModuleTmpfs)]
    remounts += [Remount(op.target, op.read_only, nodev=not op.device) for op in module_ops
                 if isinstance(op, BindExtra) and not op.target.startswith(MODULES_ROOT + "/")]
    for vol in spec.volumes:
        user = vol.origin == "user"
        if user and hooks:  # root's hooks see the site's and the modules' mounts, never the user's
            ops += hooks
            hooks = []
        if vol.per_node_cache:
            ops.append(cache_op(spec, config, vol))
        else:
            if user:
                check_not_setup_tree(vol.source, config)
            # Always the whole tree (the site flag "rec" is implied): see Bind.
            ops.append(Bind("user" if user else "site", vol.source, vol.target,
                            read_only=vol.read_only, as_user=user and ident.uid != 0 and spec.privileged,
                            check_target=user, slave=vol.slave, private=private and not vol.slave))
        remounts.append(Remount(vol.target, vol.read_only))
    remounts.append(Remount("/", read_only=not config.mount_udi_root_writable, bind=False))
    return ops + hooks + remounts


def module_tree_ops(spec: ContainerSpec, config: SiteConfig) -> tuple[list[Op], list[Op]]:
    """The modules' build steps, in module order: their tmpfs, ``copyPath`` copies and plugin/CDI
    binds (before the volumes); and the roothooks and CDI hooks (run before the user's volumes)."""
    from shifter.runtime.environment import PRIVILEGED_ENV  # noqa: PLC0415

    modules = [config.module(name) for name in spec.modules]
    ops: list[Op] = [CheckMpiAbi(name, library) for name, library in spec.abi_checks]
    if any(m.copy_path for m in modules) or any(b.target.startswith(MODULES_ROOT + "/") for b in spec.extra_binds):
        ops.append(ModuleTmpfs())
    ops += [CopyTree(m.copy_path, f"{MODULES_ROOT}/modules/{m.name}") for m in modules if m.copy_path]
    ops += [BindExtra(b.source, b.target, b.device, b.read_only, b.origin) for b in spec.extra_binds]
    ident = spec.identity
    base = (*PRIVILEGED_ENV, ("SHIFTER_UID", str(ident.uid)), ("SHIFTER_GID", str(ident.gid)))
    hooks: list[Op] = []
    for module in modules:
        if not module.roothook:
            continue
        if not spec.privileged and config.unprivileged_roothook == "refuse":
            raise ContainerError(f"module '{module.name}' has a roothook, which cannot run in unprivileged mode",
                                 hint="load the module in a privileged launch (e.g. through the batch system), "
                                      "or choose other modules")
        env = (*base, ("SHIFTER_MODULE", module.name),
               ("SHIFTER_MODULE_DIR", f"{MODULES_ROOT[1:]}/modules/{module.name}"))
        hooks.append(RootHook(f"module '{module.name}' roothook", tuple(module.roothook.split()), env,
                              skip=not spec.privileged))
    hooks += [RootHook(f"CDI hook {argv[0]}", argv, base) for argv in spec.cdi_hooks]
    return ops, hooks


def user_hook_ops(spec: ContainerSpec, config: SiteConfig) -> list[Op]:
    """The selected modules' userhooks, in module order."""
    ops: list[Op] = []
    for name in spec.modules:
        module = config.module(name)
        if module.userhook:
            env = (*((k, v) for k, v in spec.env if k != "SHIFTER_MODULE"), ("SHIFTER_MODULE", name))
            ops.append(UserHook(f"module '{name}' userhook", tuple(module.userhook.split()), env))
    return ops


def check_not_setup_tree(source: str, config: SiteConfig) -> None:
    """A user volume may not bind ``udiMount`` or ``loopMount`` (nor lie in them): the tree being
    built would show up inside itself.  (Site trees: ``config.site.check_mount_dirs``.)  The
    executor checks again where the opened source really is (a symlink may lead there)."""
    for key, path in (("udiMount", config.udi_mount), ("loopMount", config.loop_mount)):
        if paths_overlap(source, path):
            raise VolumeError(f"volume source {source} overlaps the site's {key} {path}, where the container "
                              "is built", hint="bind a directory that does not contain the container's own tree")


def root_propagation(spec: ContainerSpec) -> str:
    """``slave`` when a volume asks for host mount events, else ``private``.

    A slave bind needs a source that is still a slave of the host's peer group when it is
    bound; making the whole new namespace private first would cut that link.  So the root
    becomes a slave (host events flow in, nothing flows out) and every other bind is then
    made private explicitly.
    """
    return "slave" if any(vol.slave for vol in spec.volumes) else "private"


def cache_op(spec: ContainerSpec, config: SiteConfig, vol: VolumeSpec) -> MountCache:
    """The :class:`MountCache` for a ``perNodeCache`` volume (its source is not used)."""
    from shifter.runtime.volumes import parse_per_node_cache  # noqa: PLC0415

    cache = parse_per_node_cache(vol.per_node_cache)
    limit = config.per_node_cache_size_limit
    if limit and cache.size > limit:
        raise VolumeError(f"volume {vol.target}: perNodeCache size {cache.size} bytes is over the site's "
                          f"limit of {limit} bytes", hint="ask for a smaller size=")
    user = vol.origin == "user"
    return MountCache("user" if user else "site", vol.target, cache.size,
                      "loop" if spec.privileged else "tmpfs", fs=cache.fs,
                      backing_dir=config.per_node_cache_path, uid=spec.identity.uid, gid=spec.identity.gid,
                      check_target=user)


def build_plan(spec: ContainerSpec, config: SiteConfig, names: Mapping[int, str] | None = None,
               site_etc: Mapping[str, str] | None = None) -> Plan:
    """The complete plan for a private container (see the module docstring)."""
    ident = spec.identity
    if not spec.argv:
        raise ContainerError("no command to run", hint="give a command, or an image with an entrypoint/CMD")
    if not spec.privileged and ident.uid == 0 and not spec.run_as_root:
        raise ContainerError("unprivileged mode cannot run as uid 0")
    tree = tree_ops(spec, config, names or {}, site_etc)
    fuse = any(isinstance(op, MountImage) and op.method == "squashfuse" for op in tree)
    ops: list[Op] = [EnterNamespaces(user_ns=not spec.privileged, uid=ident.uid, gid=ident.gid,
                                     fuse_helper=fuse, propagation=root_propagation(spec))]
    ops += tree + finish_ops(spec, config, EnterRoot(config.udi_mount, "pivot"))
    return Plan(tuple(ops), user_ids(spec, config))


def finish_ops(spec: ContainerSpec, config: SiteConfig, enter: EnterRoot) -> list[Op]:
    """Enter the root, drop privileges, chdir and exec."""
    ident = spec.identity
    wanted = spec.chdir_candidates or (spec.cwd, spec.workdir)
    candidates = tuple(path for path in (*wanted, "/") if path.startswith("/"))
    return [enter,
            DropPrivileges(ident.uid, ident.gid, container_groups(ident, config),
                           set_groups=spec.privileged),
            Chdir(candidates),
            *user_hook_ops(spec, config),
            Exec(spec.argv, spec.env)]


def prepared_entry_plan(spec: ContainerSpec, config: SiteConfig) -> Plan:
    """Enter a tree ``shifter-setup`` built: a user namespace (unless root) and a mount
    namespace, chroot into it, drop, chdir, exec.  No mounts, so no privilege is needed."""
    ident = spec.identity
    ops: list[Op] = [EnterNamespaces(user_ns=not spec.privileged, uid=ident.uid, gid=ident.gid)]
    ops += finish_ops(spec, config, EnterRoot(config.udi_mount, "chroot"))
    return Plan(tuple(ops), user_ids(spec, config))


def user_ids(spec: ContainerSpec, config: SiteConfig) -> tuple[int, int, tuple[int, ...]]:
    """``(uid, gid, groups)`` the container runs as."""
    ident = spec.identity
    return ident.uid, ident.gid, container_groups(ident, config)


__all__ = ["DEV_FLAGS", "HOST_ETC_FILES", "KERNEL_FS_FLAGS", "MODULES_ROOT", "PHASES", "ROOT_OWN_ENTRIES",
           "SYSTEM_BINDS", "VOLUME_FLAGS", "Bind", "BindExtra", "BuildEtc", "Chdir", "CheckMpiAbi", "CopyTree",
           "DropPrivileges", "EnterNamespaces", "EnterRoot", "Exec", "ModuleTmpfs", "MountCache", "MountImage",
           "MountRootTmpfs", "Op", "Plan", "PopulateRoot", "Remount", "RootHook", "UserHook", "WritableOverlay",
           "build_plan", "cache_op", "check_not_setup_tree", "container_groups", "finish_ops", "image_ops",
           "module_tree_ops", "prepared_entry_plan", "root_propagation", "tree_ops", "user_hook_ops", "user_ids"]
