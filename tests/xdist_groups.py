"""``xdist_group`` marks that keep their tests on one worker under ``pytest -n N``, whatever the pytest release.

The contract suite trains each case once, in a module-scoped fixture that all of the case's tests
share, and marks them with one ``xdist_group``: xdist's ``loadgroup`` distribution sends a group to one
worker. It finds a test's group in a suffix, ``nodeid@group``, that each worker adds to the node id
while it collects. pytest-xdist 3.8 adds it by setting ``item._nodeid``, which pytest 9.2 no longer
reads (the id became a structured ``NodeId``, ``item._id``): the suffix never appeared, every test was
distributed on its own, and a contract case was trained on both workers, once per worker and again
each time its tests met another case's in between (pytest-dev/pytest-xdist#1386).

This plugin (registered by tests/conftest.py) makes ``loadgroup`` the distribution under ``-n N`` and,
on a worker, adds the suffix itself where xdist's own did not take: on pytest 9.2, and on any pytest when
``-n N`` came without ``--dist loadgroup`` (a worker parses the command line itself, so xdist's hook there
never saw the loadgroup this plugin sets on the controller).

It also hands the ``slow``-marked tests out first (after the groups, which ``loadgroup`` sends before
single tests). In collection order the longest ones (SeqGAN's learning tests, the sweeps) came near the
end: one worker was still training while the other had nothing left, and waited. Longest first leaves
the short tests to fill in at the end.
"""

from __future__ import annotations

import pytest

try:  # pytest >= 9.2: the node id is a structured NodeId, built from a string by parse()
    from _pytest.nodeid import NodeId
except ImportError:  # older pytest: the node id is the string item._nodeid
    NodeId = None  # type: ignore[assignment,misc]


def pytest_configure(config: pytest.Config) -> None:
    """Under ``pytest -n N`` keep each ``xdist_group`` on one worker (``--dist loadgroup``).

    Tests without a group are distributed exactly as under ``load``.
    """
    if getattr(config.option, "dist", None) == "load":
        config.option.dist = "loadgroup"


def group_of(item: pytest.Item) -> str | None:
    """The group name xdist gives a test: its ``xdist_group`` names, sorted and joined by ``_``."""
    names = {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
    return "_".join(sorted(names)) if names else None


@pytest.hookimpl(trylast=True)  # after xdist's worker hook, to see whether its suffix took
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Every worker, whatever --dist it was started with: a worker parses the command line itself, so it
    # does not see the loadgroup of pytest_configure above (the controller's), and the suffix only
    # names the test under the other distributions (loadfile and loadscope split ids before it).
    if not hasattr(config, "workerinput"):
        return
    for item in items:
        group = group_of(item)
        if group is None or item.nodeid.endswith(f"@{group}"):
            continue
        grouped = f"{item.nodeid}@{group}"
        if NodeId is not None and isinstance(getattr(item, "_id", None), NodeId):
            item._id = NodeId.parse(grouped)
        elif isinstance(getattr(item, "_nodeid", None), str):
            item._nodeid = grouped  # type: ignore[attr-defined]
        else:
            raise pytest.UsageError(f"cannot give {item.nodeid} its xdist group {group!r} on this pytest")
    # Stable: each kind keeps its collection order, so every worker reports the same collection.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
