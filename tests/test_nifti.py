"""Tests of NIfTI input and output on small volumes the tests write themselves."""

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from configs import default
from lmi_jax.data import dataset, load_dataset, nifti, pairs, phantom, registration
from lmi_jax.data import slices as slicing
from lmi_jax.errors import InputError


def rigid(angle_deg: float, axis: tuple[float, float, float], shift: tuple[float, float, float],
          centre: np.ndarray) -> np.ndarray:
  """(4, 4) rotation by angle about axis through centre (mm), then a shift (mm)."""
  axis = np.asarray(axis, float) / np.linalg.norm(axis)
  k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
  a = np.deg2rad(angle_deg)
  rotation = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k  # Rodrigues.
  matrix = np.eye(4)
  matrix[:3, :3] = rotation
  matrix[:3, 3] = centre - rotation @ centre + np.asarray(shift)
  return matrix


def save(path, volume: np.ndarray, affine: np.ndarray) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  nib.save(nib.Nifti1Image(np.asarray(volume, np.float32), affine), str(path))
  return str(path)


def resample_onto(volume: np.ndarray, affine: np.ndarray, shape, new_affine: np.ndarray) -> np.ndarray:
  """volume (on affine) sampled on the grid (shape, new_affine), trilinear, 0 outside."""
  to_old = np.linalg.inv(affine) @ new_affine
  return ndimage.affine_transform(volume, to_old[:3, :3], to_old[:3, 3], output_shape=shape, order=1)


@pytest.fixture(scope="module")
def head():
  """A phantom subject on 4 mm voxels: PD, T1, T2, labels, affine."""
  data = default.get_config().data
  data.phantom.voxel_mm = 4.0
  return phantom.phantom_subject(11, data)


def data_config(root, dataset_name: str = "ixi", **overrides):
  config = default.get_config()
  data = config.data
  data.dataset, data.root, data.image_size = dataset_name, str(root), 32
  data.num_train_subjects, data.num_val_subjects, data.num_test_subjects = 2, 0, 1
  for key, value in overrides.items():
    data[key] = value
  return config


def write_ixi(root, head, numbers, modalities=("T1", "PD"), folders=True) -> None:
  for n in numbers:
    for m in modalities:
      folder = os.path.join(root, f"IXI-{m}") if folders else str(root)
      path = os.path.join(folder, f"IXI{n:03d}-Guys-{n:04d}-{m}.nii.gz")
      save(path, head[m] * (1 + 0.1 * n), head["affine"])


def test_ixi_pairs_by_subject_and_dataset(tmp_path, head):
  write_ixi(tmp_path, head, [2, 12, 13])
  # A modality the task does not use.
  save(tmp_path / "IXI-T2" / "IXI012-Guys-0012-T2.nii.gz", head["T2"], head["affine"])
  config = data_config(tmp_path)
  found = pairs.ixi_pairs(config.data)
  assert [(n, name) for n, name, _, _ in found] == [(2, "IXI002-Guys-0002"), (12, "IXI012-Guys-0012"),
                                                    (13, "IXI013-Guys-0013")]
  assert all(s.endswith("-PD.nii.gz") and t.endswith("-T1.nii.gz") for _, _, s, t in found)
  data = load_dataset(config, str(tmp_path / "work"))
  assert "labels" not in data["train"]
  assert data["train"]["source"].shape == (6, 32, 32, 1)
  assert data["test"]["target"].shape == (3, 32, 32, 1)
  assert set(np.concatenate([data[s]["subject"] for s in ("train", "test")])) == {2, 12, 13}


def test_ixi_flat_folder_and_missing_modality(tmp_path, head):
  write_ixi(tmp_path, head, [1, 2, 3], folders=False)
  write_ixi(tmp_path, head, [4], modalities=("T1",), folders=False)
  write_ixi(tmp_path, head, [5], modalities=("T2",), folders=False)
  config = data_config(tmp_path)
  with pytest.raises(InputError, match=r"IXI004-Guys-0004 \(no PD\); IXI005-Guys-0005 \(no PD, T1\)"
                                       r".*data.missing"):
    pairs.ixi_pairs(config.data)
  config.data.missing = "skip"
  assert [n for n, *_ in pairs.ixi_pairs(config.data)] == [1, 2, 3]


