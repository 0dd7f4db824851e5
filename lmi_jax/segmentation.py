"""K-means tissue segmentation fitted on target-modality training slices only.

The segmenter is fitted on target training slices (the paper's "trained solely on the target
modality") and then applied unchanged to the true target and to every translation. Two
protocols: the project's (`fit_segmenter`: k tissue classes over the foreground, background
its own label 0) and the paper's (`fit_paper_segmenter`: k clusters over the whole slice,
background included). `segment_by_order` is the other way round, for the `source_kmeans`
method: a source volume clustered on its own and its clusters named by the source contrast's
known tissue order.

Labels are int32 (N, H, W): 0 background, 1..k classes ordered by centroid intensity (for
T1w and k=3: 1 CSF, 2 GM, 3 WM).
"""

import dataclasses
import json
from typing import NamedTuple

import ml_collections
import numpy as np

from lmi_jax import masks
from lmi_jax.errors import InputError
from lmi_jax.files import atomic_write
from lmi_jax.metrics import as_slices

# The paper protocol's threshold: below every [0, 1] intensity, so no pixel is background.
WHOLE_SLICE = -1.0


@dataclasses.dataclass(frozen=True)
class KMeansSegmenter:
  """A fitted intensity K-means: tissue class j+1 is the cluster of centroids[j].

  centroids: k cluster centres, ascending, in the images' [0, 1] intensity scale.
  background_threshold: pixels with intensity <= it are background (label 0).
  """

  centroids: tuple[float, ...]
  background_threshold: float

  @property
  def k(self) -> int:
    return len(self.centroids)

  @property
  def classes(self) -> tuple[int, ...]:
    """The tissue labels 1..k (background 0 excluded)."""
    return tuple(range(1, self.k + 1))


def fit_kmeans(
    train_target_slices: np.ndarray,
    k: int,
    seed: int,
    background_threshold: float = 0.05,
    max_pixels: int = 200_000,
    n_init: int = 10,
) -> KMeansSegmenter:
  """Fits intensity K-means on the foreground of target-modality training slices.

  Background (intensity <= background_threshold) is its own label and is not clustered:
  otherwise the large dark background would take a cluster and leave k-1 for tissue.
  At most `max_pixels` foreground pixels are drawn (seeded) so fitting cost does not
  grow with the data set; the same seed gives the same centroids.

  Args:
    train_target_slices: (N, H, W, 1) target-modality training slices in [0, 1].
    k: number of tissue clusters (config `eval.kmeans_clusters`).
    seed: seeds both the pixel sample and the K-means initialisation.
    background_threshold: config `eval.background_threshold`.
    max_pixels: config `eval.kmeans_max_pixels`.
    n_init: K-means restarts (config `eval.kmeans_n_init`).
  Returns:
    The segmenter, centroids sorted ascending.
  """
  if k < 1:
    raise InputError(f"eval.kmeans_clusters must be >= 1, got {k}.")
  if max_pixels < k:
    raise InputError(f"eval.kmeans_max_pixels must be >= eval.kmeans_clusters ({k}), got {max_pixels}.")
  if n_init < 1:
    raise InputError(f"eval.kmeans_n_init must be >= 1, got {n_init}.")
  slices = as_slices("train_target_slices", train_target_slices)
  values = slices[masks.above(slices, background_threshold)]
  if np.unique(values).size < k:
    raise InputError(
        f"train_target_slices: fewer than eval.kmeans_clusters={k} distinct intensities above "
        f"eval.background_threshold={background_threshold}; lower the threshold or check the data.")
  return KMeansSegmenter(_centroids(values, k, seed, max_pixels, n_init), float(background_threshold))


def _kmeans(points: np.ndarray, k: int, seed: int, max_pixels: int, n_init: int):
  """A scikit-learn K-means of (M, d) points, fitted on at most max_pixels of them drawn with
  `seed`."""
  # Imported here: scikit-learn costs seconds of start-up, which a run that ends on a
  # config error should not pay.
  from sklearn.cluster import KMeans
  if len(points) > max_pixels:
    points = points[np.random.default_rng(seed).choice(len(points), max_pixels, replace=False)]
  return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(points)


def _centroids(values: np.ndarray, k: int, seed: int, max_pixels: int,
               n_init: int) -> tuple[float, ...]:
  """Ascending centres of the K-means of (M,) intensities (`_kmeans`)."""
  kmeans = _kmeans(values[:, None], k, seed, max_pixels, n_init)
  return tuple(float(c) for c in np.sort(kmeans.cluster_centers_[:, 0]))


