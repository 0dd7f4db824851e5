"""DICOM series as `--input`: found in a folder, read with SimpleITK's series reader (GDCM),
and turned into a NIfTI image with the patient's geometry (ITK's LPS world -> RAS).

A folder with one series is read as it is; a folder with several needs
`data.dicom_series` (a series description or UID): the error lists them.
"""

import dataclasses
import os

import nibabel as nib

from lmi_jax.data import registration
from lmi_jax.errors import InputError

_DESCRIPTION = "0008|103e"


@dataclasses.dataclass(frozen=True)
class Series:
  """One DICOM series of a folder."""
  uid: str
  description: str
  files: tuple[str, ...]


def find_series(folder: str) -> list[Series]:
  """The DICOM series directly in `folder` (none if it holds no DICOM files), by UID."""
  import SimpleITK as sitk  # A 50 MB install that only DICOM and registration need.
  found = []
  for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder):
    names = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))
    reader = sitk.ImageFileReader()
    reader.SetFileName(names[0])
    reader.ReadImageInformation()
    description = reader.GetMetaData(_DESCRIPTION).strip() if reader.HasMetaDataKey(_DESCRIPTION) else ""
    found.append(Series(uid, description, names))
  return found


def choose_series(folder: str, series: list[Series], wanted: str) -> Series:
  """The series of `folder` named by `wanted` (data.dicom_series: description or UID; "" when
  the folder holds one series)."""
  if not series:
    raise InputError(f"{folder}: no DICOM series in this folder; give a folder of one series' "
                     ".dcm files, or NIfTI files.")
  matches = [s for s in series if wanted in (s.uid, s.description)] if wanted else series
  if len(matches) == 1:
    return matches[0]
  listed = "; ".join(f"{s.description or '(no description)'} [{s.uid}, {len(s.files)} files]"
                     for s in series)
  what = f"no series is named {wanted!r}" if wanted and not matches else f"{len(matches)} series"
  raise InputError(f"{folder}: {what}: {listed}; choose one with "
                   "--config.data.dicom_series=<description or UID>.")


def read_series(folder: str, series: Series) -> nib.Nifti1Image:
  """The series as a NIfTI image (float32 voxels, the patient's RAS affine)."""
  import SimpleITK as sitk
  reader = sitk.ImageSeriesReader()
  reader.SetFileNames(list(series.files))
  try:
    image = reader.Execute()
  except RuntimeError as exc:
    raise InputError(f"{folder}: DICOM series {series.description or series.uid} cannot be read "
                     f"({str(exc).strip().splitlines()[-1]}); re-export it.") from exc
  if image.GetDimension() != 3 or min(image.GetSize()) < 2:
    raise InputError(f"{folder}: DICOM series {series.description or series.uid} is not one 3D "
                     f"volume (size {image.GetSize()}); give a series of several slices.")
  return nib.Nifti1Image(*registration.from_sitk(image))


def is_dicom_folder(folder: str) -> bool:
  """Whether `folder` directly holds at least one DICOM series (no header is read)."""
  import SimpleITK as sitk
  return os.path.isdir(folder) and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder))
