"""The brain of a scan: found in a skull-stripped volume, or extracted from a raw head.

Skull-stripped scans come with a constant background (0, or another constant such as 0.02
after rescaling, or values within 0.1% of the range of it after interpolation): the brain is
then the one solid region that is not background (`stripped_brain`). A raw head (skull, eyes,
neck, noisy air) is not: its non-background voxels form thousands of specks and several
litres. Measured on the data beside the project: skull-stripped BraTS, OASIS and Ljubljana
volumes 1.1-1.7 L in one component; raw IXI and ICBM152 heads 5.6-7.0 L in 3,600-10,500.

A raw head's brain is extracted by registration (`extract_brain`): nilearn's bundled MNI152
T1w brain template (2 mm, no download) is aligned to the head by Mattes mutual information over
the template's brain and its edge (so any contrast, T1w, T2w, PDw or FLAIR, can be aligned):
an exhaustive search over a grid of shifts and scales (a head with a neck has its centre of
mass below the brain's, and most brains are smaller than the template's), then a similarity
transform, then a 12-parameter affine one. The template's brain mask is carried onto the
head's grid and grown by `margin_mm`, since the MNI152 mask is tighter than the usual brain
masks (it leaves out most of the CSF around the brain). The margin was chosen on 10
validation heads of ../shared/data/ixi_t1_heads_2mm and measured on the other 20
(`bench/brain_extraction.py`; docs/results.md, "Scans as they come").
"""

import functools
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from lmi_jax.data import nifti, registration

if TYPE_CHECKING:
  import SimpleITK

# data.brain_extraction: auto (raw heads only, for models of skull-stripped brains) | on | off.
MODES = ("auto", "on", "off")
# A skull-stripped brain is at most this many litres, and one component holding at least
# this share of the voxels that are not background (see the module docstring).
MAX_BRAIN_LITRES = 2.5
MIN_LARGEST_SHARE = 0.995
_MIN_BACKGROUND_SHARE = 0.1
_BACKGROUND_TOLERANCE = 1e-3  # Of the 0.5-99.5th percentile range.
# The exhaustive search's grid of template shifts from the head's centre of mass: its centre
# 20 mm up (a neck puts the centre of mass below the brain's), then 2 steps of 10 mm each way
# in y (anterior-posterior) and 3 in z.
_GRID_CENTRE_MM = 20.0
_GRID_STEPS = (2, 3)
_GRID_STEP_MM = 10.0
# Brains are mostly smaller than the MNI152 brain (1.9 L; the IXI heads' 1.2-1.7 L): starting
# at its size, the optimiser can fit the template to the skull instead (IXI079). Scales 0.8,
# 0.9 and 1.0 are searched.
_GRID_SCALE = 0.9
_GRID_SCALE_STEP = 0.1


def background_level(volume: np.ndarray) -> tuple[float, np.ndarray]:
  """The most common intensity of `volume`, to 0.1% of its range, and where it is.

  Values are binned in steps of 0.1% of the 0.5-99.5th percentile range, so a background
  blurred by interpolation (values within a step of 0) counts as one level.

  Args:
    volume: (X, Y, Z) float, finite.
  Returns:
    The level and the (X, Y, Z) bool background (voxels within one step of it).
  """
  lo, hi = np.percentile(volume, [0.5, 99.5])
  step = _BACKGROUND_TOLERANCE * max(float(hi - lo), np.finfo(np.float32).tiny)
  values, counts = np.unique(np.round(volume / step).astype(np.int64), return_counts=True)
  near = np.abs(volume - float(values[np.argmax(counts)]) * step) <= step
  level = float(np.median(volume[near]))  # The constant itself, not its bin's centre.
  return level, np.abs(volume - level) <= step


def stripped_brain(volume: np.ndarray, affine: np.ndarray,
                   background: np.ndarray | None = None) -> np.ndarray | None:
  """The brain of a skull-stripped `volume` (X, Y, Z) with its (4, 4) affine: the solid region
  that is not background, holes (voxels at the background level inside it) filled; None when
  the volume does not look skull-stripped (see the module docstring). `background` is
  `background_level`'s mask when the caller has it."""
  if background is None:
    _, background = background_level(volume)
  if background.mean() < _MIN_BACKGROUND_SHARE:
    return None
  labelled, count = ndimage.label(~background)
  if count == 0:
    return None
  sizes = np.bincount(labelled.ravel())[1:]
  largest = int(np.argmax(sizes))
  litres = sizes[largest] * float(np.prod(nifti.voxel_sizes(affine))) / 1e6
  if sizes[largest] < MIN_LARGEST_SHARE * sizes.sum() or litres > MAX_BRAIN_LITRES:
    return None
  return ndimage.binary_fill_holes(labelled == largest + 1)


def zero_background(volume: np.ndarray, brain: np.ndarray, level: float) -> np.ndarray:
  """(X, Y, Z) float32: `volume` less its background `level` (`background_level`) inside
  `brain`, kept above 0 there so that the brain stays its non-zero voxels, and 0 outside."""
  shifted = volume - level
  floor = 1e-6 * max(float(shifted[brain].max()), 1e-6)
  return np.where(brain, np.maximum(shifted, floor), 0.0).astype(np.float32)


