"""Run folders: the one object that creates, locks, opens, checks and names what a run folder holds.

Layout: ``runs/<env>/<agent>/<YYYYmmdd-HHMMSS>-s<seed>/`` holding ``config.yaml`` (resolved),
``events.out.tfevents.*``, ``checkpoints/{last,best}.pt``, ``checkpoints/head.json`` (how far
the folder's history goes), ``videos/`` and ``.lock``. Every command that reads runs accepts a
run folder or a checkpoint path.

Ownership rules, all enforced by :class:`RunFolder`:

- One writer: a process that writes a folder holds an exclusive ``flock`` on its ``.lock`` file
  (:func:`gymlab.folderlock.lock_folder`, also used for sweep folders); a second one is refused in
  one line. The kernel drops the lock when the process dies, so a killed run never leaves a stale lock.
- One history: a checkpoint must agree with its folder's ``config.yaml`` (agent, env and config);
  training continues only from the folder's newest checkpoint, and only when that checkpoint is
  as new as the newest one the folder ever held (``head.json``): a deleted ``last.pt`` cannot make
  an older ``best.pt`` rewrite the history after it.
- Trust: nothing named inside a run folder or checkpoint (``module:Class`` agents and envs,
  ``module:fn`` wrappers) is imported unless it is built in or the user names its module again
  (``--trust MODULE``); :func:`check_trust` runs before any import.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gymlab import checkpoint, registry
from gymlab.agent import AGENTS, load_agent_class
from gymlab.checkpoint import Checkpoint
from gymlab.config import Config, slug, validate
from gymlab.errors import FolderRemoved, GymlabError
from gymlab.folderlock import FolderLock, lock_folder
from gymlab.yamlfile import file_kind, load_yaml

CONFIG_FILE = "config.yaml"
_HEAD_MAX_BYTES = 4096  # head.json holds one small object; more is not one
EVENTS_GLOB = "events.out.tfevents.*"
HEAD_FILE = "head.json"
#: Config keys a resume may change without the run becoming another run (``deterministic`` chooses
#: kernels, not what is learned; a folder from before the key existed lacks it).
MAY_CHANGE = ("device", "deterministic")


@dataclass(frozen=True)
class LoadedRun:
    """A run's checkpoint, read and checked, with its validated config and where it was found."""

    config: Config
    checkpoint: Checkpoint
    path: Path


