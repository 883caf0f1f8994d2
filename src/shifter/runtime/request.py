"""argv + environment + site config + caller -> a validated :class:`ContainerSpec` (pure data).

Everything a user can get wrong is checked here, before anything is mounted or pulled:
options, volumes, modules and ``--env`` first (cheap), then the image (which may raise
:class:`~shifter.runtime.images.ImageNotInStoreError` so the CLI can pull and call again).

Command selection: with ``--entrypoint``, the entrypoint (``--entrypoint=CMD`` split like a
shell would, else the image's ENTRYPOINT) followed by the arguments, or by the image's CMD
when there are none; without it, the arguments; with neither, ``/bin/sh``.

Stdlib only: on the launch path.
"""

from __future__ import annotations

import os
import pwd

from shifter.config.site import ModuleConfig, SiteConfig
from shifter.errors import ConfigError, UsageError, VolumeError
from shifter.runtime.environment import (
    EnvRules,
    compose_environment,
    identity_env,
    parse_assignment,
    parse_env_file,
    read_text_for,
)
from shifter.runtime.images import resolve_image
from shifter.runtime.modules import module_env_rules, module_volumes, parse_module_list, select_modules
from shifter.runtime.options import ShifterOptions, parse_options
from shifter.runtime.spec import ContainerSpec, ExtraBind, Identity, ImageInfo, VolumeSpec
from shifter.runtime.volumes import check_duplicate_targets, parse_site_volumes, parse_user_volumes

TYPE_CHECKING = False  # typing, collections: not on the launch path
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    LookupUser = Callable[[str], Identity]
    ReadFile = Callable[[str, Identity], str]
    ResolveImage = Callable[..., ImageInfo]

DEFAULT_COMMAND = ("/bin/sh",)


def lookup_identity(name: str) -> Identity:
    """The passwd entry of ``name`` (or a numeric uid) with its supplementary groups."""
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, OverflowError):
        raise UsageError(f"unknown user '{name}'", hint="give a user name known to this system") from None
    groups = tuple(dict.fromkeys(os.getgrouplist(entry.pw_name, entry.pw_gid)))
    return Identity(uid=entry.pw_uid, gid=entry.pw_gid, groups=groups, user=entry.pw_name, home=entry.pw_dir,
                    shell=entry.pw_shell)


def build_spec(argv: Sequence[str], environ: Mapping[str, str], config: SiteConfig, caller: Identity,
               cwd: str, *, lookup_user: LookupUser = lookup_identity, read_file: ReadFile = read_text_for,
               resolve: ResolveImage = resolve_image) -> ContainerSpec:
    """Build the spec for ``shifter ARGV`` (``argv`` without the program name).

    ``caller`` is the real identity of the process; ``environ`` its environment; ``cwd`` its
    working directory.  The keyword arguments are seams for tests.  The CLI should check
    ``parse_options(argv).help`` first: a ``--help`` here is a :class:`UsageError`.
    """
    return spec_from_options(parse_options(argv, environ), environ, config, caller, cwd,
                             lookup_user=lookup_user, read_file=read_file, resolve=resolve)


def spec_from_options(opts: ShifterOptions, environ: Mapping[str, str], config: SiteConfig,
                      caller: Identity, cwd: str, *, lookup_user: LookupUser = lookup_identity,
                      read_file: ReadFile = read_text_for,
                      resolve: ResolveImage = resolve_image) -> ContainerSpec:
    """Like :func:`build_spec`, from already parsed options."""
    if opts.help:
        raise UsageError("--help was given", hint="print shifter.runtime.options.USAGE instead")
    if not opts.image:
        raise UsageError("no image given", hint="use --image=docker:ubuntu:22.04 or set SHIFTER_IMAGE")
    identity, run_as_root = select_identity(opts.user, caller, lookup_user)
    modules = select_modules(config, parse_module_list(opts.modules) if opts.modules is not None else None)
    volumes = collect_volumes(config, modules, opts.volumes)
    cli_env = [parse_assignment(item, f"--env={item[:64]}") for item in opts.env]
    file_env = [parse_env_file(read_file(path, identity), path) for path in opts.env_files]
    workdir = _check_workdir(opts)
    # Root acting for a user reads that user's own store with the user's rights only.
    image = resolve(opts.image, config, identity, default_type=opts.image_type,
                    as_user=caller.uid == 0 and identity.uid != 0)
    extras = _extras(opts, modules, environ, config)
    cdi_env = extras.pop("cdi_env", ())
    composed = compose_environment(environ, clearenv=opts.clearenv,
                                   image=_str_list(image.metadata.get("env")), files=file_env, cli=cli_env,
                                   rules=[*_env_rules(modules, environ, config), EnvRules("cdi", set=cdi_env)],
                                   identity=identity_env(identity), replace_identity=identity.uid != caller.uid)
    image_workdir = _image_workdir(image)
    return ContainerSpec(
        image=image, identity=identity, argv=select_command(opts, image.metadata), env=composed.env, cwd=cwd,
        workdir=workdir if workdir is not None else image_workdir, volumes=tuple(volumes),
        modules=tuple(m.name for m in modules), privileged=caller.uid == 0, run_as_root=run_as_root,
        chdir_candidates=chdir_candidates(opts.workdir_given, workdir, cwd, image_workdir),
        unsafe_env=composed.unsafe, dropped_env=composed.dropped, **extras,
    )


