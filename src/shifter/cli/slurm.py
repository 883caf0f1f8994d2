"""``python -m shifter.cli.slurm submit|prolog|epilog``: the Python half of the Slurm integration.

* ``submit`` runs in the allocator (``sbatch``, ``salloc``, ``srun``), as the submitting user,
  started by the SPANK shim (``src/shifter/wlm/slurm/spank_shifter.c``).  It resolves ``--image``
  to its id once (``shifterimg lookup``: the store, or the gateway when one is configured), checks
  the ``--volume`` and ``--module`` syntax, and prints the job's ``SHIFTER_*`` variables (one
  ``NAME=VALUE`` a line), which the shim exports.  An unknown or not-ready image fails the
  submission, or, with ``--pull`` (plugstack.conf ``pull=yes``), is pulled as the user first.
* ``prolog`` runs as root on every node of the job (``Prolog=``): it prepares the job's container
  once per node, for the job's user, at ``<udiMount>.jobs/<node>.<jobid>/``
  (``shifter.runtime.prepared.job_mounts``), where the job's ``shifter`` tasks find and enter it.
  A failure is the *user's* (bad image, bad volume): it is written to ``prepare.json`` next to the
  tree and the prolog still exits 0, so the node is not drained; the tasks' ``shifter`` then takes
  the full path and reports the same error in the job's output.
* ``epilog`` runs as root on every node after the job (also after ``scancel`` and time limits):
  it detaches every mount of the job's container and removes its directory.  A failure there is
  the node's (mounts left behind): it exits 1 and Slurm drains the node, as it should.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from shifter.errors import ContainerError, ImageNotFoundError, ShifterError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from shifter.config.site import SiteConfig

PROG = "shifter-slurm"
USAGE = """\
Usage: python -m shifter.cli.slurm submit [--pull] [--image=IMG] [--volume=SPEC]... [--module=LIST]
       python -m shifter.cli.slurm prolog|epilog

