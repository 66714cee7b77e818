"""Device effects side by side (issue 16): accuracy vs sigma with each effect alone, all
together and none, for the untuned model and NeFT trained with and without the effects.
Regenerates the tables of docs/results.md, "Device effects (issue 16)".

One set of typical effect values (``typical``: the target's ``_effects`` preset plus
write-verify) is switched on in the target (``resolve_target(tag, overrides)``, the same as
``neftc compile --set``); every layout is compiled for that target, so the layout states every
effect, and each row of a table switches effects off at sign-off
(``VerifySettings.ideal_effects``, ``neftc verify --ideal``): "none" is every effect off, "X"
is X alone, "all" every effect on. The chip is read ``T_INFERENCE_S`` after programming
(drift; ``--t-inference``).

Models, per dataset (all compiled with per-channel scales, the recipe's chip, so the three differ
only in training):

- ``untuned``: the plainly trained model (``neftc.neft.train.train_classifier``, as ``neftc
  demo`` trains it), compiled as it is;
- ``neft-fx``: the recipe (``--neft nit --temperature 4 --per-channel``, Adam 3e-3) fine-tuned
  against the target *with* the effects at the deployment time, so training includes what has a
  per-weight equivalent (write-verify, clip, drift; docs/neft.md);
- ``neft-plain``: the same recipe fine-tuned against the target *without* effects (the control).

Both NeFT models are fine-tuned with ``finetune_file`` (``neftc finetune``) and the tuned model is
compiled for the target with the effects, so the three layouts differ only in their weights.
Within a dataset every layout meets the same chips (``(seed, chip)`` draws; each effect has its
own stream), so differences between rows are paired per chip.

Resumable: every (dataset, target, model, row, periphery) run is one line of a JSON-lines store,
one file per dataset (``--store-dir``/effects-DATASET-lenet.jsonl); ``--report-only`` prints the
tables from them.

    OMP_NUM_THREADS=1 python benchmarks/effects_results.py            # digits + fashion
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from neft_results import interval  # benchmarks/neft_results.py: one Student t rule

from neftc.datasets.spec import load_dataset
from neftc.driver.compiler import CompileSettings, compile_model
from neftc.driver.neft_jobs import finetune_file
from neftc.flow.verify import VerifySettings, run_verify
from neftc.frontend.zoo import build
from neftc.neft.pipeline import NeftSettings
from neftc.neft.train import accuracy, train_classifier
from neftc.targets import resolve_target
from neftc.targets.device_model import cell_effect_moments

# One set of typical values: the paper device model's ``_effects`` preset (neftc.targets.presets:
# every value with its source or marked as an assumption; ``neftc targets TAG_effects`` lists
# them), plus write-verify, which the preset leaves off (its sigma is what programming leaves).
WRITE_VERIFY = "effects.write_verify.max_pulses=5"  # assumption; the preset's tolerance


def typical(tag: str) -> list[str]:
    """The ``--set`` overrides that turn ``tag`` into its ``_effects`` twin, with write-verify."""
    spec = resolve_target(f"{tag}_effects").effects.model_dump(mode="json")

    def leaves(values: dict, prefix: str) -> list[str]:
        out: list[str] = []
        for key, value in values.items():
            path = f"{prefix}.{key}"
            out += leaves(value, path) if isinstance(value, dict) else [
                f"{path}={str(value).lower() if isinstance(value, bool) else value}"]
        return out

    return [o for o in leaves(spec, "effects") if not o.startswith("effects.write_verify.")] + \
        [WRITE_VERIFY]


T_INFERENCE_S = 86400.0  # read one day after programming (drift)
IDEAL_EFFECTS = ("write-verify", "clip", "drift", "ir-drop", "read-noise")
CONVERTER_EFFECTS = ("dac", "adc")
EVERY_EFFECT = IDEAL_EFFECTS + CONVERTER_EFFECTS
MODELS = ("untuned", "neft-fx", "neft-plain")


def rows(periphery: str) -> list[tuple[str, tuple[str, ...]]]:
    """The table's rows on one periphery: (name, effects switched off at sign-off)."""
    alone = IDEAL_EFFECTS if periphery == "ideal" else CONVERTER_EFFECTS
    out: list[tuple[str, tuple[str, ...]]] = [("none", ("all",))]
    out += [(name, tuple(e for e in EVERY_EFFECT if e != name)) for name in alone]
    out.append(("all", ()))
    return out


