"""One exception tree for all of Shifter.

Library code only raises; the CLI (``shifter.cli``) is the single place that turns an
error into a message and an exit code.  Every error carries a ``hint``: what the user
can do about it.

::

    ShifterError                      exit 1   (generic)
    ├── ConfigError                   exit 2   bad udiRoot.conf / gateway config / usage
    │   └── UsageError                exit 2   bad command-line arguments
    ├── ImageReferenceError           exit 2   unparsable image reference
    ├── ImageNotFoundError            exit 3   unknown image / tag (registry or store)
    ├── ImageNotReadyError            exit 3   image exists but is not READY
    ├── AccessDeniedError             exit 4   caller may not use / change this image
    ├── RegistryError                 exit 5   registry talked but said something wrong
    │   ├── AuthenticationError       exit 6   credentials missing / rejected
    │   ├── RegistryUnavailableError  exit 7   connection refused, timeouts, 5xx
    │   ├── ManifestError             exit 8   malformed / unsupported manifest or config
    │   ├── PlatformMismatchError     exit 9   no manifest for this host's platform
    │   └── DigestMismatchError       exit 10  blob content does not match its digest/size
    ├── LayerError                    exit 11  malformed or hostile layer that cannot be flattened
    │   └── ArchiveError              exit 11  malformed / hostile image tarball (shifterimg import)
    ├── ConversionError               exit 12  mksquashfs (or similar) failed
    ├── StoreError                    exit 13  image store problems
    │   └── DiskFullError             exit 14  ENOSPC / quota while writing
    ├── VolumeError                   exit 15  bad --volume spec (runtime)
    ├── ContainerError                exit 16  building / entering the container failed
    └── Interrupted                   exit 130 stopped by Ctrl-C (with what was done about it)

Anything else that reaches a command's boundary is a bug: exit 70 (``shifter.cli.boundary``).
"""

from __future__ import annotations

#: The hint of every :class:`DiskFullError` of the image store, whichever step filled it up.
DISK_FULL_HINT = ("free space in the image store (remove old images with 'shifterimg rm', or ask an admin), "
                  "then pull again")


class ShifterError(Exception):
    """Base of every error Shifter raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def render(self) -> str:
        """One line for the user, with the hint appended when there is one."""
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message


class ConfigError(ShifterError):
    exit_code = 2


class UsageError(ConfigError):
    exit_code = 2


class ImageReferenceError(ShifterError):
    exit_code = 2


class ImageNotFoundError(ShifterError):
    exit_code = 3


class ImageNotReadyError(ShifterError):
    exit_code = 3


class AccessDeniedError(ShifterError):
    exit_code = 4


class RegistryError(ShifterError):
    exit_code = 5


class AuthenticationError(RegistryError):
    exit_code = 6


class RegistryUnavailableError(RegistryError):
    exit_code = 7


class ManifestError(RegistryError):
    exit_code = 8


class PlatformMismatchError(RegistryError):
    exit_code = 9


class DigestMismatchError(RegistryError):
    exit_code = 10


class LayerError(ShifterError):
    exit_code = 11


class ArchiveError(LayerError):
    exit_code = 11


class ConversionError(ShifterError):
    exit_code = 12


class StoreError(ShifterError):
    exit_code = 13


class DiskFullError(StoreError):
    exit_code = 14


class VolumeError(ShifterError):
    exit_code = 15


class ContainerError(ShifterError):
    exit_code = 16


class Interrupted(ShifterError):
    """Ctrl-C, reported with what it stopped (e.g. ``shifter``'s automatic pull)."""

    exit_code = 130
