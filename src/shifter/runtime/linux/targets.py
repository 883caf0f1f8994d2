"""Create a missing mount target inside the container root, without writing anywhere but ours.

NERSC Shifter refused a volume whose target did not exist in the image.  We create it, under
two rules:

* **Root writes only into container-owned tmpfs.**  Under the root tmpfs (top-level targets)
  the missing components are created directly.  Under anything else they are first created
  *with the user's identity* (privileged mode switches the effective ids; unprivileged mode is
  the user already): in a host directory the user may write (a volume, ``/tmp``) that is what
  ``mkdir -p`` by the user would do, and root never lends its access to create directories in
  host trees the user could not write.  Where that is refused (the read-only image, a read-only
  or foreign volume) the nearest existing directory is *exploded*: a fresh tmpfs is mounted over
  it and each of its original entries is bound back in (directories and files as recursive
  binds, symlinks copied as links), so the view is unchanged; the missing components are created
  in that tmpfs, which is at once remounted read-only, nosuid, nodev.  The directory is listed
  with the user's identity: exploding never reveals the names in a directory the user cannot read.
* **Never leave the root.**  Every lookup is ``openat2(RESOLVE_IN_ROOT)`` (``fsutil``); the
  directory to explode is re-opened by its symlink-free location relative to an fd of its
  parent with ``O_NOFOLLOW`` and must be the very object we resolved; creation is relative to
  opened fds with ``O_EXCL``/``O_NOFOLLOW``.  Targets behind an image symlink that points out of
  the container are refused before we get here (``executor._check_target_path``), and the
  final location is re-checked against the target rules by the executor.  The exploding tmpfs
  is made detached (``fsmount``) and attached with ``move_mount``; filling it, creating the
  target in it and sealing it all go through its fd, never through the path again.
"""

from __future__ import annotations

import errno
import os
import stat

from shifter.errors import ContainerError, VolumeError
from shifter.runtime.linux import fsutil
from shifter.runtime.linux import syscalls as sc
from shifter.runtime.paths import container_path_parts

# A directory with more entries than this is not exploded (one bind mount per entry).
MAX_EXPLODE_ENTRIES = 4096
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_DIR_NOFOLLOW = _DIR | os.O_NOFOLLOW
_SEAL = sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV
# mkdir errors that mean "not here": explode instead.
_REFUSED = (errno.EROFS, errno.EACCES, errno.EPERM)
User = tuple[int, int, tuple[int, ...]]


def ensure_target(root_fd: int, path: str, directory: bool, user: User | None = None, *,
                  explode_ok: bool = True, in_host_trees: bool = True) -> int:
    """An ``O_PATH`` fd of container ``path``, created (with its missing parents) when absent.

    ``directory`` says what the last component becomes (a directory, or an empty file for a
    file volume).  ``user``: ``(uid, gid, groups)`` whose rights apply outside the root tmpfs
    (used when running as root for another user).  ``explode_ok=False``: raise ``EROFS`` instead
    of exploding (for optional mounts).  Raises ``OSError`` when a component cannot be created
    (e.g. ``ENOTDIR``, ``EEXIST`` for a dangling symlink) and :class:`VolumeError` for a
    directory too large to explode.  ``in_host_trees=False``: outside the root tmpfs, always
    explode (for site-made binds such as device nodes under the host's ``/dev``, where even a
    root container must not create files).
    """
    try:
        return fsutil.open_in_root(root_fd, path)
    except FileNotFoundError:
        pass
    parts = container_path_parts(path)
    keep = _existing_prefix(root_fd, parts)
    prefix, missing = "/".join(parts[:keep]), parts[keep:]
    parent = fsutil.open_in_root(root_fd, prefix, _DIR)
    try:
        if os.fstat(parent).st_dev == os.fstat(root_fd).st_dev:
            _create_chain(parent, missing, directory)
            return fsutil.open_in_root(root_fd, path)
        if in_host_trees and _create_as_user(parent, missing, directory, user):
            return fsutil.open_in_root(root_fd, path)
        if not explode_ok:
            raise OSError(errno.EROFS, "cannot create the target here", path)
    finally:
        os.close(parent)
    return _create_in_exploded(root_fd, prefix, missing, directory, user)


