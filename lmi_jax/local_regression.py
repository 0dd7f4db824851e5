"""A translation made a function of its source's local appearance, fitted per volume.

The reverse SDE places tissue boundaries where the prior's samples put them, blurred and
jittered by its noise, although the source shows them sharply. Fitting one regression from the
source's local features (intensity, brain means at three scales, edges, local spread) to the
translation, over all brain pixels of a volume, and replacing the translation by its
prediction keeps what the translation says about each kind of local source appearance (its
contrast mapping, learnt zero-shot by the LMI-guided prior) and drops what varies between
pixels that look alike in the source (the sampler's noise and misplaced edges). It generalises
the guided filter of `methods.source_guided_finish` (a linear map per window) to one
non-linear map per volume. No target-contrast image of the subject is seen: the fit's target
is the translation itself.

Features are 2-D, per slice, so slices never mix and thick-slice volumes behave like thin
ones; one fit serves a whole stack. docs/results.md, "The translation regressed on its source".
"""

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
  from sklearn import ensemble

from lmi_jax import masks

SCALES = (1.0, 2.0, 4.0)  # Pixels: brain means at these widths.
EDGE_SCALES = (1.0, 2.0)  # Pixels: gradient magnitude and Laplacian at these widths.
SPREAD_SCALE = 2.0  # Pixels: the local standard deviation's width.
FIT_PIXELS = 400_000  # Pixels drawn for the fit (a 1 mm brain holds 1-1.5 million): 18 s a volume.
MAX_ITER = 300  # Boosting rounds (early stopping usually ends sooner).


def _in_plane(images: np.ndarray, sigma: float, order: tuple[int, int] = (0, 0)) -> np.ndarray:
  """Gaussian filter (or derivative of the given order) of (N, H, W) along H and W only."""
  return ndimage.gaussian_filter(images, (0.0, sigma, sigma), order=(0,) + order)


def local_features(images: np.ndarray, brain: np.ndarray) -> np.ndarray:
  """(M, 9) float32 features of the M `brain` pixels of (N, H, W) slices, each slice on its
  own: the intensity; brain means (`masks.brain_mean`, background excluded) at `SCALES`;
  gradient magnitude and Laplacian of Gaussian at `EDGE_SCALES`; the local standard
  deviation at `SPREAD_SCALE`."""
  image = np.where(brain, images, 0.0).astype(np.float64)
  mean = lambda x, s: masks.brain_mean(x, brain, (0.0, s, s))[0]
  means = {s: mean(image, s) for s in {*SCALES, SPREAD_SCALE}}
  features = [image] + [means[s] for s in SCALES]
  for sigma in EDGE_SCALES:
    dy, dx = _in_plane(image, sigma, (1, 0)), _in_plane(image, sigma, (0, 1))
    laplacian = _in_plane(image, sigma, (2, 0)) + _in_plane(image, sigma, (0, 2))
    features += [np.hypot(dy, dx), laplacian]
  spread = mean(image ** 2, SPREAD_SCALE) - means[SPREAD_SCALE] ** 2
  features.append(np.sqrt(np.maximum(spread, 0.0)))
  return np.stack([f[brain] for f in features], axis=1).astype(np.float32)


def fit_regressor(features: np.ndarray, targets: np.ndarray,
                  seed: int) -> "ensemble.HistGradientBoostingRegressor":
  """Gradient-boosted trees from (M, F) features to (M,) targets, fitted on at most
  `FIT_PIXELS` of them drawn with `seed` (the trees' early-stopping split uses it too)."""
  # Imported here: sklearn.ensemble loads its OpenMP tree code, which a run that never
  # regresses (sampling.regress_on_source off, as in configs/default.py) has no use for.
  from sklearn import ensemble
  keep = np.random.default_rng(seed).permutation(len(targets))[:FIT_PIXELS]
  model = ensemble.HistGradientBoostingRegressor(max_iter=MAX_ITER, random_state=seed)
  return model.fit(features[keep], targets[keep])


def regress_on_source(source: np.ndarray, translated: np.ndarray, brain: np.ndarray | None,
                      seed: int) -> np.ndarray:
  """(N, H, W, 1) translation of (N, H, W, 1) sources replaced inside `brain` ((N, H, W)
  bool; None: every pixel) by a regression of it on the sources' `local_features`, fitted
  on this stack alone; clipped to [0, 1]; outside the brain unchanged."""
  region = np.ones(source.shape[:3], bool) if brain is None else np.asarray(brain, bool)
  out = np.array(translated, np.float32, copy=True)
  if region.sum() < 2:
    return out
  features = local_features(source[..., 0], region)
  model = fit_regressor(features, translated[..., 0][region], seed)
  out[..., 0][region] = np.clip(model.predict(features), 0.0, 1.0)
  return out