def fit_segmenter(config: ml_collections.ConfigDict, train_target: np.ndarray) -> KMeansSegmenter:
  """`fit_kmeans` with the settings of the config's `eval` section, on (N, H, W, 1) target
  training slices only."""
  return fit_kmeans(
      train_target, int(config.eval.kmeans_clusters), int(config.seed),
      background_threshold=float(config.eval.background_threshold),
      max_pixels=int(config.eval.kmeans_max_pixels), n_init=int(config.eval.kmeans_n_init))


def fit_paper_segmenter(config: ml_collections.ConfigDict,
                        train_target: np.ndarray) -> KMeansSegmenter:
  """The paper's Dice protocol: `eval.paper_clusters` K-means clusters over every pixel of
  (N, H, W, 1) target training slices, background included (the dark background takes a
  cluster of its own)."""
  return fit_kmeans(
      train_target, int(config.eval.paper_clusters), int(config.seed),
      background_threshold=WHOLE_SLICE, max_pixels=int(config.eval.kmeans_max_pixels),
      n_init=int(config.eval.kmeans_n_init))


class Segmenters(NamedTuple):
  """What scoring segments with: the tissue K-means (Dice) and the paper protocol's (None when
  eval.paper_clusters is 0)."""
  tissue: KMeansSegmenter
  paper: KMeansSegmenter | None


def fit_segmenters(config: ml_collections.ConfigDict, train_target: np.ndarray) -> Segmenters:
  """Both segmenters of the config, fitted on (N, H, W, 1) target training slices only."""
  paper = (fit_paper_segmenter(config, train_target) if int(config.eval.paper_clusters) > 0
           else None)
  return Segmenters(fit_segmenter(config, train_target), paper)


def write_segmenter(segmenter: KMeansSegmenter, path: str) -> None:
  """The segmenter as JSON ({"centroids", "background_threshold"}), written atomically."""
  atomic_write(path, json.dumps(dataclasses.asdict(segmenter), indent=2).encode("utf-8"))


def read_segmenter(path: str) -> KMeansSegmenter:
  """A segmenter written by `write_segmenter`."""
  try:
    with open(path) as f:
      stored = json.load(f)
    return KMeansSegmenter(tuple(float(c) for c in stored["centroids"]),
                           float(stored["background_threshold"]))
  except (OSError, ValueError, KeyError, TypeError) as exc:
    raise InputError(f"{path}: not a K-means file ({exc}); delete it to fit it again.") from exc


def foreground_mask(segmenter: KMeansSegmenter, images: np.ndarray) -> np.ndarray:
  """(N, H, W, 1) images -> (N, H, W) bool: the pixels the segmenter labels, those above its
  background threshold (`masks.above`)."""
  return masks.above(as_slices("images", images), segmenter.background_threshold)


def segment(
    segmenter: KMeansSegmenter,
    images: np.ndarray,
    foreground: np.ndarray | None = None,
) -> np.ndarray:
  """Labels each foreground pixel with its nearest centroid's class; background is 0.

  Args:
    segmenter: from `fit_kmeans`.
    images: (N, H, W, 1) in [0, 1].
    foreground: (N, H, W) bool; None uses `foreground_mask(segmenter, images)`. Passing
      the true target's foreground makes segmentations of different translations differ
      only in tissue classes, not in where the head ends.
  Returns:
    (N, H, W) int32 labels in 0..k.
  """
  slices = as_slices("images", images)
  if foreground is None:
    foreground = foreground_mask(segmenter, images)
  foreground = np.asarray(foreground, dtype=bool)
  if foreground.shape != slices.shape:
    raise InputError(f"foreground: shape {foreground.shape} does not match the images' {slices.shape}.")
  # Centroids are sorted, so in 1-D the nearest one is found between midpoints.
  midpoints = np.diff(np.asarray(segmenter.centroids)) / 2 + np.asarray(segmenter.centroids[:-1])
  tissue = np.searchsorted(midpoints, slices).astype(np.int32) + 1
  return np.where(foreground, tissue, 0).astype(np.int32)


def check_source_order(order: object, k: int) -> tuple[int, ...]:
  """`data.source_order` as a tuple, checked to name each tissue class 1..k exactly once.

  Entry j is the target class of the source's j-th darkest cluster (for a T1w target and k=3:
  1 CSF, 2 GM, 3 WM), so T2w and PDw (WM < GM < CSF) are (3, 2, 1) and FLAIR
  (CSF < WM < GM) is (1, 3, 2).
  """
  valid = (isinstance(order, (tuple, list))
           and all(isinstance(c, int) and not isinstance(c, bool) for c in order)
           and sorted(order) == list(range(1, k + 1)))
  if not valid:
    raise InputError(
        f"data.source_order = {order!r}: give each tissue class 1..{k} (eval.kmeans_clusters) "
        "once, the source's darkest cluster's class first; for a T1w target: T2w and PDw "
        "(3, 2, 1), FLAIR (1, 3, 2), T1w (1, 2, 3).")
  return tuple(order)


