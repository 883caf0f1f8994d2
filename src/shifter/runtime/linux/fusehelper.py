"""The squashfuse helper, and the deadline on it: root never waits on a user for ever.

Threat.  Privileged ``shifter --user=U`` and ``shifter-setup`` serve an image from U's own
store with squashfuse run *as U* (a squashfs U wrote never reaches the kernel's squashfs driver).
U may stop that daemon (SIGSTOP, or ptrace: after ``exec`` it is an ordinary process of theirs).
A FUSE request waits in the kernel for the daemon's answer, uninterruptibly once the daemon has
read it, so every access root makes to the mount (listing the image, copying its ``/etc``, the
``statvfs`` of a remount), and the wait for the daemon's "ready", would hang root (a Slurm prolog,
``shifter-setup``) for ever.

Defence.
* Handles that cannot be confused.  The helper is forked through a short-lived root process H
  that is a child subreaper: the process that execs squashfuse (G) and the daemon G forks once it
  serves (D) are H's children while root opens a pidfd on each (an unreaped pid cannot be reused;
  the user cannot signal H, a root process).  H then exits, so the daemon is no child of the
  command root execs later, which must not find a foreign child (a shell's ``wait``).
* A watchdog thread (``_thread``: ``threading`` is too heavy for the launch path) is armed when
  root serves for another user and covers the privileged phase up to the privilege drop.  At the
  deadline it aborts the connection through fusectl, so every waiting request fails
  (ECONNABORTED/ENOTCONN) and root's blocked syscall returns, and SIGKILLs the helper's processes
  (a stopped daemon would otherwise linger).  The executor then reports one clear error.
* The connection number is read from ``/proc/self/mountinfo`` (the kernel answers from its mount
  table; a ``stat`` of the mount would ask the daemon).  fusectl is mounted detached (``fsmount``)
  when it is not mounted, so the host's mount table is not changed.

Stdlib builtins only: the unprivileged launch path imports this module for every image.
"""

from __future__ import annotations

import _signal
import _thread
import errno
import os

from shifter.errors import ContainerError
from shifter.runtime.linux import syscalls as sc

_PR_SET_CHILD_SUBREAPER = 36
_FUSECTL = "/sys/fs/fuse/connections"
_HELPER_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


class FuseTimeout(ContainerError):
    """The squashfuse daemon run as the user did not answer in time; the setup was undone."""


class Helper:
    """The squashfuse helper of one container: its processes (as pidfds) and its watchdog."""

    def __init__(self, pid: int, report: int, ack: int, go: int) -> None:
        self.pid = pid  # H, our child (0 once reaped)
        self._report, self._ack, self.go = report, ack, go
        self._lock = _thread.allocate_lock()  # guards everything below against the watchdog
        self._pidfds: list[int] = []
        self.daemons: list[int] = []  # pids of the serving daemon(s), for shifter-teardown
        self.connection = -1
        self.fired = False
        self._done = False
        self._acked = False  # H was told that root holds G's pidfd
        self._timer: _thread.LockType | None = None

    # --- the watchdog ------------------------------------------------------------------------

    def arm(self, seconds: float) -> None:
        """Start the deadline: :meth:`strike` after ``seconds`` unless :meth:`disarm` comes first."""
        timer = _thread.allocate_lock()
        timer.acquire()
        self._timer = timer
        _thread.start_new_thread(self._watch, (timer, seconds))

    def _watch(self, timer: _thread.LockType, seconds: float) -> None:
        if not timer.acquire(timeout=seconds):
            self.strike()

    def strike(self) -> None:
        """Abort the connection and kill the helper's processes (once, unless disarmed)."""
        with self._lock:
            if self._done or self.fired:
                return
            self.fired = True
            if self.connection >= 0:
                _abort_quietly(self.connection)
            for fd in self._pidfds:
                _kill_quietly(fd)

    def disarm(self) -> bool:
        """End the deadline (root is done with the mount); True if it had already struck."""
        with self._lock:
            self._done = True
            if self._timer is not None:
                self._timer.release()
                self._timer = None
            return self.fired

    def set_connection(self, number: int) -> None:
        with self._lock:
            self.connection = number
            if self.fired:
                _abort_quietly(number)

    def _track(self, pid: int) -> None:
        fd = _pidfd(pid)
        with self._lock:
            self._pidfds.append(fd)
            if self.fired:
                _kill_quietly(fd)

    def kill(self) -> None:
        """After a failure: abort the connection (if any) and kill every helper process, the
        daemon G may have forked included (H names it once G is dead)."""
        with self._lock:
            self._done = True
            if self.connection >= 0:
                _abort_quietly(self.connection)
            for fd in self._pidfds:
                _kill_quietly(fd)
        if self.go >= 0:
            os.close(self.go)  # G, if not told yet, exits
            self.go = -1
        if self._acked and self._ack >= 0:
            try:
                daemons = self._read_line().split()[1:]
            except (ContainerError, OSError):
                daemons = []
            for pid in daemons:
                fd = _pidfd(int(pid))  # H's unreaped child: the pid is still the daemon's
                _kill_quietly(fd)
                if fd >= 0:
                    os.close(fd)
        self.release()

    def release(self) -> None:
        """Close our handles; reap H if it is still ours (it exits as soon as we let it)."""
        for fd in (self._report, self._ack, self.go):
            if fd >= 0:
                os.close(fd)
        self._report = self._ack = self.go = -1
        if self.pid:
            os.waitpid(self.pid, 0)
            self.pid = 0
        with self._lock:
            for fd in self._pidfds:
                if fd >= 0:
                    os.close(fd)
            self._pidfds = []

    # --- talking to H ---------------------------------------------------------------------------

    def _read_line(self) -> str:
        data = b""
        while not data.endswith(b"\n"):
            chunk = os.read(self._report, 256)
            if not chunk:
                raise ContainerError("the squashfuse helper process ended unexpectedly",
                                     hint="this is a bug in shifter; please report it")
            data += chunk
        return data.decode()

    def serve(self, helper: str, source: str) -> None:
        """Let G exec ``helper source /dev/fd/N`` (the connection is mounted by now)."""
        os.write(self.go, f"{helper}\0{source}".encode())
        os.close(self.go)
        self.go = -1

    def wait_ready(self) -> int:
        """G's exit status: 0 once squashfuse daemonised (it serves), else its failure.  Blocks
        until G exits; a stopped G is killed by the watchdog, which ends the wait."""
        status, *daemons = self._read_line().split()
        for pid in daemons:
            self._track(int(pid))  # D is H's child (subreaper) and not reaped: the pid is D's
        self.daemons = [int(pid) for pid in daemons]
        os.close(self._ack)  # H may exit now: the daemon is reparented away from us
        self._ack = -1
        os.waitpid(self.pid, 0)
        self.pid = 0
        return int(status)


