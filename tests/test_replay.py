import numpy as np
import pytest
import torch
from gymlab.replay import DeviceBatches, ReplayBuffer, choose_source, loader

from gymlab.errors import GymlabError
from gymlab.staging import HostStaging


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


def vector_stream(rng, n_envs: int, steps: int, p_end: float = 0.15):
    """(obs, next_obs, terminated, truncated) batches of unique 2-vectors, episodes ending at random."""
    counter = iter(range(1, 10**9))
    obs = np.array([[next(counter)] * 2 for _ in range(n_envs)], np.float32)
    for _ in range(steps):
        nxt = np.array([[next(counter)] * 2 for _ in range(n_envs)], np.float32)
        ended = rng.random(n_envs) < p_end
        terminated = ended & (rng.random(n_envs) < 0.5)
        yield obs, nxt, terminated, ended & ~terminated
        fresh = np.array([[next(counter)] * 2 for _ in range(n_envs)], np.float32)
        obs = np.where(ended[:, None], fresh, nxt)


@pytest.mark.parametrize(("n_envs", "stacked"), [(1, False), (3, False), (2, True)])
def test_n_step_transitions_are_the_walk_through_each_episode(n_envs, stacked):
    """A transition's k <= n steps end at its episode's end or at the newest step its env has taken."""
    rng, n, gamma = np.random.default_rng(3), 4, 0.9
    shape = (4, 3, 3) if stacked else (2,)
    buf = ReplayBuffer(
        60 * n_envs, n_envs, shape, np.uint8 if stacked else np.float32, frame_stack=4 if stacked else 1,
        seed=2, n_step=n, gamma=gamma,
    )  # fmt: skip
    history: list[list[tuple]] = [[] for _ in range(n_envs)]  # per env: (action, reward, next_obs, te, tr)
    where = {}  # action -> (env, index in its history)
    stream = fake_frame_stack_stream(rng, n_envs, 150, 4, 0.15) if stacked else vector_stream(rng, n_envs, 150)
    for k, (obs, nxt, te, tr) in enumerate(stream):
        actions, rewards = np.arange(k * n_envs, (k + 1) * n_envs), rng.normal(size=n_envs).astype(np.float32)
        add(buf, obs, actions, rewards, nxt, te, tr)
        for i in range(n_envs):
            where[int(actions[i])] = (i, len(history[i]))
            history[i].append((rewards[i], nxt[i], te[i], tr[i]))
    batch = buf.sample(600)
    seen_steps = set()
    for a, r, nxt, te, tr, disc in zip(
        batch.action, batch.reward, batch.next_obs, batch.terminated, batch.truncated, batch.discount, strict=True
    ):
        env, t = where[int(a)]
        steps, want_r = 0, 0.0
        while True:  # the walk: take step t + steps, stop after n, at an episode's end or at the newest
            r_j, nxt_j, te_j, tr_j = history[env][t + steps]
            want_r += gamma**steps * float(r_j)
            steps += 1
            if steps == n or te_j or tr_j or t + steps == len(history[env]):
                break
        seen_steps.add(steps)
        assert r == pytest.approx(want_r, rel=1e-5, abs=1e-6)
        assert np.array_equal(nxt, nxt_j) and te == te_j and tr == tr_j
        assert disc == pytest.approx(gamma**steps)
    assert seen_steps == {1, 2, 3, 4}  # every horizon occurs: full, and cut at 1, 2 and 3 steps


def test_one_step_batches_are_plain_transitions_discounted_by_gamma():
    buf = ReplayBuffer(32, 1, (1,), np.float32, gamma=0.95)
    add(buf, [[0]], [0], [2], [[1]], [False], [False])
    add(buf, [[1]], [1], [3], [[2]], [True], [False])
    batch = buf.sample(20)
    assert np.array_equal(batch.reward, np.where(batch.action == 0, 2, 3)) and np.allclose(batch.discount, 0.95)


def test_pixel_memory_stores_each_frame_once():
    capacity = 1000
    buf = ReplayBuffer(capacity, 2, (4, 84, 84), np.uint8, frame_stack=4)
    # frame + int64 action + float32 reward + terminated, truncated, has-transition, offset bytes
    per_transition = 84 * 84 + 8 + 4 + 4
    assert buf.nbytes == capacity * per_transition
    assert (
        1_000_000 * per_transition < 7.5e9
    )  # 1M Atari slots: 7.07 GB, under the 7.5 GB an Atari run may use for its memory
    naive = ReplayBuffer(capacity, 2, (4, 84, 84), np.uint8, frame_stack=1)  # a whole stack per slot
    assert naive.nbytes > 3.9 * buf.nbytes


