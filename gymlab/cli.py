"""The ``gymlab`` command: train, evaluate, list (watch, compare and sweep plug in beside them).

Every user-facing problem is a :class:`~gymlab.errors.GymlabError`, printed here as one line
``gymlab: error: ...`` with exit code 2 and no traceback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import shlex
import signal
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from gymlab.console import StdoutConsole, discard_stdout, say
from gymlab.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, NOTHING_SAVED, GymlabError, Interrupted, one_line
from gymlab.signals import commands_interruptible

if TYPE_CHECKING:
    from gymlab.runner import RunSpec

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="gymlab: train reinforcement-learning agents, watch them play, compare learning curves.",
)


try:  # typer >= 0.29 vendors its own copy of click and raises that copy's exceptions
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer uses the click package
    from click import exceptions as click_exceptions  # type: ignore[no-redef]


class _Stopped(Exception):
    """A command stopped by Ctrl-C or SIGTERM; the message says what was saved and how to continue."""


def _guard(command: Callable[..., Any]) -> Callable[..., Any]:
    """Let an interrupt inside ``command`` reach :func:`main` with its message (typer turns it into a bare 130).

    A reader of stdout that went away (``| head -1``) ends the output, not the command's success.
    """

    @functools.wraps(command)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except Interrupted as exc:
            raise _Stopped(str(exc) or NOTHING_SAVED) from None
        except KeyboardInterrupt:
            raise _Stopped(NOTHING_SAVED) from None
        except BrokenPipeError:  # the reader of stdout went away (| head); click would exit 1 for it
            discard_stdout()
            return None

    guarded.__gymlab_guarded__ = True  # type: ignore[attr-defined]
    return guarded


def checkpoint_choice(run: Path, which: str | None) -> str:
    """``--checkpoint`` for ``eval`` and ``watch``: last or best of a run folder; nothing to choose in a file."""
    if which is None:
        return "last"
    if which not in ("last", "best"):
        raise GymlabError(f"--checkpoint must be last or best, not '{which}'")
    if run.is_file():
        raise GymlabError(
            f"--checkpoint {which} picks a checkpoint of a run folder, but {run} is a checkpoint file itself: "
            "drop --checkpoint, or give the run folder"
        )
    return which


def fail(message: str) -> NoReturn:
    """Print one error line and exit with code 2."""
    print(f"gymlab: error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR)


def interrupted(message: str) -> NoReturn:
    """Print one line saying what an interrupt left behind and exit with code 130."""
    print(f"gymlab: {one_line(message)}", file=sys.stderr)
    raise SystemExit(EXIT_INTERRUPTED)


def _split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Positional words (AGENT ENV) and key=value overrides, in any order."""
    positional = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    if len(positional) > 2:
        raise GymlabError(f"too many arguments {positional[2:]}: expected AGENT ENV then key=value overrides")
    return positional, overrides


TrustOption = Annotated[
    list[str] | None,
    typer.Option(
        "--trust",
        metavar="MODULE",
        help="import MODULE when a run folder names code from it (module:Class agents, envs, wrappers); repeatable",
    ),
]


