"""What a flatten did: counts and warnings, for logs and the image metadata."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Warnings kept verbatim; beyond this only ``warnings_dropped`` grows (a hostile layer
#: with a million bad members must not turn the report into a memory problem).
MAX_WARNINGS = 100


@dataclass
class FlattenReport:
    """Counts over the final tree and over what the policy changed."""

    layers: int = 0
    files: int = 0  # regular-file paths in the final tree (hard links included)
    directories: int = 0  # in the final tree, the root excluded
    symlinks: int = 0  # in the final tree
    hardlinks: int = 0  # hard-link members applied
    bytes_written: int = 0  # file content written, all layers
    dropped_devices: int = 0
    dropped_fifos: int = 0
    dropped_other: int = 0  # unknown types, bad whiteouts/links, parents that are not directories, ...
    stripped_setuid: int = 0
    neutralised_names: int = 0  # absolute names or names with '..'
    ignored_xattrs: int = 0  # members that carried xattrs (not applied)
    warnings: list[str] = field(default_factory=list)
    warnings_dropped: int = 0

    def warn(self, message: str) -> None:
        """Record a warning, keeping at most MAX_WARNINGS of them."""
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)
        else:
            self.warnings_dropped += 1
