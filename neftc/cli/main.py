"""The ``neftc`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from neftc import __version__
from neftc.errors import NeftcError

EPILOG = """examples:
  neftc demo                                   train, compile and verify a CNN on built-in data
  neftc compile model.pt2 --target fefet_128x128 -o out/
  neftc compile weights.pt --arch resnet18 --input-shape 3,32,32 --target rram4_256x256 -o out/
  neftc calibrate out/ --data digits            store the DAC ranges sign-off and programming use
  neftc inspect out/
  neftc verify out/ --data digits --mc 200 --sigma 0.1 --sigma 0.2
  neftc export-onnx out/ -o model.onnx
  neftc targets --json
"""

TRUST_MODEL_HELP = ("load a model file even where parts of it are code, not data: a .pt "
                    "holding a whole nn.Module; a .pt2 with pickled sample inputs, weights or "
                    "constants, symbolic shapes that are not plain expressions, compiled "
                    "(AOTInductor) code or file-reading ops. Loading it runs code from the file: "
                    "use it only for files you trust (damaged or oversized files are refused all "
                    "the same)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neftc", description="Compile trained PyTorch models onto compute-in-memory "
        "crossbar accelerators.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"neftc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    comp = sub.add_parser("compile", help="compile a model into a crossbar layout",
                          description="Trace MODEL, quantise, bit-slice and tile its weights for "
                          "the target, place the tiles, and write a layout directory.")
    comp.add_argument("model", type=Path, help="a torch.export.save archive (.pt2) or a "
                      "torch.save state_dict (.pt, with --arch)")
    _add_target_args(comp)
    comp.add_argument("-o", "--output", type=Path, default=Path("out"),
                      help="layout directory to write (default: out)")
    comp.add_argument("--arch", help="architecture of a state_dict: mlp, lenet, vgg8, resnet18, "
                      "or package.module:Class (built with no arguments)")
    comp.add_argument("--input-shape", help="one sample's shape, e.g. 1,28,28 (needed with --arch)")
    comp.add_argument("--trust-model", action="store_true", help=TRUST_MODEL_HELP)
    _add_quantisation_args(comp, training=False)
    comp.add_argument("--fold-bn", action="store_true",
                      help="fold inference BatchNorm into the preceding conv/linear "
                      "(default: BN runs in the digital periphery)")
    comp.add_argument("--placement", choices=["dataflow", "in-order"], default="dataflow",
                      help="dataflow: keep communicating tiles on nearby cores (default); "
                      "in-order: fill cores in graph order")
    comp.add_argument("--no-replicate", action="store_true",
                      help="do not copy bottleneck layers into free arrays")
    comp.add_argument("--dac-data", metavar="DATA",
                      help="after compiling, set every layer's input DAC range from DATA (as "
                      "'neftc calibrate' does; default with --neft: its --data; else none)")
    comp.add_argument("--dac-samples", type=int, default=512, metavar="N",
                      help="samples (train split, else test) that set the DAC ranges "
                      "(default 512)")
    comp.add_argument("--dump-after-each", type=Path, metavar="DIR",
                      help="write the graph after every pass to DIR")
    _add_neft_args(comp, required=False)
    comp.add_argument("--json", action="store_true", help="print the summary as JSON")
    comp.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    fin = sub.add_parser("finetune", help="NeFT fine-tuning only: a model in, a tuned .pt2 out",
                         description="Fine-tune MODEL with NeFT against the target's device "
                         "noise and save the tuned model with torch.export (feedback heads and "
                         "noise removed); compile it later, or use 'neftc compile --neft'.")
    fin.add_argument("model", type=Path, help="a .pt2, or a .pt state_dict with --arch")
    _add_target_args(fin)
    fin.add_argument("-o", "--output", type=Path, required=True, help="tuned model (.pt2)")
    fin.add_argument("--arch")
    fin.add_argument("--input-shape")
    fin.add_argument("--trust-model", action="store_true", help=TRUST_MODEL_HELP)
    _add_neft_args(fin, required=True, quantisation=True)
    fin.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    tr = sub.add_parser("train", help="train a zoo model on a data set and save it as .pt2",
                        description="Train a built-in architecture (sized from the data's input "
                        "shape and class count) with Adam and a cosine schedule; with --neft, "
                        "then fine-tune it with NeFT. Saves a torch.export archive.")
    tr.add_argument("arch", help="mlp, lenet, vgg8 or resnet18")
    tr.add_argument("--data", required=True, help="digits, an .npz, an MNIST IDX folder or a "
                    "CIFAR-10 batches folder")
    tr.add_argument("-o", "--output", type=Path, required=True, help="model file (.pt2)")
    tr.add_argument("--epochs", type=int, default=20)
    tr.add_argument("--lr", type=float, default=3e-3)
    tr.add_argument("--batch-size", type=int, default=128)
    tr.add_argument("--seed", type=int, default=0, help="randomness of the initial weights, "
                    "the batch order and NeFT's noise (default 0); never the train/test split, "
                    "which is fixed by the data")
    tr.add_argument("--device", default="cpu", help="cpu or cuda")
    tr.add_argument("--neft", choices=["ovf", "irs", "nit", "none"],
                    help="after training, fine-tune with NeFT against --target's noise")
    tr.add_argument("--neft-epochs", type=int, default=10)
    tr.add_argument("--train-sigma", type=float)
    tr.add_argument("--beta", type=float)
    tr.add_argument("--train-noise", choices=["cell", "paper"], default="cell")
    _add_quantisation_args(tr, training=True)
    _add_target_args(tr)
    tr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    insp = sub.add_parser("inspect", help="summarise a layout directory",
                          description="Validate a layout (schema and checksums) and print per "
                          "layer: name, op, matrix rows x cols, bits, slices, tiles, arrays; and "
                          "the totals.")
    insp.add_argument("layout", type=Path)
    insp.add_argument("--json", action="store_true", help="print as JSON")

    cal = sub.add_parser("calibrate", help="store the input DAC ranges in a layout",
                         description="Run the noise-free layout on the first N samples of DATA "
                         "(train split, else test), set every crossbar layer's input DAC range "
                         "(max-abs of its input activations) and write the layout again, "
                         "re-signed. 'neftc verify' and 'neftc program' then use these ranges.")
    cal.add_argument("layout", type=Path)
    cal.add_argument("--data", required=True, help="digits (built-in), an .npz, an MNIST IDX "
                     "folder or a CIFAR-10 batches folder")
    cal.add_argument("--samples", type=int, default=512, metavar="N",
                     help="samples that set the ranges (default 512, as neftc verify)")
    cal.add_argument("-o", "--output", type=Path, help="write the calibrated layout here "
                     "(default: rewrite LAYOUT in place)")

    onx = sub.add_parser("export-onnx", help="write a layout's deployed network as ONNX",
                         description="Write the deployed network of a layout (dequantised "
                         "weights q*scale, the digital ops) as a standard ONNX model (opset 17) "
                         "that passes onnx.checker.")
    onx.add_argument("layout", type=Path)
    onx.add_argument("-o", "--output", type=Path, required=True, help="model file (.onnx)")

    prog = sub.add_parser("program", help="write programming files (target level per cell)",
                          description="Write, per physical array, the target level of every "
                          "cell by (row, column) with the conductance levels and the write-verify "
                          "tolerance: arrays.npz and/or one CSV per array, plus manifest.json "
                          "(see docs/programming.md).")
    prog.add_argument("layout", type=Path)
    prog.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    prog.add_argument("--format", choices=["npz", "csv", "both"], default="both")

    dif = sub.add_parser("diff", help="cells whose level changes between two layouts",
                         description="Compare two layouts of the same model (e.g. before and "
                         "after a re-fine-tune) cell by cell: count of changed cells per layer "
                         "and array, and the estimated re-programming energy.")
    dif.add_argument("old", type=Path)
    dif.add_argument("new", type=Path)
    dif.add_argument("--cells", action="store_true", help="list the changed cells")
    dif.add_argument("--cells-limit", type=int, default=1_000_000, metavar="N",
                     help="list at most N changed cells (default 1,000,000); the output says "
                     "when the list is truncated")
    dif.add_argument("--json", action="store_true")

    tg = sub.add_parser("targets", help="list the built-in targets",
                        description="List the built-in target presets, or print one (or all) "
                        "as JSON with every field and its source.")
    tg.add_argument("tag", nargs="?", help="show one target (a tag or a spec file), with --set")
    tg.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    tg.add_argument("--json", action="store_true", help="print as JSON")

    ver = sub.add_parser("verify", help="Monte-Carlo accuracy sign-off of a layout",
                         description="Run the layout on simulated chip instances (each cell "
                         "programmed once with the target's device variation) over a test set and "
                         "report the accuracy distribution per sigma.")
    ver.add_argument("layout", type=Path)
    ver.add_argument("--data", default="digits", help="digits (built-in), an .npz (x,y or "
                     "x_test,y_test; fed as-is), an MNIST IDX folder or a CIFAR-10 batches folder")
    ver.add_argument("--mc", type=int, default=100, metavar="N",
                     help="chip instances per sigma (default 100)")
    ver.add_argument("--sigma", type=float, action="append", metavar="S",
                     help="device variation relative to the cell range; repeat for a sweep "
                     "(default: the target's noise.sigma_rel)")
    ver.add_argument("--seed", type=int, default=0, help="randomness of the simulated chips: "
                     "chip instance i of seed K is always the same chip (default 0); never the "
                     "train/test split, which is fixed by the data")
    ver.add_argument("--noise", choices=["cell", "paper", "off"], default="cell",
                     help="cell: the cell-level device model (default); paper: the NeFT reference "
                     "weight-level formula (needs --ideal-periphery); off: no variation")
    ver.add_argument("--ideal-periphery", action="store_true",
                     help="no DAC/ADC quantisation (default: the target's DAC and ADC)")
    ver.add_argument("--no-faults", action="store_true", help="ignore the target's stuck-at rates")
    ver.add_argument("--calib-samples", type=int, default=512,
                     help="samples (train split, else test) that set the DAC ranges")
    ver.add_argument("--batch-size", type=int, default=1024)
    ver.add_argument("--chips-per-pass", type=int, default=1, metavar="K",
                     help="with --ideal-periphery, evaluate K chip instances in one batched pass "
                     "(same results; meant for accelerators: on 2 CPU cores one chip per pass "
                     "is fastest)")
    ver.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where the "
                     "network runs; the noise is drawn on the CPU, so a seed gives the same "
                     "chips on either")
    ver.add_argument("--json", action="store_true", help="print the report as JSON")
    ver.add_argument("--no-report", action="store_true", help="do not save verify.json and "
                     "update report.html in the layout directory")
    ver.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    demo = sub.add_parser("demo", help="train, compile with and without NeFT, and verify a "
                          "CNN on built-in data",
                          description="Train a LeNet-style CNN on the built-in digits data (no "
                          "download), save it with torch.export, compile it for the target "
                          "without fine-tuning and with NeFT NIT, OVF and IRS fine-tuning, verify "
                          "each by Monte Carlo on simulated chips, and print one comparison table "
                          "(also written to report.md).")
    _add_target_args(demo)
    demo.add_argument("-o", "--output", type=Path, default=Path("neftc-demo"),
                      help="directory for model.pt2, the layouts, report.md and demo.json "
                      "(default: neftc-demo)")
    demo.add_argument("--epochs", type=int, default=40, help="training epochs (default 40)")
    demo.add_argument("--neft-epochs", type=int, default=15,
                      help="NeFT fine-tuning epochs (default 15)")
    demo.add_argument("--train-sigma", type=float, default=0.1,
                      help="device variation NeFT trains against (default 0.1)")
    demo.add_argument("--sigma", type=float, action="append", metavar="S",
                      help="sigmas to verify at (default 0.05, 0.1, 0.15)")
    demo.add_argument("--mc", type=int, default=30, metavar="N",
                      help="chip instances per sigma and method (default 30)")
    demo.add_argument("--seed", type=int, default=0, help="randomness of training, "
                      "fine-tuning and the simulated chips (default 0); the digits train/test "
                      "split is fixed")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser


def _add_target_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="fefet_128x128",
                        help="built-in tag (see 'neftc targets') or a YAML/JSON spec file "
                        "(default: fefet_128x128)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a target field, e.g. "
                        "--set noise.sigma_rel=0.15 (repeatable)")


def _add_neft_args(parser: argparse.ArgumentParser, required: bool,
                   quantisation: bool = False) -> None:
    """The NeFT options; with ``quantisation``, also the chip's quantisation options the training
    noise is computed with (``compile`` has them already: there they set both)."""
    group = parser.add_argument_group("NeFT fine-tuning (Negative Feedback Training)")
    group.add_argument("--neft", choices=["ovf", "irs", "nit", "none"], required=required,
                       help="ovf: oriented variational forwards; irs: snapshot heads; nit: "
                       "noise-injection baseline; none: plain fine-tuning"
                       + ("" if required else " (default: no fine-tuning)"))
    group.add_argument("--data", default="digits", help="training data: digits (default), an "
                       ".npz, an MNIST IDX folder or a CIFAR-10 batches folder")
    group.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs (default 10)")
    group.add_argument("--train-sigma", type=float,
                       help="device variation to train against (default: target's sigma_rel)")
    group.add_argument("--beta", type=float, help="feedback strength (default: the paper's "
                       "VGG-8/MNIST value, OVF 1e-3, IRS 1e-2)")
    group.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    group.add_argument("--batch-size", type=int, default=128, help="default 128 (the paper's)")
    group.add_argument("--seed", type=int, default=0, help="randomness of fine-tuning (batch "
                       "order, injected noise; default 0), so it is repeatable; never the "
                       "train/test split, which is fixed by the data")
    group.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    group.add_argument("--train-noise", choices=["cell", "paper"], default="cell",
                       help="cell: exact per-weight equivalent of the chip's cell noise "
                       "(default); paper: the NeFT reference formula")
    group.add_argument("--irs-taps", default="3", help="IRS: number of evenly spaced taps, or "
                       "comma-separated node names (default 3)")
    if quantisation:
        _add_quantisation_args(group, training=True)


def _add_quantisation_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                           training: bool) -> None:
    """``--per-channel`` and ``--calibration``: how the chip quantises the weights (compile), or
    which chip's noise NeFT trains against (finetune, train --neft)."""
    then = "; compile the tuned model with the same option" if training else ""
    parser.add_argument("--per-channel", action="store_true",
                        help=("train against the noise of a chip quantised with "
                              if training else "") + "one quantisation scale per output "
                        f"channel (default: one per layer){then}")
    parser.add_argument("--calibration", choices=["max-abs", "percentile"], default="max-abs",
                        help="weight range calibration (default: max-abs; percentile clips at "
                        f"the 99.99th percentile of |W|){then}")


