"""Site configuration: ``udiRoot.conf`` (NERSC Shifter compatible) plus our gateway keys.

The file format is ``key=value`` lines, ``#`` comments, ``\\`` line continuation.  Any
unknown key is an error (a typo must never silently weaken a site's policy).  Keys of
the form ``module_<name>_<attr>`` describe site modules.  ``etc/udiRoot.conf.example``
documents every key with its default.

This module is imported on the ``shifter`` launch path: keep it free of heavy imports.
"""

from __future__ import annotations

import errno
import os
import stat

from shifter._record import Record
from shifter.errors import ConfigError

TYPE_CHECKING = False  # (no ``typing``, ``re``, ``pathlib`` or ``dataclasses`` on the launch path)
if TYPE_CHECKING:
    from pathlib import Path

DEFAULT_CONFIG_PATH = "/etc/shifter/udiRoot.conf"
MAX_CONFIG_BYTES = 1024 * 1024

# module_<name>_<attr>: <name> starts with a letter or digit and may hold '_' and '-'; the
# shortest <name> followed by "_<attr>" wins (as in r"^module_([A-Za-z0-9][A-Za-z0-9_-]*?)_(attr)$").
_MODULE_ATTRS = frozenset({"siteFs", "siteEnv", "siteEnvAppend", "siteEnvPrepend", "siteEnvUnset", "conflict",
                           "userhook", "roothook", "copyPath", "enabled", "plugin"})
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_MODULE_NAME_CHARS = _ALNUM | {"_", "-"}
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ModuleConfig(Record):
    """One site module (``module_<name>_*`` keys)."""

    name: str
    site_fs: tuple[str, ...] = ()
    site_env: tuple[str, ...] = ()
    site_env_append: tuple[str, ...] = ()
    site_env_prepend: tuple[str, ...] = ()
    site_env_unset: tuple[str, ...] = ()
    conflict: tuple[str, ...] = ()
    userhook: str = ""
    roothook: str = ""
    copy_path: str = ""
    enabled: bool = True
    plugin: str = ""  # "gpu" or "mpich": host files found at launch (shifter.runtime.plugins)


