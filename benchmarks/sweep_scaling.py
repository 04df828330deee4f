"""How a sweep scales with workers, and what each backend costs per trial.

1. Scaling: the same 8-trial grid (tabular Q on Taxi-v4, 1 seed per trial) with the local
   backend and 1, then 2 worker processes: wall times and their ratio (ideal: 2.0 on 2 free cores).
   The same sweep on a local Ray instance with 2 workers, for comparison.
2. Per-trial overhead: 8 tiny trials (a few hundred steps, one evaluation episode), so the wall
   time is almost all overhead. Their training alone, run in this process one after the other,
   is the floor; (sweep wall time − start-up − floor) / 8 is the per-trial overhead of each
   backend with one worker. Start-up is timed apart: for local processes, spawning one worker
   that imports the training stack; for Ray, ``ray.init`` and the first (cold) sweep.

3. Pruning: an 8-trial TPE sweep with the median pruner checking at every evaluation, 2 workers:
   wall time and how many trials were pruned. The pruner is asked inside each run, through the loop's
   evaluation callback; before, each check stopped the run at a checkpoint and resumed it (a segment).
   The section uses only ``load_sweep``/``run_sweep``, so it also runs against an older checkout.
4. Checks: what one pruning check costs inside a run (the callback reporting to the study's journal)
   against stopping and resuming the run there (what segments did): one run of ``--check-steps``
   with a check at every evaluation, trained (a) with :class:`~gymlab.sweep.study.PruneCheck` as its
   ``on_eval``, (b) as segments brought to each check in turn by the runner's ``stop_at``.

Usage: python benchmarks/sweep_scaling.py [--steps 20000] [--tiny-steps 500] [--prune-steps 10000]
       [--check-steps 20000] [--repeats 3] [--no-ray] [--sections scaling,overhead,pruning,checks]
Prints; asserts nothing. Timings on a shared machine are noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml


def sweep_file(folder: Path, name: str, steps: int, eval_every: int, eval_episodes: int, pruning: bool = False) -> Path:
    data: dict[str, Any] = {
        "agent": "tabular_q",
        "env": "Taxi-v4",
        "base": {
            "steps": steps,
            "eval_every": eval_every,
            "eval_episodes": eval_episodes,
            "checkpoint_every": 0,
            "log_every": max(steps // 4, 1),
        },
        "method": "grid",
        "space": {"learning_rate": [0.1, 0.3, 0.6, 0.9], "exploration_fraction": [0.2, 0.5]},
        "seeds": 1,
    }
    if pruning:  # TPE over the same ranges, bad trials stopped at every evaluation by the median rule
        data["method"], data["trials"] = "tpe", 8
        data["space"] = {"learning_rate": {"loguniform": [0.05, 1.0]}, "exploration_fraction": {"uniform": [0.1, 0.9]}}
        data["pruning"] = {"pruner": "median", "every": eval_every, "startup_trials": 2}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def timed_sweep(path: Path, out: Path, backend: str, workers: int) -> tuple[float, dict[str, int]]:
    """Run a sweep from scratch; its wall time and how many trials ended in each state."""
    from gymlab import sweep as sw

    sweep = sw.load_sweep(path, max_concurrent=workers)
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = sw.run_sweep(sweep, out, backend=backend)
    wall = time.perf_counter() - start
    states: dict[str, int] = {}
    for row in result.rows:
        states[row.state] = states.get(row.state, 0) + 1
    return wall, states


def floor_in_process(path: Path, out: Path) -> float:
    """Train the sweep's trials one after another in this process: compute alone."""
    from gymlab import runner
    from gymlab import sweep as sw

    sweep = sw.load_sweep(path)
    grid = sweep.grid()
    points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    start = time.perf_counter()
    for i, params in enumerate(points):
        spec = runner.RunSpec(sweep.resolve(params, 0), out / f"t{i}")
        outcome = runner.run(spec)
        assert outcome.status == "finished", outcome.describe()
    return time.perf_counter() - start


