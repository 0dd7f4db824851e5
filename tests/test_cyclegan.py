"""Few-shot CycleGAN: the subject draw, the image pool, the PatchGAN's receptive field, the
losses fall, the cycle learns an inversion, export / load checks, and resume.

Every network here has the TINY sizes and batches of two 32 x 32 slices, so the tests that
train share one compiled step.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from lmi_jax.baselines import common, cyclegan
from lmi_jax.data import load_dataset
from lmi_jax.errors import InputError

from baseline_resume import check_resumes

TINY = {"generator_features": 4, "generator_blocks": 1, "discriminator_features": 4,
        "discriminator_layers": 1, "pool_size": 4, "batch_size": 2}
NUM_STEPS = np.int32(1000)  # Run length of the steps taken one by one: no decay yet.


def tiny_config(**overrides):
  """The tiny config (32 x 32 phantom, 4 / 1 / 2 subjects) with TINY and `overrides` in
  the cyclegan section."""
  config = tiny.get_config()
  for key, value in {**TINY, **overrides}.items():
    config.cyclegan[key] = value
  return config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return load_dataset(tiny_config(), str(tmp_path_factory.mktemp("data")))


def cycle_error(params, settings, source, target):
  """Mean |F(G(s)) - s| + mean |G(F(t)) - t| over (N, H, W, 1) slices."""
  g = lambda x: settings.generator.apply({"params": params["g"]}, x)
  f = lambda x: settings.generator.apply({"params": params["f"]}, x)
  return float(jnp.mean(jnp.abs(f(g(source)) - source)) +
               jnp.mean(jnp.abs(g(f(target)) - target)))


def test_few_shot_subjects_count_membership_and_seed():
  subjects = np.repeat(np.arange(100) * 3 + 7, 3)  # 100 subjects, ids not 0..99.
  chosen = cyclegan.few_shot_subjects(subjects, 0.11, seed=0)
  assert len(chosen) == 11 and len(set(chosen)) == 11
  assert set(chosen) <= set(subjects) and list(chosen) == sorted(chosen)
  np.testing.assert_array_equal(chosen, cyclegan.few_shot_subjects(subjects, 0.11, seed=0))
  assert set(chosen) != set(cyclegan.few_shot_subjects(subjects, 0.11, seed=1))
  assert len(cyclegan.few_shot_subjects(subjects, 0.001, seed=0)) == 1
  assert set(cyclegan.few_shot_subjects(subjects, 1.0, seed=0)) == set(subjects)


def test_few_shot_rows_are_all_slices_of_train_subjects_only(data):
  train = data["train"]
  rows = cyclegan.few_shot_rows(train, 0.5, seed=3)
  chosen = set(cyclegan.few_shot_subjects(train["subject"], 0.5, seed=3))
  assert len(chosen) == 2  # Half of the 4 training subjects.
  expected = [i for i, s in enumerate(train["subject"]) if s in chosen]
  np.testing.assert_array_equal(rows, expected)
  held_out = set(data["val"]["subject"]) | set(data["test"]["subject"])
  assert held_out and not chosen & held_out
  assert chosen <= set(train["subject"])


def test_source_fraction_out_of_range_names_the_key():
  with pytest.raises(InputError, match="cyclegan.source_fraction"):
    cyclegan.settings_from_config(tiny_config(source_fraction=0.0))


def test_image_pool_fills_then_swaps_half_and_loses_nothing():
  size, shape = 4, (2, 2, 1)
  # Image i is the constant i, so images are told apart by their first pixel.
  images = lambda ids: jnp.asarray(np.asarray(ids, np.float32)[:, None, None, None]
                                   * np.ones(shape, np.float32))
  ids_of = lambda x: [int(v) for v in np.asarray(x)[:, 0, 0, 0]]

  empty = jnp.zeros((0, *shape))
  _, _, returned = cyclegan.query_pool(empty, jnp.int32(0), images([1, 2]), jax.random.key(0))
  assert ids_of(returned) == [1, 2]

  pool = jnp.zeros((size, *shape))
  pool, count, returned = cyclegan.query_pool(pool, jnp.int32(0), images([1, 2, 3]),
                                              jax.random.key(1))
  assert ids_of(returned) == [1, 2, 3] and ids_of(pool[:3]) == [1, 2, 3] and int(count) == 3

  new = list(range(10, 210))
  before = ids_of(pool[:3])
  pool, count, returned = cyclegan.query_pool(pool, count, images(new), jax.random.key(2))
  assert int(count) == size
  # The first new fake fills the last slot and is returned as well; every other image
  # that went in is either in the pool or was returned, exactly once.
  out = ids_of(returned)
  assert out[0] == new[0] and ids_of(pool).count(new[0]) + out[1:].count(new[0]) == 1
  assert (collections.Counter(before + new + [new[0]]) ==
          collections.Counter(ids_of(pool) + out))
  # Of the fakes that meet a full pool about half are swapped for a stored one.
  swapped = np.mean([o != n for o, n in zip(out[1:], new[1:])])
  assert 0.35 < swapped < 0.65


def test_patch_discriminator_scores_overlapping_patches():
  """64 px with 2 stride-2 layers: 32, 16, then two 4x4 stride-1 convs: 15, 14 patches."""
  disc = cyclegan.PatchDiscriminator(features=2, num_layers=2)
  x = jnp.full((3, 64, 64, 1), 0.5)
  scores = disc.apply(disc.init(common.fast_key(0), x), x)
  assert scores.shape == (3, 14, 14, 1)


def test_learning_rate_constant_for_half_the_run_then_linear_to_zero():
  schedule = cyclegan.learning_rate(2e-4, np.int32(100))
  np.testing.assert_allclose([float(schedule(s)) for s in (0, 50, 75, 100, 120)],
                             [2e-4, 2e-4, 1e-4, 0.0, 0.0], rtol=1e-6)


def fixed_batch(data):
  """Two unpaired training slices of each domain."""
  train = data["train"]
  return {"source": train["source"][[0, 5]], "target": train["target"][[2, 9]]}


def test_training_steps_lower_the_losses_on_a_fixed_batch(data):
  settings = cyclegan.settings_from_config(tiny_config())
  state = cyclegan.create_state(0, settings, 32)
  batch = fixed_batch(data)
  history = []
  for _ in range(40):
    state, metrics = cyclegan.train_step(state, batch, num_steps=NUM_STEPS, settings=settings)
    history.append({k: float(v) for k, v in metrics.items()})
  first, last = history[0], history[-1]
  assert last["g_total"] < 0.7 * first["g_total"]
  assert last["cycle"] < 0.7 * first["cycle"]
  assert last["d_target"] + last["d_source"] < first["d_target"] + first["d_source"]


def test_cycle_learns_a_trivially_invertible_pair(data):
  """source = 1 - target: F(G(s)) = s and G(F(t)) = t become near exact."""
  settings = cyclegan.settings_from_config(tiny_config())
  target = data["train"]["target"]
  source = 1.0 - target
  state = cyclegan.create_state(1, settings, 32)
  start = cycle_error(state.params, settings, source, target)
  batches = cyclegan.unpaired_batches(source, target, seed=0, start_step=0, batch_size=2,
                                      hflip=True)
  for _ in range(250):
    state, _ = cyclegan.train_step(state, next(batches), num_steps=NUM_STEPS,
                                  settings=settings)
  # 0.30 of the start after these steps (0.26 after 300); a broken cycle stays near 1.
  assert cycle_error(state.params, settings, source, target) < 0.45 * start


def test_unpaired_batches_draw_the_domains_independently():
  source = np.arange(50, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 2, 1))
  batches = cyclegan.unpaired_batches(source, source.copy(), seed=0, start_step=0,
                                      batch_size=4, hflip=False)
  rows = [(list(b["source"][:, 0, 0, 0]), list(b["target"][:, 0, 0, 0]))
          for b in (next(batches) for _ in range(5))]
  assert any(s != t for s, t in rows)
  resumed = cyclegan.unpaired_batches(source, source.copy(), seed=0, start_step=3,
                                      batch_size=4, hflip=False)
  assert list(next(resumed)["source"][:, 0, 0, 0]) == rows[3][0]


def test_export_load_round_trip_and_translate(tmp_path):
  config = tiny_config()
  settings = cyclegan.settings_from_config(config)
  params = cyclegan.init_params(common.fast_key(2), settings, 32)["g"]
  path = common.export(str(tmp_path), "cyclegan", params, {"steps": 0})
  loaded = cyclegan.load(config, path)
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(params))
  config.sampling.batch_size = 3
  source = np.random.default_rng(0).random((5, 32, 32, 1), np.float32)
  translated = cyclegan.translate(config, loaded, source, jax.random.key(0))
  assert translated.shape == (5, 32, 32, 1) and translated.dtype == np.float32
  assert translated.min() >= 0.0 and translated.max() <= 1.0
  one_by_one = np.concatenate([np.asarray(settings.generator.apply({"params": loaded}, s[None]))
                               for s in source])
  np.testing.assert_allclose(translated, one_by_one, atol=1e-5)


def test_load_rejects_missing_corrupt_and_other_sizes(tmp_path):
  config = tiny_config()
  missing = str(tmp_path / "missing.msgpack")
  with pytest.raises(InputError, match="missing.msgpack"):
    cyclegan.load(config, missing)

  wide = cyclegan.ResnetGenerator(features=8, num_blocks=TINY["generator_blocks"])
  shapes = jax.eval_shape(wide.init, common.fast_key(0), jnp.zeros((1, 32, 32, 1)))["params"]
  path = common.export(str(tmp_path), "wide",
                       jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes), {})
  with pytest.raises(InputError, match="wide.msgpack.*does not fit"):
    cyclegan.load(config, path)

  with open(path, "rb") as f:
    data = f.read()
  for name, content in (("truncated", data[:len(data) // 2]), ("garbage", b"\xc1\x00" * 64)):
    corrupt = tmp_path / f"{name}.msgpack"
    corrupt.write_bytes(content)
    with pytest.raises(InputError, match=f"{name}.msgpack"):
      cyclegan.load(config, str(corrupt))


def test_train_resumes_where_it_stopped(tmp_path):
  """Three calls stopped by the time limit after one step each end with the parameters of
  one uninterrupted three-step call."""
  config = tiny_config(num_steps=3, log_every=1, checkpoint_every=10, preview_every=0)
  info = check_resumes(cyclegan, "cyclegan", config, tmp_path)
  assert info["wall_s"] > 0 and info["source_subjects"]
