"""Tests of the embedded phantom, the slice geometry and the dataset entry point (tiny sizes)."""

import os

import numpy as np
import pytest
from scipy import ndimage

from configs import default, ixi_pd2t1, phantom_pd2t1
from lmi_jax.data import dataset, load_dataset, phantom
from lmi_jax.data import slices as slicing
from lmi_jax.errors import InputError


def tiny_config(voxel_mm: float = 4.0):
  """The default config shrunk: 32 x 32 slices, 3 / 1 / 2 subjects, coarse phantom voxels."""
  config = default.get_config()
  config.data.image_size = 32
  config.data.num_train_subjects, config.data.num_val_subjects, config.data.num_test_subjects = 3, 1, 2
  config.data.phantom.voxel_mm = voxel_mm
  return config


@pytest.fixture(scope="module")
def subject():
  return phantom.phantom_subject(7, tiny_config(3.0).data)


def test_pure_tissue_signals_order_as_the_contrasts_promise():
  csf, gm, wm = range(3)
  s = phantom.tissue_signals(phantom.RELAXATION)
  assert s["T1"][wm] > s["T1"][gm] > s["T1"][csf]
  assert s["PD"][csf] > s["PD"][gm] > s["PD"][wm]
  assert s["T2"][csf] > s["T2"][gm] > s["T2"][wm]


@pytest.mark.parametrize("contrast,order", [("T1", (3, 2, 1)), ("PD", (1, 2, 3)), ("T2", (1, 2, 3))])
def test_labelled_tissue_means_order_per_contrast(subject, contrast, order):
  # Eroded labels: well inside a tissue, away from partial volume.
  means = {}
  for label in (1, 2, 3):
    core = ndimage.binary_erosion(subject["labels"] == label)
    means[label] = subject[contrast][core].mean()
  assert means[order[0]] > means[order[1]] > means[order[2]]


def test_subject_volumes_shapes_types_and_affine(subject):
  shape, affine = phantom.phantom_grid(3.0)
  for c in phantom.CONTRASTS:
    assert subject[c].shape == shape and subject[c].dtype == np.float32
    assert np.all(subject[c] >= 0)
  assert subject["labels"].dtype == np.int32 and set(np.unique(subject["labels"])) == {0, 1, 2, 3}
  np.testing.assert_allclose(subject["affine"], affine)
  np.testing.assert_allclose(np.diag(affine)[:3], 3.0)


def test_same_seed_same_subject_and_subjects_differ():
  data = tiny_config().data
  a, b, c = (phantom.phantom_subject(s, data) for s in (3, 3, 4))
  for key in phantom.CONTRASTS + ("labels",):
    np.testing.assert_array_equal(a[key], b[key])
  assert np.mean(a["labels"] != c["labels"]) > 0.02
  assert np.abs(a["T1"] - c["T1"]).mean() > 0.01 * a["T1"].mean()


def test_leaving_out_a_contrast_changes_nothing_else():
  data = tiny_config().data
  full = phantom.phantom_subject(5, data)
  part = phantom.phantom_subject(5, data, ("PD",))
  assert "T1" not in part and "T2" not in part
  np.testing.assert_array_equal(full["PD"], part["PD"])
  np.testing.assert_array_equal(full["labels"], part["labels"])


