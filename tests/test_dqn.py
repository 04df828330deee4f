from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymlab.agents import dqn as dqn_module
from gymlab.agents.dqn import DQN, DQNConfig, q_loss, resolve_compile, td_targets
from gymlab.replay import ReplayBuffer

from gymlab import checkpoint
from gymlab.agent import Context, Transition, check_agent_spaces
from gymlab.checkpoint import Checkpoint
from gymlab.config import configs_root, resolve, validate
from gymlab.errors import GymlabError
from gymlab.loop import train
from gymlab.nets import MLP, NatureCNN, clip_grad_norm

# The learning tests' fixed seed. DQN's greedy return at one instant is volatile: in the 5-seed
# benchmark (benchmarks/README.md) some seeds end below 450 at 50k steps, for Stable-Baselines3
# as for gymlab (seed 0 ends at 195 here, 18 with SB3); seed 1 ends at 500 with both.
LEARNING_SEED = 1
# RL Zoo's tuned CartPole settings, as the shipped preset gives them to users.
CARTPOLE = resolve("dqn", "CartPole-v1").hparams.model_dump()


def config(env="CartPole-v1", steps=50_000, seed=0, **hparams):
    data = {
        "agent": "dqn",
        "env": env,
        "seed": seed,
        "steps": steps,
        "device": "cpu",
        "eval_every": 0,
        "eval_episodes": 10,
        "checkpoint_every": 0,
        "hparams": hparams,
    }
    return validate(data, DQN)


def make_agent(obs_space, act_space, num_envs=1, **hp) -> DQN:
    ctx = Context(obs_space, act_space, num_envs, 0, torch.device("cpu"), 10_000)
    return DQN(DQNConfig(**hp), ctx)


def test_td_targets_by_hand():
    reward = torch.tensor([1.0, 2.0, -1.0])
    terminated = torch.tensor([0.0, 1.0, 0.0])
    next_q_target = torch.tensor([[1.0, 3.0], [5.0, 4.0], [-2.0, 0.5]])
    y = td_targets(reward, terminated, next_q_target, 0.5)
    assert torch.allclose(y, torch.tensor([1 + 0.5 * 3.0, 2.0, -1 + 0.5 * 0.5]))
    # Double DQN: the online net picks the action, the target net values it.
    next_q_online = torch.tensor([[9.0, 0.0], [0.0, 9.0], [9.0, 0.0]])
    y2 = td_targets(reward, terminated, next_q_target, 0.5, next_q_online)
    assert torch.allclose(y2, torch.tensor([1 + 0.5 * 1.0, 2.0, -1 + 0.5 * -2.0]))


def test_n_step_targets_sum_the_rewards_and_bootstrap_n_steps_on(monkeypatch):
    """With n_steps = 3 a round's targets are r_t + γ r_t+1 + γ² r_t+2 + γ³ max Q_target(s_t+3), cut at the end."""
    box = gym.spaces.Box(-100, 100, (2,), np.float32)
    agent = make_agent(box, gym.spaces.Discrete(2), n_steps=3, gamma=0.5, batch_size=64, learning_starts=0)
    assert (agent.replay.n_step, agent.replay.gamma) == (3, 0.5)
    rewards = [1.0, 2.0, 3.0, 4.0, 5.0]  # one episode of 5 steps, s_t = (t, t), terminal after the last
    for t, r in enumerate(rewards):
        obs = np.full((1, 2), t, np.float32)
        agent.observe(Transition(obs, np.array([t % 2]), np.array([r]), obs + 1, np.array([t == 4]), np.array([False])))
    seen: dict[float, float] = {}  # t -> its target

    def record(obs, action, y):
        seen.update(zip(obs[:, 0].tolist(), y.tolist(), strict=True))
        return y.sum(), y.sum()

    monkeypatch.setattr(agent, "gradient_step", record)
    agent.learn(1)
    with torch.no_grad():
        v = agent.target(torch.arange(8, dtype=torch.float32)[:, None].repeat(1, 2)).max(dim=1).values
    assert sorted(seen) == [0, 1, 2, 3, 4]
    for first, y in seen.items():
        t = int(first)
        k = min(3, 5 - t)  # steps summed: 3, or fewer where the episode ends first
        bootstrap = 0.5**3 * float(v[t + 3]) if t + 3 < 5 else 0.0  # none once the terminal step is inside
        assert y == pytest.approx(sum(0.5**j * rewards[t + j] for j in range(k)) + bootstrap, rel=1e-5), t


