"""`compare` on synthetic TensorBoard event files whose every number is computed here by hand."""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import gymlab_inprocess
from PIL import Image
from tensorboard.summary.writer import event_file_writer
from torch.utils.tensorboard import SummaryWriter

from gymlab import compare as cmp
from gymlab import curves, report
from gymlab import tblog as tb
from gymlab.checkpoint import Checkpoint
from gymlab.config import slug
from gymlab.errors import GymlabError

METRIC = tb.EVAL_RETURN


def write_run(folder, config, points, metric=METRIC, purge_step=None):
    """A run folder with config.yaml and an event file holding ``points`` = [(step, value)]."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    tb.wait_to_sort_last(folder)  # as the run logger does: a second file must sort after the first
    writer = SummaryWriter(str(folder), purge_step=purge_step)
    for step, value in points:
        writer.add_scalar(metric, value, step)
        writer.add_scalar("train/loss", -value, step)
    writer.close()
    return folder


def config(agent="dqn", seed=0, lr=0.001, env="CartPole-v1", **extra):
    return {"agent": agent, "env": env, "seed": seed, "steps": 30, "hparams": {"learning_rate": lr}, **extra}


# Group A: dqn, lr 0.001, 4 seeds logged every 10 steps up to 30.
A = {
    0: [0.0, 1.0, 2.0, 3.0],
    1: [0.0, 2.0, 4.0, 6.0],
    2: [1.0, 3.0, 5.0, 7.0],
    3: [0.0, 0.0, 0.0, 14.0],
}
# Group B: dqn, lr 0.01, 2 seeds with different logging intervals and lengths.
B0 = [(0, 0.0), (10, 4.0), (20, 8.0), (30, 8.0)]
B1 = [(0, 2.0), (15, 5.0), (30, 2.0), (45, 9.0)]  # goes on to step 45


@pytest.fixture
def synthetic(tmp_path):
    root = tmp_path / "runs"
    for seed, values in A.items():
        points = list(zip([0, 10, 20, 30], values, strict=True))
        write_run(root / "a" / f"s{seed}", config(seed=seed, eval_every=10), points)
    # Differ from A in the learning rate, and from each other only in bookkeeping keys that pool.
    write_run(root / "b" / "s0", config(seed=0, lr=0.01, eval_every=10), B0)
    write_run(root / "b" / "s1", config(seed=1, lr=0.01, eval_every=15, device="cuda"), B1)
    return root


def exact_bootstrap_percentiles(values, q=(2.5, 97.5)):
    """Percentiles of the exact bootstrap distribution of the mean (all n^n equally likely draws)."""
    n = len(values)
    means = [np.mean([values[i] for i in draw]) for draw in itertools.product(range(n), repeat=n)]
    return np.percentile(means, q)


def test_groups_mean_band_and_table_match_hand_computation(synthetic, tmp_path):
    out = tmp_path / "plot.png"
    result = cmp.compare([str(synthetic)], threshold=4.0, out=out)
    by_label = {g.label: g for g in result.groups}
    a = by_label["dqn · CartPole-v1 · learning_rate=0.001"]
    b = by_label["dqn · CartPole-v1 · learning_rate=0.01"]
    assert (a.n, b.n) == (4, 2)

    # Group A: same steps for every seed, so the mean is the plain average.
    np.testing.assert_array_equal(a.steps, [0, 10, 20, 30])
    np.testing.assert_allclose(a.mean, [0.25, 1.5, 2.75, 7.5])
    # Band: the exact bootstrap distribution (4^4 draws), to the resampling error of 2000 draws.
    for i in range(4):
        lo, hi = exact_bootstrap_percentiles([A[s][i] for s in range(4)])
        assert a.low[i] == pytest.approx(lo, abs=0.3) and a.high[i] == pytest.approx(hi, abs=0.3)
    # Finals 3, 6, 7, 14: mean 7.5; IQM drops 3 and 14 -> (6 + 7) / 2.
    assert a.final_mean == 7.5 and a.final_iqm == 6.5
    # AUC per step: trapezoids (0.25+1.5)/2*10 + (1.5+2.75)/2*10 + (2.75+7.5)/2*10 = 81.25 over 30 steps.
    assert a.auc == pytest.approx(81.25 / 30)
    # 4.0 is crossed between step 20 (2.75) and 30 (7.5): 20 + (4 - 2.75) / (7.5 - 2.75) * 10.
    assert a.to_threshold == pytest.approx(20 + 1.25 / 4.75 * 10)

    # Group B: logged at 0/10/20/30 and 0/15/30/45; aligned on the union of steps inside the range
    # both reach (0..30); step 45 of seed 1 is beyond it and said so, not silently dropped.
    np.testing.assert_array_equal(b.steps, [0, 10, 15, 20, 30])
    b0 = [0.0, 4.0, 6.0, 8.0, 8.0]  # 15 is halfway between 4 (step 10) and 8 (step 20)
    b1 = [2.0, 4.0, 5.0, 4.0, 2.0]  # 10 is 2/3 of the way from 2 to 5; 20 is 1/3 from 5 to 2
    np.testing.assert_allclose(b.curves, [b0, b1])
    np.testing.assert_allclose(b.mean, [1.0, 4.0, 5.5, 6.0, 5.0])
    # With two seeds each resample is {x,x}, {x,y} or {y,y}, a quarter of the mass at each end:
    # the 95% band is exactly [min, max] of the two seeds.
    np.testing.assert_allclose(b.low, np.minimum(b0, b1))
    np.testing.assert_allclose(b.high, np.maximum(b0, b1))
    assert (b.reach, b.longest) == (30, 45)
    assert any("go on to 45" in note for note in b.notes)
    assert b.final_ci == (2.0, 8.0) and b.final_mean == 5.0 and b.final_iqm == 5.0
    assert b.to_threshold == pytest.approx(10.0)  # the mean is exactly 4.0 at step 10
    area = (1 + 4) / 2 * 10 + (4 + 5.5) / 2 * 5 + (5.5 + 6) / 2 * 5 + (6 + 5) / 2 * 10
    assert b.auc == pytest.approx(area / 30)

    # The plot draws exactly these numbers: each mean line, and a band between low and high.
    fig = cmp.plot(result, out)
    ax = fig.axes[0]
    lines = {line.get_label().split("  (")[0]: line for line in ax.lines}
    np.testing.assert_allclose(lines[a.label].get_ydata(), a.mean)
    np.testing.assert_allclose(lines[b.label].get_xdata(), b.steps)
    assert "2 seeds, to 30, longest 45" in lines[b.label].get_label()
    band = ax.collections[1].get_paths()[0].vertices  # group B's fill_between polygon
    for x, lo, hi in zip(b.steps, b.low, b.high, strict=True):
        ys = band[np.isclose(band[:, 0], x), 1]
        assert np.isclose(ys, lo).any() and np.isclose(ys, hi).any()
    assert ax.get_xlabel() == "env steps" and "evaluation return" in ax.get_ylabel()
    image = np.asarray(Image.open(out))
    assert image.shape[0] > 400 and image.std() > 10

    # The printed table carries the same numbers.
    table = cmp.format_table(result)
    row_b = next(line for line in table.splitlines() if line.startswith(b.label))
    for cell in ("2", "30 (longest 45)", "5", "[2, 8]", f"{area / 30:.4g}", "10"):
        assert cell in row_b, (cell, row_b)
    assert "steps to 4" in table.splitlines()[0]


def test_not_reaching_the_threshold_is_said(synthetic):
    result = cmp.compare([str(synthetic)], threshold=100.0)
    assert all(g.to_threshold is None for g in result.groups)
    assert cmp.format_table(result).count("not reached") == 2


def test_grouping_by_agent_pools_every_config(synthetic, tmp_path):
    write_run(tmp_path / "runs" / "c" / "s0", config(agent="ppo"), [(0, 1.0), (30, 2.0)])
    result = cmp.compare([str(synthetic)], by="agent")
    assert {(g.label, g.n) for g in result.groups} == {("dqn", 6), ("ppo", 1)}
    ppo = next(g for g in result.groups if g.label == "ppo")
    np.testing.assert_array_equal(ppo.low, ppo.mean)  # one seed: no spread to show


def test_globs_and_paths_select_runs(synthetic):
    runs = curves.find_runs([str(synthetic / "a" / "s*"), str(synthetic / "b" / "s0")])
    assert [r.name for r in runs] == ["s0", "s1", "s2", "s3", "s0"]
    with pytest.raises(GymlabError, match="matches nothing"):
        curves.find_runs([str(synthetic / "zz*")])


def test_a_run_named_twice_counts_once(synthetic, monkeypatch):
    # stop 32: 'a' and '$PWD/a' (or a glob and a path to the same run) pooled as two seeds, silently
    monkeypatch.chdir(synthetic)
    named = ["a/s0", str(synthetic / "a" / "s0"), "./a/s*", "../runs/b/s0"]
    assert [r.resolve() for r in curves.find_runs(named)] == [
        *(synthetic / "a" / f"s{i}" for i in range(4)),
        synthetic / "b" / "s0",
    ]


def test_runs_that_share_no_steps_are_one_line(tmp_path):
    # stop 32: a run that ended before another began logging gave an IndexError traceback from an empty grid
    early = write_run(tmp_path / "early", config(seed=0), [(0, 1.0), (10, 2.0)])
    late = write_run(tmp_path / "late", config(seed=1), [(20, 3.0), (30, 4.0)])
    with pytest.raises(GymlabError, match=r"share no logged steps .*early: steps 0–10; .*late: steps 20–30"):
        cmp.compare([str(early), str(late)])


def test_labels_name_only_the_keys_that_tell_a_configs_peers_apart(tmp_path):
    # stop 32: keys were compared across every group, so a DQN run's label read 'baseline=None' (a REINFORCE key)
    points = [(0, 1.0), (10, 2.0)]
    write_run(tmp_path / "d1", config(lr=0.001), points)
    write_run(tmp_path / "d2", config(lr=0.01), points)
    reinforce = {**config(agent="reinforce"), "hparams": {"baseline": "value"}}
    write_run(tmp_path / "r1", reinforce, points)
    read, _ = curves.load_curves(curves.find_runs([str(tmp_path)]), METRIC)
    groups = cmp.group_curves(read, "config")
    labels = sorted(cmp.group_labels(groups, "config").values())
    assert labels == [
        "dqn · CartPole-v1 · learning_rate=0.001",
        "dqn · CartPole-v1 · learning_rate=0.01",
        "reinforce · CartPole-v1",
    ]


def test_a_folder_without_config_yaml_is_labelled_by_the_hparams_its_events_hold(tmp_path):
    # compare labelled such a folder by its parent folders' names ("x · copied") though the run's HParams
    # summary holds its true config; it is pooled with the seeds of that config as any run with config.yaml
    logged = tmp_path / "copied" / "x"
    logger = tb.RunLogger(logged)
    logger.hparams(config(seed=0, num_envs=4))  # what the loop writes at a run's start
    for step, value in [(0, 1.0), (10, 3.0)]:
        logger.scalars({METRIC: value}, step)
    logger.close()
    assert not (logged / "config.yaml").exists()
    write_run(tmp_path / "kept" / "s1", config(seed=1, num_envs=4), [(0, 3.0), (10, 5.0)])  # the same config
    write_run(tmp_path / "kept" / "other", config(lr=0.01, num_envs=4), [(0, 0.0), (10, 1.0)])
    result = cmp.compare([str(tmp_path)])
    by_label = {g.label: g for g in result.groups}
    assert set(by_label) == {"dqn · CartPole-v1 · learning_rate=0.001", "dqn · CartPole-v1 · learning_rate=0.01"}
    pooled = by_label["dqn · CartPole-v1 · learning_rate=0.001"]
    assert sorted(pooled.runs) == [tmp_path / "copied" / "x", tmp_path / "kept" / "s1"]
    assert pooled.final_mean == 4.0
    assert curves.read_events(logged)[1] == tb.hparams_values(config(seed=0, num_envs=4))  # 4 back as an int


def test_a_metric_no_run_logged_lists_the_available_ones(synthetic):
    with pytest.raises(GymlabError, match=r"no run logged metric 'eval/nope'; available: eval/return_mean, train/loss"):
        cmp.compare([str(synthetic)], metric="eval/nope")


def test_bad_options_are_one_line_errors(synthetic, tmp_path):
    with pytest.raises(GymlabError, match=r"png, \.svg or \.pdf"):
        cmp.compare([str(synthetic)], out=tmp_path / "plot.jpg")
    with pytest.raises(GymlabError, match="--by must be"):
        cmp.compare([str(synthetic)], by="seed")  # type: ignore[arg-type]


@pytest.mark.parametrize("suffix", [".svg", ".pdf"])
def test_plot_format_follows_the_extension(synthetic, tmp_path, suffix):
    out = tmp_path / f"curves{suffix}"
    cmp.compare([str(synthetic)], out=out)
    head = out.read_bytes()[:200]
    assert (b"<svg" in head) if suffix == ".svg" else head.startswith(b"%PDF")


def test_a_resumed_run_reads_without_the_purged_steps(tmp_path):
    """What a killed run logged after its checkpoint is dropped by TensorBoard's purge_step."""
    run = write_run(tmp_path / "r", config(), [(s, float(s)) for s in range(6)])
    write_run(run, config(), [(s, 10.0 * s) for s in range(3, 7)], purge_step=3)
    steps, values = curves.read_scalars(run)[METRIC]
    np.testing.assert_array_equal(steps, range(7))
    np.testing.assert_array_equal(values, [0, 1, 2, 30, 40, 50, 60])


