"""Optional extras and user modules: which extra installs what, and imports that fail in one line.

gymlab's extras (``pip install "gymlab[atari]"``) bring the modules some envs and wrappers need.
This module knows which extra installs which module, finds the extra behind an import error, and
imports a user's module (an env, a wrapper, an agent) so that whatever goes wrong is one
:class:`~gymlab.errors.GymlabError` naming what the module was for and the cause. It imports only
the standard library and :mod:`gymlab.errors`, so any part of gymlab can use it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Mapping
from typing import Any

from gymlab.errors import GymlabError, describe

#: Optional dependencies: the module an env's entry point (or a wrapper) lives in -> (extra, modules it needs).
EXTRAS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "gymnasium.envs.box2d": ("box2d", ("Box2D",)),
    "ale_py": ("atari", ("ale_py",)),
    "gymlab.envs.atari": ("atari", ("ale_py", "cv2")),
}

#: Which extra installs a module that optional envs import.
EXTRA_OF_MODULE: Mapping[str, str] = {"Box2D": "box2d", "ale_py": "atari", "cv2": "atari", "swig": "box2d"}


def install_hint(extra: str) -> str:
    """The command that installs one of gymlab's extras."""
    return f'pip install "gymlab[{extra}]"'


def module_missing(name: str) -> bool:
    """Whether ``import name`` would fail for want of the module (without importing it)."""
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
        return True


def missing_extra(entry_point: object) -> tuple[str, list[str]] | None:
    """For an entry point (``module:attr`` or a callable), the extra it needs and which of its modules are missing."""
    module = entry_point if isinstance(entry_point, str) else getattr(entry_point, "__module__", "") or ""
    module = module.partition(":")[0]
    for prefix, (extra, needs) in EXTRAS.items():
        if module == prefix or module.startswith(prefix + "."):
            missing = [m for m in needs if module_missing(m)]
            return (extra, missing) if missing else None
    return None


def _dependency_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that say a dependency is missing: ImportError, and Gymnasium's DependencyNotInstalled.

    Gymnasium's is looked up among the imported modules, not imported: before Gymnasium is imported
    no exception of its can have been raised.
    """
    gym_error = sys.modules.get("gymnasium.error")
    not_installed = getattr(gym_error, "DependencyNotInstalled", None)
    return (ImportError,) if not_installed is None else (ImportError, not_installed)


def missing_dependency(exc: BaseException) -> tuple[str, str] | None:
    """For an ImportError or gymnasium's DependencyNotInstalled: (missing module, the extra that installs it)."""
    if not isinstance(exc, _dependency_errors()):
        return None
    name = getattr(exc, "name", None)
    if isinstance(name, str) and name.partition(".")[0] in EXTRA_OF_MODULE:
        top = name.partition(".")[0]
        return top, EXTRA_OF_MODULE[top]
    text = str(exc).lower()
    for module, extra in EXTRA_OF_MODULE.items():
        if module.lower() in text:
            return module, extra
    if "opencv" in text:
        return "opencv", "atari"
    return None


def import_module(module_name: str, what: str) -> Any:
    """Import a user's module, turning whatever its import raises into one line naming ``what`` and the cause.

    ``what`` says what the module was imported for (``environment 'my.envs:Grid'``). A missing module
    asks whether it is installed; a missing optional dependency names the extra that installs it.
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = missing_dependency(exc)
        if missing is not None:
            raise GymlabError(
                f"{what} needs {missing[0]} (gymlab's {missing[1]} extra): {install_hint(missing[1])}"
            ) from None
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):  # the module or its package
            raise GymlabError(f"{what}: cannot import '{module_name}' ({exc}); is it installed?") from None
        raise GymlabError(f"{what}: importing '{module_name}' failed: {exc}; is it installed?") from None
    except GymlabError:
        raise
    except (Exception, SystemExit) as exc:  # the user's module body raised (or called sys.exit)
        raise GymlabError(f"{what}: importing '{module_name}' raised {describe(exc)}") from None


def load_attr(path: str, what: str) -> Any:
    """The attribute a ``module:attr`` path names, imported with :func:`import_module`; one line if it is not there."""
    module_name, _, attr = path.partition(":")
    module = import_module(module_name, f"{what} '{path}'")
    if not hasattr(module, attr):
        raise GymlabError(f"{what} '{path}': module '{module_name}' has no attribute '{attr}'")
    return getattr(module, attr)
