"""``neftc demo``: the whole path on the built-in digits data, with no download.

Trains a small CNN, saves it with ``torch.export.save``, then compiles it for the target four
ways — without fine-tuning and with NeFT's NIT, OVF and IRS fine-tuning against the target's own
device noise — reads each layout back, signs each off by Monte Carlo over simulated chip instances
with the target's DAC/ADC at a few sigmas, and prints one comparison table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from neftc.atomic import atomic_directory
from neftc.datasets.digits import load_digits
from neftc.driver.compiler import CompileSettings, compile_model
from neftc.flow.records import DEMO_FORMAT, DemoMethod, DemoRecord, SigmaResult
from neftc.flow.verify import VerifySettings, verify_layout
from neftc.format.reader import load_layout
from neftc.frontend.zoo import build
from neftc.neft.pipeline import NeftSettings
from neftc.neft.train import accuracy, train_classifier
from neftc.targets.spec import TargetSpec

DEMO_MARKER = "demo.json"
METHODS = ("baseline", "nit", "ovf", "irs")


@dataclass(frozen=True)
class DemoConfig:
    arch: str = "lenet"
    epochs: int = 40
    neft_epochs: int = 15
    train_sigma: float = 0.1
    sigmas: tuple[float, ...] = (0.05, 0.1, 0.15)
    trials: int = 30
    seed: int = 0


def _method(method: str, model_path: Path, out_dir: Path, tmp: Path, target: TargetSpec,
            config: DemoConfig, progress: bool) -> DemoMethod:
    """Compile the saved model with one fine-tuning method and sign the layout off."""
    neft = None if method == "baseline" else NeftSettings(
        mode=method, data="digits", epochs=config.neft_epochs, sigma=config.train_sigma,
        seed=config.seed)  # type: ignore[arg-type]
    layout_dir = tmp / f"layout-{method}"
    shown = str(out_dir / f"layout-{method}")  # where it will be once the directory is swapped
    result = compile_model(model_path, target, layout_dir,
                           settings=CompileSettings(neft=neft, progress=progress,
                                                    dac_data="digits"),
                           source_name=str(out_dir / "model.pt2"))
    layout = load_layout(layout_dir)
    report = verify_layout(layout_dir, "digits",
                           VerifySettings(sigmas=config.sigmas, trials=config.trials,
                                          seed=config.seed), progress=progress)
    report = report.model_copy(update={"layout": shown})
    return DemoMethod(layout=shown,
                      fine_tune_seconds=result.neft_log.seconds if result.neft_log else 0.0,
                      quantized_accuracy_ideal_periphery=report.quantized_accuracy_ideal_periphery,
                      arrays_used=layout.doc.summary.arrays_used, verify=report)


def run_demo(out_dir: Path, target: TargetSpec, config: DemoConfig = DemoConfig(),
             progress: bool = True) -> DemoRecord:
    data = load_digits()
    torch.manual_seed(config.seed)  # parameter initialisation of the zoo model
    model = build(config.arch, data.input_shape, data.num_classes).train()
    model = train_classifier(model, data.train, epochs=config.epochs, lr=3e-3, seed=config.seed,
                             progress=progress, desc=f"train {config.arch} on digits")
    float_accuracy = accuracy(model, data.test)
    with atomic_directory(out_dir, marker=DEMO_MARKER) as tmp:
        torch.export.save(torch.export.export(model, (data.test.x[:1],)), tmp / "model.pt2")
        methods = {method: _method(method, tmp / "model.pt2", out_dir, tmp, target, config,
                                   progress) for method in METHODS}
        record = DemoRecord(
            format=DEMO_FORMAT, version=1, arch=config.arch, dataset="digits",
            train_samples=len(data.train), test_samples=len(data.test), split=data.split,
            epochs=config.epochs, seed=config.seed, target=target.name,
            train_sigma=config.train_sigma, neft_epochs=config.neft_epochs,
            sigmas=list(config.sigmas), trials=config.trials, float_accuracy=float_accuracy,
            methods=methods)
        (tmp / DEMO_MARKER).write_text(record.model_dump_json(indent=1) + "\n")
        (tmp / "report.md").write_text(format_demo(record, out_dir, markdown=True))
    return record


def _cell(row: SigmaResult) -> str:
    ci95 = math.nan if row.mc.ci95 is None else row.mc.ci95
    return f"{100 * row.mc.mean:5.1f} ± {100 * ci95:3.1f}"


def _rows(record: DemoRecord) -> list[list[str]]:
    rows = []
    for method, info in record.methods.items():
        results = info.verify.results
        rows.append([method, f"{info.fine_tune_seconds:.1f} s",
                     f"{100 * record.float_accuracy:.1f}",
                     f"{100 * results[0].quantized_accuracy:.1f}",
                     *(_cell(r) for r in results)])
    return rows


def format_demo(record: DemoRecord, out_dir: Path, markdown: bool = False) -> str:
    """The comparison table: printed, or as ``report.md`` (``markdown``)."""
    headers = ["method", "fine-tune", "float", "quantized"] + [f"σ={s:g}" for s in record.sigmas]
    rows = _rows(record)
    intro = (f"{record.arch} on digits ({record.train_samples} train / "
             f"{record.test_samples} test images), target {record.target}; NeFT "
             f"fine-tuning {record.neft_epochs} epochs at sigma {record.train_sigma:g}; "
             f"test accuracy in %, noisy columns: mean ± 95 % CI over {record.trials} simulated "
             "chip instances (cell-level variation, 8-bit DAC/ADC)")
    if markdown:
        lines = ["# neftc demo", "", intro + ".", "",
                 "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines += ["", "'quantized' is the noise-free chip with the target's DAC/ADC. "
                  "Regenerate with `neftc demo`."]
        return "\n".join(lines) + "\n"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) for c, w in zip(cells, widths))

    lines = [intro, "", fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    lines += ["", f"wrote {out_dir}/model.pt2, {out_dir}/layout-{{{','.join(METHODS)}}}/, "
              f"{out_dir}/report.md and {out_dir}/{DEMO_MARKER}"]
    return "\n".join(lines) + "\n"