@functools.cache
def _template() -> tuple["SimpleITK.Image", "SimpleITK.Image", "SimpleITK.Image"]:
  """nilearn's MNI152 T1w brain template and brain mask at 2 mm as SimpleITK images, and the
  mask grown by 8 mm: the region the registration metric samples (brain and its edge)."""
  import SimpleITK as sitk  # Loaded on first use: most runs never extract a brain.
  from nilearn import datasets
  template = datasets.load_mni152_template(resolution=2)
  mask = datasets.load_mni152_brain_mask(resolution=2)
  template_image = registration.to_sitk(np.asarray(template.get_fdata(), np.float32), template.affine)
  mask_image = registration.to_sitk(np.asarray(mask.get_fdata(), np.float32), mask.affine)
  region = sitk.BinaryDilate(sitk.Cast(mask_image > 0.5, sitk.sitkUInt8), [4, 4, 4])
  return template_image, mask_image, region


def _registration(region: "SimpleITK.Image", shrinks: list[int], seed: int
                  ) -> "SimpleITK.ImageRegistrationMethod":
  """Mattes MI over `region` (the template's brain and edge), on 20% of its voxels drawn with
  `seed`, in one thread (ITK's threads may sum the metric in a varying order): the same head
  gives the same mask every time."""
  import SimpleITK as sitk
  method = sitk.ImageRegistrationMethod()
  method.SetNumberOfThreads(1)
  method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
  method.SetMetricSamplingStrategy(method.RANDOM)
  method.SetMetricSamplingPercentage(0.2, seed + 1)  # SimpleITK's seed 0 is the wall clock.
  method.SetMetricFixedMask(region)
  method.SetInterpolator(sitk.sitkLinear)
  method.SetShrinkFactorsPerLevel(shrinks)
  method.SetSmoothingSigmasPerLevel([float(s) for s in shrinks])  # mm
  return method


def _affine_to_template(head: "SimpleITK.Image", seed: int) -> "SimpleITK.Transform":
  """The affine transform (template points -> head points) of best Mattes MI, found in three
  stages: a grid of shifts of the template (coarse, exhaustive), a similarity transform
  (rotation, shift, one scale), then all 12 parameters."""
  import SimpleITK as sitk
  template, _, region = _template()
  similarity = sitk.CenteredTransformInitializer(
      template, head, sitk.Similarity3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS)
  shift = np.array(similarity.GetTranslation())
  shift[2] += _GRID_CENTRE_MM  # ITK's world is LPS: +z is superior.
  similarity.SetTranslation(shift.tolist())
  similarity.SetScale(_GRID_SCALE)
  search = _registration(region, [4], seed)
  # Similarity3D's parameters: versor (3), translation (3), scale; y, z and the scale are
  # searched, in steps of stepLength times the optimizer scale.
  search.SetOptimizerAsExhaustive([0, 0, 0, 0, _GRID_STEPS[0], _GRID_STEPS[1], 1],
                                  stepLength=_GRID_STEP_MM)
  search.SetOptimizerScales([1.0] * 6 + [_GRID_SCALE_STEP / _GRID_STEP_MM])
  search.SetInitialTransform(similarity, inPlace=True)
  search.Execute(template, head)
  rigid = _registration(region, [4, 2, 1], seed)
  rigid.SetOptimizerAsRegularStepGradientDescent(
      learningRate=2.0, minStep=1e-3, numberOfIterations=200, relaxationFactor=0.5)
  rigid.SetOptimizerScalesFromPhysicalShift()
  rigid.SetInitialTransform(similarity, inPlace=True)
  rigid.Execute(template, head)
  affine = sitk.AffineTransform(3)
  affine.SetCenter(similarity.GetCenter())
  affine.SetMatrix(similarity.GetMatrix())
  affine.SetTranslation(similarity.GetTranslation())
  full = _registration(region, [2, 1], seed)
  full.SetOptimizerAsRegularStepGradientDescent(
      learningRate=1.0, minStep=1e-3, numberOfIterations=200, relaxationFactor=0.5)
  full.SetOptimizerScalesFromPhysicalShift()
  full.SetInitialTransform(affine, inPlace=True)
  full.Execute(template, head)
  return affine


def extract_brain(volume: np.ndarray, affine: np.ndarray, margin_mm: float,
                  seed: int = 0) -> np.ndarray:
  """The brain of a raw head scan of any contrast, by registration of the MNI152 brain.

  Args:
    volume: (X, Y, Z) float head, finite, canonical or not (the affine says where it is).
    affine: its (4, 4) RAS affine (mm).
    margin_mm: how far the template's brain mask is grown (see the module docstring).
    seed: seed of the registration metric's random sampling.
  Returns:
    (X, Y, Z) bool brain mask on the volume's grid: one component, holes filled.
  """
  import SimpleITK as sitk
  _, mask, _ = _template()
  head = registration.to_sitk(volume, affine)
  transform = _affine_to_template(head, seed)
  warped = sitk.Resample(mask, head, transform.GetInverse(), sitk.sitkLinear, 0.0)
  brain = sitk.GetArrayFromImage(warped).transpose(2, 1, 0) > 0.5
  if margin_mm > 0:
    brain = ndimage.distance_transform_edt(~brain, sampling=nifti.voxel_sizes(affine)) <= margin_mm
  labelled, count = ndimage.label(brain)
  if count > 1:
    brain = labelled == 1 + int(np.argmax(np.bincount(labelled.ravel())[1:]))
  return ndimage.binary_fill_holes(brain)