def _neft_settings(args: argparse.Namespace):  # -> NeftSettings | None
    from neftc.bounds import MAX_IRS_TAPS
    from neftc.neft.pipeline import NeftSettings

    if not getattr(args, "neft", None):
        return None
    taps: int | tuple[str, ...]
    if args.irs_taps.strip().isdecimal():  # a count (checked by validate), else node names
        if len(args.irs_taps.strip()) > 6:
            raise NeftcError(f"--irs-taps must be an integer >= 1 and <= {MAX_IRS_TAPS} or node "
                             f"names, got {args.irs_taps.strip()[:20]}...")
        taps = int(args.irs_taps)
    else:
        taps = tuple(t.strip() for t in args.irs_taps.split(",") if t.strip())
    settings = NeftSettings(mode=args.neft, data=args.data, epochs=args.epochs,
                            sigma=args.train_sigma, beta=args.beta, lr=args.lr,
                            batch_size=args.batch_size, seed=args.seed, device=args.device,
                            noise=args.train_noise, taps=taps, per_channel=args.per_channel,
                            calibration=args.calibration)
    settings.validate()
    return settings


def _compile_settings(args: argparse.Namespace):  # -> CompileSettings
    """``compile``'s settings; with --neft, its fine-tuning trains against the noise of the
    chip quantised with the same --per-channel and --calibration (``neft_settings()``)."""
    from neftc.driver.compiler import CompileSettings

    return CompileSettings(per_channel=args.per_channel, calibration=args.calibration,
                           fold_bn=args.fold_bn, dump_after_each=args.dump_after_each,
                           neft=_neft_settings(args), placement=args.placement,
                           replicate=not args.no_replicate,
                           progress=not args.quiet and not args.json)


