"""Volume files: reading and checking them, their slices, and writing translations back.

Volumes are read with nibabel and reoriented to canonical RAS (axes flipped and permuted only;
an oblique acquisition stays oblique in its affine). Finding a data set's files is
`lmi_jax.data.pairs`; aligning a source to its target's grid is `lmi_jax.data.registration`
(a source on the target's own grid, `same_grid`, is taken as aligned already). Translations go
back out with `load_slices` / `write_translation`, which use the reference file's own grid,
affine and header (see `lmi_jax.data.slices` for the geometry).
"""

import dataclasses
import gzip
import os
import re
import zlib
from collections.abc import Sequence

import ml_collections
import nibabel as nib
import numpy as np
from nibabel import orientations
from scipy import ndimage

from lmi_jax import files
from lmi_jax.data import slices as slicing
from lmi_jax.errors import InputError

# Names nibabel reads by their extension; any other name is read by its content as NIfTI-1.
IMAGE_EXTENSION = re.compile(r"\.(nii|nii\.gz|mgz|mgh|hdr|img|hdr\.gz|img\.gz|mnc|par|rec)$",
                              re.IGNORECASE)
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError)


def _open(path: str) -> nib.spatialimages.SpatialImage:
  """The image at `path` (NIfTI, or any format nibabel reads: .mgz, Analyze .hdr/.img), with
  a usable affine; a NIfTI file without a known extension is read by its content."""
  if os.path.isdir(path):
    raise InputError(f"{path}: is a folder, not a file; give one .nii or .nii.gz volume.")
  if not os.path.exists(path):
    raise InputError(f"{path}: no such file; check data.root and the file patterns.")
  if not os.path.isfile(path):
    raise InputError(f"{path}: not a regular file (a device, pipe or socket); give a .nii or "
                     ".nii.gz file saved on disk.")
  try:
    image = nib.load(path)
  except nib.filebasedimages.ImageFileError as exc:
    if IMAGE_EXTENSION.search(path):
      raise InputError(f"{path}: not a readable NIfTI file ({exc}); re-download or re-export it."
                       ) from exc
    image = _by_content(path, exc)
  except _READ_ERRORS as exc:
    raise InputError(f"{path}: not a readable NIfTI file ({exc}); re-download or re-export it."
                     ) from exc
  affine = np.asarray(image.affine, float)
  finite = bool(np.all(np.isfinite(affine)))
  if not finite or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
    raise InputError(f"{path}: its header's affine (voxel-to-world matrix) is "
                     f"{'not finite' if not finite else 'singular'}, so the "
                     "voxels have no place in space; fix the header's qform/sform (e.g. re-export "
                     "from the scanner's DICOM) and try again.")
  return image


def _by_content(path: str, error: Exception) -> nib.Nifti1Image:
  """A NIfTI-1 file whose name nibabel does not recognise (no .nii extension), by its bytes."""
  try:
    with open(path, "rb") as f:
      blob = f.read()
    if blob[:2] == b"\x1f\x8b":
      blob = gzip.decompress(blob)
    return nib.Nifti1Image.from_bytes(blob)
  except (*_READ_ERRORS, gzip.BadGzipFile, nib.wrapstruct.WrapStructError,
          nib.spatialimages.HeaderDataError) as exc:
    raise InputError(f"{path}: not a readable NIfTI file ({error}); give a .nii or .nii.gz "
                     "volume (or .mgz, Analyze .hdr/.img), or re-export it.") from exc


def _spatial_shape(image: nib.Nifti1Image, path: str) -> tuple[int, int, int]:
  """The 3D shape, allowing trailing singleton axes (X, Y, Z, 1); anything else is refused."""
  shape = tuple(image.shape)
  while len(shape) > 3 and shape[-1] == 1:
    shape = shape[:-1]
  if len(shape) != 3:
    raise InputError(f"{path}: image of shape {tuple(image.shape)} is not one 3D volume; "
                     "give 3D scans (split 4D series, e.g. with fslsplit, and pick one).")
  return shape