def segment_by_order(
    source: np.ndarray,
    foreground: np.ndarray,
    order: tuple[int, ...],
    seed: int,
    max_pixels: int = 200_000,
    n_init: int = 10,
) -> np.ndarray:
  """One volume segmented by a K-means of its own intensities, its clusters named by the
  source contrast's tissue order instead of by a target-contrast model.

  Args:
    source: (N, H, W, 1) slices of one volume in [0, 1].
    foreground: (N, H, W) bool, the pixels clustered and labelled (the brain).
    order: from `check_source_order`; len(order) clusters.
    seed, max_pixels, n_init: as `fit_kmeans`.
  Returns:
    (N, H, W) int32 labels: 0 outside `foreground`, else order[j] for the j-th darkest cluster.
  """
  slices = as_slices("source", source)
  foreground = np.asarray(foreground, dtype=bool)
  if foreground.shape != slices.shape:
    raise InputError(f"foreground: shape {foreground.shape} does not match the source's {slices.shape}.")
  k = len(order)
  values = slices[foreground]
  if np.unique(values).size < k:
    raise InputError(f"source: fewer than {k} distinct intensities in the brain of a volume; "
                     "it cannot be split into that many tissue classes.")
  own = KMeansSegmenter(_centroids(values, k, seed, max_pixels, n_init), WHOLE_SLICE)
  ranks = segment(own, source, foreground)
  return np.asarray((0, *order), np.int32)[ranks]


def segment_with_source(
    translation: np.ndarray,
    source: np.ndarray,
    foreground: np.ndarray,
    k: int,
    seed: int,
    max_pixels: int = 200_000,
    n_init: int = 10,
) -> np.ndarray:
  """One volume segmented by a K-means of its translation and its source together, each pixel
  a point (translated intensity, source intensity), the clusters named by their mean translated
  intensity.

  The translation says which tissue a cluster is (its target-contrast brightness, so no source
  tissue order is needed); the source, at its own sharpness, says where boundaries fall.

  Args:
    translation: (N, H, W, 1) target-contrast slices of one volume in [0, 1].
    source: (N, H, W, 1) the same slices of the source in [0, 1].
    foreground: (N, H, W) bool, the pixels clustered and labelled (the brain).
    k: tissue classes (config `eval.kmeans_clusters`).
    seed, max_pixels, n_init: as `fit_kmeans`.
  Returns:
    (N, H, W) int32 labels: 0 outside `foreground`, else 1..k by ascending mean translation.
  """
  translated, slices = as_slices("translation", translation), as_slices("source", source)
  foreground = np.asarray(foreground, dtype=bool)
  for name, array in (("source", slices), ("foreground", foreground)):
    if array.shape != translated.shape:
      raise InputError(f"{name}: shape {array.shape} does not match the translation's {translated.shape}.")
  points = np.stack([translated[foreground], slices[foreground]], axis=1)
  # A column with k distinct values makes k distinct pairs; the pairs' own unique (a sort of
  # millions of rows, seconds) is needed only when neither column has.
  per_column = max(np.unique(points[:, 0]).size, np.unique(points[:, 1]).size)
  if per_column < k and np.unique(points, axis=0).shape[0] < k:
    raise InputError(f"translation and source: fewer than {k} distinct intensity pairs in the "
                     "brain of a volume; it cannot be split into that many tissue classes.")
  kmeans = _kmeans(points, k, seed, max_pixels, n_init)
  clusters = kmeans.predict(points)
  classes = np.empty(k, np.int32)
  classes[np.argsort(kmeans.cluster_centers_[:, 0])] = np.arange(1, k + 1)
  labels = np.zeros(translated.shape, np.int32)
  labels[foreground] = classes[clusters]
  return labels


def labels_to_image(segmenter: KMeansSegmenter, labels: np.ndarray) -> np.ndarray:
  """(N, H, W) labels 0..k -> (N, H, W, 1) float32 image: class c at segmenter.centroids[c-1],
  background 0; `segment` with the same segmenter gives the labels back."""
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() > segmenter.k):
    raise InputError(f"labels: values span {labels.min()}..{labels.max()}, outside 0..{segmenter.k}.")
  return np.asarray((0.0, *segmenter.centroids), np.float32)[labels][..., None]
