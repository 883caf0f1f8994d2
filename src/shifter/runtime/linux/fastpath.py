"""Fast entry into a prepared container: ``shifter`` in a few milliseconds, or not at all.

``shifter.cli.shifter.main`` calls :func:`try_enter` before anything else.  It either enters the
container ``shifter-setup`` prepared at ``udiMount`` and execs the command (never returning), or
returns ``None`` and the full path runs as usual (which builds a private container, or enters the
prepared one more slowly).  It returns an exit status only for a failure after the point of no
return (the new namespaces exist), printing the same error the full path would.

It must give *exactly* the full path's result, so it is a cache, not a second implementation:

* ``shifter-setup`` stores in the record (``shifter.runtime.prepared.fast_section``) everything
  that does not depend on the caller: the request key (the raw ``--image``/type, ``--volume``
  specs and ``--module`` value it was given), the identity of the site configuration file and of
  every store file image resolution reads (present or absent), the image ACL, ``ENV``,
  ``ENTRYPOINT``, ``CMD`` and ``WORKDIR``, and the module/site environment rules, flattened.
* Here we parse the command line with a parser that knows only the options that matter and gives
  up on anything else (``--env-file``, ``--entrypoint=CMD``, ``--user``, ``-v``, abbreviations,
  clustered flags, errors); check the key, the caller's ids and ACL, and that every recorded file
  is unchanged (``stat``: device, inode, mode, owner, size, mtime, ctime); then compose the
  environment, command and working directory the way ``shifter.runtime.request`` does.
  ``tests/unit/test_runtime_fastpath.py`` checks both give the same argv, env and directories.
* Every trust check of ``shifter.runtime.prepared`` is kept: the record is a regular root-owned
  file nobody else can write, its ``udi_mount`` is the configuration's, and ``udiMount`` is a mount.
* Any doubt (root, setuid, an unknown record shape, a changed file, an unexpected errno) means
  ``None``: the full path decides.

Then the entry itself, as ``prepared_entry_plan`` + ``shifter.runtime.linux.executor`` do it: a
user and a mount namespace (the caller's uid/gid mapped to themselves, every mount private),
``chroot``, the privilege drop (bounding and ambient sets, ``setresgid``/``setresuid``, effective/
permitted/inheritable sets, ``no_new_privs``), ``chdir``, ``execve`` with the PATH lookup of
``os.execvpe`` inside the container.

Speed is the point (a prepared entry is budgeted at 10 ms, interpreter start included), so this
module uses only built-in modules plus ``_ctypes`` (the C half of ``ctypes``; ``import ctypes``
costs ~2.5 ms) and, when a record exists, ``_json`` (the C scanner of ``json``): no ``os``, no
``__future__``, not even ``shifter._fastjson`` (``tests/unit/test_runtime_imports.py`` guards
the list).  Annotations are evaluated at definition time: ``typing`` names are strings.
"""

import posix
import sys

TYPE_CHECKING = False  # typing costs milliseconds: annotations naming its types are strings
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Record = dict[str, Any]  # a parsed record, or its "fast" section
    Libc = dict[str, Callable[..., int]]

RECORD_VERSION = 1  # shifter.runtime.prepared.RECORD_VERSION
FAST_VERSION = 1  # the layout of record["fast"], written by prepared.fast_section
DEFAULT_CONFIG_PATH = "/etc/shifter/udiRoot.conf"  # shifter.config.site.DEFAULT_CONFIG_PATH
DEFAULT_UDI_MOUNT = "/var/lib/shifter/udiMount"  # SiteConfig.udi_mount
DEFAULT_COMMAND = ["/bin/sh"]  # shifter.runtime.request.DEFAULT_COMMAND
DEFPATH = "/bin:/usr/bin"  # os.defpath: execvpe's search path when the environment has no PATH
MAX_FILE = 1024 * 1024  # the record and the configuration are small

# asm-generic/errno-base.h (the errno module costs an import), linux/sched.h, linux/mount.h,
# linux/prctl.h, linux/capability.h
ENOENT = 2
EINVAL = 22
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAPABILITY_VERSION_3 = 0x20080522
CAPSET_SYSCALL = {"x86_64": 126, "aarch64": 91}  # no glibc wrapper

