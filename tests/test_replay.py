import numpy as np
import pytest
from gymlab.replay import ReplayBuffer


def add(buf: ReplayBuffer, obs, action, reward, next_obs, terminated, truncated) -> None:
    buf.add(
        np.asarray(obs),
        np.asarray(action),
        np.asarray(reward, dtype=np.float64),
        np.asarray(next_obs),
        np.asarray(terminated, dtype=bool),
        np.asarray(truncated, dtype=bool),
    )


def all_transitions(buf: ReplayBuffer) -> dict[int, tuple]:
    """Every sampleable transition, keyed by its (unique) action."""
    lane, pos = np.nonzero(buf.has_transition)
    keep = buf._valid(lane, pos)
    b = buf.gather(lane[keep], pos[keep])
    return {
        int(a): (o.tolist(), float(r), n.tolist(), bool(te), bool(tr))
        for a, o, r, n, te, tr in zip(b.action, b.obs, b.reward, b.next_obs, b.terminated, b.truncated, strict=True)
    }


def test_wraps_around_and_retires_the_oldest():
    buf = ReplayBuffer(8, 1, (2,), np.float32)
    obs = np.zeros((1, 2), np.float32)
    for t in range(20):  # one endless episode: one slot per step
        nxt = obs + 1
        add(buf, obs, [t], [t], nxt, [False], [False])
        obs = nxt
    got = all_transitions(buf)
    # 8 slots: the newest 7 transitions plus the newest next-observation.
    assert sorted(got) == list(range(13, 20))
    for t, (o, r, n, te, tr) in got.items():
        assert o == [t, t] and n == [t + 1, t + 1] and r == t and not te and not tr
    assert int(buf.head[0]) == 21 % 8 and int(buf.written[0]) == 21


def test_terminated_and_truncated_keep_the_true_final_observation():
    buf = ReplayBuffer(32, 1, (1,), np.float32)
    add(buf, [[0]], [0], [1], [[1]], [False], [False])
    add(buf, [[1]], [1], [1], [[99]], [True], [False])  # terminal state 99
    add(buf, [[10]], [2], [1], [[11]], [False], [False])  # next episode starts at 10
    add(buf, [[11]], [3], [1], [[77]], [False], [True])  # cut by the time limit in state 77
    add(buf, [[20]], [4], [1], [[21]], [False], [False])
    got = all_transitions(buf)
    assert got[1] == ([1.0], 1.0, [99.0], True, False)
    assert got[2] == ([10.0], 1.0, [11.0], False, False)
    assert got[3] == ([11.0], 1.0, [77.0], False, True)  # bootstraps from the true final obs
    assert got[4] == ([20.0], 1.0, [21.0], False, False)
    # 5 transitions, 2 ended episodes: 5 + 1 (next of the last) + 2 (first frames of new episodes)
    assert int(buf.written[0]) == 8


def fake_frame_stack_stream(rng, n_envs: int, steps: int, stack: int, p_end: float = 0.05):
    """(obs, next_obs, terminated, truncated) batches of stacked 3x3 frames, as FrameStackObservation pads."""
    counter = 1
    stacks = []
    for _ in range(n_envs):
        f = np.full((3, 3), counter % 251, np.uint8)
        counter += 1
        stacks.append(np.stack([f] * stack))
    for _ in range(steps):
        obs = np.stack(stacks)
        nxt_list = []
        for i in range(n_envs):
            f = np.full((3, 3), counter % 251, np.uint8)
            counter += 1
            nxt_list.append(np.concatenate([stacks[i][1:], f[None]]))
        nxt = np.stack(nxt_list)
        ended = rng.random(n_envs) < p_end
        terminated = ended & (rng.random(n_envs) < 0.5)
        truncated = ended & ~terminated
        yield obs, nxt, terminated, truncated
        for i in range(n_envs):
            if ended[i]:
                f = np.full((3, 3), counter % 251, np.uint8)
                counter += 1
                stacks[i] = np.stack([f] * stack)
            else:
                stacks[i] = nxt[i]


@pytest.mark.parametrize("n_envs", [1, 3])
def test_sampled_batches_match_what_was_inserted(n_envs):
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(120, n_envs, (4, 3, 3), np.uint8, frame_stack=4, seed=1)
    inserted = {}
    k = 0
    for obs, nxt, te, tr in fake_frame_stack_stream(rng, n_envs, 200, 4):
        actions = np.arange(k, k + n_envs)
        rewards = rng.normal(size=n_envs)
        add(buf, obs, actions, rewards, nxt, te, tr)
        for i in range(n_envs):
            inserted[k + i] = (obs[i], np.float32(rewards[i]), nxt[i], te[i], tr[i])
        k += n_envs
    batch = buf.sample(512)
    assert batch.obs.dtype == np.uint8 and batch.obs.shape == (512, 4, 3, 3)
    for a, o, r, n, te, tr in zip(
        batch.action, batch.obs, batch.reward, batch.next_obs, batch.terminated, batch.truncated, strict=True
    ):
        ref = inserted[int(a)]
        assert np.array_equal(o, ref[0]) and r == ref[1] and np.array_equal(n, ref[2])
        assert te == ref[3] and tr == ref[4]
    # Uniform over the valid transitions: the newest ones (all still held) are all reachable.
    valid = all_transitions(buf)
    assert len(valid) > 100
    assert set(np.unique(buf.sample(20_000).action)) == set(valid)


def test_pixel_memory_stores_each_frame_once():
    capacity = 1000
    buf = ReplayBuffer(capacity, 2, (4, 84, 84), np.uint8, frame_stack=4)
    # frame + int64 action + float32 reward + terminated, truncated, has-transition, offset bytes
    per_transition = 84 * 84 + 8 + 4 + 4
    assert buf.nbytes == capacity * per_transition
    assert 1_000_000 * per_transition < 8e9  # 1M Atari transitions: 7.07 GB
    naive = ReplayBuffer(capacity, 2, (4, 84, 84), np.uint8, frame_stack=1)  # a whole stack per slot
    assert naive.nbytes > 3.9 * buf.nbytes


def test_rejects_observations_that_are_not_frame_stacks():
    buf = ReplayBuffer(64, 1, (4, 2), np.uint8, frame_stack=4)
    obs = np.arange(8, dtype=np.uint8).reshape(1, 4, 2)  # first obs of an episode, but not padded
    with pytest.raises(ValueError, match="frame_stack=1"):
        add(buf, obs, [0], [0], obs, [False], [False])


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(3)
    stream = list(fake_frame_stack_stream(rng, 2, 80, 4))
    a = ReplayBuffer(60, 2, (4, 3, 3), np.uint8, frame_stack=4, seed=5)
    for i, (obs, nxt, te, tr) in enumerate(stream[:50]):
        add(a, obs, [2 * i, 2 * i + 1], [0.5, 1.5], nxt, te, tr)
    b = ReplayBuffer(60, 2, (4, 3, 3), np.uint8, frame_stack=4, seed=99)
    b.load_state_dict(a.state_dict())
    for i, (obs, nxt, te, tr) in enumerate(stream[50:], start=50):
        for buf in (a, b):
            add(buf, obs, [2 * i, 2 * i + 1], [0.5, 1.5], nxt, te, tr)
    x, y = a.sample(64), b.sample(64)
    assert np.array_equal(x.action, y.action) and np.array_equal(x.obs, y.obs)
    assert np.array_equal(x.next_obs, y.next_obs)