def checks_in_run_vs_segments(folder: Path, steps: int, checks: int) -> tuple[float, float]:
    """One run with ``checks`` pruning checks: asked in the run (a) vs stopped and resumed at each (b)."""
    import optuna

    from gymlab import runner
    from gymlab import sweep as sw
    from gymlab.sweep import study

    every = steps // (checks + 1)
    data = {"steps": steps, "eval_every": every, "eval_episodes": 5, "checkpoint_every": 0}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "checks.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "agent": "tabular_q",
                "env": "Taxi-v4",
                "base": data,
                "method": "random",
                "space": {"learning_rate": [0.9]},
                "pruning": {"pruner": "median", "startup_trials": 100},  # asked at every check, never prunes
            }
        )
    )
    sweep = sw.load_sweep(path)
    config = sweep.resolve({"learning_rate": 0.9}, 0)
    shutil.rmtree(folder / "in-run", ignore_errors=True)
    (folder / "in-run").mkdir(parents=True)
    journal = folder / "in-run" / study.JOURNAL_FILE
    optuna_study = optuna.create_study(study_name=study.STUDY_NAME, storage=study.open_storage(journal))
    number = optuna_study.ask().number
    check = study.PruneCheck(str(journal), number, 0, (0,), every, steps, sweep.spec.pruning)
    start = time.perf_counter()
    outcome = runner.run(runner.RunSpec(config, folder / "in-run" / "run", on_eval=check))
    in_run = time.perf_counter() - start
    assert outcome.status == "finished", outcome.describe()
    shutil.rmtree(folder / "segments", ignore_errors=True)
    start = time.perf_counter()
    for at in [every * (k + 1) for k in range(checks)] + [None]:
        spec = runner.RunSpec(config, folder / "segments", mode="auto", stop_at=at)
        outcome = runner.run(spec)
        assert outcome.status == "finished", outcome.describe()
    return in_run, time.perf_counter() - start


def _import_heavy() -> int:
    import gymlab.loop  # noqa: F401  (what a sweep worker imports before its first trial)

    return 0


def worker_startup(workers: int = 1) -> float:
    """Spawn worker processes that import the training stack at once: the local pool's start-up."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    start = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in [pool.submit(_import_heavy) for _ in range(workers)]:
            future.result()
    return time.perf_counter() - start


def _busy(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def free_cores(n: int = 3_000_000) -> float:
    """Two busy loops side by side vs one after the other: ~2 on two idle cores, ~1 on a busy machine."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_busy, args=(n,)) for _ in range(2)]
    start = time.perf_counter()
    for p in procs[:1]:
        p.start()
        p.join()
    one = time.perf_counter() - start
    start = time.perf_counter()
    for p in procs[1:]:
        p.start()
    _busy(n)
    for p in procs[1:]:
        p.join()
    two = time.perf_counter() - start
    return 2 * one / two


def med(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} s (min {min(values):.2f}, max {max(values):.2f})"