def _env_rules(modules: Sequence[ModuleConfig], environ: Mapping[str, str], config: SiteConfig) -> list[EnvRules]:
    """Each module's rules (a plugin's after its module's own), then the site's."""
    if not any(m.plugin for m in modules):
        return [*module_env_rules(modules), EnvRules.from_site(config)]
    from shifter.runtime.plugins import plugin_rules  # noqa: PLC0415

    rules: list[EnvRules] = []
    for module in modules:
        rules.append(EnvRules.from_module(module))
        if module.plugin:
            rules.append(plugin_rules(module, environ, config))
    return [*rules, EnvRules.from_site(config)]


def _extras(opts: ShifterOptions, modules: Sequence[ModuleConfig], environ: Mapping[str, str],
            config: SiteConfig) -> dict[str, Any]:
    """Plugin and CDI binds, CDI env and hooks, --writable-tmpfs (only what was asked for)."""
    extras: dict[str, Any] = {}
    binds: list[ExtraBind] = []
    warnings: list[str] = []
    checks: list[tuple[str, str]] = []
    if any(m.plugin for m in modules):
        from shifter.runtime.plugins import host_mpi_library, plugin_binds  # noqa: PLC0415

        for module in modules:
            if module.plugin:
                found, notes = plugin_binds(module, environ, config)
                binds += found
                warnings += notes
            if module.plugin == "mpich":
                checks.append((module.name, host_mpi_library(config.plugin_host_root)))
    if checks:
        extras["abi_checks"] = tuple(checks)
    if opts.devices:
        from shifter.runtime.cdi import resolve_devices  # noqa: PLC0415

        edits = resolve_devices(opts.devices, config)
        binds += edits.binds
        extras.update(devices=opts.devices, cdi_hooks=edits.hooks, cdi_env=edits.env)
    if binds:
        extras["extra_binds"] = tuple(binds)
    if warnings:
        extras["warnings"] = tuple(warnings)
    if opts.writable_tmpfs:
        extras["writable_tmpfs"] = True
    return extras


def select_identity(user: str | None, caller: Identity, lookup_user: LookupUser) -> tuple[Identity, bool]:
    """Who the container runs as, and whether that is root (root without ``--user``)."""
    if user is None:
        return caller, caller.uid == 0
    if caller.uid != 0:
        if user in (caller.user, str(caller.uid)):
            return caller, False
        raise UsageError("--user is only for root", hint="run without --user; the container runs as you")
    target = lookup_user(user)
    return target, target.uid == 0


def collect_volumes(config: SiteConfig, modules: Sequence[ModuleConfig],
                    user_specs: Sequence[str]) -> list[VolumeSpec]:
    """Site ``siteFs``, then the modules', then the user's volumes, checked for duplicate targets."""
    try:
        site = parse_site_volumes(config.site_fs, origin="site") + module_volumes(modules)
    except VolumeError as err:
        raise ConfigError(f"{config.source or 'udiRoot.conf'}: {err.message}", hint=err.hint) from None
    volumes = site + parse_user_volumes(user_specs)
    check_duplicate_targets(volumes)
    return volumes


def select_command(opts: ShifterOptions, metadata: Mapping[str, object]) -> tuple[str, ...]:
    """The argv to exec inside the container (see the module docstring)."""
    if not opts.entrypoint:
        return opts.args or DEFAULT_COMMAND
    if opts.entrypoint_cmd is not None:
        entry = _split_command(opts.entrypoint_cmd)
    else:
        entry = tuple(_str_list(metadata.get("entrypoint")))
        if not entry:
            raise UsageError("--entrypoint was given but the image has no ENTRYPOINT",
                             hint="give one with --entrypoint=CMD, or drop --entrypoint")
    rest = opts.args or tuple(_str_list(metadata.get("cmd")))
    return (*entry, *rest)


def chdir_candidates(workdir_given: bool, workdir: str | None, cwd: str,
                     image_workdir: str) -> tuple[str, ...]:
    """Where to start inside the container, best first (the edge falls back to ``/``).

    ``--workdir=P``: only P.  Bare ``--workdir``: the image's WORKDIR (the caller's directory if
    the image has none).  Neither: the caller's directory, then the image's WORKDIR.
    """
    if workdir_given:
        chosen = workdir if workdir is not None else (image_workdir or cwd)
        return (chosen,) if chosen else ()
    return tuple(dict.fromkeys(d for d in (cwd, image_workdir) if d and d.startswith("/")))


def _check_workdir(opts: ShifterOptions) -> str | None:
    path = opts.workdir
    if path is None:
        return None
    if not path.startswith("/") or "\0" in path:
        raise UsageError(f"--workdir={path!r} is not an absolute path", hint="write e.g. --workdir=/app")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UsageError(f"--workdir={path!r} contains '..'", hint="write the path without '..'")
    return "/" + "/".join(parts)


def _image_workdir(image: ImageInfo) -> str:
    workdir = image.metadata.get("workdir")
    return workdir if isinstance(workdir, str) and workdir.startswith("/") else ""


def _split_command(text: str) -> tuple[str, ...]:
    import shlex  # noqa: PLC0415  (only for --entrypoint=CMD; shlex imports re)

    try:
        words = tuple(shlex.split(text))
    except ValueError as err:
        raise UsageError(f"--entrypoint={text!r}: {err}", hint="check the quotes") from None
    if not words:
        raise UsageError("--entrypoint= is empty", hint="write --entrypoint=CMD")
    return words


def _str_list(value: object) -> list[str]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return []


__all__ = ["DEFAULT_COMMAND", "build_spec", "chdir_candidates", "collect_volumes", "lookup_identity",
           "select_command", "select_identity", "spec_from_options"]
