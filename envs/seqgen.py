"""Token generation as an MDP: SeqGAN's environment, natively batched.

An episode is one sequence of exactly ``seq_len`` tokens from a vocabulary of ``vocab_size``.
The state is the prefix generated so far, the action the next token, and only the last token
earns a reward: the score of the finished sequence by a pluggable *scorer*. Every step before
it is worth 0, so an episode's return is the finished sequence's score.

Observation: the prefix as ``seq_len`` integers, where positions not yet generated hold the
padding value ``vocab_size`` (``MultiDiscrete([vocab_size + 1] * seq_len)``); the position is the
number of non-padding entries. Action: ``Discrete(vocab_size)``.

The default scorer is the oracle (``envs/oracle.py``): a sequence scores its mean per-token
log-likelihood under the oracle, i.e. minus its NLL-oracle, so an episode return of −9.0 is a
sequence with NLL-oracle 9.0 and the returns the loop logs are the paper's metric, negated.
SeqGAN itself does not learn from this reward: its reward is its own discriminator's, which it
computes from the sequences it observes (see ``agents/seqgan.py``).

:class:`SeqGenVectorEnv` steps a whole batch as array operations. Every sequence has the same
length and all start together, so all end on the same step; that step is answered in
Gymnasium's same-step autoreset mode: the returned observation is already the next (empty)
prefix and the finished sequences travel in ``infos["final_obs"]``, with their returns in
``infos["final_info"]["episode"]``.

Every episode ends (terminated) after exactly ``seq_len`` steps, by construction; both envs say so
with ``max_episode_length`` (:func:`gymlab.envguard.declared_length`), so ``gymlab check`` and
evaluation know their episodes end. The id is registered without ``max_episode_steps``: that is a
``TimeLimit`` fixed at registration, which would truncate a longer ``env_kwargs.seq_len``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymlab.envs.oracle import make_oracle, nll_per_sequence
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

#: Scores finished sequences: (M, T) int64 -> (M,) float.
Scorer = Callable[[np.ndarray], np.ndarray]

#: The oracle's defaults, as SeqGen's keyword arguments name them (the paper's: seed 0, sizes 32).
ORACLE_SEED, ORACLE_EMBEDDING_DIM, ORACLE_HIDDEN_DIM = 0, 32, 32


def oracle_settings(env_kwargs: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(oracle_seed, oracle_embedding_dim, oracle_hidden_dim)`` of an env built with ``env_kwargs``.

    The one place an agent learns which oracle the env scores by (SeqGAN samples its real data
    from the same oracle), so the oracle is configured once, in the run's ``env_kwargs``.
    """
    return (
        int(env_kwargs.get("oracle_seed", ORACLE_SEED)),
        int(env_kwargs.get("oracle_embedding_dim", ORACLE_EMBEDDING_DIM)),
        int(env_kwargs.get("oracle_hidden_dim", ORACLE_HIDDEN_DIM)),
    )


def token_spaces_problem(observation_space: gym.Space[Any], action_space: gym.Space[Any], who: str) -> str | None:
    """Why an agent (``who``) that writes tokens cannot run on these spaces, or None if they are SeqGen's.

    SeqGen's spaces: the prefix as MultiDiscrete([V + 1] * T) (V pads) and Discrete(V) tokens.
    """
    if not isinstance(action_space, gym.spaces.Discrete) or int(action_space.start) != 0:
        return f"{who} generates tokens, needing a Discrete(V) action space, not {action_space} (use SeqGen-v0)"
    v = int(action_space.n)
    if (
        not isinstance(observation_space, gym.spaces.MultiDiscrete)
        or observation_space.nvec.ndim != 1
        or not np.all(observation_space.nvec == v + 1)
    ):
        return (
            f"{who} needs the token prefix as MultiDiscrete([{v + 1}] * T) observations, "
            f"not {observation_space} (use SeqGen-v0)"
        )
    return None


class OracleScorer:
    """Mean per-token oracle log-likelihood of each sequence (minus its NLL-oracle)."""

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_dim: int, seed: int) -> None:
        self.oracle = make_oracle(vocab_size, embedding_dim, hidden_dim, seed)

    def __call__(self, sequences: np.ndarray) -> np.ndarray:
        """(M, T) int64 -> (M,) float64."""
        nll = nll_per_sequence(self.oracle, torch.as_tensor(sequences, dtype=torch.long))
        return -nll.double().numpy()


