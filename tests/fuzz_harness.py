"""The fuzz harness: hostile inputs through the real command line, checked against one contract.

Not a test file (pytest does not collect it): ``tests/test_fuzz.py`` (the short budget, run by
``.ci/run``) and ``scripts/fuzz.py`` (the long budget) import it.

The contract (issue 10, part 5), checked by :func:`run_cli` for every command run:

* the command ends by itself within the timeout (it runs in its own process group under a
  wall-clock limit, a 4 GiB address-space limit and a 256 MiB file-size limit), and is not killed
  by a signal (a negative exit code: a crash, or one of those limits);
* it exits 0 with valid output (the case's check: JSON on stdout, the ``-o`` output present), or
  exits 2 with exactly one line ``neftc <command>: error: ...`` on stderr, the last line, with
  nothing else there but argparse's usage block (commands run with ``-q`` where they have it, so
  no progress lines are expected); a failed command leaves no ``-o`` output behind;
* no ``Traceback`` on stdout or stderr;
* no payload marker: the hostile inputs that try to run code (pickles whose ``__reduce__``
  creates a file, graph ops that create files) all aim at a file in the case's ``sentinel/``
  folder, which must stay empty;
* no file written outside the ``-o`` path and the process's own ``TMPDIR``: the whole case folder
  (inputs, the working directory, ``HOME``) is snapshotted before and after (names, sizes,
  modification times), and so are the ``.pth`` files of the interpreter's site-packages (where a
  planted file would run code at the next Python start);
* a case that is certainly bad input (``expect="error"``) must not exit 0 (accepted silently).

Mutants are built from valid seeds (:func:`build_seeds`: a LeNet layout for the built-in digits
shape 1x8x8, its ``.pt2`` archive, a target spec, an ``.npz`` and an MNIST IDX folder) by
deterministic functions ``(seeds, rng, work) -> Case``, one per kind, grouped by category in
:data:`MUTANTS`; :func:`make_case` builds one from ``(category, kind, seed)``, so every case is
reproducible from those three values.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib
import importlib.util
import io
import json
import math
import os
import pickle
import random
import resource
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

#: Address-space limit of a command (bytes): a command that allocates without bound fails
#: (MemoryError, or a clean error) instead of taking the machine down.
MEMORY_LIMIT = 4 * 2**30
#: File-size limit of a command (bytes): nothing it legitimately writes comes near this.
FILE_SIZE_LIMIT = 256 * 2**20
#: How much of stdout/stderr is kept for the checks and the report.
_KEEP_OUTPUT = 2 * 2**20


# ============================================================================= the contract


@dataclass(frozen=True)
class Outcome:
    """What one command run did, and whether it kept the contract."""

    args: tuple[str, ...]
    cwd: Path
    returncode: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool
    violation: str | None  # one line; None when the contract holds

    @property
    def ok(self) -> bool:
        return self.violation is None

    @property
    def command(self) -> str:
        return self.args[0] if self.args else ""

    @property
    def kind_of_exit(self) -> str:
        """``"exit-0"``, ``"exit-2"`` or ``"violation"``: the column of the fuzz summary."""
        if self.violation is not None:
            return "violation"
        return f"exit-{self.returncode}"

    def reproducer(self) -> str:
        """A shell line that runs the command again."""
        return f"cd {shlex.quote(str(self.cwd))} && python -m neftc {shlex.join(self.args)}"

    def describe(self) -> str:
        return (f"neftc {shlex.join(_short(a, 60) for a in self.args)} -> "
                f"{'timeout' if self.timed_out else f'exit {self.returncode}'} "
                f"in {self.seconds:.1f} s: {self.violation or 'ok'}")


def _limits(memory: int) -> Callable[[], None]:
    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def _snapshot(root: Path, skip: Sequence[Path]) -> dict[str, tuple[int, int, int]]:
    """``relative path -> (mode, size, mtime_ns)`` of everything under ``root`` (symlinks not
    followed), leaving out the ``skip`` subtrees."""
    skipped = {os.path.normpath(p) for p in skip}
    state: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames
                       if os.path.normpath(os.path.join(dirpath, d)) not in skipped]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.normpath(path) in skipped:
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue
            mtime = 0 if os.path.isdir(path) and not os.path.islink(path) else st.st_mtime_ns
            state[os.path.relpath(path, root)] = (st.st_mode, st.st_size, mtime)
    return state


def _site_pth() -> set[str]:
    names: set[str] = set()
    for key in ("purelib", "platlib"):
        folder = Path(sysconfig.get_paths()[key])
        if folder.is_dir():
            names |= {str(p) for p in folder.glob("*.pth")}
    return names


def _read_capped(path: Path) -> str:
    size = path.stat().st_size
    with path.open("rb") as fh:
        if size <= 2 * _KEEP_OUTPUT:
            data = fh.read()
        else:
            head = fh.read(_KEEP_OUTPUT)
            fh.seek(size - _KEEP_OUTPUT)
            data = head + b"\n[... output cut by the fuzz harness ...]\n" + fh.read()
    return data.decode("utf-8", errors="replace")


def _output_arg(args: Sequence[str]) -> str | None:
    for i, arg in enumerate(args):
        if arg in ("-o", "--output") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--output="):
            return arg.split("=", 1)[1]
    return None


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def stderr_violation(command: str, stderr: str) -> str | None:
    """The exit-2 rule: one ``neftc COMMAND: error:`` line, the last; before it nothing but
    argparse's usage block."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    prefix = f"neftc {command}: error:"
    errors = [line for line in lines if line.startswith(prefix)]
    if not errors:
        return f"exit 2 without a '{prefix}' line on stderr" + (
            f" (last line: '{_short(lines[-1])}')" if lines else " (stderr is empty)")
    if len(errors) > 1:
        return f"exit 2 with {len(errors)} '{prefix}' lines on stderr"
    if lines[-1] != errors[0]:
        return (f"exit 2 but the error line is not the last line of stderr (after it: "
                f"'{_short(lines[lines.index(errors[0]) + 1])}')")
    before = lines[:-1]
    if before and before[0].startswith("usage: neftc"):
        before = [line for line in before[1:] if not line.startswith(" ")]
    if before:
        return f"exit 2 with other output before the error line on stderr: '{_short(before[0])}'"
    return None


def run_cli(args: Sequence[str], tmp_path: Path, timeout: float = 60, *,
            expect: str = "any", markers: Sequence[Path] = (),
            writes: Sequence[Path] = (),
            check_ok: Callable[[Outcome], str | None] | None = None,
            memory: int = MEMORY_LIMIT) -> Outcome:
    """Run ``python -m neftc ARGS`` in a fresh working directory under ``tmp_path`` and check the
    contract (module docstring).

    ``expect``: ``"any"`` (exit 0 or 2), ``"error"`` (the input is certainly bad: exit 0 is a
    violation) or ``"ok"`` (a valid control input: exit 2 is a violation). ``markers``: payload
    marker paths that must not exist afterwards (the case's ``sentinel/`` folder is checked in
    any case). ``writes``: paths besides ``-o`` that the command may write (a layout that
    ``calibrate`` rewrites in place). ``check_ok``: the validity check of an exit-0 output; it
    returns a reason or None.
    """
    args = tuple(str(a) for a in args)
    tmp_path = Path(tmp_path).resolve()
    tmp_path.mkdir(parents=True, exist_ok=True)
    run_dir = Path(_fresh_dir(tmp_path, "run"))
    cwd, home, tmpdir = run_dir / "cwd", run_dir / "home", run_dir / "tmp"
    for folder in (cwd, home, tmpdir):
        folder.mkdir()
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir(exist_ok=True)
    output = _output_arg(args)
    output_path = None if output is None else Path(os.path.normpath(cwd / output))
    output_existed = output_path is not None and os.path.lexists(output_path)
    allowed = [tmpdir, run_dir / "stdout", run_dir / "stderr",
               *([output_path] if output_path is not None else []),
               *(Path(os.path.normpath(cwd / w)) for w in writes)]
    before = _snapshot(tmp_path, allowed)
    pth_before = _site_pth()

    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("NEFTC", "PYTHON", "TORCH", "OMP", "MKL", "CUDA"))}
    if os.environ.get("PYTHONPATH"):  # an uninstalled checkout: keep it importable from cwd
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(p) for p in os.environ["PYTHONPATH"].split(os.pathsep) if p)
    env.update(HOME=str(home), TMPDIR=str(tmpdir), TMP=str(tmpdir), TEMP=str(tmpdir),
               XDG_CACHE_HOME=str(tmpdir / "cache"), XDG_CONFIG_HOME=str(tmpdir / "config"),
               MPLCONFIGDIR=str(tmpdir / "mpl"), PYTHONDONTWRITEBYTECODE="1",
               PYTHONHASHSEED="0", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               COLUMNS="100")
    start = time.monotonic()
    with (run_dir / "stdout").open("wb") as out, (run_dir / "stderr").open("wb") as err:
        # preexec_fn only calls setrlimit, and the harness starts no threads of its own
        proc = subprocess.Popen([sys.executable, "-m", "neftc", *args], cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                preexec_fn=_limits(memory),
                                start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # the whole process group: a command may have started workers
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    seconds = time.monotonic() - start
    stdout, stderr = _read_capped(run_dir / "stdout"), _read_capped(run_dir / "stderr")
    returncode = None if timed_out else proc.returncode

    def outcome(violation: str | None) -> Outcome:
        return Outcome(args, cwd, returncode, stdout, stderr, seconds, timed_out, violation)

    present = [str(m) for m in (*markers, *sorted(sentinel.iterdir())) if os.path.lexists(m)]
    if present:
        return outcome(f"payload marker written: {present[0]} (code from the input ran)")
    new_pth = _site_pth() - pth_before
    if new_pth:
        return outcome(f"file planted in site-packages: {min(new_pth)}")
    after = _snapshot(tmp_path, allowed)
    changed = sorted(path for path in before.keys() | after.keys()
                     if before.get(path) != after.get(path))
    if changed:
        what = ("written" if changed[0] in after and changed[0] not in before else
                "removed" if changed[0] not in after else "changed")
        return outcome(f"file {what} outside -o and TMPDIR: {tmp_path / changed[0]}"
                       + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""))
    if timed_out:
        return outcome(f"hang: still running after {timeout:g} s (killed)")
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else "?"
        return outcome(f"crashed: killed by signal {name} ({returncode})")
    for stream, text in (("stderr", stderr), ("stdout", stdout)):
        if "Traceback (most recent call last)" in text:
            lines = [line for line in text.splitlines() if line.strip()]
            first = next(line for line in lines if "Traceback (most recent call last)" in line)
            return outcome(f"traceback on {stream} ('{_short(first, 70)}'), last line: "
                           f"'{_short(lines[-1], 110)}'")
    if returncode == 0:
        if expect == "error":
            return outcome("exit 0 on an input that must be refused (accepted silently)")
        if check_ok is not None:
            reason = check_ok(outcome(None))
            if reason is not None:
                return outcome(f"exit 0 with invalid output: {reason}")
        return outcome(None)
    if returncode == 2:
        bad = stderr_violation(args[0] if args else "", stderr)
        if bad is not None:
            return outcome(bad)
        if output_path is not None and not output_existed and os.path.lexists(output_path):
            return outcome(f"exit 2 but the output {output} was written (all or nothing)")
        if expect == "ok":
            lines = [line for line in stderr.splitlines() if line.strip()]
            return outcome(f"exit 2 on a valid input: {_short(lines[-1]) if lines else ''}")
        return outcome(None)
    return outcome(f"exit code {returncode} (the contract allows 0 or 2): "
                   f"{_short(stderr.strip().splitlines()[-1]) if stderr.strip() else ''}")


