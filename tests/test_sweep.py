"""Sweeps: schema checks, Optuna samplers and pruners, local and Ray backends, crashing trials, resume, Ctrl-C."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from clihelp import read_first_line_then_go
from gymlab.agents.tabular_q import TabularQ

from gymlab import cli, loop, runs
from gymlab import sweep as sw
from gymlab.config import resolve
from gymlab.errors import GymlabError
from gymlab.folderlock import LOCK_FILE
from gymlab.runner import RunOutcome, RunSpec, execute
from gymlab.sweep import driver

ROOT = Path(__file__).resolve().parents[1]

# 2 × 2 grid of tabular Q on Taxi-v4. 20k steps are enough for the four points to end far apart
# (α=0.9 learns a good part of the task, α=0.2 does not), so "sorted best first" is a real check.
TAXI: dict[str, Any] = {
    "agent": "tabular_q",
    "env": "Taxi-v4",
    "base": {"steps": 20000, "eval_every": 5000, "eval_episodes": 10, "checkpoint_every": 0, "log_every": 5000},
    "method": "grid",
    "space": {"learning_rate": [0.2, 0.9], "exploration_fraction": [0.2, 0.6]},
    "seeds": 1,
}


class ExplodingQ(TabularQ):
    """Tabular Q that crashes a few hundred steps in when its learning rate is above 0.5."""

    def update(self, step: int) -> dict[str, float | str]:
        if self.cfg.learning_rate > 0.5 and step >= 300:
            raise RuntimeError("boom: learning rate too high")
        return super().update(step)


def write_sweep(tmp_path: Path, data: dict[str, Any], name: str = "taxi") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def check_summary(result: sw.SweepResult, n_complete: int) -> None:
    """All trials complete, best first; the CSV holds the same order; best.yaml is the top trial."""
    complete = [r for r in result.rows if r.state == "complete"]
    assert len(complete) == n_complete
    means = [r.mean for r in complete if r.mean is not None]
    assert len(means) == n_complete
    assert means == sorted(means, reverse=True)
    assert means[0] > means[-1]  # the grid's points really differ
    with result.summary_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["trial"]) for r in rows] == [r.number for r in result.rows]
    assert [float(r["return_mean"]) for r in rows[:n_complete]] == pytest.approx(means)
    assert "| rank |" in result.summary_md.read_text()
    for row in complete:
        for run_dir in row.run_dirs:
            assert (Path(run_dir) / "config.yaml").is_file()
            assert list(Path(run_dir).glob("events.out.tfevents.*"))
    assert result.best_yaml is not None
    best = yaml.safe_load(result.best_yaml.read_text())
    for key, value in complete[0].params.items():
        assert best["hparams"][key] == value


def train_best(best_yaml: Path, tmp_path: Path) -> loop.TrainResult:
    cfg = resolve(None, None, best_yaml, steps=2000)
    folder = runs.RunFolder.create(cfg, tmp_path / "best-run").path
    return loop.train(cfg, folder)


# ---- the sweep file ---------------------------------------------------------------------------


def test_dimension_forms() -> None:
    assert sw.Dimension.model_validate([1, 2]).kind == "grid"
    assert sw.Dimension.model_validate({"choice": ["a", "b"]}).values == ("a", "b")
    d = sw.Dimension.model_validate({"loguniform": [1e-4, 1e-2]})
    assert (d.kind, d.low, d.high, d.corners()) == ("loguniform", 1e-4, 1e-2, [1e-4, 1e-2])
    assert sw.Dimension.model_validate({"int": [1, 8]}).corners() == [1, 8]
    bad: Any
    for bad in ({"uniform": [1.0]}, {"loguniform": [0.0, 1.0]}, {"int": [1.5, 3]}, {"uniform": [2, 1]}, {"x": 1}, []):
        with pytest.raises(ValueError):
            sw.Dimension.model_validate(bad)


def test_load_sweep_resolves_keys_and_counts_grid(tmp_path: Path) -> None:
    sweep = sw.load_sweep(write_sweep(tmp_path, {**TAXI, "space": {**TAXI["space"], "num_envs": [1, 2]}}))
    assert list(sweep.space) == ["learning_rate", "exploration_fraction", "num_envs"]
    assert sweep.trials == 8 and sweep.grid()["num_envs"] == [1, 2]
    base = sweep.base_config()
    assert base["steps"] == 20000 and base["hparams"]["gamma"] == 0.99  # preset under base
    cfg = sweep.trial_config({"learning_rate": 0.3, "num_envs": 2}, seed=5)
    assert (cfg["seed"], cfg["num_envs"], cfg["hparams"]["learning_rate"]) == (5, 2, 0.3)
    assert sw.load_sweep(sweep.source, trials=3).trials == 3
    assert sw.load_sweep(sweep.source, trials=100).trials == 8  # a grid has only so many points


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # Searched keys and base keys resolve like `key=value` on the command line, with its "did you mean".
        ({"space": {"learnin_rate": [0.1]}}, "unknown key 'learnin_rate': did you mean 'hparams.learning_rate'"),
        ({"space": {"hparams.gama": [0.9]}}, "did you mean 'hparams.gamma'"),
        ({"base": {"eval_evry": 100}}, "unknown key 'eval_evry': did you mean 'eval_every'"),
        ({"space": {"seed": [1, 2]}}, "'seed' cannot be searched"),
        ({"space": {"learning_rate": [0.1, 2.0]}}, "hparams.learning_rate"),  # 2.0 > le=1, caught up front
        ({"space": {"learning_rate": {"uniform": [0.1, 0.5]}}}, "grid search needs listed values"),
        ({"method": "tpe", "pruning": {"pruner": "median", "every": 7000}}, "multiple of eval_every"),
        ({"agent": "nope"}, "unknown agent"),
        ({"metod": "grid"}, "unknown key 'metod': did you mean 'method'"),
        ({"pruning": {"prunr": "median"}}, "did you mean 'pruning.pruner'"),
    ],
)
def test_sweep_file_mistakes_are_one_line_errors(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(GymlabError, match=message):
        sw.load_sweep(write_sweep(tmp_path, {**TAXI, **change}))


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"agent: tabular_q\nenv: Taxi-v4 \xff\xfe\n", "is not UTF-8"), (b"agent: [tabular_q\n", "is not valid YAML")],
)
def test_unreadable_sweep_files_are_one_line_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(GymlabError, match=f"sweep file {path} {message}"):
        sw.load_sweep(path)


def test_check_pruning() -> None:
    assert (
        sw.check_pruning({"eval_every": 5000}, sw.PruningSpec.model_validate({"pruner": "median", "every": 10000}))
        == 10000
    )
    assert sw.check_pruning({"eval_every": 5000}, sw.PruningSpec.model_validate({"pruner": "halving"})) == 5000
    assert sw.check_pruning({"eval_every": 5000}, sw.PruningSpec.model_validate({})) is None


def test_cli_import_stays_light() -> None:
    code = "import sys, gymlab.cli; print(sorted(m for m in ('ray', 'optuna', 'gymlab.sweep') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# ---- pruning inside the runs ------------------------------------------------------------------


@pytest.mark.needs("sweep")
def test_prune_check_reports_the_mean_over_seeds_and_stops_every_seed(tmp_path: Path) -> None:
    import optuna

    journal = tmp_path / sw.study.JOURNAL_FILE
    pruning = sw.PruningSpec.model_validate({"pruner": "median", "startup_trials": 1})
    study = optuna.create_study(
        study_name=sw.study.STUDY_NAME,
        storage=sw.study.open_storage(journal),
        direction="maximize",
        pruner=sw.study.make_pruner(pruning, 1000),
    )
    good = study.ask()
    good.report(5.0, 1000)
    study.tell(good, 5.0)
    number = study.ask().number
    checks = [sw.study.PruneCheck(str(journal), number, seed, (0, 1), 1000, 3000, pruning) for seed in (0, 1)]
    assert checks[0](500, -1.0) is False  # not a check step
    assert checks[0](1000, -1.0) is False  # seed 1 has not reported step 1000: nothing is judged yet
    assert study.trials[number].intermediate_values == {}
    assert checks[1](1000, -3.0) is True  # the last seed reports the mean, and the median rule prunes
    trial = study.trials[number]
    assert trial.intermediate_values == {1000: -2.0} and trial.user_attrs[sw.study.PRUNED_AT] == 1000
    assert checks[0](2000, -1.0) is True  # the seed that ran ahead stops at its next check
    assert checks[0](3000, -1.0) is False  # the final evaluation is the result, never a check


# ---- whole sweeps -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.needs("sweep")
def test_local_sweep_of_four_trials(tmp_path: Path) -> None:
    sweep = sw.load_sweep(write_sweep(tmp_path, TAXI), max_concurrent=2)
    result = sw.run_sweep(sweep, tmp_path / "sweep", backend="local")
    assert not result.interrupted and len(result.rows) == 4
    check_summary(result, 4)
    assert sorted(tuple(r.params.values()) for r in result.rows) == [(a, b) for a in (0.2, 0.9) for b in (0.2, 0.6)]
    trained = train_best(result.best_yaml, tmp_path)  # type: ignore[arg-type]
    assert trained.step == 2000 and trained.last_eval is not None


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.needs("sweep", "ray")
def test_ray_sweep_of_four_trials(tmp_path: Path) -> None:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        sweep = sw.load_sweep(write_sweep(tmp_path, TAXI), max_concurrent=2)
        result = sw.run_sweep(sweep, tmp_path / "sweep", backend="ray")
        assert ray.is_initialized()  # the sweep used the test's instance and left it running
    finally:
        ray.shutdown()
    assert not result.interrupted and len(result.rows) == 4
    check_summary(result, 4)
    trained = train_best(result.best_yaml, tmp_path)  # type: ignore[arg-type]
    assert trained.step == 2000


@pytest.mark.slow
@pytest.mark.needs("sweep")
def test_a_crashing_trial_does_not_stop_the_others(tmp_path: Path) -> None:
    data = {**TAXI, "agent": "test_sweep:ExplodingQ", "base": {**TAXI["base"], "steps": 5000}}
    data["space"] = {"learning_rate": [0.2, 0.9, 0.3]}
    sweep = sw.load_sweep(write_sweep(tmp_path, data), max_concurrent=2)
    events: list[str] = []
    result = sw.run_sweep(sweep, tmp_path / "sweep", on_event=events.append)
    states = {r.params["learning_rate"]: r for r in result.rows}
    assert states[0.9].state == "failed"
    assert "RuntimeError: boom: learning rate too high" in (states[0.9].error or "")
    assert states[0.2].state == states[0.3].state == "complete"
    assert result.rows[-1].state == "failed"  # failures sort last
    # its line names what it tried, as a done or pruned trial's does (stop 41: only the error)
    assert any(e.startswith(f"trial {states[0.9].number} failed (learning_rate=0.9): ") and "boom" in e for e in events)
    assert "boom" in result.summary_csv.read_text()


@pytest.mark.needs("sweep")
@pytest.mark.parametrize("method", ["random", "tpe"])
def test_a_resumed_random_or_tpe_sweep_draws_new_points_not_its_first_ones_again(tmp_path: Path, method: str) -> None:
    """The sampler was seeded as at the start on every resume: its sequence began again, and the trials after
    an interruption repeated the configs already run (6 trials covered 4 points)."""
    data = {**TAXI, "method": method, "trials": 4, "space": {"learning_rate": {"uniform": [0.1, 0.9]}}}
    data["base"] = {**TAXI["base"], "steps": 2000, "eval_every": 1000, "eval_episodes": 1}
    path, folder = write_sweep(tmp_path, data), tmp_path / "sweep"

    done: list[str] = []

    def stop_after_two(event: str) -> None:
        done.extend([event] if " done" in event else [])
        if len(done) == 2:
            raise KeyboardInterrupt  # as a Ctrl-C reaching the driver after trials 0 and 1 finished

    first = sw.run_sweep(sw.load_sweep(path, max_concurrent=1), folder, on_event=stop_after_two)
    assert first.interrupted and [r.state for r in first.rows].count("complete") == 2
    second = sw.run_sweep(sw.load_sweep(path, max_concurrent=1), folder)
    assert not second.interrupted and len(second.rows) == 4
    rates = [r.params["learning_rate"] for r in second.rows]
    assert len(set(rates)) == 4, rates


@pytest.mark.slow
@pytest.mark.needs("sweep")
def test_interrupted_sweep_resumes_without_redoing_finished_trials(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, TAXI)
    folder = tmp_path / "sweep"

    def stop_after_first(event: str) -> None:
        if "done" in event:
            raise KeyboardInterrupt  # as a Ctrl-C reaching the driver after trial 0 finished

    first = sw.run_sweep(sw.load_sweep(path, max_concurrent=2), folder, on_event=stop_after_first)
    assert first.interrupted
    assert [r.state for r in first.rows].count("complete") == 1
    finished = {r.number: r for r in first.rows if r.state == "complete"}
    # The other trial was running beside it (which one finishes first is up to the scheduler):
    # its run went on to the end and is on disk, unreported.
    (running,) = [r.number for r in first.rows if r.state == "interrupted"]
    events_before = {p: p.stat().st_mtime_ns for p in folder.glob("trial-*/events.out.tfevents.*")}

    events: list[str] = []
    second = sw.run_sweep(sw.load_sweep(path, max_concurrent=2), folder, on_event=events.append)
    assert not second.interrupted and second.resumed == 1
    assert not any(f"trial {n} done" in e for e in events for n in finished)  # not redone
    assert any(f"trial {running} resumed" in e for e in events)
    check_summary(second, 4)
    for number, row in finished.items():
        again = next(r for r in second.rows if r.number == number)
        assert (again.mean, again.run_dirs) == (row.mean, row.run_dirs)
    # No event file of the first session was rewritten: trials 0 and 1 were not trained again.
    assert all(p.stat().st_mtime_ns == t for p, t in events_before.items())
    assert len(list(folder.glob("trial-*-s0"))) == 4

    # The same folder refuses a different sweep rather than mixing two searches.
    changed = write_sweep(tmp_path, {**TAXI, "space": {"learning_rate": [0.5, 0.6]}}, name="taxi")
    with pytest.raises(GymlabError, match="holds a different sweep"):
        sw.run_sweep(sw.load_sweep(changed), folder)


@pytest.mark.slow
@pytest.mark.needs("sweep")
def test_tpe_with_median_pruning_stops_bad_trials(tmp_path: Path) -> None:
    data = {
        **TAXI,
        "base": {**TAXI["base"], "steps": 30000},
        "method": "tpe",
        "trials": 6,
        "space": {"learning_rate": {"loguniform": [0.01, 1.0]}, "exploration_fraction": {"uniform": [0.1, 0.9]}},
        "pruning": {"pruner": "median", "every": 10000, "startup_trials": 2},
    }
    sweep = sw.load_sweep(write_sweep(tmp_path, data), max_concurrent=2)
    result = sw.run_sweep(sweep, tmp_path / "sweep")
    states = [r.state for r in result.rows]
    assert len(states) == 6 and "failed" not in states and "interrupted" not in states
    assert "pruned" in states  # a low α is hopeless at 10k steps and the median says so
    pruned = [r for r in result.rows if r.state == "pruned"]
    assert all(r.step is not None and r.step < 30000 for r in pruned)
    assert all(r.mean is not None for r in pruned)


@pytest.mark.slow
@pytest.mark.needs("sweep")
def test_cli_sweep_then_train_best(tmp_path: Path) -> None:
    from conftest import run_cli

    data = {**TAXI, "base": {**TAXI["base"], "steps": 3000, "eval_every": 1500}}
    data["space"] = {"learning_rate": [0.3, 0.9]}
    path = write_sweep(tmp_path, data)
    folder = tmp_path / "sweep"
    out = run_cli("sweep", str(path), "--max-concurrent", "2", "--run-dir", str(folder), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "trial 0 done" in out.stdout and "trial 1 done" in out.stdout
    assert re.search(r"rank +trial +state +learning_rate +seeds +return_mean", out.stdout)
    assert f"best config: {folder / 'best.yaml'}" in out.stdout
    run = tmp_path / "best-run"
    out = run_cli(
        "train", "--config", str(folder / "best.yaml"), "--steps", "1000", "--run-dir", str(run), cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert (run / "checkpoints" / "last.pt").is_file()
    # Running the finished sweep again resumes it: nothing left to do, nothing redone.
    out = run_cli("sweep", str(path), "--run-dir", str(folder), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "2 finished trial(s) kept" in out.stdout and "done:" not in out.stdout
    # A mistake in the sweep file is one line and exit code 2.
    bad = write_sweep(tmp_path, {**data, "space": {"learnin_rate": [0.1]}}, name="bad")
    out = run_cli("sweep", str(bad), cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("gymlab: error:") and "learning_rate" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


class InlineBackend:
    """Trains seed runs in this process; the runs of ``stop_trial`` come back as if signalled."""

    slots = 1

    def __init__(self, stop_trial: int | None = None) -> None:
        self.stop_trial = stop_trial
        self.submitted: list[RunSpec] = []
        self.results: list[RunOutcome] = []

    def submit(self, spec: RunSpec) -> None:
        self.submitted.append(spec)
        if spec.tag[0] == self.stop_trial:
            self.results.append(RunOutcome(spec, "interrupted", spec.run_dir, step=100))
        else:
            self.results.append(execute(spec))

    def wait(self, timeout: float | None = None) -> list[RunOutcome]:
        done, self.results = self.results, []
        return done

    def close(self, cancel: bool) -> None:
        pass


SMALL = {**TAXI, "base": {**TAXI["base"], "steps": 3000, "eval_every": 1500}}


@pytest.mark.needs("sweep")
def test_a_signalled_run_stops_the_sweep_and_a_resume_finishes_it(tmp_path: Path) -> None:
    sweep = sw.load_sweep(write_sweep(tmp_path, SMALL))
    stopped = InlineBackend(stop_trial=1)
    first = sw.run_sweep(sweep, tmp_path / "sweep", backend=stopped)
    # Trial 0 finished; trial 1's run was stopped by a signal the driver never saw: no trial 2.
    assert first.interrupted
    assert [s.tag[0] for s in stopped.submitted] == [0, 1]
    assert {r.number: r.state for r in first.rows} == {0: "complete", 1: "interrupted"}
    resumed = InlineBackend()
    second = sw.run_sweep(sweep, tmp_path / "sweep", backend=resumed)
    assert not second.interrupted and second.resumed == 1
    assert [s.tag[0] for s in resumed.submitted] == [1, 2, 3]  # trial 0 is not redone
    assert [r.state for r in second.rows] == ["complete"] * 4


@pytest.mark.needs("sweep")
def test_a_signal_inside_a_journal_write_lets_the_write_finish_and_stops_the_sweep_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_default_signal_handling: Any
) -> None:
    sweep = sw.load_sweep(write_sweep(tmp_path, SMALL))
    write = sw.study.Ledger.set_attr
    sent: list[int] = []

    def set_attr(self: Any, number: int, key: str, value: Any) -> None:
        if key == "seed_results" and not sent:  # trial 0's only seed just finished
            sent.append(number)
            os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C landing inside the driver's journal write
        write(self, number, key, value)

    monkeypatch.setattr(sw.study.Ledger, "set_attr", set_attr)
    backend = InlineBackend()
    first = sw.run_sweep(sweep, tmp_path / "sweep", backend=backend)
    assert first.interrupted and sent == [0]
    assert [s.tag[0] for s in backend.submitted] == [0]  # nothing started after the signal
    assert {r.number: r.state for r in first.rows} == {0: "complete"}  # the write it landed in was finished
    assert signal.getsignal(signal.SIGINT) is no_default_signal_handling  # the sweep's handlers are gone
    monkeypatch.undo()
    resumed = InlineBackend()
    second = sw.run_sweep(sweep, tmp_path / "sweep", backend=resumed)
    assert not second.interrupted and second.resumed == 1
    assert [s.tag[0] for s in resumed.submitted] == [1, 2, 3]


@pytest.mark.needs("sweep")
def test_grid_search_is_optunas_grid_sampler(tmp_path: Path) -> None:
    import optuna

    sweep = sw.load_sweep(write_sweep(tmp_path, {**SMALL, "space": {"learning_rate": [0.3, 0.6, 0.9]}}))
    sampler = sw.study.make_sampler(sweep)
    assert isinstance(sampler, optuna.samplers.GridSampler)
    result = sw.run_sweep(sweep, tmp_path / "sweep", backend=InlineBackend())
    assert sorted(r.params["learning_rate"] for r in result.rows) == [0.3, 0.6, 0.9]  # each point once
    storage = sw.study.open_storage(tmp_path / "sweep" / sw.study.JOURNAL_FILE)
    trials = optuna.load_study(study_name=sw.study.STUDY_NAME, storage=storage).get_trials()
    # The sampler chose each point (it tags its trials with a grid id); nothing was queued by hand.
    assert sorted(t.system_attrs["grid_id"] for t in trials) == [0, 1, 2]
    assert not any("fixed_params" in t.system_attrs for t in trials)
    # A resumed, finished grid asks for nothing more even with a larger --trials.
    again = InlineBackend()
    sw.run_sweep(sw.load_sweep(sweep.source, trials=10), tmp_path / "sweep", backend=again)
    assert again.submitted == []


def test_sweep_without_optuna_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sweep", str(write_sweep(tmp_path, SMALL))])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("gymlab: error:") and 'pip install "gymlab[sweep]"' in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.needs("sweep")
def test_ctrl_c_while_the_summary_is_written_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "make_backend", lambda *args: InlineBackend())
    monkeypatch.setattr(driver, "write_summary", interrupted)
    data = {**SMALL, "space": {"learning_rate": [0.5]}}
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sweep", str(write_sweep(tmp_path, data)), "--run-dir", str(tmp_path / "sweep")])
    assert exit_.value.code == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("gymlab: interrupted") and "resume with the same command" in err
    assert len(err.splitlines()) == 1


@pytest.mark.slow
@pytest.mark.needs("sweep")
def test_ctrl_c_during_a_sweep_exits_130_with_one_line(tmp_path: Path) -> None:
    data = {**TAXI, "base": {**TAXI["base"], "steps": 2_000_000, "eval_every": 1_000_000}}
    data["space"] = {"learning_rate": [0.5]}
    path = write_sweep(tmp_path, data)
    folder = tmp_path / "sweep"
    command = [sys.executable, "-m", "gymlab", "sweep", str(path), "--run-dir", str(folder), "--max-concurrent", "1"]
    proc = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not list(folder.glob("trial-0000-s0/events.out.tfevents.*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)  # as a Ctrl-C in the terminal: the driver and its workers
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().startswith("gymlab: interrupted") and len(err.strip().splitlines()) == 1
    assert (folder / "trial-0000-s0" / "checkpoints" / "last.pt").is_file()  # the run stopped at a checkpoint
    assert (folder / "summary.md").is_file()


# ---- hostile sweep files and folders (each refused in one line, before anything is written) --------

# The smallest sweep that trains: 100 steps of tabular Q on FrozenLake, one grid point, one seed.
TINY: dict[str, Any] = {
    "agent": "tabular_q",
    "env": "FrozenLake-v1",
    "base": {"steps": 100, "eval_every": 0, "eval_episodes": 1, "checkpoint_every": 0},
    "method": "grid",
    "space": {"learning_rate": [0.5]},
    "seeds": 1,
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # 1. Every number is taken as written: a boolean is not a number, text is not a number.
        ({"seeds": True}, "'seeds' = True: .*a boolean is not a number"),
        ({"seeds": "2"}, "'seeds' = '2': .*text is not a number"),
        ({"seeds": [0, True]}, "'seeds' = .*a boolean is not a number"),
        ({"trials": True}, "'trials' = True"),
        ({"trials": "3"}, "'trials' = '3'"),
        ({"max_concurrent": True}, "'max_concurrent' = True"),
        ({"sampler_seed": False}, "'sampler_seed' = False"),
        ({"gpus_per_run": True}, "'gpus_per_run' = True"),
        ({"pruning": {"pruner": "median", "every": True}}, "'pruning.every' = True"),
        ({"pruning": {"warmup": "10"}}, "'pruning.warmup' = '10'"),
        ({"pruning": {"startup_trials": False}}, "'pruning.startup_trials' = False"),
        ({"method": "tpe", "space": {"gamma": {"uniform": ["0.5", "0.9"]}}}, "'space.gamma' = .*text is not a number"),
        ({"method": "tpe", "space": {"steps": {"int": [False, 100]}}}, "'space.steps' = .*a boolean is not a number"),
        ({"method": "tpe", "space": {"gamma": {"kind": "uniform", "low": True, "high": 0.9}}}, "'space.gamma.low'"),
        ({"method": "tpe", "space": {"gamma": {"uniform": [0.5, float("inf")]}}}, "'space.gamma' = .*finite"),
        # 4. Seeds are bounded as --seeds is: at most 1,000 runs a trial, each seed from 0 to 2**32-1.
        ({"seeds": 1_000_000_000}, "'seeds' = 1000000000: .*at most 1,000"),
        ({"seeds": list(range(1001))}, "'seeds' = .*at most 1,000"),
        ({"seeds": [2**32]}, "'seeds' = .*4,294,967,295"),
        ({"seeds": [-1]}, "'seeds' = .*4,294,967,295"),
        ({"seeds": 0}, "'seeds' = 0"),
        ({"seeds": []}, "'seeds' = \\[\\]"),
        ({"seeds": [1, 1]}, "distinct"),
        # 5. and 6. The file's bounds are the command line's.
        ({"max_concurrent": 100_000}, "'max_concurrent' = 100000: .*256"),
        ({"trials": 100_001}, "'trials' = 100001: .*100000"),
        ({"sampler_seed": 99999999999999999999}, "'sampler_seed' = .*4294967295"),
        ({"sampler_seed": 2**32}, "'sampler_seed' = 4294967296"),
        # 2. A name is one folder under runs/sweeps.
        ({"name": "../../escaped"}, "'name' = '../../escaped': .*one folder name"),
        ({"name": "/tmp/abs"}, "'name' = '/tmp/abs'"),
        ({"name": "a\\b"}, "'name'"),
        ({"name": ""}, "'name' = ''"),
        ({"name": "."}, "'name' = '.'"),
        ({"name": ".."}, "'name' = '..'"),
        ({"name": 5}, "'name' = 5"),
        # 3. One key, one column: two spellings of the same key are refused, naming both.
        ({"space": {"gamma": [0.9], "hparams.gamma": [0.5]}}, "'gamma' and 'hparams.gamma' are the same key"),
        # 9. Each unsearchable key with its own reason.
        ({"space": {"agent": ["dqn"]}}, "'agent' cannot be searched: one sweep is one agent on one env"),
        ({"space": {"env": ["Taxi-v4"]}}, "'env' cannot be searched: one sweep is one agent on one env"),
        ({"space": {"seed": [1, 2]}}, "'seed' cannot be searched: seeds are set by `seeds:`"),
        ({"space": {"hparams": [None]}}, "'hparams' cannot be searched: not as a whole"),
    ],
)
def test_hostile_sweep_files_are_refused_naming_the_key(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(GymlabError, match=message) as refused:
        sw.load_sweep(write_sweep(tmp_path, {**TINY, **change}))
    assert "\n" not in str(refused.value)


def test_sweep_file_values_within_bounds_are_kept(tmp_path: Path) -> None:
    data = {**TINY, "seeds": [0, 2**32 - 1], "trials": 100_000, "max_concurrent": 256, "sampler_seed": 2**32 - 1}
    sweep = sw.load_sweep(write_sweep(tmp_path, {**data, "name": "ok.name-1", "gpus_per_run": 0}))
    assert sweep.spec.seed_list() == [0, 2**32 - 1] and sweep.max_concurrent == 256 and sweep.name == "ok.name-1"
    assert sw.load_sweep(write_sweep(tmp_path, {**TINY, "seeds": 1000})).spec.seed_list()[-1] == 999
    ranged = {**TINY, "method": "tpe", "space": {"steps": {"int": [50, 100.0]}, "gamma": {"uniform": [0, 1]}}}
    assert sw.load_sweep(write_sweep(tmp_path, ranged)).space["steps"].corners() == [50, 100]


def sweep_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``gymlab sweep ARGV`` in this process, from ``tmp_path``: (exit code, stdout, stderr)."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    code = 0
    try:
        cli.main(["sweep", *argv])
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        os.chdir(cwd)
    out, err = capsys.readouterr()
    return code, out, err


def refused_in_one_line(code: int, err: str, message: str) -> None:
    assert code == 2, err
    assert err.startswith("gymlab: error:") and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err


@pytest.mark.needs("sweep")
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sampler_seed": 99999999999999999999}, "'sampler_seed'"),
        ({"name": "../../escaped"}, "'name'"),
        ({"name": "ABSOLUTE"}, "'name'"),  # an absolute path under tmp_path
        ({"seeds": 1_000_000_000}, "'seeds'"),
    ],
)
def test_cli_refuses_a_hostile_sweep_file_before_writing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], message: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    if change.get("name") == "ABSOLUTE":
        change = {"name": str(tmp_path / "abs")}
    path = write_sweep(tmp_path, {**TINY, **change})
    code, out, err = sweep_cli(work, capsys, str(path))
    refused_in_one_line(code, err, message)
    assert out == "" and list(work.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taxi.yaml", "work"]


@pytest.mark.needs("sweep")
def test_more_trials_than_the_grid_holds_run_the_grid_and_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # stop 41: --trials 20 on a grid of 2 ran 2 without a word
    path = write_sweep(tmp_path, {**TINY, "space": {"learning_rate": [0.1, 0.2]}})
    assert sw.load_sweep(path, trials=20).trials == 2 and sw.load_sweep(path, trials=2).asked_trials is None
    code, out, err = sweep_cli(tmp_path, capsys, str(path), "--trials", "20", "--run-dir", "sw")
    assert code == 0, err
    assert "grid search, 2 trials (the whole grid; 20 asked); folder" in out.splitlines()[0], out


@pytest.mark.needs("sweep")
def test_a_reader_that_goes_away_ends_the_output_not_the_sweep(tmp_path: Path) -> None:
    """`gymlab sweep FILE | head -1`: a trial's line hit the broken pipe, and the sweep stopped there with exit 0."""
    path = write_sweep(tmp_path, {**TINY, "space": {"learning_rate": [0.1, 0.2, 0.3]}})
    code, err = read_first_line_then_go("sweep", path, "--run-dir", "sw", "--max-concurrent", "1", cwd=tmp_path)
    assert code == 0 and err == "", err
    rows = (tmp_path / "sw" / "summary.csv").read_text().splitlines()
    assert len(rows) == 4 and all(",complete," in row for row in rows[1:]), rows


