"""Volume specs: ``--volume=src:dst[:flag[:flag...]]`` and the site's ``siteFs`` entries.

Shifter's rules (``VolumeMap.c``), applied to whole path components rather than string
prefixes (so ``/etcetera`` is allowed, ``/etc/x`` is not):

* both paths absolute, no ``..`` component, no NUL, no newline;
* a *user* target may not be ``/etc``, ``/var`` (except exactly ``/var/tmp``), ``/proc``,
  ``/sys``, ``/dev`` or anything below them, nor exactly ``/opt``, nor ``/opt/udiImage``
  or below;
* a *site* target may not be exactly ``/``, ``/opt``, ``/etc``, ``/var``, ``/etc/passwd``,
  ``/etc/group`` or ``/etc/nsswitch.conf``;
* user flags: ``ro`` and ``perNodeCache=size=N[,fs=xfs|ext4][,bs=N][,method=loop]``; site flags add
  ``rec``, ``slave`` and ``private`` (the default propagation, accepted for compatibility);
* a flag at most once; no two volumes with the same target.

Several specs may be given in one string separated by ``;``; each may be wrapped in double
quotes.  Parsing is pure: whether the source exists and is readable by the user, and whether
the target can be created safely in the image, is checked by the Linux edge at mount time.
"""

from __future__ import annotations

from shifter._record import Record
from shifter.errors import VolumeError
from shifter.runtime.spec import VolumeSpec

TYPE_CHECKING = False  # typing, collections: not on the launch path
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

USER_FLAGS = frozenset({"ro", "perNodeCache"})
SITE_FLAGS = frozenset({"ro", "perNodeCache", "rec", "slave", "private"})

# A user target may not be at or below these (component-wise)...
_USER_FORBIDDEN_TREES = ("/etc", "/var", "/proc", "/sys", "/dev", "/opt/udiImage")
# ...except these exact paths.
_USER_ALLOWED_EXACT = ("/var/tmp",)
_USER_FORBIDDEN_EXACT = ("/", "/opt")
_SITE_FORBIDDEN_EXACT = ("/", "/opt", "/etc", "/var", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf")

_SIZE = r"^(\d+(?:\.\d+)?)([bkmgtpe]?)$"  # re.IGNORECASE; compiled on first use (re is slow to import)
_SCALE = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5, "e": 1024**6}
_DEFAULT_CACHE_BLOCK = 1024 * 1024
CACHE_FILESYSTEMS = ("auto", "xfs", "ext4")


class PerNodeCache(Record):
    """A parsed ``perNodeCache=`` flag: a per-node scratch file system backed by a loop file
    (privileged) or a tmpfs (unprivileged).  ``fs`` is ``xfs``, ``ext4`` or ``auto`` (xfs when
    ``mkfs.xfs`` is installed and the size allows it, else ext4); ``bs`` and ``method`` are
    accepted for compatibility with NERSC Shifter."""

    size: int
    block_size: int = _DEFAULT_CACHE_BLOCK
    fs: str = "auto"
    method: str = "loop"

    def render(self) -> str:
        """The normalised text stored in :attr:`VolumeSpec.per_node_cache`."""
        return f"size={self.size},bs={self.block_size},fs={self.fs},method={self.method}"


def parse_size(text: str, what: str = "size") -> int:
    """Parse ``10G``, ``100M``, ``512k``, ``1.5g`` or plain bytes into a positive byte count."""
    import re  # noqa: PLC0415  (perNodeCache only: keep re off the launch path)

    match = re.match(_SIZE, text.strip(), re.IGNORECASE)
    if not match:
        raise VolumeError(f"invalid {what} {text!r}",
                          hint="write a number with an optional unit, e.g. 10G or 500M")
    number = int(float(match.group(1)) * _SCALE[match.group(2).lower()])
    if number <= 0:
        raise VolumeError(f"invalid {what} {text!r}: must be greater than zero")
    return number