def test_a_run_logger_opened_in_the_same_second_as_the_last_still_purges_it(tmp_path, monkeypatch):
    """TensorBoard reads events files in name order; within one second the name ends in a counter compared
    as text, so the 10th writer of a process sorts before its 9th. The run logger waits a new second."""
    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(9))
    first = tb.RunLogger(tmp_path)
    for step in range(6):
        first.scalars({METRIC: float(step)}, step)
    first.close()
    resumed = tb.RunLogger(tmp_path, purge_step=3)  # the counter's 10: "...10" < "...9"
    for step in range(3, 7):
        resumed.scalars({METRIC: 10.0 * step}, step)
    resumed.close()
    names = sorted(p.name for p in tmp_path.glob("events.out.tfevents.*"))
    assert names[-1].endswith(".10"), names
    steps, values = curves.read_scalars(tmp_path)[METRIC]
    np.testing.assert_array_equal(steps, range(7))
    np.testing.assert_array_equal(values, [0, 1, 2, 30, 40, 50, 60])


def test_config_id_pools_seeds_and_bookkeeping_only():
    base = config(seed=0)
    same = config(seed=3, eval_every=99, device="cuda")
    other = config(lr=0.5)
    assert report.config_id(base) == report.config_id(same) != report.config_id(other)
    assert len(report.config_id(base)) == 8 and "seed" not in report.config_identity(base)


