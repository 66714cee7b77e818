"""Passes layer: compiler passes, one per module (DESIGN.md section 2). May import: the base
modules, ``format``, ``targets``, ``ir``, ``frontend`` and ``neftc.neft.modules``.

``PASSES`` is the registry of the passes a pipeline text may name (``parse_pipeline``).
"""

from typing import Any

from neftc.ir import pass_spec
from neftc.passes.bit_slice import BitSlice
from neftc.passes.inject_noise import InjectNoise
from neftc.passes.insert_feedback import InsertFeedback
from neftc.passes.map_tiles import MapTiles
from neftc.passes.normalize import Normalize
from neftc.passes.place import Place
from neftc.passes.quantize import Quantize
from neftc.passes.strip_training import StripTraining

__all__ = ["PASSES", "BitSlice", "InjectNoise", "InsertFeedback", "MapTiles", "Normalize",
           "Place", "Quantize", "StripTraining", "default_pipeline", "parse_pipeline"]

PASSES: dict[str, type] = {cls.name: cls for cls in (
    Normalize, InjectNoise, InsertFeedback, StripTraining, Quantize, BitSlice, MapTiles, Place)}


def default_pipeline(*, fold_bn: bool = False, per_channel: bool = False,
                     calibration: str = "max-abs", placement: str = "dataflow",
                     replicate: bool = True) -> list[Any]:
    """normalize -> quantize -> bit-slice -> map-tiles -> place, with these options (the same
    as ``parse_pipeline("normalize{fold-bn=...},quantize{per-channel=...},...")``)."""
    return [Normalize(fold_bn=fold_bn),
            Quantize(per_channel=per_channel, calibration=calibration),  # type: ignore[arg-type]
            BitSlice(), MapTiles(),
            Place(strategy=placement, replicate=replicate)]  # type: ignore[arg-type]


def parse_pipeline(text: str) -> list[Any]:
    """The passes of pipeline text such as ``normalize,quantize{per-channel=true},bit-slice``
    (``neftc.ir.pass_spec``), built from the registered passes only."""
    return pass_spec.parse_pipeline(text, PASSES)
