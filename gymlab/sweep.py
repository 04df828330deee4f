"""Hyperparameter sweeps: an Optuna search whose trials run in local processes or on a Ray cluster.

A sweep file names an agent and an env, a base config, and a search space over config keys::

    agent: tabular_q
    env: Taxi-v4
    base: {steps: 60000, eval_every: 10000}       # over the shipped preset (or `config: FILE`)
    space:
      learning_rate: {loguniform: [0.05, 1.0]}    # bare names are hyperparameters
      exploration_fraction: [0.1, 0.3, 0.6]       # a list: grid values (categorical)
    method: tpe                                   # grid | random | tpe
    trials: 16
    seeds: 2                                      # every trial trains seeds 0 and 1
    pruning: {pruner: median, every: 20000}       # stop bad trials by intermediate eval return

How it runs. One driver process owns the Optuna study (stored in a journal file in the sweep
folder, so an interrupted sweep resumes where it stopped) and hands work to a backend: local
``spawn``-ed processes, or Ray tasks on a local instance or an existing cluster. The unit of
work is a *segment*: "bring this run folder to step T". Without pruning a trial's seeds each
run one segment to the end. With pruning, each seed stops at every check (``stop_at``, which
leaves an exact checkpoint), the driver reports the seeds' mean evaluation return to Optuna's
pruner, and either prunes the trial or resumes its runs to the next check. Because the loop's
resume is exact, a segmented run ends with the same numbers as an unbroken one; and because
workers only ever train run folders, the same driver serves every backend unchanged.

Every trial seed is a normal run folder (``<sweep>/trial-0003-s1/``), so ``gymlab compare`` and
TensorBoard read a sweep like any set of runs. The sweep folder also holds ``summary.csv`` and
``summary.md`` (best first, with each trial's values, seeds, mean final evaluation return and
95% confidence interval over seeds) and ``best.yaml``, ready for ``gymlab train --config``.

Optuna and Ray are imported only inside the functions that need them.
"""

from __future__ import annotations

import csv
import difflib
import io
import itertools
import logging
import math
import multiprocessing
import signal
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gymlab.config import RunConfig, apply_overrides, load_yaml, merge, preset_path, validate
from gymlab.errors import GymlabError

if TYPE_CHECKING:
    import optuna

Scalar = bool | int | float | str | None

JOURNAL_FILE = "journal.log"
SPEC_FILE = "sweep.yaml"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
BEST_FILE = "best.yaml"
STUDY_NAME = "gymlab-sweep"


# --------------------------------------------------------------------------------------------
# The sweep file
# --------------------------------------------------------------------------------------------

_DIMENSION_FORMS = (
    "a list of values, or one of {grid: [...]}, {choice: [...]}, {uniform: [low, high]}, "
    "{loguniform: [low, high]}, {int: [low, high]}"
)


class Dimension(BaseModel):
    """One searched key: a finite set of values (grid, choice) or a numeric range."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["grid", "choice", "uniform", "loguniform", "int"] = Field(description="how values are drawn")
    values: tuple[Scalar, ...] = Field((), description="the values of a grid or choice dimension")
    low: float = Field(0.0, description="lower bound of a range (inclusive)")
    high: float = Field(0.0, description="upper bound of a range (inclusive)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, raw: Any) -> Any:
        """Accept the sweep file's short forms: ``[a, b]`` or ``{kind: argument}``."""
        if isinstance(raw, list):
            return {"kind": "grid", "values": raw}
        if isinstance(raw, dict) and "kind" in raw:
            return raw
        if isinstance(raw, dict) and len(raw) == 1:
            ((kind, arg),) = raw.items()
            if kind in ("grid", "choice"):
                if not isinstance(arg, list):
                    raise ValueError(f"{kind} takes a list of values, not {arg!r}")
                return {"kind": kind, "values": arg}
            if kind in ("uniform", "loguniform", "int"):
                if not isinstance(arg, list) or len(arg) != 2:
                    raise ValueError(f"{kind} takes [low, high], not {arg!r}")
                return {"kind": kind, "low": arg[0], "high": arg[1]}
        raise ValueError(f"a search dimension is {_DIMENSION_FORMS}; got {raw!r}")

    @model_validator(mode="after")
    def _check(self) -> Dimension:
        if self.kind in ("grid", "choice"):
            if not self.values:
                raise ValueError(f"{self.kind} needs at least one value")
            return self
        if not self.low < self.high:
            raise ValueError(f"{self.kind} needs low < high, got [{self.low}, {self.high}]")
        if self.kind == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low}")
        if self.kind == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError(f"int needs integer bounds, got [{self.low}, {self.high}]")
        return self

    @property
    def finite(self) -> bool:
        """Whether the dimension is a finite list of values (what a grid search needs)."""
        return self.kind in ("grid", "choice")

    def corners(self) -> list[Any]:
        """Return the values checked before the sweep starts: every listed value, or both bounds."""
        if self.finite:
            return list(self.values)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    def suggest(self, trial: optuna.Trial, key: str) -> Any:
        """Draw this dimension's value for a trial through Optuna's sampler."""
        if self.finite:
            return trial.suggest_categorical(key, list(self.values))
        if self.kind == "int":
            return trial.suggest_int(key, int(self.low), int(self.high))
        return trial.suggest_float(key, self.low, self.high, log=self.kind == "loguniform")


