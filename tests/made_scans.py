"""Tiny skull-stripped paired volumes in the BraTS layout, written by the tests, and the tiny
config that reads them; the fixtures that build them and a model trained on them are in
conftest.py, shared by the test files of the real-scan path."""

import os

import nibabel as nib
import numpy as np

from configs import default, tiny
from lmi_jax.data import phantom

LPS = np.diag([-4.0, -4.0, 4.0, 1.0])  # BraTS files are LPS; 4 mm voxels keep them tiny.


def save(path, volume, affine=LPS) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  nib.save(nib.Nifti1Image(np.asarray(volume, np.float32), affine), str(path))
  return str(path)


def write_cases(root) -> None:
  """Four subjects: <root>/case_i/{T1, FLAIR, GT_W}.nii.gz, background exactly 0."""
  data = default.get_config().data
  data.phantom.voxel_mm = 4.0
  for i in range(4):
    head = phantom.phantom_subject(20 + i, data, ("T1", "T2"))
    brain = head["labels"] > 0
    # Flip x and y: the files are LPS, the phantom RAS; values scale like scanner units.
    flip = lambda v: v[::-1, ::-1, :]
    tumour = np.zeros_like(brain)
    centre = np.array(brain.shape) // 2
    tumour[centre[0]:centre[0] + 4, centre[1] - 2:centre[1] + 2, :] = True  # A column: every slice.
    tumour &= brain
    save(root / f"case_{i}" / "T1.nii.gz", flip(300.0 * (1 + i) * head["T1"] * brain))
    save(root / f"case_{i}" / "FLAIR.nii.gz", flip(200.0 * head["T2"] * brain))
    save(root / f"case_{i}" / "GT_W.nii.gz", flip(tumour))


def brats_like(root, **overrides):
  config = tiny.get_config()
  data = config.data
  data.dataset, data.root, data.source, data.target = "nifti", str(root), "FLAIR", "T1"
  data.exclude_glob, data.mask, data.slice_select = "*/GT_W.nii*", "nonzero", "brain"
  data.min_brain_fraction, data.slices_per_subject = 0.5, 4
  data.num_train_subjects, data.num_val_subjects, data.num_test_subjects = 2, 1, 1
  config.eval.methods = ("lmi", "identity")
  for key, value in overrides.items():
    data[key] = value
  return config