def test_cli_compare_prints_the_table_and_writes_the_plot(synthetic, tmp_path):
    out = tmp_path / "c.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gymlab",
            "compare",
            str(synthetic / "a"),
            str(synthetic / "b"),
            "--out",
            str(out),
            "--threshold",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "final IQM" in proc.stdout and "learning_rate=0.01" in proc.stdout and out.is_file()
    assert "note: " in proc.stdout and "go on to 45" in proc.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "gymlab", "compare", str(synthetic), "--metric", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "available: " in bad.stderr


def hparams_session_groups(logdir):
    """TensorBoard's own HParams backend, asked what its table shows: {group: ([sessions], {metric: mean})}."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    ctx = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), multiplexer=mux, data_provider=provider))
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0,
        slice_size=100,
        allowed_statuses=[api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_RUNNING],
        aggregation_type=api_pb2.AGGREGATION_AVG,
    )
    response = list_session_groups.Handler(context.RequestContext(), ctx, "", request).run()
    return {
        g.name: (sorted(s.name for s in g.sessions), {m.name.tag: m.value for m in g.metric_values})
        for g in response.session_groups
    }


def test_tensorboard_groups_a_configs_seeds_without_writing_any_curve_twice(tmp_path):
    """The HParams tab pools the seeds of one config (as compare --by config does); no scalar is mirrored."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gymlab import runs
    from gymlab.agent import load_agent_class
    from gymlab.config import validate
    from gymlab.loop import train

    def run(name, seed, gamma):
        data = {"agent": "tabular_q", "env": "Taxi-v4", "steps": 1000, "seed": seed, "hparams": {"gamma": gamma}}
        data |= {"eval_every": 500, "eval_episodes": 2, "log_every": 250}
        config = validate(data, load_agent_class("tabular_q"))
        folder = runs.RunFolder.create(config, tmp_path / "Taxi-v4" / "tabular_q" / name).path
        return config.to_dict(), folder, train(config, folder).last_eval

    (a0, a0_dir, a0_eval), (_, a1_dir, a1_eval) = run("a-s0", 0, 0.9), run("a-s1", 1, 0.9)
    b0, b0_dir, b0_eval = run("b-s0", 0, 0.5)

    last = {}  # folder -> tag -> last value logged
    for folder in (a0_dir, a1_dir, b0_dir):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        series = {tag: tuple((e.step, e.value) for e in acc.Scalars(tag)) for tag in acc.Tags()["scalars"]}
        assert tb.EVAL_RETURN in series and tb.EPISODE_RETURN in series
        assert len(set(series.values())) == len(series), "a curve is written under two tags"
        assert "custom_scalars__config__" not in acc.Tags()["tensors"]
        last[folder] = {tag: values[-1][1] for tag, values in series.items()}

    groups = hparams_session_groups(tmp_path)
    name = lambda folder: str(folder.relative_to(tmp_path))  # noqa: E731 (TensorBoard's run names)
    assert groups.keys() == {tb.session_group(a0), tb.session_group(b0)}
    assert tb.session_group(a0) == f"Taxi-v4/tabular_q/{report.config_id(a0)}"
    sessions, metrics = groups[tb.session_group(a0)]
    assert sessions == [name(a0_dir), name(a1_dir)]
    # Its metrics are the mean over the two seeds of each one's last value.
    assert metrics[tb.EVAL_RETURN] == pytest.approx((a0_eval + a1_eval) / 2)
    ep0, ep1 = last[a0_dir][tb.EPISODE_RETURN], last[a1_dir][tb.EPISODE_RETURN]
    assert ep0 != ep1 and metrics[tb.EPISODE_RETURN] == pytest.approx((ep0 + ep1) / 2)
    sessions, metrics = groups[tb.session_group(b0)]
    assert sessions == [name(b0_dir)] and metrics[tb.EVAL_RETURN] == pytest.approx(b0_eval)


