"""``shifter-setup`` / ``shifter-teardown``: prepared containers (root only).

``shifter-setup --image=IMG --user=USER [--volume=...] [--module=...]`` builds the container
tree for that request at ``udiMount`` once, in the host mount namespace (kernel loop mount,
root tree, /etc, system mounts, volumes, remounts), and records it in ``<udiMount>.json``.
``shifter`` run by that user with the same image, volumes and modules then only needs a user
and mount namespace and a chroot.  ``shifter-teardown`` detaches every mount of the tree; the
autoclear loop device goes with the last mount.

Being in the host mount namespace, the tree is closed to other users: its root is mode 0700
plus an ACL entry for the user (``executor._allow_only``), and the image is mounted under a
root-only guard at ``loopMount``, detached as soon as the tree holds its binds.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Sequence

from shifter.errors import ContainerError, ShifterError, UsageError

TYPE_CHECKING = False  # the plan module only for annotations: teardown stays light
if TYPE_CHECKING:
    from typing import Any

    from shifter.config.site import SiteConfig
    from shifter.runtime.linux.executor import Context
    from shifter.runtime.plan import Plan


SETUP_USAGE = """\
Usage: shifter-setup --image=[TYPE:]TAG --user=NAME [--volume=SRC:DST[:FLAGS]]... [--module=A,B|none]

(root only) Build the container for that request once at udiMount, in the host mount namespace,
and record it in <udiMount>.json.  `shifter` run by NAME with the same image, volumes and modules
then enters it without privilege.  Remove it with shifter-teardown.
"""
TEARDOWN_USAGE = """\
Usage: shifter-teardown

(root only) Remove the container shifter-setup prepared: every mount at udiMount and loopMount,
then its record.
"""


def _require_root(prog: str) -> None:
    if os.geteuid() != 0 or os.getuid() != 0:
        raise UsageError(f"{prog} must be run by root", hint="it builds kernel mounts for another user")


def _private_mountpoint(path: str) -> None:
    """Bind ``path`` onto itself and make it private, so nothing mounted below propagates to
    (or from) peers of the host's mount tree."""
    from shifter.runtime.linux import syscalls as sc  # noqa: PLC0415

    sc.mount(path, path, None, sc.MS_BIND)
    sc.mount(None, path, None, sc.MS_PRIVATE)


