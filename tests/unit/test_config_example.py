"""etc/udiRoot.conf.example documents every key with its default, and parses."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from shifter.config.site import _KEYS, SiteConfig, _module_key, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "udiRoot.conf.example"
MODULE_ATTRS = ("siteFs", "siteEnv", "siteEnvAppend", "siteEnvPrepend", "siteEnvUnset", "conflict",
                "userhook", "roothook", "copyPath", "enabled")


def _text() -> str:
    return EXAMPLE.read_text(encoding="utf-8")


def test_example_parses_to_the_defaults() -> None:
    config = parse_config(_text(), str(EXAMPLE))
    assert config == SiteConfig(source=str(EXAMPLE))


def test_every_key_is_documented() -> None:
    text = _text()
    for key in _KEYS:
        assert re.search(rf"^#?{key}=", text, re.MULTILINE), f"{key} is not in the example"
    for attr in MODULE_ATTRS:
        assert f"module_<name>_{attr}" in text
        assert re.search(rf"^#module_\w+_{attr}=", text, re.MULTILINE), f"no example for module_*_{attr}"
    assert re.search(r"^#registryMirror_\S+=", text, re.MULTILINE)


def test_every_documented_key_is_explained() -> None:
    lines = _text().splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"^([A-Za-z]\w*)=", line)
        if match:
            before = lines[index - 1]
            assert before.startswith("#"), f"{match.group(1)} has no explanation above it"


def test_uncommented_examples_parse_too() -> None:
    """Every '#key=value' example is itself valid (last one wins, modules included)."""
    active = [line[1:] for line in _text().splitlines() if re.match(r"^#[A-Za-z][\w.:-]*=", line)]
    config = parse_config("\n".join(active), "examples")
    assert config.etc_path == "/etc/shifter/shifter_etc_files"
    assert {m.name for m in config.modules} == {"mpich", "openmpi"}
    assert config.module("mpich").conflict == ("openmpi",)
    assert config.mirrors_for("docker.io") == ["https://mirror.example.org"]
    assert config.default_modules == ("mpich",)
    for line in active:
        key = line.partition("=")[0]
        assert key in _KEYS or _module_key(key) or key.startswith("registryMirror_")


def test_example_is_usable_after_changes() -> None:
    config = parse_config(_text() + "\nallowLocalChroot=1\n", "x")
    assert config == replace(SiteConfig(source="x"), allow_local_chroot=True)
