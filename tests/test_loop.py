"""The progress reporter (cadence and ETA on a fake clock, the sampler's `StepProgress`) and
the one training loop on a toy state: report / checkpoint / preview cadence, the time limit
and exact resume (through the baselines' `common.train_loop` too), the divergence stop, and
a pmapped step.
"""

import logging as pylogging
import math
import os

import flax
import jax
import numpy as np
import pytest

from lmi_jax import checkpoints, loop
from lmi_jax.baselines import common
from lmi_jax.inference import StepProgress
from lmi_jax.progress import Progress, hms


class FakeClock:
  """A clock that moves only when told."""

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_report_share_rate_and_eta():
  clock = FakeClock()
  reporter = Progress(10, clock=clock)
  clock.now += 4.0
  report = reporter.update(2, force=True)
  assert (report.done, report.total, report.share) == (2, 10, 0.2)
  assert report.rate == 0.5 and report.eta_s == 16.0
  clock.now += 1.0
  report = reporter.update(6, force=True)
  assert report.rate == 4.0  # Since the previous line: 4 units in 1 s.
  assert report.eta_s == pytest.approx(5.0 / 6.0 * 4.0)  # Mean rate since the start.
  assert math.isnan(reporter.update(6, force=True).rate)


def test_restart_clock_leaves_the_first_unit_out():
  clock = FakeClock()
  reporter = Progress(11, clock=clock)
  clock.now += 60.0  # The first unit compiles.
  reporter.restart_clock(1)
  clock.now += 5.0
  report = reporter.update(6, force=True)
  assert (report.counted, report.window, report.elapsed_s) == (5, 5, 5.0)
  assert report.eta_s == 5.0 and hms(report.eta_s) == "0h00m05s"


def test_lines_are_due_by_units_seconds_force_and_at_the_end():
  clock = FakeClock()
  reporter = Progress(25, every=10, every_s=30.0, clock=clock)
  due = []
  for done in range(1, 26):
    clock.now += 2.0 if done < 20 else 40.0
    if reporter.update(done) is not None:
      due.append(done)
  assert due == [10, 20, 21, 22, 23, 24, 25]
  reporter = Progress(5, clock=clock)
  assert reporter.update(1) is None and reporter.update(2, force=True) is not None
  assert reporter.update(5) is not None


def test_hms():
  assert hms(3723.9) == "1h02m03s" and hms(math.nan) == "?"


def test_step_progress_lines(caplog):
  clock = FakeClock()
  progress = StepProgress("lmi", steps=4, batches=2, every_s=15.0, clock=clock)
  with caplog.at_level(pylogging.INFO, logger="absl"):
    for batch in range(2):
      progress.start_batch(batch)
      for done in range(1, 5):
        clock.now += 8.0
        progress(np.int32(done))
        progress(np.int32(done))  # The other devices report the same step.
      progress.end_batch()
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("lmi:")]
  assert lines == [  # The first and last step of a batch, else 15 s after the previous line.
      "lmi: batch 1/2, step 1/4 (12% of all), 8 s elapsed, about 56 s left",
      "lmi: batch 1/2, step 3/4 (38% of all), 24 s elapsed, about 40 s left",
      "lmi: batch 1/2, step 4/4 (50% of all), 32 s elapsed, about 32 s left",
      "lmi: batch 1/2 done, 32.0 s elapsed, about 32 s left",
      "lmi: batch 2/2, step 1/4 (62% of all), 40 s elapsed, about 24 s left",
      "lmi: batch 2/2, step 3/4 (88% of all), 56 s elapsed, about 8 s left",
      "lmi: batch 2/2, step 4/4 (100% of all), 64 s elapsed, about 0 s left",
      "lmi: batch 2/2 done, 64.0 s elapsed, about 0 s left"]


def test_step_progress_counts_slices_as_steps(caplog):
  """One noise per slice reports slices (3 of a batch of 3, 18 steps each): 6, 12, 18 steps."""
  clock = FakeClock()
  progress = StepProgress("lmi", steps=18, batches=1, every_s=0.0, clock=clock)
  with caplog.at_level(pylogging.INFO, logger="absl"):
    progress.start_batch(0)
    for done in (1, 1, 2, 3):  # Two devices report their first slice.
      clock.now += 10.0
      progress.slice_done(np.int32(done), 3)
  steps = [r.getMessage().split("step ")[1].split(" ")[0] for r in caplog.records
           if r.getMessage().startswith("lmi: batch")]
  assert steps == ["6/18", "12/18", "18/18"]


@flax.struct.dataclass
class Counter:
  """A toy loop state: steps taken and the batches seen, summed with weights."""
  step: jax.Array
  total: jax.Array


def toy_step(state, batch):
  total = state.total * 2.0 + batch  # Order-sensitive: a skipped or repeated batch shows.
  return state.replace(step=state.step + 1, total=total), {"batch": batch}


def toy_batches(start_step):
  step = start_step + 1
  while True:
    yield np.float64(step)
    step += 1


FRESH = Counter(step=np.zeros((), np.int32), total=np.zeros((), np.float64))
WHOLE_TOTAL = ((1 * 2 + 2) * 2 + 3) * 2 + 4  # Four steps.


class Recorder:
  """A metric writer that keeps the scalars."""

  def __init__(self):
    self.scalars = {}

  def write_scalars(self, step, scalars):
    self.scalars[step] = dict(scalars)


