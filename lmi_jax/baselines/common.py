"""What the trained baselines share: a resumable, time-limited training loop, batched
inference, and the export and loading of their inference parameters.

The loop, `train_loop(step_fn, batches, state, folder, schedule, preview)`:
  - `state` is any pytree with a `step` attribute, the () int32 count of steps taken (a
    `flax.struct.dataclass` with a `step` field). It is the fresh state; the loop replaces
    it with the latest checkpoint in folder/checkpoints when there is one, so a rerun
    resumes where the last run stopped.
  - `step_fn(state, batch) -> (state, metrics)` is one (jitted) optimisation step; metrics
    maps names to () arrays. The loop averages them between log steps and writes them, with
    the seconds per step, to TensorBoard events in `folder` and to the log, with an ETA.
  - `batches(start_step)` yields the batches of steps start_step + 1, start_step + 2, ...;
    drawing them from (seed, step) lets a resumed run see what an uninterrupted one would.
  - `preview(state) -> {name: (N, H, W, 1) images in [0, 1]}` (optional) is written every
    `schedule.preview_every` steps and at the end, as TensorBoard images and as
    folder/preview.png (one row of N images per name).
  - `schedule` (`LoopSchedule`, from a config section by `loop_schedule`): the last step,
    log / checkpoint / preview intervals, and `time_limit_min` > 0, which stops the call
    (with a checkpoint) after the first step that ends past that many minutes.
  - The checkpoint holds the state and the training wall time summed over all calls.

Exported parameters: `export(workdir, name, params, info)` writes the inference parameters
to workdir/baselines/<name>.msgpack (flax msgpack) and what produced them to
workdir/baselines/<name>.json; `load_params(path, template, hint)` reads them back and
checks them against the network's parameter shapes.
"""

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib.image
import ml_collections
import msgpack
import numpy as np
from absl import logging
from flax import serialization

from lmi_jax import checkpoints, files, writers
from lmi_jax.errors import InputError, key_checker
from lmi_jax.models import count_params

CHECKPOINT_DIR = "checkpoints"  # Inside each baseline's training folder.
EXPORT_DIR = "baselines"  # Inside the workdir: the exported <name>.msgpack and <name>.json.
PREVIEW_FILE = "preview.png"

State = Any
Batch = Any
Metrics = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class LoopSchedule:
  """When the loop stops, reports, checkpoints and previews (steps; minutes)."""
  num_steps: int
  log_every: int
  checkpoint_every: int
  preview_every: int
  time_limit_min: float


@dataclasses.dataclass(frozen=True)
class LoopResult:
  """state: the final state as host arrays; wall_s: training seconds over every call, as
  the last checkpoint holds them; finished: whether state.step reached schedule.num_steps."""
  state: State
  wall_s: float
  finished: bool


def check_loop_config(section_name: str, section: ml_collections.ConfigDict) -> None:
  """Raise InputError naming the first unusable key of the loop and optimiser keys that
  every baseline section has (num_steps, batch_size, lr, intervals, time_limit_min)."""
  require = key_checker(section_name, section)
  require(section.num_steps >= 0, "num_steps", "use a count >= 0")
  require(section.batch_size >= 1, "batch_size", "use a batch of at least 1")
  require(section.lr > 0, "lr", "use a positive learning rate")
  for key in ("log_every", "checkpoint_every"):
    require(section[key] >= 1, key, "use a count >= 1")
  require(section.preview_every >= 0, "preview_every", "use a count >= 0 (0: at the end only)")
  require(section.time_limit_min >= 0, "time_limit_min", "use minutes >= 0 (0: no limit)")


def loop_schedule(section: ml_collections.ConfigDict) -> LoopSchedule:
  """The `LoopSchedule` of a baseline's config section."""
  return LoopSchedule(num_steps=int(section.num_steps), log_every=int(section.log_every),
                      checkpoint_every=int(section.checkpoint_every),
                      preview_every=int(section.preview_every),
                      time_limit_min=float(section.time_limit_min))


def preview_grid(images: Mapping[str, np.ndarray]) -> np.ndarray:
  """{name: (N, H, W, 1)} -> (rows H, N W) grey grid, one row per name in order, clipped
  to [0, 1]."""
  rows = [np.concatenate(list(np.asarray(x)[..., 0]), axis=1) for x in images.values()]
  return np.clip(np.concatenate(rows, axis=0), 0.0, 1.0)