def test_a_slab_is_exactly_part_of_the_whole_subject(subject):
  slab = phantom.phantom_subject(7, tiny_config(3.0).data, z_range=(20, 24))
  for key in phantom.CONTRASTS + ("labels",):
    np.testing.assert_allclose(slab[key], subject[key][:, :, 20:24], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(slab["affine"][:3, 3], subject["affine"][:3, 3] + (0, 0, 60))


def test_labels_align_with_the_image(subject):
  # The share of T1w variance the labels explain peaks at zero offset.
  def explained(labels: np.ndarray) -> float:
    image, brain = subject["T1"], labels > 0
    means = ndimage.mean(image, labels, index=[1, 2, 3])
    fitted = np.choose(np.clip(labels - 1, 0, 2), means)
    return 1.0 - np.var((image - fitted)[brain]) / np.var(image[brain])
  aligned = explained(subject["labels"])
  for shift in ((2, 0, 0), (0, -2, 0), (0, 0, 2)):
    assert aligned > explained(np.roll(subject["labels"], shift, axis=(0, 1, 2))) + 0.1
  assert aligned > 0.6


def test_smooth_field_is_standardised_and_smooth():
  field = phantom.smooth_field(np.random.default_rng(0), (30, 40, 20), spacing=8.0)
  assert field.shape == (30, 40, 20) and field.dtype == np.float32
  assert abs(field.mean()) < 1e-5 and abs(field.std() - 1) < 1e-4
  assert np.abs(np.diff(field, axis=0)).max() < 0.5
  slab = phantom.smooth_field(np.random.default_rng(0), (30, 40, 20), spacing=8.0, z_range=(5, 9))
  np.testing.assert_allclose(slab, field[:, :, 5:9], atol=1e-5)


def test_slices_round_trip_with_anisotropic_voxels():
  x, y, z = np.meshgrid(np.linspace(0, 1, 40), np.linspace(0, 1, 60), np.arange(5), indexing="ij")
  volume = (0.5 + 0.25 * np.sin(3 * x) * np.cos(2 * y) + 0.05 * z).astype(np.float32)
  spacing = (1.5, 1.0, 2.0)  # 60 mm x 60 mm in plane: the slice fills the square canvas.
  slices = slicing.volume_to_slices(volume, spacing, 48, [1, 3])
  assert slices.shape == (2, 48, 48) and slices.dtype == np.float32
  # Anterior (high y) at the top, the subject's right (high x) on the right.
  np.testing.assert_allclose(slices[0, 0, -1], volume[-1, -1, 1], atol=0.02)
  back = slicing.slices_to_volume(slices, volume.shape, spacing, [1, 3])
  np.testing.assert_allclose(back[:, :, [1, 3]], volume[:, :, [1, 3]], atol=0.02)
  assert not back[:, :, 0].any()


def test_slice_indices_and_a_range_too_narrow():
  np.testing.assert_array_equal(slicing.slice_indices(101, (0.4, 0.6), 3), [40, 50, 60])
  with pytest.raises(InputError, match="slices_per_subject"):
    slicing.slice_indices(10, (0.5, 0.5), 3)


def test_normalize_maps_to_unit_range():
  volume = np.random.default_rng(0).uniform(0, 0.05, (20, 20, 20)).astype(np.float32)
  volume[5:15, 5:15, 5:15] += 3.0
  out = slicing.normalize(volume, 0.0, 99.0, "foreground")
  assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
  assert not out[0].any()  # Masked background.
  assert np.median(out[5:15, 5:15, 5:15]) > 0.9


def test_load_dataset_shapes_split_and_cache(tmp_path, monkeypatch):
  config = tiny_config()
  data = load_dataset(config, str(tmp_path))
  sizes = {"train": 3, "val": 1, "test": 2}
  assert set(data) == set(sizes)
  for split, n in sizes.items():
    arrays = data[split]
    count = n * config.data.slices_per_subject
    for role in ("source", "target"):
      assert arrays[role].shape == (count, 32, 32, 1) and arrays[role].dtype == np.float32
      assert arrays[role].min() >= 0.0 and arrays[role].max() <= 1.0
    assert arrays["labels"].shape == (count, 32, 32) and arrays["labels"].dtype == np.int32
    assert arrays["subject"].shape == (count,) and len(np.unique(arrays["subject"])) == n
  ids = [set(data[s]["subject"]) for s in sizes]
  assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
  # T1w target: white matter brighter than grey matter on the labelled slices.
  target, labels = data["train"]["target"][..., 0], data["train"]["labels"]
  assert target[labels == 3].mean() > target[labels == 2].mean() > target[labels == 1].mean()
  cache = os.listdir(tmp_path / "cache")
  assert len(cache) == 1 and cache[0].endswith(".npz")  # Nothing half-written left beside it.

  def fail(*args, **kwargs):
    raise AssertionError("the cache should have been read")
  monkeypatch.setattr(phantom, "phantom_subject", fail)
  again = load_dataset(config, str(tmp_path))
  np.testing.assert_array_equal(again["test"]["source"], data["test"]["source"])
  config.data.seed = 1  # A different data config is a different cache entry.
  assert dataset.cache_path(config.data, str(tmp_path), []) != os.path.join(tmp_path, "cache", cache[0])


def test_empty_validation_split(tmp_path):
  config = tiny_config()
  config.data.num_val_subjects = 0
  data = load_dataset(config, str(tmp_path))
  assert data["val"]["source"].shape == (0, 32, 32, 1) and data["val"]["labels"].shape == (0, 32, 32)


@pytest.mark.parametrize("key,value,message", [
    ("dataset", "brainweb", "data.dataset"),
    ("source", "FLAIR", "data.source"),
    ("slice_range", (0.7, 0.2), "data.slice_range"),
    ("mask", "brain", "data.mask"),
    ("num_train_subjects", -1, "data.num_train_subjects"),
])
def test_bad_data_config_names_the_key(tmp_path, key, value, message):
  config = tiny_config()
  config.data[key] = value
  with pytest.raises(InputError, match=message):
    load_dataset(config, str(tmp_path))


def test_experiment_configs_load():
  phantom_config, ixi_config = phantom_pd2t1.get_config(), ixi_pd2t1.get_config()
  for config, name in ((phantom_config, "phantom"), (ixi_config, "ixi")):
    data = config.data
    assert data.dataset == name and (data.source, data.target) == ("PD", "T1")
    assert data.image_size == 128 and (data.num_train_subjects, data.num_test_subjects) == (100, 25)
    assert set(data.keys()) == set(default.get_config().data.keys())
  assert ixi_config.data.register