def test_rejects_observations_that_are_not_frame_stacks():
    buf = ReplayBuffer(64, 1, (4, 2), np.uint8, frame_stack=4)
    obs = np.arange(8, dtype=np.uint8).reshape(1, 4, 2)  # first obs of an episode, but not padded
    with pytest.raises(GymlabError, match="frame_stack=1"):  # the config's fault: one line, not a traceback
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


def zero_padded_stream(rng, n_envs: int, steps: int, stack: int, p_end: float = 0.1):
    """Like ``fake_frame_stack_stream``, but each episode's first stack is zeros and its first frame (ALE's way)."""
    counter = 1
    stacks = [np.zeros((stack, 3, 3), np.uint8) for _ in range(n_envs)]
    for s in stacks:
        s[-1] = counter
        counter += 1
    for _ in range(steps):
        obs = np.stack(stacks)
        nxt = np.stack(
            [
                np.concatenate([s[1:], np.full((1, 3, 3), (counter + i) % 250 + 1, np.uint8)])
                for i, s in enumerate(stacks)
            ]
        )
        counter += n_envs
        ended = rng.random(n_envs) < p_end
        terminated = ended & (rng.random(n_envs) < 0.5)
        yield obs, nxt, terminated, ended & ~terminated
        for i in range(n_envs):
            if ended[i]:
                stacks[i] = np.zeros((stack, 3, 3), np.uint8)
                stacks[i][-1] = counter % 250 + 1
                counter += 1
            else:
                stacks[i] = nxt[i]


@pytest.mark.parametrize("stream", [fake_frame_stack_stream, zero_padded_stream])
def test_each_padding_is_rebuilt_as_the_env_gave_it(stream):
    rng = np.random.default_rng(4)
    buf = ReplayBuffer(90, 3, (4, 3, 3), np.uint8, frame_stack=4, seed=2)
    inserted = {}
    for k, (obs, nxt, te, tr) in enumerate(stream(rng, 3, 150, 4)):
        add(buf, obs, [3 * k, 3 * k + 1, 3 * k + 2], [0, 0, 0], nxt, te, tr)
        for i in range(3):
            inserted[3 * k + i] = (obs[i], nxt[i])
    assert buf.padding == ("zero" if stream is zero_padded_stream else "reset")
    batch = buf.sample(400)
    for a, o, n in zip(batch.action, batch.obs, batch.next_obs, strict=True):
        assert np.array_equal(o, inserted[int(a)][0]) and np.array_equal(n, inserted[int(a)][1])


def test_padding_must_stay_the_same():
    buf = ReplayBuffer(64, 2, (2, 1), np.uint8, frame_stack=2)
    zero_padded = np.array([[[0], [5]], [[0], [6]]], np.uint8)
    add(buf, zero_padded, [0, 1], [0, 0], zero_padded[:, [1, 1]] + [[[0], [1]]], [True, False], [False, False])
    assert buf.padding == "zero"
    repeated = np.array([[[9], [9]], [[6], [7]]], np.uint8)  # lane 0 starts again, now repeat-padded
    with pytest.raises(GymlabError, match="the same way every time"):
        add(buf, repeated, [2, 3], [0, 0], repeated + 1, [False, False], [False, False])


def fill_both_ways(device_frames: bool, n_step: int = 1):
    rng = np.random.default_rng(7)
    device = torch.device("cpu") if device_frames else None
    buf = ReplayBuffer(80, 2, (4, 3, 3), np.uint8, frame_stack=4, seed=3, device=device, n_step=n_step, gamma=0.9)
    for k, (obs, nxt, te, tr) in enumerate(zero_padded_stream(rng, 2, 100, 4)):
        add(buf, obs, [2 * k, 2 * k + 1], [k, -k], nxt, te, tr)
    return buf


