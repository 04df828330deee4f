"""Generated configs: every key of every agent's schema and the run keys, given hostile values.

Each config is refused with one line naming the key (a :class:`~gymlab.errors.GymlabError`), or it is
taken exactly as written: a boolean is never a number, text never a number or a boolean, a number never
a boolean, and nothing non-finite passes. YAML files with a key given twice are refused naming the key
and both lines; a key from the command line is blamed on the flag or override that gave it, not on the
preset. The keys come from the schemas (tests/strategies.py), so a new agent or key is fuzzed too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import strategies as fz
import yaml
from hypothesis import assume, example, given
from hypothesis import strategies as st

from gymlab.agent import load_agent_class
from gymlab.config import Config, resolve, validate
from gymlab.errors import MAX_MESSAGE_CHARS, GymlabError
from gymlab.plaindata import converts_itself
from gymlab.yamlfile import load_yaml

KEYS = fz.config_keys()


def honoured(given: Any, made: Any) -> bool:
    """Whether ``made`` is exactly what ``given`` asked for (an integral float may become the same int)."""
    if isinstance(given, bool) or isinstance(made, bool):
        return type(given) is type(made) and given == made
    if isinstance(given, (int, float)):
        return isinstance(made, (int, float)) and math.isfinite(given) and given == made
    if isinstance(given, (list, tuple)):
        return isinstance(made, (list, tuple)) and len(given) == len(made) and all(map(honoured, given, made))
    if isinstance(given, dict):
        return (
            isinstance(made, dict) and given.keys() == made.keys() and all(honoured(given[k], made[k]) for k in given)
        )
    return type(given) is type(made) and given == made


def value_of(cfg: Config, key: str) -> Any:
    if key.startswith("hparams."):
        return getattr(cfg.hparams, key.removeprefix("hparams."))
    return getattr(cfg.run, key)


def nest(key: str, value: Any) -> dict[str, Any]:
    head, _, leaf = key.partition(".")
    return {head: {leaf: value}} if leaf else {key: value}


def check_refusal(exc: GymlabError, key: str) -> None:
    message = str(exc)
    assert "\n" not in message and len(message) <= MAX_MESSAGE_CHARS, message
    assert key.rsplit(".", 1)[-1] in message, f"the error does not name {key}: {message}"


@pytest.mark.parametrize("agent", fz.agents())
@given(data=st.data())
def test_each_key_is_refused_in_one_line_or_taken_exactly(agent: str, data: st.DataObject) -> None:
    _, key, annotation = data.draw(st.sampled_from([k for k in KEYS if k[0] == agent]), label="key")
    value = data.draw(fz.values_for(annotation), label="value")
    config = {"agent": agent, "env": fz.env_of(agent), **nest(key, value)}
    try:
        cfg = validate(config, load_agent_class(agent))
    except GymlabError as exc:
        check_refusal(exc, key)
        return
    leaf = key.removeprefix("hparams.")
    if key.startswith("hparams.") and converts_itself(type(cfg.hparams), leaf):
        return  # the schema says which values the field converts (a validator of its own)
    assert honoured(value, value_of(cfg, key)), f"{key}: {value!r} was taken as {value_of(cfg, key)!r}"


@pytest.mark.parametrize(
    ("agent", "key", "value"),
    [
        ("dqn", "steps", True),  # issue 23: taken as 1
        ("dqn", "eval_episodes", False),
        ("dqn", "hparams.gamma", True),
        ("dqn", "hparams.learning_rate", "0.001"),
        ("tabular_q", "seed", "7"),
        ("reinforce", "deterministic", 1),
    ],
)
def test_no_value_is_taken_by_coercion(agent: str, key: str, value: Any) -> None:
    config = {"agent": agent, "env": fz.env_of(agent), **nest(key, value)}
    with pytest.raises(GymlabError) as caught:
        validate(config, load_agent_class(agent))
    check_refusal(caught.value, key)


@given(num_envs=st.integers(min_value=2, max_value=10**6), steps=st.integers(min_value=1, max_value=10**6))
@example(num_envs=100_000, steps=100)  # issue 23: ran 100,000 steps and showed "100000%"
def test_num_envs_is_bounded_by_steps(num_envs: int, steps: int) -> None:
    config = {"agent": "random", "env": "CartPole-v1", "num_envs": num_envs, "steps": steps}
    try:
        cfg = validate(config, load_agent_class("random"))
    except GymlabError as exc:
        assert num_envs > steps or num_envs > 4096, exc
        if num_envs > steps:
            assert "num_envs" in str(exc) and "steps" in str(exc), exc
        return
    assert cfg.run.num_envs <= cfg.run.steps


documents = st.dictionaries(
    st.sampled_from(sorted({k.split(".")[0] for _, k, _ in KEYS} | {"hparams", "no_such_key", "Steps"})),
    fz.junk,
    max_size=4,
)


@given(doc=documents, agent=st.sampled_from(fz.agents()))
def test_a_config_file_is_refused_in_one_line_or_taken_exactly(tmp_path: Path, doc: dict[str, Any], agent: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    try:
        cfg = resolve(agent, fz.env_of(agent), path)
    except GymlabError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) <= MAX_MESSAGE_CHARS
        assert "config.yaml" in message, message  # the file is named: its keys came from it
        return
    for key, value in doc.items():
        if isinstance(value, dict) and key in ("hparams", "env_kwargs"):
            for leaf, v in value.items():
                if key == "hparams" and converts_itself(type(cfg.hparams), leaf):
                    continue  # the schema says which values the field converts
                made = getattr(cfg.hparams, leaf) if key == "hparams" else cfg.run.env_kwargs[leaf]
                assert honoured(v, made), f"{key}.{leaf}: {v!r} was taken as {made!r}"
        else:
            assert honoured(value, getattr(cfg.run, key)), f"{key}: {value!r} was taken as {getattr(cfg.run, key)!r}"


def _lines(mapping: dict[str, Any]) -> list[str]:
    return [yaml.safe_dump({k: v}, default_flow_style=False, width=10**6).strip() for k, v in mapping.items()]


@given(
    doc=st.dictionaries(st.text("abcdefgh_", min_size=1, max_size=8), fz.scalars, min_size=1, max_size=5),
    data=st.data(),
    nested=st.booleans(),
)
@example(doc={"steps": 100}, data=None, nested=False)  # issue 23: `steps` twice silently kept the last
def test_a_key_given_twice_is_refused_naming_it_and_both_lines(
    tmp_path: Path, doc: dict[str, Any], data: st.DataObject | None, nested: bool
) -> None:
    lines = _lines(doc)
    assume(all("\n" not in line for line in lines))
    twice = 0 if data is None else data.draw(st.integers(0, len(lines) - 1), label="twice")
    lines.append(lines[twice])
    key = next(iter(yaml.safe_load(lines[twice])))
    if nested:  # inside a mapping (hparams: ...), indented
        lines = ["hparams:", *("  " + line for line in lines)]
    path = tmp_path / "twice.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(GymlabError) as caught:
        load_yaml(path)
    message = str(caught.value)
    first, second = twice + 1 + nested, len(lines)
    assert f"'{key}'" in message and f"lines {first} and {second}" in message, message


@pytest.mark.parametrize(
    ("flags", "overrides", "named"),
    [
        ({"device": "tpu"}, [], "--device tpu"),  # issue 23: blamed on the preset file
        ({}, ["device=tpu"], "override device=tpu"),
        ({"steps": 0}, [], "--steps 0"),
        ({}, ["gamma=2"], "override gamma=2"),
        ({}, ["hparams.gamma=true"], "override hparams.gamma=true"),
    ],
)
def test_an_error_names_where_the_value_came_from(flags: dict[str, Any], overrides: list[str], named: str) -> None:
    with pytest.raises(GymlabError) as caught:
        resolve("dqn", "CartPole-v1", None, overrides, **flags)  # CartPole-v1 has a shipped dqn preset
    assert str(caught.value).startswith(named), caught.value
    assert "configs/dqn/CartPole-v1.yaml" not in str(caught.value)
