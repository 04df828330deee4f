"""The warm children of tests/forkrun.py start as fresh ``python -m gymlab`` processes do."""

from __future__ import annotations

import os
from pathlib import Path

import clihelp
import forkrun
import pytest


def both(monkeypatch: pytest.MonkeyPatch, *args: str, cwd: Path) -> tuple[clihelp.Proc, clihelp.Proc]:
    """The command run forked, then fresh (GYMLAB_TEST_FRESH=1)."""
    monkeypatch.delenv("GYMLAB_TEST_FRESH", raising=False)
    assert forkrun.forkable(clihelp.child_env(None))
    warm = clihelp.gymlab(*args, cwd=cwd)
    monkeypatch.setenv("GYMLAB_TEST_FRESH", "1")
    fresh = clihelp.gymlab(*args, cwd=cwd)
    return warm, fresh


@pytest.mark.parametrize(
    "args",
    [["list"], ["train", "tabular_q", "Taxi-v4", "--steps", "50", "eval_every=0", "--run-dir", "."]],
    ids=["list", "existing-folder"],
)
def test_a_forked_child_answers_as_a_fresh_one(monkeypatch, tmp_path, args):
    warm, fresh = both(monkeypatch, *args, cwd=tmp_path)
    assert (warm.code, warm.out, warm.err) == (fresh.code, fresh.out, fresh.err)


def test_a_module_in_the_working_folder_shadows_as_in_a_fresh_interpreter(monkeypatch, tmp_path):
    """A ``yaml.py`` beside the command is what a fresh ``python -m gymlab`` imports; the warm one has PyYAML."""
    (tmp_path / "yaml.py").write_text("raise SystemExit('the yaml.py of the working folder was imported')\n")
    warm, fresh = both(monkeypatch, "list", cwd=tmp_path)
    assert fresh.code == 1 and "the yaml.py of the working folder" in fresh.err, fresh.show()
    assert (warm.code, warm.err) == (fresh.code, fresh.err)


def test_a_forked_child_has_a_fresh_interpreters_path_and_process(monkeypatch, tmp_path):
    """sys.path starts at the working folder; multiprocessing sees the main process, with no parent."""
    (tmp_path / "probe.py").write_text(
        "import multiprocessing, sys\n"
        "print(sys.path[0], multiprocessing.current_process().name, multiprocessing.parent_process())\n"
    )
    monkeypatch.delenv("GYMLAB_TEST_FRESH", raising=False)
    assert forkrun.forkable(clihelp.child_env(None))
    # gymlab imports a user env's module by name: `train random probe:Env` runs probe.py from the working folder.
    proc = clihelp.gymlab("train", "random", "probe:Env", "--steps", "10", cwd=tmp_path)
    assert proc.code == 2 and "'Env'" in proc.err, proc.show()  # probe.py has no Env: it only prints
    assert proc.out.split() == [os.path.realpath(tmp_path), "MainProcess", "None"], proc.show()
