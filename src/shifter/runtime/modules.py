"""Site modules: named bundles of ``siteFs`` mounts and ``siteEnv`` rules (``module_<name>_*``).

Selection: ``--module=a,b`` (or ``$SHIFTER_MODULE``) replaces the site's ``defaultModules``;
``--module=none`` selects none.  A module may name others it conflicts with; a site may
disable a module (``module_<name>_enabled=0``).  Stdlib only: on the launch path.
"""

from __future__ import annotations

from shifter.config.site import ModuleConfig, SiteConfig
from shifter.errors import UsageError
from shifter.runtime.environment import EnvRules
from shifter.runtime.spec import VolumeSpec
from shifter.runtime.volumes import parse_site_volumes

TYPE_CHECKING = False  # typing, collections: not on the launch path
if TYPE_CHECKING:
    from collections.abc import Sequence


def parse_module_list(text: str) -> tuple[str, ...] | None:
    """``"a,b"`` -> ``("a", "b")``; ``"none"`` -> ``()``; ``""`` -> ``None`` (use the defaults)."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        return None
    if "none" in names:
        if len(names) > 1:
            raise UsageError(f"--module={text!r} mixes 'none' with module names",
                             hint="use --module=none alone to disable all modules")
        return ()
    return names


def select_modules(config: SiteConfig, requested: Sequence[str] | None) -> tuple[ModuleConfig, ...]:
    """The modules to load: ``requested`` names, or the site defaults when it is ``None``.

    Raises :class:`UsageError` for an unknown or disabled module, or two that conflict.
    """
    if requested is None:
        names: Sequence[str] = tuple(n for n in config.default_modules if n != "none")
        explicit = False
    else:
        names = requested
        explicit = True
    known = {m.name: m for m in config.modules}
    chosen: list[ModuleConfig] = []
    for name in dict.fromkeys(names):
        module = known.get(name)
        if module is None:
            raise UsageError(f"unknown module '{name}'", hint="modules this site defines: "
                             + (", ".join(sorted(known)) or "none"))
        if not module.enabled:
            if explicit:
                raise UsageError(f"module '{name}' is disabled on this system",
                                 hint="ask the site administrators, or choose another module")
            continue  # a disabled default is simply not loaded
        chosen.append(module)
    _check_conflicts(chosen)
    return tuple(chosen)


def _check_conflicts(modules: Sequence[ModuleConfig]) -> None:
    names = {m.name for m in modules}
    for module in modules:
        for other in module.conflict:
            if other in names and other != module.name:
                raise UsageError(f"modules '{module.name}' and '{other}' conflict",
                                 hint=f"choose one of them, e.g. --module={module.name}")


def module_volumes(modules: Sequence[ModuleConfig]) -> list[VolumeSpec]:
    """The ``siteFs`` mounts of the selected modules, in module order (validated with site rules)."""
    volumes: list[VolumeSpec] = []
    for module in modules:
        volumes.extend(parse_site_volumes(module.site_fs, origin=f"module:{module.name}"))
    return volumes


def module_env_rules(modules: Sequence[ModuleConfig]) -> list[EnvRules]:
    """The environment rules of the selected modules, in module order."""
    return [EnvRules.from_module(m) for m in modules]


__all__ = ["module_env_rules", "module_volumes", "parse_module_list", "select_modules"]
