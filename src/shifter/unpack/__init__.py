"""Flattening image layers into one tree, safely (see docs/layer-policy.md).

``flatten(layers, dest, policy)`` streams each layer blob once: a pure planner turns
tar headers into operations, a thin executor carries them out through an openat-style
walk that never follows a symlink.
"""

from shifter.unpack.flatten import flatten
from shifter.unpack.policy import FlattenPolicy
from shifter.unpack.report import FlattenReport

__all__ = ["FlattenPolicy", "FlattenReport", "flatten"]
