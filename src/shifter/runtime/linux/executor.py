"""Carry out a :class:`~shifter.runtime.plan.Plan`: the privileged edge of the runtime.

One small function per operation kind.  Security notes that hold throughout:

* Mount sources and targets are opened once (``O_PATH``) and mounted through
  ``/proc/self/fd/N``: the object we checked is the object the kernel mounts.
* Every mount that is remounted later (volumes, a local chroot image) is made as a detached
  mount first (``open_tree``/``fsmount``) and attached with ``move_mount``; the fd naming the
  new mount is kept (``Context.mounts``) and the remount (nosuid, nodev, ro) goes through
  it.  A path is never looked up again: the user may have swapped a directory of their
  volume for a symlink by then, and the remount would land on another mount.
* Every bind takes the source's whole tree (``AT_RECURSIVE``): a bind without the mounts below
  the source would show the files those mounts hide (the kernel refuses it in a user namespace
  for that reason; as root it must be refused by us).  Its flags go on every mount of the tree
  at once (``mount_setattr(AT_RECURSIVE)``) while the clone is still detached.  Kernels without
  ``mount_setattr`` (< 5.12) refuse a volume with mounts below it rather than leave them
  without nosuid/nodev/ro.
* Container paths are resolved with ``RESOLVE_IN_ROOT`` (see :mod:`.fsutil`), and user
  volume targets are re-checked against the target rules *after* resolution, so a symlink
  inside a volume or the image cannot move a mount onto ``/etc``.
* In privileged mode a user's volume source is opened with the user's effective ids (root
  must not lend its access); in unprivileged mode we are the user already.
* Privileges are dropped after entering the root (chroot/pivot need them) and before exec.
* The process that runs the setup is the process that execs the command: no extra process
  holds the container's namespaces, so they die with the command, also on SIGKILL.  The
  only helper, squashfuse, lives outside the container's mount namespace; it exits when the
  namespace (and with it the FUSE mount) goes away.
* Root never waits for ever on a squashfuse run as the user: a deadline covers the privileged
  phase, and on failure the helper's processes are killed and its connection aborted (see
  :mod:`.fusehelper`).
"""

from __future__ import annotations

import _signal  # the C half of ``signal``: the Python half builds enums (~3 ms per launch)
import errno
import os
import stat
import sys
import warnings  # noqa: F401  (os.execvpe imports it, after chroot, where the host's stdlib is gone)

from shifter.errors import ContainerError, VolumeError
from shifter.runtime import plan as p
from shifter.runtime.linux import fsutil, modexec, mounttree, targets
from shifter.runtime.linux import syscalls as sc

TYPE_CHECKING = False  # typing, collections and dataclasses cost launch time
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

    from shifter.runtime.linux.fusehelper import Helper

    Warn = Callable[[str], None]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
_NEW_FILE = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_IMAGE_FLAGS = sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV
# Plan flag names -> MOUNT_ATTR_* bits -> MS_* bits (for remounts on kernels < 5.12).
_ATTRS = {"nosuid": sc.MOUNT_ATTR_NOSUID, "nodev": sc.MOUNT_ATTR_NODEV, "noexec": sc.MOUNT_ATTR_NOEXEC}
_ATTR_MS = ((sc.MOUNT_ATTR_RDONLY, sc.MS_RDONLY), (sc.MOUNT_ATTR_NOSUID, sc.MS_NOSUID),
            (sc.MOUNT_ATTR_NODEV, sc.MS_NODEV), (sc.MOUNT_ATTR_NOEXEC, sc.MS_NOEXEC))
# statvfs f_flag bits that a remount must keep (the kernel locks them on mounts a user
# namespace inherited; dropping one makes the remount fail with EPERM).
_KEEP_FLAGS = ((os.ST_RDONLY, sc.MS_RDONLY), (os.ST_NOSUID, sc.MS_NOSUID), (os.ST_NODEV, sc.MS_NODEV),
               (os.ST_NOEXEC, sc.MS_NOEXEC), (os.ST_NOATIME, sc.MS_NOATIME),
               (os.ST_NODIRATIME, sc.MS_NODIRATIME), (os.ST_RELATIME, sc.MS_RELATIME))


class ExecError(ContainerError):
    """The command could not be executed (exit 127 when not found, 126 otherwise, like a shell)."""

    def __init__(self, message: str, hint: str = "", code: int = 127) -> None:
        super().__init__(message, hint)
        self.exit_code = code


class Context:
    """State carried between operations (open fds, the FUSE helper)."""

    def __init__(self, warn: Warn, user: tuple[int, int, tuple[int, ...]] = (0, 0, ())) -> None:
        self.warn = warn
        self.user = user
        self.root_fd = -1
        self.fuse_fd = -1
        self.helper: Helper | None = None
        self.fuse_op: p.MountImage | None = None
        # What shifter-setup records for shifter-teardown: the connection, (pid, start time)s.
        self.fuse_connection = -1
        self.fuse_daemons: list[tuple[int, int]] = []
        self.mounted: list[str] = []
        # container target -> fd naming the root of the mount made there (see remount)
        self.mounts: dict[str, int] = {}
        # host paths where the container is built (udiMount, the image): no volume may bind them
        self.setup_paths: list[str] = []