def test_huber_loss_by_hand():
    q = torch.tensor([[0.0, 1.0], [2.0, 0.0]], requires_grad=True)
    action = torch.tensor([1, 0])
    target = torch.tensor([1.5, 5.0])
    loss = q_loss(q, action, target)  # errors 0.5 (quadratic) and 3.0 (linear beyond δ = 1)
    assert loss.item() == pytest.approx((0.5 * 0.5**2 + (3.0 - 0.5)) / 2)
    loss.backward()
    assert q.grad is not None
    assert torch.allclose(q.grad, torch.tensor([[0.0, -0.25], [-0.5, 0.0]]))  # gradients capped at δ / B


def test_spaces():
    box4, disc2 = gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2)
    assert DQN.check_spaces(box4, disc2) is None
    assert DQN.check_spaces(gym.spaces.Discrete(16), disc2) is None
    reason = DQN.check_spaces(box4, gym.spaces.Box(-1, 1, (1,)))
    assert reason is not None and "continuous" in reason and "Discrete" in reason
    with pytest.raises(GymlabError, match=r"built-in agents that can: reinforce$"):  # the core names who can
        check_agent_spaces(DQN, "my:Env", box4, gym.spaces.Box(-1, 1, (1,)))
    assert DQN.check_spaces(gym.spaces.Dict({"a": box4}), disc2) is not None
    # stop 32: raw Atari frames (210, 160, 3) were read as 210 channels of 160x3 images, "smaller than 36x36"
    raw = DQN.check_spaces(gym.spaces.Box(0, 255, (210, 160, 3), np.uint8), disc2)
    assert raw is not None and "210x160 images with 3 channels last" in raw and "wrappers: [atari]" in raw
    small = DQN.check_spaces(gym.spaces.Box(0, 255, (4, 20, 20), np.uint8), disc2)
    assert small is not None and "smaller than the 36x36" in small
    image = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    agent = make_agent(image, gym.spaces.Discrete(6), buffer_size=100)
    assert isinstance(agent.online, NatureCNN) and agent.replay.frame_stack == 4
    assert agent.replay.frames.shape[2:] == (84, 84)  # one frame per slot, not a stack
    assert agent.act(np.zeros((1, 4, 84, 84), np.uint8), explore=False).shape == (1,)
    assert isinstance(make_agent(gym.spaces.Discrete(16), disc2).online, MLP)


def test_a_discrete_observation_space_that_does_not_start_at_0_is_one_hot_from_its_first_state():
    shifted = make_agent(gym.spaces.Discrete(4, start=-2), gym.spaces.Discrete(2))
    plain = make_agent(gym.spaces.Discrete(4), gym.spaces.Discrete(2))
    plain.online.load_state_dict(shifted.online.state_dict())
    obs = np.array([-2, -1, 0, 1])  # every state of the shifted space, which an index from 0 would break
    with torch.no_grad():
        torch.testing.assert_close(shifted.online(torch.from_numpy(obs)), plain.online(torch.from_numpy(obs + 2)))
    assert shifted.act(obs, explore=False).tolist() == plain.act(obs + 2, explore=False).tolist()


def test_continuous_actions_exit_2_with_one_line(cli):
    result = cli("train", "dqn", "MountainCarContinuous-v0", "--steps", "100")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "reinforce" in lines[0] and "Discrete" in lines[0]


@pytest.mark.parametrize(
    ("frame_stack", "said"),
    [(2, "frame_stack=2 reads observations as 2 frames stacked"), (4, "not a stack of consecutive frames")],
)
def test_a_frame_stack_the_observations_do_not_hold_is_one_line(cli, tmp_path, frame_stack, said):
    # stop 32: both were tracebacks (exit 1), from building the replay memory and from its first insertion
    result = cli("train", "dqn", "CartPole-v1", "--steps", "300", f"frame_stack={frame_stack}", "--run-dir", "r")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], result.stderr
    assert not (tmp_path / "r").exists()  # it failed before the first checkpoint


def test_schedules_and_target_sync():
    agent = make_agent(
        gym.spaces.Box(-1, 1, (3,)),
        gym.spaces.Discrete(2),
        learning_starts=100,
        train_freq=50,
        gradient_steps=2,
        batch_size=4,
        target_update_interval=40,
        exploration_fraction=0.5,
        exploration_final_eps=0.1,
    )
    rng = np.random.default_rng(0)
    steps_trained = []
    for step in range(1, 301):
        obs = rng.normal(size=(1, 3)).astype(np.float32)
        agent.observe(Transition(obs, np.array([step % 2]), np.ones(1), obs, np.zeros(1, bool), np.zeros(1, bool)))
        before = agent.grad_steps
        agent.update(step)
        if agent.grad_steps > before:
            steps_trained.append(step)
        if step < 100:
            assert agent.epsilon == 1.0  # uniform-random play before learning starts
    assert steps_trained == [150, 200, 250, 300]  # multiples of train_freq after learning_starts
    assert agent.grad_steps == 8 and agent.target_updates == 300 // 40
    assert agent.epsilon == pytest.approx(1.0 - 0.9 * 300 / 5000)
    # A hard target update makes the target equal the online network.
    agent.update_target()
    for p, q in zip(agent.online.parameters(), agent.target.parameters(), strict=True):
        assert torch.equal(p, q)


