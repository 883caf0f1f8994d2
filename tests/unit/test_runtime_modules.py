"""Site modules: defaults, explicit lists, none, conflicts, unknown and disabled modules."""

from __future__ import annotations

import pytest

from shifter.config.site import SiteConfig, parse_config
from shifter.errors import UsageError, VolumeError
from shifter.runtime.modules import module_env_rules, module_volumes, parse_module_list, select_modules

CONF = """\
defaultModules=mpich,gpu
module_mpich_siteFs=/opt/mpich:/opt/mpich:ro
module_mpich_siteEnvPrepend=LD_LIBRARY_PATH=/opt/mpich/lib
module_mpich_conflict=openmpi
module_openmpi_siteFs=/opt/openmpi
module_gpu_siteEnv=GPU=1
module_old_siteEnv=OLD=1
module_old_enabled=0
"""


@pytest.fixture
def config() -> SiteConfig:
    return parse_config(CONF, "test.conf")


@pytest.mark.parametrize(("text", "names"), [
    ("a,b", ("a", "b")), (" a , b ,", ("a", "b")), ("a,a", ("a",)), ("none", ()), ("", None), (",", None),
])
def test_parse_module_list(text: str, names: tuple[str, ...] | None) -> None:
    assert parse_module_list(text) == names


def test_none_with_others_is_refused() -> None:
    with pytest.raises(UsageError, match="none"):
        parse_module_list("none,mpich")


def test_defaults(config: SiteConfig) -> None:
    assert [m.name for m in select_modules(config, None)] == ["mpich", "gpu"]


def test_explicit_replaces_defaults(config: SiteConfig) -> None:
    assert [m.name for m in select_modules(config, ("openmpi",))] == ["openmpi"]
    assert select_modules(config, ()) == ()


def test_conflict_names_both(config: SiteConfig) -> None:
    with pytest.raises(UsageError) as info:
        select_modules(config, ("openmpi", "mpich"))
    assert "mpich" in info.value.message and "openmpi" in info.value.message


def test_unknown_lists_known(config: SiteConfig) -> None:
    with pytest.raises(UsageError) as info:
        select_modules(config, ("cuda",))
    assert "cuda" in info.value.message
    assert "gpu, mpich, old, openmpi" in info.value.hint


def test_disabled_module(config: SiteConfig) -> None:
    with pytest.raises(UsageError, match="disabled"):
        select_modules(config, ("old",))


def test_disabled_default_is_skipped() -> None:
    config = parse_config("defaultModules=old,gpu\nmodule_old_enabled=0\nmodule_gpu_siteEnv=G=1\n")
    assert [m.name for m in select_modules(config, None)] == ["gpu"]


def test_module_volumes_and_env(config: SiteConfig) -> None:
    mods = select_modules(config, ("mpich", "gpu"))
    vols = module_volumes(mods)
    assert [(v.source, v.target, v.read_only, v.origin) for v in vols] == [
        ("/opt/mpich", "/opt/mpich", True, "module:mpich")]
    rules = module_env_rules(mods)
    assert rules[0].prepend == ("LD_LIBRARY_PATH=/opt/mpich/lib",) and rules[1].set == ("GPU=1",)


def test_bad_module_site_fs() -> None:
    config = parse_config("module_bad_siteFs=/x:/etc\n")
    with pytest.raises(VolumeError):
        module_volumes(select_modules(config, ("bad",)))