def _fresh_dir(parent: Path, stem: str) -> str:
    for n in range(1, 100_000):
        path = parent / f"{stem}-{n}"
        try:
            path.mkdir()
            return str(path)
        except FileExistsError:
            continue
    raise RuntimeError(f"no free {stem}-N folder in {parent}")


# -------------------------------------------------------------------- checks of exit-0 output


def json_stdout(outcome: Outcome) -> str | None:
    try:
        json.loads(outcome.stdout)
    except ValueError as exc:
        return f"stdout is not JSON ({exc})"
    return None


def output_exists(*names: str) -> Callable[[Outcome], str | None]:
    def check(outcome: Outcome) -> str | None:
        for name in names:
            path = outcome.cwd / name
            if not path.exists() or (path.is_file() and path.stat().st_size == 0):
                return f"{name} is missing or empty"
        return None
    return check


def both(*checks: Callable[[Outcome], str | None]) -> Callable[[Outcome], str | None]:
    def check(outcome: Outcome) -> str | None:
        return next((r for c in checks if (r := c(outcome)) is not None), None)
    return check


# ================================================================================ the seeds


@dataclass(frozen=True)
class Seeds:
    """Valid inputs the mutants start from (built once per session)."""

    root: Path
    layout: Path  # a LeNet layout (digits shape 1x8x8, fefet_128x128)
    model: Path  # the same LeNet as a torch.export archive
    spec: Path  # fefet_128x128 as a YAML spec file
    npz: Path  # 200 digits samples: x [N, 1, 8, 8] float32, y int64
    idx: Path  # the same as an MNIST IDX folder (t10k-* only)


def build_seeds(root: Path) -> Seeds:
    """Compile and save the seeds into ``root`` (about 5 s)."""
    import torch
    import yaml

    import neftc
    from neftc.datasets.digits import load_digits
    from neftc.frontend.zoo import build
    from neftc.targets import resolve_target

    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build("lenet", (1, 8, 8), 10)
    example = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    layout = root / "layout"
    if not (layout / "layout.json").exists():
        neftc.compile_module(model, example, resolve_target("fefet_128x128"), layout)
    archive = root / "model.pt2"
    if not archive.exists():
        torch.export.save(torch.export.export(model, (example,)), archive)
    spec = root / "spec.yaml"
    if not spec.exists():  # what `neftc targets fefet_128x128 --json` prints, as YAML
        data = resolve_target("fefet_128x128").model_dump(mode="json")
        spec.write_text(yaml.safe_dump(data, sort_keys=False))
    digits = load_digits()
    x, y = digits.test.x[:200].numpy(), digits.test.y[:200].numpy()
    npz = root / "data.npz"
    if not npz.exists():
        np.savez(npz, x=x, y=y)
    idx = root / "idx"
    if not idx.exists():
        idx.mkdir()
        images = np.clip(np.round(x[:, 0] * 255), 0, 255).astype(np.uint8)
        (idx / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(images))
        (idx / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(y.astype(np.uint8)))
    return Seeds(root, layout, archive, spec, npz, idx)


def _idx_bytes(array: np.ndarray, dims: Sequence[int] | None = None) -> bytes:
    dims = array.shape if dims is None else dims
    return (bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}i", *dims)
            + array.astype(np.uint8).tobytes())


# ================================================================================ the cases


@dataclass
class Case:
    """One hostile input and the command that reads it; run with :func:`run_case`."""

    category: str
    kind: str
    seed: int
    work: Path  # the case's folder: inputs, sentinel/, and each run's cwd
    args: list[str]
    expect: str = "any"
    markers: tuple[Path, ...] = ()
    writes: tuple[Path, ...] = ()
    check_ok: Callable[[Outcome], str | None] | None = None
    timeout: float = 60
    note: str = ""  # what was mutated, for the report

    @property
    def name(self) -> str:
        return f"{self.category}/{self.kind}#{self.seed}"


def run_case(case: Case, timeout: float | None = None) -> Outcome:
    return run_cli(case.args, case.work, timeout=timeout or case.timeout, expect=case.expect,
                   markers=case.markers, writes=case.writes, check_ok=case.check_ok)


