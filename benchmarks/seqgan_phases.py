"""Seconds per epoch of each SeqGAN phase, and what the whole schedule of a preset would take from them.

The agent is built from a preset (``--paper``: configs/seqgan/SeqGen-v0.yaml, else the small one) and
each phase runs through the agent's own code, round-robin, ``--repeats`` times, so all phases see the
same load; ``--budget-s`` stops measuring when that many seconds are spent and prints what it has.

* ``mle_epoch``: one MLE epoch over the real sequences;
* ``d_negatives``: the generator's fresh negatives of one D round (``disc_samples`` sequences);
* ``d_round_1ep``: one D round of one epoch (negatives included), so a D epoch is its excess over
  ``d_negatives``;
* ``act_batch``: one env batch of ``num_envs`` sequences, token by token through ``act`` (the env's own
  stepping is not included);
* ``rollouts``: the g-step's MC action values (the batched rollouts and D's scores of them);
  ``rollout_sampling``: the rollouts alone, scored by a trivial function;
* ``g_step``: the policy-gradient step on given action values;
* ``nll_eval``: one adversarial measurement: NLL-oracle, NLL-test and D's diagnostics.

``--old-rollouts`` adds ``rollouts_old`` and ``rollout_sampling_old``, the per-position loop the
batched rollouts replaced (rebuilt here as it was), each timed next to its batched twin in ABBA
order; their paired ratio is the speed-up. The schedule estimate sums each phase's median times its
count in the preset (MLE epochs, D rounds × epochs, adversarial epochs with their g-steps and D
rounds, NLL measurements); with ``--paper`` also for SeqGen-v0-fast.yaml, of the same shapes.

    python benchmarks/seqgan_phases.py --repeats 3                           # small preset, CPU
    python benchmarks/seqgan_phases.py --paper --old-rollouts --repeats 3 --budget-s 900
    python3 benchmarks/seqgan_phases.py --device cuda --paper --repeats 3 --budget-s 120
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import yaml
from gymlab.agents.seqgan import (
    ADVERSARIAL,
    SeqGAN,
    SeqGANConfig,
    policy_gradient_loss,
    rollout_action_values,
)
from gymlab.envs.oracle import TokenLSTM

from gymlab.agent import Context

REPO = Path(__file__).resolve().parents[1]
#: Each batched rollout phase and the per-position loop it replaced (timed with ``--old-rollouts``).
PAIRS = {"rollouts": "rollouts_old", "rollout_sampling": "rollout_sampling_old"}
PRESETS = {"paper": REPO / "configs/seqgan/SeqGen-v0.yaml", "small": REPO / "configs/seqgan/SeqGen-v0-small.yaml"}
#: Presets of the paper's shapes whose schedules the same figures also price (``--paper``).
PAPER_SHAPED = [REPO / "configs/seqgan/SeqGen-v0-fast.yaml"]


@torch.no_grad()
def per_position_action_values(
    policy: TokenLSTM,
    sequences: torch.Tensor,
    scorer: Callable[[torch.Tensor], torch.Tensor],
    num_rollouts: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The rollouts before batching, rebuilt here: one prefix length at a time, R·B rows each, scored per length."""
    batch, length = sequences.shape
    states = policy.prefix_states(sequences)  # states[t]: after BOS, y_1..y_t; each (1, B, H)
    values = torch.empty(batch, length, device=sequences.device)
    for t in range(1, length):
        h, c = states[t]
        state = (h.repeat(1, num_rollouts, 1), c.repeat(1, num_rollouts, 1))  # (1, R·B, H), rollout-major
        prefix = sequences[:, :t].repeat(num_rollouts, 1)  # (R·B, t)
        finished = policy.sample(num_rollouts * batch, length, generator, prefix=prefix, state=state)
        values[:, t - 1] = scorer(finished).view(num_rollouts, batch).mean(dim=0)
    values[:, length - 1] = scorer(sequences)
    return values


def build(preset: Path, device: torch.device, compile: str = "off") -> tuple[SeqGAN, dict]:
    """The preset's agent (NLL measurements only when asked for; D's step as ``compile`` says) and the preset."""
    run = yaml.safe_load(preset.read_text())
    env, hparams = run["env_kwargs"], {**run["hparams"], "nll_every": 10**9, "compile": compile}
    space = gym.spaces.MultiDiscrete(np.full(env["seq_len"], env["vocab_size"] + 1))
    ctx = Context(
        space, gym.spaces.Discrete(env["vocab_size"]), run["num_envs"], 0, device, run["steps"], env_kwargs=env
    )
    torch.manual_seed(0)
    return SeqGAN(SeqGANConfig(**hparams), ctx), run