class SiteConfig(Record):
    """The parsed site configuration.  Loaded once per process and passed explicitly."""

    source: str = ""
    # --- runtime (udiRoot.conf) ---
    image_path: str = "/var/lib/shifter/images"
    udi_mount: str = "/var/lib/shifter/udiMount"
    loop_mount: str = "/var/lib/shifter/loopMount"
    etc_path: str = ""
    site_fs: tuple[str, ...] = ()
    site_env: tuple[str, ...] = ()
    site_env_append: tuple[str, ...] = ()
    site_env_prepend: tuple[str, ...] = ()
    site_env_unset: tuple[str, ...] = ()
    default_image_type: str = "docker"
    allow_local_chroot: bool = False
    mount_udi_root_writable: bool = False
    max_group_count: int = 31
    populate_etc_dynamically: bool = True
    image_gateway: tuple[str, ...] = ()
    gateway_timeout: int = 30  # seconds one request to the image gateway may take
    munge_socket: str = "/run/munge/munge.socket.2"  # munged's socket, for credentials to the gateway
    system: str = "default"
    default_modules: tuple[str, ...] = ()
    modules: tuple[ModuleConfig, ...] = ()
    auto_pull: bool = True
    auto_pull_timeout: int = 3600  # seconds `shifter` waits for an automatic pull (0: no limit)
    # seconds an unprivileged image mount outlives its last container (0: none)
    image_mount_linger: int = 0
    # perNodeCache volumes (privileged mode): node-local directory for the sparse backing
    # files, and the largest size a user may ask for (0: no limit).
    per_node_cache_path: str = "/var/tmp"
    per_node_cache_size_limit: int = 0
    # Site modules and devices (docs/modules.md): a roothook in unprivileged mode ("skip" with a
    # warning, or "refuse"); where CDI specs are read; the size cap of --writable-tmpfs; the root
    # of the host tree the gpu and mpich plugins look in (tests point it at a fake driver tree).
    unprivileged_roothook: str = "skip"
    cdi_spec_dirs: tuple[str, ...] = ("/etc/cdi", "/var/run/cdi")
    writable_tmpfs_size: int = 256 * 1024**2
    plugin_host_root: str = "/"
    # Seconds root waits on a squashfuse daemon run as the user (an image of the per-user
    # store): past it the FUSE connection is aborted and the setup fails (see runtime.md).
    fuse_timeout: float = 30.0
    # --- image pipeline / gateway ---
    user_image_path: str = "~/.local/share/shifter/images"
    cache_dir: str = ""  # blob cache; default: <store>/cache
    cache_max_size: int = 20 * 1024**3
    database_url: str = ""  # default: sqlite:///<store>/shifter.db
    squashfs_compression: str = "zstd"
    squashfs_compression_level: int = 3
    squashfs_builder: str = "auto"  # auto | tar2sqfs (streamed, no tree on disk) | mksquashfs
    keep_setuid: bool = False
    # Limits on one image, all layers together (0: no limit): uncompressed bytes (the sizes
    # the layers' tar headers declare; also caps the download and an imported archive's
    # blobs) and the number of tar members.  unpack.policy has the same defaults.
    max_image_size: int = 64 * 1024**3
    max_image_entries: int = 5_000_000
    download_concurrency: int = 4
    # registryTimeout: seconds to connect, to wait for the next byte (idle read), and for one
    # whole blob (total, retries included): a hung or trickling registry fails in bounded time.
    registry_timeout: tuple[int, int, int] = (10, 30, 3600)
    registry_mirrors: tuple[tuple[str, str], ...] = ()  # (registry host, mirror base URL)
    insecure_registries: tuple[str, ...] = ()
    platform: str = ""  # default: the host's os/arch[/variant]
    gateway_admins: tuple[str, ...] = ("root",)

    def module(self, name: str) -> ModuleConfig:
        for mod in self.modules:
            if mod.name == name:
                return mod
        raise ConfigError(f"unknown module '{name}'",
                          hint=f"modules defined in {self.source or 'the site config'}: "
                               + (", ".join(m.name for m in self.modules) or "none"))

    def mirrors_for(self, registry: str) -> list[str]:
        return [url for host, url in self.registry_mirrors if host == registry]


def _split(value: str, sep: str | None) -> tuple[str, ...]:
    parts = value.split(sep) if sep else value.split()
    return tuple(p.strip() for p in parts if p.strip())


def _bool(key: str, value: str) -> bool:
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(f"{key}={value!r} is not a boolean", hint="use 1/0, true/false or yes/no")


def _int(key: str, value: str) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise ConfigError(f"{key}={value!r} is not an integer") from None
    if number < 0:
        raise ConfigError(f"{key}={value!r} must not be negative")
    return number


