"""Config resolution: presets, files, overrides and flags; strict validation with helpful errors."""

from pathlib import Path

import pytest
from clihelp import assert_one_line, gymlab

from gymlab.config import apply_overrides, resolve
from gymlab.errors import GymlabError
from gymlab.yamlfile import load_yaml


def test_preset_then_file_then_overrides_then_flags(tmp_path):
    cfg = resolve("tabular_q", "Taxi-v4")
    assert cfg.run.steps == 100_000 and cfg.hparams.model_dump()["learning_rate"] == 0.5  # the shipped preset
    f = tmp_path / "c.yaml"
    f.write_text("steps: 5000\nhparams:\n  gamma: 0.9\n")
    cfg = resolve("tabular_q", "Taxi-v4", f, ["learning_rate=0.3", "steps=7000"], seed=3)
    assert cfg.run.steps == 7000 and cfg.run.seed == 3
    assert cfg.hparams.model_dump()["gamma"] == 0.9 and cfg.hparams.model_dump()["learning_rate"] == 0.3
    assert cfg.hparams.model_dump()["epsilon_final"] == 0.05  # agent default: a --config file replaces the preset
    cfg = resolve("tabular_q", "Taxi-v4", f, ["steps=7000"], steps=9000)
    assert cfg.run.steps == 9000


def test_a_whole_number_for_a_float_is_kept_when_the_float_holds_it_exactly():
    for text, taken in (("1", 1.0), (str(2**63), 2.0**63), ("1e30", 1e30)):
        hparams = resolve("dqn", "CartPole-v1", None, [f"max_grad_norm={text}"]).hparams
        assert getattr(hparams, "max_grad_norm") == taken  # noqa: B009 - the schema's type is the agent's own
    # stop 39 (a wider fuzz hunt): 10**30 was taken as 1.0000000000000000199e30, another number than the one written
    for whole in (10**30, 2**53 + 1):
        with pytest.raises(GymlabError, match=f"'hparams.max_grad_norm' = {whole}: a whole number that a float"):
            resolve("dqn", "CartPole-v1", None, [f"max_grad_norm={whole}"])


def test_dotted_and_bare_overrides():
    data = apply_overrides(
        {"hparams": {"gamma": 0.9}},
        ["hparams.gamma=0.5", "learning_rate=1e-3", "env_kwargs.map_name=8x8"],
        ["gamma", "learning_rate"],
    )
    # 1e-3 is a number (YAML 1.2), not the text YAML 1.1 makes of it: text is never taken as a number
    assert data == {"hparams": {"gamma": 0.5, "learning_rate": 1e-3}, "env_kwargs": {"map_name": "8x8"}}
    cfg = resolve("tabular_q", "FrozenLake-v1", None, ["learning_rate=1e-3"])
    assert cfg.hparams.model_dump()["learning_rate"] == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("hparams.learnig_rate=0.1", "unknown key 'hparams.learnig_rate': did you mean 'hparams.learning_rate'?"),
        ("stepz=10", "unknown key 'stepz': did you mean 'steps'?"),
        ("gamma=1.5", "'hparams.gamma' = 1.5: Input should be less than or equal to 1"),
        ("steps=lots", "'steps' = 'lots': Input should be a valid integer"),
        ("vectorization=threads", "'vectorization' = 'threads'"),
        # A union (bool | "auto"): the key as written and what each member takes, not pydantic's member tag.
        ("overlap=maybe", "override overlap=maybe: 'overlap' = 'maybe': Input should be a valid boolean or 'auto'"),
        ("nonsense", "override 'nonsense' is not key=value"),
        # stop 32: torch started every thread at once; 100,000 ended the process in a segfault, its folder left behind
        ("threads=100000", "'threads' = 100000: Input should be less than or equal to 1024"),
    ],
)
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(GymlabError, match=None) as info:
        resolve("tabular_q", "Taxi-v4", None, [override])
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("agent", "env", "override"),
    [
        ("tabular_q", "FrozenLake-v1", "initial_q=1e160"),
        ("reinforce", "Pendulum-v1", "log_std_init=100"),
        ("reinforce", "CartPole-v1", "entropy_coef=1e30"),
    ],
)
def test_values_that_overflow_the_arithmetic_are_refused(agent, env, override):
    # stop 32: each trained, then stopped with "the agent diverged: try a lower learning rate"
    key = override.partition("=")[0]
    with pytest.raises(GymlabError, match=f"'hparams.{key}' = .*: Input should be (less|greater) than or equal to"):
        resolve(agent, env, None, [override])


