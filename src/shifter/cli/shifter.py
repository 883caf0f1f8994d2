"""``shifter``: run a command inside an image as the calling user.

Launch path: keep imports to the standard library and the light runtime modules (no httpx,
SQLAlchemy, pydantic, rich or click; ``python -X importtime`` checks it).  A missing image
is pulled by running ``shifterimg pull`` as a subprocess, so the heavy pipeline stays out of
this process.  This module is the only place that turns a :class:`ShifterError` into
``shifter: error: ...`` and an exit code.

:func:`main` first tries ``shifter.runtime.linux.fastpath``, which enters a container prepared by
``shifter-setup`` in a few milliseconds; so this module imports nothing at the top but ``sys``
(``os`` alone costs ~1 ms; ``from __future__`` is an import too): every function imports what it
needs, and annotations naming ``typing``-only names are strings.
"""

import sys

TYPE_CHECKING = False  # typing, collections: not on the launch path
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Mapping, Sequence

    from shifter.runtime.spec import Identity

PROG = "shifter"


def warn(message: str) -> None:
    """Print a warning for the user (the runtime reports them through this callback)."""
    sys.stderr.write(f"{PROG}: warning: {message}\n")


def caller_identity() -> object:
    """The real identity of this process (the user ``shifter`` runs for)."""
    import os  # noqa: PLC0415  (see the module docstring)
    import pwd  # noqa: PLC0415

    from shifter.runtime.spec import Identity  # noqa: PLC0415

    uid, gid = os.getuid(), os.getgid()
    try:
        entry = pwd.getpwuid(uid)
        user, home, shell = entry.pw_name, entry.pw_dir, entry.pw_shell
    except KeyError:
        user, home, shell = str(uid), os.environ.get("HOME", "/"), ""
    groups = tuple(dict.fromkeys([gid, *os.getgroups()]))
    return Identity(uid=uid, gid=gid, groups=groups, user=user, home=home, shell=shell)


def current_dir() -> str:
    """The caller's working directory, or ``/`` if it was deleted."""
    import os  # noqa: PLC0415  (see the module docstring)

    try:
        return os.getcwd()
    except OSError:
        return "/"


def check_not_setuid() -> bool:
    """Privileged mode only for a caller who already is root; refuse any setuid installation."""
    import os  # noqa: PLC0415

    from shifter.errors import ContainerError  # noqa: PLC0415

    ruid, euid, _ = os.getresuid()
    if ruid != euid:
        raise ContainerError("shifter is running setuid; refusing",
                             hint="shifter must never be installed setuid; run it as root or as a user")
    return euid == 0


def helper_env(environ: "Mapping[str, str]", privileged: bool) -> dict[str, str]:
    """The environment for helper processes: a fixed, clean one when privileged (the caller's
    ``LD_PRELOAD``/``LD_LIBRARY_PATH``/``PYTHON*`` must never reach a root process)."""
    if privileged:
        from shifter.runtime.environment import PRIVILEGED_ENV  # noqa: PLC0415

        env = dict(PRIVILEGED_ENV)
        if "SHIFTER_CONFIG" in environ:
            env["SHIFTER_CONFIG"] = environ["SHIFTER_CONFIG"]
        return env
    return {k: v for k, v in environ.items() if not k.startswith("LD_")}


def pull_command(request: str) -> list[str]:
    """``shifterimg pull REQUEST`` run by this interpreter in isolated mode (``-I``: no
    ``PYTHON*`` variables, no user site, no script or working directory on ``sys.path``)."""
    return [sys.executable, "-I", "-m", "shifter.cli.shifterimg", "pull", request]


def pull_as(identity: "Identity") -> "tuple[dict[str, object], dict[str, str]]":
    """``subprocess`` arguments that run a helper as ``identity`` (root acting for a user): the
    user's groups (never gid 0), gid and uid, and the user's ``HOME``/``USER``/``LOGNAME``, so the
    pull reads the user's credentials with the user's rights and writes where the user's own
    pull would."""
    groups = [g for g in identity.groups if g != 0]
    return ({"user": identity.uid, "group": identity.gid, "extra_groups": groups},
            {"HOME": identity.home, "USER": identity.user, "LOGNAME": identity.user})


