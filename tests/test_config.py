"""Config resolution: presets, files, overrides and flags; strict validation with helpful errors."""

import pytest

from gymlab.config import apply_overrides, resolve
from gymlab.errors import GymlabError


def test_preset_then_file_then_overrides_then_flags(tmp_path):
    cfg = resolve("tabular_q", "Taxi-v4")
    assert cfg.run.steps == 100_000 and cfg.hparams.learning_rate == 0.5  # the shipped preset
    f = tmp_path / "c.yaml"
    f.write_text("steps: 5000\nhparams:\n  gamma: 0.9\n")
    cfg = resolve("tabular_q", "Taxi-v4", f, ["learning_rate=0.3", "steps=7000"], seed=3)
    assert cfg.run.steps == 7000 and cfg.run.seed == 3
    assert cfg.hparams.gamma == 0.9 and cfg.hparams.learning_rate == 0.3
    assert cfg.hparams.epsilon_final == 0.05  # agent default: a --config file replaces the preset
    cfg = resolve("tabular_q", "Taxi-v4", f, ["steps=7000"], steps=9000)
    assert cfg.run.steps == 9000


def test_dotted_and_bare_overrides():
    data = apply_overrides(
        {"hparams": {"gamma": 0.9}},
        ["hparams.gamma=0.5", "learning_rate=1e-3", "env_kwargs.map_name=8x8"],
        ["gamma", "learning_rate"],
    )
    assert data == {"hparams": {"gamma": 0.5, "learning_rate": "1e-3"}, "env_kwargs": {"map_name": "8x8"}}
    cfg = resolve("tabular_q", "FrozenLake-v1", None, ["learning_rate=1e-3"])
    assert cfg.hparams.learning_rate == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("hparams.learnig_rate=0.1", "unknown key 'hparams.learnig_rate': did you mean 'hparams.learning_rate'?"),
        ("stepz=10", "unknown key 'stepz': did you mean 'steps'?"),
        ("gamma=1.5", "'hparams.gamma' = 1.5: Input should be less than or equal to 1"),
        ("steps=lots", "'steps' = 'lots': Input should be a valid integer"),
        ("vectorization=threads", "'vectorization' = 'threads'"),
        ("nonsense", "override 'nonsense' is not key=value"),
    ],
)
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(GymlabError, match=None) as info:
        resolve("tabular_q", "Taxi-v4", None, [override])
    assert message in str(info.value)


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
    from gymlab.agents.tabular_q import TabularQConfig

    from gymlab.config import validate

    assert validate(cfg.to_dict(), TabularQConfig).to_dict() == cfg.to_dict()
