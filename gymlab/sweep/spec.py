"""The sweep file: its schema, and loading it into a checked :class:`Sweep` whose configs resolve as ``train``'s.

A trial seed's config is built by :func:`gymlab.config.resolve`, the same path ``gymlab train`` takes: the
shipped preset (or the file named by ``config:``), then ``base`` and ``overrides``, then the trial's searched
values, each given as a ``key=value`` override, then the seed. So precedence, bare hyperparameter names,
dotted keys and "did you mean" are those of the command line, and nothing here re-implements them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from gymlab.build import preflight
from gymlab.config import MAX_AT_ONCE, MAX_SEED, MAX_SEEDS, MAX_TRIALS, Config, explain, override_path, resolve
from gymlab.errors import GymlabError
from gymlab.yamlfile import load_yaml

if TYPE_CHECKING:
    import optuna

Scalar = bool | int | float | str | None

_DIMENSION_FORMS = (
    "a list of values, or one of {grid: [...]}, {choice: [...]}, {uniform: [low, high]}, "
    "{loguniform: [low, high]}, {int: [low, high]}"
)
#: Why a key cannot be searched: a sweep sets it itself (agent, env) or per trial seed (seed).
_UNSEARCHABLE = {
    "agent": "one sweep is one agent on one env; write a sweep file per agent and env",
    "env": "one sweep is one agent on one env; write a sweep file per agent and env",
    "seed": "seeds are set by `seeds:`",
    "hparams": "not as a whole; search its keys one by one (e.g. hparams.gamma)",
}
#: Strict numbers: a boolean or text is refused, never read as a number (an int is a float).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]


def _number_problem(value: Any, whole: bool = False) -> str | None:
    """Why ``value`` is not a number as written (a boolean, text, not finite), or None."""
    if isinstance(value, bool):
        return f"{value}: a boolean is not a number"
    if isinstance(value, str):
        return f"{value!r}: text is not a number (write the value unquoted)"
    if not isinstance(value, (int, float)):
        return f"{value!r} is not a number"
    if whole and not isinstance(value, int):
        return f"{value!r} is not a whole number"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value}: must be a finite number"
    return None


class Dimension(BaseModel):
    """One searched key: a finite set of values (grid, choice) or a numeric range."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["grid", "choice", "uniform", "loguniform", "int"] = Field(description="how values are drawn")
    values: tuple[Scalar, ...] = Field((), description="the values of a grid or choice dimension")
    low: Float = Field(0.0, description="lower bound of a range (inclusive)")
    high: Float = Field(0.0, description="upper bound of a range (inclusive)")

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
                for bound in arg:
                    problem = _number_problem(bound)
                    if problem is not None:
                        raise ValueError(f"{kind} bound {problem}")
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

    model_config = ConfigDict(extra="forbid", frozen=True)

    pruner: Literal["none", "median", "halving"] = Field(
        "none", description="none, Optuna's MedianPruner, or its SuccessiveHalvingPruner"
    )
    every: Int | None = Field(
        None, gt=0, description="env steps between checks, a multiple of eval_every (default: eval_every)"
    )
    warmup: Int = Field(0, ge=0, description="env steps a trial runs before it may be pruned (median)")
    startup_trials: Int = Field(2, ge=0, description="trials that run unpruned before pruning starts (median)")


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
    trials: Int | None = Field(
        None, gt=0, le=MAX_TRIALS, description="number of trials (default: the grid's size, or 20)"
    )
    seeds: int | list[int] = Field(1, description="seeds per trial: a count (0..N-1) or a list")
    metric: Literal["last_eval", "best_eval"] = Field(
        "last_eval", description="final evaluation return, or the best one seen during the run"
    )
    direction: Literal["maximize", "minimize"] = Field("maximize", description="better returns are larger")
    pruning: PruningSpec = Field(
        default_factory=lambda: PruningSpec.model_validate({}), description="early stopping of bad trials"
    )
    max_concurrent: Int | None = Field(
        None, gt=0, le=MAX_AT_ONCE, description="runs at once (default: the backend's CPUs)"
    )
    sampler_seed: Int = Field(0, ge=0, le=MAX_SEED, description="seed of the grid, random and TPE samplers")
    gpus_per_run: Float = Field(
        0.0, ge=0, description="GPUs Ray reserves per run (e.g. 0.25: four runs share one); local: unused"
    )

    @field_validator("name", mode="before")
    @classmethod
    def _one_folder(cls, name: Any) -> Any:
        """A name is one folder under ``runs/sweeps``: never empty, a path, ``.`` or ``..``."""
        if isinstance(name, str) and (not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0")):
            raise ValueError(
                "a sweep's name is one folder name under runs/sweeps (no '/', '\\', '.' or '..', not empty); "
                "choose a plain name, or leave it out to use the file's name"
            )
        return name

    @field_validator("seeds", mode="before")
    @classmethod
    def _bounded_seeds(cls, seeds: Any) -> Any:
        """A count from 1 to :data:`MAX_SEEDS`, or a list of at most that many distinct seeds in 0..MAX_SEED."""
        how = f"a count from 1 to {MAX_SEEDS:,} or a list of at most {MAX_SEEDS:,} distinct seeds"
        if isinstance(seeds, list):
            if not seeds or len(seeds) > MAX_SEEDS:
                raise ValueError(f"seeds is {how}; got {len(seeds):,} seeds")
            for seed in seeds:
                problem = _number_problem(seed, whole=True)
                if problem is not None:
                    raise ValueError(f"seed {problem}")
                if not 0 <= seed <= MAX_SEED:
                    raise ValueError(f"seed {seed:,}: seeds go from 0 to {MAX_SEED:,}")
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"seeds is {how}; a seed is listed twice")
            return seeds
        problem = _number_problem(seeds, whole=True)
        if problem is not None:
            raise ValueError(f"seeds is {how}; {problem}")
        if not 1 <= seeds <= MAX_SEEDS:
            raise ValueError(f"seeds is {how}; got {seeds:,} (a trial trains at most {MAX_SEEDS:,} runs)")
        return seeds

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if self.method == "grid":
            ranged = [k for k, d in self.space.items() if not d.finite]
            if ranged:
                names = ", ".join(f"space.{k}" for k in ranged)
                raise ValueError(
                    f"grid search needs listed values, but {names} {'is a range' if len(ranged) == 1 else 'are ranges'}"
                    ": list the values to try, or use method: random or tpe"
                )
        return self

    def seed_list(self) -> list[int]:
        """Return the seeds every trial trains."""
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


