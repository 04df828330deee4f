"""Several runs at once in local worker processes (many seeds, or a sweep's trials).

Each job is a resolved config and the run folder to create; each runs ``loop.train`` in a
fresh ``spawn``-ed process (no state shared with the parent, same result as running it alone),
quietly, with torch's threads divided among the workers. A job that fails is reported with its
error and does not stop the others. For many machines, use the Ray backend of ``gymlab sweep``.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gymlab.errors import GymlabError


@dataclass(frozen=True)
class Job:
    """One run to do: its resolved config (as plain data) and the run folder to create."""

    config: dict[str, Any]
    run_dir: Path


@dataclass(frozen=True)
class JobResult:
    """How a job ended: its run folder, final evaluation, or the error that stopped it."""

    job: Job
    step: int = 0
    last_eval: float | None = None
    best_eval: float | None = None
    interrupted: bool = False
    error: str | None = None


def run_job(job: Job, threads: int = 1) -> JobResult:
    """Create the job's run folder and train it to the end (runs in a worker process)."""
    import torch

    from gymlab import loop, runs
    from gymlab.agent import load_agent_class
    from gymlab.config import validate

    torch.set_num_threads(threads)
    try:
        cls = load_agent_class(job.config["agent"])
        config = validate(job.config, cls.Config, source=str(job.run_dir))
        loop.preflight(config)
        folder = runs.create_run_dir(config, job.run_dir)
        result = loop.train(config, folder)
    except GymlabError as exc:
        return JobResult(job, error=str(exc))
    except Exception as exc:  # a crashing job is reported, never allowed to stop the others
        last = traceback.extract_tb(exc.__traceback__)[-1]
        return JobResult(job, error=f"{type(exc).__name__}: {exc} ({Path(last.filename).name}:{last.lineno})")
    return JobResult(job, result.step, result.last_eval, result.best_eval, result.interrupted)


def run_jobs(jobs: Sequence[Job], workers: int, on_done: Callable[[JobResult], None] | None = None) -> list[JobResult]:
    """Run jobs in up to ``workers`` processes; results come back in the jobs' order."""
    if workers <= 1 or len(jobs) <= 1:
        results = []
        for job in jobs:
            results.append(run_job(job, threads=torch_threads(1)))
            if on_done is not None:
                on_done(results[-1])
        return results
    threads = torch_threads(workers)
    by_job: dict[int, JobResult] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(run_job, job, threads): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                by_job[i] = future.result()
            except Exception as exc:  # the worker process itself died
                by_job[i] = JobResult(jobs[i], error=f"worker died: {type(exc).__name__}: {exc}")
            if on_done is not None:
                on_done(by_job[i])
    return [by_job[i] for i in range(len(jobs))]


def torch_threads(workers: int) -> int:
    """Torch threads per worker so that workers × threads does not exceed the cores."""
    return max(1, (os.cpu_count() or 1) // max(workers, 1))
