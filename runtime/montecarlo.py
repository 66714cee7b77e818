"""Monte-Carlo accuracy sign-off: one trial = one chip instance evaluated on the whole test set."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from neftc.distributed import SINGLE, Group
from neftc.runtime.chip import ChipInstance
from neftc.runtime.emulator import Emulator
from neftc.runtime.inputs import Inputs, num_samples, rows

# Two-sided 95 % Student-t quantiles for 1..29 degrees of freedom; 1.96 beyond.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045]


@dataclass(frozen=True)
class McStats:
    trials: int
    mean: float
    std: float
    ci95: float  # half-width of the 95 % confidence interval of the mean (Student t)
    min: float
    p5: float
    max: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def t95(df: int) -> float:
    """The two-sided 95 % quantile of Student's t with ``df`` >= 1 degrees of freedom: the table
    up to 29, then the Cornish-Fisher expansion about the normal quantile (within 2e-4 of the
    exact value from 30 on)."""
    if df < 1:
        raise ValueError(f"Student t needs at least one degree of freedom, got {df}")
    if df <= len(_T95):
        return _T95[df - 1]
    z = 1.959963984540054
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


@dataclass(frozen=True)
class PairedStats:
    """Chip instance by chip instance, accuracies ``b`` against ``a`` (the same chips)."""

    chips: int
    mean_a: float
    mean_b: float
    mean_difference: float  # mean over chips of b - a
    std_difference: float  # ddof=1; 0 for one chip
    ci95: float  # half-width of the 95 % interval of mean_difference (Student t); nan: one chip
    wins: int  # chips where b is more accurate than a
    ties: int
    losses: int


def paired(a: np.ndarray, b: np.ndarray) -> PairedStats:
    """The paired comparison of per-chip accuracies ``b`` and ``a`` (same length, same chip
    order): the mean difference ``b - a`` with its Student-t 95 % interval over the per-chip
    differences, and how many chips ``b`` wins, ties and loses."""
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired accuracies need two equal non-empty vectors, got {a.shape} "
                         f"and {b.shape}")
    difference = b - a
    n = int(difference.size)
    std = float(difference.std(ddof=1)) if n > 1 else 0.0
    return PairedStats(
        chips=n, mean_a=float(a.mean()), mean_b=float(b.mean()),
        mean_difference=float(difference.mean()), std_difference=std,
        ci95=t95(n - 1) * std / math.sqrt(n) if n > 1 else float("nan"),
        wins=int((difference > 0).sum()), ties=int((difference == 0).sum()),
        losses=int((difference < 0).sum()))


def summarize(accuracies: np.ndarray) -> McStats:
    n = int(accuracies.size)
    std = float(accuracies.std(ddof=1)) if n > 1 else 0.0
    t = _T95[n - 2] if 2 <= n <= 30 else 1.96
    return McStats(trials=n, mean=float(accuracies.mean()), std=std,
                   ci95=t * std / math.sqrt(n) if n > 1 else float("nan"),
                   min=float(accuracies.min()), p5=float(np.percentile(accuracies, 5)),
                   max=float(accuracies.max()))


@torch.no_grad()
def predict(emulator: Emulator, x: Inputs, batch_size: int,
            chip: ChipInstance | None = None) -> torch.Tensor:
    """Logits (on the CPU) of chip instance ``chip`` (default: the emulator's current chip) for
    all of ``x`` (a tensor, or a tuple of tensors in the layout's input order)."""
    return torch.cat([emulator.forward(rows(x, start, start + batch_size), chip).cpu()
                      for start in range(0, num_samples(x), batch_size)])


def top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    """The fraction of samples whose largest logit is the label: one chip's accuracy."""
    return int((logits.argmax(dim=1) == y).sum()) / max(int(y.shape[0]), 1)


def confidence(probabilities: torch.Tensor) -> float:
    """The mean over samples of the largest class probability: one chip's mean confidence."""
    return float(probabilities.max(dim=1).values.mean())


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax in float64 (as the uncertainty sums use it)."""
    return torch.log_softmax(logits.double(), dim=1).exp()


def evaluate(emulator: Emulator, x: Inputs, y: torch.Tensor, batch_size: int,
             chip: ChipInstance | None = None) -> float:
    """Top-1 accuracy of chip instance ``chip`` (default: the emulator's current chip)."""
    return top1(predict(emulator, x, batch_size, chip), y)


class Uncertainty:
    """Epistemic uncertainty over chip instances, per test sample:
    ``E_i[KL(p_i || p_mean)] = E_i[sum_c p_i log p_i] - sum_c p_mean log p_mean`` (the expected KL
    divergence between each chip's predictive distribution and their mean), and the mean top-1
    confidence ``E_i[max_c p_i]``, for chip instances ``0 .. trials - 1``.

    Streaming: the per-sample sums are kept, not the chips' outputs. They are kept in fixed point
    (int64, ``2**-bits`` per chip, ``bits`` <= 52 chosen from ``trials`` so no sum can overflow),
    so adding is exact and does not depend on the order: the chips can be split over processes
    (:meth:`reduce`) and the result is the same to the last bit. The rounding is at most
    ``2**-bits`` per chip and sample (``2**-42`` at a million chips).
    """

    def __init__(self, trials: int) -> None:
        self.trials = trials
        self.bits = min(52, 62 - max(1, trials).bit_length())
        self.count = 0
        self.sum_p: torch.Tensor | None = None  # int64 (samples, classes), scaled by 2**bits
        self.sum_neg_entropy: torch.Tensor | None = None  # int64 (samples,), 2**entropy_bits
        self.confidences = torch.zeros(trials, dtype=torch.float64)  # per chip

    def _entropy_bits(self, classes: int) -> int:
        # |sum_c p log p| <= log(classes): that many more integer bits.
        return self.bits - max(0, math.ceil(math.log2(math.log(max(classes, 2)) + 1)))

    def add(self, chip: int, logits: torch.Tensor) -> None:
        """Chip instance ``chip``'s logits (samples, classes) over the test set."""
        log_p = torch.log_softmax(logits.double(), dim=1)
        p = log_p.exp()
        neg_entropy = (p * log_p).sum(dim=1)
        fixed_p = torch.round(p * 2.0**self.bits).long()
        fixed_entropy = torch.round(
            neg_entropy * 2.0**self._entropy_bits(int(p.shape[1]))).long()
        self.sum_p = fixed_p if self.sum_p is None else self.sum_p + fixed_p
        self.sum_neg_entropy = (fixed_entropy if self.sum_neg_entropy is None
                                else self.sum_neg_entropy + fixed_entropy)
        self.confidences[chip] = confidence(p)
        self.count += 1

    def reduce(self, group: Group) -> None:
        """Add up every rank's chips (each rank added its own): afterwards every rank holds the
        sums over all chips, exactly as one process adding them all would."""
        if not group.distributed:
            return
        shape = torch.tensor([0, 0] if self.sum_p is None else list(self.sum_p.shape))
        torch.distributed.all_reduce(shape, op=torch.distributed.ReduceOp.MAX)
        samples, classes = (int(v) for v in shape)
        if self.sum_p is None or self.sum_neg_entropy is None:  # this rank ran no chip
            self.sum_p = torch.zeros(samples, classes, dtype=torch.long)
            self.sum_neg_entropy = torch.zeros(samples, dtype=torch.long)
        group.sum(self.sum_p)
        group.sum(self.sum_neg_entropy)
        group.sum(self.confidences)
        count = group.sum(torch.tensor([self.count]))
        self.count = int(count.item())

    def expected_kl(self) -> float:
        if self.count == 0 or self.sum_p is None or self.sum_neg_entropy is None:
            return float("nan")
        mean_p = self.sum_p.double() / (self.count * 2.0**self.bits)
        mean_neg_entropy = (mean_p * torch.log(mean_p.clamp(min=1e-300))).sum(dim=1)
        scale = self.count * 2.0**self._entropy_bits(int(self.sum_p.shape[1]))
        return float((self.sum_neg_entropy.double() / scale - mean_neg_entropy).mean()
                     .clamp(min=0))

    def mean_confidence(self) -> float:
        # Summed in chip order, one chip at a time: the same for any split of the chips.
        return (sum(float(c) for c in self.confidences) / self.count if self.count
                else float("nan"))


@dataclass(frozen=True)
class McResult:
    accuracies: np.ndarray
    stats: McStats
    seconds: float
    expected_kl: float
    mean_confidence: float

    @property
    def trials_per_second(self) -> float:
        return self.stats.trials / self.seconds if self.seconds > 0 else float("inf")


def _chip_groups(chips: Sequence[int], size: int) -> Iterator[list[int]]:
    """``chips`` in groups of ``size``, one group at a time (memory O(size) for a range)."""
    for first in range(0, len(chips), size):
        yield list(chips[first:first + size])


def monte_carlo(emulator: Emulator, x: Inputs, y: torch.Tensor, trials: int, *,
                batch_size: int = 1024, chips_per_pass: int = 1,
                on_trial: Callable[[int, float], None] | None = None,
                prepare: Callable[[ChipInstance], ChipInstance] | None = None,
                group: Group = SINGLE,
                on_chips: Callable[[int], None] | None = None) -> McResult:
    """Accuracy of ``trials`` chip instances (0 .. trials-1 of the emulator's seed).

    Memory is O(trials) for the accuracies (one float per chip) plus O(test set) for one chip's
    logits and the streaming uncertainty sums; nothing of size trials x test set is kept.

    ``chips_per_pass`` > 1 (ideal periphery only) evaluates that many chip instances in one
    batched pass (``Emulator.forward_chips``): the same chips and results, fewer, larger kernels.
    Each chip instance is a value made for its trial and dropped: the emulator's current chip is
    unchanged. ``prepare`` (one chip per pass only) turns each programmed chip into the one
    evaluated (e.g. ``neftc.runtime.recalibration.recalibrate_batch_norm``).

    With ``group`` of several processes, each runs its share of the chips (``Group.shard``:
    chip i on rank i mod world) and every rank returns the result over all chips: the same
    accuracies, statistics and uncertainty as one process (the sums are exact); ``seconds`` is
    the slowest rank's. ``on_trial(chip, accuracy)`` is called for this rank's chips,
    ``on_chips(n)`` after each round with the chips all ranks finished in it.
    """
    start = time.perf_counter()
    accuracies = torch.zeros(trials, dtype=torch.float64)
    uncertainty = Uncertainty(trials)
    size = chips_per_pass if emulator.ideal_periphery else 1
    if prepare is not None and size > 1:
        raise ValueError("a prepared chip instance runs one chip per pass (chips_per_pass=1)")
    per_pass = max(1, batch_size // size)
    own = group.shard(range(trials))
    # Rounds of one chip group per rank (rank 0 has the most groups; the others may sit a last
    # round out). After each round the ranks add up how many chips they finished: the progress
    # of the whole run, and a lost process shows within one round, not at the end.
    rounds = math.ceil(len(range(trials)[::group.world]) / size)
    groups = _chip_groups(own, size)
    for _ in range(rounds):
        chips = next(groups, [])
        if len(chips) == 1:
            chip_instance = emulator.instance(chips[0])
            if prepare is not None:
                chip_instance = prepare(chip_instance)
            outputs = [predict(emulator, x, batch_size, chip_instance)]
        elif chips:
            parts = [emulator.forward_chips(chips, rows(x, first, first + per_pass))
                     for first in range(0, num_samples(x), per_pass)]
            outputs = [torch.cat([part[k].cpu() for part in parts]) for k in range(len(chips))]
        else:
            outputs = []
        for chip, logits in zip(chips, outputs):
            accuracies[chip] = top1(logits, y)
            uncertainty.add(chip, logits)
            if on_trial is not None:
                on_trial(chip, float(accuracies[chip]))
        finished = len(chips)
        if group.distributed:
            finished = int(group.sum(torch.tensor([finished])).item())
        if on_chips is not None:
            on_chips(finished)
    group.sum(accuracies)  # each chip's accuracy comes from one rank, the others add 0.0
    uncertainty.reduce(group)
    seconds = group.max(time.perf_counter() - start)
    values = accuracies.numpy()
    return McResult(values, summarize(values), seconds, uncertainty.expected_kl(),
                    uncertainty.mean_confidence())
