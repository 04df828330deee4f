"""REINFORCE: returns and log-probabilities against hand-computed values, episode collection from
parallel envs (with time-limit truncation), clipping, checkpoints, and learning on CartPole and
InvertedPendulum."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import needs_of_env
from gymlab.agents.reinforce import (
    Reinforce,
    ReinforceConfig,
    categorical_entropy,
    categorical_log_prob,
    gaussian_entropy,
    gaussian_log_prob,
    policy_loss,
    reward_to_go,
    standardize,
)

from gymlab import checkpoint
from gymlab.agent import Context, Transition, load_agent_class
from gymlab.checkpoint import Checkpoint
from gymlab.config import resolve
from gymlab.envguard import env_actions
from gymlab.loop import train

BOX_OBS = gym.spaces.Box(-10.0, 10.0, (2,), np.float32)


def make_agent(act_space=None, obs_space=BOX_OBS, num_envs=1, **hp) -> Reinforce:
    act_space = act_space if act_space is not None else gym.spaces.Discrete(2)
    ctx = Context(obs_space, act_space, num_envs, 0, torch.device("cpu"), 10_000)
    return Reinforce(ReinforceConfig(**hp), ctx)


def step(agent, obs, action, reward, next_obs, terminated=None, truncated=None) -> None:
    n = len(reward)
    agent.observe(
        Transition(
            np.asarray(obs, np.float32),
            np.asarray(action),
            np.asarray(reward, float),
            np.asarray(next_obs, np.float32),
            np.zeros(n, bool) if terminated is None else np.asarray(terminated),
            np.zeros(n, bool) if truncated is None else np.asarray(truncated),
        )
    )


def set_constant_value(agent: Reinforce, value: float) -> None:
    """Make V(s) = value for every s: zero last-layer weights, bias = value."""
    last = agent.value[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(value)


# ----------------------------------------------------------------------------- pure functions


def test_reward_to_go_of_a_terminated_episode():
    # gamma 0.5: G2 = 3, G1 = 2 + 0.5 * 3 = 3.5, G0 = 1 + 0.5 * 3.5 = 2.75
    np.testing.assert_allclose(reward_to_go([1.0, 2.0, 3.0], 0.5), [2.75, 3.5, 3.0])


def test_reward_to_go_of_a_truncated_episode_bootstraps_the_tail():
    # cut by a time limit in a state worth 4: G2 = 1 + 0.5 * 4 = 3, G1 = 2.5, G0 = 2.25
    np.testing.assert_allclose(reward_to_go([1.0, 1.0, 1.0], 0.5, bootstrap=4.0), [2.25, 2.5, 3.0])
    np.testing.assert_allclose(reward_to_go([2.0], 0.9, bootstrap=10.0), [11.0])
    assert reward_to_go([], 0.9, bootstrap=1.0).shape == (0,)


def test_categorical_log_prob_and_entropy():
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])  # probs (1/4, 3/4) and (1/2, 1/2)
    lp = categorical_log_prob(logits, torch.tensor([1, 0]))
    torch.testing.assert_close(lp, torch.tensor([math.log(0.75), math.log(0.5)]))
    h = categorical_entropy(logits)
    expected = [-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), math.log(2.0)]
    torch.testing.assert_close(h, torch.tensor(expected))


def test_gaussian_log_prob_and_entropy():
    mean = torch.tensor([[0.5, -1.0]])
    log_std = torch.tensor([0.0, math.log(2.0)])  # sigma (1, 2)
    action = torch.tensor([[1.5, 0.0]])  # z = (1, 0.5)
    expected = (-0.5 * 1.0 - 0.0) + (-0.5 * 0.25 - math.log(2.0)) - math.log(2 * math.pi)
    torch.testing.assert_close(gaussian_log_prob(mean, log_std, action), torch.tensor([expected]))
    torch.testing.assert_close(gaussian_entropy(log_std), torch.tensor(math.log(2.0) + math.log(2 * math.pi * math.e)))


def test_policy_loss_gradient_is_the_weighted_score():
    log_probs = torch.tensor([-0.5, -1.0], requires_grad=True)
    weights = torch.tensor([2.0, -1.0])
    loss = policy_loss(log_probs, weights, torch.tensor([0.3, 0.5]), entropy_coef=0.1)
    assert loss.item() == pytest.approx(-(2 * -0.5 + -1 * -1.0) / 2 - 0.1 * 0.4)
    loss.backward()
    torch.testing.assert_close(log_probs.grad, torch.tensor([-1.0, 0.5]))  # -w / B


def test_standardize():
    out = standardize(torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(out, torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(standardize(torch.tensor([5.0])), torch.tensor([0.0]))


# ----------------------------------------------------------------------------- collecting episodes


def two_env_episodes(agent: Reinforce) -> None:
    """Env 0: 3 steps cut by a time limit. Env 1: 2 steps to a terminal state, then 1 more step."""
    o = [[0.0, 0.0], [1.0, 1.0]]
    step(agent, o, [0, 1], [1.0, 5.0], o)
    step(agent, o, [1, 0], [1.0, 6.0], [[0.0, 0.0], [9.0, 9.0]], terminated=[False, True])
    step(agent, o, [0, 1], [1.0, 7.0], [[8.0, 8.0], [1.0, 1.0]], truncated=[True, False])


def test_observe_splits_episodes_per_env_and_flags_truncation():
    agent = make_agent(num_envs=2, episodes_per_update=2)
    two_env_episodes(agent)
    assert len(agent.complete) == 2
    terminated_ep, truncated_ep = agent.complete
    np.testing.assert_array_equal(terminated_ep.rewards, [5.0, 6.0])
    np.testing.assert_array_equal(terminated_ep.actions, [1, 0])
    np.testing.assert_array_equal(terminated_ep.final_obs, [9.0, 9.0])
    assert not terminated_ep.truncated
    np.testing.assert_array_equal(truncated_ep.rewards, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(truncated_ep.final_obs, [8.0, 8.0])
    assert truncated_ep.truncated
    assert agent.ep_rewards == [[], [7.0]]  # env 1's next episode has begun


def test_truncated_episode_bootstraps_from_the_learned_value_and_terminated_does_not():
    agent = make_agent(num_envs=2, gamma=0.5, baseline="value")
    set_constant_value(agent, 4.0)
    two_env_episodes(agent)
    terminated, truncated = agent.episode_returns(agent.complete)
    np.testing.assert_allclose(terminated, [5.0 + 0.5 * 6.0, 6.0])  # no bootstrap at a terminal state
    np.testing.assert_allclose(truncated, [2.25, 2.5, 3.0])  # tail bootstrapped from V(s_T) = 4


@pytest.mark.parametrize("baseline", ["none", "mean"])
def test_without_a_value_network_a_truncated_tail_counts_as_zero(baseline):
    agent = make_agent(num_envs=2, gamma=0.5, baseline=baseline)
    two_env_episodes(agent)
    _, truncated = agent.episode_returns(agent.complete)
    np.testing.assert_allclose(truncated, [1.75, 1.5, 1.0])


def test_terminal_wins_when_both_flags_are_set():
    agent = make_agent(gamma=0.5, baseline="value")
    set_constant_value(agent, 4.0)
    step(agent, [[0.0, 0.0]], [0], [1.0], [[1.0, 1.0]], terminated=[True], truncated=[True])
    assert not agent.complete[0].truncated
    np.testing.assert_allclose(agent.episode_returns(agent.complete)[0], [1.0])


def test_update_waits_for_enough_episodes_then_logs_its_scalars():
    agent = make_agent(num_envs=2, episodes_per_update=3)
    two_env_episodes(agent)
    assert agent.update(3) == {}
    before = [p.detach().clone() for p in agent.policy.parameters()]
    o = [[0.0, 0.0], [1.0, 1.0]]
    step(agent, o, [0, 1], [1.0, 2.0], o, terminated=[True, True])
    metrics = agent.update(4)
    for key in ("policy_loss", "value_loss", "entropy", "batch_mean_return", "grad_norm"):
        assert math.isfinite(metrics[key]), key
    assert metrics["episodes_per_batch"] == 4  # all complete episodes go in, not just 3
    assert metrics["batch_mean_return"] == pytest.approx((3.0 + 11.0 + 1.0 + 9.0) / 4)
    assert agent.complete == [] and agent.updates == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.policy.parameters(), strict=True))
    assert agent.update(5) == {}


@pytest.mark.parametrize(
    ("steps", "num_envs", "ended"),
    # 5-step episodes, 4 per update: one env updates at env step 20; two envs at 20 too (2 episodes per 10 steps),
    # so 19 steps of 2 envs (ending at 20) update and 18 do not
    [(19, 1, 3), (20, 1, None), (18, 2, 2), (17, 2, 2), (19, 2, None), (5000, 1, None), (4, 1, 0)],
)
def test_a_budget_that_ends_before_the_first_update_is_said_once(steps, num_envs, ended):
    """A REINFORCE run whose budget ends before episodes_per_update episodes are complete learned nothing: said
    once on the text channel (as DQN's first learning round past the budget), when its last step comes, and true."""
    said: list[tuple[str, str]] = []
    text = lambda tag, msg: said.append((tag, msg))  # noqa: E731
    ctx = Context(BOX_OBS, gym.spaces.Discrete(2), num_envs, 0, torch.device("cpu"), steps, text=text)
    agent = Reinforce(ReinforceConfig(episodes_per_update=4, hidden_sizes=[8], value_steps=1), ctx)
    obs, actions, rewards = np.zeros((num_envs, 2), np.float32), np.zeros(num_envs, np.int64), np.ones(num_envs)
    for t, env_step in enumerate(range(num_envs, steps + num_envs, num_envs), start=1):  # the loop's steps
        done = np.full(num_envs, t % 5 == 0)
        agent.observe(Transition(obs, actions, rewards, obs, done, np.zeros(num_envs, bool)))
        agent.update(env_step)
    notes = [message for tag, message in said if tag == "schedule"]
    assert (agent.updates == 0) == bool(notes) == (ended is not None), (agent.updates, said)
    if notes:
        advice = (  # none ended: fewer would not help, and the episodes may never end
            "give more --steps or a lower hparams.episodes_per_update"
            if ended
            else "give more --steps if its episodes are longer, or a time limit if they never end by themselves"
        )
        # the steps the run took: 17 of 2 envs end at env step 18
        took = (
            "18 steps (its budget of 17 rounded up to a whole step of its 2 envs)" if steps == 17 else f"{steps} steps"
        )
        assert notes == [
            f"no learning in this run: its first update needs hparams.episodes_per_update 4 complete episodes,"
            f" and {ended} had ended when its {took} did; {advice}"
        ]


def test_a_run_from_a_checkpoint_does_not_say_it_never_updated_since_it_may_train_past_its_budget():
    """``--resume --steps N`` trains to N while the agent's total_steps stays the first run's budget."""
    said: list[tuple[str, str]] = []
    text = lambda tag, msg: said.append((tag, msg))  # noqa: E731
    ctx = Context(BOX_OBS, gym.spaces.Discrete(2), 1, 0, torch.device("cpu"), 10, text=text)
    agent = Reinforce(ReinforceConfig(episodes_per_update=4, hidden_sizes=[8]), ctx)
    agent.load_state_dict(agent.state_dict())
    agent.update(11)
    assert said == []


def test_mean_baseline_is_a_bias_corrected_average_of_earlier_batches():
    agent = make_agent(baseline="mean", baseline_decay=0.9)
    assert agent._mean_baseline() == 0.0
    agent._fold_into_mean_baseline(10.0)
    assert agent._mean_baseline() == pytest.approx(10.0)
    agent._fold_into_mean_baseline(20.0)
    assert agent._mean_baseline() == pytest.approx((0.9 * 1.0 + 2.0) / (1 - 0.81))


def test_gradient_clipping_reports_the_norm_before_clipping():
    agent = make_agent(num_envs=2, episodes_per_update=2, max_grad_norm=1e-6, normalize_returns=False)
    before = [p.detach().clone() for p in agent.policy.parameters()]
    two_env_episodes(agent)
    metrics = agent.update(3)
    assert metrics["grad_norm"] > 1e-3
    # Adam rescales any nonzero gradient, so check the clipped gradient itself.
    total = torch.sqrt(sum(p.grad.pow(2).sum() for p in agent.policy_params))
    assert total.item() == pytest.approx(1e-6, rel=1e-3)
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.policy.parameters(), strict=True))