@pytest.mark.parametrize("n_step", [1, 3])
@pytest.mark.parametrize("source", ["pinned", "device"])
def test_every_batch_source_gives_the_host_batches(source, n_step):
    host = DeviceBatches(fill_both_ways(False, n_step), torch.device("cpu"), "host")
    other = DeviceBatches(fill_both_ways(source == "device", n_step), torch.device("cpu"), source)
    assert isinstance(other.replay.frames, torch.Tensor if source == "device" else np.ndarray)
    for size in (5, 64, 7):  # staging grows, and views of it shrink again
        a, b = host.sample(size), other.sample(size)
        for x, y in zip(a, b, strict=True):
            assert x.dtype == y.dtype and torch.equal(x, y)
    assert a.obs.dtype == torch.uint8 and a.terminated.dtype == torch.float32 and a.obs.shape == (7, 4, 3, 3)


def test_frames_on_a_device_checkpoint_as_numpy():
    on_device, on_host = fill_both_ways(True), fill_both_ways(False)
    state, reference = on_device.state_dict(), on_host.state_dict()
    assert isinstance(state["frames"], np.ndarray) and state["padding"] == "zero"
    assert state.keys() == reference.keys()
    for key in state:
        same = state[key] == reference[key] if key == "rng" else np.array_equal(state[key], reference[key])
        assert same, key
    back = ReplayBuffer(80, 2, (4, 3, 3), np.uint8, frame_stack=4, device=torch.device("cpu"))
    back.load_state_dict(state)
    assert torch.equal(back.frames, on_device.frames) and back.padding == "zero"
    assert np.array_equal(back.gather(*back.sample_slots(50)).obs, on_host.gather(*on_host.sample_slots(50)).obs)


def test_auto_gathers_on_the_device_when_the_frames_fit_a_quarter_of_its_free_memory(monkeypatch):
    free = 8 * 2**30
    asked = []

    def mem_get_info(device):
        asked.append(device)
        return free, 80 * 2**30

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    cuda = torch.device("cuda")
    assert choose_source("auto", cuda, 2 * 2**30) == "device"  # exactly a quarter: fits
    assert choose_source("auto", cuda, 2 * 2**30 + 1) == "pinned"  # host gather, pinned transfer
    assert asked == [cuda, cuda]
    assert choose_source("auto", torch.device("cpu"), 1) == "host" and len(asked) == 2  # no CUDA call off CUDA
    for explicit in ("host", "pinned", "device"):
        assert choose_source(explicit, cuda, 10**15) == explicit
    assert loader.DEVICE_SHARE == 0.25


def test_staging_copies_any_array_and_never_hands_out_a_buffer_it_refills():
    staging = HostStaging(torch.device("cpu"), pin=False, sets=2)
    rng = np.random.default_rng(0)
    kept = []
    for rows in (3, 8, 2, 8, 5):  # grows, then cuts views of its buffers
        frames = rng.integers(0, 255, (rows, 2, 4, 4), dtype=np.uint8)[:, 1]  # a non-contiguous view
        index = rng.integers(0, 100, rows)
        f, i = staging.to_device((frames, index))
        assert f.dtype == torch.uint8 and i.dtype == torch.int64 and f.shape == (rows, 4, 4)
        kept.append((frames.copy(), index.copy(), f, i))
    for frames, index, f, i in kept:  # every result still holds its own values: none aliases a buffer
        assert np.array_equal(f.numpy(), frames) and np.array_equal(i.numpy(), index)
    out = torch.zeros(4, 3, dtype=torch.float32)
    values = rng.normal(size=(4, 3)).astype(np.float32)
    assert staging.to_device((values,), out=(out,))[0] is out and np.array_equal(out.numpy(), values)
    # A new dtype at a position replaces its buffer.
    assert staging.to_device((values.astype(np.float64),))[0].dtype == torch.float64


def test_frames_kept_on_a_device_arrive_through_the_staging_buffers(monkeypatch):
    calls = []
    original = HostStaging.to_device

    def spy(self, arrays, out=None):
        calls.append([a.shape for a in arrays])
        return original(self, arrays, out)

    monkeypatch.setattr(HostStaging, "to_device", spy)
    on_device, on_host = fill_both_ways(True), fill_both_ways(False)
    assert calls and all(len(shapes) == 2 for shapes in calls)  # rows and frames, in one call per write
    assert np.array_equal(on_device.frames.numpy(), on_host.frames)
