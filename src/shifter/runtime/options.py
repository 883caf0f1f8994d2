"""``shifter`` command-line options, parsed like NERSC Shifter's ``getopt_long`` with
``POSIXLY_CORRECT``: parsing stops at the first non-option (or after ``--``), so
``shifter --image=x ls -l`` runs ``ls -l``.

Hand-written (no argparse) because it is on every launch and because getopt's rules —
clustered short flags (``-vE``), attached values (``-iubuntu``), unique long-option prefixes
(``--entry``), optional values only with ``=`` (``--entrypoint[=cmd]``) — are the
compatibility contract.

Defaults from the environment: ``SHIFTER_IMAGE`` (typed by ``SHIFTER_IMAGETYPE``) or
``SHIFTER`` when no ``--image``; ``SHIFTER_VOLUME`` when no ``--volume``; ``SHIFTER_MODULE``
when no ``--module``.
"""

from __future__ import annotations

from shifter._record import Record
from shifter.errors import UsageError

TYPE_CHECKING = False  # typing, collections: not on the launch path
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

USAGE = """\
Usage: shifter [OPTIONS] [--] [COMMAND [ARG...]]

Run COMMAND (default /bin/sh) inside an image, as the calling user.

  -i, --image=[TYPE:]TAG     image to run: docker:ubuntu:22.04, ubuntu:22.04, id:<hex>,
                             local:/path (where the site allows it); default $SHIFTER_IMAGE
                             (of type $SHIFTER_IMAGETYPE)
  -V, --volume=SRC:DST[:FLAGS]
                             bind SRC on the host to DST in the container; repeatable and
                             ';'-separated; flags: ro, perNodeCache=size=10G; default $SHIFTER_VOLUME
      --entrypoint[=CMD]     run CMD, or the image's ENTRYPOINT, before the arguments
                             (which default to the image's CMD)
  -w, --workdir[=PATH]       start in PATH (-w needs PATH); bare --workdir: the image's WORKDIR
  -e, --env=NAME=VALUE       set a variable in the container; repeatable
      --env-file=FILE        read NAME=VALUE lines from FILE; repeatable
  -E, --clearenv             do not pass the caller's environment into the container
  -m, --module=A,B|none      site modules to load instead of the defaults; default $SHIFTER_MODULE
      --device=VENDOR/CLASS=NAME
                             add a device described by a CDI spec in the site's CDI
                             directories (/etc/cdi, /var/run/cdi); repeatable
      --writable-tmpfs       make the image writable: changes go to a size-capped tmpfs
                             and are gone when the container ends
      --user=NAME            (root only) run the container as user NAME
  -v, --verbose              accepted for NERSC compatibility (no extra output yet)
  -h, --help                 show this help
      --version              show the version

Options must come before COMMAND; everything from COMMAND on is passed to it unchanged.
"""

_NONE, _REQUIRED, _OPTIONAL = "none", "required", "optional"

# long name -> (destination, argument mode)
_LONG: dict[str, tuple[str, str]] = {
    "help": ("help", _NONE),
    "version": ("version", _NONE),
    "verbose": ("verbose", _NONE),
    "image": ("image", _REQUIRED),
    "volume": ("volume", _REQUIRED),
    "entrypoint": ("entrypoint", _OPTIONAL),
    "workdir": ("workdir", _OPTIONAL),
    "env": ("env", _REQUIRED),
    "env-file": ("env_file", _REQUIRED),
    "clearenv": ("clearenv", _NONE),
    "module": ("module", _REQUIRED),
    "user": ("user", _REQUIRED),
    "device": ("device", _REQUIRED),
    "writable-tmpfs": ("writable_tmpfs", _NONE),
}
# short letter -> (destination, argument mode); -w takes a value, as in NERSC Shifter.
_SHORT: dict[str, tuple[str, str]] = {
    "h": ("help", _NONE), "v": ("verbose", _NONE), "i": ("image", _REQUIRED), "V": ("volume", _REQUIRED),
    "w": ("workdir", _REQUIRED), "e": ("env", _REQUIRED), "E": ("clearenv", _NONE),
    "m": ("module", _REQUIRED),
}


class ShifterOptions(Record):
    """Everything the command line (and its environment defaults) asked for, unvalidated."""

    image: str | None = None
    image_type: str | None = None  # default type for ``image`` ($SHIFTER_IMAGETYPE), None: the site's
    volumes: tuple[str, ...] = ()  # raw specs; each may hold several, ';'-separated
    entrypoint: bool = False
    entrypoint_cmd: str | None = None  # --entrypoint=CMD
    workdir: str | None = None  # --workdir=PATH / -w PATH
    workdir_given: bool = False  # any --workdir / -w (bare --workdir: the image's WORKDIR)
    env: tuple[str, ...] = ()
    env_files: tuple[str, ...] = ()
    clearenv: bool = False
    modules: str | None = None  # raw "a,b" / "none"; None: the site's defaultModules
    user: str | None = None
    help: bool = False
    version: bool = False
    verbose: int = 0
    devices: tuple[str, ...] = ()  # --device=vendor/class=name (CDI)
    writable_tmpfs: bool = False
    args: tuple[str, ...] = ()