class PruningSpec(BaseModel):
    """Early stopping of bad trials by their intermediate evaluation return."""

    model_config = ConfigDict(extra="forbid")

    pruner: Literal["none", "median", "halving"] = Field(
        "none", description="none, Optuna's MedianPruner, or its SuccessiveHalvingPruner"
    )
    every: int | None = Field(
        None, gt=0, description="env steps between checks, a multiple of eval_every (default: eval_every)"
    )
    warmup: int = Field(0, ge=0, description="env steps a trial runs before it may be pruned (median)")
    startup_trials: int = Field(2, ge=0, description="trials that run unpruned before pruning starts (median)")


class SweepSpec(BaseModel):
    """A sweep file: what to search, over which base config, and how."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="the sweep's name (default: the file's stem)")
    agent: str = Field(description="agent name or module:Class")
    env: str = Field(description="Gymnasium id, module:Env-v0 or module:EnvClass")
    config: str | None = Field(
        None, description="base config YAML, relative to the sweep file (default: the shipped preset)"
    )
    base: dict[str, Any] = Field(default_factory=dict, description="run keys and hparams over the base config")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides over base")
    space: dict[str, Dimension] = Field(min_length=1, description="searched keys and their values or ranges")
    method: Literal["grid", "random", "tpe"] = Field("tpe", description="grid, random, or Optuna's TPE")
    trials: int | None = Field(None, gt=0, description="number of trials (default: the grid's size, or 20)")
    seeds: int | list[int] = Field(1, description="seeds per trial: a count (0..N-1) or a list")
    metric: Literal["last_eval", "best_eval"] = Field(
        "last_eval", description="final evaluation return, or the best one seen during the run"
    )
    direction: Literal["maximize", "minimize"] = Field("maximize", description="better returns are larger")
    pruning: PruningSpec = Field(
        default_factory=lambda: PruningSpec.model_validate({}), description="early stopping of bad trials"
    )
    max_concurrent: int | None = Field(None, gt=0, description="runs at once (default: the backend's CPUs)")
    sampler_seed: int = Field(0, ge=0, description="seed of the random and TPE samplers")
    gpus_per_run: float = Field(
        0.0, ge=0, description="GPUs Ray reserves per run (e.g. 0.25: four runs share one); local: unused"
    )

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if isinstance(self.seeds, int) and self.seeds < 1:
            raise ValueError("seeds must be at least 1")
        if isinstance(self.seeds, list) and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError("seeds must be a non-empty list of distinct seeds")
        if self.method == "grid":
            ranged = [k for k, d in self.space.items() if not d.finite]
            if ranged:
                raise ValueError(f"grid search needs listed values, but {', '.join(ranged)} is a range")
        return self

    def seed_list(self) -> list[int]:
        """Return the seeds every trial trains."""
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


@dataclass(frozen=True)
class Sweep:
    """A loaded, checked sweep: its spec, the base config, and the searched keys (dotted)."""

    spec: SweepSpec
    source: Path
    base: dict[str, Any]
    space: dict[str, Dimension]
    trials: int
    max_concurrent: int | None

    @property
    def name(self) -> str:
        """The sweep's name (its file's stem unless the file names it)."""
        return self.spec.name or self.source.stem

    def grid(self) -> list[dict[str, Any]]:
        """Every point of the grid, in order (only for finite spaces)."""
        keys = list(self.space)
        return [
            dict(zip(keys, point, strict=True)) for point in itertools.product(*(self.space[k].values for k in keys))
        ]

    def trial_config(self, params: Mapping[str, Any], seed: int) -> dict[str, Any]:
        """Resolve one trial seed's config, as plain data (raises GymlabError when invalid)."""
        from gymlab.agent import load_agent_class

        data = dict(self.base)
        for key, value in params.items():
            data = set_dotted(data, key, value)
        data["seed"] = seed
        cls = load_agent_class(self.spec.agent)
        return validate(data, cls.Config, source=f"sweep {self.source}").to_dict()

    def identity(self) -> dict[str, Any]:
        """Return what must not change when a sweep folder is resumed (trial count and concurrency may)."""
        spec = self.spec.model_dump(mode="json", exclude={"trials", "max_concurrent", "name"})
        spec["space"] = {k: d.model_dump(mode="json") for k, d in self.space.items()}
        return {"spec": spec, "base": self.base}


