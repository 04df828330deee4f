"""Run configuration: YAML presets, ``key=value`` overrides, and validation before any training.

A config has run-level keys (env, budget, evaluation, logging) and an ``hparams`` section
validated by the agent's own pydantic ``Config``. Precedence, lowest first: the agent's
defaults, the shipped preset ``configs/<agent>/<env>.yaml`` (when no ``--config`` is given),
``--config FILE``, ``key=value`` overrides, then the explicit ``--seed/--steps/--device`` flags.

An override key may be dotted (``hparams.learning_rate=1e-3``, ``env_kwargs.is_slippery=false``)
or, for hyperparameters, bare (``learning_rate=1e-3``). Every unknown or mistyped key, wrong
type or out-of-range value is rejected with one line naming the key and the closest valid one.
"""

from __future__ import annotations

import difflib
import math
import re
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gymlab.agent import AgentClass, load_agent_class
from gymlab.errors import GymlabError
from gymlab.plaindata import coerced, data_problem, too_large
from gymlab.yamlfile import YamlLimitError, load_yaml, parse_yaml

#: What ``device`` may name.
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?|mps)$"
#: What :data:`DEVICE_PATTERN` takes, in words, for error lines.
DEVICE_WORDS = "expected auto, cpu, cuda, cuda:N or mps"


class RunConfig(BaseModel):
    """Keys shared by every run, whatever the agent."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(description="agent name (see `gymlab list`) or module:Class")
    env: str = Field(description="Gymnasium id, module:Env-v0 or module:EnvClass")
    env_kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the env")
    wrappers: list[str] = Field(default_factory=list, description="wrapper stacks, e.g. [atari]")
    seed: int = Field(0, ge=0, description="seeds python, numpy, torch, the envs and the agent")
    steps: int = Field(100_000, gt=0, description="env-step budget, summed over all envs")
    num_envs: int = Field(1, ge=1, description="parallel env copies feeding the agent")
    vectorization: Literal["auto", "sync", "async", "native"] = Field(
        "auto",
        description="sync: one process; async: one per env; native: ALE's C++ vector env (wrappers: [atari]); "
        "auto: native where it runs, else sync",
    )
    overlap: bool | Literal["auto"] = Field(
        "auto",
        description="step the envs while the agent learns (an update then samples a memory without the step in "
        "flight): true; false: one after the other; auto: true where the vector env steps by itself (ALE's "
        "native, async)",
    )
    threads: int = Field(
        1,
        ge=0,
        le=1024,  # torch starts them all at once: tens of thousands ended the process with no word (a segfault)
        description="torch CPU threads (0: leave torch's choice); small nets run fastest on one",
    )
    device: str = Field("auto", pattern=DEVICE_PATTERN, description="auto|cpu|cuda[:N]")
    deterministic: bool = Field(
        False,
        description="deterministic GPU kernels (torch.use_deterministic_algorithms): a CUDA resume then repeats the "
        "uninterrupted run bit for bit, at some speed; the CPU is deterministic without it",
    )
    eval_every: int = Field(10_000, ge=0, description="env steps between evaluations (0: only at the end)")
    eval_episodes: int = Field(10, ge=1, description="greedy episodes per evaluation")
    eval_max_steps: int = Field(
        10_000, ge=1, description="steps after which an evaluation episode is cut when the env has no time limit"
    )
    checkpoint_every: int = Field(50_000, ge=0, description="env steps between checkpoints (0: only at the end)")
    log_every: int = Field(1_000, gt=0, description="env steps between TensorBoard scalar writes")
    video_every: int = Field(0, ge=0, description="env steps between recorded evaluation videos (0: off)")
    hparams: dict[str, Any] = Field(default_factory=dict, description="the agent's hyperparameters")

    @field_validator("env_kwargs")
    @classmethod
    def _render_mode_is_gymlabs(cls, env_kwargs: dict[str, Any]) -> dict[str, Any]:
        # A training env rendering to a window draws every step (FrozenLake: 4 steps/s) and, with no screen,
        # draws to nothing; gymlab picks the mode for what renders (videos, watch, check).
        if "render_mode" in env_kwargs:
            raise ValueError(
                "gymlab sets the render mode itself (rgb_array for videos, a window or an mp4 for watch): "
                "remove env_kwargs.render_mode"
            )
        return env_kwargs


@dataclass(frozen=True)
class Config:
    """A validated config: the run keys, the agent's own hyperparameter model, and the agent's class.

    Made only by :func:`validate`; the agent class it names is loaded once, there, and carried along.
    """

    run: RunConfig
    hparams: BaseModel
    agent_class: AgentClass = field(compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data, as written to a run's ``config.yaml``."""
        data = self.run.model_dump(mode="json")
        data["hparams"] = self.hparams.model_dump(mode="json")
        return data

    def with_run(self, **changes: Any) -> Config:
        """A copy with some run keys changed (``seed``, ``device``), each checked as the schema would."""
        seed = changes.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise GymlabError(f"seed {seed!r}: must be a whole number from 0 to {MAX_SEED:,}")
        if "device" in changes and not re.fullmatch(DEVICE_PATTERN, str(changes["device"])):
            raise GymlabError(f"device '{changes['device']}': {DEVICE_WORDS}")
        unknown = set(changes) - {"seed", "device"}
        if unknown:
            raise ValueError(f"with_run changes only seed and device, not {sorted(unknown)}")
        return Config(self.run.model_copy(update=changes), self.hparams, self.agent_class)