def scaling(args: argparse.Namespace, tmp: Path) -> None:
    big = sweep_file(tmp, "scaling", args.steps, args.steps // 4, 20)
    # Interleaved (1, 2, 1, 2, ...) so that a change in the machine's load hits both alike.
    t1: list[float] = []
    t2: list[float] = []
    for r in range(args.repeats):
        t1.append(timed_sweep(big, tmp / f"l1-{r}", "local", 1)[0])
        t2.append(timed_sweep(big, tmp / f"l2-{r}", "local", 2)[0])
    ratios = [a / b for a, b in zip(t1, t2, strict=True)]
    s1 = [worker_startup(1) for _ in range(args.repeats)]
    s2 = [worker_startup(2) for _ in range(args.repeats)]
    cores = [free_cores() for _ in range(args.repeats)]
    print(f"8-trial grid, tabular_q on Taxi-v4, {args.steps:,} steps per trial, 1 seed, {args.repeats} repeats")
    print(f"  local, 1 worker : {med(t1)}")
    print(f"  local, 2 workers: {med(t2)}")
    spread = f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
    print(f"  speed-up 1 -> 2 workers: median {statistics.median(ratios):.2f}x {spread}")
    print(f"  worker start-up, 1 worker : {med(s1)}; 2 workers at once: {med(s2)}")
    m1, m2 = statistics.median(t1) - statistics.median(s1), statistics.median(t2) - statistics.median(s2)
    print(f"  without start-up: {m1:.2f} s vs {m2:.2f} s, speed-up {m1 / m2:.2f}x")
    print(f"  cores free for this benchmark (2 busy loops at once vs in turn): {statistics.median(cores):.2f}")


def overhead(args: argparse.Namespace, tmp: Path, ray_ok: bool) -> None:
    tiny = sweep_file(tmp, "tiny", args.tiny_steps, 0, 1)
    floor, startup, tl = [], [], []
    for r in range(args.repeats):
        floor.append(floor_in_process(tiny, tmp / f"floor-{r}"))
        startup.append(worker_startup())
        tl.append(timed_sweep(tiny, tmp / f"tl-{r}", "local", 1)[0])
    f, su, loc = (statistics.median(x) for x in (floor, startup, tl))
    print(f"\nper-trial overhead: 8 tiny trials of {args.tiny_steps} steps, 1 worker")
    print(f"  training alone, in process : {med(floor)}")
    print(f"  local sweep                : {med(tl)}")
    print(f"  of which worker start-up   : {med(startup)} (spawn + import torch, gymnasium, gymlab)")
    print(f"  local overhead per trial   : {(loc - su - f) / 8 * 1000:6.0f} ms (start-up excluded)")
    if not ray_ok:
        return
    import ray

    big = sweep_file(tmp, "scaling", args.steps, args.steps // 4, 20)
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    init = time.perf_counter() - start
    try:
        cold = timed_sweep(tiny, tmp / "tr-cold", "ray", 1)[0]
        warm = [timed_sweep(tiny, tmp / f"tr-{r}", "ray", 1)[0] for r in range(args.repeats)]
        w = statistics.median(warm)
        print(f"  ray.init (2 CPUs)          : {init:6.2f} s")
        print(f"  ray sweep, cold workers    : {cold:6.2f} s (first tasks start Ray workers)")
        print(f"  ray sweep, warm workers    : {med(warm)}")
        print(f"  ray overhead per trial     : {(w - f) / 8 * 1000:6.0f} ms (warm workers)")
        tb = [timed_sweep(big, tmp / f"r2-{r}", "ray", 2)[0] for r in range(args.repeats)]
        print(f"\n  scaling sweep on ray, 2 workers: {med(tb)}")
    finally:
        ray.shutdown()


def pruning(args: argparse.Namespace, tmp: Path) -> None:
    every = args.prune_steps // 5
    path = sweep_file(tmp, "pruning", args.prune_steps, every, 5, pruning=True)
    walls, pruned = [], []
    for r in range(args.repeats):
        wall, states = timed_sweep(path, tmp / f"p-{r}", "local", 2)
        walls.append(wall)
        pruned.append(states.get("pruned", 0))
    print(f"\npruning: 8-trial TPE sweep, median pruner, {args.prune_steps:,} steps per trial, a check every {every:,}")
    print(f"  local, 2 workers: {med(walls)}; trials pruned per repeat: {pruned}")


def checks(args: argparse.Namespace, tmp: Path) -> None:
    n = 4
    pairs = [checks_in_run_vs_segments(tmp / f"c-{r}", args.check_steps, n) for r in range(args.repeats)]
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    per = [(y - x) / n * 1000 for x, y in pairs]
    print(f"\nchecks: one run of {args.check_steps:,} steps with {n} pruning checks, in this process")
    print(f"  asked inside the run (on_eval -> journal): {med(a)}")
    print(f"  stopped and resumed at each (segments)   : {med(b)}")
    print(f"  a segment costs {statistics.median(per):.0f} ms more per check than asking in the run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000, help="env steps per trial in the scaling sweep")
    parser.add_argument("--tiny-steps", type=int, default=500, help="env steps per trial in the overhead sweep")
    parser.add_argument("--prune-steps", type=int, default=10000, help="env steps per trial in the pruning sweep")
    parser.add_argument("--check-steps", type=int, default=20000, help="env steps of the run with pruning checks")
    parser.add_argument("--repeats", type=int, default=3, help="repeats, interleaved; medians are reported")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray backend")
    parser.add_argument("--sections", default="scaling,overhead,pruning,checks", help="which parts to run")
    args = parser.parse_args()
    sections = set(args.sections.split(","))

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    ray_ok = not args.no_ray
    if ray_ok:
        try:
            import ray  # noqa: F401
        except ImportError:
            ray_ok = False
    try:
        if "scaling" in sections:
            scaling(args, tmp)
        if "overhead" in sections:
            overhead(args, tmp, ray_ok)
        if "pruning" in sections:
            pruning(args, tmp)
        if "checks" in sections:
            checks(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