class _Payload:
    """Unpickling this creates ``path`` (``open(path, 'w')``): proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def _marker(work: Path, name: str) -> Path:
    folder = work / "sentinel"
    folder.mkdir(exist_ok=True)
    return folder / f"PWNED-{name}"


def _torch_payload(marker: Path) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(_Payload(marker), buffer)
    return buffer.getvalue()


def _load_sibling(name: str) -> ModuleType:
    """A module next to this file: imported by name under pytest (tests/ is on its path), else
    loaded from the file (scripts/fuzz.py)."""
    if name in sys.modules:
        return sys.modules[name]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module


def resign(root: Path) -> None:
    """``files.*`` and ``SHA256SUMS`` recomputed as the writer does (the helper of
    tests/test_layout_reader.py)."""
    _load_sibling("test_layout_reader").resign(root)


def resign_sums(root: Path) -> None:
    """Only ``SHA256SUMS``, over the bytes as they are (for a ``layout.json`` edited as text,
    which :func:`resign` would re-serialise)."""
    (root / "SHA256SUMS").write_text("".join(
        f"{hashlib.sha256((root / n).read_bytes()).hexdigest()}  {n}\n"
        for n in ("layout.json", "levels.bin", "tensors.bin")))


# ----------------------------------------------------------------------- layouts


LAYOUT_COMMANDS = ("inspect", "inspect", "inspect", "inspect", "inspect", "inspect", "verify",
                   "export-onnx")


def _layout_args(command: str, layout: str) -> tuple[list[str], Callable | None]:
    if command == "inspect":
        return ["inspect", layout, "--json"], json_stdout
    if command == "verify":
        return (["verify", layout, "--mc", "1", "--ideal-periphery", "--calib-samples", "8",
                 "--no-report", "--json", "-q"], json_stdout)
    if command == "export-onnx":
        return ["export-onnx", layout, "-o", "model.onnx"], output_exists("model.onnx")
    raise ValueError(command)


def _layout_case(seeds: Seeds, rng: random.Random, work: Path, kind: str,
                 edit: Callable[[Path, dict[str, Any]], tuple[str, str]],
                 command: str | None = None, timeout: float = 60) -> Case:
    """Copy the seed layout to ``work/layout``, apply ``edit(root, doc)`` (it edits files and
    the parsed doc, and returns ``(expect, note)``; it writes layout.json itself when it returns
    with ``doc`` set to None), and pick the command."""
    root = work / "layout"
    shutil.copytree(seeds.layout, root)
    for extra in ("report.html", "report.txt"):
        (root / extra).unlink(missing_ok=True)
    doc = json.loads((root / "layout.json").read_text())
    expect, note = edit(root, doc)
    command = command or rng.choice(LAYOUT_COMMANDS)
    args, check = _layout_args(command, str(root))
    return Case("layout", kind, 0, work, args, expect, check_ok=check, timeout=timeout,
                note=note)


def _write_doc(root: Path, doc: Any, sign: bool = True) -> None:
    """Write an edited layout.json and re-sign it (only ``SHA256SUMS``: ``files.*`` describe
    the sidecars, which an edit of the document leaves as they are; an edit of a sidecar calls
    :func:`resign` first)."""
    (root / "layout.json").write_bytes(json.dumps(doc, indent=1).encode() + b"\n")
    if sign:
        resign_sums(root)


def _write_text(root: Path, text: str, sign: bool = True) -> None:
    (root / "layout.json").write_bytes(text.encode())
    if sign:
        resign_sums(root)


def _random_path(doc: Any, rng: random.Random, want: Callable[[Any], bool] | None = None
                 ) -> list[Any]:
    """A path into ``doc``: without ``want``, by random descent (so that small sections are hit
    as often as the long replica lists); with ``want``, one of the paths to a value that
    satisfies it, uniformly."""
    if want is not None:
        found: list[list[Any]] = []

        def walk(value: Any, path: list[Any]) -> None:
            if path and want(value):
                found.append(path)
            if isinstance(value, dict):
                for key, child in value.items():
                    walk(child, [*path, key])
            elif isinstance(value, list):
                for k, child in enumerate(value):
                    walk(child, [*path, k])
        walk(doc, [])
        if not found:
            raise LookupError("no such value in the document")
        return rng.choice(found)
    path: list[Any] = []
    value = doc
    while isinstance(value, (dict, list)) and value:
        if path and rng.random() < 0.15:
            break
        key = rng.choice(list(value)) if isinstance(value, dict) else rng.randrange(len(value))
        path.append(key)
        value = value[key]
    return path


def _get(doc: Any, path: Sequence[Any]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _set(doc: Any, path: Sequence[Any], value: Any) -> None:
    _get(doc, path[:-1])[path[-1]] = value


def _dotted(path: Sequence[Any]) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path).lstrip(".")


_RAW = "@@FUZZ-RAW@@"


def _with_raw(doc: Any, path: Sequence[Any], raw: str) -> str:
    """``doc`` as layout.json text with the value at ``path`` replaced by the raw JSON text
    ``raw`` (NaN, 5,000 digits, 100,000 brackets: things json.dumps will not write)."""
    _set(doc, path, _RAW)
    return json.dumps(doc, indent=1).replace(json.dumps(_RAW), raw, 1) + "\n"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def lay_delete_key(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    def edit(root: Path, doc: dict[str, Any]) -> tuple[str, str]:
        path = _random_path(doc, rng)
        while not isinstance(_get(doc, path[:-1]), dict):
            path = path[:-1]
        del _get(doc, path[:-1])[path[-1]]
        _write_doc(root, doc)
        return "any", f"deleted {_dotted(path)}"
    return _layout_case(seeds, rng, work, "delete-key", edit)


def lay_duplicate_key(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    def edit(root: Path, doc: dict[str, Any]) -> tuple[str, str]:
        path = _random_path(doc, rng)
        while not isinstance(_get(doc, path[:-1]), dict):
            path = path[:-1]
        parent, key = _get(doc, path[:-1]), path[-1]
        value = rng.choice([None, -1, "x", [], {}, 10**20])
        items = list(parent.items())
        dup = (_RAW, _RAW)
        position = items.index((key, parent[key]))
        items.insert(position + rng.choice([0, 1]), dup)  # before or after the real one
        parent.clear()
        parent.update(items)
        text = json.dumps(doc, indent=1).replace(f"{json.dumps(_RAW)}: {json.dumps(_RAW)}",
                                                 f"{json.dumps(key)}: {json.dumps(value)}", 1)
        _write_text(root, text + "\n")
        return "any", f"duplicated key {_dotted(path)} with value {value!r}"
    return _layout_case(seeds, rng, work, "duplicate-key", edit)


_OTHER_TYPES: list[Any] = [None, True, "x", "", [], {}, [1, 2], {"a": 1}, 1.5, 0, -7]


def lay_change_type(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    def edit(root: Path, doc: dict[str, Any]) -> tuple[str, str]:
        path = _random_path(doc, rng)
        old = _get(doc, path)
        choices = [v for v in _OTHER_TYPES if type(v) is not type(old)]
        new = rng.choice(choices)
        _set(doc, path, new)
        _write_doc(root, doc)
        return "any", f"{_dotted(path)}: {type(old).__name__} -> {new!r}"
    return _layout_case(seeds, rng, work, "change-type", edit)


_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e999", "-1", "-9223372036854775809",
            str(10**30), "9" * 5000, "0", "0.5", "-0.0", "1e-320", "true", str(2**64)]


def lay_number(seeds: Seeds, rng: random.Random, work: Path, *,
               raw: str | None = None) -> Case:
    def edit(root: Path, doc: dict[str, Any]) -> tuple[str, str]:
        path = _random_path(doc, rng, _is_number)
        value = _pick(rng, _NUMBERS, raw)
        _write_text(root, _with_raw(doc, path, value))
        # 5,000 digits and bare NaN/Infinity are not JSON numbers a layout may hold.
        expect = "error" if value in ("NaN", "Infinity", "-Infinity", "9" * 5000, "1e999") \
            else "any"
        return expect, f"{_dotted(path)} = {_short(value, 24)}"
    return _layout_case(seeds, rng, work, "number", edit)


def lay_deep_nesting(seeds: Seeds, rng: random.Random, work: Path, *,
                     depth: int | None = None) -> Case:
    def edit(root: Path, doc: dict[str, Any]) -> tuple[str, str]:
        path = _random_path(doc, rng)
        levels = _pick(rng, [1_000, 100_000], depth)
        opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
        _write_text(root, _with_raw(doc, path, opener * levels + "1" + closer * levels))
        return "error", f"{_dotted(path)} nested {levels} deep"
    return _layout_case(seeds, rng, work, "deep-nesting", edit)


def lay_unknown_key(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    def edit(root: Path, doc: dict[str, Any]) -> tuple[str, str]:
        path = _random_path(doc, rng, lambda v: isinstance(v, dict))
        key = rng.choice(["__class__", "__proto__", "extra", "levels", "x" * 1000])
        _get(doc, path)[key] = rng.choice([1, None, "aten.from_file.default"])
        _write_doc(root, doc)
        return "any", f"added {_dotted(path)}.{_short(key, 20)}"
    return _layout_case(seeds, rng, work, "unknown-key", edit)


def lay_not_resigned(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    def edit(root: Path, doc: dict[str, Any]) -> tuple[str, str]:
        target = rng.choice(["layout.json", "levels.bin", "tensors.bin"])
        if target == "layout.json":
            path = _random_path(doc, rng, _is_number)
            _set(doc, path, _get(doc, path) + 1)
            _write_doc(root, doc, sign=False)
            return "error", f"{_dotted(path)} + 1 without re-signing"
        data = bytearray((root / target).read_bytes())
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
        (root / target).write_bytes(bytes(data))
        return "error", f"{target} byte {at} flipped without re-signing"
    return _layout_case(seeds, rng, work, "not-resigned", edit)


#: Graph ops a compiler never emits: side effects, file access, unbounded allocation, dunders.
def _dangerous_ops(marker: Path) -> list[tuple[str, list[Any], dict[str, Any]]]:
    return [
        ("aten.from_file.default", [str(marker), True, 64], {"dtype": {"dtype": "uint8"}}),
        ("aten.from_file.default", ["/etc/hostname", False, 4], {"dtype": {"dtype": "uint8"}}),
        ("aten.ones.default", [[12000, 12000]], {"dtype": {"dtype": "float32"}}),
        ("aten.empty.memory_format", [[2**40]], {}),
        ("aten.full.default", [[100000, 100000], 1.0], {}),
        ("aten.copy_.default", ["@prev", "@prev"], {}),
        ("aten.fill_.Scalar", ["@prev", 0.0], {}),
        ("aten.resize_.default", ["@prev", [2**31, 2**31]], {}),
        ("aten.rand.default", [[4]], {}),
        ("aten.relu.__reduce_ex__", ["@prev", 2], {}),
        ("aten.__class__.__init__", ["@prev"], {}),
        ("aten.relu.__call__", ["@prev"], {}),
        ("prims.__dict__.get", ["@prev"], {}),
        ("builtins.open", [str(marker), "w"], {}),
        ("os.system", [f"touch {marker}"], {}),
    ]


def _digital_nodes(doc: dict[str, Any]) -> list[int]:
    return [i for i, n in enumerate(doc["graph"]["nodes"])
            if n["op"] == "call_function" and n.get("layer") is None]


def lay_graph_op(seeds: Seeds, rng: random.Random, work: Path, *, insert: bool | None = None,
                 op_index: int | None = None, command: str | None = None) -> Case:
    marker = _marker(work, "graph-op")

    def edit(root: Path, doc: dict[str, Any]) -> tuple[str, str]:
        ops = _dangerous_ops(marker)
        name, args, kwargs = ops[rng.randrange(len(ops)) if op_index is None else op_index]
        nodes = doc["graph"]["nodes"]
        at = rng.choice(_digital_nodes(doc))
        prev = nodes[at]["args"][0]
        args = [prev if a == "@prev" else a for a in args]
        how = rng.choice([True, False]) if insert is None else insert
        if how:  # a new node just before this digital node, nothing uses its value
            nodes.insert(at, {"name": "fuzz_node", "op": "call_function", "target": name,
                              "args": args, "kwargs": kwargs, "layer": None})
        else:  # the digital node itself calls the op
            nodes[at].update(target=name, args=args, kwargs=kwargs)
        _write_doc(root, doc)
        return "error", f"{'inserted' if how else f'replaced graph.nodes[{at}] by'} {name}"
    case = _layout_case(seeds, rng, work, "graph-op", edit, command)
    case.markers = (marker,)
    return case


def lay_alloc_bomb(seeds: Seeds, rng: random.Random, work: Path, *,
                   command: str | None = None) -> Case:
    """aten.ones([12000, 12000]) and a chain of mm on it: minutes of CPU if it runs."""
    def edit(root: Path, doc: dict[str, Any]) -> tuple[str, str]:
        nodes = doc["graph"]["nodes"]
        at = _digital_nodes(doc)[0]
        n = rng.choice([6000, 12000])
        chain = [{"name": "fuzz_ones", "op": "call_function", "target": "aten.ones.default",
                  "args": [[n, n]], "kwargs": {}, "layer": None}]
        for k in range(8):
            chain.append({"name": f"fuzz_mm{k}", "op": "call_function",
                          "target": "aten.mm.default",
                          "args": [{"node": chain[-1]["name"]}, {"node": "fuzz_ones"}],
                          "kwargs": {}, "layer": None})
        nodes[at:at] = chain
        _write_doc(root, doc)
        return "error", f"aten.ones([{n}, {n}]) and 8 mm"
    return _layout_case(seeds, rng, work, "alloc-bomb", edit,
                        command=_pick(rng, ["verify", "export-onnx", "inspect"], command))


def lay_graph_refs(seeds: Seeds, rng: random.Random, work: Path, *,
                   how: str | None = None) -> Case:
    def edit(root: Path, doc: dict[str, Any]) -> tuple[str, str]:
        nonlocal how
        nodes = doc["graph"]["nodes"]
        at = rng.choice(_digital_nodes(doc))
        how = _pick(rng, ["dangling", "forward", "self", "get-attr", "output-twice"], how)
        if how == "dangling":
            nodes[at]["args"][0] = {"node": "no_such_node"}
        elif how == "forward":
            nodes[at]["args"][0] = {"node": nodes[-1]["name"]}
        elif how == "self":
            nodes[at]["args"][0] = {"node": nodes[at]["name"]}
        elif how == "get-attr":
            getattrs = [n for n in nodes if n["op"] == "get_attr" and n.get("layer") is None]
            rng.choice(getattrs)["target"] = rng.choice(["nope", "../../etc/passwd", ""])
        else:
            nodes.insert(at, dict(nodes[-1]))
        _write_doc(root, doc)
        return "error", f"graph: {how} at graph.nodes[{at}]"
    return _layout_case(seeds, rng, work, "graph-refs", edit)


def lay_tile_range(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    def edit(root: Path, doc: dict[str, Any]) -> tuple[str, str]:
        li = rng.randrange(len(doc["layers"]))
        ti = rng.randrange(len(doc["layers"][li]["tiles"]))
        tile = doc["layers"][li]["tiles"][ti]
        key = rng.choice(["row_start", "row_count", "col_start", "col_count", "levels_offset",
                          "index", "row_tile", "col_tile"])
        delta = rng.choice([-1, 1, -10**6, 2**63])
        tile[key] += delta
        _write_doc(root, doc)
        # every tile field is pinned by the partition (section 10) except a levels_offset
        # moved within the padding between blocks
        expect = "any" if key == "levels_offset" and abs(delta) == 1 else "error"
        return expect, f"layers[{li}].tiles[{ti}].{key} {delta:+d}"
    return _layout_case(seeds, rng, work, "tile-range", edit)


def lay_placement(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    def edit(root: Path, doc: dict[str, Any]) -> tuple[str, str]:
        chip = doc["target"]["chip"]
        li = rng.randrange(len(doc["layers"]))
        tile = rng.choice(doc["layers"][li]["tiles"])
        value = rng.choice([[-1, 0], [0, -1], [chip["cores"], 0], [0, chip["arrays_per_core"]],
                            [2**63, 0], [tile["core"], tile["array"]]])
        unchanged = value == [tile["core"], tile["array"]]
        if tile["replicas"] and rng.random() < 0.5:  # a copy on its own tile's array: twice
            tile["replicas"][rng.randrange(len(tile["replicas"]))] = value
            where, unchanged = "replica", False
        else:
            tile["core"], tile["array"] = value
            where = "tile"
        _write_doc(root, doc)
        return ("any" if unchanged else "error"), f"{where} of layers[{li}] at {value}"
    return _layout_case(seeds, rng, work, "placement", edit)


def lay_semantic(seeds: Seeds, rng: random.Random, work: Path, *,
                 how: str | None = None) -> Case:
    """One field set to a value the target rules out (issue 10, part 1)."""
    def edit(root: Path, doc: dict[str, Any]) -> tuple[str, str]:
        li = rng.randrange(len(doc["layers"]))
        layer = doc["layers"][li]
        choices: list[tuple[str, Callable[[], None]]] = [
            ("cell_bits 10**30", lambda: doc["target"]["cell"].update(bits=10**30)),
            ("slicing.cell_bits 10**30", lambda: layer["slicing"].update(cell_bits=10**30)),
            ("scale nan", lambda: layer["quant"]["scales"].__setitem__(0, math.nan)),
            ("scale inf", lambda: layer["quant"]["scales"].__setitem__(0, math.inf)),
            ("scale negative", lambda: layer["quant"]["scales"].__setitem__(0, -1e-3)),
            ("quant.bits 16", lambda: layer["quant"].update(bits=16, qmax=65535)),
            ("polarities 1 with differential", lambda: layer["slicing"].update(polarities=1)),
            ("periphery.adc_bits 1000", lambda: doc["periphery"].update(adc_bits=1000)),
            ("periphery.input_bits 0", lambda: doc["periphery"].update(input_bits=0)),
            ("chip.cores 0", lambda: doc["target"]["chip"].update(cores=0)),
            ("array.rows 10**12", lambda: doc["target"]["array"].update(rows=10**12)),
            ("noise.sigma_rel nan", lambda: doc["target"]["noise"].update(sigma_rel=math.nan)),
            ("format", lambda: doc.update(format="not-neftc")),
            ("version 999", lambda: doc.update(version=999)),
            ("input shape huge",
             lambda: doc["graph"]["inputs"][0].update(shape=[1, 1, 10**6, 10**6])),
            ("input shape negative", lambda: doc["graph"]["inputs"][0].update(shape=[1, 1, -8, 8])),
        ]
        what = _pick(rng, [c[0] for c in choices], how)
        apply = dict(choices)[what]
        apply()
        _write_doc(root, doc)
        return "error", f"layers[{li}]: {what}"
    return _layout_case(seeds, rng, work, "semantic", edit)


def _cell_offsets(doc: dict[str, Any], rng: random.Random) -> int:
    layer = rng.choice(doc["layers"])
    tile = rng.choice(layer["tiles"])
    return (tile["levels_offset"] + rng.randrange(tile["row_count"]) * tile["col_count"]
            + rng.randrange(tile["col_count"]))


def lay_level(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    def edit(root: Path, doc: dict[str, Any]) -> tuple[str, str]:
        data = bytearray((root / "levels.bin").read_bytes())
        at = _cell_offsets(doc, rng)
        data[at] = rng.choice([4, 16, 200, 255])
        (root / "levels.bin").write_bytes(bytes(data))
        resign(root)
        return "error", f"levels.bin cell at {at} = {data[at]} (2-bit cells: 0..3)"
    return _layout_case(seeds, rng, work, "level-range", edit)


def lay_sidecar_flip(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    def edit(root: Path, doc: dict[str, Any]) -> tuple[str, str]:
        target = rng.choice(["levels.bin", "tensors.bin"])
        data = bytearray((root / target).read_bytes())
        at = _cell_offsets(doc, rng) if target == "levels.bin" and rng.random() < 0.8 else \
            rng.randrange(len(data))
        for _ in range(rng.choice([1, 1, 4])):
            data[at] ^= 1 << rng.randrange(8)
        (root / target).write_bytes(bytes(data))
        resign(root)
        expect = "any"
        if target == "levels.bin" and data[at] > 3:
            expect = "error"
        if target == "tensors.bin":
            floats = np.frombuffer(bytes(data[at & ~3:(at & ~3) + 4]), np.float32)
            in_tensor = any(t["offset"] <= at < t["offset"] + t["nbytes"]
                            for t in doc["tensors"])
            if in_tensor and not np.isfinite(floats).all():
                expect = "error"
        return expect, f"{target} byte {at} flipped, re-signed"
    return _layout_case(seeds, rng, work, "sidecar-flip", edit)


def lay_sidecar_truncate(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    def edit(root: Path, doc: dict[str, Any]) -> tuple[str, str]:
        target = rng.choice(["levels.bin", "tensors.bin"])
        data = (root / target).read_bytes()
        keep = rng.choice([0, 1, len(data) // 2, len(data) - 1])
        (root / target).write_bytes(data[:keep])
        sign = rng.random() < 0.75
        if sign:
            resign(root)
        return "error", f"{target} cut to {keep} bytes{', re-signed' if sign else ''}"
    return _layout_case(seeds, rng, work, "sidecar-truncate", edit)


def lay_file_kind(seeds: Seeds, rng: random.Random, work: Path, *,
                  how: str | None = None, file: str | None = None) -> Case:
    """A layout file replaced by a directory, a FIFO, /dev/zero, a dangling link, or emptied."""
    def edit(root: Path, doc: dict[str, Any]) -> tuple[str, str]:
        nonlocal how
        name = _pick(rng, ["layout.json", "levels.bin", "tensors.bin", "SHA256SUMS"], file)
        how = _pick(rng, ["directory", "fifo", "dev-zero", "dangling", "empty", "missing"], how)
        path = root / name
        path.unlink()
        if how == "directory":
            path.mkdir()
        elif how == "fifo":
            os.mkfifo(path)
        elif how == "dev-zero":
            path.symlink_to("/dev/zero")
        elif how == "dangling":
            path.symlink_to(root / "no-such-file")
        elif how == "empty":
            path.write_bytes(b"")
        return "error", f"{name} is {how}"
    return _layout_case(seeds, rng, work, "file-kind", edit, timeout=60)


def lay_json_text(seeds: Seeds, rng: random.Random, work: Path, *,
                  how: str | None = None) -> Case:
    """layout.json as bytes: truncated, binary garbage, BOM, UTF-16, a huge string."""
    def edit(root: Path, doc: dict[str, Any]) -> tuple[str, str]:
        nonlocal how
        raw = (root / "layout.json").read_bytes()
        how = _pick(rng, ["truncate", "garbage", "bom", "utf16", "huge-string", "top-list"], how)
        if how == "truncate":
            raw = raw[:rng.randrange(len(raw))]
        elif how == "garbage":
            raw = bytes(rng.randrange(256) for _ in range(4096))
        elif how == "bom":
            raw = b"\xef\xbb\xbf" + raw
        elif how == "utf16":
            raw = raw.decode().encode("utf-16")
        elif how == "huge-string":
            raw = _with_raw(doc, ["description"], '"' + "A" * 20_000_000 + '"').encode()
        else:
            raw = b"[" + raw + b"]"
        (root / "layout.json").write_bytes(raw)
        resign_sums(root)
        # a BOM and UTF-16 are legal JSON encodings to Python's json (RFC 8259 asks for UTF-8)
        return ("any" if how in ("bom", "utf16") else "error"), f"layout.json: {how}"
    return _layout_case(seeds, rng, work, "json-text", edit)


def lay_identity(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    def edit(root: Path, doc: dict[str, Any]) -> tuple[str, str]:
        return "ok", "the seed layout, unchanged"
    return _layout_case(seeds, rng, work, "identity", edit)


# ----------------------------------------------------------------------- model archives


def _archive_args(path: str, pt: bool = False) -> list[str]:
    args = ["compile", path, "-o", "out", "-q", "--json", "--no-replicate"]
    return args + (["--arch", "lenet", "--input-shape", "1,8,8"] if pt else [])


def _archive_case(work: Path, kind: str, path: Path, expect: str, note: str,
                  markers: tuple[Path, ...] = (), pt: bool = False) -> Case:
    return Case("archive", kind, 0, work, _archive_args(str(path), pt), expect, markers,
                check_ok=both(json_stdout, output_exists("out/layout.json")), note=note)


def _members(path: Path) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(path) as z:
        return [(info, z.read(info)) for info in z.infolist()]


def _rezip(path: Path, members: Sequence[tuple[str, bytes]]) -> None:
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        warnings.simplefilter("ignore")  # duplicate names are one of the mutations
        for name, data in members:
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)


def _prefix(seeds: Seeds) -> str:
    first = _members(seeds.model)[0][0].filename
    return first.split("/", 1)[0] + "/"


def arc_identity(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    path = work / "model.pt2"
    shutil.copy(seeds.model, path)
    return _archive_case(work, "identity", path, "ok", "the seed archive, unchanged")


def arc_rezip(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    """The seed's members written again by zipfile: a valid archive (control of _rezip)."""
    path = work / "model.pt2"
    _rezip(path, [(i.filename, d) for i, d in _members(seeds.model)])
    return _archive_case(work, "rezip", path, "any", "members rewritten by zipfile")


