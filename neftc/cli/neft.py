"""``neftc finetune`` (NeFT fine-tuning only) and ``neftc train`` (a zoo model, then optionally
NeFT): models in, ``.pt2`` archives out. Both run as several processes (``--workers K``, or
under torchrun) with DistributedDataParallel; rank 0 prints and writes the file."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from neftc.cli.common import add_model_args, add_target_args
from neftc.cli.neft_options import add_neft_options, neft_settings
from neftc.cli.workers import check_workers, launch
from neftc.errors import NeftcError, OutputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    _add_finetune_parser(sub)
    _add_train_parser(sub)


def _add_finetune_parser(sub: argparse._SubParsersAction) -> None:
    fin = sub.add_parser("finetune", help="NeFT fine-tuning only: a model in, a tuned .pt2 out",
                         description="Fine-tune MODEL with NeFT against the target's device "
                         "noise and save the tuned model with torch.export (feedback heads and "
                         "noise removed); compile it later, or use 'neftc compile --neft'.")
    fin.add_argument("model", type=Path, help="a .pt2, or a .pt state_dict with --arch")
    add_target_args(fin)
    fin.add_argument("-o", "--output", type=Path, required=True,
                     help="tuned model: a new .pt2 file (an existing file is never overwritten)")
    add_model_args(fin)
    add_neft_options(fin, required=True, old_names=True)
    fin.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    fin.set_defaults(run=run_finetune)


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("train", help="train a zoo model on a data set and save it as .pt2",
                        description="Train a built-in architecture (sized from the data's input "
                        "shape and class count) with Adam and a cosine schedule; with --neft, "
                        "the new model is trained with NeFT from the start (for --epochs; "
                        "measured better than fine-tuning at equal epochs, docs/results.md), or "
                        "with --fine-tune trained plainly and then fine-tuned with NeFT. Saves a "
                        "torch.export archive. Token data (integer ids [N, T]) trains 'bow', the "
                        "zoo's text model.")
    tr.add_argument("arch", help="mlp, lenet, vgg8, resnet18 (images) or bow (token ids)")
    tr.add_argument("-o", "--output", type=Path, required=True, help="model file (.pt2)")
    tr.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    tr.add_argument("--lr", type=float, default=3e-3,
                    help="training Adam learning rate (default 3e-3)")
    tr.add_argument("--batch-size", type=int, default=128,
                    help="training batch size (default 128)")
    tr.add_argument("--from-scratch", action="store_true",
                    help="with --neft (the default for every mode but auto): train the new "
                    "model with NeFT's noise and feedback from the start, for --epochs at --lr "
                    "and --batch-size (the paper's protocol); BatchNorm learns its statistics "
                    "under the noise (as --bn-stats train)")
    tr.add_argument("--fine-tune", action="store_true",
                    help="with --neft: train plainly for --epochs, then fine-tune with NeFT for "
                    "--neft-epochs (what --neft auto does)")
    add_target_args(tr)
    add_neft_options(tr, required=False)
    tr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(run=run_train)


def run_finetune(args: argparse.Namespace) -> int:
    from neftc.distributed import process_group
    from neftc.driver.neft_jobs import finetune_file
    from neftc.frontend.loader import parse_input_shape
    from neftc.neft.pipeline import loss_summary
    from neftc.passes.quantize import Quantize
    from neftc.targets import resolve_target

    target = resolve_target(args.target, args.overrides)
    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    _check_model_output(args.output)
    settings = neft_settings(args)
    check_workers(args)
    if args.workers > 1:
        return launch(args.argv, args.workers, "finetune", args.threads)
    with process_group(args.device, args.dist_timeout) as group:
        settings = replace(settings, device=group.device(settings.device))  # a GPU per process
        result = finetune_file(args.model, target, settings, args.output, arch=args.arch,
                               input_shape=shape, trust_model=args.trust_model,
                               progress=not args.quiet, group=group)
    if not group.is_main:
        return 0
    log = result.log
    chip = Quantize()  # the default chip: say how this one differs
    quant = " ".join((["--per-channel"] if args.per_channel != chip.per_channel else [])
                     + (["--calibration", args.calibration]
                        if args.calibration != chip.calibration else []))
    for note in log.notes:
        print(note)
    mode = log.mode or args.neft
    print(f"fine-tuned with NeFT {mode} for {log.epochs} epochs ({log.steps} steps, "
          f"{log.seconds:.1f} s; {loss_summary(mode, log)}): test accuracy "
          f"{100 * result.accuracy_before:.2f} % before, {100 * result.accuracy_after:.2f} % "
          f"after (float model, no noise); wrote {args.output}"
          + (f"\ncompile it with the quantisation it was tuned for: {quant}" if quant else ""))
    return 0


def _check_model_output(output: Path) -> None:
    """Refuse a ``finetune -o`` before the run: a new ``.pt2`` file in an existing folder
    (a torch.export archive; nothing is overwritten, as compile and program refuse to)."""
    if output.is_dir():
        raise OutputError(f"output '{output}' is a directory; give a file name such as "
                          f"{output / 'tuned.pt2'}")
    if output.suffix != ".pt2":
        raise OutputError(f"output '{output}': the tuned model is a torch.export archive; give "
                          f"a .pt2 name, e.g. {output.with_suffix('.pt2')}")
    if output.exists() or output.is_symlink():
        raise OutputError(f"output '{output}' already exists and is never overwritten; remove "
                          f"it or choose another name")
    if not output.parent.is_dir():
        raise OutputError(f"output '{output}': folder '{output.parent}' does not exist; create "
                          f"it first")


def run_train(args: argparse.Namespace) -> int:
    from neftc.distributed import process_group
    from neftc.driver.neft_jobs import train_zoo_model
    from neftc.targets import resolve_target

    target = resolve_target(args.target, args.overrides)
    neft = neft_settings(args)
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        raise NeftcError("--epochs and --batch-size must be at least 1 and --lr positive")
    if (args.from_scratch or args.fine_tune) and neft is None:
        flag = "--from-scratch" if args.from_scratch else "--fine-tune"
        raise NeftcError(f"{flag} says how to train with NeFT; give --neft MODE (ovf, irs, "
                         f"ovf+irs, nit or none) too, or leave {flag} out")
    if args.from_scratch and args.fine_tune:
        raise NeftcError("--from-scratch and --fine-tune exclude each other; give one")
    from_scratch = neft is not None and not args.fine_tune and (
        args.from_scratch or neft.mode != "auto")
    check_workers(args)
    if args.workers > 1:
        return launch(args.argv, args.workers, "train", args.threads)
    with process_group(args.device, args.dist_timeout) as group:
        device = group.device(args.device)  # a GPU per process
        if neft is not None:
            neft = replace(neft, device=device)
        summary = train_zoo_model(args.arch, args.data, args.output, epochs=args.epochs,
                                  lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                                  device=device, neft=neft, target=target,
                                  progress=not args.quiet, from_scratch=from_scratch,
                                  group=group)
    if group.is_main:
        print(summary)
    return 0