def _guard_loop_mount(loop_mount: str, image_dir: str) -> None:
    """A root-only (0700) tmpfs at ``loopMount`` holding ``image_dir``, to mount the image on.

    The tree is built in the host mount namespace: mounted at ``loopMount`` itself, the image
    (a private one included) would be readable by every user while setup runs, and an fd opened
    then keeps it readable afterwards.  Under this guard only root reaches it; once the tree is
    built the guard and the image mount are detached (:func:`_detach`).
    """
    from shifter.runtime.linux import syscalls as sc  # noqa: PLC0415

    sc.mount("tmpfs", loop_mount, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=700,size=16k")
    os.mkdir(image_dir, 0o700)


def _detach(path: str, count: int) -> None:
    """Lazily unmount the top ``count`` mounts at ``path`` (each with everything below it)."""
    from shifter.runtime.linux import syscalls as sc  # noqa: PLC0415

    for _ in range(count):
        sc.umount2(path, sc.MNT_DETACH | sc.UMOUNT_NOFOLLOW)


def detach_all(path: str) -> int:
    """Lazily unmount every mount stacked at ``path`` (with everything below); returns how many."""
    from shifter.runtime.linux import syscalls as sc  # noqa: PLC0415

    count = 0
    while True:
        try:
            sc.umount2(path, sc.MNT_DETACH | sc.UMOUNT_NOFOLLOW)
        except OSError as err:
            if err.errno in (errno.EINVAL, errno.ENOENT):
                return count
            raise ContainerError(f"cannot unmount {path}: {err.strerror}") from None
        count += 1


def setup(argv: Sequence[str]) -> int:
    """Build and record the prepared container."""
    import dataclasses  # noqa: PLC0415

    from shifter.cli.shifter import caller_identity  # noqa: PLC0415
    from shifter.config.site import check_mount_dirs, config_path, load_config  # noqa: PLC0415
    from shifter.runtime import etc, prepared  # noqa: PLC0415
    from shifter.runtime.linux import fastpath  # noqa: PLC0415
    from shifter.runtime.options import parse_options  # noqa: PLC0415
    from shifter.runtime.plan import Plan, container_groups, tree_ops, user_ids  # noqa: PLC0415
    from shifter.runtime.request import spec_from_options  # noqa: PLC0415

    opts = parse_options([*argv, "/bin/true"], os.environ)
    if opts.help:
        sys.stdout.write(SETUP_USAGE)
        return 0
    _require_root("shifter-setup")
    if opts.args != ("/bin/true",):
        raise UsageError(f"unexpected arguments: {' '.join(opts.args[:-1])}",
                         hint="shifter-setup takes options only; the command is given to shifter later")
    if not opts.user:
        raise UsageError("--user is required", hint="shifter-setup --image=IMG --user=NAME")
    if opts.writable_tmpfs:
        raise UsageError("--writable-tmpfs is not available for prepared containers",
                         hint="give --writable-tmpfs to shifter itself (a private container)")
    # The configuration's identity before it is read: the fast path's record must describe the
    # content this setup used (prepared.fast_section compares it again afterwards).
    config_state = _state_or_none(fastpath.file_state, config_path())
    config = load_config(privileged=True)
    check_mount_dirs(config)
    spec = spec_from_options(opts, os.environ, config, caller_identity(), "/")  # type: ignore[arg-type]
    if prepared.read_record(config) is not None or prepared.is_mountpoint(config.udi_mount):
        raise ContainerError(f"a container is already prepared at {config.udi_mount}",
                             hint="run shifter-teardown first")
    groups = container_groups(spec.identity, config)
    # The image goes below a root-only guard at loopMount (see _guard_loop_mount).
    ops = tree_ops(spec, dataclasses.replace(config, loop_mount=_image_dir(config.loop_mount)),
                   etc.group_names(groups), etc.read_site_etc(config.etc_path), prepared=True)
    ctx = _build_tree(config.udi_mount, config.loop_mount, Plan(tuple(ops), user_ids(spec, config)))
    fast = prepared.fast_section(opts, spec, config, config_state)
    record = prepared.make_record(spec, config, fast=fast)
    if ctx.fuse_connection >= 0:
        # squashfuse serves the tree as the user: shifter-teardown aborts this connection and
        # stops the daemon, whatever state the user left it in.
        record["fuse"] = {"connection": ctx.fuse_connection, "daemons": [list(d) for d in ctx.fuse_daemons]}
    prepared.write_record(config, record)
    return 0


def _image_dir(loop_mount: str) -> str:
    return os.path.join(loop_mount, "image")


def _build_tree(udi_mount: str, loop_mount: str, plan: Plan) -> Context:
    """Run ``plan`` in the host mount namespace; on failure, detach whatever it mounted.

    A squashfuse daemon run as the user is under a deadline while the plan runs (the executor
    aborts its connection and kills it if it does not answer): the blocked step then fails, and
    the lazy detach here never waits on the daemon."""
    from shifter.cli.shifter import warn  # noqa: PLC0415
    from shifter.runtime.linux import executor  # noqa: PLC0415

    try:
        for path in (loop_mount, udi_mount):
            _private_mountpoint(path)
        _guard_loop_mount(loop_mount, _image_dir(loop_mount))
        ctx = executor.run(plan, warn)
        # The tree's binds keep the image alive: the guard and the image mount go now.
        _detach(loop_mount, 2)
    except (ShifterError, OSError) as err:
        teardown_paths(udi_mount, loop_mount)
        if isinstance(err, ShifterError):
            raise
        raise ContainerError(f"cannot prepare the mounts at {loop_mount} and {udi_mount}: {err.strerror}",
                             hint="udiMount and loopMount must be directories (see udiRoot.conf)") from None
    return ctx


def _state_or_none(state: Callable[[str], list[int] | None], path: str) -> list[int] | None:
    try:
        return state(path)
    except OSError:
        return None


def teardown_paths(udi_mount: str, loop_mount: str) -> int:
    """Detach the tree first (it holds binds of the image), then the image."""
    return detach_all(udi_mount) + detach_all(loop_mount)


def teardown(argv: Sequence[str]) -> int:
    """Remove the prepared container: all its mounts, then the record."""
    from shifter.config.site import load_config  # noqa: PLC0415
    from shifter.runtime import prepared  # noqa: PLC0415

    if list(argv) in (["-h"], ["--help"]):
        sys.stdout.write(TEARDOWN_USAGE)
        return 0
    _require_root("shifter-teardown")
    if argv:
        raise UsageError(f"unexpected arguments: {' '.join(argv)}",
                         hint="shifter-teardown takes no arguments")
    config = load_config(privileged=True)
    _stop_fuse(config, prepared.read_record(config))
    teardown_paths(config.udi_mount, config.loop_mount)
    prepared.remove_record(config)
    return 0


def _stop_fuse(config: SiteConfig, record: dict[str, Any] | None) -> None:
    """Abort the recorded squashfuse connection (if a mount of the tree still uses it) and kill its
    daemon.  The daemon runs as the user, who may have stopped it: the detach must not depend on
    it, and nothing of the container may outlive the teardown."""
    fuse = record.get("fuse") if record else None
    if not isinstance(fuse, dict):
        return
    from shifter.runtime.linux import fusehelper  # noqa: PLC0415

    number = fuse.get("connection")
    tops = [path.rstrip("/") for path in (config.udi_mount, config.loop_mount)]
    for conn, mountpoint in fusehelper.mounts():
        if conn == number and any(mountpoint == top or mountpoint.startswith(top + "/") for top in tops):
            try:
                fusehelper.abort_connection(conn)
            except OSError as err:
                raise ContainerError(f"cannot abort the squashfuse connection {conn}: {err.strerror}") from None
            break
    for entry in fuse.get("daemons") or []:
        if isinstance(entry, list) and len(entry) == 2 and all(type(v) is int for v in entry):
            fusehelper.kill_daemon(entry[0], entry[1])


def _run(prog: str, func: Callable[[Sequence[str]], int], argv: Sequence[str] | None) -> int:
    """Run one command; any exception becomes one line and an exit code (``cli.boundary``)."""
    from shifter.cli.boundary import guard, print_version, wants_verbose  # noqa: PLC0415

    args = sys.argv[1:] if argv is None else argv
    if list(args) == ["--version"]:
        return print_version(prog)
    return guard(prog, lambda: func(args), verbose=wants_verbose(args))


def setup_main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``shifter-setup``."""
    return _run("shifter-setup", setup, argv)


def teardown_main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``shifter-teardown``."""
    return _run("shifter-teardown", teardown, argv)
