"""A golden of ``neftc --help`` and of every command's ``--help`` (tests/golden/help/), at a fixed
width of 100 columns, so that a change of the CLI shows up as a reviewed diff of these files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
from golden_files import UPDATE, check_golden, regenerate_command

from neftc.cli.main import build_parser, main

GOLDEN = Path(__file__).parent / "golden" / "help"
REGENERATE = regenerate_command("tests/test_cli_help.py")
#: argparse's layout changes between Python minor versions; the goldens were written with this one.
PYTHON = (GOLDEN / "PYTHON").read_text().strip()


def commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def help_text(monkeypatch, capsys, argv: list[str]) -> str:
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


@pytest.mark.skipif(f"{sys.version_info[0]}.{sys.version_info[1]}" != PYTHON and not UPDATE,
                    reason=f"the help goldens are argparse's layout of Python {PYTHON}")
@pytest.mark.parametrize("command", ["neftc", *commands()])
def test_help_golden(monkeypatch, capsys, command: str) -> None:
    text = help_text(monkeypatch, capsys, [] if command == "neftc" else [command])
    if UPDATE:
        (GOLDEN / "PYTHON").write_text(f"{sys.version_info[0]}.{sys.version_info[1]}\n")
    shown = "neftc --help" if command == "neftc" else f"neftc {command} --help"
    check_golden(GOLDEN / f"{command}.txt", text, f"'{shown}'", "tests/test_cli_help.py")


def test_no_stale_goldens() -> None:
    expected = {f"{name}.txt" for name in ["neftc", *commands()]} | {"PYTHON"}
    assert {p.name for p in GOLDEN.iterdir()} == expected, f"regenerate: {REGENERATE}"


def test_help_width_is_fixed(monkeypatch, capsys) -> None:
    """COLUMNS sets the width: no help line is longer than 100 columns, and a narrow terminal
    would wrap differently (so the goldens do depend on the fixed width, not on luck)."""
    wide = help_text(monkeypatch, capsys, ["compile"])
    assert max(len(line) for line in wide.splitlines()) <= 100
    monkeypatch.setenv("COLUMNS", "60")
    with pytest.raises(SystemExit):
        main(["compile", "--help"])
    assert capsys.readouterr().out != wide