def test_learning_rate_decays_linearly_to_its_final_value():
    hp = dict(learning_starts=0, train_freq=2_500, batch_size=4, learning_rate=1e-3)
    box, disc = gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2)
    agent, constant = make_agent(box, disc, learning_rate_final=1e-4, **hp), make_agent(box, disc, **hp)
    obs = np.zeros((1, 3), np.float32)
    seen: list[tuple[float, float]] = []
    for step in range(1, 10_001):  # the run's budget: Context's total_steps
        for a in (agent, constant):
            a.observe(Transition(obs, np.array([0]), np.ones(1), obs, np.zeros(1, bool), np.zeros(1, bool)))
            a.update(step)
        if step % 2_500 == 0:
            seen.append((agent.optimizer.param_groups[0]["lr"], constant.optimizer.param_groups[0]["lr"]))
    # Rounds at 1/4, 1/2, 3/4 and all of the budget; the last round learns at the final rate.
    assert [lr for lr, _ in seen] == pytest.approx([7.75e-4, 5.5e-4, 3.25e-4, 1e-4])
    assert [lr for _, lr in seen] == [1e-3] * 4  # unset: constant, as before
    assert agent.learning_rate(0) == pytest.approx(1e-3) and agent.learning_rate(20_000) == pytest.approx(1e-4)


@pytest.mark.slow
def test_cartpole_reaches_450_within_50k_steps(tmp_path):
    result = train(config(seed=LEARNING_SEED, **CARTPOLE), tmp_path)
    assert result.last_eval is not None and result.last_eval >= 450, result.last_eval


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["target_never_updated", "no_target_network", "latest_batch_only"])
def test_cartpole_fails_with_broken_learning(tmp_path, monkeypatch, broken):
    hp = dict(CARTPOLE)
    if broken == "target_never_updated":
        monkeypatch.setattr(DQN, "update_target", lambda self, times=1: None)
    elif broken == "no_target_network":
        # Bootstrap from the online network as it learns, at every gradient step (the double-DQN
        # path evaluates it per step). With these settings the target network is synced before
        # each round anyway, so merely aliasing target to online would change nothing here.
        def online_targets(reward, terminated, next_q_target, gamma, next_q_online=None):
            return reward + gamma * (1.0 - terminated) * next_q_online.max(dim=1).values

        monkeypatch.setattr(dqn_module, "td_targets", online_targets)
        hp["double_dqn"] = True
    else:
        # Sampling returns the most recent transition over and over instead of a uniform draw.
        def latest(self, batch_size):
            cur = (self.head - 2) % self.lane_size
            return np.zeros(batch_size, np.int64), np.full(batch_size, cur[0])

        monkeypatch.setattr(ReplayBuffer, "sample_slots", latest)
    result = train(config(seed=LEARNING_SEED, **hp), tmp_path)
    assert result.last_eval is not None and result.last_eval < 450, result.last_eval


def _params(run_dir: Path) -> dict[str, torch.Tensor]:
    state = Checkpoint.read(run_dir / "checkpoints" / "last.pt").agent_state
    return {**{f"online.{k}": v for k, v in state["policy"]["online"].items()}, **state["training"]["replay"]}


@pytest.mark.parametrize(("double_dqn", "n_steps"), [(False, 1), (True, 1), (False, 3)])
def test_exact_resume_with_the_replay_memory_saved(tmp_path, double_dqn, n_steps):
    hp = {
        **CARTPOLE,
        "learning_starts": 300,
        "train_freq": 100,
        "gradient_steps": 8,
        "net_arch": [32, 32],  # save_replay is left at its default: the memory fits the budget
        "double_dqn": double_dqn,
        "n_steps": n_steps,
        "tau": 0.5,
        "target_update_interval": 50,
    }
    cfg = config(steps=2000, seed=3, **hp)
    whole, part = tmp_path / "whole", tmp_path / "part"
    whole.mkdir()
    part.mkdir()
    train(cfg, whole)
    first = train(cfg, part, stop_at=1150)
    assert first.interrupted and first.step == 1150
    ckpt = Checkpoint.read(part / "checkpoints" / "last.pt")
    assert ckpt.agent_state["training"]["replay"]["frames"].shape[1] > 1000  # the memory travelled with it
    train(cfg, part, resume=ckpt)
    a, b = _params(whole), _params(part)
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], (torch.Tensor, np.ndarray)):
            assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), key


