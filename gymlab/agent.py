"""The agent protocol: the only contract between the rollout loop and an algorithm.

The loop knows nothing of any algorithm. Each agent owns its own schedule: when to learn, when
to sync a target network, when an episode batch is complete. One training iteration is::

    actions = agent.act(obs, explore=True)          # (N, *action_shape)
    ... envs.step(actions) ...
    agent.observe(Transition(...))                  # every step of every env
    metrics = agent.update(step)                    # learns if due; {} when nothing happened

Before the first env step the loop runs the agent's offline phases, if it has any (pre-training
without env interaction: ``run_phase(name, index)`` per iteration). ``state_dict()`` splits what
acting needs ("policy") from the rest of an exact resume ("training"), so ``gymlab eval`` and
``watch`` build any run's agent with one env and load its policy alone.

Agents are named in :data:`AGENTS` (lazy import paths, so ``gymlab list`` stays fast) or given
as ``module:Class`` for a user's own agent.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, cast, runtime_checkable

import gymnasium as gym
import numpy as np
import torch
from pydantic import BaseModel
from typing_extensions import get_protocol_members

from gymlab.errors import GymlabError, describe
from gymlab.extras import import_module

#: Built-in agents by name, as import paths so that naming one never imports another.
AGENTS: Mapping[str, str] = {
    "tabular_q": "gymlab.agents.tabular_q:TabularQ",
    "dqn": "gymlab.agents.dqn:DQN",
    "reinforce": "gymlab.agents.reinforce:Reinforce",
    "seqgan": "gymlab.agents.seqgan:SeqGAN",
    "random": "gymlab.agents.random_agent:RandomAgent",
}


@dataclass(slots=True)
class Transition:
    """One step of every env, as the loop hands it to ``Agent.observe``; agents read it, never change it.

    ``next_obs`` is the true next observation: for a step that ended an episode it is the final
    observation of that episode (not the first of the next one), so no agent repeats Gymnasium's
    autoreset bookkeeping. A truncated step (time limit) still bootstraps from ``next_obs``; a
    terminated one does not. Not ``frozen``: a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, about four times the cost of a plain one, once per loop step.
    """

    obs: np.ndarray  # (N, *obs_shape)
    action: np.ndarray  # (N, *action_shape) as act() chose it (for Box spaces the env got it clipped)
    reward: np.ndarray  # (N,) float
    next_obs: np.ndarray  # (N, *obs_shape)
    terminated: np.ndarray  # (N,) bool: the MDP reached a terminal state
    truncated: np.ndarray  # (N,) bool: cut by a time limit; the value of next_obs still counts


def ignore_text(tag: str, message: str) -> None:
    """The text channel of a context that has nowhere to show text (e.g. ``gymlab eval``)."""


@dataclass(frozen=True)
class Context:
    """What an agent is told about its surroundings when it is built."""

    observation_space: gym.Space[Any]  # of one env (not the batched vector space)
    action_space: gym.Space[Any]  # of one env
    num_envs: int  # N, the batch size of obs in act() and of every Transition
    seed: int  # seeds the agent's own generators
    device: torch.device
    total_steps: int  # the run's env-step budget, for schedules given as fractions of it
    env_id: str = ""  # the run's env, as the config names it
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)  # the env's keyword arguments (read only)
    #: ``text(tag, message)``: text for the user (sample outputs, warnings), which the loop writes to
    #: TensorBoard under ``train/<tag>`` and shows on the console. Metrics stay numbers.
    text: Callable[[str, str], None] = ignore_text
    #: False: built only to act (``eval``, ``watch``), given the policy part of a checkpoint alone. The agent
    #: may then leave out what only learning needs (optimizers, memories, data sets); a torch optimizer
    #: alone costs a command seconds of start-up (its first one imports torch._dynamo).
    training: bool = True

    @property
    def last_step(self) -> int:
        """The env step a run from scratch ends at: ``total_steps`` rounded up to a whole step of all the envs."""
        return -(-self.total_steps // self.num_envs) * self.num_envs

    def budget_words(self) -> str:
        """``its N steps`` for a note on the run's schedule (N: :attr:`last_step`), and why when N is not the budget."""
        last, n = self.last_step, self.num_envs
        if last == self.total_steps:
            return f"its {last:,} steps"
        return f"its {last:,} steps (its budget of {self.total_steps:,} rounded up to a whole step of its {n} envs)"


#: Top-level keys of ``Agent.state_dict()``: what acting needs, and the rest of an exact resume.
POLICY, TRAINING = "policy", "training"