def dataset_spec(name: str, args: argparse.Namespace, work: Path) -> str:
    """``digits``, or the first ``--train-samples`` / ``--test-samples`` of Fashion-MNIST
    written once as an .npz."""
    if name == "digits":
        return "digits"
    path = work / "fashion.npz"
    if not path.exists():
        data = load_dataset(str(args.fashion))
        train = data.train.take(slice(0, args.train_samples))
        test = data.test.take(slice(0, args.test_samples))
        partial = work / f"fashion.{os.getpid()}.npz"
        np.savez(partial, x_train=train.x.numpy(), y_train=train.y.numpy(),
                 x_test=test.x.numpy(), y_test=test.y.numpy())
        partial.replace(path)
    return str(path)


def store_path(store_dir: Path, dataset: str) -> Path:
    return store_dir / f"effects-{dataset}-lenet.jsonl"


def load_store(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["key"]: r for r in records}


def load_stores(args: argparse.Namespace) -> dict[str, dict]:
    records: dict[str, dict] = {}
    for name in args.datasets:
        records.update(load_store(store_path(args.store_dir, name)))
    return records


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def build_models(name: str, spec: str, tag: str, args: argparse.Namespace,
                 work: Path) -> dict[str, Path]:
    """Train the plain model and the two NeFT models once (files reused by a resumed run);
    return the model file of each of ``MODELS``."""
    data = load_dataset(spec)
    epochs, neft_epochs = (args.digits_epochs, args.digits_neft_epochs) if name == "digits" \
        else (args.fashion_epochs, args.fashion_neft_epochs)
    plain = work / f"{name}-lenet.pt2"
    if not plain.exists():
        start = time.perf_counter()
        torch.manual_seed(args.seed)  # parameter initialisation, as neftc demo
        model = build("lenet", data.input_shape, data.num_classes).train()
        model = train_classifier(model, data.train, epochs=epochs, lr=3e-3, seed=args.seed,
                                 progress=False)
        partial = plain.with_suffix(f".{os.getpid()}.pt2")
        torch.export.save(torch.export.export(model, (data.test.x[:1],)), partial)
        partial.replace(plain)
        _log(f"{name}: lenet float {100 * accuracy(model, data.test):.2f} % "
             f"({time.perf_counter() - start:.0f} s)")
    files = {"untuned": plain}
    for model_name, overrides, t_inference in (
            ("neft-fx", typical(tag), T_INFERENCE_S), ("neft-plain", [], None)):
        out = work / f"{name}-{tag}-{model_name}.pt2"
        files[model_name] = out
        if out.exists():
            continue
        start = time.perf_counter()
        settings = NeftSettings(mode="nit", data=spec, epochs=neft_epochs,
                                sigma=args.train_sigma, lr=3e-3, seed=args.seed,
                                per_channel=True, temperature=4.0, t_inference_s=t_inference)
        result = finetune_file(plain, resolve_target(tag, overrides), settings, out,
                               progress=False)
        _log(f"{name} {tag} {model_name}: float {100 * result.accuracy_before:.2f} -> "
             f"{100 * result.accuracy_after:.2f} % ({time.perf_counter() - start:.0f} s)")
    return files