def _cmd_compile(args: argparse.Namespace) -> int:
    from neftc.driver.compiler import compile_model
    from neftc.flow.summary import format_summary, layout_summary
    from neftc.frontend.loader import parse_input_shape
    from neftc.targets import resolve_target

    target = resolve_target(args.target, args.overrides)
    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    if args.dac_samples < 1:
        raise NeftcError(f"--dac-samples must be at least 1, got {args.dac_samples}")
    from dataclasses import replace

    settings = replace(_compile_settings(args), target_overrides=tuple(args.overrides),
                       dac_data=args.dac_data or (args.data if args.neft else None),
                       dac_samples=args.dac_samples)
    start = time.perf_counter()

    def on_pass(name: str, modified: bool) -> None:
        if not args.quiet and not args.json:
            print(f"  [{time.perf_counter() - start:6.2f} s] {name}"
                  f"{'' if modified else ' (no change)'}", file=sys.stderr)

    result = compile_model(args.model, target, args.output, arch=args.arch, input_shape=shape,
                           trust_model=args.trust_model, settings=settings, on_pass=on_pass)
    summary = layout_summary(result.doc)
    if args.json:
        print(json.dumps({"output": str(args.output), **summary}, indent=1))
    else:
        print(format_summary(summary), end="")
        print(f"\nwrote {args.output}/ in {time.perf_counter() - start:.1f} s")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from neftc.flow.summary import format_summary, layout_summary
    from neftc.format.reader import load_layout

    summary = layout_summary(load_layout(args.layout).doc)
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary), end="\n"
          if args.json else "")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from neftc.flow.calibration import calibrate_layout, format_calibration

    if args.samples < 1:
        raise NeftcError(f"--samples must be at least 1, got {args.samples}")
    result = calibrate_layout(args.layout, args.data, args.samples, out_dir=args.output)
    print(format_calibration(result), end="")
    return 0


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from neftc.flow.onnx_export import export_onnx
    from neftc.format.reader import load_layout

    model = export_onnx(load_layout(args.layout), args.output)
    print(f"wrote {args.output}: {len(model.graph.node)} ONNX nodes, opset "
          f"{model.opset_import[0].version}, {len(model.graph.initializer)} initializers")
    return 0


