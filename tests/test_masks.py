"""The brain / foreground rules (lmi_jax/masks.py), each against masks built independently
in NumPy from images whose brain is known."""

import numpy as np

from lmi_jax import masks


def ball(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
  """Bool: the grid points of `shape` within `radius` of `centre`."""
  grid = np.indices(shape).astype(np.float64)
  offsets = grid - np.reshape(centre, (-1,) + (1,) * len(shape))
  return np.sqrt(np.sum(offsets ** 2, axis=0)) <= radius


def test_nonzero_keeps_tissue_below_zero_and_drops_only_exact_zeros():
  volume = np.array([[0.0, 0.3, -0.2], [0.0, -0.0, 1e-30]], np.float32)
  expected = np.array([[v != 0.0 for v in row] for row in volume.tolist()])
  np.testing.assert_array_equal(masks.nonzero(volume), expected)


def test_above_compares_in_the_images_precision():
  # 0.05 is not a float32: a float32 pixel at float32(0.05) is not above the float32 level.
  images = np.array([0.0, np.float32(0.05), np.nextafter(np.float32(0.05), np.float32(1)), 1.0],
                    np.float32)
  np.testing.assert_array_equal(masks.above(images, 0.05), [False, False, True, True])
  np.testing.assert_array_equal(masks.above(images, 0.0), [False, True, True, True])


def test_otsu_splits_a_flat_background_from_tissue_whatever_their_share():
  rng = np.random.default_rng(0)
  for share in (0.1, 0.5, 0.8):
    bright = rng.random((20, 20, 6)) < share
    volume = np.where(bright, 1.0 + 0.5 * rng.random(bright.shape), 0.1)
    np.testing.assert_array_equal(masks.otsu(volume), bright)


def test_head_is_the_largest_region_with_its_holes_filled():
  shape = (32, 32, 32)
  outer = ball(shape, (16, 16, 16), 11)
  inner = ball(shape, (16, 16, 16), 5)
  speck = ball(shape, (2, 2, 2), 1.5)  # Bright, but not connected to the head.
  rng = np.random.default_rng(1)
  volume = np.where(outer & ~inner | speck, 1.0 + 0.3 * rng.random(shape), 0.0)
  np.testing.assert_array_equal(masks.head(volume), outer)
  assert not masks.head(np.zeros(shape)).any()


def test_otsu_filled_gives_the_slice_brain_and_its_threshold():
  disk = ball((40, 40), (20, 18), 12)
  ventricle = ball((40, 40), (20, 18), 3)
  image = np.where(disk & ~ventricle, 0.8, 0.0)
  brain, threshold = masks.otsu_filled(image)
  np.testing.assert_array_equal(brain, disk)
  assert 0.0 <= threshold < 0.8
  brain, threshold = masks.otsu_filled(np.full((5, 5), 0.3))
  assert not brain.any() and threshold == 0.3


def test_labelled_and_priors():
  labels = np.array([[0, 1, 2], [3, 0, 0]])
  np.testing.assert_array_equal(masks.labelled(labels), labels != 0)
  priors = np.array([[[0.1, 0.3]], [[0.2, 0.25]], [[0.1, 0.0]]])[..., None]  # (T, 1, 2, 1)
  expected = np.array([[0.4 > 0.5, 0.55 > 0.5]])[..., None]
  np.testing.assert_array_equal(masks.from_priors(priors), expected)


def test_brain_mean_averages_over_the_brain_only_as_a_brute_force_weighted_sum():
  rng = np.random.default_rng(0)
  sigma, radius = 1.5, int(4 * 1.5 + 0.5)
  brain = ball((40, 36), (20, 17), 9)
  # A bright background that must not leak into the rim of the brain.
  image = np.where(brain, rng.uniform(0, 1, brain.shape), 50.0)
  offsets = np.arange(-radius, radius + 1)
  kernel = np.exp(-offsets ** 2 / (2 * sigma ** 2))
  kernel /= kernel.sum()
  total, weight = np.zeros(brain.shape), np.zeros(brain.shape)
  for i, di in enumerate(offsets):
    for j, dj in enumerate(offsets):
      shifted = lambda a: np.roll(a, (di, dj), axis=(0, 1))  # The brain is far from the edges.
      total += kernel[i] * kernel[j] * shifted(np.where(brain, image, 0.0))
      weight += kernel[i] * kernel[j] * shifted(brain.astype(np.float64))
  mean, share = masks.brain_mean(image, brain, sigma)
  np.testing.assert_allclose(share, weight, atol=1e-12)
  inside = weight > 1e-9
  np.testing.assert_allclose(mean[inside], total[inside] / weight[inside], rtol=1e-9)
  assert mean[brain].max() <= 1.0