def _create_in_exploded(root_fd: int, prefix: str, missing: list[str], directory: bool, user: User | None) -> int:
    """Explode ``prefix``, create ``missing`` in the new tmpfs, seal it; an fd of the target.

    Everything after the explosion goes through the fd of the tmpfs it mounted, never through
    ``prefix`` again: ``prefix`` may run through a volume the user writes, where they can rename
    the exploded directory away (its mounts move with it) and plant a symlink or another directory
    under its name.  A second lookup would then make root create directories there (e.g. in a
    site volume reached through the link) and remount *that* mount read-only, leaving the real
    tmpfs writable.  (``test_symlink_swap_after_explode_cannot_redirect_the_seal``.)
    """
    top = explode(root_fd, prefix, user)
    try:
        _create_chain(top, missing, directory)
        # The new tmpfs only holds mount points: read-only from now on.
        sc.mount(None, fsutil.fd_path(top), None, _SEAL)
        # the sealed tmpfs holds what _create_chain made; anything else there is refused
        return fsutil.open_chain(top, missing, "a volume target made for the container")
    finally:
        os.close(top)


def _create_as_user(parent: int, names: list[str], directory: bool, user: User | None) -> bool:
    """Create ``names`` below ``parent`` with the user's rights; False when that is refused."""
    saved = _become(user)
    try:
        _create_chain(parent, names, directory)
        return True
    except OSError as err:
        if err.errno not in _REFUSED:
            raise
        return False
    finally:
        _restore(saved)


def _become(user: User | None) -> tuple[list[int], int] | None:
    """Switch the *effective* ids to ``user`` when running as root for someone else (the saved
    uid stays 0 so that :func:`_restore` can switch back); ``None`` when nothing changed."""
    if user is None or os.geteuid() != 0 or user[0] == 0:
        return None
    uid, gid, groups = user
    saved = (os.getgroups(), os.getegid())
    sc.setgroups(list(groups))
    os.setresgid(-1, gid, -1)
    os.setresuid(-1, uid, -1)
    return saved


def _restore(saved: tuple[list[int], int] | None) -> None:
    if saved is None:
        return
    os.setresuid(-1, 0, -1)
    os.setresgid(-1, saved[1], -1)
    sc.setgroups(saved[0])


def _existing_prefix(root_fd: int, parts: list[str]) -> int:
    """How many leading components of ``parts`` exist (resolved inside the root)."""
    for keep in range(len(parts) - 1, 0, -1):
        try:
            os.close(fsutil.open_in_root(root_fd, "/".join(parts[:keep])))
            return keep
        except FileNotFoundError:
            continue
    return 0


def _create_chain(parent: int, names: list[str], directory: bool) -> None:
    """Create ``names`` one below the other, starting in directory fd ``parent``.

    Each step is relative to the fd of the directory just created (``O_NOFOLLOW``): a component
    swapped for a symlink in between cannot redirect the next one.  Modes are set with
    ``fchmod`` so that the caller's umask cannot make a mount point untraversable.
    """
    current = os.dup(parent)
    try:
        for index, name in enumerate(names):
            if index == len(names) - 1 and not directory:
                fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                             dir_fd=current)
                os.fchmod(fd, 0o644)
                os.close(fd)
                return
            os.mkdir(name, 0o755, dir_fd=current)
            nxt = os.open(name, _DIR_NOFOLLOW, dir_fd=current)
            os.fchmod(nxt, 0o755)
            os.close(current)
            current = nxt
    finally:
        os.close(current)


def explode(root_fd: int, path: str, user: User | None = None) -> int:
    """Mount a tmpfs over the directory at container ``path`` and bind its entries back in;
    returns an fd naming the root of that tmpfs (the caller closes it).

    The directory is opened for listing with ``user``'s rights (see :func:`_become`)."""
    saved = _become(user)
    try:
        resolved = fsutil.open_in_root(root_fd, path, _DIR)
    except PermissionError:
        raise VolumeError(f"cannot create a volume target under {path}: you may not list that directory",
                          hint="mount on a directory that exists, or under one you can read") from None
    finally:
        _restore(saved)
    try:
        inside = inside_root(root_fd, resolved)
        if inside == "/":
            raise ContainerError("internal error: the container root itself cannot be exploded")
        head, name = inside.rsplit("/", 1)
        parent = fsutil.open_in_root(root_fd, head or "/", fsutil.PATH_FLAGS | os.O_DIRECTORY)
        try:
            listing = os.open(name, _DIR_NOFOLLOW, dir_fd=parent)  # as root: no new access, same object
            try:
                _check_same(listing, resolved, path)
                return _mount_over(parent, name, listing, path)
            finally:
                os.close(listing)
        finally:
            os.close(parent)
    finally:
        os.close(resolved)


