"""The maps of the source before it becomes the LMI reference (lmi_jax/reference_map.py),
against quantities computed here from the synthetic slice's own ground truth."""

import numpy as np
import pytest

from configs import default
from lmi_jax import lmi, reference_map
from lmi_jax.errors import InputError

SIZE = 64


def head_slice(seed: int = 0, bias: float = 0.5):
  """A (SIZE, SIZE) slice: a disk of three tissues (0.55 / 0.6 / 0.65, a faint contrast)
  times a smooth bias field rising by `bias` from left to right, plus a little noise, on a
  uniform dark background; and the (SIZE, SIZE) int labels (0 background, 1..3 tissues)."""
  yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
  radius = np.hypot(yy, xx)
  labels = np.where(radius < 26, 1 + (np.sin(xx / 3.0) + np.cos(yy / 4.0) > 0)
                    + (np.sin(xx / 5.0 + yy / 6.0) > 0.3), 0)
  tissue = np.choose(labels, [0.02, 0.55, 0.6, 0.65])
  field = np.where(labels > 0, 1.0 + bias * (xx + SIZE / 2) / SIZE, 1.0)
  noise = np.random.default_rng(seed).normal(0, 0.003, labels.shape) * (labels > 0)
  return (tissue * field + noise).astype(np.float32), labels


def within_class_spread(image: np.ndarray, labels: np.ndarray) -> float:
  """Mean over tissue classes of the std / mean inside the class (eroded away from the rim)."""
  inner = labels * (np.hypot(*(np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2)) < 20)
  return float(np.mean([image[inner == k].std() / image[inner == k].mean() for k in (1, 2, 3)]))


def test_brain_stretch_maps_brain_percentiles_and_keeps_order():
  image, labels = head_slice()
  out = reference_map.brain_stretch(image)
  brain = labels > 0
  lo, hi = np.percentile(image[brain], [1.0, 99.0])
  inside = image[brain]
  expected = np.clip(0.2 + 0.8 * (inside - lo) / (hi - lo), 0.2, 1.0)
  np.testing.assert_allclose(out[brain], expected, atol=1e-5)
  assert out[~brain].max() <= 0.2 + 1e-6
  order = np.argsort(image.ravel(), kind="stable")
  assert np.all(np.diff(out.ravel()[order]) >= -1e-6)  # monotone over the whole slice


def test_flatten_removes_a_smooth_bias_field():
  image, labels = head_slice(bias=0.5)
  clean, _ = head_slice(bias=0.0)
  before = within_class_spread(image, labels)
  after = within_class_spread(reference_map.flatten(image, sigma=0.094), labels)
  assert before > 3 * within_class_spread(clean, labels)  # the field dominates the spread
  assert after < 0.5 * before
  # The class order survives: 0.55 < 0.6 < 0.65 after flattening, as in the clean slice.
  flat = reference_map.flatten(image, sigma=0.094)
  inner = labels * (np.hypot(*(np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2)) < 20)
  means = [flat[inner == k].mean() for k in (1, 2, 3)]
  assert means[0] < means[1] < means[2]


def test_flat_stretch_spreads_faint_classes_over_more_bins():
  # What the default map is for: the gap between classes, in LMI's 16 bins after minmax.
  image, labels = head_slice(bias=0.5)
  inner = labels * (np.hypot(*(np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2)) < 20)

  def separation(x):
    x = (x - x.min()) / (x.max() - x.min())
    means = [x[inner == k].mean() for k in (1, 2, 3)]
    spread = np.mean([x[inner == k].std() for k in (1, 2, 3)])
    return (means[2] - means[0]) / spread

  mapped = reference_map.map_reference(image[None, ..., None], "flat_stretch", 0.094)[0, ..., 0]
  assert separation(mapped) > 2 * separation(image)


def test_constant_slice_and_none_are_returned_as_is():
  flat = np.full((1, 16, 16, 1), 0.3, np.float32)
  for name in reference_map.REFERENCE_MAPS:
    np.testing.assert_array_equal(reference_map.map_reference(flat, name, 0.1), flat)
  image, _ = head_slice()
  np.testing.assert_array_equal(
      reference_map.map_reference(image[None, ..., None], "none", 0.1)[0, ..., 0], image)


def test_config_names_the_bad_key():
  config = default.get_config()
  config.lmi.reference_map = "n4"
  with pytest.raises(InputError, match="lmi.reference_map='n4'"):
    lmi.from_config(config.lmi)
  config.lmi.reference_map = "flat_stretch"
  config.lmi.flatten_sigma = 0.0
  with pytest.raises(InputError, match="lmi.flatten_sigma"):
    lmi.from_config(config.lmi)