def _seconds(key: str, value: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise ConfigError(f"{key}={value!r} is not a number of seconds") from None
    if not 0 < number <= 86400:  # also refuses nan and inf
        raise ConfigError(f"{key}={value!r} must be more than 0 and at most 86400 seconds")
    return number


def parse_size(key: str, value: str) -> int:
    r"""``N[unit][i][b]`` with unit k/m/g/t (any case), blanks allowed around and before the unit
    (what r"\s*(\d+)\s*([kKmMgGtT]?)[iI]?[bB]?\s*" accepts, without ``re``)."""
    text = value.strip()
    digits = _decimal_prefix(text)
    rest = text[digits:].lstrip()
    unit = ""
    if rest[:1] and rest[0] in "kKmMgGtT":
        unit, rest = rest[0].lower(), rest[1:]
    if rest[:1] and rest[0] in "iI":
        rest = rest[1:]
    if rest[:1] and rest[0] in "bB":
        rest = rest[1:]
    if not digits or rest:
        raise ConfigError(f"{key}={value!r} is not a size", hint="write e.g. 500M or 20G")
    return int(text[:digits]) * _SIZE_UNITS[unit]


def _decimal_prefix(text: str) -> int:
    r"""Length of the leading run of (Unicode) decimal digits, like ``\d+``."""
    count = 0
    while count < len(text) and text[count].isdecimal():
        count += 1
    return count


def _module_key(key: str) -> tuple[str, str] | None:
    """``module_<name>_<attr>`` -> ``(name, attr)``; ``None`` for any other key."""
    if not key.startswith("module_"):
        return None
    body = key[len("module_"):]
    if not body or body[0] not in _ALNUM:
        return None
    for index in range(1, len(body)):
        char = body[index]
        if char == "_" and body[index + 1:] in _MODULE_ATTRS:
            return body[:index], body[index + 1:]
        if char not in _MODULE_NAME_CHARS:
            return None
    return None


def _timeouts(key: str, value: str) -> tuple[int, int, int]:
    """``CONNECT,IDLE,TOTAL`` seconds (``registryTimeout``), each at least 1."""
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"{key}={value!r} is not CONNECT,IDLE,TOTAL seconds",
                          hint="write e.g. registryTimeout=10,30,3600 (whole seconds, each at least 1)")
    return int(parts[0]), int(parts[1]), int(parts[2])


def _choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    value = value.strip()
    if value not in choices:
        raise ConfigError(f"{key}={value!r} must be one of: {', '.join(choices)}")
    return value


def _abs_path(key: str, value: str) -> str:
    if not value.startswith("/"):
        raise ConfigError(f"{key}={value!r} must be an absolute path")
    return os.path.normpath(value)


# key in the file -> (dataclass field, converter)
_STR = lambda _k, v: v.strip()  # noqa: E731
_KEYS: dict[str, tuple[str, object]] = {
    "imagePath": ("image_path", _abs_path),
    "udiMount": ("udi_mount", _abs_path),
    "loopMount": ("loop_mount", _abs_path),
    "etcPath": ("etc_path", _abs_path),
    "siteFs": ("site_fs", lambda _k, v: _split(v, ";")),
    "siteEnv": ("site_env", lambda _k, v: _split(v, None)),
    "siteEnvAppend": ("site_env_append", lambda _k, v: _split(v, None)),
    "siteEnvPrepend": ("site_env_prepend", lambda _k, v: _split(v, None)),
    "siteEnvUnset": ("site_env_unset", lambda _k, v: _split(v, None)),
    "defaultImageType": ("default_image_type", _STR),
    "allowLocalChroot": ("allow_local_chroot", _bool),
    "mountUdiRootWritable": ("mount_udi_root_writable", _bool),
    "maxGroupCount": ("max_group_count", _int),
    "populateEtcDynamically": ("populate_etc_dynamically", _bool),
    "imageGateway": ("image_gateway", lambda _k, v: _split(v, None)),
    "gatewayTimeout": ("gateway_timeout", _int),
    "mungeSocket": ("munge_socket", _abs_path),
    "system": ("system", _STR),
    "defaultModules": ("default_modules", lambda _k, v: _split(v, ",")),
    "autoPull": ("auto_pull", _bool),
    "autoPullTimeout": ("auto_pull_timeout", _int),
    "imageMountLinger": ("image_mount_linger", _int),
    "perNodeCachePath": ("per_node_cache_path", _abs_path),
    "perNodeCacheSizeLimit": ("per_node_cache_size_limit", parse_size),
    "unprivilegedRoothook": ("unprivileged_roothook", lambda k, v: _choice(k, v, ("skip", "refuse"))),
    "cdiSpecDirs": ("cdi_spec_dirs", lambda k, v: tuple(_abs_path(k, d) for d in _split(v, None))),
    "writableTmpfsSize": ("writable_tmpfs_size", parse_size),
    "pluginHostRoot": ("plugin_host_root", _abs_path),
    "fuseTimeout": ("fuse_timeout", _seconds),
    "userImagePath": ("user_image_path", _STR),
    "cacheDir": ("cache_dir", _abs_path),
    "cacheMaxSize": ("cache_max_size", parse_size),
    "databaseUrl": ("database_url", _STR),
    "squashfsCompression": ("squashfs_compression", _STR),
    "squashfsCompressionLevel": ("squashfs_compression_level", _int),
    "squashfsBuilder": ("squashfs_builder", _STR),
    "keepSetuid": ("keep_setuid", _bool),
    "maxImageSize": ("max_image_size", parse_size),
    "maxImageEntries": ("max_image_entries", _int),
    "downloadConcurrency": ("download_concurrency", _int),
    "registryTimeout": ("registry_timeout", _timeouts),
    "insecureRegistries": ("insecure_registries", lambda _k, v: _split(v, None)),
    "platform": ("platform", _STR),
    "gatewayAdmins": ("gateway_admins", lambda _k, v: _split(v, None)),
}
# Keys NERSC Shifter knows that we accept and ignore (documented as such in the template).
_IGNORED_KEYS = {"udiRootPath", "sitePreMountHook", "sitePostMountHook", "optUdiImage", "autoLoadKernelModule",
                 "modprobePath", "insmodPath", "cpPath", "mvPath", "chmodPath", "mkfsXfsPath", "rootfsType",
                 "kmodBasePath", "kmodCacheFile", "batchType", "enableSshd", "siteResources",
                 "ddPath"}