def start(fuse_fd: int, user: tuple[int, int, tuple[int, ...]]) -> Helper:
    """Fork H (which forks G); return once root holds a pidfd on G.  G waits for :meth:`Helper.serve`."""
    report_r, report_w = os.pipe()
    ack_r, ack_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _intermediate(fuse_fd, user, (report_w, ack_r, go_r), (report_r, ack_w, go_w))
    for fd in (report_w, ack_r, go_r):
        os.close(fd)
    helper = Helper(pid, report_r, ack_w, go_w)
    try:
        helper._track(int(helper._read_line()))
        os.write(ack_w, b"k")  # H may wait for G now
        helper._acked = True
    except BaseException:
        helper.kill()
        raise
    return helper


def _intermediate(fuse_fd: int, user: tuple[int, int, tuple[int, ...]], mine: tuple[int, int, int],
                  theirs: tuple[int, int, int]) -> None:
    """H: fork G, report its pid, wait for it, report its status and the daemon(s); never returns."""
    report, ack, go = mine
    try:
        for fd in theirs:
            os.close(fd)
        sc.prctl(_PR_SET_CHILD_SUBREAPER, 1)  # D, forked by G, becomes our child when G exits
        child = os.fork()
        if child == 0:
            os.close(report)
            os.close(ack)
            _serve(go, fuse_fd, user)
        os.close(go)
        os.close(fuse_fd)  # only the daemon may hold the connection: if it dies, the mount aborts
        os.write(report, f"{child}\n".encode())
        os.read(ack, 1)  # root holds a pidfd on G (or is gone)
        _, status = os.waitpid(child, 0)
        os.write(report, f"{os.waitstatus_to_exitcode(status)} {' '.join(map(str, _children()))}\n".encode())
        os.read(ack, 1)  # EOF: root holds pidfds on the daemon(s)
    finally:
        os._exit(0)


#: libfuse options for ``squashfuse``: an image is immutable (a content-addressed, read-only
#: squashfs that is replaced, never rewritten, on a re-pull), so the kernel may keep its pages
#: across opens (``kernel_cache``) and its names and attributes for a day instead of asking the
#: daemon again every second.  This is what lets launches that share a mount (image holders)
#: find the image in the page cache.  Mount options are not among them: the connection is
#: mounted by us before the daemon starts.
SQUASHFUSE_OPTIONS = "kernel_cache,entry_timeout=86400,attr_timeout=86400,negative_timeout=86400"


def helper_argv(helper: str, source: str, fuse_fd: int) -> list[str]:
    """The helper's argv: ``squashfuse -o OPTIONS IMAGE /dev/fd/N`` (another helper gets no options)."""
    options = ["-o", SQUASHFUSE_OPTIONS] if helper.rsplit("/", 1)[-1] == "squashfuse" else []
    return [helper, *options, source, f"/dev/fd/{fuse_fd}"]


def _serve(go: int, fuse_fd: int, user: tuple[int, int, tuple[int, ...]]) -> None:
    """G: wait for "go" (or EOF if the parent failed), become the user, exec squashfuse."""
    try:
        args = os.read(go, 65536).decode().split("\0")
        if len(args) >= 2:
            helper_identity(user)
            os.set_inheritable(fuse_fd, True)
            os.execvpe(args[0], helper_argv(args[0], args[1], fuse_fd), _HELPER_ENV)  # noqa: S606
    finally:
        os._exit(127)


