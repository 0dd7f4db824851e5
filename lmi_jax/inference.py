"""Running a sampling method over many slices: batches split across the local devices
(pmap), the sampler's progress lines, and compiled samplers kept across calls."""

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lmi_jax import sampling
from lmi_jax.progress import Clock, Progress

if TYPE_CHECKING:
  from lmi_jax.methods import Context


class StepProgress:
  """Progress lines of a batched translation, fed by the sampler's host callback.

  Every device reports each step; a line is written for the first step of each batch, its
  last, and at most one per `every_s` seconds between, with the share done and an estimate
  of the time left over all batches (compilation counts in the first batch's time);
  `end_batch` writes one more as a batch ends.
  """

  def __init__(self, name: str, steps: int, batches: int, every_s: float = 15.0,
               clock: Clock = time.perf_counter):
    self._name, self._steps, self._every_s, self._clock = name, steps, every_s, clock
    self._lock = threading.Lock()  # The devices' callbacks arrive from several threads.
    self.restart(batches)

  def restart(self, batches: int) -> None:
    """Start over for a new run of `batches` batches (the compiled sampler is reused)."""
    with self._lock:
      self._batches, self._batch, self._done = batches, 0, 0
      self._progress = Progress(batches * self._steps, every_s=self._every_s, clock=self._clock)

  def start_batch(self, batch: int) -> None:
    with self._lock:
      self._batch, self._done = batch, 0

  def __call__(self, done: np.ndarray) -> None:
    done = int(done)
    with self._lock:
      if done <= self._done:
        return
      self._done = done
      report = self._progress.update(self._batch * self._steps + done,
                                     force=done in (1, self._steps))
      if report is not None:
        logging.info("%s: batch %d/%d, step %d/%d (%.0f%% of all), %.0f s elapsed, about %.0f s "
                     "left", self._name, self._batch + 1, self._batches, done, self._steps,
                     100 * report.share, report.elapsed_s, report.eta_s)

  def slice_done(self, done: np.ndarray, count: int) -> None:
    """`done` of a batch's `count` slices are sampled (`one_noise_per_slice`), as steps."""
    self(-(-int(done) * self._steps // count))

  def end_batch(self) -> None:
    """Writes the line of the current batch's end."""
    with self._lock:
      report = self._progress.update((self._batch + 1) * self._steps, force=True)
      logging.info("%s: batch %d/%d done, %.1f s elapsed, about %.0f s left", self._name,
                   self._batch + 1, self._batches, report.elapsed_s, report.eta_s)


def one_noise_per_slice(fn: Callable[["Context", jax.Array, jax.Array], jax.Array]
                        ) -> Callable[["Context", jax.Array, jax.Array], jax.Array]:
  """`fn` over a (B, H, W, C) batch run as B samplers of one slice each with the same key:
  every slice draws the same (1, H, W, C) noise wherever it draws any.

  The slices run one after another (`lax.map`), not side by side under `vmap`: vmap made
  the LMI loop and the network work on every slice of the batch at once, out of cache (a
  whole 1 mm BraTS volume took 755 s against 430 s). Progress (`ctx.progress`, a
  `StepProgress`) is reported per slice, since each slice's sampler counts its steps from 1
  again.
  """
  def each(ctx: "Context", source: jax.Array, key: jax.Array) -> jax.Array:
    progress, count = ctx.progress, source.shape[0]
    quiet = dataclasses.replace(ctx, progress=None)
    per_slice = None if progress is None else lambda done: progress.slice_done(done, count)

    def one(item: tuple[jax.Array, jax.Array]) -> jax.Array:
      index, image = item
      out = fn(quiet, image[None], key)[0]
      sampling.report_progress(per_slice, index + 1, out)
      return out
    return jax.lax.map(one, (jnp.arange(count), source))
  return each


def run_batched(fn: Callable[["Context", jax.Array, jax.Array], jax.Array], ctx: "Context",
                source: np.ndarray, key: jax.Array, name: str, t_start: float = 1.0) -> np.ndarray:
  """Runs a sampling method over (N, H, W, 1) sources in batches, pmapped over devices.

  Each batch (`sampling.batch_size` slices) is split across the local devices with a
  key each from fold_in(key, b); the last batch is padded by repeating its final slice
  and cropped. With `sampling.shared_noise`, every slice is sampled alone with `key`
  itself (`one_noise_per_slice`): all slices see the same noise, whatever the batches, so
  neighbouring slices of a volume, whose sources differ little, get translations that
  differ little. Progress lines (`StepProgress`) name the method `name`; t_start is where
  its sampler starts (SDEdit's t0), which sets its step count.
  """
  devices = jax.local_device_count()
  batch_size = max(1, int(ctx.config.sampling.batch_size))
  if ctx.runners is None:
    # As few batches as `sampling.batch_size` allows, of equal size: padding a short last
    # batch up to a full one is wasted work (30 slices at batch size 25 run as 2 x 15).
    min_batches = -(-len(source) // batch_size)
    per_device = -(-len(source) // (min_batches * devices))
  else:
    per_device = -(-batch_size // devices)  # One shape for every call: one compilation.
  batch = per_device * devices
  num_batches = -(-len(source) // batch)  # Rounding per_device up may need fewer.
  shared = bool(ctx.config.sampling.shared_noise)
  if shared:
    fn = one_noise_per_slice(fn)
  cached = None if ctx.runners is None else ctx.runners.get(name)
  if cached is None:
    progress = StepProgress(name, sampling.progress_total(ctx.config.sampling, t_start), num_batches)
    # Parameters go in as a broadcast argument rather than as constants baked into the
    # compiled program, which would make compilation slow for large models.
    run = jax.pmap(lambda variables, src, k: fn(
        dataclasses.replace(ctx, variables=variables, progress=progress), src, k), in_axes=(None, 0, 0))
    if ctx.runners is not None:
      ctx.runners[name] = (run, progress)
  else:
    run, progress = cached
    progress.restart(num_batches)
  outputs = []
  for b in range(num_batches):
    progress.start_batch(b)
    chunk = source[b * batch:(b + 1) * batch]
    valid = len(chunk)
    if valid < batch:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - valid, axis=0)])
    keys = (jnp.stack([key] * devices) if shared
            else jax.random.split(jax.random.fold_in(key, b), devices))
    out = run(ctx.variables, jnp.asarray(chunk).reshape(devices, per_device, *chunk.shape[1:]),
              keys)
    outputs.append(np.asarray(out).reshape(batch, *np.shape(out)[2:])[:valid])
    progress.end_batch()
  return np.clip(np.concatenate(outputs), 0.0, 1.0).astype(np.float32)