def pull(request: str, privileged: bool, identity: "Identity | None" = None, timeout: float | None = None) -> None:
    """Pull ``request`` with ``shifterimg pull`` in a subprocess.  Its progress goes to our
    stderr: stdout belongs to the command that runs next.

    Root acting for a user (``identity`` not root) pulls *as that user*: root's registry
    credentials, store and ``gatewayAdmins`` membership never serve another user (docs/runtime.md,
    "Threat model").  The helper starts isolated: ``-I``, ``cwd="/"``, a fixed environment.  Its
    wait has a deadline (``autoPullTimeout``): the user can stop a process that runs as them.
    """
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    from shifter.errors import ContainerError  # noqa: PLC0415

    env = helper_env(os.environ, privileged)
    extra: dict[str, object] = {}
    if privileged and identity is not None and identity.uid != 0:
        extra, user_env = pull_as(identity)
        env.update(user_env)
    sys.stdout.flush()
    child = subprocess.Popen(pull_command(request), env=env, cwd="/", stdin=subprocess.DEVNULL,
                             stdout=sys.stderr.fileno(), **extra)  # type: ignore[call-overload]
    returncode = wait_for_pull(child, request, timeout)
    if returncode != 0:
        raise ContainerError(f"pulling {request} failed (shifterimg exit status {returncode})",
                             hint=f"run 'shifterimg pull {request}' to see why")


PULL_GRACE_S = 30.0  # how long an interrupted pull may take to record its failure


def wait_for_pull(child: "subprocess.Popen[bytes]", request: str, timeout: float | None = None) -> int:
    """Wait for the ``shifterimg pull`` child, at most ``timeout`` seconds (then it is killed: it may
    run as the user, who can stop it).  On Ctrl-C (which the terminal sends to the child too) let
    it record its failure and clean up, instead of killing it: pass the interrupt on (in case only
    we got it), wait a bounded time, then report one line."""
    import signal  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    from shifter.errors import ContainerError, Interrupted  # noqa: PLC0415

    try:
        return child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        raise ContainerError(f"pulling {request} did not finish within {timeout:g} s; it was stopped",
                             hint=f"run 'shifterimg pull {request}' first, or ask the site to raise "
                                  "autoPullTimeout") from None
    except KeyboardInterrupt:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the wait
        try:
            _stop_pull(child)
        finally:
            signal.signal(signal.SIGINT, previous)
    raise Interrupted(f"interrupted while pulling {request}; the pull stopped and recorded it",
                      hint=f"run 'shifterimg pull {request}' to pull it again (it resumes the download)")


def _stop_pull(child: "subprocess.Popen[bytes]") -> None:
    import signal  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    try:
        child.wait(timeout=1.0)  # it got the terminal's SIGINT too
        return
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGINT)
    try:
        child.wait(timeout=PULL_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def run(argv: "Sequence[str]") -> int:
    """Parse, build the spec (pulling if needed), launch.  Returns only on errors/help."""
    import os  # noqa: PLC0415

    from shifter.config.site import load_config  # noqa: PLC0415
    from shifter.runtime.images import ImageNotInStoreError  # noqa: PLC0415
    from shifter.runtime.launch import launch  # noqa: PLC0415
    from shifter.runtime.options import USAGE, parse_options  # noqa: PLC0415
    from shifter.runtime.request import spec_from_options  # noqa: PLC0415

    opts = parse_options(argv, os.environ)
    if opts.help:
        sys.stdout.write(USAGE)
        return 0
    if opts.version:
        from shifter.cli.boundary import print_version  # noqa: PLC0415

        return print_version(PROG)
    privileged = check_not_setuid()
    config = load_config(privileged=privileged)
    caller, cwd = caller_identity(), current_dir()
    try:
        spec = spec_from_options(opts, os.environ, config, caller, cwd)  # type: ignore[arg-type]
    except ImageNotInStoreError as err:
        if not config.auto_pull or not err.request:
            raise
        pull(err.request, privileged, err.identity, config.auto_pull_timeout or None)
        spec = spec_from_options(opts, os.environ, config, caller, cwd)  # type: ignore[arg-type]
    launch(spec, config, warn)


def main(argv: "Sequence[str] | None" = None) -> int:
    """Console entry point.  Run as a command (``argv`` None), a prepared container that serves
    this request is entered by the fast path; anything else takes the full path.  Whatever is
    raised becomes one line and an exit code (:mod:`shifter.cli.boundary`)."""
    from shifter.cli.boundary import guard, wants_verbose  # noqa: PLC0415

    args = sys.argv[1:] if argv is None else argv
    return guard(PROG, lambda: _main(args, fast=argv is None), verbose=wants_verbose(args))


def _main(args: "Sequence[str]", fast: bool) -> int | None:
    if fast:
        from shifter.runtime.linux import fastpath  # noqa: PLC0415

        status = fastpath.try_enter(list(args))  # returns only if it did not enter
        if status is not None:
            return status
    return run(args)

if __name__ == "__main__":
    sys.exit(main())
