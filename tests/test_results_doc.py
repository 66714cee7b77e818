"""docs/results.md's Fashion-MNIST tables are what ``benchmarks/neft_results.py --report-only``
renders from the committed stores (docs/results-data/): every row the script prints for each
section below appears verbatim in the page. A number edited by hand, or a store changed without
re-rendering the page, fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STORES = ROOT / "docs" / "results-data"
ACCEPTANCE = ["rram1_128x128", "fefet6_128x128"]
OTHER = ["rram4_128x128", "fefet2_128x128"]
LENET = ["--store", str(STORES / "fashion-lenet.jsonl"), "--neft-epochs", "5"]
VGG = ["--store", str(STORES / "fashion-vgg8-grid.jsonl"), "--arch", "vgg8", "--width", "8",
       "--neft-epochs", "5"]
BN = ["--store", str(STORES / "fashion-vgg8.jsonl"), "--arch", "vgg8", "--width", "8",
      "--neft-epochs", "5"]
DAC = ["--periphery", "target", "--sigmas", "0.3", "0.4"]
MECHANISM = ["--periphery", "ideal", "target", "--mechanism", "--methods"]  # no method tables

#: (section, arguments): the commands docs/results.md's tables were rendered with.
SECTIONS = [
    ("lenet, acceptance device models", [*LENET, "--targets", *ACCEPTANCE, "--methods", "none",
                                         "nit-const", "nit", "nit-T4", "nit-x4", "nit-lr3", "ovf",
                                         "ovf-b0", "irs", "irs-b0", "ovf+irs", "recipe",
                                         "recipe-lr3", "recipe-lr3-x4", "recipe-irs",
                                         "recipe-ramp", "auto", "scratch-nit", "scratch-nit4"]),
    ("lenet, against nit-const", [*LENET, "--targets", *ACCEPTANCE, "--reference", "nit-const",
                                  "--methods", "nit-const", "nit", "nit-T4", "recipe"]),
    ("lenet, acceptance at 20 epochs", [*LENET, "--targets", *ACCEPTANCE, "--reference",
                                        "nit-x4", "--sigmas", "0.3", "0.4", "--methods", "none",
                                        "nit-x4", "recipe-lr3-x4"]),
    ("lenet, acceptance at 5 epochs", [*LENET, "--targets", *ACCEPTANCE, "--sigmas", "0.3",
                                       "0.4", "--methods", "none", "nit", "recipe-lr3"]),
    ("lenet, other device models", [*LENET, "--targets", *OTHER, "--methods", "none",
                                    "nit-const", "nit", "nit-T4", "ovf", "ovf-b0", "irs",
                                    "irs-b0", "recipe"]),
    ("lenet, DAC/ADC", [*LENET, "--targets", *ACCEPTANCE, *OTHER, *DAC, "--methods", "none",
                        "nit", "nit-T4", "ovf", "ovf-b0", "irs", "recipe-lr3"]),
    ("lenet, mechanisms", [*LENET, "--targets", *ACCEPTANCE, *OTHER, *MECHANISM]),
    ("vgg8, acceptance device models", [*VGG, "--targets", "fefet6_128x128", "rram1_128x128",
                                        "--methods", "none", "nit", "nit-T4", "ovf", "ovf-b0",
                                        "irs", "irs-b0", "recipe"]),
    ("vgg8, other device models", [*VGG, "--targets", "fefet2_128x128", "rram4_128x128",
                                   "--methods", "none", "nit", "nit-T4", "ovf", "ovf-b0", "irs",
                                   "irs-b0"]),
    ("vgg8, DAC/ADC", [*VGG, "--targets", "fefet6_128x128", "rram1_128x128", *DAC, "--methods",
                       "none", "nit", "nit-T4", "ovf", "ovf-b0", "irs", "recipe"]),
    ("vgg8, mechanisms", [*VGG, "--targets", "fefet6_128x128", "rram1_128x128",
                          "fefet2_128x128", "rram4_128x128", *MECHANISM]),
    ("digits", ["--store", str(STORES / "digits-lenet.jsonl"), "--neft-epochs", "15",
                "--targets", *ACCEPTANCE, "--methods", "none", "nit-const", "nit", "ovf", "irs",
                "recipe"]),
    ("vgg8, BatchNorm", [*BN, "--targets", "fefet6_128x128", "--sigmas", "0.2", "0.3", "0.4",
                         "--methods", "none", "nit", "nit-bntrain", "--mechanism"]),
]


@pytest.fixture(scope="module")
def page() -> str:
    return (ROOT / "docs" / "results.md").read_text()


@pytest.mark.parametrize("arguments", [a for _, a in SECTIONS], ids=[s for s, _ in SECTIONS])
def test_results_page_holds_the_rendered_rows(arguments: list[str], page: str) -> None:
    rendered = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "neft_results.py"), "--report-only",
         *arguments], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    rows = [line for line in rendered.splitlines() if line.startswith("| ")
            and not line.startswith(("| method |", "| isolates |"))]
    assert rows, rendered  # the store holds this section
    missing = [row for row in rows if row not in page]
    assert not missing, "\n".join(missing)
