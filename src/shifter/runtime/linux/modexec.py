"""Carry out the module, device and writable-root operations of a plan (see ``plan.ModuleTmpfs``,
``CopyTree``, ``BindExtra``, ``RootHook``, ``UserHook``, ``WritableOverlay``).

Security notes:

* Module files live in a tmpfs of the container's own at ``/opt/udiImage``, made detached
  (``fsmount``) and attached with ``move_mount``; copies and bind targets are created through the
  fd of that tmpfs, never through a path the image (or a user volume) could redirect.  It is
  nosuid and nodev, and read-only after the remount phase.
* ``BindExtra`` goes through the same fd-based bind as volumes (``executor._attach_bind``): the
  source opened once, the clone's flags set while detached.  Every one is nosuid; every one but a
  device node is nodev.  A device node's bind is the only mount that gets ``nodev`` off, on that
  one mount (a single file), so the exception cannot reach any other file.  A missing target
  outside ``/opt/udiImage`` is created in an *exploded* copy of its directory (``targets``),
  never in a host tree: the container's ``/dev`` is the host's, and root must not create files
  in it.
* A roothook is site-written but runs as root next to a tree the user's image filled: it gets a
  fixed environment (never the caller's), stdin ``/dev/null``, no inherited fds but 0-2, and as
  working directory the container root through the fd the tree was built with.  It is not
  chrooted (it may need host tools); it must treat the image's files as hostile (not follow its
  symlinks as root).
* A userhook runs after the privilege drop (same uid, no capabilities, ``no_new_privs``): a
  set-id binary in the image cannot lift it.
"""

from __future__ import annotations

import errno
import os

from shifter.errors import ContainerError, VolumeError
from shifter.runtime import plan as p
from shifter.runtime.linux import fsutil, targets
from shifter.runtime.linux import syscalls as sc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from shifter.runtime.linux.executor import Context

_DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
MAX_HOOK_OUTPUT = 64 * 1024


def mount_module_tmpfs(op: p.ModuleTmpfs, ctx: Context) -> None:
    """The modules' tmpfs at ``op.target``; its fd is kept in ``ctx.mounts`` (for the remount and
    for everything created in it)."""
    try:
        target = targets.ensure_target(ctx.root_fd, op.target, True, ctx.user)
    except OSError as err:
        # E.g. EEXIST: the image's /opt is a symbolic link leading nowhere inside the container
        # (it is resolved inside the root, never on the host).
        raise ContainerError(f"cannot create {op.target} for the site modules' files in this image: "
                             f"{err.strerror}", hint="the image's /opt may be a symbolic link that leads nowhere "
                             "inside it; load no modules with files (--module=none) or fix the image") from None
    try:
        fs = sc.fsmount_new("tmpfs", {"mode": "755", "size": op.size}, sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV)
    except OSError as err:
        os.close(target)
        if err.errno == errno.ENOSYS:
            raise ContainerError("site modules with files need Linux 5.2 or newer (fsmount)") from None
        raise
    try:
        sc.move_mount(fs, target)
    except OSError:
        os.close(fs)
        raise
    finally:
        os.close(target)
    ctx.mounts[op.target] = fs


def _module_dir(ctx: Context, target: str, *, last_is_dir: bool = True) -> tuple[int, str]:
    """``(fd of the parent directory, last name)`` of ``target`` below the modules' tmpfs, the
    missing directories created (no symlink followed: only we write there)."""
    top = ctx.mounts.get(p.MODULES_ROOT, -1)
    if top < 0:
        raise ContainerError(f"internal error: {target} needs the modules' tmpfs")
    names = [n for n in target[len(p.MODULES_ROOT):].split("/") if n]
    current = os.dup(top)
    try:
        for name in names[:-1] if not last_is_dir else names:
            try:  # noqa: SIM105  (contextlib costs launch time)
                os.mkdir(name, 0o755, dir_fd=current)
            except FileExistsError:
                pass
            nxt = os.open(name, _DIR_NOFOLLOW, dir_fd=current)
            os.close(current)
            current = nxt
        found, current = current, -1
        return found, ("" if last_is_dir else names[-1])
    finally:
        if current >= 0:
            os.close(current)


