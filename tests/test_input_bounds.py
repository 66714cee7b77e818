"""Specs, data and flags are bounded (issue 10, part 3): every hostile value ends in one typed,
one-line error before any work, never a hang, a traceback or a silently wrong number.

Each group has failing inputs and a valid control next to the limit. CLI cases go through
``neftc.cli.main.main`` and check: exit 2, exactly one ``neftc <command>: error:`` line on stderr,
no traceback, nothing on stdout.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import neftc.datasets.files as data_files
import neftc.datasets.idx as idx_format
from neftc.cli.main import main
from neftc.datasets.base import MAX_CLASSES, Split
from neftc.datasets.digits import load_digits
from neftc.datasets.spec import load_dataset
from neftc.driver.compiler import compile_module
from neftc.errors import DataError, NeftcError, TargetError
from neftc.flow.verify import VerifySettings
from neftc.frontend.zoo import build
from neftc.neft.finetune import finetune
from neftc.neft.pipeline import MAX_SEED, NeftSettings
from neftc.neft.train import check_weights, train_classifier
from neftc.runtime.montecarlo import _chip_groups
from neftc.targets import resolve_target
from neftc.targets.presets import preset_dicts


def clean_error(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI; assert exit 2 with one ``neftc <cmd>: error:`` line holding ``needles``."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and out == "", (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"neftc {argv[0]}: error: "), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


def preset(**changes: object) -> dict:
    """The fefet_128x128 preset as a plain dict, with ``section.field`` values replaced."""
    raw = preset_dicts()["fefet_128x128"]
    for key, value in changes.items():
        section, field = key.split("__")
        raw[section][field] = value
    return raw


# ---- target specs: field bounds ------------------------------------------------------------


@pytest.mark.parametrize("override, needles", [
    ("cell.bits=1000000000000000000000000000000", ("'cell.bits'", "<= 8", "1000000000000")),
    ("cell.bits=0", ("'cell.bits'", ">= 1")),
    ("weight.bits=17", ("'weight.bits'", "<= 16")),
    ("array.rows=4097", ("'array.rows'", "<= 4096", "4097")),
    ("array.cols=0", ("'array.cols'", ">= 1")),
    ("chip.cores=100000000000", ("'chip.cores'", "<= 1024")),
    ("chip.arrays_per_core=2000000", ("'chip.arrays_per_core'", "<= 1048576")),
    ("noise.sigma_rel=.nan", ("'noise.sigma_rel'", "finite", "nan")),
    ("noise.sigma_rel=.inf", ("'noise.sigma_rel'", "finite", "inf")),
    ("noise.sigma_rel=-0.1", ("'noise.sigma_rel'", ">= 0", "-0.1")),
    ("noise.state_ratio=0.5", ("'noise.state_ratio'", ">= 1", "0.5")),
    ("faults.stuck_at_min_rate=1.5", ("'faults.stuck_at_min_rate'", "<= 1")),
    ("cost.adc_energy_pj=-1", ("'cost.adc_energy_pj'", ">= 0")),
    ("cost.array_area_um2=1e400", ("'cost.array_area_um2'", "finite", "1e400")),
    ("cell.g_max_us=.inf", ("'cell.g_max_us'", "finite")),
    ("cell.g_min_us=20", ("cell.g_max_us (10) must be larger than cell.g_min_us (20)",)),
    ("periphery.adc_bits=17", ("'periphery.adc_bits'", "<= 16")),
    ("periphery.adcs_per_array=0", ("'periphery.adcs_per_array'", ">= 1")),
])
def test_spec_field_out_of_range_is_one_line(capsys, override: str, needles: tuple) -> None:
    clean_error(capsys, ["targets", "fefet_128x128", "--set", override], *needles)


def test_spec_cross_field_bounds(capsys) -> None:
    clean_error(capsys, ["targets", "fefet_128x128", "--set", "faults.stuck_at_min_rate=0.6",
                         "--set", "faults.stuck_at_max_rate=0.5"],
                "stuck_at_min_rate + faults.stuck_at_max_rate must be at most 1", "0.6 + 0.5")
    clean_error(capsys, ["targets", "fefet_128x128", "--set", "chip.cores=1024",
                         "--set", "chip.arrays_per_core=1025"],
                "1024 x 1025 = 1049600 arrays", "at most 1048576")


def test_spec_limits_themselves_are_accepted() -> None:
    """Valid control: every bound is inclusive."""
    spec = resolve_target("fefet_128x128", [
        "cell.bits=8", "weight.bits=16", "array.rows=4096", "array.cols=1", "chip.cores=1024",
        "chip.arrays_per_core=1024", "noise.sigma_rel=2", "noise.state_ratio=1",
        "faults.stuck_at_min_rate=0.5", "faults.stuck_at_max_rate=0.5", "cost.adc_energy_pj=0"])
    assert spec.chip.arrays == 2**20 and spec.cell.bits == 8 and spec.noise.sigma_rel == 2.0


def test_every_preset_is_inside_the_bounds() -> None:
    for tag in preset_dicts():
        assert resolve_target(tag).chip.arrays <= 2**20


# ---- target specs: files and --set values ----------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_huge_cell_bits_in_a_spec_file_is_refused(capsys, tmp_path: Path) -> None:
    raw = preset(cell__bits=10**30)
    path = write(tmp_path / "chip.yaml", yaml.safe_dump(raw))
    clean_error(capsys, ["targets", str(path)], "'cell.bits'", "<= 8")
    path = write(tmp_path / "chip.json", json.dumps(raw))
    clean_error(capsys, ["targets", str(path)], "'cell.bits'", "<= 8")
    # the literal the tester used, as YAML text
    text = yaml.safe_dump(preset()).replace("bits: 2", "bits: 1000000000000000000000000000000")
    with pytest.raises(TargetError, match=r"'cell\.bits'"):
        resolve_target(str(write(tmp_path / "literal.yaml", text)))


def test_yaml_alias_bomb_is_refused_at_the_first_alias(capsys, tmp_path: Path) -> None:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 12):  # 9**12 strings if expanded
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9) + "]")
    path = write(tmp_path / "bomb.yaml", "\n".join(lines) + "\n")
    clean_error(capsys, ["targets", str(path)], "bomb.yaml", "YAML alias '*a'",
                "not allowed")
    # an alias in a --set value is refused the same way
    clean_error(capsys, ["targets", "fefet_128x128", "--set", "name=*a"], "YAML alias")


def test_spec_file_without_aliases_still_loads(tmp_path: Path) -> None:
    """Valid control: a plain YAML spec (as yaml.safe_dump writes it) round-trips."""
    spec = resolve_target("rram4_256x256")
    path = write(tmp_path / "chip.yaml", yaml.safe_dump(spec.model_dump(mode="json")))
    assert resolve_target(str(path)) == spec


@pytest.mark.parametrize("name, text", [
    ("deep.json", "[" * 100_000 + "]" * 100_000),
    ("deep.yaml", "[" * 10_000 + "]" * 10_000),
    ("deep2.yaml", "".join("  " * i + f"k{i}:\n" for i in range(40)) + "  " * 40 + "v: 1\n"),
])
def test_deep_nesting_is_refused(capsys, tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path / name, text)
    clean_error(capsys, ["targets", str(path)], name, "nested more than 16 levels")


@pytest.mark.parametrize("name, text", [
    ("long.json", '{"name": 1' + "1" * 5000 + "}"),
    ("long.yaml", "name: 1" + "1" * 5000 + "\n"),
    ("sexagesimal.yaml", "name: " + ":".join(["1"] * 20_000) + "\n"),
])
def test_huge_integer_literals_are_refused(capsys, tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path / name, text)
    clean_error(capsys, ["targets", str(path)], name, "an integer of", "at most 40")


def test_huge_integer_in_a_set_value_is_refused(capsys) -> None:
    clean_error(capsys, ["targets", "fefet_128x128", "--set", "cell.bits=" + "9" * 5000],
                "bad override", "an integer of 5000 characters")


def test_set_into_a_non_mapping_is_refused(capsys, tmp_path: Path) -> None:
    raw = preset()
    raw["cell"] = 3
    path = write(tmp_path / "flat.yaml", yaml.safe_dump(raw))
    clean_error(capsys, ["targets", str(path), "--set", "cell.bits=2"], "'cell'",
                "not a mapping")


def test_nan_in_a_json_spec_names_the_field(capsys, tmp_path: Path) -> None:
    text = json.dumps(preset()).replace('"sigma_rel": 0.1', '"sigma_rel": NaN')
    clean_error(capsys, ["targets", str(write(tmp_path / "nan.json", text))],
                "'noise.sigma_rel'", "finite", "nan")


def test_spec_files_must_be_small_regular_files(capsys, tmp_path: Path) -> None:
    clean_error(capsys, ["targets", str(tmp_path)], "is a folder")
    big = write(tmp_path / "big.yaml", "# padding\n" * 30_000)
    clean_error(capsys, ["targets", str(big)], "larger than 256 KiB")
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo.yaml"
        os.mkfifo(fifo)  # reading it would block forever
        clean_error(capsys, ["targets", str(fifo)], "not a regular file")
    clean_error(capsys, ["targets", "x" * 5000], "unknown target")
    clean_error(capsys, ["targets", "a" * 5000 + ".yaml"], "cannot be read")


# ---- data ----------------------------------------------------------------------------------


class CountingReader:
    """A file wrapper that records how many bytes were asked for in one read."""

    def __init__(self, fh, reads: list[int]) -> None:
        self._fh, self._reads = fh, reads

    def read(self, n: int = -1) -> bytes:
        self._reads.append(n)
        return self._fh.read(n)

    def __getattr__(self, name: str):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def idx(dims: list[int], data: bytes = b"") -> bytes:
    return b"\0\0\x08" + bytes([len(dims)]) + struct.pack(f">{len(dims)}i", *dims) + data


def mnist_folder(folder: Path, images: bytes, gz: bool = False) -> Path:
    folder.mkdir(exist_ok=True)
    name = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    (folder / name).write_bytes(gzip.compress(images) if gz else images)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx([4], bytes([0, 1, 2, 3])))
    return folder


def test_idx_header_of_5_8_gib_in_a_small_file_is_refused_unread(tmp_path, monkeypatch) -> None:
    # 7.4 M images of 28x28 declared (5.8 GiB), 1.5 MB of data present
    folder = mnist_folder(tmp_path / "m", idx([7_400_000, 28, 28], bytes(1_500_000)))
    reads: list[int] = []
    opener = idx_format.open_regular
    monkeypatch.setattr(idx_format, "open_regular",
                        lambda path, what: CountingReader(opener(path, what), reads))
    with pytest.raises(DataError, match=r"truncated: its header says \[7400000, 28, 28\] = "
                       r"5801600000 bytes of data but it has 1500000"):
        load_dataset(str(folder))
    assert reads and max(reads) <= 16  # only the header was read: nothing sized by it

    gz_folder = mnist_folder(tmp_path / "g", idx([7_400_000, 28, 28], bytes(1_500_000)), gz=True)
    with pytest.raises(DataError, match="more than a gzip file of"):
        load_dataset(str(gz_folder))


def test_idx_over_the_memory_budget_is_refused_before_reading(tmp_path, monkeypatch) -> None:
    images = np.zeros((4, 28, 28), np.uint8).tobytes()
    folder = mnist_folder(tmp_path / "m", idx([4, 28, 28], images))
    assert len(load_dataset(str(folder)).test) == 4  # valid control
    monkeypatch.setattr(data_files, "MAX_DATA_BYTES", 10_000)
    with pytest.raises(DataError, match="more than neftc's data budget"):
        load_dataset(str(folder))


def test_data_files_must_be_regular_files(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    (folder / "t10k-images-idx3-ubyte").mkdir(parents=True)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx([4], bytes(4)))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte' is a folder"):
        load_dataset(str(folder))
    if hasattr(os, "mkfifo"):
        (folder / "t10k-images-idx3-ubyte").rmdir()
        os.mkfifo(folder / "t10k-images-idx3-ubyte")
        with pytest.raises(DataError, match="not a regular file"):
            load_dataset(str(folder))
        os.mkfifo(tmp_path / "data.npz")
        with pytest.raises(DataError, match="neither a regular file nor a folder"):
            load_dataset(str(tmp_path / "data.npz"))
    with pytest.raises(DataError, match="NUL byte"):
        load_dataset("x\0.npz")


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_npz_declared_shape_is_checked_against_the_member(capsys, tmp_path: Path) -> None:
    lie = npy_bytes(np.zeros((4, 3))).replace(b"(4, 3)", b"(400000000, 3)")
    with zipfile.ZipFile(tmp_path / "lie.npz", "w") as archive:
        archive.writestr("x.npy", lie)
        archive.writestr("y.npy", npy_bytes(np.zeros(4, np.int64)))
    clean_error(capsys, ["train", "mlp", "--data", str(tmp_path / "lie.npz"), "-o",
                         str(tmp_path / "m.pt2")],
                "lie.npz", "declares shape [400000000, 3]", "but holds")


def test_npz_over_the_memory_budget_is_refused_before_loading(tmp_path, monkeypatch) -> None:
    np.savez(tmp_path / "ok.npz", x=np.zeros((40, 10), np.float32), y=np.zeros(40, np.int64))
    assert len(load_dataset(str(tmp_path / "ok.npz")).test) == 10  # valid control
    monkeypatch.setattr(data_files, "MAX_DATA_BYTES", 1000)
    monkeypatch.setattr(np.lib.format, "read_array",
                        lambda *a, **k: pytest.fail("an array was loaded"))
    with pytest.raises(DataError, match=r"x \[40, 10\], y \[40\] needing about"):
        load_dataset(str(tmp_path / "ok.npz"))


@pytest.mark.parametrize("arrays, needles", [
    ({"x": np.array([[np.inf, 1.0]]), "y": np.zeros(1, int)}, ("'x'", "NaN or infinite")),
    ({"x": np.array([[1e39, 1.0]]), "y": np.zeros(1, int)}, ("NaN or infinite",)),
    ({"x": np.zeros((3, 2)), "y": np.array([0, 1, MAX_CLASSES])}, ("labels up to 100000",)),
    ({"x": np.zeros((3, 2)), "y": np.array([0, 1, 2**63], np.uint64)}, ("below 100000",)),
    ({"x": np.zeros((3, 2)), "y": np.array([0.0, 1.0, 2.0])}, ("integer class",)),
])
def test_npz_values_are_bounded(capsys, tmp_path: Path, arrays: dict, needles: tuple) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    clean_error(capsys, ["train", "mlp", "--data", str(tmp_path / "bad.npz"), "-o",
                         str(tmp_path / "m.pt2")], "bad.npz", *needles)


def test_largest_label_is_accepted(tmp_path: Path) -> None:
    np.savez(tmp_path / "ok.npz", x=np.zeros((3, 2)), y=np.array([0, 1, MAX_CLASSES - 1]))
    assert load_dataset(str(tmp_path / "ok.npz")).num_classes == MAX_CLASSES


def test_cifar_pickle_cannot_allocate_or_expand(tmp_path: Path) -> None:
    # _reconstruct(ndarray, (2**24,), 'b'): an array the file holds no data for
    forged = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01"
              b"J\x00\x00\x00\x01\x85q\x02U\x01bq\x03\x87q\x04Rq\x05.")
    (tmp_path / "test_batch").write_bytes(forged)
    with pytest.raises(DataError, match=r"shape \(16777216,\) built without data"):
        load_dataset(str(tmp_path))
    # labels as nested shared lists (2**40 elements if expanded) are refused, not expanded
    nested: list = [0]
    for _ in range(40):
        nested = [nested, nested]
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": nested}, fh)
    with pytest.raises(DataError, match="integer class labels"):
        load_dataset(str(tmp_path))
    with open(tmp_path / "test_batch", "wb") as fh:  # valid control
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 4]}, fh)
    assert load_dataset(str(tmp_path)).num_classes == 5


# ---- flags ---------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, needle", [
    (["--sigma", "nan"], "--sigma must be a finite number >= 0 and <= 2, got nan"),
    (["--sigma", "inf"], "--sigma must be a finite number >= 0 and <= 2, got inf"),
    (["--sigma", "0.1", "--sigma", "-0.1"], "--sigma must be a finite number >= 0"),
    (["--seed", "-1"], "--seed must be an integer >= 0 and <= 9223372036854775807, got -1"),
    (["--seed", str(2**63)], "--seed must be an integer >= 0"),
    (["--mc", "0"], "--mc must be an integer >= 1 and <= 1000000, got 0"),
    (["--mc", "1000000000"], "--mc must be an integer >= 1 and <= 1000000, got 1000000000"),
    (["--chips-per-pass", "0"], "--chips-per-pass must be an integer >= 1"),
    (["--chips-per-pass", "100000"], "--chips-per-pass must be an integer >= 1 and <= 1024"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--batch-size", "10000000"], "--batch-size must be an integer >= 1 and <= 65536"),
    (["--calib-samples", "0"], "--calib-samples must be an integer >= 1"),
    (["--bn-recalibrate", "0"], "--bn-recalibrate must be an integer >= 1 and <= 16384, got 0"),
    (["--bn-recalibrate", "20000"], "--bn-recalibrate must be an integer >= 1 and <= 16384"),
])
def test_verify_flags_are_bounded(capsys, tmp_path: Path, argv: list[str], needle: str) -> None:
    # checked before the layout is even looked at (it does not exist)
    clean_error(capsys, ["verify", str(tmp_path / "none"), *argv], needle)


@pytest.mark.parametrize("argv, needle", [
    (["--lr", "nan"], "--lr must be a finite number > 0 and <= 10, got nan"),
    (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--lr=-inf"], "--lr must be a finite number > 0"),
    (["--beta", "nan"], "--beta must be a finite number >= 0 and <= 100, got nan"),
    (["--beta", "-1"], "--beta must be >= 0, got -1.0: the loss already subtracts"),
    (["--beta", "-1"], "--beta 0 is the no-feedback control"),
    (["--temperature", "nan"], "--temperature must be a finite number > 0 and <= 1000"),
    (["--temperature", "-4"], "--temperature must be a finite number > 0"),
    (["--train-sigma", "nan"], "--train-sigma must be a finite number >= 0 and <= 2"),
    (["--train-sigma", "-0.5"], "--train-sigma must be a finite number >= 0"),
    (["--epochs", "0"], "--epochs must be an integer >= 1"),
    (["--epochs", "1000000"], "--epochs must be an integer >= 1 and <= 10000"),
    (["--neft-epochs", "0"], "--neft-epochs must be an integer >= 1"),
    (["--seed", "-1"], "--seed must be an integer >= 0"),
    (["--batch-size", "-3"], "--batch-size must be an integer >= 1"),
])
def test_train_flags_are_bounded(capsys, tmp_path: Path, argv: list[str], needle: str) -> None:
    out = tmp_path / "m.pt2"
    clean_error(capsys, ["train", "mlp", "--data", "digits", "-o", str(out), *argv], needle)
    assert not out.exists()


@pytest.mark.parametrize("argv, needle", [
    (["compile", "model.pt2", "--neft", "ovf", "--lr", "nan"], "--lr must be a finite number"),
    (["compile", "model.pt2", "--neft", "irs", "--irs-taps", "99999999999"], "--irs-taps"),
    (["compile", "model.pt2", "--dac-samples", "0"], "--dac-samples must be an integer >= 1"),
    (["finetune", "model.pt2", "--neft", "nit", "-o", "t.pt2", "--train-sigma", "inf"],
     "--train-sigma must be a finite number"),
    (["calibrate", "layout", "--data", "digits", "--samples", "0"], "--samples must be"),
    (["demo", "--mc", "0"], "--mc must be an integer >= 1"),
    (["demo", "--sigma", "nan"], "--sigma must be a finite number"),
    (["demo", "--seed", "-1"], "--seed must be an integer >= 0"),
])
def test_other_commands_flags_are_bounded(capsys, argv: list[str], needle: str) -> None:
    clean_error(capsys, argv, needle)


def test_malformed_numbers_are_argparse_errors(capsys) -> None:
    """'1e9' is not an int: argparse's own usage error (exit 2), never a traceback."""
    with pytest.raises(SystemExit) as info:
        main(["verify", "layout", "--mc", "1e9"])
    assert info.value.code == 2
    assert "invalid int value: '1e9'" in capsys.readouterr().err