def test_runs_owns_the_layout_compare_reads(tmp_path):
    from gymlab import runs

    assert slug("pkg.mod:My Env/v0") == "pkg.mod.My.Env.v0"  # no "/" to split a folder or a tag
    logged = write_run(tmp_path / "CartPole-v1" / "dqn" / "r0", config(), [(0, 1.0)])
    (tmp_path / "CartPole-v1" / "dqn" / "r1").mkdir()
    (tmp_path / "CartPole-v1" / "dqn" / "r1" / "config.yaml").write_text("agent: dqn\n")  # failed before logging
    (logged / "checkpoints").mkdir()
    (logged / "checkpoints" / "last.pt").write_bytes(b"")
    assert runs.iter_runs(tmp_path) == [logged, logged.with_name("r1")]
    assert runs.iter_runs(logged / "checkpoints" / "last.pt") == [logged]
    assert runs.iter_runs(logged) == [logged]
    (logged / "config.yaml").unlink()
    assert runs.read_config(logged) == {"agent": "dqn", "env": "CartPole-v1"}  # from the folder names
    # The run without a logged metric is named, not silently dropped.
    result = cmp.compare([str(tmp_path)])  # its events hold no HParams: labelled by the folder names
    assert [(g.label, g.n) for g in result.groups] == [("dqn · CartPole-v1", 1)] and result.skipped == [
        f"{logged.with_name('r1')}: no TensorBoard events file"
    ]


