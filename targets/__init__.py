"""Targets layer: target specs of CIM chips, the device model and the built-in presets. May
import: the base modules and ``neftc.format.encoding`` (the cell encoding, which imports
nothing)."""

from neftc.targets.registry import builtin_targets, resolve_target, target_tags
from neftc.targets.spec import TargetSpec

__all__ = ["TargetSpec", "builtin_targets", "resolve_target", "target_tags"]
