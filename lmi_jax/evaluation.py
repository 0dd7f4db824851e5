"""Evaluation of translated slices: K-means tissue segmentation, Dice, PSNR, SSIM, reports.

The segmenter is fitted on target-modality training slices only (the paper's "trained
solely on the target modality") and then applied unchanged to the true target and to
every method's translation; Dice compares those segmentations (and, where ground-truth
tissue labels exist, each translation's segmentation with the labels).

Images are NumPy-convertible float arrays in [0, 1]; slices are (N, H, W, 1), one image
is (H, W) or (H, W, 1). Labels are int32 (N, H, W): 0 background, 1..k tissue classes
ordered by centroid intensity (for T1w and k=3: 1 CSF, 2 GM, 3 WM).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import ml_collections
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.cluster import KMeans

from lmi_jax.errors import InputError
from lmi_jax.files import atomic_write

# SSIM of Wang et al. 2004: Gaussian window sigma 1.5 truncated at 3.5 sigma (11x11),
# K1, K2 as published; the same defaults as scikit-image's gaussian_weights=True.
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

METRICS = ("dice", "dice_gt", "psnr", "ssim")
METRIC_TITLES = {"dice": "Dice", "dice_gt": "Dice (ground truth)", "psnr": "PSNR", "ssim": "SSIM"}
# PSNR is in dB and spans tens; Dice and SSIM live in [0, 1] and need a finer grain.
METRIC_DECIMALS = {"dice": 3, "dice_gt": 3, "psnr": 2, "ssim": 3}


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


def _as_slices(name: str, array: np.ndarray) -> np.ndarray:
  """Checks an (N, H, W, 1) stack and returns it as float64 (N, H, W)."""
  array = np.asarray(array)
  if array.ndim != 4 or array.shape[-1] != 1:
    raise InputError(
        f"{name}: expected slices of shape (N, H, W, 1), got {array.shape}; "
        "pass single-channel NHWC images.")
  return array[..., 0].astype(np.float64)


def _as_image(name: str, array: np.ndarray) -> np.ndarray:
  """Checks one (H, W) or (H, W, 1) image and returns it as float64 (H, W)."""
  array = np.asarray(array)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim != 2:
    raise InputError(f"{name}: expected one image (H, W) or (H, W, 1), got {array.shape}.")
  return array.astype(np.float64)


def _as_mask(name: str, mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
  """Checks a boolean mask against the spatial `shape`; a trailing channel of 1 is dropped."""
  if mask is None:
    return None
  mask = np.asarray(mask)
  if mask.ndim == len(shape) + 1 and mask.shape[-1] == 1:
    mask = mask[..., 0]
  if mask.shape != shape:
    raise InputError(f"{name}: mask shape {mask.shape} does not match the images' {shape}.")
  return mask.astype(bool)


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
  slices = _as_slices("train_target_slices", train_target_slices)
  values = slices[slices > background_threshold]
  if np.unique(values).size < k:
    raise InputError(
        f"train_target_slices: fewer than eval.kmeans_clusters={k} distinct intensities above "
        f"eval.background_threshold={background_threshold}; lower the threshold or check the data.")
  rng = np.random.default_rng(seed)
  if values.size > max_pixels:
    values = rng.choice(values, size=max_pixels, replace=False)
  kmeans = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(values[:, None])
  centroids = np.sort(kmeans.cluster_centers_[:, 0])
  return KMeansSegmenter(tuple(float(c) for c in centroids), float(background_threshold))


def fit_segmenter(config: ml_collections.ConfigDict, train_target: np.ndarray) -> KMeansSegmenter:
  """`fit_kmeans` with the settings of the config's `eval` section, on (N, H, W, 1) target
  training slices only."""
  return fit_kmeans(
      train_target, int(config.eval.kmeans_clusters), int(config.seed),
      background_threshold=float(config.eval.background_threshold),
      max_pixels=int(config.eval.kmeans_max_pixels), n_init=int(config.eval.kmeans_n_init))


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
  """(N, H, W, 1) images -> (N, H, W) bool: intensity above the background threshold."""
  return _as_slices("images", images) > segmenter.background_threshold


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
  slices = _as_slices("images", images)
  if foreground is None:
    foreground = foreground_mask(segmenter, images)
  foreground = np.asarray(foreground, dtype=bool)
  if foreground.shape != slices.shape:
    raise InputError(f"foreground: shape {foreground.shape} does not match the images' {slices.shape}.")
  # Centroids are sorted, so in 1-D the nearest one is found between midpoints.
  midpoints = np.diff(np.asarray(segmenter.centroids)) / 2 + np.asarray(segmenter.centroids[:-1])
  tissue = np.searchsorted(midpoints, slices).astype(np.int32) + 1
  return np.where(foreground, tissue, 0).astype(np.int32)


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
    data_range: float = 1.0,
    mask: np.ndarray | None = None,
) -> float:
  """Peak signal-to-noise ratio 10 log10(data_range^2 / MSE) of one image, in dB.

  Args:
    x, ref: (H, W) or (H, W, 1) images.
    data_range: the intensity span (1 for [0, 1] images).
    mask: optional (H, W) bool; the MSE is taken over its pixels only.
  Returns:
    PSNR in dB; inf where x equals ref; NaN for an empty mask (left out of summaries).
  """
  x, ref = _as_image("x", x), _as_image("ref", ref)
  if x.shape != ref.shape:
    raise InputError(f"psnr: image shapes differ, {x.shape} vs {ref.shape}.")
  mask = _as_mask("psnr", mask, x.shape)
  if mask is not None and not mask.any():
    return math.nan
  err = (x - ref) ** 2
  mse = err[mask].mean() if mask is not None else err.mean()
  return math.inf if mse == 0 else float(10 * np.log10(data_range ** 2 / mse))


def _gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
  """(2r+1,) normalised Gaussian taps, r = int(truncate*sigma + 0.5) as in scipy.ndimage."""
  radius = int(truncate * sigma + 0.5)
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  return taps / taps.sum()


def _gaussian_filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """Separable (H, W) filtering with mirrored borders (d c b a | a b c d)."""
  radius = kernel.size // 2
  padded = np.pad(image, radius, mode="symmetric")
  rows = sum(w * padded[i:i + image.shape[0], :] for i, w in enumerate(kernel))
  return sum(w * rows[:, j:j + image.shape[1]] for j, w in enumerate(kernel))


def ssim_map(x: np.ndarray, ref: np.ndarray, data_range: float = 1.0) -> np.ndarray:
  """Gaussian-window SSIM map of Wang et al. 2004 (population covariances).

  Args:
    x, ref: (H, W) or (H, W, 1) images, H and W at least the 11-pixel window.
    data_range: the intensity span, sets C1 = (K1 R)^2 and C2 = (K2 R)^2.
  Returns:
    (H, W) float64 local SSIM.
  """
  x, ref = _as_image("x", x), _as_image("ref", ref)
  if x.shape != ref.shape:
    raise InputError(f"ssim: image shapes differ, {x.shape} vs {ref.shape}.")
  kernel = _gaussian_kernel(SSIM_SIGMA, SSIM_TRUNCATE)
  if min(x.shape) < kernel.size:
    raise InputError(
        f"ssim: images of shape {x.shape} are smaller than the {kernel.size}-pixel SSIM window; "
        "use a larger data.image_size.")
  mu_x, mu_r = _gaussian_filter(x, kernel), _gaussian_filter(ref, kernel)
  var_x = _gaussian_filter(x * x, kernel) - mu_x ** 2
  var_r = _gaussian_filter(ref * ref, kernel) - mu_r ** 2
  cov = _gaussian_filter(x * ref, kernel) - mu_x * mu_r
  c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
  return ((2 * mu_x * mu_r + c1) * (2 * cov + c2)) / (
      (mu_x ** 2 + mu_r ** 2 + c1) * (var_x + var_r + c2))


def ssim(
    x: np.ndarray,
    ref: np.ndarray,
    data_range: float = 1.0,
    mask: np.ndarray | None = None,
) -> float:
  """Mean SSIM of one image.

  Without a mask, the map is averaged away from a window-radius border strip (where the
  mirrored padding biases it), as scikit-image does. With a mask, the mean is over the
  mask's pixels of the whole map: a brain mask rarely reaches the border, and cropping
  could drop mask pixels.

  Args:
    x, ref: (H, W) or (H, W, 1) images.
    data_range: the intensity span (1 for [0, 1] images).
    mask: optional (H, W) bool.
  Returns:
    Mean SSIM, at most 1; NaN for an empty mask (left out of summaries).
  """
  local = ssim_map(x, ref, data_range)
  mask = _as_mask("ssim", mask, local.shape)
  if mask is not None and not mask.any():
    return math.nan
  if mask is not None:
    return float(local[mask].mean())
  pad = _gaussian_kernel(SSIM_SIGMA, SSIM_TRUNCATE).size // 2
  return float(local[pad:-pad, pad:-pad].mean())


def _summary(values: Sequence[float]) -> dict[str, float]:
  """Mean and population std across slices, ignoring NaN (undefined Dice, empty masks)."""
  values = np.asarray(values, dtype=np.float64)
  if np.isnan(values).all():
    return {"mean": math.nan, "std": math.nan}
  # An infinite PSNR (a slice equal to its reference) makes the mean inf and the std NaN.
  with np.errstate(invalid="ignore"):
    return {"mean": float(np.nanmean(values)), "std": float(np.nanstd(values))}


def class_means(images: np.ndarray, labels: np.ndarray, classes: Iterable[int]) -> dict[str, float]:
  """Mean intensity of (N, H, W, 1) images over the pixels of each label of (N, H, W) labels.

  Ordered classes (1 CSF, 2 GM, 3 WM for T1w) make a compressed or inverted tissue contrast
  visible, which Dice alone does not explain. A class with no pixel gets NaN.
  """
  slices = _as_slices("images", images)
  return {str(c): float(slices[labels == c].mean()) if (labels == c).any() else math.nan
          for c in classes}


def _dice_scores(
    pred: np.ndarray, ref: np.ndarray, classes: tuple[int, ...]
) -> tuple[dict[str, float], list[float], dict[str, dict[str, float]]]:
  """Dice over (N, H, W) label stacks: ({mean, std}, per-slice means, per-class {mean, std})."""
  per_slice = [dice(p, r, classes) for p, r in zip(pred, ref)]
  means = [m for _, m in per_slice]
  per_class = {str(c): _summary([pc[c] for pc, _ in per_slice]) for c in classes}
  return _summary(means), means, per_class


def evaluate_methods(
    outputs: Mapping[str, np.ndarray],
    target: np.ndarray,
    segmenter: KMeansSegmenter,
    labels: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    data_range: float = 1.0,
) -> dict:
  """Dice, PSNR and SSIM of each method's translation against the true target.

  Segmentation foreground (the pixels K-means labels at all), in order of preference:
  `mask`, else `labels > 0`, else the true target above the background threshold. The
  same foreground serves the target and every method, so Dice scores tissue classes and
  PSNR/SSIM score everything else. PSNR and SSIM are masked only when `mask` is given.

  Args:
    outputs: method name -> (N, H, W, 1) translations in [0, 1].
    target: (N, H, W, 1) true target-modality slices.
    segmenter: fitted on target training slices (`fit_kmeans`).
    labels: optional (N, H, W) ground-truth tissue labels (0 bg, 1..k); adds `dice_gt`
      and the mean intensity per label (`class_means`) of each method and of the target.
    mask: optional (N, H, W) bool region of interest.
    data_range: intensity span for PSNR and SSIM.
  Returns:
    {"methods": {name: {"dice", "psnr", "ssim", ["dice_gt"]: {"mean", "std"},
      "dice_per_class", ["dice_gt_per_class"]: {class: {"mean", "std"}},
      ["class_means"]: {class: float}, "per_slice": {metric: [N floats]}}},
     ["target_class_means"], "n_slices", "classes", "segmenter", "foreground", "masked_metrics"}.
  """
  if not outputs:
    raise InputError("evaluate_methods: no method outputs given; pass at least one method.")
  target_slices = _as_slices("target", target)
  mask = _as_mask("mask", mask, target_slices.shape)
  if labels is not None:
    labels = np.asarray(labels)
    if labels.shape != target_slices.shape:
      raise InputError(f"labels: shape {labels.shape} does not match the target's {target_slices.shape}.")
    if labels.min() < 0 or labels.max() != segmenter.k:
      raise InputError(
          f"labels: values span {labels.min()}..{labels.max()} but eval.kmeans_clusters={segmenter.k}; "
          "ground-truth Dice needs labels 0 (background) and 1..kmeans_clusters.")
  if mask is not None:
    foreground, foreground_source = mask, "mask"
  elif labels is not None:
    foreground, foreground_source = labels > 0, "labels"
  else:
    foreground, foreground_source = foreground_mask(segmenter, target), "target"
  classes = segmenter.classes
  ref_seg = segment(segmenter, target, foreground)

  methods = {}
  for name, output in outputs.items():
    output_slices = _as_slices(f"outputs[{name!r}]", output)
    if output_slices.shape != target_slices.shape:
      raise InputError(
          f"outputs[{name!r}]: shape {output_slices.shape} does not match the target's {target_slices.shape}.")
    seg = segment(segmenter, output, foreground)
    slice_masks = [None] * len(output_slices) if mask is None else list(mask)
    psnrs = [psnr(o, t, data_range, m) for o, t, m in zip(output_slices, target_slices, slice_masks)]
    ssims = [ssim(o, t, data_range, m) for o, t, m in zip(output_slices, target_slices, slice_masks)]
    dice_summary, dice_slices, dice_classes = _dice_scores(seg, ref_seg, classes)
    entry = {
        "dice": dice_summary,
        "psnr": _summary(psnrs),
        "ssim": _summary(ssims),
        "dice_per_class": dice_classes,
        "per_slice": {"dice": dice_slices, "psnr": psnrs, "ssim": ssims},
    }
    if labels is not None:
      gt_summary, gt_slices, gt_classes = _dice_scores(seg, labels, classes)
      entry["dice_gt"] = gt_summary
      entry["dice_gt_per_class"] = gt_classes
      entry["per_slice"]["dice_gt"] = gt_slices
      entry["class_means"] = class_means(output, labels, classes)
    methods[name] = entry
  extra = {} if labels is None else {"target_class_means": class_means(target, labels, classes)}
  return {
      **extra,
      "methods": methods,
      "n_slices": int(target_slices.shape[0]),
      "classes": list(classes),
      "segmenter": dataclasses.asdict(segmenter),
      "foreground": foreground_source,
      "masked_metrics": mask is not None,
  }


def json_safe(value: object) -> object:
  """Replaces NaN and inf (not JSON) by None, recursively."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  return value


