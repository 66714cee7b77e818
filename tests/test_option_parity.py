"""``compile --neft``, ``finetune`` and ``train --neft`` take the same NeFT options (flag names,
defaults, help, choices, types: read from the argparse parsers) and turn the same NeFT argv into
equal ``NeftSettings``. The comparison is shown to fail on a parser whose option differs."""

from __future__ import annotations

import argparse

import pytest

from neftc.cli.compile import compile_settings
from neftc.cli.main import build_parser
from neftc.cli.neft_options import (
    DATA_GROUP,
    NEFT_CHOICES,
    NEFT_GROUP,
    PROCESSES_GROUP,
    QUANTISATION_GROUP,
    add_neft_options,
    neft_settings,
)
from neftc.neft.pipeline import AUTO, NEFT_MODES, NeftSettings
from neftc.passes.quantize import Quantize

COMMANDS = ("compile", "finetune", "train")
GROUPS = (DATA_GROUP, NEFT_GROUP, QUANTISATION_GROUP, PROCESSES_GROUP)
#: Each command's argv up to the NeFT options (its positionals and required non-NeFT flags).
PREFIX = {"compile": ["compile", "m.pt2"], "finetune": ["finetune", "m.pt2", "-o", "t.pt2"],
          "train": ["train", "mlp", "-o", "m.pt2"]}
#: Every NeFT option set away from its default.
NEFT_ARGV = ["--neft", "irs", "--data", "digits", "--seed", "7", "--device", "cpu",
             "--neft-epochs", "3", "--neft-lr", "0.002", "--neft-batch-size", "64",
             "--train-sigma", "0.12", "--beta", "0.05", "--train-noise", "paper",
             "--irs-taps", "2", "--per-channel", "--calibration", "percentile",
             "--temperature", "2.5", "--sigma-schedule", "ramp", "--bn-stats", "train"]


def command_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: sub.choices[name] for name in COMMANDS}


def neft_options(parser: argparse.ArgumentParser) -> dict[str, tuple]:
    """{flag: (group, dest, default, help, choices, type, metavar, action)} of every option in
    the NeFT groups. ``required`` is left out: ``finetune`` requires --neft, the others do not."""
    options = {}
    for group in parser._action_groups:
        if group.title not in GROUPS:
            continue
        for action in group._group_actions:
            record = (group.title, action.dest, action.default, action.help,
                      tuple(action.choices or ()), action.type, action.metavar,
                      type(action).__name__)
            options.update({flag: record for flag in action.option_strings})
    return options


def differences(parsers: dict[str, argparse.ArgumentParser]) -> list[str]:
    """One line per NeFT flag that is missing from a command or declared differently."""
    options = {name: neft_options(parser) for name, parser in parsers.items()}
    flags = sorted(set().union(*options.values()))
    problems = []
    for flag in flags:
        records = {name: opts.get(flag) for name, opts in options.items()}
        if len(set(records.values())) > 1:
            problems.append(f"{flag}: {records}")
    return problems


def test_neft_options_are_declared_identically() -> None:
    parsers = command_parsers(build_parser())
    for name, parser in parsers.items():
        titles = {record[0] for record in neft_options(parser).values()}
        assert titles == set(GROUPS), name
    assert differences(parsers) == []
    flags = set(neft_options(parsers["compile"]))
    assert {"--neft", "--neft-epochs", "--neft-lr", "--neft-batch-size", "--data", "--seed",
            "--per-channel", "--calibration", "--irs-taps", "--temperature", "--sigma-schedule",
            "--bn-stats", "--workers", "--dist-timeout"} <= flags


def _modified_train_parser(dest: str, field: str, value: object) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neftc train")
    add_neft_options(parser, required=False)
    action = next(a for a in parser._actions if a.dest == dest)
    setattr(action, field, value)
    return parser


@pytest.mark.parametrize("dest, field, value, flag", [
    ("neft_epochs", "default", 20, "--neft-epochs"),
    ("neft_lr", "help", "learning rate", "--neft-lr"),
    ("calibration", "choices", ["max-abs"], "--calibration"),
    ("seed", "type", float, "--seed"),
])
def test_parity_check_fails_on_a_differing_option(dest: str, field: str, value: object,
                                                  flag: str) -> None:
    parsers = command_parsers(build_parser())
    parsers["train"] = _modified_train_parser(dest, field, value)
    problems = differences(parsers)
    assert len(problems) == 1 and problems[0].startswith(f"{flag}: ")