def test_vector_envs_feed_one_memory(tmp_path):
    hp = {**CARTPOLE, "learning_starts": 200, "train_freq": 64, "gradient_steps": 2, "net_arch": [16]}
    data = config(steps=1000, **hp).to_dict()
    data["num_envs"] = 4
    result = train(validate(data, DQN), tmp_path)
    assert result.step == 1000


class Notes:
    """A progress display that keeps the agent's text lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def start(self, total, initial):
        pass

    def phase(self, name, done, total):
        pass

    def update(self, step, episodes, recent_return):
        pass

    def note(self, message):
        self.lines.append(message)

    def close(self):
        pass


def test_replay_over_the_budget_is_said_once_at_save_and_again_at_resume(tmp_path):
    hp = {**CARTPOLE, "learning_starts": 100, "train_freq": 50, "gradient_steps": 2, "net_arch": [16]}
    data = config(steps=600, **{**hp, "replay_save_budget_mb": 0.5}).to_dict()  # 100k slots: 3.2 MB
    data.update(checkpoint_every=200, eval_every=200, eval_episodes=1)
    cfg = validate(data, DQN)
    notes = Notes()
    first = train(cfg, tmp_path, stop_at=400, progress=notes)
    assert first.interrupted
    # Checkpoints at 200 and 400 (and best.pt after each evaluation): one line, saying why and what to do.
    assert len(notes.lines) == 1, notes.lines
    line = notes.lines[0]
    assert line.startswith("replay: ") and "exceed replay_save_budget_mb=0.5" in line and "not exact" in line
    assert "save_replay=always" in line
    ckpt = Checkpoint.read(tmp_path / "checkpoints" / "last.pt")
    assert ckpt.agent_state["training"]["replay"] is None
    resumed = Notes()
    train(cfg, tmp_path, resume=ckpt, progress=resumed)
    assert len(resumed.lines) == 1 and "this resume is not exact" in resumed.lines[0], resumed.lines


def test_replay_is_saved_by_default_and_never_when_asked(tmp_path):
    hp = {**CARTPOLE, "learning_starts": 100, "train_freq": 50, "gradient_steps": 2, "net_arch": [16]}
    train(config(steps=300, **hp), tmp_path / "auto")
    state = Checkpoint.read(tmp_path / "auto" / "checkpoints" / "last.pt").agent_state["training"]
    assert state["replay"]["num_added"] == 300
    train(config(steps=300, **{**hp, "save_replay": "never"}), tmp_path / "never")
    assert Checkpoint.read(tmp_path / "never" / "checkpoints" / "last.pt").agent_state["training"]["replay"] is None
    assert DQNConfig(save_replay=True).save_replay == "always"  # earlier configs' booleans still read


def test_check_config_rejects_a_memory_smaller_than_the_envs_need():
    box4, disc2 = gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2)
    ctx = Context(box4, disc2, 8, 0, torch.device("cpu"), 1000)
    problem = DQN.check_config(DQNConfig(buffer_size=16, batch_size=8), ctx)
    assert problem is not None and "buffer_size >= 24" in problem
    assert DQN.check_config(DQNConfig(buffer_size=24, batch_size=8), ctx) is None
    image = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)  # 4 stacked frames: 6 slots per env
    image_ctx = Context(image, disc2, 8, 0, torch.device("cpu"), 1)
    assert DQN.check_config(DQNConfig(buffer_size=40, batch_size=8), image_ctx) is not None


def test_net_arch_must_be_positive():
    with pytest.raises(ValueError, match="greater than 0"):
        DQNConfig(net_arch=[64, -4])


@pytest.mark.parametrize("num_envs", [1, 3, 8])
def test_learning_rounds_count_env_steps_whatever_the_number_of_envs(num_envs):
    # train_freq 4, 1 gradient step: one gradient step per 4 env steps after learning_starts, also
    # when one loop step adds 8 env steps; Polyak target updates every 6 env steps, counted alike.
    agent = make_agent(
        gym.spaces.Box(-1, 1, (3,)),
        gym.spaces.Discrete(2),
        num_envs=num_envs,
        learning_starts=50,
        train_freq=4,
        gradient_steps=1,
        batch_size=4,
        target_update_interval=6,
        tau=0.5,
    )
    obs = np.zeros((num_envs, 3), np.float32)
    flags = np.zeros(num_envs, bool)
    for step in range(num_envs, 24 * 24 + 1, num_envs):  # 576 = a multiple of 1, 3 and 8
        agent.observe(Transition(obs, np.zeros(num_envs, np.int64), np.ones(num_envs), obs, flags, flags))
        agent.update(step)
    assert agent.grad_steps == (576 - 52) // 4 + 1  # steps 52, 56, ..., 576
    assert agent.target_updates == 576 // 6


@pytest.mark.parametrize(
    ("steps", "num_envs"),
    [(1023, 1), (1024, 1), (1016, 8), (1017, 8), (1009, 8), (5000, 1)],  # 8 envs: 1,017 steps end at 1,024
)
def test_a_budget_that_ends_before_the_first_learning_round_is_said_once(steps, num_envs):
    """A short DQN run only fills the memory: said on the text channel at the first update, and true."""
    said: list[tuple[str, str]] = []
    box, two = gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2)
    ctx = Context(box, two, num_envs, 0, torch.device("cpu"), steps, text=lambda tag, msg: said.append((tag, msg)))
    hp = DQNConfig(learning_starts=1000, train_freq=256, gradient_steps=1, batch_size=4, save_replay="always")
    agent = DQN(hp, ctx)
    obs, flags = np.zeros((num_envs, 3), np.float32), np.zeros(num_envs, bool)
    for step in range(num_envs, steps + num_envs, num_envs):  # the loop's steps, to the first at or past the budget
        agent.observe(Transition(obs, np.zeros(num_envs, np.int64), np.ones(num_envs), obs, flags, flags))
        agent.update(step)
    notes = [message for tag, message in said if tag == "schedule"]
    assert (agent.grad_steps == 0) == bool(notes), (agent.grad_steps, said)
    if notes:  # the steps the run took: 1,009 of 8 envs end at env step 1,016
        took = {1009: "1,016 steps (its budget of 1,009 rounded up to a whole step of its 8 envs)"}
        assert notes == [
            f"no learning in this run: its first learning round is at env step 1,024 (hparams.learning_starts 1,000,"
            f" train_freq 256), past its {took.get(steps, f'{steps:,} steps')}; give more --steps or a lower"
            " hparams.learning_starts"
        ]


def test_a_run_from_a_checkpoint_does_not_say_so_since_it_may_train_past_its_schedules_budget():
    """``--resume --steps N`` trains to N while the schedules keep the first run's budget (total_steps)."""
    said: list[tuple[str, str]] = []
    box, two = gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2)
    ctx = Context(box, two, 1, 0, torch.device("cpu"), 500, text=lambda tag, msg: said.append((tag, msg)))
    agent = DQN(DQNConfig(learning_starts=1000, train_freq=256, batch_size=4), ctx)
    agent.load_state_dict(agent.state_dict())
    agent.update(1)
    assert [tag for tag, _ in said if tag == "schedule"] == []