def slug(name: str) -> str:
    """An agent or env name as one folder name (and so one section of a TensorBoard run name).

    ``pkg.mod:MyEnv`` -> ``pkg.mod.MyEnv``: anything but letters, digits, ``_``, ``.`` and ``-``
    becomes ``.``, in particular ``/``, which would split the name into two folders.
    """
    return re.sub(r"[^A-Za-z0-9_.\-]+", ".", str(name)).strip(".")


def configs_root() -> Path:
    """Where the shipped presets live (``configs/`` in the repo, ``gymlab.configs`` installed)."""
    return Path(str(resources.files("gymlab.configs")))


def shipped_configs() -> list[tuple[str, str, Path]]:
    """Every shipped preset as ``(agent, env, path)`` (sweep files live apart, in ``configs/sweeps/``)."""
    root = configs_root()
    return [(p.parent.name, p.stem, p) for p in sorted(root.glob("*/*.yaml")) if p.parent.name != "sweeps"]


def preset_path(agent: str, env_slug: str) -> Path | None:
    """The shipped preset for an agent and env, if there is one."""
    path = configs_root() / agent / f"{env_slug}.yaml"
    return path if path.is_file() else None


def _parse_value(key: str, text: str) -> Any:
    try:
        return parse_yaml(text)
    except YamlLimitError as exc:
        raise GymlabError(f"override {key}=... is refused: {exc}") from None
    except yaml.YAMLError:
        return text


def override_path(key: str, hparam_keys: Sequence[str]) -> list[str]:
    """The key path an override's key names: dotted as given, a bare hyperparameter name under ``hparams``."""
    path = key.strip().split(".")
    if len(path) == 1 and path[0] not in RunConfig.model_fields and path[0] in hparam_keys:
        path = ["hparams", *path]
    return path


#: Keys an override may not set: the command names them (``gymlab train AGENT ENV``), and a run's
#: agent class is loaded from the name before any override is read.
NAMED_BY_THE_COMMAND = ("agent", "env")