def _spec_keys() -> list[str]:
    """Every key a sweep file may hold, dotted for ``pruning``: what "did you mean" chooses from."""
    keys = list(SweepSpec.model_fields)
    return keys + [f"pruning.{k}" for k in PruningSpec.model_fields]


def as_override(key: str, value: Any) -> str:
    """``key=value`` with the value written as YAML, so :func:`gymlab.config.apply_overrides` reads it back exactly."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    """A nested mapping as dotted ``key=value`` overrides (nested mappings merge key by key, as in a config file)."""
    out: list[str] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out += _flatten(value, f"{dotted}.")
        else:
            out.append(as_override(dotted, value))
    return out


@dataclass(frozen=True)
class Sweep:
    """A loaded, checked sweep: its spec, the base overrides, and the searched keys (as written in the file)."""

    spec: SweepSpec
    source: Path
    config_file: Path | None
    base_overrides: tuple[str, ...]
    trials: int
    max_concurrent: int | None
    asked_trials: int | None = None  # more trials than the grid holds were asked for: ``trials`` is the grid's size

    @property
    def name(self) -> str:
        """The sweep's name (its file's stem unless the file names it)."""
        return self.spec.name or self.source.stem

    @property
    def space(self) -> dict[str, Dimension]:
        """The searched keys and their dimensions; a key is what Optuna calls the parameter."""
        return self.spec.space

    def grid(self) -> dict[str, list[Any]]:
        """The grid as Optuna's GridSampler takes it: every key's values (only for finite spaces)."""
        return {key: list(dim.values) for key, dim in self.space.items()}

    def resolve(self, params: Mapping[str, Any], seed: int) -> Config:
        """Resolve one trial seed's config through :func:`gymlab.config.resolve` (GymlabError when invalid)."""
        overrides = [*self.base_overrides, *(as_override(k, v) for k, v in params.items())]
        try:
            return resolve(self.spec.agent, self.spec.env, self.config_file, overrides, seed=seed)
        except GymlabError as exc:
            raise GymlabError(f"sweep {self.source}: {exc}") from None

    def trial_config(self, params: Mapping[str, Any], seed: int) -> dict[str, Any]:
        """One trial seed's resolved config as plain data (what a worker trains and ``best.yaml`` holds)."""
        return self.resolve(params, seed).to_dict()

    def base_config(self) -> dict[str, Any]:
        """The resolved config before any searched value (seed 0)."""
        return self.trial_config({}, 0)

    def identity(self) -> dict[str, Any]:
        """Return what must not change when a sweep folder is resumed (trial count and concurrency may)."""
        spec = self.spec.model_dump(mode="json", exclude={"trials", "max_concurrent", "name"})
        return {"spec": spec, "base": self.base_config()}