def test_polyak_updates_of_one_step_compose():
    torch.manual_seed(0)
    agent = make_agent(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2), tau=0.3)
    torch.manual_seed(0)
    twice = make_agent(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2), tau=0.3)
    for a in (agent, twice):
        with torch.no_grad():
            for p in a.online.parameters():
                p.add_(1.0)
    agent.update_target(2)
    twice.update_target()
    twice.update_target()
    for p, q, o in zip(agent.target.parameters(), twice.target.parameters(), agent.online.parameters(), strict=True):
        assert torch.allclose(p, q) and not torch.allclose(p, o)


@pytest.mark.needs("atari")
def test_native_atari_vector_env_feeds_the_memory_exactly():
    # ALE's own vector env (C++ preprocessing, zero-padded frame stacks, life loss ends episodes),
    # 3 envs at once: every sampled transition must be the one the envs produced, frame for frame.
    from ale_py import vector_env

    envs = vector_env.AtariVectorEnv(
        "breakout", num_envs=3, autoreset_mode="SameStep", episodic_life=True, repeat_action_probability=0.0
    )
    n = 3
    agent = make_agent(
        gym.spaces.Box(0, 255, (4, 84, 84), np.uint8),
        gym.spaces.Discrete(4),
        num_envs=n,
        buffer_size=3 * 200,
        learning_starts=60,
        train_freq=30,
        batch_size=4,
    )
    obs, _ = envs.reset(seed=0)
    seen = {}
    rng = np.random.default_rng(0)
    ended = 0
    for k in range(150):
        action = rng.integers(0, 4, n)
        next_obs, _, terminated, truncated, infos = envs.step(action)
        real_next = next_obs.copy()
        for e in np.flatnonzero(terminated | truncated):
            real_next[e] = infos["final_obs"][e]
            ended += 1
        # Each transition is tagged by its reward, which the agent stores as it is.
        tags = (k * n + np.arange(n)).astype(np.float64)
        agent.observe(Transition(obs, action, tags, real_next, terminated, truncated))
        for i in range(n):
            seen[int(tags[i])] = (obs[i].copy(), real_next[i].copy(), bool(terminated[i]))
        agent.update((k + 1) * n)
        obs = next_obs
    envs.close()
    assert ended >= 3 and agent.replay.padding == "zero" and agent.grad_steps == (450 - 90) // 30 + 1
    batch = agent.replay.sample(300)
    for tag, o, nxt, te in zip(batch.reward, batch.obs, batch.next_obs, batch.terminated, strict=True):
        ref = seen[int(tag)]
        assert np.array_equal(o, ref[0]) and np.array_equal(nxt, ref[1]) and te == ref[2]
    # One frame per slot: 600 slots of 84x84, not 600 stacks.
    assert agent.replay.frames.shape == (3, 200, 84, 84)


