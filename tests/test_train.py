"""Training: the loss falls, data-parallel and multi-host runs match one device, resume is exact.

Every run trains on 4 phantom subjects. The loss test runs the tiny config; the runs compared
with each other run a smaller network with the same config in this process (where they share
their compiled step) and in `main.py` subprocesses (2 devices, 2 processes).
"""

import logging as pylogging
import os
import socket
import struct
import subprocess
import sys

import flax.linen
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tensorboardX.proto import event_pb2

from configs import tiny
from lmi_jax import checkpoints, losses, models, settings, train, writers
from lmi_jax.data import train_batches
from lmi_jax.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = {"data.num_train_subjects": 4, "data.num_val_subjects": 0, "data.num_test_subjects": 0,
        "data.phantom.voxel_mm": 4.0}
# The runs compared with each other: a network with the fewest parts (it compiles fastest),
# dropout kept. One source for the config in this process and the subprocesses' flags.
OVERRIDES = {
    **DATA, "model.nf": 8, "model.ch_mult": (1,), "model.attn_resolutions": (),
    "model.resblock_type": "ddpm", "model.fir": False, "model.progressive": "none",
    "model.progressive_input": "none", "training.num_steps": 3,
    "training.checkpoint_every": 2, "training.log_every": 1, "training.sample_every": 0,
}


def tiny_config(base=OVERRIDES, **overrides):
  """The tiny config with `base`, then `overrides` (dotted keys with "__" for ".")."""
  config = tiny.get_config()
  for key, value in {**base, **{k.replace("__", "."): v for k, v in overrides.items()}}.items():
    *path, name = key.split(".")
    node = config
    for part in path:
      node = node[part]
    node[name] = value
  return config


def main_py(workdir, *flags, env=None):
  """`python main.py --mode=train` on the tiny config with OVERRIDES, as a subprocess; `env`
  adds variables to this process's."""
  args = [sys.executable, os.path.join(ROOT, "main.py"), "--config=configs/tiny.py",
          f"--workdir={workdir}", "--mode=train"]
  args += [f"--config.{k}={v}" for k, v in OVERRIDES.items()] + list(flags)
  return subprocess.Popen(args, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process, timeout=300):
  output, _ = process.communicate(timeout=timeout)
  assert process.returncode == 0, output[-3000:]


def latest_checkpoint(workdir):
  """The whole latest checkpoint of a run as nested dicts of host arrays."""
  manager = checkpoints.manager(checkpoints.score_folder(str(workdir)), create=False)
  return manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())


def assert_same_state(a, b, atol=1e-5):
  assert int(a["step"]) == int(b["step"])
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


