"""Progress reporting from the image pipeline to whoever drives it (CLI display, REST status).

The protocol lives in :mod:`shifter.registry.progress` (so dependencies point down) and is
re-exported here.  Phases :class:`shifter.gateway.service.ImageService` reports:
``resolve``, ``wait`` (another process is pulling the same image), ``pulling``
(downloading layers), ``converting`` (flatten + mksquashfs), ``publish``, ``done``.
"""

from __future__ import annotations

from shifter.registry.progress import NullProgress, ProgressSink

__all__ = ["NullProgress", "ProgressSink"]