def test_a_run_whose_events_cannot_be_read_is_said_so_not_called_a_missing_metric(tmp_path):
    """TensorBoard's reader skips a damaged events file without a word: compare said "no run logged
    metric 'eval/return_mean'; available: none" of a run that did log it."""
    damaged = write_run(tmp_path / "a", config(), [(0, 1.0), (100, 2.0)])
    (events,) = damaged.glob("events.out.tfevents.*")
    events.write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(GymlabError, match=r"no curve to compare: .*a: no scalars could be read from its events file"):
        cmp.compare([str(damaged)])
    good = write_run(tmp_path / "b", config(), [(0, 1.0), (100, 2.0)])
    result = cmp.compare([str(damaged), str(good)])
    assert result.skipped == [
        f"{damaged}: no scalars could be read from its events file (damaged, or nothing logged yet)"
    ]


def _unwritable_outs(tmp_path):
    (tmp_path / "d.png").mkdir()
    (tmp_path / "f").write_text("a plain file")
    (tmp_path / "link.png").symlink_to(tmp_path / "d.png")
    return {
        "folder": (tmp_path / "d.png", "is a folder"),
        "parent is a file": (tmp_path / "f" / "x.png", "is a file, not a folder"),
        "link to a folder": (tmp_path / "link.png", "is a link to a folder"),
        "name too long": (tmp_path / ("a" * 300 + ".png"), "name too long"),
        "no such folder in /proc": (Path("/proc/x.png"), "No such file or directory"),
    }