# Options with a value, by long and short name.  Everything else (--help, --verbose, --user,
# --env-file, --entrypoint=CMD, abbreviations, clustered short flags) goes to the full parser.
_VALUE_LONG = ("image", "volume", "env", "module")
_VALUE_SHORT = {"i": "image", "V": "volume", "e": "env", "m": "module", "w": "workdir"}


class Request:
    """What the command line asked for, after the environment defaults (``options._build``)."""

    __slots__ = ("args", "clearenv", "entrypoint", "env", "image", "image_type", "modules", "volumes",
                 "workdir", "workdir_given")

    def __init__(self) -> None:
        self.image: str | None = None
        self.image_type: str | None = None
        self.volumes: list[str] = []
        self.modules: str | None = None
        self.env: list[tuple[str, str]] = []
        self.clearenv = False
        self.entrypoint = False
        self.workdir: str | None = None
        self.workdir_given = False
        self.args: list[str] = []


class Entry:
    """What to run, where: the fast path's equivalent of ``Chdir`` + ``Exec``."""

    __slots__ = ("argv", "candidates", "env")

    def __init__(self, argv: list[str], env: dict[str, str], candidates: tuple[str, ...]) -> None:
        self.argv = argv
        self.env = env
        self.candidates = candidates


def request_key(image: str | None, image_type: str | None, volumes: list[str] | tuple[str, ...],
                modules: str | None) -> list[object]:
    """The part of a request a prepared container must match, as ``shifter-setup`` was given it.

    Raw strings on purpose: the same strings resolve to the same image, volumes and modules while
    the recorded files are unchanged.  An equivalent request spelled differently takes the full path.
    """
    return [image, image_type, list(volumes), modules]


# --- command line --------------------------------------------------------------------------------

def parse_request(argv: list[str], environ: dict[str, str]) -> Request | None:
    """Parse like ``shifter.runtime.options.parse_options``, or ``None`` for anything unusual."""
    req = Request()
    values: dict[str, str | None] = {}  # image, module, workdir: the last one wins, as in getopt
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            index += 1
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if name in ("clearenv", "entrypoint") and not eq:
                setattr(req, name, True)
            elif name == "workdir":  # optional value: only with '='
                values["workdir"] = value if eq else None
            elif name in _VALUE_LONG:
                if not eq:
                    index += 1
                    if index >= len(argv):
                        return None
                    value = argv[index]
                _collect(req, values, name, value)
            else:
                return None
        elif arg.startswith("-") and arg != "-":
            letter, value = arg[1], arg[2:]
            if arg == "-E":
                req.clearenv = True
            elif letter in _VALUE_SHORT:
                if not value:
                    index += 1
                    if index >= len(argv):
                        return None
                    value = argv[index]
                _collect(req, values, _VALUE_SHORT[letter], value)
            else:
                return None
        else:
            break
        index += 1
    req.args = argv[index:]
    return _apply_defaults(req, values, environ)


def _collect(req: Request, values: dict[str, str | None], dest: str, value: str) -> None:
    if dest == "volume":
        req.volumes.append(value)
    elif dest == "env":
        name, sep, text = value.partition("=")
        # shifter.runtime.environment.parse_assignment; a bad one is the full path's error.
        req.env.append((name, text) if sep and _valid_name(name) and "\0" not in text else ("", ""))
    else:
        values[dest] = value


def _apply_defaults(req: Request, values: dict[str, str | None], environ: dict[str, str]) -> Request | None:
    """``options._build`` and the checks of ``request.spec_from_options`` that can fail."""
    if any(not name for name, _ in req.env):
        return None
    if "image" in values:
        req.image = values["image"]
    elif environ.get("SHIFTER_IMAGE"):
        req.image, req.image_type = environ["SHIFTER_IMAGE"], environ.get("SHIFTER_IMAGETYPE") or None
    elif environ.get("SHIFTER"):
        req.image = environ["SHIFTER"]
    if not req.image or not req.image.strip():
        return None
    if not req.volumes and environ.get("SHIFTER_VOLUME"):
        req.volumes = [environ["SHIFTER_VOLUME"]]
    req.modules = values["module"] if "module" in values else environ.get("SHIFTER_MODULE") or None
    if req.modules is not None and not req.modules:
        return None
    if "workdir" in values:
        req.workdir_given = True
        workdir = values["workdir"]
        if workdir is not None:
            # request._check_workdir: absolute, no NUL, no '..'; normalised.
            parts = [p for p in workdir.split("/") if p not in ("", ".")]
            if not workdir.startswith("/") or "\0" in workdir or ".." in parts:
                return None
            req.workdir = "/" + "/".join(parts)
    return req