def inside_root(root_fd: int, fd: int) -> str:
    """The symlink-free container path of ``fd`` (the kernel's view, checked to be inside)."""
    root = fsutil.real_path(root_fd).rstrip("/")
    real = fsutil.real_path(fd)
    if real == root:
        return "/"
    if not real.startswith(root + "/"):
        raise VolumeError(f"{real} is not inside the container root")
    return real[len(root):]


def _check_same(a: int, b: int, path: str) -> None:
    sa, sb = os.fstat(a), os.fstat(b)
    if (sa.st_dev, sa.st_ino) != (sb.st_dev, sb.st_ino):
        raise VolumeError(f"{path} changed while the volume target was being created",
                          hint="do not modify the directories of your volumes while shifter starts")


def _mount_over(parent: int, name: str, listing: int, path: str) -> int:
    """The tmpfs over ``listing`` (entry ``name`` of ``parent``), then its entries bound back;
    returns the fd naming the tmpfs's root."""
    entries = os.listdir(listing)
    if len(entries) > MAX_EXPLODE_ENTRIES:
        raise VolumeError(f"cannot create a volume target under {path}: it has {len(entries)} entries",
                          hint="mount on a directory that exists in the image, or under a smaller one")
    st = os.fstat(listing)
    options = {"mode": f"{stat.S_IMODE(st.st_mode) & 0o1777:o}", "size": "8m"}
    if os.geteuid() == 0:
        options.update(uid=str(st.st_uid), gid=str(st.st_gid))
    top = _new_tmpfs(parent, name, listing, options, path)
    try:
        for entry in entries:
            _bind_back(listing, entry, top)
    except BaseException:
        os.close(top)
        raise
    return top


def _new_tmpfs(parent: int, name: str, listing: int, options: dict[str, str], path: str) -> int:
    """A tmpfs attached over ``listing``; the fd naming its root.

    Made detached (``fsopen``/``fsmount``) and attached with ``move_mount``: the fd names exactly
    the new mount, whatever ``name`` leads to by then (see :func:`_create_in_exploded`).
    """
    try:
        fs = sc.fsmount_new("tmpfs", options, sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV)
    except OSError as err:
        if err.errno != errno.ENOSYS:
            raise
        return _mount_tmpfs_and_reopen(parent, name, listing, options, path)
    try:
        sc.move_mount(fs, listing)
    except OSError:
        os.close(fs)
        raise
    return fs


def _mount_tmpfs_and_reopen(parent: int, name: str, listing: int, options: dict[str, str], path: str) -> int:
    """Linux < 5.2: mount by fd, then look ``name`` up again in ``parent`` (without following a
    link) and accept only an empty directory on a device other than the covered directory's and
    the parent's (weaker than an fd from ``fsmount``: see docs/runtime.md, "Remount")."""
    data = ",".join(f"{key}={value}" for key, value in options.items())
    sc.mount("tmpfs", fsutil.fd_path(listing), "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, data)
    # ``listing`` still names the covered directory; a fresh lookup of ``name`` finds the tmpfs.
    top = os.open(name, _DIR_NOFOLLOW, dir_fd=parent)
    devices = (os.fstat(listing).st_dev, os.fstat(parent).st_dev)
    if os.fstat(top).st_dev in devices or os.listdir(top):
        os.close(top)
        raise VolumeError(f"{path} changed while the volume target was being created",
                          hint="do not modify the directories of your volumes while shifter starts")
    return top


def _bind_back(src_dir: int, name: str, dst_dir: int) -> None:
    """Re-create entry ``name`` of ``src_dir`` in ``dst_dir``: a link as a link, anything else as
    a recursive bind of the original onto an empty placeholder."""
    try:
        fsutil.bind_entry(src_dir, name, dst_dir)
    except OSError as err:
        if err.errno == errno.ENOENT:
            return  # gone meanwhile (only possible in a volume): nothing to carry over
        raise


__all__ = ["MAX_EXPLODE_ENTRIES", "ensure_target", "explode", "inside_root"]