def apply_overrides(
    data: dict[str, Any],
    overrides: Sequence[str],
    hparam_keys: Sequence[str],
    *,
    once: bool = False,
    origins: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Apply ``key=value`` strings to a nested mapping; bare hyperparameter names go to ``hparams``.

    A mapping given for a mapping merges into it key by key (``hparams={gamma: 0.5}`` is ``hparams.gamma=0.5``),
    as a config file's layers do; anything else replaces what was there. With ``once`` (a user's own list,
    as typed), a key given twice is refused, as in a YAML file; a sweep's layers (base, overrides, trial)
    override each other on purpose and leave it off. ``origins`` (key -> where it was given, for error
    lines) learns what each override set, and forgets the keys inside a value it replaced.
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    given: dict[tuple[str, ...], str] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise GymlabError(f"override '{item}' is not key=value (e.g. hparams.learning_rate=0.001)")
        path = override_path(key, hparam_keys)
        if path[0] in NAMED_BY_THE_COMMAND and len(path) == 1:
            raise GymlabError(
                f"override '{item}': the {path[0]} is named by the command, not by an override "
                "(gymlab train AGENT ENV, or agent: and env: in a --config file)"
            )
        if once and tuple(path) in given:
            raise GymlabError(
                f"override '{item}' sets '{'.'.join(path)}', which '{given[tuple(path)]}' already set: give it once"
            )
        given[tuple(path)] = item
        node = out
        for depth, part in enumerate(path[:-1], 1):
            child = node.get(part)
            if child is not None and not isinstance(child, dict):  # never a value silently made a mapping
                where = ".".join(path[:depth])
                raise GymlabError(
                    f"override '{item}': '{where}' is a value ({_short_repr(child)}), not a mapping of keys; "
                    f"set it with {where}=VALUE"
                )
            if child is None:
                child = {}
                node[part] = child
            node = child
        value, before = _parse_value(key, raw), node.get(path[-1])
        merged = isinstance(value, dict) and isinstance(before, dict)
        node[path[-1]] = merge(before, value) if isinstance(before, dict) and merged else value
        if origins is not None:
            where, named = ".".join(path), f"override {item if len(item) <= 60 else item[:59] + '…'}"
            if not merged:
                for inner in [k for k in origins if k.startswith(f"{where}.")]:
                    del origins[inner]
            origins[where] = named
            if isinstance(value, dict):
                origins.update(dict.fromkeys((f"{where}.{sub}" for sub in _given_keys(value)), named))
    return out


def _valid_keys(hparams_model: type[BaseModel]) -> list[str]:
    keys = [k for k in RunConfig.model_fields if k != "hparams"]
    return keys + [f"hparams.{k}" for k in hparams_model.model_fields]


def explain(exc: ValidationError, prefix: str, valid: list[str], source: str) -> GymlabError:
    """One line for a pydantic error: the key, and for an unknown key the closest valid one ("did you mean")."""
    errors = exc.errors()
    err = errors[0]
    loc = err["loc"]
    # A value that fits no member of a union (overlap: bool | "auto") fails once per member, each error's
    # location ending in the member's tag ("bool", "literal['auto']"): name the key and every member's wish.
    union = [e for e in errors if len(e["loc"]) == len(loc) > 1 and e["loc"][:-1] == loc[:-1]]
    if len(union) > 1 and len({e["loc"][-1] for e in union}) == len(union):
        loc = loc[:-1]
        wishes = [e["msg"].removeprefix("Input should be ").split(", unable")[0] for e in union]
        err = {**err, "msg": "Input should be " + " or ".join(wishes)}
    key = ".".join([prefix, *map(str, loc)] if prefix else map(str, loc))
    if err["type"] == "extra_forbidden":
        leaf = key.rsplit(".", 1)[-1]
        leaves = [v.rsplit(".", 1)[-1] for v in valid]
        # A bare name may be a run key or a hyperparameter (overrides take both): match it on names,
        # so n_step finds hparams.n_steps rather than steps.
        close = [] if "." not in key else difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        if not close:
            named = difflib.get_close_matches(leaf, leaves, n=1, cutoff=0.6)
            close = [k for k, v in zip(valid, leaves, strict=True) if v in named]
        hint = f"did you mean '{close[0]}'?" if close else "see `gymlab list` and the presets in configs/"
        return GymlabError(f"{source}: unknown key '{key}': {hint}")
    if err["type"] == "missing":
        return GymlabError(f"{source}: missing key '{key}'")
    if err["type"] == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == DEVICE_PATTERN:
        err = {**err, "msg": DEVICE_WORDS}
    value = err.get("input")
    if _non_finite(value, err["type"]):  # "nan: less than or equal to 1" misleads
        return GymlabError(f"{source}: '{key}' = {value}: must be a finite number")
    if err["type"] == "value_error":  # gymlab's own validator's words, without pydantic's "Value error, "
        err = {**err, "msg": err["msg"].removeprefix("Value error, ")}
    if not loc:  # a check of the whole file or of all hparams (their keys together): its words name the keys
        return GymlabError(f"{source}: {err['msg']}")
    return GymlabError(f"{source}: '{key}' = {_short_repr(err.get('input'))}: {err['msg']}")


