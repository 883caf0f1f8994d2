"""The progress protocol the pipeline reports to (defined here so dependencies point down).

``shifter.gateway.progress`` re-exports :class:`ProgressSink` and :class:`NullProgress`; the
CLI supplies a terminal display.  Calls may come from several download threads at once.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class ProgressSink(Protocol):
    """Receives progress events; implementations must be thread-safe."""

    def phase(self, name: str, message: str) -> None:
        """A new pipeline phase begins (``pulling``, ``converting``, ...)."""

    def layer_start(self, digest: str, total: int) -> None:
        """A blob of ``total`` bytes starts downloading (or was found in the cache)."""

    def layer_advance(self, digest: str, nbytes: int) -> None:
        """``nbytes`` more bytes of the blob are on disk (resumed bytes are reported once)."""

    def layer_done(self, digest: str) -> None:
        """The blob is complete and verified."""


class NullProgress:
    """A :class:`ProgressSink` that ignores everything."""

    def phase(self, name: str, message: str) -> None:
        return None

    def layer_start(self, digest: str, total: int) -> None:
        return None

    def layer_advance(self, digest: str, nbytes: int) -> None:
        return None

    def layer_done(self, digest: str) -> None:
        return None


__all__ = ["NullProgress", "ProgressSink"]