def zero_scorer(sequences: np.ndarray) -> np.ndarray:
    """Every sequence scores 0 (for an agent that brings its own reward)."""
    return np.zeros(len(sequences), dtype=np.float64)


def make_scorer(
    scorer: str | Scorer, vocab_size: int, oracle_seed: int, oracle_embedding_dim: int, oracle_hidden_dim: int
) -> Scorer:
    """Resolve the ``scorer`` argument: "oracle", "zero", or any callable (M, T) -> (M,)."""
    if callable(scorer):
        return scorer
    if scorer == "oracle":
        return OracleScorer(vocab_size, oracle_embedding_dim, oracle_hidden_dim, oracle_seed)
    if scorer == "zero":
        return zero_scorer
    raise ValueError(f"SeqGen: unknown scorer {scorer!r}; use 'oracle', 'zero' or a callable (M, T) -> (M,)")


def _check_sizes(vocab_size: int, seq_len: int, oracle: tuple[int, int, int]) -> None:
    """Whole numbers where the env takes them (a bool or 50.0 reached torch as a size); sizes big enough.

    ``oracle``: ``(oracle_seed, oracle_embedding_dim, oracle_hidden_dim)``.
    """
    named = dict(zip(("oracle_seed", "oracle_embedding_dim", "oracle_hidden_dim"), oracle, strict=True))
    for key, value in {"vocab_size": vocab_size, "seq_len": seq_len, **named}.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise ValueError(f"SeqGen: {key} must be a whole number, got {value!r}")
    for key in ("oracle_embedding_dim", "oracle_hidden_dim"):
        if named[key] < 1:
            raise ValueError(f"SeqGen: {key} must be at least 1, got {named[key]}")
    if vocab_size < 2:
        raise ValueError(f"SeqGen: vocab_size must be at least 2, got {vocab_size}")
    if seq_len < 1:
        raise ValueError(f"SeqGen: seq_len must be at least 1, got {seq_len}")


def prefix_space(vocab_size: int, seq_len: int) -> gym.spaces.MultiDiscrete:
    """One observation: ``seq_len`` entries in [0, vocab_size], the value vocab_size meaning "not yet"."""
    return gym.spaces.MultiDiscrete(np.full(seq_len, vocab_size + 1, dtype=np.int64))


class SeqGenEnv(gym.Env[np.ndarray, np.int64]):
    """One sequence at a time (for ``gym.make`` and ``check_env``); the loop uses the vector env."""

    metadata: dict[str, Any] = {"render_modes": ["ansi"], "render_fps": 4}  # noqa: RUF012 (Gymnasium's convention)

    def __init__(
        self,
        vocab_size: int = 5_000,
        seq_len: int = 20,
        scorer: str | Scorer = "oracle",
        oracle_seed: int = ORACLE_SEED,
        oracle_embedding_dim: int = ORACLE_EMBEDDING_DIM,
        oracle_hidden_dim: int = ORACLE_HIDDEN_DIM,
        render_mode: str | None = None,
    ) -> None:
        _check_sizes(vocab_size, seq_len, (oracle_seed, oracle_embedding_dim, oracle_hidden_dim))
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.max_episode_length = seq_len  # every episode ends after seq_len tokens (envguard.declared_length)
        self.scorer = make_scorer(scorer, vocab_size, oracle_seed, oracle_embedding_dim, oracle_hidden_dim)
        self.observation_space = prefix_space(vocab_size, seq_len)
        self.action_space = gym.spaces.Discrete(vocab_size)
        self.render_mode = render_mode
        self.tokens = np.full(seq_len, vocab_size, dtype=np.int64)  # (T,)
        self.pos = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an empty sequence (the env has no randomness of its own)."""
        super().reset(seed=seed)
        self.tokens[:] = self.vocab_size
        self.pos = 0
        return self.tokens.copy(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Append one token; the last one ends the episode with the scorer's reward."""
        if self.pos >= self.seq_len:
            raise RuntimeError("SeqGen: step() after the sequence was complete; call reset()")
        token = int(action)
        if not 0 <= token < self.vocab_size:
            raise ValueError(f"SeqGen: token {token} is outside the vocabulary [0, {self.vocab_size})")
        self.tokens[self.pos] = token
        self.pos += 1
        done = self.pos == self.seq_len
        reward = float(self.scorer(self.tokens[None])[0]) if done else 0.0
        return self.tokens.copy(), reward, done, False, {}

    def render(self) -> str | None:
        """The prefix as text (``ansi``)."""
        if self.render_mode != "ansi":
            return None
        return " ".join(str(t) for t in self.tokens[: self.pos])


