"""Image metrics of a translation against the true target: Dice of label maps, PSNR, SSIM,
edge correlation, and the through-plane consistency of a translated volume.

PSNR and SSIM are scikit-image's own functions with every setting passed explicitly
(`METRIC_SETTINGS`, printed in each report): SSIM is Wang et al. 2004's, a Gaussian window of
sigma 1.5 truncated at 3.5 sigma (11 x 11), K1 = 0.01, K2 = 0.03, population covariances.
A mask restricts either metric to its pixels (the MSE over them; the mean of the SSIM map
over them).

Images are float arrays in [0, 1]: slices (N, H, W, 1), one image (H, W) or (H, W, 1).
"""

import math
from collections.abc import Iterable

import numpy as np
from skimage import filters
from skimage import metrics as skmetrics

from lmi_jax.errors import InputError

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def settings(data_range: float) -> dict[str, str]:
  """The settings PSNR and SSIM are computed with, as reports print them."""
  return {
      "psnr": f"skimage.metrics.peak_signal_noise_ratio, data_range={data_range:g}",
      "ssim": (f"skimage.metrics.structural_similarity, data_range={data_range:g}, "
               f"gaussian_weights=True, sigma={SSIM_SIGMA}, truncate={SSIM_TRUNCATE}, "
               f"K1={SSIM_K1}, K2={SSIM_K2}, use_sample_covariance=False"),
      "edge_corr": "Pearson correlation of skimage.filters.sobel gradient magnitudes",
  }


def as_slices(name: str, array: np.ndarray) -> np.ndarray:
  """Checks an (N, H, W, 1) stack and returns it as float64 (N, H, W)."""
  array = np.asarray(array)
  if array.ndim != 4 or array.shape[-1] != 1:
    raise InputError(
        f"{name}: expected slices of shape (N, H, W, 1), got {array.shape}; "
        "pass single-channel NHWC images.")
  return array[..., 0].astype(np.float64)


def as_image(name: str, array: np.ndarray) -> np.ndarray:
  """Checks one (H, W) or (H, W, 1) image and returns it as float64 (H, W)."""
  array = np.asarray(array)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim != 2:
    raise InputError(f"{name}: expected one image (H, W) or (H, W, 1), got {array.shape}.")
  return array.astype(np.float64)