def _cmd_program(args: argparse.Namespace) -> int:
    from neftc.flow.programming import write_programming_files
    from neftc.format.reader import load_layout

    formats = ("npz", "csv") if args.format == "both" else (args.format,)
    manifest = write_programming_files(load_layout(args.layout), args.output, formats)
    cells = sum(a["programmed_cells"] for a in manifest["arrays"])
    print(f"wrote {args.output}/: {len(manifest['arrays'])} arrays, {cells:,} programmed cells "
          f"({', '.join(formats)}), write-verify tolerance "
          f"+-{manifest['write_verify_tolerance_us']:.3g} uS")
    calibration = manifest["dac_calibration"]
    if calibration is not None:
        print(f"input DACs: {len(manifest['dac'])} layers, ranges from {calibration['data']} "
              f"({calibration['samples']} samples, {calibration['method']}) in dac.csv")
    else:
        print(f"note: layout {args.layout} has no DAC calibration, so the programming files "
              "hold no input DAC ranges; store the ones sign-off uses with 'neftc calibrate "
              f"{args.layout} --data DATA' and run 'neftc program' again")
    return 0


def _cmd_diff(args: argparse.Namespace) -> int:
    from neftc.flow.programming import diff_layouts
    from neftc.format.reader import load_layout

    if args.cells_limit < 0:
        raise NeftcError(f"--cells-limit must be >= 0, got {args.cells_limit}")
    result = diff_layouts(load_layout(args.old), load_layout(args.new),
                          keep_cells=args.cells_limit if args.cells else 0)
    if args.json:
        print(json.dumps(result.as_dict(args.cells), indent=1))
        return 0
    print(f"{result.changed_cells:,} of {result.compared_cells:,} programmed cells change level; "
          f"estimated re-programming energy {result.energy_pj / 1e6:.3g} uJ")
    for layer, count in result.per_layer.items():
        if count:
            print(f"  {layer}: {count:,} cells")
    if args.cells:
        if result.cells_truncated:
            print(result.truncation_note())
        print("core,array,row,col,old,new")
        for cell in result.cells:
            print(",".join(str(v) for v in cell))
    return 0