@pytest.mark.needs("sweep")
@pytest.mark.parametrize("kind", ["run", "user"])
def test_run_dir_that_is_not_a_sweep_folder_is_refused_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    folder = tmp_path / "existing"
    if kind == "run":  # a training run's folder
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "config.yaml").write_text("agent: tabular_q\n")
        (folder / "checkpoints" / "last.pt").write_bytes(b"state")
    else:  # any folder of the user's
        folder.mkdir()
        (folder / "notes.txt").write_text("mine\n")
    before = sorted((p.relative_to(folder), p.read_bytes() if p.is_file() else b"") for p in folder.rglob("*"))
    sweep = sw.load_sweep(write_sweep(tmp_path, TINY))
    with pytest.raises(GymlabError, match="exists and is not a sweep folder; choose a new --run-dir"):
        sw.run_sweep(sweep, folder, backend=InlineBackend())
    code, out, err = sweep_cli(tmp_path, capsys, str(sweep.source), "--run-dir", str(folder))
    refused_in_one_line(code, err, "exists and is not a sweep folder; choose a new --run-dir")
    assert out == "", out  # the refusal is the command's only line: no start line before it
    after = sorted((p.relative_to(folder), p.read_bytes() if p.is_file() else b"") for p in folder.rglob("*"))
    assert after == before


