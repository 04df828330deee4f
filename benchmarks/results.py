"""The results table: every shipped preset on several seeds, beside the published figures.

    python benchmarks/results.py [--seeds 5] [--workers 2] [--only GLOB] [--out docs/results.md]
                                 [--include-gpu] [--reference] [--smoke] [--root runs/results]

Trains every shipped preset (``configs/<agent>/<preset>.yaml``, sweeps aside) on seeds 0..N-1
through gymlab's own multi-seed path (:class:`gymlab.runner.RunSpec` handed to
:func:`gymlab.parallel.run_all`, what ``gymlab train --seeds`` does) into
``ROOT/<agent>/<preset>/s<seed>``, then writes ``docs/results.md`` and one learning-curve figure
per env (``docs/results/<env>.png``, drawn by ``gymlab compare``'s own plot).

Rerunning is cheap and safe:

- a finished run whose config equals the preset's (every key, :func:`gymlab.runs.config_differences`)
  is reused; an interrupted one is resumed from its newest checkpoint (``mode="auto"``);
- a run whose config differs (the preset changed) is never reused: it is moved to
  ``ROOT/_replaced/...`` and trained again;
- each checkpoint's greedy evaluation (``gymlab eval``'s code, :func:`gymlab.evaluation.evaluate_run`) is
  cached in ``ROOT/<agent>/<preset>/s<seed>.json``, keyed by the checkpoint file's size and mtime.

Presets that need a GPU (the paper-scale SeqGAN, Atari's 10M steps) are skipped, and the table
says why, unless ``--include-gpu`` is given on a machine with one; presets whose extra is not
installed are skipped with the install command. ``--smoke`` applies each agent's ``smoke``
hyperparameters and a tiny budget (for the tests; its figures mean nothing). ``--only GLOB``
trains only the matching presets; the table still lists every preset, the others from their
finished runs of the same config (never trained, moved or resumed) or as "not run".
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gymlab import report
from gymlab.errors import GymlabError

REPO = Path(__file__).resolve().parents[1]

#: Seqgan's NLL tags: at the end of adversarial training, and after MLE pre-training (phase ``mle``).
NLL_ORACLE, NLL_ORACLE_MLE = "train/nll_oracle", "mle/nll_oracle"
NLL_TEST, NLL_TEST_MLE = "train/nll_test", "mle/nll_test"

#: Presets that need a GPU: (agent, preset stem) -> why. Atari presets are found by their wrapper.
GPU_SCALE = {
    ("seqgan", "SeqGen-v0"): "paper-scale SeqGAN: days of CPU (its discriminator training)",
    ("seqgan", "SeqGen-v0-fast"): "paper-shaped SeqGAN, 15 adversarial epochs: hours of CPU (its discriminator)",
}
ATARI_REASON = "Atari: a 10M-step budget, GPU scale"

#: The REINFORCE reference's env steps to 475 (ANCHORS.md: PyTorch-examples recipe, 5 seeds).
REINFORCE_REFERENCE_STEPS = (105_000.0, 54_000.0, 257_000.0)
REINFORCE_REFERENCE_SOURCE = (
    "PyTorch-examples REINFORCE recipe (benchmarks/reinforce.py), env steps until its 0.05-smoothed training "
    "return first reaches 475"
)


@dataclass(frozen=True)
class Published:
    """A published figure for an algorithm on an env at a budget."""

    value: float
    budget: int
    source: str
    note: str = ""


RL_ZOO = "RL Zoo benchmark.md (DQN; one run, deterministic evaluation)"
PUBLISHED = {
    ("dqn", "CartPole-v1"): Published(500.0, 50_000, RL_ZOO),
    ("dqn", "Acrobot-v1"): Published(-76.6, 100_000, RL_ZOO),
    ("dqn", "LunarLander-v3"): Published(154.4, 100_000, RL_ZOO, "measured on LunarLander-v2 (v3 here)"),
    ("dqn", "MountainCar-v0"): Published(-100.8, 120_000, RL_ZOO),
    ("dqn", "PongNoFrameskip-v4"): Published(20.6, 10_000_000, RL_ZOO),
    ("dqn", "BreakoutNoFrameskip-v4"): Published(358.3, 10_000_000, RL_ZOO),
}

#: DQN CartPole's final-policy goal: the last checkpoint at >= 475 on at least this share of seeds (4 of 5).
FINAL_POLICY_SHARE = 0.8
FINAL_POLICY_RETURN = 475.0


# ---------------------------------------------------------------- presets


@dataclass
class Preset:
    """One shipped preset and what the table needs of it."""

    agent: str
    stem: str  # the preset file's name: an env id, or a variant such as SeqGen-v0-small
    env: str
    path: Path
    configs: list[dict[str, Any]] = field(default_factory=list)  # one resolved config per seed
    skip: str | None = None

    @property
    def name(self) -> str:
        """``agent/stem``, what ``--only`` matches."""
        return f"{self.agent}/{self.stem}"


def env_of(stem: str) -> str:
    """The env a preset file is for: its name (``CartPole-v1``) or a variant's base (``SeqGen-v0-small``)."""
    return stem if re.fullmatch(r".+-v\d+", stem) else stem.rsplit("-", 1)[0]