# ----------------------------------------------------------------------------- actions


def test_box_actions_are_clipped_for_the_env_but_learned_from_the_raw_sample():
    space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    agent = make_agent(space, num_envs=64, log_std_init=1.0, baseline="none")
    obs = np.zeros((64, 2), np.float32)
    raw = agent.act(obs, explore=True)  # what the policy sampled
    assert raw.dtype == np.float32 and raw.shape == (64, 2)
    assert np.abs(raw).max() > 1.0  # sigma = e: many samples fall outside the bounds
    sent = env_actions(space, raw)  # what the loop gives the env
    assert np.all(sent >= -1.0) and np.all(sent <= 1.0)
    np.testing.assert_array_equal(np.clip(raw, -1.0, 1.0), sent)
    step(agent, obs, raw, np.ones(64), obs, terminated=np.ones(64, bool))
    learned = np.stack([ep.actions[0] for ep in agent.complete])  # (64, 2)
    np.testing.assert_array_equal(learned, raw)  # the log-prob is the raw sample's


def test_discrete_sampling_follows_the_policy_and_greedy_takes_the_mode():
    agent = make_agent(gym.spaces.Discrete(3, start=1), num_envs=4000)
    last = agent.policy[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.log(torch.tensor([0.2, 0.3, 0.5])))
    obs = np.zeros((4000, 2), np.float32)
    counts = np.bincount(agent.act(obs, explore=True), minlength=4)[1:] / 4000
    np.testing.assert_allclose(counts, [0.2, 0.3, 0.5], atol=0.03)
    assert set(agent.act(obs[:5], explore=False).tolist()) == {3}


