"""Pure volume and slice operations: intensity normalisation, slice choice, 2D geometry.

Slice geometry (one place, used both ways). Volumes are canonical (RAS): axis 0 runs left to
right, axis 1 posterior to anterior, axis 2 inferior to superior. Axial slice z is
`rot90(volume[:, :, z])`, an (Y, X) image with anterior at the top and the subject's right on
the right. It is resized so both in-plane voxel sizes become one pixel size and centred on an
image_size x image_size canvas of zeros; `slices_to_volume` crops the canvas and resizes back.
The pixel size is either the one that makes the longer physical side span the canvas
(pixel_mm = 0: a fixed number of pixels per slice, whatever the field of view) or pixel_mm
itself (a fixed resolution: the scan's own for 1 mm scans at pixel_mm = 1; the field of view
must fit the canvas).
"""

from collections.abc import Sequence

import numpy as np
from skimage import transform

from lmi_jax import masks
from lmi_jax.errors import InputError

MASKS = ("none", "foreground", "nonzero")


def brain(volume: np.ndarray, mask: str) -> np.ndarray:
  """(X, Y, Z) bool tissue voxels by data.mask: the non-zero ones of a skull-stripped scan
  (mask "nonzero", `masks.nonzero`), else those above the volume's Otsu threshold (`masks.otsu`)."""
  return masks.nonzero(volume) if mask == "nonzero" else masks.otsu(volume)


def normalize(volume: np.ndarray, p_lo: float, p_hi: float, mask: str = "none") -> np.ndarray:
  """Linear map to [0, 1] with clipping.

  0 is the p_lo percentile of all voxels (default 0: the minimum, the background level) and 1 the
  p_hi percentile of the tissue voxels (`brain`), so the field of view's size does not move it.

  Args:
    volume: (X, Y, Z) float, finite, not constant.
    mask: "none"; "foreground" to zero everything outside `masks.head`; "nonzero" for a
      skull-stripped scan: 1 is set inside the brain (its non-zero voxels), which stay the
      only non-zero ones.
  Returns:
    (X, Y, Z) float32 in [0, 1].
  """
  tissue = brain(volume, mask)
  lo = np.percentile(volume, p_lo)
  hi = np.percentile(volume[tissue], p_hi)
  out = np.clip((volume - lo) / max(hi - lo, np.finfo(np.float32).tiny), 0.0, 1.0)
  if mask == "foreground":
    out = out * masks.head(volume)
  elif mask == "nonzero":
    out = out * tissue
  return out.astype(np.float32)


def slice_indices(num_slices: int, slice_range: Sequence[float], count: int) -> np.ndarray:
  """`count` axial indices evenly spread over the fractional range of a volume's z extent.

  Args:
    num_slices: Z, the volume's number of axial slices.
    slice_range: (lo, hi) fractions of the z extent, 0 inferior, 1 superior.
  Returns:
    (count,) int, distinct and increasing; the range's ends are included (its middle for one).
  """
  lo, hi = slice_range
  first, last = int(np.ceil(lo * (num_slices - 1))), int(np.floor(hi * (num_slices - 1)))
  if last - first + 1 < count:
    raise InputError(
        f"data.slice_range={tuple(slice_range)} covers {max(last - first + 1, 0)} of {num_slices} "
        f"axial slices but data.slices_per_subject={count}: widen the range or take fewer slices.")
  spread = np.linspace(first, last, count) if count > 1 else [(first + last) / 2]
  return np.round(spread).astype(np.int64)


def brain_slices(tissue: np.ndarray, count: int, min_fraction: float, name: str) -> np.ndarray:
  """`count` axial indices evenly spread over the slices that hold enough brain.

  A slice qualifies when its tissue area is at least `min_fraction` of the largest slice's;
  the indices run from the first to the last qualifying slice (config data.slice_select=brain:
  a volume cropped to the brain, or not, gives slices of the same anatomy).

  Args:
    tissue: (X, Y, Z) bool, e.g. `brain(volume, mask)`.
    count: slices wanted (0: every qualifying slice).
    name: the volume's file, for the error.
  Returns:
    (count,) int, distinct and increasing.
  """
  area = tissue.sum((0, 1))
  qualifying = np.flatnonzero(area >= min_fraction * area.max()) if area.max() else []
  if len(qualifying) == 0 or len(qualifying) < count:
    raise InputError(
        f"{name}: {len(qualifying)} axial slices hold at least data.min_brain_fraction="
        f"{min_fraction} of the largest slice's brain area, fewer than data.slices_per_subject="
        f"{count}; lower either, or check that the file is a brain scan.")
  if count == 0:
    return qualifying.astype(np.int64)
  spread = np.linspace(qualifying[0], qualifying[-1], count) if count > 1 else [np.median(qualifying)]
  chosen = np.round(spread).astype(np.int64)
  if len(np.unique(chosen)) < count:
    raise InputError(f"{name}: data.slices_per_subject={count} exceeds the "
                     f"{qualifying[-1] - qualifying[0] + 1} slices of its brain; take fewer.")
  return chosen


