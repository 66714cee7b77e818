"""NeFT vs noise injection vs no fine-tuning, over device variation, with the controls that
separate the mechanisms (loss temperature, feedback strength, compute). Regenerates
``docs/results.md``.

For each training seed: train a zoo model (plain), save it with torch.export; for each target
device model and each *method*, compile it (NeFT fine-tuning inside the compile) and Monte-Carlo
verify the layout at each sigma, with ideal periphery and/or the target's DAC/ADC. Every run is
appended to a JSON-lines store (``--store``), so an interrupted sweep resumes where it stopped
and ``--report-only`` renders the markdown from the store.

A method is ``name=spec``: ``spec`` is ``none`` (no fine-tuning) or a NeFT mode followed by
``NeftSettings`` overrides, e.g. ``nit=nit,temperature=1`` (plain NIT), ``ovf``,
``nit-T4=nit,temperature=4``, ``irs-b0=irs,beta=0``, ``nit-x4=nit,epochs=20``
(``epochs`` defaults to ``--neft-epochs``);
``per_channel=1`` compiles the chip with per-channel scales (the compile's ``--per-channel``,
which NeFT then trains against), e.g. ``recipe=nit,temperature=4,per_channel=1``;
``from_scratch=N`` trains a new model with the method for N epochs (``neftc train --neft MODE
--from-scratch``, zoo width) instead of fine-tuning the plainly trained one.
Within one seed, every layout is verified on the same chip instances (same ``(seed, chip)``
draws), so differences between methods are paired per seed.

Built-in digits (the quick table):

    OMP_NUM_THREADS=1 python benchmarks/neft_results.py --mc 100 > docs/results.md

Fashion-MNIST (``../shared/data/fashion-mnist``), see docs/results.md for the exact commands.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neftc.datasets.spec import load_dataset
from neftc.driver.compiler import CompileSettings, compile_model
from neftc.driver.neft_jobs import train_zoo_model
from neftc.flow.verify import VerifySettings, run_verify
from neftc.frontend.zoo import VGG8, build
from neftc.neft.pipeline import NeftSettings
from neftc.neft.train import accuracy, train_classifier
from neftc.targets import resolve_target

# "nit" is plain noise injection (temperature 1), the baseline; nit's own default is 4.
DEFAULT_METHODS = ("none=none", "nit=nit,temperature=1", "ovf=ovf", "irs=irs")
# Student t 0.975 quantiles by degrees of freedom (n - 1).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 14: 2.145, 19: 2.093, 29: 2.045}
#: ``--mechanism``'s contrasts: (what the paired difference isolates, method, its control).
#: Method names are those of docs/results.md's sweeps; a contrast shows where both ran.
MECHANISMS = (
    ("feedback terms of OVF", "ovf", "ovf-b0"),
    ("feedback terms of IRS", "irs", "irs-b0"),
    ("loss temperature 4, on NIT", "nit-T4", "nit"),
    ("OVF beyond its temperature", "ovf", "nit-T4"),
    ("IRS beyond its temperature", "irs", "nit-T4"),
    ("OVF over NIT (temperature and feedback)", "ovf", "nit"),
    ("equal compute: NIT for 4x the epochs against OVF", "nit-x4", "ovf"),
    ("convergence: NIT for 4x the epochs", "nit-x4", "nit"),
    ("convergence: NIT at Adam 3e-3", "nit-lr3", "nit"),
    ("the std's scale gradient", "nit", "nit-const"),
    ("per-channel scales (at temperature 4)", "recipe", "nit-T4"),
    ("BatchNorm statistics learned under the noise", "nit-bntrain", "nit"),
    ("from scratch (15 epochs) against 10 plain + 5 fine-tuning", "scratch-nit", "nit"),
    ("loss temperature 4, training from scratch", "scratch-nit4", "scratch-nit"),
)


def parse_method(text: str, neft_epochs: int) -> tuple[str, dict[str, Any] | None, bool]:
    """``name=spec`` -> (name, NeftSettings keyword overrides or None for no fine-tuning,
    per-channel chip)."""
    name, _, spec = text.partition("=")
    spec = spec or name
    parts = spec.split(",")
    per_channel = False
    options: dict[str, Any] = {"mode": parts[0], "epochs": neft_epochs}
    scratch = 0
    known = {f.name for f in fields(NeftSettings)}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        if key == "per_channel":
            per_channel = bool(int(value))
        elif key == "from_scratch":
            scratch = int(value)
        elif key not in known:
            raise SystemExit(f"method '{text}': unknown NeftSettings field '{key}'")
        else:
            options[key] = _value(value)
    if scratch:
        options["from_scratch"] = scratch
    return name, (None if parts[0] == "none" else options), per_channel


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def make_data(args: argparse.Namespace, work: Path) -> tuple[str, Any]:
    """The data spec every compile and verify reads: the whole data, or (``--train-samples``,
    ``--test-samples``) a fixed subset written once as an .npz (first samples of each split)."""
    data = load_dataset(args.data)
    if not args.train_samples and not args.test_samples:
        return args.data, data
    path = work / "data.npz"
    train = data.train.take(slice(0, args.train_samples or len(data.train)))
    test = data.test.take(slice(0, args.test_samples or len(data.test)))
    if not path.exists():
        partial = work / f"data.{os.getpid()}.npz"
        np.savez(partial, x_train=train.x.numpy(), y_train=train.y.numpy(),
                 x_test=test.x.numpy(), y_test=test.y.numpy())
        partial.replace(path)
    return str(path), load_dataset(str(path))


def base_model(args: argparse.Namespace, data: Any, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if args.arch == "vgg8":
        model = VGG8(data.input_shape, data.num_classes, width=args.width)
    else:
        model = build(args.arch, data.input_shape, data.num_classes)
    return train_classifier(model.train(), data.train, epochs=args.epochs, lr=args.lr, seed=seed,
                            progress=False)


def run_key(arch: str, seed: int, target: str, method: str, periphery: str) -> str:
    return f"{arch}|{seed}|{target}|{method}|{periphery}"


def load_store(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["key"]: r for r in records}


def run(args: argparse.Namespace) -> None:
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    store = load_store(args.store)
    spec, data = make_data(args, work)
    methods = [parse_method(m, args.neft_epochs) for m in args.methods]
    for seed in args.seeds:
        model_path = work / f"{args.arch}-w{args.width}-{seed}.pt2"
        if not model_path.exists():
            start = time.perf_counter()
            model = base_model(args, data, seed)
            partial = model_path.with_suffix(f".{os.getpid()}.pt2")
            torch.export.save(torch.export.export(model, (data.test.x[:1],)), partial)
            partial.replace(model_path)
            print(f"seed {seed}: {args.arch} float {100 * accuracy(model, data.test):.2f} % "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
        for tag in args.targets:
            target = resolve_target(tag)
            for name, options, per_channel in methods:
                keys = {p: run_key(args.arch, seed, tag, name, p) for p in args.periphery}
                # A stored run missing some of --sigmas is extended by those (same chips).
                missing = {p: [s for s in args.sigmas
                               if k not in store or str(s) not in store[k]["sigmas"]]
                           for p, k in keys.items()}
                todo = [p for p in keys if missing[p]]
                if not todo:
                    continue
                options = None if options is None else dict(options)
                scratch = 0 if options is None else options.pop("from_scratch", 0)
                neft = None if options is None else NeftSettings(
                    data=spec, sigma=args.train_sigma, seed=seed, **options)
                out = work / f"{tag}-{name}-{seed}"
                start = time.perf_counter()
                source = model_path
                log = None
                if (out / "layout.json").exists():  # compiled by an earlier run (atomic)
                    print(f"seed {seed} {tag} {name}: reusing {out}", file=sys.stderr)
                elif scratch and neft is not None:
                    source = work / f"{tag}-{name}-{seed}.pt2"
                    train_zoo_model(args.arch, spec, source, epochs=scratch, lr=args.lr,
                                    batch_size=neft.batch_size, seed=seed, device="cpu",
                                    neft=neft, target=target, progress=False, from_scratch=True)
                    neft = None  # the trained model is compiled as it is
                if not (out / "layout.json").exists():
                    settings = CompileSettings.with_options(per_channel=per_channel or None,
                                                            neft=neft)
                    log = compile_model(source, target, out, settings=settings).neft_log
                compile_seconds = time.perf_counter() - start
                for periphery in todo:
                    start = time.perf_counter()
                    report = run_verify(out, spec, VerifySettings(
                        sigmas=tuple(missing[periphery]), trials=args.mc, seed=seed,
                        ideal_periphery=periphery == "ideal", noise="cell",
                        **({"bn_recalibrate": args.bn_recalibrate} if args.bn_recalibrate
                           else {})))
                    record = {
                        "key": keys[periphery], "arch": args.arch, "width": args.width,
                        "seed": seed, "target": tag, "method": name,
                        "spec": None if options is None else (
                            {**options, "from_scratch": scratch} if scratch else options),
                        "per_channel": per_channel, "periphery": periphery,
                        "compile_seconds": compile_seconds,
                        "verify_seconds": time.perf_counter() - start,
                        "neft_losses": None if log is None else log.losses,
                        "quantized": report["results"][0]["quantized_accuracy"],
                        "sigmas": {str(r["sigma"]): _mc(r) for r in report["results"]}}
                    earlier = store.get(record["key"])
                    if earlier is not None:  # extended: keep the stored sigmas and compile
                        record.update(compile_seconds=earlier["compile_seconds"],
                                      neft_losses=earlier["neft_losses"],
                                      verify_seconds=earlier["verify_seconds"]
                                      + record["verify_seconds"],
                                      sigmas={**earlier["sigmas"], **record["sigmas"]})
                    store[record["key"]] = record
                    with args.store.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    print(f"seed {seed} {tag} {name} {periphery}: q "
                          f"{100 * record['quantized']:.1f}, " + ", ".join(
                              f"{s}: {100 * m['mean']:.1f}" for s, m in record["sigmas"].items())
                          + f" ({compile_seconds:.0f} + {record['verify_seconds']:.0f} s)",
                          file=sys.stderr, flush=True)


def _mc(result: dict) -> dict:
    """One sigma's Monte-Carlo summary, the per-chip accuracies (chip i is the (seed, i) draw)
    and, with --bn-recalibrate, the same chips re-calibrated."""
    mc = dict(result["mc"])
    mc["chips"] = result["chip_accuracies"]
    if result.get("recalibrated"):
        mc["recalibrated"] = {"mean": result["recalibrated"]["mc"]["mean"],
                              "chips": result["recalibrated"]["chip_accuracies"]}
    return mc


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and 95 % half-width (Student t over the values; 0 for one value)."""
    array = np.asarray(values, dtype=float)
    n = len(array)
    if n < 2:
        return float(array.mean()), 0.0
    return float(array.mean()), T975.get(n - 1, 1.96) * float(array.std(ddof=1)) / math.sqrt(n)


