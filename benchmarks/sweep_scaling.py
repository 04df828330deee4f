"""How a sweep scales with workers, and what each backend costs per trial.

1. Scaling: the same 8-trial grid (tabular Q on Taxi-v4, 1 seed per trial) with the local
   backend and 1, then 2 worker processes: wall times and their ratio (ideal: 2.0 on 2 free cores).
   The same sweep on a local Ray instance with 2 workers, for comparison.
2. Per-trial overhead: 8 tiny trials (a few hundred steps, one evaluation episode), so the wall
   time is almost all overhead. Their training alone, run in this process one after the other,
   is the floor; (sweep wall time − start-up − floor) / 8 is the per-trial overhead of each
   backend with one worker. Start-up is timed apart: for local processes, spawning one worker
   that imports the training stack; for Ray, ``ray.init`` and the first (cold) sweep.

Usage: python benchmarks/sweep_scaling.py [--steps 20000] [--tiny-steps 500] [--repeats 3] [--no-ray]
Prints; asserts nothing. Timings on a shared machine are noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml


def sweep_file(folder: Path, name: str, steps: int, eval_every: int, eval_episodes: int) -> Path:
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
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def timed_sweep(path: Path, out: Path, backend: str, workers: int) -> tuple[float, int]:
    from gymlab import sweep as sw

    sweep = sw.load_sweep(path, max_concurrent=workers)
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = sw.run_sweep(sweep, out, backend=backend)
    wall = time.perf_counter() - start
    return wall, sum(r.state == "complete" for r in result.rows)


def floor_in_process(path: Path, out: Path) -> float:
    """Train the sweep's trials one after another in this process: compute alone."""
    from gymlab import sweep as sw

    sweep = sw.load_sweep(path)
    start = time.perf_counter()
    for i, params in enumerate(sweep.grid()):
        config = sweep.trial_config(params, 0)
        result = sw.run_segment(sw.Segment(i, 0, config, str(out / f"t{i}"), None))
        assert result.error is None, result.error
    return time.perf_counter() - start


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000, help="env steps per trial in the scaling sweep")
    parser.add_argument("--tiny-steps", type=int, default=500, help="env steps per trial in the overhead sweep")
    parser.add_argument("--repeats", type=int, default=3, help="repeats, interleaved; medians are reported")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray backend")
    args = parser.parse_args()

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    big = sweep_file(tmp, "scaling", args.steps, args.steps // 4, 20)
    tiny = sweep_file(tmp, "tiny", args.tiny_steps, 0, 1)
    ray_ok = not args.no_ray
    if ray_ok:
        try:
            import ray
        except ImportError:
            ray_ok = False

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

    if ray_ok:
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
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