def find_presets(root: Path, only: Sequence[str]) -> list[Preset]:
    """Every preset under ``root`` (``<agent>/<stem>.yaml``, sweeps aside) matching one of ``only``."""
    paths = sorted(p for p in root.glob("*/*.yaml") if p.parent.name != "sweeps")
    presets = [Preset(p.parent.name, p.stem, env_of(p.stem), p) for p in paths]
    if only:
        presets = [p for p in presets if any(fnmatch.fnmatch(p.name, g) for g in only)]
        if not presets:
            raise GymlabError(f"--only {' '.join(only)} matches no preset (names are agent/preset, e.g. 'dqn/*')")
    return presets


def smoke_overrides(agent: str, num_envs: int) -> list[str]:
    """``--smoke``: the agent's smoke hparams and a budget of a few hundred steps (a multiple of num_envs)."""
    from gymlab.agent import load_agent_class, smoke_hparams

    steps = num_envs * max(8, -(-400 // num_envs))
    keys = {"steps": steps, "eval_every": steps // 2, "eval_episodes": 2, "checkpoint_every": steps // 2}
    keys["log_every"] = steps // 8
    overrides = [f"{k}={v}" for k, v in keys.items()]
    overrides += [f"hparams.{k}={json.dumps(v)}" for k, v in smoke_hparams(load_agent_class(agent)).items()]
    return overrides


def resolve_preset(preset: Preset, seeds: Sequence[int], smoke: bool) -> None:
    """Fill in the preset's config for each seed (as ``gymlab train AGENT ENV --config PRESET`` would)."""
    from gymlab.config import resolve
    from gymlab.yamlfile import load_yaml

    overrides: list[str] = []
    if smoke:
        overrides = smoke_overrides(preset.agent, int(load_yaml(preset.path).get("num_envs", 1)))
    preset.configs = [resolve(preset.agent, preset.env, preset.path, overrides, seed=s).to_dict() for s in seeds]


def gpu_available() -> bool:
    """Whether torch sees a CUDA device."""
    import torch

    return bool(torch.cuda.is_available())


def skip_reason(preset: Preset, include_gpu: bool, gpu: bool) -> str | None:
    """Why the preset is not trained here (None: train it)."""
    from gymlab.build import preflight
    from gymlab.config import validate

    config = preset.configs[0]
    heavy = GPU_SCALE.get((preset.agent, preset.stem))
    if heavy is None and "atari" in (config.get("wrappers") or []):
        heavy = ATARI_REASON
    if heavy is not None:
        if not include_gpu:
            return f"{heavy}; --include-gpu runs it where a GPU exists"
        if not gpu:
            return f"{heavy}; no GPU on this machine"
    from gymlab.agent import load_agent_class

    try:  # a missing extra (box2d, mujoco, atari) says which install it needs
        preflight(validate(config, load_agent_class(preset.agent), source=str(preset.path)))
    except GymlabError as exc:
        return f"cannot run here: {exc}"
    return None


# ---------------------------------------------------------------- training


@dataclass
class SeedRun:
    """One seed of a preset: its folder, and what this invocation did with it."""

    preset: Preset
    seed: int
    folder: Path
    config: dict[str, Any]
    action: str = ""  # reused | trained | resumed | failed | interrupted | cancelled
    error: str | None = None

    @property
    def sidecar(self) -> Path:
        """The cache of this run's evaluations and wall time, next to its folder."""
        return self.folder.with_suffix(".json")


def read_sidecar(path: Path) -> dict[str, Any]:
    """The cached evaluations and wall time of a run ({} when there are none or the file is damaged)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_sidecar(path: Path, data: dict[str, Any]) -> None:
    """Write a run's cache atomically."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def checkpoint_step(path: Path) -> tuple[int, bool]:
    """A checkpoint's env step, and whether its final evaluation is still due."""
    from gymlab.checkpoint import Checkpoint

    ckpt = Checkpoint.read(path)
    return ckpt.step, ckpt.loop.eval_due


def existing_config(folder: Path) -> dict[str, Any] | None:
    """A run folder's config as today's code reads it (None when the folder has none).

    The folder's ``config.yaml`` is validated by the agent's current config model, as a resume does, so a key
    added since the run was trained takes its default: a run whose config today's code reads as the preset's is
    the preset's run. A config today's model refuses is returned as written (it then differs, and is retrained).
    """
    from gymlab.agent import load_agent_class
    from gymlab.config import validate
    from gymlab.runs import RunFolder

    raw = RunFolder(folder).data() if folder.is_dir() else None
    if raw is None:
        return None
    try:
        resolved: dict[str, Any] = validate(raw, load_agent_class(str(raw["agent"])), source="run").to_dict()
    except GymlabError:
        return raw
    return resolved


def same_run(preset_config: dict[str, Any], existing: dict[str, Any]) -> list[str]:
    """The keys in which a run's config differs from the preset's, ``vectorization: auto`` read as what it resolves to.

    A run trained when ``sync`` was the default (CartPole, before ``auto`` existed) is the preset's run.
    """
    from gymlab import registry, runs

    def effective(config: dict[str, Any]) -> dict[str, Any]:
        if "vectorization" not in config:
            return config
        vec = registry.effective_vectorization(
            str(config["env"]), config.get("env_kwargs") or {}, config.get("wrappers") or [], config["vectorization"]
        )
        return {**config, "vectorization": vec}

    return runs.config_differences(effective(preset_config), effective(existing))


def is_finished(run: SeedRun) -> bool:
    """Whether ``run``'s folder holds a finished run of exactly the preset's config (nothing is changed)."""
    from gymlab.runs import RunFolder

    existing = existing_config(run.folder)
    folder = RunFolder(run.folder)
    last = folder.last
    if existing is None or same_run(run.config, existing) or not last.is_file():
        return False
    step, eval_due = checkpoint_step(last)
    return step >= int(run.config["steps"]) and not eval_due and folder.newest() == last


def plan_seed(run: SeedRun, root: Path) -> bool:
    """Decide what ``run`` needs: True to train (new or resumed), False when a finished run is reused.

    A folder whose config differs from the preset's is moved to ``root/_replaced`` (never reused).
    """

    folder = run.folder
    existing = existing_config(folder)
    differ = same_run(run.config, existing) if existing is not None else []
    if differ:
        assert existing is not None
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
        target = (
            root / "_replaced" / folder.relative_to(root).parent / f"{folder.name}-{report.config_id(existing)}-{stamp}"
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder), str(target))
        run.sidecar.unlink(missing_ok=True)
        print(f"{run.preset.name} seed {run.seed}: config changed ({', '.join(differ[:5])}); old run moved to {target}")
        return True
    if is_finished(run):
        run.action = "reused"
        return False
    return True  # new, a failed start, or interrupted: mode auto starts or resumes it


def rough_cost(config: dict[str, Any]) -> float:
    """A rough guess of a run's CPU seconds, only to start the longest runs first (less idle time at the end).

    Per env step, from single runs on a loaded 2-core machine: SeqGAN's small preset ~35 ms (its
    rollouts), DQN ~2 ms plus ~4 ms per gradient step per env step, REINFORCE ~0.6 ms, tabular ~0.2 ms.
    """
    steps, hp = float(config["steps"]), config.get("hparams") or {}
    per_step = {"seqgan": 0.035, "reinforce": 0.0006, "tabular_q": 0.0002}.get(str(config["agent"]), 0.002)
    if config["agent"] == "dqn":
        per_step += 0.004 * float(hp.get("gradient_steps", 1)) / max(float(hp.get("train_freq", 1)), 1.0)
    return steps * per_step


def train_all(runs_: list[SeedRun], root: Path, workers: int) -> None:
    """Train (or resume) every run that needs it through gymlab's pool; record each one's outcome."""
    from gymlab.agent import load_agent_class
    from gymlab.config import validate
    from gymlab.parallel import run_all
    from gymlab.runner import RunOutcome, RunSpec

    todo = sorted((r for r in runs_ if plan_seed(r, root)), key=lambda r: -rough_cost(r.config))
    for r in runs_:
        if r.action == "reused":
            print(f"{r.preset.name} seed {r.seed}: finished run reused ({r.folder})", flush=True)
    if not todo:
        return
    for r in todo:
        r.folder.parent.mkdir(parents=True, exist_ok=True)
    specs = [
        RunSpec(config=validate(r.config, load_agent_class(r.preset.agent)), run_dir=r.folder, mode="auto", tag=i)
        for i, r in enumerate(todo)
    ]
    print(f"training {len(specs)} runs, {min(workers, len(specs))} at a time", flush=True)

    ended = [0]

    def done(outcome: RunOutcome) -> None:
        r = todo[outcome.spec.tag]
        ended[0] += 1
        print(f"[{ended[0]}/{len(todo)}] {r.preset.name} seed {r.seed}: {outcome.describe()}", flush=True)

    commit = git_commit()
    for r, outcome in zip(todo, run_all(specs, workers, on_done=done), strict=True):
        if outcome.ok:
            r.action = "resumed" if outcome.start_step > 0 else "trained"
        else:
            r.action, r.error = outcome.status, outcome.error
        if outcome.seconds > 0 and (outcome.ok or (outcome.status == "interrupted" and outcome.checkpoint is not None)):
            # Wall time and code add up over an interrupted run's sessions (a resume reads what came before).
            data = read_sidecar(r.sidecar) if outcome.start_step > 0 else {}
            data["train_seconds"] = float(data.get("train_seconds", 0.0)) + outcome.seconds
            if commit not in data.get("commits", []):
                data["commits"] = [*data.get("commits", []), commit]
            write_sidecar(r.sidecar, data)


# ---------------------------------------------------------------- measuring


def evaluate_cached(run: SeedRun, which: str, episodes: int) -> float | None:
    """The mean greedy return of the run's ``which`` checkpoint over ``episodes`` episodes (cached)."""
    from gymlab.evaluation import evaluate_run

    path = run.folder / "checkpoints" / f"{which}.pt"
    if not path.is_file():
        return None
    stat = path.stat()
    key = f"{stat.st_size}-{stat.st_mtime_ns}-{episodes}"
    data = read_sidecar(run.sidecar)
    cached = data.get("eval", {}).get(which)
    if isinstance(cached, dict) and cached.get("key") == key:
        return float(cached["mean_return"])
    result = evaluate_run(path, episodes, which=which)
    data.setdefault("eval", {})[which] = {"key": key, "mean_return": result["mean_return"], "step": result["step"]}
    write_sidecar(run.sidecar, data)
    return float(result["mean_return"])


def wall_seconds(run: SeedRun) -> float | None:
    """Training wall time of a run: what this script measured, else the span of its TensorBoard events."""
    seconds = read_sidecar(run.sidecar).get("train_seconds")
    if isinstance(seconds, (int, float)):
        return float(seconds)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run.folder))
    acc.Reload()
    times = [e.wall_time for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)]
    return max(times) - min(times) if times else None