class _Collected:
    """What the parser saw, before defaults (a plain class: dataclasses cost launch time)."""

    def __init__(self) -> None:
        self.values: dict[str, str | None] = {}
        self.lists: dict[str, list[str]] = {}
        self.flags: dict[str, int] = {}


def parse_options(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ShifterOptions:
    """Parse ``argv`` (without the program name) with getopt semantics; see the module docstring."""
    got = _Collected()
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            index += 1
            break
        if arg.startswith("--"):
            index = _long_option(argv, index, got)
        elif arg.startswith("-") and arg != "-":
            index = _short_options(argv, index, got)
        else:
            break
    return _build(got, tuple(argv[index:]), environ or {})


def _long_option(argv: Sequence[str], index: int, got: _Collected) -> int:
    name, eq, value = argv[index][2:].partition("=")
    long_name = _match_long(name)
    dest, mode = _LONG[long_name]
    if mode == _NONE and eq:
        raise UsageError(f"option --{long_name} takes no value", hint="see 'shifter --help'")
    if mode == _REQUIRED and not eq:
        if index + 1 >= len(argv):
            raise UsageError(f"option --{long_name} needs a value", hint=f"write --{long_name}=VALUE")
        index += 1
        value = argv[index]
    _record(got, dest, mode, value if (eq or mode == _REQUIRED) else None)
    return index + 1


def _match_long(name: str) -> str:
    if name in _LONG:
        return name
    candidates = [n for n in _LONG if n.startswith(name)] if name else []
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise UsageError(f"option --{name} is ambiguous: " + ", ".join(f"--{c}" for c in sorted(candidates)))
    raise UsageError(f"unknown option --{name}", hint="see 'shifter --help'")


def _short_options(argv: Sequence[str], index: int, got: _Collected) -> int:
    arg = argv[index]
    for pos in range(1, len(arg)):
        letter = arg[pos]
        if letter not in _SHORT:
            raise UsageError(f"unknown option -{letter}", hint="see 'shifter --help'")
        dest, mode = _SHORT[letter]
        if mode == _NONE:
            _record(got, dest, mode, None)
            continue
        value = arg[pos + 1:]
        if not value:
            if index + 1 >= len(argv):
                raise UsageError(f"option -{letter} needs a value", hint=f"write -{letter} VALUE")
            index += 1
            value = argv[index]
        _record(got, dest, mode, value)
        break
    return index + 1


def _record(got: _Collected, dest: str, mode: str, value: str | None) -> None:
    if dest in ("volume", "env", "env_file", "device"):
        got.lists.setdefault(dest, []).append(value or "")
    elif mode == _NONE:
        got.flags[dest] = got.flags.get(dest, 0) + 1
    else:
        got.values[dest] = value
        if dest == "entrypoint":
            got.flags["entrypoint"] = 1


def _build(got: _Collected, args: tuple[str, ...], environ: Mapping[str, str]) -> ShifterOptions:
    image, image_type = _image_default(got, environ)
    volumes = got.lists.get("volume")
    if not volumes:
        volumes = [environ["SHIFTER_VOLUME"]] if environ.get("SHIFTER_VOLUME") else []
    modules = got.values.get("module") if "module" in got.values else environ.get("SHIFTER_MODULE") or None
    for dest in ("user", "module"):
        if dest in got.values and not got.values[dest]:
            raise UsageError(f"option --{dest.replace('_', '-')} needs a non-empty value")
    if any(not f for f in got.lists.get("env_file", [])):
        raise UsageError("option --env-file needs a file name")
    entry_cmd = got.values.get("entrypoint")
    if entry_cmd is not None and not entry_cmd.strip():
        raise UsageError("--entrypoint= is empty",
                         hint="write --entrypoint to use the image's, or --entrypoint=CMD")
    return ShifterOptions(
        image=image, image_type=image_type, volumes=tuple(volumes),
        entrypoint="entrypoint" in got.flags, entrypoint_cmd=got.values.get("entrypoint"),
        workdir=got.values.get("workdir"), workdir_given="workdir" in got.values,
        env=tuple(got.lists.get("env", [])), env_files=tuple(got.lists.get("env_file", [])),
        clearenv=bool(got.flags.get("clearenv")), modules=modules, user=got.values.get("user"),
        help=bool(got.flags.get("help")), version=bool(got.flags.get("version")),
        verbose=got.flags.get("verbose", 0), devices=tuple(got.lists.get("device", [])),
        writable_tmpfs=bool(got.flags.get("writable_tmpfs")), args=args,
    )


def _image_default(got: _Collected, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    if "image" in got.values:
        image = got.values["image"]
        if not image or not image.strip():
            raise UsageError("option --image needs a value", hint="write e.g. --image=docker:ubuntu:22.04")
        return image, None
    if environ.get("SHIFTER_IMAGE"):
        return environ["SHIFTER_IMAGE"], environ.get("SHIFTER_IMAGETYPE") or None
    if environ.get("SHIFTER"):
        return environ["SHIFTER"], None
    return None, None


__all__ = ["USAGE", "ShifterOptions", "parse_options"]
