"""The results store of ``neftc sweep``: one SQLite file (standard library ``sqlite3``, WAL mode)
that holds every finished chip instance of a Monte-Carlo grid.

A chip instance is one row of ``chips``, keyed by what makes it that chip: the layout (SHA-256 of
its ``SHA256SUMS``, which names ``layout.json`` and its sidecars by hash), the data (SHA-256 of
the fitted test split: :func:`data_sha256`), sigma, noise mode, periphery, seed and chip index.
Rows are added with ``INSERT OR IGNORE``, one transaction per chip, so a sweep killed at any
moment keeps every chip it committed, and two sweeps writing the same store at once can neither
corrupt it nor store a chip twice. ``noise_free`` holds the noise-free accuracy per (layout,
data, periphery) together with the input DAC ranges the target periphery used (a sweep with
other ranges for the same key is refused); ``layouts`` and ``datasets`` name each SHA-256 for
the report.

Keep the file on a local disk: SQLite's locking is not safe on NFS.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_args

import torch

from neftc.bounds import MAX_SEED
from neftc.errors import NeftcError
from neftc.flow.verify import MAX_SAMPLES, MAX_TRIALS
from neftc.format.schema import CHECKSUMS_FILE
from neftc.runtime.noise import NoiseMode
from neftc.targets.spec import SIGMA_REL_MAX

#: ``meta.format`` of a neftc sweep store, and the schema version this code reads and writes.
STORE_FORMAT = "neftc-sweep-store"
STORE_VERSION = 1
#: Milliseconds a connection waits for another writer's lock before failing.
BUSY_TIMEOUT_MS = 60_000
#: Seconds the one-time set-up of a new store retries when another process is setting it up.
SETUP_RETRY_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS layouts (
    layout_sha256 TEXT PRIMARY KEY, path TEXT NOT NULL, target TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    data_sha256 TEXT PRIMARY KEY, spec TEXT NOT NULL, name TEXT NOT NULL,
    test_samples INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS noise_free (
    layout_sha256 TEXT NOT NULL, data_sha256 TEXT NOT NULL, periphery TEXT NOT NULL,
    accuracy REAL NOT NULL, dac TEXT NOT NULL, dac_sha256 TEXT NOT NULL,
    PRIMARY KEY (layout_sha256, data_sha256, periphery));
CREATE TABLE IF NOT EXISTS chips (
    layout_sha256 TEXT NOT NULL, data_sha256 TEXT NOT NULL, sigma REAL NOT NULL,
    noise TEXT NOT NULL, periphery TEXT NOT NULL, seed INTEGER NOT NULL, chip INTEGER NOT NULL,
    accuracy REAL NOT NULL, mean_confidence REAL NOT NULL,
    PRIMARY KEY (layout_sha256, data_sha256, sigma, noise, periphery, seed, chip)
) WITHOUT ROWID;
"""
_TABLES = {"meta", "layouts", "datasets", "noise_free", "chips"}


class StoreError(NeftcError):
    """A file that is not a neftc sweep store, one of another version, or one that cannot be
    opened or written."""


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: every chip of it shares these (the chip index varies)."""

    layout_sha256: str
    data_sha256: str
    sigma: float
    noise: str
    periphery: str  # "ideal" or "target"
    seed: int

    def key(self) -> tuple[str, str, float, str, str, int]:
        return (self.layout_sha256, self.data_sha256, self.sigma, self.noise, self.periphery,
                self.seed)


@dataclass(frozen=True)
class ChipRow:
    chip: int
    accuracy: float
    mean_confidence: float


@dataclass(frozen=True)
class NoiseFree:
    accuracy: float
    dac: str  # where the input DAC ranges come from ("" for ideal periphery)
    dac_sha256: str  # of the ranges used ("" for ideal periphery)


def layout_sha256(layout_dir: str | Path) -> str:
    """SHA-256 of the layout's ``SHA256SUMS`` file (which names ``layout.json`` and its sidecars
    by hash): the identity of the layout's contents, wherever it lies."""
    return hashlib.sha256((Path(layout_dir) / CHECKSUMS_FILE).read_bytes()).hexdigest()


def tensors_sha256(tensors: Iterable[torch.Tensor]) -> str:
    """SHA-256 over each tensor's dtype, shape and bytes (C order), in order."""
    digest = hashlib.sha256()
    for tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def data_sha256(inputs: Sequence[torch.Tensor], labels: torch.Tensor) -> str:
    """SHA-256 of a fitted test split: its input tensors (in the layout's input order), then the
    labels."""
    return tensors_sha256([*inputs, labels])


Row = TypeVar("Row")

#: Longest text field read back (paths, specs, names, DAC descriptions).
MAX_TEXT = 4096
#: Most test samples a stored data set may name (verify's sample bound).
MAX_TEST_SAMPLES = MAX_SAMPLES
NOISE_MODES: tuple[str, ...] = get_args(NoiseMode)
PERIPHERIES = ("ideal", "target")


