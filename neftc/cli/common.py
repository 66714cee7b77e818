"""What several command families share: the target options, the model-trust help, and the check
of every numeric flag (finite, in range) before any command runs."""

from __future__ import annotations

import argparse

TRUST_MODEL_HELP = ("load a model file even where parts of it are code, not data: a .pt "
                    "holding a whole nn.Module; a .pt2 with pickled sample inputs, weights or "
                    "constants, symbolic shapes that are not plain expressions, compiled "
                    "(AOTInductor) code or file-reading ops. Loading it runs code from the file: "
                    "use it only for files you trust (damaged or oversized files are refused all "
                    "the same)")


def add_target_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="fefet_128x128",
                        help="built-in tag (see 'neftc targets') or a YAML/JSON spec file "
                        "(default: fefet_128x128)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a target field, e.g. "
                        "--set noise.sigma_rel=0.15 (repeatable)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """How to read MODEL (``compile``, ``finetune``): the architecture of a state_dict, one
    sample's shape, and whether to trust a file that holds code."""
    parser.add_argument("--arch", help="architecture of a state_dict: mlp, lenet, vgg8, "
                        "resnet18, bow (token ids; --input-shape T), or package.module:Class "
                        "(built with no arguments)")
    parser.add_argument("--input-shape", help="one sample's shape, e.g. 1,28,28 (needed with "
                        "--arch)")
    parser.add_argument("--trust-model", action="store_true", help=TRUST_MODEL_HELP)


#: The numeric flags (dests) checked before any command runs, with the bounds the settings use
#: (neftc.flow.verify, neftc.neft.pipeline, neftc.targets.spec).
_NUMERIC_FLAGS = ("sigma", "train_sigma", "beta", "lr", "neft_lr", "seed", "mc",
                  "chips_per_pass", "batch_size", "neft_batch_size", "calib_samples", "samples",
                  "dac_samples", "epochs", "neft_epochs", "temperature")


def check_flags(args: argparse.Namespace) -> None:
    """Refuse a numeric flag that is NaN, infinite or out of range before any work is done,
    with one line naming the flag (as typed, where an old name was used: ``args.flag_names``),
    the allowed range and the value (argparse accepts 'nan')."""
    given = {dest: getattr(args, dest) for dest in _NUMERIC_FLAGS
             if getattr(args, dest, None) is not None}
    if not given:
        return
    from neftc.bounds import (
        MAX_BATCH_SIZE,
        MAX_BETA,
        MAX_EPOCHS,
        MAX_LR,
        MAX_SEED,
        MAX_TEMPERATURE,
        check_beta,
        check_number,
    )
    from neftc.flow.verify import MAX_CHIPS_PER_PASS, MAX_SAMPLES, MAX_TRIALS
    from neftc.targets.spec import SIGMA_REL_MAX

    names = getattr(args, "flag_names", {})
    bounds = {"sigma": (0, SIGMA_REL_MAX, False), "train_sigma": (0, SIGMA_REL_MAX, False),
              "beta": (0, MAX_BETA, False), "lr": (0, MAX_LR, False),
              "neft_lr": (0, MAX_LR, False), "seed": (0, MAX_SEED, True),
              "mc": (1, MAX_TRIALS, True), "chips_per_pass": (1, MAX_CHIPS_PER_PASS, True),
              "batch_size": (1, MAX_BATCH_SIZE, True),
              "neft_batch_size": (1, MAX_BATCH_SIZE, True),
              "calib_samples": (1, MAX_SAMPLES, True), "samples": (1, MAX_SAMPLES, True),
              "dac_samples": (1, MAX_SAMPLES, True), "epochs": (1, MAX_EPOCHS, True),
              "neft_epochs": (1, MAX_EPOCHS, True), "temperature": (0, MAX_TEMPERATURE, False)}
    for dest, value in given.items():
        low, high, integer = bounds[dest]
        flag = names.get(dest) or "--" + dest.replace("_", "-")
        for item in value if isinstance(value, list) else [value]:
            if dest == "beta":
                check_beta(flag, item)  # the same bounds, and what 0 means
            check_number(flag, item, low, high, integer=integer,
                         low_open=dest.endswith("lr") or dest == "temperature")


_SECONDS = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "y": 365.25 * 86400.0}


def duration_s(text: str) -> float:
    """A time span as seconds: ``3600``, ``90s``, ``5min``, ``1h``, ``2d``, ``1y`` (argparse
    type; a bad value is a usage error naming the forms)."""
    value = text.strip()
    unit = next((u for u in sorted(_SECONDS, key=len, reverse=True) if value.endswith(u)), "")
    number = value[:len(value) - len(unit)].strip() if unit else value
    try:
        seconds = float(number) * _SECONDS[unit or "s"]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a time: give seconds (3600) or a number with s, min, h, d or y "
            "(1h, 2d, 10y)") from None
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"'{text}': the time must be more than 0")
    return seconds