def read_scalars(workdir):
  """{tag: {step: value}} from the TensorBoard event files in workdir (TFRecord framing)."""
  scalars = {}
  for name in os.listdir(workdir):
    if not name.startswith("events.out.tfevents"):
      continue
    with open(os.path.join(workdir, name), "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        if value.HasField("simple_value"):
          scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted 3-step run on one device: its workdir and final state."""
  workdir = tmp_path_factory.mktemp("reference")
  state = train.train_score_model(tiny_config(), str(workdir))
  return workdir, state


def test_loss_falls_and_the_run_writes_its_outputs(tmp_path):
  config = tiny_config(DATA)
  train.train_score_model(config, str(tmp_path))
  loss = read_scalars(tmp_path)["loss"]
  assert sorted(loss) == [10, 20, 30, 40]
  # Windows of 10 steps x 4 examples; the untrained network's loss is ~ |z|^2 / 2 = 512.
  assert loss[40] < 0.8 * loss[10], loss
  scalars = read_scalars(tmp_path)
  for tag in ("grad_norm", "lr", "steps_per_sec"):
    assert set(scalars[tag]) == {10, 20, 30, 40}
  assert os.path.exists(tmp_path / "config.json")
  assert sorted(os.listdir(tmp_path / "samples")) == ["step_0000020.png", "step_0000040.png"]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20", "40"]


def test_stop_and_restart_resumes_to_the_same_parameters(reference, tmp_path, caplog):
  train.train_score_model(tiny_config(training__num_steps=2), str(tmp_path))
  with caplog.at_level(pylogging.INFO, logger="absl"):
    state = train.train_score_model(tiny_config(), str(tmp_path))
  assert "Resuming from the checkpoint of step 2" in caplog.text
  assert int(state.step) == 3
  assert_same_state(latest_checkpoint(tmp_path), latest_checkpoint(reference[0]), atol=0.0)


def test_time_limit_stops_with_a_checkpoint_and_a_rerun_resumes(reference, tmp_path, caplog):
  with caplog.at_level(pylogging.INFO, logger="absl"):
    state = train.train_score_model(
        tiny_config(training__time_limit_min=1e-9, training__log_every=2), str(tmp_path))
  assert int(state.step) == 1  # On one host the limit is checked after every step.
  assert "Stopped at step 1: training.time_limit_min=1e-09 reached" in caplog.text
  assert checkpoints.latest_step(checkpoints.score_folder(str(tmp_path))) == 1
  train.train_score_model(tiny_config(), str(tmp_path))
  assert_same_state(latest_checkpoint(tmp_path), latest_checkpoint(reference[0]), atol=0.0)


def test_restore_ema_params(reference):
  workdir, state = reference
  variables, step = checkpoints.restore_ema_params(tiny_config(), str(workdir))
  assert step == 3
  assert_same_state({"step": 0, **variables}, {"step": 0, "params": state.ema_params}, atol=0.0)
  with pytest.raises(InputError, match="does not fit"):
    checkpoints.restore_ema_params(tiny_config(model__nf=16), str(workdir))


def test_restore_ema_params_without_a_checkpoint(tmp_path):
  with pytest.raises(InputError, match="holds no checkpoint"):
    checkpoints.restore_ema_params(tiny_config(), str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


def test_two_devices_match_one(reference, tmp_path):
  finish(main_py(tmp_path, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}))
  assert_same_state(latest_checkpoint(tmp_path), latest_checkpoint(reference[0]))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(reference, tmp_path):
  address = f"127.0.0.1:{_free_port()}"
  processes = [main_py(tmp_path, "--config.training.num_processes=2",
                       f"--config.training.process_id={i}",
                       f"--config.training.coordinator_address={address}")
               for i in range(2)]
  try:
    for process in processes:
      finish(process)
  finally:  # One process failing leaves the other waiting for it.
    for process in processes:
      if process.poll() is None:
        process.kill()
  assert_same_state(latest_checkpoint(tmp_path), latest_checkpoint(reference[0]))


def test_host_batches_split_the_global_batch():
  images = np.random.default_rng(0).random((10, 4, 4, 1), np.float32)
  whole = next(train_batches.host_batches(images, 0, 5, 4, True, 0, 1, 1))
  shares = [next(train_batches.host_batches(images, 0, 5, 4, True, p, 2, 2)) for p in range(2)]
  assert shares[0]["image"].shape == (2, 1, 4, 4, 1)
  np.testing.assert_array_equal(
      np.concatenate([s["image"].reshape(-1, 4, 4, 1) for s in shares]), whole["image"][0])
  np.testing.assert_array_equal(np.concatenate([s["index"].ravel() for s in shares]), np.arange(4))
  rows, flips = train_batches.global_batch(0, 5, 10, 4, True)
  for x, row, flip in zip(whole["image"][0], rows, flips):
    np.testing.assert_array_equal(x, images[row, :, ::-1] if flip else images[row])


def test_batch_must_divide_over_the_devices():
  with pytest.raises(InputError, match="training.batch_size"):
    settings.check_global_batch(tiny_config().training, num_devices=3)
  settings.check_global_batch(tiny_config().training, num_devices=1)


@pytest.mark.parametrize("key,value", [("cond_aug", 1.5), ("cond_aug_knots", 1),
                                       ("cond_aug_noise", 0.0)])
def test_bad_conditioning_augmentation_is_named(key, value):
  with pytest.raises(InputError, match=f"training.{key}"):
    settings.check_training_config(tiny_config(**{f"training__{key}": value}).training)


def test_null_features_replace_only_the_dropped_examples():
  features = np.random.default_rng(0).random((3, 4, 4, 2), np.float32)
  out = np.asarray(losses.drop_features(features, np.array([False, True, False])))
  np.testing.assert_array_equal(out[[0, 2]], features[[0, 2]])
  np.testing.assert_array_equal(out[1], np.full((4, 4, 2), models.NULL_VALUE))
  assert np.asarray(models.null_features((1, 2, 2, 2))).min() == models.NULL_VALUE


def test_writer_is_a_clu_metric_writer_without_tensorflow(tmp_path):
  writer = writers.TensorBoardWriter(str(tmp_path))
  assert isinstance(writer, writers.MetricWriter)
  writer.write_scalars(3, {"loss": 1.5})
  writer.write_images(3, {"grid": np.zeros((4, 4, 1))})
  writer.write_hparams({"lr": 3e-4, "name": "x"})
  writer.close()
  assert read_scalars(tmp_path) == {"loss": {3: 1.5}}
  assert "tensorflow" not in sys.modules


def test_ema_decay_warms_up_to_the_configured_value():
  assert float(train.ema_decay(0, 0.999)) == pytest.approx(0.1)
  assert float(train.ema_decay(90, 0.999)) == pytest.approx(0.91)
  assert float(train.ema_decay(10**6, 0.999)) == pytest.approx(0.999)


class ConstantProbe(models.NCSNpp):
  """A stand-in network whose output is one learnable constant w everywhere, so the loss has
  a closed form."""

  @flax.linen.compact
  def __call__(self, x, noise_labels, train):
    del noise_labels, train
    return self.param("w", flax.linen.initializers.zeros, ()) + 0.0 * x[..., :1]


@pytest.mark.parametrize("feeding", ["sigma", "raw"])
def test_dsm_loss_matches_a_hand_computation(feeding):
  """0.5 * mean_b sum_pixels (std_b * s_b + z_b)^2 with s = w / std (feeding sigma) or w,
  std_b = sigma_min (sigma_max / sigma_min)^t_b of the VE SDE, t and z as drawn per key."""
  from lmi_jax import lmi, sde as sdes
  sde = sdes.VESDE(sigma_min=0.01, sigma_max=50.0)
  cfg = lmi.LMIConfig(patch_size=3, num_bins=4)
  x0 = np.random.default_rng(0).random((3, 8, 8, 1)).astype(np.float32)
  keys = jax.random.split(jax.random.key(5), 3)
  w = 0.7
  loss = losses.dsm_loss(ConstantProbe(), {"w": np.float32(w)}, sde, cfg, x0, keys,
                         p_uncond=0.0, feeding=feeding, weighting=losses.Weighting())
  expected = []
  for key in keys:
    draws = losses.draw(key, (8, 8, 1), 1e-5, 0.0)
    std = 0.01 * (50.0 / 0.01) ** float(draws.t)
    s = w / std if feeding == "sigma" else w
    expected.append(0.5 * np.sum((std * s + np.asarray(draws.z)) ** 2))
  assert float(loss) == pytest.approx(np.mean(expected), rel=1e-5)


@pytest.mark.parametrize("feeding", ["raw", "edm"])
def test_edm_weighting_matches_a_hand_computation(feeding):
  """EDM's levels and weights: ln(2 sigma) = p_mean + p_std n with n the example's
  standard normal draw, t its VE time clipped to [eps, 1], and each example's loss times
  (4 sigma(t)^2 + sd^2) / sd^2; with the edm feeding the constant w is the network output F
  of D = c_skip y + c_out F, y = 2 x_t - 1, and s = ((D + 1) / 2 - x_t) / sigma^2."""
  from lmi_jax import lmi, sde as sdes
  sde = sdes.VESDE(sigma_min=0.01, sigma_max=50.0)
  cfg = lmi.LMIConfig(patch_size=3, num_bins=4)
  x0 = np.random.default_rng(1).random((4, 8, 8, 1)).astype(np.float32)
  keys = jax.random.split(jax.random.key(7), 4)
  w, p_mean, p_std, sd = 0.3, -0.5, 2.0, 0.5
  weighting = losses.Weighting(kind="edm", eps=1e-5, p_mean=p_mean, p_std=p_std)
  loss = losses.dsm_loss(ConstantProbe(), {"w": np.float32(w)}, sde, cfg, x0, keys,
                         p_uncond=0.0, feeding=feeding, weighting=weighting)
  expected, times = [], []
  for key, x in zip(keys, x0):
    draws = losses.draw(key, (8, 8, 1), 1e-5, 0.0)
    sigma = np.exp(p_mean + p_std * float(draws.level)) / 2
    t = np.clip(np.log(sigma / 0.01) / np.log(50.0 / 0.01), 1e-5, 1.0)
    times.append(t)
    std = 0.01 * (50.0 / 0.01) ** t
    z = np.asarray(draws.z, np.float64)
    if feeding == "raw":
      s = w
    else:
      x_t = x + std * z
      var = 4 * std**2 + sd**2
      denoised = 0.5 * (sd**2 / var * (2 * x_t - 1) + 2 * std * sd / np.sqrt(var) * w + 1)
      s = (denoised - x_t) / std**2
    weight = (4 * std**2 + sd**2) / sd**2
    expected.append(0.5 * weight * np.sum((std * s + z) ** 2))
  # The draws reach both clipped ends' neighbourhoods and the middle: not all one level.
  assert np.ptp(times) > 0.2, times
  assert float(loss) == pytest.approx(np.mean(expected), rel=1e-4)


def test_edm_training_runs_and_its_loss_falls(tmp_path):
  """The EDM feeding and weighting through the whole training step: finite, falling loss."""
  config = tiny_config(DATA, model__preconditioning="edm", training__weighting="edm")
  train.train_score_model(config, str(tmp_path))
  loss = read_scalars(tmp_path)["loss"]
  assert all(np.isfinite(v) for v in loss.values()), loss
  assert loss[40] < 0.8 * loss[10], loss


class FeatureProbe(models.NCSNpp):
  """A stand-in network whose output is w times its first feature channel (the cross-LMI
  map), so the loss depends on the reference the features were computed from."""

  @flax.linen.compact
  def __call__(self, x, noise_labels, train):
    del noise_labels, train
    return self.param("w", flax.linen.initializers.ones, ()) * x[..., 1:2]


def test_remap_is_the_piecewise_linear_curve_plus_noise_clipped():
  rng = np.random.default_rng(1)
  x0 = rng.random((8, 8, 1)).astype(np.float32)
  z = rng.standard_normal((8, 8, 1)).astype(np.float32)
  values = np.array([0.0, 0.9, 0.3, 1.0, 0.5], np.float32)
  out = np.asarray(losses.remap(x0, values, np.float32(0.05), z))
  expected = np.clip(np.interp(x0, [0.0, 0.25, 0.5, 0.75, 1.0], values) + 0.05 * z, 0.0, 1.0)
  np.testing.assert_allclose(out, expected, atol=1e-6)


def test_random_curves_keep_the_background_and_take_every_order():
  curves = np.stack([np.asarray(losses.draw_curve(k, 5))
                     for k in jax.random.split(jax.random.key(0), 300)])
  assert np.all(curves[:, 0] == 0.0)
  np.testing.assert_allclose(curves.max(axis=1), 1.0, rtol=1e-6)
  assert curves[:, 1:].min() >= losses.CURVE_FLOOR
  # The T1w order of the brain's intensities is kept, inverted or shuffled, all often.
  rising = np.all(np.diff(curves[:, 1:], axis=1) > 0, axis=1).mean()
  falling = np.all(np.diff(curves[:, 1:], axis=1) < 0, axis=1).mean()
  assert 0.01 < rising < 0.1 and 0.01 < falling < 0.1  # 1/24 each for 4 uniform knots.


def test_augment_reference_remaps_the_configured_share():
  x0 = jax.numpy.asarray(np.random.default_rng(2).random((8, 8, 1)), jax.numpy.float32)
  keys = jax.random.split(jax.random.key(3), 400)
  off = losses.CondAug(prob=0.0, knots=5, noise=0.25)
  assert all(np.array_equal(losses.augment_reference(k, x0, off), x0) for k in keys[:20])
  half = jax.vmap(lambda k: losses.augment_reference(k, x0, losses.CondAug(prob=0.5, knots=5, noise=0.25)))(keys)
  changed = np.any(np.asarray(half) != np.asarray(x0)[None], axis=(1, 2, 3))
  assert 0.42 < changed.mean() < 0.58
  assert float(half.min()) >= 0.0 and float(half.max()) <= 1.0


def test_dsm_loss_takes_its_features_from_the_augmented_reference():
  """The loss with cond_aug prob 1 equals a hand computation whose LMI reference is
  `augment_reference` of each example, and differs from the loss with reference x0."""
  from lmi_jax import lmi, sde as sdes
  sde = sdes.VESDE(sigma_min=0.01, sigma_max=50.0)
  cfg = lmi.LMIConfig(patch_size=3, num_bins=4)
  x0 = np.random.default_rng(4).random((3, 8, 8, 1)).astype(np.float32)
  keys = jax.random.split(jax.random.key(6), 3)
  aug = losses.CondAug(prob=1.0, knots=5, noise=0.2)
  params = {"w": np.float32(1.0)}
  loss = losses.dsm_loss(FeatureProbe(), params, sde, cfg, x0, keys, p_uncond=0.0,
                         feeding="raw", weighting=losses.Weighting(), cond_aug=aug)
  plain = losses.dsm_loss(FeatureProbe(), params, sde, cfg, x0, keys, p_uncond=0.0,
                          feeding="raw", weighting=losses.Weighting())
  expected = []
  for key, x in zip(keys, x0):
    draws = losses.draw(key, (8, 8, 1), 1e-5, 0.0)
    std = 0.01 * (50.0 / 0.01) ** float(draws.t)
    x_t = x + std * np.asarray(draws.z)
    reference = losses.augment_reference(draws.reference_key, x, aug)
    cross = np.asarray(lmi.features(reference[None], x_t[None], cfg))[0, ..., :1]
    expected.append(0.5 * np.sum((std * cross + np.asarray(draws.z)) ** 2))
  assert float(loss) == pytest.approx(np.mean(expected), rel=1e-4)
  assert abs(float(loss) - float(plain)) > 1e-3 * float(plain)


def test_init_from_starts_a_fresh_run_at_the_shipped_parameters(reference, tmp_path):
  from lmi_jax import pretrained
  _, state = reference
  folder = str(tmp_path / "shipped")
  pretrained.write_model(state.ema_params, os.path.join(ROOT, "configs", "tiny.py"),
                         {"step": 3}, folder)
  started = train.train_score_model(
      tiny_config(training__num_steps=0, training__init_from=folder), str(tmp_path / "run"))
  assert int(started.step) == 0
  for name, tree in (("params", started.params), ("ema_params", started.ema_params)):
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(state.ema_params)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
  with pytest.raises(InputError, match="training.init_from"):
    train.train_score_model(tiny_config(training__init_from=str(tmp_path / "none")),
                            str(tmp_path / "run2"))
  # Its export counts its own steps and records where it started.
  config = tiny_config(training__num_steps=1, training__init_from=folder)
  train.train_score_model(config, str(tmp_path / "tuned"))
  meta = pretrained.export(config, os.path.join(ROOT, "configs", "tiny.py"),
                           str(tmp_path / "tuned"), str(tmp_path / "fine_tuned"))
  assert meta["step"] == 1 and meta["init_from"] == {"folder": folder, "step": 3}
  assert checkpoints.read_meta(str(tmp_path / "fine_tuned"))["init_from"]["step"] == 3