def _reported_metrics(report: dict) -> list[str]:
  """The metrics of METRICS that at least one method of `report` has."""
  return [m for m in METRICS if any(m in entry for entry in report["methods"].values())]


def format_summary(summary: dict[str, float] | None, decimals: int) -> str:
  """{"mean", "std"} -> "m ± s"; a missing or undefined summary -> "n/a"; an infinite mean -> "inf"."""
  if summary is None or math.isnan(summary["mean"]):
    return "n/a"
  if math.isinf(summary["mean"]):
    return str(summary["mean"])
  return f"{summary['mean']:.{decimals}f} ± {summary['std']:.{decimals}f}"


REGION_TITLES = {"outside_exclude": "Outside the excluded regions (data.exclude_glob, e.g. tumour)"}


def _markdown_table(report: dict) -> str:
  names = list(report["methods"])
  lines = [
      "| metric | " + " | ".join(names) + " |",
      "| --- |" + " --- |" * len(names),
  ]
  for metric in _reported_metrics(report):
    cells = [format_summary(report["methods"][n].get(metric), METRIC_DECIMALS[metric]) for n in names]
    lines.append(f"| {METRIC_TITLES[metric]} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def report_markdown(report: dict) -> str:
  """A table like the paper's Table 1: a row per metric, a column per method; one more table
  per entry of report["regions"] (the same methods scored over another region)."""
  names = list(report["methods"])
  text = _markdown_table(report) + f"\n{report['n_slices']} slices; mean ± std across slices"
  text += " (PSNR and SSIM inside the brain).\n" if report.get("masked_metrics") else ".\n"
  if "target_class_means" in report:
    means = [f"{n} {format_class_means(report['methods'][n]['class_means'])}" for n in names]
    text += (f"\nMean intensity per ground-truth class {'/'.join(map(str, report['classes']))}: target "
             f"{format_class_means(report['target_class_means'])}; " + "; ".join(means) + ".\n")
  for region, sub in report.get("regions", {}).items():
    text += f"\n{REGION_TITLES.get(region, region)}:\n\n" + _markdown_table(sub)
  return text


def format_class_means(means: Mapping[str, float]) -> str:
  """{class: mean} -> "0.39/0.62/0.81" in class order."""
  return "/".join(f"{means[c]:.2f}" for c in sorted(means, key=int))


def report_csv(report: dict) -> str:
  """A row per method: method, then <metric>_mean and <metric>_std columns (nan, inf as such)."""
  metrics = _reported_metrics(report)
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(["method"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])
  for name, entry in report["methods"].items():
    row = [name]
    for m in metrics:
      summary = entry.get(m)
      row += ["", ""] if summary is None else [summary["mean"], summary["std"]]
    writer.writerow(row)
  return buffer.getvalue()


def write_report(report: dict, out_dir: str) -> dict[str, str]:
  """Writes report.json, report.md and report.csv into `out_dir`, each atomically.

  NaN and inf (an undefined Dice, the PSNR of identical images) are not JSON: they are
  written as null there, and as "nan"/"inf" in the CSV and Markdown.

  Returns:
    {"json": path, "md": path, "csv": path}.
  """
  texts = {
      "json": json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n",
      "md": report_markdown(report),
      "csv": report_csv(report),
  }
  paths = {}
  for ext, text in texts.items():
    paths[ext] = os.path.join(out_dir, f"report.{ext}")
    atomic_write(paths[ext], text.encode("utf-8"))
  return paths


def _save_png(fig: Figure, path: str) -> None:
  """The figure as a PNG at `path`, written atomically."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  atomic_write(path, buffer.getvalue())


def plot_comparison(
    target: np.ndarray,
    source: np.ndarray,
    outputs: Mapping[str, np.ndarray],
    segmenter: KMeansSegmenter,
    path: str,
    index: int = 0,
    mask: np.ndarray | None = None,
) -> None:
  """Saves a PNG like the paper's Fig. 2 for slice `index`.

  Rows: target, source, then each method; left the image, right its K-means
  segmentation. The source is segmented too, to show why translation is needed. All
  rows share the foreground of `evaluate_methods` without labels: `mask` if given, else
  the target above the background threshold.

  Args:
    target, source: (N, H, W, 1) slices in [0, 1].
    outputs: method name -> (N, H, W, 1) translations.
    segmenter: from `fit_kmeans`.
    path: the PNG file to write (its folder is created).
    index: which slice to show.
    mask: optional (N, H, W) bool foreground.
  """
  target_slices = _as_slices("target", target)
  n = target_slices.shape[0]
  if not 0 <= index < n:
    raise InputError(f"plot_comparison: index {index} is outside the {n} slices; pass 0..{n - 1}.")
  # A list, not a dict: a method may itself be called "source" (the identity baseline).
  rows = [("target", target), ("source", source), *outputs.items()]
  for name, images in rows:
    if np.shape(images) != np.shape(target):
      raise InputError(f"{name}: shape {np.shape(images)} does not match the target's {np.shape(target)}.")
  if mask is None:
    foreground = foreground_mask(segmenter, np.asarray(target)[index:index + 1])
  else:
    foreground = _as_mask("mask", mask, target_slices.shape)[index:index + 1]

  fig = Figure(figsize=(4.0, 2.0 * len(rows)), dpi=100)
  FigureCanvasAgg(fig)
  axes = fig.subplots(len(rows), 2, squeeze=False)
  for (name, images), (ax_image, ax_seg) in zip(rows, axes):
    one = np.asarray(images)[index:index + 1]
    ax_image.imshow(one[0, ..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax_seg.imshow(segment(segmenter, one, foreground)[0], cmap="viridis", vmin=0, vmax=segmenter.k,
                  interpolation="nearest")
    ax_image.set_ylabel(name)
    for ax in (ax_image, ax_seg):
      ax.set_xticks([])
      ax.set_yticks([])
  axes[0, 0].set_title("image")
  axes[0, 1].set_title(f"K-means ({segmenter.k} classes)")
  fig.tight_layout()
  _save_png(fig, path)


def plot_rows(rows: Mapping[str, np.ndarray], path: str, max_columns: int = 8) -> None:
  """Saves a PNG grid: one row per entry of `rows`, one column per slice.

  Args:
    rows: name -> (N, H, W, 1) images in [0, 1], all with the same N (e.g. source,
      translation, target).
    path: the PNG file to write (its folder is created).
    max_columns: at most this many slices, the first ones.
  """
  columns = min(max_columns, min(len(v) for v in rows.values()))
  fig = Figure(figsize=(1.6 * columns, 1.6 * len(rows)), dpi=100)
  FigureCanvasAgg(fig)
  axes = fig.subplots(len(rows), columns, squeeze=False)
  for (name, images), row in zip(rows.items(), axes):
    for j, ax in enumerate(row):
      ax.imshow(np.asarray(images)[j, ..., 0], cmap="gray", vmin=0.0, vmax=1.0,
                interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
    row[0].set_ylabel(name)
  fig.tight_layout()
  _save_png(fig, path)


def save_npz_atomic(path: str, **arrays: np.ndarray) -> None:
  """np.savez_compressed into `path` through a temporary file, so no partial file remains."""
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **arrays)
  atomic_write(path, buffer.getvalue())