def _valid_name(name: str) -> bool:
    return name.isascii() and name.isidentifier()  # environment.is_valid_name


# --- the decision (pure) -------------------------------------------------------------------------

def decide(req: Request, record: "Record", environ: dict[str, str], ids: tuple[int, int], *,
           groups: list[int], cwd: str, account: "list[tuple[str, str]] | None" = None) -> Entry | None:
    """The entry for ``req`` if the prepared container ``record`` serves it, else ``None``.

    ``ids`` are the caller's (uid, gid); ``groups`` its supplementary groups; ``cwd`` its working
    directory; ``account`` its :func:`identity_pairs` (looked up when needed if not given).  The
    files the record names must have been checked already (:func:`files_unchanged`).
    """
    fast = record["fast"]
    if not isinstance(fast, dict) or fast.get("version") != FAST_VERSION:
        return None
    if [record["uid"], record["gid"]] != list(ids):
        return None
    if fast["key"] != request_key(req.image, req.image_type, req.volumes, req.modules):
        return None
    if not _acl_allows(fast["acl"], ids, groups):
        return None  # the full path raises the access error
    argv = _command(req, fast)
    if argv is None or not argv[0]:  # an empty command name: leave it to the full path's errors
        return None
    env = compose_env(fast, environ, req, account, ids[0])
    if env is None:
        return None
    return Entry(argv, env, _candidates(req, cwd, fast["workdir"]))


def _acl_allows(acl: dict[str, list[int]] | None, ids: tuple[int, int], groups: list[int]) -> bool:
    """``images.check_access`` for a non-root caller (``acl`` as ``prepared.fast_section`` wrote it)."""
    if acl is None:
        return True
    uid, gid = ids
    return uid in acl["users"] or gid in acl["groups"] or any(g in acl["groups"] for g in groups)


def _command(req: Request, fast: "Record") -> list[str] | None:
    """``request.select_command`` (``--entrypoint=CMD`` never gets here)."""
    if not req.entrypoint:
        return req.args or list(DEFAULT_COMMAND)
    if not fast["entrypoint"]:
        return None  # the full path's error: the image has no ENTRYPOINT
    return [*fast["entrypoint"], *(req.args or fast["cmd"])]


def compose_env(fast: "Record", environ: dict[str, str], req: Request,
                account: "list[tuple[str, str]] | None", uid: int) -> dict[str, str] | None:
    """``environment.compose_environment``: caller (unless ``-E``), the identity variables it lacks
    (the caller is the container's user here: nothing is replaced), image ENV, ``--env``, then the
    module and site rules (flattened by ``shifter-setup`` in the order ``apply_rules`` applies them).
    ``None`` when the caller's passwd entry is needed but cannot be read (the full path decides)."""
    env: dict[str, str] = {}
    if not req.clearenv:
        for name, value in environ.items():
            if _valid_name(name) and "\0" not in value:
                env[name] = value
    if any(name not in env for name in IDENTITY_NAMES):
        account = account if account is not None else identity_pairs(uid)
        if account is None:
            return None
        for name, value in account:  # environment.apply_identity(..., replace=False)
            env.setdefault(name, value)
    env.update(fast["env"])
    env.update(req.env)
    for op, name, value in fast["rules"]:
        if op == "set":
            env[name] = value
        elif op == "append":
            env[name] = f"{env[name]}:{value}" if env.get(name) else value
        elif op == "prepend":
            env[name] = f"{value}:{env[name]}" if env.get(name) else value
        else:
            env.pop(name, None)
    return env


IDENTITY_NAMES = ("HOME", "USER", "LOGNAME", "SHELL")