def _cmd_targets(args: argparse.Namespace) -> int:
    from neftc.targets import builtin_targets, resolve_target

    if args.tag:
        spec = resolve_target(args.tag, args.overrides)
        print(json.dumps(spec.model_dump(mode="json"), indent=1) if args.json else
              _target_text(spec))
        return 0
    targets = builtin_targets()
    if args.json:
        print(json.dumps({tag: t.model_dump(mode="json") for tag, t in targets.items()}, indent=1))
        return 0
    print(f"{'tag':<16} {'array':>9} {'cell':>6} {'weight':>7} {'encoding':<12} {'s':>4} "
          f"{'sigma':>6} {'arrays':>7}  description")
    for tag, t in targets.items():
        print(f"{tag:<16} {t.array.rows:>4}x{t.array.cols:<4} {t.cell.bits:>4} b {t.weight.bits:>5} b"
              f" {t.weight.sign_encoding:<12} {t.noise.state_ratio:>4g} {t.noise.sigma_rel:>6g} "
              f"{t.chip.arrays:>7}  {t.description}")
    print("\n'neftc targets TAG' shows every field with its source; --json prints all as JSON.")
    return 0


def _target_text(spec: object) -> str:
    from neftc.targets.spec import TargetSpec

    assert isinstance(spec, TargetSpec)
    data = spec.model_dump(mode="json")
    lines = [f"{spec.name}: {spec.description}"]
    for section, values in data.items():
        if not isinstance(values, dict) or section == "sources":
            continue
        for key, value in values.items():
            path = f"{section}.{key}"
            source = spec.sources.get(path, "")
            lines.append(f"  {path:<36} {value!s:<14} {source}")
    return "\n".join(lines)