def run(plan: p.Plan, warn: Warn, stop_before: str = "") -> Context:
    """Execute ``plan`` in order; ``Exec`` does not return.  ``stop_before`` names a phase
    at which to stop (``shifter-setup`` stops before ``enter``)."""
    ctx = Context(warn, plan.user)
    try:
        for op in plan.ops:
            if op.phase == stop_before:
                break
            if isinstance(op, p.DropPrivileges):
                _privileged_phase_done(ctx)
            try:
                _HANDLERS[type(op)](op, ctx)
            except OSError as err:
                raise ContainerError(f"{op.phase}: {_describe(op)}: {err.strerror or err}",
                                     hint=_hint(op, err)) from None
        _privileged_phase_done(ctx)
    except BaseException:
        _stop_helper(ctx)
        raise
    return ctx


def _privileged_phase_done(ctx: Context) -> None:
    """Root is done with the FUSE mount: end the deadline (failing if it struck first) and let the
    daemon go its own way."""
    helper = ctx.helper
    if helper is None:
        return
    if helper.disarm():
        raise _fuse_timeout(ctx)
    if helper.connection >= 0:
        from shifter.runtime.linux.fusehelper import process_start_time  # noqa: PLC0415

        ctx.fuse_connection = helper.connection
        ctx.fuse_daemons = [(pid, process_start_time(pid)) for pid in helper.daemons]
    helper.release()
    ctx.helper = None


def _stop_helper(ctx: Context) -> None:
    """On any failure: kill the helper's processes and abort its connection, and if the deadline
    struck, say so (the error that surfaced is then only its consequence, e.g. ENOTCONN)."""
    helper, ctx.helper = ctx.helper, None
    if ctx.fuse_fd >= 0:
        os.close(ctx.fuse_fd)
        ctx.fuse_fd = -1
    if helper is None:
        return
    timed_out = helper.fired
    helper.kill()
    if timed_out:
        raise _fuse_timeout(ctx) from None


def _fuse_timeout(ctx: Context) -> ContainerError:
    from shifter.runtime.linux.fusehelper import FuseTimeout  # noqa: PLC0415

    op = ctx.fuse_op
    source, owner, seconds = (op.source, op.owner, op.timeout) if op else ("the image", "", 0.0)
    return FuseTimeout(f"squashfuse serving {source} (run as {owner or ctx.user[0]}) did not answer within "
                       f"{seconds:g} s; the container was not set up",
                       hint="the daemon was stopped or hung (SIGSTOP, a debugger): leave squashfuse running "
                            "while shifter starts and try again; the site's limit is fuseTimeout")


def _describe(op: p.Op) -> str:
    if isinstance(op, p.Bind):
        return f"cannot bind {op.source} to {op.target}"
    if isinstance(op, p.MountImage):
        return f"cannot mount {op.source} ({op.method}) at {op.mountpoint}"
    if isinstance(op, p.MountRootTmpfs):
        return f"cannot mount the container root at {op.root}"
    return f"{type(op).__name__} failed"


def _hint(op: p.Op, err: OSError) -> str:
    if isinstance(op, p.EnterNamespaces) and op.user_ns:
        return "unprivileged user namespaces may be disabled (sysctl user.max_user_namespaces)"
    missing = _missing_mountpoint(op)
    if missing:  # before the squashfuse hint: a missing directory is not a FUSE problem
        return f"{missing} does not exist: the site admin must create it (see udiRoot.conf)"
    if isinstance(op, p.MountImage) and op.method == "squashfuse":
        return "squashfuse and a usable /dev/fuse (mode 0666) are needed to run unprivileged"
    if isinstance(op, p.MountRootTmpfs | p.MountImage) and err.errno == errno.ENOENT:
        return "the site's udiMount/loopMount directories must exist (see udiRoot.conf)"
    if isinstance(op, p.MountRootTmpfs) and err.errno == errno.EOPNOTSUPP:
        return "a prepared container needs a kernel whose tmpfs has POSIX ACLs (CONFIG_TMPFS_POSIX_ACL)"
    return ""


def _missing_mountpoint(op: p.Op) -> str:
    """``loopMount /path`` or ``udiMount /path`` when that configured directory is missing."""
    if isinstance(op, p.MountImage):
        key, path = "loopMount", op.mountpoint
    elif isinstance(op, p.MountRootTmpfs):
        key, path = "udiMount", op.root
    else:
        return ""
    try:
        os.stat(path)
    except FileNotFoundError:
        return f"{key} {path}"
    except OSError:
        return ""
    return ""


# --- namespace -----------------------------------------------------------------------------------

