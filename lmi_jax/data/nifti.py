"""NIfTI volumes: finding IXI or generic source/target pairs, loading, alignment, writing.

Volumes are read with nibabel and reoriented to canonical RAS (axes flipped and permuted only;
an oblique acquisition stays oblique in its affine). A source acquired on another grid than
its target is resampled onto the target's grid through the two affines; with `data.register`
a rigid Mattes mutual-information registration (SimpleITK) first refines the headers'
alignment. A source on the target's own grid is taken as aligned already. Translations go
back out with `load_slices` / `write_translation`, which use the reference file's own grid,
affine and header (see `lmi_jax.data.slices` for the geometry).
"""

import dataclasses
import glob
import gzip
import os
import re
import zlib
from collections.abc import Sequence

import ml_collections
import nibabel as nib
import numpy as np
from absl import logging
from nibabel import orientations
from scipy import ndimage

from lmi_jax import files
from lmi_jax.data import slices as slicing
from lmi_jax.errors import InputError

# IXI<id>-<site>-<num>-<MOD>.nii.gz; DTI files carry an extra -<direction> suffix.
IXI_NAME = re.compile(r"IXI(\d+)-([A-Za-z]+)-(\d+)-([A-Za-z0-9]+)(?:-\d+)?\.nii(?:\.gz)?")
_NII_SUFFIX = re.compile(r"\.nii(?:\.gz|\*)?$")
# Names nibabel reads by their extension; any other name is read by its content as NIfTI-1.
IMAGE_EXTENSION = re.compile(r"\.(nii|nii\.gz|mgz|mgh|hdr|img|hdr\.gz|img\.gz|mnc|par|rec)$",
                              re.IGNORECASE)
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError)
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (ITK's world convention); its own inverse.


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


def _require_root(data: ml_collections.ConfigDict) -> str:
  if not data.root:
    raise InputError(f"data.root is empty: set it to the folder holding the {data.dataset} volumes "
                     "(e.g. --config.data.root=/path/to/data).")
  if not os.path.isdir(data.root):
    raise InputError(f"data.root={data.root!r}: no such folder; point it at the folder with the "
                     "volumes.")
  return data.root


def _nifti_files(root: str) -> list[str]:
  """NIfTI files in root and in its immediate subfolders (one folder per modality)."""
  found = []
  for pattern in ("*.nii", "*.nii.gz", os.path.join("*", "*.nii"), os.path.join("*", "*.nii.gz")):
    found += glob.glob(os.path.join(root, pattern))
  return sorted(found)


def _resolve_missing(pairs: dict, names: dict, missing: dict, data: ml_collections.ConfigDict) -> None:
  """Raise on subjects lacking a modality, or drop them loudly with data.missing='skip'."""
  lines = [f"{names.get(s, s)} (no {', '.join(m)})" for s, m in sorted(missing.items())]
  if not lines:
    return
  if data.missing != "skip":
    shown = "; ".join(lines[:10]) + (f"; ... {len(lines) - 10} more" if len(lines) > 10 else "")
    raise InputError(f"data.root={data.root!r}: {len(lines)} subjects lack a modality: {shown}. "
                     "Add the files, remove those subjects, or set data.missing='skip'.")
  logging.warning("Skipping %d subjects lacking a modality: %s", len(lines), "; ".join(lines))
  for s in missing:
    pairs.pop(s, None)


def ixi_pairs(data: ml_collections.ConfigDict) -> list[tuple[int, str, str, str]]:
  """IXI source/target files under data.root (flat, or one folder per modality), by subject.

  Returns:
    [(IXI number, "IXI002-Guys-0828", source path, target path)] sorted by number.
  """
  root = _require_root(data)
  files: dict[int, dict[str, list[str]]] = {}
  names, foreign = {}, []
  for path in _nifti_files(root):
    match = IXI_NAME.fullmatch(os.path.basename(path))
    if not match:
      foreign.append(path)
      continue
    number, site, num, modality = match.groups()
    names[int(number)] = f"IXI{number}-{site}-{num}"
    files.setdefault(int(number), {}).setdefault(modality, []).append(path)
  if foreign:
    logging.warning("Ignoring %d NIfTI files not named IXI<id>-<site>-<num>-<MOD>.nii.gz, e.g. %s",
                    len(foreign), foreign[0])
  roles = (data.source, data.target)
  for modality in roles:
    if not any(modality in by_mod for by_mod in files.values()):
      raise InputError(f"data.root={root!r}: no IXI files of modality {modality!r} "
                       f"(expected names like IXI002-Guys-0828-{modality}.nii.gz); check data.root, "
                       "data.source and data.target.")
  pairs, missing = {}, {}
  for number, by_mod in files.items():
    for modality in roles:
      if len(by_mod.get(modality, [])) > 1:
        raise InputError(f"{names[number]}: several {modality} files {by_mod[modality]}; keep one.")
    lacking = [m for m in roles if m not in by_mod]
    if lacking:
      missing[number] = lacking
    else:
      pairs[number] = (by_mod[data.source][0], by_mod[data.target][0])
  _resolve_missing(pairs, names, missing, data)
  return [(n, names[n], *pairs[n]) for n in sorted(pairs)]


def _pattern(data: ml_collections.ConfigDict, role: str) -> str:
  """The glob of one role; the default is a folder per subject: <subject>/<modality>.nii[.gz]."""
  pattern = data.source_glob if role == "source" else data.target_glob
  return pattern or f"*/{data.source if role == 'source' else data.target}.nii*"


def _subject_name(relative: str, pattern: str) -> str | None:
  """What the wildcards of `pattern` matched in `relative` (extensions ignored), joined by '/'."""
  regex = "".join("([^/]*)" if c == "*" else "([^/])" if c == "?" else re.escape(c)
                  for c in _NII_SUFFIX.sub("", pattern))
  match = re.fullmatch(regex, _NII_SUFFIX.sub("", relative.replace(os.sep, "/")))
  return "/".join(dict.fromkeys(match.groups())) if match else None


def glob_pairs(data: ml_collections.ConfigDict) -> list[tuple[int, str, str, str]]:
  """Generic source/target pairs under data.root matched by data.source_glob / data.target_glob.

  The subject name is the text the wildcards (* and ?) match, so `*_PD.nii.gz` pairs with
  `*_T1.nii.gz` and `*/PD.nii*` (the default: one folder per subject) with `*/T1.nii*`.

  Returns:
    [(index, subject name, source path, target path)] sorted by name, index = position.
  """
  root = _require_root(data)
  found: dict[str, dict[str, str]] = {}
  for role in ("source", "target"):
    pattern = _pattern(data, role)
    paths = sorted(glob.glob(os.path.join(root, pattern)))
    if not paths:
      raise InputError(f"data.root={root!r}: no files match data.{role}_glob={pattern!r}; fix the "
                       "pattern (relative to data.root, wildcards * and ?) or the folder.")
    for path in paths:
      name = _subject_name(os.path.relpath(path, root), pattern)
      if name is None:
        raise InputError(f"{path}: matches data.{role}_glob={pattern!r} but not as a subject name; "
                         "use only * and ? as wildcards.")
      if role in found.setdefault(name, {}):
        raise InputError(f"{path} and {found[name][role]}: both are the {role} of subject {name!r}; "
                         f"make data.{role}_glob match one file per subject.")
      found[name][role] = path
  missing = {n: [r for r in ("source", "target") if r not in by_role] for n, by_role in found.items()}
  missing = {n: m for n, m in missing.items() if m}
  pairs = {n: (r["source"], r["target"]) for n, r in found.items() if n not in missing}
  _resolve_missing(pairs, {}, missing, data)
  return [(i, n, *pairs[n]) for i, n in enumerate(sorted(pairs))]


def exclude_paths(data: ml_collections.ConfigDict, names: Sequence[str]) -> dict[str, str]:
  """The data.exclude_glob mask file of each subject name ({} when the key is empty).

  Subjects are named as `glob_pairs` names them, by what the wildcards match.
  Raises InputError for a subject without exactly one mask.
  """
  if not data.exclude_glob:
    return {}
  root = _require_root(data)
  found: dict[str, list[str]] = {}
  for path in sorted(glob.glob(os.path.join(root, data.exclude_glob))):
    name = _subject_name(os.path.relpath(path, root), data.exclude_glob)
    if name is not None:
      found.setdefault(name, []).append(path)
  for name in names:
    if len(found.get(name, [])) != 1:
      what = "no file" if name not in found else f"{len(found[name])} files"
      raise InputError(f"data.exclude_glob={data.exclude_glob!r}: {what} for subject {name!r} under "
                       f"{root}; give every subject one mask, or set data.exclude_glob=''.")
  return {name: found[name][0] for name in names}


def same_grid(shape_a: Sequence[int], affine_a: np.ndarray, shape_b: Sequence[int],
              affine_b: np.ndarray) -> bool:
  """Whether two volumes share shape and affine (to 1e-3 mm)."""
  return tuple(shape_a) == tuple(shape_b) and np.allclose(affine_a, affine_b, atol=1e-3)


def to_sitk(volume: np.ndarray, affine: np.ndarray) -> "SimpleITK.Image":
  """A SimpleITK image with the volume's geometry in ITK's LPS world."""
  import SimpleITK as sitk  # Only registration needs it: a 50 MB install (GPU images lack it).
  spacing = voxel_sizes(affine)
  lps = _LPS @ affine
  image = sitk.GetImageFromArray(np.ascontiguousarray(volume.transpose(2, 1, 0), np.float32))
  image.SetSpacing(spacing.tolist())
  image.SetOrigin(lps[:3, 3].tolist())
  image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
  return image


def rigid_registration(fixed: np.ndarray, fixed_affine: np.ndarray, moving: np.ndarray,
                       moving_affine: np.ndarray, seed: int = 0) -> np.ndarray:
  """Rigid transform aligning `moving` to `fixed` by Mattes mutual information.

  Starts from the headers (identity in world coordinates) and refines over a pyramid whose
  coarsest level has about 4 mm voxels, with a fixed number of samples per level.

  Args:
    fixed, moving: (X, Y, Z) volumes with their (4, 4) RAS affines.
    seed: seed of the metric's random sampling.
  Returns:
    (4, 4) RAS world transform taking a point of the fixed image to the matching point of the
    moving image (world_moving = T @ world_fixed).
  """
  import SimpleITK as sitk  # See to_sitk.
  fixed_image, moving_image = to_sitk(fixed, fixed_affine), to_sitk(moving, moving_affine)
  finest = float(voxel_sizes(fixed_affine).min())
  shrinks = sorted({max(1, round(level / finest)) for level in (4.0, 2.0, 1.0)}, reverse=True)
  samples = 50_000  # Enough for a stable MI estimate; constant cost per level.
  method = sitk.ImageRegistrationMethod()
  method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
  method.SetMetricSamplingStrategy(method.RANDOM)
  method.SetMetricSamplingPercentagePerLevel(
      [min(1.0, samples * s**3 / fixed.size) for s in shrinks], seed)
  method.SetInterpolator(sitk.sitkLinear)
  method.SetOptimizerAsRegularStepGradientDescent(
      learningRate=2.0, minStep=1e-3, numberOfIterations=200, relaxationFactor=0.5)
  method.SetOptimizerScalesFromPhysicalShift()
  method.SetShrinkFactorsPerLevel(shrinks)
  method.SetSmoothingSigmasPerLevel([0.5 * s * finest for s in shrinks])  # mm, by default.
  transform = sitk.Euler3DTransform()
  centre = (np.array(fixed.shape, float) - 1) / 2  # ITK's index (i, j, k) is our (X, Y, Z).
  transform.SetCenter(fixed_image.TransformContinuousIndexToPhysicalPoint(centre.tolist()))
  method.SetInitialTransform(transform, inPlace=True)
  method.Execute(fixed_image, moving_image)
  matrix = np.eye(4)
  rotation = np.array(transform.GetMatrix()).reshape(3, 3)
  centre_lps, shift = np.array(transform.GetCenter()), np.array(transform.GetTranslation())
  matrix[:3, :3] = rotation
  matrix[:3, 3] = centre_lps + shift - rotation @ centre_lps
  return _LPS @ matrix @ _LPS


def resample_slices(volume: np.ndarray, affine: np.ndarray, target_shape: Sequence[int],
                    target_affine: np.ndarray, indices: Sequence[int],
                    world: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Axial slices of the target grid filled from `volume` (trilinear).

  Args:
    volume: (X', Y', Z') source on its grid `affine`.
    target_shape, target_affine: the (X, Y, Z) grid to sample on; indices: its axial slices.
    world: (4, 4) RAS transform from target to source world points (identity if None).
  Returns:
    values (X, Y, N) float32 (0 outside the source) and inside (X, Y, N) bool, where the
    source's field of view covers the target.
  """
  world = np.eye(4) if world is None else world
  to_source = np.linalg.inv(affine) @ world @ target_affine
  grid = np.stack(np.meshgrid(np.arange(target_shape[0]), np.arange(target_shape[1]),
                              np.asarray(indices), indexing="ij")).reshape(3, -1)
  coords = to_source[:3, :3] @ grid + to_source[:3, 3:]
  shape = (target_shape[0], target_shape[1], len(indices))
  upper = np.array(volume.shape)[:, None] - 1
  inside = np.all((coords >= -0.5) & (coords <= upper + 0.5), axis=0).reshape(shape)
  values = ndimage.map_coordinates(volume, coords, order=1, mode="nearest").reshape(shape)
  return np.where(inside, values, 0.0).astype(np.float32), inside


@dataclasses.dataclass(frozen=True)
class SliceGeometry:
  """Where slices came from: the volume file and the canonical axial index of each slice."""
  reference_path: str
  indices: tuple[int, ...]


_MIN_ZERO_SHARE = 0.1  # A skull-stripped scan has at least this share of voxels exactly 0.


def check_skull_stripped(volume: np.ndarray, path: str, data: ml_collections.ConfigDict) -> None:
  """With data.mask="nonzero", raise InputError unless `volume` looks skull-stripped (its
  background exactly 0), so a raw head scan or noise is not taken for a brain."""
  if data.mask != "nonzero":
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
  slices = slicing.volume_to_slices(volume, voxel_sizes(affine), data.image_size, indices)
  return slices[..., None], SliceGeometry(path, tuple(int(z) for z in indices))


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
  volume = slicing.slices_to_volume(slices, canonical_shape, voxel_sizes(canonical_affine), indices)
  volume = to_file_order(volume, path)
  if keep is not None:
    volume = volume * keep
  write_like(volume, path, out_path)
  return volume