def test_generic_pairs_by_pattern_and_by_folder(tmp_path, head):
  for name in ("sub-a", "sub-b"):
    save(tmp_path / "flat" / f"{name}_PD.nii.gz", head["PD"], head["affine"])
    save(tmp_path / "flat" / f"{name}_T1w.nii", head["T1"], head["affine"])
    save(tmp_path / "folders" / name / "PD.nii.gz", head["PD"], head["affine"])
    save(tmp_path / "folders" / name / "T1.nii", head["T1"], head["affine"])
  flat = data_config(tmp_path / "flat", "nifti", source_glob="*_PD.nii.gz", target_glob="*_T1w.nii").data
  assert [(i, n) for i, n, _, _ in pairs.glob_pairs(flat)] == [(0, "sub-a"), (1, "sub-b")]
  folders = data_config(tmp_path / "folders", "nifti").data
  found = pairs.glob_pairs(folders)
  assert [n for _, n, _, _ in found] == ["sub-a", "sub-b"] and found[0][2].endswith("PD.nii.gz")
  config = data_config(tmp_path / "folders", "nifti", num_train_subjects=-1, num_test_subjects=1)
  data = load_dataset(config, str(tmp_path / "work"))  # -1: every subject the test split leaves.
  assert len(data["train"]["subject"]) == len(data["test"]["subject"]) == 3
  os.remove(tmp_path / "folders" / "sub-b" / "PD.nii.gz")
  with pytest.raises(InputError, match="sub-b"):
    pairs.glob_pairs(folders)


def test_oblique_source_is_resampled_onto_the_target_grid(tmp_path, head):
  shape, affine = head["T1"].shape, head["affine"]
  centre = affine[:3, :3] @ (np.array(shape) - 1) / 2 + affine[:3, 3]
  # An oblique 3 mm grid whose axes are also permuted and flipped against RAS.
  grid = np.array([[0, 0, -3.0, 0], [3.0, 0, 0, 0], [0, -3.0, 0, 0], [0, 0, 0, 1]])
  oblique = rigid(20, (1, 2, 3), (0, 0, 0), centre) @ grid
  oblique[:3, 3] = centre - oblique[:3, :3] @ (np.array([70, 70, 70]) - 1) / 2
  source = resample_onto(head["PD"], affine, (70, 70, 70), oblique)
  source_path = save(tmp_path / "pd.nii.gz", source, oblique)
  target_path = save(tmp_path / "t1.nii.gz", head["T1"], affine)
  volume, canonical = nifti.load_volume(source_path)
  assert nib.aff2axcodes(canonical) == ("R", "A", "S")
  data = data_config(tmp_path).data
  indices = slicing.slice_indices(shape[2], data.slice_range, data.slices_per_subject)
  pair = {"source": volume, "source_affine": canonical, "target": head["T1"], "target_affine": affine,
          "indices": indices, "source_name": source_path, "target_name": target_path}
  aligned = dataset.pair_slices(pair, data)["source"]
  direct = dataset.pair_slices(dict(pair, source=head["PD"], source_affine=affine), data)["source"]
  brain = direct > 0.2
  assert np.corrcoef(aligned[brain], direct[brain])[0, 1] > 0.9
  data.register = True  # Registration starts from the headers and must not spoil a good start.
  registered = dataset.pair_slices(pair, data)["source"]
  assert np.corrcoef(registered[brain], direct[brain])[0, 1] > 0.9


def test_registration_recovers_a_known_rigid_transform():
  data = default.get_config().data
  data.phantom.voxel_mm = 2.0
  head = phantom.phantom_subject(3, data)
  shape, affine = head["T1"].shape, head["affine"]
  centre = affine[:3, :3] @ (np.array(shape) - 1) / 2 + affine[:3, 3]
  truth = rigid(6.0, (1, 1, 0.5), (4.0, -3.0, 2.5), centre)
  # The PD volume's content, placed in the world by `truth`: world_source = truth @ world_target.
  found = registration.rigid_registration(head["T1"], affine, head["PD"], truth @ affine, seed=0)
  error = np.linalg.inv(truth) @ found
  angle = np.rad2deg(np.arccos(np.clip((np.trace(error[:3, :3]) - 1) / 2, -1, 1)))
  corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1)
  points = affine[:3, :3] @ corners + affine[:3, 3:]
  moved = (found[:3, :3] - truth[:3, :3]) @ points + (found[:3, 3:] - truth[:3, 3:])
  assert angle < 1.0
  assert np.linalg.norm(moved, axis=0).max() < 2.0  # One voxel, at the corners of the volume.


