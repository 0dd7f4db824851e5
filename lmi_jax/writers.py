"""clu-style metric writers without TensorFlow: TensorBoard event files through tensorboardX.

clu's `MetricWriter` interface (clu/metric_writers/interface.py) needs only jax and numpy,
but `import clu.metric_writers...` first runs that package's __init__, which imports
clu's TensorFlow SummaryWriter, and TensorFlow is not a dependency. So the interface file
is loaded on its own (`_load_clu_interface`) and subclassed: `TensorBoardWriter` is a real
clu MetricWriter with clu's abstract methods and docs, and nothing imports TensorFlow.
(`clu.metrics` imports no TensorFlow and is used directly; `clu.periodic_actions` imports
`clu.metric_writers`, so `lmi_jax.train` reports progress itself.)
"""

import importlib.util
import pathlib
import types
from typing import Any, Mapping, Optional

import numpy as np
import tensorboardX
from absl import logging


def _load_clu_interface() -> types.ModuleType:
  """clu's metric_writers/interface.py as a module, without running clu.metric_writers."""
  clu_dir = pathlib.Path(importlib.util.find_spec("clu").origin).parent
  spec = importlib.util.spec_from_file_location(
      "lmi_jax._clu_metric_writer_interface", clu_dir / "metric_writers" / "interface.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


MetricWriter = _load_clu_interface().MetricWriter


class TensorBoardWriter(MetricWriter):
  """Writes TensorBoard events with tensorboardX and logs scalars, texts and hparams.

  With logdir None it only logs (the hosts other than the first in multi-host training).
  Videos, audios and raw tensor summaries are not supported: they are logged as skipped.
  """

  def __init__(self, logdir: Optional[str]):
    self._events = tensorboardX.SummaryWriter(logdir) if logdir else None

  def _skip(self, what: str, step: int, values: Mapping[str, Any]) -> None:
    logging.warning("[%d] TensorBoardWriter does not write %s: %s", step, what, sorted(values))

  def write_summaries(self, step: int, values: Mapping[str, Any],
                      metadata: Optional[Mapping[str, Any]] = None) -> None:
    self._skip("raw summaries", step, values)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    logging.info("[%d] %s", step, ", ".join(
        f"{k}={float(v):.6g}" for k, v in sorted(scalars.items())))
    if self._events:
      for key, value in scalars.items():
        self._events.add_scalar(key, float(value), step)

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    """images: key -> (N, H, W, C) or (H, W, C), C in {1, 3}, floats in [0, 1]."""
    if self._events:
      for key, value in images.items():
        value = np.asarray(value)
        value = value[None] if value.ndim == 3 else value
        self._events.add_images(key, value, step, dataformats="NHWC")

  def write_videos(self, step: int, videos: Mapping[str, Any]) -> None:
    self._skip("videos", step, videos)

  def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int) -> None:
    self._skip("audios", step, audios)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    for key, text in texts.items():
      logging.info("[%d] %s: %s", step, key, text)
      if self._events:
        self._events.add_text(key, text, step)

  def write_histograms(self, step: int, arrays: Mapping[str, Any],
                       num_buckets: Optional[Mapping[str, int]] = None) -> None:
    if self._events:
      for key, value in arrays.items():
        bins = (num_buckets or {}).get(key, "tensorflow")
        self._events.add_histogram(key, np.asarray(value), step, bins=bins)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """hparams: flat name -> int, float, str or bool."""
    logging.info("Hyperparameters: %s", dict(hparams))
    if self._events:
      # tensorboardX's add_hparams would open a second run in a timestamped subfolder.
      for summary in tensorboardX.summary.hparams(dict(hparams), {}):
        self._events.file_writer.add_summary(summary)

  def flush(self) -> None:
    """Flushes the event file; events still queued for tensorboardX's writer thread wait
    for `close`, which drains the queue."""
    if self._events:
      self._events.flush()

  def close(self) -> None:
    if self._events:
      self._events.close()