def arc_byte_flip(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    path = work / "model.pt2"
    data = bytearray(seeds.model.read_bytes())
    members = _members(seeds.model)
    if rng.random() < 0.7:  # inside a member's data: the CRC no longer matches
        info, content = rng.choice([(i, d) for i, d in members if d])
        with open(seeds.model, "rb") as fh:
            fh.seek(info.header_offset + 26)
            name_len, extra_len = struct.unpack("<HH", fh.read(4))
        start = info.header_offset + 30 + name_len + extra_len
        at = start + rng.randrange(len(content))
        where, expect = f"in {info.filename}", "error"
    else:
        at = rng.randrange(len(data))
        where, expect = "anywhere", "any"
    data[at] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return _archive_case(work, "byte-flip", path, expect, f"byte {at} flipped ({where})")


def arc_truncate(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    path = work / "model.pt2"
    data = seeds.model.read_bytes()
    keep = rng.choice([0, 4, 100, len(data) // 2, len(data) - 22, len(data) - 1])
    path.write_bytes(data[:keep])
    return _archive_case(work, "truncate", path, "error", f"cut to {keep} of {len(data)} bytes")


def arc_members(seeds: Seeds, rng: random.Random, work: Path, *,
                how: str | None = None) -> Case:
    path = work / "model.pt2"
    members = [(i.filename, d) for i, d in _members(seeds.model)]
    prefix = _prefix(seeds)
    how = _pick(rng, ["add", "remove", "rename", "duplicate", "traversal"], how)
    k = rng.randrange(len(members))
    if how == "add":
        members.insert(k, (prefix + rng.choice(["extra/x.bin", "data/weights/weight_99",
                                                "models/other.json", "data/x.pkl"]),
                           bytes(rng.randrange(256) for _ in range(64))))
        expect = "any"
    elif how == "remove":
        name = members.pop(k)[0]
        expect = "any"
    elif how == "rename":
        name, content = members[k]
        members[k] = (name + ".renamed", content)
        expect = "any"
    elif how == "duplicate":
        members.append((members[k][0], b"{}" if members[k][0].endswith(".json") else b"\0"))
        expect = "any"
    else:
        members.append(("../../" + "sentinel/PWNED-traversal", b"x"))
        expect = "any"
    _rezip(path, members)
    return _archive_case(work, "members", path, expect, f"member {how} at {k}",
                         markers=(work / "sentinel" / "PWNED-traversal",))


def arc_pickle(seeds: Seeds, rng: random.Random, work: Path, *, where: str | None = None
               ) -> Case:
    """A member that torch.export.load would unpickle, holding a payload."""
    marker = _marker(work, "archive")
    path = work / "model.pt2"
    prefix = _prefix(seeds)
    members = [(i.filename, d) for i, d in _members(seeds.model)]
    by_name = dict(members)
    where = where or rng.choice(["sample-inputs", "weight", "tensor-constant",
                                 "opaque-constant", "legacy-weights", "legacy-constants"])
    payload = _torch_payload(marker)
    weights_cfg = prefix + "data/weights/model_weights_config.json"
    consts_cfg = prefix + "data/constants/model_constants_config.json"
    if where == "sample-inputs":
        by_name[prefix + "data/sample_inputs/model.pt"] = payload
    elif where == "weight":
        config = json.loads(by_name[weights_cfg])
        fqn = next(iter(config["config"]))
        config["config"][fqn]["use_pickle"] = True
        by_name[weights_cfg] = json.dumps(config).encode()
        by_name[prefix + "data/weights/" + config["config"][fqn]["path_name"]] = payload
    elif where in ("tensor-constant", "opaque-constant"):
        config = json.loads(by_name[consts_cfg])
        name = "tensor_0" if where == "tensor-constant" else "opaque_obj_0"
        config["config"]["fuzz_constant"] = {"path_name": name, "is_param": False,
                                             "use_pickle": True, "tensor_meta": None}
        by_name[consts_cfg] = json.dumps(config).encode()
        by_name[prefix + "data/constants/" + name] = (
            payload if where == "tensor-constant" else pickle.dumps(_Payload(marker)))
    elif where == "legacy-weights":
        by_name[prefix + "data/weights/model.pt"] = payload
    else:
        by_name[prefix + "data/constants/model.pt"] = payload
    _rezip(path, list(by_name.items()))
    return _archive_case(work, f"pickle-{where}", path, "error",
                         f"payload in the {where} member", markers=(marker,))


def arc_pt_payload(seeds: Seeds, rng: random.Random, work: Path, *,
                   how: str | None = None) -> Case:
    """A .pt that is a pickle (torch.save of an object whose unpickling runs code)."""
    marker = _marker(work, "pt")
    path = work / "weights.pt"
    how = _pick(rng, ["torch.save zip", "legacy pickle"], how)
    if how == "torch.save zip":
        path.write_bytes(_torch_payload(marker))
    else:
        path.write_bytes(pickle.dumps({"classifier.5.weight": _Payload(marker)}, protocol=2))
    return _archive_case(work, "pt-payload", path, "error", f"payload in a {how}",
                         markers=(marker,), pt=True)


def arc_file_kind(seeds: Seeds, rng: random.Random, work: Path, *,
                  how: str | None = None) -> Case:
    how = _pick(rng, ["non-zip", "empty", "directory", "fifo", "dev-zero", "zip-of-garbage",
                      "json"], how)
    path = work / "model.pt2"
    if how == "non-zip":
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.choice([3, 512, 65536]))))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "directory":
        path.mkdir()
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "dev-zero":
        path.symlink_to("/dev/zero")
    elif how == "zip-of-garbage":
        _rezip(path, [("a/b", b"x" * 10), ("archive_format", b"pt2")])
    else:
        path.write_text(json.dumps({"not": "a model"}))
    return _archive_case(work, "file-kind", path, "error", f"model.pt2 is {how}")


_PROGRAM_OPS = ["torch.ops.aten.from_file.default", "torch.ops.aten.ones.default",
                "builtins.open", "os.system", "torch.ops.aten.relu.__reduce__"]


def arc_program_json(seeds: Seeds, rng: random.Random, work: Path, *, how: str | None = None,
                     op: str | None = None) -> Case:
    """The serialized program (models/model.json) edited: an op renamed, a value changed."""
    marker = _marker(work, "program")
    path = work / "model.pt2"
    prefix = _prefix(seeds)
    by_name = {i.filename: d for i, d in _members(seeds.model)}
    key = prefix + "models/model.json"
    program = json.loads(by_name[key])
    how = _pick(rng, ["op", "random", "random", "shape"], how)
    if how == "op":
        text = json.dumps(program)
        op = _pick(rng, _PROGRAM_OPS, op)
        text = text.replace('"torch.ops.aten.relu.default"', json.dumps(op), 1)
        note = f"relu -> {op}"
    else:
        target = _random_path(program, rng) if how == "random" else \
            _random_path(program, rng, lambda v: isinstance(v, dict) and "as_int" in v)
        value = rng.choice([None, -1, 2**62, "x", [], {"as_int": -5}, {"as_int": 10**12}])
        _set(program, target, value)
        text = json.dumps(program)
        note = f"{_dotted(target)} = {value!r}"
    by_name[key] = text.encode()
    _rezip(path, list(by_name.items()))
    return _archive_case(work, "program-json", path, "any", note, markers=(marker,))


# ----------------------------------------------------------------------- target specs


def _spec_case(work: Path, kind: str, path: Path | str, expect: str, note: str,
               overrides: Sequence[str] = (), markers: tuple[Path, ...] = ()) -> Case:
    args = ["targets", str(path), "--json"]
    for value in overrides:
        args += ["--set", value]
    return Case("spec", kind, 0, work, args, expect, markers, check_ok=json_stdout, note=note)


def _spec_doc(seeds: Seeds) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(seeds.spec.read_text())


_SPEC_SECTIONS = ("array", "cell", "weight", "periphery", "noise", "faults", "chip", "cost")


def _spec_number_path(doc: dict[str, Any], rng: random.Random) -> tuple[str, str]:
    fields = [(s, k) for s in _SPEC_SECTIONS for k, v in doc[s].items() if _is_number(v)]
    return rng.choice(fields)


def _yaml_with_raw(doc: dict[str, Any], raw: str) -> str:
    """``doc`` as YAML with the value ``_RAW`` replaced by the raw YAML text ``raw``."""
    import yaml

    body = yaml.safe_dump(doc, sort_keys=False, width=10**9)
    for form in (f"'{_RAW}'", f'"{_RAW}"', _RAW):
        if form in body:
            return body.replace(form, raw, 1)
    raise AssertionError("placeholder not written")


def spec_identity(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    path = work / "spec.yaml"
    shutil.copy(seeds.spec, path)
    return _spec_case(work, "identity", path, "ok", "the seed spec, unchanged")


def spec_alias_bomb(seeds: Seeds, rng: random.Random, work: Path, *,
                    spot: str | None = None, levels: int | None = None) -> Case:
    """Billion laughs: 9 aliases per level, 9**levels strings from a file of a few hundred
    bytes, hung off a known field, an unknown field, or a ``--set`` value."""
    levels = _pick(rng, [9, 12], levels)
    spot = _pick(rng, ["description", "sources", "noise.sigma_rel", "unknown"], spot)
    layers = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for k in range(1, levels):
        layers.append(f"&a{k} [" + ", ".join([f"*a{k - 1}"] * 9) + "]")
    bomb = "[" + ", ".join(layers) + "]"  # one flow sequence: the anchors, then the big one
    doc = _spec_doc(seeds)
    if spot == "unknown":
        doc["bomb"] = _RAW
    else:
        section, _, key = spot.partition(".")
        if key:
            doc[section][key] = _RAW
        else:
            doc[section] = _RAW
    body = _yaml_with_raw(doc, bomb)
    path = work / "spec.yaml"
    path.write_text(body)
    return _spec_case(work, "alias-bomb", path, "error", f"9**{levels} strings at {spot}")


def spec_value(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    """A numeric field set to a huge, negative, non-finite or wrongly typed value."""

    doc = _spec_doc(seeds)
    section, key = _spec_number_path(doc, rng)
    raw, expect = rng.choice([
        (str(10**30), "error"), ("9" * 5000, "error"), (str(2**63), "error"),
        (".nan", "error"), (".inf", "error"), ("-.inf", "error"), ("-1", "error"),
        ("-128", "error"), ("1e400", "error"), ("[1, 2]", "error"), ("{a: 1}", "error"),
        ("abc", "error"), ("null", "any"), ("0", "any"), ("true", "any"), ("'12'", "any"),
        ("0x80", "any"), ("1_000", "any"), ("2001-01-01", "error"),
    ])
    doc[section][key] = _RAW
    body = _yaml_with_raw(doc, raw)
    path = work / "spec.yaml"
    path.write_text(body)
    return _spec_case(work, "value", path, expect, f"{section}.{key}: {_short(raw, 24)}")


def spec_structure(seeds: Seeds, rng: random.Random, work: Path, *,
                   how: str | None = None) -> Case:
    import yaml

    doc = _spec_doc(seeds)
    how = _pick(rng, ["unknown-key", "unknown-section", "delete-section", "delete-key",
                      "section-scalar", "fault-sum", "not-mapping", "empty", "deep",
                      "python-tag", "multi-doc", "binary", "huge-key"], how)
    marker = _marker(work, "spec")
    expect = "error"
    body: str | bytes
    if how == "unknown-key":
        doc["cell"]["bitz"] = 3
    elif how == "unknown-section":
        doc["__class__"] = {"x": 1}
    elif how == "delete-section":
        del doc[rng.choice(_SPEC_SECTIONS)]
        expect = "any"  # a partial spec may be filled from defaults
    elif how == "delete-key":
        section = rng.choice(_SPEC_SECTIONS)
        del doc[section][rng.choice(list(doc[section]))]
        expect = "any"
    elif how == "section-scalar":
        doc[rng.choice(_SPEC_SECTIONS)] = rng.choice([1, "x", [1, 2], None])
    elif how == "fault-sum":
        doc["faults"].update(stuck_at_min_rate=0.6, stuck_at_max_rate=0.6)
    if how in ("unknown-key", "unknown-section", "delete-section", "delete-key",
               "section-scalar", "fault-sum"):
        body = yaml.safe_dump(doc, sort_keys=False)
    elif how == "not-mapping":
        body = rng.choice(["- 1\n- 2\n", "42\n", "just text\n", "null\n"])
    elif how == "empty":
        body = ""
    elif how == "deep":
        depth = rng.choice([1000, 100_000])
        body = "cell: " + "[" * depth + "]" * depth + "\n"
    elif how == "python-tag":
        body = (f"cell: !!python/object/apply:os.system ['touch {marker}']\n"
                f"array: !!python/object/new:builtins.open ['{marker}', 'w']\n")
    elif how == "multi-doc":
        body = yaml.safe_dump(doc) + "---\n" + yaml.safe_dump(doc)
    elif how == "binary":
        body = bytes(rng.randrange(256) for _ in range(2048))
    else:
        doc["x" * 1_000_000] = 1
        body = yaml.safe_dump(doc, sort_keys=False)
    path = work / "spec.yaml"
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(body)
    return _spec_case(work, "structure", path, expect, how, markers=(marker,))


#: ``--set`` strings and whether they must be refused.
def _set_strings(marker: Path) -> list[tuple[list[str], str]]:
    return [
        (["cell.bits=" + str(10**30)], "error"), (["cell.bits=" + "9" * 5000], "error"),
        (["noise.sigma_rel=nan"], "error"), (["noise.sigma_rel=.nan"], "error"),
        (["noise.sigma_rel=inf"], "error"), (["noise.sigma_rel=1e400"], "error"),
        (["noise.sigma_rel=-0.1"], "error"), (["chip.cores=-1"], "error"),
        (["chip.cores=0"], "error"), (["array.rows=0"], "error"),
        (["array.rows=1.5"], "error"), (["array.cols=" + str(2**40)], "error"),
        (["foo.bar=1"], "error"), (["="], "error"), (["noise.sigma_rel"], "error"),
        (["cell=1"], "error"), (["cell.bits=*a"], "error"), (["cell.bits=&a [*a, *a]"], "error"),
        ([f"cell.bits=!!python/object/apply:os.system ['touch {marker}']"], "error"),
        (["weight.sign_encoding=evil"], "error"), (["__class__.__init__=1"], "error"),
        (["faults.stuck_at_min_rate=0.7", "faults.stuck_at_max_rate=0.7"], "error"),
        (["faults.stuck_at_min_rate=1.5"], "error"), (["cell.g_min_us=20"], "error"),
        (["noise.sigma_rel=0.2"], "ok"), (["cell.bits=1"], "any"), (["array.rows=64"], "ok"),
        (["noise.sigma_rel=0.2", "noise.sigma_rel=0.3"], "any"),
        (["cell.bits=2\nweight.bits: 3"], "any"), (["description=" + "x" * 100_000], "any"),
    ]


def spec_set(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    marker = _marker(work, "set")
    values, expect = rng.choice(_set_strings(marker))
    target = "fefet_128x128" if rng.random() < 0.7 else str(seeds.spec)
    return _spec_case(work, "set", target, expect, " ".join(_short(v, 40) for v in values),
                      overrides=values, markers=(marker,))


# ----------------------------------------------------------------------- data sets


def _data_args(seeds: Seeds, work: Path, data: str, command: str) -> tuple[list[str], Any]:
    layout = work / "layout"
    if not layout.exists():
        shutil.copytree(seeds.layout, layout)
    if command == "calibrate":
        return (["calibrate", str(layout), "--data", data, "--samples", "8", "-o", "cal"],
                output_exists("cal/layout.json"))
    if command == "verify":
        return (["verify", str(layout), "--data", data, "--mc", "1", "--ideal-periphery",
                 "--calib-samples", "8", "--no-report", "--json", "-q"], json_stdout)
    raise ValueError(command)


def _data_case(seeds: Seeds, rng: random.Random, work: Path, kind: str, data: Path | str,
               expect: str, note: str, markers: tuple[Path, ...] = (),
               command: str | None = None, labels_vs_model: bool = False) -> Case:
    """``labels_vs_model``: the labels are valid in themselves but not for the model (a class
    the model does not have): only ``verify`` reads them, ``calibrate`` may accept the data."""
    command = command or rng.choice(["calibrate", "calibrate", "verify"])
    if labels_vs_model and command == "calibrate":
        expect = "any"
    args, check = _data_args(seeds, work, str(data), command)
    return Case("data", kind, 0, work, args, expect, markers, check_ok=check, note=note)


def _seed_xy(seeds: Seeds) -> tuple[np.ndarray, np.ndarray]:
    with np.load(seeds.npz) as z:
        return z["x"].copy(), z["y"].copy()


def data_identity(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    if rng.random() < 0.5:
        path = work / "data.npz"
        shutil.copy(seeds.npz, path)
    else:
        path = work / "idx"
        shutil.copytree(seeds.idx, path)
    return _data_case(seeds, rng, work, "identity", path, "ok", f"the seed {path.name}")


def data_npz_arrays(seeds: Seeds, rng: random.Random, work: Path, *,
                    how: str | None = None) -> Case:
    """Wrong shapes, dtypes, values and keys in a well-formed .npz."""
    x, y = _seed_xy(seeds)
    how = _pick(rng, ["x-flat", "x-no-channel", "x-wrong-size", "x-1d", "x-scalar",
                      "x-complex", "x-str", "x-nan", "x-inf", "y-negative", "y-huge",
                      "y-float", "y-2d", "y-str", "length-mismatch", "empty", "missing-y",
                      "extra-key", "x-bool", "y-uint8"], how)
    arrays: dict[str, np.ndarray] = {"x": x, "y": y}
    expect = "error"
    if how == "x-flat":
        arrays["x"] = x.reshape(len(x), -1)
    elif how == "x-no-channel":
        arrays["x"] = x[:, 0]
    elif how == "x-wrong-size":
        arrays["x"] = x[:, :, :7, :7]
    elif how == "x-1d":
        arrays["x"] = x.reshape(-1)
    elif how == "x-scalar":
        arrays["x"] = np.float32(1.0)
    elif how == "x-complex":
        arrays["x"] = x.astype(np.complex64)
    elif how == "x-str":
        arrays["x"] = x.astype(str)
    elif how in ("x-nan", "x-inf"):  # inputs must be finite (docs/security.md)
        arrays["x"] = x.copy()
        arrays["x"].reshape(-1)[rng.randrange(x.size)] = np.nan if how == "x-nan" else np.inf
    elif how == "y-negative":
        arrays["y"] = y.copy()
        arrays["y"][rng.randrange(len(y))] = -1
    elif how == "y-huge":
        arrays["y"] = y.copy()
        arrays["y"][rng.randrange(len(y))] = rng.choice([10**9, 2**40, 2**63 - 1])
    elif how == "y-float":
        arrays["y"] = y.astype(np.float32) + 0.5
    elif how == "y-2d":
        arrays["y"] = y[:, None]
    elif how == "y-str":
        arrays["y"] = y.astype(str)
    elif how == "length-mismatch":
        arrays["y"] = y[:-1]
    elif how == "empty":
        arrays = {"x": x[:0], "y": y[:0]}
    elif how == "missing-y":
        del arrays["y"]
    elif how == "extra-key":
        arrays["z"] = np.zeros(3)
        expect = "any"
    elif how == "x-bool":
        arrays["x"] = x > 0.5
        expect = "any"
    else:
        arrays["y"] = y.astype(np.uint8)
        expect = "any"
    path = work / "data.npz"
    np.savez(path, **arrays)
    return _data_case(seeds, rng, work, "npz-arrays", path, expect, how)


def _npy_bytes_with_header(array: np.ndarray, shape: Sequence[int] | str,
                           dtype: str | None = None) -> bytes:
    """An .npy whose header declares ``shape`` (and ``dtype``) over ``array``'s data."""
    header = {"descr": dtype or np.lib.format.dtype_to_descr(array.dtype),
              "fortran_order": False, "shape": shape}
    text = repr(header) if not isinstance(shape, str) else \
        f"{{'descr': {header['descr']!r}, 'fortran_order': False, 'shape': {shape}, }}"
    raw = text.encode("latin1")
    raw += b" " * ((64 - (10 + len(raw) + 1) % 64) % 64) + b"\n"  # 64-byte aligned, as numpy
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw + array.tobytes()


def data_npz_header(seeds: Seeds, rng: random.Random, work: Path, *,
                    how: str | None = None) -> Case:
    """The .npy header inside the .npz edited: huge or negative shapes, other dtypes."""
    x, y = _seed_xy(seeds)
    how = _pick(rng, ["huge", "huge-1d", "negative", "overflow", "object", "big-endian",
                      "short-data", "expression", "fortran"], how)
    expect = "error"
    if how == "huge":
        xb = _npy_bytes_with_header(x, (10**9, 1, 8, 8))
    elif how == "huge-1d":
        xb = _npy_bytes_with_header(x, (2**62,))
    elif how == "negative":
        xb = _npy_bytes_with_header(x, (-200, 1, 8, 8))
    elif how == "overflow":
        xb = _npy_bytes_with_header(x, (2**32, 2**32, 8, 8))
    elif how == "object":
        xb = _npy_bytes_with_header(x, x.shape, "|O")
    elif how == "big-endian":
        xb = _npy_bytes_with_header(x.astype(">f4"), x.shape, ">f4")
        expect = "any"
    elif how == "short-data":
        xb = _npy_bytes_with_header(x[:100], x.shape)
    elif how == "expression":
        xb = _npy_bytes_with_header(x, "__import__('os').system('true')")
    else:
        xb = _npy_bytes_with_header(x, x.shape)
        xb = xb.replace(b"'fortran_order': False", b"'fortran_order': True ", 1)
        expect = "any"
    buffer = io.BytesIO()
    np.save(buffer, y)
    path = work / "data.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", xb)
        z.writestr("y.npy", buffer.getvalue())
    return _data_case(seeds, rng, work, "npz-header", path, expect, f"x.npy header: {how}")


def data_npz_pickle(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    marker = _marker(work, "npz")
    x, y = _seed_xy(seeds)
    objects = np.empty(len(y), dtype=object)
    objects[:] = [_Payload(marker)] * len(y)
    which = rng.choice(["x", "y"])
    path = work / "data.npz"
    np.savez(path, x=objects if which == "x" else x, y=objects if which == "y" else y)
    return _data_case(seeds, rng, work, "npz-pickle", path, "error",
                      f"{which} is an object array with a payload", markers=(marker,))


def data_npz_file(seeds: Seeds, rng: random.Random, work: Path, *,
                  how: str | None = None) -> Case:
    how = _pick(rng, ["truncate", "flip", "empty", "not-zip", "fifo", "directory", "dev-zero"],
                how)
    path = work / "data.npz"
    data = seeds.npz.read_bytes()
    expect = "error"
    if how == "truncate":
        path.write_bytes(data[:rng.randrange(1, len(data))])
    elif how == "flip":
        flipped = bytearray(data)
        at = rng.randrange(len(flipped))
        flipped[at] ^= 0xFF
        path.write_bytes(bytes(flipped))
        expect = "any"
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "not-zip":
        path.write_bytes(b"x,y\n1,2\n")
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "directory":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero")
    return _data_case(seeds, rng, work, "npz-file", path, expect, how)


def data_npz_bomb(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    """x.npy deflated: 8 MiB in the file, 1 GiB inflated, and a header that declares 16 GiB."""
    _, y = _seed_xy(seeds)
    buffer = io.BytesIO()
    np.save(buffer, y)
    path = work / "data.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("y.npy", buffer.getvalue())
        header = _npy_bytes_with_header(np.zeros(0, np.float32), (2**32, 1, 1, 1))
        with z.open("x.npy", "w", force_zip64=True) as member:
            member.write(header)
            chunk = bytes(2**24)
            for _ in range(2**30 // len(chunk)):
                member.write(chunk)
    return _data_case(seeds, rng, work, "npz-bomb", path, "error", "x.npy: 1 GiB of zeros "
                      "declared as 16 GiB", command=rng.choice(["calibrate", "verify"]))


def data_idx(seeds: Seeds, rng: random.Random, work: Path, *,
             how: str | None = None) -> Case:
    """MNIST IDX files with lying headers, cut data, labels out of range, or not regular files."""
    folder = work / "idx"
    shutil.copytree(seeds.idx, folder)
    images = folder / "t10k-images-idx3-ubyte"
    labels = folder / "t10k-labels-idx1-ubyte"
    raw = images.read_bytes()
    how = _pick(rng, ["huge-dims", "overflow-dims", "negative-dims", "truncated", "labels-255",
                      "count-mismatch", "fifo", "directory", "dev-zero", "gz-bomb", "bad-gz",
                      "wrong-type", "zero-samples", "train-only-images", "big-images"], how)
    target = images
    if how == "huge-dims":
        target.write_bytes(raw[:4] + struct.pack(">3i", 60000, 2**15, 2**15) + raw[16:])
    elif how == "overflow-dims":
        target.write_bytes(raw[:4] + struct.pack(">3i", 2**31 - 1, 2**31 - 1, 2**31 - 1)
                           + raw[16:])
    elif how == "negative-dims":
        target.write_bytes(raw[:4] + struct.pack(">3i", -1, 8, 8) + raw[16:])
    elif how == "truncated":
        target.write_bytes(raw[:rng.randrange(1, len(raw))])
    elif how == "labels-255":
        y = np.frombuffer(labels.read_bytes()[8:], np.uint8).copy()
        y[rng.randrange(len(y))] = 255
        labels.write_bytes(_idx_bytes(y))
    elif how == "count-mismatch":
        y = np.frombuffer(labels.read_bytes()[8:], np.uint8)
        labels.write_bytes(_idx_bytes(y[:-3]))
    elif how == "fifo":
        target.unlink()
        os.mkfifo(target)
    elif how == "directory":
        target.unlink()
        target.mkdir()
    elif how == "dev-zero":
        target.unlink()
        target.symlink_to("/dev/zero")
    elif how == "gz-bomb":  # concatenated gzip members: 4 GiB of image data from ~4 MiB
        target.unlink()
        member = gzip.compress(bytes(2**26), compresslevel=1)
        header = gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">3i", 2**26, 8, 8))
        with open(folder / "t10k-images-idx3-ubyte.gz", "wb") as fh:
            fh.write(header)
            fh.writelines(member for _ in range(64))
    elif how == "bad-gz":
        target.unlink()
        (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw)[:-20])
    elif how == "wrong-type":
        target.write_bytes(raw[:2] + b"\x0d" + raw[3:])
    elif how == "zero-samples":
        target.write_bytes(_idx_bytes(np.zeros((0, 8, 8), np.uint8)))
        labels.write_bytes(_idx_bytes(np.zeros(0, np.uint8)))
    elif how == "train-only-images":
        shutil.copy(images, folder / "train-images-idx3-ubyte")
    else:  # 28x28 images for a model that takes 8x8
        n = 200
        images.write_bytes(_idx_bytes(np.zeros((n, 28, 28), np.uint8)))
    return _data_case(seeds, rng, work, "idx", folder, "error", how,
                      labels_vs_model=how == "labels-255")


def data_cifar_pickle(seeds: Seeds, rng: random.Random, work: Path) -> Case:
    marker = _marker(work, "cifar")
    folder = work / "cifar"
    folder.mkdir()
    payload = rng.choice(["data", "labels", "top"])
    batch: Any = {b"data": np.zeros((10, 3072), np.uint8), b"labels": list(range(10))}
    if payload == "top":
        batch = _Payload(marker)
    else:
        batch[payload.encode()] = _Payload(marker)
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    return _data_case(seeds, rng, work, "cifar-pickle", folder, "error",
                      f"test_batch with a payload in {payload}", markers=(marker,))


# ----------------------------------------------------------------------- flags


#: value -> expectation, per kind of flag. "error": must be refused; "any": 0 or 2.
_COUNT_VALUES = {"nan": "error", "inf": "error", "-1": "error", "0": "error", "1e9": "error",
                 "abc": "error", "": "error", "1.5": "error", "0x10": "error",
                 "9" * 5000: "error"}
_FLOAT_VALUES = {"nan": "error", "inf": "error", "-inf": "error", "1e400": "error",
                 "abc": "error", "": "error", "NaN": "error", "-nan": "error"}
_SIGMA_VALUES = {**_FLOAT_VALUES, "-1": "error", "-0.1": "error", "0": "any", "1e9": "any",
                 "1e-300": "any"}
_LR_VALUES = {**_FLOAT_VALUES, "-1": "error", "0": "error", "1e9": "any", "1e-300": "any"}
_BETA_VALUES = {**_FLOAT_VALUES, "-1": "any", "0": "any", "1e9": "any"}
_SEED_VALUES = {"-1": "error", "nan": "error", "abc": "error", "1.5": "error",
                "9" * 5000: "error", str(2**64): "any", str(2**63): "any", "0": "any"}


def _flag_templates(work: Path) -> dict[str, tuple[list[str], dict[str, dict]]]:
    layout = str(work / "layout")
    model = str(work / "model.pt2")
    verify = ["verify", layout, "--mc", "1", "--ideal-periphery", "--calib-samples", "8",
              "--no-report", "--json", "-q"]
    neft = ["--neft", "nit", "--epochs", "1", "-q"]
    return {
        "verify": (verify, {"--mc": {**_COUNT_VALUES, "1000000000": "error"},
                            "--sigma": _SIGMA_VALUES, "--seed": _SEED_VALUES,
                            "--batch-size": {**_COUNT_VALUES, "1000000000": "any"},
                            "--calib-samples": {**_COUNT_VALUES, "1000000000": "any"},
                            "--chips-per-pass": {**_COUNT_VALUES, "1000000000": "any"}}),
        "compile": (["compile", model, "-o", "out", "-q", "--json", "--no-replicate",
                     "--dac-data", "digits", "--dac-samples", "8"],
                    {"--dac-samples": {**_COUNT_VALUES, "1000000000": "any"}}),
        "compile-neft": (["compile", model, "-o", "out", "--json", "--no-replicate", *neft],
                         {"--lr": _LR_VALUES, "--beta": _BETA_VALUES,
                          "--train-sigma": _SIGMA_VALUES, "--batch-size": _COUNT_VALUES,
                          "--seed": _SEED_VALUES, "--epochs": _COUNT_VALUES}),
        "finetune": (["finetune", model, "-o", "tuned.pt2", *neft],
                     {"--lr": _LR_VALUES, "--beta": _BETA_VALUES,
                      "--train-sigma": _SIGMA_VALUES, "--batch-size": _COUNT_VALUES,
                      "--seed": _SEED_VALUES, "--epochs": _COUNT_VALUES}),
        "train": (["train", "lenet", "--data", "digits", "--epochs", "1", "-o", "m.pt2", "-q"],
                  {"--lr": _LR_VALUES, "--batch-size": _COUNT_VALUES, "--seed": _SEED_VALUES,
                   "--epochs": _COUNT_VALUES}),
        "train-neft": (["train", "lenet", "--data", "digits", "--epochs", "1", "-o", "m.pt2",
                        "-q", "--neft", "nit", "--neft-epochs", "1"],
                       {"--neft-epochs": _COUNT_VALUES, "--train-sigma": _SIGMA_VALUES,
                        "--beta": _BETA_VALUES}),
        "calibrate": (["calibrate", layout, "--data", "digits", "--samples", "8", "-o", "cal"],
                      {"--samples": {**_COUNT_VALUES, "1000000000": "any"}}),
        "diff": (["diff", layout, layout, "--cells", "--json"],
                 {"--cells-limit": {**_COUNT_VALUES, "0": "any", "1000000000": "any"}}),
    }


def _pick(rng: random.Random, choices: Sequence[Any], pinned: Any = None) -> Any:
    """``rng.choice(choices)``, or ``pinned`` (a corpus entry's variant) when given."""
    if pinned is None:
        return rng.choice(list(choices))
    if pinned not in choices:
        raise ValueError(f"{pinned!r} is not one of {list(choices)}")
    return pinned


def _flag_check(command: str) -> Callable[[Outcome], str | None]:
    return {"verify": json_stdout, "compile": both(json_stdout, output_exists("out/layout.json")),
            "compile-neft": both(json_stdout, output_exists("out/layout.json")),
            "finetune": output_exists("tuned.pt2"), "train": output_exists("m.pt2"),
            "train-neft": output_exists("m.pt2"), "calibrate": output_exists("cal/layout.json"),
            "diff": json_stdout}[command]


def flag_case(seeds: Seeds, rng: random.Random, work: Path, *, command: str | None = None,
              flag: str | None = None, value: str | None = None) -> Case:
    templates = _flag_templates(work)
    command = command or rng.choice(sorted(templates))
    base, flags = templates[command]
    flag = flag or rng.choice(sorted(flags))
    values = flags[flag]
    value = value if value is not None else rng.choice(sorted(values))
    expect = values.get(value, "any")
    if str(work / "layout") in base:
        shutil.copytree(seeds.layout, work / "layout")
        for extra in ("report.html", "report.txt"):
            (work / "layout" / extra).unlink(missing_ok=True)
    if str(work / "model.pt2") in base:
        shutil.copy(seeds.model, work / "model.pt2")
    args = list(base)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    # `--flag=value` so that values starting with '-' reach the option's type check
    at = args.index(flag)
    args[at:at + 2] = [f"{flag}={value}"]
    return Case("flags", f"{command}{flag}", 0, work, args, expect,
                check_ok=_flag_check(command), note=f"{flag}={_short(value, 20)}")


# ================================================================================ registry


Mutant = Callable[[Seeds, random.Random, Path], Case]

MUTANTS: dict[str, dict[str, Mutant]] = {
    "layout": {
        "identity": lay_identity, "delete-key": lay_delete_key,
        "duplicate-key": lay_duplicate_key, "change-type": lay_change_type,
        "number": lay_number, "deep-nesting": lay_deep_nesting,
        "unknown-key": lay_unknown_key, "not-resigned": lay_not_resigned,
        "graph-op": lay_graph_op, "alloc-bomb": lay_alloc_bomb, "graph-refs": lay_graph_refs,
        "tile-range": lay_tile_range, "placement": lay_placement, "semantic": lay_semantic,
        "level-range": lay_level, "sidecar-flip": lay_sidecar_flip,
        "sidecar-truncate": lay_sidecar_truncate, "file-kind": lay_file_kind,
        "json-text": lay_json_text,
    },
    "archive": {
        "identity": arc_identity, "rezip": arc_rezip, "byte-flip": arc_byte_flip,
        "truncate": arc_truncate, "members": arc_members, "pickle": arc_pickle,
        "pt-payload": arc_pt_payload, "file-kind": arc_file_kind,
        "program-json": arc_program_json,
    },
    "spec": {
        "identity": spec_identity, "alias-bomb": spec_alias_bomb, "value": spec_value,
        "structure": spec_structure, "set": spec_set,
    },
    "data": {
        "identity": data_identity, "npz-arrays": data_npz_arrays,
        "npz-header": data_npz_header, "npz-pickle": data_npz_pickle,
        "npz-file": data_npz_file, "npz-bomb": data_npz_bomb, "idx": data_idx,
        "cifar-pickle": data_cifar_pickle,
    },
    "flags": {"flag": flag_case},
}

#: Kinds that are slow to build (seconds of compression) or that only a long budget affords.
SLOW_KINDS = {("data", "npz-bomb")}


def make_case(category: str, kind: str, seed: int, seeds: Seeds, work: Path,
              **options: Any) -> Case:
    """The case ``(category, kind, seed)`` built in the fresh folder ``work``."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=False)
    case = MUTANTS[category][kind](seeds, random.Random(f"{category}/{kind}/{seed}"), work,
                                   **options)
    case.seed = seed
    return case


@dataclass(frozen=True)
class CorpusEntry:
    """A fixed case: ``(category, kind, seed)`` plus options that pin the dangerous variant."""

    name: str
    category: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    timeout: float = 30

    def build(self, seeds: Seeds, work: Path) -> Case:
        case = make_case(self.category, self.kind, 0, seeds, work, **self.options)
        case.timeout = self.timeout
        return case


#: The most dangerous inputs: code execution (a payload marker), hangs and unbounded memory. Each
#: ran code, hung, crashed or was silently accepted before issue 10 (tests/test_fuzz.py runs them
#: all in the default suite).
CORPUS: list[CorpusEntry] = [
    # code from a layout: aten.from_file creates (and can then overwrite) any file
    CorpusEntry("layout-from-file-verify", "layout", "graph-op",
                {"insert": True, "op_index": 0, "command": "verify"}),
    # unbounded work from a layout
    CorpusEntry("layout-ones-mm-verify", "layout", "alloc-bomb", {"command": "verify"}),
    CorpusEntry("layout-cell-bits-1e30", "layout", "semantic", {"how": "cell_bits 10**30"}),
    CorpusEntry("layout-json-nested-100000", "layout", "deep-nesting", {"depth": 100_000}),
    CorpusEntry("layout-json-5000-digits", "layout", "number", {"raw": "9" * 5000}),
    CorpusEntry("layout-levels-fifo", "layout", "file-kind", {"file": "levels.bin",
                                                              "how": "fifo"}),
    # code from a .pt2 without --trust-model: every member torch.export.load would unpickle
    CorpusEntry("archive-pickle-sample-inputs", "archive", "pickle", {"where": "sample-inputs"}),
    CorpusEntry("archive-pickle-weight", "archive", "pickle", {"where": "weight"}),
    CorpusEntry("archive-pickle-tensor-constant", "archive", "pickle",
                {"where": "tensor-constant"}),
    CorpusEntry("archive-pickle-opaque-constant", "archive", "pickle",
                {"where": "opaque-constant"}),
    CorpusEntry("archive-pickle-legacy-weights", "archive", "pickle",
                {"where": "legacy-weights"}),
    CorpusEntry("archive-pt-payload", "archive", "pt-payload", {"how": "torch.save zip"}),
    # a program whose graph calls builtins.open (torch refuses to resolve it; nothing may run)
    CorpusEntry("archive-program-calls-open", "archive", "program-json",
                {"how": "op", "op": "builtins.open"}),
    # specs: an alias bomb, a python tag
    CorpusEntry("spec-alias-bomb", "spec", "alias-bomb", {"spot": "unknown", "levels": 12}),
    CorpusEntry("spec-python-tag", "spec", "structure", {"how": "python-tag"}),
    # data: pickles, a FIFO and /dev/zero where a file is expected
    CorpusEntry("data-npz-object-payload", "data", "npz-pickle"),
    CorpusEntry("data-cifar-payload", "data", "cifar-pickle"),
    CorpusEntry("data-idx-fifo", "data", "idx", {"how": "fifo"}),
    # flags: memory before the first chip, silent NaN, a traceback
    CorpusEntry("flags-verify-mc-1e9", "flags", "flag",
                {"command": "verify", "flag": "--mc", "value": "1000000000"}),
    CorpusEntry("flags-verify-sigma-nan", "flags", "flag",
                {"command": "verify", "flag": "--sigma", "value": "nan"}),
    CorpusEntry("flags-verify-seed-negative", "flags", "flag",
                {"command": "verify", "flag": "--seed", "value": "-1"}),
]


def _slow_corpus() -> list[CorpusEntry]:
    """The long corpus (``@pytest.mark.slow`` and scripts/fuzz.py): every dangerous graph op
    through every command that reads a layout, the bombs, and the file kinds."""
    entries: list[CorpusEntry] = []
    for k in range(len(_dangerous_ops(Path("marker")))):
        for command, insert in (("inspect", True), ("inspect", False), ("verify", True),
                                ("verify", False), ("export-onnx", True)):
            how = "insert" if insert else "replace"
            entries.append(CorpusEntry(f"layout-op{k}-{command}-{how}", "layout", "graph-op",
                                       {"insert": insert, "op_index": k, "command": command}, 60))
    for how in ("directory", "fifo", "dev-zero", "dangling", "empty", "missing"):
        for file in ("layout.json", "levels.bin", "tensors.bin", "SHA256SUMS"):
            entries.append(CorpusEntry(f"layout-{file}-{how}", "layout", "file-kind",
                                       {"how": how, "file": file}, 60))
    for where in ("sample-inputs", "weight", "tensor-constant", "opaque-constant",
                  "legacy-weights", "legacy-constants"):
        entries.append(CorpusEntry(f"archive-pickle-{where}", "archive", "pickle",
                                   {"where": where}, 60))
    for how in ("non-zip", "empty", "directory", "fifo", "dev-zero", "zip-of-garbage", "json"):
        entries.append(CorpusEntry(f"archive-{how}", "archive", "file-kind", {"how": how}, 60))
    entries.append(CorpusEntry("archive-pt-legacy-pickle", "archive", "pt-payload",
                               {"how": "legacy pickle"}, 60))
    for spot in ("description", "sources", "noise.sigma_rel", "unknown"):
        entries.append(CorpusEntry(f"spec-alias-bomb-{spot}", "spec", "alias-bomb",
                                   {"spot": spot, "levels": 12}, 60))
    for how in ("deep", "python-tag", "binary", "not-mapping", "fault-sum", "huge-key"):
        entries.append(CorpusEntry(f"spec-{how}", "spec", "structure", {"how": how}, 60))
    for how in ("huge-dims", "overflow-dims", "negative-dims", "fifo", "directory",
                "dev-zero", "gz-bomb", "bad-gz", "labels-255"):
        entries.append(CorpusEntry(f"data-idx-{how}", "data", "idx", {"how": how}, 60))
    for how in ("huge", "huge-1d", "negative", "overflow", "object", "expression"):
        entries.append(CorpusEntry(f"data-npz-header-{how}", "data", "npz-header",
                                   {"how": how}, 60))
    for how in ("fifo", "directory", "dev-zero", "not-zip", "empty"):
        entries.append(CorpusEntry(f"data-npz-{how}", "data", "npz-file", {"how": how}, 60))
    entries.append(CorpusEntry("data-npz-bomb", "data", "npz-bomb", {}, 60))
    templates = _flag_templates(Path("w"))
    for command, (_, flags) in sorted(templates.items()):
        for flag, values in sorted(flags.items()):
            for value, expect in sorted(values.items()):
                if expect == "error" and value not in ("abc", "", "0x10", "1.5", "NaN", "-nan"):
                    options = {"command": command, "flag": flag, "value": value}
                    entries.append(CorpusEntry(f"flags-{command}{flag}={_short(value, 12)}",
                                               "flags", "flag", options, 60))
    return entries


SLOW_CORPUS: list[CorpusEntry] = _slow_corpus()