class RunFolder:
    """One run folder: its files' names, its lock, its checkpoints and its history."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.made_parents: list[Path] = []  # the folders above it that create() made, deepest first

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # --- names -------------------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        """``config.yaml``: the resolved config the run was started with."""
        return self.path / CONFIG_FILE

    @property
    def checkpoints(self) -> Path:
        """The folder of ``last.pt``, ``best.pt`` and ``head.json``."""
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        """The newest state (written at every checkpoint and at the end)."""
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        """The state at the best evaluation."""
        return self.checkpoints / "best.pt"

    @property
    def videos(self) -> Path:
        """Where recorded episodes go."""
        return self.path / "videos"

    @staticmethod
    def default_path(root: Path, config: Config) -> Path:
        """``root/<env>/<agent>/<time>-s<seed>`` (not created)."""
        run = config.run
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return root / slug(run.env) / slug(run.agent) / f"{stamp}-s{run.seed}"

    @classmethod
    def of(cls, target: Path) -> RunFolder:
        """The run folder a path names: the folder itself, or the one holding a checkpoint file."""
        if target.is_file():
            return cls(target.parent.parent if target.parent.name == "checkpoints" else target.parent)
        return cls(target)

    # --- creating and owning -----------------------------------------------------------------

    @classmethod
    def create(cls, config: Config, path: Path | None, root: Path = Path("runs")) -> RunFolder:
        """Create a new run folder and write the resolved config into it.

        An explicit ``path`` must not exist yet; a default name that is taken (two runs started in
        the same second with the same seed) gets a numeric suffix. Nothing existing is overwritten.
        """
        explicit = path is not None
        target = path if path is not None else cls.default_path(root, config)
        for parent in target.absolute().parents:  # one writer, one history: never a run inside a run
            if (parent / CONFIG_FILE).is_file():
                raise GymlabError(
                    f"{target} is inside run folder {parent}, which has one writer and one history; "
                    "choose a --run-dir outside it"
                )
        made = [p for p in target.parents if not p.exists()]  # deepest first; remove() takes back the empty ones
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            blocking = next((p for p in reversed(target.parents) if p.exists() and not p.is_dir()), None)
            why = f"{blocking} is a file, not a folder" if blocking is not None else exc.strerror or exc
            raise GymlabError(f"cannot create run folder {target}: {why}; choose a writable --run-dir") from None
        for attempt in range(1, 100):
            try:
                target.mkdir()
                break
            except FileExistsError:
                if explicit:
                    what = "run folder" if (target / CONFIG_FILE).is_file() else "folder" if target.is_dir() else "file"
                    resume = shlex.quote(str(target))
                    go_on = f", or continue it with: gymlab train --resume {resume}" if what == "run folder" else ""
                    raise GymlabError(f"{what} {target} already exists; choose a new --run-dir{go_on}") from None
                target = target.with_name(f"{target.name.split('.')[0]}.{attempt}")
            except FileNotFoundError:  # a failed sibling run took back the empty parent it made: make it again
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise GymlabError(
                    f"cannot create run folder {target}: {exc.strerror or exc}; choose a writable --run-dir"
                ) from None
        folder = cls(target)
        folder.made_parents = made
        folder.config_file.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return folder

    def lock(self) -> FolderLock:
        """Take the folder's writer lock, or refuse in one line if another process holds it."""
        return lock_folder(self.path, "run folder", "before resuming")

    def is_locked(self) -> bool:
        """Whether a live process holds the folder's writer lock."""
        try:
            with self.lock():
                return False
        except GymlabError:
            return True

    def remove(self) -> None:
        """Delete a run folder this process created and that holds no checkpoint (a failed start).

        The folders above it that :meth:`create` made (``runs/<env>/<agent>``) go too while they are empty;
        one that another run has meanwhile written into stays.
        """
        shutil.rmtree(self.path, ignore_errors=True)
        for parent in self.made_parents:
            try:
                parent.rmdir()
            except OSError:  # not empty (another run's), or gone: what is above it stays as well
                break

    def exists(self) -> bool:
        """Whether the folder is still there (a user may delete it while a run writes it)."""
        return self.path.is_dir()

    # --- checkpoints and history -------------------------------------------------------------

    def check_present(self) -> None:
        """Refuse in one line to write into a run folder that was removed while the run was writing it.

        Nothing recreates it: a retry of the same command then starts afresh in the same place.
        """
        if not self.exists():
            raise FolderRemoved(self.path)

    def save(self, ckpt: Checkpoint, which: str = "last") -> Path:
        """Write ``ckpt`` as ``last.pt`` or ``best.pt``, then record how far the folder's history goes."""
        self.check_present()
        path = self.last if which == "last" else self.best
        ckpt.write(path)
        try:
            head = self.head()
        except GymlabError:
            head = None  # damaged since the run began: rewritten below
        if head is None or ckpt.step > head:
            tmp = self.checkpoints / f".{HEAD_FILE}.tmp-{os.getpid()}"
            try:
                tmp.write_text(json.dumps({"step": ckpt.step}))
                os.replace(tmp, self.checkpoints / HEAD_FILE)
            except OSError:  # the checkpoint is written; a lost head only loosens the check
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
        return path

    def check_savable(self) -> None:
        """Refuse a folder whose checkpoint paths hold a folder: a run would train, then fail to save."""
        for path in (self.last, self.best):
            if path.is_dir():
                raise GymlabError(f"{path} is a folder, where the run saves its checkpoint; move it away, then resume")

    def head(self) -> int | None:
        """The step of the newest checkpoint this folder ever held (None for folders without a record).

        A record that is there but unreadable (damaged, not a regular file) is refused in one line:
        read as "no record", it would let an older checkpoint rewrite the history after it.
        """
        path = self.checkpoints / HEAD_FILE
        if not path.exists() and not path.is_symlink():
            return None
        check_regular(path, "history record")
        problem = None
        try:
            with path.open("rb") as fh:
                step = json.loads(fh.read(_HEAD_MAX_BYTES).decode())["step"]
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            step, problem = None, exc.strerror if isinstance(exc, OSError) else None
        if isinstance(step, int) and not isinstance(step, bool) and step >= 0:
            return step
        raise GymlabError(
            f"{path} is damaged ({problem or 'not a step record'}): it records how far this run's history goes; "
            "restore it, or delete it to go on without that check"
        )

    def newest(self) -> Path | None:
        """The newest checkpoint (``last.pt`` or ``best.pt``), None if it has none.

        ``best.pt`` is newer than ``last.pt`` when a run was killed after an evaluation that improved
        and before its next checkpoint; resuming from it is then the exact continuation. Newer means a
        later step: file times are only the tie-break (or the fallback for an unreadable file), since a
        plain ``cp -r``, a backup restored by glob or a ``touch`` rewrites them in any order.
        """
        found = [p for p in (self.last, self.best) if p.is_file()]
        if len(found) < 2:
            return found[0] if found else None
        last_step, best_step = checkpoint.step_of(self.last), checkpoint.step_of(self.best)
        if last_step is not None and best_step is not None and last_step != best_step:
            return self.last if last_step > best_step else self.best
        return max(found, key=lambda p: p.stat().st_mtime_ns)

    def check_others(self, chosen: Path) -> None:
        """Refuse resuming from ``chosen`` while the folder's other checkpoint is another run's (it would be lost).

        Read without its tensors: only what the file says it is. A file that cannot be read is left to be replaced.
        """
        expected = self.data()
        for other in (self.last, self.best):
            data = checkpoint.peek(other) if other != chosen and other.is_file() else None
            if data is not None and expected is not None:
                check_belongs(other, expected, self.path, data.get("agent"), data.get("env"), data.get("config"))

    def find(self, which: str = "last") -> Path:
        """The checkpoint ``which`` (last, best or newest) names, with one-line errors when there is none."""
        if not self.path.exists():
            raise GymlabError(f"no run folder or checkpoint at {self.path}")
        check_regular(self.path, "run folder")
        if which == "newest":
            newest = self.newest()
            if newest is None:
                raise GymlabError(self._not_a_run() or f"run folder {self.path} has no checkpoint yet; train it first")
            return newest
        ckpt = self.last if which == "last" else self.best
        if ckpt.is_file():
            return ckpt
        if ckpt.exists():
            raise GymlabError(f"{ckpt} is {file_kind(ckpt.stat().st_mode)}, not a checkpoint file: remove it")
        other = self.best if which == "last" else self.last
        if other.is_file():  # never another checkpoint than the one asked for
            other_name = "best" if which == "last" else "last"
            raise GymlabError(
                f"run folder {self.path} has no {ckpt.name}; it holds {other.name} only: "
                f"pass --checkpoint {other_name} to use that"
            )
        raise GymlabError(
            self._not_a_run() or f"run folder {self.path} has no checkpoint yet (expected {ckpt}); train it first"
        )

    def _not_a_run(self) -> str | None:
        """Why a folder without checkpoints is no run folder at all, and what to give instead; None for a run folder."""
        if is_run_dir(self.path):
            return None
        below = self.runs_below()
        if below:
            return below
        if self.path.name == "checkpoints" and is_run_dir(self.path.parent):
            return f"{self.path} is a run's checkpoints folder: give the run folder {self.path.parent}, or a file in it"
        return (
            f"{self.path} is not a run folder (it holds no config.yaml nor TensorBoard events): give a folder "
            "that gymlab train wrote, or a checkpoint file"
        )

    def runs_below(self) -> str | None:
        """For a folder of runs rather than a run (``--seeds``' DIR/s<seed>, runs/<env>): which one to give."""
        if is_run_dir(self.path):
            return None
        runs = iter_runs(self.path)
        if not runs:
            return None
        names = ", ".join(str(r.relative_to(self.path)) for r in runs[:3]) + (" ..." if len(runs) > 3 else "")
        return (
            f"{self.path} is not a run folder but holds {len(runs)} run{'s' if len(runs) > 1 else ''} ({names}): "
            f"give one of them, e.g. {runs[0]}"
        )

    def data(self) -> dict[str, Any] | None:
        """``config.yaml`` checked to name an agent and env (nothing imported), None when there is none."""
        if not self.config_file.is_file():
            if self.config_file.exists():  # a FIFO would block the read; a link to /dev/zero never end
                kind = file_kind(self.config_file.stat().st_mode)
                raise GymlabError(
                    f"{self.config_file} is {kind}, not the plain file a run folder's config is: put the run's "
                    "config.yaml back, or start a new run from a checkpoint with --resume CHECKPOINT --run-dir NEW"
                )
            return None
        data = load_yaml(self.config_file, "run file")
        if not isinstance(data.get("agent"), str) or not isinstance(data.get("env"), str):
            raise GymlabError(f"{self.config_file} names no agent and env; it is not a gymlab run config")
        return data

    def check_history(self, ckpt: Checkpoint, path: Path) -> None:
        """Refuse to continue from a checkpoint older than the newest one this folder held (it was deleted)."""
        head = self.head()
        if head is not None and ckpt.step < head:
            raise GymlabError(
                f"run folder {self.path} has history up to step {head:,} but its newest checkpoint {path.name} "
                f"is at step {ckpt.step:,} (a newer one was deleted); continuing here would rewrite that history: "
                f"start a new run from it with gymlab train --resume {shlex.quote(str(path))} --run-dir NEW"
            )