@runtime_checkable
class Agent(Protocol):
    """What the loop, the checkpoints and the CLI need from an algorithm (an instance).

    Class attributes:
        name: registry name, also written into checkpoints to catch a wrong-agent load.
        summary: one line for ``gymlab list``.
        spaces: the observation and action spaces it handles, in words, for ``gymlab list``.
        Config: a pydantic model of its hyperparameters, each declared once with a description.

    The constructor is ``__init__(self, config: <its Config>, ctx: Context)`` (see :class:`AgentClass`).

    Optional members, used when present (see :func:`check_config`, :func:`agent_phases`,
    :func:`smoke_hparams`):

    - ``check_config(cls, config, ctx) -> str | None`` (classmethod): why this config cannot run
      (e.g. a replay memory smaller than the number of envs), checked before any folder exists.
    - ``phases(self) -> Sequence[tuple[str, int]]`` and ``run_phase(self, name, index) -> Mapping[str, float]``:
      offline phases (pre-training without env interaction) that the loop runs, iteration by
      iteration, before the first env step; ``steps`` counts env steps only.
    - ``smoke: ClassVar[Mapping[str, Any]]``: hparams that shrink the agent to a run of seconds.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    spaces: ClassVar[str]
    Config: ClassVar[type[BaseModel]]

    @classmethod
    def check_spaces(cls, observation_space: gym.Space[Any], action_space: gym.Space[Any]) -> str | None:
        """Return why these spaces are unsupported (naming what is needed), or None if they are fine."""
        ...

    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        """Choose actions for a batch of observations, (N, *obs_shape) -> (N, *action_shape).

        Pure: no learning side effects. ``explore=False`` is the greedy/deterministic policy.
        """
        ...

    def observe(self, transition: Transition) -> None:
        """Record one step of every env."""
        ...

    def update(self, step: int) -> Mapping[str, float]:
        """Learn if due at env step ``step``; return numbers to log, {} if nothing happened (text: ``ctx.text``)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """``{"policy": {...}, "training": {...}}``: tensors, numpy arrays and plain types only.

        "policy" is all that acting needs (weights, tables, normalisers); "training" is the rest
        of an exact resume (optimizers, replay, per-env episode buffers, counters, generators).
        An agent built to act only (``Context.training`` False) may return "policy" alone.
        """
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; a state without "training" restores the policy only."""
        ...


class AgentClass(Protocol):
    """An agent's class, as :func:`load_agent_class` returns it: the class members and the constructor."""

    name: str
    summary: str
    spaces: str
    Config: type[BaseModel]

    def check_spaces(self, observation_space: gym.Space[Any], action_space: gym.Space[Any]) -> str | None:
        """See :meth:`Agent.check_spaces`."""
        ...

    def __call__(self, config: Any, ctx: Context) -> Agent:
        """Build the agent: ``config`` is an instance of its ``Config``."""
        ...


#: The members every agent class must have: the whole :class:`Agent` protocol.
REQUIRED_MEMBERS: frozenset[str] = frozenset(get_protocol_members(Agent))
_CLASS_STRINGS = ("name", "summary", "spaces")


def load_agent_class(name: str) -> AgentClass:
    """Resolve an agent name (or ``module:Class``) to its class, checking the whole protocol.

    Raises a one-line :class:`GymlabError` for an unknown name, an import failure, or a class
    that lacks (or mistypes) any member of :class:`Agent`.
    """
    target = AGENTS.get(name, name)
    if ":" not in target:
        close = difflib.get_close_matches(name, AGENTS, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(AGENTS)}"
        raise GymlabError(f"unknown agent '{name}': {hint} (or give your own as module:Class; see `gymlab list`)")
    module_name, _, attr = target.partition(":")
    module = import_module(module_name, f"agent '{name}'")  # whatever the module raises is one line
    cls = getattr(module, attr, None)
    if cls is None:
        raise GymlabError(f"agent '{name}': module '{module_name}' has no attribute '{attr}'")
    problem = protocol_problem(cls)
    if problem is not None:
        raise GymlabError(f"agent '{name}': {problem}, so it is not a gymlab Agent (see gymlab/agent.py)")
    return cast(AgentClass, cls)


def protocol_problem(cls: Any) -> str | None:
    """What keeps ``cls`` from being an agent class (a missing or mistyped member), or None."""
    label = getattr(cls, "__name__", repr(cls))
    if not isinstance(cls, type):
        return f"{label} is not a class"
    missing = sorted(m for m in REQUIRED_MEMBERS if not hasattr(cls, m))
    if missing:
        return f"{label} lacks {', '.join(repr(m) for m in missing)}"
    for member in _CLASS_STRINGS:
        if not isinstance(getattr(cls, member), str):
            return f"{label}.{member} is not a string"
    config = getattr(cls, "Config")  # noqa: B009 - cls is any object here, not yet known to be an agent
    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        return f"{label}.Config is not a pydantic model class"
    for member in [*sorted(REQUIRED_MEMBERS - {"Config", *_CLASS_STRINGS}), "check_config", "phases", "run_phase"]:
        if hasattr(cls, member) and not callable(getattr(cls, member)):
            return f"{label}.{member} is not callable"
    if hasattr(cls, "phases") != hasattr(cls, "run_phase"):
        return f"{label} has only one of 'phases' and 'run_phase' (offline phases need both)"
    smoke = getattr(cls, "smoke", {})
    if not isinstance(smoke, Mapping) or not set(smoke) <= set(config.model_fields):
        return f"{label}.smoke must map hyperparameter names of its Config to values"
    return None