def write_png(path: str, grid: np.ndarray) -> None:
  """A (H, W) grey image in [0, 1] as a PNG, written atomically."""
  with files.atomic_path(path) as tmp:
    matplotlib.image.imsave(tmp, grid, cmap="gray", vmin=0.0, vmax=1.0, format="png")


class _Window:
  """Sums of the step metrics since the last report, and the clock of the steps in them.

  The first step of a call (compilation included) is timed on its own, so the seconds
  per step and the ETA reflect the compiled step.
  """

  def __init__(self, start_step: int):
    self.sums, self.count = None, 0
    self.tick, self.tick_step = time.perf_counter(), start_step

  def add(self, metrics: Metrics) -> None:
    self.sums = dict(metrics) if self.sums is None else jax.tree.map(jnp.add, self.sums,
                                                                     dict(metrics))
    self.count += 1

  def restart_clock(self, step: int) -> None:
    self.tick, self.tick_step = time.perf_counter(), step

  def report(self, writer: writers.TensorBoardWriter, step: int, num_steps: int) -> None:
    if not self.count:
      return
    values = {k: float(v) / self.count for k, v in jax.device_get(self.sums).items()}
    if step > self.tick_step:
      sec_per_step = (time.perf_counter() - self.tick) / (step - self.tick_step)
      values["sec_per_step"] = sec_per_step
      eta = int((num_steps - step) * sec_per_step)
      logging.info("Step %d/%d (%.1f%%), %.3f s/step, ETA %dh%02dm%02ds", step, num_steps,
                   100.0 * step / max(num_steps, 1), sec_per_step, eta // 3600,
                   eta // 60 % 60, eta % 60)
    writer.write_scalars(step, values)
    self.sums, self.count = None, 0
    self.restart_clock(step)


def train_loop(step_fn: Callable[[State, Batch], tuple[State, Metrics]],
               batches: Callable[[int], Iterator[Batch]], state: State, folder: str,
               schedule: LoopSchedule,
               preview: Callable[[State], Mapping[str, np.ndarray]] | None = None) -> LoopResult:
  """Runs `step_fn` from the latest checkpoint in folder/checkpoints (else from `state`)
  up to schedule.num_steps or the time limit (see the module docstring)."""
  files.prepare_dir(folder)
  manager = checkpoints.manager(os.path.join(folder, CHECKPOINT_DIR), max_to_keep=1)
  restored = checkpoints.restore_latest(
      manager, {"state": jax.device_get(state), "wall_s": np.zeros((), np.float64)})
  state, wall_before = restored["state"], float(restored["wall_s"])
  start_step = int(state.step)
  logging.info("Training %s from step %d to %d", folder, start_step, schedule.num_steps)
  writer = writers.TensorBoardWriter(folder)
  start = time.perf_counter()

  def wall_s() -> np.ndarray:
    return np.asarray(wall_before + time.perf_counter() - start, np.float64)

  def write_preview(step: int) -> None:
    images = {k: np.asarray(v) for k, v in preview(state).items()}
    writer.write_images(step, images)
    write_png(os.path.join(folder, PREVIEW_FILE), preview_grid(images))

  window = _Window(start_step)
  iterator = batches(start_step)
  saved_wall_s = wall_before
  for step in range(start_step + 1, schedule.num_steps + 1):
    state, metrics = step_fn(state, next(iterator))
    window.add(metrics)
    if step == start_step + 1:
      jax.block_until_ready(state)
      logging.info("First step, compilation included: %.1f s", time.perf_counter() - start)
      window.restart_clock(step)
    over_time = (schedule.time_limit_min > 0 and
                 time.perf_counter() - start > 60.0 * schedule.time_limit_min)
    last = step == schedule.num_steps or over_time
    if step % schedule.log_every == 0 or last:
      window.report(writer, step, schedule.num_steps)
    if preview is not None and (last or (schedule.preview_every and
                                         step % schedule.preview_every == 0)):
      write_preview(step)
    if step % schedule.checkpoint_every == 0 or last:
      saved_wall_s = wall_s()
      checkpoints.save(manager, step, {"state": state, "wall_s": saved_wall_s})
    if over_time:
      logging.info("Stopped at step %d: time_limit_min=%g reached; rerun to resume.", step,
                   schedule.time_limit_min)
      break
  manager.wait_until_finished()
  manager.close()
  writer.close()
  state = jax.device_get(state)
  return LoopResult(state=state, wall_s=float(saved_wall_s),
                    finished=int(state.step) >= schedule.num_steps)


KEY_IMPL = "rbg"  # PRNG of the baselines' parameter init and training noise.


def fast_key(seed: int) -> jax.Array:
  """A KEY_IMPL key: XLA compiles its draws far faster than threefry's on CPU (a jitted
  CycleGAN generator init: 2 s vs 16 s; each threefry draw is compiled on its own).
  States hold it as `jax.random.key_data`; `wrap_fast_key` turns that back into a key."""
  return jax.random.key(seed, impl=KEY_IMPL)


def wrap_fast_key(data: jax.Array) -> jax.Array:
  """The key whose `jax.random.key_data` is `data`, (4,) uint32 of a `fast_key`."""
  return jax.random.wrap_key_data(data, impl=KEY_IMPL)


def apply_in_batches(fn: Callable[[jax.Array], jax.Array], images: np.ndarray,
                     batch_size: int) -> np.ndarray:
  """fn over (N, H, W, C) images in batches of batch_size, the last one padded (so a
  jitted fn compiles once) -> (N, ...) float32 host array."""
  images = np.asarray(images, np.float32)
  if len(images) == 0:
    return images
  outputs = []
  for begin in range(0, len(images), batch_size):
    chunk = images[begin:begin + batch_size]
    pad = batch_size - len(chunk)
    padded = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
    outputs.append(np.asarray(fn(jnp.asarray(padded)))[:len(chunk)])
  return np.concatenate(outputs).astype(np.float32)


def export_paths(workdir: str, name: str) -> tuple[str, str]:
  """(workdir/baselines/<name>.msgpack, workdir/baselines/<name>.json)."""
  stem = os.path.join(workdir, EXPORT_DIR, name)
  return stem + ".msgpack", stem + ".json"


def export(workdir: str, name: str, params: Any, info: Mapping[str, Any]) -> str:
  """Writes `params` (a pytree of arrays) to workdir/baselines/<name>.msgpack and `info`,
  with the parameter count and file size added, to <name>.json; both atomically.

  Returns:
    The msgpack path.
  """
  params_path, info_path = export_paths(workdir, name)
  data = serialization.msgpack_serialize(
      serialization.to_state_dict(jax.tree.map(np.asarray, jax.device_get(params))))
  files.atomic_write(params_path, data)
  meta = {**info, "num_params": count_params(params), "size_bytes": len(data)}
  files.atomic_write(info_path, json.dumps(meta, indent=2, sort_keys=True).encode())
  logging.info("Exported %s (%d parameters, %.2f MB)", params_path, meta["num_params"],
               len(data) / 1e6)
  return params_path


def load_params(path: str, template: Any, hint: str) -> Any:
  """The parameters in the msgpack file `path` as float32 host arrays.

  Args:
    template: the parameters' expected tree with arrays or jax.ShapeDtypeStruct leaves.
    hint: what to do when the file does not fit, ending the error message.
  Raises:
    InputError naming `path` when it is missing, unreadable, or not parameters of the
    template's tree and shapes.
  """
  if not os.path.isfile(path):
    raise InputError(f"{path}: no such file; train the baseline first (--mode=train) or "
                     "point at an exported <name>.msgpack.")
  try:
    with open(path, "rb") as f:
      params = serialization.msgpack_restore(f.read())
  except (OSError, ValueError, TypeError, KeyError, IndexError,
          msgpack.exceptions.UnpackException) as error:
    raise InputError(f"{path}: cannot be read as parameters ({type(error).__name__}); the "
                     "file is damaged: export it again.") from error
  if (jax.tree.structure(params) != jax.tree.structure(template) or
      jax.tree.map(np.shape, params) != jax.tree.map(np.shape, template)):
    raise InputError(f"{path}: does not fit the network of this config; {hint}.")
  return jax.tree.map(lambda p: np.asarray(p, np.float32), params)