def load_volume(path: str, allow_constant: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """A 3D NIfTI volume in canonical RAS orientation, checked.

  Args:
    allow_constant: accept a volume whose voxels are all equal (a mask with nothing marked).
  Returns:
    volume (X, Y, Z) float32 and its (4, 4) affine (mm).
  Raises:
    InputError: missing, unreadable, not 3D, NaN/Inf voxels or (unless allowed) all voxels equal.
  """
  image = _open(path)
  shape = _spatial_shape(image, path)
  try:
    with np.errstate(over="ignore", invalid="ignore"):
      data = np.asarray(image.get_fdata(dtype=np.float32)).reshape(shape)
  except _READ_ERRORS as exc:
    raise InputError(f"{path}: voxel data cannot be read ({exc}); the file is corrupt or truncated, "
                     "re-download or re-export it.") from exc
  bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
  if bad:
    _check_scaling(image, path)
  if bad:
    raise InputError(f"{path}: {bad} NaN/Inf voxels; replace them (e.g. by 0) before use.")
  if data.size == 0 or (data.min() == data.max() and not allow_constant):
    raise InputError(f"{path}: empty volume (every voxel is {data.min() if data.size else 'absent'}); "
                     "check that the right file was given.")
  ornt = orientations.io_orientation(image.affine)  # Array axes -> RAS, flips and permutations.
  affine = image.affine @ orientations.inv_ornt_aff(ornt, shape)
  return np.ascontiguousarray(orientations.apply_orientation(data, ornt)), affine


def _check_scaling(image: nib.spatialimages.SpatialImage, path: str) -> None:
  """Raise InputError when non-finite voxels come from the header's scale factors, not the
  stored values (e.g. an scl_slope that overflows float32)."""
  try:
    raw = np.asarray(image.dataobj.get_unscaled())
  except (AttributeError, *_READ_ERRORS):
    return
  if np.issubdtype(raw.dtype, np.floating) and not np.all(np.isfinite(raw)):
    return
  slope = getattr(image.dataobj, "slope", 1.0)
  inter = getattr(image.dataobj, "inter", 0.0)
  raise InputError(f"{path}: its stored voxels are finite but its header's scale factors "
                   f"(scl_slope={slope:g}, scl_inter={inter:g}) make them overflow float32; fix "
                   "scl_slope / scl_inter in the header (e.g. set them to 1 and 0).")


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
  """(3,) voxel sizes in mm: the lengths of the affine's columns."""
  return np.linalg.norm(affine[:3, :3], axis=0)


def same_grid(shape_a: Sequence[int], affine_a: np.ndarray, shape_b: Sequence[int],
              affine_b: np.ndarray) -> bool:
  """Whether two volumes share shape and affine (to 1e-3 mm)."""
  return tuple(shape_a) == tuple(shape_b) and np.allclose(affine_a, affine_b, atol=1e-3)


@dataclasses.dataclass(frozen=True)
class SliceGeometry:
  """Where slices came from: the volume file and the canonical axial index of each slice."""
  reference_path: str
  indices: tuple[int, ...]
  pixel_mm: float = 0.0  # The slices' pixel size (data.pixel_mm; 0: the longer side spans them).


_MIN_ZERO_SHARE = 0.1  # A skull-stripped scan has at least this share of voxels exactly 0.


def mostly_zero(volume: np.ndarray) -> bool:
  """Whether at least 10% of `volume`'s voxels are exactly 0, as in a skull-stripped scan."""
  return float(np.mean(volume == 0)) >= _MIN_ZERO_SHARE


def check_skull_stripped(volume: np.ndarray, path: str, data: ml_collections.ConfigDict) -> None:
  """With data.mask="nonzero", raise InputError unless `volume` looks skull-stripped (its
  background exactly 0), so a raw head scan or noise is not taken for a brain."""
  if data.mask != "nonzero" or mostly_zero(volume):
    return
  zero_share = float(np.mean(volume == 0))
  if zero_share < _MIN_ZERO_SHARE:
    raise InputError(
        f"{path}: only {zero_share:.1%} of its voxels are 0, so it is not a skull-stripped brain "
        "(data.mask='nonzero' takes the brain as the non-zero voxels); skull-strip it first "
        "(e.g. FSL BET, HD-BET, SynthStrip), or with --mode=sample --input let lmi_jax extract "
        "the brain (data.brain_extraction='auto').")


# In a scan most tissue voxels lie inside the tissue (their 4 in-plane neighbours are tissue
# too, about 90% for a head at 1-2 mm); in uniform noise thresholded at Otsu's level about
# 0.5^4 = 6% do. Below this share the input is refused as "no anatomy".
_MIN_INTERIOR_SHARE = 0.3


def check_anatomy(volume: np.ndarray, path: str, data: ml_collections.ConfigDict) -> None:
  """Raise InputError unless the tissue voxels of `volume` (`slicing.brain`) form solid
  regions, as anatomy does, rather than scattered specks, as noise does."""
  tissue = slicing.brain(volume, data.mask)
  in_plane = np.zeros((3, 3, 3), bool)
  in_plane[1, :, 1] = in_plane[:, 1, 1] = True
  interior = ndimage.binary_erosion(tissue, in_plane).sum() / max(int(tissue.sum()), 1)
  if interior < _MIN_INTERIOR_SHARE:
    raise InputError(
        f"{path}: no tissue structure found: only {interior:.0%} of its tissue voxels have tissue "
        f"on all four in-plane sides (a scan has most, noise about 6%); check that the right "
        "file was given.")


def load_slices(path: str, data: ml_collections.ConfigDict,
                slice_indices: Sequence[int] | None = None,
                brain_only: bool = False) -> tuple[np.ndarray, SliceGeometry]:
  """Normalised axial slices of one skull-stripped (data.mask="nonzero") or whole volume on its
  own canonical grid: `volume_slices` of the checked file."""
  volume, affine = load_volume(path)
  check_skull_stripped(volume, path, data)
  return volume_slices(volume, affine, path, data, slice_indices, brain_only)


def volume_slices(volume: np.ndarray, affine: np.ndarray, path: str,
                  data: ml_collections.ConfigDict, slice_indices: Sequence[int] | None = None,
                  brain_only: bool = False) -> tuple[np.ndarray, SliceGeometry]:
  """Normalised axial slices of a canonical volume, ready to translate.

  Args:
    volume, affine: (X, Y, Z) canonical (RAS) volume of the file at `path` and its affine.
    data: the `data` config section (image_size, p_lo, p_hi, mask).
    slice_indices: axial indices of the canonical grid; None for all of them, or with
      `brain_only` for those whose tissue area (`slicing.brain`) is at least 1% of the
      largest slice's.
  Returns:
    (N, image_size, image_size, 1) float32 in [0, 1], and the geometry `write_translation`
    needs to put N translated slices back.
  """
  check_anatomy(volume, path, data)
  if slice_indices is not None:
    indices = np.asarray(slice_indices)
  elif brain_only:
    indices = slicing.brain_slices(slicing.brain(volume, data.mask), 0, 0.01, path)
  else:
    indices = np.arange(volume.shape[2])
  volume = slicing.normalize(volume, data.p_lo, data.p_hi, data.mask)
  slices = slicing.volume_to_slices(volume, voxel_sizes(affine), data.image_size, indices,
                                    pixel_mm=float(data.pixel_mm))
  return slices[..., None], SliceGeometry(path, tuple(int(z) for z in indices), float(data.pixel_mm))


def _orientation(path: str) -> tuple[np.ndarray, tuple[int, int, int]]:
  image = _open(path)
  return orientations.io_orientation(image.affine), _spatial_shape(image, path)


def to_file_order(volume: np.ndarray, path: str) -> np.ndarray:
  """A canonical (RAS) volume of the file at `path` in the file's own axis order."""
  ornt, shape = _orientation(path)
  back = orientations.ornt_transform(orientations.axcodes2ornt("RAS"), ornt)
  return orientations.apply_orientation(volume, back).reshape(shape)


def to_canonical(volume: np.ndarray, path: str) -> np.ndarray:
  """A volume in the axis order of the file at `path`, reoriented as `load_volume` reorients."""
  ornt, shape = _orientation(path)
  return orientations.apply_orientation(np.reshape(volume, shape), ornt)


def write_like(volume: np.ndarray, reference: str, out_path: str, dtype: type = np.float32) -> None:
  """Write `volume` (the reference file's own axis order and grid) as NIfTI with its affine, and
  its header when the reference is NIfTI too (.mgz or Analyze references give a new header)."""
  image_in = _open(reference)
  data = np.asarray(volume, dtype).reshape(_spatial_shape(image_in, reference))
  if isinstance(image_in, (nib.Nifti1Image, nib.Nifti2Image)):
    header = image_in.header.copy()
    header.set_data_dtype(dtype)
    image = type(image_in)(data.reshape(image_in.shape), image_in.affine, header)
  else:
    image = nib.Nifti1Image(data, image_in.affine)
    image.header.set_data_dtype(dtype)
  image.header.set_slope_inter(1.0, 0.0)
  with files.atomic_path(out_path) as temporary:
    image.to_filename(temporary)


def write_translation(slices: np.ndarray, reference: str | SliceGeometry, out_path: str,
                      keep: np.ndarray | None = None) -> np.ndarray:
  """Write translated slices as a NIfTI volume that overlays the reference in any viewer.

  The slices must have the geometry `load_slices` gives: axial slices of the reference's
  canonical (RAS) grid, padded to a square and resized (lmi_jax.data.slices). Each is cropped
  and resized back to its in-plane grid, put at its canonical z index, the volume reoriented to
  the reference's own axis order and saved with the reference's affine and header (data type
  float32, no scaling). Axial slices without a translated slice are 0.

  Args:
    slices: (N, H, W) or (N, H, W, 1) float, H == W.
    reference: the geometry `load_slices` returned, or the path of the volume the slices came
      from when they are all its axial slices (N == Z).
    out_path: .nii or .nii.gz file to write.
    keep: optional (X, Y, Z) bool in the reference file's axis order; voxels outside it are
      written as 0 (a skull-stripped input's brain: resizing back blurs across its edge).
  Returns:
    The volume written, (X, Y, Z) float32 in the reference file's own axis order.
  """
  if isinstance(reference, str):
    reference = SliceGeometry(reference, ())
  path = reference.reference_path
  image_in = _open(path)
  ornt, shape = orientations.io_orientation(image_in.affine), _spatial_shape(image_in, path)
  canonical_shape = tuple(int(shape[int(axis)]) for axis in np.argsort(ornt[:, 0]))
  canonical_affine = image_in.affine @ orientations.inv_ornt_aff(ornt, shape)
  slices = np.asarray(slices, np.float32).reshape(len(slices), *np.shape(slices)[1:3])
  indices = reference.indices or tuple(range(canonical_shape[2]))
  if len(indices) != len(slices):
    raise ValueError(f"{len(slices)} slices for {len(indices)} axial positions of {path}.")
  volume = slicing.slices_to_volume(slices, canonical_shape, voxel_sizes(canonical_affine), indices,
                                    reference.pixel_mm)
  volume = to_file_order(volume, path)
  if keep is not None:
    volume = volume * keep
  write_like(volume, path, out_path)
  return volume
