"""Image holders: one user namespace and image mount per user, node and image.

Without a holder every unprivileged launch makes a user namespace and mounts the image with a
fresh squashfuse: a cold page cache on every launch, and two ranks of one MPI job in two user
namespaces, so shared memory through ``/proc/PID/fd`` and CMA (``process_vm_readv``) fail between
them (the kernel lets a process reach another's memory only from the same user namespace, or with
``CAP_SYS_PTRACE`` over it).

With a holder (the same for root's privileged launches, minus the user namespace: root's holder
keeps the kernel loop mount of a site image, which serves every user alike):

* The **first** launch (under the key's lock) makes the user namespace U and a mount namespace M
  as before, mounts the image there with squashfuse, and then forks the *holder*: a small
  process that stays in U and M after the launch has gone on (in a new mount namespace copied
  from M) to build its container.  It publishes the holder's record (pid, inodes of U and M)
  and a socket in the user's runtime directory.
* **Every later** launch of the same image file by the same user on the node finds the record,
  verifies it (below), registers with the holder over the socket, joins U (``setns``), joins M,
  and copies M into a mount namespace of its own (``unshare``): the image is mounted already, on
  the same FUSE connection, with a warm page cache.  Concurrent launches (``mpiexec -n 2
  shifter ...``) serialise on the key's lock, so all of them end up in one U.
* Unprivileged, the first launch builds its container's tree in M before forking the holder, and
  publishes an index file (``fast-….json``: the request's ``prepared.fast_section`` and the
  holder's identity) through which ``fastpath.try_enter`` enters that very tree for the same
  request: register, verify, ``setns`` into U and M, copy M, ``chroot``, drop, exec.
* The holder watches a pidfd of every launch registered with it (the first one included); once
  none is left it lingers ``imageMountLinger`` seconds, then (under the lock, with no launch
  waiting on its socket) removes its record, unmounts the image from M and exits.  squashfuse
  exits when the last container's copy of the mount is gone.  ``shifter-teardown --user=U``
  kills it at once (:func:`teardown`).

Trust: the runtime directory is the user's own (mode 0700, owned by the uid, never a symlink),
so no other user can find, read or plant anything there; a record is never trusted as it stands:
the joiner pins the named process with a pidfd, opens its namespaces, and checks their inodes
against the record, that the pidfd still names a live process (so the pid was not reused in
between), and that U was created by the caller's uid (``NS_GET_OWNER_UID``).  The kernel
allows ``setns`` into U only to its owner (or root) anyway.  A record that fails any check is
stale: it is removed and this launch becomes the first one.  Holders only ever run as the user,
with no privilege outside U.

Killing a container kills all its processes as before (they live in the container's own mount
namespace); the holder and its squashfuse are the only processes that may outlive a container,
for at most ``imageMountLinger`` seconds after the last one.
"""

from __future__ import annotations

import _signal
import _socket
import errno
import fcntl
import os
import select
import stat
import time

from shifter.runtime import holder as names
from shifter.runtime.linux import syscalls as sc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from shifter.runtime.plan import SharedImage

LOCK_WAIT = 20.0  # seconds a launch waits for another launch creating the same holder
ACK_WAIT = 5.0  # seconds a joiner waits for a live holder to register it
RETRY = 0.05  # seconds between a holder's attempts to take the lock before exiting
_SO_PEERCRED = 17
_PR_SET_DUMPABLE = 4


class Pending:
    """A first launch between taking the key's lock and handing the mount over to its holder."""

    def __init__(self, directory: str, key: str, lock_fd: int, share: SharedImage, mntns: int) -> None:
        self.directory, self.key, self.lock_fd, self.share = directory, key, lock_fd, share
        self.mntns = mntns  # the launcher's mount namespace (part of the key)
        # Hand over after the container's tree is built (it stays in the holder's namespace for
        # the fast path), not right after the image mount; the fast path's index file, if any.
        self.hold_tree = False
        self.fast: dict[str, object] | None = None  # prepared.fast_section of the request
        self.index = ""

    def path(self, suffix: str) -> str:
        return f"{self.directory}/{self.key}{suffix}"

    def release(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)  # closing the last fd of the lock file releases the flock
            self.lock_fd = -1


# --- the launch's side ----------------------------------------------------------------------------