def env_threshold(env: str) -> float | None:
    """The env spec's ``reward_threshold`` (None where Gymnasium gives none)."""
    import gymnasium as gym

    try:
        value = gym.spec(env).reward_threshold
    except gym.error.Error:
        return None
    return None if value is None else float(value)


def seed_steps_to_threshold(folders: Sequence[Path], threshold: float) -> list[float | None]:
    """Per run: the first env step its evaluation curve reaches ``threshold`` (``compare``'s interpolation)."""
    from gymlab import compare
    from gymlab import tblog as tb
    from gymlab.curves import load_curves

    runs, _ = load_curves(folders, tb.EVAL_RETURN)
    found = {c.path: compare.steps_to_threshold(c.steps, c.values, threshold) for c in runs}
    return [found.get(f) for f in folders]


def median_steps(values: Sequence[float | None]) -> float | None:
    """Median over seeds with "not reached" counted as infinitely many steps (None: the median is not reached)."""
    if not values:
        return None
    median = statistics.median(math.inf if v is None else v for v in values)
    return None if math.isinf(median) else float(median)


def tag_values(folders: Sequence[Path], tag: str) -> list[float]:
    """The last value of a scalar tag in each run that logged it."""
    from gymlab.curves import read_scalars

    out = []
    for folder in folders:
        scalars = read_scalars(folder)
        if tag in scalars and len(scalars[tag][1]):
            out.append(float(scalars[tag][1][-1]))
    return out