def _cmd_demo(args: argparse.Namespace) -> int:
    from neftc.driver.demo import DemoConfig, format_demo, run_demo
    from neftc.targets import resolve_target

    target = resolve_target(args.target, args.overrides)
    if min(args.epochs, args.neft_epochs, args.mc) < 1:
        raise NeftcError("--epochs, --neft-epochs and --mc must be at least 1")
    if (args.sigma and min(args.sigma) < 0) or args.train_sigma < 0:
        raise NeftcError("sigmas must be >= 0")
    config = DemoConfig(epochs=args.epochs, neft_epochs=args.neft_epochs,
                        train_sigma=args.train_sigma,
                        sigmas=tuple(args.sigma) if args.sigma else DemoConfig.sigmas,
                        trials=args.mc, seed=args.seed)
    record = run_demo(args.output, target, config, progress=not args.quiet)
    print(format_demo(record, args.output), end="")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from neftc.flow.verify import VerifySettings, format_verify, run_verify

    if args.mc < 1:
        raise NeftcError(f"--mc must be at least 1, got {args.mc}")
    if args.sigma and any(s < 0 for s in args.sigma):
        raise NeftcError(f"--sigma must be >= 0, got {min(args.sigma)}")
    if args.batch_size < 1 or args.calib_samples < 1 or args.chips_per_pass < 1:
        raise NeftcError("--batch-size, --calib-samples and --chips-per-pass must be at least 1")
    settings = VerifySettings(sigmas=tuple(args.sigma) if args.sigma else None, trials=args.mc,
                              seed=args.seed, noise=args.noise,
                              ideal_periphery=args.ideal_periphery, faults=not args.no_faults,
                              batch_size=args.batch_size, calib_samples=args.calib_samples,
                              chips_per_pass=args.chips_per_pass, device=args.device)
    from neftc.flow.report import layout_identity

    verified = layout_identity(args.layout)  # the layout this sign-off is about
    report = run_verify(args.layout, args.data, settings,
                        progress=not args.quiet and not args.json)
    if not args.no_report:
        from neftc.flow.report import write_report
        from neftc.format.reader import load_layout

        # verify.json and report.html together or neither, and only into the layout verified.
        write_report(args.layout, load_layout(args.layout).doc, report, expect=verified)
    print(json.dumps(report, indent=1) if args.json else format_verify(report), end="\n"
          if args.json else "")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from neftc.driver.neft_jobs import finetune_file
    from neftc.frontend.loader import parse_input_shape
    from neftc.targets import resolve_target

    target = resolve_target(args.target, args.overrides)
    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    if args.output.is_dir():
        raise NeftcError(f"output '{args.output}' is a directory; give a file name such as "
                         "tuned.pt2")
    log = finetune_file(args.model, target, _neft_settings(args), args.output, arch=args.arch,
                        input_shape=shape, trust_model=args.trust_model,
                        progress=not args.quiet)
    quant = " ".join((["--per-channel"] if args.per_channel else [])
                     + (["--calibration", args.calibration]
                        if args.calibration != "max-abs" else []))
    print(f"fine-tuned with NeFT {args.neft} for {log.epochs} epochs ({log.steps} steps, "
          f"{log.seconds:.1f} s, final loss {log.losses[-1]:.4f}); wrote {args.output}"
          + (f"\ncompile it with the quantisation it was tuned for: {quant}" if quant else ""))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from neftc.driver.neft_jobs import train_zoo_model
    from neftc.neft.pipeline import NeftSettings
    from neftc.targets import resolve_target

    target = resolve_target(args.target, args.overrides)
    neft = None
    if args.neft:
        neft = NeftSettings(mode=args.neft, data=args.data, epochs=args.neft_epochs,
                            sigma=args.train_sigma, beta=args.beta, seed=args.seed,
                            device=args.device, noise=args.train_noise,
                            per_channel=args.per_channel, calibration=args.calibration)
        neft.validate()
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        raise NeftcError("--epochs and --batch-size must be at least 1 and --lr positive")
    summary = train_zoo_model(args.arch, args.data, args.output, epochs=args.epochs, lr=args.lr,
                              batch_size=args.batch_size, seed=args.seed, device=args.device,
                              neft=neft, target=target, progress=not args.quiet)
    print(summary)
    return 0