def _twins(device: str, compile_mode: str, **hp) -> tuple[DQN, DQN]:
    """Two agents with the same weights and replay memory (random CartPole-like play), one eager."""
    out = []
    for mode in ("off", compile_mode):
        ctx = Context(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2), 2, 0, torch.device(device), 10_000)
        torch.manual_seed(0)
        agent = DQN(DQNConfig(compile=mode, net_arch=[32, 32], batch_size=16, **hp), ctx)
        rng = np.random.default_rng(0)
        for _ in range(200):
            obs, nxt = rng.normal(size=(2, 4)).astype(np.float32), rng.normal(size=(2, 4)).astype(np.float32)
            ended = rng.random(2) < 0.1
            agent.observe(Transition(obs, rng.integers(0, 2, 2), rng.normal(size=2), nxt, ended, np.zeros(2, bool)))
        out.append(agent)
    return out[0], out[1]


def _same_weights(a: DQN, b: DQN, tol: float) -> float:
    gap = max((p - q).abs().max().item() for p, q in zip(a.online_params, b.online_params, strict=True))
    assert gap < tol, gap
    return gap


def test_cuda_graph_needs_cuda():
    ctx = Context(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2), 1, 0, torch.device("cpu"), 1000)
    problem = DQN.check_config(DQNConfig(compile="cuda_graph"), ctx)
    assert problem is not None and "CUDA" in problem and "compile=off" in problem
    assert DQN.check_config(DQNConfig(), ctx) is None  # the default, auto, runs anywhere


def test_compile_auto_is_eager_on_the_cpu_and_the_cuda_graph_on_cuda():
    assert DQNConfig().compile == "auto"
    assert resolve_compile("auto", torch.device("cpu")) == "off"
    assert resolve_compile("auto", torch.device("cuda")) == "cuda_graph"
    assert resolve_compile("auto", torch.device("cuda", 1)) == "cuda_graph"
    assert resolve_compile("auto", torch.device("meta")) == "off"
    for mode in ("off", "torch", "cuda_graph"):  # what the user asked for, as it is
        assert resolve_compile(mode, torch.device("cuda")) == mode == resolve_compile(mode, torch.device("cpu"))
    agent = make_agent(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2))
    assert agent.compile == "off" and agent._graphed is None and agent._loss is None and not agent.greedy.graphed
    assert all(isinstance(group["lr"], float) for group in agent.optimizer.param_groups)  # eager Adam, as before


@pytest.mark.parametrize("max_norm", [1e-3, 1e9])  # clipping, and not
@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_clip_grad_norm_is_torchs_to_the_bit(net, max_norm):
    """gymlab.nets.clip_grad_norm (DQN's clipping) is clip_grad_norm_'s arithmetic written out: the same bits."""
    make = (lambda: MLP(4, [256, 256], 2)) if net == "mlp" else (lambda: NatureCNN(4, 84, 84, 6))
    ours, theirs = list(make().parameters()), list(make().parameters())
    generator = torch.Generator().manual_seed(0)
    before = [torch.randn(p.shape, generator=generator) for p in ours]
    for p, q, g in zip(ours, theirs, before, strict=True):
        p.grad, q.grad = g.clone(), g.clone()
    norm = clip_grad_norm(ours, max_norm)
    reference = torch.nn.utils.clip_grad_norm_(theirs, max_norm, foreach=True)
    assert torch.equal(norm, reference)
    grads = [(p.grad, q.grad) for p, q in zip(ours, theirs, strict=True)]
    assert all(a is not None and b is not None and torch.equal(a, b) for a, b in grads)
    scaled = any(not torch.equal(a, g) for (a, _), g in zip(grads, before, strict=True) if a is not None)
    assert scaled == (max_norm < 1)


