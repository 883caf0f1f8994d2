"""Prepared containers: the record ``shifter-setup`` leaves next to the tree it built.

The tree lives at ``udiMount`` in the host mount namespace; the record is
``<udiMount>.json``, written by root (readable by root and the user's group only).  A later
``shifter`` with the same image, user, volumes and modules enters the tree instead of building
its own.  A record is trusted only if it is a regular root-owned file that nobody else can
write and ``udiMount`` really is a mount point; anything else is ignored (the caller then gets
a private container).

Stdlib only: this module is on the launch path.
"""

from __future__ import annotations

import os
import stat

from shifter._fastjson import loads as _json_loads
from shifter.config.site import SiteConfig
from shifter.errors import ShifterError
from shifter.runtime.spec import ContainerSpec

TYPE_CHECKING = False  # typing, collections: not on the launch path
if TYPE_CHECKING:
    from typing import Any

    from shifter.runtime.options import ShifterOptions

RECORD_VERSION = 1
JOBS_SUFFIX = ".jobs"  # <udiMount>.jobs/<node>.<jobid>/: the Slurm jobs' prepared containers


def record_path(config: SiteConfig) -> str:
    """``<udiMount>.json``."""
    return config.udi_mount.rstrip("/") + ".json"


def describe(spec: ContainerSpec) -> dict[str, Any]:
    """What identifies a prepared container: the fields a request must match."""
    return {
        "image_id": spec.image.image_id or spec.image.local_root,
        "uid": spec.identity.uid,
        "gid": spec.identity.gid,
        "volumes": [[v.source, v.target, v.read_only, v.origin, v.recursive, v.per_node_cache, v.slave]
                    for v in spec.volumes],
        "modules": list(spec.modules),
        "devices": list(spec.devices),
        "writable_tmpfs": spec.writable_tmpfs,
    }


# Fields a record written before they existed lacks: read as these values.
_DEFAULTS: dict[str, object] = {"devices": [], "writable_tmpfs": False}