@pytest.mark.parametrize(
    ("agent", "env", "override", "message"),
    [
        # helper-26: each ended in a numpy or torch traceback (exit 1) once training or building began
        ("dqn", "CartPole-v1", "n_steps=99999999999999999999999", "'hparams.n_steps' = 999999999999999"),
        ("dqn", "CartPole-v1", "net_arch=[9223372036854775808]", "'hparams.net_arch.0' = 9223372036854775808: too"),
        ("reinforce", "CartPole-v1", "env_kwargs.x=-9223372036854775809", "whole numbers go from -2^63 to 2^63 - 1"),
        ("tabular_q", "FrozenLake-v1", "env_kwargs.map_name=9223372036854775808", "'env_kwargs.map_name' = 92233"),
        # helper-26: a batch larger than the memory trained until its first update ran out of memory
        ("dqn", "CartPole-v1", "batch_size=100001",
         "override batch_size=100001: batch_size (100,001) exceeds buffer_size (100,000): a batch is drawn from"),
        # a check of all hparams together is said in its own words, naming the override, not the preset's dict
        ("seqgan", "SeqGen-v0", "data_seed=88", "override data_seed=88: test_seed must differ from data_seed"),
    ],
)  # fmt: skip
def test_values_past_what_the_arithmetic_holds_are_refused_in_their_own_words(agent, env, override, message):
    overrides = [override] if agent != "seqgan" else ["test_seed=88", override]
    with pytest.raises(GymlabError) as info:
        resolve(agent, env, None, overrides)
    assert message in str(info.value) and "{" not in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # a dotted path into a value used to make it a mapping ({x: 1}, truthy), and the run trained
        ("env_kwargs.is_slippery.x=1", "override 'env_kwargs.is_slippery.x=1': 'env_kwargs.is_slippery' is a value"),
        ("steps.x=1", "'steps' is a value (1000), not a mapping of keys; set it with steps=VALUE"),
        ("hparams.gamma.x=1", "override 'hparams.gamma.x=1': 'hparams.gamma' is a value (0.9)"),  # not "c.yaml: ..."
        # a key the file leaves unset: the override is named, not the file
        ("hparams.learning_rate.x=1", "override hparams.learning_rate.x=1: 'hparams.learning_rate' = {'x': 1}"),
    ],
)
def test_an_override_into_a_value_is_refused_naming_the_override(tmp_path, override, message):
    config = tmp_path / "c.yaml"
    config.write_text("steps: 1000\nenv_kwargs: {is_slippery: true}\nhparams: {gamma: 0.9}\n")
    with pytest.raises(GymlabError) as info:
        resolve("tabular_q", "FrozenLake-v1", config, [override], steps=500)  # --steps hid steps.x=1
    assert message in str(info.value)


def test_a_bare_misspelt_name_is_matched_on_names():
    """n_step is nearer the run key "steps" as a whole string, but it names DQN's hparams.n_steps."""
    with pytest.raises(GymlabError, match=r"unknown key 'n_step': did you mean 'hparams.n_steps'\?"):
        resolve("dqn", "CartPole-v1", None, ["n_step=3"])


