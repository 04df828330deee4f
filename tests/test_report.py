"""The reporting layer: mean and 95% CI over seeds, IQM, number formatting and tables, against hand-computed figures."""

import io
import itertools

import gymnasium as gym
import numpy as np
import pytest
from rich.console import Console
from test_video import TEXT_ENV

from gymlab import report, video
from gymlab.config import RunConfig
from gymlab.console import PlainProgress


def exact_bootstrap_percentiles(values, q=(2.5, 97.5)):
    """Percentiles of the exact bootstrap distribution of the mean (all n^n equally likely draws)."""
    n = len(values)
    means = [np.mean([values[i] for i in draw]) for draw in itertools.product(range(n), repeat=n)]
    return np.percentile(means, q)


def test_bootstrap_counts_resample_whole_runs():
    counts = report.bootstrap_counts(3, 500, np.random.default_rng(0))
    assert counts.shape == (500, 3)
    assert (counts.sum(axis=1) == 3).all() and counts.min() == 0 and counts.max() == 3


def test_mean_ci_is_the_percentile_bootstrap_of_the_mean():
    ci = report.mean_ci([3.0, 6.0, 7.0, 14.0])
    assert (ci.mean, ci.n) == (7.5, 4)
    # The exact bootstrap (4^4 draws) puts the 2.5th and 97.5th percentiles of the mean at 4 and 12;
    # 2000 resamples land within a quarter of a point of them.
    lo, hi = exact_bootstrap_percentiles([3.0, 6.0, 7.0, 14.0])
    assert (lo, hi) == (4.0, 12.0)
    assert ci.low == pytest.approx(lo, abs=0.25) and ci.high == pytest.approx(hi, abs=0.25)
    assert report.mean_ci([3.0, 6.0, 7.0, 14.0]) == ci  # seeded: the same runs print the same figures


def test_two_seeds_give_their_range_and_never_beyond_it():
    # Each resample is {x,x}, {x,y} or {y,y} with a quarter of the mass at each end: [min, max] exactly.
    # (Student-t would give 250 ± 12.7 * 353.6 / sqrt(2), far outside what any run can score.)
    ci = report.mean_ci([0.0, 500.0])
    assert (ci.mean, ci.low, ci.high) == (250.0, 0.0, 500.0)
    assert ci.text() == "250, 95% CI [0, 500] over 2 seeds" and ci.interval() == "[0, 500]"


def test_one_seed_says_there_is_no_interval():
    ci = report.mean_ci([5.0])
    assert (ci.mean, ci.low, ci.high, ci.has_spread) == (5.0, 5.0, 5.0, False)
    assert ci.text() == "5 (1 seed, no CI)" and ci.interval() == ""


@pytest.mark.parametrize("values", [[], [1.0, float("nan")], [float("inf")]])
def test_mean_ci_refuses_what_has_no_mean(values):
    with pytest.raises(ValueError, match="mean_ci needs"):
        report.mean_ci(values)


def test_bootstrap_band_of_curves_uses_one_draw_per_resample():
    # Two runs whose curves cross: run 0 is (0, 10), run 1 is (10, 0). A band of whole curves holds
    # at each step the min and max of the two runs.
    curves = np.array([[0.0, 10.0], [10.0, 0.0]])  # (n=2, T=2)
    low, high = report.bootstrap_band(curves, report.bootstrap_counts(2, 2000, np.random.default_rng(0)))
    np.testing.assert_array_equal(low, [0.0, 0.0])
    np.testing.assert_array_equal(high, [10.0, 10.0])


def test_iqm_trims_a_quarter_from_each_end():
    assert report.iqm([3.0, 6.0, 7.0, 14.0]) == 6.5  # drops 3 and 14
    assert report.iqm(np.arange(1.0, 9.0)) == 4.5  # keeps 3, 4, 5, 6


def test_numbers_for_people():
    assert [report.human_steps(x) for x in (950, 1500, 2_000_000, 12_345)] == ["950", "1.5k", "2M", "12.35k"]
    assert [report.number(x) for x in (None, 1 / 3, float("nan"), float("-inf"))] == ["", "0.3333", "nan", "-inf"]


def _table():
    table = report.Table(["group", "seeds", "final"], title="runs", align=["left", "right", "right"])
    table.add_row("dqn", 4, "7.5")
    table.add_row("tabular_q | x", 12, None)
    return table


def test_table_as_plain_text_aligns_columns_and_keeps_rows_whole():
    assert _table().text() == (
        "runs\n"
        "group           seeds   final\n"
        "─────────────────────────────\n"
        "dqn                 4     7.5\n"
        "tabular_q | x      12"
    )
    wide = report.Table(["label", "x"])
    wide.add_row("a" * 300, 1)
    assert wide.text().splitlines()[-1] == "a" * 300 + "   1"  # no wrapping, whatever the width


def test_table_as_markdown():
    assert _table().markdown() == (
        "**runs**\n\n| group | seeds | final |\n| --- | ---: | ---: |\n| dqn | 4 | 7.5 |\n| tabular_q \\| x | 12 |  |\n"
    )


def test_table_prints_plain_text_when_not_on_a_terminal():
    buffer = io.StringIO()
    _table().print(Console(file=buffer, force_terminal=False, width=20))
    assert buffer.getvalue() == _table().text() + "\n"  # narrow console, still one line per row


def test_a_row_must_fill_the_header():
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        _table().add_row("a", "b")


class _Silent(gym.Env):
    """An env that declares no render mode at all."""

    observation_space = gym.spaces.Discrete(2)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, **kwargs: object) -> None:
        super().__init__()


@pytest.mark.parametrize(
    ("env", "mode"), [("CartPole-v1", "rgb_array"), (TEXT_ENV, "ansi"), ("GymlabTestSilent-v0", None)]
)
def test_the_one_render_helper_prefers_pixels_then_text_then_nothing(env, mode):
    if "GymlabTestSilent-v0" not in gym.registry:
        gym.register("GymlabTestSilent-v0", entry_point=_Silent)
    made, chosen = video.render_env(RunConfig(agent="tabular_q", env=env))
    assert chosen == mode and made.unwrapped.render_mode == mode
    made.close()


def test_plain_progress_reports_each_tenth_of_the_run_once():
    """A pipe's progress lines: one at each tenth, none twice (0.3 // 0.1 is 2.0 in floats: 15/50 came again at 16)."""
    out = io.StringIO()
    progress = PlainProgress("run", out, every_seconds=float("inf"))
    progress.start(50, 0)
    for step in [*range(1, 51), 50]:  # the loop's last step is reported again as the run ends
        progress.update(step, 0, None)
    steps = [int(line.split("step ")[1].split("/")[0]) for line in out.getvalue().splitlines()]
    assert steps == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    resumed = io.StringIO()
    progress = PlainProgress("run", resumed, every_seconds=float("inf"))
    progress.start(20_000, 6_000)  # from a checkpoint at 30%: the next line is at 40%
    for step in range(6_700, 20_001, 700):  # the first update at or past each tenth reports it
        progress.update(step, 0, None)
    steps = [int(line.split("step ")[1].split("/")[0].replace(",", "")) for line in resumed.getvalue().splitlines()]
    assert steps == [8_100, 10_200, 12_300, 14_400, 16_500, 18_600, 20_000]
