"""Scoring translated slices against the true target, and the reports of the scores.

`evaluate_methods` segments the true target and every method's translation with the K-means
of `lmi_jax.segmentation` (fitted on target training slices only) and compares them by Dice
(and, where ground-truth tissue labels exist, each translation's segmentation with the
labels, and under the paper's protocol); PSNR and SSIM come from `lmi_jax.metrics`.

Images are NumPy-convertible float arrays in [0, 1]; slices are (N, H, W, 1), one image
is (H, W) or (H, W, 1). Labels are int32 (N, H, W): 0 background, 1..k tissue classes
ordered by centroid intensity (for T1w and k=3: 1 CSF, 2 GM, 3 WM).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import os
from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np

from lmi_jax import masks
from lmi_jax import metrics as image_metrics
from lmi_jax.errors import InputError
from lmi_jax.files import atomic_write
from lmi_jax.metrics import as_mask, as_slices
from lmi_jax.segmentation import KMeansSegmenter, foreground_mask, labels_to_image, segment

METRICS = ("dice", "dice_paper", "dice_gt", "psnr", "ssim", "edge_corr")
METRIC_TITLES = {"dice": "Dice", "dice_paper": "Dice (paper protocol)",
                 "dice_gt": "Dice (ground truth)", "psnr": "PSNR", "ssim": "SSIM",
                 "edge_corr": "Edge correlation"}
# PSNR is in dB and spans tens; Dice and SSIM live in [0, 1] and need a finer grain.
METRIC_DECIMALS = {"dice": 3, "dice_paper": 3, "dice_gt": 3, "psnr": 2, "ssim": 3, "edge_corr": 3}


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
  slices = as_slices("images", images)
  return {str(c): float(slices[labels == c].mean()) if (labels == c).any() else math.nan
          for c in classes}


def _dice_scores(
    pred: np.ndarray, ref: np.ndarray, classes: tuple[int, ...]
) -> tuple[dict[str, float], list[float], dict[str, dict[str, float]]]:
  """Dice over (N, H, W) label stacks: ({mean, std}, per-slice means, per-class {mean, std})."""
  per_slice = [image_metrics.dice(p, r, classes) for p, r in zip(pred, ref)]
  means = [m for _, m in per_slice]
  per_class = {str(c): _summary([pc[c] for pc, _ in per_slice]) for c in classes}
  return _summary(means), means, per_class


def rename(labels: np.ndarray, naming: Sequence[int]) -> np.ndarray:
  """(N, H, W) labels 0..k with class c renamed naming[c-1]; background 0 stays."""
  return np.asarray((0, *naming), np.int32)[np.asarray(labels)]


def best_naming(pred: np.ndarray, ref: np.ndarray, classes: tuple[int, ...]) -> tuple[int, ...]:
  """The renaming of (N, H, W) `pred`'s classes 1..k (see `rename`) that maximises the mean
  Dice against (N, H, W) `ref`, of all k! (6 for k = 3); ties go to the first in
  `itertools.permutations` order, which starts with no renaming."""
  def mean_dice(naming: tuple[int, ...]) -> float:
    mean = _dice_scores(rename(pred, naming), ref, classes)[0]["mean"]
    return -math.inf if math.isnan(mean) else mean
  return max(itertools.permutations(classes), key=mean_dice)


def threshold_labels(values: np.ndarray, thresholds: tuple[float, float]) -> np.ndarray:
  """Labels 1..3 of intensities: 1 below thresholds[0], 3 at or above thresholds[1], else 2.
  Same shape as `values`, int32."""
  low, high = thresholds
  values = np.asarray(values)
  return (1 + (values >= low) + (values >= high)).astype(np.int32)


def best_thresholds(values: np.ndarray, ref: np.ndarray, step: float = 0.005) -> tuple[float, float]:
  """The two intensity thresholds, on a grid of `step` over [0, 1], at which
  `threshold_labels(values, ...)` best matches `ref` (mean Dice of classes 1..3, a class
  absent from both left out, as `metrics.dice` does); ties go to the lowest thresholds.

  An upper bound that needs the truth, as `best_naming` is: how far a segmentation by
  intensity thresholds of one translation could go if its class boundaries were placed
  knowing the true labels, which separates a translation's calibration (where it puts
  tissues in intensity) from its overlap (pixels of different tissues at one intensity).

  Args:
    values: (M,) intensities in [0, 1] (e.g. a translation's brain pixels).
    ref: (M,) true labels; classes 1..3 are scored (others count only as predicted).
    step: grid spacing of the thresholds.
  Returns:
    (low, high) with low <= high, both grid points.
  """
  values, ref = np.asarray(values, np.float64).ravel(), np.asarray(ref).ravel()
  if values.shape != ref.shape:
    raise InputError(f"best_thresholds: {values.shape[0]} values but {ref.shape[0]} labels.")
  if values.size == 0:
    raise InputError("best_thresholds: no values to threshold (an empty brain?).")
  # Rounded so that the thresholds returned are the ones the bins were counted with.
  grid = np.round(np.linspace(0.0, 1.0, int(round(1.0 / step)) + 1), 10)
  # bins: how many grid points are <= v, so below[:, i] counts v < grid[i], the comparison
  # `threshold_labels` makes.
  bins = np.searchsorted(grid, values, side="right")
  under = lambda chosen: np.cumsum(np.bincount(bins[chosen], minlength=grid.size + 1))[:-1]
  below = np.stack([under(ref == c) for c in (1, 2, 3)])  # [c - 1, i]: class c under grid[i].
  # Every value is predicted some class, whatever its label (0 included), as in `metrics.dice`.
  count = under(slice(None))
  true_count = np.array([(ref == c).sum() for c in (1, 2, 3)])
  low, high = np.arange(grid.size)[:, None], np.arange(grid.size)[None, :]
  overlap = (below[0][low], below[1][high] - below[1][low], true_count[2] - below[2][high])
  predicted = (count[low], count[high] - count[low], values.size - count[high])
  scores = []
  for inter, pred, true in zip(overlap, predicted, true_count):
    total = pred + true
    dice = np.where(total > 0, 2.0 * inter / np.maximum(total, 1), np.nan)
    scores.append(np.broadcast_to(dice, (grid.size, grid.size)))
  # No pair leaves all three classes empty, so the NaN-aware mean is always defined.
  mean = np.where(high >= low, np.nanmean(np.stack(scores), axis=0), -np.inf)
  i, j = np.unravel_index(np.argmax(mean), mean.shape)
  return float(grid[i]), float(grid[j])


def _renamed_best(
    segmenter: KMeansSegmenter, output: np.ndarray, seg: np.ndarray, ref_seg: np.ndarray,
    volumes: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, dict[str, list[int]]]:
  """An output drawn at `segmenter`'s centroids, renamed volume by volume by `best_naming`
  of its (N, H, W) segmentation `seg` against (N, H, W) `ref_seg`: (the renamed seg, the
  renamed (N, H, W, 1) image, {volume id or "all": naming})."""
  groups = np.zeros(len(seg), np.int64) if volumes is None else volumes
  # Every labelled pixel of the image follows, not only those inside the scoring foreground.
  own = segment(segmenter, output)
  seg, namings = seg.copy(), {}
  for volume in np.unique(groups):
    at = groups == volume
    naming = best_naming(seg[at], ref_seg[at], segmenter.classes)
    seg[at], own[at] = rename(seg[at], naming), rename(own[at], naming)
    namings["all" if volumes is None else str(volume)] = list(naming)
  return seg, labels_to_image(segmenter, own), namings


def evaluate_methods(
    outputs: Mapping[str, np.ndarray],
    target: np.ndarray,
    segmenter: KMeansSegmenter,
    labels: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    data_range: float = 1.0,
    paper_segmenter: KMeansSegmenter | None = None,
    best_named: Collection[str] = (),
    volumes: np.ndarray | None = None,
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
    paper_segmenter: optional, from `segmentation.fit_paper_segmenter`; adds `dice_paper`,
      the paper's protocol: its clusters over the whole slice (background included, no
      mask), the mean over clusters of each slice.
    best_named: methods whose output is a segmentation drawn at `segmenter`'s centroids
      (`labels_to_image`, e.g. source_kmeans_best): their classes are renamed by `best_naming`
      against the target's segmentation, volume by volume, before any metric, and the
      renamings are recorded as "naming". An upper bound: choosing the names needs the true
      target.
    volumes: optional (N,) volume id of each slice, for `best_named`; None: one volume.
  Returns:
    {"methods": {name: {"dice", "psnr", "ssim", "edge_corr", ["dice_gt"], ["dice_paper"]: {"mean", "std"},
      "dice_per_class", ["dice_gt_per_class"]: {class: {"mean", "std"}},
      ["class_means"]: {class: float}, ["naming"]: {volume id or "all": [k ints]},
      "per_slice": {metric: [N floats]}}},
     ["target_class_means"], "n_slices", "classes", "segmenter", ["paper_segmenter"],
     "foreground", "masked_metrics", "metric_settings"}.
  """
  if not outputs:
    raise InputError("evaluate_methods: no method outputs given; pass at least one method.")
  target_slices = as_slices("target", target)
  mask = as_mask("mask", mask, target_slices.shape)
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
    foreground, foreground_source = masks.labelled(labels), "labels"
  else:
    foreground, foreground_source = foreground_mask(segmenter, target), "target"
  if volumes is not None:
    volumes = np.asarray(volumes)
    if volumes.shape != target_slices.shape[:1]:
      raise InputError(f"volumes: shape {volumes.shape}, but the target has {len(target_slices)} slices.")
  classes = segmenter.classes
  ref_seg = segment(segmenter, target, foreground)
  whole = np.ones(target_slices.shape, bool)
  if paper_segmenter is not None:
    ref_paper = segment(paper_segmenter, target, whole)

  methods = {}
  for name, output in outputs.items():
    output_slices = as_slices(f"outputs[{name!r}]", output)
    if output_slices.shape != target_slices.shape:
      raise InputError(
          f"outputs[{name!r}]: shape {output_slices.shape} does not match the target's {target_slices.shape}.")
    seg = segment(segmenter, output, foreground)
    naming = None
    if name in best_named:
      # The image follows its labels, so PSNR, SSIM and the paper's Dice score the renamed one.
      seg, output, naming = _renamed_best(segmenter, output, seg, ref_seg, volumes)
      output_slices = as_slices(f"outputs[{name!r}]", output)
    slice_masks = [None] * len(output_slices) if mask is None else list(mask)
    psnrs = [image_metrics.psnr(o, t, data_range, m)
             for o, t, m in zip(output_slices, target_slices, slice_masks)]
    ssims = [image_metrics.ssim(o, t, data_range, m)
             for o, t, m in zip(output_slices, target_slices, slice_masks)]
    edges = [image_metrics.edge_correlation(o, t, m)
             for o, t, m in zip(output_slices, target_slices, slice_masks)]
    dice_summary, dice_slices, dice_classes = _dice_scores(seg, ref_seg, classes)
    entry = {
        "dice": dice_summary,
        "psnr": _summary(psnrs),
        "ssim": _summary(ssims),
        "edge_corr": _summary(edges),
        "dice_per_class": dice_classes,
        "per_slice": {"dice": dice_slices, "psnr": psnrs, "ssim": ssims, "edge_corr": edges},
    }
    if naming is not None:
      entry["naming"] = naming
    if paper_segmenter is not None:
      paper_summary, paper_slices, _ = _dice_scores(
          segment(paper_segmenter, output, whole), ref_paper, paper_segmenter.classes)
      entry["dice_paper"] = paper_summary
      entry["per_slice"]["dice_paper"] = paper_slices
    if labels is not None:
      gt_summary, gt_slices, gt_classes = _dice_scores(seg, labels, classes)
      entry["dice_gt"] = gt_summary
      entry["dice_gt_per_class"] = gt_classes
      entry["per_slice"]["dice_gt"] = gt_slices
      entry["class_means"] = class_means(output, labels, classes)
    methods[name] = entry
  extra = {} if labels is None else {"target_class_means": class_means(target, labels, classes)}
  if paper_segmenter is not None:
    extra["paper_segmenter"] = dataclasses.asdict(paper_segmenter)
  return {
      **extra,
      "methods": methods,
      "n_slices": int(target_slices.shape[0]),
      "classes": list(classes),
      "segmenter": dataclasses.asdict(segmenter),
      "foreground": foreground_source,
      "masked_metrics": mask is not None,
      "metric_settings": image_metrics.settings(data_range),
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
  for name in names:
    naming = report["methods"][name].get("naming")
    if naming:
      renamings = "; ".join(f"{'' if v == 'all' else 'volume '}{v}: {', '.join(map(str, n))}"
                            for v, n in naming.items())
      text += (f"\n{name}: its classes renamed ({renamings}) by the renaming that maximises Dice "
               "against the true target's segmentation, volume by volume; an upper bound, as "
               "choosing it needs the true target.\n")
  for name in report.get("not_zero_shot", []):
    text += (f"\n{name}: trained on paired source and target slices; not zero-shot, the "
             "ceiling of what the source's information allows.\n")
  if "dice_paper" in _reported_metrics(report):
    text += (f"\nDice (paper protocol): {len(report['paper_segmenter']['centroids'])} K-means "
             "clusters over the whole slice, background included, fitted on target training "
             "slices; mean over clusters. Dice: tissue classes inside the brain only.\n")
  for region, sub in report.get("regions", {}).items():
    text += f"\n{REGION_TITLES.get(region, region)}:\n\n" + _markdown_table(sub)
  warning = report.get("structure", {}).get("structure_warning")
  if warning:
    text += f"\nWarning: {warning}\n"
  faint = report.get("structure", {}).get("faint_model")
  if faint:
    text += (f"\nlmi translated with the faint-contrast model {faint}: the source's structure "
             "score is below sampling.faint_below.\n")
  settings = report.get("metric_settings", {})
  if settings:
    text += "\nMetric settings: " + "; ".join(f"{k.upper()}: {v}" for k, v in settings.items()) + ".\n"
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