def set_dotted(data: Mapping[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Return a copy of a nested mapping with ``a.b.c`` set to ``value``."""
    head, _, rest = key.partition(".")
    out = dict(data)
    if not rest:
        out[head] = value
        return out
    child = out.get(head)
    out[head] = set_dotted(child if isinstance(child, Mapping) else {}, rest, value)
    return out


def _dotted_key(key: str, hparam_keys: Sequence[str], source: str) -> str:
    """Bare hyperparameter names go under ``hparams``, as in ``key=value`` overrides."""
    if "." in key or key in RunConfig.model_fields:
        if key == "hparams" or key in ("agent", "seed"):
            raise GymlabError(f"{source}: '{key}' cannot be searched (seeds are set by `seeds:`)")
        return key
    if key in hparam_keys:
        return f"hparams.{key}"
    valid = [k for k in RunConfig.model_fields if k != "hparams"] + list(hparam_keys)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else "use a run key or one of the agent's hyperparameters"
    raise GymlabError(f"{source}: unknown searched key '{key}': {hint}")


def load_sweep(path: Path, *, trials: int | None = None, max_concurrent: int | None = None) -> Sweep:
    """Read and check a sweep file: every searched value is validated before anything runs."""
    from gymlab import loop
    from gymlab.agent import load_agent_class

    raw = load_yaml(path)
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "sweep"
        raise GymlabError(f"sweep {path}: '{where}': {err['msg']}") from None
    source = f"sweep {path}"
    cls = load_agent_class(spec.agent)
    hparam_keys = list(cls.Config.model_fields)

    data: dict[str, Any] = {"agent": spec.agent, "env": spec.env}
    if spec.config is not None:
        config_path = (path.parent / spec.config).resolve()
        file_data = load_yaml(config_path)
        for key in ("agent", "env"):
            if file_data.get(key) not in (None, data[key]):
                raise GymlabError(f"{source}: config {config_path} is for {key} '{file_data[key]}'")
        data = merge(data, file_data)
    else:
        from gymlab.runs import slug as env_slug

        preset = preset_path(spec.agent, env_slug(spec.env))
        if preset is not None:
            data = merge(data, load_yaml(preset))
    data = merge(data, spec.base)
    data = apply_overrides(data, spec.overrides, hparam_keys)
    space = {_dotted_key(k, hparam_keys, source): d for k, d in spec.space.items()}

    n_grid = math.prod(len(d.values) for d in space.values()) if spec.method == "grid" else None
    n_trials = trials or spec.trials or n_grid or 20
    if n_grid is not None:
        n_trials = min(n_trials, n_grid)
    sweep = Sweep(spec, path, data, space, n_trials, max_concurrent or spec.max_concurrent)

    # Check every listed value and both ends of every range, one key at a time, so a typo or an
    # out-of-range bound is reported now rather than by trial 17 an hour from now.
    first = {k: d.corners()[0] for k, d in space.items()}
    config = sweep.trial_config(first, sweep.spec.seed_list()[0])
    for key, dim in space.items():
        for value in dim.corners():
            sweep.trial_config({**first, key: value}, 0)
    loop.preflight(validate(config, cls.Config, source=source))
    for cfg in (sweep.trial_config({**first, k: v}, 0) for k, d in space.items() for v in d.corners()):
        rungs(cfg, spec.pruning)
    return sweep


def rungs(config: Mapping[str, Any], pruning: PruningSpec) -> list[int]:
    """Return the steps at which a trial's runs stop for the pruner to judge them (empty: no pruning)."""
    if pruning.pruner == "none":
        return []
    steps, eval_every = int(config["steps"]), int(config["eval_every"])
    if eval_every <= 0:
        raise GymlabError("pruning judges intermediate evaluations: set eval_every > 0 in the sweep's base")
    every = pruning.every or eval_every
    if every % eval_every:
        raise GymlabError(
            f"pruning.every ({every}) must be a multiple of eval_every ({eval_every}) "
            "so that every check sees a fresh evaluation"
        )
    return list(range(every, steps, every))


def default_sweep_dir(sweep: Sweep, root: Path = Path("runs")) -> Path:
    """``runs/sweeps/<name>``: fixed, so running the same command again resumes the sweep."""
    return root / "sweeps" / sweep.name


# --------------------------------------------------------------------------------------------
# Work units and the worker function (runs in a worker process or a Ray task)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """Bring one trial seed's run folder to ``stop_at`` (None: to the end of its budget)."""

    trial: int
    seed: int
    config: dict[str, Any]
    run_dir: str
    stop_at: int | None
    attempt: int = 1


@dataclass(frozen=True)
class SegmentResult:
    """Where a segment left its run: step, evaluation returns, or the error that stopped it."""

    segment: Segment
    run_dir: str
    step: int = 0
    last_eval: float | None = None
    best_eval: float | None = None
    interrupted: bool = False
    error: str | None = None


def _fresh_dir(path: Path) -> Path:
    """``path``, or ``path.1``, ``path.2``... if a folder without a checkpoint is in the way."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def run_segment(segment: Segment, threads: int = 1) -> SegmentResult:
    """Train a run folder from scratch, or resume it from its last checkpoint, up to the target."""
    import torch

    from gymlab import checkpoint, loop, runs
    from gymlab.agent import load_agent_class

    torch.set_num_threads(threads)
    run_dir = Path(segment.run_dir)
    try:
        cls = load_agent_class(segment.config["agent"])
        config = validate(segment.config, cls.Config, source=str(run_dir))
        last = run_dir / "checkpoints" / "last.pt"
        if last.is_file():
            ckpt = checkpoint.load(last)
            state = ckpt["loop"]
            target = segment.stop_at if segment.stop_at is not None else config.run.steps
            # A checkpoint at or past the budget was saved after the final evaluation (the loop
            # evaluates before saving whenever the budget is reached, even on Ctrl-C at that step).
            if int(state["step"]) >= target and state["last_eval"] is not None:
                # Already there (a resumed sweep whose driver stopped before hearing back).
                return SegmentResult(segment, str(run_dir), int(state["step"]), state["last_eval"], state["best_eval"])
            result = loop.train(config, run_dir, resume=ckpt, until=config.run.steps, stop_at=segment.stop_at)
        else:
            run_dir = runs.create_run_dir(config, _fresh_dir(run_dir))
            result = loop.train(config, run_dir, stop_at=segment.stop_at)
    except GymlabError as exc:
        return SegmentResult(segment, str(run_dir), error=str(exc))
    except Exception as exc:  # a crashing trial is reported, never allowed to stop the sweep
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        return SegmentResult(segment, str(run_dir), error=f"{type(exc).__name__}: {exc} ({where})")
    # stop_at ends a run "as if interrupted": only a stop before the target is a real interruption.
    stopped_early = result.interrupted and (segment.stop_at is None or result.step < segment.stop_at)
    return SegmentResult(
        segment, str(run_dir), result.step, result.last_eval, result.best_eval, interrupted=stopped_early
    )


# --------------------------------------------------------------------------------------------
# Backends: local processes, or Ray tasks
# --------------------------------------------------------------------------------------------


class Backend(Protocol):
    """Where segments run. The driver keeps at most ``slots`` of them in flight."""

    slots: int

    def submit(self, segment: Segment) -> None:
        """Start a segment."""
        ...

    def wait(self) -> list[SegmentResult]:
        """Block until at least one segment ends; return every ended one."""
        ...

    def close(self, cancel: bool) -> None:
        """Release the workers (``cancel``: stop the segments still running)."""
        ...


def _worker_init() -> None:
    # A Ctrl-C in the terminal reaches every worker. An idle worker ignores it; a training one
    # gets the loop's own handler, which stops between two steps and saves an exact checkpoint
    # that a resumed sweep continues from.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ProcessBackend:
    """Local ``spawn``-ed worker processes (one pool, reused across segments)."""

    def __init__(self, slots: int) -> None:
        from gymlab.parallel import torch_threads

        self.slots = slots
        self.threads = torch_threads(slots)
        self.pool = self._new_pool()
        self.running: dict[Future[SegmentResult], Segment] = {}

    def _new_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(max_workers=self.slots, mp_context=context, initializer=_worker_init)

    def submit(self, segment: Segment) -> None:
        """Queue a segment on the pool (a new pool if the last one broke meanwhile)."""
        try:
            future = self.pool.submit(run_segment, segment, self.threads)
        except BrokenProcessPool:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = self._new_pool()
            future = self.pool.submit(run_segment, segment, self.threads)
        self.running[future] = segment

    def wait(self) -> list[SegmentResult]:
        """Collect finished segments; a dead worker's segments are retried once, then reported."""
        done, _ = wait(list(self.running), return_when=FIRST_COMPLETED)
        results: list[SegmentResult] = []
        retry: list[Segment] = []
        for future in done:
            segment = self.running.pop(future)
            try:
                results.append(future.result())
            except BrokenProcessPool:
                # A worker died (killed, out of memory, a crash in native code) and took the pool
                # down with it. We cannot tell whose segment did it: retry each once in a new pool.
                if segment.attempt >= 2:
                    results.append(SegmentResult(segment, segment.run_dir, error="worker process died twice"))
                else:
                    retry.append(replace(segment, attempt=segment.attempt + 1))
            except Exception as exc:
                results.append(SegmentResult(segment, segment.run_dir, error=f"worker failed: {exc!r}"))
        if retry:
            for future, segment in list(self.running.items()):  # the rest of the broken pool's work
                retry.append(replace(segment, attempt=segment.attempt + 1))
                del self.running[future]
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = self._new_pool()
            for segment in retry:
                self.submit(segment)
        return results

    def close(self, cancel: bool) -> None:
        """Shut the pool down (running segments finish; on Ctrl-C they stop at a checkpoint)."""
        self.pool.shutdown(wait=True, cancel_futures=cancel)


class RayBackend:
    """Plain Ray tasks, one per segment, on a local Ray instance or an existing cluster.

    Plain tasks rather than Ray Tune: Optuna already is the search engine and the driver already
    schedules, prunes and journals trials; Tune would add its own trial folders, result store
    and Optuna wrapper beside ours. A task here is just ``run_segment`` with one CPU. On a
    cluster of several machines the sweep folder must be on storage every node sees (NFS), as
    each task writes its run folder where the driver says.
    """

    def __init__(self, address: str | None, slots: int | None, gpus_per_run: float = 0.0) -> None:
        try:
            import ray
        except ImportError:
            raise GymlabError("the ray backend needs Ray: pip install 'gymlab[ray]'") from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            try:
                if address:
                    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
                else:
                    ray.init(
                        num_cpus=slots,
                        include_dashboard=False,
                        log_to_driver=False,
                        logging_level=logging.WARNING,
                    )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise GymlabError(f"cannot connect to Ray at {address or 'a new local instance'}: {exc}") from None
        self.slots = slots or max(1, int(ray.cluster_resources().get("CPU", 1)))
        # max_retries=0: a segment is not idempotent halfway (its run folder exists), so a dead
        # worker's segment is reported, not re-run behind the user's back.
        # Ray hides the GPUs from a task that reserves none (CUDA_VISIBLE_DEVICES=""), so a run
        # with device auto trains on CPU there unless the sweep asks for a share of a GPU.
        self.task: Any = ray.remote(num_cpus=1, num_gpus=gpus_per_run, max_retries=0)(run_segment)
        self.running: dict[Any, Segment] = {}

    def submit(self, segment: Segment) -> None:
        """Start a Ray task for the segment."""
        self.running[self.task.remote(segment, 1)] = segment

    def wait(self) -> list[SegmentResult]:
        """Collect finished tasks (a task that died is reported as its segment's error)."""
        ready, _ = self.ray.wait(list(self.running), num_returns=1)
        results = []
        for ref in ready:
            segment = self.running.pop(ref)
            try:
                results.append(self.ray.get(ref))
            except Exception as exc:
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                results.append(SegmentResult(segment, segment.run_dir, error=f"ray task failed: {message}"))
        return results

    def close(self, cancel: bool) -> None:
        """Cancel what still runs (on Ctrl-C) and stop the Ray instance if this sweep started it."""
        if cancel:
            for ref in self.running:
                self.ray.cancel(ref)
        if self.started:
            self.ray.shutdown()


def make_backend(name: str, address: str | None, max_concurrent: int | None, gpus_per_run: float = 0.0) -> Backend:
    """``local``: worker processes; ``ray``: a local Ray instance, or the cluster at ``address``."""
    import os

    if name == "local":
        if address:
            raise GymlabError("--address names a Ray cluster: use it with --backend ray")
        return ProcessBackend(max_concurrent or os.cpu_count() or 1)
    if name == "ray":
        return RayBackend(address, max_concurrent, gpus_per_run)
    raise GymlabError(f"unknown backend '{name}': choose local or ray")


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


@dataclass
class _Active:
    """A trial in progress: its runs, and the target step they are being brought to."""

    trial: optuna.Trial
    params: dict[str, Any]
    configs: dict[int, dict[str, Any]]
    run_dirs: dict[int, str]
    rungs: list[int]
    rung: int = 0
    pending: set[int] = field(default_factory=set)
    results: dict[int, SegmentResult] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @property
    def target(self) -> int | None:
        return self.rungs[self.rung] if self.rung < len(self.rungs) else None


@dataclass(frozen=True)
class TrialRow:
    """One line of the summary."""

    number: int
    state: str
    params: dict[str, Any]
    seeds: list[int]
    returns: list[float]
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    step: int | None
    run_dirs: list[str]
    error: str | None


@dataclass(frozen=True)
class SweepResult:
    """How a sweep ended, and where its summary and best config are."""

    sweep_dir: Path
    rows: list[TrialRow]
    summary_csv: Path
    summary_md: Path
    best_yaml: Path | None
    interrupted: bool
    resumed: int


def _open_study(sweep: Sweep, sweep_dir: Path) -> tuple[optuna.Study, bool]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    spec_path = sweep_dir / SPEC_FILE
    identity = sweep.identity()
    existed = spec_path.is_file()
    if existed:
        stored = yaml.safe_load(spec_path.read_text())
        if stored != identity:
            raise GymlabError(
                f"sweep folder {sweep_dir} holds a different sweep (its {SPEC_FILE} differs from "
                f"{sweep.source}); give a new --run-dir, or restore the sweep file to resume it"
            )
    else:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(yaml.safe_dump(identity, sort_keys=False))

    spec = sweep.spec
    sampler: optuna.samplers.BaseSampler
    if spec.method == "tpe":
        # constant_liar: trials still running count as bad guesses, so parallel workers spread out.
        sampler = optuna.samplers.TPESampler(seed=spec.sampler_seed, constant_liar=True)
    else:
        sampler = optuna.samplers.RandomSampler(seed=spec.sampler_seed)
    pruner: optuna.pruners.BasePruner
    if spec.pruning.pruner == "median":
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=spec.pruning.startup_trials, n_warmup_steps=spec.pruning.warmup
        )
    elif spec.pruning.pruner == "halving":
        # Reported steps are env steps: the first rung is the first check.
        first = spec.pruning.every or int(sweep.base.get("eval_every", 1)) or 1
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=first)
    else:
        pruner = optuna.pruners.NopPruner()
    storage = JournalStorage(JournalFileBackend(str(sweep_dir / JOURNAL_FILE)))
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        load_if_exists=True,
        direction=spec.direction,
        sampler=sampler,
        pruner=pruner,
    )
    if spec.method == "grid":
        # A grid is a queue of fixed trials; the sampler never has to invent one. A resumed sweep
        # given more trials queues the points that no trial holds yet.
        taken = [t.params for t in study.trials]
        fresh = [p for p in sweep.grid() if p not in taken]
        for params in fresh[: max(sweep.trials - len(taken), 0)]:
            study.enqueue_trial(params)
    return study, existed