def test_settings_validate_the_same_bounds() -> None:
    """The API path: the settings refuse what the flags refuse."""
    with pytest.raises(NeftcError, match="--sigma must be a finite number"):
        VerifySettings(sigmas=(float("nan"),))
    with pytest.raises(NeftcError, match="--seed must be an integer >= 0"):
        VerifySettings(seed=-1)
    with pytest.raises(NeftcError, match="--mc must be an integer"):
        VerifySettings(trials=10**9)
    with pytest.raises(NeftcError, match="--mc must be an integer"):
        VerifySettings(trials=True)  # type: ignore[arg-type]
    assert VerifySettings(sigmas=(np.float64(0.1),), trials=np.int64(3)).trials == 3
    for bad in (dict(lr=float("nan")), dict(lr=0.0), dict(beta=float("inf")),
                dict(sigma=-1.0), dict(seed=-1), dict(epochs=0), dict(taps=0)):
        with pytest.raises(NeftcError, match="must be"):
            NeftSettings(mode="irs", data="digits", **bad).validate()  # type: ignore[arg-type]
    NeftSettings(mode="irs", data="digits", lr=10.0, beta=0.0, sigma=2.0,
                 seed=MAX_SEED).validate()


def test_monte_carlo_chip_groups_are_lazy() -> None:
    """Memory O(1) in --mc beyond the rank's chip list: the groups are produced one by one from
    a lazy range (a rank's share of 10**12 chips is a range, never a list)."""
    groups = _chip_groups(range(10**12)[1::2], 4)
    assert next(groups) == [1, 3, 5, 7] and next(groups) == [9, 11, 13, 15]
    assert list(_chip_groups(range(5), 2)) == [[0, 1], [2, 3], [4]]