#: pydantic's error types for a number out of its bounds or not a number of the field's kind.
_NUMBER_ERRORS = ("int_", "float_", "greater_than", "less_than", "finite_number", "multiple_of")


def _non_finite(value: Any, error_type: str) -> bool:
    """Whether a number field was refused a value that is not finite.

    YAML's ``.nan``, or ``nan``, ``inf`` or ``-Infinity`` as text: ``gamma=nan`` gives text, YAML reading it so.
    """
    if isinstance(value, str) and error_type.startswith(_NUMBER_ERRORS):
        try:
            value = float(value)
        except ValueError:
            return False
    return isinstance(value, float) and not math.isfinite(value)


def _short_repr(value: Any) -> str:
    """``repr(value)`` shortened for an error line (a value may be a large list from a config)."""
    short = reprlib.Repr()
    short.maxstring = short.maxother = 80
    return short.repr(value)


#: The most env copies a run may step at once.
MAX_NUM_ENVS = 4096
#: The largest seed (seeds derived from it for evaluations and videos must stay in every generator's range).
MAX_SEED = 2**32 - 1
#: The most runs one command starts: ``train --seeds``, or one sweep trial's ``seeds``.
MAX_SEEDS = 1_000
#: The most runs at once (``--workers``, ``--max-concurrent``, a sweep file's ``max_concurrent``).
MAX_AT_ONCE = 256
#: The most trials of a sweep (``--trials``, a sweep file's ``trials``).
MAX_TRIALS = 100_000


def _bounds_problem(run: RunConfig) -> tuple[str, str] | None:
    """A run key out of bounds that its schema cannot state alone: (key, why); else None."""
    if run.seed > MAX_SEED:
        return "seed", f"{run.seed}: seeds go from 0 to {MAX_SEED:,}"
    if run.num_envs > run.steps:
        return "num_envs", (
            f"{run.num_envs} is more than 'steps' = {run.steps}: each step steps every copy once; "
            "lower num_envs or raise steps"
        )
    if run.num_envs > MAX_NUM_ENVS:
        return "num_envs", f"{run.num_envs}: at most {MAX_NUM_ENVS:,} env copies step at once; lower num_envs"
    return None


def _origin(origins: Mapping[str, str] | None, key: str, source: str) -> str:
    """Where ``key`` (``device``, ``hparams.gamma.0``) was given.

    Its own origin, else a key set inside it (the override ``hparams.gamma.x=1`` made ``hparams.gamma`` a
    mapping; for a check of all ``hparams`` together, an override first: the last layer given), else its
    parent's, else ``source``.
    """
    if origins:
        inside = [where for given, where in origins.items() if given.startswith(f"{key}.")]
        if inside:
            return ([where for where in inside if where.startswith("override ")] or inside)[-1]
        parts = key.split(".")
        for end in range(len(parts), 0, -1):
            found = origins.get(".".join(parts[:end]))
            if found is not None:
                return found
    return source