def identity_pairs(uid: int) -> "list[tuple[str, str]] | None":
    """``environment.identity_env`` of the caller (``cli.shifter.caller_identity``'s passwd entry), or
    ``None`` when it has none (the full path then uses fallbacks we do not copy)."""
    import pwd  # noqa: PLC0415  (built in; only when a variable is missing, e.g. with --clearenv)

    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return None
    pairs = [("HOME", entry.pw_dir), ("USER", entry.pw_name), ("LOGNAME", entry.pw_name)]
    return [*pairs, ("SHELL", entry.pw_shell)] if entry.pw_shell else pairs


def _candidates(req: Request, cwd: str, image_workdir: str) -> tuple[str, ...]:
    """``request.chdir_candidates`` + ``plan.finish_ops``: where to start, best first, ``/`` last."""
    if req.workdir_given:
        chosen = req.workdir if req.workdir is not None else (image_workdir or cwd)
        wanted: tuple[str, ...] = (chosen,) if chosen else ()
    else:
        wanted = tuple(dict.fromkeys(d for d in (cwd, image_workdir) if d and d.startswith("/")))
    if not wanted:
        wanted = (cwd, req.workdir if req.workdir is not None else image_workdir)
    return tuple(path for path in (*wanted, "/") if path.startswith("/"))


# --- files ---------------------------------------------------------------------------------------

def file_state(path: str) -> list[int] | None:
    """What identifies a file's content: ``None`` when it does not exist (``ENOENT``/``ENOTDIR``,
    the errors the store lookups treat as "absent"); other errors are raised.  Any write, rename
    over it, chmod or chown changes ctime, which nobody can set back."""
    try:
        return _identity(posix.stat(path))
    except (FileNotFoundError, NotADirectoryError):
        return None


def files_unchanged(fast: "Record", uid: int) -> bool:
    """Every file image resolution reads is as it was at setup, and readable where it is read;
    and the caller's home, if the per-user store path depends on it, is the one setup used."""
    for path, state, read in fast["witnesses"]:
        try:
            if file_state(path) != state:
                return False
        except OSError:
            return False
        if state is not None and read and not posix.access(path, posix.R_OK):
            return False
    home = fast["home"]
    if home is not None:
        import pwd  # noqa: PLC0415  (built in; only for a per-user store under ~)

        try:
            return pwd.getpwuid(uid).pw_dir == home  # shifter.cli.shifter.caller_identity
        except KeyError:
            return False
    return True


def _read_small(path: str) -> "tuple[bytes, posix.stat_result] | None":
    """The content and status of a regular file of at most MAX_FILE bytes, opened as
    ``config.site.load_config`` opens the configuration: no symlink, and O_NONBLOCK so that a FIFO
    (the caller names these paths) cannot make us wait; it is not read."""
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_CLOEXEC | posix.O_NONBLOCK
                        | posix.O_NOCTTY)
    except OSError:
        return None
    try:
        st = posix.fstat(fd)
        if (st.st_mode & 0o170000) != 0o100000 or st.st_size > MAX_FILE:  # S_ISREG
            return None
        data = posix.read(fd, MAX_FILE + 1)  # one read: a regular file this small comes whole
    except OSError:
        return None
    finally:
        posix.close(fd)
    return (data, st) if len(data) <= MAX_FILE else None