# ---------------------------------------------------------------- goals


@dataclass(frozen=True)
class Goal:
    """One goal the table checks: met or not, and the figures it compared."""

    ok: bool
    text: str

    def cell(self) -> str:
        """``✓ text`` or ``✗ text``."""
        return f"{'✓' if self.ok else '✗'} {self.text}"


def goal_iqm(iqm: float, published: float) -> Goal:
    """Every preset: the last checkpoint's IQM over seeds is at least the published figure."""
    ok = iqm >= published
    return Goal(ok, f"IQM {iqm:.4g} {'≥' if ok else '<'} published {published:.4g}")


def goal_final_policy(last_returns: Sequence[float], seeds: int) -> Goal:
    """DQN CartPole: the last checkpoint reaches 475 on at least 4 of 5 seeds (80% of the ``seeds`` asked for).

    A seed whose run failed (no return in ``last_returns``) counts as not reaching it.
    """
    need = math.ceil(FINAL_POLICY_SHARE * seeds - 1e-9)
    hits = sum(r >= FINAL_POLICY_RETURN for r in last_returns)
    return Goal(hits >= need, f"last ≥ {FINAL_POLICY_RETURN:g} on {hits}/{seeds} seeds (need {need})")


def goal_steps(median: float | None, reference: float) -> Goal:
    """REINFORCE CartPole: median env steps to 475 at most half the reference's."""
    if median is None:
        return Goal(False, f"475 not reached (need ≤ {report.human_steps(reference / 2)})")
    ok = median <= reference / 2
    half = report.human_steps(reference / 2)
    return Goal(ok, f"{report.human_steps(median)} {'≤' if ok else '>'} {half} (half the reference's steps)")


