"""Volumes in ITK's world and aligned to one another: SimpleITK images with a volume's
geometry (`to_sitk`, `from_sitk`), rigid Mattes-MI registration of a source to its target's
grid, and trilinear resampling of a source onto the target's axial slices."""

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from lmi_jax.data import nifti

if TYPE_CHECKING:
  import SimpleITK

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (ITK's world convention); its own inverse.


def to_sitk(volume: np.ndarray, affine: np.ndarray) -> "SimpleITK.Image":
  """A SimpleITK image with the volume's geometry in ITK's LPS world."""
  import SimpleITK as sitk  # A 50 MB install (GPU images lack it): loaded on first use.
  spacing = nifti.voxel_sizes(affine)
  lps = LPS @ affine
  image = sitk.GetImageFromArray(np.ascontiguousarray(volume.transpose(2, 1, 0), np.float32))
  image.SetSpacing(spacing.tolist())
  image.SetOrigin(lps[:3, 3].tolist())
  image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
  return image


def from_sitk(image: "SimpleITK.Image") -> tuple[np.ndarray, np.ndarray]:
  """A 3D SimpleITK image as an (X, Y, Z) float32 volume and its (4, 4) RAS affine: the inverse
  of `to_sitk`."""
  import SimpleITK as sitk
  volume = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)
  lps = np.eye(4)
  lps[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
  lps[:3, 3] = image.GetOrigin()
  return volume, LPS @ lps


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
  finest = float(nifti.voxel_sizes(fixed_affine).min())
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
  return LPS @ matrix @ LPS


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