def test_malformed_yaml_names_the_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("steps: 10\nhparams:\n  gamma: [0.9\n")
    with pytest.raises(GymlabError, match=r"bad.yaml is not valid YAML at line \d+"):
        resolve("tabular_q", "Taxi-v4", f)


def test_config_file_must_be_a_mapping_and_agree_with_the_command_line(tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(GymlabError, match="must be a mapping"):
        resolve("tabular_q", "Taxi-v4", f)
    f.write_text("agent: dqn\n")
    with pytest.raises(GymlabError, match="is for agent 'dqn' but the command line says 'tabular_q'"):
        resolve("tabular_q", "Taxi-v4", f)


def test_unknown_agent_suggests_the_closest():
    with pytest.raises(GymlabError, match="unknown agent 'tabularq': did you mean tabular_q"):
        resolve("tabularq", "Taxi-v4")


def test_resolved_config_round_trips_through_its_dict():
    cfg = resolve("tabular_q", "FrozenLake-v1", None, ["seed=4"])
    from gymlab.agents.tabular_q import TabularQ

    from gymlab.config import validate

    assert validate(cfg.to_dict(), TabularQ).to_dict() == cfg.to_dict()


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A few hundred bytes of YAML whose nested aliases stand for width**levels values."""
    lines = ["agent: tabular_q", "env: FrozenLake-v1", "env_kwargs:", f"  a0: &a0 [{', '.join(['x'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


# Each case: the file's bytes -> a fragment of the one-line error. All fail in load_yaml/resolve, before any env.
BAD_FILES = {
    "not-utf8": (b"steps: 10\n# caf\xe9 in latin-1\n", "is not UTF-8 text (byte 0xe9 at offset 15)"),
    "alias-bomb": (alias_bomb().encode(), "expands to more than 100,000 values"),
    "recursive-alias": (b"env_kwargs:\n  x: &a [1, *a]\n", "recursive data"),
    "too-deep": (
        b"env_kwargs:\n  x: " + b"[" * 200 + b"1" + b"]" * 200 + b"\n",
        "nests lists and mappings more than 64",
    ),
    "too-large": (b"steps: 10\n" + b"# padding\n" * 110_000, "larger than 1,000,000 bytes"),
    "nan-hparam": (b"agent: tabular_q\nenv: FrozenLake-v1\nhparams:\n  initial_q: .nan\n", "'hparams.initial_q' = nan"),
    "inf-env-kwarg": (b"env_kwargs:\n  desc: [1.0, -.inf]\n", "'env_kwargs.desc.1' = -inf: must be a finite number"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_config_files_are_one_line_errors_naming_the_file(tmp_path, case):
    content, fragment = BAD_FILES[case]
    f = tmp_path / f"{case}.yaml"
    f.write_bytes(content)
    with pytest.raises(GymlabError) as info:
        resolve("tabular_q", "FrozenLake-v1", f)
    message = str(info.value)
    assert fragment in message and f"{case}.yaml" in message and "\n" not in message


def test_aliases_within_bounds_still_load(tmp_path):
    f = tmp_path / "anchors.yaml"
    f.write_text("x: &b {gamma: 0.9}\nhparams:\n  <<: *b\n  learning_rate: 0.2\n")
    data = load_yaml(f)
    assert data["hparams"] == {"gamma": 0.9, "learning_rate": 0.2}
    assert load_yaml(tmp_path / "anchors.yaml", "sweep file") == data
    f.write_bytes(b"\xef\xbb\xbfsteps: 5\n")  # a UTF-8 byte-order mark is fine
    assert load_yaml(f) == {"steps": 5}


def test_the_file_role_is_named(tmp_path):
    f = tmp_path / "sweep.yaml"
    f.write_bytes(b"\xff\xfe")
    with pytest.raises(GymlabError, match=r"^sweep file .*sweep.yaml is not UTF-8 text"):
        load_yaml(f, "sweep file")


# Each case: agent, override -> fragment. Non-finite numbers (or values that are not plain data) anywhere in the
# merged config are refused at validation.
NON_FINITE = [
    ("dqn", "learning_rate=inf", "'hparams.learning_rate' = inf: must be a finite number"),
    ("tabular_q", "initial_q=.nan", "'hparams.initial_q' = nan: must be a finite number"),
    # bounded keys: pydantic said "nan: Input should be less than or equal to 1"
    ("tabular_q", "gamma=.nan", "'hparams.gamma' = nan: must be a finite number"),
    ("tabular_q", "learning_rate=.inf", "'hparams.learning_rate' = inf: must be a finite number"),
    # the same as text (YAML reads a bare nan or inf so): "Input should be less than or equal to 1" (stop 41)
    ("tabular_q", "gamma=nan", "'hparams.gamma' = nan: must be a finite number"),
    ("dqn", "learning_rate=NaN", "'hparams.learning_rate' = NaN: must be a finite number"),
    ("tabular_q", "initial_q=inf", "'hparams.initial_q' = inf: must be a finite number"),
    ("tabular_q", "steps=-Infinity", "'steps' = -Infinity: must be a finite number"),  # "unable to parse"
    ("reinforce", "hparams.log_std_init=.nan", "'hparams.log_std_init' = nan"),
    ("dqn", "max_grad_norm=.inf", "'hparams.max_grad_norm' = inf"),
    ("tabular_q", "env_kwargs.slip=-.inf", "'env_kwargs.slip' = -inf"),
    ("tabular_q", "env_kwargs.nested={a: [1, .nan]}", "'env_kwargs.nested.a.1' = nan"),
    # Not plain data: a traceback when the run folder's config is written, or a different value after resume.
    ("tabular_q", "env_kwargs.x=!!binary /w==", "'env_kwargs.x' = a bytes: must be text, a number"),
    ("tabular_q", "env_kwargs.start=2020-01-01", "'env_kwargs.start' = a date"),
    ("tabular_q", "env_kwargs.tags=!!set {a, b}", "'env_kwargs.tags' = a set"),
]


@pytest.mark.parametrize(("agent", "override", "fragment"), NON_FINITE)
def test_non_finite_values_are_refused_naming_the_key(agent, override, fragment):
    env = {"dqn": "CartPole-v1", "reinforce": "CartPole-v1"}.get(agent, "FrozenLake-v1")
    with pytest.raises(GymlabError) as info:
        resolve(agent, env, None, [override])
    assert fragment in str(info.value)


def test_an_alias_bomb_in_an_override_is_refused():
    bomb = "[" + ", ".join(["&a [" + ", ".join(["1"] * 50) + "]", *["*a"] * 10]) + "]"
    assert len(resolve("tabular_q", "FrozenLake-v1", None, [f"env_kwargs.x={bomb}"]).run.env_kwargs["x"]) == 11
    nested = "[&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a], "
    nested += "&c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b], &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c], "
    nested += "&e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d], [*e, *e, *e]]"
    with pytest.raises(GymlabError, match=r"override env_kwargs.x=\.\.\. is refused: it expands to more than"):
        resolve("tabular_q", "FrozenLake-v1", None, [f"env_kwargs.x={nested}"])


def test_a_huge_quoted_value_is_cut_to_one_short_line():
    with pytest.raises(GymlabError) as info:
        resolve("tabular_q", "FrozenLake-v1", None, ["steps=[" + ", ".join(["123456789"] * 5000) + "]"])
    assert len(str(info.value)) <= 1_000 and "'steps' = [" in str(info.value)


# The same classes end to end: one line on stderr, exit 2, no traceback, no run folder.
CLI_CASES = {
    "not-utf8": (
        ["train", "--config", "c.yaml"],
        b"agent: tabular_q\nenv: Taxi-v4\n# \xff\n",
        "config c.yaml is not UTF-8",
    ),
    "alias-bomb": (["train", "--config", "c.yaml", "--steps", "10"], alias_bomb().encode(), "expands to more than"),
    "inf": (["train", "dqn", "CartPole-v1", "learning_rate=inf"], None, "'hparams.learning_rate' = inf"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_bad_config_input_on_the_command_line(cli, tmp_path, case):
    argv, content, fragment = CLI_CASES[case]
    if content is not None:
        (tmp_path / "c.yaml").write_bytes(content)
    proc = cli(*argv, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("gymlab: error: ") and fragment in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_run_file_that_is_not_utf8_is_named(cli, tmp_path):
    train = cli("train", "tabular_q", "FrozenLake-v1", "--steps", "200", "eval_every=100", "--run-dir", "r")
    assert train.returncode == 0, train.stderr
    (tmp_path / "r" / "config.yaml").write_bytes(b"agent: tabular_q\n# \xff\n")
    proc = cli("compare", "r", "--out", "c.png", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.startswith("gymlab: error: run file r/config.yaml is not UTF-8 text")


# --- non-finite values through `python -m gymlab train` ------------------------------------------------

NON_FINITE_CLI = {
    "lr-inf": (["tabular_q", "Taxi-v4", "learning_rate=inf"], "learning_rate"),
    "initial-q-nan": (["tabular_q", "Taxi-v4", "initial_q=.nan"], "initial_q"),
    "gamma-nan": (["dqn", "CartPole-v1", "gamma=.nan"], "gamma"),
    "eps-minus-inf": (["dqn", "CartPole-v1", "exploration_final_eps=-.inf"], "exploration_final_eps"),
    "reinforce-lr-inf": (["reinforce", "CartPole-v1", "learning_rate=.inf"], "learning_rate"),
}


@pytest.mark.parametrize("case", NON_FINITE_CLI)
def test_non_finite_values_on_the_command_line_are_one_line_before_any_folder(tmp_path: Path, case: str):
    argv, fragment = NON_FINITE_CLI[case]
    proc = gymlab("train", *argv, "--run-dir", "r", cwd=tmp_path)
    assert_one_line(proc, 2, fragment)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("where", ["override", "file"])
def test_a_render_mode_in_env_kwargs_is_refused_before_any_folder(tmp_path: Path, where: str):
    """gymlab picks the render mode (videos, watch); a training env told to draw a window drew every step."""
    args = ["env_kwargs.render_mode=human"]
    if where == "file":
        (tmp_path / "c.yaml").write_text("env_kwargs:\n  render_mode: rgb_array\n")
        args = ["--config", "c.yaml"]
    proc = gymlab("train", "tabular_q", "FrozenLake-v1", "--steps", "40", *args, "--run-dir", "r", cwd=tmp_path)
    assert_one_line(proc, 2, "remove env_kwargs.render_mode")
    assert not (tmp_path / "r").exists()


def test_a_mapping_override_merges_into_the_preset_and_a_value_replacing_one_is_blamed_on_the_override():
    preset = resolve("dqn", "CartPole-v1").to_dict()["hparams"]
    merged = resolve("dqn", "CartPole-v1", overrides=["hparams={gamma: 0.5}"]).to_dict()["hparams"]
    assert merged == {**preset, "gamma": 0.5}  # as hparams.gamma=0.5: the preset's other values kept
    env = resolve("tabular_q", "FrozenLake-v1", overrides=["env_kwargs={map_name: 8x8}"]).run.env_kwargs
    assert env == {"is_slippery": True, "map_name": "8x8"}  # the preset's is_slippery kept
    with pytest.raises(GymlabError, match=r"^override hparams=3: 'hparams' = 3: "):
        resolve("dqn", "CartPole-v1", overrides=["hparams=3"])  # not the preset file, whose hparams it replaced
    with pytest.raises(GymlabError, match=r"^override hparams=\{gamma: 5\}: 'hparams.gamma' = 5"):
        resolve("dqn", "CartPole-v1", overrides=["hparams={gamma: 5}"])