def enter_namespaces(op: p.EnterNamespaces, ctx: Context) -> None:
    """New user namespace (single-id maps of the caller) and/or mount namespace."""
    if op.user_ns:
        sc.unshare(sc.CLONE_NEWUSER)
        # An unprivileged writer may map only its own ids, and only after denying setgroups
        # (otherwise dropping a group could grant access a negative ACL forbade).
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{op.uid} {op.uid} 1\n")
        _write("/proc/self/gid_map", f"{op.gid} {op.gid} 1\n")
    if op.fuse_helper:
        _start_fuse_helper(ctx)
    sc.unshare(sc.CLONE_NEWNS)
    # Nothing we mount may propagate back to the host (or into prepared containers).  With a
    # "slave" site volume the root becomes a slave instead (host events flow in, nothing flows
    # out) and every other bind is made private explicitly (Bind.private).
    sc.mount(None, "/", None, sc.MS_REC | (sc.MS_SLAVE if op.propagation == "slave" else sc.MS_PRIVATE))


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _start_fuse_helper(ctx: Context) -> None:
    """Fork the future squashfuse daemon *before* the new mount namespace exists.

    The FUSE fd must be opened inside our user namespace (the kernel checks the opener's
    namespace at mount time), but the daemon must not sit in the container's mount
    namespace, or it would keep that namespace, and so itself, alive after the command.
    The helper waits until we have mounted the connection, then execs squashfuse on
    ``/dev/fd/N`` (as the container's user when we are root; see :mod:`.fusehelper`).
    """
    from shifter.runtime.linux import fusehelper  # noqa: PLC0415  (squashfuse images only)

    ctx.fuse_fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    ctx.helper = fusehelper.start(ctx.fuse_fd, ctx.user)


# --- image ---------------------------------------------------------------------------------------

def mount_image(op: p.MountImage, ctx: Context) -> None:
    """Mount the image read-only, nosuid, nodev at the loop mount point."""
    target = _open_dir(op.mountpoint)
    ctx.setup_paths.append(fsutil.real_path(target))
    try:
        if op.method == "loop":
            _mount_loop(op.source, target)
        elif op.method == "squashfuse":
            _mount_squashfuse(op, target, ctx)
        elif op.method == "bind":
            source = os.open(op.source, fsutil.PATH_FLAGS | os.O_DIRECTORY)
            try:
                attrs = sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV
                os.close(_attach_bind(source, target, lambda: _open_dir(op.mountpoint), attrs))
            finally:
                os.close(source)
        else:
            raise ContainerError(f"unknown image mount method {op.method!r}")
    finally:
        os.close(target)


def _open_dir(path: str) -> int:
    return os.open(path, fsutil.PATH_FLAGS | os.O_DIRECTORY | os.O_NOFOLLOW)