#: The numeric flags (dests) checked before any command runs, with the bounds the settings use
#: (neftc.flow.verify, neftc.neft.pipeline, neftc.targets.spec).
_NUMERIC_FLAGS = ("sigma", "train_sigma", "beta", "lr", "seed", "mc", "chips_per_pass",
                  "batch_size", "calib_samples", "samples", "dac_samples", "epochs",
                  "neft_epochs")


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse a numeric flag that is NaN, infinite or out of range before any work is done,
    with one line naming the flag, the allowed range and the value (argparse accepts 'nan')."""
    given = {dest: getattr(args, dest) for dest in _NUMERIC_FLAGS
             if getattr(args, dest, None) is not None}
    if not given:
        return
    from neftc.bounds import MAX_BATCH_SIZE, MAX_BETA, MAX_EPOCHS, MAX_LR, MAX_SEED, check_number
    from neftc.flow.verify import MAX_CHIPS_PER_PASS, MAX_SAMPLES, MAX_TRIALS
    from neftc.targets.spec import SIGMA_REL_MAX

    bounds = {"sigma": (0, SIGMA_REL_MAX, False), "train_sigma": (0, SIGMA_REL_MAX, False),
              "beta": (0, MAX_BETA, False), "lr": (0, MAX_LR, False),
              "seed": (0, MAX_SEED, True), "mc": (1, MAX_TRIALS, True),
              "chips_per_pass": (1, MAX_CHIPS_PER_PASS, True),
              "batch_size": (1, MAX_BATCH_SIZE, True), "calib_samples": (1, MAX_SAMPLES, True),
              "samples": (1, MAX_SAMPLES, True), "dac_samples": (1, MAX_SAMPLES, True),
              "epochs": (1, MAX_EPOCHS, True), "neft_epochs": (1, MAX_EPOCHS, True)}
    for dest, value in given.items():
        low, high, integer = bounds[dest]
        flag = "--" + dest.replace("_", "-")
        for item in value if isinstance(value, list) else [value]:
            check_number(flag, item, low, high, integer=integer, low_open=dest == "lr")


COMMANDS = {"calibrate": _cmd_calibrate, "export-onnx": _cmd_export_onnx,
            "program": _cmd_program, "diff": _cmd_diff, "compile": _cmd_compile,
            "verify": _cmd_verify, "finetune": _cmd_finetune, "train": _cmd_train,
            "inspect": _cmd_inspect, "targets": _cmd_targets, "demo": _cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _check_flags(args)
        return COMMANDS[args.command](args)
    except NeftcError as exc:
        print(f"neftc {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("neftc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output went away (`neftc ... | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141


if __name__ == "__main__":
    sys.exit(main())