def load_run(target: Path, which: str = "last", trust: Iterable[str] = ()) -> LoadedRun:
    """Read the checkpoint a run folder or checkpoint file names, with its validated config.

    Refused in one line, before anything named in them is imported: a damaged checkpoint, code
    that is neither built in nor trusted (``trust`` adds modules to :func:`trust_modules`' set),
    and a checkpoint that does not belong to the run folder holding it.
    """
    check_regular(target, "run folder or checkpoint")
    folder = RunFolder.of(target)
    path = target if target.is_file() else folder.find(which)
    ckpt = Checkpoint.read(path)
    expected = folder.data()
    check_trust(ckpt.config, str(path), trust)
    if expected is not None:
        check_trust(expected, str(folder.config_file), trust)
        check_belongs(path, expected, folder.path, ckpt.agent, ckpt.env, ckpt.config)
    config = validate(ckpt.config, load_agent_class(ckpt.config["agent"]), source=str(path))
    return LoadedRun(config, ckpt, path)


def check_regular(path: Path, what: str) -> None:
    """Refuse, in one line, a path that exists but is not a regular file or folder (a FIFO, a socket, a device).

    Reading a FIFO blocks until someone writes to it; nothing but regular files and folders is read.
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # missing or unreadable: the reader says so
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise GymlabError(f"{what} {path} is {file_kind(mode)}, not a regular file or a run folder")


def check_belongs(path: Path, expected: Mapping[str, Any], folder: Path, agent: Any, env: Any, mine: Any) -> None:
    """Refuse a checkpoint whose ``agent``, ``env`` or config (``mine``) disagree with its folder's ``config.yaml``."""
    mine = mine if isinstance(mine, Mapping) else {}
    for key, value in (("agent", agent), ("env", env)):
        if value != expected.get(key) or mine.get(key) != expected.get(key):
            raise GymlabError(
                f"checkpoint {path} is from {key} '{value}' but run folder {folder} is for "
                f"'{expected.get(key)}'; it does not belong there (move it to a folder of its own)"
            )
    differ = config_differences(mine, expected)
    if differ:
        raise GymlabError(
            f"checkpoint {path} was written with another config than {folder / CONFIG_FILE} "
            f"(differs in {', '.join(differ[:5])}): it is another run's and does not belong there; move it to a "
            "folder of its own"
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


# --- reading many runs -----------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run folder: it holds a resolved config or TensorBoard event files."""
    return path.is_dir() and ((path / CONFIG_FILE).is_file() or any(path.glob(EVENTS_GLOB)))


def iter_runs(path: Path) -> list[Path]:
    """The run folders ``path`` names: a checkpoint's run, a run folder, or every run folder below it (sorted).

    A file names only the run folder it belongs to (none for a file outside any run), never the
    runs beside it; anything that is neither a regular file nor a folder names no run.
    """
    if path.is_file():
        folder = RunFolder.of(path).path
        return [folder] if is_run_dir(folder) else []
    if not path.is_dir():
        return []
    if is_run_dir(path):
        return [path]
    found = {p.parent for pattern in (CONFIG_FILE, EVENTS_GLOB) for p in path.rglob(pattern)}
    return sorted(p for p in found if is_run_dir(p))


def read_config(run: Path) -> dict[str, Any]:
    """A run folder's resolved config as written, unvalidated; without one, agent and env from the folder names.

    For reading many runs (``compare``) without importing their agents; :func:`load_run` validates.
    """
    return RunFolder(run).data() or {"agent": run.parent.name, "env": run.parent.parent.name}


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
    return [(what, name) for what, name in _named_code(config) if not _trusted(name.partition(":")[0], extra)]


def _named_code(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(what, name)`` of every agent, env or wrapper ``config`` names that is not built in."""
    names: list[tuple[str, str]] = []
    agent, env, wrappers = config.get("agent"), config.get("env"), config.get("wrappers") or []
    if isinstance(agent, str) and agent not in AGENTS:
        names.append(("agent", agent))
    if isinstance(env, str) and ":" in env:
        names.append(("env", env))
    if isinstance(wrappers, list):
        names += [("wrapper", w) for w in wrappers if isinstance(w, str) and w not in registry.WRAPPERS]
    return [(what, name) for what, name in names if name.partition(":")[0].split(".")[0] != "gymlab"]


def resume_command(folder: Path) -> str:
    """The command that continues the run in ``folder``, with the ``--trust`` its own code needs.

    A new process trusts no user module, so the resume of a run of ``mymod:MyEnv`` needs ``--trust mymod``.
    """
    try:
        config = RunFolder(folder).data() or {}
    except GymlabError:  # said on the interrupt path: a damaged config.yaml is for the resume to report
        config = {}
    modules = dict.fromkeys(name.partition(":")[0] for _, name in _named_code(config))
    return shlex.join(["gymlab", "train", "--resume", str(folder), *(a for m in modules for a in ("--trust", m))])


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