@pytest.fixture(scope="module")
def tiny_layout(tmp_path_factory) -> Path:
    data = load_digits()
    torch.manual_seed(0)
    model = train_classifier(build("mlp", (1, 8, 8), 10).train(), data.train, epochs=1,
                             progress=False)
    out = tmp_path_factory.mktemp("bounds") / "layout"
    compile_module(model, data.test.x[:1], resolve_target("fefet_128x128"), out)
    return out


def test_verify_at_the_limits_runs(capsys, tiny_layout: Path) -> None:
    """Valid control: the largest seed, sigma 0 and 2, one chip."""
    assert main(["verify", str(tiny_layout), "--mc", "1", "--sigma", "0", "--sigma", "2",
                 "--seed", str(MAX_SEED), "--chips-per-pass", "1024", "--ideal-periphery",
                 "--batch-size", "65536",
                 "--no-report", "-q", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["seed"] == MAX_SEED and [r["sigma"] for r in report["results"]] == [0.0, 2.0]
    assert all(math.isfinite(r["mc"]["mean"]) for r in report["results"])


# ---- training that diverges ----------------------------------------------------------------


def huge_split(n: int = 32) -> Split:
    """Finite float32 inputs so large that any linear layer overflows: the loss is NaN."""
    return Split(torch.full((n, 1, 8, 8), 3e38), torch.arange(n) % 10)


def test_training_that_diverges_names_the_step(capsys, tmp_path: Path) -> None:
    with pytest.raises(NeftcError, match=r"training diverged at epoch 1/2 step 1/2 \(loss nan\); "
                       "lower --lr"):
        train_classifier(build("mlp", (1, 8, 8), 10), huge_split(), epochs=2, batch_size=16,
                         progress=False)
    np.savez(tmp_path / "huge.npz", x=np.full((64, 4), 3e38, np.float32), y=np.arange(64) % 2)
    out = tmp_path / "m.pt2"
    clean_error(capsys, ["train", "mlp", "--data", str(tmp_path / "huge.npz"), "-o", str(out),
                         "--epochs", "1", "-q"], "training diverged at epoch 1/1 step 1/1")
    assert not out.exists()


def test_finetune_that_diverges_names_the_step() -> None:
    gm = torch.fx.symbolic_trace(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    with pytest.raises(NeftcError, match=r"NeFT nit fine-tuning diverged at epoch 1/1 step 1/4"):
        finetune(gm, huge_split(), sigma=0.1, epochs=1, batch_size=8, progress=False)


def test_non_finite_weights_after_training_are_named() -> None:
    model = nn.Linear(3, 2)
    check_weights(model)  # valid control
    with torch.no_grad():
        model.bias[1] = float("nan")
    with pytest.raises(NeftcError, match="parameter 'bias' holds NaN or infinite values"):
        check_weights(model)


def test_sane_training_is_untouched() -> None:
    """Valid control: digits train normally, every weight finite."""
    data = load_digits()
    torch.manual_seed(0)
    model = train_classifier(build("mlp", (1, 8, 8), 10).train(), data.train, epochs=1,
                             progress=False)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
