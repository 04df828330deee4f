"""REINFORCE (Williams, 1992): Monte-Carlo policy gradient over whole episodes.

The whole algorithm. Collect complete episodes with the current stochastic policy π_θ; for
every step t of every episode compute the discounted reward-to-go

    G_t = r_t + γ r_{t+1} + … + γ^{T-1-t} r_{T-1}  (+ γ^{T-t} V(s_T) if a time limit cut it)

and take one gradient step on

    L(θ) = − mean_t [ log π_θ(a_t | s_t) · (G_t − b(s_t)) ] − β · mean_t H(π_θ(· | s_t))

where b is a baseline (none, a running mean of past returns, or a learned value network
V_φ(s) ≈ E[G_t | s_t = s], trained by regression on G_t). A baseline that does not depend on
the action leaves the gradient unbiased and only lowers its variance.

Episodes come from the loop's N parallel envs: :meth:`Reinforce.observe` appends each env's
step to that env's episode buffer and closes the episode when it terminates or is truncated;
:meth:`Reinforce.update` learns once ``episodes_per_update`` episodes are complete. When that
comes is up to the episodes' lengths, so a run whose budget ends before its first update says so
when it ends (on the text channel, as DQN says it of its first learning round at its start). Episodes
still running at an update keep their earlier steps, which the previous policy sampled; with
``episodes_per_update`` at least ``num_envs`` that stale share is small and is accepted rather
than thrown away (the agent cannot reset the loop's envs).

Time limits: a terminated episode's return ends with its last reward. A truncated episode did
not end in the MDP; the time limit just stopped it, so its return is missing everything after
``s_T``. With the learned value baseline we bootstrap that tail from V_φ(s_T) (the true final
observation the loop hands over as ``next_obs``). Without a value network there is nothing to
bootstrap from and the tail counts as 0, as if the episode had terminated; that biases the
returns of the last steps of time-limited episodes downwards.

Policies: categorical over logits for Discrete actions; for Box actions a Gaussian whose mean is
the network's output and whose log standard deviation is a learned vector independent of the
state. Observations are flattened (Box) or one-hot encoded (Discrete).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import gymnasium as gym
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from gymlab.agent import Context, Transition
from gymlab.nets import load_optimizer, mlp


class ReinforceConfig(BaseModel):
    """Hyperparameters of REINFORCE."""

    model_config = ConfigDict(extra="forbid")

    gamma: float = Field(0.99, ge=0, le=1, description="discount γ of the reward-to-go")
    episodes_per_update: int = Field(
        8, ge=1, description="complete episodes collected (over all envs) before each policy-gradient step"
    )
    hidden_sizes: list[Annotated[int, Field(gt=0)]] = Field(
        [64, 64], description="hidden layer widths of the policy and of the value network"
    )
    activation: Literal["tanh", "relu"] = Field("tanh", description="hidden-layer nonlinearity")
    learning_rate: float = Field(3e-3, gt=0, description="Adam step size of the policy")
    baseline: Literal["none", "mean", "value"] = Field(
        "value", description="subtracted from the return: none, a running mean of returns, or a learned V(s)"
    )
    baseline_decay: float = Field(
        0.9, ge=0, lt=1, description="'mean' baseline: weight of the past in the running mean, per update"
    )
    value_learning_rate: float = Field(1e-2, gt=0, description="'value' baseline: Adam step size of V(s)")
    value_steps: int = Field(10, ge=1, description="'value' baseline: full-batch regression steps on V(s) per update")
    normalize_returns: bool = Field(
        True, description="standardise the policy-gradient weights (return − baseline) within each update"
    )
    entropy_coef: float = Field(0.0, ge=0, le=100, description="weight β of the entropy bonus")
    max_grad_norm: float | None = Field(
        None, gt=0, description="clip the policy gradient to this global L2 norm (None: no clipping)"
    )
    log_std_init: float = Field(  # exp() of ±88 leaves float32's range: the first loss was NaN, blamed on the rate
        0.0, ge=-20, le=20, description="Box actions: initial log standard deviation of the Gaussian"
    )


# ---------------------------------------------------------------------------------------------
# Pure functions: the returns, the log-probabilities, the losses. Tests call these directly.


def reward_to_go(rewards: Sequence[float] | np.ndarray, gamma: float, bootstrap: float = 0.0) -> np.ndarray:
    """Discounted reward-to-go of one episode, (T,) -> (T,) float64.

    ``G_t = r_t + γ G_{t+1}`` with ``G_T = bootstrap``: 0 for an episode that terminated, an
    estimate of the value of the final state for one that a time limit cut short.
    """
    out = np.empty(len(rewards), dtype=np.float64)
    g = float(bootstrap)
    for t in range(len(rewards) - 1, -1, -1):
        g = float(rewards[t]) + gamma * g
        out[t] = g
    return out


def categorical_log_prob(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Log-probability log π(a | s) of a softmax policy: logits (B, A), integer actions (B,) -> (B,)."""
    return torch.log_softmax(logits, dim=-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy −Σ_a p log p of a softmax policy: logits (B, A) -> (B,)."""
    log_p = torch.log_softmax(logits, dim=-1)  # (B, A)
    return -(log_p.exp() * log_p).sum(-1)


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Log-probability log π(a | s) of a diagonal Gaussian: mean (B, D), log_std (D,), actions (B, D) -> (B,).

    ``Σ_d [ −(a_d − μ_d)² / (2σ_d²) − log σ_d − ½ log 2π ]``.
    """
    z = (actions - mean) * torch.exp(-log_std)  # (B, D)
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Entropy of a diagonal Gaussian, ``Σ_d (log σ_d + ½ log 2πe)``: log_std (D,) -> ()."""
    return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum()


def policy_loss(
    log_probs: torch.Tensor, weights: torch.Tensor, entropy: torch.Tensor, entropy_coef: float
) -> torch.Tensor:
    """Compute the REINFORCE surrogate ``−mean(log π · w) − β mean(H)``: (B,), (B,), (B,) or () -> ().

    ``weights`` (return minus baseline) are constants: the gradient flows through ``log_probs``
    only, which is what makes the surrogate's gradient the policy gradient.
    """
    return -(log_probs * weights.detach()).mean() - entropy_coef * entropy.mean()


def value_loss(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """Mean squared error of V(s) against the Monte-Carlo returns: (B,), (B,) -> ()."""
    return (values - returns).pow(2).mean()


def standardize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit standard deviation over the batch (left centred only when B = 1): (B,) -> (B,)."""
    if x.numel() < 2:
        return x - x.mean()
    return (x - x.mean()) / (x.std() + eps)


# ---------------------------------------------------------------------------------------------
# Episode storage.


@dataclass
class Episode:
    """One complete episode of one env."""

    obs: np.ndarray  # (T, *obs_shape)
    actions: np.ndarray  # (T,) int64 or (T, D) float32: the sampled actions, before any clipping
    rewards: np.ndarray  # (T,) float64
    final_obs: np.ndarray  # (*obs_shape,): s_T, the state the episode stopped in
    truncated: bool  # a time limit cut it (not a terminal state): the tail may be bootstrapped

    def as_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint."""
        return {
            "obs": self.obs,
            "actions": self.actions,
            "rewards": self.rewards,
            "final_obs": self.final_obs,
            "truncated": self.truncated,
        }


class Reinforce:
    """Monte-Carlo policy gradient with an optional baseline, for Discrete or Box actions."""

    name: ClassVar[str] = "reinforce"
    summary: ClassVar[str] = "REINFORCE: Monte-Carlo policy gradient with a learned value baseline"
    spaces: ClassVar[str] = "obs: Box or Discrete; actions: Discrete or Box (1-D)"
    Config: ClassVar[type[BaseModel]] = ReinforceConfig
    #: A run of seconds: small networks, short value fits, an update every couple of episodes.
    smoke: ClassVar[Mapping[str, Any]] = {"hidden_sizes": [16], "value_steps": 2, "episodes_per_update": 2}

    @classmethod
    def check_spaces(cls, observation_space: gym.Space[Any], action_space: gym.Space[Any]) -> str | None:
        """Needs Box or Discrete observations and Discrete or 1-D Box actions."""
        if not isinstance(observation_space, (gym.spaces.Box, gym.spaces.Discrete)):
            return f"it needs a Box or Discrete observation space, but it is {observation_space}"
        if isinstance(action_space, gym.spaces.Discrete):
            return None
        if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            return None
        return (
            f"it needs a Discrete or a 1-D Box action space, but it is {action_space} "
            "(wrap MultiDiscrete or multi-dimensional actions into one of those)"
        )

    def __init__(self, config: ReinforceConfig, ctx: Context) -> None:
        obs_space, act_space = ctx.observation_space, ctx.action_space
        self.cfg = config
        self.device = ctx.device
        self.num_envs = ctx.num_envs
        self.total_steps = ctx.total_steps
        self.budget_words = ctx.budget_words()  # for the schedule's note
        self.text = ctx.text
        self._note_due = ctx.training  # said at a fresh run's end if it never updated (_no_update_note)
        self.obs_space = obs_space
        self.discrete_obs = isinstance(obs_space, gym.spaces.Discrete)
        if isinstance(obs_space, gym.spaces.Discrete):
            self.obs_dim = int(obs_space.n)
            self.obs_start = int(obs_space.start)
        else:
            self.obs_dim = int(np.prod(obs_space.shape or ()))
            self.obs_start = 0
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        hidden = list(config.hidden_sizes)
        if isinstance(act_space, gym.spaces.Discrete):
            self.act_start = int(act_space.start)
            out_dim = int(act_space.n)
            self.low = self.high = None
            self.log_std: torch.nn.Parameter | None = None
        else:
            assert isinstance(act_space, gym.spaces.Box)
            self.act_start = 0
            out_dim = int(act_space.shape[0])
            self.act_dim = out_dim
            self.act_dtype = act_space.dtype
            self.low, self.high = act_space.low, act_space.high  # (D,) each
            self.log_std = torch.nn.Parameter(torch.full((out_dim,), config.log_std_init, device=self.device))
        # Initial weights follow the run's seed alone, without touching the global generator.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            self.policy = mlp([self.obs_dim, *hidden, out_dim], config.activation).to(self.device)
            value = mlp([self.obs_dim, *hidden, 1], config.activation).to(self.device)
        # A small last layer starts the policy near uniform (Discrete) or centred (Box), so early
        # episodes explore evenly instead of following whatever the random weights prefer.
        last = self.policy[-1]
        assert isinstance(last, torch.nn.Linear)
        with torch.no_grad():
            last.weight.mul_(0.01)
            last.bias.zero_()
        params = list(self.policy.parameters()) + ([self.log_std] if self.log_std is not None else [])
        self.policy_params = params
        self.value: torch.nn.Sequential | None = None
        self.value_opt: torch.optim.Adam | None = None
        self.training = ctx.training  # False: built to act only (eval, watch): no optimizer nor value network
        if ctx.training:
            self.policy_opt = torch.optim.Adam(params, lr=config.learning_rate)
            if config.baseline == "value":
                self.value = value
                self.value_opt = torch.optim.Adam(self.value.parameters(), lr=config.value_learning_rate)
        # The agent's own sampler, on the CPU so its state is the same on every device.
        self.gen = torch.Generator().manual_seed(ctx.seed)
        self.mean_baseline = 0.0  # 'mean' baseline: exponential moving average of returns
        self.baseline_updates = 0  # updates folded into it (for the EMA's bias correction)
        self.updates = 0
        # Per-env buffers of the episode in progress, and the completed episodes of the batch.
        self.ep_obs: list[list[np.ndarray]] = [[] for _ in range(self.num_envs)]
        self.ep_actions: list[list[np.ndarray]] = [[] for _ in range(self.num_envs)]
        self.ep_rewards: list[list[float]] = [[] for _ in range(self.num_envs)]
        self.complete: list[Episode] = []

    # ----------------------------------------------------------------------------- acting

    def _features(self, obs: np.ndarray) -> torch.Tensor:
        """Network inputs: (B, *obs_shape) -> (B, obs_dim) float32 on the device."""
        x = torch.as_tensor(np.asarray(obs), device=self.device)
        if self.discrete_obs:
            return torch.nn.functional.one_hot(x.long() - self.obs_start, self.obs_dim).float()
        return x.reshape(x.shape[0], -1).float()

    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        """Sample from π(· | s) (``explore``) or take its mode: (N, *obs_shape) -> (N,) or (N, D).

        Pure: no learning side effects. Box actions are returned unclipped; the env gets them
        clipped to its bounds (``gymlab.agent.env_actions``).
        """
        with torch.no_grad():
            out = self.policy(self._features(obs)).cpu()  # (N, A) logits or (N, D) means
        if self.discrete:
            if explore:
                actions = torch.multinomial(torch.softmax(out, -1), 1, generator=self.gen).squeeze(-1)
            else:
                actions = out.argmax(-1)
            result = actions.numpy()
            return result + self.act_start if self.act_start else result
        assert self.log_std is not None
        if not explore:
            return out.numpy().astype(np.float32)  # the mean; the loop clips it to the env's bounds
        noise = torch.randn(out.shape, generator=self.gen)  # (N, D)
        # The raw sample is returned and comes back in observe(): the loop clips it to the bounds
        # only for the env (gymlab.agent.env_actions), and the log-probability is the raw sample's.
        # The policy is the Gaussian; the clip is best read as part of the env's dynamics, mapping
        # each sample to what the env can do, so ∇ log N(raw) is the policy gradient. The Gaussian
        # density of the clipped value is not the probability of anything (a clipped action is a
        # point mass holding all the Gaussian's mass beyond the bound), and its gradient would be
        # biased, most where the mean sits near or past a bound.
        return (out + self.log_std.detach().cpu().exp() * noise).numpy().astype(np.float32)

    # ----------------------------------------------------------------------------- collecting

    def _actions(self, actions: np.ndarray) -> np.ndarray:
        """Actions as the policy indexes them: shifted to start at 0 (Discrete) or float32 samples (Box)."""
        if self.discrete:
            return np.asarray(actions, dtype=np.int64) - self.act_start
        return np.asarray(actions, dtype=np.float32)

    def observe(self, transition: Transition) -> None:
        """Append each env's step to its episode; close the episodes that ended."""
        t = transition
        obs = np.array(t.obs)  # a copy: the rows below must not change if the caller reuses arrays
        actions = self._actions(t.action)
        rewards = np.asarray(t.reward, dtype=np.float64).tolist()
        for i in range(self.num_envs):
            self.ep_obs[i].append(obs[i])
            self.ep_actions[i].append(actions[i])
            self.ep_rewards[i].append(rewards[i])
        for i in np.flatnonzero(np.logical_or(t.terminated, t.truncated)).tolist():
            self.complete.append(
                Episode(
                    obs=np.stack(self.ep_obs[i]),
                    actions=np.stack(self.ep_actions[i]),
                    rewards=np.asarray(self.ep_rewards[i], dtype=np.float64),
                    final_obs=np.array(t.next_obs[i]),
                    # Both flags can be set when the last step was terminal anyway: terminal wins.
                    truncated=bool(t.truncated[i] and not t.terminated[i]),
                )
            )
            self.ep_obs[i], self.ep_actions[i], self.ep_rewards[i] = [], [], []

    # ----------------------------------------------------------------------------- learning

    def episode_returns(self, episodes: Sequence[Episode]) -> list[np.ndarray]:
        """Reward-to-go of each episode, bootstrapped from V(s_T) where a time limit cut it."""
        bootstrap = np.zeros(len(episodes))
        cut = [k for k, ep in enumerate(episodes) if ep.truncated]
        if self.value is not None and cut:
            with torch.no_grad():
                final = self._features(np.stack([episodes[k].final_obs for k in cut]))
                bootstrap[cut] = self.value(final).squeeze(-1).cpu().double().numpy()
        return [reward_to_go(ep.rewards, self.cfg.gamma, b) for ep, b in zip(episodes, bootstrap, strict=True)]

    def _log_prob_and_entropy(self, x: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.policy(x)  # (B, A) logits or (B, D) means
        if self.log_std is None:
            return categorical_log_prob(out, actions), categorical_entropy(out)
        return gaussian_log_prob(out, self.log_std, actions), gaussian_entropy(self.log_std)

    def update(self, step: int) -> Mapping[str, float]:
        """One policy-gradient step (and the baseline's) once enough episodes are complete."""
        if len(self.complete) < self.cfg.episodes_per_update:
            if self._note_due and step >= self.total_steps:
                self._no_update_note()
            return {}
        self._note_due = False
        # Every completed episode goes in: with N envs several can end in the same step.
        episodes, self.complete = self.complete, []
        returns_np = np.concatenate(self.episode_returns(episodes))  # (B,)
        x = self._features(np.concatenate([ep.obs for ep in episodes]))  # (B, obs_dim)
        actions = torch.as_tensor(np.concatenate([ep.actions for ep in episodes]), device=self.device)
        returns = torch.as_tensor(returns_np, dtype=torch.float32, device=self.device)  # (B,)

        if self.value is not None:
            # V is fitted to this batch only after the policy step, so the baseline has not
            # seen the returns it is subtracted from (the gradient stays unbiased).
            with torch.no_grad():
                weights = returns - self.value(x).squeeze(-1)
        elif self.cfg.baseline == "mean":
            # The running mean of earlier batches only: using this batch's own mean would
            # correlate the baseline with the returns it is subtracted from.
            weights = returns - self._mean_baseline()
            self._fold_into_mean_baseline(float(returns_np.mean()))
        else:
            weights = returns
        if self.cfg.normalize_returns:
            weights = standardize(weights)

        log_probs, entropy = self._log_prob_and_entropy(x, actions)
        loss = policy_loss(log_probs, weights, entropy, self.cfg.entropy_coef)
        self.policy_opt.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy_params, max_norm)
        self.policy_opt.step()
        self.updates += 1

        metrics = {
            "policy_loss": loss.item(),
            "entropy": entropy.mean().item(),
            "batch_mean_return": float(np.mean([ep.rewards.sum() for ep in episodes])),
            "grad_norm": float(grad_norm),
            "episodes_per_batch": float(len(episodes)),
        }
        if self.value is not None:
            metrics["value_loss"] = self._fit_value(x, returns)
        if self.log_std is not None:
            metrics["action_std"] = float(self.log_std.detach().exp().mean())
        return metrics

    def _no_update_note(self) -> None:
        """Say once, at the last step of a run from scratch that never updated, that it learned nothing.

        The last env step is the budget rounded up to a whole step of all the envs, the first at or past
        ``total_steps``. Not said in a run that loaded a checkpoint (:meth:`load_state_dict`): such a run
        may train past ``total_steps`` (``--resume --steps N``), which the agent cannot see.
        """
        self._note_due = False
        k, done = self.cfg.episodes_per_update, len(self.complete)
        if done:
            advice = "give more --steps or a lower hparams.episodes_per_update"
        else:  # none ended: longer episodes than the budget, or an env whose episodes never end
            advice = "give more --steps if its episodes are longer, or a time limit if they never end by themselves"
        self.text(
            "schedule",
            f"no learning in this run: its first update needs hparams.episodes_per_update {k:,} complete episodes,"
            f" and {done:,} had ended when {self.budget_words} did; {advice}",
        )

    def _fit_value(self, x: torch.Tensor, returns: torch.Tensor) -> float:
        """Regress V(s) on the batch's returns; the mean loss over the steps."""
        assert self.value is not None and self.value_opt is not None
        total = 0.0
        for _ in range(self.cfg.value_steps):
            loss = value_loss(self.value(x).squeeze(-1), returns)
            self.value_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.value_opt.step()
            total += loss.item()
        return total / self.cfg.value_steps

    def _mean_baseline(self) -> float:
        """Bias-corrected exponential moving average of past batches' mean return (0 at first)."""
        if self.baseline_updates == 0:
            return 0.0
        return self.mean_baseline / (1.0 - self.cfg.baseline_decay**self.baseline_updates)

    def _fold_into_mean_baseline(self, batch_mean: float) -> None:
        d = self.cfg.baseline_decay
        self.mean_baseline = d * self.mean_baseline + (1.0 - d) * batch_mean
        self.baseline_updates += 1

    # ----------------------------------------------------------------------------- checkpoints

    def _buffers_state(self) -> list[dict[str, Any]]:
        out = []
        for obs, acts, rews in zip(self.ep_obs, self.ep_actions, self.ep_rewards, strict=True):
            out.append(
                {
                    "obs": np.stack(obs) if obs else np.zeros((0, *self._obs_shape())),
                    "actions": np.stack(acts) if acts else np.zeros((0,)),
                    "rewards": np.asarray(rews, dtype=np.float64),
                }
            )
        return out

    def _obs_shape(self) -> tuple[int, ...]:
        return tuple(self.obs_space.shape or ())

    def state_dict(self) -> dict[str, Any]:
        """Policy: the policy network and log-std; training: everything else of an exact resume.

        Training holds the value network, optimizers, sampler, baseline statistics and every partly
        collected episode (one buffer per env).
        """
        policy = {
            "net": self.policy.state_dict(),
            "log_std": self.log_std.detach().clone() if self.log_std is not None else None,
        }
        if not self.training:  # built to act only
            return {"policy": policy}
        return {
            "policy": policy,
            "training": {
                "policy_opt": self.policy_opt.state_dict(),
                "value": self.value.state_dict() if self.value is not None else None,
                "value_opt": self.value_opt.state_dict() if self.value_opt is not None else None,
                "gen": self.gen.get_state(),
                "mean_baseline": self.mean_baseline,
                "baseline_updates": self.baseline_updates,
                "updates": self.updates,
                "buffers": self._buffers_state(),
                "complete": [ep.as_dict() for ep in self.complete],
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a policy-only state (any number of envs) restores the policy alone."""
        policy = state["policy"]
        self.policy.load_state_dict(policy["net"])
        if self.log_std is not None:
            if policy["log_std"] is None:
                raise ValueError("the checkpoint's policy is for Discrete actions, this env's are continuous")
            with torch.no_grad():
                self.log_std.copy_(policy["log_std"])
        if "training" in state:
            self._note_due = False  # see _no_update_note
            self._load_training(state["training"])

    def _load_training(self, training: dict[str, Any]) -> None:
        buffers = training["buffers"]
        if len(buffers) != self.num_envs:
            raise ValueError(f"the checkpoint has {len(buffers)} env buffers, this run has {self.num_envs} envs")
        load_optimizer(self.policy_opt, training["policy_opt"])
        if self.value is not None and self.value_opt is not None:
            if training["value"] is None:
                raise ValueError("the checkpoint has no value network, but this config's baseline is 'value'")
            self.value.load_state_dict(training["value"])
            load_optimizer(self.value_opt, training["value_opt"])
        self.gen.set_state(training["gen"])
        self.mean_baseline = float(training["mean_baseline"])
        self.baseline_updates = int(training["baseline_updates"])
        self.updates = int(training["updates"])
        self.ep_obs = [list(b["obs"]) for b in buffers]
        self.ep_actions = [list(b["actions"]) for b in buffers]
        self.ep_rewards = [np.asarray(b["rewards"], dtype=np.float64).tolist() for b in buffers]
        self.complete = [
            Episode(
                obs=np.asarray(e["obs"]),
                actions=np.asarray(e["actions"]),
                rewards=np.asarray(e["rewards"], dtype=np.float64),
                final_obs=np.asarray(e["final_obs"]),
                truncated=bool(e["truncated"]),
            )
            for e in training["complete"]
        ]
        for i, b in enumerate(buffers):
            self._check_episode(f"env buffer {i}", np.asarray(b["obs"]), np.asarray(b["actions"]), b["rewards"])
        for i, e in enumerate(self.complete):
            self._check_episode(f"episode {i}", e.obs, e.actions, e.rewards)
            if e.final_obs.shape != self._obs_shape():
                raise ValueError(f"the final observation of episode {i} has shape {e.final_obs.shape}")

    def _check_episode(self, what: str, obs: np.ndarray, actions: np.ndarray, rewards: Any) -> None:
        """A saved (partial) episode holds one observation, action and reward per step, each of its shape."""
        steps = (len(obs), len(actions), len(rewards))
        if len(set(steps)) != 1:
            raise ValueError(f"its {what} holds {steps[0]} observations, {steps[1]} actions and {steps[2]} rewards")
        action_shape = () if self.discrete else (self.act_dim,)
        if steps[0] and (obs.shape[1:] != self._obs_shape() or actions.shape[1:] != action_shape):
            shapes = f"observations of shape {obs.shape[1:]} and actions of {actions.shape[1:]}"
            raise ValueError(f"its {what} holds {shapes}")