@pytest.mark.parametrize(
    "case", ["folder", "parent is a file", "link to a folder", "name too long", "no such folder in /proc"]
)
def test_an_unwritable_out_is_one_line_naming_the_path_and_the_reason(synthetic, tmp_path, case):
    out, reason = _unwritable_outs(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(GymlabError, match=reason) as info:
        cmp.compare([str(synthetic)], out=out)
    assert f"--out {out}" in str(info.value) and "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing lost
    assert (tmp_path / "f").read_text() == "a plain file"


def test_cli_compare_onto_a_folder_is_exit_2_without_traceback(synthetic, tmp_path):
    (tmp_path / "d.png").mkdir()
    result = gymlab_inprocess("compare", synthetic, "--out", tmp_path / "d.png")
    assert result.code == 2, result.ok()
    assert result.err.count("\n") == 1 and result.err.startswith("gymlab: error: --out ")
    assert "is a folder" in result.err and "Traceback" not in result.err


def test_an_existing_plot_is_kept_unless_overwrite_is_asked(synthetic, tmp_path):
    out = tmp_path / "curves.png"
    out.write_bytes(b"last week's figure")
    result = gymlab_inprocess("compare", synthetic, "--out", out)
    assert result.code == 2, result.ok()
    assert result.err.count("\n") == 1 and result.err.startswith(f"gymlab: error: --out {out}: ")
    assert "exists" in result.err and "--overwrite" in result.err
    assert out.read_bytes() == b"last week's figure"
    result = gymlab_inprocess("compare", synthetic, "--out", out, "--overwrite")
    assert result.code == 0, result.ok()
    assert out.read_bytes().startswith(b"\x89PNG")


def test_overwrite_replaces_a_link_never_the_file_it_points_to(synthetic, tmp_path):
    precious = tmp_path / "config.yaml"
    precious.write_text("agent: dqn\n")
    link = tmp_path / "plot.png"
    link.symlink_to(precious)
    result = gymlab_inprocess("compare", synthetic, "--out", link, "--overwrite")
    assert result.code == 0, result.ok()
    assert precious.read_text() == "agent: dqn\n"
    assert not link.is_symlink() and link.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_an_events_file_that_is_no_regular_file_is_one_line(synthetic, tmp_path, kind):
    """A FIFO hung compare; a folder was a traceback (IsADirectoryError)."""
    run = next(p.parent for p in sorted(synthetic.rglob("events.out.tfevents.*")))
    events = next(run.glob("events.out.tfevents.*"))
    events.unlink()
    os.mkfifo(events) if kind == "fifo" else events.mkdir()
    result = gymlab_inprocess("compare", synthetic, "--out", tmp_path / "c.png")
    assert result.code == 2, result.ok()
    assert result.err.count("\n") == 1 and str(events) in result.err
    assert ("FIFO" if kind == "fifo" else "folder") in result.err


def test_a_run_started_from_an_older_checkpoint_is_read_without_tensorboards_restart_warning(cli, tmp_path):
    """Its events log steps again from the checkpoint's: the reader drops the replaced points, quietly."""
    base = ["--steps", "3000", "eval_every=1000", "eval_episodes=2", "checkpoint_every=1000", "log_every=500"]
    assert cli("train", "tabular_q", "FrozenLake-v1", *base, "--run-dir", "a").returncode == 0
    older = tmp_path / "a" / "checkpoints" / "best.pt"
    assert Checkpoint.read(older).step < 3000  # seed 0: its best evaluation came before the last
    resumed = cli("train", "--resume", str(older), "--run-dir", "b", "--steps", "4000")
    assert resumed.returncode == 0, resumed.stderr
    proc = cli("compare", "b", "--out", "c.png")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    assert (tmp_path / "c.png").is_file()


def test_the_plot_tells_many_groups_apart_and_keeps_its_legend_off_the_curves(tmp_path):
    root = tmp_path / "runs"
    for i in range(12):  # more groups than the ten colours
        write_run(root / f"g{i}", config(lr=0.001 * (i + 1)), [(0, float(i)), (10, float(i + 1))])
    result = cmp.compare([str(root)], threshold=5.0, out=tmp_path / "c.png")
    assert len(result.groups) == 12
    fig = cmp.plot(result, tmp_path / "again.png")
    (ax,) = fig.axes
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("threshold")]
    looks = {(line.get_color() if isinstance(line.get_color(), str) else tuple(line.get_color()), line.get_linestyle())
             for line in lines}  # fmt: skip
    assert len(lines) == 12 and len(looks) == 12  # no two groups drawn alike
    assert ax.get_legend() is None and len(fig.legends) == 1  # the figure's legend, outside the axes
    assert len(fig.legends[0].get_texts()) == 13  # every group and the threshold