def run(args: argparse.Namespace) -> None:
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    store = load_stores(args)
    for name in args.datasets:
        spec = dataset_spec(name, args, work)
        for tag in args.targets:
            overrides = typical(tag)
            target = resolve_target(tag, overrides)
            files = build_models(name, spec, tag, args, work)
            for model_name in args.models:
                layout = work / f"{name}-{tag}-{model_name}"
                if not (layout / "layout.json").exists():
                    compile_model(files[model_name], target, layout,
                                  settings=CompileSettings.with_options(per_channel=True))
                for periphery in args.periphery:
                    chips = args.chips if periphery == "ideal" else args.target_chips
                    sigmas = args.sigmas if periphery == "ideal" else args.target_sigmas
                    for row, ideal in rows(periphery):
                        key = f"{name}|{tag}|{model_name}|{row}|{periphery}"
                        if key in store:
                            continue
                        start = time.perf_counter()
                        report = run_verify(layout, spec, VerifySettings(
                            sigmas=tuple(sigmas), trials=chips, seed=args.seed,
                            ideal_periphery=periphery == "ideal", noise="cell",
                            ideal_effects=ideal, t_inference_s=T_INFERENCE_S))
                        record = {
                            "key": key, "dataset": name, "target": tag, "model": model_name,
                            "row": row, "periphery": periphery, "ideal_effects": list(ideal),
                            "t_inference_s": T_INFERENCE_S, "overrides": overrides,
                            "active": report["effects"]["active"],
                            "verify_seconds": time.perf_counter() - start,
                            "quantized": report["results"][0]["quantized_accuracy"],
                            "sigmas": {str(r["sigma"]): {"mean": r["mc"]["mean"],
                                                         "chips": r["chip_accuracies"]}
                                       for r in report["results"]}}
                        store[key] = record
                        with store_path(args.store_dir, name).open("a") as handle:
                            handle.write(json.dumps(record) + "\n")
                        _log(f"{key}: " + ", ".join(
                            f"{s}: {100 * m['mean']:.1f}" for s, m in record["sigmas"].items())
                            + f" ({record['verify_seconds']:.0f} s)")


def _pm(mean_half: tuple[float, float], signed: bool = False) -> str:
    mean, half = mean_half
    sign = "+" if signed and mean >= 0 else ""
    return f"{sign}{100 * mean:.1f}" + (f" ± {100 * half:.1f}" if half > 0 else "")


def _paired(a: list[float], b: list[float]) -> str:
    """The per-chip difference ``a - b`` of two runs on the same chips: mean ± 95 % CI."""
    return _pm(interval([x - y for x, y in zip(a, b)]), signed=True)


def markdown(records: list[dict], args: argparse.Namespace) -> str:
    """Per dataset, target and periphery: accuracy (mean ± 95 % CI over chips) per row and model,
    and each row's cost against the same model's "none" (paired per chip)."""
    by_key = {r["key"]: r for r in records}
    lines: list[str] = []
    for name in args.datasets:
        for tag in args.targets:
            for periphery in args.periphery:
                table = [r for r in records if r["dataset"] == name and r["target"] == tag
                         and r["periphery"] == periphery]
                if not table:
                    continue
                sigmas = [str(s) for s in (args.sigmas if periphery == "ideal"
                                           else args.target_sigmas)]
                deltas = [s for s in map(str, args.delta_sigmas) if s in sigmas]
                chips = sorted({len(next(iter(r["sigmas"].values()))["chips"]) for r in table})
                where = "ideal periphery" if periphery == "ideal" else "the target's DAC/ADC"
                lines += [f"#### {name}, {tag}, {where} ({'/'.join(map(str, chips))} chips "
                          f"per point)", "",
                          "| effects on | model | noise-free | " + " | ".join(
                              f"σ={s}" for s in sigmas) + " | " + " | ".join(
                              f"Δ vs none σ={s}" for s in deltas) + " |",
                          "|---|---|---|" + "---|" * (len(sigmas) + len(deltas))]
                for row, _ in rows(periphery):
                    for model_name in MODELS:
                        record = by_key.get(f"{name}|{tag}|{model_name}|{row}|{periphery}")
                        if record is None:
                            continue
                        base = by_key.get(f"{name}|{tag}|{model_name}|none|{periphery}")
                        cells = [f"{100 * record['quantized']:.1f}"]
                        cells += [_pm(interval(record["sigmas"][s]["chips"]))
                                  if s in record["sigmas"] else "" for s in sigmas]
                        for s in deltas:
                            if base is None or row == "none" or s not in record["sigmas"]:
                                cells.append("")
                                continue
                            cells.append(_paired(record["sigmas"][s]["chips"],
                                                 base["sigmas"][s]["chips"]))
                        lines.append(f"| {row} | {model_name} | " + " | ".join(cells) + " |")
                lines.append("")
                lines += compare_models(by_key, name, tag, periphery, deltas)
                seconds = sum(r["verify_seconds"] for r in table)
                lines += [f"Sign-off time for this table: {seconds:.0f} s.", ""]
    return "\n".join(lines)


