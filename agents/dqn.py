"""Deep Q-Networks (Mnih et al., Nature 2015), with double DQN (van Hasselt et al., 2016) as an option.

The whole algorithm. Every step of every env goes into a replay memory. Every ``train_freq`` env
steps (once ``learning_starts`` have passed) it takes ``gradient_steps`` Adam steps, each on a
batch drawn uniformly from the memory, minimising the Huber loss between ``Q(s, a)`` and

    y = r + γ · (1 − terminated) · max_a' Q_target(s', a')          (DQN)
    y = r + γ · (1 − terminated) · Q_target(s', argmax_a' Q(s', a'))  (double DQN)

or, with ``n_steps`` = n > 1, the n-step return (Sutton, 1988; Rainbow, Hessel et al., 2018): r is
``Σ_{i<k} γ^i r_{t+i}``, s' is ``s_{t+k}`` and γ is γ^k, where k = n or fewer when the episode ends
first (the replay memory finds these: replay/buffer.py). Rewards reach back n steps per update,
at the price of a bias from the exploratory actions inside the n steps (no correction, as SB3's).

with gradients clipped to a global norm. The target network follows the online one every
``target_update_interval`` env steps, by a hard copy (τ = 1) or Polyak averaging
(target ← τ·online + (1 − τ)·target). A step cut by a time limit (truncated) still bootstraps:
the memory holds the true last observation of the episode, whose value is what was cut off.
The behaviour policy is uniform-random until ``learning_starts``, then ε-greedy with ε decayed
linearly from ``exploration_initial_eps`` to ``exploration_final_eps`` over the first
``exploration_fraction`` of the run. Adam's step size is ``learning_rate``, or, with
``learning_rate_final`` set, decays linearly to it over the whole run (as SB3's linear
schedules, which reach their end value at the last step).

Schedules count env steps summed over all envs (the loop's step), as Stable-Baselines3 does for
one env. With N envs the step grows by N per loop step, and every multiple of ``train_freq`` (or
``target_update_interval``) it passed counts: N = 8 with ``train_freq`` 4 runs two rounds at once,
so the ratio of gradient steps to env steps stays ``gradient_steps / train_freq`` whatever N
(Stable-Baselines3 counts ``train_freq`` in vector steps instead, so its ratio falls as N grows).
``act`` runs the N observations through the network in one forward pass. The network is chosen
from the observation space: the Nature CNN for images (C, H, W) of uint8, kept uint8 in the
memory and scaled to [0, 1] on the device; an MLP for vectors (and for Discrete observations,
one-hot encoded).

Speed: the target network only changes between env steps, so it is fixed during one round of
gradient steps. A round therefore draws all its batches at once, moves them to the device in one
transfer (``batch_source``: from host arrays, through pinned staging with non-blocking copies, or
gathered on the GPU from frames kept there; replay/loader.py), and computes every target in one
forward pass (except for double DQN, whose action choice needs the online network as it learns).
Each gradient step runs Adam's fused kernel (CPU and CUDA) and clips the gradient's global norm
with the arithmetic of ``clip_grad_norm_(foreach=True)``, op for op, without its per-call grouping
(``gymlab.nets.clip_grad_norm``). ``compile`` may run the step through ``torch.compile`` or replay it from a
CUDA graph (gymlab/cudagraph.py); ``auto``, the default, is the graph on CUDA and eager elsewhere
(why: benchmarks/README.md, "DQN: the step against its floor").

Acting's forward pass and argmax run through ``gymlab.staging.BatchForward`` (in place on the CPU;
pinned staging and, with the graph, one graph replay on CUDA).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

import gymnasium as gym
import numpy as np
import torch
from gymlab.replay import DeviceBatches, ReplayBuffer, choose_source
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gymlab.agent import Context, Transition, describe_space
from gymlab.cudagraph import CUDAGraphStep, resolve_compile
from gymlab.nets import (
    NATURE_CNN_MIN_SIDE,
    clip_grad_norm,
    is_image,
    load_optimizer,
    observation_net,
    portable_state,
)
from gymlab.staging import BatchForward

REPORT_EVERY = 100  # gradient steps between reported metrics (each report syncs with the device)
MB = 2**20


class DQNConfig(BaseModel):
    """Hyperparameters of DQN (names and defaults as Stable-Baselines3's)."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(1e-4, gt=0, description="Adam step size")
    learning_rate_final: float | None = Field(
        None, ge=0, description="if set, the step size decays linearly to this, reached at the run's last step"
    )
    buffer_size: int = Field(1_000_000, ge=16, description="replay memory capacity in transitions (frames)")
    learning_starts: int = Field(100, ge=0, description="env steps of uniform-random play before learning")
    batch_size: int = Field(32, ge=1, description="transitions per gradient step")
    tau: float = Field(1.0, gt=0, le=1, description="target update rate: 1 = hard copy, < 1 = Polyak averaging")
    gamma: float = Field(0.99, ge=0, le=1, description="discount γ")
    n_steps: int = Field(
        1, ge=1, description="targets sum this many rewards before bootstrapping (n-step returns; 1 = plain DQN)"
    )
    train_freq: int = Field(4, ge=1, description="env steps (summed over envs) between learning rounds")
    gradient_steps: int = Field(1, ge=1, description="gradient steps per learning round")
    target_update_interval: int = Field(10_000, ge=1, description="env steps between target network updates")
    exploration_fraction: float = Field(0.1, gt=0, le=1, description="fraction of the run over which ε decays")
    exploration_initial_eps: float = Field(1.0, ge=0, le=1, description="ε when learning starts to decay from")
    exploration_final_eps: float = Field(0.05, ge=0, le=1, description="ε after the decay")
    max_grad_norm: float = Field(10.0, gt=0, description="clip the gradients' global L2 norm to this")
    huber_delta: float = Field(1.0, gt=0, description="Huber loss: quadratic within ±δ, linear outside")
    double_dqn: bool = Field(False, description="pick the next action with the online network (double DQN)")
    net_arch: list[Annotated[int, Field(gt=0)]] = Field(
        [64, 64], description="hidden layer sizes of the MLP (vector observations)"
    )
    frame_stack: int | None = Field(
        None,
        ge=1,
        description="observations stack this many frames on axis 0 (None: the channels of a uint8 image, else 1)",
    )
    compile: Literal["auto", "off", "torch", "cuda_graph"] = Field(
        "auto",
        description="the gradient step: off = eager; torch = torch.compile the loss (forward and backward); "
        "cuda_graph = the whole step (forward, backward, clipping, Adam) replayed from one CUDA graph, and acting "
        "(forward, argmax) from another (CUDA only); auto = cuda_graph on CUDA, off elsewhere",
    )
    batch_source: Literal["auto", "host", "pinned", "device"] = Field(
        "auto",
        description="where batches come from: host arrays; pinned host staging with non-blocking copies; frames "
        "kept on the device. auto = device on CUDA when the frames fit a quarter of free GPU memory, else pinned; "
        "host off CUDA (see replay/loader.py)",
    )
    save_replay: Literal["auto", "always", "never"] = Field(
        "auto",
        description="keep the replay memory in checkpoints (exact resume): auto = when within replay_save_budget_mb",
    )
    replay_save_budget_mb: float = Field(
        1024.0, gt=0, description="save_replay=auto: largest replay memory (MB, as allocated) saved in checkpoints"
    )

    @model_validator(mode="after")
    def _batch_fits_the_memory(self) -> DQNConfig:
        if self.batch_size > self.buffer_size:
            raise ValueError(
                f"batch_size ({self.batch_size:,}) exceeds buffer_size ({self.buffer_size:,}): a batch is drawn from "
                "the replay memory; lower batch_size or raise buffer_size"
            )
        return self

    @field_validator("save_replay", mode="before")
    @classmethod
    def _bool_means_always_or_never(cls, value: Any) -> Any:
        """Earlier configs said true/false."""
        return {True: "always", False: "never"}.get(value, value) if isinstance(value, bool) else value


def frames_per_observation(config: DQNConfig, observation_space: gym.Space[Any]) -> int:
    """Frames stacked in one observation: ``frame_stack``, else an image's channels, else 1."""
    if config.frame_stack is not None:
        return config.frame_stack
    return int(observation_space.shape[0]) if is_image(observation_space) else 1  # type: ignore[index]


def linear(start: float, end: float, fraction: float) -> float:
    """Linear schedule: ``start`` at fraction 0, ``end`` from fraction 1 on."""
    return start + (end - start) * min(max(fraction, 0.0), 1.0)


# --- networks ----------------------------------------------------------------------------------


def q_network(observation_space: gym.Space[Any], n_actions: int, net_arch: list[int]) -> torch.nn.Module:
    """One Q-value per action: the Nature CNN for uint8 images, else an MLP (``net_arch``) on vectors or one-hot."""
    return observation_net(observation_space, n_actions, net_arch)


# --- the loss, as pure functions ---------------------------------------------------------------


def td_targets(
    reward: torch.Tensor,
    terminated: torch.Tensor,
    next_q_target: torch.Tensor,
    gamma: float | torch.Tensor,
    next_q_online: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bootstrapped targets y, (B,).

    Args:
        reward: (B,) float.
        terminated: (B,) float, 1 where the episode reached a terminal state (no bootstrap).
            Truncated steps are *not* in it: their next state has a value the time limit cut off.
        next_q_target: (B, A) target network's values of the next observations.
        gamma: the bootstrap's discount: γ, or (B,) γ^k for n-step returns (``reward`` then sums k steps).
        next_q_online: (B, A) online values of the next observations, for double DQN: the online
            network picks the action, the target network values it (curbs max's overestimation).

    """
    if next_q_online is None:
        next_v = next_q_target.max(dim=1).values  # (B,)
    else:
        best = next_q_online.argmax(dim=1, keepdim=True)  # (B, 1)
        next_v = next_q_target.gather(1, best).squeeze(1)  # (B,)
    return reward + gamma * (1.0 - terminated) * next_v


def q_loss(q_values: torch.Tensor, action: torch.Tensor, target: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """Huber loss between Q(s, a) and the targets, averaged over the batch.

    Args:
        q_values: (B, A) online values of the observations.
        action: (B,) int64 actions taken.
        target: (B,) targets y (no gradient flows into them).
        delta: the Huber threshold: errors beyond ±δ get a constant gradient, so a few large TD
            errors (common early on, or after reward changes) cannot blow up an update.

    """
    q_taken = q_values.gather(1, action.unsqueeze(1)).squeeze(1)  # (B,)
    return torch.nn.functional.huber_loss(q_taken, target, delta=delta)


# --- the agent ---------------------------------------------------------------------------------


class DQN:
    """DQN with a replay memory, a target network, Huber loss and Adam; double DQN optional."""

    name: ClassVar[str] = "dqn"
    summary: ClassVar[str] = "deep Q-network: replay memory, target network, Huber loss (double DQN, n-step optional)"
    spaces: ClassVar[str] = "obs: Box (vectors; uint8 (C,H,W) images -> Nature CNN) or Discrete; actions: Discrete"
    Config: ClassVar[type[BaseModel]] = DQNConfig
    #: A run of seconds: a small net and memory, learning from the start in small rounds.
    smoke: ClassVar[Mapping[str, Any]] = {
        "net_arch": [16],
        "buffer_size": 512,
        "learning_starts": 32,
        "batch_size": 8,
        "train_freq": 16,
        "gradient_steps": 2,
        "target_update_interval": 64,
    }

    @classmethod
    def check_spaces(cls, observation_space: gym.Space[Any], action_space: gym.Space[Any]) -> str | None:
        """Needs Discrete actions (one Q-value each) and Box or Discrete observations."""
        if isinstance(action_space, gym.spaces.Box):
            return (
                f"it needs a Discrete action space (one Q-value per action), but the action space is "
                f"continuous, {describe_space(action_space)}"
            )
        if not isinstance(action_space, gym.spaces.Discrete):
            return f"it needs a Discrete action space, but the action space is {describe_space(action_space)}"
        if not isinstance(observation_space, (gym.spaces.Box, gym.spaces.Discrete)):
            return f"it needs a Box or Discrete observation space, but it is {describe_space(observation_space)}"
        if is_image(observation_space) and min(observation_space.shape[1:]) < NATURE_CNN_MIN_SIDE:  # type: ignore[index]
            c, h, w = observation_space.shape  # type: ignore[misc]
            if w in (1, 3, 4) and c >= NATURE_CNN_MIN_SIDE:  # height x width x channels: raw frames
                return (
                    f"its observations are {c}x{h} images with {w} channels last, and its Nature CNN reads channels "
                    "first (C, H, W): for Atari games use wrappers: [atari] (84x84 grey, 4 frames stacked), "
                    "else move the channels first with a wrapper"
                )
            return (
                f"its observations are {c}x{h}x{w} uint8 images, smaller than the {NATURE_CNN_MIN_SIDE}x"
                f"{NATURE_CNN_MIN_SIDE} its Nature CNN needs: resize them with a wrapper (84x84 as for Atari), or "
                "give the env float observations for an MLP"
            )
        return None

    @classmethod
    def check_config(cls, config: DQNConfig, ctx: Context) -> str | None:
        """A frame stack the observations hold; room in every env's lane of the replay memory; graphs need CUDA."""
        if config.compile == "cuda_graph" and ctx.device.type != "cuda":
            return (
                f"compile=cuda_graph needs a CUDA device, but the run's device is {ctx.device}: "
                "use compile=auto or compile=off"
            )
        shape = tuple(ctx.observation_space.shape or ())
        if config.frame_stack is not None and config.frame_stack > 1 and shape[:1] != (config.frame_stack,):
            return (
                f"frame_stack={config.frame_stack} reads observations as {config.frame_stack} frames stacked along "
                f"their first axis, but this env's have shape {shape}: use frame_stack=1, or leave it unset"
            )
        per_env = frames_per_observation(config, ctx.observation_space) + 2
        if config.buffer_size // ctx.num_envs < per_env:
            return (
                f"buffer_size={config.buffer_size} is too small for num_envs={ctx.num_envs}: each env needs "
                f"{per_env} slots, so set buffer_size >= {per_env * ctx.num_envs} or use fewer envs"
            )
        return None

    def __init__(self, config: DQNConfig, ctx: Context) -> None:
        obs_space, act_space = ctx.observation_space, ctx.action_space
        assert isinstance(act_space, gym.spaces.Discrete)
        self.cfg = config
        self.device = ctx.device
        self.total_steps = ctx.total_steps
        self.num_envs = ctx.num_envs
        self.last_step, self.budget_words = ctx.last_step, ctx.budget_words()  # for the schedule's note
        self.n_actions = int(act_space.n)
        self.act_start = int(act_space.start)
        self.online = q_network(obs_space, self.n_actions, config.net_arch).to(self.device)
        self.online_params: list[torch.Tensor] = list(self.online.parameters())
        self.compile = resolve_compile(config.compile, self.device)
        graphed = self.compile == "cuda_graph"
        self.greedy = BatchForward(lambda x: self.online(x).argmax(dim=1), self.device, graphed)  # argmax_a Q(s, a)
        self.text = ctx.text
        self.rng = np.random.default_rng([ctx.seed, 1])  # exploration; the memory has its own
        self.epsilon = 1.0
        self.training = ctx.training  # False: built to act only (eval, watch), without what learning needs
        if ctx.training:
            self._build_learning(config, ctx, graphed)

    def _build_learning(self, config: DQNConfig, ctx: Context, graphed: bool) -> None:
        """The target network, Adam, the replay memory, the schedules and the report's sums."""
        obs_space = ctx.observation_space
        self.target = q_network(obs_space, self.n_actions, config.net_arch).to(self.device)
        self.target.load_state_dict(self.online.state_dict())
        self.target.requires_grad_(False)
        self.target_params: list[torch.Tensor] = list(self.target.parameters())
        # Adam's fused kernel where available (CPU and CUDA), the foreach one otherwise. A CUDA graph
        # replays Adam's kernels with the tensors they were recorded with: its learning rate is a
        # tensor (a schedule changes it in place) and its step counters stay on the device.
        fused = self.device.type in ("cuda", "cpu")
        self.optimizer = torch.optim.Adam(
            self.online_params,
            lr=torch.tensor(config.learning_rate, device=self.device) if graphed else config.learning_rate,
            fused=fused or None,
            foreach=None if fused else True,
            capturable=graphed,
        )
        self._loss = torch.compile(self.training_loss, dynamic=False) if self.compile == "torch" else None
        self._graphed = CUDAGraphStep(self.train_step, self.online_params, self.optimizer) if graphed else None

        frame_stack = frames_per_observation(config, obs_space)
        assert obs_space.shape is not None
        frame_shape = obs_space.shape[1:] if frame_stack > 1 else obs_space.shape
        frame_bytes = config.buffer_size * int(np.prod(frame_shape)) * np.dtype(obs_space.dtype).itemsize
        source = choose_source(config.batch_source, self.device, frame_bytes)
        self.replay = ReplayBuffer(
            config.buffer_size,
            ctx.num_envs,
            tuple(obs_space.shape),
            obs_space.dtype,
            frame_stack=frame_stack,
            seed=ctx.seed,
            device=self.device if source == "device" else None,
            n_step=config.n_steps,
            gamma=config.gamma,
        )
        self.batches = DeviceBatches(self.replay, self.device, source)
        self._notes_due = True  # said at a fresh run's first update (_first_update_notes)
        self.next_train = config.train_freq
        self.next_target_update = config.target_update_interval
        self.grad_steps = 0
        self.target_updates = 0
        # Sums of (loss, mean target y, gradient norm) since the last report, kept on the device.
        self._sums = torch.zeros(3, device=self.device)
        self._summed = 0

    # --- acting ----------------------------------------------------------------------------------

    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        """ε-greedy actions (greedy when ``explore`` is False), (N, *obs_shape) -> (N,)."""
        obs = np.asarray(obs)
        if not explore:
            actions = self.greedy(obs)
        else:
            # One uniform draw per env decides whether to explore (u < ε) and, rescaled to [0, 1),
            # which random action to take. When every env explores, the network is not run.
            u = self.rng.random(len(obs))  # (N,)
            eps = self.epsilon
            explore_mask = u < eps
            random_actions = np.minimum((u / max(eps, 1e-12) * self.n_actions).astype(np.int64), self.n_actions - 1)
            actions = random_actions if explore_mask.all() else np.where(explore_mask, random_actions, self.greedy(obs))
        return actions + self.act_start if self.act_start else actions

    def observe(self, transition: Transition) -> None:
        """Put every env's step into the replay memory."""
        t = transition
        action = t.action - self.act_start if self.act_start else t.action
        self.replay.add(t.obs, action, t.reward, t.next_obs, t.terminated, t.truncated)

    # --- learning --------------------------------------------------------------------------------

    def update(self, step: int) -> Mapping[str, float]:
        """Update ε and the target network on their schedules; run a learning round when due."""
        if self._notes_due:
            self._first_update_notes()
        cfg = self.cfg
        if step < cfg.learning_starts:
            self.epsilon = 1.0  # uniform-random play fills the memory first
        else:
            progress = step / self.total_steps / cfg.exploration_fraction
            self.epsilon = linear(cfg.exploration_initial_eps, cfg.exploration_final_eps, progress)
        # With N envs the step grows by N: every multiple of an interval passed since the last call counts.
        if step >= self.next_target_update:
            interval = cfg.target_update_interval
            self.update_target(step // interval - self.next_target_update // interval + 1)
            self.next_target_update = (step // interval + 1) * interval
        if step < self.next_train:
            return {}
        freq = cfg.train_freq
        # Rounds due: multiples of train_freq in (previous step, step] that lie after learning_starts.
        rounds = step // freq - max(self.next_train // freq - 1, cfg.learning_starts // freq)
        self.next_train = (step // freq + 1) * freq
        if rounds <= 0 or self.replay.num_added == 0:
            return {}
        if cfg.learning_rate_final is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate(step)
        self.learn(cfg.gradient_steps * rounds)
        if self._summed < REPORT_EVERY:
            return {}
        loss, q_mean, grad_norm = (self._sums / self._summed).tolist()
        self._sums.zero_()
        self._summed = 0
        return {
            "loss": loss,
            "target_mean": q_mean,
            "grad_norm": grad_norm,
            "epsilon": self.epsilon,
            "target_updates": float(self.target_updates),
        }

    def learning_rate(self, step: int) -> float:
        """Adam's step size for a round at env step ``step``: constant, or linear to ``learning_rate_final``."""
        cfg = self.cfg
        if cfg.learning_rate_final is None:
            return cfg.learning_rate
        return linear(cfg.learning_rate, cfg.learning_rate_final, step / self.total_steps)

    @torch.no_grad()
    def update_target(self, times: int = 1) -> None:
        """Move the target ``times`` times: target ← τ·online + (1 − τ)·target (a copy when τ = 1).

        The online network does not change in between, so k updates are one with rate 1 − (1 − τ)^k.
        """
        weight = 1.0 - (1.0 - self.cfg.tau) ** times
        for target, online in zip(self.target_params, self.online_params, strict=True):
            if weight >= 1.0:
                target.copy_(online)
            else:
                target.lerp_(online, weight)
        self.target_updates += times

    def learn(self, gradient_steps: int) -> None:
        """``gradient_steps`` Adam steps on fresh uniform batches, the batches moved in one transfer."""
        cfg, b = self.cfg, self.cfg.batch_size
        # (G·B, *obs_shape) observations, (G·B,) actions, (n-step) rewards, terminated, γ^k, on the device.
        obs, action, reward, next_obs, terminated, discount = self.batches.sample(gradient_steps * b)
        targets = None
        if not cfg.double_dqn:  # the target network is fixed for the round: all targets at once
            with torch.no_grad():
                targets = td_targets(reward, terminated, self.target(next_obs), discount)  # (G·B,)
        for g in range(gradient_steps):
            sl = slice(g * b, (g + 1) * b)
            if targets is None:
                with torch.no_grad():
                    y = td_targets(
                        reward[sl], terminated[sl], self.target(next_obs[sl]), discount[sl], self.online(next_obs[sl])
                    )
            else:
                y = targets[sl]
            loss, grad_norm = self.gradient_step(obs[sl], action[sl], y)
            with torch.no_grad():
                self._sums += torch.stack((loss, y.mean(), grad_norm))
        self._summed += gradient_steps
        self.grad_steps += gradient_steps

    def training_loss(self, obs: torch.Tensor, action: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Huber loss of the online network on one batch (what ``compile=torch`` compiles)."""
        return q_loss(self.online(obs), action, y, self.cfg.huber_delta)

    def gradient_step(
        self, obs: torch.Tensor, action: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One Adam step on a batch with targets ``y``, as ``compile`` says; the loss and the gradient norm."""
        if self._graphed is not None:
            loss, grad_norm = self._graphed(obs, action, y)
            return loss, grad_norm
        loss = (self._loss or self.training_loss)(obs, action, y)
        return loss, self.optimize(loss)

    def train_step(self, obs: torch.Tensor, action: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole step that the CUDA graph records: the loss and the gradient norm."""
        loss = self.training_loss(obs, action, y)
        return loss, self.optimize(loss)

    def optimize(self, loss: torch.Tensor) -> torch.Tensor:
        """One Adam step on ``loss`` with the gradient clipped to ``max_grad_norm``; the norm before clipping."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_grad_norm(self.online_params, self.cfg.max_grad_norm)
        self.optimizer.step()
        return grad_norm

    # --- checkpoints -----------------------------------------------------------------------------

    def replay_saved(self) -> bool:
        """Whether checkpoints carry the replay memory: ``save_replay``, with "auto" meaning "if within the budget"."""
        mode = self.cfg.save_replay
        return mode == "always" or (mode == "auto" and self.replay.nbytes <= self.cfg.replay_save_budget_mb * MB)

    def _first_update_notes(self) -> None:
        """Say once, at the first update of a run from scratch, what its settings mean for it.

        If checkpoints will leave the memory out; and if the budget ends before the first learning round
        (:attr:`Context.last_step`, the budget rounded up to a whole step of all the envs): such a run only fills
        the memory. Not said in a run that loaded a checkpoint: :meth:`load_state_dict` says the memory's
        note itself, and such a run may train past ``total_steps``, the schedules' budget
        (``--resume --steps N``), which the agent cannot see.
        """
        self._notes_due = False
        if not self.replay_saved():
            self.text("replay", self._replay_left_out("checkpoints leave it out, so a resume is not exact"))
        cfg = self.cfg
        first_round = (cfg.learning_starts // cfg.train_freq + 1) * cfg.train_freq
        if self.last_step < first_round:
            self.text(
                "schedule",
                f"no learning in this run: its first learning round is at env step {first_round:,}"
                f" (hparams.learning_starts {cfg.learning_starts:,}, train_freq {cfg.train_freq}),"
                f" past {self.budget_words}; give more --steps or a lower hparams.learning_starts",
            )

    def state_dict(self) -> dict[str, Any]:
        """Policy: the online network. Training: target network, optimizer, schedules, generators, replay memory.

        The memory is left out when ``save_replay`` says so ("never", or "auto" over the budget); the
        run says so once on the text channel (at its first update), since a resume from it cannot be exact.
        """
        policy = {"online": self.online.state_dict()}
        if not self.training:  # built to act only
            return {"policy": policy}
        replay = self.replay.state_dict() if self.replay_saved() else None
        return {
            "policy": policy,
            "training": {
                "target": self.target.state_dict(),
                "optimizer": portable_state(self.optimizer),
                "rng": self.rng.bit_generator.state,
                "epsilon": self.epsilon,
                "next_train": self.next_train,
                "next_target_update": self.next_target_update,
                "grad_steps": self.grad_steps,
                "target_updates": self.target_updates,
                "sums": self._sums.cpu(),
                "summed": self._summed,
                "replay": replay,
            },
        }

    def _replay_left_out(self, consequence: str) -> str:
        size = self.replay.nbytes / MB
        if self.cfg.save_replay == "never":
            why = "save_replay=never"
        else:
            why = f"its {size:,.0f} MB exceed replay_save_budget_mb={self.cfg.replay_save_budget_mb:g}"
        return (
            f"the replay memory is not saved ({why}): {consequence} (the memory refills from fresh play); "
            "set save_replay=always or raise replay_save_budget_mb to keep it"
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a policy-only state restores the online network alone.

        Without a saved memory, learning resumes on an empty one (said on the text channel).
        """
        self._notes_due = False  # see _first_update_notes
        self.online.load_state_dict(state["policy"]["online"])
        if "training" not in state:
            if self.training:
                self.target.load_state_dict(self.online.state_dict())
            return
        training = state["training"]
        self.target.load_state_dict(training["target"])
        load_optimizer(self.optimizer, training["optimizer"])
        if self._graphed is not None:
            self._graphed.optimizer_loaded()  # Adam's state tensors are new: record again at the next step
        self.rng.bit_generator.state = training["rng"]
        self.epsilon = float(training["epsilon"])
        self.next_train = int(training["next_train"])
        self.next_target_update = int(training["next_target_update"])
        self.grad_steps = int(training["grad_steps"])
        self.target_updates = int(training["target_updates"])
        self._sums = training["sums"].to(self.device)
        self._summed = int(training["summed"])
        if training["replay"] is not None:
            self.replay.load_state_dict(training["replay"])
        else:
            self.text("replay", self._replay_left_out("this resume is not exact"))
