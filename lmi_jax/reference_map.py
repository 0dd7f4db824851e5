"""Maps of a source slice before it becomes the LMI reference of a translation.

LMI bins each patch's intensities after a per-image normalisation, so what it can see
depends on how the tissue classes spread over the bins. Two things hide a faint
contrast there: a smooth bias field, which spreads each class over a wider range than
the gap between classes, and a dark background, which takes most of the range. The maps
below undo both on the host (NumPy), slice by slice, the brain being `masks.otsu_filled`:

- `flatten`: divides the brain by its local mean (a normalised Gaussian convolution of
  width `sigma` x the image width), a bias-field correction that keeps the intensity order
  within each small LMI patch;
- `brain_stretch`: the brain's 1st..99th percentiles to [floor, 1] and the background
  (below the Otsu threshold) to [0, floor]; monotone.

`REFERENCE_MAPS` names the choices of `lmi.reference_map`; docs/results.md (faint contrast)
gives the sweep that chose the default. A map changes the reference only: the network and
the sample never see it.
"""

from typing import Callable

import numpy as np

from lmi_jax import masks
from lmi_jax.errors import InputError

STRETCH_FLOOR = 0.2  # The background's share of [0, 1] after `brain_stretch`.


def _brain_over_floor(image: np.ndarray, floor: float,
                      unit: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
  """One (H, W) slice: the brain at floor + (1 - floor) * unit(image, brain values) (unit in
  [0, 1]), the background [0, Otsu] -> [0, floor]. A constant slice is returned as is."""
  brain, threshold = masks.otsu_filled(image)
  if not brain.any():
    return image.astype(np.float32)
  inside = floor + (1.0 - floor) * np.clip(unit(image, image[brain]), 0.0, 1.0)
  outside = floor * np.clip(image / max(threshold, 1e-6), 0.0, 1.0)
  return np.where(brain, inside, np.minimum(outside, floor)).astype(np.float32)


def brain_stretch(image: np.ndarray, floor: float = STRETCH_FLOOR, p_lo: float = 1.0,
                  p_hi: float = 99.0) -> np.ndarray:
  """One (H, W) slice mapped piecewise linearly: [0, Otsu] -> [0, floor], the brain's
  p_lo..p_hi percentiles -> [floor, 1]; clipped to [0, 1]. A constant slice is returned as is."""

  def unit(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values, [p_lo, p_hi])
    return (x - lo) / max(hi - lo, 1e-6)
  return _brain_over_floor(image, floor, unit)


def brain_equalize(image: np.ndarray, floor: float = STRETCH_FLOOR) -> np.ndarray:
  """One (H, W) slice: brain intensities replaced by their mid-rank among the brain's,
  mapped to [floor, 1]; the background as in `brain_stretch`."""

  def unit(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    values = np.sort(values)
    ranks = (np.searchsorted(values, x, "left") + np.searchsorted(values, x, "right") - 1) / 2
    return ranks / max(len(values) - 1, 1)
  return _brain_over_floor(image, floor, unit)


def flatten(image: np.ndarray, sigma: float) -> np.ndarray:
  """One (H, W) slice divided inside its brain by the local brain mean (Gaussian of width
  sigma x W pixels, normalised convolution), times the brain's median; the background as is."""
  brain, _ = masks.otsu_filled(image)
  if not brain.any():
    return image.astype(np.float32)
  local, _ = masks.brain_mean(image, brain, sigma * image.shape[1])
  level = float(np.median(image[brain]))
  ratio = level * image / np.maximum(local, 1e-6 * max(level, 1e-6))
  return np.where(brain, ratio, image).astype(np.float32)


SliceMap = Callable[[np.ndarray, float], np.ndarray]
REFERENCE_MAPS: dict[str, SliceMap] = {
    "none": lambda image, sigma: image,
    "stretch": lambda image, sigma: brain_stretch(image),
    "equalize": lambda image, sigma: brain_equalize(image),
    "flat_stretch": lambda image, sigma: brain_stretch(flatten(image, sigma)),
    "flat_equalize": lambda image, sigma: brain_equalize(flatten(image, sigma)),
}


def check_name(name: str, key: str = "lmi.reference_map") -> None:
  """Raises InputError naming the config `key` when `name` is not a known map."""
  if name not in REFERENCE_MAPS:
    raise InputError(f"{key}={name!r}: choose one of {sorted(REFERENCE_MAPS)}.")


def map_reference(source: np.ndarray, name: str, sigma: float) -> np.ndarray:
  """(N, H, W, 1) sources in [0, 1] -> the (N, H, W, 1) float32 LMI references, each slice
  mapped by REFERENCE_MAPS[name] (sigma: `lmi.flatten_sigma`)."""
  check_name(name)
  source = np.asarray(source, np.float32)
  if name == "none":
    return source
  return np.stack([REFERENCE_MAPS[name](s[..., 0], sigma) for s in source])[..., None]
