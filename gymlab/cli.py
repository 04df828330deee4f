"""The ``gymlab`` command: train, evaluate, list (watch, compare and sweep plug in beside them).

Every user-facing problem is a :class:`~gymlab.errors.GymlabError`, printed here as one line
``gymlab: error: ...`` with exit code 2 and no traceback.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, NoReturn

import click
import typer

from gymlab.errors import GymlabError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="gymlab: train reinforcement-learning agents, watch them play, compare learning curves.",
)

EXIT_USER_ERROR = 2


def fail(message: str) -> NoReturn:
    """Print one error line and exit with code 2."""
    print(f"gymlab: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR)


def _split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Positional words (AGENT ENV) and key=value overrides, in any order."""
    positional = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    if len(positional) > 2:
        raise GymlabError(
            f"too many arguments {positional[2:]}: expected AGENT ENV then key=value overrides"
        )
    return positional, overrides


@app.command(context_settings={"allow_extra_args": False})
def train(
    args: Annotated[
        list[str] | None,
        typer.Argument(metavar="AGENT ENV [KEY=VALUE ...]", help="agent, env id, then config overrides"),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    steps: Annotated[int | None, typer.Option(help="env-step budget (with --resume: total steps to reach)")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda[:N]")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="the run folder to create (must not exist)")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue this run folder (or checkpoint) where it stopped")] = None,
) -> None:
    """Train AGENT on ENV; writes a run folder with config, TensorBoard events and checkpoints."""
    from gymlab import checkpoint, loop, runs
    from gymlab.config import resolve
    from gymlab.console import make_progress

    positional, overrides = _split_args(args or [])
    if resume is not None:
        if positional or overrides or config is not None or seed is not None or run_dir is not None:
            raise GymlabError("--resume continues a run exactly as configured: give only the run folder (and --steps)")
        cfg, ckpt, ckpt_path = runs.load_run(resume, "last")
        if device is not None:
            cfg = resolve(cfg.run.agent, cfg.run.env, None, [f"{k}={v}" for k, v in _flat(cfg.to_dict()).items()], device=device)
        folder = runs.run_dir_of(ckpt_path)
        until = steps if steps is not None else cfg.run.steps
        done = int(ckpt["loop"]["step"])
        if done >= until:
            raise GymlabError(f"run {folder} already reached step {done:,}; pass --steps N with N > {done:,} to go on")
    else:
        agent, env = (positional + [None, None])[:2]
        cfg = resolve(agent, env, config, overrides, seed=seed, steps=steps, device=device)
        loop.preflight(cfg)
        folder = runs.create_run_dir(cfg, run_dir)
        ckpt, until = None, cfg.run.steps

    label = f"{cfg.run.agent} on {cfg.run.env} (seed {cfg.run.seed})"
    start = time.perf_counter()
    start_step = int(ckpt["loop"]["step"]) if ckpt is not None else 0
    try:
        result = loop.train(cfg, folder, resume=ckpt, until=until, progress=make_progress(label))
    except KeyboardInterrupt:
        fail(f"interrupted twice: stopped without saving; the last periodic checkpoint is in {folder / 'checkpoints'}")
    elapsed = time.perf_counter() - start
    if result.interrupted:
        fail(
            f"interrupted at step {result.step:,}: checkpoint saved to {result.checkpoint}; "
            f"continue with: gymlab train --resume {folder}"
        )
    speed = (result.step - start_step) / max(elapsed, 1e-9)
    evals = "" if result.last_eval is None else f"; final eval return {result.last_eval:.4g} (best {result.best_eval:.4g})"
    print(f"done: {result.step:,} steps in {elapsed:.1f} s ({speed:,.0f} steps/s){evals}; run: {folder}")
    del checkpoint


def _flat(data: dict[str, object], prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        elif not isinstance(value, dict):
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, str)) else value
    return out


@app.command("eval")
def evaluate(
    run: Annotated[Path, typer.Argument(help="run folder or checkpoint file")],
    episodes: Annotated[int, typer.Option(min=1, help="episodes to play")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    which: Annotated[str, typer.Option("--checkpoint", help="last | best (for a run folder)")] = "last",
    seed: Annotated[int | None, typer.Option(help="seed of the evaluation episodes")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda[:N]")] = None,
) -> None:
    """Play the greedy policy of a run's checkpoint; print mean ± std return."""
    from gymlab import loop, registry, runs

    if which not in ("last", "best"):
        raise GymlabError(f"--checkpoint must be last or best, not '{which}'")
    cfg, ckpt, ckpt_path = runs.load_run(run, which)
    agent, _, _ = runs.load_policy(cfg, ckpt, device)
    r = cfg.run
    envs = registry.make_vec_env(r.env, 1, r.env_kwargs, r.wrappers, train=False)
    eval_seed = seed if seed is not None else loop.eval_seed(r.seed, 1_000_000)
    try:
        returns, lengths = loop.evaluate(agent, envs, episodes, eval_seed)
    finally:
        envs.close()
    result = {
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "episodes": int(len(returns)),
        "mean_length": float(lengths.mean()),
        "returns": [float(x) for x in returns],
        "checkpoint": str(ckpt_path),
        "step": int(ckpt["loop"]["step"]),
        "agent": r.agent,
        "env": r.env,
    }
    if as_json:
        print(json.dumps(result))
    else:
        print(
            f"{r.agent} on {r.env}, {ckpt_path} (step {result['step']:,}): "
            f"return {result['mean_return']:.4g} ± {result['std_return']:.4g} over {len(returns)} episodes "
            f"(mean length {result['mean_length']:.1f})"
        )


@app.command("list")
def list_() -> None:
    """Show the agents, the spaces each handles, and the shipped configs."""
    from rich.console import Console
    from rich.table import Table

    from gymlab.agent import AGENTS, load_agent_class
    from gymlab.config import configs_root, shipped_configs

    console = Console()
    agents = Table(title="agents", title_justify="left")
    for col in ("name", "spaces", "what it is"):
        agents.add_column(col)
    for name in AGENTS:
        try:
            cls = load_agent_class(name)
            agents.add_row(name, cls.spaces, cls.summary)
        except GymlabError as exc:
            agents.add_row(name, "—", f"unavailable: {exc}")
    console.print(agents)
    presets = Table(title=f"shipped configs ({configs_root()})", title_justify="left")
    for col in ("agent", "env", "file"):
        presets.add_column(col)
    for agent, env, path in shipped_configs():
        presets.add_row(agent, env, f"{agent}/{path.name}")
    console.print(presets)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the command, turning every user error into one line and exit code 2."""
    try:
        app(args=argv, prog_name="gymlab", standalone_mode=False)
    except GymlabError as exc:
        fail(str(exc))
    except click.exceptions.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else "", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "gymlab"
        fail(f"{exc.format_message()} (see {command} --help)")
    except click.exceptions.Abort:
        fail("aborted")
    except KeyboardInterrupt:
        fail("interrupted")