def _describe(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k.removeprefix('hparams.')}={_fmt(v)}" for k, v in params.items())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class _Driver:
    """Asks Optuna for trials, feeds their segments to the backend, and tells Optuna the results."""

    def __init__(
        self,
        sweep: Sweep,
        sweep_dir: Path,
        study: optuna.Study,
        backend: Backend,
        on_event: Callable[[str], None],
    ) -> None:
        self.sweep, self.sweep_dir, self.study, self.backend = sweep, sweep_dir, study, backend
        self.on_event = on_event
        self.seeds = sweep.spec.seed_list()
        self.active: dict[int, _Active] = {}
        self.queue: list[Segment] = []
        self.in_flight = 0
        self.stopping = False  # a run was stopped by a signal: finish what runs, start nothing

    def run(self) -> bool:
        """Run trials until the budget is spent; True if stopped early by a signal to the runs."""
        self._resume_running()
        while True:
            if not self.stopping:
                self._fill()
            if self.in_flight == 0:
                return self.stopping
            for result in self.backend.wait():
                self.in_flight -= 1
                self._on_result(result)

    # -- starting trials ------------------------------------------------------------------
    def _resume_running(self) -> None:
        """Continue trials a previous, interrupted driver left running, from their checkpoints."""
        import optuna

        for frozen in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            trial = optuna.Trial(self.study, frozen._trial_id)
            done = {int(s): r for s, r in frozen.user_attrs.get("seed_results", {}).items()}
            active = self._start(trial, dict(frozen.params), rung=len(frozen.intermediate_values), skip=done)
            if active is not None:
                for seed, res in done.items():
                    active.results[seed] = SegmentResult(
                        Segment(active.trial.number, seed, active.configs[seed], res["run_dir"], None),
                        res["run_dir"],
                        res["step"],
                        res["last_eval"],
                        res["best_eval"],
                    )
                self.on_event(f"trial {trial.number} resumed ({_describe(frozen.params)})")
                if not active.pending:
                    self._finish_rung(active)

    def _fill(self) -> None:
        """Keep the backend's slots busy: first segments of trials in progress, then new trials."""
        import optuna

        while self.in_flight < self.backend.slots:
            if not self.queue:
                counted = self.study.get_trials(
                    deepcopy=False,
                    states=[s for s in optuna.trial.TrialState if s != optuna.trial.TrialState.WAITING],
                )
                if len(counted) >= self.sweep.trials:
                    return
                trial = self.study.ask()
                try:
                    params = {key: dim.suggest(trial, key) for key, dim in self.sweep.space.items()}
                except ValueError as exc:  # an enqueued point outside the space (edited sweep)
                    self._fail(trial, f"cannot sample: {exc}")
                    continue
                self._start(trial, params)
                continue
            self.backend.submit(self.queue.pop(0))
            self.in_flight += 1

    def _start(
        self,
        trial: optuna.Trial,
        params: dict[str, Any],
        rung: int = 0,
        skip: Mapping[int, Any] | None = None,
    ) -> _Active | None:
        try:
            configs = {seed: self.sweep.trial_config(params, seed) for seed in self.seeds}
            trial_rungs = rungs(configs[self.seeds[0]], self.sweep.spec.pruning)
        except GymlabError as exc:
            self._fail(trial, str(exc))
            return None
        stored = trial.user_attrs.get("run_dirs")
        run_dirs = stored or {
            str(seed): str(self.sweep_dir / f"trial-{trial.number:04d}-s{seed}") for seed in self.seeds
        }
        trial.set_user_attr("run_dirs", run_dirs)
        trial.set_user_attr("seeds", self.seeds)
        active = _Active(trial, params, configs, {int(s): d for s, d in run_dirs.items()}, trial_rungs, rung)
        self.active[trial.number] = active
        self._queue_rung(active, skip)
        return active

    def _queue_rung(self, active: _Active, skip: Mapping[int, Any] | None = None) -> None:
        active.pending = {seed for seed in self.seeds if seed not in (skip or {})}
        for seed in sorted(active.pending):
            run_dir = active.run_dirs[seed]
            self.queue.append(Segment(active.trial.number, seed, active.configs[seed], run_dir, active.target))

    # -- results ----------------------------------------------------------------------------
    def _on_result(self, result: SegmentResult) -> None:
        segment = result.segment
        active = self.active.get(segment.trial)
        if active is None or segment.seed not in active.pending:
            return  # a sibling seed already failed this trial
        if result.interrupted:
            # Ctrl-C or SIGTERM reached the workers: the run stopped at a checkpoint, which a
            # resumed sweep continues. Stop the sweep too (the driver may not have seen the signal).
            self.stopping = True
            return
        active.pending.discard(segment.seed)
        if result.run_dir != active.run_dirs[segment.seed]:
            active.run_dirs[segment.seed] = result.run_dir
            active.trial.set_user_attr("run_dirs", {str(s): d for s, d in active.run_dirs.items()})
        if result.error is not None:
            self._fail(active.trial, f"seed {segment.seed}: {result.error}")
            return
        active.results[segment.seed] = result
        if active.target is None:  # this seed's run is complete: remember it for a resume
            done = dict(active.trial.user_attrs.get("seed_results", {}))
            done[str(segment.seed)] = {
                "run_dir": result.run_dir,
                "step": result.step,
                "last_eval": result.last_eval,
                "best_eval": result.best_eval,
            }
            active.trial.set_user_attr("seed_results", done)
        if not active.pending:
            self._finish_rung(active)

    def _finish_rung(self, active: _Active) -> None:
        trial = active.trial
        if active.target is not None:
            value = _mean(r.last_eval for r in active.results.values())
            if value is None:
                self._fail(trial, f"no evaluation by step {active.target}; lower eval_every")
                return
            trial.report(value, active.target)
            if trial.should_prune():
                self.study.tell(trial, state=_state("PRUNED"))
                del self.active[trial.number]
                self.on_event(
                    f"trial {trial.number} pruned at step {active.target:,} "
                    f"(return {value:.4g}; {_describe(active.params)})"
                )
                return
            active.rung += 1
            active.results = {}
            self._queue_rung(active)
            return
        returns = [getattr(r, self.sweep.spec.metric) for r in active.results.values()]
        value = _mean(returns)
        if value is None:
            self._fail(trial, "the runs ended without an evaluation")
            return
        trial.set_user_attr("returns", [float(x) for x in returns])
        trial.set_user_attr("seconds", round(time.perf_counter() - active.started, 2))
        self.study.tell(trial, value)
        del self.active[trial.number]
        ci = _ci95([float(x) for x in returns])
        spread = f" ± {(ci[1] - ci[0]) / 2:.3g}" if ci[0] is not None and ci[1] is not None else ""
        self.on_event(
            f"trial {trial.number} done: return {value:.4g}{spread} over {len(returns)} seed(s) "
            f"in {time.perf_counter() - active.started:.1f} s ({_describe(active.params)})"
        )

    def _fail(self, trial: optuna.Trial, error: str) -> None:
        trial.set_user_attr("error", error)
        self.study.tell(trial, state=_state("FAIL"))
        self.active.pop(trial.number, None)
        self.queue = [s for s in self.queue if s.trial != trial.number]
        self.on_event(f"trial {trial.number} failed: {error}")