def _acting_before(agent: DQN, rng: np.random.Generator, obs: np.ndarray, explore: bool) -> np.ndarray:
    """DQN.act as it was written before acting went through inference_mode on preallocated tensors (0e5d529)."""
    with torch.no_grad():
        greedy = agent.online(torch.as_tensor(obs)).argmax(dim=1).numpy()
    if explore:
        u = rng.random(len(obs))
        eps = agent.epsilon
        random_actions = np.minimum((u / max(eps, 1e-12) * agent.n_actions).astype(np.int64), agent.n_actions - 1)
        greedy = np.where(u < eps, random_actions, greedy)
    return greedy + agent.act_start


def test_acting_runs_in_inference_mode_on_the_observations_in_place_and_gives_the_same_actions():
    agent = make_agent(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(5, start=2), num_envs=16)
    seen = []
    agent.online.register_forward_hook(
        lambda module, args, out: seen.append((torch.is_inference_mode_enabled(), args[0].data_ptr()))
    )
    reference_rng = np.random.default_rng([0, 1])  # the agent's exploration generator, seed 0
    data = np.random.default_rng(1)
    for eps in (0.0, 0.05, 0.5, 0.999):
        agent.epsilon = eps
        for explore in (True, False):
            obs = data.normal(size=(16, 3)).astype(np.float32)
            seen.clear()
            actions = agent.act(obs, explore)
            # One pass under inference_mode, reading numpy's memory (no copy), unless every env explored.
            assert seen == [(True, obs.ctypes.data)] or (explore and eps > 0.99 and not seen)
            assert actions.dtype == np.int64 and actions.shape == (16,)
            assert np.array_equal(actions, _acting_before(agent, reference_rng, obs, explore)), (eps, explore)
    assert np.array_equal(agent.rng.random(4), reference_rng.random(4))  # one draw per env per call, as before


def test_the_fast_pong_preset_validates_and_keeps_rl_zoos_sampled_transitions_per_env_step():
    fast_path = configs_root() / "dqn" / "PongNoFrameskip-v4-fast.yaml"
    fast, zoo = resolve("dqn", "PongNoFrameskip-v4", fast_path), resolve("dqn", "PongNoFrameskip-v4")
    assert 16 <= fast.run.num_envs <= 32 and zoo.run.num_envs == 1
    assert isinstance(fast.hparams, DQNConfig) and isinstance(zoo.hparams, DQNConfig)
    f, z = fast.hparams, zoo.hparams
    assert f.compile == "auto" and f.frame_stack == z.frame_stack == 4
    sampled = lambda h: h.batch_size * h.gradient_steps / h.train_freq  # noqa: E731
    assert sampled(f) == sampled(z) == 8  # transitions drawn per env step: what the replay ratio keeps
    assert f.gradient_steps / f.train_freq < z.gradient_steps / z.train_freq  # fewer gradient steps: the trade
    # The target follows after as many gradient steps as RL Zoo's.
    assert f.target_update_interval * f.gradient_steps / f.train_freq == z.target_update_interval / z.train_freq
    text = fast_path.read_text()
    assert "What was traded" in text and "RL Zoo" in text and "PongNoFrameskip-v4.yaml" in text
    ctx = Context(
        gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), gym.spaces.Discrete(6), fast.run.num_envs, 0,
        torch.device("cpu"), fast.run.steps,
    )  # fmt: skip
    assert DQN.check_config(f, ctx) is None


@pytest.mark.slow  # torch.compile takes tens of seconds on this CPU
def test_compiled_loss_learns_as_eager():
    eager, compiled = _twins("cpu", "torch")
    start = [p.detach().clone() for p in compiled.online_params]
    for _ in range(3):
        eager.learn(4)
        compiled.learn(4)
    assert compiled.grad_steps == 12
    assert max((p - q).abs().max().item() for p, q in zip(compiled.online_params, start, strict=True)) > 1e-4
    _same_weights(eager, compiled, 1e-5)  # the same arithmetic, up to the order of float operations