@app.command(context_settings={"allow_extra_args": False})
def train(
    args: Annotated[
        list[str] | None,
        typer.Argument(metavar="AGENT ENV [KEY=VALUE ...]", help="agent, env id, then config overrides"),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")] = None,
    seed: Annotated[int | None, typer.Option(min=0, max=MAX_SEED, help="random seed")] = None,
    steps: Annotated[
        int | None, typer.Option(min=1, help="env-step budget (with --resume: total steps to reach)")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda[:N]")] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option("--run-dir", help="the run folder to create (must not exist); with --resume: a new folder"),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="continue this run folder from its newest checkpoint (an older checkpoint: with --run-dir)"),
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option(help="several seeds, e.g. 0-4 or 0,3,7: one run folder each (with --run-dir DIR: DIR/s<seed>)"),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, max=MAX_WORKERS, help="with --seeds: runs at once, each in its own process")
    ] = None,
    trust: TrustOption = None,
) -> None:
    """Train AGENT on ENV; writes a run folder with config, TensorBoard events and checkpoints."""
    from gymlab.config import resolve
    from gymlab.runner import RunSpec
    from gymlab.runs import RunFolder, read_config

    positional, overrides = _split_args(args or [])
    trusted = tuple(trust or ())
    if seeds is not None:
        if resume is not None or seed is not None:
            raise GymlabError("--seeds starts new runs: it does not combine with --seed or --resume")
        from gymlab.multirun import parse_seeds, train_seeds

        train_seeds(positional, overrides, config, parse_seeds(seeds), workers or 1, steps, device, run_dir)
        return
    if workers is not None:
        raise GymlabError("--workers runs several --seeds at once: give --seeds too (e.g. --seeds 0-4 --workers 2)")
    if resume is not None:
        if positional or overrides or config is not None or seed is not None:
            raise GymlabError("--resume continues a run exactly as configured: give only the run folder (and --steps)")
        if run_dir is None:
            spec = RunSpec(run_dir=resume, mode="resume", until=steps, device=device, trust=trusted)
        else:  # a new run folder starting from this checkpoint; the source folder is not written
            spec = RunSpec(run_dir=run_dir, mode="new", source=resume, until=steps, device=device, trust=trusted)
        folder = RunFolder.of(resume).path
        known = read_config(folder) if folder.is_dir() else None
        label = f"{known['agent']} on {known['env']} (seed {known.get('seed', 0)})" if known else str(resume)
    else:
        agent, env = [*positional, None, None][:2]
        cfg = resolve(agent, env, config, overrides, seed=seed, steps=steps, device=device, once=True)
        spec = RunSpec(config=cfg, run_dir=run_dir, mode="new")
        label = f"{cfg.run.agent} on {cfg.run.env} (seed {cfg.run.seed})"
    _train_one(spec, label)


def _train_one(spec: RunSpec, label: str) -> None:
    """Run one spec through the runner with a progress display; report how it ended."""
    from gymlab import runner
    from gymlab.console import make_progress

    outcome = runner.run(spec, progress=make_progress(label))
    if outcome.status == "interrupted":
        raise Interrupted(outcome.describe())
    trained = outcome.step - outcome.start_step
    # A resume at its target step only plays the final evaluation it was interrupted in: no speed to show.
    rate = f"{trained / max(outcome.seconds, 1e-9):,.0f} steps/s" if trained else "the final evaluation only"
    evals = (
        ""
        if outcome.last_eval is None
        else f"; final eval return {outcome.last_eval:.4g} (best {outcome.best_eval:.4g})"
    )
    what = "done" if outcome.status == "finished" else "stopped by its evaluation callback"
    # A resumed run counts its steps from the start, its time from the resume: say which steps the time is for.
    this_time = f", {trained:,} of them" if outcome.start_step and trained else ""
    print(
        f"{what}: {outcome.step:,} steps{this_time} in {outcome.seconds:.1f} s ({rate}){evals}; run: {outcome.run_dir}"
    )
    if outcome.no_episode_note:
        print(f"note: {outcome.no_episode_note}", file=sys.stderr)


#: The largest seed (as ``gymlab.config.MAX_SEED``; the CLI module imports no config at start-up).
MAX_SEED = 2**32 - 1
#: The most worker processes ``--workers`` may ask for (as ``gymlab.config.MAX_AT_ONCE``).
MAX_WORKERS = 256
#: The most trials ``sweep --trials`` asks for (as ``gymlab.config.MAX_TRIALS``).
MAX_TRIALS = 100_000
#: The most random steps ``check --steps`` takes.
MAX_CHECK_STEPS = 100_000