def parse_per_node_cache(text: str) -> PerNodeCache:
    """Parse the options of a ``perNodeCache`` flag (``size=10G,fs=xfs``, as given or as rendered)."""
    values: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or not key or not value:
            raise VolumeError(f"perNodeCache option {item!r} is not key=value",
                              hint="write e.g. perNodeCache=size=10G")
        if key in values:
            raise VolumeError(f"perNodeCache option '{key}' given twice")
        values[key] = value.strip()
    unknown = set(values) - {"size", "bs", "fs", "method"}
    if unknown:
        raise VolumeError(f"unknown perNodeCache option(s): {', '.join(sorted(unknown))}",
                          hint="perNodeCache accepts size=, fs=xfs|ext4, bs= and method=loop")
    if "size" not in values:
        raise VolumeError("perNodeCache needs a size", hint="write e.g. perNodeCache=size=10G")
    fs = values.get("fs", "auto").lower()
    if fs not in CACHE_FILESYSTEMS:
        raise VolumeError(f"perNodeCache fs={values['fs']!r} is not supported",
                          hint="use fs=xfs or fs=ext4 (or leave it out)")
    method = values.get("method", "loop").lower()
    if method != "loop":
        raise VolumeError(f"perNodeCache method={values['method']!r} is not supported",
                          hint="only method=loop is supported")
    block = parse_size(values["bs"], "perNodeCache block size") if "bs" in values else _DEFAULT_CACHE_BLOCK
    return PerNodeCache(size=parse_size(values["size"], "perNodeCache size"), block_size=block, fs=fs,
                        method=method)


def split_specs(text: str) -> list[str]:
    """Split a ``;``-separated list of volume specs, dropping empty items and surrounding quotes."""
    specs: list[str] = []
    for raw in text.split(";"):
        item = raw.strip()
        if len(item) >= 2 and item[0] == '"' and item[-1] == '"':
            item = item[1:-1].strip()
        if item:
            specs.append(item)
    return specs


def parse_user_volume(spec: str) -> VolumeSpec:
    """Parse and validate one user ``--volume`` spec."""
    return _parse_one(spec, site=False, origin="user")


def parse_site_volume(spec: str, origin: str = "site") -> VolumeSpec:
    """Parse and validate one ``siteFs`` entry (``/path`` alone means ``/path:/path``)."""
    return _parse_one(spec, site=True, origin=origin)


def parse_user_volumes(specs: Iterable[str]) -> list[VolumeSpec]:
    """Parse every user spec (each may hold several, ``;``-separated)."""
    return [parse_user_volume(one) for text in specs for one in split_specs(text)]


def parse_site_volumes(specs: Iterable[str], origin: str = "site") -> list[VolumeSpec]:
    """Parse ``siteFs`` entries for ``origin`` (``"site"`` or ``"module:<name>"``)."""
    return [parse_site_volume(one, origin) for text in specs for one in split_specs(text)]


def check_duplicate_targets(volumes: Sequence[VolumeSpec]) -> None:
    """Refuse two volumes with the same target, naming both."""
    seen: dict[str, VolumeSpec] = {}
    for vol in volumes:
        first = seen.get(vol.target)
        if first is not None:
            raise VolumeError(f"two volumes have the target {vol.target}: "
                              f"{first.source} ({first.origin}) and {vol.source} ({vol.origin})",
                              hint="mount each container path once; a site mount cannot be overridden")
        seen[vol.target] = vol


def check_user_target(target: str, what: str = "") -> None:
    """Apply the user target rules to a normalised container path (e.g. where a target really
    resolved inside the image); ``what`` names it in the error."""
    _check_target(target, what or target, site=False)