def copy_tree(op: p.CopyTree, ctx: Context) -> None:
    """Copy a module's ``copyPath`` into its directory (see :class:`plan.CopyTree`)."""
    from shifter.runtime.linux.executor import _copy_tree  # noqa: PLC0415

    try:
        src = os.open(op.source, _DIR_NOFOLLOW)
    except OSError as err:
        raise ContainerError(f"{op.target}: cannot read the module's copyPath {op.source}: {err.strerror}",
                             hint="fix module_<name>_copyPath in udiRoot.conf") from None
    dst, _ = _module_dir(ctx, op.target)
    try:
        _copy_tree(src, dst)
    finally:
        os.close(src)
        os.close(dst)


def bind_extra(op: p.BindExtra, ctx: Context) -> None:
    """Bind a plugin's or a CDI device's host path (see the module docstring)."""
    from shifter.runtime.linux import executor  # noqa: PLC0415

    try:
        source = os.open(op.source, fsutil.PATH_FLAGS | os.O_NOFOLLOW)
    except OSError as err:
        raise ContainerError(f"{op.origin}: cannot open {op.source}: {err.strerror}",
                             hint="the site's module or CDI configuration names a path this host lacks") from None
    try:
        executor._check_not_setup_tree(ctx, source, op.source)
        st = os.fstat(source)
        is_dir = (st.st_mode & 0o170000) == 0o040000
        if op.device and (st.st_mode & 0o170000) not in (0o020000, 0o060000):
            raise ContainerError(f"{op.origin}: {op.source} is not a device node")
        target = _open_target(ctx, op, is_dir)
        attrs = sc.MOUNT_ATTR_NOSUID | (0 if op.device else sc.MOUNT_ATTR_NODEV)
        attrs |= sc.MOUNT_ATTR_RDONLY if op.read_only else 0
        try:
            mounted = executor._attach_bind(source, target, executor._reopen_in_root(ctx, target), attrs)
        finally:
            os.close(target)
        if op.device:
            try:
                sc.mount_setattr(mounted, 0, sc.MOUNT_ATTR_NODEV)  # this one mount: a single device node
            except OSError as err:
                if err.errno != errno.ENOSYS:  # < 5.12: the bind's remount never added nodev
                    os.close(mounted)
                    raise
        if op.target.startswith(p.MODULES_ROOT + "/"):
            os.close(mounted)  # the modules' tmpfs is remounted as a whole
        else:
            executor._keep_mount(ctx, op.target, mounted)
    finally:
        os.close(source)


