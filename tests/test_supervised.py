"""The supervised ceiling: the regression losses, a step lowers the loss, export / load
checks, translate, and exact resume of `supervised.train` (the loop itself: test_loop.py).

The network is the tiny config's NCSN++ cut to its fewest parts (it compiles fastest), so
the tests that train share one compiled step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from lmi_jax.baselines import common, supervised
from lmi_jax.data import load_dataset
from lmi_jax.errors import InputError

from baseline_resume import check_resumes

SMALL_MODEL = {"nf": 8, "ch_mult": (1,), "attn_resolutions": (), "resblock_type": "ddpm",
               "fir": False, "progressive": "none", "progressive_input": "none"}


def tiny_config(model=SMALL_MODEL, **overrides):
  """The tiny config (32 x 32 phantom) with `model` keys and `overrides` of the supervised
  section."""
  config = tiny.get_config()
  for key, value in model.items():
    config.model[key] = value
  config.supervised.batch_size = 2
  for key, value in overrides.items():
    config.supervised[key] = value
  return config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return load_dataset(tiny_config(), str(tmp_path_factory.mktemp("data")))


def test_regression_losses_match_numpy():
  rng = np.random.default_rng(0)
  prediction, target = rng.random((2, 3, 4, 4, 1), np.float32)
  np.testing.assert_allclose(supervised.regression_loss(prediction, target, "l1"),
                             np.abs(prediction - target).mean(), rtol=1e-6)
  np.testing.assert_allclose(supervised.regression_loss(prediction, target, "l2"),
                             ((prediction - target) ** 2).mean(), rtol=1e-6)


def test_unknown_loss_names_the_key():
  with pytest.raises(InputError, match="supervised.loss"):
    supervised.settings_from_config(tiny_config(loss="huber"))


def test_paired_batches_keep_pairs_together():
  source = np.random.default_rng(1).random((6, 4, 4, 1), np.float32)
  batches = supervised.paired_batches(source, 2.0 * source, seed=0, start_step=0,
                                      batch_size=5, hflip=True)
  for _ in range(3):
    batch = next(batches)
    np.testing.assert_array_equal(batch["target"], 2.0 * batch["source"])


def test_training_steps_lower_the_loss_on_a_fixed_batch(data):
  settings = supervised.settings_from_config(tiny_config())
  state = supervised.create_state(0, settings, 32)
  batch = {"source": data["train"]["source"][:2], "target": data["train"]["target"][:2]}

  def loss(params):
    prediction = supervised.predict(settings.model, params, jnp.asarray(batch["source"]))
    return float(supervised.regression_loss(prediction, batch["target"], "l1"))

  start = loss(state.params)
  for _ in range(30):
    state, metrics = supervised.train_step(state, batch, settings=settings)
  assert int(state.step) == 30 and np.isfinite(float(metrics["grad_norm"]))
  assert loss(state.params) < 0.5 * start


def test_export_load_round_trip_and_translate(tmp_path):
  config = tiny_config()
  settings = supervised.settings_from_config(config)
  params = supervised.init_params(common.fast_key(3), settings, 32)
  path = common.export(str(tmp_path), "supervised", params, {"steps": 0})
  loaded = supervised.load(config, path)
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(params))
  config.sampling.batch_size = 2
  source = np.random.default_rng(0).random((3, 32, 32, 1), np.float32)
  translated = supervised.translate(config, loaded, source, jax.random.key(0))
  expected = np.clip(supervised.predict(settings.model, loaded, jnp.asarray(source)), 0, 1)
  assert translated.shape == (3, 32, 32, 1) and translated.dtype == np.float32
  np.testing.assert_allclose(translated, expected, atol=1e-5)


def test_load_rejects_missing_corrupt_and_other_sizes(tmp_path):
  config = tiny_config()
  with pytest.raises(InputError, match="nothing.msgpack"):
    supervised.load(config, str(tmp_path / "nothing.msgpack"))

  wide = supervised.settings_from_config(tiny_config(model={**SMALL_MODEL, "nf": 16}))
  shapes = jax.eval_shape(supervised.init_params, common.fast_key(0), wide, 32)
  path = common.export(str(tmp_path), "wide",
                       jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes), {})
  with pytest.raises(InputError, match="wide.msgpack.*does not fit"):
    supervised.load(config, path)

  with open(path, "rb") as f:
    content = f.read()
  for name, damaged in (("truncated", content[:len(content) // 3]), ("text", b"hello")):
    corrupt = tmp_path / f"{name}.msgpack"
    corrupt.write_bytes(damaged)
    with pytest.raises(InputError, match=f"{name}.msgpack"):
      supervised.load(config, str(corrupt))


def test_train_resumes_where_it_stopped(tmp_path):
  """Three calls stopped by the time limit after one step each end with the parameters of
  one uninterrupted three-step call; the export records the steps."""
  config = tiny_config(num_steps=3, log_every=1, checkpoint_every=10, preview_every=0)
  info = check_resumes(supervised, "supervised", config, tmp_path)
  assert info["model"]["nf"] == SMALL_MODEL["nf"] and info["num_params"] > 0
