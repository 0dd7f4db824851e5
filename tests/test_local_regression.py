"""The translation regressed on its source (lmi_jax/local_regression.py), against analytic
features of a linear ramp and a translation whose noise-free mapping is known."""

import numpy as np
from scipy import ndimage

from configs import default
from lmi_jax import local_regression, methods


def disc_stack(n: int, size: int, radius: float) -> np.ndarray:
  """(n, size, size) bool: a centred disc on every slice."""
  yy, xx = np.indices((size, size)) - (size - 1) / 2
  return np.broadcast_to(np.hypot(yy, xx) <= radius, (n, size, size)).copy()


def test_features_of_a_linear_ramp_match_their_analytic_values():
  # Inside the brain and far from its outline, every Gaussian mean of a ramp is the ramp, its
  # gradient magnitude is the slope, its Laplacian 0, and its spread the slope times sigma.
  a, b = 0.004, -0.003
  yy, xx = np.indices((96, 96)).astype(np.float64)
  ramp = 0.5 + a * yy + b * xx
  images = np.stack([ramp, ramp + 0.1])
  brain = disc_stack(2, 96, 44)
  features = local_regression.local_features(images, brain)
  assert features.shape == (int(brain.sum()), 9) and features.dtype == np.float32
  deep = (ndimage.distance_transform_edt(brain[0]) > 4 * max(local_regression.SCALES) + 1)[brain[0]]
  deep = np.concatenate([deep, deep])
  inside = features[deep]
  slope = np.hypot(a, b)
  for column in (1, 2, 3):
    np.testing.assert_allclose(inside[:, column], inside[:, 0], atol=1e-6)
  np.testing.assert_allclose(inside[:, 4], slope, rtol=1e-3)
  np.testing.assert_allclose(inside[:, 6], slope, rtol=1e-3)
  # scipy's truncated second-derivative kernels sum to about -1e-4, not 0.
  np.testing.assert_allclose(inside[:, [5, 7]], 0.0, atol=3e-4)
  np.testing.assert_allclose(inside[:, 8], slope * local_regression.SPREAD_SCALE, rtol=1e-2)


def test_features_never_mix_slices():
  rng = np.random.default_rng(1)
  images = rng.uniform(0, 1, (3, 40, 40))
  brain = disc_stack(3, 40, 15)
  brain[1] = disc_stack(1, 40, 9)[0]
  together = local_regression.local_features(images, brain)
  alone = np.concatenate([local_regression.local_features(images[i:i + 1], brain[i:i + 1])
                          for i in range(3)])
  np.testing.assert_allclose(together, alone, atol=1e-6)


def blob_source(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
  """(n, size, size) smooth random images in [0, 1]: tissue-like regions of varied contrast."""
  noise = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), (0, 3, 3))
  return (noise - noise.min()) / (noise.max() - noise.min())


def test_regression_recovers_the_mapping_under_the_sampler_noise():
  rng = np.random.default_rng(0)
  source = blob_source(rng, 6, 48)
  brain = disc_stack(6, 48, 21)
  mapping = lambda s: 0.2 + 0.6 * np.sin(2.5 * s) ** 2  # A contrast that no ordering keeps.
  clean = np.where(brain, mapping(source), 0.0)
  translated = np.where(brain, np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1), 0.0)
  out = local_regression.regress_on_source(source[..., None], translated[..., None], brain, 0)
  assert out.shape == translated[..., None].shape and out.dtype == np.float32
  before = np.mean((translated[brain] - clean[brain]) ** 2)
  after = np.mean((out[..., 0][brain] - clean[brain]) ** 2)
  assert after < before / 5
  np.testing.assert_array_equal(out[..., 0][~brain], translated[~brain])
  again = local_regression.regress_on_source(source[..., None], translated[..., None], brain, 0)
  np.testing.assert_array_equal(out, again)


def test_the_config_key_turns_the_last_step_on():
  rng = np.random.default_rng(2)
  config = default.get_config()
  config.data.mask = "nonzero"
  source = (blob_source(rng, 2, 32) * disc_stack(2, 32, 13))[..., None]
  translated = rng.uniform(0, 1, source.shape).astype(np.float32)
  assert methods.source_regression_finish(config, source, translated) is translated
  config.sampling.regress_on_source = True
  expected = local_regression.regress_on_source(source, translated, source[..., 0] > 0,
                                                int(config.seed))
  np.testing.assert_array_equal(methods.source_regression_finish(config, source, translated),
                                expected)