def mechanism(args: argparse.Namespace) -> str:
    """What training can include (docs/neft.md): per cell level, the std of a cell after
    write-verify, clip and compensated drift at ``T_INFERENCE_S`` relative to the programming
    draw alone, and its mean shift (level units): the per-weight noise NeFT trains with."""
    lines: list[str] = []
    for tag in args.targets:
        plain = resolve_target(tag)
        target = resolve_target(tag, typical(tag))
        levels = 2**target.cell.bits
        lines += [f"#### What training includes: {tag}, per cell level (std after / std "
                  f"before the cell effects; mean shift, level units)", "",
                  "| σ | " + " | ".join(f"level {level}" for level in range(levels)) + " |",
                  "|---|" + "---|" * levels]
        for sigma in args.sigmas:
            if sigma <= 0:
                continue
            shift, var = cell_effect_moments(levels, sigma, target.noise.state_ratio,
                                             target.cell, target.effects, T_INFERENCE_S)
            _, var0 = cell_effect_moments(levels, sigma, plain.noise.state_ratio, plain.cell,
                                          plain.effects, T_INFERENCE_S)
            ratio = (var / var0).sqrt()
            lines.append(f"| {sigma:g} | " + " | ".join(
                f"{float(r):.2f} ({float(m):+.3f})" for r, m in zip(ratio, shift)) + " |")
        lines.append("")
    return "\n".join(lines)


COMPARISONS = (("neft-fx", "neft-plain"), ("neft-fx", "untuned"), ("neft-plain", "untuned"))


def compare_models(by_key: dict[str, dict], name: str, tag: str, periphery: str,
                   sigmas: list[str]) -> list[str]:
    """Per row: the accuracy difference between two models on the same chips (paired per chip,
    mean ± 95 % CI)."""
    lines = ["| effects on | " + " | ".join(f"{a} − {b} σ={s}" for a, b in COMPARISONS
                                          for s in sigmas) + " |",
             "|---|" + "---|" * (len(COMPARISONS) * len(sigmas))]
    for row, _ in rows(periphery):
        records = {m: by_key.get(f"{name}|{tag}|{m}|{row}|{periphery}") for m in MODELS}
        cells = []
        for a, b in COMPARISONS:
            for s in sigmas:
                ra, rb = records[a], records[b]
                if ra is None or rb is None or s not in ra["sigmas"] or s not in rb["sigmas"]:
                    cells.append("")
                    continue
                cells.append(_paired(ra["sigmas"][s]["chips"], rb["sigmas"][s]["chips"]))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=["digits", "fashion"],
                        default=["digits", "fashion"])
    parser.add_argument("--fashion", type=Path, default=Path("../shared/data/fashion-mnist"))
    parser.add_argument("--train-samples", type=int, default=20000)
    parser.add_argument("--test-samples", type=int, default=2000)
    parser.add_argument("--digits-epochs", type=int, default=40, help="as neftc demo")
    parser.add_argument("--digits-neft-epochs", type=int, default=15, help="as neftc demo")
    parser.add_argument("--fashion-epochs", type=int, default=10)
    parser.add_argument("--fashion-neft-epochs", type=int, default=5)
    parser.add_argument("--train-sigma", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", nargs="+", default=["fefet6_128x128"])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                        help="sign off these models only (all are trained)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.4])
    parser.add_argument("--target-sigmas", type=float, nargs="+",
                        help="sigmas on the target's DAC/ADC (default: --sigmas)")
    parser.add_argument("--delta-sigmas", type=float, nargs="*", default=[0.0, 0.3])
    parser.add_argument("--periphery", nargs="+", choices=["ideal", "target"],
                        default=["ideal", "target"])
    parser.add_argument("--chips", type=int, default=10, help="chips per point, ideal periphery")
    parser.add_argument("--target-chips", type=int, default=3,
                        help="chips per point on the target's DAC/ADC")
    parser.add_argument("--work", type=Path, default=Path("effects-results-work"))
    parser.add_argument("--store-dir", type=Path, default=Path("docs/results-data"),
                        help="where the JSON-lines stores are (effects-DATASET-lenet.jsonl)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    args.target_sigmas = args.target_sigmas or args.sigmas
    args.store_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if not args.report_only:
        run(args)
        _log(f"total {time.perf_counter() - start:.0f} s")
    print(markdown(list(load_stores(args).values()), args))
    print(mechanism(args))


if __name__ == "__main__":
    main()