def test_discrete_observations_are_one_hot():
    agent = make_agent(obs_space=gym.spaces.Discrete(5), num_envs=2)
    x = agent._features(np.array([0, 3]))
    torch.testing.assert_close(x, torch.eye(5)[[0, 3]])


def test_check_spaces_names_what_is_needed():
    check = Reinforce.check_spaces
    assert check(BOX_OBS, gym.spaces.Discrete(2)) is None
    assert check(gym.spaces.Discrete(4), gym.spaces.Box(-1, 1, (3,))) is None
    assert "Discrete or a 1-D Box action" in check(BOX_OBS, gym.spaces.MultiDiscrete([2, 2]))
    assert "1-D Box" in check(BOX_OBS, gym.spaces.Box(-1, 1, (2, 2)))
    assert "Box or Discrete observation" in check(gym.spaces.Dict({"a": BOX_OBS}), gym.spaces.Discrete(2))
    assert load_agent_class("reinforce") is Reinforce


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(
    ("act_space", "baseline"),
    [(gym.spaces.Discrete(2), "value"), (gym.spaces.Box(-1.0, 1.0, (1,), np.float32), "mean")],
)
def test_state_dict_round_trip_through_a_checkpoint_is_exact(tmp_path, act_space, baseline):
    def drive(agent, n_steps, rng):
        metrics: dict[str, float] = {}
        for t in range(n_steps):
            obs = rng.normal(size=(2, 2)).astype(np.float32)
            action = agent.act(obs, explore=True)
            done = np.array([t % 3 == 2, t % 4 == 3])
            step(agent, obs, action, rng.normal(size=2), obs + 1, terminated=done)
            metrics = agent.update(t) or metrics
        return metrics

    agent = make_agent(act_space, num_envs=2, episodes_per_update=2, baseline=baseline)
    drive(agent, 10, np.random.default_rng(0))  # some updates done, some episodes in flight
    assert agent.updates > 0 and any(agent.ep_rewards)
    checkpoint.save(tmp_path / "a.pt", {"agent_state": agent.state_dict()})
    clone = make_agent(act_space, num_envs=2, episodes_per_update=2, baseline=baseline)
    clone.load_state_dict(checkpoint.load(tmp_path / "a.pt")["agent_state"])

    assert drive(agent, 12, np.random.default_rng(1)) == drive(clone, 12, np.random.default_rng(1))
    mine, theirs = agent.state_dict()["policy"]["net"], clone.state_dict()["policy"]["net"]
    for key, value in mine.items():
        assert torch.equal(value, theirs[key]), key