@pytest.mark.cuda
@pytest.mark.parametrize("double_dqn", [False, True])
def test_cuda_graph_learns_as_eager_and_checkpoints_portably(double_dqn, tmp_path):
    eager, graphed = _twins("cuda", "cuda_graph", double_dqn=double_dqn)
    start = [p.detach().clone() for p in graphed.online_params]
    for group in graphed.optimizer.param_groups:  # as learning_rate_final's schedule sets it, before recording
        group["lr"] = graphed.cfg.learning_rate
    for _ in range(3):
        eager.learn(4)
        graphed.learn(4)
    moved = max((p - q).abs().max().item() for p, q in zip(graphed.online_params, start, strict=True))
    assert moved > 1e-4  # the graph really steps (its warm-up steps were undone, not kept)
    _same_weights(eager, graphed, 1e-4)
    assert torch.allclose(eager._sums, graphed._sums, atol=1e-4)
    # A learning rate set as a number (a schedule) reaches the graph.
    for group in graphed.optimizer.param_groups:
        group["lr"] = 0.0
    before = [p.detach().clone() for p in graphed.online_params]
    graphed.learn(2)
    assert all(torch.equal(p, q) for p, q in zip(graphed.online_params, before, strict=True))
    # The checkpoint is the eager one's kind: a float learning rate, loadable on the CPU.
    state = graphed.state_dict()
    assert all(
        isinstance(g["lr"], float) and not g["capturable"] for g in state["training"]["optimizer"]["param_groups"]
    )
    cpu = _twins("cpu", "off")[0]
    cpu.load_state_dict(checkpoint_roundtrip(state, tmp_path))
    assert all(torch.equal(p.cpu(), q) for p, q in zip(graphed.online_params, cpu.online_params, strict=True))
    cpu.learn(2)
    assert cpu.grad_steps == graphed.grad_steps + 2


@pytest.mark.cuda
def test_acting_through_the_cuda_graph_gives_the_eager_actions_and_follows_learning():
    eager, auto = _twins("cuda", "auto")
    assert auto.compile == "cuda_graph" and auto._graphed is not None and auto.greedy.graphed
    assert auto.batches.source == "device"  # a few KB of frames: gathered on the GPU

    def by_hand(agent: DQN, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return agent.online(torch.as_tensor(obs, device="cuda")).argmax(dim=1).cpu().numpy()

    rng = np.random.default_rng(3)
    for round_ in range(3):
        for n in (2, 5, 2):  # a graph per batch shape, replayed when the shape comes back
            obs = rng.normal(size=(n, 4)).astype(np.float32)
            assert np.array_equal(auto.act(obs, explore=False), by_hand(auto, obs)), (round_, n)
            assert np.array_equal(eager.act(obs, explore=False), by_hand(eager, obs)), (round_, n)
        auto.learn(4)  # the weights move in place; the acting graph reads them where they live
    assert len(auto.greedy.graphs) == 2
    auto.load_state_dict(eager.state_dict())  # a checkpoint loaded in place reaches the graph too
    obs = rng.normal(size=(5, 4)).astype(np.float32)
    assert np.array_equal(auto.act(obs, explore=False), eager.act(obs, explore=False))


def checkpoint_roundtrip(state: dict, folder: Path) -> dict:
    """The agent state as a run checkpoint gives it back: written and read by gymlab's own checkpoint module.

    (A bare ``torch.save`` read back with ``weights_only=True`` refuses the numpy arrays in the replay memory.)
    """
    path = folder / "agent.pt"
    checkpoint.save(path, {"agent_state": state})
    return checkpoint.load(path)["agent_state"]


def test_a_checkpoint_round_trip_on_the_cpu_restores_the_agent_exactly(tmp_path):
    """The round trip the CUDA test relies on, here on the CPU: weights, optimizer, memory and counters come back."""
    trained, _ = _twins("cpu", "off")
    trained.learn(4)
    state = trained.state_dict()
    assert isinstance(state["training"]["replay"]["frames"], np.ndarray)  # what a bare weights_only load refuses
    fresh = _twins("cpu", "off")[0]
    fresh.load_state_dict(checkpoint_roundtrip(state, tmp_path))
    assert fresh.grad_steps == trained.grad_steps
    assert all(torch.equal(p, q) for p, q in zip(trained.online_params, fresh.online_params, strict=True))
    torch.manual_seed(7)
    trained.learn(2)
    torch.manual_seed(7)
    fresh.learn(2)
    assert all(torch.equal(p, q) for p, q in zip(trained.online_params, fresh.online_params, strict=True))


def test_acting_for_n_envs_is_one_forward_pass():
    agent = make_agent(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(4), num_envs=8)
    batches = []
    agent.online.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    obs = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    assert agent.act(obs, explore=False).shape == (8,)
    agent.epsilon = 0.5  # some envs explore, the others need the network: still one pass for all 8
    agent.act(obs, explore=True)
    agent.epsilon = 1.0  # every env explores: no pass at all
    agent.act(obs, explore=True)
    assert batches == [8, 8]