def config_udi_mount(text: str) -> str | None:
    """``udiMount`` from udiRoot.conf text (``config.site.parse_lines``: ``#`` comments, ``\\``
    continuations, the last one wins), or ``None`` when in doubt.  The record, written for this
    very file (same identity), must name the same path, so a wrong answer here can only fail."""
    found, pending = DEFAULT_UDI_MOUNT, ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not pending and (not line.lstrip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        key, sep, value = (pending + line).partition("=")
        pending = ""
        if key.strip() == "udiMount" and sep:
            found = value.strip()
    parts = found.split("/")[1:]
    # Only a path os.path.normpath leaves alone (what config.site stores); else the full path.
    if pending or not found.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None
    return found


def read_record(environ: dict[str, str]) -> "tuple[Record, list[int]] | None":
    """The trusted record of the configured ``udiMount`` and the configuration's identity."""
    loaded = _read_small(environ.get("SHIFTER_CONFIG") or DEFAULT_CONFIG_PATH)
    if loaded is None:
        return None
    try:
        udi = config_udi_mount(loaded[0].decode("utf-8"))
    except UnicodeDecodeError:
        return None
    if udi is None:
        return None
    config_id = _identity(loaded[1])
    record_file = _read_small(udi + ".json")  # prepared.record_path
    if record_file is None:
        return None
    data, st = record_file
    # prepared.read_record: a regular file (checked by _read_small) owned by root that nobody
    # else can write.
    if st.st_uid != 0 or st.st_mode & 0o022:
        return None
    record = _json_object(data)
    if not isinstance(record, dict) or record.get("version") != RECORD_VERSION or record.get("udi_mount") != udi:
        return None
    if not isinstance(record.get("fast"), dict) or not _is_mountpoint(udi):
        return None
    return record, config_id


def _json_object(data: bytes) -> object:
    """``json.loads`` for the record, or ``None``: the C scanner ``json`` itself uses (as
    ``shifter._fastjson`` does, without importing that module and ``__future__``)."""
    import _json  # noqa: PLC0415  (only when a record exists)

    class Decoder:  # the settings of a default json.JSONDecoder; no NaN/Infinity in a record
        strict, object_hook, object_pairs_hook, parse_float, parse_int = True, None, None, float, int
        parse_constant = None

    try:
        text = data.decode("utf-8")
        start = len(text) - len(text.lstrip(" \t\n\r"))
        value, end = _json.make_scanner(Decoder())(text, start)  # type: ignore[arg-type]
    except (UnicodeDecodeError, StopIteration, ValueError, RecursionError, TypeError):
        return None
    return value if not text[end:].strip(" \t\n\r") else None


def _identity(st: "posix.stat_result") -> list[int]:
    return [st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _is_mountpoint(path: str) -> bool:
    """``prepared.is_mountpoint``: the root of a mount (its device differs from its parent's)."""
    try:
        here, parent = posix.lstat(path), posix.lstat(path + "/..")
    except OSError:
        return False
    return here.st_dev != parent.st_dev or here.st_ino == parent.st_ino


def caller_environ() -> dict[str, str]:
    """``os.environ`` without ``os``: the same decoding, the same order."""
    enc = sys.getfilesystemencoding()
    return {k.decode(enc, "surrogateescape"): v.decode(enc, "surrogateescape") for k, v in posix.environ.items()}


# --- the entry (system calls) --------------------------------------------------------------------

class _Failed(Exception):
    """A step after the point of no return failed: reported like the full path's ContainerError."""

    def __init__(self, message: str, hint: str = "", code: int = 16) -> None:
        super().__init__(message)
        self.message, self.hint, self.code = message, hint, code


def _libc() -> "Libc":
    """``unshare``, ``mount``, ``prctl`` and ``syscall`` from libc through ``_ctypes``.

    Arguments are Python ints (passed as C ``int``; every value here fits), ``None`` (NULL) and
    ``bytes`` (``const char *``); each call returns a C ``int`` and keeps its ``errno``.
    """
    import _ctypes  # noqa: PLC0415  (only when a prepared container is entered)

    ct: Any = _ctypes  # typeshed describes ctypes' public classes, not this use of their C bases

    class CInt(ct._SimpleCData):
        _type_ = "i"

    class CLong(ct._SimpleCData):
        _type_ = "l"

    class Libc:  # what a function pointer needs of its library: the dlopen handle
        _handle = ct.dlopen("libc.so.6", 2)  # RTLD_NOW

    class Func(ct.CFuncPtr):
        _flags_ = ct.FUNCFLAG_CDECL | ct.FUNCFLAG_USE_ERRNO
        _restype_ = CInt

    libc: dict[str, Any] = {name: Func((name, Libc)) for name in ("unshare", "mount", "prctl")}
    syscall = Func(("syscall", Libc))
    libc["syscall"] = lambda nr, *args: syscall(CLong(nr), *args)  # syscall(long number, ...)
    return libc


def _call(libc: "Libc", name: str, *args: object) -> None:
    import _ctypes  # noqa: PLC0415  (loaded by _libc already)

    if libc[name](*args) < 0:
        err = _ctypes.get_errno()
        raise OSError(err, posix.strerror(err))


def _write(path: str, text: str) -> None:
    fd = posix.open(path, posix.O_WRONLY | posix.O_CLOEXEC)
    try:
        posix.write(fd, text.encode())
    finally:
        posix.close(fd)


def _cap_last_cap() -> int:
    """Read before the chroot (executor reads it after: the tree binds the host's /proc)."""
    try:
        fd = posix.open("/proc/sys/kernel/cap_last_cap", posix.O_RDONLY | posix.O_CLOEXEC)
        try:
            return int(posix.read(fd, 32))
        finally:
            posix.close(fd)
    except (OSError, ValueError):
        return 63


def enter(root: str, ids: tuple[int, int], entry: Entry, warn: "Callable[[str], None]") -> int | None:
    """Enter the prepared tree at ``root`` and exec.  Returns ``None`` (nothing changed: use the
    full path) if the namespaces cannot be created, an exit status after a later failure."""
    capset = CAPSET_SYSCALL.get(posix.uname().machine)
    if capset is None:
        return None
    try:
        libc = _libc()
    except (ImportError, AttributeError, OSError, TypeError):
        return None
    last_cap = _cap_last_cap()
    # Both namespaces in one call: the mount namespace is owned by the new user namespace, in which
    # we hold every capability (and nothing outside it).  If this fails nothing has changed.
    try:
        _call(libc, "unshare", CLONE_NEWUSER | CLONE_NEWNS)
    except OSError:
        return None
    try:
        _namespace(libc, ids)
        _enter_root(root)
        _drop(libc, ids, last_cap, capset)
        _chdir(entry.candidates, warn)
        return _exec(entry.argv, entry.env)
    except _Failed as err:
        sys.stderr.write(f"shifter: error: {err.message}" + (f" (hint: {err.hint})" if err.hint else "") + "\n")
        return err.code


def _namespace(libc: "Libc", ids: tuple[int, int]) -> None:
    """executor.enter_namespaces: map the caller's ids to themselves (after denying setgroups, as
    an unprivileged writer must), and make every mount private (nothing propagates either way)."""
    uid, gid = ids
    try:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1\n")
        _write("/proc/self/gid_map", f"{gid} {gid} 1\n")
        _call(libc, "mount", None, b"/", None, MS_REC | MS_PRIVATE, None)
    except OSError as err:
        raise _Failed(f"namespace: EnterNamespaces failed: {err.strerror or err}",
                      "unprivileged user namespaces may be disabled (sysctl user.max_user_namespaces)") from None


def _enter_root(root: str) -> None:
    """executor.enter_root, method chroot: the tree is shared, so no pivot_root."""
    try:
        posix.chroot(root)
        posix.chdir("/")
    except OSError as err:
        raise _Failed(f"enter: EnterRoot failed: {err.strerror or err}") from None


def _drop(libc: "Libc", ids: tuple[int, int], last_cap: int, capset: int) -> None:
    """executor.drop_privileges without setgroups (denied in our user namespace): the bounding
    and ambient sets, gid, uid, then effective/permitted/inheritable emptied and no_new_privs."""
    uid, gid = ids
    try:
        for cap in range(last_cap + 1):
            _ignore_einval(libc, PR_CAPBSET_DROP, cap)
        _ignore_einval(libc, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        posix.setresgid(gid, gid, gid)
        posix.setresuid(uid, uid, uid)
        # The uid did not change (it was already ours), so the kernel cleared nothing: capset
        # with a v3 header and two all-zero data words empties the three sets.
        header = CAPABILITY_VERSION_3.to_bytes(4, sys.byteorder) + bytes(4)
        _call(libc, "syscall", capset, header, bytes(24))
        _call(libc, "prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    except OSError as err:
        raise _Failed(f"drop: DropPrivileges failed: {err.strerror or err}") from None
    if posix.getresuid() != (uid,) * 3 or posix.getresgid() != (gid,) * 3:
        raise _Failed("privilege drop did not take effect")


def _ignore_einval(libc: "Libc", option: int, arg: int) -> None:
    try:
        _call(libc, "prctl", option, arg, 0, 0, 0)
    except OSError as err:
        if err.errno != EINVAL:  # a capability or prctl this kernel does not know
            raise


def _chdir(candidates: tuple[str, ...], warn: "Callable[[str], None]") -> None:
    """executor.change_dir: the first candidate that works; a warning when only ``/`` did."""
    for index, path in enumerate(candidates):
        try:
            posix.chdir(path)
        except OSError:
            continue
        if path == "/" and index > 0 and candidates[0] != "/":
            warn(f"working directory {candidates[0]} does not exist in the container; using /")
        return
    raise _Failed("cannot change to any working directory in the container")


def _exec(argv: list[str], env: dict[str, str]) -> int:
    """executor.execute: ``os.execvpe`` (PATH from the container's environment, the first error
    other than "not found" wins) and the same exit statuses (127 not found, 126 otherwise)."""
    import _signal  # noqa: PLC0415  (built in: loads nothing from the host after the chroot)

    for sig in (_signal.SIGPIPE, _signal.SIGXFSZ):  # Python ignores them; that survives exec
        _signal.signal(sig, _signal.SIG_DFL)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    try:
        _execvpe(argv, env)
    except FileNotFoundError:
        raise _Failed(f"{argv[0]}: command not found in the image",
                      f"PATH inside is {env.get('PATH', DEFPATH)}", 127) from None
    except OSError as err:
        raise _Failed(f"cannot execute {argv[0]}: {err.strerror}", code=126) from None
    raise _Failed("internal error: exec returned")


def _execvpe(argv: list[str], env: dict[str, str]) -> None:
    """``os._execvpe`` for a str environment."""
    file = argv[0]
    if "/" in file:
        posix.execve(file, argv, env)
    saved: OSError | None = None
    last: OSError = FileNotFoundError(ENOENT, "No such file or directory")
    path = env.get("PATH")
    for directory in (DEFPATH if path is None else path).split(":"):
        full = directory + file if not directory or directory.endswith("/") else f"{directory}/{file}"
        try:
            posix.execve(full, argv, env)
        except (FileNotFoundError, NotADirectoryError) as err:
            last = err
        except OSError as err:
            last = err
            saved = saved or err
    raise saved or last


# --- entry point ---------------------------------------------------------------------------------

def _warn(message: str) -> None:
    sys.stderr.write(f"shifter: warning: {message}\n")  # shifter.cli.shifter.warn


def try_enter(argv: list[str]) -> int | None:
    """Enter a prepared container for ``shifter ARGV`` and exec (no return); ``None``: use the full
    path; an exit status: the entry failed after the namespaces were created (error printed)."""
    uids, gids = posix.getresuid(), posix.getresgid()
    # Root (privileged mode) and a setuid/setgid installation always take the full path.
    if uids[0] == 0 or len(set(uids)) != 1 or len(set(gids)) != 1:
        return None
    environ = caller_environ()
    req = parse_request(argv, environ)
    if req is None:
        return None
    found = read_record(environ)
    if found is None:
        return None
    record, config_id = found
    ids = (uids[0], gids[0])
    try:
        fast = record["fast"]
        loop = record["loop_mount"]
        # launch.validate; then the site configuration and the store files setup read.
        if not isinstance(loop, str) or not loop.startswith("/") or loop == record["udi_mount"]:
            return None
        if fast["config"] != config_id or not files_unchanged(fast, ids[0]):
            return None
        try:
            cwd = posix.getcwd()
        except OSError:
            cwd = "/"
        entry = decide(req, record, environ, ids, groups=posix.getgroups(), cwd=cwd)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return None  # a record of another shape (another version wrote it): the full path decides
    if entry is None:
        return None
    return enter(str(record["udi_mount"]), ids, entry, _warn)


__all__ = ["IDENTITY_NAMES", "Entry", "Request", "compose_env", "config_udi_mount", "decide", "enter", "file_state",
           "files_unchanged", "identity_pairs", "parse_request", "read_record", "request_key", "try_enter"]