@pytest.mark.needs("sweep")
def test_an_empty_existing_folder_may_hold_a_sweep_and_a_sweep_folder_is_resumed(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    sweep = sw.load_sweep(write_sweep(tmp_path, TINY))
    first = sw.run_sweep(sweep, folder, backend=InlineBackend())
    assert [r.state for r in first.rows] == ["complete"] and (folder / driver.SPEC_FILE).is_file()
    again = InlineBackend()
    second = sw.run_sweep(sweep, folder, backend=again)  # its own sweep folder: resumed, nothing redone
    assert second.resumed == 1 and again.submitted == []


@pytest.mark.needs("sweep")
def test_a_folder_left_with_only_the_lock_is_still_usable(tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / LOCK_FILE).write_text("123\n")  # a first attempt stopped between the lock and sweep.yaml
    result = sw.run_sweep(sw.load_sweep(write_sweep(tmp_path, TINY)), folder, backend=InlineBackend())
    assert [r.state for r in result.rows] == ["complete"]


@pytest.mark.needs("sweep")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backend", "foo"], "unknown backend 'foo': choose local or ray"),
        (["--address", "auto"], "--address names a Ray cluster: use it with --backend ray"),
    ],
)
def test_a_bad_backend_is_refused_before_the_sweep_folder_is_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    sweep = sw.load_sweep(write_sweep(tmp_path, TINY))
    sw.run_sweep(sweep, tmp_path / "done", backend=InlineBackend())  # an existing sweep folder, as for a resume
    before = sorted(p.name for p in (tmp_path / "done").iterdir())
    for folder in (tmp_path / "new", tmp_path / "done"):
        code, out, err = sweep_cli(tmp_path, capsys, str(sweep.source), "--run-dir", str(folder), *argv)
        refused_in_one_line(code, err, re.escape(message))
        assert "resuming" not in out
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == before
    with pytest.raises(GymlabError, match=re.escape(message)):
        sw.run_sweep(
            sweep,
            tmp_path / "new",
            backend="foo" if "foo" in argv else "local",
            address="auto" if "auto" in argv else None,
        )
    assert not (tmp_path / "new").exists()


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-trial sweep run to its end: (sweep file, sweep folder)."""
    tmp = tmp_path_factory.mktemp("sweep")
    data = {**TAXI, "base": {**TAXI["base"], "steps": 500, "eval_every": 0, "eval_episodes": 1}}
    data["space"] = {"learning_rate": [0.5]}
    path = write_sweep(tmp, data)
    sw.run_sweep(sw.load_sweep(path, max_concurrent=1), tmp / "sweep")
    return path, tmp / "sweep"


@pytest.mark.needs("sweep")
@pytest.mark.parametrize("damage", ["garbage-appended", "truncated", "folder", "dev-zero"])
def test_a_damaged_journal_is_one_line(finished_sweep: tuple[Path, Path], tmp_path: Path, damage: str) -> None:
    """Each was a traceback (JSONDecodeError, Optuna's 'Should not reach', IsADirectoryError) or, for a link to
    /dev/zero, a read without end until the kernel killed the process."""
    path, folder = finished_sweep
    copy = tmp_path / "sweep"
    shutil.copytree(folder, copy)
    (copy / LOCK_FILE).unlink(missing_ok=True)
    journal = copy / sw.study.JOURNAL_FILE
    if damage == "garbage-appended":
        journal.write_text(journal.read_text() + "garbage{\n")
    elif damage == "truncated":
        journal.write_bytes(journal.read_bytes()[:100])
    else:
        journal.unlink()
        journal.mkdir() if damage == "folder" else journal.symlink_to("/dev/zero")
    with pytest.raises(GymlabError, match=r"journal\.log \(every trial so far\) is damaged") as info:
        sw.run_sweep(sw.load_sweep(path, max_concurrent=1), copy)
    assert "\n" not in str(info.value) and "--run-dir" in str(info.value)
