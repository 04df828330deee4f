"""The token-generation env (envs/seqgen.py) and the oracle (envs/oracle.py)."""

from __future__ import annotations

import warnings

import gymlab.envs  # noqa: F401  (registers SeqGen-v0)
import gymnasium as gym
import numpy as np
import pytest
import torch
from gymlab.envs.oracle import TokenLSTM, make_oracle, nll_oracle, nll_per_sequence, sample_dataset, sample_tokens
from gymlab.envs.seqgen import SeqGenVectorEnv
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

from gymlab import registry
from gymlab.errors import GymlabError


def sum_scorer(seqs: np.ndarray) -> np.ndarray:
    return seqs.sum(axis=1).astype(np.float64)


def test_single_env_passes_gymnasium_checker():
    env = gym.make("SeqGen-v0", vocab_size=7, seq_len=4, scorer=sum_scorer)
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [7, 7, 7, 7]  # all padding
    rewards = []
    for token in (1, 2, 3, 4):
        obs, reward, terminated, truncated, _ = env.step(token)
        rewards.append(reward)
    assert obs.tolist() == [1, 2, 3, 4] and terminated and not truncated
    assert rewards == [0, 0, 0, 10]


def test_vector_env_steps_in_lockstep_with_same_step_autoreset():
    env = gym.make_vec("SeqGen-v0", num_envs=3, vocab_size=10, seq_len=3, scorer=sum_scorer)
    assert isinstance(env, SeqGenVectorEnv)
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert env.single_observation_space == gym.spaces.MultiDiscrete(np.full(3, 11))
    assert env.single_action_space == gym.spaces.Discrete(10)
    obs, _ = env.reset(seed=1)
    assert (obs == 10).all() and obs.shape == (3, 3)
    obs, reward, term, trunc, infos = env.step(np.array([1, 2, 3]))
    assert obs[:, 0].tolist() == [1, 2, 3] and (obs[:, 1:] == 10).all()
    assert not term.any() and not trunc.any() and (reward == 0).all() and infos == {}
    env.step(np.array([0, 0, 0]))
    obs, reward, term, trunc, infos = env.step(np.array([4, 5, 6]))
    # The last token ends every sequence; the returned obs is already the next, empty prefix.
    assert term.all() and not trunc.any() and (obs == 10).all()
    assert infos["final_obs"].tolist() == [[1, 0, 4], [2, 0, 5], [3, 0, 6]]
    assert infos["_final_obs"].all() and infos["_final_info"].all()
    assert reward.tolist() == [5, 7, 9]
    assert infos["final_info"]["episode"]["r"].tolist() == [5, 7, 9]
    assert infos["final_info"]["episode"]["l"].tolist() == [3, 3, 3]
    assert infos["final_info"]["_episode"].all()


def test_vector_env_rejects_tokens_outside_the_vocabulary():
    env = SeqGenVectorEnv(num_envs=2, vocab_size=5, seq_len=2, scorer="zero")
    env.reset()
    with pytest.raises(ValueError, match="tokens must lie"):
        env.step(np.array([0, 5]))


def test_vector_env_state_round_trip_mid_sequence():
    env = SeqGenVectorEnv(num_envs=2, vocab_size=5, seq_len=3, scorer=sum_scorer)
    env.reset()
    env.step(np.array([1, 2]))
    state = env.state_dict()
    other = SeqGenVectorEnv(num_envs=2, vocab_size=5, seq_len=3, scorer=sum_scorer)
    other.reset()
    other.load_state_dict(state)
    other.step(np.array([3, 3]))
    _, reward, term, _, infos = other.step(np.array([4, 4]))
    assert term.all() and infos["final_obs"].tolist() == [[1, 3, 4], [2, 3, 4]] and reward.tolist() == [8, 9]


def test_default_reward_is_minus_the_oracle_nll():
    env = SeqGenVectorEnv(num_envs=4, vocab_size=30, seq_len=5, oracle_seed=3, oracle_embedding_dim=8)
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(5):
        _, reward, _, _, infos = env.step(rng.integers(0, 30, size=4))
    oracle = make_oracle(30, 8, 32, seed=3)
    expected = -nll_per_sequence(oracle, torch.as_tensor(infos["final_obs"])).double().numpy()
    np.testing.assert_allclose(reward, expected, rtol=1e-6)


def test_registry_uses_the_native_batched_env():
    venv = registry.make_vec_env("SeqGen-v0", 8, {"vocab_size": 20, "seq_len": 4, "scorer": "zero"})
    assert isinstance(venv, SeqGenVectorEnv) and venv.num_envs == 8


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ({"wrappers": ["gymlab.envs.atari:wrap_atari"]}, "takes no wrappers"),
        ({"vectorization": "async"}, "takes no vectorization=async"),
    ],
)
def test_the_batched_env_refuses_what_it_would_ignore(extra, said):
    # stop 32: wrappers and vectorization=async were dropped silently on SeqGen-v0 (the preflight's single env
    # was wrapped, so a wrapper was checked but never trained with)
    with pytest.raises(GymlabError, match=said):
        registry.make_vec_env("SeqGen-v0", 2, {"vocab_size": 20, "seq_len": 4, "scorer": "zero"}, **extra)