@app.command("eval")
def evaluate(
    run: Annotated[Path, typer.Argument(help="run folder or checkpoint file")],
    episodes: Annotated[int, typer.Option(min=1, help="episodes to play")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    which: Annotated[
        str | None, typer.Option("--checkpoint", help="last | best (for a run folder; default last)")
    ] = None,
    seed: Annotated[int | None, typer.Option(min=0, max=MAX_SEED, help="seed of the evaluation episodes")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda[:N]")] = None,
    trust: TrustOption = None,
) -> None:
    """Play the greedy policy of a run's checkpoint; print mean ± std return."""
    from gymlab.evaluation import evaluate_run

    which = checkpoint_choice(run, which)
    # With --json, stdout is one JSON object for a pipe: what the env or agent prints goes to stderr.
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        result = evaluate_run(
            run,
            episodes,
            which=which,
            seed=seed,
            device=device,
            trust=tuple(trust or ()),
            say=lambda line: print(f"note: {line}", file=sys.stderr, flush=True),
        )
    if result["capped_episodes"]:
        print(
            f"note: {result['capped_episodes']} of {result['episodes']} episodes were cut at "
            f"{result['eval_max_steps']:,} steps ({result['env']} has no time limit; run key eval_max_steps) "
            "and count as truncated",
            file=sys.stderr,
        )
    del result["eval_max_steps"]
    if as_json:
        print(json.dumps(result))
    else:
        print(
            f"{result['agent']} on {result['env']}, {result['checkpoint']} (step {result['step']:,}): "
            f"return {result['mean_return']:.4g} ± {result['std_return']:.4g} over {result['episodes']} episodes "
            f"(mean length {result['mean_length']:.1f})"
        )


def _as_given(path: Path) -> str:
    """A path the user can paste here: relative to the working folder when under it, else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path.resolve())


@app.command("list")
def list_() -> None:
    """Show the agents, the spaces each handles, and the shipped configs."""
    from gymlab.agent import AGENTS, load_agent_class
    from gymlab.config import configs_root, shipped_configs
    from gymlab.report import Table

    agents = Table(["name", "spaces", "what it is"], title="agents")
    for name in AGENTS:
        try:
            cls = load_agent_class(name)
            agents.add_row(name, cls.spaces, cls.summary)
        except GymlabError as exc:
            agents.add_row(name, "—", f"unavailable: {exc}")
    agents.print()
    presets = Table(["agent", "preset", "train it with"], title=f"shipped configs ({configs_root()})")
    for agent, env, path in shipped_configs():
        # A preset named like an env id (Name-vN) loads by itself; a variant (SeqGen-v0-small) via --config.
        if re.fullmatch(r".+-v\d+", env):
            command = f"gymlab train {agent} {env}"
        else:
            command = f"gymlab train {agent} {env.rsplit('-', 1)[0]} --config {shlex.quote(_as_given(path))}"
        presets.add_row(agent, env, command)
    presets.print()


@app.command("check")
def check_env(
    env: Annotated[str, typer.Argument(metavar="ENV", help="env id, module:Env-v0 or module:EnvClass")],
    env_kwargs: Annotated[
        list[str] | None, typer.Argument(metavar="[KEY=VALUE ...]", help="keyword arguments for the env")
    ] = None,
    steps: Annotated[
        int, typer.Option(min=1, max=MAX_CHECK_STEPS, help="random steps for the finite-values and in-space checks")
    ] = 300,
) -> None:
    """Check your own env before training: Gymnasium's checker plus the lab's points, one verdict each."""
    from gymlab import envcheck

    report = envcheck.check(env, envcheck.parse_env_kwargs(env_kwargs or []), steps=steps)
    StdoutConsole().print(envcheck.render(report))
    if not report.ok:
        raise GymlabError(envcheck.summary(report))
    print(envcheck.summary(report))


@app.command()
def watch(
    run: Annotated[Path, typer.Argument(help="run folder or checkpoint file")],
    episodes: Annotated[
        int | None,
        typer.Option(min=1, help="episodes to play (default 3; with --follow: until the run ends)"),
    ] = None,
    fps: Annotated[  # bounded by gymlab.watch (0.1 to 240, finite), which names NaN as such
        float | None, typer.Option(help="frames per second, 0.1 to 240 (default: the env's own)")
    ] = None,
    record: Annotated[Path | None, typer.Option(help="also write what is shown to this .mp4")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace the --record file if it exists")] = False,
    follow: Annotated[bool, typer.Option(help="keep watching a training run, reloading each newer checkpoint")] = False,
    which: Annotated[
        str | None, typer.Option("--checkpoint", help="last | best (for a run folder; default last)")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(min=0, max=MAX_SEED, help="seed of the first episode (then +1 each)")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda[:N]")] = None,
    trust: TrustOption = None,
) -> None:
    """Play a run's greedy policy in a window (an mp4 without a screen; text for envs without pixels)."""
    from gymlab.runs import trust_modules
    from gymlab.watch import watch as play

    trust_modules(trust or ())

    which = checkpoint_choice(run, which)
    if record is not None and record.suffix.lower() != ".mp4":
        raise GymlabError(f"--record {record}: the file must end in .mp4")
    result = play(
        run,
        episodes=episodes,
        fps=fps,
        record=record,
        overwrite=overwrite,
        follow=follow,
        which=which,
        seed=seed,
        device=device,
    )
    if result.mode == "mp4":
        print(f"no screen ({result.reason}): wrote {result.video}")
    elif result.video is not None:
        print(f"recorded {result.video}")
    if result.episodes:
        rets = [r for r, _ in result.episodes]
        print(f"{len(rets)} episode{'s' if len(rets) > 1 else ''}: mean return {sum(rets) / len(rets):.4g}")


@app.command()
def compare(
    runs_: Annotated[
        list[str], typer.Argument(metavar="RUN_OR_GLOB...", help="run folders, folders of runs, or globs")
    ],
    metric: Annotated[str, typer.Option(help="scalar tag to compare")] = "eval/return_mean",
    by: Annotated[
        str, typer.Option(help="pool runs by agent | env | config (agent, env and config; seeds pooled)")
    ] = "config",
    out: Annotated[Path, typer.Option(help="plot file: .png, .svg or .pdf")] = Path("compare.png"),
    threshold: Annotated[
        float | None, typer.Option(help="report the env steps each group needs to reach this value")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace the --out file if it exists")] = False,
) -> None:
    """Plot mean learning curves with 95% bootstrap bands per group, and print a summary table."""
    from gymlab.compare import compare as run_compare
    from gymlab.compare import summary_table

    result = run_compare(runs_, metric=metric, by=by, out=out, threshold=threshold, overwrite=overwrite)  # type: ignore[arg-type]
    for note in [*result.skipped, *(n for g in result.groups for n in g.notes)]:
        print(f"note: {note}")
    summary_table(result).print()
    print(f"plot: {result.out}")


@app.command()
def sweep(
    sweep_file: Annotated[Path, typer.Argument(metavar="SWEEP.yaml", help="sweep file (see configs/sweeps/)")],
    backend: Annotated[str, typer.Option(help="local (worker processes) | ray")] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (e.g. HOST:6379 or auto); with --backend ray")
    ] = None,
    trials: Annotated[
        int | None, typer.Option(min=1, max=MAX_TRIALS, help="number of trials (over the file's)")
    ] = None,
    max_concurrent: Annotated[
        int | None, typer.Option("--max-concurrent", min=1, max=MAX_WORKERS, help="runs at once (default: the CPUs)")
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="sweep folder (default runs/sweeps/NAME; reused to resume)")
    ] = None,
) -> None:
    """Search a config's keys with Optuna; each trial's seeds are normal run folders; resumable."""
    try:
        import optuna
    except ImportError:
        raise GymlabError('gymlab sweep needs Optuna, which is not installed: pip install "gymlab[sweep]"') from None

    from gymlab import sweep as sweeps

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = sweeps.load_sweep(sweep_file, trials=trials, max_concurrent=max_concurrent)
    folder = run_dir if run_dir is not None else sweeps.default_sweep_dir(spec)
    resume = f"finished trials are kept; resume with the same command (sweep folder {folder})"
    try:
        result = sweeps.run_sweep(spec, folder, backend=backend, address=address, on_event=say)
    except KeyboardInterrupt:  # a second Ctrl-C, while the summary was being written
        raise Interrupted(f"interrupted while writing the summary: {resume}") from None
    sweeps.table(result.rows, spec).print()
    print(f"summary: {result.summary_csv} and {result.summary_md}")
    if result.best_yaml is not None:
        print(f"best config: {result.best_yaml} (gymlab train --config {shlex.quote(str(result.best_yaml))})")
    if result.interrupted:
        raise Interrupted(f"interrupted: {resume}")
    failed = [row for row in result.rows if row.state == "failed"]
    if result.rows and len(failed) == len(result.rows):
        first = f" (first: trial {failed[0].number}: {failed[0].error})" if failed[0].error else ""
        raise GymlabError(
            f"every trial of sweep {spec.name} failed ({len(failed)} of {len(result.rows)}){first}; "
            f"fix the cause and run the same command again (summary: {result.summary_md})"
        )


def _import_native_stack() -> None:
    """Import torch and Gymnasium with Ctrl-C and SIGTERM held back until the imports are done.

    A KeyboardInterrupt raised while a native extension initialises (torch's pybind11 start-up calls
    back into Python) cannot unwind through C++: the process aborts with "terminate called after
    throwing an instance of 'pybind11::error_already_set'" instead of exiting 130 with one line. So
    a signal that arrives during these imports (a second or two) is remembered and turned into the
    same KeyboardInterrupt right after them.
    """
    pending: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        pending.append(signum)

    previous = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        import gymnasium  # noqa: F401
        import torch  # noqa: F401
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if pending:
        raise KeyboardInterrupt


def _refuse_empty_words(args: list[str]) -> None:
    """An empty path ('' or --option=) is an error: click reads '' as '.', the current folder.

    An empty argument is never right either; an empty value of any other option is left to its own check.
    """
    if not any(arg == "" or arg.endswith("=") for arg in args):
        return
    paths = _path_options()
    for i, arg in enumerate(args):
        option = arg[:-1] if arg.startswith("--") and arg.endswith("=") else None
        if arg == "" and i and args[i - 1].startswith("-"):
            option = args[i - 1]
        elif arg == "":
            raise GymlabError(f"word {i + 1} of the command line is empty (''): give it a value, or leave it out")
        if option in paths:
            raise GymlabError(f"{option} is given an empty path: give it one, or leave it out")


def _path_options() -> set[str]:
    """The names of every command's options that take a path."""
    names: set[str] = set()
    for info in app.registered_commands:
        try:
            hints = typing.get_type_hints(info.callback, include_extras=True)
        except (NameError, TypeError):  # a command added elsewhere, annotated with names only a type checker sees
            continue
        for name, hint in hints.items():
            option = next(
                (m for m in getattr(hint, "__metadata__", ()) if isinstance(m, typer.models.OptionInfo)), None
            )
            if option is not None and Path in (hint.__origin__, *typing.get_args(hint.__origin__)):
                decls = (option.default, *(option.param_decls or ()))
                names |= {f"--{name.replace('_', '-')}", *(d for d in decls if isinstance(d, str) and d[:1] == "-")}
    return names


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors are one line and exit 2; Ctrl-C and SIGTERM one line and exit 130.

    Every registered command (whoever added it) is wrapped by :func:`_guard`, so an interrupt
    anywhere, start-up included, prints what was saved instead of exiting silently.
    """
    for info in app.registered_commands:
        if info.callback is not None and not getattr(info.callback, "__gymlab_guarded__", False):
            info.callback = _guard(info.callback)
    try:
        with commands_interruptible():
            args = sys.argv[1:] if argv is None else argv
            _refuse_empty_words(args)
            if args and not {"--help", "-h"} & set(args):  # every command but help builds on torch and Gymnasium
                _import_native_stack()
            code = app(args=argv, prog_name="gymlab", standalone_mode=False)
    except _Stopped as exc:
        interrupted(str(exc))
    except KeyboardInterrupt:  # outside any command (parsing the command line)
        code = EXIT_INTERRUPTED
    except GymlabError as exc:
        fail(str(exc))
    except click_exceptions.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else "", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    except click_exceptions.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "gymlab"
        fail(f"{exc.format_message()} (see {command} --help)")
    except typer.Abort:
        fail("aborted")
    if code == EXIT_INTERRUPTED:
        interrupted(NOTHING_SAVED)