@pytest.mark.parametrize(
    ("threshold", "drawn"), [(5.0, True), (-3.0, True), (20.0, True), (100.0, False), (1.7e308, False)]
)
def test_a_threshold_far_off_the_curves_is_named_but_does_not_set_the_axes(tmp_path, threshold, drawn):
    # stop 41: --threshold 1.7e308 ended in a traceback from matplotlib's tick arithmetic, and 1e308 drew the
    # curves as one flat line at the bottom of an axis running to 1e308
    write_run(tmp_path / "runs" / "a", config(), [(0, 0.0), (10, 4.0)])
    result = cmp.compare([str(tmp_path / "runs")], threshold=threshold, out=tmp_path / "c.png")
    (ax,) = cmp.plot(result, tmp_path / "again.png").axes
    low, high = ax.get_ylim()
    assert (low <= threshold <= high) == drawn and high - low < 50, (low, high)
    (named,) = [line for line in ax.get_lines() if line.get_label().startswith("threshold")]
    assert named.get_label().endswith("far above the curves)") != drawn, named.get_label()


def test_a_run_without_config_yaml_is_labelled_as_its_config_would_label_it(tmp_path):
    # stop 41: the events gave double_dqn=0 and huber_delta=1 where config.yaml gave False and 1.0, so a run
    # read from its events alone was labelled apart from its peers by keys whose values did not differ
    hparams = {"double_dqn": False, "huber_delta": 1.0}
    logged = tmp_path / "x"
    logger = tb.RunLogger(logged)
    logger.hparams(config(hparams={"learning_rate": 0.001, **hparams}))
    logger.scalars({METRIC: 1.0}, 0)
    logger.close()
    write_run(tmp_path / "y", config(hparams={"learning_rate": 0.01, **hparams}), [(0, 2.0)])
    labels = sorted(g.label for g in cmp.compare([str(logged), str(tmp_path / "y")]).groups)
    assert labels == ["dqn · CartPole-v1 · learning_rate=0.001", "dqn · CartPole-v1 · learning_rate=0.01"]


