"""Hyperparameter sweeps: an Optuna search whose trials run in local processes or on a Ray cluster.

A sweep file names an agent and an env, a base config, and a search space over config keys::

    agent: tabular_q
    env: Taxi-v4
    base: {steps: 60000, eval_every: 10000}       # over the shipped preset (or `config: FILE`)
    space:
      learning_rate: {loguniform: [0.05, 1.0]}    # keys as on the command line: bare names are hyperparameters
      exploration_fraction: [0.1, 0.3, 0.6]       # a list: grid values (categorical)
    method: tpe                                   # grid (Optuna's GridSampler) | random | tpe
    trials: 16
    seeds: 2                                      # every trial trains seeds 0 and 1
    pruning: {pruner: median, every: 20000}       # stop bad trials by intermediate eval return

The package's parts: :mod:`~gymlab.sweep.spec` (the file, resolved through :func:`gymlab.config.resolve`),
:mod:`~gymlab.sweep.study` (Optuna: sampler, pruner, journal, in-run pruning checks),
:mod:`~gymlab.sweep.backends` (local processes or Ray tasks), :mod:`~gymlab.sweep.driver` (asks, runs, tells,
resumes) and :mod:`~gymlab.sweep.summary` (the table and ``best.yaml``, through :mod:`gymlab.report`).

Every trial seed is a normal run folder (``<sweep>/trial-0003-s1/``), so ``gymlab compare`` and TensorBoard
read a sweep like any set of runs. Optuna and Ray are imported only inside the functions that need them.
"""

from gymlab.sweep.backends import Backend, LocalBackend, RayBackend, make_backend
from gymlab.sweep.driver import SweepResult, run_sweep
from gymlab.sweep.spec import Dimension, PruningSpec, Sweep, SweepSpec, check_pruning, default_sweep_dir, load_sweep
from gymlab.sweep.summary import TrialRow, table

__all__ = [
    "Backend",
    "Dimension",
    "LocalBackend",
    "PruningSpec",
    "RayBackend",
    "Sweep",
    "SweepResult",
    "SweepSpec",
    "TrialRow",
    "check_pruning",
    "default_sweep_dir",
    "load_sweep",
    "make_backend",
    "run_sweep",
    "table",
]