@pytest.mark.parametrize("four_d", [False, True])
def test_write_translation_round_trip_keeps_affine_shape_and_content(tmp_path, head, four_d):
  flipped = np.array([[0, -4.0, 0, 0], [0, 0, 4.0, 0], [4.0, 0, 0, 0], [0, 0, 0, 1]])
  affine = rigid(12, (0, 1, 1), (1, 2, 3), np.zeros(3)) @ flipped
  raw = head["PD"].transpose(2, 0, 1)  # Any content; the file's axes are not RAS.
  raw = ndimage.gaussian_filter(raw, 1.0)
  reference = save(tmp_path / "ref.nii.gz", raw[..., None] if four_d else raw, affine)
  slices, geometry = nifti.load_slices(reference, data_config(tmp_path).data)
  assert slices.shape == (raw.shape[0], 32, 32, 1)  # Canonical z is the file's first axis here.
  out = str(tmp_path / "out" / "translated.nii.gz")
  nifti.write_translation(slices, geometry, out)
  written, original = nib.load(out), nib.load(reference)
  np.testing.assert_allclose(written.affine, original.affine, atol=1e-5)
  assert written.shape == original.shape and written.get_data_dtype() == np.float32
  expected = slicing.normalize(raw, 0.0, 99.5)
  values = written.get_fdata().reshape(raw.shape)
  assert np.corrcoef(values.ravel(), expected.ravel())[0, 1] > 0.97
  nifti.write_translation(slices, reference, out)  # A path: all axial slices.
  np.testing.assert_allclose(nib.load(out).get_fdata().reshape(raw.shape), values, atol=1e-6)
  few, geometry = nifti.load_slices(reference, data_config(tmp_path).data, slice_indices=[5, 6])
  np.testing.assert_allclose(few, slices[5:7], atol=1e-6)
  nifti.write_translation(few[..., 0], geometry, out)
  partial = nib.load(out).get_fdata().reshape(raw.shape)
  assert partial[5:7].any() and not partial[:5].any() and not partial[7:].any()


def test_bad_volumes_raise_input_error_naming_the_file(tmp_path):
  eye = np.eye(4)
  smooth = np.random.default_rng(0).uniform(size=(6, 6, 6))
  cases = {
      "flat.nii.gz": (np.ones((8, 8)), "not one 3D volume"),
      "series.nii.gz": (np.stack([smooth, smooth], -1), "not one 3D volume"),
      "nan.nii.gz": (np.where(smooth > 0.9, np.nan, smooth), "NaN/Inf"),
      "zeros.nii.gz": (np.zeros((6, 6, 6)), "empty volume"),
  }
  for name, (volume, message) in cases.items():
    path = save(tmp_path / name, volume, eye)
    with pytest.raises(InputError, match=message) as caught:
      nifti.load_volume(path)
    assert name in str(caught.value)
  good = save(tmp_path / "good.nii.gz", smooth, eye)
  with open(good, "rb") as f:
    blob = gzip.decompress(f.read())
  (tmp_path / "garbage.nii.gz").write_bytes(b"not a nifti at all" * 10)
  (tmp_path / "truncated.nii.gz").write_bytes(gzip.compress(blob)[:-200])
  for name in ("garbage.nii.gz", "truncated.nii.gz", "absent.nii.gz"):
    with pytest.raises(InputError, match=name):
      nifti.load_volume(str(tmp_path / name))


def test_bad_folders_and_patterns(tmp_path):
  with pytest.raises(InputError, match="data.root is empty"):
    pairs.ixi_pairs(data_config("").data)
  with pytest.raises(InputError, match="no such folder"):
    load_dataset(data_config(tmp_path / "nowhere"), str(tmp_path / "work"))
  with pytest.raises(InputError, match="no IXI files of modality 'PD'"):
    pairs.ixi_pairs(data_config(tmp_path).data)
  with pytest.raises(InputError, match="no files match data.source_glob"):
    pairs.glob_pairs(data_config(tmp_path, "nifti", source_glob="*_PD.nii.gz").data)


def test_too_few_subjects_for_the_split(tmp_path, head):
  write_ixi(tmp_path, head, [1, 2])
  with pytest.raises(InputError, match="2 usable subjects"):
    load_dataset(data_config(tmp_path), str(tmp_path / "work"))


def test_source_outside_the_target_with_registration_off(tmp_path, head):
  affine = head["affine"]
  far = affine.copy()
  far[:3, 3] += (0.0, 0.0, 120.0)  # Headers that put the source far above the target.
  source_path = save(tmp_path / "pd.nii.gz", head["PD"], far)
  pair = {"source": head["PD"], "source_affine": far, "target": head["T1"], "target_affine": affine,
          "indices": [20, 22], "source_name": source_path, "target_name": "t1.nii.gz"}
  with pytest.raises(InputError, match="pd.nii.gz.*covers only.*data.register"):
    dataset.pair_slices(pair, data_config(tmp_path).data)