# ---------------------------------------------------------------- rows


@dataclass
class Row:
    """One preset's line of the table, with the per-seed figures behind it."""

    preset: Preset
    seeds: list[int]
    done: list[SeedRun] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    to_threshold: list[float | None] = field(default_factory=list)
    threshold: float | None = None
    seconds: list[float] = field(default_factory=list)
    nll: dict[str, list[float]] = field(default_factory=dict)
    goals: list[Goal] = field(default_factory=list)
    published: str = ""
    failures: list[str] = field(default_factory=list)
    not_run: bool = False  # outside --only, with no finished run of the preset's config


def ci_cell(values: Sequence[float]) -> str:
    """``mean · IQM x · [lo, hi]`` over seeds (report's bootstrap CI and IQM)."""
    if not values:
        return "—"
    ci = report.mean_ci(values)
    interval = f" · {ci.interval()}" if ci.has_spread else " · (1 seed)"
    return f"{ci.mean:.4g} · IQM {report.iqm(values):.4g}{interval}"


def published_text(preset: Preset, reinforce_reference: tuple[float, str]) -> str:
    """The published figure for a preset's algorithm and env, with its source and budget ("" when none)."""
    if preset.agent == "seqgan":
        paper = "NLL-oracle in Yu et al. 2017's Table 1: random 10.310, MLE 9.038, SeqGAN 8.736"
        return paper if preset.stem == "SeqGen-v0" else f"{paper}, at the paper's scale (not this one)"
    if (preset.agent, preset.env) == ("reinforce", "CartPole-v1"):
        reference, source = reinforce_reference
        return f"{report.human_steps(reference)} env steps to 475, {source}"
    published = PUBLISHED.get((preset.agent, preset.env))
    if published is None:
        return ""
    budget = int(preset.configs[0]["steps"])
    extra = [published.note] if published.note else []
    if budget != published.budget:
        extra.append(f"not this preset's budget, {report.human_steps(budget)}")
    text = f"{published.value:g} at {report.human_steps(published.budget)}, {published.source}"
    return text + (f" ({'; '.join(extra)})" if extra else "")


def measure(row: Row, episodes: int, reinforce_reference: tuple[float, str]) -> None:
    """Evaluate the finished runs of a row and check its goals."""
    preset = row.preset
    row.published = published_text(preset, reinforce_reference)
    folders = [r.folder for r in row.done]
    if not folders:
        return
    row.seconds = [s for s in (wall_seconds(r) for r in row.done) if s is not None]
    if preset.agent == "seqgan":
        for tag in (NLL_ORACLE, NLL_ORACLE_MLE, NLL_TEST, NLL_TEST_MLE):
            values = tag_values(folders, tag)
            if values:
                row.nll[tag] = values
        return
    n = max(episodes, int(preset.configs[0].get("eval_episodes", 1)))
    row.last = [v for v in (evaluate_cached(r, "last", n) for r in row.done) if v is not None]
    row.best = [v for v in (evaluate_cached(r, "best", n) for r in row.done) if v is not None]
    row.threshold = env_threshold(preset.env)
    if row.threshold is not None:
        row.to_threshold = seed_steps_to_threshold(folders, row.threshold)
    published = PUBLISHED.get((preset.agent, preset.env))
    if published is not None and row.last:
        row.goals.append(goal_iqm(report.iqm(row.last), published.value))
    if (preset.agent, preset.env) == ("dqn", "CartPole-v1") and row.last:
        row.goals.append(goal_final_policy(row.last, len(row.seeds)))
    if (preset.agent, preset.env) == ("reinforce", "CartPole-v1") and row.to_threshold:
        row.goals.append(goal_steps(median_steps(row.to_threshold), reinforce_reference[0]))


def human_seconds(x: float) -> str:
    """Wall time for people: 0.4 s, 12 s, 4.2 min, 1.5 h."""
    if x >= 5400:
        return f"{x / 3600:.1f} h"
    if x >= 300:
        return f"{x / 60:.1f} min"
    return f"{x:.2g} s" if x < 10 else f"{x:.0f} s"


