"""Progress display for ``shifterimg``: bytes per layer, then the conversion phase.

Both classes implement the gateway's ``ProgressSink`` protocol (``phase``, ``layer_start``,
``layer_advance``, ``layer_done``; see docs/internals.md) structurally, and may be called
from several download threads at once.

* :class:`RichProgress` on a terminal: one bar per layer (bytes, speed), then a spinner per phase.
* :class:`PlainProgress` otherwise (logs, pipes, CI): one line per event, never a line per chunk,
  so a log of a 50-layer pull stays readable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Protocol

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Column
from rich.text import Text


class Sink(Protocol):
    """The ProgressSink protocol of ``shifter.gateway.progress`` (repeated to keep the CLI light)."""

    def phase(self, name: str, message: str) -> None: ...

    def layer_start(self, digest: str, total: int) -> None: ...

    def layer_advance(self, digest: str, nbytes: int) -> None: ...

    def layer_done(self, digest: str) -> None: ...


def short_digest(digest: str) -> str:
    """``sha256:0123456789abcdef...`` -> ``0123456789ab`` (labels that are not digests stay as they are)."""
    _, sep, hexpart = digest.partition(":")
    return hexpart[:12] if sep and len(hexpart) >= 12 else digest


def layer_label(digest: str) -> str:
    """``layer 0123456789ab`` for a digest; other labels (``layer 2`` of an archive) as they are."""
    short = short_digest(digest)
    return f"layer {short}" if short != digest else digest


def human_size(nbytes: float) -> str:
    """``1536`` -> ``1.5 KB`` (decimal units, like docker and skopeo)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(nbytes) < 1000 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"  # pragma: no cover


def timestamp() -> str:
    """Local time like NERSC shifterimg prints it: ``2024-01-02T03:04:05``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S")


class PlainProgress:
    """One plain line per event on ``stream`` (not a terminal)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._lock = threading.Lock()
        self._totals: dict[str, int] = {}
        self._done: dict[str, int] = {}

    def _line(self, text: str) -> None:
        with self._lock:
            self.stream.write(f"{timestamp()} {text}\n")
            self.stream.flush()

    def phase(self, name: str, message: str) -> None:
        self._line(f"{name}: {message}" if message else name)

    def layer_start(self, digest: str, total: int) -> None:
        with self._lock:
            self._totals[digest] = total
            self._done[digest] = 0
        self._line(f"{layer_label(digest)}: {human_size(total)}")

    def layer_advance(self, digest: str, nbytes: int) -> None:
        with self._lock:
            self._done[digest] = self._done.get(digest, 0) + nbytes

    def layer_done(self, digest: str) -> None:
        with self._lock:
            got = self._done.get(digest, 0)
        self._line(f"{layer_label(digest)}: done ({human_size(got)})")


class _LayersOnly(ProgressColumn):
    """Shows ``inner`` for layer tasks and nothing for phase lines (they have no byte counts)."""

    def __init__(self, inner: ProgressColumn) -> None:
        super().__init__()
        self.inner = inner

    def render(self, task: Task) -> RenderableType:
        return self.inner.render(task) if task.fields.get("layer") else Text("")


class RichProgress:
    """Live bars on a terminal: one per layer, then one spinner line per phase."""

    def __init__(self, console: Console) -> None:
        self.console = console
        # At 80 columns the bytes and the speed must stay visible: the description column takes
        # what is left (cut with an ellipsis), the bar is short, and the phases' long messages
        # are printed as lines above the live display instead of widening its first column.
        description = Column(no_wrap=True, overflow="ellipsis", ratio=1, min_width=8)
        self.progress = Progress(
            SpinnerColumn(finished_text="[green]✓"), TextColumn("{task.description}", table_column=description),
            _LayersOnly(BarColumn(bar_width=16)), _LayersOnly(DownloadColumn()),
            _LayersOnly(TransferSpeedColumn()), TimeElapsedColumn(), console=console, transient=False)
        self._tasks: dict[str, TaskID] = {}
        self._phase: TaskID | None = None
        self._bytes: dict[str, int] = {}
        self._totals: dict[str, int] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self._finish_phase()
        self.progress.stop()

    def _task(self, digest: str, total: int | None) -> TaskID:
        with self._lock:
            task = self._tasks.get(digest)
            if task is None:
                task = self.progress.add_task(layer_label(digest), total=total, layer=True)
                self._tasks[digest] = task
            return task

    def _finish_phase(self) -> None:
        if self._phase is not None:
            self.progress.update(self._phase, total=1, completed=1)
            self._phase = None

    def phase(self, name: str, message: str) -> None:
        self._finish_phase()
        if message:
            self.progress.console.print(Text(f"{name}: {message}"), soft_wrap=True)
        self._phase = self.progress.add_task(name, total=None, layer=False)

    def layer_start(self, digest: str, total: int) -> None:
        task = self._task(digest, total)
        with self._lock:
            self._totals[digest] = total
        self.progress.update(task, total=total)

    def layer_advance(self, digest: str, nbytes: int) -> None:
        task = self._task(digest, None)
        with self._lock:
            self._bytes[digest] = self._bytes.get(digest, 0) + nbytes
        self.progress.advance(task, nbytes)

    def layer_done(self, digest: str) -> None:
        task = self._task(digest, None)
        with self._lock:
            total = self._totals.get(digest) or self._bytes.get(digest, 0)
        # a layer found in the cache reports no bytes: show it as complete anyway
        self.progress.update(task, total=total, completed=total)


class QuietProgress:
    """Shows nothing (``--quiet`` or ``--json``)."""

    def phase(self, name: str, message: str) -> None:
        pass

    def layer_start(self, digest: str, total: int) -> None:
        pass

    def layer_advance(self, digest: str, nbytes: int) -> None:
        pass

    def layer_done(self, digest: str) -> None:
        pass


@contextmanager
def progress_for(stream: IO[str], *, quiet: bool = False, tty: bool | None = None) -> Iterator[Sink]:
    """The right display for ``stream``: rich on a terminal, plain lines otherwise, nothing if quiet."""
    if quiet:
        yield QuietProgress()
        return
    is_tty = stream.isatty() if tty is None else tty
    if not is_tty:
        yield PlainProgress(stream)
        return
    display = RichProgress(Console(file=stream, force_terminal=True))
    display.start()
    try:
        yield display
    finally:
        display.stop()


__all__ = ["PlainProgress", "QuietProgress", "RichProgress", "Sink", "human_size", "layer_label",
           "progress_for", "short_digest", "timestamp"]