# --- the oracle ------------------------------------------------------------------------------


def test_oracle_parameters_are_standard_normal_and_seeded():
    a, b, c = make_oracle(500, 32, 32, seed=0), make_oracle(500, 32, 32, seed=0), make_oracle(500, 32, 32, seed=1)
    flat = torch.cat([p.flatten() for n, p in a.named_parameters() if "bias_hh" not in n])
    assert abs(flat.mean().item()) < 0.02 and abs(flat.std().item() - 1.0) < 0.02
    for (_, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters(), strict=True):
        assert torch.equal(pa, pb)
        assert pa.abs().sum() == 0 or not torch.equal(pa, pc)


def test_oracle_dataset_is_identical_for_a_seed_and_differs_for_another():
    oracle = make_oracle(100, 32, 32, seed=0)
    first = sample_dataset(oracle, 300, 12, seed=5, chunk=128)
    again = sample_dataset(make_oracle(100, 32, 32, seed=0), 300, 12, seed=5, chunk=128)
    other_data = sample_dataset(oracle, 300, 12, seed=6, chunk=128)
    other_oracle = sample_dataset(make_oracle(100, 32, 32, seed=1), 300, 12, seed=5, chunk=128)
    assert first.shape == (300, 12) and first.dtype == torch.long
    assert torch.equal(first, again)
    assert (first != other_data).float().mean() > 0.5
    assert (first != other_oracle).float().mean() > 0.5


def test_oracle_prefers_its_own_samples():
    oracle = make_oracle(200, 32, 32, seed=0)
    data = sample_dataset(oracle, 500, 10, seed=0)
    uniform = torch.randint(0, 200, (500, 10), generator=torch.Generator().manual_seed(0))
    # Its own samples score its entropy; uniform tokens score far worse than log(200) ≈ 5.3.
    assert nll_oracle(oracle, data) < 4.5 < 5.3 < nll_oracle(oracle, uniform)


def test_sample_tokens_follows_the_softmax():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.5, 0.0]])).repeat(20_000, 1)
    tokens = sample_tokens(logits, torch.Generator().manual_seed(0)).view(20_000, 2)
    freq0 = torch.bincount(tokens[:, 0], minlength=3).float() / 20_000
    freq1 = torch.bincount(tokens[:, 1], minlength=3).float() / 20_000
    torch.testing.assert_close(freq0, torch.tensor([0.1, 0.2, 0.7]), atol=0.01, rtol=0)
    assert freq1[2] == 0


def test_token_lstm_step_by_step_matches_teacher_forcing():
    torch.manual_seed(0)
    model = TokenLSTM(11, 4, 6)
    tokens = torch.randint(0, 11, (3, 5))
    full = torch.log_softmax(model(tokens), dim=-1)  # (3, 5, 11)
    states = model.prefix_states(tokens)
    for t in range(5):
        step_logits = model.out(states[t][0].squeeze(0))
        torch.testing.assert_close(torch.log_softmax(step_logits, -1), full[:, t])
        torch.testing.assert_close(model.next_logits(tokens[:, :t]), step_logits)


def test_oracle_settings_are_the_envs_defaults_unless_env_kwargs_say_otherwise():
    """SeqGAN reads its oracle from the run's env_kwargs through oracle_settings: the env's own defaults."""
    import inspect

    from gymlab.envs.seqgen import SeqGenEnv, oracle_settings

    defaults = inspect.signature(SeqGenVectorEnv).parameters
    names = ("oracle_seed", "oracle_embedding_dim", "oracle_hidden_dim")
    assert oracle_settings({}) == tuple(defaults[n].default for n in names)
    assert oracle_settings({}) == tuple(inspect.signature(SeqGenEnv).parameters[n].default for n in names)
    assert oracle_settings({"oracle_seed": 4, "oracle_hidden_dim": 8, "vocab_size": 9}) == (4, 32, 8)


def test_rendering_warns_of_nothing():
    # stop 32: watch and video_every of a SeqGen run printed Gymnasium's "No render fps was declared" warning
    env = gym.make("SeqGen-v0", render_mode="ansi", vocab_size=20, seq_len=4, scorer="zero")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env.reset(seed=0)
        env.step(env.action_space.sample())
        assert isinstance(env.render(), str)


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        ({"seq_len": True}, "seq_len must be a whole number, got True"),
        ({"vocab_size": 50.0}, "vocab_size must be a whole number, got 50.0"),
        ({"oracle_hidden_dim": 0}, "oracle_hidden_dim must be at least 1, got 0"),
    ],
)
def test_env_kwargs_of_the_wrong_kind_are_named(kwargs, said):
    # stop 32: torch's own words came back ("expected a sequence of integers ... got 'True'"), the kwargs twice
    with pytest.raises(GymlabError, match=said):
        registry.make_vec_env("SeqGen-v0", 2, {"scorer": "zero", **kwargs})
    with pytest.raises(GymlabError, match=said):
        registry.make_env("SeqGen-v0", {"scorer": "zero", **kwargs}, train=True)