def test_a_label_shows_a_drawn_value_to_the_digits_that_tell_it_apart(tmp_path):
    # stop 41: a sweep's learning_rate=0.0012520653814999472 in full made the legend wider than the plot
    for name, lr in [("a", 0.0012520653814999472), ("b", 0.0057), ("c", 0.00125207), ("d", 0.1)]:
        write_run(tmp_path / name, config(lr=lr), [(0, 1.0)])
    labels = sorted(g.label.rsplit("=", 1)[1] for g in cmp.compare([str(tmp_path)]).groups)
    # 7 digits for all (6 would show 0.00125207 twice), and no trailing zeros
    assert labels == ["0.001252065", "0.00125207", "0.0057", "0.1"], labels


def test_a_seed_run_twice_counts_once_and_says_so(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "a", config(seed=0), [(0, 1.0), (10, 2.0)])
    write_run(root / "again", config(seed=0), [(0, 1.0), (10, 2.0), (20, 3.0)])  # the same seed, further
    write_run(root / "b", config(seed=1), [(0, 3.0), (10, 5.0)])
    result = cmp.compare([str(root)])
    (group,) = result.groups
    assert group.n == 2 and sorted(p.name for p in group.runs) == ["again", "b"]  # the one reaching furthest kept
    assert result.skipped == [f"{root / 'a'}: seed 0 of its config again (as {root / 'again'}); counted once"]
    by_env = cmp.compare([str(root)], by="env")  # other configs' seeds may share a number: all pooled
    assert by_env.groups[0].n == 3 and by_env.skipped == []


def test_a_label_cut_short_shows_what_sets_its_group_apart():
    base = {"gamma": 0.99, "epsilon_final": 0.05, "initial_q": 0.0, "learning_rate": 0.1}
    changes = [{}, {"learning_rate": 0.5}, {"gamma": 0.5}, {"epsilon_final": 0.2}, {"initial_q": 0.5}]
    groups = {}
    for i, change in enumerate(changes):
        values = {"agent": "tabular_q", "env": "FrozenLake-v1", "config_id": f"id{i}", **base, **change}
        groups[f"g{i}"] = [curves.RunCurve(Path(f"r{i}"), values, np.array([0]), np.array([0.0]))]
    labels = cmp.group_labels(groups, "config")
    assert labels["g1"].startswith("tabular_q · FrozenLake-v1 · learning_rate=0.5 · ")
    assert labels["g2"].startswith("tabular_q · FrozenLake-v1 · gamma=0.5 · ")
    assert len(set(labels.values())) == len(changes)