def markdown(records: list[dict], args: argparse.Namespace) -> str:
    lines: list[str] = []
    sigmas = [str(s) for s in args.sigmas]
    methods = [parse_method(m, args.neft_epochs)[0] for m in args.methods]
    for periphery in args.periphery:
        for tag in args.targets:
            rows = [r for r in records if r["target"] == tag and r["periphery"] == periphery
                    and r["arch"] == args.arch]
            header = [f"### {args.arch}, {tag}, {_periphery_name(periphery)}", "",
                      "| method | seeds x chips | noise-free | " + " | ".join(
                          f"σ={s}" for s in sigmas) + " | " + " | ".join(
                          f"Δ vs {args.reference} σ={s}" for s in args.delta_sigmas) + " |",
                      "|---|---|---|" + "---|" * (len(sigmas) + len(args.delta_sigmas))]
            table: list[str] = []
            reference = {r["seed"]: r for r in rows if r["method"] == args.reference}
            for method in methods:
                mine = sorted((r for r in rows if r["method"] == method
                               and all(s in r["sigmas"] for s in sigmas)),
                              key=lambda r: r["seed"])  # the runs that have every --sigmas
                if not mine:
                    continue
                chips = sorted({len(r["sigmas"][sigmas[0]].get("chips", [])) for r in mine})
                cells = [f"{len(mine)} x {'/'.join(map(str, chips))}",
                         _pm(interval([r["quantized"] for r in mine]))]
                cells += [_pm(interval([r["sigmas"][s]["mean"] for r in mine])) for s in sigmas]
                for s in args.delta_sigmas:
                    pairs = [r["sigmas"][str(s)]["mean"]
                             - reference[r["seed"]]["sigmas"][str(s)]["mean"]
                             for r in mine if r["seed"] in reference]
                    cells.append(_pm(interval(pairs), signed=True) if pairs
                                 and method != args.reference else "")
                table.append(f"| {method} | " + " | ".join(cells) + " |")
                if all("recalibrated" in r["sigmas"][s] for r in mine for s in sigmas):
                    recal = [cells[0], ""]
                    recal += [_pm(interval([r["sigmas"][s]["recalibrated"]["mean"]
                                            for r in mine])) for s in sigmas]
                    for s in args.delta_sigmas:
                        pairs = [r["sigmas"][str(s)]["recalibrated"]["mean"]
                                 - reference[r["seed"]]["sigmas"][str(s)]["mean"]
                                 for r in mine if r["seed"] in reference]
                        recal.append(_pm(interval(pairs), signed=True) if pairs else "")
                    table.append(f"| {method} + per-chip BN re-calibration | "
                                 + " | ".join(recal) + " |")
            if table:  # a target with none of --methods' runs gets no table
                lines += [*header, *table, ""]
    return "\n".join(lines)