def row_cells(row: Row) -> list[str]:
    """The table cells of a row."""
    p = row.preset
    budget = report.human_steps(int(p.configs[0]["steps"]))
    if p.agent == "seqgan":
        budget += " tokens + pre-training"
    seeds = f"{len(row.done)}/{len(row.seeds)}"
    if p.skip is not None:
        return [p.agent, p.stem, budget, "—", f"skipped: {p.skip}", "", "", "", row.published or "—", ""]
    if row.not_run:
        return [
            p.agent,
            p.stem,
            budget,
            "—",
            "not run (outside --only; no finished run of this config)",
            "",
            "",
            "",
            row.published or "—",
            "",
        ]
    if p.agent == "seqgan":
        end = ci_cell(row.nll.get(NLL_ORACLE, []))
        mle = ci_cell(row.nll.get(NLL_ORACLE_MLE, []))
        last, best = f"NLL-oracle (lower is better) at the end: {end}", f"NLL-oracle after MLE: {mle}"
        if NLL_TEST in row.nll:
            last += f"; NLL-test {ci_cell(row.nll[NLL_TEST])}"
        if NLL_TEST_MLE in row.nll:
            best += f"; NLL-test {ci_cell(row.nll[NLL_TEST_MLE])}"
        to_thr = "—"
    else:
        last, best = ci_cell(row.last), ci_cell(row.best)
        to_thr = "—"
        if row.threshold is not None and row.to_threshold:
            median = median_steps(row.to_threshold)
            reached = sum(v is not None for v in row.to_threshold)
            shown = "not reached" if median is None else report.human_steps(median)
            to_thr = f"{shown} (to {row.threshold:g}; {reached}/{len(row.to_threshold)} seeds reach it)"
    wall = "—"
    if row.seconds:
        low, mid, high = (human_seconds(f(row.seconds)) for f in (min, statistics.median, max))
        wall = f"{mid} ({low}–{high})"
    goals = "<br>".join(g.cell() for g in row.goals) or "—"
    if row.failures:
        goals += "<br>" + "; ".join(row.failures)
    return [p.agent, p.stem, budget, seeds, last, best, to_thr, wall, row.published or "—", goals]


HEADER = [
    "agent",
    "preset",
    "budget (env steps)",
    "seeds",
    "last checkpoint: mean · IQM · 95% CI",
    "best.pt: mean · IQM · 95% CI",
    "env steps to threshold (median)",
    "wall time per seed",
    "published",
    "goal",
]


def per_seed_lines(rows: Sequence[Row]) -> list[str]:
    """One line per preset with every seed's figures (what the means above summarise)."""
    lines = []
    for row in rows:
        if not row.done:
            continue
        seeds = ", ".join(str(r.seed) for r in row.done)
        parts = [f"seeds {seeds}"]
        commits = sorted({c for r in row.done for c in read_sidecar(r.sidecar).get("commits", [])})
        if commits:
            parts.append(f"trained at {', '.join(commits)}")
        if row.last:
            parts.append("last " + " / ".join(f"{v:.4g}" for v in row.last))
        if row.best:
            parts.append("best " + " / ".join(f"{v:.4g}" for v in row.best))
        if row.to_threshold:
            steps = " / ".join("—" if v is None else report.human_steps(v) for v in row.to_threshold)
            parts.append(f"steps to {row.threshold:g}: {steps}")
        for tag, values in row.nll.items():
            parts.append(f"{tag} " + " / ".join(f"{v:.4g}" for v in values))
        lines.append(f"- {row.preset.name}: " + "; ".join(parts))
    return lines


# ---------------------------------------------------------------- figures


def draw_figures(rows: Sequence[Row], figures: Path) -> dict[str, Path]:
    """One learning-curve PNG per env through ``gymlab.compare.compare``; env -> path."""
    from gymlab import compare
    from gymlab import tblog as tb

    by_env: dict[str, list[Row]] = {}
    for row in rows:
        if row.done:
            by_env.setdefault(row.preset.env, []).append(row)
    out: dict[str, Path] = {}
    for env, env_rows in by_env.items():
        folders = [str(r.folder) for row in env_rows for r in row.done]
        agents = [row.preset.agent for row in env_rows]
        by = "agent" if len(set(agents)) == len(agents) else "config"
        # SeqGAN: NLL-oracle over adversarial training where logged; the greedy sequence's return otherwise.
        metrics = [NLL_ORACLE, tb.EVAL_RETURN] if set(agents) == {"seqgan"} else [tb.EVAL_RETURN]
        path = figures / f"{env}.png"
        for metric in metrics:
            try:
                compare.compare(  # the figures are this script's own, redrawn on each pass
                    folders,
                    metric=metric,
                    by=by,  # type: ignore[arg-type]
                    out=path,
                    threshold=env_threshold(env),
                    overwrite=True,
                )
            except GymlabError as exc:
                print(f"note: no {metric} figure for {env}: {exc}")
                continue
            out[env] = path
            break
    return out


# ---------------------------------------------------------------- the document


