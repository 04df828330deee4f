"""TensorBoard logging for a run: scalars, text, videos and the HParams tab, in the run folder.

Per-step values (losses, exploration rate, episode returns) are averaged over a window of
``log_every`` env steps before they are written, so logging costs the same whether an agent
reports every step or once per update. On resume the writer purges everything logged after the
checkpoint's step (TensorBoard's ``purge_step``), so a curve has no duplicated steps.

Comparable runs are grouped without writing any curve twice. Each run is one session of the
HParams tab whose group is ``<env>/<agent>/<config id>`` (the id ``compare --by config`` pools
by, :func:`gymlab.report.config_id`): TensorBoard shows the seeds of one config as one row, its
metrics averaged over them and each seed's curves a click away. Runs of one env or agent are the
run names ``<env>/<agent>/...`` that the run selector filters by (``tensorboard --logdir runs``).
A custom-scalars layout cannot do this grouping from the run's own tags: its charts select tags
by regex across every run, never runs, which is why runs once mirrored each headline curve
under a ``compare/<env>/<agent>/<config id>/`` tag and opened TensorBoard on a duplicate of each.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from gymlab.errors import FolderRemoved, GymlabError
from gymlab.report import config_id, config_identity

#: The tags every run writes; ``compare`` reads these names.
EPISODE_RETURN = "rollout/ep_return"
EPISODE_LENGTH = "rollout/ep_length"
EVAL_RETURN = "eval/return_mean"
EVAL_RETURN_STD = "eval/return_std"
EVAL_LENGTH = "eval/length_mean"
STEPS_PER_SECOND = "time/steps_per_second"
#: Every TensorBoard events file: ``events.out.tfevents.<creation second>.<host>.<pid>.<counter>``.
EVENTS_GLOB = "events.out.tfevents.*"


def wait_to_sort_last(log_dir: Path) -> None:
    """Wait, if need be, until an events file opened now in ``log_dir`` sorts after every one already there.

    TensorBoard reads a folder's events files in the order of their names, and the purge of a resumed
    run only drops what the files before it logged. A name begins with its creation second; within one
    second the order falls to the process id and a per-process counter, compared as text (``...9`` after
    ``...10``), so a writer opened in the same second as the last one may sort before it and its purge
    goes astray. Waiting for the next second (at most one) rules that out. A clock set back more than a
    second is beyond repair here and is not waited for.
    """
    seconds = [p.name.split(".")[3] for p in log_dir.glob(EVENTS_GLOB)]  # none in a missing folder
    newest = max((int(s) for s in seconds if s.isdigit()), default=None)
    delay = 0.0 if newest is None else newest + 1 - time.time()
    if 0 < delay <= 1:
        time.sleep(delay)


class MeanWindow:
    """Running sums and counts of named values between two writes."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, key: str, value: float) -> None:
        """Add one value to the window."""
        self.sums[key] = self.sums.get(key, 0.0) + value
        self.counts[key] = self.counts.get(key, 0) + 1

    def add_each(self, key: str, values: list[float] | list[int]) -> None:
        """Add each of ``values`` to the window, in order (the same sums as one :meth:`add` each)."""
        total = self.sums.get(key, 0.0)
        for value in values:
            total += value
        self.sums[key] = total
        self.counts[key] = self.counts.get(key, 0) + len(values)

    def add_all(self, values: Mapping[str, float], prefix: str = "") -> None:
        """Add one value per key (``prefix`` + key) to the window."""
        sums, counts = self.sums, self.counts
        for key, value in values.items():
            name = prefix + key
            sums[name] = sums.get(name, 0.0) + value
            counts[name] = counts.get(name, 0) + 1

    def pop_means(self) -> dict[str, float]:
        """The window's mean of each key, and an empty window."""
        means = {k: s / self.counts[k] for k, s in self.sums.items()}
        self.sums, self.counts = {}, {}
        return means

    def state_dict(self) -> dict[str, Any]:
        """Contents, for a checkpoint taken in the middle of a window."""
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping to ``{"a.b": value}`` with values TensorBoard's HParams tab accepts."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def hparams_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a run's HParams session holds: its config's identity flattened (``a.b`` keys) and its ``config_id``.

    The view ``compare`` groups and labels runs by, whether it reads the config from ``config.yaml``
    or from these values in the events file (:func:`read_hparams`): numbers as the events hold them, so
    both views agree (TensorBoard keeps every number, a bool too, as a float; a whole one reads back as an
    int). Else ``double_dqn=False`` and ``huber_delta=1.0`` from one run's file looked unlike ``0`` and
    ``1`` from a copy of it without ``config.yaml``.
    """
    values = {key: _as_logged(value) for key, value in flatten(config_identity(config)).items()}
    return {**values, "config_id": config_id(config)}


def _as_logged(value: Any) -> Any:
    """A value as :func:`read_hparams` gives it back from the events: a number (or bool) whole as an int."""
    if not isinstance(value, (bool, int, float)):
        return value
    number = float(value)
    return int(number) if number.is_integer() else number


def read_hparams(content: bytes) -> dict[str, Any] | None:
    """The :func:`hparams_values` a run wrote, from one HParams summary's plugin content; else None.

    None for the tab's other summaries (experiment, session end), damaged content, or values that
    name no agent, env and config id. TensorBoard stores every number as a float: whole numbers
    come back as ints, as a config writes them.
    """
    try:
        data = HParamsPluginData.FromString(content)
    except DecodeError:
        return None
    if not data.HasField("session_start_info"):
        return None
    values: dict[str, Any] = {}
    for key, value in data.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        if kind == "number_value":
            number = value.number_value
            values[key] = int(number) if number.is_integer() else number
        elif kind in ("string_value", "bool_value"):
            values[key] = getattr(value, kind)
    if not all(isinstance(values.get(key), str) for key in ("agent", "env", "config_id")):
        return None
    return values


def session_group(config: Mapping[str, Any]) -> str:
    """``<env>/<agent>/<config id>``: the HParams session group that pools a config's seeds."""
    return f"{config.get('env')}/{config.get('agent')}/{config_id(config)}"


