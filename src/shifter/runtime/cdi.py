"""Container Device Interface (CDI): ``--device=vendor/class=name`` from the site's spec files.

Spec files (``*.json``; ``*.yaml`` where PyYAML is installed) are read from the site's
``cdiSpecDirs`` (``/etc/cdi`` then ``/var/run/cdi``; for a device defined twice the later wins,
as in the CDI specification).  They are site files, so they are trusted only when root-owned and
not writable by group or others (like ``udiRoot.conf``), in a directory that is the same, and
they are still parsed as hostile input: every field is checked, and any mistake is a
:class:`ConfigError` naming the file, never a traceback.

Applied edits (the spec's ``containerEdits`` first, then the device's):

* ``deviceNodes``: the host node (``hostPath``, default ``path``) bound onto ``path``; the node's
  type and major/minor numbers, when the spec gives them, must match the host's.  These binds
  are the only ones without ``nodev`` (``runtime.linux.modexec``).
* ``mounts``: ``hostPath`` bound onto ``containerPath``, read-only with the ``ro`` option;
  always nosuid, nodev.
* ``env``: ``NAME=value`` set last (after the site's rules).
* ``hooks``: ``createRuntime``, ``createContainer`` and ``prestart`` hooks run while the container
  is built (like a module's roothook: a fixed environment, working
  directory the container root, stdin ``/dev/null``, no OCI state); other hook kinds are refused.

Works the same in privileged and unprivileged mode (device binds work in a user namespace).
"""

from __future__ import annotations

import json
import os
import stat

from shifter._record import Record
from shifter.errors import ConfigError, UsageError
from shifter.runtime.environment import is_valid_name
from shifter.runtime.spec import ExtraBind

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from shifter.config.site import SiteConfig

MAX_SPEC_BYTES = 1024 * 1024
RUN_HOOKS = ("createRuntime", "createContainer", "prestart")
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-:")
_NODE_TYPES = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK}


class CdiEdits(Record):
    """What the requested devices add to the container."""

    binds: tuple[ExtraBind, ...] = ()
    env: tuple[str, ...] = ()
    hooks: tuple[tuple[str, ...], ...] = ()


class _Spec(Record):
    path: str
    kind: str
    common: dict[str, object]
    devices: dict[str, dict[str, object]]


def resolve_devices(names: Sequence[str], config: SiteConfig) -> CdiEdits:
    """The edits of ``--device`` names (``vendor/class=name``), in the order asked."""
    specs = load_specs(config.cdi_spec_dirs)
    binds: list[ExtraBind] = []
    env: list[str] = []
    hooks: list[tuple[str, ...]] = []
    for name in dict.fromkeys(names):
        kind, sep, device = name.partition("=")
        if not sep or "/" not in kind or not device:
            raise UsageError(f"--device={name!r} is not a CDI device name", hint="write --device=vendor/class=name")
        spec = specs.get((kind, device))
        if spec is None:
            known = sorted(f"{k}={d}" for k, d in specs)
            raise UsageError(f"unknown CDI device '{name}'",
                             hint="devices this site describes: " + (", ".join(known) or "none"))
        for edits in (spec.common, spec.devices[device]):
            _apply(spec.path, name, edits, binds, env, hooks=hooks)
    return CdiEdits(tuple(binds), tuple(env), tuple(hooks))


def load_specs(dirs: Sequence[str]) -> dict[tuple[str, str], _Spec]:
    """Every device of every trusted spec file: ``(kind, name) -> spec``; later files win."""
    found: dict[tuple[str, str], _Spec] = {}
    for directory in dirs:
        try:
            st = os.stat(directory)
        except FileNotFoundError:
            continue
        _check_trust(directory, st)
        for entry in sorted(os.listdir(directory)):
            if entry.endswith((".json", ".yaml", ".yml")):
                spec = _read_spec(os.path.join(directory, entry))
                for device in spec.devices:
                    found[(spec.kind, device)] = spec
    return found


def _check_trust(path: str, st: os.stat_result) -> None:
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"CDI spec {path} is not owned by root or is writable by others",
                          hint="CDI specs say what goes into containers: chown root and chmod go-w them")


def _read_spec(path: str) -> _Spec:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        raise ConfigError(f"CDI spec {path}: cannot open it: {err.strerror}",
                          hint="CDI specs must be regular files, not symlinks") from None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"CDI spec {path} is not a regular file")
        _check_trust(path, st)
        data = handle.read(MAX_SPEC_BYTES + 1)
    if len(data) > MAX_SPEC_BYTES:
        raise ConfigError(f"CDI spec {path} is larger than {MAX_SPEC_BYTES} bytes")
    doc = _parse(path, data)
    return _check_spec(path, doc)


def _parse(path: str, data: bytes) -> object:
    try:
        text = data.decode("utf-8")
        if path.endswith(".json"):
            return json.loads(text)
        try:
            import yaml  # noqa: PLC0415
        except ImportError:
            raise ConfigError(f"CDI spec {path} is YAML, and PyYAML is not installed",
                              hint="write the spec as JSON (a .json file), or install PyYAML") from None
        return yaml.safe_load(text)
    except ConfigError:
        raise
    except Exception as err:  # json/yaml parse errors of any kind: report, never a traceback
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"CDI spec {path} cannot be parsed: {first[:200]}",
                          hint="fix the file (CDI specs are JSON or YAML)") from None


