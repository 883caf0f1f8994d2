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

from collections.abc import Mapping
from typing import NamedTuple

from shifter.config.site import SiteConfig
from shifter.errors import ContainerError
from shifter.runtime import etc
from shifter.runtime.spec import ContainerSpec, Identity

PHASES = ("namespace", "image", "root", "system", "site", "user", "remount", "enter", "drop", "chdir", "exec")

# Top-level image entries the root tree provides itself instead of binding them in.
ROOT_OWN_ENTRIES = ("etc", "proc", "sys", "dev", "tmp")
# /etc files taken from the host, not the image.
HOST_ETC_FILES = ("hosts", "resolv.conf")
# Host trees every container sees: (source, target, recursive, optional).
SYSTEM_BINDS = (("/proc", "/proc", True, False), ("/sys", "/sys", True, False), ("/dev", "/dev", True, False),
                ("/tmp", "/tmp", True, False), ("/var/tmp", "/var/tmp", True, True))


class EnterNamespaces(NamedTuple):
    """``unshare`` a mount namespace (private propagation), and a user namespace that maps the
    caller's uid and gid to themselves when ``user_ns``."""

    @property
    def phase(self) -> str:
        return "namespace"
    user_ns: bool
    uid: int
    gid: int
    fuse_helper: bool = False


class MountImage(NamedTuple):
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


class MountRootTmpfs(NamedTuple):
    """A fresh tmpfs at ``root`` (host path) that becomes the container's ``/``."""

    @property
    def phase(self) -> str:
        return "root"
    root: str
    options: str = "mode=755,size=64m"


class PopulateRoot(NamedTuple):
    """Bind every top-level entry of ``image`` into ``root`` (symlinks are copied as links),
    except ``skip``."""

    @property
    def phase(self) -> str:
        return "root"
    image: str
    root: str
    skip: tuple[str, ...] = ROOT_OWN_ENTRIES


class BuildEtc(NamedTuple):
    """Copy ``image``'s ``/etc`` into ``root``'s, then write ``files`` (name -> text), copy
    ``host_files`` from the host's ``/etc`` and make ``/etc/mtab`` a link to ``/proc/mounts``."""

    @property
    def phase(self) -> str:
        return "root"
    image: str
    root: str
    files: tuple[tuple[str, str], ...]
    host_files: tuple[str, ...] = HOST_ETC_FILES


class Bind(NamedTuple):
    """Bind host ``source`` onto container path ``target``.

    ``as_user``: open the source with the user's identity (a privileged caller must not lend
    root's access).  ``check_target``: re-apply the user-volume target rules to the path the
    target actually resolves to.  ``create``: make a missing target (a directory or an empty
    file, like the source) where the parent is writable.  ``optional``: skip quietly when the
    source or target does not exist.
    """

    phase: str
    source: str
    target: str
    recursive: bool = False
    read_only: bool = False
    as_user: bool = False
    check_target: bool = False
    create: bool = True
    optional: bool = False
    slave: bool = False


class Remount(NamedTuple):
    """Remount the mount at container path ``target`` nosuid (and nodev, read-only as asked),
    keeping the flags the kernel locked on it."""

    @property
    def phase(self) -> str:
        return "remount"
    target: str
    read_only: bool
    nodev: bool = True
    bind: bool = True


class EnterRoot(NamedTuple):
    """Make ``root`` the process's ``/``: ``pivot`` (pivot_root and detach the host tree) or
    ``chroot`` (for an already-built, shared tree)."""

    @property
    def phase(self) -> str:
        return "enter"
    root: str
    method: str = "pivot"


class DropPrivileges(NamedTuple):
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


class Chdir(NamedTuple):
    """Change to the first of ``candidates`` that is a directory; warn when falling back to ``/``
    although a preferred one was given."""

    @property
    def phase(self) -> str:
        return "chdir"
    candidates: tuple[str, ...]


class Exec(NamedTuple):
    """``execvpe`` the command, PATH looked up inside the container with the container's PATH."""

    @property
    def phase(self) -> str:
        return "exec"
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]


Op = (EnterNamespaces | MountImage | MountRootTmpfs | PopulateRoot | BuildEtc | Bind | Remount | EnterRoot
      | DropPrivileges | Chdir | Exec)


class Plan(NamedTuple):
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
    if spec.privileged and image.user_store:
        # A squashfs the user wrote must never reach the kernel's squashfs driver as root.
        raise ContainerError(f"image {image.ref} comes from your personal image store",
                             hint="run it without privilege, or have it pulled into the site store")
    if not image.squashfs:
        raise ContainerError(f"image {image.ref} has no squashfs file",
                             hint="pull it again with 'shifterimg pull'")
    return [MountImage("loop" if spec.privileged else "squashfuse", image.squashfs, config.loop_mount)]


def tree_ops(spec: ContainerSpec, config: SiteConfig, names: Mapping[int, str],
             site_etc: Mapping[str, str] | None = None) -> list[Op]:
    """Image, root tree, system mounts, volumes and remounts: everything up to entering the root.

    Shared by private containers and by ``shifter-setup`` (which runs it in the host mount
    namespace and stops there).
    """
    ident = spec.identity
    files = etc.generate_etc_files(ident, container_groups(ident, config), names, site_etc)
    root = config.udi_mount
    ops: list[Op] = image_ops(spec, config)
    ops += [MountRootTmpfs(root), PopulateRoot(config.loop_mount, root),
            BuildEtc(config.loop_mount, root, tuple(sorted(files.items())))]
    for source, target, recursive, optional in SYSTEM_BINDS:
        ops.append(Bind("system", source, target, recursive=recursive, optional=optional))
    remounts: list[Op] = []
    for vol in spec.volumes:
        if vol.per_node_cache:
            raise ContainerError(f"volume {vol.target}: perNodeCache is not supported yet",
                                 hint="drop the perNodeCache flag, or use a shared file system directory")
        user = vol.origin == "user"
        ops.append(Bind("user" if user else "site", vol.source, vol.target,
                        recursive=vol.recursive or not user,
                        read_only=vol.read_only, as_user=user and ident.uid != 0 and spec.privileged,
                        check_target=user, slave=vol.slave))
        remounts.append(Remount(vol.target, vol.read_only))
    remounts.append(Remount("/", read_only=not config.mount_udi_root_writable, bind=False))
    return ops + remounts


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
                                     fuse_helper=fuse)]
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


__all__ = ["HOST_ETC_FILES", "PHASES", "ROOT_OWN_ENTRIES", "SYSTEM_BINDS", "Bind", "BuildEtc", "Chdir",
           "DropPrivileges", "EnterNamespaces", "EnterRoot", "Exec", "MountImage", "MountRootTmpfs", "Op",
           "Plan", "PopulateRoot", "Remount", "build_plan", "container_groups", "finish_ops", "image_ops",
           "prepared_entry_plan", "tree_ops", "user_ids"]
