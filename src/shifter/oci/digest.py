"""Content digests (``algorithm:hex``) as the OCI image spec defines them.

Only ``sha256`` and ``sha512`` are accepted: they are the registered algorithms, and
accepting anything else would let a manifest name content we cannot verify.  Stdlib only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from shifter.errors import DigestMismatchError, ManifestError

# algorithm -> exact length of the lowercase hex encoding
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True, order=True)
class Digest:
    """A parsed, validated digest such as ``sha256:e3b0c442...``."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: object, what: str = "digest") -> Digest:
        """Parse and validate ``algorithm:hex``; raise :class:`ManifestError` on anything else."""
        if not isinstance(text, str):
            raise ManifestError(f"{what} must be a string, got {type(text).__name__}",
                                hint="the manifest is malformed; check the image in the registry")
        algorithm, sep, encoded = text.partition(":")
        if not sep:
            raise ManifestError(f"{what} {text!r} is not of the form algorithm:hex",
                                hint="digests look like sha256:<64 hex characters>")
        if algorithm not in ALGORITHMS:
            raise ManifestError(f"{what} {text!r} uses unsupported algorithm {algorithm!r}",
                                hint="only sha256 and sha512 digests are supported")
        if len(encoded) != ALGORITHMS[algorithm] or not _HEX.fullmatch(encoded):
            raise ManifestError(f"{what} {text!r} is not a valid {algorithm} digest",
                                hint=f"{algorithm} digests have {ALGORITHMS[algorithm]} lowercase hex "
                                     "characters")
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of ``data``."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> hashlib._Hash:
        """A fresh hash object of this digest's algorithm (for streaming verification)."""
        return hashlib.new(self.algorithm)

    def verify(self, data: bytes, what: str = "content") -> None:
        """Raise :class:`DigestMismatchError` unless ``data`` hashes to this digest."""
        actual = hashlib.new(self.algorithm, data).hexdigest()
        if actual != self.hex:
            raise DigestMismatchError(f"{what} has digest {self.algorithm}:{actual}, expected {self}",
                                      hint="the registry or a mirror served corrupted or tampered data; "
                                           "try again, or check the registry")

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def is_digest(text: str) -> bool:
    """True if ``text`` is a valid, supported digest string."""
    try:
        Digest.parse(text)
    except ManifestError:
        return False
    return True


__all__ = ["ALGORITHMS", "Digest", "is_digest"]
