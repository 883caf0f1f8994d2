"""Thin ctypes wrappers over the Linux system calls the runtime needs.

Python 3.11 has no ``os.unshare``/``os.setns``/``mount``, so we call ``libc.so.6`` directly.
The library is loaded by its soname: ``ctypes.util.find_library`` spawns ``ldconfig`` and
costs ~15 ms on the launch path.  Every wrapper raises :class:`OSError` with the errno (the
executor turns those into :class:`~shifter.errors.ContainerError` with a hint); nothing here
decides policy.
"""

from __future__ import annotations

import ctypes
import errno
import os

_libc = ctypes.CDLL("libc.so.6", use_errno=True)

# --- constants (linux/sched.h, linux/mount.h, linux/prctl.h, linux/capability.h) -------------
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_SLAVE = 1 << 19
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_PDEATHSIG = 1
PR_SET_SECUREBITS = 28

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# Syscall numbers for the calls glibc 2.36 has no wrapper for (or wraps oddly).
_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "openat2": 437, "capset": 126},
    "aarch64": {"pivot_root": 41, "openat2": 437, "capset": 91},
}
# The mount API of Linux 5.2 has the same numbers on every architecture.
_NR_OPEN_TREE, _NR_MOVE_MOUNT, _NR_FSOPEN, _NR_FSCONFIG, _NR_FSMOUNT = 428, 429, 430, 431, 432
_NR_MOUNT_SETATTR = 442  # Linux 5.12, the same on every architecture
_NR = _SYSCALLS.get(os.uname().machine, _SYSCALLS["x86_64"])

# openat2 resolve flags (linux/openat2.h)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

O_PATH = getattr(os, "O_PATH", 0o10000000)

# open_tree / move_mount / fsopen / fsconfig / fsmount (linux/mount.h, linux/fcntl.h)
OPEN_TREE_CLONE = 1
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x04
MOVE_MOUNT_T_EMPTY_PATH = 0x40
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8

_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return result


def _b(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def unshare(flags: int) -> None:
    """``unshare(2)``: move this process into new namespaces."""
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """``setns(2)``: join the namespace behind ``fd``."""
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """``mount(2)``.  ``target`` may be a ``/proc/self/fd/N`` path to mount on an opened fd."""
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), "mount", target)


def umount2(target: str, flags: int = 0) -> None:
    """``umount2(2)``."""
    _check(_libc.umount2(_b(target), flags), "umount2", target)


def pivot_root(new_root: str, put_old: str) -> None:
    """``pivot_root(2)`` (no glibc wrapper)."""
    res = _libc.syscall(ctypes.c_long(_NR["pivot_root"]), _b(new_root), _b(put_old))
    _check(res, "pivot_root", new_root)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """``prctl(2)``."""
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), "prctl")