submit: (the SPANK plugin, as the user) resolve the image to its id and print the job's SHIFTER_*
variables.  prolog/epilog: (slurmd, as root) prepare / remove the job's container on this node.
"""
PREPARE_FILE = "prepare.json"  # next to the job's tree: how the prolog went (and how long it took)


# ------------------------------------------------------------------------------------------ submit
def submit(argv: Sequence[str]) -> int:
    """Resolve the job's image (and check its volumes and modules); print the job's variables."""
    from shifter.runtime.modules import parse_module_list  # noqa: PLC0415
    from shifter.runtime.volumes import parse_user_volumes  # noqa: PLC0415
    from shifter.wlm.slurm.job import job_env_lines  # noqa: PLC0415

    image, volumes, modules, pull = _submit_args(argv)
    parse_user_volumes(volumes)  # syntax only: sources are checked on the nodes, as the user
    if modules is not None:
        parse_module_list(modules)
    image_id = resolve(image, pull) if image else None
    sys.stdout.write("".join(f"{line}\n" for line in job_env_lines(image_id, volumes, modules)))
    return 0


def _submit_args(argv: Sequence[str]) -> tuple[str | None, list[str], str | None, bool]:
    image: str | None = None
    modules: str | None = None
    volumes: list[str] = []
    pull = False
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name == "--pull" and not eq:
            pull = True
        elif name == "--image" and eq and value.strip():
            image = value.strip()
        elif name == "--volume" and eq and value:
            volumes.append(value)
        elif name == "--module" and eq and value:
            modules = value
        else:
            raise UsageError(f"unexpected argument {arg!r}", hint="see 'python -m shifter.cli.slurm --help'")
    return image, volumes, modules, pull


def resolve(image: str, pull: bool) -> str:
    """The id of READY ``image`` (``shifterimg lookup``, run as the caller), pulling it first when
    ``pull`` and the lookup misses."""
    found, why = _lookup(image)
    if found is None and pull:
        _pull(image)
        found, why = _lookup(image)
    if found is None:
        raise ImageNotFoundError(f"--image={image}: {why}",
                                 hint=f"run 'shifterimg pull {image}' and submit again when it is READY")
    return found


def _lookup(image: str) -> tuple[str | None, str]:
    """``(id, "")`` or ``(None, the lookup's error line)``."""
    result = subprocess.run([sys.executable, "-I", "-m", "shifter.cli.imgfast", "lookup", image],
                            capture_output=True, text=True, cwd="/", stdin=subprocess.DEVNULL, check=False)
    image_id = result.stdout.strip()
    if result.returncode == 0 and len(image_id) == 64 and all(c in "0123456789abcdef" for c in image_id):
        return image_id, ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if not lines:
        return None, f"shifterimg lookup failed (exit status {result.returncode})"
    return None, lines[-1].split("error: ", 1)[-1].split(" (hint: ", 1)[0]


def _pull(image: str) -> None:
    """``shifterimg pull`` as the caller; its progress goes to our stderr (the submitter's)."""
    subprocess.run([sys.executable, "-I", "-m", "shifter.cli.shifterimg", "pull", image], cwd="/",
                   stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(), check=False)


# ------------------------------------------------------------------------------------------ prolog
def prolog(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """Prepare the job's container on this node (see the module docstring); always 0 unless the
    node itself is broken."""
    from shifter.wlm.slurm.job import job_from_env  # noqa: PLC0415

    _no_args("prolog", argv)
    _require_root("prolog")
    job = job_from_env(environ)
    if job.shifter_env is None or not job.user:
        return 0
    base, config = _job_config(environ)
    _make_dirs(base, config)
    started = time.monotonic()
    outcome: dict[str, object] = {"job": job.job_id, "node": job.node, "user": job.user}
    try:
        _prepare(job.user, job.shifter_env, config)
        outcome["ok"] = True
    except ShifterError as err:  # the user's request failed: the tasks' shifter reports it again
        outcome.update(ok=False, error=err.render())
        sys.stderr.write(f"{PROG}: job {job.job_id} on {job.node}: cannot prepare the container: {err.render()}\n")
    outcome["seconds"] = round(time.monotonic() - started, 4)
    _write_outcome(os.path.join(base, PREPARE_FILE), outcome)
    return 0


def _prepare(user: str, shifter_env: dict[str, str], config: SiteConfig) -> None:
    from shifter.cli.setup import _state_or_none, prepare  # noqa: PLC0415
    from shifter.config.site import config_path  # noqa: PLC0415
    from shifter.runtime import prepared  # noqa: PLC0415
    from shifter.runtime.linux import fastpath  # noqa: PLC0415
    from shifter.runtime.options import parse_options  # noqa: PLC0415

    if prepared.read_record(config) is not None:
        return  # a second prolog for this job on this node (PrologFlags without Alloc)
    # The tasks' environment gives the same options: their shifter matches this record.
    env = {"PATH": "/usr/bin:/bin", **shifter_env}
    opts = parse_options([f"--user={user}", "/bin/true"], env)
    prepare(opts, config, _state_or_none(fastpath.file_state, config_path()), env, pinned=True)


def _job_config(environ: Mapping[str, str]) -> tuple[str, SiteConfig]:
    """The job's directory and the site configuration with the job's udiMount/loopMount."""
    from shifter.config.site import load_config  # noqa: PLC0415
    from shifter.runtime import prepared  # noqa: PLC0415

    config = load_config(privileged=True)
    mounts = prepared.job_mounts(config.udi_mount, dict(environ))
    if mounts is None:
        raise UsageError("SLURM_JOB_ID or SLURMD_NODENAME is missing or malformed",
                         hint="the prolog and epilog are run by slurmd")
    return os.path.dirname(mounts[0]), prepared.with_mounts(config, *mounts)


def _make_dirs(base: str, config: SiteConfig) -> None:
    """``<udiMount>.jobs/<node>.<job>/{udiMount,loopMount}``, root-owned, 0755 (the tree's own
    root is 0700 plus the user's ACL entry)."""
    jobs = os.path.dirname(base)
    os.makedirs(jobs, mode=0o755, exist_ok=True)
    st = os.lstat(jobs)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        # Users must not be able to plant a job's directory (or a link) there.
        raise ContainerError(f"{jobs} must be a directory owned by root that nobody else can write",
                             hint="remove it; the prolog creates it")
    for path in (base, config.udi_mount, config.loop_mount):
        os.makedirs(path, mode=0o755, exist_ok=True)


def _write_outcome(path: str, outcome: dict[str, object]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(outcome, handle)


# ------------------------------------------------------------------------------------------ epilog
def epilog(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """Remove the job's container on this node: every mount, the record, the directories."""
    from shifter.cli.setup import release_container, teardown_paths  # noqa: PLC0415
    from shifter.runtime import prepared  # noqa: PLC0415
    from shifter.wlm.slurm.job import job_from_env  # noqa: PLC0415

    _no_args("epilog", argv)
    _require_root("epilog")
    job_from_env(environ)
    base, config = _job_config(environ)
    if not os.path.isdir(base):
        return 0
    release_container(config, prepared.read_record(config))  # namespace holder, a user-store image's squashfuse
    teardown_paths(config.udi_mount, config.loop_mount)
    prepared.remove_record(config)
    for name in (PREPARE_FILE,):
        _unlink(os.path.join(base, name))
    for path in (config.udi_mount, config.loop_mount, base):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise ContainerError(f"cannot remove {path}: {err.strerror}",
                                 hint="something is still mounted there; check /proc/self/mountinfo") from None
    return 0


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# ------------------------------------------------------------------------------------------ common
def _no_args(verb: str, argv: Sequence[str]) -> None:
    if argv:
        raise UsageError(f"{verb} takes no arguments", hint="slurmd runs it with the job in its environment")


def _require_root(verb: str) -> None:
    if os.geteuid() != 0:
        raise UsageError(f"{verb} must run as root", hint="slurmd runs Prolog=/Epilog= as root")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``submit``, ``prolog`` or ``epilog``; errors are one line (``cli.boundary``)."""
    from shifter.cli.boundary import guard  # noqa: PLC0415

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    return guard(PROG, lambda: _dispatch(args[0], args[1:]))


def _dispatch(verb: str, rest: list[str]) -> int:
    try:
        if verb == "submit":
            return submit(rest)
        if verb == "prolog":
            return prolog(rest, os.environ)
        if verb == "epilog":
            return epilog(rest, os.environ)
    except OSError as err:  # the node's trouble (cannot create directories...): exit 16, Slurm drains it
        raise ContainerError(f"{verb}: {err.strerror or err}",
                             hint="see the node's state and the prolog's log") from None
    raise UsageError(f"unknown command {verb!r}", hint="submit, prolog or epilog")


if __name__ == "__main__":
    sys.exit(main())