def schedule(**overrides):
  values = dict(num_steps=5, log_every=2, checkpoint_every=3, preview_every=2,
                time_limit_min=0.0, lr_keys=("toy.lr",))
  return loop.LoopSchedule(**{**values, **overrides})


def test_loop_reports_checkpoints_and_previews_on_schedule(tmp_path):
  manager = checkpoints.manager(str(tmp_path), max_to_keep=10)
  writer, previews = Recorder(), []
  result = loop.run(toy_step, toy_batches, FRESH, schedule(), manager, writer,
                    pack=lambda state, wall_s: state,
                    preview=lambda step, state: previews.append((step, int(state.step))),
                    scalars=lambda step: {"lr": 0.1 * step})
  manager.wait_until_finished()
  assert result.finished and int(result.state.step) == 5
  assert sorted(writer.scalars) == [2, 4, 5]
  assert [writer.scalars[s]["batch"] for s in (2, 4, 5)] == [1.5, 3.5, 5.0]  # Window means.
  assert writer.scalars[4]["lr"] == pytest.approx(0.4) and writer.scalars[4]["steps_per_sec"] > 0
  assert previews == [(2, 2), (4, 4), (5, 5)]
  assert sorted(manager.all_steps()) == [3, 5]


def test_a_non_finite_metric_stops_and_names_the_last_good_checkpoint(tmp_path):
  def diverging(state, batch):
    state, metrics = toy_step(state, batch)
    return state, {"loss": np.float32(np.inf if batch >= 4 else 1.0)}

  manager = checkpoints.manager(str(tmp_path), max_to_keep=10)
  with pytest.raises(loop.DivergedError,
                     match=r"^toy.lr: the loss is inf at step 4 \(training diverged\); the last "
                           r"good checkpoint, step 3, is kept in .*Lower toy.lr and rerun"):
    loop.run(diverging, toy_batches, FRESH, schedule(), manager, Recorder(),
             pack=lambda state, wall_s: state)
  assert manager.latest_step() == 3
  with pytest.raises(loop.DivergedError, match="no checkpoint was saved before"):
    loop.run(diverging, toy_batches, FRESH, schedule(checkpoint_every=10, lr_keys=()),
             checkpoints.manager(str(tmp_path / "none")), Recorder(),
             pack=lambda state, wall_s: state)


def test_time_limit_stops_after_one_step_whatever_the_log_interval(tmp_path, caplog):
  manager = checkpoints.manager(str(tmp_path))
  with caplog.at_level(pylogging.INFO, logger="absl"):
    result = loop.run(toy_step, toy_batches, FRESH,
                      schedule(log_every=4, time_limit_min=1e-9, time_limit_key="toy.limit"),
                      manager, Recorder(), pack=lambda state, wall_s: state)
  manager.wait_until_finished()
  assert int(result.state.step) == 1 and not result.finished
  assert manager.latest_step() == 1
  assert "Stopped at step 1: toy.limit=1e-09 reached; rerun to resume." in caplog.text
  assert not loop.out_of_time(59.0, 1.0) and loop.out_of_time(61.0, 1.0)


def test_a_pmapped_step_runs_on_replicated_state(tmp_path):
  pmapped = jax.pmap(lambda state, batch: toy_step(state, batch[0]), axis_name="toy")
  devices = jax.local_device_count()

  def step(state, batch):
    state, metrics = pmapped(state, np.full((devices, 1), batch, np.float32))
    return state, jax.tree.map(lambda x: x[0], metrics)

  manager = checkpoints.manager(str(tmp_path))
  result = loop.run(step, toy_batches, FRESH, schedule(num_steps=4), manager, Recorder(),
                    pack=lambda state, wall_s: state, axis_name="toy")
  manager.wait_until_finished()
  assert int(result.state.step) == 4 and float(result.state.total) == WHOLE_TOTAL
  assert np.shape(result.state.total) == ()


def test_baseline_loop_stops_on_time_and_resumes_exactly(tmp_path):
  every_step = common.LoopSchedule(num_steps=4, log_every=1, checkpoint_every=100,
                                   preview_every=0, time_limit_min=0.0)
  whole = common.train_loop(toy_step, toy_batches, FRESH, str(tmp_path / "whole"), every_step)
  assert whole.finished and int(whole.state.step) == 4
  assert float(whole.state.total) == WHOLE_TOTAL

  stopped = common.LoopSchedule(num_steps=4, log_every=1, checkpoint_every=100,
                                preview_every=0, time_limit_min=1e-9)
  previews = []
  walls = []
  for step in (1, 2, 3, 4):
    result = common.train_loop(
        toy_step, toy_batches, FRESH, str(tmp_path / "parts"), stopped,
        preview=lambda s: previews.append(int(s.step)) or {"x": np.zeros((1, 2, 2, 1))})
    assert int(result.state.step) == step and result.finished == (step == 4)
    walls.append(result.wall_s)
  assert float(result.state.total) == float(whole.state.total)
  assert previews == [1, 2, 3, 4] and walls == sorted(walls) and walls[0] > 0
  assert os.path.isfile(tmp_path / "parts" / common.PREVIEW_FILE)
  again = common.train_loop(toy_step, toy_batches, FRESH, str(tmp_path / "parts"), stopped)
  assert int(again.state.step) == 4 and again.wall_s == walls[-1]
