"""Which pixels are brain or foreground: every rule the project uses, in one place.

The rules differ because the images do, and each says which images it is for:

- `nonzero`: a skull-stripped scan, whose background is exactly 0 (data.mask="nonzero").
- `above`: pixels brighter than a known background level: the K-means foreground above
  eval.background_threshold, and at level 0 the brain of normalised skull-stripped slices
  and of a translation written back (their background is 0, and tissue that the
  normalisation or the model put at or below it is left out).
- `otsu`: a whole scan with a dark, noisy background (skull, air) and no brain mask:
  above Otsu's threshold of the volume.
- `head`: that foreground's largest connected region with its holes filled
  (data.mask="foreground"), so ventricles, sinuses and dark tissue inside the head count.
- `otsu_filled`: the brain of one slice for the reference maps and the structure score:
  above the slice's own Otsu threshold, holes filled.
- `labelled`: pixels that a ground-truth label map gives a tissue class.
- `from_priors`: voxels whose tissue probability maps (grey, white, CSF) sum above 0.5.

`brain_mean` averages an image over a brain's pixels only, so its background never leaks in.

Which one the data call for is chosen by data.mask where a volume is read
(`lmi_jax.data.slices.brain`) and where slices are scored (`lmi_jax.methods.brain_region`).
"""

import numpy as np
from scipy import ndimage
from skimage import filters


def nonzero(volume: np.ndarray) -> np.ndarray:
  """The brain of a skull-stripped scan, any shape: its voxels that are not exactly 0
  (tissue darker than the background, below 0 in some scans, still counts)."""
  return volume != 0


def above(images: np.ndarray, level: float) -> np.ndarray:
  """Pixels of `images` (any shape) brighter than the background `level`: the K-means
  foreground (level: the segmenter's background threshold) or, at level 0, the brain of
  normalised skull-stripped slices and translations, whose background is 0."""
  return images > level


def otsu(volume: np.ndarray) -> np.ndarray:
  """Voxels above the Otsu threshold of the whole `volume` (any shape, not constant):
  tissue against the dark background and noise of a scan without a brain mask."""
  return volume > filters.threshold_otsu(volume)


def head(volume: np.ndarray) -> np.ndarray:
  """The largest connected region of `otsu(volume)` (any shape) with its holes (ventricles,
  sinuses) filled; all False when nothing is above the threshold."""
  labelled_regions, count = ndimage.label(otsu(volume))
  if count == 0:
    return np.zeros(volume.shape, bool)
  largest = 1 + np.argmax(np.bincount(labelled_regions.ravel())[1:])
  return ndimage.binary_fill_holes(labelled_regions == largest)


def otsu_filled(image: np.ndarray) -> tuple[np.ndarray, float]:
  """The brain of one (H, W) slice, whatever its background (noise or zeros): the (H, W)
  bool pixels above the slice's Otsu threshold with holes filled, and that threshold; for a
  constant slice no pixel and its value."""
  if float(image.max()) <= float(image.min()):
    return np.zeros(image.shape, bool), float(image.min())
  threshold = float(filters.threshold_otsu(image))
  return ndimage.binary_fill_holes(image > threshold), threshold


def labelled(labels: np.ndarray) -> np.ndarray:
  """Pixels with a tissue class in an integer label map of any shape (0 is background)."""
  return labels > 0


def from_priors(priors: np.ndarray) -> np.ndarray:
  """(X, Y, Z) bool: where (T, X, Y, Z) tissue probability maps in [0, 1] sum above 0.5,
  i.e. where tissue is likelier than background."""
  return np.sum(priors, axis=0) > 0.5


def brain_mean(image: np.ndarray, brain: np.ndarray,
               sigma: float | tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
  """The Gaussian-weighted mean of an image of any shape over its `brain` pixels only
  (normalised convolution, width sigma pixels or one width per axis, scipy's 4-sigma
  truncation, reflected edges), and the brain's share of each window; both float64 of the
  image's shape. Where a window holds no brain the mean is 0."""
  weight = ndimage.gaussian_filter(brain.astype(np.float64), sigma)
  total = ndimage.gaussian_filter(np.where(brain, image, 0.0).astype(np.float64), sigma)
  return total / np.maximum(weight, 1e-12), weight