class SeqGenVectorEnv(VectorEnv[np.ndarray, np.ndarray, np.ndarray]):
    """``num_envs`` sequences generated in lockstep as array operations, same-step autoreset."""

    metadata: dict[str, Any] = {  # noqa: RUF012
        "autoreset_mode": AutoresetMode.SAME_STEP,
        "render_modes": ["ansi"],
        "render_fps": 4,  # a token a frame, when played as text; without it Gymnasium warns at every render
    }

    def __init__(
        self,
        num_envs: int = 1,
        vocab_size: int = 5_000,
        seq_len: int = 20,
        scorer: str | Scorer = "oracle",
        oracle_seed: int = ORACLE_SEED,
        oracle_embedding_dim: int = ORACLE_EMBEDDING_DIM,
        oracle_hidden_dim: int = ORACLE_HIDDEN_DIM,
        render_mode: str | None = None,
    ) -> None:
        _check_sizes(vocab_size, seq_len, (oracle_seed, oracle_embedding_dim, oracle_hidden_dim))
        if num_envs < 1:
            raise ValueError(f"SeqGen: num_envs must be at least 1, got {num_envs}")
        self.num_envs = num_envs
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.max_episode_length = seq_len  # every episode ends after seq_len tokens (envguard.declared_length)
        self.scorer = make_scorer(scorer, vocab_size, oracle_seed, oracle_embedding_dim, oracle_hidden_dim)
        self.single_observation_space = prefix_space(vocab_size, seq_len)
        self.single_action_space = gym.spaces.Discrete(vocab_size)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.render_mode = render_mode
        self.tokens = np.full((num_envs, seq_len), vocab_size, dtype=np.int64)  # (N, T)
        self.pos = 0
        self.episodes = 0  # batches of sequences finished so far

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start ``num_envs`` empty sequences (the env has no randomness; a seed is only recorded)."""
        super().reset(seed=seed if not isinstance(seed, list) else seed[0])
        self.tokens[:] = self.vocab_size
        self.pos = 0
        return self.tokens.copy(), {}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Append one token to every sequence; the last one scores them all and starts anew."""
        tokens = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)  # (N,)
        if tokens.min() < 0 or tokens.max() >= self.vocab_size:
            raise ValueError(f"SeqGen: tokens must lie in [0, {self.vocab_size}), got {tokens.min()}..{tokens.max()}")
        self.tokens[:, self.pos] = tokens
        self.pos += 1
        n = self.num_envs
        truncated = np.zeros(n, dtype=bool)
        if self.pos < self.seq_len:
            return self.tokens.copy(), np.zeros(n), np.zeros(n, dtype=bool), truncated, {}
        finished = self.tokens.copy()  # (N, T)
        reward = np.asarray(self.scorer(finished), dtype=np.float64).reshape(n)  # (N,)
        everyone = np.ones(n, dtype=bool)
        infos = {
            "final_obs": finished,
            "_final_obs": everyone,
            "final_info": {
                "episode": {"r": reward.copy(), "l": np.full(n, self.seq_len)},
                "_episode": everyone,
            },
            "_final_info": everyone,
        }
        self.episodes += 1
        self.tokens[:] = self.vocab_size
        self.pos = 0
        return self.tokens.copy(), reward, everyone.copy(), truncated, infos

    def render(self) -> tuple[str, ...] | None:
        """Each copy's prefix as text (``ansi``)."""
        if self.render_mode != "ansi":
            return None
        return tuple(" ".join(str(t) for t in row[: self.pos]) for row in self.tokens)

    def state_dict(self) -> dict[str, Any]:
        """The prefixes being generated, for an exact resume (the scorer is rebuilt from its seed)."""
        return {"tokens": self.tokens.copy(), "pos": self.pos, "episodes": self.episodes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        tokens = np.asarray(state["tokens"], dtype=np.int64)
        if tokens.shape != self.tokens.shape:
            raise ValueError(f"SeqGen: saved prefixes {tokens.shape} do not fit this env's {self.tokens.shape}")
        self.tokens[:] = tokens
        self.pos = int(state["pos"])
        self.episodes = int(state["episodes"])
