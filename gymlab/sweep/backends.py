"""Where a sweep's trial seeds train: the local process pool, or plain Ray tasks on a local instance or a cluster.

A trial seed is a :class:`~gymlab.runner.RunSpec` in ``auto`` mode ("bring this run folder to the end of its
budget": start it, or continue it from its newest checkpoint), tagged ``(trial, seed)``, whose ``on_eval`` asks
the pruner when the sweep prunes. Both backends run it with :func:`gymlab.runner.execute`, the runner every
command uses, so the driver serves every backend unchanged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any, Protocol

from gymlab.errors import GymlabError
from gymlab.parallel import RunPool
from gymlab.runner import RunOutcome, RunSpec, execute


class Backend(Protocol):
    """Where seed runs train. The driver keeps at most ``slots`` of them in flight."""

    slots: int

    def submit(self, spec: RunSpec) -> None:
        """Start a run."""
        ...

    def wait(self, timeout: float | None = None) -> list[RunOutcome]:
        """Block until at least one run ends (or ``timeout`` seconds pass); return every ended one."""
        ...

    def close(self, cancel: bool) -> None:
        """Release the workers (``cancel``: stop the runs still going, each at a checkpoint)."""
        ...


class LocalBackend:
    """The one local process pool (:class:`gymlab.parallel.RunPool`): Ctrl-C handling and dead-worker retry."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.pool = RunPool(slots)

    def submit(self, spec: RunSpec) -> None:
        """Queue a run on the pool."""
        self.pool.submit(spec)

    def wait(self, timeout: float | None = None) -> list[RunOutcome]:
        """Outcomes of the runs that ended (a dead worker's run is retried once by the pool)."""
        return self.pool.wait(timeout)

    def close(self, cancel: bool) -> None:
        """Stop the runs gracefully (``cancel``: each saves a checkpoint), or let the pool go."""
        if cancel:
            self.pool.stop()
        else:
            self.pool.close()


class RayBackend:
    """Plain Ray tasks, one per seed run, on a local Ray instance or an existing cluster.

    Plain tasks rather than Ray Tune: Optuna already is the search engine and the driver already
    schedules and journals trials; Tune would add its own trial folders, result store and Optuna
    wrapper beside ours. A task here is just :func:`gymlab.runner.execute` with one CPU. On a cluster of
    several machines the sweep folder must be on storage every node sees (NFS): each task writes
    its run folder where the driver says, and a pruned sweep's tasks share the study's journal.
    """

    def __init__(self, address: str | None, slots: int | None, gpus_per_run: float = 0.0) -> None:
        try:
            import ray
        except ImportError:
            raise GymlabError('the ray backend needs Ray: pip install "gymlab[ray]"') from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            try:
                if address:
                    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
                else:
                    ray.init(
                        num_cpus=slots, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
                    )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise GymlabError(f"cannot connect to Ray at {address or 'a new local instance'}: {exc}") from None
        self.slots = slots or max(1, int(ray.cluster_resources().get("CPU", 1)))
        # max_retries=0: a dead task's run is reported, not re-run behind the user's back.
        # Ray hides the GPUs from a task that reserves none (CUDA_VISIBLE_DEVICES=""), so a run
        # with device auto trains on CPU there unless the sweep asks for a share of a GPU.
        self.task: Any = ray.remote(num_cpus=1, num_gpus=gpus_per_run, max_retries=0)(execute)
        self.running: dict[Any, RunSpec] = {}

    def submit(self, spec: RunSpec) -> None:
        """Start a Ray task for the run (one torch thread: the task reserves one CPU)."""
        self.running[self.task.remote(replace(spec, threads=spec.threads or 1))] = spec

    def wait(self, timeout: float | None = None) -> list[RunOutcome]:
        """Collect finished tasks (a task that died is reported as its run's error)."""
        if not self.running:
            return []
        ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=timeout)
        results = []
        for ref in ready:
            spec = self.running.pop(ref)
            try:
                results.append(self.ray.get(ref))
            except Exception as exc:
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                results.append(RunOutcome(spec, "failed", spec.run_dir, error=f"ray task failed: {message}"))
        return results

    def close(self, cancel: bool) -> None:
        """Cancel what still runs (on Ctrl-C) and stop the Ray instance if this sweep started it."""
        if cancel:
            for ref in self.running:
                self.ray.cancel(ref)
        if self.started:
            self.ray.shutdown()


def check_backend(name: str, address: str | None) -> None:
    """Refuse an unknown backend, or ``--address`` without Ray, in one line (before any work)."""
    if name not in ("local", "ray"):
        raise GymlabError(f"unknown backend '{name}': choose local or ray")
    if name == "local" and address:
        raise GymlabError("--address names a Ray cluster: use it with --backend ray")


def make_backend(name: str, address: str | None, max_concurrent: int | None, gpus_per_run: float = 0.0) -> Backend:
    """``local``: worker processes; ``ray``: a local Ray instance, or the cluster at ``address``."""
    check_backend(name, address)
    if name == "local":
        return LocalBackend(max_concurrent or os.cpu_count() or 1)
    return RayBackend(address, max_concurrent, gpus_per_run)