_MODULE_LIST = {"siteFs": ";", "siteEnv": None, "siteEnvAppend": None, "siteEnvPrepend": None,
                "siteEnvUnset": None, "conflict": ","}
_MODULE_FIELD = {"siteFs": "site_fs", "siteEnv": "site_env", "siteEnvAppend": "site_env_append",
                 "siteEnvPrepend": "site_env_prepend", "siteEnvUnset": "site_env_unset",
                 "conflict": "conflict", "userhook": "userhook", "roothook": "roothook",
                 "copyPath": "copy_path", "enabled": "enabled", "plugin": "plugin"}


def parse_lines(text: str, source: str = "<string>") -> list[tuple[int, str, str]]:
    """Split the file into ``(line number, key, value)``; handles comments and ``\\``."""
    entries: list[tuple[int, str, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not pending:
            start = number
            stripped = line.lstrip()
            if not stripped or stripped.startswith("#"):
                continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        line = pending + line
        pending = ""
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{source}:{start}: expected key=value, got {line.strip()!r}")
        entries.append((start, key, value.strip()))
    if pending:
        raise ConfigError(f"{source}: file ends inside a '\\' continuation")
    return entries


def parse_config(text: str, source: str = "<string>") -> SiteConfig:
    """Parse udiRoot.conf text into a :class:`SiteConfig`."""
    values: dict[str, object] = {"source": source}
    modules: dict[str, dict[str, object]] = {}
    mirrors: list[tuple[str, str]] = []
    for number, key, value in parse_lines(text, source):
        where = f"{source}:{number}"
        if key in _KEYS:
            name, conv = _KEYS[key]
            try:
                values[name] = conv(key, value)  # type: ignore[operator]
            except ConfigError as err:
                raise ConfigError(f"{where}: {err.message}", hint=err.hint) from None
        elif key.startswith("registryMirror_"):
            host = key[len("registryMirror_"):]
            for url in _split(value, None):
                mirrors.append((host, url.rstrip("/")))
        elif module_key := _module_key(key):
            mod, attr = module_key
            entry = modules.setdefault(mod, {"name": mod})
            if attr == "enabled":
                entry["enabled"] = _bool(key, value)
            elif attr in _MODULE_LIST:
                entry[_MODULE_FIELD[attr]] = _split(value, _MODULE_LIST[attr])
            else:
                entry[_MODULE_FIELD[attr]] = value
        elif key in _IGNORED_KEYS:
            continue
        else:
            raise ConfigError(f"{where}: unknown key '{key}'",
                              hint="see etc/udiRoot.conf.example for every supported key")
    values["modules"] = tuple(ModuleConfig(**m) for m in modules.values())  # type: ignore[arg-type]
    values["registry_mirrors"] = tuple(mirrors)
    config = SiteConfig(**values)  # type: ignore[arg-type]
    _validate(config)
    return config


def _validate(config: SiteConfig) -> None:
    known = {m.name for m in config.modules}
    for name in config.default_modules:
        if name != "none" and name not in known:
            raise ConfigError(f"{config.source}: defaultModules names unknown module '{name}'")
    for mod in config.modules:
        for other in mod.conflict:
            if other not in known:
                raise ConfigError(f"{config.source}: module_{mod.name}_conflict names unknown module '{other}'")
        _validate_module_paths(config.source, mod)
    _validate_env_rules(config)
    _validate_default_modules(config)
    if config.default_image_type not in {"docker", "id", "local"}:
        raise ConfigError(f"{config.source}: defaultImageType '{config.default_image_type}' "
                          "is not an image type", hint="use docker, id or local")
    # Not lzma: mksquashfs and tar2sqfs write it, but neither the kernel nor squashfuse reads it.
    if config.squashfs_compression not in {"gzip", "lz4", "lzo", "xz", "zstd"}:
        raise ConfigError(f"{config.source}: unsupported squashfsCompression "
                          f"'{config.squashfs_compression}'", hint="use zstd, lz4, gzip, xz or lzo")
    if config.squashfs_builder not in {"auto", "tar2sqfs", "mksquashfs"}:
        raise ConfigError(f"{config.source}: unknown squashfsBuilder '{config.squashfs_builder}'",
                          hint="use auto, tar2sqfs or mksquashfs")
    if config.max_group_count > 65536:
        raise ConfigError(f"{config.source}: maxGroupCount is too large")


def _is_env_name(name: str) -> bool:
    """``[A-Za-z_][A-Za-z0-9_]*``: exactly the ASCII identifiers."""
    return name.isascii() and name.isidentifier()


def _validate_env_rules(config: SiteConfig) -> None:
    """siteEnv* entries must be NAME=value (siteEnvUnset: NAME) with a valid NAME."""
    layers: list[tuple[str, ModuleConfig | SiteConfig]] = [("", config)]
    layers += [(f"module_{m.name}_", m) for m in config.modules]
    for prefix, layer in layers:
        for key, entries in (("siteEnv", layer.site_env), ("siteEnvAppend", layer.site_env_append),
                             ("siteEnvPrepend", layer.site_env_prepend)):
            for entry in entries:
                name, sep, _value = entry.partition("=")
                if not sep or not _is_env_name(name):
                    raise ConfigError(f"{config.source}: {prefix}{key} entry {entry!r} is not NAME=value",
                                      hint="NAME is letters, digits and '_'; separate entries with spaces")
        for name in layer.site_env_unset:
            if not _is_env_name(name):
                raise ConfigError(f"{config.source}: {prefix}siteEnvUnset entry {name!r} "
                                  "is not a variable name")


def _validate_module_paths(source: str, mod: ModuleConfig) -> None:
    """copyPath and the roothook are host paths, the userhook a container path: all absolute
    (a hook is a command line split on white space, run without a shell)."""
    for attr, value in (("copyPath", mod.copy_path), ("roothook", mod.roothook), ("userhook", mod.userhook)):
        words = value.split()
        if words and not words[0].startswith("/"):
            raise ConfigError(f"{source}: module_{mod.name}_{attr}={value!r} must start with an absolute path")
    if mod.plugin not in ("", "gpu", "mpich"):
        raise ConfigError(f"{source}: module_{mod.name}_plugin={mod.plugin!r} is not a known plugin",
                          hint="use gpu or mpich")


def _validate_default_modules(config: SiteConfig) -> None:
    """defaultModules may not name 'none' with others, nor two modules that conflict."""
    names = set(config.default_modules)
    if "none" in names and len(names) > 1:
        raise ConfigError(f"{config.source}: defaultModules mixes 'none' with module names")
    for mod in config.modules:
        if mod.name in names:
            clash = sorted(names.intersection(mod.conflict) - {mod.name})
            if clash:
                raise ConfigError(f"{config.source}: defaultModules loads conflicting modules "
                                  f"'{mod.name}' and '{clash[0]}'")


# Host trees every container binds (``runtime.plan.SYSTEM_BINDS``; a test holds the two equal).
SYSTEM_BIND_SOURCES = ("/proc", "/sys", "/dev", "/tmp", "/var/tmp")


def paths_overlap(a: str, b: str) -> bool:
    """True when one of two normalised absolute paths is the other or lies below it."""
    return a == b or b.startswith(a.rstrip("/") + "/") or a.startswith(b.rstrip("/") + "/")


def site_fs_sources(entries: tuple[str, ...]) -> list[str]:
    """The host paths of ``siteFs`` entries (``src:dst[:flags]``, ``/path`` alone, ``"..."``),
    normalised; what ``runtime.volumes`` parses, without its checks (it reports bad entries)."""
    sources = []
    for entry in entries:
        item = entry.strip()
        if len(item) >= 2 and item[0] == '"' and item[-1] == '"':
            item = item[1:-1].strip()
        source = item.split(":", 1)[0]
        if source.startswith("/"):
            sources.append(os.path.normpath(source))
    return sources


def check_mount_dirs(config: SiteConfig) -> None:
    """``udiMount`` and ``loopMount`` must lie outside every host tree a container binds.

    The container tree is built at ``udiMount`` (the image at ``loopMount``) while the host's
    ``/tmp``, ``/var/tmp``, ``/dev``, ``/proc``, ``/sys`` and the ``siteFs`` sources are bound into
    it recursively: below one of them, the tree would be bound into itself (and the image, a
    private one included, shown at a second place).  Checked by the runtime before it mounts
    anything (``runtime.launch.validate``, ``shifter-setup``), not when the file is parsed: the
    image gateway and ``shifterimg`` do not build containers.
    """
    where = config.source or "udiRoot.conf"
    hint = "put udiMount and loopMount where no container binds, e.g. under /var/lib/shifter"
    mounts = (("udiMount", config.udi_mount), ("loopMount", config.loop_mount))
    if paths_overlap(config.udi_mount, config.loop_mount):
        raise ConfigError(f"{where}: udiMount {config.udi_mount} and loopMount {config.loop_mount} overlap",
                          hint="use two separate directories, neither inside the other")
    site = site_fs_sources(config.site_fs) + [src for mod in config.modules for src in site_fs_sources(mod.site_fs)]
    for key, path in mounts:
        for tree in SYSTEM_BIND_SOURCES:
            if paths_overlap(path, tree):
                raise ConfigError(f"{where}: {key} {path} overlaps {tree}, which every container binds "
                                  "(the container tree would show up inside itself)", hint=hint)
        for source in site:
            if paths_overlap(path, source):
                raise ConfigError(f"{where}: {key} {path} overlaps the siteFs source {source} "
                                  "(the container tree would show up inside itself)", hint=hint)


def check_file_trust(path: str, st: os.stat_result) -> None:
    """When running privileged, the config must be a root-owned regular file that is not
    group/world-writable."""
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"site configuration {path} is not a regular file",
                          hint="point SHIFTER_CONFIG at udiRoot.conf")
    if st.st_uid != 0:
        raise ConfigError(f"site configuration {path} is not owned by root",
                          hint="chown root:root it; it controls privileged mounts and stores")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"site configuration {path} is group- or world-writable", hint="chmod go-w it")