def test_parity_check_fails_on_a_missing_option() -> None:
    parsers = command_parsers(build_parser())
    parser = argparse.ArgumentParser(prog="neftc train")
    add_neft_options(parser, required=False)
    group = next(g for g in parser._action_groups if g.title == NEFT_GROUP)
    group._group_actions[:] = [a for a in group._group_actions if a.dest != "irs_taps"]
    parsers["train"] = parser
    assert [p.split(":")[0] for p in differences(parsers)] == ["--irs-taps"]


def settings_of(command: str, argv: list[str],
                parser: argparse.ArgumentParser | None = None) -> NeftSettings:
    args = (parser or build_parser()).parse_args([*PREFIX[command], *argv])
    settings = neft_settings(args)
    assert isinstance(settings, NeftSettings)
    return settings


def test_same_argv_gives_equal_settings() -> None:
    settings = {command: settings_of(command, NEFT_ARGV) for command in COMMANDS}
    expected = NeftSettings(mode="irs", data="digits", seed=7, device="cpu", epochs=3, lr=0.002,
                            batch_size=64, sigma=0.12, beta=0.05, noise="paper", taps=2,
                            per_channel=True, calibration="percentile", temperature=2.5,
                            sigma_schedule="ramp", bn_stats="train")
    assert settings == {command: expected for command in COMMANDS}
    # compile hands the very same settings to the compiler.
    args = build_parser().parse_args([*PREFIX["compile"], *NEFT_ARGV])
    assert compile_settings(args).neft == expected
    # The comparison can fail: one value away gives other settings.
    assert settings_of("train", [*NEFT_ARGV, "--seed", "8"]) != expected


def test_defaults_are_those_of_neft_settings() -> None:
    """Without NeFT values, every command builds NeftSettings' own defaults (they are written
    in the CLI so that --help imports no torch), and trains for the quantize pass's default chip,
    which the help names."""
    assert (*NEFT_MODES, AUTO) == NEFT_CHOICES
    for command in COMMANDS:
        settings = settings_of(command, ["--neft", "nit"])
        chip = Quantize()
        assert settings == NeftSettings(mode="nit", data="digits", per_channel=chip.per_channel,
                                        calibration=chip.calibration)
        assert settings.chip_quantize() == chip
    help_text = " ".join(command_parsers(build_parser())["finetune"].format_help().split())
    assert f"(default: {Quantize().calibration};" in help_text
    assert f"at the {Quantize().percentile:g}th percentile" in help_text
    assert Quantize().per_channel is False and "(default: one per layer)" in help_text
    # ... and this check sees a default that differs.
    parser = argparse.ArgumentParser()
    parser.add_argument("cmd")
    parser.add_argument("model")
    parser.add_argument("-o")
    add_neft_options(parser, required=False)
    next(a for a in parser._actions if a.dest == "neft_batch_size").default = 64
    assert settings_of("finetune", ["--neft", "nit"], parser).batch_size == 64


def test_old_names_are_hidden_aliases_of_compile_and_finetune() -> None:
    """--epochs, --lr and --batch-size still set the NeFT values of compile and finetune (the
    tests and the fuzz harness use them), are not in --help, and stay train's own training
    options."""
    old = ["--neft", "ovf", "--epochs", "4", "--lr", "0.01", "--batch-size", "32"]
    new = ["--neft", "ovf", "--neft-epochs", "4", "--neft-lr", "0.01", "--neft-batch-size", "32"]
    for command in ("compile", "finetune"):
        assert settings_of(command, old) == settings_of(command, new)
        parser = command_parsers(build_parser())[command]
        assert "--epochs" not in parser.format_help()
    args = build_parser().parse_args([*PREFIX["train"], *old])
    assert (args.epochs, args.lr, args.batch_size) == (4, 0.01, 32)
    tuned, default = neft_settings(args), NeftSettings(mode="ovf", data="digits")
    assert tuned is not None and tuned == settings_of("train", ["--neft", "ovf"])
    assert (tuned.epochs, tuned.lr, tuned.batch_size) == (default.epochs, default.lr,
                                                          default.batch_size) != (4, 0.01, 32)