def _mount_loop(squashfs: str, target: int) -> None:
    backing = os.open(squashfs, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        loop_fd, device = sc.loop_attach_readonly(backing, os.path.basename(squashfs))
    finally:
        os.close(backing)
    try:
        sc.mount(device, fsutil.fd_path(target), "squashfs", _IMAGE_FLAGS)
    finally:
        # With autoclear, closing the last fd after the mount leaves the mount as the only
        # user: the device detaches by itself when the mount namespace goes away.
        os.close(loop_fd)


def _mount_squashfuse(op: p.MountImage, target: int, ctx: Context) -> None:
    from shifter.runtime.linux import fusehelper  # noqa: PLC0415  (squashfuse images only)

    if ctx.helper is None:
        # shifter-setup builds in the host mount namespace: the daemon may be forked now (it
        # lives until shifter-teardown unmounts the image).
        _start_fuse_helper(ctx)
    helper = ctx.helper
    assert helper is not None
    ctx.fuse_op = op
    # Root serving for another user: from now on root may wait on that user's process (the
    # "ready" below, every access to the mount), so the deadline starts here.
    watched = os.geteuid() == 0 and ctx.user[0] != 0
    if watched:
        helper.arm(op.timeout)
        mountpoint = fsutil.real_path(target)
    data = f"fd={ctx.fuse_fd},rootmode=40000,user_id={os.geteuid()},group_id={os.getegid()}"
    if os.geteuid() == 0:
        # Privileged: root mounts, the (unprivileged) container user reads; the kernel checks
        # the image's file modes as it would on a loop mount.
        data += ",allow_other,default_permissions"
    sc.mount("squashfuse", fsutil.fd_path(target), "fuse.squashfuse", _IMAGE_FLAGS, data)
    if watched:
        helper.set_connection(fusehelper.connection_of(mountpoint))
    helper.serve(op.helper, op.source)
    # Our copy of the fd must go: if the daemon dies, the connection then aborts (ENOTCONN)
    # instead of hanging every access.
    os.close(ctx.fuse_fd)
    ctx.fuse_fd = -1
    # squashfuse daemonises once it serves the mount: its first process exiting 0 is our
    # "ready" signal; anything else means it failed (bad image, missing binary).
    status = helper.wait_ready()
    if helper.fired:
        raise _fuse_timeout(ctx)
    if status != 0:
        raise ContainerError(f"squashfuse failed to serve {op.source} (exit status {status})",
                             hint="check that squashfuse is installed and the image file is readable")


# --- root tree -----------------------------------------------------------------------------------

def mount_root_tmpfs(op: p.MountRootTmpfs, ctx: Context) -> None:
    """A tmpfs at ``udiMount``; it becomes ``/``."""
    target = _open_dir(op.root)
    try:
        sc.mount("tmpfs", fsutil.fd_path(target), "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, op.options)
    finally:
        os.close(target)
    # Re-open: the fd must name the new tmpfs, not the directory underneath it.
    ctx.root_fd = _open_dir(op.root)
    ctx.setup_paths.append(fsutil.real_path(ctx.root_fd))
    if op.only_for > 0:  # a prepared tree for a user (mode 0700 already keeps root's own to root)
        _allow_only(ctx.root_fd, op.only_for)



def _allow_only(root_fd: int, uid: int) -> None:
    """Let ``uid`` (and root) into a root tmpfs mounted with mode 0700, and nobody else.

    A prepared tree lives in the host mount namespace: any user who can reach ``udiMount`` could
    otherwise walk into it and read the volumes (opened with the owner's rights, so past e.g. a
    0700 home), the perNodeCache and a private image.  Every path into the tree goes through this
    directory, so it alone is closed.  The owner needs search (and list) rights to ``chroot`` here
    from an unprivileged user namespace (where root's files get no DAC override): an ACL entry
    ``user:UID:r-x`` gives exactly that.  It is not made the user's directory (``uid=`` on the
    tmpfs): its owner could rename and replace the tree's top-level entries, its ``/etc``
    included, while root builds it, and chmod it open.
    """
    from shifter.store import access  # noqa: PLC0415  (prepared setup only)

    data = access.acl_xattr([(access.ACL_USER_OBJ, 7, access.NO_ID), (access.ACL_USER, 5, uid),
                             (access.ACL_GROUP_OBJ, 0, access.NO_ID), (access.ACL_MASK, 5, access.NO_ID),
                             (access.ACL_OTHER, 0, access.NO_ID)])
    os.setxattr(fsutil.fd_path(root_fd), access.XATTR, data)
    if stat.S_IMODE(os.fstat(root_fd).st_mode) & 0o007:
        raise ContainerError("the prepared container root is open to other users",
                             hint="this is a bug in shifter; please report it")


def populate_root(op: p.PopulateRoot, ctx: Context) -> None:
    """Bind the image's top-level entries into the root; copy its top-level symlinks."""
    image_fd = os.open(op.image, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        for entry in os.scandir(image_fd):
            if entry.name in op.skip:
                continue
            # Devices, fifos and sockets at the top level are not carried over.
            fsutil.bind_entry(image_fd, entry.name, ctx.root_fd, special_files=False)
    finally:
        os.close(image_fd)


def build_etc(op: p.BuildEtc, ctx: Context) -> None:
    """``/etc`` = the image's, copied (never following its links), plus the generated and host
    files, and ``mtab`` -> ``/proc/mounts``."""
    os.mkdir("etc", 0o755, dir_fd=ctx.root_fd)
    dst = os.open("etc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=ctx.root_fd)
    try:
        own = {name for name, _ in op.files} | set(op.host_files) | {"mtab"}
        try:
            src = os.open(os.path.join(op.image, "etc"), _DIR_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            src = -1
        if src >= 0:
            try:
                _copy_tree(src, dst, skip=own)
            finally:
                os.close(src)
        for name, text in op.files:
            _write_new(dst, name, text.encode())
        for name in op.host_files:
            try:
                with open(os.path.join("/etc", name), "rb") as handle:
                    _write_new(dst, name, handle.read(1024 * 1024))
            except FileNotFoundError:
                continue
        os.symlink("/proc/mounts", "mtab", dir_fd=dst)
    finally:
        os.close(dst)


def _write_new(dir_fd: int, name: str, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(name, _NEW_FILE, mode, dir_fd=dir_fd)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _copy_tree(src: int, dst: int, skip: set[str] | frozenset[str] = frozenset(), depth: int = 0) -> None:
    """Copy a directory by fds.  Setuid/setgid bits are dropped; special files are skipped."""
    if depth > 32:
        return
    for entry in os.scandir(src):
        name = entry.name
        if name in skip:
            continue
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
        elif stat.S_ISDIR(st.st_mode):
            os.mkdir(name, 0o755, dir_fd=dst)
            sub_src = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src)
            sub_dst = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dst)
            try:
                _copy_tree(sub_src, sub_dst, depth=depth + 1)
                os.fchmod(sub_dst, stat.S_IMODE(st.st_mode) & 0o1777)
            finally:
                os.close(sub_src)
                os.close(sub_dst)
        elif stat.S_ISREG(st.st_mode):
            _copy_file(src, dst, name, stat.S_IMODE(st.st_mode) & 0o1777)


def _copy_file(src_dir: int, dst_dir: int, name: str, mode: int) -> None:
    try:
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=src_dir)
    except PermissionError:
        return  # unreadable in the image for this user: it would be unreadable inside too
    try:
        dst = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                      dir_fd=dst_dir)
        try:
            size = os.fstat(src).st_size
            offset = 0
            while offset < size:
                sent = os.sendfile(dst, src, offset, size - offset)
                if sent == 0:
                    break
                offset += sent
            os.fchmod(dst, mode)
        finally:
            os.close(dst)
    finally:
        os.close(src)


# --- binds ---------------------------------------------------------------------------------------

def bind(op: p.Bind, ctx: Context) -> None:
    """Bind a host path into the container (see :class:`shifter.runtime.plan.Bind`)."""
    source = _open_source(op, ctx)
    if source < 0:
        return
    try:
        if op.phase != "system":
            _check_not_setup_tree(ctx, source, op.source)
        is_dir = stat.S_ISDIR(os.fstat(source).st_mode)
        if op.check_target:
            _check_target_path(ctx, op.target)
        try:
            target = targets.ensure_target(ctx.root_fd, op.target, is_dir, ctx.user,
                                           explode_ok=not op.optional) if op.create \
                else fsutil.open_in_root(ctx.root_fd, op.target)
        except FileNotFoundError:
            if op.optional:
                return
            raise VolumeError(f"volume target {op.target} does not exist in the image") from None
        except OSError as err:
            if op.optional:
                return
            raise VolumeError(f"cannot create volume target {op.target} in the image: {err.strerror}",
                              hint="mount on a directory that exists in the image, or at the top level"
                              ) from None
        try:
            if op.check_target:
                _recheck_resolved(ctx, target, op.target)
            mounted = _attach_bind(source, target, _reopen_in_root(ctx, target), _bind_attrs(op),
                                   walk=op.phase == "system", devices=op.devices)
        finally:
            os.close(target)
        try:
            if op.devices:
                _allow_devices(mounted)
            if op.slave or op.private:
                # Through the new mount's fd: its path may already lead elsewhere.
                kind = sc.MS_SLAVE if op.slave else sc.MS_PRIVATE
                sc.mount(None, fsutil.fd_path(mounted), None, kind | sc.MS_REC)
        except OSError:
            os.close(mounted)
            raise
        if op.phase == "system":
            os.close(mounted)  # not remounted
        else:
            _keep_mount(ctx, op.target, mounted)
    finally:
        os.close(source)


def _keep_mount(ctx: Context, target: str, fd: int) -> None:
    """Remember the fd of the mount made at ``target`` for its :func:`remount`."""
    old = ctx.mounts.pop(target, -1)
    if old >= 0:
        os.close(old)
    ctx.mounts[target] = fd


def mount_cache(op: p.MountCache, ctx: Context) -> None:
    """A fresh perNodeCache file system at the target: loop device on an anonymous sparse file
    (privileged, see :mod:`.cache`) or a size-limited tmpfs (in the user's namespace).

    The new file system is handed to the user without looking its path up again blindly: a
    tmpfs gets its owner from its mount options, and the root of a loop file system is
    re-opened and must be on that very device before root ``fchown``s it.  (The path may run
    through a volume the user writes: swapped for a symlink after the mount, a second lookup
    could land on any directory in the container, e.g. a host ``/dev/shm`` or a site volume.)
    """
    if op.check_target:
        _check_target_path(ctx, op.target)
    target = targets.ensure_target(ctx.root_fd, op.target, True, ctx.user)
    try:
        if op.check_target:
            _recheck_resolved(ctx, target, op.target)
        if op.method == "tmpfs":
            _keep_mount(ctx, op.target, _mount_cache_tmpfs(ctx, op, target))
            return
        from shifter.runtime.linux import cache  # noqa: PLC0415  (only when a cache is asked for)

        loop_fd, device, fstype = cache.make_device(op.backing_dir, op.size, op.fs)
        try:
            sc.mount(device, fsutil.fd_path(target), fstype, sc.MS_NOSUID | sc.MS_NODEV)
            rdev = os.fstat(loop_fd).st_rdev
        finally:
            os.close(loop_fd)  # autoclear: the mount is now the device's only user
    finally:
        os.close(target)
    _keep_mount(ctx, op.target, _own_cache_root(ctx, op, rdev))


def _mount_cache_tmpfs(ctx: Context, op: p.MountCache, target: int) -> int:
    """A detached tmpfs attached at ``target``; the fd naming its root (for the remount)."""
    options = {"size": str(op.size), "mode": "755", "uid": str(op.uid), "gid": str(op.gid)}
    try:
        fs = sc.fsmount_new("tmpfs", options, sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV)
    except OSError as err:
        if err.errno != errno.ENOSYS:
            raise
        # Linux < 5.2: mount by fd, then re-open the new root and check it is a fresh file
        # system owned as asked (weaker: see docs/runtime.md, "Remount").
        data = ",".join(f"{key}={value}" for key, value in options.items())
        sc.mount("tmpfs", fsutil.fd_path(target), "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, data)
        return _check_reopened(_reopen_in_root(ctx, target)(), target, None, op.target)
    try:
        sc.move_mount(fs, target)
    except OSError:
        os.close(fs)
        raise
    return fs


def _own_cache_root(ctx: Context, op: p.MountCache, rdev: int) -> int:
    """``chown`` the fresh file system's root to the user; refuse if the path no longer leads
    to it (root must never chown whatever a swapped path now names).  Returns the fd of that
    root: it names the new mount (a fresh device), which :func:`remount` then uses."""
    top = fsutil.open_in_root(ctx.root_fd, op.target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        st = os.fstat(top)
        if st.st_dev != rdev:
            raise VolumeError(f"volume {op.target} changed while its perNodeCache was being mounted",
                              hint="do not modify the directories of your volumes while shifter starts")
        os.fchown(top, op.uid, op.gid)
        os.fchmod(top, 0o755)
    except BaseException:
        os.close(top)
        raise
    return top


def _bind_attrs(op: p.Bind) -> int:
    """The ``MOUNT_ATTR_*`` bits of a bind's flags (and read-only)."""
    attrs = sc.MOUNT_ATTR_RDONLY if op.read_only else 0
    for name in op.flags:
        attrs |= _ATTRS[name]
    return attrs


def _attach_bind(source: int, target: int, reopen: Callable[[], int], attrs: int, *, walk: bool = False,
                 devices: bool = False) -> int:
    """Bind the whole tree of ``source`` onto ``target``, every mount of it with ``attrs``;
    returns an fd naming the root of the new mount.

    Recursive always: a bind of the top mount alone would show what the mounts below the
    source hide (the kernel's rule for user namespaces; as root we must keep it ourselves).
    The tree is cloned detached (``open_tree``), its flags set on every mount while detached
    (nothing is visible without them), and attached with ``move_mount``: the clone's fd names
    exactly the mount we made, wherever its path leads later.  On kernels without that API
    (< 5.2) we ``mount`` and ``reopen`` the target, and refuse anything but the source's object
    on a mount other than the target's.  ``walk``/``devices``: see :func:`_seal_without_setattr`.
    """
    try:
        tree = sc.open_tree_clone(source, True)
    except OSError as err:
        if err.errno != errno.ENOSYS:
            raise
        sc.mount(fsutil.fd_path(source), fsutil.fd_path(target), None, sc.MS_BIND | sc.MS_REC)
        mounted = _check_reopened(reopen(), target, source, fsutil.real_path(target))
        try:
            if not _set_tree_attrs(mounted, attrs):
                _seal_without_setattr(mounted, attrs, walk, devices)
        except BaseException:
            os.close(mounted)
            raise
        return mounted
    try:
        sealed = _set_tree_attrs(tree, attrs)
        sc.move_mount(tree, target)
        if not sealed:
            _seal_without_setattr(tree, attrs, walk, devices)
    except BaseException:
        os.close(tree)
        raise
    return tree


def _set_tree_attrs(fd: int, attrs: int) -> bool:
    """``attrs`` on every mount of the tree at ``fd``; False on kernels without ``mount_setattr``.
    Only adds flags: those the kernel locked on mounts a user namespace inherited stay."""
    try:
        sc.mount_setattr(fd, attrs, recursive=True)
    except OSError as err:
        if err.errno != errno.ENOSYS:
            raise
        return False
    return True


def _seal_without_setattr(fd: int, attrs: int, walk: bool, devices: bool) -> None:
    """Linux < 5.12: flags one mount at a time, with a bind remount.

    A volume with mounts below it is refused: reaching them means looking paths up in a tree
    the user may rename in (from the host's namespace) while we work.  The system trees
    (``walk``: ``/dev``, ``/proc``, ``/sys``, ``/tmp``, root's) are walked (:mod:`.mounttree`)."""
    below = mounttree.submounts(fd)
    if below and not walk:
        raise VolumeError(f"{fsutil.real_path(fd)} has other file systems mounted below it, and this kernel "
                          "(no mount_setattr, Linux < 5.12) cannot give them the volume's flags",
                          hint="bind a directory with no mounts below it, or use Linux 5.12 or newer")
    with_devices = attrs & ~sc.MOUNT_ATTR_NODEV if devices else attrs
    _remount_fd(fd, _ms_flags(with_devices))
    for mount_id, relative, fstype in below:
        sub = mounttree.open_submount(fd, relative, mount_id)
        if sub < 0:
            continue  # covered by another mount listed here (not reachable: it keeps its flags)
        try:
            _remount_fd(sub, _ms_flags(with_devices if fstype == "devpts" else attrs))
        finally:
            os.close(sub)


def _allow_devices(fd: int) -> None:
    """Take ``nodev`` off again where device nodes must work: the top of the tree (``/dev``:
    ``/dev/null``, ``/dev/zero``...) and every reachable ``devpts`` mount (ptys).  Every other mount
    below (``/dev/shm``, ``/dev/mqueue``, covered ones included) stays ``nodev``.  Root's tree: see
    :mod:`.mounttree` for how the paths are trusted."""
    try:
        sc.mount_setattr(fd, 0, sc.MOUNT_ATTR_NODEV)
    except OSError as err:
        if err.errno == errno.ENOSYS:
            return  # _seal_without_setattr left nodev off these already
        raise
    for mount_id, relative, fstype in mounttree.submounts(fd):
        if fstype != "devpts":
            continue
        sub = mounttree.open_submount(fd, relative, mount_id)
        if sub >= 0:
            try:
                sc.mount_setattr(sub, 0, sc.MOUNT_ATTR_NODEV)
            finally:
                os.close(sub)


def _ms_flags(attrs: int) -> int:
    return sum(ms for attr, ms in _ATTR_MS if attrs & attr)


def _check_not_setup_tree(ctx: Context, source: int, name: str) -> None:
    """Refuse a volume whose source (where it really is) holds or lies in the container's own
    tree (``udiMount``) or image (``loopMount``): bound recursively, the tree would show up
    inside itself (see ``plan.check_not_setup_tree``)."""
    from shifter.config.site import paths_overlap  # noqa: PLC0415

    real = fsutil.real_path(source)
    for path in ctx.setup_paths:
        if paths_overlap(real, path):
            raise VolumeError(f"volume source {name} ({real}) overlaps {path}, where the container is built",
                              hint="bind a directory that does not contain the container's own tree "
                                   "(udiMount, loopMount)")


def _reopen_in_root(ctx: Context, target: int) -> Callable[[], int]:
    """For old kernels: re-open ``target``'s symlink-free container path (mounts followed)."""
    return lambda: fsutil.open_in_root(ctx.root_fd, targets.inside_root(ctx.root_fd, target))


def _check_reopened(fd: int, target: int, source: int | None, what: str) -> int:
    """``fd`` must be a mount other than ``target``'s (showing ``source``'s object when given)."""
    st, st_target = os.fstat(fd), os.fstat(target)
    ok = sc.mount_id(fd) != sc.mount_id(target) and (st.st_dev, st.st_ino) != (st_target.st_dev, st_target.st_ino)
    if ok and source is not None:
        st_source = os.fstat(source)
        ok = (st.st_dev, st.st_ino) == (st_source.st_dev, st_source.st_ino)
    if not ok:
        os.close(fd)
        raise VolumeError(f"{what} changed while it was being mounted",
                          hint="do not modify the directories of your volumes while shifter starts")
    return fd


def _open_source(op: p.Bind, ctx: Context) -> int:
    """Open the volume source; with the user's identity and a read check for user volumes."""
    ids = None
    if op.as_user:
        ids = _become_user_effective(ctx.user)
    try:
        fd = os.open(op.source, fsutil.PATH_FLAGS)
        if op.phase == "user" and not os.access(fsutil.fd_path(fd), os.R_OK | os.X_OK
                                                if stat.S_ISDIR(os.fstat(fd).st_mode) else os.R_OK,
                                                effective_ids=op.as_user):
            os.close(fd)
            raise VolumeError(f"volume source {op.source} is not readable by you",
                              hint="use a path you can read")
        return fd
    except FileNotFoundError:
        if op.optional:
            return -1
        raise VolumeError(f"volume source {op.source} does not exist",
                          hint="check the path before ':'") from None
    except PermissionError:
        raise VolumeError(f"volume source {op.source} is not accessible to you",
                          hint="use a path you can read") from None
    finally:
        if ids is not None:
            _restore_effective(ids)


def _become_user_effective(user: tuple[int, int, tuple[int, ...]]) -> tuple[list[int], int, int]:
    """Switch the *effective* ids to the user the container runs as (saved ids stay 0, so
    root can switch back; the kernel checks the user's access, not root's)."""
    uid, gid, groups = user
    saved = (os.getgroups(), os.getegid(), os.geteuid())
    sc.setgroups(list(groups))
    os.setresgid(-1, gid, -1)
    os.setresuid(-1, uid, -1)
    return saved


def _restore_effective(saved: tuple[list[int], int, int]) -> None:
    groups, gid, uid = saved
    os.setresuid(-1, uid, -1)
    os.setresgid(-1, gid, -1)
    sc.setgroups(groups)


def _check_target_path(ctx: Context, target: str) -> None:
    """Refuse a target behind an image symlink that points outside the container."""
    from shifter.runtime.paths import check_no_escaping_symlink  # noqa: PLC0415

    check_no_escaping_symlink(fsutil.fd_path(ctx.root_fd), target)


def _recheck_resolved(ctx: Context, fd: int, asked: str) -> None:
    """Apply the user target rules to where ``asked`` really resolved inside the root."""
    from shifter.runtime import volumes  # noqa: PLC0415

    root = fsutil.real_path(ctx.root_fd).rstrip("/")
    real = fsutil.real_path(fd)
    if real != root and not real.startswith(root + "/"):
        raise VolumeError(f"volume target {asked} resolves outside the container")
    inside = real[len(root):] or "/"
    if inside != asked:
        volumes._check_target(inside, f"{asked} (resolves to {inside})", site=False)


# --- remount, enter, drop, chdir, exec ------------------------------------------------------------

def remount(op: p.Remount, ctx: Context) -> None:
    """The last word on a volume's flags, after every mount is made (see :class:`plan.Remount`);
    flags the kernel has locked on a mount stay (they are only ever added).

    Through the fd kept when the mount was made (or the root's fd), never by path: by now
    the user may have swapped a directory of their volume for a symlink, and a lookup of
    the target would name another mount (undoing ``ro``, or skipping nosuid on this one).
    """
    flags = sc.MS_NOSUID | (sc.MS_NODEV if op.nodev else 0) | (sc.MS_RDONLY if op.read_only else 0)
    if op.target == "/":
        _remount_fd(ctx.root_fd, flags)  # this mount only: the volumes on it keep their own flags
        return
    fd = ctx.mounts.pop(op.target, -1)
    if fd < 0:
        raise ContainerError(f"remount: nothing was mounted at {op.target}",
                             hint="this is a bug in shifter's mount plan; please report it")
    try:
        # nosuid/nodev on every mount of the volume's tree, including what was mounted into it
        # since (exploded directories, nested volumes); read-only on the volume's own mounts (set
        # when it was bound): a writable volume nested in a read-only one stays writable.
        if not _set_tree_attrs(fd, sc.MOUNT_ATTR_NOSUID | (sc.MOUNT_ATTR_NODEV if op.nodev else 0)):
            _remount_fd(fd, flags)
        elif op.read_only:
            sc.mount_setattr(fd, sc.MOUNT_ATTR_RDONLY)
    finally:
        os.close(fd)


def _remount_fd(fd: int, flags: int) -> None:
    path = fsutil.fd_path(fd)
    current = os.statvfs(path).f_flag
    for st_bit, ms_bit in _KEEP_FLAGS:
        if current & st_bit:
            flags |= ms_bit
    sc.mount(None, path, None, sc.MS_REMOUNT | sc.MS_BIND | flags)


def enter_root(op: p.EnterRoot, ctx: Context) -> None:
    """``pivot_root`` into the tree and detach the host's tree (or ``chroot`` into it)."""
    if op.method == "chroot":
        os.chroot(op.root)
        os.chdir("/")
        return
    os.fchdir(ctx.root_fd) if ctx.root_fd >= 0 else os.chdir(op.root)
    # pivot_root(".", "."): the old root ends up stacked on top of the new one; detaching
    # it leaves no path back to the host tree (no put_old directory needed).
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")
    if ctx.root_fd >= 0:
        os.close(ctx.root_fd)
        ctx.root_fd = -1


def drop_privileges(op: p.DropPrivileges, ctx: Context) -> None:
    """Groups, gid, uid; then every capability set emptied and no_new_privs."""
    for cap in range(sc.cap_last_cap() + 1):
        try:
            sc.prctl(sc.PR_CAPBSET_DROP, cap)
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
    try:
        sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as err:
        if err.errno != errno.EINVAL:
            raise
    if op.set_groups:
        sc.setgroups(list(op.groups))
    os.setresgid(op.gid, op.gid, op.gid)
    os.setresuid(op.uid, op.uid, op.uid)
    # setresuid from 0 clears the permitted set, but in a user namespace (or as root) we
    # keep capabilities: empty effective/permitted/inheritable explicitly.
    sc.capset_zero()
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    if os.getresuid() != (op.uid,) * 3 or os.getresgid() != (op.gid,) * 3:
        raise ContainerError("privilege drop did not take effect")


def change_dir(op: p.Chdir, ctx: Context) -> None:
    """The caller's cwd if it exists inside, else the workdir, else ``/`` with a warning."""
    for index, path in enumerate(op.candidates):
        try:
            os.chdir(path)
        except OSError:
            continue
        if path == "/" and index > 0 and op.candidates[0] != "/":
            ctx.warn(f"working directory {op.candidates[0]} does not exist in the container; using /")
        return
    raise ContainerError("cannot change to any working directory in the container")


def execute(op: p.Exec, ctx: Context) -> NoReturn:
    """Replace this process with the command (PATH looked up with the container's PATH)."""
    env = dict(op.env)
    # Python ignores SIGPIPE and SIGXFSZ; an ignored disposition survives exec.
    for sig in (_signal.SIGPIPE, _signal.SIGXFSZ):
        _signal.signal(sig, _signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(op.argv[0], list(op.argv), env)  # noqa: S606
    except FileNotFoundError:
        raise ExecError(f"{op.argv[0]}: command not found in the image",
                        hint=f"PATH inside is {env.get('PATH', os.defpath)}") from None
    except OSError as err:
        raise ExecError(f"cannot execute {op.argv[0]}: {err.strerror}", code=126) from None


_HANDLERS: dict[type, Callable[..., object]] = {
    p.EnterNamespaces: enter_namespaces, p.MountImage: mount_image, p.MountRootTmpfs: mount_root_tmpfs,
    p.PopulateRoot: populate_root, p.BuildEtc: build_etc, p.Bind: bind, p.MountCache: mount_cache,
    p.Remount: remount,
    p.EnterRoot: enter_root, p.DropPrivileges: drop_privileges, p.Chdir: change_dir, p.Exec: execute,
    **modexec.HANDLERS,
}
