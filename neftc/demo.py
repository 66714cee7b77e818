"""``neftc demo``: the whole path on the built-in digits data, with no download.

Trains a small CNN, saves it with ``torch.export.save``, compiles it for a target, reads the layout
back, checks the accuracy of the weights the chip would hold, and signs the layout off by Monte
Carlo over simulated chip instances with the target's DAC/ADC.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from neftc.atomic import atomic_directory
from neftc.compiler import compile_model
from neftc.datasets import load_digits
from neftc.layout import load_layout
from neftc.summary import format_summary, layout_summary
from neftc.targets.spec import TargetSpec
from neftc.train import accuracy, train_classifier
from neftc.verify import VerifySettings, format_verify, run_verify
from neftc.zoo import build

DEMO_MARKER = "demo.json"


@dataclass(frozen=True)
class DemoResult:
    float_accuracy: float
    layout_accuracy: float
    summary: dict
    verify: dict


def run_demo(out_dir: Path, target: TargetSpec, *, arch: str = "lenet", epochs: int = 40,
             seed: int = 0, trials: int = 30, sigmas: tuple[float, ...] = (0.05, 0.1),
             progress: bool = True) -> DemoResult:
    data = load_digits(seed=seed)
    torch.manual_seed(seed)  # parameter initialisation of the zoo model
    model = build(arch, data.input_shape, data.num_classes).train()
    model = train_classifier(model, data.train, epochs=epochs, lr=3e-3, seed=seed,
                             progress=progress, desc=f"train {arch} on digits")
    float_acc = accuracy(model, data.test)
    with atomic_directory(out_dir, marker=DEMO_MARKER) as tmp:
        program = torch.export.export(model, (data.test.x[:1],))
        torch.export.save(program, tmp / "model.pt2")
        result = compile_model(tmp / "model.pt2", target, tmp / "layout",
                               source_name=str(out_dir / "model.pt2"))
        layout = load_layout(tmp / "layout")
        state = model.state_dict()
        for name in layout.layer_names:
            state[f"{name}.weight"] = torch.from_numpy(layout.weights(name).copy())
        deployed = build(arch, data.input_shape, data.num_classes)
        deployed.load_state_dict(state)
        layout_acc = accuracy(deployed.eval(), data.test)
        summary = layout_summary(result.doc)
        report = run_verify(tmp / "layout", "digits",
                            VerifySettings(sigmas=sigmas, trials=trials, seed=seed),
                            progress=progress)
        report["layout"] = str(out_dir / "layout")
        record = {"arch": arch, "dataset": "digits", "train_samples": len(data.train),
                  "test_samples": len(data.test), "epochs": epochs, "seed": seed,
                  "target": target.name, "float_accuracy": float_acc,
                  "layout_accuracy": layout_acc, "layout": summary, "verify": report}
        (tmp / DEMO_MARKER).write_text(json.dumps(record, indent=1) + "\n")
    return DemoResult(float_acc, layout_acc, summary, report)


def format_demo(result: DemoResult, out_dir: Path) -> str:
    return (
        format_summary(result.summary)
        + "\n"
        + f"test accuracy, float model:              {100 * result.float_accuracy:6.2f} %\n"
        + f"test accuracy, weights read from layout: {100 * result.layout_accuracy:6.2f} %\n"
        + "\nMonte-Carlo sign-off on simulated chips (neftc verify):\n"
        + format_verify(result.verify)
        + f"\nwrote {out_dir}/model.pt2, {out_dir}/layout/ and {out_dir}/{DEMO_MARKER}\n"
    )
