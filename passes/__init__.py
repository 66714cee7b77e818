"""Passes layer: compiler passes, one per module (DESIGN.md section 2). May import: the base
modules, ``format``, ``targets``, ``ir``, ``frontend`` and ``neftc.neft.modules``."""

from neftc.passes.bit_slice import BitSlice
from neftc.passes.map_tiles import MapTiles
from neftc.passes.normalize import Normalize
from neftc.passes.place import Place
from neftc.passes.quantize import Quantize

__all__ = ["BitSlice", "MapTiles", "Normalize", "Place", "Quantize", "default_pipeline"]


def default_pipeline(*, fold_bn: bool = False, per_channel: bool = False,
                     calibration: str = "max-abs", placement: str = "dataflow",
                     replicate: bool = True) -> list:
    """normalize -> quantize -> bit-slice -> map-tiles -> place."""
    return [Normalize(fold_bn=fold_bn),
            Quantize(per_channel=per_channel, calibration=calibration),  # type: ignore[arg-type]
            BitSlice(), MapTiles(),
            Place(strategy=placement, replicate=replicate)]  # type: ignore[arg-type]
