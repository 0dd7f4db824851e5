"""The one training loop: the score model (a pmapped step over the local devices) and every
baseline (a jitted step) run through `run`.

`run(step_fn, batches, state, schedule, manager, writer, pack=...)` steps from state.step to
schedule.num_steps (a `LoopSchedule`, from a config section by `schedule_from_config`):
  - `step_fn(state, batch) -> (state, metrics)` is one optimisation step; metrics maps
    names to () arrays.
  - `batches(start_step)` yields the batches of steps start_step + 1, start_step + 2, ...;
    drawing them from (seed, step) lets a resumed run see what an uninterrupted one would.
  - `state`, a pytree with a () int `step`, is where to start, on the host: restoring the
    latest checkpoint is the caller's, as each model keeps its own checkpoint layout. With
    `axis_name` the loop replicates it over the local devices under that pmap axis for a
    pmapped step_fn, and takes the first copy to save, preview and return.
  - Reports (`lmi_jax.progress`), every log_every steps, at the last step and at a stop: the
    metrics averaged since the previous report, `steps_per_sec` and `scalars(step)` go to
    `writer` (TensorBoard and the log), with a log line of the speed and an ETA. Their clock
    starts after the first step of a call, whose compilation would distort them.
  - Divergence: at each report and before each save every metric of the step must be
    finite, else `DivergedError` names the last checkpoint saved. NaN parameters give NaN
    metrics at every later step, so no checkpoint holds them.
  - Time limit: time_limit_min > 0 stops the call, with a checkpoint, after the first step
    that ends past that many minutes. It is checked after every step; with several hosts
    only at report steps, where process 0's clock decides for all (`out_of_time`: a
    collective every step would stall the input pipeline), so all stop after the same step.
  - Checkpoints: `pack(state, wall_s)`, the tree the caller's layout saves, goes to
    `manager` every checkpoint_every steps, at the last step and at a stop; wall_s is the
    training seconds of every call, `wall_s` of them before this one.
  - Previews: `preview(step, state)` runs on process 0 every preview_every (> 0) steps and
    at the last step of the call.
"""

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import jax_utils
from jax.experimental import multihost_utils

from lmi_jax import checkpoints, progress, writers
from lmi_jax.errors import InputError

State = Any
Batch = Any
Metrics = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class LoopSchedule:
  """When the loop stops, reports, checkpoints and previews (steps; minutes), and the
  config keys its messages name."""
  num_steps: int
  log_every: int
  checkpoint_every: int
  preview_every: int
  time_limit_min: float
  time_limit_key: str = "time_limit_min"  # Named when the time limit stops a call.
  lr_keys: tuple[str, ...] = ()  # What to lower when training diverges, the first leading.


@dataclasses.dataclass(frozen=True)
class LoopResult:
  """state: the final state as host arrays; wall_s: training seconds over every call, as
  the last checkpoint holds them; finished: whether state.step reached schedule.num_steps."""
  state: State
  wall_s: float
  finished: bool


class DivergedError(InputError):
  """A training metric stopped being finite; the last checkpoint saved before is kept."""


def schedule_from_config(name: str, section: ml_collections.ConfigDict,
                         preview_key: str = "preview_every",
                         lr_keys: tuple[str, ...] | None = None) -> LoopSchedule:
  """The schedule of config section `name`: its num_steps, log_every, checkpoint_every,
  time_limit_min and `preview_key` keys; lr_keys default to (<name>.lr,)."""
  return LoopSchedule(num_steps=int(section.num_steps), log_every=int(section.log_every),
                      checkpoint_every=int(section.checkpoint_every),
                      preview_every=int(section[preview_key]),
                      time_limit_min=float(section.time_limit_min),
                      time_limit_key=f"{name}.time_limit_min",
                      lr_keys=(f"{name}.lr",) if lr_keys is None else lr_keys)


def out_of_time(elapsed_s: float, limit_min: float) -> bool:
  """Whether `elapsed_s` seconds exceed `limit_min` minutes, by process 0's reading: with
  several hosts a collective every host must join."""
  over = elapsed_s > 60.0 * limit_min
  if jax.process_count() > 1:
    over = bool(multihost_utils.broadcast_one_to_all(np.asarray(over)))
  return over


