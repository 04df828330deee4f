"""The contract every agent and every shipped preset keeps through every command.

Cases are data, never code: every shipped preset (``gymlab.config.shipped_configs()``), plus, for
each registered agent that has no preset, the first env of :data:`CANDIDATE_ENVS` whose spaces its
``check_spaces`` accepts. Registering an agent or shipping a preset adds its case; nothing here
names an agent or an env id.

Each case is trained once at a tiny budget (run keys below, plus the agent class's optional
``smoke`` hparams that shrink its networks and memories) and that run is shared by every command:

- ``gymlab train`` with the preset;
- ``gymlab eval RUN --json`` (both checkpoints);
- ``gymlab watch RUN --record out.mp4 --episodes 1``: an mp4 with frames, read back with imageio
  (text on stdout for envs that render no pixels);
- interrupt, then ``gymlab train --resume``: the final checkpoint (weights, optimizer state,
  replay, RNG, env state, loop counters) and every TensorBoard scalar equal the uninterrupted
  run's. Where ``gymlab.envstate.capturable`` says the env's episodes cannot be captured
  (Atari, Box2D: the README says their episodes restart), the resume must complete and continue
  the curve instead;
- ``gymlab compare`` of the two runs: a PNG and a table.

How the interrupt is made: a real SIGINT through the CLI, at a deterministic step. The agent
class's ``update`` is wrapped, for the interrupted run only, so that after the update of env
step ``stop`` it sends SIGINT to this process; the loop's Ctrl-C handling then stops between two
steps and saves the checkpoint, exactly as a user's Ctrl-C would. (No ``stop_at`` is used.)

Every command runs in-process through ``gymlab.cli.main`` (no signal or exit code is under test
here; those are in test_cli.py, test_cli_errors.py, test_interrupts.py and test_runs.py). One
module-scoped fixture per case trains the runs, and all tests of a case share an xdist group, so
``pytest -n 2`` trains each case once.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import yaml
from clihelp import scalars
from conftest import Result, ctrl_c_after_update, gymlab_inprocess, needs_of_env

from gymlab import checkpoint, envstate, registry
from gymlab.agent import AGENTS, load_agent_class, smoke_hparams
from gymlab.config import RunConfig, shipped_configs

#: Envs tried, in order, for an agent that ships no preset: the first its check_spaces accepts.
CANDIDATE_ENVS = ("FrozenLake-v1", "CartPole-v1", "Pendulum-v1", "Taxi-v4", "SeqGen-v0")

#: Loop iterations of a contract run (env steps = iterations x num_envs), and the fewest env steps.
ITERATIONS, MIN_STEPS = 32, 256
#: Cap on the length of an evaluation episode (run key ``eval_max_steps`` where the schema has it).
EVAL_MAX_STEPS = 200
#: Checkpoint keys that hold wall-clock readings, which differ between any two runs: the loop's
#: ``time/`` means (steps per second) and RecordEpisodeStatistics' ``episode_start_time``.
WALL_CLOCK = re.compile(r"^time/|_time$")


# --- the cases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One agent on one env, from a shipped preset (``preset``) or from the candidate envs."""

    agent: str
    env: str
    preset: Path | None

    @property
    def id(self) -> str:
        """``agent-preset`` (``agent-env`` without a preset)."""
        return f"{self.agent}-{self.preset.stem if self.preset is not None else self.env}"

    @property
    def num_envs(self) -> int:
        """The preset's env copies (REINFORCE's 8, SeqGAN's batch): kept, they are part of the contract."""
        data = yaml.safe_load(self.preset.read_text()) if self.preset is not None else None
        return int((data or {}).get("num_envs", 1))

    @property
    def steps(self) -> int:
        """The tiny env-step budget: a multiple of num_envs."""
        n = self.num_envs
        return n * max(ITERATIONS, -(-MIN_STEPS // n))

    @property
    def stop(self) -> int:
        """Where the interrupted run gets its Ctrl-C: past a checkpoint and an evaluation, off any due point."""
        n = self.num_envs
        return n * (self.steps // n * 5 // 8)

    def train_args(self) -> list[str]:
        """``train`` arguments (without --run-dir): the preset, tiny run keys, the agent's smoke hparams."""
        steps = self.steps
        keys = {
            "steps": steps,
            "eval_every": steps // 2,
            "eval_episodes": 1,
            "checkpoint_every": steps // 4,
            "log_every": steps // 8,
            "video_every": 0,
        }
        if "eval_max_steps" in RunConfig.model_fields:
            keys["eval_max_steps"] = EVAL_MAX_STEPS
        smoke = smoke_hparams(load_agent_class(self.agent))
        overrides = [f"{k}={v}" for k, v in keys.items()]
        overrides += [f"hparams.{k}={json.dumps(v)}" for k, v in smoke.items()]
        config = ["--config", str(self.preset)] if self.preset is not None else []
        return ["train", self.agent, self.env, *config, "--seed", "3", *overrides]


def _env_of_preset(stem: str) -> str:
    """The env a preset is for: its name (``CartPole-v1``) or a variant's stem (``SeqGen-v0-small``)."""
    return stem if re.fullmatch(r".+-v\d+", stem) else stem.rsplit("-", 1)[0]


def _first_env_for(agent: str) -> str:
    cls = load_agent_class(agent)
    for env_id in CANDIDATE_ENVS:
        env = registry.make_env(env_id, {}, [], train=True)
        try:
            if cls.check_spaces(env.observation_space, env.action_space) is None:
                return env_id
        finally:
            env.close()
    raise AssertionError(f"agent {agent} accepts none of {CANDIDATE_ENVS}: add a candidate env for it")


def contract_cases() -> list[Case]:
    """Every shipped preset, then one case per registered agent that has no preset."""
    cases = [Case(agent, _env_of_preset(stem), path) for agent, stem, path in shipped_configs()]
    with_preset = {c.agent for c in cases}
    cases += [Case(name, _first_env_for(name), None) for name in AGENTS if name not in with_preset]
    return cases


CASES = contract_cases()


#: Tests that fail on main until the fix named lands: ``(test, case id pattern) -> reason``.
#: Strict, so a case that starts passing shows up (XPASS) and its line here is deleted.
PENDING: dict[tuple[str, str], str] = {}


#: Cases left out on purpose: ``case id -> reason``. Every command is still run for another case of the same path.
SKIPPED: dict[str, str] = {
    "dqn-BreakoutNoFrameskip-v4": (
        "the Pong preset covers the Atari path through every command; in Breakout an untrained greedy policy "
        "usually never presses FIRE to serve again after a lost life, so each evaluation plays to ALE's "
        "108,000-frame limit (27,000 steps: minutes per command here); tests/test_atari.py trains it natively"
    ),
}


def _marks(test: str, case: Case) -> list[pytest.MarkDecorator]:
    marks = [pytest.mark.xdist_group(f"contract-{case.id}"), *needs_of_env(case.env)]
    if case.id in SKIPPED:
        marks.append(pytest.mark.skip(reason=SKIPPED[case.id]))
    for (name, pattern), reason in PENDING.items():
        if name == test and fnmatch.fnmatch(case.id, pattern):
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
    return marks


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise every test taking ``case`` over :data:`CASES`, one xdist group per case."""
    if "case" in metafunc.fixturenames:
        name = metafunc.function.__name__
        metafunc.parametrize("case", [pytest.param(c, id=c.id, marks=_marks(name, c)) for c in CASES], scope="module")


# --- running the CLI in-process ------------------------------------------------------------------


# --- the shared runs -----------------------------------------------------------------------------


@dataclass
class Runs:
    """One case's runs: ``whole`` trained without a break, ``parts`` interrupted then resumed."""

    case: Case
    whole: Path
    trained: Result
    parts: Path
    interrupted: Result | None = None
    stopped_at: int | None = None  # the step of the checkpoint the interrupt left
    resumed: Result | None = None


@pytest.fixture(scope="module")
def runs(case: Case, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """Train the case once, uninterrupted (the other runs are made lazily by :func:`resumed`)."""
    root = tmp_path_factory.mktemp(case.id)
    whole = root / "whole"
    return Runs(case, whole, gymlab_inprocess(*case.train_args(), "--run-dir", whole), root / "parts")


@pytest.fixture(scope="module")
def resumed(runs: Runs) -> Runs:
    """The same run, Ctrl-C'd after step ``case.stop``, then continued with ``--resume``."""
    if runs.interrupted is None:
        with ctrl_c_after_update(runs.case.agent, runs.case.stop):
            runs.interrupted = gymlab_inprocess(*runs.case.train_args(), "--run-dir", runs.parts)
        if (runs.parts / "checkpoints" / "last.pt").is_file():
            runs.stopped_at = int(last_checkpoint(runs.parts)["loop"]["step"])
        runs.resumed = gymlab_inprocess("train", "--resume", runs.parts)
    return runs


def trained(runs: Runs) -> Path:
    """The uninterrupted run folder, failing the test with the command's output if training failed."""
    assert runs.trained.code == 0, runs.trained.ok()
    return runs.whole


# --- reading results back ------------------------------------------------------------------------


def last_checkpoint(run: Path) -> dict[str, Any]:
    """The run's newest checkpoint, decoded."""
    return checkpoint.load(run / "checkpoints" / "last.pt")


def assert_same(a: Any, b: Any, path: str = "checkpoint") -> None:
    """Exact equality of two decoded checkpoint trees (tensors, arrays, plain data), naming the first difference."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape, (
            f"{path}: {a.dtype}{tuple(a.shape)} != {b.dtype}{tuple(b.shape)}"
        )
        if a.is_floating_point():  # a NaN where the other run has one counts as equal
            nan_a, nan_b = a.isnan(), b.isnan()
            assert torch.equal(nan_a, nan_b), f"{path}: NaN in different places"
            a, b = a.masked_fill(nan_a, 0), b.masked_fill(nan_b, 0)
        assert torch.equal(a, b), f"{path}: differs at {(a != b).nonzero()[:3].tolist()}"
        return
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), path
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        np.testing.assert_array_equal(a, b, err_msg=path)
        return
    if isinstance(a, Mapping):
        assert isinstance(b, Mapping), path
        assert sorted(map(str, a)) == sorted(map(str, b)), (
            f"{path}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        )
        for key in a:
            if WALL_CLOCK.search(str(key)):
                continue
            assert_same(a[key], b[key], f"{path}.{key}")
        return
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: {a!r:.200} != {b!r:.200}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
        return
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return
    assert a == b, f"{path}: {a!r:.200} != {b!r:.200}"


def capturable(run: Path) -> bool:
    """Whether the run's env keeps its episodes over a resume (``gymlab.envstate.capturable``)."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    env = registry.make_env(config["env"], config.get("env_kwargs") or {}, config.get("wrappers") or [], train=True)
    try:
        return envstate.capturable(env)
    finally:
        env.close()


def renders_pixels(run: Path) -> bool:
    """Whether the run's env offers ``rgb_array`` renders (else watch prints text)."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    env = registry.make_env(config["env"], config.get("env_kwargs") or {}, config.get("wrappers") or [], train=False)
    try:
        return "rgb_array" in env.metadata.get("render_modes", [])
    finally:
        env.close()


# --- the contract --------------------------------------------------------------------------------


def test_every_agent_and_every_preset_is_a_case() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert {c.agent for c in CASES} == set(AGENTS)
    assert {p for _, _, p in shipped_configs()} <= {c.preset for c in CASES}


def test_train(case: Case, runs: Runs) -> None:
    run = trained(runs)
    assert f"{case.steps:,} steps" in runs.trained.out, runs.trained.ok()
    assert (run / "config.yaml").is_file() and list(run.glob("events.out.tfevents.*"))
    assert last_checkpoint(run)["loop"]["step"] == case.steps
    assert (run / "checkpoints" / "best.pt").is_file()
    curves = scalars(run)
    assert "eval/return_mean" in curves, sorted(curves)
    assert [s for s, _ in curves["eval/return_mean"]] == [case.steps // 2, case.steps]
    assert all(math.isfinite(v) for points in curves.values() for _, v in points), curves


@pytest.mark.parametrize("which", ["last", "best"])
def test_eval_json(case: Case, runs: Runs, which: str) -> None:
    run = trained(runs)
    ev = gymlab_inprocess("eval", run, "--json", "--episodes", 2, "--checkpoint", which)
    assert ev.code == 0, ev.ok()
    result = json.loads(ev.out.strip().splitlines()[-1])
    assert result["episodes"] == 2 and len(result["returns"]) == 2, result
    assert math.isfinite(result["mean_return"]) and math.isfinite(result["std_return"]), result
    assert result["agent"] == case.agent and result["env"] == case.env, result
    if which == "last":
        assert result["step"] == case.steps, result


@pytest.mark.needs("ffmpeg")
def test_watch_record(case: Case, runs: Runs, tmp_path: Path) -> None:
    run = trained(runs)
    out = tmp_path / "out.mp4"
    shown = gymlab_inprocess("watch", run, "--record", out, "--episodes", 1)
    assert shown.code == 0, shown.ok()
    if renders_pixels(run):
        assert out.is_file(), shown.ok()
        frames = list(iio.imiter(out, plugin="FFMPEG"))
        assert frames and frames[0].ndim == 3 and frames[0].shape[2] == 3, len(frames)
        assert all(f.shape == frames[0].shape for f in frames)
    else:  # the env renders no pixels: the episode is printed as text, no mp4
        assert not out.exists()
        lines = [line for line in shown.out.splitlines() if line.strip()]
        assert len(lines) >= 2, shown.ok()  # the episode's text, then the summary


def test_interrupt_then_resume_matches_the_uninterrupted_run(case: Case, resumed: Runs) -> None:
    whole = trained(resumed)
    assert resumed.interrupted is not None and resumed.resumed is not None
    assert resumed.interrupted.code != 0, resumed.interrupted.ok()
    assert "interrupted" in resumed.interrupted.err and "--resume" in resumed.interrupted.err, resumed.interrupted.ok()
    assert resumed.stopped_at is not None and case.stop <= resumed.stopped_at < case.steps, resumed.stopped_at
    assert resumed.resumed.code == 0, resumed.resumed.ok()
    a, b = last_checkpoint(whole), last_checkpoint(resumed.parts)
    assert a["loop"]["step"] == b["loop"]["step"] == case.steps
    curves_a, curves_b = scalars(whole), scalars(resumed.parts)
    for tag, points in curves_b.items():
        steps = [s for s, _ in points]
        assert steps == sorted(set(steps)), f"{tag}: doubled or unordered steps {steps}"
    if capturable(whole):
        for part in ("agent_state", "rng", "envs", "loop"):
            assert_same(a[part], b[part], part)
        assert curves_a.keys() == curves_b.keys()
        for tag, points in curves_a.items():
            assert curves_b[tag] == points, tag
    else:  # episodes in progress restart (README): the same curve up to the interrupt, then it goes on
        stop = resumed.stopped_at
        for tag, points in curves_a.items():
            assert [p for p in curves_b.get(tag, []) if p[0] <= stop] == [p for p in points if p[0] <= stop], tag
        assert [s for s, _ in curves_b["eval/return_mean"]][-1] == case.steps


def test_compare(case: Case, resumed: Runs, tmp_path: Path) -> None:
    whole = trained(resumed)
    assert resumed.resumed is not None and resumed.resumed.code == 0, resumed.resumed and resumed.resumed.ok()
    out = tmp_path / "x.png"
    shown = gymlab_inprocess("compare", whole, resumed.parts, "--out", out)
    assert shown.code == 0, shown.ok()
    image = iio.imread(out)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert case.agent in shown.out, shown.ok()  # the table names the group