def _fail(path: str, what: str) -> ConfigError:
    return ConfigError(f"CDI spec {path}: {what}", hint="see the CDI specification; fix or remove the file")


def _check_spec(path: str, doc: object) -> _Spec:
    if not isinstance(doc, dict):
        raise _fail(path, "the top level is not an object")
    kind = doc.get("kind")
    vendor, _, klass = kind.partition("/") if isinstance(kind, str) else ("", "", "")
    if not vendor or not klass or not set(vendor + klass) <= _NAME_CHARS:
        raise _fail(path, f"'kind' must be vendor/class, not {kind!r}")
    if not isinstance(doc.get("cdiVersion"), str):
        raise _fail(path, "'cdiVersion' is missing")
    devices = doc.get("devices")
    if not isinstance(devices, list) or not devices:
        raise _fail(path, "'devices' must be a non-empty list")
    by_name: dict[str, dict[str, object]] = {}
    for index, device in enumerate(devices):
        name = device.get("name") if isinstance(device, dict) else None
        if not isinstance(name, str) or not name or not set(name) <= _NAME_CHARS:
            raise _fail(path, f"devices[{index}] has no valid 'name'")
        by_name[name] = _check_edits(path, f"device {name}", device.get("containerEdits"))
    common = _check_edits(path, "containerEdits", doc.get("containerEdits", {}))
    return _Spec(path=path, kind=kind, common=common, devices=by_name)  # type: ignore[arg-type]


def _check_edits(path: str, where: str, edits: object) -> dict[str, object]:
    if edits is None:
        return {}
    if not isinstance(edits, dict):
        raise _fail(path, f"{where}: containerEdits is not an object")
    for key in ("env", "deviceNodes", "mounts", "hooks"):
        if key in edits and not isinstance(edits[key], list):
            raise _fail(path, f"{where}: '{key}' is not a list")
    return edits


def _apply(path: str, device: str, edits: dict[str, object], binds: list[ExtraBind], env: list[str], *,
           hooks: list[tuple[str, ...]]) -> None:
    origin = f"CDI device {device}"
    for item in _list(edits, "env"):
        if not isinstance(item, str):
            raise _fail(path, f"env entry {item!r} is not NAME=value")
        name, sep, _ = item.partition("=")
        if not sep or not is_valid_name(name) or "\0" in item:
            raise _fail(path, f"env entry {item!r} is not NAME=value")
        env.append(item)
    for node in _list(edits, "deviceNodes"):
        binds.append(_device_node(path, origin, node))
    for mount in _list(edits, "mounts"):
        if not isinstance(mount, dict):
            raise _fail(path, "a mount is not an object")
        options = mount.get("options", [])
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise _fail(path, "mount 'options' must be a list of strings")
        binds.append(ExtraBind(_abs(path, mount.get("hostPath"), "mount hostPath"),
                               _container_path(path, mount.get("containerPath"), "mount containerPath"),
                               read_only="ro" in options, origin=origin))
    for hook in _list(edits, "hooks"):
        hooks.append(_hook(path, hook))


def _list(edits: dict[str, object], key: str) -> list[object]:
    value = edits.get(key, [])
    return value if isinstance(value, list) else []


def _device_node(path: str, origin: str, node: object) -> ExtraBind:
    if not isinstance(node, dict):
        raise _fail(path, "a deviceNode is not an object")
    target = _container_path(path, node.get("path"), "deviceNode path")
    host = _abs(path, node.get("hostPath", target), "deviceNode hostPath")
    try:
        st = os.stat(host, follow_symlinks=False)
    except OSError as err:
        raise ConfigError(f"CDI spec {path}: device node {host}: {err.strerror}",
                          hint="the device is not present on this node") from None
    kind = node.get("type")
    wanted = _NODE_TYPES.get(kind) if isinstance(kind, str) else None
    if kind is not None and wanted is None:
        raise _fail(path, f"deviceNode {target}: unknown type {kind!r}")
    if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) or (wanted and stat.S_IFMT(st.st_mode) != wanted):
        raise ConfigError(f"CDI spec {path}: {host} is not the device node the spec describes")
    for key, actual in (("major", os.major(st.st_rdev)), ("minor", os.minor(st.st_rdev))):
        if key in node and node[key] != actual:
            raise ConfigError(f"CDI spec {path}: {host} has {key} {actual}, the spec says {node[key]!r}")
    return ExtraBind(host, target, device=True, read_only=False, origin=origin)


def _hook(path: str, hook: object) -> tuple[str, ...]:
    if not isinstance(hook, dict):
        raise _fail(path, "a hook is not an object")
    name = hook.get("hookName")
    if name not in RUN_HOOKS:
        raise _fail(path, f"hook {name!r} is not supported (shifter runs only {', '.join(RUN_HOOKS)} hooks)")
    program = _abs(path, hook.get("path"), "hook path")
    args = hook.get("args") or [program]
    if not isinstance(args, list) or not all(isinstance(a, str) and "\0" not in a for a in args):
        raise _fail(path, "hook 'args' must be a list of strings")
    return (program, *args[1:])


def _abs(path: str, value: object, what: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise _fail(path, f"{what} {value!r} is not an absolute path")
    return os.path.normpath(value)


def _container_path(path: str, value: object, what: str) -> str:
    result = _abs(path, value, what)
    if ".." in result.split("/") or result == "/":
        raise _fail(path, f"{what} {value!r} is not a usable container path")
    return result


__all__ = ["CdiEdits", "load_specs", "resolve_devices"]