# ----------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_learns_cartpole(tmp_path):
    cfg = resolve("reinforce", "CartPole-v1", None, ["eval_every=0"], seed=0)
    assert cfg.run.steps <= 200_000
    result = train(cfg, tmp_path)
    assert result.last_eval is not None and result.last_eval >= 400, result.last_eval


@pytest.mark.slow
@pytest.mark.needs("mujoco")
def test_learns_inverted_pendulum(tmp_path):
    cfg = resolve("reinforce", "InvertedPendulum-v5", None, ["eval_every=0"], seed=0)
    result = train(cfg, tmp_path)
    assert result.last_eval is not None and result.last_eval >= 500, result.last_eval


@pytest.mark.needs("mujoco")
def test_stopped_and_resumed_run_ends_with_the_same_networks(tmp_path):
    overrides = ["steps=4000", "num_envs=2", "eval_every=0", "eval_episodes=2", "checkpoint_every=0"]
    cfg = resolve("reinforce", "InvertedPendulum-v5", None, [*overrides, "episodes_per_update=4"], seed=3)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(cfg, whole)
    first = train(cfg, parts, stop_at=1500)  # mid-batch: episodes in flight and complete, unused
    assert first.interrupted
    ckpt = Checkpoint.read(parts / "checkpoints" / "last.pt")
    state = ckpt.agent_state["training"]
    assert state["updates"] > 0 and any(len(b["rewards"]) for b in state["buffers"])
    train(cfg, parts, resume=ckpt)
    a = Checkpoint.read(whole / "checkpoints" / "last.pt").agent_state
    b = Checkpoint.read(parts / "checkpoints" / "last.pt").agent_state
    assert a["training"]["updates"] == b["training"]["updates"] > 0
    for part, net in (("policy", "net"), ("training", "value")):
        for key, value in a[part][net].items():
            assert torch.equal(value, b[part][net][key]), (net, key)
    assert torch.equal(a["policy"]["log_std"], b["policy"]["log_std"])


