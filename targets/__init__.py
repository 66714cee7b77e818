"""Target specs of CIM chips and the built-in presets."""

from neftc.targets.registry import builtin_targets, resolve_target, target_tags
from neftc.targets.spec import TargetSpec

__all__ = ["TargetSpec", "builtin_targets", "resolve_target", "target_tags"]