def as_mask(name: str, mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
  """Checks a boolean mask against the spatial `shape`; a trailing channel of 1 is dropped."""
  if mask is None:
    return None
  mask = np.asarray(mask)
  if mask.ndim == len(shape) + 1 and mask.shape[-1] == 1:
    mask = mask[..., 0]
  if mask.shape != shape:
    raise InputError(f"{name}: mask shape {mask.shape} does not match the images' {shape}.")
  return mask.astype(bool)


def dice(
    pred_labels: np.ndarray,
    ref_labels: np.ndarray,
    classes: Iterable[int],
) -> tuple[dict[int, float], float]:
  """Per-class Dice 2|P∩R| / (|P|+|R|) of one image's label maps, and their mean.

  A class absent from both maps has no defined Dice: it is NaN and left out of the mean
  (the mean is NaN only when every class is absent).

  Args:
    pred_labels, ref_labels: (H, W) integer labels (any equal shapes work).
    classes: the labels to score, e.g. `segmenter.classes`.
  Returns:
    ({class: dice}, mean over the classes present).
  """
  pred_labels = np.asarray(pred_labels)
  ref_labels = np.asarray(ref_labels)
  if pred_labels.shape != ref_labels.shape:
    raise InputError(f"dice: label shapes differ, {pred_labels.shape} vs {ref_labels.shape}.")
  per_class = {}
  for c in classes:
    p, r = pred_labels == c, ref_labels == c
    total = int(p.sum()) + int(r.sum())
    per_class[int(c)] = 2.0 * int((p & r).sum()) / total if total else math.nan
  scored = [v for v in per_class.values() if not math.isnan(v)]
  return per_class, (float(np.mean(scored)) if scored else math.nan)


def psnr(
    x: np.ndarray,
    ref: np.ndarray,
    data_range: float,
    mask: np.ndarray | None = None,
) -> float:
  """Peak signal-to-noise ratio 10 log10(data_range^2 / MSE) of one image, in dB.

  Args:
    x, ref: (H, W) or (H, W, 1) images.
    data_range: the intensity span (1 for [0, 1] images; config `eval.data_range`).
    mask: optional (H, W) bool; the MSE is taken over its pixels only.
  Returns:
    PSNR in dB; inf where x equals ref; NaN for an empty mask (left out of summaries).
  """
  x, ref = as_image("x", x), as_image("ref", ref)
  if x.shape != ref.shape:
    raise InputError(f"psnr: image shapes differ, {x.shape} vs {ref.shape}.")
  mask = as_mask("psnr", mask, x.shape)
  if mask is not None:
    if not mask.any():
      return math.nan
    x, ref = x[mask], ref[mask]
  with np.errstate(divide="ignore"):  # Equal images: MSE 0, PSNR inf.
    return float(skmetrics.peak_signal_noise_ratio(ref, x, data_range=data_range))


def ssim_map(x: np.ndarray, ref: np.ndarray, data_range: float) -> np.ndarray:
  """Local SSIM of one image pair (scikit-image, the settings of `settings`).

  Args:
    x, ref: (H, W) or (H, W, 1) images, H and W at least the 11-pixel window.
    data_range: the intensity span, sets C1 = (K1 R)^2 and C2 = (K2 R)^2.
  Returns:
    (H, W) float64 local SSIM.
  """
  x, ref = as_image("x", x), as_image("ref", ref)
  if x.shape != ref.shape:
    raise InputError(f"ssim: image shapes differ, {x.shape} vs {ref.shape}.")
  window = 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1
  if min(x.shape) < window:
    raise InputError(
        f"ssim: images of shape {x.shape} are smaller than the {window}-pixel SSIM window; "
        "use a larger data.image_size.")
  _, local = skmetrics.structural_similarity(
      x, ref, data_range=data_range, gaussian_weights=True, sigma=SSIM_SIGMA,
      truncate=SSIM_TRUNCATE, K1=SSIM_K1, K2=SSIM_K2, use_sample_covariance=False, full=True)
  return local


def ssim(
    x: np.ndarray,
    ref: np.ndarray,
    data_range: float,
    mask: np.ndarray | None = None,
) -> float:
  """Mean SSIM of one image.

  Without a mask, the map is averaged away from a window-radius border strip (where the
  mirrored padding biases it), as scikit-image's own mean is. With a mask, the mean is over
  the mask's pixels of the whole map: a brain mask rarely reaches the border, and cropping
  could drop mask pixels.

  Args:
    x, ref: (H, W) or (H, W, 1) images.
    data_range: the intensity span (1 for [0, 1] images).
    mask: optional (H, W) bool.
  Returns:
    Mean SSIM, at most 1; NaN for an empty mask (left out of summaries).
  """
  local = ssim_map(x, ref, data_range)
  mask = as_mask("ssim", mask, local.shape)
  if mask is not None and not mask.any():
    return math.nan
  if mask is not None:
    return float(local[mask].mean())
  pad = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
  return float(local[pad:-pad, pad:-pad].mean())


def edge_correlation(x: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
  """Pearson correlation of the Sobel gradient magnitudes of two images, over `mask`'s pixels
  (all when None): 1 when x has ref's edges where ref has them, at any contrast or sign.

  Args:
    x, ref: (H, W) or (H, W, 1) images.
    mask: optional (H, W) bool.
  Returns:
    The correlation in [-1, 1]; NaN for an empty mask or a flat image (left out of summaries).
  """
  x_edges, ref_edges = (filters.sobel(as_image(name, a).astype(np.float64))
                        for name, a in (("x", x), ("ref", ref)))
  mask = as_mask("edge_correlation", mask, ref_edges.shape)
  if mask is not None:
    x_edges, ref_edges = x_edges[mask], ref_edges[mask]
  if x_edges.size < 2 or x_edges.std() == 0 or ref_edges.std() == 0:
    return math.nan
  return float(np.corrcoef(x_edges.ravel(), ref_edges.ravel())[0, 1])


def through_plane_ratio(volume: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
  """How much a translated volume changes from one axial slice to the next against the true
  volume: the mean squared difference of neighbouring slices inside `mask` (both slices
  inside), translation over truth. 1: as smooth across slices as the truth; above 1: slices
  that disagree (stripes in coronal and sagittal views).

  Args:
    volume, truth: (X, Y, Z) float volumes on one grid; mask: (X, Y, Z) bool.
  """
  both = mask[..., 1:] & mask[..., :-1]
  energy = lambda v: float(np.mean(np.diff(v.astype(np.float64), axis=2)[both] ** 2))
  truth_energy = energy(truth)
  return energy(volume) / truth_energy if truth_energy > 0 else math.nan