@pytest.mark.parametrize(
    "env_id", [pytest.param(e, marks=needs_of_env(e)) for e in ["CartPole-v1", "Acrobot-v1", "InvertedPendulum-v5"]]
)
def test_presets_validate(env_id):
    cfg = resolve("reinforce", env_id, None, [], seed=0)
    assert cfg.run.agent == "reinforce" and isinstance(cfg.hparams, ReinforceConfig)
    assert cfg.run.num_envs > 1 and cfg.hparams.baseline == "value"


@pytest.mark.cuda
@pytest.mark.needs("mujoco")
def test_trains_and_round_trips_on_cuda(tmp_path):
    overrides = ["steps=2000", "num_envs=2", "eval_every=0", "eval_episodes=2", "episodes_per_update=2"]
    cfg = resolve("reinforce", "InvertedPendulum-v5", None, overrides, seed=0, device="cuda")
    result = train(cfg, tmp_path)
    assert result.checkpoint is not None
    state = Checkpoint.read(result.checkpoint).agent_state
    assert state["training"]["updates"] > 0 and state["policy"]["log_std"].is_cuda
    space = gym.spaces.Box(-3.0, 3.0, (1,), np.float32)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float64)
    ctx = Context(obs_space, space, 2, 0, torch.device("cuda"), 2000)
    agent = Reinforce(cfg.hparams, ctx)
    agent.load_state_dict(state)
    assert agent.act(np.zeros((2, 4)), explore=True).shape == (2, 1)
