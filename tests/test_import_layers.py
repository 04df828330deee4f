"""Imports run one way: import-linter's contracts (pyproject.toml) and no imports hidden inside functions.

The contracts are checked on the package as it installs: agents/, envs/ and replay/ sit inside
gymlab/ there, while an editable install maps them from the repo's top level, where import-linter's
graph (grimp) cannot follow. So the test copies the source into that layout first.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

#: Modules that may be imported inside a function: optional extras that may be missing, imported
#: only where they are used, so that the rest works without them.
OPTIONAL = {"optuna", "ray", "pygame", "ale_py", "cv2", "mujoco", "Box2D"}


def installed_layout(dest: Path) -> Path:
    """Copy the package as it installs (gymlab/ with agents/, envs/ and replay/ inside) under ``dest``."""
    package = dest / "gymlab"
    shutil.copytree(ROOT / "gymlab", package, ignore=shutil.ignore_patterns("__pycache__"))
    for sub in ("agents", "envs", "replay"):
        shutil.copytree(ROOT / sub, package / sub, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (pip install -e '.[dev]')")
def test_import_contracts_hold(tmp_path: Path) -> None:
    tree = installed_layout(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [str(LINT_IMPORTS), str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = done.stdout[done.stdout.find("Contracts") :] or done.stdout + done.stderr
    assert done.returncode == 0, report
    assert "BROKEN" not in done.stdout and "KEPT" in done.stdout, report


def test_a_broken_layer_is_caught(tmp_path: Path) -> None:
    """The contract check itself can fail: an import from a low layer into a high one is named."""
    if not LINT_IMPORTS.exists():
        pytest.skip("import-linter is not installed")
    tree = installed_layout(tmp_path)
    errors = tree / "gymlab" / "errors.py"
    errors.write_text(errors.read_text() + "\nfrom gymlab import loop  # noqa\n")
    done = subprocess.run(
        [str(LINT_IMPORTS), str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "gymlab.errors -> gymlab.loop" in done.stdout


def function_local_imports(path: Path) -> list[str]:
    """``file:line: module`` for every import inside a function body, other than of an optional extra."""
    found = []
    tree = ast.parse(path.read_text(), str(path))
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                if name.split(".")[0] not in OPTIONAL:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    return found


def test_no_imports_hidden_in_functions() -> None:
    """Only optional extras and the CLI's subcommands (each imports what it runs) import inside a function."""
    files = [p for d in ("gymlab", "agents", "envs", "replay") for p in sorted((ROOT / d).rglob("*.py"))]
    hidden = [line for p in files if p.name != "cli.py" for line in function_local_imports(p)]
    assert hidden == [], "imports inside functions:\n" + "\n".join(hidden)
