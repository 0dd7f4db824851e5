"""Scans the tests make: tiny skull-stripped paired volumes in the BraTS layout and the tiny
config that reads them (the fixtures that build them and a model trained on them are in
conftest.py), and DICOM series written from a volume with SimpleITK."""

import contextlib
import locale
import os

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from configs import default, tiny
from lmi_jax import train
from lmi_jax.data import phantom, registration

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


@contextlib.contextmanager
def kept_locale():
  """GDCM's DICOM writer sets the process's C locale, after which open() reads text as ASCII
  (and the reports' "±" fails in later tests): the locale is put back."""
  saved = locale.setlocale(locale.LC_ALL)
  try:
    yield
  finally:
    locale.setlocale(locale.LC_ALL, saved)


def write_dicom_series(volume: np.ndarray, affine: np.ndarray, folder: str,
                       description: str = "t2_tse_tra", uid: str = "1.2.826.0.1.3680043.2.1125.1") -> None:
  """`volume` (RAS affine) as a DICOM series, one file per slice, with SimpleITK."""
  os.makedirs(folder, exist_ok=True)
  image = registration.to_sitk(volume, affine)
  image = sitk.Cast(sitk.RescaleIntensity(image, 0, 4000), sitk.sitkInt16)
  writer = sitk.ImageFileWriter()
  writer.KeepOriginalImageUIDOn()
  direction = image.GetDirection()
  for z in range(image.GetDepth()):
    plane = image[:, :, z]
    tags = {
        "0008|0060": "MR", "0008|103e": description, "0020|000e": uid,
        "0020|000d": uid + ".0", "0020|0013": str(z + 1),
        "0020|0032": "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, z)))),
        "0020|0037": "\\".join(map(str, direction[0:7:3] + direction[1:8:3])),
        "0028|0030": "\\".join(map(str, image.GetSpacing()[:2])),
        "0018|0050": str(image.GetSpacing()[2]),
        "0008|0018": f"{uid}.{z + 1}",
    }
    for key, value in tags.items():
      plane.SetMetaData(key, value)
    writer.SetFileName(os.path.join(folder, f"{description}_{z:03d}.dcm"))
    with kept_locale():
      writer.Execute(plane)


def train_briefly(config, workdir: str):
  """`config` trained 4 steps into `workdir`, sampling set to 4 steps in batches of 4 (the
  tests' quickest model that translates): (config, workdir)."""
  config.training.num_steps = 4
  config.training.sample_every = 0
  config.sampling.num_steps = 4
  config.sampling.batch_size = 4
  train.train_score_model(config, workdir)
  return config, workdir
