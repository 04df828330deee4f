"""What the command line shows while training: a live progress bar on a terminal, plain lines otherwise.

:class:`Progress` is what the loop reports to; :func:`make_progress` picks one of the two displays.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as Bar
from rich.text import Text


class Progress(Protocol):
    """Where the loop reports progress; the CLI draws it (the core never prints)."""

    def start(self, total: int, initial: int) -> None:
        """Training starts (or resumes at ``initial``) towards ``total`` env steps."""
        ...

    def update(self, step: int, episodes: int, recent_return: float | None) -> None:
        """Called a few hundred times per run."""
        ...

    def phase(self, name: str, done: int, total: int) -> None:
        """An offline phase (pre-training before any env step) has done ``done`` of its ``total`` iterations."""
        ...

    def note(self, message: str) -> None:
        """Show one line of text from the agent (``Context.text``) without disturbing the display."""
        ...

    def close(self) -> None:
        """Training ended."""
        ...


class _StatsColumn(ProgressColumn):
    """steps/s, episodes and the recent mean return, from the task's fields."""

    def render(self, task: Task) -> Text:
        speed = task.speed or 0.0
        ret = task.fields.get("ret")
        ret_text = "—" if ret is None else f"{ret:.3g}"
        return Text(f"{speed:,.0f} steps/s · {task.fields.get('episodes', 0):,} episodes · return {ret_text}")


class RichProgress:
    """A live bar: steps, steps/s, episodes, recent mean return, elapsed and ETA."""

    def __init__(self, label: str, console: Console | None = None) -> None:
        self.label = label
        self.console = console or StdoutConsole()
        self._bar: Bar | None = None
        self._task = TaskID(0)

    def start(self, total: int, initial: int) -> None:
        """Show the bar."""
        self._bar = Bar(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _StatsColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            speed_estimate_period=10.0,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.label, total=total, completed=initial, episodes=0, ret=None)

    def update(self, step: int, episodes: int, recent_return: float | None) -> None:
        """Move the bar."""
        if self._bar is not None:
            self._bar.update(self._task, completed=step, episodes=episodes, ret=recent_return)

    def phase(self, name: str, done: int, total: int) -> None:
        """Show an offline phase's progress in the bar's label (the env steps wait for it)."""
        if self._bar is not None:
            label = self.label if done >= total else f"{self.label} · {name} {done}/{total}"
            self._bar.update(self._task, description=label)

    def note(self, message: str) -> None:
        """Print a line above the bar."""
        self.console.print(f"{self.label}: {message}", markup=False, highlight=False)

    def close(self) -> None:
        """Leave the final state of the bar on screen."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class PlainProgress:
    """Periodic one-line reports, for logs and pipes (every 10% of the run or every 30 s)."""

    def __init__(self, label: str, stream: TextIO | None = None, every_seconds: float = 30.0) -> None:
        self.label = label
        self.stream: TextIO | None = stream or sys.stdout
        self.every_seconds = every_seconds
        self._total = 1
        self._start_step = 0
        self._t0 = self._last_print = 0.0
        self._next_tenth = 1  # the next tenth of the run to report, in whole numbers (0.1 steps drift in floats)

    def start(self, total: int, initial: int) -> None:
        """Remember where the run starts."""
        self._total, self._start_step = total, initial
        self._t0 = self._last_print = time.perf_counter()
        self._next_tenth = initial * 10 // total + 1

    def update(self, step: int, episodes: int, recent_return: float | None) -> None:
        """Print a line when 10% more of the run is done or 30 s have passed."""
        now = time.perf_counter()
        if step * 10 < self._next_tenth * self._total and now - self._last_print < self.every_seconds:
            return
        self._next_tenth = step * 10 // self._total + 1
        fraction = step / self._total
        self._last_print = now
        speed = (step - self._start_step) / max(now - self._t0, 1e-9)
        eta = (self._total - step) / speed if speed > 0 else float("inf")
        ret = "—" if recent_return is None else f"{recent_return:.3g}"
        self._say(
            f"{self.label}: step {step:,}/{self._total:,} ({fraction:.0%}) · {speed:,.0f} steps/s · "
            f"{episodes:,} episodes · return {ret} · ETA {_duration(eta)}"
        )

    def phase(self, name: str, done: int, total: int) -> None:
        """A line at each tenth of an offline phase, or every 30 s, and at its end."""
        now = time.perf_counter()
        self._t0 = now  # steps/s and the ETA count env steps, which start after the phases
        if (
            done < total
            and done * 10 // total == (done - 1) * 10 // total
            and now - self._last_print < self.every_seconds
        ):
            return
        self._last_print = now
        self._say(f"{self.label}: {name} {done}/{total} (before the first env step)")

    def note(self, message: str) -> None:
        """Print the line."""
        self._say(f"{self.label}: {message}")

    def close(self) -> None:
        """Nothing to clean up."""

    def _say(self, line: str) -> None:
        """One line; when the reader has gone (``| head``), the run goes on without them."""
        if self.stream is None:
            return
        try:
            print(line, file=self.stream, flush=True)
        except BrokenPipeError:
            self.stream = None
            discard_stdout()


class StdoutConsole(Console):
    """rich's console on stdout, where a reader that went away (``| head``) ends the output, not the command.

    rich exits 1 on a broken pipe; this discards the rest of stdout and raises :class:`BrokenPipeError`
    for the command line to end on with the command's own exit code.
    """

    def on_broken_pipe(self) -> None:
        """Send the rest of stdout to /dev/null and let the caller decide (rich itself would exit 1)."""
        self.quiet = True
        discard_stdout()
        raise BrokenPipeError("stdout's reader went away")


def say(line: str) -> None:
    """``print(line)`` to stdout; a reader that went away (``| head``) ends the output there, not the command."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        discard_stdout()


def discard_stdout() -> None:
    """Send what is still written to stdout to /dev/null: its reader closed the pipe, nothing more can reach it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


#: An evaluation playing longer than this says so, and again each time as long again has passed.
EVAL_HEARTBEAT_SECONDS = 30.0


class EvalHeartbeat:
    """An evaluation's ``on_step``: counts its env steps and says every ``every`` seconds that it still plays.

    A greedy policy that never ends an episode (Breakout's, before it learns to serve) plays to the env's
    time limit, minutes at a time, while the bar stands still: this line tells it from a hang.
    """

    def __init__(
        self,
        say: Callable[[str], None],
        step: int,
        episodes: int,
        num_envs: int,
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.say, self.step, self.episodes, self.num_envs = say, step, episodes, num_envs
        self.every, self.clock = EVAL_HEARTBEAT_SECONDS if every is None else every, clock
        self.start = clock()
        self.due = self.start + self.every
        self.steps = 0

    def __call__(self, obs: Any) -> None:
        """One step of every eval env is about to be played."""
        self.steps += self.num_envs
        now = self.clock()
        if now >= self.due:
            self.due = now + self.every
            self.say(
                f"step {self.step:,}: evaluation of {self.episodes} episode{'s' if self.episodes != 1 else ''} "
                f"still playing after {_duration(now - self.start)} ({self.steps:,} env steps so far)"
            )


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def make_progress(label: str) -> RichProgress | PlainProgress:
    """A live bar on a terminal, plain lines when output goes to a file or pipe."""
    console = StdoutConsole()
    return RichProgress(label, console) if console.is_terminal else PlainProgress(label)