def helper_identity(user: tuple[int, int, tuple[int, ...]]) -> None:
    """As root, serve the image as the container's user: squashfuse then parses a squashfs the
    user may have crafted (per-user store) with the user's rights only, and opens the file with
    them.  The FUSE fd was opened by root already; serving it needs no privilege."""
    uid, gid, groups = user
    if os.geteuid() != 0 or uid == 0:
        return  # in a user namespace we are the user already; a root container stays root
    sc.setgroups(list(groups))
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)


def _children() -> list[int]:
    """Our children (``/proc/.../children``, else a scan of ``/proc``)."""
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children", "rb") as handle:
            return [int(pid) for pid in handle.read().split()]
    except OSError:
        pass
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as handle:
                    fields = handle.read().rpartition(b")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == me:
                found.append(int(name))
    return found


# --- the FUSE connection ---------------------------------------------------------------------------

def connection_of(mountpoint: str, fstype: str = "fuse.squashfuse") -> int:
    """The fusectl number of the newest ``fstype`` mount at ``mountpoint``, from mountinfo; -1 if none."""
    found = -1
    for entry in mounts(fstype):
        if entry[1] == mountpoint:
            found = entry[0]
    return found


def mounts(fstype: str = "fuse.squashfuse") -> list[tuple[int, str]]:
    """``(connection, mount point)`` of every ``fstype`` mount in our namespace, oldest first."""
    with open("/proc/self/mountinfo", "rb") as handle:
        return parse_mountinfo(handle.read().decode("utf-8", "surrogateescape"), fstype)


def parse_mountinfo(text: str, fstype: str) -> list[tuple[int, str]]:
    """:func:`mounts` of a mountinfo text."""
    found = []
    for line in text.splitlines():
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) >= 5 and rest.split(" ", 1)[0] == fstype:
            major, _, minor = parts[2].partition(":")
            # fusectl names a connection by the kernel's dev_t: MKDEV(major, minor).
            found.append(((int(major) << 20) | int(minor), _unescape(parts[4])))
    return found


def _unescape(path: str) -> str:
    r"""mountinfo writes space, tab, newline and backslash as ``\ooo``."""
    if "\\" not in path:
        return path
    out, index = [], 0
    while index < len(path):
        if path[index] == "\\" and path[index + 1:index + 4].isdigit():
            out.append(chr(int(path[index + 1:index + 4], 8)))
            index += 4
        else:
            out.append(path[index])
            index += 1
    return "".join(out)


def abort_connection(number: int) -> None:
    """Abort FUSE connection ``number``: every request waiting on its daemon fails at once."""
    try:
        fd = os.open(f"{_FUSECTL}/{number}/abort", os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = _open_abort_detached(number)
    try:
        os.write(fd, b"1")
    finally:
        os.close(fd)


def _open_abort_detached(number: int) -> int:
    """fusectl is not mounted at its usual place: mount it detached (or, before Linux 5.2, there)."""
    try:
        mnt = sc.fsmount_new("fusectl", {}, 0)
    except OSError as err:
        if err.errno != errno.ENOSYS:
            raise
        sc.mount("fusectl", _FUSECTL, "fusectl", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
        return os.open(f"{_FUSECTL}/{number}/abort", os.O_WRONLY | os.O_CLOEXEC)
    try:
        return os.open(f"{number}/abort", os.O_WRONLY | os.O_CLOEXEC, dir_fd=mnt)
    finally:
        os.close(mnt)


def _abort_quietly(number: int) -> None:
    try:  # noqa: SIM105  (contextlib is not on the launch path)
        abort_connection(number)
    except OSError:
        pass  # already gone (the daemon died, or the mount went away)


def _pidfd(pid: int) -> int:
    """A pidfd on ``pid``; ``-pid`` on kernels without pidfds (< 5.3), where we fall back to the
    pid itself (safe while H holds the process unreaped; a small window after that)."""
    try:
        return os.pidfd_open(pid)
    except OSError as err:
        if err.errno != errno.ENOSYS:
            raise
        return -pid


def _kill_quietly(pidfd: int) -> None:
    try:
        if pidfd < 0:
            os.kill(-pidfd, _signal.SIGKILL)
        else:
            _signal.pidfd_send_signal(pidfd, _signal.SIGKILL)
    except OSError:
        pass  # already exited


def kill_daemon(pid: int, start_time: int) -> None:
    """SIGKILL ``pid`` if it still is the process that started at ``start_time`` (clock ticks
    after boot, ``/proc/PID/stat`` field 22): the pidfd pins the process, the check its identity."""
    try:
        fd = _pidfd(pid)
    except OSError:
        return
    try:
        if process_start_time(pid) == start_time:
            _kill_quietly(fd)
    finally:
        if fd >= 0:
            os.close(fd)


def process_start_time(pid: int) -> int:
    """Field 22 of ``/proc/PID/stat`` (-1 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rpartition(b")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        return -1
