"""The Optuna side of a sweep, on Optuna's public API: sampler, pruner, the journal, and in-run pruning checks.

The study lives in a journal file in the sweep folder (``journal.log``), which the driver and every worker open:
the driver asks for trials and tells their results; a worker training a trial seed reports its evaluations and
asks the study's pruner between two training steps (:class:`PruneCheck`), so a trial is stopped where it stands,
with a checkpoint, without the run being stopped and resumed at each check.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gymlab.sweep.spec import PruningSpec, Sweep

if TYPE_CHECKING:
    import optuna

JOURNAL_FILE = "journal.log"
STUDY_NAME = "gymlab-sweep"
PRUNED_AT = "pruned_at"  # trial user attribute: the check at which the pruner stopped the trial


def make_sampler(sweep: Sweep, asked: int = 0) -> optuna.samplers.BaseSampler:
    """Optuna's GridSampler, RandomSampler or TPESampler, seeded by the sweep's ``sampler_seed``.

    ``asked``: trials the study already holds (a resumed sweep). A random or TPE sampler seeded as at the
    start would draw its sequence again from the first point, repeating the trials already run; it is
    seeded from the seed and ``asked`` instead (the grid sampler picks the points not yet visited itself).
    """
    import optuna

    spec = sweep.spec
    seed = spec.sampler_seed
    if asked and seed is not None and spec.method != "grid":
        seed = int(np.random.SeedSequence([seed, asked]).generate_state(1)[0])
    if spec.method == "grid":

        class AskTellGridSampler(optuna.samplers.GridSampler):
            """GridSampler for ask-and-tell: telling the last point must not raise.

            GridSampler's ``after_trial`` calls ``study.stop()`` once the grid is done, which raises
            RuntimeError outside ``study.optimize`` (Optuna issue #5141, documented in its GridSampler
            notes). The driver stops by itself: it asks for no more trials than the grid has points.
            """

            def after_trial(
                self,
                study: optuna.Study,
                trial: optuna.trial.FrozenTrial,
                state: optuna.trial.TrialState,
                values: Sequence[float] | None,
            ) -> None:
                """Nothing to do after a trial (see the class docstring)."""

        return AskTellGridSampler(sweep.grid(), seed=spec.sampler_seed)
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: trials still running count as bad guesses, so parallel workers spread out.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(pruning: PruningSpec, every: int | None) -> optuna.pruners.BasePruner:
    """Optuna's MedianPruner or SuccessiveHalvingPruner (steps are env steps; the first check is ``every``)."""
    import optuna

    if pruning.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=pruning.startup_trials, n_warmup_steps=pruning.warmup)
    if pruning.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=every or 1)
    return optuna.pruners.NopPruner()


def open_storage(journal: Path) -> optuna.storages.JournalStorage:
    """The study's storage: an append-only journal file that several processes (or nodes, over NFS) share."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(journal)))


@dataclass
class Ledger:
    """A study's trials by number, read and written through the storage's public methods."""

    study: optuna.Study
    storage: optuna.storages.BaseStorage

    @classmethod
    def load(cls, journal: Path, pruner: optuna.pruners.BasePruner) -> Ledger:
        """Open the study in ``journal`` (it must exist) with the sweep's pruner."""
        import optuna

        storage = open_storage(journal)
        return cls(optuna.load_study(study_name=STUDY_NAME, storage=storage, pruner=pruner), storage)

    def trial_id(self, number: int) -> int:
        """The storage's id of trial ``number``."""
        study_id = self.storage.get_study_id_from_name(STUDY_NAME)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def trial(self, number: int) -> optuna.trial.FrozenTrial:
        """Trial ``number`` as stored now (not a cached copy)."""
        return self.storage.get_trial(self.trial_id(number))

    def set_attr(self, number: int, key: str, value: Any) -> None:
        """Set a user attribute of trial ``number``."""
        self.storage.set_trial_user_attr(self.trial_id(number), key, value)


@functools.lru_cache(maxsize=4)
def _ledger(journal: str, pruning: PruningSpec, every: int) -> Ledger:
    """The study a worker reports to, opened once per process (its journal is read incrementally after that)."""
    return Ledger.load(Path(journal), make_pruner(pruning, every))


@dataclass(frozen=True)
class PruneCheck:
    """What a worker needs to ask the pruner about one trial seed at each evaluation (picklable).

    A trial's value at a check is the mean evaluation return of its seeds there. Each seed records its own
    return; the seed that completes the set reports the mean and asks the pruner; a seed that finds the
    trial pruned (by a sibling) or ended (the driver failed it) stops too. No seed waits for another.
    """

    journal: str
    trial: int
    seed: int
    seeds: tuple[int, ...]
    every: int
    steps: int
    pruning: PruningSpec

    def __call__(self, step: int, mean_return: float) -> bool:
        """The loop's ``on_eval``: at a check (not the final evaluation), ask the pruner; True stops the run."""
        if step % self.every or step >= self.steps:
            return False
        return self.ask(_ledger(self.journal, self.pruning, self.every), step, mean_return)

    def ask(self, ledger: Ledger, step: int, mean_return: float) -> bool:
        """Record this seed's return at ``step``; report the trial's mean when complete; True: stop the run."""
        import optuna

        value = float(mean_return) if math.isfinite(mean_return) else math.nan
        try:
            ledger.set_attr(self.trial, f"check_{step}_s{self.seed}", value)
            frozen = ledger.trial(self.trial)
            if PRUNED_AT in frozen.user_attrs:
                return True
            keys = [f"check_{step}_s{s}" for s in self.seeds]
            if any(k not in frozen.user_attrs for k in keys):
                return False  # a sibling seed is behind: it reports when it gets here
            values = [float(frozen.user_attrs[k]) for k in keys]
            if step not in frozen.intermediate_values:
                ledger.storage.set_trial_intermediate_value(
                    ledger.trial_id(self.trial), step, sum(values) / len(values)
                )
            if ledger.study.pruner.prune(ledger.study, ledger.trial(self.trial)):
                ledger.set_attr(self.trial, PRUNED_AT, step)
                return True
        except optuna.exceptions.UpdateFinishedTrialError:
            return True  # the driver ended the trial meanwhile (a sibling seed failed)
        return False
