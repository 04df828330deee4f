"""SeqGAN (Yu et al., AAAI 2017): a sequence generator trained as an RL policy, rewarded by a discriminator.

The generator G, an LSTM (``envs/oracle.py: TokenLSTM``), is the policy of the token-generation
MDP (``envs/seqgen.py``); a CNN discriminator D scores finished sequences, and Monte-Carlo rollouts
of a delayed copy of G give each prefix its action value::

    Q(y_1..y_{t-1}, y_t) = mean_n D(Y^n_{1:T}),  Y^n ~ rollout policy, continuing y_1..y_t  (t < T)
    Q(y_1..y_{T-1}, y_T) = D(y_1..y_T)

G takes REINFORCE steps on ``− mean_t log G(y_t | y_<t) · Q_t``. MLE pre-training of G, its
temperature sweep and D pre-training are the agent's offline phases; each adversarial epoch is
``g_steps`` env batches and ``d_steps`` rounds of D training. A batch is ``seq_len`` steps of all
the envs, so a budget of env steps can end before the first epoch: the run says so at its start.
Schedule, metrics and what was measured with them: benchmarks/README.md, section SeqGAN.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import gymnasium as gym
import numpy as np
import torch
from gymlab.agents.sequence_cnn import Discriminator, membership_or_realism
from gymlab.envs.oracle import (
    TokenLSTM,
    held_out_dataset,
    make_oracle,
    nll_per_sequence,
    sample_dataset,
    sample_tokens,
)
from gymlab.envs.seqgen import oracle_settings, token_spaces_problem
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from gymlab.agent import Context, Transition
from gymlab.cudagraph import CUDAGraphStep, resolve_compile
from gymlab.errors import GymlabError
from gymlab.nets import load_optimizer, portable_state

#: Scores finished sequences: (M, T) int64 -> (M,) float, e.g. D's probability of "real".
SequenceScorer = Callable[[torch.Tensor], torch.Tensor]

PAPER_FILTER_SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20]
PAPER_NUM_FILTERS = [100, 200, 200, 200, 200, 100, 100, 100, 100, 100, 160, 160]


class SeqGANConfig(BaseModel):
    """Hyperparameters of SeqGAN; defaults are the paper's synthetic-data experiment."""

    model_config = ConfigDict(extra="forbid")

    # The oracle's data (the oracle itself is the env's: env_kwargs oracle_seed/_embedding_dim/_hidden_dim).
    num_real: int = Field(10_000, ge=1, description="real sequences sampled from the oracle")
    data_seed: int = Field(0, ge=0, description="seed of the real-data sample")
    # Generator.
    embedding_dim: int = Field(32, ge=1, description="generator token embedding size")
    hidden_dim: int = Field(32, ge=1, description="generator LSTM size")
    init_std: float = Field(0.1, gt=0, description="std of the generator's N(0, std) initial parameters")
    gen_learning_rate: float = Field(0.01, gt=0, description="Adam step size of the generator's MLE pre-training")
    pg_learning_rate: float = Field(0.01, gt=0, description="Adam step size of the generator's policy-gradient steps")
    gen_batch_size: int = Field(64, ge=1, description="real sequences per MLE minibatch")
    grad_clip: float = Field(5.0, gt=0, description="max global gradient norm of generator steps")
    mle_epochs: int = Field(120, ge=0, description="MLE pre-training epochs over the real data")
    # Discriminator: the paper's CNN.
    disc_embedding_dim: int = Field(64, ge=1, description="discriminator token embedding size")
    filter_sizes: list[int] = Field(default_factory=lambda: list(PAPER_FILTER_SIZES), description="conv widths")
    num_filters: list[int] = Field(default_factory=lambda: list(PAPER_NUM_FILTERS), description="filters per width")
    dropout: float = Field(0.25, ge=0, lt=1, description="dropout before the output (the paper keeps 0.75)")
    l2_reg: float = Field(0.2, ge=0, description="L2 penalty λ·½‖w‖² on the output layer")
    disc_learning_rate: float = Field(1e-4, gt=0, description="Adam step size of the discriminator")
    disc_batch_size: int = Field(64, ge=1, description="sequences per discriminator minibatch")
    disc_samples: int = Field(10_000, ge=1, description="fresh negatives (and as many real) per D round")
    disc_pretrain_rounds: int = Field(50, ge=0, description="D pre-training rounds, each on fresh negatives")
    disc_pretrain_epochs: int = Field(3, ge=1, description="epochs per D pre-training round")
    # Adversarial training.
    num_rollouts: int = Field(16, ge=1, description="Monte-Carlo rollouts per partial sequence")
    rollout_update_rate: float = Field(0.8, ge=0, le=1, description="rollout ← rate·rollout + (1−rate)·G, each epoch")
    baseline: bool = Field(False, description="subtract the batch-mean action value per position (paper: no)")
    reward: Literal["discriminator", "constant", "shuffled"] = Field(
        "discriminator",
        description="g-step action values: D's MC rollouts (SeqGAN); controls: 'constant' (every Q = constant_reward, "
        "no rollouts) or 'shuffled' (D's MC values, rows permuted across the batch)",
    )
    constant_reward: float = Field(0.5, description="every action value of the reward: constant control")
    g_steps: int = Field(1, ge=1, description="policy-gradient steps (env batches) per adversarial epoch")
    d_steps: int = Field(5, ge=0, description="D rounds on fresh negatives per adversarial epoch")
    d_epochs: int = Field(3, ge=1, description="epochs per adversarial D round")
    compile: Literal["auto", "off", "cuda_graph"] = Field(
        "off",
        description="D's training step: off = eager; cuda_graph = forward, backward and Adam replayed from one "
        "CUDA graph (CUDA only; an epoch's last, smaller minibatch runs eagerly); auto = cuda_graph on CUDA, off "
        "elsewhere. off by default until the graph is measured on a GPU (benchmarks/README.md, SeqGAN)",
    )
    # Reporting.
    nll_samples: int = Field(10_000, ge=1, description="generated sequences scored for each NLL-oracle")
    test_samples: int = Field(10_000, ge=1, description="held-out oracle sequences (not in the real data) of NLL-test")
    test_seed: int = Field(1, ge=0, description="seed of the held-out sample; must differ from data_seed")
    temperatures: list[float] = Field(
        default_factory=lambda: [1.0, 0.9, 0.8, 0.7, 0.6, 0.5],
        description="sampling temperatures of the MLE generator's quality-diversity sweep (after MLE; [] skips it)",
    )
    nll_every: int = Field(5, ge=1, description="MLE / adversarial epochs between NLL-oracle measurements")
    text_samples: int = Field(3, ge=0, description="samples shown as text at each adversarial NLL measurement")

    @model_validator(mode="after")
    def _filters_match(self) -> SeqGANConfig:
        if len(self.filter_sizes) != len(self.num_filters) or not self.filter_sizes:
            raise ValueError("filter_sizes and num_filters must be non-empty lists of the same length")
        if min(self.filter_sizes) < 1 or min(self.num_filters) < 1:
            raise ValueError("filter sizes and counts must be positive")
        if self.test_seed == self.data_seed:
            raise ValueError("test_seed must differ from data_seed: NLL-test needs held-out sequences")
        if any(t <= 0 for t in self.temperatures):
            raise ValueError("temperatures must be positive")
        if self.disc_samples > self.num_real:
            raise ValueError(
                f"disc_samples ({self.disc_samples}) exceeds num_real ({self.num_real}): each discriminator round "
                "trains on as many real sequences as fresh negatives; lower disc_samples or raise num_real"
            )
        return self