def config_path(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("SHIFTER_CONFIG") or DEFAULT_CONFIG_PATH


_FILE_HINT = "SHIFTER_CONFIG (default /etc/shifter/udiRoot.conf) must name a readable udiRoot.conf file"


def load_config(path: str | None = None, *, privileged: bool | None = None) -> SiteConfig:
    """Load the site configuration once.

    ``path`` defaults to ``$SHIFTER_CONFIG`` or ``/etc/shifter/udiRoot.conf``.  Every tool
    applies the same rules (``privileged`` defaults to "the effective uid is root"):

    * a file that is *named* (``path`` or ``$SHIFTER_CONFIG``) must exist;
    * a missing default file yields the built-in defaults (handy on a laptop), except when
      privileged, where the trust check requires a real root-owned file;
    * privileged, only a root-owned regular file that group and others cannot write is trusted
      (it sets root's store, database and mount points); never through a symbolic link.
    """
    named = path or os.environ.get("SHIFTER_CONFIG") or ""
    path = named or DEFAULT_CONFIG_PATH
    if privileged is None:
        privileged = os.geteuid() == 0
    try:
        # O_NONBLOCK: a FIFO named by SHIFTER_CONFIG must not hang us (it is refused below).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        if privileged or named:
            raise ConfigError(f"site configuration {path} does not exist",
                              hint="install etc/udiRoot.conf.example there and adapt it" if not named else
                              "check SHIFTER_CONFIG, or unset it to use " + DEFAULT_CONFIG_PATH) from None
        return SiteConfig(source=path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ConfigError(f"site configuration {path} is a symbolic link",
                              hint="name the file itself; symbolic links are not followed") from None
        raise ConfigError(f"cannot open site configuration {path}: {err.strerror}", hint=_FILE_HINT) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"site configuration {path} is a directory",
                              hint="point SHIFTER_CONFIG at a udiRoot.conf file")
        if privileged:
            check_file_trust(path, st)
        elif not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"site configuration {path} is not a regular file", hint=_FILE_HINT)
        try:
            data = _read_at_most(fd, MAX_CONFIG_BYTES + 1)
        except OSError as err:  # e.g. /proc/self/mem: EIO
            raise ConfigError(f"cannot read site configuration {path}: {err.strerror or err}",
                              hint=_FILE_HINT) from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"site configuration {path} is larger than {MAX_CONFIG_BYTES} bytes")
    # Privileged, SHIFTER_CONFIG may name any root-owned file (/etc/shadow): never quote its
    # content in an error unless anyone may read it anyway.
    secret = privileged and not st.st_mode & stat.S_IROTH
    try:
        return parse_config(data.decode("utf-8"), source=path)
    except (ConfigError, UnicodeDecodeError) as err:
        if secret:
            raise ConfigError(f"site configuration {path} is not valid (details withheld: the file is "
                              "not world-readable)", hint="compare it with etc/udiRoot.conf.example, or make "
                              "it mode 0644 to see the error") from None
        if isinstance(err, UnicodeDecodeError):
            raise ConfigError(f"site configuration {path} is not UTF-8 text") from None
        raise


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def expand_user_path(path: str, home: str | None = None) -> Path:
    """Expand ``~`` in a configured per-user path (``home`` overrides the caller's)."""
    from pathlib import Path  # noqa: PLC0415  (pathlib is not on the launch path)

    return Path(expand_user_dir(path, home))


def expand_user_dir(path: str, home: str | None = None) -> str:
    """:func:`expand_user_path` as a plain string (not normalised)."""
    if path.startswith("~"):
        base = home if home is not None else os.path.expanduser("~")
        return base + path[1:]
    return path


__all__ = ["DEFAULT_CONFIG_PATH", "SYSTEM_BIND_SOURCES", "ModuleConfig", "SiteConfig", "check_file_trust",
           "check_mount_dirs", "config_path", "expand_user_dir", "expand_user_path", "load_config", "parse_config",
           "parse_lines", "paths_overlap", "site_fs_sources"]