def gif_bytes(
    frames: list[np.ndarray], fps: float, max_side: int = 200, max_frames: int = 120
) -> tuple[bytes, int, int]:
    """A small animated GIF of the frames and its height and width, for TensorBoard's image tab.

    Frames are shrunk to at most ``max_side`` pixels and, for long episodes, every k-th frame is
    kept with the delay stretched to match, so the clip plays in real time at a bounded size.
    """
    stride = max(1, -(-len(frames) // max_frames))  # ceil division
    kept = frames[::stride]
    h, w = kept[0].shape[:2]
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # Fast-octree quantisation: about half the time of Pillow's default median cut, and the
    # recording's cost matters because it runs beside training.
    # convert("RGB"): grey (H, W) and RGBA (H, W, 4) frames become (H, W, 3).
    images = [
        Image.fromarray(np.asarray(f, dtype=np.uint8))
        .convert("RGB")
        .resize(size, Image.Resampling.BILINEAR)
        .quantize(256, method=Image.Quantize.FASTOCTREE)
        for f in kept
    ]
    buffer = BytesIO()
    images[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=round(1000 * stride / fps),
        loop=0,
    )
    return buffer.getvalue(), size[1], size[0]


def _quiet_writer_thread(args: threading.ExceptHookArgs) -> None:
    """Leave the failure of TensorBoard's writer thread to the run: its writer raises it again at the next call.

    Without this, a write that fails in that thread (its run folder deleted) also prints a traceback.
    """
    if not isinstance(args.thread, _AsyncWriterThread):
        _previous_excepthook(args)


_previous_excepthook = threading.excepthook


class RunLogger:
    """The TensorBoard writer of one run folder; a write that fails is one line naming why."""

    def __init__(self, log_dir: Path, *, purge_step: int | None = None) -> None:
        global _previous_excepthook
        if threading.excepthook is not _quiet_writer_thread:
            _previous_excepthook, threading.excepthook = threading.excepthook, _quiet_writer_thread
        self.log_dir = log_dir
        wait_to_sort_last(log_dir)
        try:
            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step, flush_secs=20)
        except OSError as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> GymlabError:
        if not self.log_dir.is_dir():
            return FolderRemoved(self.log_dir)
        return GymlabError(f"cannot write TensorBoard events in {self.log_dir}: {exc.strerror or exc}")

    def hparams(self, config: Mapping[str, Any]) -> None:
        """Make the run one session of its config's group in the HParams tab (see the module docstring).

        The hparams shown are the config's identity (no seed or bookkeeping keys, so every session
        of a group shows the same values) and its ``config_id``; the metrics are the evaluation and
        training returns, which the tab averages over the group.
        """
        metrics = {EVAL_RETURN: 0.0, EPISODE_RETURN: 0.0}
        exp, ssi, sei = hparams_summary(hparams_values(config), metrics)
        # torch's helper leaves the session's group empty (a group of itself): name it.
        plugin_data = ssi.value[0].metadata.plugin_data
        content = HParamsPluginData.FromString(plugin_data.content)
        content.session_start_info.group_name = session_group(config)
        plugin_data.content = content.SerializeToString()
        try:
            file_writer = self.writer._get_file_writer()
            for summary in (exp, ssi, sei):
                file_writer.add_summary(summary)
        except OSError as exc:
            raise self._failed(exc) from None

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        """Write several scalars at one step."""
        try:
            for key, value in values.items():
                self.writer.add_scalar(f"{prefix}{key}", value, step)
        except OSError as exc:
            raise self._failed(exc) from None

    def text(self, tag: str, text: str, step: int) -> None:
        """Write a text entry (e.g. SeqGAN's sample sequences)."""
        try:
            self.writer.add_text(tag, text, step)
        except OSError as exc:
            raise self._failed(exc) from None

    def video(self, tag: str, frames: Sequence[np.ndarray], step: int, fps: float) -> None:
        """Write frames, each (H, W, 3) uint8, as an animated GIF in TensorBoard's Images tab.

        torch's ``add_video`` needs moviepy; this writes the same summary (an image whose encoded
        bytes are a GIF, which TensorBoard animates) with Pillow, downscaled to stay small.
        """
        gif, h, w = gif_bytes(list(frames), fps)
        image = Summary.Image(height=h, width=w, colorspace=3, encoded_image_string=gif)
        summary = Summary(value=[Summary.Value(tag=tag, image=image)])
        try:
            self.writer._get_file_writer().add_summary(summary, step)
        except OSError as exc:
            raise self._failed(exc) from None

    def close(self) -> None:
        """Flush and close the event file."""
        try:
            self.writer.close()
        except OSError as exc:
            raise self._failed(exc) from None
