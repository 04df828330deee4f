"""Run folders: creating them (never over an existing one), owning them, and reading them back.

Layout: ``runs/<env>/<agent>/<YYYYmmdd-HHMMSS>-s<seed>/`` holding ``config.yaml`` (resolved),
``events.out.tfevents.*``, ``checkpoints/{last,best}.pt``, ``videos/`` and ``.lock``. Every
command that reads runs accepts a run folder or a checkpoint path.

Ownership rules (enforced here and by :mod:`gymlab.runner`):

- One writer: a process that trains into a folder holds an exclusive ``flock`` on its ``.lock``
  file (:func:`lock_run`); a second one is refused in one line. The kernel drops the lock when
  the process dies, so a killed run never leaves a stale lock.
- One history: a checkpoint must agree with its folder's ``config.yaml`` (agent, env and config,
  :func:`check_belongs`); training continues only from the folder's newest checkpoint.
- Trust: nothing named inside a run folder or checkpoint (``module:Class`` agents and envs,
  ``module:fn`` wrappers) is imported unless it is built in or the user names its module again
  (``--trust MODULE``); :func:`check_trust` runs before any import.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from gymlab import checkpoint, registry
from gymlab.agent import AGENTS, Agent, load_agent_class
from gymlab.config import Config, load_yaml, validate
from gymlab.errors import GymlabError

CONFIG_FILE = "config.yaml"
EVENTS_GLOB = "events.out.tfevents.*"


def slug(name: str) -> str:
    """An agent or env name as one folder name (and so one section of a TensorBoard run name).

    ``pkg.mod:MyEnv`` -> ``pkg.mod.MyEnv``: anything but letters, digits, ``_``, ``.`` and ``-``
    becomes ``.``, in particular ``/``, which would split the name into two folders.
    """
    return re.sub(r"[^A-Za-z0-9_.\-]+", ".", str(name)).strip(".")


LOCK_FILE = ".lock"
#: Config keys a resume may change without the run becoming another run.
MAY_CHANGE = ("device",)


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
    """The checkpoint a run folder or checkpoint path refers to (``which``: last, best or newest)."""
    if target.is_file():
        return target
    if not target.exists():
        raise GymlabError(f"no run folder or checkpoint at {target}")
    if which == "newest":
        newest = newest_checkpoint(target)
        if newest is None:
            raise GymlabError(f"run folder {target} has no checkpoint yet; train it first")
        return newest
    ckpt = target / "checkpoints" / f"{which}.pt"
    if ckpt.is_file():
        return ckpt
    other = target / "checkpoints" / ("last.pt" if which == "best" else "best.pt")
    if other.is_file():
        return other
    raise GymlabError(f"run folder {target} has no checkpoint yet (expected {ckpt}); train it first")


def newest_checkpoint(folder: Path) -> Path | None:
    """The folder's most recently written checkpoint (``last.pt`` or ``best.pt``), None if it has none.

    ``best.pt`` is newer than ``last.pt`` when a run was killed after an evaluation that improved
    and before its next checkpoint; resuming from it is then the exact continuation.
    """
    found = [p for p in (folder / "checkpoints" / "last.pt", folder / "checkpoints" / "best.pt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def run_dir_of(ckpt_path: Path) -> Path:
    """The run folder holding a checkpoint (``<run>/checkpoints/last.pt`` -> ``<run>``)."""
    return ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent


def load_run(target: Path, which: str = "last", trust: Iterable[str] = ()) -> tuple[Config, dict[str, Any], Path]:
    """Load the config and checkpoint of a run folder or checkpoint file.

    Refused in one line, before anything named in them is imported: a damaged checkpoint, code
    that is neither built in nor trusted (``trust`` adds modules to :func:`trust_modules`' set),
    and a checkpoint that does not belong to the run folder holding it.
    """
    ckpt_path = find_checkpoint(target, which)
    ckpt = checkpoint.load(ckpt_path)
    raw = ckpt.get("config")
    if not isinstance(raw, dict) or "agent" not in raw:
        raise GymlabError(f"checkpoint {ckpt_path} carries no run config; it is not from `gymlab train`")
    checkpoint.check_run_payload(ckpt, ckpt_path)
    folder = run_dir_of(ckpt_path)
    folder_cfg = folder_config(folder)
    check_trust(raw, str(ckpt_path), trust)
    if folder_cfg is not None:
        check_trust(folder_cfg, str(folder / CONFIG_FILE), trust)
        check_belongs(ckpt, ckpt_path, folder_cfg, folder)
    agent_cls = load_agent_class(raw["agent"])
    config = validate(raw, agent_cls.Config, source=str(ckpt_path))
    return config, ckpt, ckpt_path


def folder_config(folder: Path) -> dict[str, Any] | None:
    """The folder's ``config.yaml`` checked to name an agent and env (no import), None when it has none."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        return None
    data = load_yaml(path, "run file")
    if not isinstance(data.get("agent"), str) or not isinstance(data.get("env"), str):
        raise GymlabError(f"{path} names no agent and env; it is not a gymlab run config")
    return data


def check_belongs(ckpt: Mapping[str, Any], ckpt_path: Path, expected: Mapping[str, Any], folder: Path) -> None:
    """Refuse a checkpoint whose agent, env or config disagree with its run folder's ``config.yaml``."""
    mine = dict(ckpt["config"])
    for key in ("agent", "env"):
        if ckpt.get(key, mine.get(key)) != expected.get(key) or mine.get(key) != expected.get(key):
            raise GymlabError(
                f"checkpoint {ckpt_path} is from {key} '{ckpt.get(key)}' but run folder {folder} is for "
                f"'{expected.get(key)}'; it does not belong there (move it to a folder of its own)"
            )
    differ = config_differences(mine, expected)
    if differ:
        raise GymlabError(
            f"checkpoint {ckpt_path} was written with another config than {folder / CONFIG_FILE} "
            f"(differs in {', '.join(differ[:5])}); it does not belong to this run"
        )


def config_differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs, ignoring the keys a resume may change."""
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        if not prefix and key in MAY_CHANGE:
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += config_differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out


# --- trust -----------------------------------------------------------------------------------

_TRUSTED: set[str] = set()


def trust_modules(modules: Iterable[str]) -> None:
    """Trust these modules (and their submodules) for this process, as ``--trust MODULE`` does."""
    _TRUSTED.update(m.strip() for m in modules if m.strip())


def _trusted(module: str, extra: Iterable[str]) -> bool:
    names = _TRUSTED | set(extra)
    return module.split(".")[0] == "gymlab" or any(module == t or module.startswith(f"{t}.") for t in names)


def foreign_code(config: Mapping[str, Any], trust: Iterable[str] = ()) -> list[tuple[str, str]]:
    """``(what, name)`` of every name in ``config`` whose import would run code neither built in nor trusted.

    Built in: the agents in :data:`~gymlab.agent.AGENTS`, plain env ids (Gymnasium's registry), the
    wrappers in :data:`~gymlab.registry.WRAPPERS`, and anything under the ``gymlab`` package.
    """
    extra = tuple(trust)
    names: list[tuple[str, str]] = []
    agent, env, wrappers = config.get("agent"), config.get("env"), config.get("wrappers") or []
    if isinstance(agent, str) and agent not in AGENTS:
        names.append(("agent", agent))
    if isinstance(env, str) and ":" in env:
        names.append(("env", env))
    if isinstance(wrappers, list):
        names += [("wrapper", w) for w in wrappers if isinstance(w, str) and w not in registry.WRAPPERS]
    return [(what, name) for what, name in names if not _trusted(name.partition(":")[0], extra)]


def check_trust(config: Mapping[str, Any], source: str, trust: Iterable[str] = ()) -> None:
    """Refuse, before any import, a config from a file that names code the user has not trusted."""
    foreign = foreign_code(config, trust)
    if foreign:
        what, name = foreign[0]
        module = name.partition(":")[0]
        raise GymlabError(
            f"{source} names {what} '{name}', code outside gymlab; it is imported only if you trust it: "
            f"add --trust {module}"
        )


# --- ownership -------------------------------------------------------------------------------


class RunLock:
    """An exclusive ``flock`` on a run folder's ``.lock`` file, held while one process writes the folder."""

    def __init__(self, folder: Path, fd: int) -> None:
        self.folder, self._fd = folder, fd

    def release(self) -> None:
        """Drop the lock (closing the file releases it; the lock file itself stays, harmless)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_run(folder: Path) -> RunLock:
    """Take the folder's writer lock, or refuse in one line if another process holds it."""
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise GymlabError(f"cannot lock run folder {folder}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise GymlabError(
            f"run folder {folder} is being written by another gymlab process (pid {holder}); "
            "wait for it to end, or stop it, before resuming"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return RunLock(folder, fd)


def is_locked(folder: Path) -> bool:
    """Whether a live process holds the folder's writer lock."""
    try:
        with lock_run(folder):
            return False
    except GymlabError:
        return True


def remove_run_dir(folder: Path) -> None:
    """Delete a run folder this process created and that holds no checkpoint (a failed start)."""
    shutil.rmtree(folder, ignore_errors=True)


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
    return folder_config(run) or {"agent": run.parent.name, "env": run.parent.parent.name}