def join_or_lock(share: SharedImage, user_ns: bool) -> Pending | bool:
    """Join a live holder of this image (``True``: now in its user namespace, when ``user_ns``,
    and in a fresh copy of its mount namespace, the image mounted), or return the
    :class:`Pending` state of a first launch (holding the key's lock).  ``False``: no sharing for
    this launch (no usable runtime directory, the lock not taken in time, or an image id unfit for
    a key).  Holders are per effective uid: the user's own, or root's (privileged launches, whose
    kernel loop mount serves every user alike)."""
    uid = os.geteuid()
    try:
        mntns = os.stat("/proc/self/ns/mnt").st_ino
        key = names.holder_key(share.image_id, os.stat(share.source), mntns)
        directory = runtime_dir(uid)
    except OSError:
        return False
    if key is None or directory is None:
        return False
    lock_fd = _lock(f"{directory}/{key}{names.LOCK_SUFFIX}")
    if lock_fd < 0:
        return False
    pending = Pending(directory, key, lock_fd, share, mntns)
    try:
        found = _find(pending, uid)
        if found is None:
            return pending
        try:
            _join(*found, user_ns)
        finally:
            for fd in found:
                os.close(fd)
    except BaseException:
        pending.release()
        raise
    pending.release()
    return True


def runtime_dir(uid: int, create: bool = True) -> str | None:
    """The user's holder directory (see ``runtime.holder.runtime_dirs``), created mode 0700 when
    missing; ``None`` when it exists but is not a directory of ``uid``'s closed to others."""
    login, shm = names.runtime_dirs(uid)
    parent = os.path.dirname(login)
    try:
        st = os.lstat(parent)
        use_login = stat.S_ISDIR(st.st_mode) and st.st_uid == uid
    except OSError:
        use_login = False
    path = login if use_login else shm
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError:
            return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        return None  # another user's (or an open) directory: never used
    return path


def _lock(path: str) -> int:
    """The key's lock (flock on ``path``), or -1 when another launch held it past LOCK_WAIT."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return -1
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return -1
            time.sleep(0.002)


def _find(pending: Pending, uid: int) -> tuple[int, int] | None:
    """The verified (user ns fd, mount ns fd) of the live holder of ``pending.key``, registered
    with it; ``None`` (the stale record removed) when there is none."""
    record = _read_record(pending.path(names.RECORD_SUFFIX), uid)
    if record is None:
        _forget(pending)
        return None
    pid, userns, mntns = record
    fds: list[int] = []
    try:
        pidfd = sc.pidfd_open(pid)
        fds.append(pidfd)
        user_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        fds.append(user_fd)
        mnt_fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        fds.append(mnt_fd)
        if (os.fstat(user_fd).st_ino, os.fstat(mnt_fd).st_ino) != (userns, mntns):
            raise _Stale
        sc.pidfd_signal(pidfd, 0)  # the pid still names the process the pidfd pinned
        if sc.ns_owner_uid(user_fd) != uid:
            raise _Stale
        _register(pending.path(names.SOCKET_SUFFIX))
    except (OSError, _Stale):
        for fd in fds:
            os.close(fd)
        _forget(pending)
        return None
    os.close(pidfd)
    return user_fd, mnt_fd


class _Stale(Exception):
    """A record that names no live holder of ours."""


def _read_record(path: str, uid: int) -> tuple[int, int, int] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
            return None
        return names.decode_record(os.read(fd, names.MAX_RECORD))
    except OSError:
        return None
    finally:
        os.close(fd)


def _forget(pending: Pending) -> None:
    """Remove a stale record and socket (under the lock: no live holder owns them)."""
    for suffix in (names.RECORD_SUFFIX, names.SOCKET_SUFFIX):
        _unlink(pending.path(suffix))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return


def _register(socket_path: str) -> None:
    """Tell the holder this process uses its mount (it watches a pidfd of ours): it answers once
    it has one.  No answer within ACK_WAIT: it is hung, and treated as stale."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(ACK_WAIT)
        sock.connect(socket_path)
        if sock.recv(1) != b"k":
            raise _Stale
    except TimeoutError:
        raise _Stale from None
    finally:
        sock.close()


