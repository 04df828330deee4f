"""TensorBoard custom-scalar layouts that group runs the way ``gymlab compare`` does.

TensorBoard's custom-scalars charts select curves by *tag* regex, never by run, so a chart cannot
say "only the CartPole runs" unless the tags themselves carry the grouping. Each run therefore
also writes its headline scalars under a grouped tag::

    compare/<env>/<agent>/<config id>/eval_return

where the config id is a short hash of the config without its seed and bookkeeping keys (the same
identity ``compare --by config`` pools seeds by). Each run writes a layout whose categories
select those tags: every agent and config on an env, one agent on an env, one config (its
seeds). TensorBoard merges the layouts of all runs under ``--logdir``, so ``tensorboard --logdir
runs`` shows, in its Custom Scalars tab, the comparable curves side by side, one line per run.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from gymlab import tblog as tb
from gymlab.runs import slug

#: Run-level keys that do not change what is learned: runs differing only in these pool together.
BOOKKEEPING_KEYS = frozenset(
    {
        "seed",
        "device",
        "eval_every",
        "eval_episodes",
        "checkpoint_every",
        "log_every",
        "video_every",
        "vectorization",
        "threads",
    }
)

#: The scalars mirrored under grouped tags, by their short name in the layout.
MIRRORED = {
    tb.EVAL_RETURN: ("eval_return", "evaluation return (greedy)"),
    tb.EPISODE_RETURN: ("ep_return", "training episode return"),
    tb.EPISODE_LENGTH: ("ep_length", "training episode length"),
}

PREFIX = "compare"


def config_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config without seed and bookkeeping keys: what makes two runs the same experiment."""
    return {k: v for k, v in config.items() if k not in BOOKKEEPING_KEYS}


def config_id(config: Mapping[str, Any]) -> str:
    """An 8-character hash of :func:`config_identity`, stable across processes and machines."""
    text = json.dumps(config_identity(config), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def group_prefix(config: Mapping[str, Any]) -> str:
    """``compare/<env>/<agent>/<config id>``: the tag prefix of this run's mirrored scalars."""
    return f"{PREFIX}/{slug(config['env'])}/{slug(config['agent'])}/{config_id(config)}"


def layout(config: Mapping[str, Any]) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout this run contributes, as torch's ``add_custom_scalars`` takes it."""
    env, agent, cid = slug(config["env"]), slug(config["agent"]), config_id(config)
    scopes = {
        f"{env}: every agent and config": f"{re.escape(env)}/[^/]+/[^/]+",
        f"{env} · {agent}: every config": f"{re.escape(env)}/{re.escape(agent)}/[^/]+",
        f"{env} · {agent} · config {cid}: seeds": f"{re.escape(env)}/{re.escape(agent)}/{cid}",
    }
    return {
        category: {title: ["Multiline", [f"^{PREFIX}/{scope}/{short}$"]] for short, title in MIRRORED.values()}
        for category, scope in scopes.items()
    }


def install(logger: tb.RunLogger, config: Mapping[str, Any], *, write_layout: bool = True) -> None:
    """Make ``logger`` mirror the headline scalars under grouped tags, and write this run's layout.

    TensorBoard reads the first layout a run wrote, so a resumed run (``write_layout=False``)
    only needs the mirroring.
    """
    prefix = group_prefix(config)
    logger.mirror = {tag: f"{prefix}/{short}" for tag, (short, _) in MIRRORED.items()}
    if write_layout:
        logger.writer.add_custom_scalars(layout(config))
