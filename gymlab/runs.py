"""Run folders: creating them (never over an existing one) and reading them back.

Layout: ``runs/<env>/<agent>/<YYYYmmdd-HHMMSS>-s<seed>/`` holding ``config.yaml`` (resolved),
``events.out.tfevents.*``, ``checkpoints/{last,best}.pt`` and ``videos/``. Every command that
reads runs accepts a run folder or a checkpoint path.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import yaml

from gymlab import checkpoint, registry
from gymlab.agent import Agent, load_agent_class
from gymlab.config import Config, validate
from gymlab.errors import GymlabError

CONFIG_FILE = "config.yaml"
EVENTS_GLOB = "events.out.tfevents.*"


def slug(name: str) -> str:
    """An agent or env name as one folder name (and so one section of a TensorBoard run name).

    ``pkg.mod:MyEnv`` -> ``pkg.mod.MyEnv``: anything but letters, digits, ``_``, ``.`` and ``-``
    becomes ``.``, in particular ``/``, which would split the name into two folders.
    """
    return re.sub(r"[^A-Za-z0-9_.\-]+", ".", str(name)).strip(".")


def default_run_dir(root: Path, config: Config) -> Path:
    """``root/<env>/<agent>/<time>-s<seed>`` (not created)."""
    run = config.run
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return root / slug(run.env) / slug(run.agent) / f"{stamp}-s{run.seed}"


def create_run_dir(config: Config, run_dir: Path | None, root: Path = Path("runs")) -> Path:
    """Create a new run folder and write the resolved config into it.

    An explicit ``run_dir`` must not exist yet; a default name that is taken (two runs started in
    the same second with the same seed) gets a numeric suffix. Nothing existing is overwritten.
    """
    explicit = run_dir is not None
    path = run_dir if run_dir is not None else default_run_dir(root, config)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GymlabError(
            f"cannot create run folder {path}: {exc.strerror or exc}; choose a writable --run-dir"
        ) from None
    for attempt in range(1, 100):
        try:
            path.mkdir()
            break
        except FileExistsError:
            if explicit:
                raise GymlabError(
                    f"run folder {path} already exists; choose a new --run-dir, "
                    f"or continue it with: gymlab train --resume {path}"
                ) from None
            path = path.with_name(f"{path.name.split('.')[0]}.{attempt}")
        except OSError as exc:
            raise GymlabError(
                f"cannot create run folder {path}: {exc.strerror or exc}; choose a writable --run-dir"
            ) from None
    (path / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


def find_checkpoint(target: Path, which: str = "last") -> Path:
    """The checkpoint a run folder or checkpoint path refers to (``which``: last or best)."""
    if target.is_file():
        return target
    if not target.exists():
        raise GymlabError(f"no run folder or checkpoint at {target}")
    ckpt = target / "checkpoints" / f"{which}.pt"
    if ckpt.is_file():
        return ckpt
    other = target / "checkpoints" / ("last.pt" if which == "best" else "best.pt")
    if other.is_file():
        return other
    raise GymlabError(f"run folder {target} has no checkpoint yet (expected {ckpt}); train it first")


def run_dir_of(ckpt_path: Path) -> Path:
    """The run folder holding a checkpoint (``<run>/checkpoints/last.pt`` -> ``<run>``)."""
    return ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent


def load_run(target: Path, which: str = "last") -> tuple[Config, dict[str, Any], Path]:
    """Load the config and checkpoint of a run folder or checkpoint file."""
    ckpt_path = find_checkpoint(target, which)
    ckpt = checkpoint.load(ckpt_path)
    raw = ckpt.get("config")
    if not isinstance(raw, dict) or "agent" not in raw:
        raise GymlabError(f"checkpoint {ckpt_path} carries no run config; it is not from `gymlab train`")
    agent_cls = load_agent_class(raw["agent"])
    config = validate(raw, agent_cls.Config, source=str(ckpt_path))
    return config, ckpt, ckpt_path


def load_policy(config: Config, ckpt: dict[str, Any], device: str | None = None) -> tuple[Agent, Any, Any]:
    """Rebuild a trained agent for acting: returns ``(agent, observation_space, action_space)``.

    The agent is built for one env and given the checkpoint's policy state only, so any run
    (whatever its ``num_envs`` or memory settings) can be evaluated and watched.
    """
    from gymlab.agent import POLICY  # local: keep this module light for the CLI's startup
    from gymlab.loop import make_context, resolve_device

    run = config.run
    env = registry.make_env(run.env, run.env_kwargs, run.wrappers, train=False)
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    agent_cls = load_agent_class(run.agent)
    ctx = make_context(config, obs_space, act_space, num_envs=1, device=resolve_device(device or run.device))
    agent = agent_cls(config.hparams, ctx)
    state = ckpt.get("agent_state")
    if not isinstance(state, dict) or POLICY not in state:
        raise GymlabError(f"checkpoint of {run.agent} on {run.env} holds no policy state; it is not from this gymlab")
    try:
        agent.load_state_dict({POLICY: state[POLICY]})
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise GymlabError(f"checkpoint does not fit a {run.agent} agent on {run.env}: {exc}") from None
    return agent, obs_space, act_space


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run folder: it holds a resolved config or TensorBoard event files."""
    return path.is_dir() and ((path / CONFIG_FILE).is_file() or any(path.glob(EVENTS_GLOB)))


def iter_runs(path: Path) -> list[Path]:
    """The run folders ``path`` names: a checkpoint's run, a run folder, or every run folder below it (sorted)."""
    if path.is_file():
        path = run_dir_of(path)
    if is_run_dir(path):
        return [path]
    found = {p.parent for pattern in (CONFIG_FILE, EVENTS_GLOB) for p in path.rglob(pattern)}
    return sorted(p for p in found if is_run_dir(p))


def read_config(run: Path) -> dict[str, Any]:
    """A run folder's resolved config as written, unvalidated; without one, agent and env from the folder names.

    For reading many runs (``compare``) without importing their agents; :func:`load_run` validates.
    """
    path = run / CONFIG_FILE
    if path.is_file():
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict):
            return data
    return {"agent": run.parent.name, "env": run.parent.parent.name}