def _state(name: str) -> Any:
    import optuna

    return optuna.trial.TrialState[name]


def _mean(values: Any) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _ci95(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Student-t 95% confidence interval of the mean over seeds (None with fewer than two)."""
    if len(values) < 2:
        return None, None
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def run_sweep(
    sweep: Sweep,
    sweep_dir: Path,
    *,
    backend: str | Backend = "local",
    address: str | None = None,
    on_event: Callable[[str], None] | None = None,
) -> SweepResult:
    """Run (or resume) a sweep in ``sweep_dir``; write its summary and best config there.

    Trials already finished in the folder's journal are kept, trials an interrupted run left
    half-done continue from their checkpoints, and new trials are asked until ``sweep.trials``.
    A trial that fails is recorded with its error; the others go on. Ctrl-C stops every run at
    a checkpoint and returns with ``interrupted=True``. ``backend`` is ``local``, ``ray``, or
    any object following :class:`Backend`.
    """
    emit = on_event or (lambda _: None)
    study, existed = _open_study(sweep, sweep_dir)
    resumed = len([t for t in study.trials if t.state.is_finished()])
    if existed:
        emit(f"resuming sweep in {sweep_dir}: {resumed} finished trial(s) kept")
    if isinstance(backend, str):
        runner = make_backend(backend, address, sweep.max_concurrent, sweep.spec.gpus_per_run)
    else:
        runner = backend
    driver = _Driver(sweep, sweep_dir, study, runner, emit)
    interrupted = False
    try:
        interrupted = driver.run()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        runner.close(cancel=interrupted)
    rows = summarize(study, sweep)
    csv_path, md_path = write_summary(rows, sweep_dir, sweep)
    best = write_best(rows, sweep, sweep_dir)
    return SweepResult(sweep_dir, rows, csv_path, md_path, best, interrupted, resumed)


# --------------------------------------------------------------------------------------------
# Summary and best config
# --------------------------------------------------------------------------------------------

_STATE_ORDER = {"complete": 0, "pruned": 1, "running": 2, "failed": 3}


def summarize(study: optuna.Study, sweep: Sweep) -> list[TrialRow]:
    """Every trial, best first: completed by return, then pruned, interrupted, failed."""
    rows = []
    for t in study.trials:
        if t.state.name == "WAITING":
            continue
        state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(t.state.name, "running")
        returns = [float(x) for x in t.user_attrs.get("returns", [])]
        mean, step = t.value, None
        if state == "pruned" and t.intermediate_values:
            step = max(t.intermediate_values)
            mean = t.intermediate_values[step]
        ci = _ci95(returns) if state == "complete" else (None, None)
        run_dirs = [str(d) for d in t.user_attrs.get("run_dirs", {}).values()]
        rows.append(
            TrialRow(
                t.number,
                state,
                dict(t.params),
                list(t.user_attrs.get("seeds", sweep.spec.seed_list())),
                returns,
                mean,
                ci[0],
                ci[1],
                step,
                run_dirs,
                t.user_attrs.get("error"),
            )
        )
    sign = -1.0 if sweep.spec.direction == "maximize" else 1.0

    def key(row: TrialRow) -> tuple[int, float, int]:
        value = sign * row.mean if row.mean is not None and math.isfinite(row.mean) else math.inf
        return _STATE_ORDER[row.state], value, row.number

    return sorted(rows, key=key)


def _columns(rows: Sequence[TrialRow], sweep: Sweep) -> tuple[list[str], list[list[str]]]:
    keys = list(sweep.space)
    header = ["rank", "trial", "state", *(k.removeprefix("hparams.") for k in keys)]
    header += ["seeds", "return_mean", "ci95_low", "ci95_high", "stopped_at", "error"]
    body = []
    for rank, row in enumerate(rows, 1):
        cells = [str(rank), str(row.number), row.state, *(_fmt(row.params.get(k, "")) for k in keys)]
        cells += [
            " ".join(map(str, row.seeds)),
            "" if row.mean is None else f"{row.mean:.6g}",
            "" if row.ci_low is None else f"{row.ci_low:.6g}",
            "" if row.ci_high is None else f"{row.ci_high:.6g}",
            "" if row.step is None else str(row.step),
            row.error or "",
        ]
        body.append(cells)
    return header, body


def format_table(rows: Sequence[TrialRow], sweep: Sweep) -> str:
    """Render the summary as a Markdown table (what ``summary.md`` holds and the CLI prints)."""
    header, body = _columns(rows, sweep)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def write_summary(rows: Sequence[TrialRow], sweep_dir: Path, sweep: Sweep) -> tuple[Path, Path]:
    """Write ``summary.csv`` (with run folders) and ``summary.md``; returns their paths."""
    header, body = _columns(rows, sweep)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*header, "returns", "run_dirs"])
    for cells, row in zip(body, rows, strict=True):
        writer.writerow([*cells, " ".join(f"{r:.6g}" for r in row.returns), " ".join(row.run_dirs)])
    csv_path, md_path = sweep_dir / SUMMARY_CSV, sweep_dir / SUMMARY_MD
    csv_path.write_text(buffer.getvalue())
    title = f"# Sweep {sweep.name}: {sweep.spec.agent} on {sweep.spec.env}, {sweep.spec.method} search\n\n"
    metric = "final evaluation return" if sweep.spec.metric == "last_eval" else "best evaluation return"
    note = f"return_mean: mean {metric} over seeds; ci95: Student-t 95% interval over seeds.\n\n"
    md_path.write_text(title + note + format_table(rows, sweep))
    return csv_path, md_path


def write_best(rows: Sequence[TrialRow], sweep: Sweep, sweep_dir: Path) -> Path | None:
    """Write the best completed trial's resolved config as ``best.yaml`` (None: nothing completed)."""
    best = next((r for r in rows if r.state == "complete"), None)
    if best is None:
        return None
    config = sweep.trial_config(best.params, best.seeds[0] if best.seeds else 0)
    spread = ""
    if best.ci_low is not None and best.ci_high is not None:
        spread = f", 95% CI [{best.ci_low:.4g}, {best.ci_high:.4g}]"
    header = (
        f"# Best of sweep {sweep.name} ({sweep.source}): trial {best.number}, "
        f"return {best.mean:.4g} over seeds {best.seeds}{spread}.\n"
        f"# Train it with: gymlab train --config {sweep_dir / BEST_FILE}\n"
    )
    path = sweep_dir / BEST_FILE
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path