def _join(user_fd: int, mnt_fd: int, user_ns: bool) -> None:
    """Into the holder's user namespace (as its owner we get every capability in it; root's
    holders have none of their own), into its mount namespace, then a private copy of that for
    this container."""
    if user_ns:
        sc.setns(user_fd, sc.CLONE_NEWUSER)
    sc.setns(mnt_fd, sc.CLONE_NEWNS)
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)


def hand_over(pending: Pending, udi_mount: str = "") -> None:
    """The first launch, its image mounted (and, with ``pending.hold_tree``, its container's tree
    built at ``udi_mount``) in the namespaces it made: fork the holder into them, publish its
    record (and, for a held tree, the index file through which the fast path enters it), release
    the lock, and move on into a private copy of the mount namespace.

    If the image file changed since the key was made (squashfuse may have opened the new one),
    nothing is published and this launch keeps its mount to itself.
    """
    try:
        same = names.holder_key(pending.share.image_id, os.stat(pending.share.source),
                                pending.mntns) == pending.key
        if same:
            fast = pending.fast if pending.hold_tree and udi_mount else None
            request = fast.get("key") if fast is not None else None
            if isinstance(request, list):
                pending.index = names.index_name(request, _config_path(), pending.mntns)
            holder_pid = _start_holder(pending)
            if holder_pid > 0 and fast is not None and pending.index:
                _publish_index(pending, holder_pid, fast, udi_mount)
    finally:
        pending.release()
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)


def _config_path() -> str:
    from shifter.config.site import config_path  # noqa: PLC0415  (loaded already)

    return config_path()


def _publish_index(pending: Pending, holder_pid: int, fast: dict[str, object], udi_mount: str) -> None:
    """``fast-….json``: what ``fastpath`` needs to enter the held tree (atomically written)."""
    record = {"version": 1, "key": pending.key, "pid": holder_pid,
              "userns": os.stat("/proc/self/ns/user").st_ino, "mntns": os.stat("/proc/self/ns/mnt").st_ino,
              "uid": os.getuid(), "gid": os.getgid(), "udi_mount": udi_mount, "fast": fast}
    _write_atomic(f"{pending.directory}/{pending.index}", _dumps(record).encode())


