"""``--neft auto``: choose the NeFT recipe (mode, feedback strength, loss temperature, training
sigma) by Monte Carlo on a validation split carved from the training data, never the test set.

The budget is fixed before anything runs: each of the ``CANDIDATES`` is fine-tuned for
``AutoBudget.epochs`` epochs on the training data less the validation split (a seeded
``AutoBudget.validation`` fraction, at most ``MAX_VALIDATION`` samples), then scored on the
validation split by ``AutoBudget.chips`` simulated chips at the deployment sigma (``--train-sigma``,
default the target's ``sigma_rel``). A chip draws, per crossbar weight, the exact Gaussian
equivalent of the target's cell-level programming noise (``DeviceNoise.weight_std``, the
definition the emulator's ideal-periphery path draws from; pipeline copies and the DAC/ADC are not
modelled here) from a generator seeded by ``(seed, chip)``, so every candidate meets the same
chips. The winner (highest mean validation accuracy) is then fine-tuned for the full
``NeftSettings.epochs`` on all the training data.

With several processes (``group``): every candidate fine-tunes on all of them
(``DistributedDataParallel``), the validation split is carved alike on every rank (seeded), and
the chips are split among the ranks (chip ``i`` on rank ``i mod world``) and put back together
exactly, so every rank holds the same scores and chooses the same winner, the one a single
process would choose from those scores.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.fx
from torch.func import functional_call

from neftc.datasets.base import Split
from neftc.distributed import SINGLE, Group
from neftc.errors import DataError
from neftc.format.schema import AutoCandidateRecord, AutoRecord
from neftc.ir.node_info import crossbar_nodes
from neftc.ir.pass_manager import PassContext
from neftc.ir.weights import get_weight, weight_attr
from neftc.neft.modules import DeviceNoise
from neftc.neft.pipeline import (
    AUTO,
    NeftSettings,
    num_outputs,
    run_neft,
    run_training_passes,
    training_data,
    training_passes,
)
from neftc.neft.train import TrainLog, accuracy
from neftc.passes.quantize import Quantize

#: The candidates ``--neft auto`` tries: ``NeftSettings`` overrides, and ``sigma_factor``, the
#: training sigma relative to the deployment sigma. NIT at temperature 1 is the plain baseline.
CANDIDATES: tuple[dict[str, Any], ...] = (
    {"mode": "nit", "temperature": 1.0, "sigma_factor": 1.0},
    {"mode": "nit", "temperature": 4.0, "sigma_factor": 1.0},
    {"mode": "ovf", "sigma_factor": 1.0},
    {"mode": "irs", "sigma_factor": 1.0},
    {"mode": "ovf+irs", "sigma_factor": 1.0},
    {"mode": "nit", "temperature": 4.0, "sigma_factor": 1.25},
)
MAX_VALIDATION = 5000
VALIDATION_FRACTION = 0.1


@dataclass(frozen=True)
class AutoBudget:
    epochs: int  # fine-tuning epochs per candidate (NeftSettings.auto_epochs)
    chips: int  # simulated chips per candidate on the validation split (auto_chips)
    validation: float = VALIDATION_FRACTION  # fraction of the training data held out

    @classmethod
    def of(cls, settings: NeftSettings) -> AutoBudget:
        return cls(settings.auto_epochs, settings.auto_chips)

    def describe(self, settings: NeftSettings) -> str:
        return (f"{len(CANDIDATES)} candidates x {self.epochs} epochs on the training data less "
                f"a {self.validation:.0%} validation split, {self.chips} chips each, then "
                f"{settings.epochs} epochs with the winner")


@dataclass(frozen=True)
class CandidateScore:
    overrides: dict[str, Any]  # NeftSettings fields (mode, temperature, ...)
    train_sigma: float
    accuracies: tuple[float, ...]  # validation accuracy per chip, in chip order

    @property
    def mean(self) -> float:
        return sum(self.accuracies) / len(self.accuracies)

    def describe(self) -> str:
        options = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in self.overrides.items())
        return f"{options}, train sigma {self.train_sigma:g}"


@dataclass(frozen=True)
class AutoChoice:
    deploy_sigma: float
    budget: AutoBudget
    scores: tuple[CandidateScore, ...]
    winner: CandidateScore


def carve_validation(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """``(train, validation)``: a seeded random ``fraction`` of ``split`` (at most
    ``MAX_VALIDATION`` samples) held out for validation."""
    count = min(MAX_VALIDATION, int(len(split) * fraction))
    if count < 10 or len(split) - count < 10:
        raise DataError(f"--neft auto carves a {fraction:.0%} validation split from the "
                        f"training data, but {len(split)} training samples are too few (it "
                        "needs at least 10 on each side); give more training data or choose a "
                        "mode")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.take(order[count:]), split.take(order[:count])


def noisy_accuracies(gm: torch.fx.GraphModule, data: Split, noise: DeviceNoise, sigma: float,
                     chips: int, seed: int, batch_size: int = 1024,
                     group: Group = SINGLE) -> tuple[float, ...]:
    """Accuracy of the deployable graph ``gm`` on ``data`` for each of ``chips`` simulated chips:
    every crossbar weight ``w`` becomes ``w + shift + std * z`` (``DeviceNoise.weight_noise``:
    the shift of the target's cell effects, 0 without them), ``z`` standard normal
    from a generator seeded by ``(seed, chip)``, fixed for the whole split. With several
    processes each rank scores its share of the chips (``group.shard``; ``gm`` must be the same
    on all) and every rank gets all the accuracies, equal to one process's."""
    weights = {weight_attr(node): get_weight(gm, node).detach() for node in crossbar_nodes(gm)}
    moments = {name: noise.weight_noise(w, sigma) for name, w in weights.items()}
    results = torch.zeros(chips, dtype=torch.float64)  # each chip's value set on one rank only
    gm.eval()
    for chip in group.shard(range(chips)):
        generator = torch.Generator().manual_seed((seed * 1_000_003 + chip) % 2**63)
        noisy = {name: w + moments[name][0] + moments[name][1] * torch.randn(
                     w.shape, generator=generator) for name, w in weights.items()}

        def forward(*inputs: torch.Tensor, params: dict = noisy) -> torch.Tensor:
            return functional_call(gm, params, inputs)

        results[chip] = accuracy(forward, data, batch_size)
    return tuple(float(value) for value in group.sum(results))


def candidate_settings(settings: NeftSettings, deploy_sigma: float
                       ) -> list[tuple[dict[str, Any], float]]:
    """Each candidate's ``NeftSettings`` overrides and training sigma for ``deploy_sigma``."""
    found = []
    for candidate in CANDIDATES:
        overrides = {k: v for k, v in candidate.items() if k != "sigma_factor"}
        found.append((overrides, round(deploy_sigma * float(candidate["sigma_factor"]), 6)))
    return found


def resolve(gm: torch.fx.GraphModule, ctx: PassContext, settings: NeftSettings,
            quantize: Quantize | None = None, report: Callable[[str], None] = lambda _: None,
            group: Group = SINGLE) -> tuple[NeftSettings, AutoChoice | None]:
    """``settings`` unchanged unless its mode is ``auto``; then the winning candidate's settings
    (mode, temperature, training sigma; the rest as given) and the scores. ``gm`` is the
    normalised graph (not modified); ``quantize`` the chip's quantize pass (default:
    ``settings.chip_quantize()``); ``group``: the processes that choose together."""
    if settings.mode != AUTO:
        return settings, None
    settings.validate()
    budget = AutoBudget.of(settings)
    quantize = settings.chip_quantize() if quantize is None else quantize
    deploy_sigma = ctx.target.noise.sigma_rel if settings.sigma is None else settings.sigma
    classes = num_outputs(gm, ctx.example_inputs)
    fit, validation = carve_validation(training_data(settings, ctx, classes).train,
                                       budget.validation, settings.seed)
    noise = quantize.device_noise(ctx.target, settings.noise, settings.t_inference_s)
    report(f"auto: {budget.describe(settings)}; deployment sigma {deploy_sigma:g}")
    scores = []
    for overrides, train_sigma in candidate_settings(settings, deploy_sigma):
        trial = replace(settings, epochs=budget.epochs, sigma=train_sigma, **overrides)
        passes = training_passes(trial, ctx.target, classes, quantize)
        # a copy of the graph and of the facts: the caller's stay as they were
        tuned, _ = run_training_passes(copy.deepcopy(gm), replace(ctx, facts=set(ctx.facts)),
                                       trial, passes, progress=False, split=fit,
                                       group=group)
        accuracies = noisy_accuracies(tuned, validation, noise, deploy_sigma, budget.chips,
                                      settings.seed, group=group)
        score = CandidateScore(overrides, train_sigma, accuracies)
        scores.append(score)
        report(f"auto: {score.describe()}: validation {100 * score.mean:.2f} % "
               f"(mean of {budget.chips} chips)")
    winner = max(scores, key=lambda s: s.mean)  # first of equals: the list's order
    report(f"auto: chose {winner.describe()}")
    chosen = replace(settings, sigma=winner.train_sigma, **winner.overrides)
    return chosen, AutoChoice(deploy_sigma, budget, tuple(scores), winner)


def run_neft_resolved(gm: torch.fx.GraphModule, ctx: PassContext, settings: NeftSettings, *,
                      progress: bool = True, group: Group = SINGLE
                      ) -> tuple[torch.fx.GraphModule, TrainLog, NeftSettings]:
    """``run_neft`` after ``resolve``: the deployable graph, the training log (its ``notes``
    hold auto's scores and choice) and the settings used; ``group``: the processes that train
    together."""
    notes: list[str] = []
    settings, _ = resolve(gm, ctx, settings, report=notes.append, group=group)
    gm, log = run_neft(gm, ctx, settings, progress=progress, group=group)
    log.notes[:0] = notes
    return gm, log, settings


def auto_record(choice: AutoChoice) -> AutoRecord:
    """The layout's record of an auto choice (``options.neft.auto``)."""
    return AutoRecord(
        deploy_sigma=choice.deploy_sigma, epochs_per_candidate=choice.budget.epochs,
        chips=choice.budget.chips, validation_fraction=choice.budget.validation,
        candidates=[AutoCandidateRecord(settings=s.describe(), train_sigma=s.train_sigma,
                                        validation_accuracy=s.mean) for s in choice.scores],
        chosen=choice.winner.describe())