#: What this script writes itself: a regenerated table does not make the checkout count as changed.
OWN_OUTPUTS = (":(exclude)docs/results.md", ":(exclude)docs/results")


def git_commit() -> str:
    """The checkout's short commit, ``+dirty`` when tracked files other than the table's own outputs changed."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *OWN_OUTPUTS],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty.strip() else "")


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """Platform, CPU count, torch version and the device runs use."""
    import torch

    device = f"CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU"
    return (
        f"{platform.platform()}, {cpu_model()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, torch {torch.__version__}, device {device}"
    )


def load_text(load: tuple[float, float, float]) -> str:
    """Load averages over 1, 5 and 15 minutes."""
    return " / ".join(f"{x:.2f}" for x in load)


def write_doc(
    out: Path,
    rows: Sequence[Row],
    figures: dict[str, Path],
    *,
    command: str,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
    root: Path,
    smoke: bool,
    episodes: int,
) -> None:
    """Write docs/results.md: header, the table, per-seed figures, the learning curves, how it is measured."""
    table = report.Table(HEADER, align=["left", "left", "right", "right"])
    for row in rows:
        table.add_row(*row_cells(row))
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Results", ""]
    if smoke:
        lines += ["**Smoke run (`--smoke`): tiny budgets and networks; these figures mean nothing.**", ""]
    lines += [
        f"Generated {when} by `{command}` at commit `{git_commit()}`.",
        "",
        f"- Machine: {machine()}.",
        f"- Load average (1 / 5 / 15 min): {load_text(load_before)} before, {load_text(load_after)} after training.",
        f"- Runs: `{root}/<agent>/<preset>/s<seed>` (compare them: `gymlab compare '{root}/dqn/*'`).",
        "",
        table.markdown(),
        "How to read it:",
        "",
        f"- Returns are greedy (`gymlab eval`), over at least {episodes} episodes per checkpoint (the preset's "
        "`eval_episodes` where larger) on the run's own evaluation seeds; *last checkpoint* is the policy at "
        "the end of training, *best.pt* the one of the best periodic evaluation (chosen on those evaluations, "
        "so optimistic). Mean, IQM (mean of the middle 50%) and a 95% percentile-bootstrap CI over seeds "
        "(`gymlab.report`; with few seeds read it as the spread seen, not a guarantee).",
        "- Env steps to threshold: per seed, the first step at which the periodic evaluation curve reaches "
        "the env spec's `reward_threshold` (interpolated between evaluations, `gymlab compare`'s method); the "
        "median over seeds, a seed that never reaches it counted as never.",
        "- The REINFORCE reference counts steps until its 0.05-smoothed *training* return reaches 475, while "
        "the table's figure for gymlab is its greedy evaluation curve; `benchmarks/reinforce.py` measures "
        "both the same way (see benchmarks/README.md).",
        "- Goals: every preset's last-checkpoint IQM ≥ its published figure; DQN CartPole's last checkpoint "
        "≥ 475 on ≥ 4 of 5 seeds; REINFORCE CartPole's median steps to 475 ≤ half the reference's.",
        "- SeqGAN: no greedy return; NLL-oracle (the oracle's NLL of generated samples, lower is better) after MLE "
        "pre-training (`mle/nll_oracle`) and at the end (`train/nll_oracle`), and NLL-test (the generator's NLL of "
        "held-out oracle samples: diversity) where logged, read from TensorBoard; its curve is NLL-oracle over "
        "adversarial training.",
        "- Wall time: training only, per seed, with the runs sharing the machine as `--workers` says; "
        "compare wall times only within one table.",
        "",
        "## Per seed",
        "",
        *per_seed_lines(rows),
        "",
        "## Learning curves",
        "",
        "Mean greedy evaluation return over seeds with its 95% bootstrap band, drawn by `gymlab compare`.",
        "",
    ]
    for env, path in figures.items():
        rel = os.path.relpath(path, out.parent)
        lines += [f"### {env}", "", f"![{env}]({rel})", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


# ---------------------------------------------------------------- REINFORCE reference


def reinforce_reference(seeds: Sequence[int], root: Path, run_it: bool) -> tuple[float, str]:
    """The REINFORCE reference's median steps to 475: measured on ``seeds`` (cached) or ANCHORS' figure."""
    if not run_it:
        median, low, high = REINFORCE_REFERENCE_STEPS
        anchors = f"5 seeds, {report.human_steps(low)}–{report.human_steps(high)}; ANCHORS.md"
        return median, f"{REINFORCE_REFERENCE_SOURCE} (median of {anchors})"
    spec = importlib.util.spec_from_file_location("gymlab_bench_reinforce", Path(__file__).with_name("reinforce.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    cache = root / "reference" / "reinforce-CartPole-v1"
    cache.mkdir(parents=True, exist_ok=True)
    steps: list[float | None] = []
    for seed in seeds:
        path = cache / f"s{seed}.json"
        data = read_sidecar(path)
        if "steps" not in data:
            found, seconds = module.reference(seed, 300_000, 475.0)
            data = {"steps": found, "seconds": seconds}
            write_sidecar(path, data)
            print(f"REINFORCE reference seed {seed}: {found} steps in {seconds:.1f} s", flush=True)
        steps.append(None if data["steps"] is None else float(data["steps"]))
    measured = median_steps(steps)
    if measured is None:
        raise GymlabError("the REINFORCE reference did not reach 475 on most seeds within 300k steps")
    shown = " / ".join("cap" if s is None else report.human_steps(s) for s in steps)
    return measured, f"{REINFORCE_REFERENCE_SOURCE} (median measured here on seeds {list(seeds)}: {shown})"


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per preset (default 5)")
    parser.add_argument("--workers", type=int, default=2, help="runs at once, each in its own process (default 2)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="train only these presets (glob on agent/preset, repeatable); the others show their finished runs",
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results.md", help="the Markdown file")
    parser.add_argument("--figures", type=Path, default=None, help="figure folder (default: OUT's folder/results)")
    parser.add_argument("--root", type=Path, default=Path("runs/results"), help="run folders (default runs/results)")
    parser.add_argument("--configs", type=Path, default=None, help="preset folder (default: the shipped configs)")
    parser.add_argument("--episodes", type=int, default=10, help="least greedy episodes per checkpoint (default 10)")
    parser.add_argument("--include-gpu", action="store_true", help="also run GPU-scale presets when a GPU exists")
    parser.add_argument("--reference", action="store_true", help="run the REINFORCE reference recipe on the seeds")
    parser.add_argument("--smoke", action="store_true", help="tiny budgets and smoke hparams (tests only)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.workers < 1 or args.episodes < 1:
        parser.error("--seeds, --workers and --episodes must be at least 1")
    return args


def run(args: argparse.Namespace, command: str) -> list[Row]:
    """Train what is missing, measure, draw and write; returns the rows (for tests)."""
    from gymlab.config import configs_root

    load_before = os.getloadavg()
    seeds = list(range(args.seeds))
    root = args.configs or configs_root()
    chosen = {p.name for p in find_presets(root, args.only)}
    presets = find_presets(root, [])
    gpu = gpu_available()
    runs_: list[SeedRun] = []  # to train
    others: list[SeedRun] = []  # outside --only: shown from finished runs, never trained or moved
    for preset in presets:
        resolve_preset(preset, seeds, args.smoke)
        preset.skip = skip_reason(preset, args.include_gpu, gpu)
        if preset.skip is not None:
            print(f"{preset.name}: skipped ({preset.skip})", flush=True)
            continue
        mine = [
            SeedRun(preset, s, args.root / preset.agent / preset.stem / f"s{s}", c)
            for s, c in zip(seeds, preset.configs, strict=True)
        ]
        (runs_ if preset.name in chosen else others).extend(mine)
    train_all(runs_, args.root, args.workers)
    for r in others:
        r.action = "reused" if is_finished(r) else "not run"
    load_after = os.getloadavg()
    stopped = [r for r in runs_ if r.action in ("interrupted", "cancelled")]
    if stopped:
        raise KeyboardInterrupt
    wanted = args.reference and not args.smoke and "reinforce/CartPole-v1" in chosen
    reference = reinforce_reference(seeds, args.root, wanted)
    rows = []
    for preset in presets:
        row = Row(preset, seeds)
        mine = [r for r in runs_ + others if r.preset is preset]
        row.done = [r for r in mine if r.action in ("reused", "trained", "resumed")]
        row.not_run = preset.name not in chosen and not row.done
        row.failures = [f"seed {r.seed} failed: {r.error}" for r in mine if r.action == "failed"]
        measure(row, args.episodes, reference)
        rows.append(row)
    figures = draw_figures(rows, args.figures or args.out.parent / "results")
    write_doc(
        args.out,
        rows,
        figures,
        command=command,
        load_before=load_before,
        load_after=load_after,
        root=args.root,
        smoke=args.smoke,
        episodes=args.episodes,
    )
    print(f"wrote {args.out}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 when every run trained, 1 when some failed, 2 for bad input, 130 when interrupted."""
    args = parse_args(argv)
    shown = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "benchmarks/results.py", *shown])
    try:
        rows = run(args, command)
    except GymlabError as exc:
        print(f"results: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("results: interrupted; finished runs are kept, run the same command again to go on", file=sys.stderr)
        return 130
    failed = [f for row in rows for f in row.failures]
    for failure in failed:
        print(f"results: {failure}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"results.py took {time.perf_counter() - started:.0f} s", file=sys.stderr)
    sys.exit(code)