def _dumps(value: object) -> str:
    """``json.dumps`` for the index record (plain values only) without importing ``json`` (and
    ``re``, several ms on a launch): strings through the C encoder ``json`` itself uses."""
    import _json  # noqa: PLC0415  (built in C)

    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return str(_json.encode_basestring_ascii(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_dumps(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_dumps(str(k))}: {_dumps(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot encode {type(value).__name__} in a holder index")


def _start_holder(pending: Pending) -> int:
    sock_path = pending.path(names.SOCKET_SUFFIX)
    _unlink(sock_path)
    listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        listener.bind(sock_path)
        listener.listen(128)
        me = sc.pidfd_open(os.getpid())
    except OSError:
        listener.close()
        return 0
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:
            _daemonise(listener.fileno(), me, write_end, pending)  # never returns
        os.close(write_end)
        os.waitpid(pid, 0)
        holder_pid = int(os.read(read_end, 32) or b"0")
    finally:
        os.close(read_end)
        os.close(me)
        listener.close()
    if holder_pid > 0:
        _publish(pending, holder_pid)
    return holder_pid


def _publish(pending: Pending, holder_pid: int) -> None:
    """Write the record atomically (a joiner never reads half of one)."""
    userns = os.stat("/proc/self/ns/user").st_ino  # the holder's: it was forked in these
    mntns = os.stat("/proc/self/ns/mnt").st_ino
    _write_atomic(pending.path(names.RECORD_SUFFIX), names.encode_record(holder_pid, userns, mntns))


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(tmp, path)


# --- the holder -----------------------------------------------------------------------------------

def _daemonise(listen_fd: int, me: int, write_end: int, pending: Pending) -> None:
    """In the forked child: a new session, and a grandchild (reparented away from the command
    this launch becomes, which must never see an unknown child) that serves as the holder."""
    try:
        os.setsid()
        if os.fork() == 0:
            os.write(write_end, str(os.getpid()).encode())
            keep = {listen_fd, me}
            _close_others(keep)
            _serve(listen_fd, me, pending)
    finally:
        os._exit(0)


def _close_others(keep: set[int]) -> None:
    """Only the listening socket and the creator's pidfd stay open; stdio goes to /dev/null
    (the holder must not hold the launch's terminal, pipes or the key's lock)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                continue  # the fd listdir itself used
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    os.chdir("/")
    for sig in (_signal.SIGINT, _signal.SIGHUP, _signal.SIGPIPE, _signal.SIGQUIT):
        _signal.signal(sig, _signal.SIG_IGN)


def _serve(listen_fd: int, first_user: int, pending: Pending) -> None:
    """Keep the mount while launches use it; linger; then end (see the module docstring)."""
    listener = _socket.socket(fileno=listen_fd)
    poller = select.poll()
    poller.register(listen_fd, select.POLLIN)
    poller.register(first_user, select.POLLIN)
    users = {first_user}
    idle_since = 0.0
    linger = float(pending.share.linger)
    while True:
        timeout = -1 if users else max(RETRY, linger - (time.monotonic() - idle_since)) * 1000
        for fd, _events in poller.poll(timeout):
            if fd == listen_fd:
                _accept(listener, poller, users)
            elif fd in users:
                poller.unregister(fd)
                users.discard(fd)
                os.close(fd)
        if users:
            idle_since = 0.0
            continue
        if not idle_since:
            idle_since = time.monotonic()
        if time.monotonic() - idle_since >= linger and _try_end(pending, listen_fd):
            return


def _accept(listener: _socket.socket, poller: select.poll, users: set[int]) -> None:
    """Register a launch: a pidfd of the connecting process (``SO_PEERCRED``), then the answer."""
    try:
        conn_fd, _ = listener._accept()  # type: ignore[attr-defined]
    except OSError:
        return
    conn = _socket.socket(fileno=conn_fd)
    try:
        cred = conn.getsockopt(_socket.SOL_SOCKET, _SO_PEERCRED, 12)
        pid, uid = int.from_bytes(cred[0:4], "little"), int.from_bytes(cred[4:8], "little")
        if uid != os.getuid():
            return  # only our own directory reaches the socket; never serve anyone else
        pidfd = sc.pidfd_open(pid)
        users.add(pidfd)
        poller.register(pidfd, select.POLLIN)
        conn.send(b"k")
    except OSError:
        return
    finally:
        conn.close()


def _pending_connection(listen_fd: int) -> bool:
    poller = select.poll()
    poller.register(listen_fd, select.POLLIN)
    return bool(poller.poll(0))


def _try_end(pending: Pending, listen_fd: int) -> bool:
    """End if no launch holds the lock or waits on the socket: remove our record (if it still is
    ours) and socket, and unmount the image from the mount namespace we hold."""
    fd = _lock_now(pending.path(names.LOCK_SUFFIX))
    if fd < 0:
        return False
    try:
        if _pending_connection(listen_fd):
            return False
        record = _read_record(pending.path(names.RECORD_SUFFIX), os.getuid())
        if record is not None and record[0] == os.getpid():
            _forget(pending)
        if pending.index:
            _forget_index(f"{pending.directory}/{pending.index}")
        try:
            sc.umount2(pending.share.mountpoint, sc.MNT_DETACH)
        except OSError:
            return True  # the namespace goes with us anyway
        return True
    finally:
        os.close(fd)


def _forget_index(path: str) -> None:
    """Remove the fast path's index file if it still names this holder (a later holder of the
    same request may have replaced it)."""
    from shifter._fastjson import loads  # noqa: PLC0415  (the holder only, at its end)

    try:
        with open(path, "rb") as handle:
            record = loads(handle.read(1 << 20))
    except (OSError, ValueError):
        return
    if isinstance(record, dict) and record.get("pid") == os.getpid():
        _unlink(path)


def _lock_now(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return -1
    return fd


# --- teardown (root) ------------------------------------------------------------------------------

def teardown(uid: int) -> int:
    """Kill every verified holder of ``uid`` on this node and remove its files; the number
    killed.  Root only (``shifter-teardown --user=U``)."""
    killed = 0
    for directory in names.runtime_dirs(uid):
        try:
            st = os.lstat(directory)
            entries = os.listdir(directory) if stat.S_ISDIR(st.st_mode) and st.st_uid == uid else []
        except OSError:
            continue
        for entry in entries:
            if entry.startswith("fast-") and entry.endswith(".json"):
                _unlink(f"{directory}/{entry}")  # every holder of the user goes
            if entry.endswith(names.RECORD_SUFFIX):
                key = entry[: -len(names.RECORD_SUFFIX)]
                killed += _kill_holder(f"{directory}/{key}", uid)
    return killed


def _kill_holder(base: str, uid: int) -> int:
    record = _read_record(base + names.RECORD_SUFFIX, uid)
    found = 0
    if record is not None:
        pid, userns, _ = record
        try:
            pidfd = sc.pidfd_open(pid)
        except OSError:
            pidfd = -1
        if pidfd >= 0:
            try:
                if os.stat(f"/proc/{pid}/ns/user").st_ino == userns:
                    sc.pidfd_signal(pidfd, _signal.SIGKILL)
                    found = 1
            except OSError as err:
                if err.errno != errno.ESRCH:
                    raise
            finally:
                os.close(pidfd)
    for suffix in (names.RECORD_SUFFIX, names.SOCKET_SUFFIX):
        _unlink(base + suffix)
    return found




# --- prepared containers: one user namespace per prepared container -----------------------------

def start_namespace_holder(uid: int, gid: int) -> tuple[int, int]:
    """(root, ``shifter-setup``) A process of ``uid`` that holds a user namespace of its own
    (``uid``/``gid`` mapped to themselves), for every entry into the prepared container to join:
    ``(pid, inode of the user namespace)``.  It is ``/bin/sleep infinity``, exec'd in the new
    namespace as the user (dumpable, so the user's launches may open its namespace), with nothing
    of root's: no groups, no capabilities outside it, ``no_new_privs``.  ``shifter-teardown``
    kills it (:func:`end_namespace_holder`); the user may too (entries then make their own)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                _become_namespace_holder(uid, gid, write_end)
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        os.waitpid(pid, 0)
        fields = os.read(read_end, 64).split()
    finally:
        os.close(read_end)
    if len(fields) != 2:
        raise OSError(errno.ECHILD, "the namespace holder did not start")
    return int(fields[0]), int(fields[1])


def _become_namespace_holder(uid: int, gid: int, write_end: int) -> None:
    sc.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    # Dropping from root made us non-dumpable: /proc/self would stay root's (no maps to write).
    sc.prctl(_PR_SET_DUMPABLE, 1)
    sc.unshare(sc.CLONE_NEWUSER)
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1\n"), ("gid_map", f"{gid} {gid} 1\n")):
        fd = os.open(f"/proc/self/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    os.write(write_end, f"{os.getpid()} {os.stat('/proc/self/ns/user').st_ino}".encode())
    _close_others(set())
    os.execve("/bin/sleep", ["sleep", "infinity"], {})  # noqa: S606


def join_user_namespace(pid: int, userns: int) -> bool:
    """Join the prepared container's user namespace held by ``pid`` if it is still the one
    recorded (pidfd, inode), then a private mount namespace of our own; ``False`` (nothing
    changed) when that holder is gone.  ``shifter.runtime.linux.fastpath`` does the same."""
    try:
        pidfd = sc.pidfd_open(pid)
    except OSError:
        return False
    try:
        user_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(pidfd)
        return False
    try:
        if os.fstat(user_fd).st_ino != userns:
            return False
        sc.pidfd_signal(pidfd, 0)
        sc.setns(user_fd, sc.CLONE_NEWUSER)
    except OSError:
        return False
    finally:
        os.close(user_fd)
        os.close(pidfd)
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    return True


def end_namespace_holder(pid: int, userns: int) -> None:
    """(root) Kill the prepared container's namespace holder, if ``pid`` still is it."""
    try:
        pidfd = sc.pidfd_open(pid)
    except OSError:
        return
    try:
        if os.stat(f"/proc/{pid}/ns/user").st_ino == userns:
            sc.pidfd_signal(pidfd, _signal.SIGKILL)
    except OSError:
        return
    finally:
        os.close(pidfd)


__all__ = ["Pending", "end_namespace_holder", "hand_over", "join_or_lock", "join_user_namespace", "runtime_dir",
           "start_namespace_holder", "teardown"]
