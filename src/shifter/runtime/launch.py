"""The fixed start sequence: validate -> plan -> execute (namespaces, mounts, enter, drop, exec).

``launch`` never returns on success: the calling process *becomes* the command, so the
command's exit status and signals are shifter's with no forwarding process in between, and
no process of ours holds the container's namespaces once the command is gone.

Stdlib only: this module is on the launch path.
"""

from __future__ import annotations

from shifter.config.site import SiteConfig, check_mount_dirs
from shifter.errors import ContainerError
from shifter.runtime import etc, prepared
from shifter.runtime.plan import Plan, build_plan, container_groups, prepared_entry_plan
from shifter.runtime.spec import ContainerSpec

TYPE_CHECKING = False  # typing, collections: not on the launch path
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

    Warn = Callable[[str], None]


def validate(spec: ContainerSpec, config: SiteConfig) -> None:
    """Last checks on a spec before anything is touched."""
    if not spec.argv:
        raise ContainerError("no command to run", hint="give a command after the options")
    if not config.udi_mount.startswith("/") or not config.loop_mount.startswith("/"):
        raise ContainerError("udiMount and loopMount must be absolute paths")
    if config.udi_mount == config.loop_mount:
        raise ContainerError("udiMount and loopMount must differ", hint="fix udiRoot.conf")
    check_mount_dirs(config)


def make_plan(spec: ContainerSpec, config: SiteConfig) -> Plan:
    """A prepared container's entry plan if one matches, else a private container's plan."""
    if prepared.matching_record(spec, config) is not None:
        return prepared_entry_plan(spec, config)
    groups = container_groups(spec.identity, config)
    return build_plan(spec, config, names=etc.group_names(groups),
                      site_etc=etc.read_site_etc(config.etc_path))


def launch(spec: ContainerSpec, config: SiteConfig, warn: Warn) -> NoReturn:
    """Build (or enter) the container and exec the command in it."""
    from shifter.runtime.linux import executor  # noqa: PLC0415  (ctypes; only when really launching)

    validate(spec, config)
    for message in spec.warnings:
        warn(message)
    plan = make_plan(spec, config)
    executor.run(plan, warn)
    raise ContainerError("internal error: the plan ended without running the command")


__all__ = ["launch", "make_plan", "validate"]