def _open_target(ctx: Context, op: p.BindExtra, is_dir: bool) -> int:
    if op.target.startswith(p.MODULES_ROOT + "/"):
        parent, name = _module_dir(ctx, op.target, last_is_dir=False)
        try:
            try:
                if is_dir:
                    os.mkdir(name, 0o755, dir_fd=parent)
                else:
                    os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                     0o644, dir_fd=parent))
            except FileExistsError:
                pass
            return os.open(name, fsutil.PATH_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
        finally:
            os.close(parent)
    try:
        return targets.ensure_target(ctx.root_fd, op.target, is_dir, ctx.user, in_host_trees=False)
    except OSError as err:
        raise VolumeError(f"{op.origin}: cannot create {op.target} in the container: {err.strerror}") from None


def run_root_hook(op: p.RootHook, ctx: Context) -> None:
    """Run a roothook (see :class:`plan.RootHook`)."""
    if op.skip:
        ctx.warn(f"{op.what} skipped (unprivileged mode)")
        return
    root = ctx.root_fd
    _run(op.what, op.argv, dict(op.env), lambda: os.fchdir(root))


def run_user_hook(op: p.UserHook, ctx: Context) -> None:
    """Run a userhook inside the container (see :class:`plan.UserHook`); its working directory is
    the command's, where ``Chdir`` put us."""
    _run(op.what, op.argv, dict(op.env), lambda: None)


def _run(what: str, argv: tuple[str, ...], env: dict[str, str], prepare: Callable[[], object]) -> None:
    """Fork, exec ``argv`` with ``env`` (stdin /dev/null, stdout and stderr into a pipe), echo its
    output to our stderr; a non-zero exit raises with its last line."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            prepare()
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(write_end, 1)
            os.dup2(write_end, 2)
            os.closerange(3, 65536)
            os.execve(argv[0], list(argv), env)  # noqa: S606
        except OSError as err:
            os.write(2, f"cannot run {argv[0]}: {err.strerror}\n".encode())
        finally:
            os._exit(127)
    os.close(write_end)
    output = _drain(read_end)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    text = output.decode("utf-8", "replace")
    if code == 0:
        if text:
            os.write(2, output)
        return
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = f": {lines[-1][:300]}" if lines else ""
    raise ContainerError(f"{what} failed with exit status {code}{reason}",
                         hint="this site module could not prepare the container; ask the site administrators")


def _drain(fd: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := os.read(fd, 65536):
            if size < MAX_HOOK_OUTPUT:
                chunks.append(chunk[:MAX_HOOK_OUTPUT - size])
            size += len(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def writable_overlay(op: p.WritableOverlay, ctx: Context) -> None:
    """``--writable-tmpfs``: stack a size-capped tmpfs and an overlay (lower: the image, upper: the
    tmpfs) on the image's mount point.  The image's directory is opened first and named to the
    overlay as ``/proc/self/fd/N``: the tmpfs mounted over it then hides it from every path but
    that fd.  The new mounts live in the container's mount namespace (gone with it)."""
    image = os.open(op.mountpoint, _DIR_NOFOLLOW)
    try:
        target = os.open(op.mountpoint, fsutil.PATH_FLAGS | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            sc.mount("tmpfs", fsutil.fd_path(target), "tmpfs", sc.MS_NOSUID | sc.MS_NODEV,
                     f"mode=755,size={op.size}")
        finally:
            os.close(target)
        scratch = os.open(op.mountpoint, _DIR_NOFOLLOW)
        try:
            if os.fstat(scratch).st_dev == os.fstat(image).st_dev:
                raise ContainerError(f"--writable-tmpfs: {op.mountpoint} changed while it was mounted")
            for name in ("upper", "work"):
                os.mkdir(name, 0o755, dir_fd=scratch)
            data = (f"lowerdir={fsutil.fd_path(image)},upperdir={fsutil.fd_path(scratch)}/upper,"
                    f"workdir={fsutil.fd_path(scratch)}/work")
            try:
                sc.mount("overlay", fsutil.fd_path(scratch), "overlay", sc.MS_NOSUID | sc.MS_NODEV, data)
            except OSError as err:
                raise ContainerError(f"--writable-tmpfs: cannot mount an overlay over the image: {err.strerror}",
                                     hint="this kernel may lack overlayfs (or, unprivileged, overlayfs in user "
                                          "namespaces, Linux 5.11+); run without --writable-tmpfs") from None
        finally:
            os.close(scratch)
    finally:
        os.close(image)


HANDLERS: dict[type, Callable[..., object]] = {
    p.ModuleTmpfs: mount_module_tmpfs, p.CopyTree: copy_tree, p.BindExtra: bind_extra,
    p.RootHook: run_root_hook, p.UserHook: run_user_hook, p.WritableOverlay: writable_overlay,
}

__all__ = ["HANDLERS", "bind_extra", "copy_tree", "mount_module_tmpfs", "run_root_hook", "run_user_hook",
           "writable_overlay"]


def check_mpi_abi(op: p.CheckMpiAbi, ctx: Context) -> None:
    """Find the image's MPICH-ABI library in the container root (every lookup inside the root)
    and compare its version with the host's (``plugins.check_abi``)."""
    from shifter.runtime import plugins  # noqa: PLC0415

    for directory in plugins.MPI_LIB_DIRS:
        for names in plugins.MPI_SONAMES:
            try:
                fd = fsutil.open_in_root(ctx.root_fd, f"{directory}/{names[0]}")
            except OSError:
                continue
            try:
                inside = targets.inside_root(ctx.root_fd, fd)
            finally:
                os.close(fd)
            note = plugins.check_abi(plugins.library_version(op.host_library), plugins.library_version(inside),
                                     inside, op.host_library)
            if note:
                ctx.warn(f"module '{op.module}': {note}")
            return
    ctx.warn(f"module '{op.module}': the image has no MPICH-ABI library (libmpi.so.12 or libmpich.so.12) "
             "to check; the host's is used")


HANDLERS[p.CheckMpiAbi] = check_mpi_abi