def act_batch(agent: SeqGAN, num_envs: int) -> torch.Tensor:
    """One env batch as the loop makes it: T calls of ``act`` on the growing prefixes (V pads)."""
    obs = np.full((num_envs, agent.seq_len), agent.vocab_size, dtype=np.int64)
    for t in range(agent.seq_len):
        obs[:, t] = agent.act(obs, explore=True)
    return torch.as_tensor(obs, device=agent.device)


def g_step(agent: SeqGAN, sequences: torch.Tensor, values: torch.Tensor) -> None:
    agent.generator.train()
    loss = policy_gradient_loss(agent.generator.log_probs(sequences), values, agent.cfg.baseline)
    agent._generator_step(agent.pg_opt, loss)


def schedule(run: dict, med: dict[str, float]) -> list[tuple[str, str, float | None]]:
    """(part, count, seconds) of the preset's whole schedule; seconds None where a phase went unmeasured."""
    cfg = SeqGANConfig(**run["hparams"])
    adv = run["steps"] // (cfg.g_steps * run["num_envs"] * run["env_kwargs"]["seq_len"])
    d_epoch = med["d_round_1ep"] - med["d_negatives"] if {"d_round_1ep", "d_negatives"} <= med.keys() else None
    pre_round = None if d_epoch is None else med["d_negatives"] + cfg.disc_pretrain_epochs * d_epoch
    adv_round = None if d_epoch is None else med["d_negatives"] + cfg.d_epochs * d_epoch
    mle_nll = sum(1 for e in range(1, cfg.mle_epochs + 1) if e % cfg.nll_every == 0 or e == cfg.mle_epochs)
    adv_nll = sum(1 for e in range(1, adv + 1) if e % cfg.nll_every == 0 or e == 1)
    nll_count = 1 + mle_nll + len(cfg.temperatures) + adv_nll
    g_parts = ("act_batch", "rollouts", "g_step")
    g_epoch = sum(med[p] for p in g_parts) * cfg.g_steps if set(g_parts) <= med.keys() else None

    def times(n: int, x: float | None) -> float | None:
        return None if x is None else n * x

    return [
        ("MLE", f"{cfg.mle_epochs} epochs", times(cfg.mle_epochs, med.get("mle_epoch"))),
        (
            "D pre-training",
            f"{cfg.disc_pretrain_rounds} rounds x {cfg.disc_pretrain_epochs} epochs",
            times(cfg.disc_pretrain_rounds, pre_round),
        ),
        ("adversarial g-steps", f"{adv} epochs x {cfg.g_steps} (act, rollouts, step)", times(adv, g_epoch)),
        (
            "adversarial D",
            f"{adv} epochs x {cfg.d_steps} rounds x {cfg.d_epochs} epochs",
            times(adv * cfg.d_steps, adv_round),
        ),
        (
            "NLL measurements",
            f"{nll_count} (nll_every {cfg.nll_every}, {len(cfg.temperatures)} temperatures)",
            times(nll_count, med.get("nll_eval")),
        ),
    ]