def mechanism_table(records: list[dict], args: argparse.Namespace) -> str:
    """One table per periphery: each contrast of MECHANISMS as its paired per-seed difference
    (same chips), mean ± 95 % interval over the seeds (their number in brackets), per target at
    each ``--delta-sigmas``."""
    lines: list[str] = []
    sigmas = [str(s) for s in args.delta_sigmas]
    for periphery in args.periphery:
        mine = [r for r in records if r["arch"] == args.arch and r["periphery"] == periphery]
        by_method = {(r["target"], r["method"], r["seed"]): r for r in mine}
        targets = [t for t in args.targets if any(r["target"] == t for r in mine)]
        body = []
        for label, method, control in MECHANISMS:
            cells = []
            for tag in targets:
                seeds = sorted(seed for (t, m, seed) in by_method if t == tag and m == method
                               and (t, control, seed) in by_method)
                for s in sigmas:
                    pairs = [by_method[(tag, method, seed)]["sigmas"][s]["mean"]
                             - by_method[(tag, control, seed)]["sigmas"][s]["mean"]
                             for seed in seeds if s in by_method[(tag, method, seed)]["sigmas"]
                             and s in by_method[(tag, control, seed)]["sigmas"]]
                    cells.append(f"{_pm(interval(pairs), signed=True)} ({len(pairs)})"
                                 if pairs else "")
            if any(cells):
                body.append(f"| {label} | {method} − {control} | " + " | ".join(cells) + " |")
        if not body:
            continue
        lines += [f"### {args.arch}: what each mechanism adds, {_periphery_name(periphery)}", "",
                  "| isolates | Δ | " + " | ".join(f"{_short(t)} σ={s}" for t in targets
                                                   for s in sigmas)
                  + " |", "|---|---|" + "---|" * (len(targets) * len(sigmas)), *body, ""]
    return "\n".join(lines)


