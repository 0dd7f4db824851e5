"""What the trained baselines share: their training loop, batch draws, batched inference,
and the export and loading of their inference parameters.

The loop, `train_loop(step_fn, batches, state, folder, schedule, preview)`, is `lmi_jax.loop`
(reports with an ETA, divergence check, time limit, checkpoints) in a baseline's folder:
  - `state` is the fresh state, any pytree with a `step` attribute, the () int32 count of
    steps taken (a `flax.struct.dataclass` with a `step` field); the loop replaces it with
    the latest checkpoint in folder/checkpoints when there is one, so a rerun resumes where
    the last run stopped. A checkpoint holds {"state", "wall_s"}: the state and the
    training wall time summed over all calls.
  - `step_fn(state, batch) -> (state, metrics)` and `batches(start_step)` are as
    `lmi_jax.loop.run` takes them; the reports go to TensorBoard events in `folder`.
  - `preview(state) -> {name: (N, H, W, 1) images in [0, 1]}` (optional) is written every
    `schedule.preview_every` steps and at the end, as TensorBoard images and as
    folder/preview.png (one row of N images per name).
  - `schedule` (`LoopSchedule`, from a config section by `loop.schedule_from_config`): the
    last step, log / checkpoint / preview intervals, and `time_limit_min` > 0, which stops
    the call (with a checkpoint) after the first step that ends past that many minutes.

Exported parameters: `export(workdir, name, params, info)` writes the inference parameters
to workdir/baselines/<name>.msgpack (flax msgpack) and what produced them to
workdir/baselines/<name>.json; `load_params(path, template, hint)` reads them back and
checks them against the network's parameter shapes.
"""

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import msgpack
import numpy as np
from absl import logging
from flax import serialization

from lmi_jax import checkpoints, files, loop, writers
from lmi_jax.errors import InputError, key_checker
from lmi_jax.loop import LoopResult, LoopSchedule
from lmi_jax.models import count_params

CHECKPOINT_DIR = "checkpoints"  # Inside each baseline's training folder.
EXPORT_DIR = "baselines"  # Inside the workdir: the exported <name>.msgpack and <name>.json.
PREVIEW_FILE = "preview.png"


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


def preview_grid(images: Mapping[str, np.ndarray]) -> np.ndarray:
  """{name: (N, H, W, 1)} -> (rows H, N W) grey grid, one row per name in order, clipped
  to [0, 1]."""
  rows = [np.concatenate(list(np.asarray(x)[..., 0]), axis=1) for x in images.values()]
  return np.clip(np.concatenate(rows, axis=0), 0.0, 1.0)


def write_png(path: str, grid: np.ndarray) -> None:
  """A (H, W) grey image in [0, 1] as a PNG, written atomically."""
  import matplotlib.image  # Here, not above: every config check imports this module.
  with files.atomic_path(path) as tmp:
    matplotlib.image.imsave(tmp, grid, cmap="gray", vmin=0.0, vmax=1.0, format="png")


def train_loop(step_fn: Callable[[loop.State, loop.Batch], tuple[loop.State, loop.Metrics]],
               batches: Callable[[int], Iterator[loop.Batch]], state: loop.State, folder: str,
               schedule: LoopSchedule,
               preview: Callable[[loop.State], Mapping[str, np.ndarray]] | None = None
               ) -> LoopResult:
  """Runs `step_fn` from the latest checkpoint in folder/checkpoints (else from `state`)
  up to schedule.num_steps or the time limit (see the module docstring)."""
  files.prepare_dir(folder)
  manager = checkpoints.manager(os.path.join(folder, CHECKPOINT_DIR), max_to_keep=1)
  restored = checkpoints.restore_latest(
      manager, {"state": jax.device_get(state), "wall_s": np.zeros((), np.float64)})
  logging.info("Training %s from step %d to %d", folder, int(restored["state"].step),
               schedule.num_steps)
  with contextlib.closing(writers.TensorBoardWriter(folder)) as writer:
    def write_preview(step: int, now: loop.State) -> None:
      images = {k: np.asarray(v) for k, v in preview(now).items()}
      writer.write_images(step, images)
      write_png(os.path.join(folder, PREVIEW_FILE), preview_grid(images))

    result = loop.run(
        step_fn, batches, restored["state"], schedule, manager, writer,
        pack=lambda now, wall_s: {"state": now, "wall_s": np.asarray(wall_s, np.float64)},
        wall_s=float(restored["wall_s"]), preview=None if preview is None else write_preview)
  manager.close()  # Waits for the last checkpoint's background writes.
  return result


def draw_rows(rng: np.random.Generator, num_images: int, batch_size: int,
              hflip: bool) -> tuple[np.ndarray, np.ndarray]:
  """(batch_size,) rows in [0, num_images) and (batch_size,) bool horizontal flips (all
  False unless `hflip`), drawn from `rng` in that order."""
  rows = rng.integers(num_images, size=batch_size)
  return rows, rng.random(batch_size) < 0.5 if hflip else np.zeros(batch_size, bool)


def take_rows(images: np.ndarray, rows: np.ndarray, flips: np.ndarray) -> np.ndarray:
  """(B, H, W, C) images[rows], each flipped left-right where `flips` says."""
  x = images[rows]
  return np.where(flips[:, None, None, None], x[:, :, ::-1], x)


def run_info(name: str, result: LoopResult, config: ml_collections.ConfigDict) -> dict:
  """What a baseline's export records of the run of config section `name` behind it."""
  return {"method": name, "steps": int(result.state.step), "finished": result.finished,
          "wall_s": result.wall_s, "image_size": int(config.data.image_size),
          "exported": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": config[name].to_dict()}


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
  if not checkpoints.same_shapes(params, template):
    raise InputError(f"{path}: does not fit the network of this config; {hint}.")
  return jax.tree.map(lambda p: np.asarray(p, np.float32), params)