def _fit(shape: tuple[int, int], spacing: tuple[float, float], size: int,
         pixel_mm: float = 0.0) -> tuple[tuple[int, int], tuple[int, int]]:
  """Resized shape and canvas offset of an (H, W) slice with pixel spacing (dy, dx) on
  size x size, at pixel_mm per pixel (0: the longer side spans the canvas)."""
  extent = (shape[0] * spacing[0], shape[1] * spacing[1])
  if pixel_mm > 0:
    inner = tuple(max(1, round(e / pixel_mm)) for e in extent)
    if max(inner) > size:
      raise InputError(
          f"a field of view of {extent[0]:.0f} x {extent[1]:.0f} mm at data.pixel_mm={pixel_mm} "
          f"needs {inner[0]} x {inner[1]} pixels, more than data.image_size={size}; raise "
          "data.image_size (a multiple of 16) or crop the scan.")
  else:
    scale = size / max(extent)
    inner = tuple(int(min(size, max(1, round(e * scale)))) for e in extent)
  return inner, ((size - inner[0]) // 2, (size - inner[1]) // 2)


def volume_to_slices(volume: np.ndarray, spacing: Sequence[float], size: int, indices: Sequence[int],
                     order: int = 1, pixel_mm: float = 0.0) -> np.ndarray:
  """Axial slices on a square canvas (see the module docstring).

  Args:
    volume: (X, Y, Z) canonical volume; spacing: its (3,) voxel sizes in mm.
    order: interpolation order, 1 for images, 0 for labels.
    pixel_mm: the slices' pixel size (0: the longer side spans the canvas).
  Returns:
    (N, size, size) of volume's dtype (float32 for images), N = len(indices).
  """
  plane = (volume.shape[1], volume.shape[0])
  inner, (oy, ox) = _fit(plane, (spacing[1], spacing[0]), size, pixel_mm)
  shrinking = inner[0] < plane[0] or inner[1] < plane[1]
  out = np.zeros((len(indices), size, size), volume.dtype)
  for n, z in enumerate(indices):
    image = np.rot90(volume[:, :, z])
    resized = transform.resize(image, inner, order=order, preserve_range=True,
                               anti_aliasing=order > 0 and shrinking)
    out[n, oy:oy + inner[0], ox:ox + inner[1]] = resized
  return out


def slices_to_volume(slices: np.ndarray, shape: Sequence[int], spacing: Sequence[float],
                     indices: Sequence[int], pixel_mm: float = 0.0) -> np.ndarray:
  """Inverse of `volume_to_slices` for images: slices back onto a canonical grid.

  Args:
    slices: (N, size, size) float.
    shape: (X, Y, Z) of the canonical grid; spacing: its (3,) voxel sizes in mm.
    indices: (N,) axial index of each slice; other slices of the result stay 0.
    pixel_mm: the pixel size they were made with.
  Returns:
    (X, Y, Z) float32.
  """
  size = slices.shape[-1]
  plane = (shape[1], shape[0])
  inner, (oy, ox) = _fit(plane, (spacing[1], spacing[0]), size, pixel_mm)
  shrinking = plane[0] < inner[0] or plane[1] < inner[1]
  volume = np.zeros(tuple(shape), np.float32)
  for image, z in zip(slices, indices):
    crop = image[oy:oy + inner[0], ox:ox + inner[1]]
    resized = transform.resize(crop, plane, order=1, preserve_range=True, anti_aliasing=shrinking)
    volume[:, :, z] = np.rot90(resized, -1)
  return volume