def check_config(cls: AgentClass, config: BaseModel, ctx: Context) -> str | None:
    """The agent's own ``check_config(config, ctx)`` verdict, or None when it has none."""
    check = getattr(cls, "check_config", None)
    return None if check is None else cast("str | None", check(config, ctx))


def agent_phases(agent: Agent) -> list[tuple[str, int]]:
    """The agent's offline phases as ``(name, iterations)``, [] when it has none."""
    phases = getattr(agent, "phases", None)
    if phases is None:
        return []
    given = phases()
    pairs = list(given) if isinstance(given, (list, tuple)) else None
    for pair in pairs if pairs is not None else [None]:
        if not (
            isinstance(pair, (list, tuple))
            and len(pair) == 2
            and isinstance(pair[0], str)
            and isinstance(pair[1], (int, np.integer))
            and not isinstance(pair[1], (bool, np.bool_))
            and pair[1] >= 0
        ):
            got = type(given).__name__ if pairs is None else repr(pair)[:80]
            raise GymlabError(
                f"agent '{agent_label(agent)}': phases() must return a list of (name, iterations) pairs, "
                f"a string and a whole number >= 0 (got {got}); fix the agent, e.g. return [('pretrain', 100)]"
            )
    return [(str(n), int(k)) for n, k in pairs or []]


def agent_label(agent: object) -> str:
    """An agent's class as ``module:Class``, for error lines that blame it."""
    cls = type(agent)
    return f"{cls.__module__}:{cls.__qualname__}"


def run_phase(agent: Agent, name: str, index: int) -> Mapping[str, float]:
    """Iteration ``index`` of the agent's offline phase ``name`` (only for an agent with :func:`agent_phases`)."""
    return cast("Mapping[str, float]", getattr(agent, "run_phase")(name, index))  # noqa: B009 - optional member


def smoke_hparams(cls: AgentClass) -> Mapping[str, Any]:
    """The agent's ``smoke`` hparams (tiny sizes for runs of a few seconds), {} when it has none."""
    return cast("Mapping[str, Any]", getattr(cls, "smoke", {}))


#: Built-in agents that only measure the others (never offered as the agent to use instead).
BASELINES = ("random",)


def check_agent_spaces(
    cls: AgentClass, env_id: str, observation_space: gym.Space[Any], action_space: gym.Space[Any]
) -> None:
    """Raise a one-line error when the agent cannot handle the env's spaces, naming the built-in agents that can."""
    problem = cls.check_spaces(observation_space, action_space)
    if problem is None:
        return
    fits = agents_for(observation_space, action_space, but=cls.name)
    if fits:
        offer = f"built-in agents that can: {', '.join(fits)}"
    elif isinstance(observation_space, (gym.spaces.Dict, gym.spaces.Tuple)):
        offer = "no built-in agent takes it as it is: flatten its observations with wrappers=[flatten]"
    else:
        offer = "no built-in agent takes these spaces"
    raise GymlabError(f"agent '{cls.name}' cannot train on {env_id}: {problem}; {offer}")


def agents_for(observation_space: gym.Space[Any], action_space: gym.Space[Any], but: str = "") -> list[str]:
    """The built-in learning agents (not :data:`BASELINES`, nor ``but``) whose ``check_spaces`` accept these spaces."""
    refusals = space_refusals(observation_space, action_space)
    return [name for name, why in refusals.items() if why is None and name not in BASELINES and name != but]


def space_refusals(observation_space: gym.Space[Any], action_space: gym.Space[Any]) -> dict[str, str | None]:
    """Each built-in agent's refusal of these spaces (its ``check_spaces``), None where it takes them.

    An agent unavailable here, or whose check trips on an odd space, refuses them, saying so.
    """
    refusals: dict[str, str | None] = {}
    for name in AGENTS:
        try:
            refusals[name] = load_agent_class(name).check_spaces(observation_space, action_space)
        except GymlabError as exc:
            refusals[name] = f"unavailable ({exc})"
        except Exception as exc:  # a refusal, not a crash
            refusals[name] = f"its check_spaces raised {describe(exc)}"
    return refusals


def describe_space(space: gym.Space[Any]) -> str:
    """A short human name of a space, e.g. ``Discrete(16)`` or ``Box(4,)``."""
    if isinstance(space, gym.spaces.Box):
        return f"Box{space.shape}"
    return str(space)