def make_record(spec: ContainerSpec, config: SiteConfig, loop_device: str = "",
                fast: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record written after a successful setup (``fast``: see :func:`fast_section`)."""
    record = {"version": RECORD_VERSION, **describe(spec), "image": spec.image.ref,
              "squashfs": spec.image.squashfs, "user": spec.identity.user, "udi_mount": config.udi_mount,
              "loop_mount": config.loop_mount, "loop_device": loop_device}
    if fast is not None:
        record["fast"] = fast
    return record


def fast_section(opts: ShifterOptions, spec: ContainerSpec, config: SiteConfig,
                 config_state: list[int] | None, *, pinned: bool = False) -> dict[str, Any] | None:
    """What ``shifter.runtime.linux.fastpath`` needs to enter without building a spec, or ``None``
    when this request cannot use it (a local or abbreviated-id image, a relative store path, a
    configuration or store file that changed while ``shifter-setup`` read it).

    ``config_state`` is :func:`fastpath.file_state` of the configuration file taken *before* it
    was loaded; the image is resolved a second time between two snapshots of the store files, so
    the recorded file identities are those of the content the precomputed values came from.

    ``pinned`` (a Slurm job's container: the image was resolved to its full id at submission):
    no store file is recorded as a witness, so the job's tasks enter without a single request to
    the (shared) image store.  An id names one content forever; what the prolog read (metadata,
    access list) stays the job's for its lifetime, as the mounted image does.
    """
    from shifter.runtime.asuser import AsUser  # noqa: PLC0415  (shifter-setup only)
    from shifter.runtime.images import resolve_image  # noqa: PLC0415
    from shifter.runtime.linux import fastpath  # noqa: PLC0415

    if _needs_full_path(spec, config):
        return None
    try:
        paths = ([] if _pinned_id(opts, spec, config) else None) if pinned else _witness_paths(opts, spec, config)
        if paths is None or config_state is None or opts.image is None or config.image_gateway:
            # With a gateway, the gateway names the image: no store file witnesses that answer.
            return None
        before: list[list[int] | None] = []
        after: list[list[int] | None] = []
        again = spec.image
        if not pinned:
            # The states the user's fast path will see: taken with the user's rights (as root
            # acting for the user, request.spec_from_options resolves the image the same way).
            with AsUser(spec.identity):
                before = [fastpath.file_state(path) for path, _ in paths]
            again = resolve_image(opts.image, config, spec.identity, default_type=opts.image_type,
                                  as_user=spec.identity.uid != 0)
            with AsUser(spec.identity):
                after = [fastpath.file_state(path) for path, _ in paths]
        config_after = fastpath.file_state(config.source)
    except (OSError, ShifterError):
        return None
    if before != after or again != spec.image or config_after != config_state:
        return None
    home_matters = config.user_image_path.startswith("~")
    return {"version": fastpath.FAST_VERSION, "config": config_state,
            "key": fastpath.request_key(opts.image, opts.image_type, opts.volumes, opts.modules),
            "witnesses": [[path, state, read] for (path, read), state in zip(paths, before, strict=True)],
            "home": spec.identity.home if home_matters else None, "acl": _acl(spec.image.metadata),
            **_image_values(spec), "rules": _env_rules(opts, config)}


def _needs_full_path(spec: ContainerSpec, config: SiteConfig) -> bool:
    """Userhooks (run at every entry), plugins (their environment) and CDI devices (their
    environment) are left to the full path's entry (``plan.prepared_entry_plan``)."""
    modules = [config.module(name) for name in spec.modules]
    return bool(spec.devices or spec.extra_binds or any(m.userhook or m.plugin for m in modules))


def _witness_paths(opts: ShifterOptions, spec: ContainerSpec, config: SiteConfig) -> list[tuple[str, bool]] | None:
    """Every file ``images.resolve_image`` looks at for this request, in every store it may
    search (existing or not), as ``(path, read)``: ``read`` when it is read, not only stat'ed."""
    from shifter.config.site import expand_user_dir  # noqa: PLC0415
    from shifter.oci.reference import parse_image_arg  # noqa: PLC0415
    from shifter.store.layout import ImageStore, pure_path  # noqa: PLC0415

    image = spec.image
    if image.kind == "local" or opts.image is None or not image.store:
        return None
    roots = [pure_path(config.image_path)]
    if config.user_image_path:
        user = pure_path(expand_user_dir(config.user_image_path, spec.identity.home))
        if user.startswith("/") and user != roots[0]:
            roots.insert(0, user)
    if any(not root.startswith("/") for root in roots):
        return None
    image_type, value = parse_image_arg(opts.image.strip(), opts.image_type or config.default_image_type)
    ids: list[str] = []
    paths: list[tuple[str, bool]] = []
    if image_type == "docker":
        ref = str(value)
        digest = getattr(value, "digest", "")
        ids = [digest.partition(":")[2]] if digest else []
        paths += [(ImageStore(root).tag_file("docker", ref), True) for root in roots]
    elif image_type == "id" and value == image.image_id:
        ids = [image.image_id]
    else:
        return None  # an id prefix: resolution lists the stores' directories
    for image_id in dict.fromkeys([*ids, image.image_id]):
        for root in roots:
            store = ImageStore(root)
            paths += [(store.metadata_file(image_id), True), (store.squashfs_file(image_id), False)]
    return paths


def _pinned_id(opts: ShifterOptions, spec: ContainerSpec, config: SiteConfig) -> bool:
    """The request names the full id of a store image (``id:<64 hex>``), which ``spec`` resolved."""
    from shifter.oci.reference import parse_image_arg  # noqa: PLC0415

    if opts.image is None or spec.image.kind == "local" or not spec.image.image_id:
        return False
    image_type, value = parse_image_arg(opts.image.strip(), opts.image_type or config.default_image_type)
    return image_type == "id" and value == spec.image.image_id


def _acl(metadata: dict[str, object]) -> dict[str, list[int]] | None:
    """``images.check_access`` precomputed: ``None`` when anyone may use the image, else who may."""
    acl = metadata.get("acl")
    if acl is None:
        return None
    if not isinstance(acl, dict):
        acl = {"private": True}
    if acl.get("private", False) is False:
        return None
    return {key: sorted({v for v in value if isinstance(v, int) and not isinstance(v, bool)})
            if isinstance(value := acl.get(key), list) else [] for key in ("users", "groups")}


def _image_values(spec: ContainerSpec) -> dict[str, Any]:
    """The image's ENV (valid pairs), ENTRYPOINT, CMD and WORKDIR, as ``request`` reads them."""
    from shifter.runtime.environment import image_env_pairs  # noqa: PLC0415
    from shifter.runtime.request import _image_workdir, _str_list  # noqa: PLC0415

    metadata = spec.image.metadata
    pairs, _dropped = image_env_pairs(_str_list(metadata.get("env")))
    return {"env": [list(pair) for pair in pairs], "entrypoint": _str_list(metadata.get("entrypoint")),
            "cmd": _str_list(metadata.get("cmd")), "workdir": _image_workdir(spec.image)}


def _env_rules(opts: ShifterOptions, config: SiteConfig) -> list[list[str]]:
    """The modules' and the site's env rules as ``[op, name, value]``, in ``apply_rules`` order."""
    from shifter.errors import ConfigError  # noqa: PLC0415
    from shifter.runtime.environment import EnvRules, parse_assignment  # noqa: PLC0415
    from shifter.runtime.modules import module_env_rules, parse_module_list, select_modules  # noqa: PLC0415

    modules = select_modules(config, parse_module_list(opts.modules) if opts.modules is not None else None)
    ops: list[list[str]] = []
    for layer in [*module_env_rules(modules), EnvRules.from_site(config)]:
        for op, entries in (("set", layer.set), ("append", layer.append), ("prepend", layer.prepend)):
            ops += [[op, *parse_assignment(entry, f"udiRoot.conf ({layer.origin})", ConfigError)]
                    for entry in entries]
        ops += [["unset", name, ""] for name in layer.unset]
    return ops


def read_record(config: SiteConfig) -> dict[str, Any] | None:
    """The trusted record, or ``None`` when there is none (or it cannot be trusted)."""
    try:
        fd = os.open(record_path(config), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None
        try:
            data = _json_loads(handle.read(1024 * 1024))
        except ValueError:
            return None
    if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
        return None
    return data


def is_mountpoint(path: str) -> bool:
    """True if ``path`` is the root of a mount (its device differs from its parent's)."""
    try:
        here = os.stat(path, follow_symlinks=False)
        parent = os.stat(os.path.join(path, ".."), follow_symlinks=False)
    except OSError:
        return False
    return here.st_dev != parent.st_dev or here.st_ino == parent.st_ino


def matching_record(spec: ContainerSpec, config: SiteConfig) -> dict[str, Any] | None:
    """The prepared container this request may enter, if any."""
    record = read_record(config)
    if record is None or record.get("udi_mount") != config.udi_mount:
        return None
    wanted = describe(spec)
    if any(record.get(key, _DEFAULTS.get(key)) != value for key, value in wanted.items()):
        return None
    return record if is_mountpoint(config.udi_mount) else None


def job_mounts(udi_mount: str, environ: dict[str, str] | os._Environ[str]) -> tuple[str, str] | None:
    """``(udiMount, loopMount)`` of the prepared container of the Slurm job named by
    ``SLURM_JOB_ID`` and ``SLURMD_NODENAME`` in ``environ``:
    ``<udiMount>.jobs/<node>.<jobid>/udiMount`` and ``.../loopMount``; ``None`` outside a job.

    One per job and node, so that jobs (and the several ``slurmd`` of a test cluster on one host)
    never share a tree.  The variables are the caller's, hence untrusted: they only choose which
    record is *looked at*; a record is still entered only if it is root-owned and names the
    caller's uid, image, volumes and modules (``matching_record``).
    ``shifter.runtime.linux.fastpath.job_udi_mount`` computes the same path.
    """
    job, node = environ.get("SLURM_JOB_ID", ""), environ.get("SLURMD_NODENAME", "")
    if not (job.isascii() and job.isdigit() and len(job) <= 20) or not _safe_node(node):
        return None
    base = f"{udi_mount.rstrip('/')}{JOBS_SUFFIX}/{node}.{job}"
    return f"{base}/udiMount", f"{base}/loopMount"


def _safe_node(name: str) -> bool:
    return 0 < len(name) <= 64 and name[0] != "." and all(c.isascii() and (c.isalnum() or c in "._-") for c in name)


def with_mounts(config: SiteConfig, udi_mount: str, loop_mount: str) -> SiteConfig:
    """``config`` with other ``udiMount``/``loopMount`` paths."""
    values = {name: getattr(config, name) for name in config._record_fields}
    return type(config)(**{**values, "udi_mount": udi_mount, "loop_mount": loop_mount})


def serving_record(spec: ContainerSpec, config: SiteConfig,
                   environ: dict[str, str] | os._Environ[str]) -> tuple[SiteConfig, dict[str, Any]] | None:
    """The configuration (the Slurm job's container paths, else the site's) whose prepared
    container serves ``spec``, with that container's record; ``None`` when none does."""
    candidates = [config]
    job = job_mounts(config.udi_mount, environ)
    if job is not None:
        candidates.insert(0, with_mounts(config, *job))
    for candidate in candidates:
        record = matching_record(spec, candidate)
        if record is not None:
            return candidate, record
    return None


def write_record(config: SiteConfig, record: dict[str, Any]) -> None:
    """Write the record atomically (temp file + rename), root-owned, mode 0640 with the group of
    the container's user: it names their volumes and holds the image's ENV, ENTRYPOINT and CMD
    (a private image's too), which other users must not read, as they may not enter the tree."""
    path = record_path(config)
    tmp = f"{path}.tmp.{os.getpid()}"
    import json  # noqa: PLC0415  (shifter-setup only)

    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.fchown(fd, 0, int(record["gid"]))
    os.fchmod(fd, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(tmp, path)


def remove_record(config: SiteConfig) -> None:
    """Delete the record (no error if it is gone)."""
    import contextlib  # noqa: PLC0415  (shifter-teardown only)

    with contextlib.suppress(FileNotFoundError):
        os.unlink(record_path(config))


__all__ = ["JOBS_SUFFIX", "describe", "fast_section", "is_mountpoint", "job_mounts", "make_record", "matching_record",
           "read_record", "record_path", "remove_record", "serving_record", "with_mounts", "write_record"]
