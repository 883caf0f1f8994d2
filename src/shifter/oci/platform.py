"""Platforms (os/architecture/variant): the host's, and matching them against an image.

Normalisation follows containerd: ``aarch64`` is ``arm64`` (default variant ``v8``),
``armv7l`` is ``arm/v7``, ``x86_64`` is ``amd64``.  A host can run older variants of its
architecture (``arm/v7`` runs ``v6`` and ``v5``; ``amd64/v3`` runs ``v2`` and ``v1``), so
matching tries the exact variant first and then the compatible ones, newest first.
"""

from __future__ import annotations

import platform as _platform
import sys
from dataclasses import dataclass

from shifter.errors import ConfigError

_MACHINE: dict[str, tuple[str, str]] = {
    "x86_64": ("amd64", ""), "amd64": ("amd64", ""), "x86-64": ("amd64", ""),
    "i386": ("386", ""), "i486": ("386", ""), "i586": ("386", ""), "i686": ("386", ""),
    "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"), "armv8l": ("arm", "v7"),
    "armv7l": ("arm", "v7"), "armv7": ("arm", "v7"), "armv6l": ("arm", "v6"), "armv5tel": ("arm", "v5"),
    "armv5tejl": ("arm", "v5"), "ppc64le": ("ppc64le", ""), "ppc64": ("ppc64", ""),
    "s390x": ("s390x", ""), "riscv64": ("riscv64", ""), "mips64": ("mips64", ""),
    "loongarch64": ("loong64", ""),
}
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7", "amd64": "v1"}
# variants a host of the given variant can also run, best first
_COMPATIBLE = {
    ("arm", "v8"): ("v8", "v7", "v6", "v5"), ("arm", "v7"): ("v7", "v6", "v5"), ("arm", "v6"): ("v6", "v5"),
    ("amd64", "v4"): ("v4", "v3", "v2", "v1"), ("amd64", "v3"): ("v3", "v2", "v1"),
    ("amd64", "v2"): ("v2", "v1"),
}


@dataclass(frozen=True)
class Platform:
    """An OCI platform; ``variant`` is ``""`` when unspecified."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/arch[/variant]`` (the ``platform`` site setting), e.g. ``linux/arm64/v8``."""
        parts = text.strip().lower().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ConfigError(f"platform {text!r} is not of the form os/arch[/variant]",
                              hint="write e.g. linux/amd64 or linux/arm64/v8")
        os_name, arch = parts[0], parts[1]
        variant = parts[2] if len(parts) == 3 else ""
        if arch in _MACHINE and arch not in _DEFAULT_VARIANT:
            arch, machine_variant = _MACHINE[arch]
            variant = variant or machine_variant
        return cls(os_name, arch, variant)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Platform:
        """From a descriptor's ``platform`` object or an image config (already type-checked)."""
        variant = str(data.get("variant", "") or "")
        return cls(str(data.get("os", "")), str(data.get("architecture", "")), variant)

    def normalized(self) -> Platform:
        """The same platform with the architecture's default variant filled in."""
        variant = self.variant or _DEFAULT_VARIANT.get(self.architecture, "")
        return Platform(self.os, self.architecture, variant)

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base


def host_platform(machine: str | None = None, os_name: str | None = None) -> Platform:
    """The platform of this host, from ``platform.machine()`` (``x86_64`` -> ``linux/amd64``)."""
    machine = (machine if machine is not None else _platform.machine()).lower()
    os_name = os_name or ("linux" if sys.platform.startswith("linux") else sys.platform)
    arch, variant = _MACHINE.get(machine, (machine, ""))
    return Platform(os_name, arch, variant)


def compatible_variants(want: Platform) -> tuple[str, ...]:
    """Variants ``want`` can run, best first (always starting with its own)."""
    norm = want.normalized()
    return _COMPATIBLE.get((norm.architecture, norm.variant), (norm.variant,))


def match_rank(want: Platform, offered: Platform) -> int | None:
    """How well ``offered`` suits ``want``: 0 is exact, higher is worse, ``None`` cannot run."""
    if offered.os != want.os or offered.architecture != want.architecture:
        return None
    variants = compatible_variants(want)
    variant = offered.normalized().variant
    if variant in variants:
        return variants.index(variant)
    return None


def best_match(want: Platform, offered: list[Platform]) -> int | None:
    """Index of the best entry of ``offered`` for ``want`` (first wins ties), or ``None``."""
    best: tuple[int, int] | None = None
    for index, candidate in enumerate(offered):
        rank = match_rank(want, candidate)
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, index)
    return None if best is None else best[1]


__all__ = ["Platform", "best_match", "compatible_variants", "host_platform", "match_rank"]
