"""How much tissue structure a source carries, and a warning when it is too little to translate.

LMI conditioning can only pass on the tissue boundaries that stand out of the source's noise.
`structure_score` estimates, without labels, a structure-to-noise ratio inside the brain of
source slices on the model's grid (the (H, W) slices the network sees):

  1. scored pixels: those of the brain mask whose local-mean window (below) lies at least
     90% inside the mask, so that the outline and the bias gradient along it do not count;
  2. noise: sigma = 1.4826 median|L * x| / 6 over the scored pixels, L the 3 x 3 kernel
     [[1, -2, 1], [-2, 4, -2], [1, -2, 1]] (Immerkaer 1996, with a median instead of a mean
     so that tissue edges, a minority of pixels, do not count as noise; |L| = 6 makes it the
     noise std for white Gaussian noise);
  3. structure: the high-pass residual x - G_s(x), G_s a Gaussian local mean taken inside
     the brain only (normalised convolution, s = max(H, W) / 21 pixels, 3 at 64 x 64), which
     removes the bias field but keeps tissue boundaries;
  4. score = sqrt(max(var(residual) - sigma^2, 0)) / sigma over the scored pixels of all
     slices pooled: the std of the structure that is not noise, in noise stds.

On the phantom sweep (bench/contrast_sweep.py, 64 x 64 validation slices) it falls with the
tissue CNR: PDw 5.3 at today's contrast (CNR 16), 1.8 at a quarter of it (CNR 4), 1.1 at an
eighth (CNR 2) and 0.75 when flat (bias curvature the local mean does not follow);
T2w 8.3 at today's contrast. `check_structure` warns below `THRESHOLD`, chosen there (see
its comment).
"""

import math

import numpy as np
from scipy import ndimage

from lmi_jax import masks
from lmi_jax.errors import InputError

# Chosen on the validation sweep (bench/contrast_sweep.py, docs/results.md "Faint contrast")
# with the shipped 64 x 64 model and lmi.reference_map=flat_stretch: at scores up to 1.8
# (contrast x0.25 and below) its tissue Dice is within 0.03 of what it gives for a flat
# source, i.e. the output no longer follows the source. Noisy sources whose contrast is intact
# score lower (noise x5: 1.4, x10: 0.8) though lmi still gains on them; the warning errs
# towards saying so (a lower threshold would miss contrast x0.25 and still flag noise x10).
THRESHOLD = 1.8

_LAPLACIAN = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
_MAD_TO_STD = 1.4826  # A Gaussian's std over its median absolute deviation.
_INSIDE = 0.9  # Share of a pixel's local-mean window that must lie in the brain to score it.
_MIN_PIXELS = 16  # Fewer scored pixels in a slice than this: the slice is left out.


def _as_stack(name: str, array: np.ndarray) -> np.ndarray:
  """(H, W), (H, W, 1), (N, H, W) or (N, H, W, 1) -> (N, H, W) float64; a trailing axis
  of 1 is a channel."""
  array = np.asarray(array)
  if array.ndim in (3, 4) and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim == 2:
    array = array[None]
  if array.ndim != 3:
    raise InputError(f"{name}: expected slices (H, W), (H, W, 1), (N, H, W) or (N, H, W, 1), "
                     f"got {array.shape}.")
  return array.astype(np.float64)


def brain_mask(source: np.ndarray) -> np.ndarray:
  """Per slice, its brain by `masks.otsu_filled`: the pixels above the slice's Otsu
  threshold with holes filled, for sources with a background of noise or of zeros.

  Args:
    source: (H, W), (H, W, 1), (N, H, W) or (N, H, W, 1).
  Returns:
    (H, W) bool for one slice, else (N, H, W).
  """
  stack = _as_stack("source", source)
  brains = np.stack([masks.otsu_filled(image)[0] for image in stack])
  single = np.ndim(source) == 2 or (np.ndim(source) == 3 and np.shape(source)[-1] == 1)
  return brains[0] if single else brains


def structure_score(source: np.ndarray, brain_mask: np.ndarray,
                    highpass_px: float | None = None) -> float:
  """Structure-to-noise ratio inside the brain (module docstring).

  Args:
    source: (H, W), (H, W, 1), (N, H, W) or (N, H, W, 1) slices as the model gets them.
    brain_mask: bool, the source's shape with or without its channel axis.
    highpass_px: the local mean's Gaussian std in pixels; None: max(H, W) / 21.
  Returns:
    The score (0 for a flat brain; inf for noise-free structure); NaN when no slice has
    enough brain (at least 16 pixels whose local-mean window lies 90% inside it).
  """
  stack = _as_stack("source", source)
  mask = np.asarray(brain_mask, bool)
  if mask.ndim in (3, 4) and mask.shape[-1] == 1:
    mask = mask[..., 0]
  if mask.ndim == 2:
    mask = mask[None]
  if mask.shape != stack.shape:
    raise InputError(f"brain_mask: shape {np.shape(brain_mask)} does not match the source's "
                     f"{np.shape(source)}.")
  sigma_px = max(stack.shape[1:]) / 21.0 if highpass_px is None else float(highpass_px)
  residual_sq, noise_sq, counted = 0.0, 0.0, 0
  for image, brain in zip(stack, mask):
    local, weight = masks.brain_mean(image, brain, sigma_px)
    # Near the outline the local mean reaches into the brain only on one side, where a bias
    # gradient makes it wrong: only pixels whose window lies mostly inside are scored.
    inner = brain & (weight > _INSIDE)
    count = int(inner.sum())
    if count < _MIN_PIXELS:
      continue
    residual = (image - local)[inner]
    residual_sq += float(np.sum((residual - residual.mean()) ** 2))
    laplace = ndimage.convolve(image, _LAPLACIAN, mode="reflect")[inner]
    noise_sq += count * (_MAD_TO_STD * float(np.median(np.abs(laplace))) / 6.0) ** 2
    counted += count
  if counted == 0:
    return math.nan
  residual_var, noise_var = residual_sq / counted, noise_sq / counted
  structure = math.sqrt(max(residual_var - noise_var, 0.0))
  if noise_var <= 1e-24:
    return math.inf if structure > 1e-12 else 0.0
  return structure / math.sqrt(noise_var)


def check_structure(values: float | dict[str, float], threshold: float = THRESHOLD,
                    name: str = "source") -> str | None:
  """A warning line when a structure score is below `threshold` (or could not be estimated).

  Args:
    values: `structure_score` of the whole input, or {part name: score} (e.g. per slice);
      the lowest counts and is named.
    threshold: `THRESHOLD` unless a model's own sweep gave another.
    name: the file or data set, for the message.
  Returns:
    The warning, or None when the source carries enough structure.
  """
  scores = values if isinstance(values, dict) else {"": values}
  if not scores:
    raise InputError(f"{name}: no structure score given.")
  part, score = min(scores.items(), key=lambda item: -math.inf if math.isnan(item[1]) else item[1])
  where = f"{name} ({part})" if part else name
  if math.isnan(score):
    return (f"{where}: no brain found to estimate its tissue structure; the translation may "
            "not be one. Check that the input is a brain scan.")
  if score >= threshold:
    return None
  return (f"{where}: tissue structure score {score:.2f} is below {threshold:.2f} (structure std "
          "over noise std inside the brain): the source shows too little tissue contrast for "
          "a translation; the output is likely the model's guess, not the source's anatomy.")