class _Bad(Exception):
    """A stored value outside its bounds (turned into a StoreError naming the store)."""


def _text(value: object, *, choices: Sequence[str] = (), sha: bool = False,
          empty: bool = True) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT or (not empty and not value):
        raise _Bad(f"a text field holds {type(value).__name__} {str(value)[:40]!r}")
    if choices and value not in choices:
        raise _Bad(f"{value[:40]!r} is not one of {', '.join(choices)}")
    if sha and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value)):
        raise _Bad(f"{value[:70]!r} is not a SHA-256 in hex")
    return value


def _integer(value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _Bad(f"{str(value)[:40]!r} is not an integer in {low} .. {high}")
    return value


def _real(value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and low <= value <= high):
        raise _Bad(f"{str(value)[:40]!r} is not a finite number in {low} .. {high}")
    return float(value)


def _not_a_store(path: Path, why: str) -> StoreError:
    return StoreError(f"'{path}' is not a neftc sweep store ({why}); give --store a new file "
                      f"name (the store is created) or a store written by 'neftc sweep'")


class SweepStore:
    """An open store. Use as a context manager, or call :meth:`close`."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise StoreError(f"no sweep store at '{self.path}'; run 'neftc sweep LAYOUT ... "
                             f"--store {self.path}' first, or give the path of an existing "
                             f"store")
        if self.path.is_dir():
            raise StoreError(f"--store '{self.path}' is a directory; give a file name")
        if create and not self.path.parent.is_dir():
            raise StoreError(f"the folder of --store '{self.path}' does not exist; create it "
                             f"or give another path")
        try:
            self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                      isolation_level=None)  # transactions are explicit
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the sweep store '{self.path}': {exc}") from None
        try:
            self._set_up(create)
        except BaseException:
            self.db.close()
            raise

    def __enter__(self) -> SweepStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ set-up and checks

    def _set_up(self, create: bool) -> None:
        deadline = time.monotonic() + SETUP_RETRY_S
        while True:
            try:
                self._try_set_up(create)
                return
            except sqlite3.OperationalError as exc:
                # A second process creating the same store at this moment holds the lock that
                # switching to WAL needs (SQLite does not wait for it): try again.
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise StoreError(f"cannot open the sweep store '{self.path}': {exc}; "
                                     f"check the file's permissions and that its folder is "
                                     f"on a local disk") from None
                if time.monotonic() > deadline:
                    raise StoreError(f"the sweep store '{self.path}' stayed locked for "
                                     f"{SETUP_RETRY_S:g} s; is another program holding it?"
                                     ) from None
                time.sleep(0.05)
            except sqlite3.DatabaseError as exc:
                raise _not_a_store(self.path, str(exc)) from None

    def _try_set_up(self, create: bool) -> None:
        db = self.db
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        tables = {row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "meta" not in tables:
            raise _not_a_store(self.path, f"it is an SQLite file with the tables "
                               f"{sorted(tables)} and no 'meta' table")
        if not tables and not create:
            raise _not_a_store(self.path, "it is empty")
        if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"the sweep store '{self.path}' cannot use SQLite's WAL mode "
                                 f"(got '{mode}'); keep it on a local disk")
        if create:
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (STORE_FORMAT,))
                db.execute("INSERT OR IGNORE INTO meta VALUES ('version', ?)",
                           (str(STORE_VERSION),))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        self._check_version()

    def _check_version(self) -> None:
        meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != STORE_FORMAT:
            raise _not_a_store(self.path, f"its meta table says format "
                               f"{meta.get('format')!r}, not {STORE_FORMAT!r}")
        if meta.get("version") != str(STORE_VERSION):
            raise StoreError(f"the sweep store '{self.path}' has version "
                             f"{meta.get('version')!r}; this neftc reads and writes version "
                             f"{STORE_VERSION}: use the neftc that wrote it, or start a new "
                             f"store (another --store file)")
        tables = {row[0] for row in self.db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables >= _TABLES:
            raise _not_a_store(self.path, f"tables {sorted(_TABLES - tables)} are missing")

    # ------------------------------------------------------------------ writes

    def _write(self, sql: str, params: Sequence[object]) -> int:
        """Run one statement in its own transaction; return the rows it changed."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                changed = self.db.execute(sql, params).rowcount
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the sweep store '{self.path}': {exc}") from None
        return int(changed)

    def name_layout(self, sha256: str, path: str, target: str) -> None:
        """Record where layout ``sha256`` was last read from, and its target."""
        self._write("INSERT OR REPLACE INTO layouts VALUES (?, ?, ?)", (sha256, path, target))

    def name_data(self, sha256: str, spec: str, name: str, test_samples: int) -> None:
        self._write("INSERT OR REPLACE INTO datasets VALUES (?, ?, ?, ?)",
                    (sha256, spec, name, test_samples))

    def add_noise_free(self, layout: str, data: str, periphery: str, value: NoiseFree) -> None:
        """Store the noise-free accuracy of (layout, data, periphery) unless stored; refuse
        when the store's was measured with other input DAC ranges."""
        self._write("INSERT OR IGNORE INTO noise_free VALUES (?, ?, ?, ?, ?, ?)",
                    (layout, data, periphery, value.accuracy, value.dac, value.dac_sha256))
        stored = self.noise_free(layout, data, periphery)
        assert stored is not None
        if stored.dac_sha256 != value.dac_sha256:
            raise StoreError(f"the store '{self.path}' holds chips of this layout and data "
                             f"with the target periphery whose input DAC ranges were "
                             f"{stored.dac}; this sweep's are {value.dac}: they are other "
                             f"chips. Use the same --calib-samples (and data), or another "
                             f"--store")

    def add_chip(self, cell: Cell, row: ChipRow) -> bool:
        """Store one finished chip instance in its own transaction; False when the store
        already held it (another sweep stored it first)."""
        return self._write("INSERT OR IGNORE INTO chips VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (*cell.key(), row.chip, row.accuracy, row.mean_confidence)) == 1

    # ------------------------------------------------------------------ reads

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        try:
            return list(self.db.execute(sql, params).fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the sweep store '{self.path}': {exc}") from None

    def _rows(self, table: str, sql: str, params: Sequence[object],
              check: Callable[..., Row]) -> list[Row]:
        """The rows ``sql`` selects, each checked (types and bounds) by ``check``: a store is a
        file like any other, and an edited or damaged one is refused, not believed."""
        out = []
        for row in self._read(sql, params):
            try:
                out.append(check(*row))
            except _Bad as exc:
                raise StoreError(f"the sweep store '{self.path}' holds an invalid value in "
                                 f"table '{table}' ({exc}): it was edited or damaged; start a "
                                 f"new store (--store NEW_FILE)") from None
        return out

    def stored_chips(self, cell: Cell) -> set[int]:
        """The chip indices of ``cell`` already stored."""
        return set(self._rows(
            "chips", "SELECT chip FROM chips WHERE layout_sha256 = ? AND data_sha256 = ? AND "
            "sigma = ? AND noise = ? AND periphery = ? AND seed = ?", cell.key(),
            lambda c: _integer(c, 0, MAX_TRIALS - 1)))

    def chips(self, cell: Cell) -> list[ChipRow]:
        """The stored chips of ``cell``, in chip order."""
        return self._rows(
            "chips", "SELECT chip, accuracy, mean_confidence FROM chips WHERE layout_sha256 = ? "
            "AND data_sha256 = ? AND sigma = ? AND noise = ? AND periphery = ? AND seed = ? "
            "ORDER BY chip", cell.key(),
            lambda c, a, m: ChipRow(_integer(c, 0, MAX_TRIALS - 1), _real(a, 0, 1),
                                    _real(m, 0, 1)))

    def cells(self) -> list[Cell]:
        """Every cell with at least one stored chip, in a stable order."""
        return self._rows(
            "chips", "SELECT DISTINCT layout_sha256, data_sha256, sigma, noise, periphery, seed "
            "FROM chips ORDER BY layout_sha256, data_sha256, noise, periphery, seed, sigma", (),
            lambda a, d, s, n, p, k: Cell(
                _text(a, sha=True), _text(d, sha=True), _real(s, 0, SIGMA_REL_MAX),
                _text(n, choices=NOISE_MODES), _text(p, choices=PERIPHERIES),
                _integer(k, 0, MAX_SEED)))

    def noise_free(self, layout: str, data: str, periphery: str) -> NoiseFree | None:
        rows = self._rows(
            "noise_free", "SELECT accuracy, dac, dac_sha256 FROM noise_free WHERE "
            "layout_sha256 = ? AND data_sha256 = ? AND periphery = ?", (layout, data, periphery),
            lambda a, d, h: NoiseFree(_real(a, 0, 1), _text(d), _text(h, sha=bool(h))))
        return rows[0] if rows else None

    def layout_names(self) -> dict[str, tuple[str, str]]:
        """Layout SHA-256 -> (path, target)."""
        return dict(self._rows(
            "layouts", "SELECT layout_sha256, path, target FROM layouts", (),
            lambda s, p, t: (_text(s, sha=True), (_text(p), _text(t)))))

    def data_names(self) -> dict[str, tuple[str, str, int]]:
        """Data SHA-256 -> (spec, name, test samples)."""
        return dict(self._rows(
            "datasets", "SELECT data_sha256, spec, name, test_samples FROM datasets", (),
            lambda s, p, n, k: (_text(s, sha=True),
                                (_text(p), _text(n), _integer(k, 0, MAX_TEST_SAMPLES)))))