def setgroups(groups: list[int] | tuple[int, ...]) -> None:
    """``setgroups(2)`` (``os.setgroups`` refuses an empty list on some builds; this does not)."""
    arr = (ctypes.c_uint * max(len(groups), 1))(*groups)
    _libc.setgroups.argtypes = [ctypes.c_size_t, ctypes.c_void_p]
    _check(_libc.setgroups(len(groups), arr), "setgroups")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def capset_zero() -> None:
    """Empty the effective, permitted and inheritable capability sets of this thread."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    res = _libc.syscall(ctypes.c_long(_NR["capset"]), ctypes.byref(header), ctypes.byref(data))
    _check(res, "capset")


def cap_last_cap() -> int:
    """The highest capability number this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as handle:
            return int(handle.read())
    except OSError:
        return 63


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """``openat2(2)``; raises ``OSError(ENOSYS)`` on kernels older than 5.6."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    res = _libc.syscall(ctypes.c_long(_NR["openat2"]), ctypes.c_int(dirfd), _b(path),
                        ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    return _check(res, "openat2", path)


def _syscall(number: int, what: str, *args: object) -> int:
    return _check(_libc.syscall(ctypes.c_long(number), *args), what)


def open_tree_clone(source_fd: int, recursive: bool) -> int:
    """``open_tree(fd, "", OPEN_TREE_CLONE)``: a detached bind mount of the object behind
    ``source_fd`` (its whole subtree when ``recursive``), as an fd naming the new mount's root.
    Raises ``OSError(ENOSYS)`` on kernels older than 5.2."""
    flags = OPEN_TREE_CLONE | os.O_CLOEXEC | AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    return _syscall(_NR_OPEN_TREE, "open_tree", ctypes.c_int(source_fd), b"", ctypes.c_uint(flags))


def move_mount(mount_fd: int, target_fd: int) -> None:
    """``move_mount``: attach the mount behind ``mount_fd`` on the object behind ``target_fd``.
    ``mount_fd`` goes on naming that mount (now attached)."""
    _syscall(_NR_MOVE_MOUNT, "move_mount", ctypes.c_int(mount_fd), b"", ctypes.c_int(target_fd), b"",
             ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH))


def fsmount_new(fstype: str, options: dict[str, str], attr: int) -> int:
    """``fsopen`` + ``fsconfig`` + ``fsmount``: a new, detached file system mount, as an fd
    naming its root (attach it with :func:`move_mount`).  ``attr``: ``MOUNT_ATTR_*``.
    Raises ``OSError(ENOSYS)`` on kernels older than 5.2."""
    fs_fd = _syscall(_NR_FSOPEN, "fsopen", _b(fstype), ctypes.c_uint(1))  # FSOPEN_CLOEXEC
    try:
        for key, value in options.items():
            _syscall(_NR_FSCONFIG, "fsconfig", ctypes.c_int(fs_fd), ctypes.c_uint(FSCONFIG_SET_STRING),
                     _b(key), _b(value), ctypes.c_int(0))
        _syscall(_NR_FSCONFIG, "fsconfig", ctypes.c_int(fs_fd), ctypes.c_uint(FSCONFIG_CMD_CREATE),
                 None, None, ctypes.c_int(0))
        return _syscall(_NR_FSMOUNT, "fsmount", ctypes.c_int(fs_fd), ctypes.c_uint(1),  # FSMOUNT_CLOEXEC
                        ctypes.c_uint(attr))
    finally:
        os.close(fs_fd)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def mount_setattr(fd: int, attr_set: int, attr_clr: int = 0, *, recursive: bool = False) -> None:
    """``mount_setattr(fd, "", AT_EMPTY_PATH[|AT_RECURSIVE])``: set/clear ``MOUNT_ATTR_*`` flags on
    the mount behind ``fd`` (and every mount below it when ``recursive``), attached or detached.
    Flags not named are left alone.  Raises ``OSError(ENOSYS)`` on kernels older than 5.12."""
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _syscall(_NR_MOUNT_SETATTR, "mount_setattr", ctypes.c_int(fd), b"", ctypes.c_uint(flags), ctypes.byref(attr),
             ctypes.c_size_t(ctypes.sizeof(attr)))


def mount_id(fd: int) -> int:
    """The id of the mount ``fd`` is on (``/proc/self/fdinfo``), -1 when the kernel does not say."""
    with open(f"/proc/self/fdinfo/{fd}", "rb") as handle:
        for line in handle.read().splitlines():
            if line.startswith(b"mnt_id:"):
                return int(line[7:])
    return -1


# --- loop devices (linux/loop.h) ---------------------------------------------------------------
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LOOP_CLR_FD = 0x4C01
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4


class _LoopInfo64(ctypes.Structure):
    _fields_ = [("lo_device", ctypes.c_uint64), ("lo_inode", ctypes.c_uint64),
                ("lo_rdevice", ctypes.c_uint64), ("lo_offset", ctypes.c_uint64),
                ("lo_sizelimit", ctypes.c_uint64), ("lo_number", ctypes.c_uint32),
                ("lo_encrypt_type", ctypes.c_uint32), ("lo_encrypt_key_size", ctypes.c_uint32),
                ("lo_flags", ctypes.c_uint32), ("lo_file_name", ctypes.c_uint8 * 64),
                ("lo_crypt_name", ctypes.c_uint8 * 64), ("lo_encrypt_key", ctypes.c_uint8 * 32),
                ("lo_init", ctypes.c_uint64 * 2)]


class _LoopConfig(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_uint32), ("block_size", ctypes.c_uint32), ("info", _LoopInfo64),
                ("reserved", ctypes.c_uint64 * 8)]


_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


def loop_attach_readonly(backing_fd: int, name: str = "", attempts: int = 16) -> tuple[int, str]:
    """Attach ``backing_fd`` to a free loop device, read-only and autoclear (see :func:`loop_attach`)."""
    return loop_attach(backing_fd, name, read_only=True, attempts=attempts)


def loop_attach(backing_fd: int, name: str = "", *, read_only: bool = True,
                attempts: int = 16) -> tuple[int, str]:
    """Attach ``backing_fd`` to a free loop device, autoclear (and read-only when asked).

    Returns ``(loop_fd, device_path)``.  The caller mounts the device and then closes
    ``loop_fd``: with ``LO_FLAGS_AUTOCLEAR`` the kernel detaches the device as soon as the
    last mount and the last open fd are gone, so a SIGKILLed container leaks nothing.
    ``LOOP_CONFIGURE`` sets the backing file and the flags in one step (no window in which the
    device is attached without autoclear).  Another process may grab the same free device
    between ``LOOP_CTL_GET_FREE`` and ``LOOP_CONFIGURE``; we then retry.
    """
    control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(attempts):
            number = _check(_libc.ioctl(control, LOOP_CTL_GET_FREE, None), "LOOP_CTL_GET_FREE")
            device = f"/dev/loop{number}"
            # The kernel makes the device read-only when this fd cannot write.
            loop_fd = os.open(device, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
            config = _LoopConfig()
            config.fd = backing_fd
            config.info.lo_flags = (LO_FLAGS_READ_ONLY if read_only else 0) | LO_FLAGS_AUTOCLEAR
            encoded = os.fsencode(name)[:63]
            ctypes.memmove(config.info.lo_file_name, encoded, len(encoded))
            if _libc.ioctl(loop_fd, LOOP_CONFIGURE, ctypes.byref(config)) == 0:
                return loop_fd, device
            err = ctypes.get_errno()
            os.close(loop_fd)
            if err != errno.EBUSY:
                raise OSError(err, f"LOOP_CONFIGURE: {os.strerror(err)}", device)
        raise OSError(errno.EBUSY, "no free loop device after several attempts")
    finally:
        os.close(control)