def validate(
    data: Mapping[str, Any],
    agent_class: AgentClass,
    source: str = "config",
    origins: Mapping[str, str] | None = None,
) -> Config:
    """Validate a merged config mapping against the run schema and the hyperparameters of ``agent_class``.

    Besides each schema's own checks, every number anywhere in the config (run keys, ``env_kwargs``,
    ``hparams``) must be finite: YAML's ``.inf``/``.nan`` and overrides like ``learning_rate=inf``
    would otherwise train to all-NaN weights and still "succeed". Nothing is taken by coercion (see
    :func:`coerced`), and ``num_envs`` is bounded (by :data:`MAX_NUM_ENVS` and by ``steps``).
    ``origins`` maps a key (``device``, ``hparams.gamma``) to where it was given (``--device``, a file,
    ``override gamma=...``), for the error line; ``source`` names everything else.
    """
    hparams_model = agent_class.Config
    valid = _valid_keys(hparams_model)
    try:
        run = RunConfig.model_validate(dict(data))
    except ValidationError as exc:
        key = ".".join(map(str, exc.errors()[0]["loc"]))
        raise explain(exc, "", valid, _origin(origins, key, source)) from None
    try:
        hparams = hparams_model.model_validate(run.hparams)
    except ValidationError as exc:
        key = ".".join(["hparams", *map(str, exc.errors()[0]["loc"])])
        raise explain(exc, "hparams", valid, _origin(origins, key, source)) from None
    # The raw run keys and hparams as given (env_kwargs and any Any-typed field keep what YAML made), then the
    # validated hparams (a schema may turn the text "inf" into a float).
    for tree in ({**run.model_dump(), "hparams": run.hparams}, {"hparams": hparams.model_dump()}):
        found = data_problem(tree, "")
        if found is not None:
            key, why = found
            raise GymlabError(f"{_origin(origins, key, source)}: '{key}' = {why}")
    given = {k: v for k, v in data.items() if k != "hparams"}
    for found in (
        coerced(given, run, ""),
        coerced(dict(data.get("hparams") or {}), hparams, "hparams"),
        too_large({**run.model_dump(), "hparams": hparams.model_dump()}, ""),
        _bounds_problem(run),
    ):
        if found is not None:
            key, why = found
            raise GymlabError(f"{_origin(origins, key, source)}: '{key}' = {why}")
    run = run.model_copy(update={"hparams": hparams.model_dump(mode="json")})
    return Config(run=run, hparams=hparams, agent_class=agent_class)


def merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Merge two config mappings; nested mappings (hparams, env_kwargs) merge key by key."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve(
    agent: str | None,
    env: str | None,
    config_file: Path | None = None,
    overrides: Sequence[str] = (),
    *,
    seed: int | None = None,
    steps: int | None = None,
    device: str | None = None,
    once: bool = False,
) -> Config:
    """Build a run's config from the command line's pieces, in the documented precedence.

    ``once``: the overrides are a user's own list, where a key given twice is refused (see :func:`apply_overrides`).
    """
    file_data = load_yaml(config_file) if config_file is not None else {}
    source = str(config_file) if config_file is not None else "config"
    for key, given in (("agent", agent), ("env", env)):
        in_file = file_data.get(key)
        if given is not None and in_file is not None and in_file != given:
            raise GymlabError(f"{source} is for {key} '{in_file}' but the command line says '{given}'")
    agent = agent or file_data.get("agent")
    env = env or file_data.get("env")
    if not agent or not env:
        raise GymlabError(
            "name the agent and the env: gymlab train AGENT ENV (e.g. gymlab train tabular_q FrozenLake-v1)"
        )
    agent_cls = load_agent_class(str(agent))
    data: dict[str, Any] = {"agent": agent, "env": env}
    origins: dict[str, str] = {}  # key -> where it was given, for the error line (later layers win)
    if config_file is None:
        preset = preset_path(str(agent), slug(str(env)))
        if preset is not None:
            preset_data = load_yaml(preset)
            data = merge(data, preset_data)
            source = str(preset)
            origins.update(dict.fromkeys(_given_keys(preset_data), source))
    data = merge(data, file_data)
    origins.update(dict.fromkeys(_given_keys(file_data), source))
    hparam_keys = list(agent_cls.Config.model_fields)
    data = apply_overrides(data, overrides, hparam_keys, once=once, origins=origins)
    for key, flag in (("seed", seed), ("steps", steps), ("device", device)):
        if flag is not None:
            data[key] = flag
            origins[key] = f"--{key} {flag}"
    return validate(data, agent_cls, source=source if not overrides else f"{source} + overrides", origins=origins)


def _given_keys(data: Mapping[str, Any]) -> list[str]:
    """The keys a config mapping gives: its top-level keys and, one level down, ``hparams.x`` and the like."""
    keys = [str(k) for k in data]
    for key, value in data.items():
        if isinstance(value, Mapping):
            keys += [f"{key}.{sub}" for sub in value]
    return keys
