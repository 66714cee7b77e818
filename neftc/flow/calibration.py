"""``neftc calibrate``: store the input DAC ranges sign-off uses in the layout itself.

The DAC of every crossbar layer converts the layer's input activations into integers:
``x_int = clamp(round(x / scale))``. The ranges come from the noise-free network on representative
data (max-abs of each layer's input over the first ``samples`` training samples, test samples
when the data has no train split): exactly what ``Emulator.calibrate`` computes. Writing them into
``layers[i].dac`` (with ``dac_calibration`` saying where they come from) makes the numbers that
``neftc verify`` signed off the numbers ``neftc program`` hands to the chip.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from neftc.datasets.base import Dataset, check_compatible
from neftc.datasets.fit import fit_inputs
from neftc.datasets.spec import load_dataset
from neftc.errors import DataError, LayoutError, NeftcError
from neftc.format import encoding
from neftc.format.reader import Layout, load_layout
from neftc.format.schema import DacCalibrationRecord, DacRecord, LayoutDoc
from neftc.format.writer import write_layout

DEFAULT_SAMPLES = 512


@dataclass(frozen=True)
class CalibrationResult:
    doc: LayoutDoc  # the calibrated layout document
    out_dir: Path | None  # where it was written (None: not written)
    data: str  # the data spec the ranges come from
    split: str  # "train" or "test": the split the samples were taken from
    samples: int
    kept_verify: bool = False  # verify.json was carried over (its DAC equals the new one)
    dropped_verify: bool = False  # verify.json was not carried over (another DAC setting)


def calibration_inputs(data: Dataset, samples: int) -> tuple[tuple[torch.Tensor, ...], str]:
    """The first ``samples`` training samples (test samples when there is no train split) of
    every input of a data set fitted to the model (``fit_inputs``), in its input order."""
    split, name = (data.train, "train") if len(data.train) else (data.test, "test")
    return tuple(t[:samples] for t in split.inputs()), name


def calibrate_doc(layout: Layout, data: Dataset, data_spec: str,
                  samples: int = DEFAULT_SAMPLES) -> tuple[LayoutDoc, str, int]:
    """The layout document with every layer's DAC set from ``data`` (nothing is written).

    Returns (document, split used, samples used)."""
    from neftc.runtime.emulator import Emulator

    if samples < 1:
        raise NeftcError(f"--samples must be at least 1, got {samples}")
    input_shape = tuple(layout.doc.graph.input_shape[1:])
    check_compatible(data, input_shape, data.num_classes)  # shapes only: labels are not used
    inputs = layout.doc.graph.inputs
    x, split = calibration_inputs(fit_inputs(data, inputs), samples)
    # The DACs convert the activations that reach a crossbar: float inputs are checked here,
    # integer inputs (token ids) reach the crossbars only through digital ops (an embedding).
    if not all(bool(torch.isfinite(t).all()) for t, r in zip(x, inputs) if r.dtype == "float32"):
        raise DataError(f"data '{data_spec}' holds non-finite values (inf or nan) in its {split} "
                        "samples; the DAC ranges cannot be set from them. Clean the data")
    emulator = Emulator(layout, ideal_periphery=False, noise="off")
    try:
        with torch.no_grad():
            settings = emulator.calibrate(x)
    except RuntimeError as exc:
        raise DataError(f"the layout cannot run on the samples of '{data_spec}' "
                        f"(shape {list(x[0].shape[1:])}): {str(exc).splitlines()[0]}") from None
    layers = []
    for layer in layout.doc.layers:
        quant = settings[layer.name]
        if not math.isfinite(quant.scale) or quant.scale <= 0:
            raise DataError(f"layer '{layer.name}' gets DAC scale {quant.scale} from "
                            f"'{data_spec}' (its input activations overflow); check the data "
                            "and the model")
        dac = DacRecord(scale=float(quant.scale), signed=bool(quant.signed), bits=int(quant.bits))
        layers.append(layer.model_copy(update={"dac": dac}))
    record = DacCalibrationRecord(method="max-abs", data=str(data_spec),
                                  samples=int(x[0].shape[0]))
    doc = layout.doc.model_copy(update={"layers": layers, "dac_calibration": record})
    # model_copy does not validate: round-trip once so a bad value can never reach the file.
    return LayoutDoc.model_validate(doc.model_dump(mode="json")), split, int(x[0].shape[0])


def _sidecar(layout: Layout, key: str) -> bytes:
    """A binary sidecar, re-read and checked against the record ``load_layout`` verified."""
    record = layout.doc.files[key]
    data = (layout.root / record.path).read_bytes()
    if len(data) != record.nbytes or hashlib.sha256(data).hexdigest() != record.sha256:
        raise LayoutError(f"'{layout.root / record.path}' changed while it was being "
                          "calibrated; run 'neftc calibrate' again")
    return data


def dac_table(doc: LayoutDoc) -> dict[str, dict[str, object]]:
    """layer -> {"scale", "signed", "bits"} for the layers that carry a DAC setting."""
    return {layer.name: layer.dac.model_dump() for layer in doc.layers if layer.dac is not None}


def calibrate_layout(layout_dir: str | Path, data_spec: str, samples: int = DEFAULT_SAMPLES,
                     out_dir: str | Path | None = None) -> CalibrationResult:
    """Set every layer's DAC range of the layout in ``layout_dir`` from ``data_spec`` and write
    the layout again, re-signed (``out_dir``, default: in place), atomically.

    The reports (``report.txt``, ``report.html``) are rewritten after the layout. A
    ``verify.json`` of the source layout is carried over only when it was signed off with exactly
    these DAC settings (or with ideal periphery); otherwise it no longer describes the layout and
    is left out. A kept one is part of the layout's atomic swap (``extras``): the calibrated
    layout never appears without a sign-off that is still valid for it.
    """
    from neftc.flow.report import VERIFY_JSON, carried_verify, write_layout_reports

    source = Path(layout_dir)
    layout = load_layout(source)
    data = load_dataset(data_spec)
    doc, split, used = calibrate_doc(layout, data, data_spec, samples)
    levels, tensors = _sidecar(layout, "levels"), _sidecar(layout, "tensors")
    verify_text, dropped = carried_verify(source, dac_table(doc))

    def carry(tmp: Path) -> None:
        (tmp / VERIFY_JSON).write_text(verify_text or "", encoding="utf-8")

    target = Path(out_dir) if out_dir is not None else source
    write_layout(target, doc, levels, tensors, extras=carry if verify_text is not None else None)
    write_layout_reports(target, doc)
    return CalibrationResult(doc, target, str(data_spec), split, used,
                             verify_text is not None, dropped)


def format_calibration(result: CalibrationResult) -> str:
    """The command's summary: one line per layer and where the ranges come from."""
    lines = [f"DAC ranges of {len(result.doc.layers)} layers set from {result.data} (first "
             f"{result.samples} {result.split} samples, max-abs of each layer's noise-free input)",
             "", f"{'layer':<24} {'scale':>12} {'signed':>6} {'bits':>4} {'range':>22}"]
    for layer in result.doc.layers:
        dac = layer.dac
        assert dac is not None
        top = encoding.dac_max_int(dac.bits, dac.signed) * dac.scale
        span = f"[{-top if dac.signed else 0:.4g}, {top:.4g}]"
        lines.append(f"{layer.name:<24} {dac.scale:>12.6g} {'yes' if dac.signed else 'no':>6} "
                     f"{dac.bits:>4} {span:>22}")
    lines.append("")
    if result.kept_verify:
        lines.append("verify.json kept: it was signed off with these DAC settings")
    if result.dropped_verify:
        lines.append("verify.json left out: it was signed off with other DAC ranges; run "
                     f"'neftc verify {result.out_dir}' again")
    lines.append(f"wrote {result.out_dir}/ (layout.json re-signed in SHA256SUMS); 'neftc program' "
                 "and 'neftc verify' now use these ranges")
    return "\n".join(lines) + "\n"


__all__ = [
    "DEFAULT_SAMPLES",
    "CalibrationResult",
    "calibrate_doc",
    "calibrate_layout",
    "calibration_inputs",
    "dac_table",
    "format_calibration",
]