def _parse_one(spec: str, *, site: bool, origin: str) -> VolumeSpec:
    if "\0" in spec or "\n" in spec:
        raise VolumeError(f"volume spec {spec!r} contains a control character")
    tokens = spec.split(":")
    if len(tokens) == 1 and site:
        tokens.append(tokens[0])
    if len(tokens) < 2 or not tokens[0] or not tokens[1]:
        raise VolumeError(f"volume spec {spec!r} is not source:target[:flags]",
                          hint="write e.g. --volume=/scratch/me/in:/input:ro")
    source = _clean_path(tokens[0], spec, "source")
    target = _clean_path(tokens[1], spec, "target")
    _check_target(target, spec, site=site)
    flags = _parse_flags(tokens[2:], spec, site=site)
    cache = flags.get("perNodeCache", "")
    if cache and "ro" in flags:
        raise VolumeError(f"volume {spec!r}: perNodeCache cannot be read-only",
                          hint="drop ':ro'; a per-node cache is scratch space")
    return VolumeSpec(source=source, target=target, read_only="ro" in flags, per_node_cache=cache,
                      origin=origin, recursive="rec" in flags, slave="slave" in flags)


def _clean_path(path: str, spec: str, which: str) -> str:
    """Absolute, no ``..``; collapse ``//``, ``/./`` and a trailing ``/``."""
    if not path.startswith("/"):
        raise VolumeError(f"volume {spec!r}: {which} {path!r} is not an absolute path",
                          hint=f"write the {which} as an absolute path (starting with '/')")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise VolumeError(f"volume {spec!r}: {which} {path!r} contains '..'",
                          hint=f"write the {which} without '..' components")
    return "/" + "/".join(parts)


def _check_target(target: str, spec: str, *, site: bool) -> None:
    if site:
        if target in _SITE_FORBIDDEN_EXACT:
            raise VolumeError(f"siteFs {spec!r}: target {target} may not be replaced",
                              hint="fix siteFs / module_*_siteFs in udiRoot.conf")
        return
    if target in _USER_ALLOWED_EXACT:
        return
    if target in _USER_FORBIDDEN_EXACT:
        raise VolumeError(f"volume {spec!r}: target {target} is reserved",
                          hint="mount somewhere else, e.g. under /mnt or a new top-level directory")
    for tree in _USER_FORBIDDEN_TREES:
        if target == tree or target.startswith(tree + "/"):
            raise VolumeError(f"volume {spec!r}: target {target} is in {tree}, which users may not "
                              "mount over", hint="/etc, /var (except /var/tmp), /proc, /sys, /dev and "
                              "/opt/udiImage are reserved for the system")


def _parse_flags(tokens: Sequence[str], spec: str, *, site: bool) -> dict[str, str]:
    allowed = SITE_FLAGS if site else USER_FLAGS
    flags: dict[str, str] = {}
    for token in tokens:
        if not token:
            continue  # "src:dst:" — an empty flag list, as NERSC Shifter accepts
        name, sep, rest = token.partition("=")
        canonical = _canonical_flag(name)
        if canonical not in allowed:
            raise VolumeError(f"volume {spec!r}: flag {token!r} is not allowed",
                              hint="allowed flags: " + ", ".join(sorted(allowed)))
        if canonical in flags:
            raise VolumeError(f"volume {spec!r}: flag {name!r} given twice")
        if canonical == "perNodeCache":
            if not sep:
                raise VolumeError(f"volume {spec!r}: perNodeCache needs options",
                                  hint="write e.g. perNodeCache=size=10G")
            flags[canonical] = parse_per_node_cache(rest).render()
        elif sep:
            raise VolumeError(f"volume {spec!r}: flag {name!r} takes no value")
        else:
            flags[canonical] = "1"
    if "slave" in flags and "private" in flags:
        raise VolumeError(f"volume {spec!r}: flags 'slave' and 'private' exclude each other")
    return flags


def _canonical_flag(name: str) -> str:
    low = name.strip().lower()
    return "perNodeCache" if low == "pernodecache" else low


__all__ = ["CACHE_FILESYSTEMS", "SITE_FLAGS", "USER_FLAGS", "PerNodeCache", "check_duplicate_targets",
           "check_user_target", "parse_per_node_cache",
           "parse_site_volume", "parse_site_volumes", "parse_size", "parse_user_volume", "parse_user_volumes",
           "split_specs"]