def check_finite(step: int, metrics: Mapping[str, float], manager: checkpoints.CheckpointManager,
                 lr_keys: tuple[str, ...]) -> None:
  """Raises DivergedError naming the first non-finite metric of `step` and the last good
  checkpoint in `manager`, unless every metric is finite."""
  bad = [(name, value) for name, value in metrics.items() if not np.isfinite(value)]
  if not bad:
    return
  name, value = bad[0]
  manager.wait_until_finished()
  kept = manager.latest_step()
  kept_text = (f"the last good checkpoint, step {kept}, is kept in {manager.directory}"
               if kept is not None else "no checkpoint was saved before")
  prefix = f"{lr_keys[0]}: " if lr_keys else ""
  lower = " or ".join(lr_keys) or "the learning rate"
  raise DivergedError(f"{prefix}the {name} is {value} at step {step} (training diverged); "
                      f"{kept_text}. Lower {lower} and rerun to resume.")


def add_metrics(sums: dict | None, metrics: Metrics) -> dict:
  """Running sums of the step metrics, added on the device (no wait for the step)."""
  return dict(metrics) if sums is None else jax.tree.map(jnp.add, sums, dict(metrics))


def write_report(writer: writers.MetricWriter, report: progress.Report, sums: dict, count: int,
                 scalars: Callable[[int], Mapping[str, float]] | None) -> None:
  """The means of `count` steps' metric `sums`, the speed and `scalars(step)` to `writer`,
  and a log line of the speed and ETA when steps were timed since the previous report."""
  values = {k: float(v) / count for k, v in jax.device_get(sums).items()}
  if math.isfinite(report.rate):
    values["steps_per_sec"] = report.rate
    logging.info("Step %d/%d (%.1f%%), %.3f s/step, ETA %s", report.done, report.total,
                 100.0 * report.share, 1.0 / report.rate, progress.hms(report.eta_s))
  if scalars is not None:
    values.update(scalars(report.done))
  writer.write_scalars(report.done, values)


def run(step_fn: Callable[[State, Batch], tuple[State, Metrics]],
        batches: Callable[[int], Iterator[Batch]], state: State, schedule: LoopSchedule,
        manager: checkpoints.CheckpointManager, writer: writers.MetricWriter, *,
        pack: Callable[[State, float], Any], wall_s: float = 0.0,
        preview: Callable[[int, State], None] | None = None,
        scalars: Callable[[int], Mapping[str, float]] | None = None,
        axis_name: str | None = None) -> LoopResult:
  """Runs `step_fn` from state.step up to schedule.num_steps or the time limit (see the
  module docstring)."""
  start_step = int(state.step)
  if axis_name is None:
    placed, first_copy = state, lambda s: s
  else:
    # Inputs placed under the pmap's own axis name match its outputs' sharding, so the
    # second step hits the compilation cache instead of compiling again.
    placed, first_copy = jax_utils.replicate(state, axis_name=axis_name), jax_utils.unreplicate
  reporter = progress.Progress(schedule.num_steps, done=start_step)
  iterator = batches(start_step)
  sums, count, saved_wall_s = None, 0, wall_s
  start = time.perf_counter()
  for step in range(start_step + 1, schedule.num_steps + 1):
    placed, metrics = step_fn(placed, next(iterator))
    sums, count = add_metrics(sums, metrics), count + 1
    if step == start_step + 1:
      jax.block_until_ready(placed)
      logging.info("First step, compilation included: %.1f s", time.perf_counter() - start)
      reporter.restart_clock(step)
    log_step = step % schedule.log_every == 0 or step == schedule.num_steps
    stop = (schedule.time_limit_min > 0 and (log_step or jax.process_count() == 1) and
            out_of_time(time.perf_counter() - start, schedule.time_limit_min))
    last = step == schedule.num_steps or stop
    save = step % schedule.checkpoint_every == 0 or last
    report = reporter.update(step, force=log_step or stop)
    if report is not None:
      write_report(writer, report, sums, count, scalars)
      sums, count = None, 0
    if report is not None or save:
      check_finite(step, {k: float(v) for k, v in jax.device_get(metrics).items()}, manager,
                   schedule.lr_keys)
    if (preview is not None and jax.process_index() == 0 and
        (last or (schedule.preview_every and step % schedule.preview_every == 0))):
      preview(step, first_copy(placed))
    if save:
      saved_wall_s = wall_s + time.perf_counter() - start
      checkpoints.save(manager, step, pack(first_copy(placed), saved_wall_s))
    if stop:
      logging.info("Stopped at step %d: %s=%g reached; rerun to resume.", step,
                   schedule.time_limit_key, schedule.time_limit_min)
      break
  state = jax.device_get(first_copy(placed))
  return LoopResult(state=state, wall_s=float(saved_wall_s),
                    finished=int(state.step) >= schedule.num_steps)