def check_pruning(config: Mapping[str, Any], pruning: PruningSpec) -> int | None:
    """Return the env steps between pruning checks for a trial's config (None: no pruning)."""
    if pruning.pruner == "none":
        return None
    eval_every = int(config["eval_every"])
    if eval_every <= 0:
        raise GymlabError("pruning judges intermediate evaluations: set eval_every > 0 in the sweep's base")
    every = pruning.every or eval_every
    if every % eval_every:
        raise GymlabError(
            f"pruning.every ({every}) must be a multiple of eval_every ({eval_every}) "
            "so that every check sees a fresh evaluation"
        )
    return every


def _check_distinct_keys(spec: SweepSpec, hparam_keys: list[str], path: Path) -> None:
    """Refuse two spellings of one key (``gamma`` and ``hparams.gamma``), or a key and a part of it."""
    seen: dict[tuple[str, ...], str] = {}
    for key in spec.space:
        dotted = tuple(override_path(key, hparam_keys))
        for other_path, other in seen.items():
            shorter = min(len(dotted), len(other_path))
            if dotted[:shorter] == other_path[:shorter]:
                same = "are the same key" if dotted == other_path else "overlap (one is part of the other)"
                raise GymlabError(
                    f"sweep {path}: space keys '{other}' and '{key}' {same} ('{'.'.join(dotted)}'); search it once"
                )
        seen[dotted] = key


def load_sweep(path: Path, *, trials: int | None = None, max_concurrent: int | None = None) -> Sweep:
    """Read and check a sweep file: every searched value is validated before anything runs."""
    raw = load_yaml(path, "sweep file")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise explain(exc, "", _spec_keys(), f"sweep {path}") from None
    for key in spec.space:
        head = key.strip().split(".")[0]
        if head in _UNSEARCHABLE and (head != "hparams" or key.strip() == "hparams"):
            raise GymlabError(f"sweep {path}: '{key}' cannot be searched: {_UNSEARCHABLE[head]}")
    config_file = (path.parent / spec.config).resolve() if spec.config is not None else None
    base = (*_flatten(spec.base), *spec.overrides)
    n_grid = math.prod(len(d.values) for d in spec.space.values()) if spec.method == "grid" else None
    n_trials = trials or spec.trials or n_grid or 20
    asked = n_trials if n_grid is not None and n_trials > n_grid else None  # said in the sweep's first line
    if n_grid is not None:
        n_trials = min(n_trials, n_grid)
    sweep = Sweep(spec, path, config_file, base, n_trials, max_concurrent or spec.max_concurrent, asked)

    # Check every listed value and both ends of every range, one key at a time, so a typo or an
    # out-of-range bound is reported now rather than by trial 17 an hour from now.
    first = {k: d.corners()[0] for k, d in spec.space.items()}
    config = sweep.resolve(first, spec.seed_list()[0])
    _check_distinct_keys(spec, list(config.agent_class.Config.model_fields), path)
    for key, dim in spec.space.items():
        for value in dim.corners():
            check_pruning(sweep.trial_config({**first, key: value}, 0), spec.pruning)
    check_pruning(config.to_dict(), spec.pruning)
    preflight(config)
    return sweep


def default_sweep_dir(sweep: Sweep, root: Path = Path("runs")) -> Path:
    """``runs/sweeps/<name>``: fixed, so running the same command again resumes the sweep."""
    return root / "sweeps" / sweep.name