# --- networks --------------------------------------------------------------------------------


def make_generator(config: SeqGANConfig, vocab_size: int) -> TokenLSTM:
    """The generator: the oracle's architecture with N(0, init_std) parameters."""
    gen = TokenLSTM(vocab_size, config.embedding_dim, config.hidden_dim)
    with torch.no_grad():
        for param in gen.parameters():
            param.normal_(0.0, config.init_std)
    return gen


# --- losses and the Monte-Carlo action values (pure functions) --------------------------------


def mle_loss(log_probs: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood per token of real sequences, from log_probs (B, T)."""
    return -log_probs.mean()


def policy_gradient_loss(log_probs: torch.Tensor, action_values: torch.Tensor, baseline: bool) -> torch.Tensor:
    """REINFORCE on MC action values: ``− mean_{b,t} log G(y_t | y_<t) · (Q_t − b_t)``, both (B, T).

    The action values are constants. The paper uses b = 0; ``baseline`` subtracts the batch's mean Q
    at each position (b_t = mean_b Q_{b,t}): unbiased up to O(1/B), without the common push-up of every sample.
    """
    advantages = action_values.detach()
    if baseline:
        advantages = advantages - advantages.mean(dim=0, keepdim=True)
    return -(log_probs * advantages).mean()


def discriminator_loss(logits: torch.Tensor, labels: torch.Tensor, out_layer: nn.Linear, l2_reg: float) -> torch.Tensor:
    """Cross-entropy of "real" logits (B,) against labels (B,) in {0, 1}, plus λ·½‖W, b‖² of the output layer."""
    ce = nn.functional.binary_cross_entropy_with_logits(logits, labels)
    l2 = 0.5 * (out_layer.weight.square().sum() + out_layer.bias.square().sum())
    return ce + l2_reg * l2


@torch.no_grad()
def rollout_action_values(
    policy: TokenLSTM,
    sequences: torch.Tensor,
    scorer: SequenceScorer,
    num_rollouts: int,
    generator: torch.Generator | None = None,
    uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """MC action value of every token of every sequence, (B, T) -> (B, T).

    Column t − 1 holds Q for the prefix y_1..y_t: the mean score of ``num_rollouts`` completions
    of that prefix sampled from ``policy``; the last column is the score of the finished sequence
    itself. The (T − 1)·R·B rollouts advance as one batch (:meth:`TokenLSTM.complete_prefixes`)
    and are scored in one call. ``uniform`` (T − 1, R, B, T): the sampling noise, for tests.
    """
    batch, length = sequences.shape
    values = torch.empty(batch, length, device=sequences.device)
    finished = policy.complete_prefixes(sequences, num_rollouts, generator, uniform)  # (T − 1, R, B, T)
    scores = scorer(finished.view(-1, length)).view(length - 1, num_rollouts, batch)
    values[:, : length - 1] = scores.mean(dim=1).T
    values[:, length - 1] = scorer(sequences)
    return values


def soft_update(target: nn.Module, source: nn.Module, keep: float) -> None:
    """Target ← keep·target + (1 − keep)·source, parameter by parameter."""
    with torch.no_grad():
        for t_param, s_param in zip(target.parameters(), source.parameters(), strict=True):
            t_param.mul_(keep).add_(s_param, alpha=1.0 - keep)


# --- the agent -------------------------------------------------------------------------------

MLE, TEMPERATURE, DISC_PRETRAIN, ADVERSARIAL = "mle", "temperature", "disc_pretrain", "adversarial"


class SeqGAN:
    """SeqGAN on the token-generation env: LSTM policy, CNN discriminator, MC-rollout rewards."""

    name: ClassVar[str] = "seqgan"
    summary: ClassVar[str] = (
        "SeqGAN: LSTM generator trained by policy gradient on a CNN discriminator's MC-rollout rewards"
    )
    spaces: ClassVar[str] = "obs: token prefix MultiDiscrete([V+1]*T) (SeqGen-v0); actions: Discrete(V)"
    Config: ClassVar[type[BaseModel]] = SeqGANConfig
    #: A run of seconds: tiny networks and data, one iteration of each pre-training phase.
    smoke: ClassVar[Mapping[str, Any]] = {
        "num_real": 64,
        "embedding_dim": 8,
        "hidden_dim": 8,
        "mle_epochs": 1,
        "disc_embedding_dim": 8,
        "filter_sizes": [1, 2],
        "num_filters": [4, 4],
        "disc_samples": 32,
        "disc_pretrain_rounds": 1,
        "disc_pretrain_epochs": 1,
        "num_rollouts": 1,
        "d_steps": 1,
        "d_epochs": 1,
        "nll_samples": 32,
        "nll_every": 1,
        "test_samples": 32,
        "temperatures": [1.0, 0.5],
    }

    @classmethod
    def check_spaces(cls, observation_space: gym.Space[Any], action_space: gym.Space[Any]) -> str | None:
        """Needs SeqGen's spaces: a prefix of T entries in [0, V] (V = padding) and Discrete(V) tokens."""
        return token_spaces_problem(observation_space, action_space, "it")

    @classmethod
    def check_config(cls, config: SeqGANConfig, ctx: Context) -> str | None:
        """Sequences long enough for rollouts and the discriminator's widest filter; a batch to take a baseline over."""
        seq_len = int(np.prod(ctx.observation_space.shape or ()))
        if seq_len < 2:
            return (
                f"its Monte-Carlo rollouts score a prefix by completing it, so it needs sequences of 2 tokens or "
                f"more, not {seq_len}: raise env_kwargs.seq_len"
            )
        if config.baseline and ctx.num_envs < 2:
            return (
                "baseline subtracts the mean action value over the batch of sequences, which with num_envs=1 leaves "
                "every advantage 0 (no gradient): use num_envs of 2 or more, or baseline=false"
            )
        if max(config.filter_sizes) > seq_len:
            return (
                f"discriminator filter width {max(config.filter_sizes)} exceeds the sequence length {seq_len}; "
                "drop the wider filter_sizes (and their num_filters)"
            )
        if config.compile == "cuda_graph" and ctx.device.type != "cuda":
            return (
                f"compile=cuda_graph needs a CUDA device, but the run's device is {ctx.device}: "
                "use compile=auto or compile=off"
            )
        return None

    def __init__(self, config: SeqGANConfig, ctx: Context) -> None:
        assert isinstance(ctx.action_space, gym.spaces.Discrete)
        assert isinstance(ctx.observation_space, gym.spaces.MultiDiscrete)
        self.cfg = config
        self.device = ctx.device
        self.text = ctx.text
        self.num_envs, self.total_steps = ctx.num_envs, ctx.total_steps
        self.last_step, self.budget_words = ctx.last_step, ctx.budget_words()  # for the schedule's note
        self.vocab_size = int(ctx.action_space.n)
        self.seq_len = int(ctx.observation_space.nvec.shape[0])
        self._notes_due = ctx.training  # said at a fresh run's first phase iteration or update (_first_call_notes)
        # An agent built to act only (eval, watch) needs the generator alone: no oracle, data, D nor optimizers.
        # Built in this order when training, so the global generator draws the same initial weights.
        self.training = ctx.training
        if ctx.training:
            oracle_seed, oracle_embedding_dim, oracle_hidden_dim = oracle_settings(ctx.env_kwargs)
            self.oracle = make_oracle(self.vocab_size, oracle_embedding_dim, oracle_hidden_dim, oracle_seed)
            self.real = sample_dataset(self.oracle, config.num_real, self.seq_len, config.data_seed)
            # NLL-test's held-out oracle sequences: their own seed, none of them in the real data.
            try:
                self.held_out = held_out_dataset(
                    self.oracle, config.test_samples, self.seq_len, config.test_seed, self.real
                )
            except ValueError as exc:  # too few distinct sequences: the real data holds nearly all the oracle draws
                raise GymlabError(
                    f"{exc}: {self.vocab_size} tokens over {self.seq_len} positions are too few distinct sequences "
                    f"for num_real={config.num_real} and test_samples={config.test_samples}; raise "
                    "env_kwargs.vocab_size or env_kwargs.seq_len, or lower num_real and test_samples"
                ) from None
            self.real, self.held_out = self._to_device(self.real), self._to_device(self.held_out)  # once, pinned
            self.oracle.to(self.device)
        self.generator = make_generator(config, self.vocab_size).to(self.device)
        if ctx.training:
            self.rollout = make_generator(config, self.vocab_size).to(self.device)
            self.rollout.load_state_dict(self.generator.state_dict())
            self.rollout.requires_grad_(False)
            self.discriminator = Discriminator(
                self.vocab_size, config.disc_embedding_dim, config.filter_sizes, config.num_filters, config.dropout
            ).to(self.device)
            self.mle_opt = torch.optim.Adam(self.generator.parameters(), lr=config.gen_learning_rate)
            # The adversarial phase starts a fresh Adam, as the authors' code does: MLE's moment
            # estimates describe a different objective.
            self.pg_opt = torch.optim.Adam(self.generator.parameters(), lr=config.pg_learning_rate)
            self._build_disc_step(config)
        # Sampling (actions, rollouts, negatives) on the device; shuffling indices on the CPU.
        self.rng = torch.Generator(device=self.device).manual_seed(ctx.seed)
        self.index_rng = torch.Generator().manual_seed(ctx.seed + 1)
        self.mle_epoch = 0
        self.disc_round = 0
        self.adv_epoch = 0
        self.g_step_in_epoch = 0
        self.finished: torch.Tensor | None = None  # (N, T) the last finished batch, awaiting a g-step
        self.finished_reward: np.ndarray | None = None  # (N,) the env's rewards for it
        self.nll_history: list[tuple[str, int, float]] = []  # (phase, epoch, NLL-oracle)
        self.nll_test_history: list[tuple[str, int, float]] = []  # (phase, epoch, NLL-test), at the same points
        self.temperature_results: list[tuple[float, float, float]] = []  # (T, NLL-oracle, NLL-test) after MLE

    # --- acting --------------------------------------------------------------------------

    @torch.no_grad()
    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        """Next token of each prefix, (N, T) -> (N,): sampled from G, or its argmax if not exploring."""
        prefixes = torch.as_tensor(obs, dtype=torch.long, device=self.device)  # (N, T), V = not yet
        positions = (prefixes != self.vocab_size).sum(dim=1)  # (N,)
        actions = torch.empty(len(prefixes), dtype=torch.long, device=self.device)
        # The batched env keeps every copy at the same position: one group, one forward pass.
        for pos in positions.unique().tolist():
            rows = (positions == pos).nonzero().squeeze(1)
            logits = self.generator.next_logits(prefixes[rows, :pos])  # (n, V)
            actions[rows] = sample_tokens(logits, self.rng) if explore else logits.argmax(dim=1)
        return actions.cpu().numpy()

    def observe(self, transition: Transition) -> None:
        """Keep each finished batch (the true final observations) for the g-step, which comes before the next batch."""
        if transition.terminated.all():
            self.finished = torch.as_tensor(transition.next_obs, dtype=torch.long, device=self.device)
            self.finished_reward = np.asarray(transition.reward, dtype=np.float64)

    # --- learning ------------------------------------------------------------------------

    def phases(self) -> list[tuple[str, int]]:
        """MLE pre-training of G, its temperature sweep, then D pre-training: ``(name, iterations)``."""
        return [
            (MLE, self.cfg.mle_epochs),
            (TEMPERATURE, len(self.cfg.temperatures)),
            (DISC_PRETRAIN, self.cfg.disc_pretrain_rounds),
        ]

    def run_phase(self, name: str, index: int) -> Mapping[str, float]:
        """One MLE epoch, one temperature of the sweep or one D round (the first also measures the untrained G)."""
        if self._notes_due:
            self._first_call_notes()
        done = {MLE: self.mle_epoch, TEMPERATURE: len(self.temperature_results), DISC_PRETRAIN: self.disc_round}
        if name not in done or index != done[name]:
            raise ValueError(f"SeqGAN: phase {name!r} iteration {index} out of order ({done.get(name)} done)")
        metrics = self._measure_untrained()
        if name == MLE:
            metrics.update(self._mle_epoch())
        elif name == TEMPERATURE:
            metrics.update(self._temperature_point(self.cfg.temperatures[index]))
        else:
            metrics.update(self._disc_pretrain_round())
        return metrics

    def update(self, step: int) -> Mapping[str, float]:
        """One adversarial g-step per finished batch (and the epoch's d-steps after its last g-step)."""
        if self._notes_due:
            self._first_call_notes()
        if self.finished is None:
            return {}
        return self._adversarial_g_step()

    def _first_call_notes(self) -> None:
        """Say once, at the start of a run from scratch, if its budget ends before its first adversarial epoch.

        An epoch is ``g_steps`` finished batches, each ``seq_len`` steps of all the envs, so it ends at env
        step ``g_steps · seq_len · num_envs``; the last env step is the budget rounded up to a whole step of
        all the envs. Such a run only pre-trains. Said before the pre-training phases, which may take long.
        Not said in a run that loaded a checkpoint (:meth:`load_state_dict`): such a run may train past
        ``total_steps`` (``--resume --steps N``), which the agent cannot see.
        """
        self._notes_due = False
        n, g, t = self.num_envs, self.cfg.g_steps, self.seq_len
        first_epoch = g * t * n
        if self.last_step < first_epoch:
            fewer = " or a lower hparams.g_steps" if g > 1 else ""
            self.text(
                "schedule",
                f"no adversarial epoch in this run: its first ends at env step {first_epoch:,} (hparams.g_steps {g}"
                f" × a batch of seq_len {t} tokens × num_envs {n}), past {self.budget_words};"
                f" give more --steps{fewer}",
            )

    def _measure_untrained(self) -> dict[str, float]:
        """NLL-oracle of the untrained generator, once, before its first training step."""
        if self.nll_history:
            return {}
        return {f"{key}_untrained": value for key, value in self._record_nll("untrained", 0).items()}

    def _mle_epoch(self) -> dict[str, float]:
        self.generator.train()
        losses = []  # on the device: one read at the end of the epoch, not one per step
        for idx in self._batches(len(self.real), self.cfg.gen_batch_size):
            loss = mle_loss(self.generator.log_probs(self.real[idx]))
            self._generator_step(self.mle_opt, loss)
            losses.append(loss.detach())
        self.mle_epoch += 1
        # The delayed rollout copy starts the adversarial phase equal to the pre-trained G.
        self.rollout.load_state_dict(self.generator.state_dict())
        metrics = {"g_mle_loss": torch.stack(losses).mean().item()}
        if self.mle_epoch % self.cfg.nll_every == 0 or self.mle_epoch == self.cfg.mle_epochs:
            metrics.update(self._record_nll(MLE, self.mle_epoch))
        return metrics

    def _temperature_point(self, temperature: float) -> dict[str, float]:
        """One point of the MLE generator's quality-diversity curve: both NLLs under softmax(logits / T)."""
        nll, nll_test, _, _ = self._nll_measure(temperature)
        self.temperature_results.append((temperature, nll, nll_test))
        if len(self.temperature_results) == len(self.cfg.temperatures):
            rows = [f"| {t:.2f} | {o:.4f} | {n:.4f} |" for t, o, n in self.temperature_results]
            table = "| T | NLL-oracle | NLL-test |  \n|---|---|---|  \n" + "  \n".join(rows)
            self.text(
                "temperature", f"MLE generator after {self.mle_epoch} epochs, by sampling temperature:  \n{table}"
            )
        return {"temperature": temperature, "nll_oracle": nll, "nll_test": nll_test}

    def _disc_pretrain_round(self) -> dict[str, float]:
        loss, acc = self._train_discriminator(self.cfg.disc_pretrain_epochs)
        self.disc_round += 1
        return {"d_loss": loss, "d_accuracy": acc}

    def _adversarial_g_step(self) -> dict[str, float]:
        assert self.finished is not None and self.finished_reward is not None
        sequences, env_reward = self.finished, self.finished_reward
        self.finished, self.finished_reward = None, None
        metrics = self._measure_untrained()  # when both pre-training phases are empty
        values = self._action_values(sequences)  # (N, T)
        self.generator.train()
        loss = policy_gradient_loss(self.generator.log_probs(sequences), values, self.cfg.baseline)
        self._generator_step(self.pg_opt, loss)
        read = torch.stack([loss.detach(), values.mean(), values[:, -1].mean()]).tolist()  # one device read
        metrics.update(dict(zip(("g_pg_loss", "rollout_reward", "final_reward"), read, strict=True)))
        if np.std(env_reward) > 0:  # does D's verdict track the oracle's (the env's reward)?
            d_final = values[:, -1].double().cpu().numpy()
            if np.std(d_final) > 0:
                metrics["d_oracle_corr"] = float(np.corrcoef(d_final, env_reward)[0, 1])
        self.g_step_in_epoch += 1
        if self.g_step_in_epoch < self.cfg.g_steps:
            return metrics
        # The epoch's g-steps are done: move the rollout policy, then train D on fresh negatives.
        self.g_step_in_epoch = 0
        soft_update(self.rollout, self.generator, self.cfg.rollout_update_rate)
        d_fits = np.array([self._train_discriminator(self.cfg.d_epochs) for _ in range(self.cfg.d_steps)])
        self.adv_epoch += 1
        metrics["adv_epoch"] = self.adv_epoch
        if len(d_fits):  # mean loss and accuracy of the rounds
            metrics.update({"d_loss": float(d_fits[:, 0].mean()), "d_accuracy": float(d_fits[:, 1].mean())})
        if self.adv_epoch % self.cfg.nll_every == 0 or self.adv_epoch == 1:
            metrics.update(self._record_nll(ADVERSARIAL, self.adv_epoch))
            if self.cfg.text_samples:
                rows = sequences[: self.cfg.text_samples].tolist()
                self.text("samples", "  \n".join(" ".join(map(str, row)) for row in rows))
        return metrics

    def _action_values(self, sequences: torch.Tensor) -> torch.Tensor:
        """The g-step's action values (N, T): D's MC rollouts (SeqGAN) or one of the ``reward`` controls."""
        if self.cfg.reward == "constant":  # no rollouts: the values would be thrown away
            return torch.full(sequences.shape, self.cfg.constant_reward, device=sequences.device)
        values = rollout_action_values(
            self.rollout, sequences, self.discriminator.prob_real, self.cfg.num_rollouts, self.rng
        )  # (N, T)
        if self.cfg.reward == "shuffled":  # same values, given to the wrong sequences: D's information is gone
            perm = torch.randperm(len(values), generator=self.index_rng).to(values.device)
            values = values[perm]
        return values

    def _generator_step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.generator.parameters(), self.cfg.grad_clip)
        optimizer.step()

    def _batches(self, n: int, size: int) -> list[torch.Tensor]:
        """A shuffled split of range(n) into minibatches of indices on the device (one copy per epoch)."""
        return list(self._to_device(torch.randperm(n, generator=self.index_rng)).split(size))

    def _to_device(self, cpu_tensor: torch.Tensor) -> torch.Tensor:
        """One host-to-device copy, from pinned memory (asynchronous) when the device is a GPU."""
        if self.device.type != "cuda":
            return cpu_tensor.to(self.device)
        return cpu_tensor.pin_memory().to(self.device, non_blocking=True)

    def _train_discriminator(self, epochs: int) -> tuple[float, float]:
        """One round: fresh negatives and as many real sequences, ``epochs`` epochs; mean loss and accuracy."""
        cfg = self.cfg
        fake = self._generate(cfg.disc_samples)  # (M, T)
        real = self.real[self._to_device(torch.randperm(len(self.real), generator=self.index_rng)[: cfg.disc_samples])]
        tokens = torch.cat([real, fake])  # (2M', T)
        labels = torch.cat([torch.ones(len(real), device=self.device), torch.zeros(len(fake), device=self.device)])
        self.discriminator.train()
        losses, correct = [], []  # the last epoch's fit, kept on the device and read once
        for epoch in range(epochs):
            for idx in self._batches(len(tokens), cfg.disc_batch_size):
                graph = self._disc_graph if len(idx) == cfg.disc_batch_size else None  # a smaller last one: eager
                loss, hits = (graph or self._disc_step)(tokens[idx], labels[idx])
                if epoch == epochs - 1:  # a graph's outputs are overwritten by its next replay: copies
                    losses.append(loss.clone() if graph else loss)
                    correct.append(hits.clone() if graph else hits)
        return torch.stack(losses).mean().item(), torch.stack(correct).sum().item() / len(tokens)

    def _generate(self, num: int, chunk: int = 2_000, temperature: float = 1.0) -> torch.Tensor:
        self.generator.eval()
        parts = [
            self.generator.sample(min(chunk, num - i), self.seq_len, self.rng, temperature=temperature)
            for i in range(0, num, chunk)
        ]
        return torch.cat(parts)

    def _nll_measure(self, temperature: float = 1.0) -> tuple[float, float, torch.Tensor, torch.Tensor]:
        """NLL-oracle (quality), NLL-test (diversity), and the generated samples with the oracle's NLL of each."""
        self.generator.eval()
        fake = self._generate(self.cfg.nll_samples, temperature=temperature)
        per_sequence = nll_per_sequence(self.oracle, fake)
        nll_test = float(nll_per_sequence(self.generator, self.held_out, temperature=temperature).mean())
        return float(per_sequence.mean()), nll_test, fake, per_sequence

    def _record_nll(self, phase: str, epoch: int) -> dict[str, float]:
        nll, nll_test, fake, per_sequence = self._nll_measure()
        self.nll_history.append((phase, epoch, nll))
        self.nll_test_history.append((phase, epoch, nll_test))
        metrics = {"nll_oracle": nll, "nll_test": nll_test}
        if phase == ADVERSARIAL:
            metrics.update(self._discriminator_diagnostics(fake, per_sequence))
        return metrics

    def _discriminator_diagnostics(self, fake: torch.Tensor, oracle_nll: torch.Tensor) -> dict[str, float]:
        """Does D judge realism or membership of its real data? (:func:`membership_or_realism`, no training)."""
        real = self.real[: len(self.held_out)]
        return membership_or_realism(self.discriminator.prob_real, real, self.held_out, fake, -oracle_nll)

    def _build_disc_step(self, config: SeqGANConfig) -> None:
        """D's Adam (its fused kernel on the CPU and CUDA) and, with ``compile`` cuda_graph, D's step in one graph.

        D's training is most of SeqGAN's time (benchmarks/README.md, SeqGAN, "D's step"). Adam's fused
        kernel took D's step on the CPU from 10.9 to 9.6 ms at the learning test's shapes and from 230 to
        169 ms at the paper's (the per-tensor loop is ≈ 25 small ops per parameter tensor). On a GPU, D's
        step at the paper's shapes is ≈ 260 small kernels, launch-bound (8.4 ms on an H200); the graph
        replays them in one launch, with Adam capturable and its learning rate in a tensor, as DQN's
        graphed step (gymlab/cudagraph.py).
        """
        graphed = resolve_compile(config.compile, self.device) == "cuda_graph"
        params = list(self.discriminator.parameters())
        lr = torch.tensor(config.disc_learning_rate, device=self.device) if graphed else config.disc_learning_rate
        fused = self.device.type in ("cuda", "cpu") or None
        self.disc_opt = torch.optim.Adam(params, lr=lr, fused=fused, capturable=graphed)
        self._disc_graph = CUDAGraphStep(self._disc_step, params, self.disc_opt) if graphed else None

    def _disc_step(self, tokens: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One Adam step of D on a minibatch: its loss and how many sequences it called right (before the step)."""
        logits = self.discriminator(tokens)
        loss = discriminator_loss(logits, labels, self.discriminator.out, self.cfg.l2_reg)
        self.disc_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.disc_opt.step()
        return loss.detach(), ((logits.detach() > 0).float() == labels).sum()

    # --- checkpoints ---------------------------------------------------------------------

    #: Everything of an exact resume beside the generator: modules and optimizers, saved by their state_dict.
    _STATEFUL = ("rollout", "discriminator", "mle_opt", "pg_opt", "disc_opt")

    def state_dict(self) -> dict[str, Any]:
        """Policy: the generator. Training: the other networks, optimizers, generators' states, counters, batch."""
        policy = {"generator": self.generator.state_dict()}
        if not self.training:  # built to act only
            return {"policy": policy}
        training = {name: self._state_of(getattr(self, name)) for name in self._STATEFUL}
        return {
            "policy": policy,
            "training": {
                **training,
                "rng": self.rng.get_state(),
                "index_rng": self.index_rng.get_state(),
                "counters": [self.mle_epoch, self.disc_round, self.adv_epoch, self.g_step_in_epoch],
                "finished": None if self.finished is None else self.finished.cpu(),
                "finished_reward": self.finished_reward,
                "nll_history": [list(item) for item in self.nll_history],
                "nll_test_history": [list(item) for item in self.nll_test_history],
                "temperature_results": [list(item) for item in self.temperature_results],
            },
        }

    @staticmethod
    def _state_of(part: nn.Module | torch.optim.Optimizer) -> dict[str, Any]:
        return portable_state(part) if isinstance(part, torch.optim.Optimizer) else part.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a policy-only state restores the generator alone."""
        self.generator.load_state_dict(state["policy"]["generator"])
        if "training" not in state:
            return
        self._notes_due = False  # see _first_call_notes
        training = state["training"]
        for name in self._STATEFUL:
            part = getattr(self, name)
            if isinstance(part, torch.optim.Optimizer):
                load_optimizer(part, training[name])
                if part is self.disc_opt and self._disc_graph is not None:
                    self._disc_graph.optimizer_loaded()  # Adam's state tensors are new: record again
            else:
                part.load_state_dict(training[name])
        self.rng.set_state(training["rng"])
        self.index_rng.set_state(training["index_rng"])
        self.mle_epoch, self.disc_round, self.adv_epoch, self.g_step_in_epoch = (int(v) for v in training["counters"])
        finished, reward = training["finished"], training["finished_reward"]
        self.finished = None if finished is None else finished.to(self.device)
        self.finished_reward = None if reward is None else np.asarray(reward, dtype=np.float64)
        self.nll_history = [(str(p), int(e), float(v)) for p, e, v in training["nll_history"]]
        self.nll_test_history = [(str(p), int(e), float(v)) for p, e, v in training.get("nll_test_history", [])]
        self.temperature_results = [
            (float(t), float(o), float(n)) for t, o, n in training.get("temperature_results", [])
        ]
