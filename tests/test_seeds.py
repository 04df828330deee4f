"""Several seeds at once: `train --seeds SPEC --workers K` gives one complete run folder per seed,
and the same results as running those seeds one by one."""

import shlex

import numpy as np
import pytest
import yaml
from conftest import config_of, run_cli

from gymlab import runs
from gymlab.agent import load_agent_class
from gymlab.checkpoint import Checkpoint
from gymlab.config import validate
from gymlab.errors import GymlabError
from gymlab.loop import train
from gymlab.multirun import parse_seeds
from gymlab.parallel import run_all
from gymlab.runner import RunSpec

CONFIG = {
    "agent": "tabular_q",
    "env": "Taxi-v4",
    "steps": 3000,
    "eval_every": 1000,
    "eval_episodes": 20,
    "log_every": 500,
    "checkpoint_every": 0,
    "hparams": {"learning_rate": 0.3},
}


@pytest.mark.parametrize(
    ("spec", "seeds"),
    [("0-4", [0, 1, 2, 3, 4]), ("0,3,7", [0, 3, 7]), ("7", [7]), ("0-2, 9", [0, 1, 2, 9]), (" 0 - 1 ", [0, 1])],
)
def test_parse_seeds(spec, seeds):
    assert parse_seeds(spec) == seeds


@pytest.mark.parametrize("spec", ["", "a", "-1", "0-", "1.5", "\u0663", "0-\u0663", "\u00b2", "+1", "0x1"])
def test_parse_seeds_rejects_nonsense(spec):
    # ASCII digits only: int() would also read the Arabic-Indic digit three as 3.
    with pytest.raises(GymlabError, match="expected seeds >= 0 like 0-4"):
        parse_seeds(spec)


@pytest.mark.parametrize(("spec", "said"), [("3-1", "the range 3-1 runs backwards; write 1-3")])
def test_a_backwards_range_is_named(spec, said):
    with pytest.raises(GymlabError, match=said):
        parse_seeds(spec)


@pytest.mark.parametrize(("spec", "seed"), [("1,1", 1), ("1,01", 1), ("0-4,2", 2), ("1,1,0-1", 1)])
def test_a_seed_named_twice_is_refused(spec, seed):
    # Two runs of one seed are one run twice; the duplicate used to be dropped without a word.
    with pytest.raises(GymlabError, match=f"names seed {seed} twice; name each seed once"):
        parse_seeds(spec)


def assert_complete(folder, seed):
    assert yaml.safe_load((folder / "config.yaml").read_text())["seed"] == seed
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    assert (folder / "checkpoints" / "last.pt").is_file() and (folder / "checkpoints" / "best.pt").is_file()


def test_parallel_seeds_match_the_same_seeds_run_one_by_one(tmp_path):
    seeds = [0, 1, 2]
    specs = [RunSpec(config_of({**CONFIG, "seed": s}), tmp_path / "parallel" / f"s{s}", tag=s) for s in seeds]
    results = run_all(specs, workers=2)
    assert [(r.status, r.error, r.spec.tag) for r in results] == [("finished", None, s) for s in seeds]

    cls = load_agent_class("tabular_q")
    for seed, result in zip(seeds, results, strict=True):
        assert result.run_dir == tmp_path / "parallel" / f"s{seed}"
        assert_complete(result.run_dir, seed)
        config = validate({**CONFIG, "seed": seed}, cls)
        alone = train(config, runs.RunFolder.create(config, tmp_path / "alone" / f"s{seed}").path)
        assert (result.step, result.last_eval, result.best_eval) == (alone.step, alone.last_eval, alone.best_eval)
        q_parallel = Checkpoint.read(tmp_path / "parallel" / f"s{seed}" / "checkpoints" / "last.pt").agent_state[
            "policy"
        ]["q"]
        assert alone.checkpoint is not None
        q_alone = Checkpoint.read(alone.checkpoint).agent_state["policy"]["q"]
        np.testing.assert_array_equal(q_parallel, q_alone)
    # Different seeds really are different runs.
    folders = [tmp_path / "parallel" / f"s{s}" for s in seeds]
    tables = [Checkpoint.read(f / "checkpoints" / "last.pt").agent_state["policy"]["q"] for f in folders]
    assert not np.array_equal(tables[0], tables[1]) and not np.array_equal(tables[1], tables[2])


def gymlab(*args, cwd):
    return run_cli(*args, cwd=cwd)


def test_cli_seeds_with_run_dir_make_one_folder_per_seed(tmp_path):
    args = [
        "train",
        "tabular_q",
        "Taxi-v4",
        "--seeds",
        "0-1",
        "--workers",
        "2",
        "--run-dir",
        "many",
        "--steps",
        "2000",
        "eval_every=1000",
        "eval_episodes=5",
        "log_every=500",
    ]
    proc = gymlab(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for seed in (0, 1):
        assert_complete(tmp_path / "many" / f"s{seed}", seed)
        assert f"seed {seed}: done: 2,000 steps" in proc.stdout
    assert "compare them: gymlab compare many" in proc.stdout
    # Running it again would overwrite: refused before anything starts.
    again = gymlab(*args, cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already exist" in again.stderr


def test_cli_seeds_default_folders_are_distinct(tmp_path):
    proc = gymlab(
        "train",
        "tabular_q",
        "FrozenLake-v1",
        "--seeds",
        "3,5",
        "--steps",
        "1000",
        "eval_every=500",
        "eval_episodes=5",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    folders = sorted((tmp_path / "runs" / "FrozenLake-v1" / "tabular_q").iterdir())
    assert [f.name.rsplit("-", 1)[1] for f in folders] == ["s3", "s5"]
    # the command it suggests compares these two runs, not all of runs/ (stop 41)
    suggested = shlex.split(proc.stdout.split("compare them: ")[1].splitlines()[0])
    assert suggested[:2] == ["gymlab", "compare"] and sorted(tmp_path / p for p in suggested[2:]) == folders
    for folder, seed in zip(folders, (3, 5), strict=True):
        assert_complete(folder, seed)


def test_cli_seeds_conflicts_are_one_line_errors(tmp_path):
    for extra in (["--seed", "1"], ["--seeds", "x"]):
        proc = gymlab("train", "tabular_q", "FrozenLake-v1", "--seeds", "0-1", *extra, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "--seed" in proc.stderr
    assert not (tmp_path / "runs").exists()
