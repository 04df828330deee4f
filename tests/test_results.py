"""benchmarks/results.py: the results table's goal checks, its rows, figures, reuse and retraining."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import config_of

from gymlab import runner
from gymlab.config import configs_root

REPO = Path(__file__).resolve().parents[1]


def _load_results() -> Any:
    spec = importlib.util.spec_from_file_location("gymlab_bench_results", REPO / "benchmarks" / "results.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


results = _load_results()


# --- the goal checks, on made-up numbers ------------------------------------------------------------


def test_goal_iqm_against_the_published_figure() -> None:
    assert results.goal_iqm(-70.0, -76.6).ok
    assert results.goal_iqm(500.0, 500.0).ok
    missed = results.goal_iqm(480.0, 500.0)
    assert not missed.ok and missed.cell().startswith("✗") and "480 < published 500" in missed.cell()


def test_goal_final_policy_needs_four_of_five_seeds() -> None:
    assert results.goal_final_policy([500, 500, 480, 475, 102], 5).ok
    missed = results.goal_final_policy([500, 500, 500, 195, 102], 5)
    assert not missed.ok and "3/5 seeds (need 4)" in missed.text
    assert not results.goal_final_policy([500, 500, 500, 102], 5).ok  # a failed seed counts as missing
    assert results.goal_final_policy([500, 500], 2).ok


def test_goal_steps_needs_half_the_reference() -> None:
    assert results.goal_steps(40_000.0, 105_000.0).ok
    assert results.goal_steps(52_500.0, 105_000.0).ok
    assert not results.goal_steps(60_000.0, 105_000.0).ok
    assert not results.goal_steps(None, 105_000.0).ok


def test_median_steps_counts_unreached_seeds() -> None:
    assert results.median_steps([10.0, 20.0, None]) == 20.0
    assert results.median_steps([10.0, None, None]) is None
    assert results.median_steps([]) is None


def test_gpu_presets_are_skipped_with_their_reason() -> None:
    presets = {p.name: p for p in results.find_presets(configs_root(), ["seqgan/SeqGen-v0", "dqn/Pong*"])}
    assert set(presets) == {"seqgan/SeqGen-v0", "dqn/PongNoFrameskip-v4", "dqn/PongNoFrameskip-v4-fast"}
    assert presets["dqn/PongNoFrameskip-v4-fast"].env == "PongNoFrameskip-v4"  # read against RL Zoo's figure
    for preset in presets.values():
        results.resolve_preset(preset, [0], smoke=True)
        reason = results.skip_reason(preset, include_gpu=False, gpu=False)
        assert reason is not None and "--include-gpu" in reason
    assert "no GPU" in results.skip_reason(presets["seqgan/SeqGen-v0"], include_gpu=True, gpu=False)


# --- the whole command on a tiny setting ------------------------------------------------------------


def _last_checkpoints(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.glob("*/*/s*/checkpoints/last.pt"))}


def test_smoke_table_reuse_and_retrain(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    for name in ("tabular_q/Taxi-v4.yaml", "reinforce/CartPole-v1.yaml"):
        (configs / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(configs_root() / name, configs / name)
    root, out = tmp_path / "runs", tmp_path / "docs" / "results.md"
    argv = ["--smoke", "--seeds", "2", "--workers", "1", "--episodes", "2"]
    argv += ["--configs", str(configs), "--root", str(root), "--out", str(out)]

    def table() -> list[Any]:
        return results.run(results.parse_args(argv), "python benchmarks/results.py --smoke")

    # Seed 1 of Taxi was interrupted half-way (a checkpoint at step 200 of 400): the table resumes it.
    taxi_preset = results.find_presets(configs, ["tabular_q/Taxi-v4"])[0]
    results.resolve_preset(taxi_preset, [0, 1], smoke=True)
    half = runner.run(
        runner.RunSpec(
            config=config_of(taxi_preset.configs[1]), run_dir=root / "tabular_q" / "Taxi-v4" / "s1", stop_at=200
        )
    )
    assert half.step == 200

    rows = table()
    assert [r.preset.name for r in rows] == ["reinforce/CartPole-v1", "tabular_q/Taxi-v4"]
    actions = {(row.preset.name, run.seed): run.action for row in rows for run in row.done}
    assert actions.pop(("tabular_q/Taxi-v4", 1)) == "resumed"
    assert set(actions.values()) == {"trained"}
    for row in rows:  # each run's cache: its wall time, the commit that trained it, both evaluations
        for run in row.done:
            cache = results.read_sidecar(run.sidecar)
            assert cache["train_seconds"] > 0 and len(cache["commits"]) == 1
            assert set(cache["eval"]) == {"last", "best"}
    text = out.read_text()
    lines = [line for line in text.splitlines() if line.startswith("| reinforce |") or line.startswith("| tabular_q |")]
    assert len(lines) == 2
    assert lines[0].startswith("| reinforce | CartPole-v1 | 400 | 2/2 | ")
    assert "PyTorch-examples" in lines[0] and "✗ 475 not reached" in lines[0]  # a 400-step run: goal missed
    assert "(to 8; 0/2 seeds reach it)" in lines[1]
    assert "python benchmarks/results.py --smoke" in text and "Load average" in text
    for env in ("CartPole-v1", "Taxi-v4"):
        png = out.parent / "results" / f"{env}.png"
        assert png.stat().st_size > 1000 and f"](results/{env}.png)" in text
    first = _last_checkpoints(root)
    assert len(first) == 4

    # A run trained before a config key existed (here eval_max_steps) is read by today's model, which gives
    # the key its default, and vectorization "auto" is read as what it resolves to: still the preset's run, reused.
    old_config = root / "reinforce" / "CartPole-v1" / "s0" / "config.yaml"
    data = yaml.safe_load(old_config.read_text())
    del data["eval_max_steps"]
    data["vectorization"] = "sync"  # the default before "auto" existed, which resolves to sync for CartPole
    old_config.write_text(yaml.safe_dump(data))
    rows = table()  # nothing changed: every finished run is reused, its evaluations come from the cache
    assert all(run.action == "reused" for row in rows for run in row.done)
    assert _last_checkpoints(root) == first

    taxi = configs / "tabular_q" / "Taxi-v4.yaml"
    data = yaml.safe_load(taxi.read_text())
    data["hparams"]["learning_rate"] = 0.25
    taxi.write_text(yaml.safe_dump(data))
    rows = table()  # the Taxi preset changed: its runs are retrained, never reused; CartPole's are
    actions = {row.preset.name: {run.action for run in row.done} for row in rows}
    assert actions == {"reinforce/CartPole-v1": {"reused"}, "tabular_q/Taxi-v4": {"trained"}}
    now = _last_checkpoints(root)
    assert {k: v for k, v in now.items() if "Taxi" not in k} == {k: v for k, v in first.items() if "Taxi" not in k}
    assert all(now[k] != first[k] for k in now if "Taxi" in k)
    assert yaml.safe_load((root / "tabular_q" / "Taxi-v4" / "s0" / "config.yaml").read_text())["hparams"][
        "learning_rate"
    ] == pytest.approx(0.25)
    assert len(list((root / "_replaced" / "tabular_q" / "Taxi-v4").iterdir())) == 2

    # --only trains the matching presets; the others are shown from finished runs of their config, never
    # trained or moved: once CartPole's preset changes, its row says "not run" and its old runs stay put.
    cartpole = configs / "reinforce" / "CartPole-v1.yaml"
    data = yaml.safe_load(cartpole.read_text())
    data["hparams"]["learning_rate"] = 0.02
    cartpole.write_text(yaml.safe_dump(data))
    argv += ["--only", "tabular_q/*"]
    rows = table()
    assert {row.preset.name: row.not_run for row in rows} == {"reinforce/CartPole-v1": True, "tabular_q/Taxi-v4": False}
    assert _last_checkpoints(root) == now
    assert "| reinforce | CartPole-v1 | 400 | — | not run (outside --only" in out.read_text()