def _short(tag: str) -> str:
    """``fefet6_128x128`` -> ``FeFET6``: the device model's name in the docs."""
    return tag.split("_")[0].replace("fefet", "FeFET").replace("rram", "RRAM")


def _periphery_name(periphery: str) -> str:
    return "ideal periphery" if periphery == "ideal" else "the target's DAC/ADC"


def _pm(mean_half: tuple[float, float], signed: bool = False) -> str:
    """``mean ± half`` in %; a single seed has no interval over seeds (printed as the mean)."""
    mean, half = mean_half
    sign = "+" if signed and mean >= 0 else ""
    return f"{sign}{100 * mean:.1f}" + (f" ± {100 * half:.1f}" if half > 0 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--train-samples", type=int, default=0,
                        help="use the first N training samples (0: all)")
    parser.add_argument("--test-samples", type=int, default=0,
                        help="score the first N test samples (0: all)")
    parser.add_argument("--arch", default="lenet")
    parser.add_argument("--width", type=int, default=128, help="vgg8's first conv width")
    parser.add_argument("--epochs", type=int, default=40, help="plain training epochs")
    parser.add_argument("--lr", type=float, default=3e-3, help="plain training learning rate")
    parser.add_argument("--neft-epochs", type=int, default=15)
    parser.add_argument("--train-sigma", type=float, default=0.3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--targets", nargs="+", default=["rram1_128x128", "fefet6_128x128"])
    parser.add_argument("--methods", nargs="*", default=list(DEFAULT_METHODS),
                        help="name=mode,field=value,... (none: no method tables, with "
                        "--mechanism only the mechanism tables)")
    parser.add_argument("--reference", default="nit", help="method the Δ columns compare to")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4])
    parser.add_argument("--delta-sigmas", type=float, nargs="*", default=[0.3, 0.4])
    parser.add_argument("--periphery", nargs="+", choices=["ideal", "target"],
                        default=["ideal"])
    parser.add_argument("--mc", type=int, default=100)
    parser.add_argument("--bn-recalibrate", type=int, default=0, metavar="N",
                        help="also verify with per-chip BatchNorm re-calibration on N inputs")
    parser.add_argument("--work", type=Path, default=Path("neft-results-work"))
    parser.add_argument("--store", type=Path, help="JSON-lines store (default: WORK/runs.jsonl)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--mechanism", action="store_true",
                        help="also print the paired contrasts that isolate each mechanism "
                             "(feedback, temperature, compute, ...) over the store's records")
    args = parser.parse_args()
    args.store = args.store or args.work / "runs.jsonl"
    if not args.report_only:
        run(args)
    records = list(load_store(args.store).values())
    print(markdown(records, args))
    if args.mechanism:
        print(mechanism_table(records, args))


if __name__ == "__main__":
    main()