def measure(
    phases: dict[str, Callable[[], object]], repeats: int, deadline: float, sync: Callable[[], None]
) -> tuple[dict[str, list[float]], bool]:
    """Seconds of each run of each phase, round-robin; True if the deadline stopped it early."""
    times: dict[str, list[float]] = {name: [] for name in phases}
    for rep in range(repeats):
        order = [n for n in phases if n not in PAIRS.values()]
        for name in list(order):
            if PAIRS.get(name) in phases:  # ABBA: the old loop first in even repeats, second in odd ones
                order.insert(order.index(name) + (rep % 2), PAIRS[name])
        for name in order:
            if time.perf_counter() > deadline:
                return times, True
            sync()
            t0 = time.perf_counter()
            phases[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times, False


def report(times: dict[str, list[float]], runs: dict[str, dict], device: torch.device) -> None:
    """The table of seconds per phase, the old loop's paired ratios, and the schedule's estimate."""
    print(f"\n{'phase':<22}{'n':>3}{'median s':>11}{'min s':>10}{'max s':>10}")
    for name, ts in times.items():
        row = f"{statistics.median(ts):>11.4f}{min(ts):>10.4f}{max(ts):>10.4f}" if ts else f"{'not measured':>31}"
        print(f"{name:<22}{len(ts):>3}{row}")
    for new, old in PAIRS.items():
        n = min(len(times.get(new, [])), len(times.get(old, [])))
        if n:
            ratios = [times[old][i] / times[new][i] for i in range(n)]
            print(
                f"speed-up of batched {new} over the per-position loop: {statistics.median(ratios):.2f}x "
                f"(paired median of {n}; {min(ratios):.2f}-{max(ratios):.2f})"
            )
    med = {name: statistics.median(ts) for name, ts in times.items() if ts}
    for preset, run in runs.items():
        print(f"\nwhole schedule of {preset} from the medians ({device}):")
        total, missing = 0.0, []
        for part, count, seconds in schedule(run, med):
            print(f"  {part:<20} {count:<56} " + ("not measured" if seconds is None else f"{seconds:>10.1f} s"))
            total += seconds or 0.0
            if seconds is None:
                missing.append(part)
        note = f" (without {', '.join(missing)})" if missing else ""
        print(f"  {'total':<20} {'':<56} {total:>10.1f} s = {total / 60:.1f} min{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each phase")
    parser.add_argument("--paper", action="store_true", help="the paper's shapes (configs/seqgan/SeqGen-v0.yaml)")
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="stop measuring after this many seconds")
    parser.add_argument("--old-rollouts", action="store_true", help="also time the per-position rollout loop")
    parser.add_argument("--phases", default="", help="comma-separated phases to time (default: all)")
    parser.add_argument(
        "--compile", default="off", choices=["off", "cuda_graph"], help="D's training step (SeqGAN's compile key)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    preset = PRESETS["paper" if args.paper else "small"]
    agent, run = build(preset, device, args.compile)
    runs = {preset.name: run} | {p.name: yaml.safe_load(p.read_text()) for p in (PAPER_SHAPED if args.paper else [])}
    cfg = agent.cfg
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(
        f"SeqGAN phases, {'paper' if args.paper else 'small'} preset, {device} ({where}), compile={args.compile}, "
        f"torch {torch.__version__}, "
        f"load {os.getloadavg()[0]:.2f}; agent built in {time.perf_counter() - start:.1f} s"
    )
    sequences = agent._generate(run["num_envs"])  # a batch of G's own sequences, as the env returns them
    values = torch.rand(sequences.shape, device=device)

    def rollouts(
        loop: Callable[..., torch.Tensor], scorer: Callable[[torch.Tensor], torch.Tensor]
    ) -> Callable[[], object]:
        return lambda: loop(agent.rollout, sequences, scorer, cfg.num_rollouts, agent.rng)

    def trivial(x: torch.Tensor) -> torch.Tensor:
        return x.float().mean(dim=1)

    prob_real = agent.discriminator.prob_real
    phases: dict[str, Callable[[], object]] = {
        "mle_epoch": agent._mle_epoch,
        "d_negatives": lambda: agent._generate(cfg.disc_samples),
        "d_round_1ep": lambda: agent._train_discriminator(1),
        "act_batch": lambda: act_batch(agent, run["num_envs"]),
        "rollouts": rollouts(rollout_action_values, prob_real),
        "rollout_sampling": rollouts(rollout_action_values, trivial),
        "g_step": lambda: g_step(agent, sequences, values),
        "nll_eval": lambda: agent._record_nll(ADVERSARIAL, 0),
    }
    if args.old_rollouts:
        phases["rollouts_old"] = rollouts(per_position_action_values, prob_real)
        phases["rollout_sampling_old"] = rollouts(per_position_action_values, trivial)
    if args.phases:
        keep = set(args.phases.split(",")) | {PAIRS[n] for n in args.phases.split(",") if n in PAIRS}
        phases = {name: fn for name, fn in phases.items() if name in keep}
    if device.type == "cuda":  # kernels chosen, memory pooled: not part of an epoch's cost
        for fn in phases.values():
            fn()
        sync()
    times, spent_out = measure(phases, args.repeats, start + args.budget_s, sync)
    report(times, runs, device)
    if spent_out:
        print(f"budget of {args.budget_s:.0f} s spent: measuring stopped early")
    print(f"load {os.getloadavg()[0]:.2f} at the end; {time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
